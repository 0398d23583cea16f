"""`photoclust export`: lay a clustering out as folders a file browser can open.

DIR/cluster_<j>/<file name> per member (symbolic links to the photos, or copies with
--copy). File names are kept; two members with the same name get `_2`, `_3`, ... before
the extension. DIR must be new, empty or an earlier export (marked by a hidden file), so
nothing of the user's is ever overwritten.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .cache import read_source
from .errors import UserError
from .images import EXPORT_MARKER
from .represent import read_assignments

MARKER = EXPORT_MARKER  # also how finding photos recognises an export inside the photo folder


@dataclass
class ExportReport:
    files: int = 0
    clusters: int = 0
    renamed: int = 0
    missing: list[str] = field(default_factory=list)


def unique_names(names: list[str]) -> list[str]:
    """Keep each name; the 2nd, 3rd ... occurrence (case-insensitively) gets _2, _3 before the suffix."""
    taken: set[str] = set()
    out = []
    for name in names:
        stem, suffix = os.path.splitext(name)
        candidate, n = name, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{stem}_{n}{suffix}"
        taken.add(candidate.lower())
        out.append(candidate)
    return out


def _prepare_target(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise UserError(f"--to {target}: exists and is not a folder; choose a new folder")
    if target.is_dir() and any(target.iterdir()):
        if not (target / MARKER).is_file():
            raise UserError(f"--to {target}: folder is not empty and is not an earlier photoclust export; "
                            "choose a new or empty folder")
        for old in target.glob("cluster_*"):
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    target.mkdir(parents=True, exist_ok=True)
    (target / MARKER).write_text("made by photoclust export; the next export to this folder replaces cluster_*\n")


def export_clusters(out_dir: Path, loss: str, target: Path, copy: bool = False) -> ExportReport:
    out_dir, target = Path(out_dir), Path(target)
    frame = read_assignments(out_dir, loss) if (out_dir / "clusters" / loss / "assignments.csv").is_file() else None
    if frame is None:
        raise UserError(f"no clustering for {loss} in {out_dir}/clusters; run `python -m pipeline cluster "
                        f"--out {out_dir} --losses {loss}` first")
    root = read_source(out_dir)
    _prepare_target(target)
    report = ExportReport()
    for cluster, members in frame.sort_values(["cluster", "path"]).groupby("cluster", sort=True):
        folder = target / f"cluster_{int(cluster)}"
        folder.mkdir()
        report.clusters += 1
        names = [Path(p).name for p in members["path"]]
        for rel, name in zip(members["path"], unique_names(names)):
            source = (root / rel).resolve()
            if not source.is_file():
                report.missing.append(rel)
                continue
            report.renamed += name != Path(rel).name
            if copy:
                shutil.copy2(source, folder / name)
            else:
                os.symlink(source, folder / name)
            report.files += 1
    return report
