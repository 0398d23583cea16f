"""Extraction throughput: end to end (decode in workers + model) versus the bare model
forward on the same batch size, and the cost of a rerun that finds nothing new.

    python benchmarks/bench_extract.py [--photos data/sample] [--weights auto] [--device auto]
writes outputs/bench/extract.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import write_result  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.extract import autocast_dtype, embed_batch, extract_folder  # noqa: E402
from pipeline.kmeans import resolve_device  # noqa: E402
from pipeline.weights import build_features_model, resolve_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photos", default="data/sample")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()
    cfg = load_config(None, extract=dict(weights=args.weights, device=args.device, batch_size=args.batch_size)).extract
    device = resolve_device(cfg.device, prefer_mps=True)

    with tempfile.TemporaryDirectory() as tmp:
        marks: dict[str, float] = {}

        def log(message: str) -> None:
            if message.startswith("decoding"):
                marks["start"] = time.perf_counter()

        def on_batch(done: int) -> None:
            marks["end"], marks["done"] = time.perf_counter(), done

        report = extract_folder(Path(args.photos), Path(tmp), cfg, log=log, on_batch=on_batch, progress=False)
        n = report.decoded
        pipeline_rate = n / (marks["end"] - marks["start"])
        rerun_start = time.perf_counter()
        rerun = extract_folder(Path(args.photos), Path(tmp), cfg, log=lambda m: None, progress=False)
        rerun_seconds = time.perf_counter() - rerun_start
        assert rerun.decoded == 0

    weights = resolve_weights(cfg.weights, log=lambda m: None)
    model = build_features_model(weights).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    half = autocast_dtype(device)
    batch = torch.randint(0, 256, (cfg.batch_size, 3, 224, 224), dtype=torch.uint8, device=device)
    with torch.inference_mode():
        embed_batch(model, weights.preprocess.normalize(batch), half)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, seen = time.perf_counter(), 0
        while seen < n:
            embed_batch(model, weights.preprocess.normalize(batch), half)
            seen += cfg.batch_size
        if device.type == "cuda":
            torch.cuda.synchronize()
        model_rate = seen / (time.perf_counter() - start)

    result = {
        "photos": args.photos, "images": n, "unreadable": report.unreadable, "weights": weights.id,
        "device": str(device), "batch_size": cfg.batch_size, "workers": cfg.workers or "auto",
        "pipeline_images_per_s": round(pipeline_rate, 2),
        "bare_model_images_per_s": round(model_rate, 2),
        "ratio_pipeline_to_model": round(pipeline_rate / model_rate, 3),
        "first_run_seconds_total": round(report.seconds, 2),
        "no_change_rerun_seconds": round(rerun_seconds, 3),
        "note": "pipeline rate = images / time from the first decode to the last batch written; "
                "bare model = same batch size of random pixels through the same model and normalisation",
    }
    path = write_result("extract", result)
    print(f"{n} images: pipeline {pipeline_rate:.1f} img/s, bare model {model_rate:.1f} img/s "
          f"(ratio {pipeline_rate / model_rate:.2f}); no-change rerun {rerun_seconds:.2f} s -> {path}")


if __name__ == "__main__":
    main()
