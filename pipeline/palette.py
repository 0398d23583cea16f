"""`photoclust palette`: the dominant colours of a photo, or of every photo of a folder and
of the folder as a whole, fitted on the engine (`colour.fit_colours`: k-means of the
image's distinct colours in CIELAB by default, each weighted by how many pixels carry it).

  palette.png    the swatch: a bar per colour, as wide as its share of the pixels, its hex
                 code and share printed on it in black or white (whichever reads better),
                 and a legend under the bars that names every colour (narrow bars too)
  palette.csv    hex, r, g, b, lab_L, lab_a, lab_b, share, pixels; largest share first
  palette.json   the same colours, with what they were fitted from (pixels, distinct colours,
                 k, loss, space, seed, the loss's parameter, the objective)

For a folder the files above are the whole folder's palette (the colour counts of every
photo summed: one k-means over the folder's pixels, not a palette of palettes), and
`photos/<path>.palette.{png,csv,json}` each photo's (`layout.PaletteLayout`). The Lab
columns are the CIELAB coordinates of the sRGB colour shown (the hex code), so a row is
consistent with itself whatever space the colours were fitted in; they are named lab_*
because the CSV already has a `b` (blue).

`cluster_palette` is the small palette of a cluster's thumbnails that render draws under
each cluster's tile and on its page.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from . import atomic, colour
from .errors import UserError
from .images import UnreadableImage, open_rgb, scan_images
from .layout import PaletteLayout
from .tables import display_name, write_frame

DEFAULT_K = 6
DEFAULT_LOSS = "square"
DEFAULT_SPACE = "lab"
COLUMNS = ["hex", "r", "g", "b", "lab_L", "lab_a", "lab_b", "share", "pixels"]
# The swatch's geometry (pixels); tests measure the bars at these places.
SWATCH_PAD = 16
SWATCH_WIDTH = 720  # the bars together
TITLE_HEIGHT = 34
BAR_TOP = SWATCH_PAD + TITLE_HEIGHT
BAR_HEIGHT = 120
LEGEND_COLUMNS = 3
LEGEND_ROW = 24
CHIP = 16
BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
MUTED = (110, 110, 110)
DARK_TEXT, LIGHT_TEXT = (0, 0, 0), (255, 255, 255)
STRIP_K = 5  # colours in a cluster's strip (render)


# ----------------------------------------------------------------------------- palettes (pure)

@dataclass(frozen=True)
class Palette:
    """The colours of one image (or folder), largest share first."""
    rgb: np.ndarray  # (c, 3) uint8
    pixels: np.ndarray  # (c,) int64: how many pixels each colour stands for
    fit: colour.ColourFit
    distinct: int  # distinct colours of the input

    @property
    def shares(self) -> np.ndarray:
        return self.pixels / self.pixels.sum()

    @property
    def hex(self) -> list[str]:
        return [colour.hex_code(c) for c in self.rgb]

    def frame(self) -> pd.DataFrame:
        lab = colour.rgb_to_lab(self.rgb).reshape(-1, 3)
        return pd.DataFrame({"hex": self.hex, "r": self.rgb[:, 0].astype(int), "g": self.rgb[:, 1].astype(int),
                             "b": self.rgb[:, 2].astype(int), "lab_L": np.round(lab[:, 0], 4),
                             "lab_a": np.round(lab[:, 1], 4), "lab_b": np.round(lab[:, 2], 4),
                             "share": np.round(self.shares, 6), "pixels": self.pixels.astype(np.int64)},
                            columns=COLUMNS)


def palette_of(colours: colour.Colours, k: int = DEFAULT_K, loss: str = DEFAULT_LOSS, space: str = DEFAULT_SPACE,
               *, seed: int = 0, n_init: int | None = None) -> Palette:
    """k dominant colours of `colours` (fewer when the image has fewer distinct colours),
    ordered by the pixels they stand for (ties: by hex code)."""
    fit = colour.fit_colours(colours, k, loss, space, seed=seed, n_init=n_init)
    pixels = np.bincount(fit.labels.astype(np.int64), weights=colours.counts, minlength=len(fit.rgb))
    pixels = np.rint(pixels).astype(np.int64)
    codes = [int(r) << 16 | int(g) << 8 | int(b) for r, g, b in fit.rgb]
    order = sorted(range(len(pixels)), key=lambda i: (-pixels[i], codes[i]))
    return Palette(fit.rgb[order], pixels[order], fit, len(colours.codes))


def record(palette: Palette, name: str, k: int, loss: str, space: str, seed: int, **extra) -> dict:
    """What palette.json holds: the colours and what they were fitted from (no time, no path
    outside the input: the same input gives the same bytes)."""
    rows = palette.frame().to_dict(orient="records")
    colours = [{key: (v.item() if hasattr(v, "item") else v) for key, v in row.items()} for row in rows]
    return {"image": name, "pixels": int(palette.pixels.sum()), "distinct_colours": palette.distinct, "k": k,
            "colours_found": len(colours), "loss": loss, "space": space, "seed": seed,
            "params": palette.fit.params, "objective": palette.fit.objective, **extra, "colours": colours}


def bar_edges(shares: Iterable[float], width: int) -> np.ndarray:
    """x edges (c + 1 of them, 0 .. width) of bars as wide as their shares: each bar within
    a pixel of share x width, the bars filling `width` exactly."""
    cumulative = np.concatenate([[0.0], np.cumsum(np.asarray(list(shares), dtype=np.float64))])
    edges = np.rint(cumulative / max(cumulative[-1], 1e-300) * width).astype(int)
    edges[-1] = width
    return edges


def relative_luminance(rgb) -> float:
    """WCAG 2 relative luminance of an sRGB colour (0 black .. 1 white)."""
    linear = colour.srgb_to_linear(np.asarray(rgb, dtype=np.float64) / 255.0)
    return float(linear @ np.array([0.2126, 0.7152, 0.0722]))


def text_colour(rgb) -> tuple[int, int, int]:
    """Black or white, whichever has the higher WCAG contrast ratio on `rgb`."""
    lum = relative_luminance(rgb)
    return DARK_TEXT if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else LIGHT_TEXT


def draw_strip(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], rgb: np.ndarray, shares) -> None:
    """Bars of `rgb` across `box` (left, top, width, height), as wide as their shares."""
    left, top, width, height = box
    edges = bar_edges(shares, width)
    for colour_, a, b in zip(rgb, edges[:-1], edges[1:]):
        if b > a:
            draw.rectangle([left + a, top, left + b - 1, top + height - 1], fill=tuple(int(v) for v in colour_))


def draw_swatch(palette: Palette, title: str) -> Image.Image:
    """The swatch PNG: a title, the bars (hex code and share on each bar wide enough to hold
    them) and a legend of every colour, largest first."""
    from .render import font, shorten

    face, bold, title_face = font(13), font(15, bold=True), font(16, bold=True)
    rows = -(-len(palette.rgb) // LEGEND_COLUMNS)
    height = BAR_TOP + BAR_HEIGHT + SWATCH_PAD + rows * LEGEND_ROW + SWATCH_PAD
    image = Image.new("RGB", (SWATCH_WIDTH + 2 * SWATCH_PAD, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((SWATCH_PAD, SWATCH_PAD), shorten(display_name(title), title_face, SWATCH_WIDTH), fill=INK,
              font=title_face)
    draw_strip(draw, (SWATCH_PAD, BAR_TOP, SWATCH_WIDTH, BAR_HEIGHT), palette.rgb, palette.shares)
    edges = bar_edges(palette.shares, SWATCH_WIDTH)
    middle = BAR_TOP + BAR_HEIGHT // 2
    for rgb, code, share, a, b in zip(palette.rgb, palette.hex, palette.shares, edges[:-1], edges[1:]):
        percent = f"{100 * share:.1f}%"
        if max(bold.getlength(code), face.getlength(percent)) + 8 <= b - a:
            ink = text_colour(rgb)
            x = SWATCH_PAD + (a + b) // 2
            draw.text((x, middle - 2), code, fill=ink, font=bold, anchor="ms")
            draw.text((x, middle + 4), percent, fill=ink, font=face, anchor="mt")
    column_width = SWATCH_WIDTH // LEGEND_COLUMNS
    top = BAR_TOP + BAR_HEIGHT + SWATCH_PAD
    for i, (rgb, code, share) in enumerate(zip(palette.rgb, palette.hex, palette.shares)):
        row, col = divmod(i, LEGEND_COLUMNS)
        x, y = SWATCH_PAD + col * column_width, top + row * LEGEND_ROW
        draw.rectangle([x, y, x + CHIP - 1, y + CHIP - 1], fill=tuple(int(v) for v in rgb), outline=MUTED)
        draw.text((x + CHIP + 8, y + CHIP // 2), f"{code}  {100 * share:.1f}%", fill=INK, font=face, anchor="lm")
    return image


STRIP_BITS = 5  # a cluster's strip pools its thumbnails' pixels in 2^15 colour bins


@dataclass(frozen=True)
class BinnedColours:
    """A picture's pixels pooled by the top STRIP_BITS bits of each channel: the bins used
    (ascending), how many pixels fell in each and the sum of their sRGB values."""
    bins: np.ndarray  # (b,) int64
    counts: np.ndarray  # (b,) int64
    sums: np.ndarray  # (b, 3) float64 (exact: integers)


def binned_colours(image: Image.Image) -> BinnedColours:
    """The thumbnail `image`'s pixels in colour bins (see BinnedColours)."""
    rgb = np.asarray(image.convert("RGB") if image.mode != "RGB" else image).reshape(-1, 3)
    top = (rgb >> (8 - STRIP_BITS)).astype(np.int64)
    index = (top[:, 0] << (2 * STRIP_BITS)) | (top[:, 1] << STRIP_BITS) | top[:, 2]
    bins, inverse, counts = np.unique(index, return_inverse=True, return_counts=True)
    sums = np.stack([np.bincount(inverse, weights=rgb[:, j], minlength=len(bins)) for j in range(3)], axis=1)
    return BinnedColours(bins, counts.astype(np.int64), sums)


def pooled_colours(parts: Iterable[BinnedColours]) -> colour.Colours | None:
    """The binned colours of several pictures added up, each bin standing at its pixels' mean
    colour (rounded: it stays inside its bin, so the codes stay distinct and ascending)."""
    parts = list(parts)
    if not parts:
        return None
    size = 1 << (3 * STRIP_BITS)
    bins = np.concatenate([p.bins for p in parts])
    counts = np.bincount(bins, weights=np.concatenate([p.counts for p in parts]), minlength=size)
    used = np.flatnonzero(counts)
    sums = np.concatenate([p.sums for p in parts])
    means = np.stack([np.bincount(bins, weights=sums[:, j], minlength=size)[used] for j in range(3)], axis=1)
    rgb = np.rint(means / counts[used, None]).astype(np.int64)
    codes = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    return colour.Colours(codes, np.rint(counts[used]).astype(np.int64))


def cluster_palette(parts: Iterable[BinnedColours], k: int = STRIP_K, seed: int = 0) -> Palette | None:
    """The dominant colours of a cluster's thumbnails, from their binned colours (square loss,
    CIELAB, one k-means++ start: on the sample's clusters its objective is within 0.2% of four
    starts', at a quarter of the time); None when there is none. Shares are of the
    thumbnails' pixels, each bin's pixels taking its label."""
    colours = pooled_colours(parts)
    return None if colours is None else palette_of(colours, k, "square", "lab", seed=seed, n_init=1)


# ----------------------------------------------------------------------------- the command (I/O)

@dataclass
class PaletteReport:
    out: Path
    photos: int = 0  # photos whose palette was written
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    whole: Palette | None = None


class ColourTally:
    """The colour counts of many photos summed, in one 2^24 table (bounded memory, whatever
    the number of photos)."""

    def __init__(self):
        self.table: np.ndarray | None = None

    def add(self, colours: colour.Colours) -> None:
        if self.table is None:
            self.table = np.zeros(1 << 24, dtype=np.int64)
        self.table[colours.codes] += colours.counts  # codes are distinct: no lost update

    def colours(self) -> colour.Colours:
        present = np.flatnonzero(self.table)
        return colour.Colours(present.astype(np.int64), self.table[present])


def check_settings(k, loss: str, space: str) -> tuple[int, str, str]:
    """The command's settings, or one line naming the flag."""
    from .losses import LossInputError, check_loss

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UserError(f"--k must be an integer >= 1, got {k}")
    try:
        loss = check_loss(loss)
    except LossInputError as exc:
        raise UserError(f"--loss: {exc}") from None
    return int(k), loss, colour.check_space(space)


def check_out(target: Path, out: Path) -> None:
    """Refuse an output folder that is, or holds, the photo or photo folder: its marker would
    hide the photos from every later search (a folder inside the photo folder is fine: the
    search leaves it out)."""
    import os

    photo = os.path.realpath(target)
    folder = os.path.realpath(out)
    if photo == folder or photo.startswith(folder.rstrip(os.sep) + os.sep):
        raise UserError(f"--out {out}: the palette folder may not be or contain {target}; choose another "
                        "(default: outputs/palette/<name>)")


def image_colours(path: Path) -> colour.Colours:
    """The distinct colours and pixel counts of the photo at `path`, decoded upright (EXIF)
    at full size; raises `UnreadableImage`."""
    image = open_rgb(path)
    pixels = np.asarray(image)
    image.close()
    codes = colour.pixel_codes(pixels)
    del pixels  # at most the codes and the count's own arrays at once
    return colour.colours_of(codes)


def write_palette(files: dict[str, Path], palette: Palette, meta: dict, title: str) -> None:
    """The swatch, the CSV and the JSON (written last) of one palette."""
    swatch = draw_swatch(palette, title)
    atomic.write_with(files["png"], lambda fh: swatch.save(fh, "PNG", optimize=False))
    write_frame(files["csv"], palette.frame(), float_format="%.6f")
    atomic.write_text(files["json"], json.dumps(meta, indent=2, ensure_ascii=True) + "\n")


def _title(name: str, palette: Palette, loss: str, space: str) -> str:
    return f"{name} · {len(palette.rgb)} colours · {loss} loss in {'CIELAB' if space == 'lab' else 'sRGB'}"


def palette_run(target: Path, out: Path, *, k: int = DEFAULT_K, loss: str = DEFAULT_LOSS,
                space: str = DEFAULT_SPACE, seed: int = 0, log: Callable[[str], None] = print,
                progress: bool | None = None) -> PaletteReport:
    """The palette of the photo `target`, or of every photo under the folder `target` and of
    the whole folder, into `out` (see `layout.PaletteLayout`). Photos are only read."""
    from tqdm import tqdm

    k, loss, space = check_settings(k, loss, space)
    target, layout = Path(target), PaletteLayout(out)
    report = PaletteReport(Path(out))
    settings = dict(k=k, loss=loss, space=space, seed=seed)
    if not target.exists():
        raise UserError(f"{target}: no such photo or folder")
    check_out(target, out)
    if not target.is_dir():
        try:
            colours = image_colours(target)
        except UnreadableImage as exc:
            raise UserError(f"{target}: cannot read it as a photo ({exc.reason})") from None
        palette = palette_of(colours, k, loss, space, seed=seed)
        write_palette(layout.files(), palette, record(palette, target.name, **settings),
                      _title(target.name, palette, loss, space))
        report.photos, report.whole = 1, palette
        return report

    scan = scan_images(target, exclude=[out])
    for rel, reason in scan.unreadable:
        report.unreadable.append((rel, reason))
        log(f"cannot read {rel}: {reason}; left out")
    for note in scan.not_read_notes():
        log(note)
    tally = ColourTally()
    done: list[str] = []
    bar = tqdm(scan.images, unit="photo", desc="palettes", disable=None if progress is None else not progress,
               dynamic_ncols=True, file=sys.stderr)
    say = lambda message: log(message) if bar.disable else tqdm.write(message, file=sys.stderr)
    for rel in bar:
        try:
            colours = image_colours(target / rel)
        except UnreadableImage as exc:
            report.unreadable.append((rel, exc.reason))
            say(f"cannot read {rel}: {exc.reason}; left out")
            continue
        tally.add(colours)
        palette = palette_of(colours, k, loss, space, seed=seed)
        write_palette(layout.files(rel), palette, record(palette, rel, **settings), _title(rel, palette, loss, space))
        done.append(rel)
    bar.close()
    _remove_stale(layout, set(done))
    report.photos = len(done)
    if not done:
        raise UserError(f"{target}: no photo that can be read"
                        f"{f' ({len(report.unreadable)} unreadable)' if report.unreadable else ''}")
    whole = palette_of(tally.colours(), k, loss, space, seed=seed)
    name = target.resolve().name or str(target)
    meta = record(whole, name, **settings, photos=len(done),
                  unreadable=[{"path": p, "reason": r} for p, r in report.unreadable])
    write_palette(layout.files(), whole, meta, _title(f"{name} ({len(done)} photos)", whole, loss, space))
    report.whole = whole
    return report


def _remove_stale(layout: PaletteLayout, current: set[str]) -> None:
    """Per-photo files of photos no longer in the folder (or unreadable now): only our own
    names under photos/, never anything else."""
    if not layout.photos.is_dir():
        return
    keep = {path for rel in current for path in layout.files(rel).values()}
    for path in sorted(layout.photos.rglob("*")):
        if path.is_file() and path.name.endswith(PaletteLayout.SUFFIXES) and path not in keep:
            atomic.remove(path)
