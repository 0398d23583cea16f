"""photoclust from Python (a notebook): a run's results as one DataFrame, a cluster's photos inline.

    from pipeline import load_results, show_cluster
    frame = load_results("data/sample")           # the photo folder, or its output folder
    show_cluster("data/sample", "huber", 0)       # thumbnails inline in Jupyter

Read only: nothing here writes a file or takes the output folder's lock, so it can run
while a stage works in the same folder. That is safe because every file a stage writes
replaces the old one atomically (a reader sees the old or the new file, never half of
one), and because a read is a snapshot: the files read are stat-ed (inode, size,
modification time) before and after, and the read is repeated when any of them changed
in between, so a clustering is never paired with another run's features or summary. The
features are checked against their commit record as every stage checks them, without
finishing a commit another run is making (`cache.load_embedded(repair=False)`).
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from . import dupes, photomap
from .cache import OK, Embedded, load_embedded, read_source
from .cluster import check_current
from .errors import UserError
from .layout import Layout, default_output, is_output_folder
from .losses import LOSS_NAMES
from .represent import clustered_losses, rank_members, read_assignments
from .tables import read_frame

COLUMNS = ["path", "loss", "cluster", "rank", "is_representative", "loss_to_center", "map_x", "map_y",
           "duplicate_group"]
DEFAULT_LIMIT = 24  # photos show_cluster draws unless told otherwise
READ_ATTEMPTS = 6  # snapshot retries while another run rewrites the files (about 3 s in all)

T = TypeVar("T")


# ----------------------------------------------------------------------------- which folder

def output_folder(source: str | os.PathLike) -> Path:
    """The output folder of `source`: itself when it is one (it holds `.photoclust-output`),
    else the folder `photoclust extract SOURCE` made, outputs/<folder name> under the
    working directory, exactly as the command line finds it."""
    path = Path(source)
    if is_output_folder(path):
        return path
    if not path.is_dir():
        raise UserError(f"{path}: no such folder; pass a photo folder (as given to `photoclust run`) or "
                        "its output folder")
    out = default_output(path)
    if not is_output_folder(out):
        raise UserError(f"{path}: no run for these photos in {out} (under {Path.cwd()}); run "
                        f"`photoclust run {path}` first, or pass the output folder itself")
    return out


# ----------------------------------------------------------------------------- the frame

def load_results(source: str | os.PathLike, losses: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per (photo, loss) of the run in `source` (a photo folder or an output folder).

    Columns: path (relative to the photo folder, as in manifest.csv), loss, cluster, rank
    (0 = nearest its center), is_representative, loss_to_center, map_x, map_y (from
    map.csv; NaN without it, or when it was made from other features), duplicate_group (from
    duplicates.csv; <NA> for a photo in no group, or when `dupes` did not make the table from
    these features). Rows by loss (every clustered loss, or `losses`), then in the run's path order.
    A clustering of other features than the cached ones is refused, as the stages refuse
    it; rank is computed here when `represent` has not run. Writes nothing.
    """
    out = output_folder(source)
    return _snapshot(out, lambda: _frame(out, _choose(out, losses), load_embedded(out, repair=False)))


def _choose(out: Path, losses: Iterable[str] | None) -> list[str]:
    available = clustered_losses(out)
    if not available:
        if not Layout(out).features.exists():
            load_embedded(out, repair=False)  # says to run extract
        raise UserError(f"no clusterings in {out}: run `photoclust cluster --out {out}` (or `make cluster`) first")
    if losses is None:
        return available
    chosen = [losses] if isinstance(losses, str) else list(losses)
    missing = [loss for loss in chosen if loss not in available]
    if missing:
        raise UserError(f"no {', '.join(map(str, missing))} clustering in {out} (it has {', '.join(available)}); "
                        f"run `photoclust cluster --out {out} --losses {','.join(map(str, missing))}` first")
    return chosen


def _frame(out: Path, losses: list[str], embedded: Embedded) -> pd.DataFrame:
    parts = []
    for loss in losses:
        check_current(out, loss, embedded.fingerprint)
        frame = read_assignments(out, loss)
        if "rank" in frame.columns and "is_representative" in frame.columns:
            rank = frame["rank"].to_numpy(np.int64)
        else:  # represent has not run since the last cluster: the same ranks it would write
            rank = rank_members(frame["cluster"].to_numpy(np.int64), frame["loss_to_center"].to_numpy(np.float64))
        parts.append(pd.DataFrame({
            "path": frame["path"], "loss": loss,
            "cluster": frame["cluster"].to_numpy(np.int64), "rank": rank, "is_representative": rank == 0,
            "loss_to_center": frame["loss_to_center"].to_numpy(np.float64)}))
    frame = pd.concat(parts, ignore_index=True)
    frame = frame.merge(_map_points(out, embedded.fingerprint), on="path", how="left")
    frame = frame.merge(_duplicate_groups(out, embedded.fingerprint), on="path", how="left")
    frame["map_x"] = frame["map_x"].astype(np.float64)
    frame["map_y"] = frame["map_y"].astype(np.float64)
    frame["duplicate_group"] = frame["duplicate_group"].astype("Int64")
    return frame[COLUMNS]


def _read_extra(path: Path, columns: list[str]) -> pd.DataFrame | None:
    """A CSV another stage wrote next to the clusterings, or None when it is not there."""
    if not path.is_file():
        return None
    try:
        frame = read_frame(path, text_columns=["path"])
    except FileNotFoundError:
        return None  # removed between the check and the read: the snapshot retries
    except (OSError, UnicodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{path}: cannot read it ({exc}); rerun the stage that writes it") from None
    if not set(columns) <= set(frame.columns):
        raise UserError(f"{path}: expected the columns {', '.join(columns)}, found {', '.join(frame.columns)}; "
                        "rerun the stage that writes it")
    return frame


def _map_points(out: Path, fingerprint: str) -> pd.DataFrame:
    record = photomap.read_record(Layout(out)) or {}
    key = record.get("key") if isinstance(record.get("key"), dict) else {}
    # a map of other features (made before the last extract) is no map of these: left out
    current = key.get("features_fingerprint") == fingerprint
    frame = _read_extra(Layout(out).map_points, ["path", "x", "y"]) if current else None
    if frame is None:
        return pd.DataFrame({"path": pd.Series([], dtype=str), "map_x": pd.Series([], dtype=np.float64),
                             "map_y": pd.Series([], dtype=np.float64)})
    frame = frame.drop_duplicates("path").rename(columns={"x": "map_x", "y": "map_y"})
    return pd.DataFrame({"path": frame["path"].astype(str), "map_x": pd.to_numeric(frame["map_x"]),
                         "map_y": pd.to_numeric(frame["map_y"])})


def _duplicate_groups(out: Path, fingerprint: str) -> pd.DataFrame:
    try:  # only a table `dupes` made from these features and nobody edited since
        dupes.check_current(out, fingerprint)
        current = True
    except UserError:
        current = False
    frame = _read_extra(Layout(out).duplicates, ["group", "path"]) if current else None
    if frame is None:
        return pd.DataFrame({"path": pd.Series([], dtype=str), "duplicate_group": pd.Series([], dtype="Int64")})
    frame = frame.sort_values("group", kind="stable").drop_duplicates("path")  # a photo in two groups: the first
    return pd.DataFrame({"path": frame["path"].astype(str),
                         "duplicate_group": pd.to_numeric(frame["group"]).astype("Int64")})


# ----------------------------------------------------------------------------- reading while a run writes

def _watched(out: Path) -> list[Path]:
    """Every file a read may look at; a change to any of them during a read repeats it."""
    layout = Layout(out)
    files = [layout.record, layout.features, layout.manifest, layout.map_points, layout.duplicates]
    for loss in LOSS_NAMES:
        files += [layout.summary(loss), layout.assignments(loss)]
    return files


def _stamp(files: list[Path]) -> tuple:
    def one(path: Path):
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    return tuple(one(path) for path in files)


def _snapshot(out: Path, read: Callable[[], T]) -> T:
    """`read()` over files no run changed while it read them (see the module docstring).

    An error from a folder that stood still is its real state and is raised at once; one
    from a folder that changed meanwhile (a commit or a refit in progress) is read again,
    and if it keeps changing the error says so."""
    files = _watched(out)
    error: UserError | None = None
    for attempt in range(READ_ATTEMPTS):
        before = _stamp(files)
        try:
            result = read()
            error = None
        except UserError as exc:
            error = exc
        changed = _stamp(files) != before or (error is not None and _committing(out))
        if not changed:
            if error is not None:
                raise error
            return result
        time.sleep(0.05 * 2 ** attempt)
    why = f": {error}" if error is not None else ""
    raise UserError(f"{out}: another photoclust run kept changing its files while they were read{why}; "
                    "try again when it has finished")


def _committing(out: Path) -> bool:
    """Whether `extract` is between writing the features and committing them (cache.write_cache)."""
    layout = Layout(out)
    return any((p.parent / f".{p.name}.next").exists() for p in (layout.features, layout.manifest))


# ----------------------------------------------------------------------------- one cluster, inline

@dataclass(frozen=True)
class ClusterView:
    """A cluster's photos, nearest its center first. Jupyter shows `_repr_html_` (thumbnails
    inlined as data URIs, so it needs no server and survives saving the notebook); a
    console shows the text `repr`."""

    loss: str
    cluster: int
    size: int  # members in the cluster
    members: pd.DataFrame  # the rows shown, from load_results
    html: str

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        lines = [f"{self.loss} cluster {self.cluster}: {self.size} photos, nearest first"
                 + (f" (showing {len(self.members)})" if len(self.members) < self.size else "")]
        lines += [f"  #{row.rank + 1}  {row.loss_to_center:.4g}  {row.path}" for row in self.members.itertuples()]
        return "\n".join(lines)


def show_cluster(source: str | os.PathLike, loss: str, cluster: int, limit: int | None = DEFAULT_LIMIT,
                 size: int | None = None) -> ClusterView:
    """The members of `cluster` under `loss`, nearest its center first, at most `limit` of them
    (None: all), as thumbnails with name and loss under each. Thumbnails come from the run's
    thumbs/ cache, or are made in memory from the photo when the cache lacks them; nothing
    is written."""
    from .render import THUMB_PX

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
        raise UserError(f"limit must be a whole number >= 1 or None, got {limit!r}")
    size = THUMB_PX if size is None else size
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        raise UserError(f"size must be a whole number of pixels >= 16, got {size!r}")
    out = output_folder(source)

    def read():
        embedded = load_embedded(out, repair=False)
        return _frame(out, _choose(out, [loss]), embedded), embedded

    frame, embedded = _snapshot(out, read)
    members = frame[frame["cluster"] == cluster].sort_values("rank", kind="stable")
    if members.empty:
        clusters = sorted(frame["cluster"].unique())
        raise UserError(f"the {loss} clustering in {out} has no cluster {cluster!r}; its clusters are "
                        f"{clusters[0]} to {clusters[-1]}")
    shown = members if limit is None else members.head(int(limit))
    sha1_of = {e.path: e.sha1 for e in embedded.entries if e.status == OK}
    images = _thumbnails(out, list(shown["path"]), sha1_of, int(size))
    html = cluster_html(loss, int(cluster), len(members), shown, images, int(size))
    return ClusterView(loss, int(cluster), len(members), shown.reset_index(drop=True), html)


def _thumbnails(out: Path, paths: list[str], sha1_of: dict[str, str], size: int) -> list[tuple[str, str]]:
    """(JPEG data URI or "", why not) per path: the cached thumbnail, else one made in memory."""
    from tqdm import tqdm

    from .images import UnreadableImage, thumbnail
    from .render import Thumbnails

    try:
        root = read_source(out)
    except UserError:
        root = None  # only the cached thumbnails can be shown
    cache = Thumbnails(root, Layout(out).thumbs, sha1_of, size)
    found = []
    for path in tqdm(paths, unit="img", desc="thumbnails", disable=None, leave=False):
        try:
            data = cache.cache_path(path).read_bytes()  # render's cache: the same name it writes
        except OSError:
            data = None
        reason = ""
        if data is None:
            if root is None:
                reason = "no thumbnail cached and source.json is missing"
            else:
                try:
                    buffer = io.BytesIO()
                    thumbnail(root / path, size).save(buffer, "JPEG", quality=88)
                    data = buffer.getvalue()
                except UnreadableImage as exc:
                    reason = exc.reason
        found.append((f"data:image/jpeg;base64,{base64.b64encode(data).decode('ascii')}" if data else "", reason))
    return found


def cluster_html(loss: str, cluster: int, size: int, shown: pd.DataFrame, images: list[tuple[str, str]],
                 px: int) -> str:
    """The HTML of a ClusterView: a title line and one figure per photo, every name escaped."""
    from .report import shown as text

    more = f", showing the nearest {len(shown)}" if len(shown) < size else ""
    cells = []
    for row, (uri, reason) in zip(shown.itertuples(), images):
        border = "3px solid #dc2828" if row.rank == 0 else "1px solid #ddd"
        if uri:
            picture = (f'<div style="height:{px + 6}px;display:flex;align-items:center;justify-content:center">'
                       f'<img src="{uri}" alt="{text(row.path)}" title="{text(row.path)}" '
                       f'style="max-width:{px}px;max-height:{px}px;border:{border}"></div>')
        else:
            picture = (f'<div title="{text(reason)}" style="width:{px}px;height:{px}px;background:#eee;'
                       f'color:#777;display:flex;align-items:center;justify-content:center">not available</div>')
        cells.append(
            f'<figure style="margin:0;width:{px + 8}px;text-align:center">{picture}'
            f'<figcaption style="font-size:11px;overflow-wrap:anywhere">#{row.rank + 1} {text(Path(row.path).name)}'
            f'<br><span style="color:#777">loss {row.loss_to_center:.4g}</span></figcaption></figure>')
    return (f'<div class="photoclust-cluster" style="font-family:sans-serif">'
            f'<p><b>{text(loss)} · cluster {cluster}</b> · {size} photos, nearest to the center first{more}; '
            f'the representative is framed in red</p>'
            f'<div style="display:flex;flex-wrap:wrap;gap:8px">{"".join(cells)}</div></div>')
