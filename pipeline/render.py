"""Stage 4: contact sheets (PNG) of every clustering, drawn with PIL from cached thumbnails.

  sheets/representatives_<loss>.png   one tile per cluster: its representative, number, size, file
  sheets/<loss>/cluster_<j>.png       the cluster's members nearest first (capped), representative marked
  sheets/losses.png                   rows = losses, columns = clusters by size, cells = representatives
  thumbs/<sha1>_<px>.jpg              thumbnails (EXIF-upright, alpha on white), made once per file content
  site/...                            the pages of site.py (a page per cluster, ...), which link the thumbnails

Every member gets a thumbnail (the cluster pages show them all); a photo is opened only
when its thumbnail is not cached yet, at most once per content (the thumbnail cache is
keyed by the file's SHA-1 from the manifest). Only the thumbnails a sheet draws are kept
in memory.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from . import atomic
from .cache import OK, load_embedded, read_source
from .cluster import check_current
from .images import UnreadableImage, thumbnail
from .layout import Layout
from .site import write_site
from .tables import display_name
from .represent import clustered_losses, read_assignments, represent_run

THUMB_PX = 160
MAX_PER_SHEET = 120
COLUMNS = 8
PAD = 8
BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
MUTED = (110, 110, 110)
MARK = (220, 40, 40)  # the representative's frame
PLACEHOLDER = (235, 235, 235)
STRIP_GAP, STRIP_HEIGHT = 5, 12  # a cluster's colour strip, under its thumbnail box
STRIP_EDGE = (200, 200, 200)


@dataclass
class RenderReport:
    sheets: list[Path] = field(default_factory=list)
    thumbnails_made: int = 0
    thumbnails_cached: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)  # photos that could not be drawn


# ----------------------------------------------------------------------------- drawing (pure)

# DejaVu Sans covers Latin, Greek, Cyrillic, Armenian, Georgian and more; Pillow's own
# default font covers Latin only and draws other file names as boxes. matplotlib (a
# dependency) ships it, so it is there wherever photoclust is installed.
_FONT_FILES = {False: "DejaVuSans.ttf", True: "DejaVuSans-Bold.ttf"}


@functools.lru_cache(maxsize=None)
def font(size: int = 12, bold: bool = False) -> ImageFont.ImageFont:
    """DejaVu Sans at `size` pixels; Pillow's default font where it cannot be loaded."""
    path = font_file(bold)
    if path is not None:
        try:
            return ImageFont.truetype(path, size)
        except (OSError, ImportError):  # a damaged file, or a Pillow without FreeType
            pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def font_file(bold: bool = False) -> str | None:
    """matplotlib's copy of DejaVu Sans, or None when it is not there."""
    try:
        import matplotlib
    except ImportError:
        return None
    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", _FONT_FILES[bold])
    return path if os.path.isfile(path) else None


def text_width(text: str, face: ImageFont.ImageFont) -> float:
    return face.getlength(text)


def shorten(text: str, face: ImageFont.ImageFont, width: float) -> str:
    """Fit `text` in `width` pixels, cutting the middle ("long_name…_2.jpg") so the
    start and the extension both stay readable."""
    if text_width(text, face) <= width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # the longest total kept length that fits
        mid = (lo + hi + 1) // 2
        head, tail = (mid + 1) // 2, mid // 2
        candidate = text[:head] + "…" + (text[-tail:] if tail else "")
        lo, hi = (mid, hi) if text_width(candidate, face) <= width else (lo, mid - 1)
    head, tail = (lo + 1) // 2, lo // 2
    return text[:head] + "…" + (text[-tail:] if tail else "")


def strip_box(size: int = THUMB_PX) -> tuple[int, int, int, int]:
    """(left, top, width, height) of a tile's colour strip inside the tile."""
    return PAD, PAD + size + STRIP_GAP, size, STRIP_HEIGHT


def tile(thumb: Image.Image | None, lines: list[str], face: ImageFont.ImageFont, *, marked: bool = False,
         size: int = THUMB_PX, strip: bool = False, palette=None) -> Image.Image:
    """A cell: the thumbnail centred in a size x size box (a grey box when missing), captions below.
    With `strip`, a band under the box holds `palette` (palette.Palette: bars as wide as its
    shares; left blank when None)."""
    line_height = int(face.size if hasattr(face, "size") else 11) + 3
    below = STRIP_GAP + STRIP_HEIGHT if strip else 0
    cell = Image.new("RGB", (size + 2 * PAD, size + 2 * PAD + below + line_height * len(lines)), BACKGROUND)
    draw = ImageDraw.Draw(cell)
    if strip and palette is not None:
        from .palette import draw_strip

        left, top, width, height = strip_box(size)
        draw.rectangle([left - 1, top - 1, left + width, top + height], outline=STRIP_EDGE)  # shows a white bar
        draw_strip(draw, (left, top, width, height), palette.rgb, palette.shares)
    if thumb is None:
        draw.rectangle([PAD, PAD, PAD + size - 1, PAD + size - 1], fill=PLACEHOLDER)
        draw.text((PAD + size // 2, PAD + size // 2), "not available", fill=MUTED, font=face, anchor="mm")
    else:
        x, y = PAD + (size - thumb.width) // 2, PAD + (size - thumb.height) // 2
        cell.paste(thumb, (x, y))
        if marked:
            draw.rectangle([x - 4, y - 4, x + thumb.width + 3, y + thumb.height + 3], outline=MARK, width=4)
    for i, line in enumerate(lines):
        color = INK if i == 0 else MUTED
        draw.text((PAD, size + 2 * PAD + below + i * line_height - 2), shorten(display_name(line), face, size), fill=color,
                  font=face)
    return cell


def grid(cells: list[Image.Image], columns: int, title: str, face: ImageFont.ImageFont,
         notes: list[str] = (), row_labels: list[str] | None = None) -> Image.Image:
    """Cells in rows of `columns` under a title (and notes); optional labels left of each row."""
    title_face = font(18, bold=True)
    columns = max(1, min(columns, len(cells))) if cells else 1
    cell_w = max((c.width for c in cells), default=THUMB_PX + 2 * PAD)
    cell_h = max((c.height for c in cells), default=THUMB_PX + 2 * PAD)
    rows = (len(cells) + columns - 1) // columns
    label_w = int(max((text_width(s, face) for s in row_labels), default=0)) + 2 * PAD if row_labels else 0
    header = 2 * PAD + 22 + 16 * len(notes)
    sheet = Image.new("RGB", (label_w + columns * cell_w + PAD, header + rows * cell_h + PAD), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, PAD), title, fill=INK, font=title_face)
    for i, note in enumerate(notes):
        draw.text((PAD, PAD + 24 + 16 * i), note, fill=MUTED, font=face)
    for i, cell in enumerate(cells):
        r, c = divmod(i, columns)
        sheet.paste(cell, (label_w + c * cell_w, header + r * cell_h))
    for r, label in enumerate(row_labels or []):
        draw.text((PAD, header + r * cell_h + cell_h // 2), label, fill=INK, font=face, anchor="lm")
    return sheet


# ----------------------------------------------------------------------------- thumbnails (I/O)

def _path_hash(path: str) -> str:
    return hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()


def thumbnail_file(cache_dir: Path, path: str, sha1: str | None, size: int = THUMB_PX) -> Path:
    """The cached thumbnail of the photo `path` whose content has SHA-1 `sha1`: thumbs/<sha1>_<size>.jpg.
    Without a hash (not in the manifest) a file gets a thumbnail of its own, never another's."""
    return Path(cache_dir) / (f"{sha1}_{size}.jpg" if sha1 else f"path-{_path_hash(path)}_{size}.jpg")


class Thumbnails:
    """Thumbnails of the photos under `root`, cached in `cache_dir` by content hash."""

    def __init__(self, root: Path, cache_dir: Path, sha1_of: dict[str, str], size: int = THUMB_PX):
        self.root, self.cache_dir, self.sha1_of, self.size = root, cache_dir, sha1_of, size
        self.images: dict[str, Image.Image | None] = {}  # the thumbnails kept in memory (the sheets draw them)
        self.available: dict[str, bool] = {}  # every photo prepared: whether its thumbnail file exists
        self.reasons: dict[str, str] = {}  # why a photo has none
        self.report = RenderReport()

    def cache_path(self, path: str) -> Path:
        return thumbnail_file(self.cache_dir, path, self.sha1_of.get(path), self.size)

    def _load(self, paths: list[str], keep: bool = True) -> tuple[Image.Image | None, bool, str, bool]:
        """(image, available, reason, made) of the thumbnail shared by `paths` (copies of one
        content): cached, or made from the first copy that can be read. Without `keep` a cached
        file's header is checked and no image is returned (the pages only link the file)."""
        cached = self.cache_path(paths[0])
        if cached.is_file():
            try:
                with Image.open(cached) as im:
                    if not keep:
                        return None, True, "", False
                    return im.convert("RGB"), True, "", False  # decoded: a damaged file is caught here
            except OSError:
                pass  # a damaged cache file is simply made again
        reason = ""
        for path in paths:
            try:
                im = thumbnail(self.root / path, self.size)
            except UnreadableImage as exc:
                reason = exc.reason
                continue
            atomic.write_with(cached, lambda fh: im.save(fh, "JPEG", quality=88))
            if not keep:
                return None, True, "", True
            with Image.open(cached) as saved:  # draw what the cache holds, so a rerun draws the same pixels
                return saved.convert("RGB"), True, "", True
        return None, False, reason, False

    def prepare(self, paths: list[str], progress: bool | None = None, keep: bool = True) -> None:
        """Load (or make) the thumbnails of `paths`, a few at a time: decoding releases the GIL.
        Identical files (the same SHA-1) share one thumbnail, made once. With `keep=False` only
        the files are made (the pages link them) and no image stays in memory."""
        todo = [p for p in dict.fromkeys(paths) if p not in self.available or (keep and p not in self.images)]
        if not todo:
            return
        by_content: dict[Path, list[str]] = defaultdict(list)
        for path in todo:
            by_content[self.cache_path(path)].append(path)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        workers = max(1, min(8, os.cpu_count() or 2))
        with ThreadPoolExecutor(workers) as pool, \
                tqdm(total=len(todo), unit="img", desc="thumbnails", disable=None if progress is None else not progress,
                     dynamic_ncols=True) as bar:
            groups = list(by_content.values())
            results = pool.map(functools.partial(self._load, keep=keep), groups)
            for group, (image, available, reason, made) in zip(groups, results):
                for path in group:
                    if keep:
                        self.images[path] = image
                    known = path in self.available
                    self.available[path] = available
                    if known:
                        continue  # counted when it was first prepared
                    if not available:
                        self.reasons[path] = reason
                        self.report.missing.append((path, reason))
                    elif made and path == group[0]:
                        self.report.thumbnails_made += 1
                    else:
                        self.report.thumbnails_cached += 1
                bar.update(len(group))

    def __getitem__(self, path: str) -> Image.Image | None:
        return self.images.get(path)


# ----------------------------------------------------------------------------- the stage

def cluster_palettes(frames: dict[str, pd.DataFrame], thumbs: Thumbnails, max_per_sheet: int) -> dict[str, dict]:
    """{loss: {cluster: palette.Palette or None}}: each cluster's dominant colours, from the
    thumbnails of the members its contact sheet draws (the nearest `max_per_sheet`, already
    in memory: no photo is opened). Each thumbnail's pixels are binned once for every loss
    (`palette.binned_colours`); the fit is seeded, so the same thumbnails give the same strip."""
    from .palette import binned_colours, cluster_palette

    binned: dict[str, object] = {}

    def of(path: str):
        if path not in binned:
            image = thumbs[path]
            binned[path] = binned_colours(image) if image is not None else None
        return binned[path]

    result: dict[str, dict] = {}
    for loss, frame in frames.items():
        shown = frame[frame["rank"] < max_per_sheet].sort_values(["cluster", "rank"], kind="stable")
        result[loss] = {int(cluster): cluster_palette(b for b in map(of, members["path"]) if b is not None)
                        for cluster, members in shown.groupby("cluster", sort=True)}
    return result


def _save(sheet: Image.Image, path: Path, report: RenderReport) -> None:
    atomic.write_with(path, lambda fh: sheet.save(fh, "PNG", optimize=False))
    report.sheets.append(path)


def render_run(out_dir: Path, losses: list[str] | None = None, *, max_per_sheet: int = MAX_PER_SHEET,
               log: Callable[[str], None] = print, progress: bool | None = None,
               map_method: str = "pca", palette: bool = True) -> RenderReport:
    """Draw every sheet of `out_dir` (after `represent`), and the map (`map_method`: see projection.py).
    With `palette`, each cluster's tile on the representatives sheet and its page get a strip
    of its dominant colours, from the thumbnails its contact sheet draws (`cluster_palettes`)."""
    out_dir = Path(out_dir)
    layout = Layout(out_dir)
    chosen = losses or clustered_losses(out_dir)
    if not chosen:
        represent_run(out_dir, log=log)  # raises the "run cluster first" message
    embedded = load_embedded(out_dir)
    fingerprint = embedded.fingerprint
    summaries = {loss: check_current(out_dir, loss, fingerprint) for loss in chosen}
    frames: dict[str, pd.DataFrame] = {loss: read_assignments(out_dir, loss) for loss in chosen}
    unranked = [loss for loss, frame in frames.items()
                if "rank" not in frame.columns or not layout.representatives(loss).is_file()]
    if unranked:  # represent did not run after the last cluster: one pass for all of them
        represent_run(out_dir, unranked, log=lambda m: None)
        frames.update({loss: read_assignments(out_dir, loss) for loss in unranked})

    sha1_of = {e.path: e.sha1 for e in embedded.entries if e.status == OK}
    source = read_source(out_dir)
    thumbs = Thumbnails(source, layout.thumbs, sha1_of)
    drawn, members = set(), set()
    for frame in frames.values():
        drawn.update(frame.loc[frame["rank"] < max_per_sheet, "path"])
        members.update(frame["path"])
    thumbs.prepare(sorted(drawn), progress)  # kept in memory for the sheets
    thumbs.prepare(sorted(members - drawn), progress, keep=False)  # only linked, by the cluster pages

    face = font(12)
    report = thumbs.report
    rep_cells: dict[str, list[tuple[int, int, Image.Image]]] = {}
    palettes = cluster_palettes(frames, thumbs, max_per_sheet) if palette else None
    for loss, frame in frames.items():
        ordered = frame.sort_values(["cluster", "rank"])
        groups = list(ordered.groupby("cluster", sort=True))
        cells = []
        for cluster, members in groups:
            first = members.iloc[0]
            cells.append(tile(thumbs[first["path"]], [f"cluster {cluster} · {len(members)} photos",
                                                      Path(first["path"]).name], face, strip=palette,
                              palette=palettes[loss].get(int(cluster)) if palettes else None))
            shown = members.head(max_per_sheet)
            member_cells = [tile(thumbs[row.path], [f"#{row.rank + 1}  loss {row.loss_to_center:.4g}",
                                                    Path(row.path).name], face, marked=row.rank == 0)
                            for row in shown.itertuples()]
            notes = [f"{len(members)} photos, nearest to the center first; the representative is framed in red"]
            if len(members) > len(shown):
                notes.append(f"showing the nearest {len(shown)} of {len(members)}: "
                             f"{len(members) - len(shown)} more are listed in clusters/{loss}/assignments.csv")
            _save(grid(member_cells, COLUMNS, f"{loss} · cluster {cluster}", face, notes),
                  layout.cluster_sheet(loss, int(cluster)), report)
        _save(grid(cells, COLUMNS, f"{loss}: one representative per cluster", face,
                   [f"{len(groups)} clusters of {len(frame)} photos; the member nearest its center under {loss}"]),
              layout.representatives_sheet(loss), report)
        rep_cells[loss] = [(len(m), int(c), cells[i]) for i, (c, m) in enumerate(groups)]

    if rep_cells:
        width = max(len(v) for v in rep_cells.values())
        blank = Image.new("RGB", (THUMB_PX + 2 * PAD, THUMB_PX + 2 * PAD), BACKGROUND)
        cells = []
        for loss in rep_cells:
            by_size = [cell for _, _, cell in sorted(rep_cells[loss], key=lambda t: (-t[0], t[1]))]
            cells.extend(by_size + [blank] * (width - len(by_size)))
        _save(grid(cells, width, "Representatives under each loss", face,
                   ["rows: losses; columns: that loss's clusters, largest first"], row_labels=list(rep_cells)),
              layout.losses_sheet, report)

    # The browsable site: a page per cluster, the duplicates, outliers and assigned pages (site.py).
    pages = write_site(out_dir, frames, summaries, thumbs, source, known_paths=[e.path for e in embedded.entries],
                       features_fingerprint=fingerprint, log=log, progress=progress, palettes=palettes)
    log(f"{len(pages)} pages -> {layout.site}")

    log(f"{len(report.sheets)} sheets -> {layout.sheets} ({report.thumbnails_made} thumbnails made, "
        f"{report.thumbnails_cached} from cache{f', {len(report.missing)} photos not available' if report.missing else ''})")

    # ---- the map of the whole collection: map.csv, site/map.html, site/map/ (pipeline/photomap.py)
    from .photomap import write_map

    write_map(out_dir, embedded, frames, method=map_method, log=log, progress=progress)
    # ---- end of the map
    return report
