"""`photoclust patches`: a dictionary of small image patches, learned by k-means for many K.

Every stride-1 size x size patch of every training image (an MNIST-style IDX file, `.gz`
or not, or a folder of images read as greyscale) is one point of size^2 dimensions; blank
(all-zero) patches are dropped and counted. The patches stay uint8 (28.9 million 5 x 5
patches of Fashion-MNIST: 0.72 GB); the engine sees float32 only a chunk at a time.

For each K (default 100, 200, ..., 1000, 2000, ..., 10,000):
  1. train on a seeded subsample of at most `max_points_per_centroid` (256, faiss's default)
     patches per center, from K distinct random patches of it: the square loss by
     `nearest.lloyd` (the fast nearest-center backend), any other loss by
     `GeneralizedKMeans(loss=...)` with those initial centers;
  2. one full-data pass (`nearest.full_pass`): every patch to its cheapest center; the MSE
     per pixel and the cluster sizes reported are those of all patches, not the subsample's;
  3. save the centers (largest cluster first) and then their record (`dictionaries/k<K>.json`:
     source fingerprint, size, loss, seed, training settings, SHA-256 of the .npy): a rerun
     skips a K whose record matches and redoes one made otherwise (or damaged).
Then the atlas of each K, the MSE curve with its knee (`sweep.knee`), the reconstructions
of chosen images (each patch replaced by its center, overlaps averaged; blank patches stay
blank) and `patches.json`.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from . import atomic, idx
from . import losses as L
from . import nearest
from .errors import UserError
from .layout import PatchesLayout

DEFAULT_SIZE = 5
DEFAULT_KS = "100:1000:100,2000:10000:1000"
DEFAULT_SHOW = 8
MAX_POINTS_PER_CENTROID = 256  # faiss's default subsample per center
# Lloyd iterations on the subsample, twice faiss's 25: at K = 1000 on Fashion-MNIST the MSE of all
# patches was 1.6% above 20 full-data iterations' after 25, 0.7% after 50 (bench-patches)
MAX_ITER = 50
TRAIN_SETTINGS_VERSION = 2  # bump when the training changes what it makes
IMAGE_CHUNK = 2048  # images per extraction block
RECORD_KEYS = ("k", "size", "loss", "param_setting", "seed", "source_fingerprint", "training")


# ----------------------------------------------------------------------------- the source

@dataclass
class Split:
    name: str  # train | test | images
    images: list[np.ndarray] | np.ndarray  # uint8 (n, h, w), or a list of 2-D uint8 arrays (a folder)
    labels: np.ndarray | None = None
    names: list[str] | None = None  # file names (a folder)

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Source:
    path: Path
    train: Split
    test: Split | None = None
    fingerprint: str = ""


def fingerprint(images) -> str:
    """SHA-256 of the images' shapes and pixels: what a dictionary was learned from."""
    digest = hashlib.sha256()
    for image in ([images] if isinstance(images, np.ndarray) else images):
        digest.update(repr(image.shape).encode())
        digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def _idx_split(path: Path, name: str) -> Split:
    images = idx.read_images(path)
    labels_path = idx.labels_beside(path)
    labels = idx.read_labels(labels_path, len(images)) if labels_path is not None else None
    return Split(name, images, labels)


def _folder_split(folder: Path, exclude: list[Path], log: Callable[[str], None]) -> Split:
    from .images import UnreadableImage, open_rgb, scan_images

    scan = scan_images(folder, exclude=exclude)
    for rel, reason in scan.unreadable:
        log(f"cannot read {rel}: {reason}; left out")
    for note in scan.not_read_notes():
        log(note)
    images, names = [], []
    for rel in scan.images:
        try:
            image = open_rgb(folder / rel)
        except UnreadableImage as exc:
            log(f"cannot read {rel}: {exc.reason}; left out")
            continue
        images.append(np.asarray(image.convert("L"), dtype=np.uint8))
        image.close()
        names.append(rel)
    if not images:
        raise UserError(f"{folder}: no image that can be read (an IDX file is passed as a file, e.g. "
                        "train-images-idx3-ubyte.gz)")
    return Split("images", images, None, names)


def load_source(path: str | Path, out: Path | None = None, log: Callable[[str], None] = print) -> Source:
    """The training images (and the test split and labels beside an MNIST-style IDX file)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such IDX file or folder of images")
    if path.is_dir():
        train, test = _folder_split(path, [out] if out is not None else [], log), None
    else:
        split = "train" if path.name.startswith("train-") else "test" if path.name.startswith("t10k-") else "images"
        train = _idx_split(path, split)
        test_path = idx.t10k_beside(path)
        test = _idx_split(test_path, "test") if test_path is not None else None
    return Source(path, train, test, fingerprint(train.images))


# ----------------------------------------------------------------------------- patches (pure)

def check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= 32:
        raise UserError(f"--size must be an integer from 1 to 32, got {size}")
    return int(size)


def _blocks(images) -> list[np.ndarray]:
    """The images as 3-D blocks of equal size: IMAGE_CHUNK at a time, or one per image of a folder."""
    if isinstance(images, np.ndarray):
        return [images[s:s + IMAGE_CHUNK] for s in range(0, len(images), IMAGE_CHUNK)]
    return [image[None] for image in images]


def nonblank_mask(block: np.ndarray, size: int) -> np.ndarray:
    """(m, h - size + 1, w - size + 1) bool: which windows hold a non-zero pixel (by an
    integral image of the non-zero pixels: no copy of the windows)."""
    m, h, w = block.shape
    if h < size or w < size:
        return np.zeros((m, max(0, h - size + 1), max(0, w - size + 1)), dtype=bool)
    integral = np.zeros((m, h + 1, w + 1), dtype=np.int32)
    integral[:, 1:, 1:] = (block != 0).cumsum(1, dtype=np.int32).cumsum(2, dtype=np.int32)
    sums = (integral[:, size:, size:] - integral[:, :-size, size:] - integral[:, size:, :-size]
            + integral[:, :-size, :-size])
    return sums > 0


def count_patches(images, size: int) -> tuple[int, int]:
    """(non-blank patches, blank patches) of all the images."""
    kept = blank = 0
    for block in _blocks(images):
        mask = nonblank_mask(block, size)
        kept += int(mask.sum())
        blank += int(mask.size - mask.sum())
    return kept, blank


def extract_patches(images, size: int, progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, int]:
    """Every stride-1 size x size patch with a non-zero pixel, as uint8 rows (n, size^2) in
    the order of a loop over images, then rows, then columns; and the number of blank
    patches dropped. Memory: the result (counted first, allocated once) and one block."""
    kept, blank = count_patches(images, size)
    out = np.empty((kept, size * size), dtype=np.uint8)
    at = 0
    for block in _blocks(images):
        mask = nonblank_mask(block, size)
        if mask.size:
            windows = sliding_window_view(block, (size, size), axis=(1, 2))
            chosen = windows[mask]
            out[at:at + len(chosen)] = chosen.reshape(len(chosen), -1)
            at += len(chosen)
        if progress is not None:
            progress(len(block))
    return out, blank


def image_patches(image: np.ndarray, size: int) -> np.ndarray:
    """All stride-1 patches of one image (blank ones too), (h', w', size^2) uint8."""
    windows = sliding_window_view(image, (size, size))
    return windows.reshape(windows.shape[0], windows.shape[1], size * size)


def assign_rows(X: np.ndarray, C: np.ndarray, loss: str, param: float | None, backend: str = "torch") -> np.ndarray:
    """The cheapest center of each row (small inputs: one block)."""
    if len(X) == 0:
        return np.zeros(0, dtype=np.int64)
    return nearest.full_pass(X, C, loss, param, backend=backend, with_labels=True).labels.astype(np.int64)


def reconstruct(image: np.ndarray, C: np.ndarray, size: int, loss: str = "square", param: float | None = None,
                backend: str = "torch") -> np.ndarray:
    """The image rebuilt from the dictionary C: every patch replaced by its cheapest center,
    each pixel the mean of the centers' values over the patches covering it (float64).
    Blank patches were never clustered: they stay blank."""
    h, w = image.shape
    if h < size or w < size:
        return np.zeros((h, w))
    patches = image_patches(image, size)
    hp, wp = patches.shape[:2]
    flat = patches.reshape(-1, size * size)
    values = np.zeros(flat.shape, dtype=np.float64)
    keep = flat.any(1)
    values[keep] = np.asarray(C, np.float64)[assign_rows(flat[keep], C, loss, param, backend)]
    values = values.reshape(hp, wp, size, size)
    total, count = np.zeros((h, w)), np.zeros((h, w))
    for dy in range(size):
        for dx in range(size):
            total[dy:dy + hp, dx:dx + wp] += values[:, :, dy, dx]
            count[dy:dy + hp, dx:dx + wp] += 1
    return total / np.maximum(count, 1)


def parse_ks(text: str) -> list[int]:
    """"100:1000:100,2000:10000:1000": comma-separated K or FIRST:LAST[:STEP] ranges
    (inclusive), sorted, without repeats."""
    ks: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if not re.fullmatch(r"\d+(:\d+(:\d+)?)?", part):
            raise UserError(f"--k {text!r}: write K values or FIRST:LAST[:STEP] ranges, comma-separated, "
                            "e.g. 100:1000:100,2000:10000:1000")
        numbers = [int(v) for v in part.split(":")]
        if len(numbers) == 1:
            ks.add(numbers[0])
        else:
            step = numbers[2] if len(numbers) == 3 else 1
            if step < 1 or numbers[1] < numbers[0]:
                raise UserError(f"--k {part!r}: a range is FIRST:LAST[:STEP] with FIRST <= LAST and STEP >= 1")
            ks.update(range(numbers[0], numbers[1] + 1, step))
    if not ks or min(ks) < 1:
        raise UserError(f"--k {text!r}: every K must be an integer >= 1")
    return sorted(ks)


# ----------------------------------------------------------------------------- training

@dataclass
class Dictionary:
    k: int
    centers: np.ndarray  # (k, size^2) float32, largest cluster first
    counts: np.ndarray  # (k,) patches per center, in the same order
    mse: float  # per pixel, over every patch
    objective: float  # mean loss per patch under the loss
    param: float | None
    iterations: int
    train_points: int


def training_settings(backend: str) -> dict:
    return {"version": TRAIN_SETTINGS_VERSION, "max_points_per_centroid": MAX_POINTS_PER_CENTROID,
            "max_iter": MAX_ITER, "init": "k distinct random patches of the subsample", "backend": backend}


def subsample(patches: np.ndarray, k: int, seed: int) -> np.ndarray:
    """At most MAX_POINTS_PER_CENTROID * k rows (all of them when there are fewer), seeded, in order."""
    m = min(len(patches), MAX_POINTS_PER_CENTROID * k)
    if m == len(patches):
        return patches
    rng = np.random.default_rng([seed, k, 1])
    return patches[np.sort(rng.choice(len(patches), m, replace=False))]


def distinct_rows(rows: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k distinct rows of `rows`, drawn at random (seeded); UserError when there are fewer."""
    rng = np.random.default_rng([seed, k, 2])
    order = rng.permutation(len(rows))
    take = min(len(rows), 4 * k)
    while True:
        candidates = np.ascontiguousarray(rows[order[:take]])
        _, first = np.unique(candidates.view(np.dtype((np.void, candidates.shape[1] * candidates.itemsize))),
                             return_index=True)
        if len(first) >= k or take == len(rows):
            break
        take = min(len(rows), take * 4)
    if len(first) < k:
        raise UserError(f"--k {k}: the patches have only {len(first)} distinct values here; choose K <= {len(first)}")
    return candidates[np.sort(first)[:k]]


def train(patches: np.ndarray, k: int, loss: str, seed: int, backend: str, device: torch.device,
          log: Callable[[str], None] = print, progress: bool | None = False) -> Dictionary:
    """One dictionary of K centers: trained on the subsample, measured on every patch (with
    a progress bar over the full pass unless `progress` is False)."""
    from tqdm import tqdm

    sub = subsample(patches, k, seed)
    C0 = distinct_rows(sub, k, seed).astype(np.float32)
    param = None
    if loss == "square":
        fit = nearest.lloyd(sub, C0, max_iter=MAX_ITER, backend=backend, device=device)
        centers, iterations = fit.centers, fit.iterations
    else:
        from .kmeans import GeneralizedKMeans

        model = GeneralizedKMeans(k, loss, "auto", init=C0, n_init=1, max_iter=MAX_ITER, seed=seed,
                                  device=device).fit(np.asarray(sub, dtype=np.float32))
        centers, iterations = model.cluster_centers_, model.n_iter_
        param = next(iter(model.params_.values()), None)
    bar = tqdm(total=len(patches), unit="patch", unit_scale=True, desc=f"K={k} all patches", leave=False,
               disable=None if progress is None else not progress, dynamic_ncols=True, file=sys.stderr)
    result = nearest.full_pass(patches, centers, loss, param, backend=backend, device=device, progress=bar.update)
    bar.close()
    order = np.lexsort((np.arange(k), -result.counts))  # largest cluster first, ties by index
    d = patches.shape[1]
    return Dictionary(k, np.ascontiguousarray(centers[order], dtype=np.float32), result.counts[order],
                      result.sq_error / (len(patches) * d), result.loss_total / len(patches), param, iterations,
                      len(sub))


# ----------------------------------------------------------------------------- saved dictionaries

def record_of(dictionary: Dictionary, key: dict, npy_sha256: str) -> dict:
    return {**key, "param": dictionary.param, "npy_sha256": npy_sha256, "mse": dictionary.mse,
            "objective": dictionary.objective, "iterations": dictionary.iterations,
            "train_points": dictionary.train_points, "counts": [int(c) for c in dictionary.counts]}


def save_dictionary(layout: PatchesLayout, dictionary: Dictionary, key: dict) -> None:
    """The centers, then the record that vouches for them (the commit point of a K)."""
    import io

    buffer = io.BytesIO()
    np.save(buffer, dictionary.centers, allow_pickle=False)
    data = buffer.getvalue()
    if layout.record(dictionary.k).exists():  # a K is unfinished until its new record exists
        atomic.remove(layout.record(dictionary.k))
    atomic.write_bytes(layout.dictionary(dictionary.k), data)
    record = record_of(dictionary, key, hashlib.sha256(data).hexdigest())
    atomic.write_text(layout.record(dictionary.k), json.dumps(record, indent=1) + "\n")


def load_dictionary(layout: PatchesLayout, key: dict) -> Dictionary | None:
    """The saved dictionary of key["k"] if its record matches `key` and its .npy its SHA-256;
    None otherwise (not made yet, made from other data or settings, damaged)."""
    k = key["k"]
    try:
        record = json.loads(layout.record(k).read_text(encoding="utf-8"))
        data = layout.dictionary(k).read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or any(record.get(name) != key[name] for name in RECORD_KEYS):
        return None
    if record.get("npy_sha256") != hashlib.sha256(data).hexdigest():
        return None
    try:
        import io

        centers = np.load(io.BytesIO(data), allow_pickle=False)
        counts = np.asarray(record["counts"], dtype=np.int64)
        if centers.shape != (k, key["size"] ** 2) or counts.shape != (k,):
            return None
        return Dictionary(k, centers, counts, float(record["mse"]), float(record["objective"]), record["param"],
                          int(record["iterations"]), int(record["train_points"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------- figures

def _grey(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def atlas_image(centers: np.ndarray, size: int, title: str):
    """Every center as a size x size tile, in the given order (largest cluster first), row by row."""
    from PIL import Image, ImageDraw

    from .render import font

    k = len(centers)
    columns = int(np.ceil(np.sqrt(k)))
    rows = int(np.ceil(k / columns))
    scale = max(1, 16 // size) if k <= 1000 else max(1, 8 // size)
    tile = size * scale
    gap, pad, head = 1, 8, 24
    width = max(columns * (tile + gap) + 2 * pad, 360)
    image = Image.new("L", (width, head + rows * (tile + gap) + 2 * pad), 255)
    draw = ImageDraw.Draw(image)
    draw.text((pad, pad // 2), title, fill=0, font=font(13))
    tiles = _grey(centers).reshape(k, size, size)
    for i in range(k):
        row, col = divmod(i, columns)
        cell = Image.fromarray(tiles[i]).resize((tile, tile), Image.NEAREST)
        image.paste(cell, (pad + col * (tile + gap), head + pad + row * (tile + gap)))
    return image


def reconstruction_image(originals: list[np.ndarray], captions: list[str], columns: list[tuple[str, list[np.ndarray]]]):
    """A grid: a row per image, the original first, then its reconstruction at each K."""
    from PIL import Image, ImageDraw

    from .render import font

    h = max(o.shape[0] for o in originals)
    w = max(o.shape[1] for o in originals)
    scale = max(1, 84 // max(h, w))
    cell_w, cell_h = w * scale, h * scale
    gap, pad, head, side = 4, 8, 22, 70
    face = font(11)
    image = Image.new("L", (side + (len(columns) + 1) * (cell_w + gap) + pad, head + len(originals) * (cell_h + gap)
                            + pad), 255)
    draw = ImageDraw.Draw(image)
    for c, name in enumerate(["original"] + [name for name, _ in columns]):
        draw.text((side + c * (cell_w + gap) + cell_w // 2, pad + 6), name, fill=0, font=face, anchor="mm")
    for r, (original, caption) in enumerate(zip(originals, captions)):
        y = head + r * (cell_h + gap)
        draw.text((pad, y + cell_h // 2), caption, fill=0, font=face, anchor="lm")
        for c, picture in enumerate([original] + [pictures[r] for _, pictures in columns]):
            tile = Image.fromarray(_grey(picture)).resize((picture.shape[1] * scale, picture.shape[0] * scale),
                                                          Image.NEAREST)
            image.paste(tile, (side + c * (cell_w + gap), y))
    return image


def plot_mse(ks: list[int], mses: list[float], knee_k: int | None, loss: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(ks, mses, "o-", color="tab:blue", ms=3)
    ax.set_xlabel("K (dictionary size)")
    ax.set_ylabel("reconstruction MSE per pixel (0-255 scale)")
    if knee_k is not None:
        at = ks.index(knee_k)
        ax.axvline(knee_k, color="tab:red", lw=1.2)
        ax.annotate(f"knee K = {knee_k}", (knee_k, mses[at]), xytext=(8, 12), textcoords="offset points",
                    color="tab:red")
    ax.set_title(f"{title}: MSE by K ({loss} loss)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic.write_with(path, lambda fh: fig.savefig(fh, format="png", metadata={"Software": None}))
    plt.close(fig)


def chosen_images(split: Split, show: int) -> list[int]:
    """`show` images to reconstruct: with labels, the first image of each class in turn (then
    the next of each), else evenly spaced ones."""
    n = len(split)
    show = min(show, n)
    if show <= 0:
        return []
    if split.labels is None:
        return sorted({int(round(v)) for v in np.linspace(0, n - 1, show)})
    chosen: list[int] = []
    by_class = {c: list(np.flatnonzero(split.labels == c)[:show]) for c in np.unique(split.labels)}
    for round_ in range(show):
        for c in sorted(by_class):
            if len(chosen) < show and round_ < len(by_class[c]):
                chosen.append(int(by_class[c][round_]))
    return chosen


# ----------------------------------------------------------------------------- the command (I/O)

@dataclass
class PatchesReport:
    out: Path
    patches: int = 0
    blank: int = 0
    fitted: list[int] = field(default_factory=list)
    reused: list[int] = field(default_factory=list)
    knee: int | None = None
    table: list[dict] = field(default_factory=list)


def _split_captions(split: Split, chosen: list[int]) -> list[str]:
    if split.names is not None:
        return [Path(split.names[i]).stem[:10] for i in chosen]
    if split.labels is not None:
        return [f"#{i} ({int(split.labels[i])})" for i in chosen]
    return [f"#{i}" for i in chosen]


def patches_run(source_path: Path, out: Path, *, ks: list[int], size: int = DEFAULT_SIZE, loss: str = "square",
                seed: int = 0, show: int = DEFAULT_SHOW, backend: str = "auto", device: str = "auto",
                log: Callable[[str], None] = print, progress: bool | None = None) -> PatchesReport:
    """Learn a dictionary for every K (each finished K saved and skipped by a rerun), then
    the figures and the summary; see the module docstring and `layout.PatchesLayout`."""
    from tqdm import tqdm

    from .kmeans import resolve_device
    from .sweep import knee
    from .tables import write_frame

    size = check_size(size)
    try:
        loss = L.check_loss(loss)
    except L.LossInputError as exc:
        raise UserError(f"--loss: {exc}") from None
    torch_device = resolve_device(device)
    backend = nearest.resolve_backend(backend, torch_device)
    layout, report = PatchesLayout(out), PatchesReport(Path(out))
    source = load_source(source_path, Path(out), log)
    disable = None if progress is None else not progress
    bar = tqdm(total=len(source.train), unit="image", desc="patches", disable=disable, dynamic_ncols=True,
               file=sys.stderr)
    patches, blank = extract_patches(source.train.images, size, progress=bar.update)
    bar.close()
    report.patches, report.blank = len(patches), blank
    log(f"{len(patches):,} non-blank {size}x{size} patches from {len(source.train):,} images "
        f"({blank:,} blank dropped); {patches.nbytes / 2**30:.2f} GB as uint8; backend {backend} on {torch_device}")
    if len(patches) == 0:
        raise UserError(f"{source_path}: every {size}x{size} patch is blank (or the images are smaller than "
                        f"{size} pixels); nothing to cluster")
    too_big = [k for k in ks if k > len(patches)]
    if too_big:
        raise UserError(f"--k {too_big[0]}: more than the {len(patches)} non-blank patches; choose smaller K")
    settings = training_settings(backend)
    dictionaries: dict[int, Dictionary] = {}
    for k in tqdm(ks, unit="K", desc="dictionaries", disable=disable, dynamic_ncols=True, file=sys.stderr):
        key = {"k": k, "size": size, "loss": loss, "param_setting": "auto" if loss in L.PARAM_NAME else None,
               "seed": seed, "source_fingerprint": source.fingerprint, "training": settings}
        found = load_dictionary(layout, key)
        if found is not None:
            dictionaries[k] = found
            report.reused.append(k)
            continue
        if layout.record(k).exists():
            log(f"K={k}: the saved dictionary was made from other data or settings (or is damaged); fitting it again")
        started = time.perf_counter()
        dictionary = train(patches, k, loss, seed, backend, torch_device, log=log, progress=progress)
        save_dictionary(layout, dictionary, key)
        atlas = atlas_image(dictionary.centers, size, f"K = {k}, {loss} loss: centers by cluster size")
        atomic.write_with(layout.atlas(k), lambda fh: atlas.save(fh, "PNG"))
        dictionaries[k] = dictionary
        report.fitted.append(k)
        log(f"K={k}: MSE {dictionary.mse:.3f} per pixel ({dictionary.iterations} iterations on "
            f"{dictionary.train_points:,} patches; {time.perf_counter() - started:.1f} s)")
    for k in report.reused:  # an atlas a killed run did not get to
        if not layout.atlas(k).is_file():
            atlas = atlas_image(dictionaries[k].centers, size, f"K = {k}, {loss} loss: centers by cluster size")
            atomic.write_with(layout.atlas(k), lambda fh: atlas.save(fh, "PNG"))

    import pandas as pd

    table = pd.DataFrame([{"k": k, "mse": round(d.mse, 6), "objective": round(d.objective, 6),
                           "iterations": d.iterations, "train_points": d.train_points}
                          for k, d in sorted(dictionaries.items())])
    write_frame(layout.mse_table, table)
    report.table = table.to_dict(orient="records")
    report.knee = knee(ks, [dictionaries[k].mse for k in ks]) if len(ks) >= 3 else None
    title = default_title(source_path)
    plot_mse(ks, [dictionaries[k].mse for k in ks], report.knee, loss, layout.mse_plot, title)

    splits = [s for s in (source.train, source.test) if s is not None]
    for split in splits:
        chosen = chosen_images(split, show)
        if not chosen:
            continue
        originals = [np.asarray(split.images[i]) for i in chosen]
        columns = [(f"K={k}", [reconstruct(o, dictionaries[k].centers, size, loss, dictionaries[k].param, backend)
                               for o in originals]) for k in ks]
        grid = reconstruction_image(originals, _split_captions(split, chosen), columns)
        atomic.write_with(layout.reconstructions(split.name), lambda fh: grid.save(fh, "PNG"))
    summary = {"source": title, "source_fingerprint": source.fingerprint, "images": len(source.train),
               "test_images": len(source.test) if source.test is not None else 0, "size": size,
               "patches": len(patches), "blank_patches": blank, "loss": loss, "seed": seed, "ks": ks,
               "knee_k": report.knee, "knee_rule": "sweep.knee: the K farthest below the chord of the "
               "normalised MSE curve", "training": settings,
               "mse": {str(k): dictionaries[k].mse for k in ks}}
    atomic.write_text(layout.summary, json.dumps(summary, indent=2) + "\n")
    return report


def default_title(source: Path) -> str:
    from .layout import default_patches_output

    return default_patches_output(source).name
