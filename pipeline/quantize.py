"""`photoclust quantize`: a photo redrawn with k colours, saved as an indexed (palette) PNG.

The k colours are fitted on the engine (`colour.fit_colours`: the image's distinct colours
weighted by their pixel counts, any loss, in CIELAB or RGB) and every pixel takes the
colour of its cluster. With Floyd-Steinberg dithering every pixel takes instead the
palette colour nearest to it once the error of the pixels before it has been added
(`floyd_steinberg`). An image with at most k distinct colours comes back as it is
(lossless, PSNR inf). The PSNR is taken over every pixel and channel in sRGB (0-255).

  quantize_image(image, k, ...) -> Quantized     pure: indices, palette, PSNR
  floyd_steinberg(values, palette) -> indices    pure: the dithering, vectorised by anti-diagonal
  indexed_png(quantized) -> bytes                the palette-mode PNG
  comparison_strip(image, results) -> Image      the image at each k with k and PSNR under it
  quantize_file(...)                             the command: read, quantize, write through atomic
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import colour as C
from .threads import one_thread
from .errors import UserError

DITHERS = ("none", "floyd-steinberg")
MAX_K = 256  # a PNG palette holds at most 256 colours
DEFAULT_K = 16
# Floyd-Steinberg's shares of a pixel's error: right, down-left, down, down-right (sum 1)
FS_RIGHT, FS_DOWN_LEFT, FS_DOWN, FS_DOWN_RIGHT = (np.float32(v / 16) for v in (7, 3, 5, 1))
STRIP_TILE = 256  # the long side of a tile of the comparison strip (smaller images: pixel for pixel)
_PSNR_ROWS = 1 << 20  # pixels per block when comparing two images


@dataclass
class Quantized:
    """An image drawn with at most k colours: each pixel's index into `palette`."""
    k: int
    indices: np.ndarray  # (h, w) uint8
    palette: np.ndarray  # (m, 3) uint8, m <= k, most used first
    psnr: float  # dB against the original over every pixel and channel; inf when lossless
    fitted: bool  # False: the image had at most k colours and came back as it was

    @property
    def pixels(self) -> np.ndarray:
        """(h, w, 3) uint8: the quantized image."""
        return self.palette[self.indices]


# ----------------------------------------------------------------------------- checks

def parse_ks(text) -> list[int]:
    """--k: one number (16) or a comma-separated list (2,4,8,16,32), each 1 to 256."""
    raw = str(text).strip()
    parts = [p.strip() for p in raw.split(",")]
    ks = []
    for part in parts:
        try:
            k = int(part)
        except ValueError:
            k = None
        if k is None or not 1 <= k <= MAX_K:
            raise UserError(f"--k {raw!r}: give a number of colours from 1 to {MAX_K}, or a comma-separated "
                            "list such as 2,4,8,16,32")
        ks.append(k)
    if len(set(ks)) != len(ks):
        raise UserError(f"--k {raw!r}: a k appears twice; list each number of colours once")
    return ks


def check_dither(dither: str) -> str:
    if dither not in DITHERS:
        raise UserError(f"--dither must be one of {', '.join(DITHERS)}; got {dither!r}")
    return dither


def check_output(image: Path, output: Path, flag: str = "-o") -> Path:
    """A PNG path that is not the input photo (never written over)."""
    image, output = Path(image), Path(output)
    if output.suffix.lower() != ".png":
        raise UserError(f"{flag} {output}: the output is a PNG; give a file name ending in .png")
    if output.is_dir():
        raise UserError(f"{flag} {output} is a folder; give a file name ending in .png")
    if same_file(image, output):
        raise UserError(f"{flag} {output} is the input photo; photoclust never writes over a photo, "
                        "choose another output file")
    return output


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (the same path, or links to one file)."""
    if os.path.abspath(a) == os.path.abspath(b) or Path(a).resolve() == Path(b).resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def read_image(path: Path) -> np.ndarray:
    """The photo as (h, w, 3) uint8 sRGB (EXIF-upright, transparency on white), or one line."""
    from .images import UnreadableImage, open_rgb

    try:
        return np.asarray(open_rgb(Path(path)))
    except UnreadableImage as exc:
        raise UserError(f"{path}: cannot read the image ({exc.reason}); give a photo file "
                        "(JPEG, PNG, WebP, TIFF, ...)") from None


def default_output(image: Path, ks: list[int], loss: str = "square", space: str = "lab",
                   dither: str = "none") -> Path:
    """outputs/quantize/<name>_k16.png (`layout.default_quantize_output`)."""
    from .layout import default_quantize_output

    return default_quantize_output(image, ks, loss, space, dither)


# ----------------------------------------------------------------------------- quantizing (pure)

def quantize_image(image: np.ndarray, k: int, loss: str = "square", space: str = "lab", dither: str = "none",
                   seed: int = 0) -> Quantized:
    """`image` (h, w, 3) uint8 with at most k colours (k <= 256)."""
    if not 1 <= k <= MAX_K:
        raise UserError(f"--k must be from 1 to {MAX_K}; got {k}")
    check_dither(dither)
    C.check_space(space)
    with one_thread():
        return _quantize(image, k, loss, space, dither, seed)


def _quantize(image: np.ndarray, k: int, loss: str, space: str, dither: str, seed: int) -> Quantized:
    h, w, _ = image.shape
    codes = C.pixel_codes(image)
    colours = C.colours_of(codes)
    if len(colours.codes) <= k:  # every colour is its own: nothing to fit, nothing lost
        lookup = np.zeros(1 << 24, dtype=np.uint8)
        lookup[colours.codes] = np.arange(len(colours.codes), dtype=np.uint8)
        indices, palette = _compact(lookup[codes].reshape(h, w), colours.rgb)
        return Quantized(k, indices, palette, math.inf, False)
    fit = C.fit_colours(colours, k, loss, space, seed=seed)
    if dither == "none":
        labels = fit.pixel_labels(colours, codes).reshape(h, w)
        indices, palette = _compact(labels, fit.rgb)
    else:
        values = _pixels_in_space(colours, codes, space).reshape(h, w, 3)
        indices, palette = _compact(floyd_steinberg(values, C.to_space(fit.rgb, space)), fit.rgb)
    return Quantized(k, indices, palette, psnr(image, palette, indices), True)


def _pixels_in_space(colours: C.Colours, codes: np.ndarray, space: str) -> np.ndarray:
    """Every pixel as a float32 point of `space`, converting each distinct colour once."""
    points = C.to_space(colours.rgb, space)
    lookup = np.zeros(1 << 24, dtype=np.int32)
    lookup[colours.codes] = np.arange(len(colours.codes), dtype=np.int32)
    return points[lookup[codes]]


def _compact(indices: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The palette without unused or repeated colours, most used first (ties: by colour),
    and the indices into it as uint8."""
    flat = indices.ravel()
    blocks = [slice(start, start + _PSNR_ROWS) for start in range(0, len(flat), _PSNR_ROWS)]
    # in blocks: bincount and fancy indexing copy their index array as int64 (96 MB at 12 MP)
    counts = sum(np.bincount(flat[b], minlength=len(palette)) for b in blocks)
    codes = C.pixel_codes(palette)
    unique, inverse = np.unique(codes, return_inverse=True)
    merged = np.bincount(inverse.ravel(), weights=counts, minlength=len(unique))
    order = np.lexsort((unique, -merged))
    order = order[merged[order] > 0]
    position = np.zeros(len(unique), dtype=np.uint8)
    position[order] = np.arange(len(order), dtype=np.uint8)
    new_index = position[inverse.ravel()]
    out = np.empty(len(flat), dtype=np.uint8)
    for b in blocks:
        out[b] = new_index[flat[b]]
    return out.reshape(indices.shape), C.decode(unique[order])


def floyd_steinberg(values: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Floyd-Steinberg error diffusion of `values` (h, w, c) float32 onto `palette` (m, c)
    (points of the same space): (h, w) indices into the palette.

    Row by row, left to right, as the classic algorithm: a pixel's wanted value is its own
    plus the error its neighbours passed on, clamped to the palette's bounding box (so the
    error cannot run away where the photo lies outside the palette, as clipping to 0-255
    does in RGB); it takes the nearest palette colour (Euclidean, ties to the first) and
    passes on wanted - chosen: 7/16 right, 3/16 down-left, 5/16 down, 1/16 down-right.

    A pixel (y, x) needs only pixels with a smaller x + 2y, so every anti-diagonal
    x + 2y = t is one vectorised step (a strided slice of the flat padded image), and each
    pixel receives its four shares in the same order as in the row-by-row loop: the same
    floats, the same indices (`tests/test_quantize.py` checks it against that loop).
    """
    values = np.asarray(values, dtype=np.float32)
    palette = np.asarray(palette, dtype=np.float32)
    h, w, c = values.shape
    width = w + 2  # a padding column on each side and a padding row below catch the error passed off the image
    work = np.zeros((h + 1, width, c), dtype=np.float32)
    work[:h, 1:w + 1] = values
    flat = work.reshape(-1, c)
    chosen = np.zeros(len(flat), dtype=np.int16)
    low, high = palette.min(0), palette.max(0)
    steps = range(w + 2 * (h - 1))
    for t in tqdm(steps, desc="dithering", unit="diagonal", leave=False, disable=True if h * w < 1 << 22 else None):
        first, last = max(0, (t - w + 2) // 2), min(h - 1, t // 2)  # rows whose x = t - 2y lies in 0..w-1
        start = t + 1 + first * w  # pixel (y, t - 2y) sits at y * width + t - 2y + 1 = t + 1 + y * w
        step = slice(start, start + (last - first) * w + 1, w)
        wanted = np.clip(flat[step], low, high)
        index = nearest(wanted, palette)
        chosen[step] = index
        error = wanted - palette[index]
        # the order of the row-by-row loop: row y - 1's pixel passes its share down-left
        # before row y's pixel passes its share right to the same neighbour
        _add(flat, start + width - 1, len(index), w, error * FS_DOWN_LEFT)
        _add(flat, start + 1, len(index), w, error * FS_RIGHT)
        _add(flat, start + width, len(index), w, error * FS_DOWN)
        _add(flat, start + width + 1, len(index), w, error * FS_DOWN_RIGHT)
    return chosen.reshape(h + 1, width)[:h, 1:w + 1]


def _add(flat: np.ndarray, start: int, count: int, stride: int, share: np.ndarray) -> None:
    flat[start:start + (count - 1) * stride + 1:stride] += share


def nearest(points: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour of each point: squared differences summed over
    the coordinates in order, in float32, ties to the lower index. (One (n, m) array per
    coordinate: numpy's sum over a last axis of 3 costs more than the rest of the step.)"""
    total = None
    for j in range(points.shape[1]):
        difference = points[:, j, None] - palette[None, :, j]
        difference *= difference
        if total is None:
            total = difference
        else:
            total += difference
    return total.argmin(1)


def psnr(image: np.ndarray, palette: np.ndarray, indices: np.ndarray) -> float:
    """PSNR in dB of palette[indices] against `image` over every pixel and channel (sRGB,
    peak 255): 10 log10(255^2 / MSE); inf when they are equal. Exact integer sums, in blocks."""
    flat_image = image.reshape(-1, 3)
    flat_indices = indices.ravel()
    total = 0
    for start in range(0, len(flat_indices), _PSNR_ROWS):
        block = slice(start, start + _PSNR_ROWS)
        difference = flat_image[block].astype(np.int32) - palette[flat_indices[block]]
        total += int(np.einsum("ij,ij->", difference, difference, dtype=np.int64))
    if total == 0:
        return math.inf
    return 10.0 * math.log10(255.0 ** 2 * flat_image.size / total)


# ----------------------------------------------------------------------------- pictures

def to_pil(quantized: Quantized):
    """The quantized image as a palette-mode ("P") Pillow image with its own palette."""
    from PIL import Image

    h, w = quantized.indices.shape
    im = Image.frombytes("P", (w, h), np.ascontiguousarray(quantized.indices).tobytes())
    im.putpalette(quantized.palette.tobytes(), "RGB")
    return im


def indexed_png(quantized: Quantized) -> bytes:
    """The PNG bytes: palette mode, as many palette entries as colours used (Pillow packs
    2, 4 or 16 colours into 1, 2 or 4 bits a pixel). No timestamp: same input, same bytes."""
    buffer = io.BytesIO()
    to_pil(quantized).save(buffer, "PNG")
    return buffer.getvalue()


def psnr_text(value: float) -> str:
    return "lossless" if math.isinf(value) else f"{value:.1f} dB"


def comparison_strip(image: np.ndarray, results: list[Quantized], sizes: list[int] | None = None):
    """One RGB picture: the original and the image at each k side by side, each with its k,
    PSNR (and PNG size, when given) under it. Tiles have a long side of at most STRIP_TILE
    pixels (a larger image is reduced with a box filter, as a viewer shows it)."""
    from PIL import Image, ImageDraw

    from .render import font

    h, w, _ = image.shape
    scale = min(1.0, STRIP_TILE / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    face = font(13)
    pad, text_h = 8, 36
    tiles = [(Image.fromarray(image), ["original", f"{w} x {h}"])]
    for i, q in enumerate(results):
        lines = [f"k = {q.k}" + ("" if len(q.palette) == q.k else f" ({len(q.palette)} used)"), psnr_text(q.psnr)]
        if sizes is not None:
            lines[1] += f", {sizes[i] / 1024:.0f} kB"
        tiles.append((to_pil(q).convert("RGB"), lines))
    sheet = Image.new("RGB", (pad + len(tiles) * (size[0] + pad), pad + size[1] + text_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (im, lines) in enumerate(tiles):
        x = pad + i * (size[0] + pad)
        sheet.paste(im if im.size == size else im.resize(size, Image.Resampling.BOX), (x, pad))
        for j, line in enumerate(lines):
            draw.text((x, pad + size[1] + 3 + j * 16), line, fill=(30, 30, 30), font=face)
    return sheet


# ----------------------------------------------------------------------------- the command

@dataclass
class QuantizeReport:
    output: Path
    results: list[Quantized]
    input_bytes: int
    output_bytes: int
    png_bytes: list[int]  # each k's indexed PNG (for a strip: as it would be saved alone)

    def lines(self, image: Path) -> list[str]:
        rows = [f"k = {q.k}: {len(q.palette)} colours, PSNR {psnr_text(q.psnr)}, indexed PNG "
                f"{_size(size)}" for q, size in zip(self.results, self.png_bytes)]
        rows.append(f"{image}: {_size(self.input_bytes)} -> {self.output}: {_size(self.output_bytes)}")
        return rows


def _size(n: int) -> str:
    return f"{n / 1024:.1f} kB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MB"


def quantize_file(image_path: Path, ks: list[int], output: Path, *, loss: str = "square", space: str = "lab",
                  dither: str = "none", seed: int = 0, image: np.ndarray | None = None,
                  log=lambda message: None) -> QuantizeReport:
    """Quantize the photo at each k and write `output`: one k, the indexed PNG; several,
    the comparison strip (an RGB PNG). The photo itself is never written."""
    from . import atomic

    image_path, output = Path(image_path), check_output(image_path, output)
    pixels = read_image(image_path) if image is None else image
    results, pngs = [], []
    for k in ks:
        log(f"quantizing to k = {k} ({loss}, {space}{', dithered' if dither != 'none' else ''})")
        results.append(quantize_image(pixels, k, loss, space, dither, seed))
        pngs.append(indexed_png(results[-1]))
    sizes = [len(png) for png in pngs]
    if len(ks) == 1:
        data = pngs[0]
    else:
        buffer = io.BytesIO()
        comparison_strip(pixels, results, sizes).save(buffer, "PNG")
        data = buffer.getvalue()
    atomic.write_bytes(output, data)
    return QuantizeReport(output, results, image_path.stat().st_size, len(data), sizes)
