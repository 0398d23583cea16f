"""Stage 1: every image under a folder -> the model's conv features -> global average pool
(VGG16: 512-d, the default; EfficientNet-Lite0: 1280-d; see backbones.py for every --model).

Incremental: files whose size and mtime are unchanged since the cached run are not
decoded again; deleted files are dropped; finished batches are journaled so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import PIL
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from . import backbones, jpeg_device
from .cache import (OK, UNREADABLE, CacheDamaged, Entry, Journal, activate_key, file_digest, key_id, load_cache,
                    set_aside, write_cache, write_source)
from .config import ExtractConfig
from .errors import UserError
from .images import IMAGE_EXTENSIONS, UnreadableImage, open_rgb, scan_images
from .kmeans import resolve_device
from .threads import model_threads, torch_threads
from .weights import Preprocess, Weights

MODEL_ID = backbones.REGISTRY["vgg16"].model_id  # "torchvision.vgg16.features+global_avg_pool"


@dataclass
class ExtractReport:
    embedded: int = 0
    unreadable: int = 0
    decoded: int = 0  # images opened in this run
    reused: int = 0  # rows taken from the cache or the journal of an interrupted run
    dropped: int = 0  # cached files that no longer exist
    seconds: float = 0.0
    weights_id: str = ""
    device: str = ""
    cache_key_id: str = ""
    unreadable_files: list[tuple[str, str]] = field(default_factory=list)
    not_read: int = 0  # photos in a format this installation cannot decode (RAW, HEIC without pillow-heif)

    def summary(self) -> str:
        not_read = f", {self.not_read} in formats not read (see the 'not read' lines above)" if self.not_read else ""
        return f"{self.embedded} embedded, {self.unreadable} unreadable (see manifest.csv){not_read}"


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 in hardware (AVX512-BF16 or AMX through oneDNN on a
    CPU, Ampere or later on CUDA), as torch itself reports it."""
    try:
        if device.type == "cuda":
            return bool(torch.cuda.is_bf16_supported())
        if device.type == "cpu":
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # an older torch without the query: assume not
        pass
    return False


def autocast_dtype(precision: str, device: torch.device,
                   log: Callable[[str], None] = print) -> torch.dtype | None:
    """The autocast dtype of the model's forward pass, or None for full float32.

    auto: bf16 where the device computes it natively (VGG16: about 2x the images per second
    of float32 on an AVX512-BF16 CPU, 4x with AMX; cosine >= 0.999 to the float32 embedding), fp16 on a
    CUDA GPU without bf16, float32 elsewhere. bf16 on a device without native support is
    honoured (the same numbers, emulated) with a warning that it will be slow.
    """
    if precision == "fp32":
        return None
    native = native_bf16(device)
    if precision == "bf16":
        if device.type == "mps":
            raise UserError("--precision bf16: not available on Apple MPS here; use --precision fp32 or auto")
        if not native:
            log(f"warning: --precision bf16: {device} has no native bf16, so it is emulated and slow; "
                "--precision auto picks fp32 here")
        return torch.bfloat16
    if native:
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else None


def precision_name(dtype: torch.dtype | None) -> str:
    return str(dtype).replace("torch.", "") if dtype is not None else "float32"


def cache_key(weights: Weights, resize: str, precision: str, jpeg_on: torch.device | None = None) -> dict:
    """What made a features cache: a change to any of it is another cache (see cache.activate_key).
    VGG16's key is the same as before the model registry, so its caches stay valid; `jpeg_on`,
    the device that decoded the JPEGs (None: Pillow on the CPU, with no entry in the key, so
    keys from before the device decoder stay valid too)."""
    backbone = backbones.get(weights.model)
    pre = weights.preprocess
    geometry = (f"resize shorter side {pre.resize}, center crop {pre.crop}" if resize == "crop"
                else f"resize to {pre.crop}x{pre.crop} (squash)")
    return {
        "model": backbone.model_id,
        "weights": weights.id,
        "geometry": geometry,
        "normalization": pre.describe(),
        "precision": precision,
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "pillow": PIL.__version__, "numpy": np.__version__, **backbone.versions()},
        "feature_dim": backbone.feature_dim,
    } | ({"jpeg_decoder": jpeg_device.describe(jpeg_on)} if jpeg_on is not None else {})


def to_network_pixels(image: PIL.Image.Image, pre: Preprocess, resize: str) -> torch.Tensor:
    """RGB image -> uint8 (3, crop, crop) in the weights' geometry."""
    return TF.pil_to_tensor(pre.fit(image, resize))


class PhotoDataset(Dataset):
    """Decodes in DataLoader workers so the model never waits on JPEG decoding.

    With `device_jpeg`, a JPEG the device decoder can take is not decoded here: the worker
    hands its bytes over (`jpeg_device.EncodedJPEG`) and the main process decodes the
    batch on the model's device."""

    def __init__(self, paths: list[Path], pre: Preprocess, resize: str, device_jpeg: bool = False):
        self.paths, self.pre, self.resize, self.device_jpeg = paths, pre, resize, device_jpeg
        side = pre.resize if resize == "crop" else pre.crop
        self.min_size = (side, side)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        data = None  # the file's bytes, read whole only for the device decoder
        try:
            if self.device_jpeg:
                data = _read_all(path)
                sha1 = hashlib.sha1(data).hexdigest()
            else:
                sha1 = file_digest(path, "sha1")
        except OSError as exc:
            return index, None, "", f"cannot read: {exc.strerror or exc}"
        encoded = jpeg_device.encode(data) if data is not None else None
        if encoded is not None:
            return index, encoded, sha1, ""
        pixels, reason = self.pillow_pixels(path)
        return index, pixels, sha1, reason

    def pillow_pixels(self, path: Path) -> tuple[torch.Tensor | None, str]:
        """(uint8 (3, crop, crop) pixels, "") or (None, why the file cannot be decoded)."""
        try:
            return to_network_pixels(open_rgb(path, self.min_size), self.pre, self.resize), ""
        except UnreadableImage as exc:
            return None, exc.reason


def _read_all(path: Path) -> bytearray:
    with open(path, "rb") as fh:
        return bytearray(fh.read())  # writable, as torch.frombuffer wants


def _collate(item):
    return item  # (index, pixels | EncodedJPEG | None, sha1, reason), as the worker made it


def _batches(items, size: int):
    """Consecutive lists of `size` items (the last one shorter)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not compete with the model for cores


def default_workers(n_files: int, batch_size: int, device: torch.device | None = None) -> int:
    if n_files <= batch_size:
        return 0  # starting worker processes costs more than it saves
    cores = os.cpu_count() or 2
    if device is not None and device.type == "cuda":
        # the GPU's model waits on the workers (decoding, or with --jpeg-decoder device reading
        # and hashing); the main process keeps a core to feed the GPU
        return max(1, min(16, cores - 1))
    # On a CPU the workers share the cores with the model: one worker per core, not one fewer,
    # keeps the cores busy while the model waits between its layers (make bench-extract,
    # by_workers, 192 large JPEGs on 2 cores: 2 workers embed 40% more a second than 1 with
    # EfficientNet-Lite0, 0% to 4% more with VGG16).
    return max(1, min(8, cores))


CPU_BATCH = 16  # off CUDA: the default from before batch sizes were chosen
MAX_GPU_BATCH = 256
GPU_BYTES_PER_IMAGE = 64 << 20  # VGG16's activations and the image's share of decoding, with room


def resolve_batch_size(batch_size: int | None, device: torch.device) -> int:
    """The images per forward pass: the configured number, or (auto) 16 off CUDA and on a
    CUDA GPU as many as half its free memory holds, between 16 and 256."""
    if batch_size is not None:
        return batch_size
    if device.type != "cuda":
        return CPU_BATCH
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(CPU_BATCH, min(MAX_GPU_BATCH, free // 2 // GPU_BYTES_PER_IMAGE)))


def extract_folder(root: Path, out_dir: Path, cfg: ExtractConfig, *, seed: int = 0,
                   log: Callable[[str], None] = print,
                   on_batch: Callable[[int], None] | None = None,
                   progress: bool | None = None) -> ExtractReport:
    """Embed every image under `root` into `out_dir`'s cache; returns what happened.

    photoclust's own output and export folders under `root`, and `out_dir` itself, are
    not entered (one log line each); paths found but unreadable, such as broken links
    and unlistable subfolders, get manifest rows with status `unreadable`.
    """
    started = time.perf_counter()
    root, out_dir = Path(root), Path(out_dir)
    try:
        scan = scan_images(root, exclude=[out_dir])  # out_dir may have no marker yet
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise UserError(str(exc)) from None
    for folder, why in scan.skipped:
        log(f"skipping {folder}: {why}")
    files = scan.images
    if not files:
        raise UserError(f"no images found under {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}); "
                        f"check the folder{_unreadable_hint(scan.unreadable)}{scan.not_read_hint()}")
    for note in scan.not_read_notes():
        log(note)

    weights = backbones.resolve(cfg.model, cfg.weights, seed=seed, log=log)
    dim = backbones.feature_dim(weights)
    cluster = None
    if cfg.executor == "ray":  # the only place the local path and Ray meet; Ray is imported only here
        if cfg.jpeg_decoder == "device":
            raise UserError("--jpeg-decoder device: Ray's embedders decode with Pillow; use --jpeg-decoder auto or "
                            "pillow with --executor ray")
        from . import ray_executor

        cluster = ray_executor.connect(cfg, root, files, log)
        device, half, embed = cluster.describe, cluster.half, cluster.embed
    else:
        device = resolve_device(cfg.device, prefer_mps=True)
        half = autocast_dtype(cfg.precision, device, log)
        embed = partial(embed_files, log=log)
    try:
        return _extract(root, out_dir, cfg, scan, files, weights, dim, device, half, embed, started, log, on_batch,
                        progress)
    finally:
        if cluster is not None:
            cluster.close()


def _extract(root, out_dir, cfg, scan, files, weights, dim, device, half, embed, started, log, on_batch, progress):
    cfg = replace(cfg, jpeg_decoder=resolve_jpeg_decoder(cfg, device))
    jpeg_on = device if cfg.jpeg_decoder == "device" else None
    key = cache_key(weights, cfg.resize, precision_name(half), jpeg_on)
    activate_key(out_dir, key)
    report = ExtractReport(weights_id=weights.id, device=str(device), cache_key_id=key_id(key),
                           not_read=len(scan.not_read))

    current = [(root / rel, rel) for rel in files]
    committed_entries, committed_rows = _committed_cache(out_dir, log, dim)
    known = {e.path: (e, committed_rows[i]) for i, e in enumerate(committed_entries)}
    journal = Journal(out_dir)
    journal_entries, journal_rows = journal.read()
    journal.reset(journal_entries, journal_rows)  # drop a torn tail before appending to it
    for i, e in enumerate(journal_entries):
        known[e.path] = (e, journal_rows[i])

    results: dict[str, tuple[Entry, np.ndarray]] = {}
    todo: list[tuple[Path, str, int, int]] = []
    for path, rel in current:
        try:
            st = path.stat()
        except OSError as exc:
            results[rel] = (Entry(rel, 0, 0, "", UNREADABLE, f"cannot stat: {exc.strerror or exc}"), _nan_row(dim))
            continue
        cached = known.get(rel)
        if cached is not None and cached[0].size == st.st_size and cached[0].mtime_ns == st.st_mtime_ns:
            results[rel] = cached
            report.reused += 1
        else:
            todo.append((path, rel, st.st_size, st.st_mtime_ns))
    for rel, reason in scan.unreadable:  # looked at afresh each run: nothing to reuse
        results[rel] = (Entry(rel, 0, 0, "", UNREADABLE, reason), _nan_row(dim))
    listed = sorted({rel for _, rel in current} | set(results))
    report.dropped = len(set(known) - set(listed))

    if todo:
        log(f"decoding {len(todo)} new or changed image(s) of {len(current)} with {weights.model} ({weights.id}) "
            f"on {device}")
        for entries, rows in embed(todo, weights, cfg, device, half, progress):
            journal.append(entries, rows)
            journal_entries.extend(entries)
            for e, row in zip(entries, rows):
                results[e.path] = (e, row)
            report.decoded += len(entries)
            if on_batch is not None:
                on_batch(report.decoded)

    ordered = [results[rel] for rel in listed]
    entries = [e for e, _ in ordered]
    features = np.stack([row for _, row in ordered]).astype(np.float32, copy=False)
    # Rows taken from the journal (this run's or a killed run's) reach the committed cache
    # before the journal goes; an unchanged folder writes nothing.
    if journal_entries or entries != committed_entries:
        write_cache(out_dir, entries, features)
    write_source(out_dir, root)
    journal.clear()

    report.embedded = sum(e.status == OK for e in entries)
    report.unreadable_files = [(e.path, e.reason) for e in entries if e.status != OK]
    report.unreadable = len(report.unreadable_files)
    report.seconds = time.perf_counter() - started
    return report


def resolve_jpeg_decoder(cfg: ExtractConfig, device) -> str:
    """pillow or device: what decodes this run's JPEGs (auto: Pillow; see jpeg_device)."""
    if not jpeg_device.uses_device_decoder(cfg.jpeg_decoder):  # (Ray with device: refused earlier)
        return "pillow"
    why_not = jpeg_device.works_on(device)
    if why_not:
        raise UserError(f"--jpeg-decoder device: torchvision cannot decode JPEGs on {device} here ({why_not}); "
                        "use --jpeg-decoder pillow")
    return "device"


def _unreadable_hint(unreadable: list[tuple[str, str]]) -> str:
    # With no manifest written, the error itself must say what could not be read.
    if not unreadable:
        return ""
    shown = "; ".join(f"{rel}: {reason}" for rel, reason in unreadable[:3])
    more = f"; and {len(unreadable) - 3} more" if len(unreadable) > 3 else ""
    return f"; {len(unreadable)} path(s) could not be read ({shown}{more})"


def _nan_row(dim: int) -> np.ndarray:
    return np.full(dim, np.nan, dtype=np.float32)


def _committed_cache(out_dir: Path, log: Callable[[str], None], dim: int) -> tuple[list[Entry], np.ndarray]:
    """The cache as last committed; a damaged one is set aside (never deleted) and rebuilt."""
    try:
        return load_cache(out_dir)
    except CacheDamaged as exc:
        where = set_aside(out_dir)
        log(f"the features cache cannot be trusted: {exc.reason}; "
            f"{f'set aside in {where}, ' if where else ''}extracting again")
        return [], np.empty((0, dim), np.float32)


def embed_files(todo, weights: Weights, cfg: ExtractConfig, device: torch.device, half, progress,
                desc: str = "extract", log: Callable[[str], None] = print):
    """Yield (entries, rows) per batch, in input order; `todo` holds (path, rel, size, mtime_ns).

    `extract` and `assign` both embed through it, so a new photo is embedded exactly as the
    run's photos were (same decoding, geometry, normalisation, precision)."""
    # channels-last on every device and every backbone: oneDNN's and cuDNN's fast convolution layout
    model = backbones.build(weights).to(device).to(memory_format=torch.channels_last)
    dim = backbones.feature_dim(weights)
    pre = weights.preprocess
    dataset = PhotoDataset([p for p, _, _, _ in todo], pre, cfg.resize,
                           device_jpeg=jpeg_device.uses_device_decoder(cfg.jpeg_decoder))
    batch_size = resolve_batch_size(cfg.batch_size, device)
    workers = cfg.workers if cfg.workers is not None else default_workers(len(todo), batch_size, device)
    # One photo per worker task, batched here: a worker never holds a whole batch (with the
    # device decoder, 256 JPEGs of 4 MB on a GPU), and about two batches are in flight.
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                        collate_fn=_collate, worker_init_fn=_worker_init if workers else None,
                        pin_memory=device.type == "cuda",
                        prefetch_factor=max(4, -(-2 * batch_size // workers)) if workers else None)
    forward = _Forward(model, half, log)
    # progress=None lets tqdm decide: a bar on a terminal, silence in a log file.
    bar_off = None if progress is None else not progress
    with torch.inference_mode():  # before the workers start, so they do not disturb it
        threads = split_cores(dataset, model, half, device, workers, batch_size, log)
    with tqdm(total=len(todo), unit="img", desc=desc, disable=bar_off, dynamic_ncols=True) as bar, \
            torch.inference_mode(), torch_threads(threads):
        for items in _batches(loader, batch_size):
            pixels, reasons = _batch_pixels(items, dataset, device)
            rows = np.full((len(items), dim), np.nan, dtype=np.float32)
            good = [j for j, px in enumerate(pixels) if px is not None]
            if good:
                batch = torch.stack([pixels[j].to(device, non_blocking=True) for j in good])
                rows[good] = forward(pre.normalize(batch))
            entries = []
            for j, (index, _, sha1, _) in enumerate(items):
                _, rel, size, mtime_ns = todo[index]
                entries.append(Entry(rel, size, mtime_ns, sha1, OK if pixels[j] is not None else UNREADABLE,
                                     reasons[j]))
            bar.update(len(items))
            yield entries, rows


def _batch_pixels(items, dataset: PhotoDataset, device: torch.device) -> tuple[list, list[str]]:
    """Each item's uint8 (3, crop, crop) network pixels (None: unreadable) and its reason.
    Workers decoded the Pillow path's files; JPEGs they handed over are decoded here, on
    `device`, all at once; one the device decoder refuses goes through Pillow after all."""
    pixels = [payload if isinstance(payload, torch.Tensor) else None for _, payload, _, _ in items]
    reasons = [reason for _, _, _, reason in items]
    encoded = [j for j, (_, payload, _, _) in enumerate(items) if isinstance(payload, jpeg_device.EncodedJPEG)]
    decoded = jpeg_device.network_pixels_of([items[j][1] for j in encoded], device, dataset.pre, dataset.resize)
    for j, px in zip(encoded, decoded):
        if px is None:
            pixels[j], reasons[j] = dataset.pillow_pixels(dataset.paths[items[j][0]])
        else:
            pixels[j] = px
    return pixels, reasons


SPLIT_MIN_BATCHES = 8  # the measurement costs up to a second: only for runs long enough to repay it
SPLIT_SAMPLES = 3  # photos decoded to measure decoding: the first, the middle and the last
SPLIT_PROBE_BATCH = 4
SPLIT_DECODE_FLOOR_MS = 10.0  # decoding cheaper than this never sets the pace (small photos)


def split_cores(dataset: PhotoDataset, model: torch.nn.Module, half: torch.dtype | None, device: torch.device,
                workers: int, batch_size: int, log: Callable[[str], None] = print) -> int:
    """torch threads for the model's forward while the decoding workers share the CPU
    (threads.model_threads), from three photos decoded and one forward timed here, before
    the workers start: on a CPU, with workers, more than one thread and at least
    SPLIT_MIN_BATCHES batches; else every thread. The features do not depend on it: oneDNN
    gives the same numbers on one thread as on two (tests/test_extract.py checks)."""
    cores = torch.get_num_threads()
    n = len(dataset)
    if device.type != "cpu" or workers == 0 or cores < 2 or n < SPLIT_MIN_BATCHES * batch_size:
        return cores
    picks = sorted({round(i * (n - 1) / (SPLIT_SAMPLES - 1)) for i in range(SPLIT_SAMPLES)})
    started = time.thread_time()
    for i in picks:
        dataset[i]
    decode_ms = 1000 * (time.thread_time() - started) / len(picks)
    if decode_ms < SPLIT_DECODE_FLOOR_MS:
        return cores
    pre = dataset.pre
    pixels = torch.randint(0, 256, (SPLIT_PROBE_BATCH, 3, pre.crop, pre.crop), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    x = pre.normalize(pixels)
    embed_batch(model, x, half)  # oneDNN makes its kernels on the first call
    started = time.perf_counter()
    embed_batch(model, x, half)
    forward_ms = 1000 * (time.perf_counter() - started) / SPLIT_PROBE_BATCH * cores
    threads = model_threads(cores, forward_ms, decode_ms)
    if threads < cores:
        log(f"decoding takes {decode_ms:.0f} ms of a core a photo and the model {forward_ms:.0f}: the model runs on "
            f"{threads} of {cores} threads, so that the {workers} decoding workers keep it fed")
    return threads


class _Forward:
    """embed_batch in chunks that fit the device: a chunk that runs out of GPU memory is
    halved (and stays halved for the rest of the run) instead of failing the run."""

    def __init__(self, model: torch.nn.Module, half: torch.dtype | None, log: Callable[[str], None]):
        self.model, self.half, self.log = model, half, log
        self.chunk: int | None = None  # None: the whole batch at once

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        while True:
            chunk = self.chunk or len(x)
            try:
                return np.concatenate([embed_batch(self.model, x[s:s + chunk], self.half)
                                       for s in range(0, len(x), chunk)])
            except torch.OutOfMemoryError:
                if chunk == 1:
                    raise
                self.chunk = chunk // 2
                if x.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.log(f"out of device memory at {chunk} images per forward pass; going on with {self.chunk}")


def embed_batch(model: torch.nn.Module, x: torch.Tensor, half: torch.dtype | None) -> np.ndarray:
    """Conv features -> global average pool (in float32) -> (n, d) float32; a network that
    already gives (n, d) rows (ViT's class token) is taken as it is."""
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=half, enabled=half is not None):
        maps = model(x)
    rows = maps.float().mean(dim=(2, 3)) if maps.ndim == 4 else maps.float()
    return rows.cpu().numpy()
