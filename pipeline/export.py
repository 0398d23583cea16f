"""`photoclust export`: lay a clustering out as folders a file browser can open.

DIR/cluster_<j>/<file name> per member (symbolic links to the photos, or copies with
--copy). File names are kept; two members with the same name get `_2`, `_3`, ... before
the extension, and so does a name that a file of the user's already holds.

Nothing of the user's is ever removed or overwritten:
- DIR may not be, contain or lie inside the photo folder;
- DIR must be new, empty or an earlier export. The hidden file `.photoclust-export`
  records every file an export made (link target, or size and time of a copy), and is
  written before the first file is made. A re-export removes only recorded files that
  are still exactly what it made, and a `cluster_*` folder only once it is empty: a
  file or folder the user added stays;
- copies are written under a temporary name and renamed (atomic.copy_file), so a file
  never exists half copied under its final name. A killed export, run again, gives the same folders.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import atomic, faults
from .cache import load_embedded, read_source
from .cluster import check_current
from .errors import UserError
from .images import EXPORT_MARKER
from .layout import Layout
from .lock import output_lock
from .represent import read_assignments

MARKER = EXPORT_MARKER  # also how finding photos recognises an export inside the photo folder


@dataclass
class ExportReport:
    files: int = 0
    clusters: int = 0
    renamed: int = 0
    missing: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # files in the target that photoclust did not make


def unique_names(names: list[str], taken: set[str] | None = None) -> list[str]:
    """Keep each name; a name already used (case-insensitively, here or in `taken`) gets _2, _3 ... before the suffix."""
    taken = {t.lower() for t in taken or ()}
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


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_target(target: Path, photo_root: Path) -> None:
    """Refuse a target that is, contains or lies inside the photo folder (never touched)."""
    resolved, root = target.resolve(), photo_root.resolve()
    if _overlaps(resolved, root):
        raise UserError(f"--to {target}: overlaps the photo folder {photo_root}; export writes and removes files, "
                        "so choose a folder outside the photos")
    if target.exists() and not target.is_dir():
        raise UserError(f"--to {target}: exists and is not a folder; choose a new folder")


def _read_record(target: Path) -> list[dict] | None:
    """The files an earlier export recorded; None when `target` is not an earlier export."""
    marker = target / MARKER
    if not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
        return [dict(f) for f in record["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []  # a marker of an older photoclust (plain text): it recorded nothing, so nothing is removed


def _write_record(target: Path, files: list[dict]) -> None:
    atomic.write_text(target / MARKER, json.dumps(
        {"made_by": "photoclust export: the next export to this folder removes the files listed here, "
                    "if they are unchanged", "files": files}, indent=1) + "\n")


def _still_ours(path: Path, made: dict) -> bool:
    try:
        if made["kind"] == "link":
            return path.is_symlink() and os.readlink(path) == made["source"]
        st = path.lstat()
        return not path.is_symlink() and st.st_size == made["size"] and st.st_mtime_ns == made["mtime_ns"]
    except (OSError, KeyError):
        return False


def _remove_earlier_export(target: Path, recorded: list[dict], report: ExportReport) -> None:
    real_target = target.resolve()
    folders = set()
    for made in recorded:
        path = target / made["path"]
        if path.parent.resolve().parent != real_target:  # a cluster folder swapped for a link: not ours to follow
            continue
        folders.add(path.parent)
        if _still_ours(path, made):
            atomic.remove(path)
        elif path.exists() or path.is_symlink():
            report.kept.append(made["path"])
    for folder in sorted(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty: a file of the user's keeps its folder


def _prepare_target(target: Path) -> list[dict]:
    """Make sure `target` may be written; returns what an earlier export recorded there."""
    if target.is_dir() and any(p.name != MARKER for p in target.iterdir()):
        recorded = _read_record(target)
        if recorded is None:
            raise UserError(f"--to {target}: folder is not empty and is not an earlier photoclust export; "
                            "choose a new or empty folder")
        return recorded
    return _read_record(target) or []


def export_clusters(out_dir: Path, loss: str, target: Path, copy: bool = False) -> ExportReport:
    out_dir, target = Path(out_dir), Path(target)
    layout = Layout(out_dir)
    if not layout.assignments(loss).is_file():
        raise UserError(f"no clustering for {loss} in {out_dir}/clusters; run `photoclust cluster "
                        f"--out {out_dir} --losses {loss}` first")
    check_current(out_dir, loss, load_embedded(out_dir).fingerprint)
    frame = read_assignments(out_dir, loss)
    root = read_source(out_dir)
    check_target(target, root)
    report = ExportReport()
    with output_lock(target, marker=False):
        recorded = _prepare_target(target)
        _remove_earlier_export(target, recorded, report)

        plan = []
        for cluster, members in frame.sort_values(["cluster", "path"]).groupby("cluster", sort=True):
            folder = target / f"cluster_{int(cluster)}"
            users = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
            names = [Path(p).name for p in members["path"]]
            for rel, name in zip(members["path"], unique_names(names, users)):
                report.renamed += name != Path(rel).name
                plan.append((folder, name, rel))
            report.clusters += 1
        made = []
        for folder, name, rel in plan:
            source = root / rel
            if not source.is_file():
                report.missing.append(rel)
                continue
            entry = {"path": f"{folder.name}/{name}", "kind": "copy" if copy else "link", "source": str(source.resolve())}
            if copy:
                st = source.stat()
                entry.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
            made.append(entry)
        _write_record(target, made)  # before the first file: a killed export still knows what it made

        for entry in made:
            destination = target / entry["path"]
            destination.parent.mkdir(exist_ok=True)
            if copy:
                atomic.copy_file(Path(entry["source"]), destination)
            else:
                faults.point(f"link {destination.name}")
                os.symlink(entry["source"], destination)
            report.files += 1
    return report
