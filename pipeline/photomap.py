"""The map of the whole collection: every photo at its place on a 2-D projection of its
embedding, drawn as its thumbnail on a <canvas> (site/map.html), written by `render`.

  map.csv                  path, x, y: each photo's place, in the unit box the page draws
  site/map.html            the page (pipeline/templates/map.html, its script map.js)
  site/map/points.js       `const PHOTOCLUST_MAP = {...};`: per photo x, y, atlas, cell,
                           cluster under each loss, display name and relative link
  site/map/atlas_<i>.jpg   JPEG sprite sheets of CELL_PX thumbnails, ATLAS_GRID x ATLAS_GRID cells
  site/map/map.json        the record: what map.csv and the atlases were made from, written last

The page opens from file:// with no server: its data comes in through a <script src>, since
browsers refuse fetch() of local files. The projection is keyed on the features'
fingerprint, the method, the normalisation and the seed; each atlas on the thumbnails it
holds (the photos' SHA-1 in order). A rerun with the same features and photos reuses both
and writes nothing; a change of features redoes the projection, and only the atlases whose
photos changed are drawn again. A rebuild removes the record first, so files of a rebuild
that a crash interrupted are never taken for current.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from tqdm import tqdm

from . import atomic, projection
from .cache import OK, Embedded, read_source
from .cluster import normalize_features, read_summary
from .layout import Layout
from .tables import display_name, read_frame, write_frame

CELL_PX = 48
ATLAS_GRID = 64  # cells per row and per column: 4096 photos per atlas
ATLAS_QUALITY = 85
PLACEHOLDER = (200, 200, 200)  # the cell of a photo whose thumbnail could not be made
SEED = 0
FORMAT = 1
SCRIPT_NAME = "PHOTOCLUST_MAP"
CHUNK = 512  # thumbnails held in memory at once while drawing the atlases


@dataclass
class MapReport:
    page: Path
    photos: int
    method: str
    projected: bool  # False: map.csv was reused
    atlases_made: int = 0
    atlases_kept: int = 0
    missing: list[str] = field(default_factory=list)  # photos drawn as a placeholder


# ----------------------------------------------------------------------------- pure parts

def per_atlas() -> int:
    return ATLAS_GRID * ATLAS_GRID


def atlas_keys(contents: list[str], cell: int = CELL_PX) -> list[str]:
    """One key per atlas: a digest of the cell size and the contents (SHA-1s) of its photos, in order."""
    keys = []
    for start in range(0, len(contents), per_atlas()):
        digest = hashlib.sha256(f"{FORMAT} {cell} {ATLAS_GRID} {ATLAS_QUALITY}\n".encode())
        digest.update("\n".join(contents[start:start + per_atlas()]).encode("utf-8", "surrogateescape"))
        keys.append(digest.hexdigest()[:16])
    return keys


def cell_image(thumb: Image.Image | None, cell: int = CELL_PX) -> Image.Image:
    """A thumbnail cropped to the middle square and scaled to cell x cell (grey when missing)."""
    if thumb is None:
        return Image.new("RGB", (cell, cell), PLACEHOLDER)
    return ImageOps.fit(thumb.convert("RGB"), (cell, cell), Image.Resampling.LANCZOS)


def atlas_size(count: int, cell: int = CELL_PX) -> tuple[int, int]:
    rows = max(1, -(-count // ATLAS_GRID))
    return ATLAS_GRID * cell, rows * cell


def cell_origin(cell_index: int, cell: int = CELL_PX) -> tuple[int, int]:
    row, column = divmod(cell_index, ATLAS_GRID)
    return column * cell, row * cell


def photo_base(photos: Path, page_dir: Path) -> str:
    """The URL of the photo folder as seen from a page in `page_dir`, ending in "/": relative
    when there is a relative path (so the folder pair can move together), a file:// URL otherwise."""
    try:
        relative = os.path.relpath(photos, page_dir)
    except ValueError:  # another drive (Windows)
        return Path(photos).resolve().as_uri().rstrip("/") + "/"
    relative = Path(relative).as_posix()
    return "" if relative == "." else quote(relative.encode("utf-8", "surrogateescape"), safe="/") + "/"


def photo_href(path: str) -> str:
    """A manifest path (relative, POSIX) as a percent-encoded URL path: any byte of the name is safe."""
    return quote(path.encode("utf-8", "surrogateescape"), safe="/")


def rounded(xy: np.ndarray) -> np.ndarray:
    """Coordinates as map.csv holds them (6 decimals), so a reused map.csv draws the same page."""
    return np.array([float(f"{v:.6f}") for v in np.asarray(xy, dtype=np.float64).ravel()]).reshape(-1, 2)


def points_data(paths: list[str], xy: np.ndarray, clusters: dict[str, list[int]], base: str,
                atlases: list[str]) -> dict:
    """What points.js defines: columns of one value per photo, in the order of `paths`."""
    n = len(paths)
    return {
        "format": FORMAT, "cell": CELL_PX, "grid": ATLAS_GRID, "atlases": atlases, "photos": base,
        "losses": list(clusters),
        "k": {loss: (max(labels) + 1 if labels else 0) for loss, labels in clusters.items()},
        "x": [float(v) for v in xy[:, 0]], "y": [float(v) for v in xy[:, 1]],
        "atlas": [i // per_atlas() for i in range(n)], "cell_index": [i % per_atlas() for i in range(n)],
        "cluster": clusters,
        "name": [display_name(p) for p in paths],
        "href": [photo_href(p) for p in paths],
    }


def points_script(data: dict) -> str:
    """`const PHOTOCLUST_MAP = {...};`: JSON with every non-ASCII character and < > & escaped
    (\\uXXXX), so nothing in a file name can end the string, or the script were it inlined."""
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f"const {SCRIPT_NAME} = {text};\n"


def page_html(title: str, script: str, index: str | None) -> str:
    """map.html from its template; every value autoescaped."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("pipeline", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]), keep_trailing_newline=True)
    return env.get_template("map.html").render(title=title, script=script, index=index)


# ----------------------------------------------------------------------------- I/O

def read_record(layout: Layout) -> dict | None:
    try:
        record = json.loads(layout.map_record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_if_changed(path: Path, text: str) -> bool:
    try:
        if path.read_text(encoding="utf-8", errors="surrogateescape") == text:
            return False
    except OSError:
        pass
    atomic.write_text(path, text)
    return True


def _reused_points(layout: Layout, paths: list[str]) -> np.ndarray | None:
    """map.csv's coordinates when it holds exactly `paths`, in order."""
    try:
        frame = read_frame(layout.map_points, text_columns=["path"])
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    if list(frame.columns) != ["path", "x", "y"] or frame["path"].tolist() != paths:
        return None
    xy = frame[["x", "y"]].to_numpy(np.float64)
    return xy if np.isfinite(xy).all() else None


def _normalization(out_dir: Path, losses: list[str]) -> str:
    """The clusterings' normalisation when they agree (the map shows their geometry), else l2."""
    found = {str((read_summary(out_dir, loss) or {}).get("normalize", "l2")) for loss in losses}
    return found.pop() if len(found) == 1 and found <= {"l2", "none"} else "l2"


def _draw_atlases(layout: Layout, todo: list[int], paths: list[str], sha1_of: dict[str, str], photos: Path,
                  progress: bool | None, report: MapReport) -> None:
    from .render import Thumbnails  # the sheets' thumbnail cache, shared

    total = sum(min(per_atlas(), len(paths) - i * per_atlas()) for i in todo)
    with tqdm(total=total, unit="img", desc="map atlases", dynamic_ncols=True,
              disable=None if progress is None else not progress) as bar:
        for index in todo:
            members = paths[index * per_atlas():(index + 1) * per_atlas()]
            atlas = Image.new("RGB", atlas_size(len(members)), PLACEHOLDER)
            for start in range(0, len(members), CHUNK):
                chunk = members[start:start + CHUNK]
                thumbs = Thumbnails(photos, layout.thumbs, sha1_of)  # one per chunk: bounded memory
                thumbs.prepare(chunk, progress=False)
                for offset, path in enumerate(chunk):
                    if thumbs[path] is None:
                        report.missing.append(path)
                    atlas.paste(cell_image(thumbs[path]), cell_origin(start + offset))
                bar.update(len(chunk))
            atomic.write_with(layout.map_atlas(index), lambda fh: atlas.save(fh, "JPEG", quality=ATLAS_QUALITY))
            report.atlases_made += 1


def write_map(out_dir: Path, embedded: Embedded, assignments: dict[str, pd.DataFrame], *,
              method: str = projection.DEFAULT_METHOD, log: Callable[[str], None] = print,
              progress: bool | None = None) -> MapReport:
    """map.csv, site/map.html and site/map/ for the photos of `embedded`, coloured by the
    clusterings in `assignments` (loss -> assignments.csv as read by render)."""
    out_dir = Path(out_dir)
    layout = Layout(out_dir)
    paths = embedded.paths
    losses = list(assignments)
    normalize = _normalization(out_dir, losses)
    used = projection.used_method(projection.check_method(method), len(paths))
    key = {"format": FORMAT, "features_fingerprint": embedded.fingerprint, "method": used,
           "normalize": normalize, "seed": SEED}
    sha1_of = {e.path: e.sha1 for e in embedded.entries if e.status == OK}
    contents = [sha1_of.get(p) or f"path:{p}" for p in paths]
    keys = atlas_keys(contents)
    record = read_record(layout) or {}

    xy = _reused_points(layout, paths) if record.get("key") == key else None
    report = MapReport(layout.map_page, len(paths), used, projected=xy is None)
    old_keys = record.get("atlases") if isinstance(record.get("atlases"), list) else []
    todo = [i for i, k in enumerate(keys)
            if not (i < len(old_keys) and old_keys[i] == k and layout.map_atlas(i).is_file())]
    report.atlases_kept = len(keys) - len(todo)
    rebuilt = xy is None or bool(todo) or len(old_keys) != len(keys)
    if rebuilt:
        if layout.map_record.exists():
            atomic.remove(layout.map_record)  # from here on, nothing of the old map passes for current
        if xy is None:
            features = normalize_features(embedded.features, normalize)
            xy = rounded(projection.to_unit_box(projection.project(features, used, seed=SEED)))
            write_frame(layout.map_points, pd.DataFrame({"path": paths, "x": xy[:, 0], "y": xy[:, 1]}),
                        float_format="%.6f")
        if todo:
            _draw_atlases(layout, todo, paths, sha1_of, read_source(out_dir), progress, report)
        stale = len(keys)
        while layout.map_atlas(stale).exists():
            atomic.remove(layout.map_atlas(stale))
            stale += 1

    clusters = {}
    for loss, frame in assignments.items():
        cluster_of = dict(zip(frame["path"], frame["cluster"].astype(int)))
        clusters[loss] = [int(cluster_of.get(p, -1)) for p in paths]
    page_dir = layout.map_page.parent
    photos = read_source(out_dir)
    atlases = [Path(os.path.relpath(layout.map_atlas(i), page_dir)).as_posix() for i in range(len(keys))]
    data = points_data(paths, xy, clusters, photo_base(photos, page_dir), atlases)
    _write_if_changed(layout.map_script, points_script(data))
    script = Path(os.path.relpath(layout.map_script, page_dir)).as_posix()
    index = Path(os.path.relpath(layout.index, page_dir)).as_posix()
    _write_if_changed(layout.map_page, page_html(f"photoclust map: {display_name(photos.name)}", script, index))
    new_record = {"key": key, "atlases": keys, "photos": len(paths)}
    if rebuilt or record != new_record:
        atomic.write_text(layout.map_record, json.dumps(new_record, indent=2, sort_keys=True) + "\n")
    log(f"map: {len(paths)} photos ({used}{', reused' if not report.projected else ''}; "
        f"{report.atlases_made} atlases drawn, {report.atlases_kept} kept"
        f"{f', {len(report.missing)} thumbnails not available' if report.missing else ''}) -> {layout.map_page}")
    return report
