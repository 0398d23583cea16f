"""`photoclust segment`: a photo cut into k regions by colour and position, on the engine.

Every pixel is a point (L*, a*, b*, x, y): its CIELAB colour (D65, `colour.rgb_to_lab`)
minus the colours' mean, divided by their spread, and its position minus the mean
position, divided by the positions' spread, times the weight W (`--xy-weight`). A spread
is the RMS distance to the mean per coordinate, pooled over the block's coordinates (so
neither block is distorted: Lab keeps its colour differences, the photo its aspect).
Each block then has a variance of 1 per coordinate and W says how much position counts
against colour: W = 0, colour only (one colour may make one segment all over the photo);
W = 1, as much as colour; larger W, compact regions, and two regions of one colour far
apart become two segments. `GeneralizedKMeans` clusters the points under any loss.

Large photos in bounded memory: the means, spreads and the fit come from SAMPLE_PIXELS
pixels drawn with the seed (every pixel of a smaller photo), and every pixel is then
labelled at its cheapest center in blocks of BLOCK_PIXELS (`GeneralizedKMeans.predict`,
which assigns through `losses.assign` in chunks): no (h * w) x k matrix and no float64
copy of the whole photo is ever made.

  segment_image(image, k, xy_weight, loss, seed) -> Segmentation    pure
  label_map(seg) / side_by_side(image, seg)                        the two pictures
  segment_file(...)                                                the command
"""

from __future__ import annotations

import colorsys
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import colour as C
from .errors import UserError
from .threads import one_thread
from .quantize import MAX_K, read_image, same_file

SAMPLE_PIXELS = 150_000
BLOCK_PIXELS = 1 << 18
DEFAULT_K = 8
DEFAULT_XY_WEIGHT = 1.0
MAX_XY_WEIGHT = 1000.0
PANEL = 1024  # the long side of each half of the side-by-side, at most (a smaller photo: pixel for pixel)
BOUNDARY = (255, 255, 255)


@dataclass
class Segmentation:
    labels: np.ndarray  # (h, w) uint8, segment 0 the largest
    mean_rgb: np.ndarray  # (k, 3) uint8: each segment's mean colour
    sizes: np.ndarray  # (k,) pixels per segment
    k: int  # segments made (fewer than asked when the photo has fewer distinct points)
    xy_weight: float
    loss: str
    params: dict
    sampled: int  # pixels the fit ran on


def check_k(text) -> int:
    try:
        k = int(str(text).strip())
    except ValueError:
        k = None
    if k is None or not 1 <= k <= MAX_K:
        raise UserError(f"--k {text!r}: give a number of segments from 1 to {MAX_K}")
    return k


def check_xy_weight(text) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 <= value <= MAX_XY_WEIGHT):
        raise UserError(f"--xy-weight {text!r}: give a number from 0 (colour only) to {MAX_XY_WEIGHT:g}; "
                        "1 weighs position as much as colour")
    return value


# ----------------------------------------------------------------------------- segmenting (pure)

def _features(pixels: np.ndarray, flat_index: np.ndarray, width: int, centre: np.ndarray,
              spread: np.ndarray, xy_weight: float) -> np.ndarray:
    """(n, 5) float32 points of the pixels `pixels` (n, 3) uint8 at flat positions `flat_index`."""
    lab = C.rgb_to_lab(pixels)
    xy = np.stack([flat_index % width, flat_index // width], axis=1).astype(np.float64)
    out = np.empty((len(pixels), 5), dtype=np.float32)
    out[:, :3] = (lab - centre[:3]) / spread[0]
    out[:, 3:] = (xy - centre[3:]) * (xy_weight / spread[1])
    return out


def _rms(values: np.ndarray, mean: np.ndarray) -> float:
    spread = math.sqrt(float(((values - mean) ** 2).mean()))
    return spread if spread > 0 else 1.0  # one flat colour (or one pixel): any scale does


def segment_image(image: np.ndarray, k: int = DEFAULT_K, xy_weight: float = DEFAULT_XY_WEIGHT,
                  loss: str = "square", seed: int = 0, sample: int = SAMPLE_PIXELS) -> Segmentation:
    """`image` (h, w, 3) uint8 cut into at most k segments (one thread: see threads.one_thread)."""
    with one_thread():
        return _segment(image, k, xy_weight, loss, seed, sample)


def _segment(image: np.ndarray, k: int, xy_weight: float, loss: str, seed: int, sample: int) -> Segmentation:
    from .kmeans import GeneralizedKMeans

    h, w, _ = image.shape
    flat = image.reshape(-1, 3)
    n = h * w
    rng = np.random.default_rng(seed)
    picked = np.arange(n) if n <= sample else np.sort(rng.choice(n, size=sample, replace=False))
    lab = C.rgb_to_lab(flat[picked])
    xy = np.stack([picked % w, picked // w], axis=1).astype(np.float64)
    centre = np.concatenate([lab.mean(0), xy.mean(0)])
    spread = np.array([_rms(lab, centre[:3]), _rms(xy, centre[3:])])
    points = _features(flat[picked], picked, w, centre, spread, xy_weight)
    # k-means++ needs k distinct points: colour alone has as many as the sample's colours
    distinct = len(np.unique(C.pixel_codes(flat[picked]))) if xy_weight == 0 else len(picked)
    k = min(k, distinct)
    model = GeneralizedKMeans(k, loss, seed=seed).fit(points)
    labels = np.empty(n, dtype=np.uint8)  # k <= 256
    sums, sizes = np.zeros((k, 3)), np.zeros(k, dtype=np.int64)
    blocks = range(0, n, BLOCK_PIXELS)
    for start in tqdm(blocks, desc="labelling pixels", unit="block", leave=False, disable=True if len(blocks) < 8 else None):
        index = np.arange(start, min(n, start + BLOCK_PIXELS))
        block = model.predict(_features(flat[index], index, w, centre, spread, xy_weight))
        labels[index] = block
        sizes += np.bincount(block, minlength=k)
        for c in range(3):
            sums[:, c] += np.bincount(block, weights=flat[index, c], minlength=k)
    order = np.lexsort((np.arange(k), -sizes))  # segment 0 is the largest
    rank = np.empty(k, dtype=labels.dtype)
    rank[order] = np.arange(k)
    means = np.clip(np.rint(sums[order] / np.maximum(sizes[order], 1)[:, None]), 0, 255).astype(np.uint8)
    return Segmentation(rank[labels].reshape(h, w), means, sizes[order], k, xy_weight, loss,
                        dict(model.params_), len(picked))


# ----------------------------------------------------------------------------- pictures

def segment_colours(k: int) -> np.ndarray:
    """k distinct colours for the label map: hues a golden angle apart, alternating brightness."""
    rows = [colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.7 if i % 2 else 0.55, 0.95 if i % 3 else 0.75)
            for i in range(k)]
    return np.clip(np.rint(np.array(rows) * 255), 0, 255).astype(np.uint8)


def label_map(seg: Segmentation):
    """The label map, full size: a palette-mode image whose pixel value is the segment
    number (0 the largest), drawn in a distinct colour per segment."""
    from PIL import Image

    h, w = seg.labels.shape
    im = Image.frombytes("P", (w, h), np.ascontiguousarray(seg.labels, dtype=np.uint8).tobytes())
    im.putpalette(segment_colours(seg.k).tobytes(), "RGB")
    return im


def boundaries(labels: np.ndarray) -> np.ndarray:
    """(h, w) bool: pixels whose right or lower neighbour lies in another segment."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def side_by_side(image: np.ndarray, seg: Segmentation):
    """The photo and its segments (each filled with its mean colour, boundaries drawn),
    each half at most PANEL pixels on its long side."""
    from PIL import Image

    h, w, _ = image.shape
    scale = min(1.0, PANEL / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    photo = Image.fromarray(image)
    labels = Image.fromarray(np.ascontiguousarray(seg.labels, dtype=np.uint8))
    if size != (w, h):
        photo = photo.resize(size, Image.Resampling.BOX)
        labels = labels.resize(size, Image.Resampling.NEAREST)
    small = np.asarray(labels)
    filled = seg.mean_rgb[small]
    filled[boundaries(small)] = BOUNDARY
    gap = 8
    sheet = Image.new("RGB", (2 * size[0] + gap, size[1]), (255, 255, 255))
    sheet.paste(photo, (0, 0))
    sheet.paste(Image.fromarray(filled), (size[0] + gap, 0))
    return sheet


# ----------------------------------------------------------------------------- the command

def outputs_for(image: Path, folder: Path) -> tuple[Path, Path]:
    """<folder>/<name>_labels.png (the label map) and <folder>/<name>_segments.png (side by side)."""
    from .layout import segment_outputs

    return segment_outputs(image, folder)


def check_outputs(image: Path, folder: Path) -> tuple[Path, Path]:
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"-o {folder} is a file; give the folder the label map and the side-by-side go in")
    paths = outputs_for(image, folder)
    for path in paths:
        if same_file(image, path):
            raise UserError(f"-o {folder}: {path.name} would be written over the input photo; photoclust "
                            "never writes over a photo, choose another folder")
    return paths


def _png(im) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, "PNG")
    return buffer.getvalue()


def segment_file(image_path: Path, folder: Path, *, k: int = DEFAULT_K, xy_weight: float = DEFAULT_XY_WEIGHT,
                 loss: str = "square", seed: int = 0, image: np.ndarray | None = None
                 ) -> tuple[Segmentation, tuple[Path, Path]]:
    """Segment the photo and write its label map and side-by-side into `folder`."""
    from . import atomic

    paths = check_outputs(image_path, folder)
    pixels = read_image(image_path) if image is None else image
    seg = segment_image(pixels, k, xy_weight, loss, seed)
    atomic.write_bytes(paths[0], _png(label_map(seg)))
    atomic.write_bytes(paths[1], _png(side_by_side(pixels, seg)))
    return seg, paths
