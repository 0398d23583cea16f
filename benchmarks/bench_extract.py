"""Extraction throughput and precision of each backbone (VGG16 and EfficientNet-Lite0 by
default), side by side in one run on one machine (compare ratios, not runs):

- the sample, end to end (decode in workers + model + commit) under each precision, next
  to the bare model forward on the same batch size, and a rerun that finds nothing new;
- large JPEGs (12-megapixel, 4000 x 3000, textured like real photos; made by the
  benchmark in a temporary folder from sample photos): end to end against the bare
  forward, and where one image's time goes (decode, resize, forward, commit);
- bf16 against fp32: per-image cosine of the embeddings and, per loss, the agreement
  (ARI) of the clusterings of the sample under the two precisions.

    python benchmarks/bench_extract.py [--photos data/sample] [--models vgg16,efficientnet-lite0]
                                       [--weights auto] [--device auto]
writes outputs/bench/extract.json.
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
from pipeline.cache import load_embedded  # noqa: E402
from pipeline.cluster import normalize_features  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.extract import (autocast_dtype, embed_batch, extract_folder, precision_name,  # noqa: E402
                              to_network_pixels)
from pipeline.images import open_rgb  # noqa: E402
from pipeline.kmeans import GeneralizedKMeans, resolve_device  # noqa: E402
from pipeline.losses import LOSS_NAMES  # noqa: E402
from pipeline.metrics import ari  # noqa: E402
from pipeline import backbones  # noqa: E402

LARGE_JPEGS = 48
LARGE_SIZE = (4000, 3000)


def timed_extract(photos: Path, out: Path, cfg) -> dict:
    """One extract call, timed: images per second from the first decode to the last batch
    written, and from the first batch back (models loaded) to the last."""
    marks: dict[str, float] = {}

    def log(message: str) -> None:
        if message.startswith("decoding"):
            marks["start"] = time.perf_counter()

    def on_batch(done: int) -> None:
        marks["end"] = time.perf_counter()
        if "first" not in marks:
            marks["first"], marks["first_images"] = marks["end"], done

    started = time.perf_counter()
    report = extract_folder(photos, out, cfg, log=log, on_batch=on_batch, progress=False)
    total = time.perf_counter() - started
    rate = report.decoded / (marks["end"] - marks["start"])
    # after the first batch is back: the models are loaded, what is left is the per-batch cost
    after_first = marks["end"] - marks["first"]  # 0 when everything came back in one batch
    steady = (report.decoded - marks["first_images"]) / after_first if after_first > 0 else None
    return {"images": report.decoded, "images_per_s": round(rate, 2), "seconds_per_image": round(1 / rate, 4),
            "images_per_s_after_first_batch": round(steady, 2) if steady is not None else None,
            "seconds_to_first_batch": round(marks["first"] - marks["start"], 2), "call_seconds": round(total, 2)}


def end_to_end(photos: Path, out: Path, cfg) -> dict:
    """Images per second from the first decode to the last batch written, and a no-change rerun."""
    timing = timed_extract(photos, out, cfg)
    started = time.perf_counter()
    rerun = extract_folder(photos, out, cfg, log=lambda m: None, progress=False)
    assert rerun.decoded == 0
    return {"images": timing["images"], "images_per_s": timing["images_per_s"],
            "no_change_rerun_seconds": round(time.perf_counter() - started, 3)}


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
    """12-megapixel JPEGs with sensor-like grain, so they are as costly to decode as photos."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(n):
        with Image.open(sources[i % len(sources)]) as im:
            big = np.asarray(im.convert("RGB").resize(LARGE_SIZE, Image.Resampling.BILINEAR), dtype=np.int16)
        grain = rng.normal(0, 12, big.shape).astype(np.int16)
        Image.fromarray(np.clip(big + grain, 0, 255).astype(np.uint8)).save(folder / f"large_{i:03d}.jpg", quality=92)


def time_split(paths: list[Path], model, weights, device, half, resize: str, batch_size: int) -> dict:
    """Milliseconds per image for each step, run one after the other in this process."""
    pre = weights.preprocess
    side = pre.resize if resize == "crop" else pre.crop
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
    return {"decode_ms": round(1000 * (t1 - t0) / n, 1), "resize_ms": round(1000 * (t2 - t1) / n, 1),
            "forward_ms": round(1000 * (t3 - t2) / n, 1)}


def agreement(fp32: np.ndarray, bf16: np.ndarray, k: int = 4) -> dict:
    """Per-image cosine of bf16 to fp32 embeddings; per loss, ARI of the two clusterings."""
    a, b = normalize_features(fp32, "l2"), normalize_features(bf16, "l2")
    cosine = (a * b).sum(axis=1)
    per_loss = {}
    for loss in LOSS_NAMES:
        labels = [GeneralizedKMeans(n_clusters=k, loss=loss, n_init=4, seed=0, device="cpu").fit(x).labels_
                  for x in (a, b)]
        per_loss[loss] = round(float(ari(labels[0], labels[1])), 4)
    return {"cosine_min": round(float(cosine.min()), 6), "cosine_median": round(float(np.median(cosine)), 6),
            "ari_fp32_vs_bf16": per_loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photos", default="data/sample")
    parser.add_argument("--models", default="vgg16,efficientnet-lite0",
                        help="comma-separated backbones, measured side by side in the same run")
    parser.add_argument("--weights", default=None, help="VGG16's weights (the other models: their own)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    base = load_config(None, extract=dict(weights=args.weights, device=args.device, batch_size=args.batch_size)).extract
    device = resolve_device(base.device, prefer_mps=True)
    photos = Path(args.photos)
    loaded = {}
    for name in models:
        cfg = replace(base, model=name, weights=base.weights if name == "vgg16" else "auto")
        weights = backbones.resolve(name, cfg.weights, log=lambda m: None)
        loaded[name] = (cfg, weights, backbones.build(weights).to(device).to(memory_format=torch.channels_last))
    result = {"photos": str(photos), "device": str(device), "batch_size": base.batch_size,
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
                case["bare_model_images_per_s"] = round(bare_forward(model, weights, device, half, base.batch_size,
                                                                     case["images"]), 2)
                case["ratio_end_to_end_to_model"] = round(case["images_per_s"] / case["bare_model_images_per_s"], 3)
                case["precision"] = precision_name(half)
                entry["sample"][precision] = case
                features[name][precision_name(half)] = load_embedded(out).features
                print(f"{name}, sample, {precision} ({case['precision']}): {case['images_per_s']} img/s end to end, "
                      f"bare model {case['bare_model_images_per_s']} img/s", flush=True)

        half = autocast_dtype("auto", device, log=lambda m: None)
        large = Path(tmp) / "large"
        make_large_jpegs(large, sorted(photos.rglob("*.jpg")), LARGE_JPEGS)
        for name in models:
            cfg, weights, model = loaded[name]
            case = end_to_end(large, Path(tmp) / f"large-out-{name}", replace(cfg, precision="auto"))
            case["bare_model_images_per_s"] = round(bare_forward(model, weights, device, half, base.batch_size,
                                                                 case["images"]), 2)
            case["ratio_end_to_end_to_model"] = round(case["images_per_s"] / case["bare_model_images_per_s"], 3)
            case["megapixels"] = LARGE_SIZE[0] * LARGE_SIZE[1] / 1e6
            case["mean_file_mb"] = round(np.mean([p.stat().st_size for p in large.iterdir()]) / 1e6, 2)
            case["split_one_process"] = time_split(sorted(large.iterdir())[:16], model, weights, device, half,
                                                   cfg.resize, base.batch_size)
            result["models"][name]["large_jpegs"] = case
            print(f"{name}, large JPEGs: {case['images_per_s']} img/s end to end, bare model "
                  f"{case['bare_model_images_per_s']} img/s; per image {case['split_one_process']}", flush=True)

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
