"""Extraction throughput and precision of each backbone (VGG16 and EfficientNet-Lite0 by
default), side by side in one run on one machine (compare ratios, not runs):

- the sample, end to end (decode in workers + model + commit) under each precision, next
  to the bare model forward on the same batch size, and a rerun that finds nothing new;
- large JPEGs (12-megapixel, 4000 x 3000, textured like real photos; made by the
  benchmark in a temporary folder from sample photos): end to end against the bare
  forward, and where one image's time goes (decode, resize, forward, writing: the journal
  and the committed cache);
- bf16 against fp32: per-image cosine of the embeddings and, per loss, the agreement
  (ARI) of the clusterings of the sample under the two precisions;
- the two JPEG decoders (Pillow in the workers, and torchvision's on the model's device),
  first model only: the same agreement between the sample's embeddings under each.

    python benchmarks/bench_extract.py [--photos data/sample] [--models vgg16,efficientnet-lite0]
                                       [--weights auto] [--device auto] [--large N]
writes outputs/bench/extract.json.

On CUDA the large-JPEG case also runs with nvJPEG decoding on the GPU (`--jpeg-decoder
device`) beside the default Pillow decoding in the workers, and times nvJPEG's batched
decode alone; `--large` sets how many large JPEGs (48 distinct ones, then copies:
the same bytes cost the same to decode).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import write_result  # noqa: E402
from pipeline.cache import file_digest, load_embedded  # noqa: E402
from pipeline.cluster import normalize_features  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.extract import (autocast_dtype, embed_batch, extract_folder, precision_name,  # noqa: E402
                              resolve_batch_size, to_network_pixels)
from pipeline import jpeg_device  # noqa: E402
from pipeline.weights import torchvision_preprocess  # noqa: E402
from pipeline.images import open_rgb  # noqa: E402
from pipeline.kmeans import GeneralizedKMeans, resolve_device  # noqa: E402
from pipeline.losses import LOSS_NAMES  # noqa: E402
from pipeline.metrics import ari  # noqa: E402
from pipeline import backbones  # noqa: E402

LARGE_JPEGS = 48  # distinct ones; more are copies of these
LARGE_JPEGS_CPU = 192  # twelve batches of 16: the middle third shows the rate a large folder sees
LARGE_JPEGS_CUDA = 2048  # enough for a GPU's steady rate to show past its start
LARGE_SIZE = (4000, 3000)


def timed_extract(photos: Path, out: Path, cfg) -> dict:
    """One extract call, timed: images per second from the first decode to the last batch
    written, and from the first batch back (models loaded) to the last."""
    marks: dict[str, float] = {}

    def log(message: str) -> None:
        if message.startswith("decoding"):
            marks["start"] = time.perf_counter()

    batches: list[tuple[int, float]] = []

    def on_batch(done: int) -> None:
        marks["end"] = time.perf_counter()
        batches.append((done, marks["end"]))
        if "first" not in marks:
            marks["first"], marks["first_images"] = marks["end"], done

    started = time.perf_counter()
    report = extract_folder(photos, out, cfg, log=log, on_batch=on_batch, progress=False)
    total = time.perf_counter() - started
    rate = report.decoded / (marks["end"] - marks["start"])
    # after the first batch is back: the models are loaded, what is left is the per-batch cost
    after_first = marks["end"] - marks["first"]  # 0 when everything came back in one batch
    steady = (report.decoded - marks["first_images"]) / after_first if after_first > 0 else None
    # The middle third of the batches: past the start and the batches the workers decoded ahead
    # while the first ones ran (they flatter the rate after the first batch), and before the
    # last ones, which the model runs alone once every file is decoded: the rate a large
    # folder sees. Only with 6 batches or more.
    middle = None
    if len(batches) >= 6:
        (n0, t0), (n1, t1) = batches[len(batches) // 3 - 1], batches[2 * len(batches) // 3 - 1]
        middle = (n1 - n0) / (t1 - t0)
    return {"images": report.decoded, "images_per_s": round(rate, 2), "seconds_per_image": round(1 / rate, 4),
            "images_per_s_after_first_batch": round(steady, 2) if steady is not None else None,
            "images_per_s_middle_third": round(middle, 2) if middle is not None else None,
            "seconds_to_first_batch": round(marks["first"] - marks["start"], 2), "call_seconds": round(total, 2)}


def end_to_end(photos: Path, out: Path, cfg) -> dict:
    """Images per second from the first decode to the last batch written, and a no-change rerun."""
    timing = timed_extract(photos, out, cfg)
    started = time.perf_counter()
    rerun = extract_folder(photos, out, cfg, log=lambda m: None, progress=False)
    assert rerun.decoded == 0
    return {"images": timing["images"], "images_per_s": timing["images_per_s"],
            "images_per_s_after_first_batch": timing["images_per_s_after_first_batch"],
            "images_per_s_middle_third": timing["images_per_s_middle_third"],
            "seconds_to_first_batch": timing["seconds_to_first_batch"],
            "no_change_rerun_seconds": round(time.perf_counter() - started, 3)}


def by_workers(photos: Path, out: Path, cfg, rounds: int = 2) -> dict:
    """Images per second end to end with one worker fewer than the cores, as many as the
    cores (the default) and one more; alternated `rounds` times, since the load changes."""
    cores = os.cpu_count() or 2
    counts = sorted({max(1, cores - 1), cores, cores + 1})
    rates: dict[str, list[float]] = {str(n): [] for n in counts}
    middles: dict[str, list[float | None]] = {str(n): [] for n in counts}
    for r in range(rounds):
        for n in counts:
            timing = timed_extract(photos, out.with_name(f"{out.name}-{n}-{r}"), replace(cfg, workers=n))
            rates[str(n)].append(timing["images_per_s"])
            middles[str(n)].append(timing["images_per_s_middle_third"])
    return {"cores": cores, "images_per_s": rates, "images_per_s_middle_third": middles}


def core_split(photos: Path, out: Path, cfg, rounds: int = 2) -> dict:
    """Images per second end to end with the model's threads chosen against decoding's cost
    (extract.split_cores, the default) and on every thread, alternated `rounds` times."""
    from pipeline import extract

    chosen: list[int] = []
    rates: dict[str, list[float]] = {"chosen": [], "every_thread": []}
    middles: dict[str, list[float | None]] = {"chosen": [], "every_thread": []}

    def measuring(*args, **kwargs):
        chosen.append(split(*args, **kwargs))
        return chosen[-1]

    split = extract.split_cores
    try:
        for r in range(rounds):
            for mode in rates:
                extract.split_cores = measuring if mode == "chosen" else (lambda *a, **k: torch.get_num_threads())
                timing = timed_extract(photos, out.with_name(f"{out.name}-{mode}-{r}"), cfg)
                rates[mode].append(timing["images_per_s"])
                middles[mode].append(timing["images_per_s_middle_third"])
    finally:
        extract.split_cores = split
    return {"threads": torch.get_num_threads(), "model_threads_chosen": sorted(set(chosen)),
            "images_per_s": rates, "images_per_s_middle_third": middles}


def bare_forward(model, weights, device, half, batch_size: int, n: int, repeats: int = 3) -> float:
    """Images per second of the model alone: random pixels, same batch size and normalisation;
    the best of `repeats` rounds of n images (on a shared machine the others' load only slows)."""
    batch = torch.randint(0, 256, (batch_size, 3, 224, 224), dtype=torch.uint8, device=device)
    rates = []
    with torch.inference_mode():
        embed_batch(model, weights.preprocess.normalize(batch), half)  # warm-up
        _sync(device)
        for _ in range(repeats):
            start, seen = time.perf_counter(), 0
            while seen < n:
                embed_batch(model, weights.preprocess.normalize(batch), half)
                seen += batch_size
            _sync(device)
            rates.append(seen / (time.perf_counter() - start))
    return max(rates)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_large_jpegs(folder: Path, sources: list[Path], n: int) -> None:
    """12-megapixel JPEGs with sensor-like grain, so they are as costly to decode as photos:
    the first LARGE_JPEGS made in parallel, the rest copies of them."""
    from concurrent.futures import ProcessPoolExecutor

    folder.mkdir(parents=True)
    distinct = min(n, LARGE_JPEGS)
    jobs = [(sources[i % len(sources)], folder / f"large_{i:04d}.jpg", i) for i in range(distinct)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_make_large_jpeg, *zip(*jobs)))
    for i in range(distinct, n):
        (folder / f"large_{i:04d}.jpg").write_bytes((folder / f"large_{i % distinct:04d}.jpg").read_bytes())


def _make_large_jpeg(source: Path, target: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with Image.open(source) as im:
        big = np.asarray(im.convert("RGB").resize(LARGE_SIZE, Image.Resampling.BILINEAR), dtype=np.int16)
    grain = rng.normal(0, 12, big.shape).astype(np.int16)
    Image.fromarray(np.clip(big + grain, 0, 255).astype(np.uint8)).save(target, quality=92)


def time_device_decode(paths: list[Path], device, batch_size: int) -> dict:
    """Milliseconds per image of the device decoder alone (bytes already read), batch by batch,
    and of resizing its output to the network's pixels; best of 3 rounds."""
    data = [bytearray(p.read_bytes()) for p in paths]
    encoded = [jpeg_device.encode(d) for d in data]
    pre = torchvision_preprocess()  # resize 256, crop 224: what the geometry needs of it
    decode_s, resize_s = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        images = []
        for start in range(0, len(encoded), batch_size):
            images += jpeg_device.decode(encoded[start:start + batch_size], device)
        _sync(device)
        t1 = time.perf_counter()
        for start in range(0, len(images), batch_size):
            jpeg_device.network_pixels(images[start:start + batch_size], pre, "crop")
        _sync(device)
        decode_s.append(t1 - t0)
        resize_s.append(time.perf_counter() - t1)
        del images
    n = len(paths)
    return {"device_decode_ms": round(1000 * min(decode_s) / n, 3), "device_resize_ms": round(1000 * min(resize_s) / n, 3),
            "images": n, "batch_size": batch_size}


def time_split(paths: list[Path], model, weights, device, half, resize: str, batch_size: int) -> dict:
    """Milliseconds per image for each step, run one after the other in this process
    (hashing: the SHA-1 of the file that keys the cache, which a worker takes before decoding)."""
    pre = weights.preprocess
    side = pre.resize if resize == "crop" else pre.crop
    started = time.perf_counter()
    for p in paths:
        file_digest(p, "sha1")
    t0 = time.perf_counter()
    images = [open_rgb(p, (side, side)) for p in paths]
    t1 = time.perf_counter()
    pixels = [to_network_pixels(im, pre, resize) for im in images]
    t2 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(pixels), batch_size):
            embed_batch(model, pre.normalize(torch.stack(pixels[start:start + batch_size]).to(device)), half)
        _sync(device)
    t3 = time.perf_counter()
    n = len(paths)
    write_s = time_writing(paths, backbones.feature_dim(weights), batch_size)
    return {"hash_ms": round(1000 * (t0 - started) / n, 1), "decode_ms": round(1000 * (t1 - t0) / n, 1),
            "resize_ms": round(1000 * (t2 - t1) / n, 1),
            "forward_ms": round(1000 * (t3 - t2) / n, 1), "write_ms": round(1000 * write_s / n, 2)}


def time_writing(paths: list[Path], dim: int, batch_size: int) -> float:
    """Seconds to journal these images' rows one batch at a time, as extraction does (each
    batch fsynced), and to commit them as the cache, in a temporary output folder."""
    from pipeline.cache import OK, Entry, Journal, write_cache

    entries = [Entry(p.name, p.stat().st_size, p.stat().st_mtime_ns, "0" * 40, OK, "") for p in paths]
    rows = np.random.default_rng(0).standard_normal((len(paths), dim)).astype(np.float32)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        journal = Journal(Path(out))
        for i in range(0, len(entries), batch_size):
            journal.append(entries[i:i + batch_size], rows[i:i + batch_size])
        write_cache(Path(out), entries, rows)
        journal.clear()
        return time.perf_counter() - started


def agreement(fp32: np.ndarray, bf16: np.ndarray, k: int = 4, name: str = "ari_fp32_vs_bf16") -> dict:
    """Per-image cosine of bf16 to fp32 embeddings (or any two embeddings of the same photos);
    per loss, ARI of the two clusterings."""
    a, b = normalize_features(fp32, "l2"), normalize_features(bf16, "l2")
    cosine = (a * b).sum(axis=1)
    per_loss = {}
    for loss in LOSS_NAMES:
        labels = [GeneralizedKMeans(n_clusters=k, loss=loss, n_init=4, seed=0, device="cpu").fit(x).labels_
                  for x in (a, b)]
        per_loss[loss] = round(float(ari(labels[0], labels[1])), 4)
    return {"cosine_min": round(float(cosine.min()), 6), "cosine_median": round(float(np.median(cosine)), 6),
            name: per_loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photos", default="data/sample")
    parser.add_argument("--models", default="vgg16,efficientnet-lite0",
                        help="comma-separated backbones, measured side by side in the same run")
    parser.add_argument("--weights", default=None, help="VGG16's weights (the other models: their own)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--large", type=int, default=None,
                        help=f"large JPEGs to extract (default {LARGE_JPEGS_CPU}, on CUDA {LARGE_JPEGS_CUDA})")
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    base = load_config(None, extract=dict(weights=args.weights, device=args.device, batch_size=args.batch_size)).extract
    device = resolve_device(base.device, prefer_mps=True)
    batch = resolve_batch_size(base.batch_size, device)
    n_large = args.large or (LARGE_JPEGS_CUDA if device.type == "cuda" else LARGE_JPEGS_CPU)
    photos = Path(args.photos)
    loaded = {}
    for name in models:
        cfg = replace(base, model=name, weights=base.weights if name == "vgg16" else "auto")
        weights = backbones.resolve(name, cfg.weights, log=lambda m: None)
        loaded[name] = (cfg, weights, backbones.build(weights).to(device).to(memory_format=torch.channels_last))
    result = {"photos": str(photos), "device": str(device), "batch_size": batch,
              "workers": base.workers or "auto", "load_average_before": _load(), "models": {}}
    features: dict[str, dict] = {name: {} for name in models}
    with tempfile.TemporaryDirectory() as tmp:
        # precision outside, model inside: the models are measured close together in time, so a
        # change in the machine's load between them costs less of the comparison
        for precision in ("auto", "fp32"):
            for name in models:
                cfg, weights, model = loaded[name]
                entry = result["models"].setdefault(name, {"weights": weights.id,
                                                           "feature_dim": backbones.feature_dim(weights),
                                                           "sample": {}})
                run_cfg = replace(cfg, precision=precision)
                half = autocast_dtype(precision, device, log=lambda m: None)
                out = Path(tmp) / f"{name}-{precision}"
                case = end_to_end(photos, out, run_cfg)
                case["bare_model_images_per_s"] = round(bare_forward(model, weights, device, half, batch,
                                                                     case["images"]), 2)
                case["ratio_end_to_end_to_model"] = round(case["images_per_s"] / case["bare_model_images_per_s"], 3)
                case["precision"] = precision_name(half)
                entry["sample"][precision] = case
                features[name][precision_name(half)] = load_embedded(out).features
                print(f"{name}, sample, {precision} ({case['precision']}): {case['images_per_s']} img/s end to end, "
                      f"bare model {case['bare_model_images_per_s']} img/s", flush=True)

        # the other JPEG decoder on the sample (Pillow on CUDA, the device decoder elsewhere), same precision
        name = models[0]
        cfg, weights, model = loaded[name]
        default = "device" if jpeg_device.uses_device_decoder(cfg.jpeg_decoder) else "pillow"
        other = "pillow" if default == "device" else "device"
        out = Path(tmp) / f"{name}-{other}"
        case = end_to_end(photos, out, replace(cfg, precision="auto", jpeg_decoder=other))
        half = autocast_dtype("auto", device, log=lambda m: None)
        case["agreement"] = agreement(features[name][precision_name(half)], load_embedded(out).features,
                                      name=f"ari_{default}_vs_{other}")
        result["models"][name]["sample_other_jpeg_decoder"] = {"default": default, "other": other, **case}
        print(f"{name}, sample, --jpeg-decoder {other} against {default}: {case['images_per_s']} img/s end to end; "
              f"{case['agreement']}", flush=True)

        large = Path(tmp) / "large"
        make_large_jpegs(large, sorted(photos.rglob("*.jpg")), n_large)
        for name in models:
            cfg, weights, model = loaded[name]
            case = end_to_end(large, Path(tmp) / f"large-out-{name}", replace(cfg, precision="auto"))
            case["jpeg_decoder"] = "device" if jpeg_device.uses_device_decoder(cfg.jpeg_decoder) else "pillow"
            case["bare_model_images_per_s"] = round(bare_forward(model, weights, device, half, batch,
                                                                 case["images"]), 2)
            case["ratio_end_to_end_to_model"] = round(case["images_per_s"] / case["bare_model_images_per_s"], 3)
            case["megapixels"] = LARGE_SIZE[0] * LARGE_SIZE[1] / 1e6
            case["mean_file_mb"] = round(np.mean([p.stat().st_size for p in large.iterdir()]) / 1e6, 2)
            case["split_one_process"] = time_split(sorted(large.iterdir())[:16], model, weights, device, half,
                                                   cfg.resize, batch)
            if device.type == "cpu":  # the split between decoding workers and the model
                case["by_workers"] = by_workers(large, Path(tmp) / f"large-workers-{name}", replace(cfg, precision="auto"))
                print(f"{name}, large JPEGs by decoding workers: {case['by_workers']}", flush=True)
                case["core_split"] = core_split(large, Path(tmp) / f"large-split-{name}", replace(cfg, precision="auto"))
                print(f"{name}, large JPEGs, the model's threads chosen against decoding or all: "
                      f"{case['core_split']}", flush=True)
            # the device decoder alone (nvJPEG on CUDA; on a CPU the same code, for comparison)
            case["device_decoder_alone"] = time_device_decode(
                sorted(large.iterdir())[:2 * batch if device.type == "cuda" else 8], device, batch)
            if device.type == "cuda":  # nvJPEG against decoding in the CPU workers (the default)
                other = "pillow" if case["jpeg_decoder"] == "device" else "device"
                timing = end_to_end(large, Path(tmp) / f"large-{other}-{name}",
                                    replace(cfg, precision="auto", jpeg_decoder=other))
                case[f"jpeg_decoder_{other}"] = timing
                print(f"{name}, large JPEGs, --jpeg-decoder {other}: {timing['images_per_s']} img/s end to end "
                      f"({timing['images_per_s_middle_third']} over the middle third); "
                      f"nvJPEG alone: {case['device_decoder_alone']}", flush=True)
            result["models"][name]["large_jpegs"] = case
            print(f"{name}, large JPEGs: {case['images_per_s']} img/s end to end "
                  f"({case['images_per_s_middle_third']} over the middle third), bare model "
                  f"{case['bare_model_images_per_s']} img/s; per image {case['split_one_process']}; "
                  f"device decoder alone {case['device_decoder_alone']}", flush=True)

    for name in models:
        if {"bfloat16", "float32"} <= set(features[name]):
            result["models"][name]["bf16_vs_fp32"] = agreement(features[name]["float32"], features[name]["bfloat16"])
            print(f"{name}, bf16 vs fp32: {result['models'][name]['bf16_vs_fp32']}")
    result["side_by_side"] = side_by_side(result["models"], models[0])
    for row in result["side_by_side"]:
        print(row)
    result["load_average_after"] = _load()
    result["note"] = ("end to end = images / time from the first decode to the last batch written; bare model = "
                      "the same batch size of random pixels through the same model and normalisation, best of 3 rounds; "
                      "split = each step for 16 large JPEGs, one after the other in one process; "
                      f"x_{models[0]} = images/s relative to {models[0]} in this same run")
    print(f"-> {write_result('extract', result)}")


def side_by_side(measured: dict, reference: str) -> list[dict]:
    """Images per second of every model next to each other, and as a multiple of `reference`'s."""
    rows = []
    for name, entry in measured.items():
        row = {"model": name, "feature_dim": entry["feature_dim"]}
        for where, case in (("sample_auto", entry["sample"]["auto"]), ("sample_fp32", entry["sample"]["fp32"]),
                            ("large_jpegs", entry.get("large_jpegs"))):
            if case is None:
                continue
            ref = measured[reference]["sample"][where.split("_")[1]] if where.startswith("sample") \
                else measured[reference].get("large_jpegs")
            row[f"{where}_end_to_end"] = case["images_per_s"]
            row[f"{where}_bare"] = case["bare_model_images_per_s"]
            row[f"{where}_end_to_end_x_{reference}"] = round(case["images_per_s"] / ref["images_per_s"], 2)
            row[f"{where}_bare_x_{reference}"] = round(case["bare_model_images_per_s"]
                                                       / ref["bare_model_images_per_s"], 2)
        rows.append(row)
    return rows


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


if __name__ == "__main__":
    main()
