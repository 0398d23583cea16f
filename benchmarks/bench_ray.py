"""`extract --executor ray` against the local path, on the same machine in one run (compare
ratios inside one run, not across runs: the machine is shared):

- the local path as users run it (DataLoader decoding workers, torch on every core), and on
  one thread with no decoding workers (the same work one Ray embedder does);
- Ray with one and with two embedders (one CPU and one torch thread each) on a one-machine
  Ray started here; images/s counted from the first batch sent to the last one journaled
  (the model load of each embedder included), and the whole call (connect and probe too);
- Ray's overhead per image: (Ray with one embedder - local on one thread) / images;
- the cost of shipping photos' bytes through the driver instead of paths: per photo, the
  driver reads it and puts it in the object store and a task fetches it, against a task that
  reads the path itself; with the sample's mean file size, what one driver link can feed.

    python benchmarks/bench_ray.py [--photos data/sample] [--weights random]
writes outputs/bench/ray.json (VGG16; `--weights random` computes exactly what the real
weights compute, without needing them).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_extract import timed_extract  # noqa: E402
from benchmarks.common import write_result  # noqa: E402
from pipeline.config import ExtractConfig  # noqa: E402
from pipeline.images import scan_images  # noqa: E402


def shipping_cost(ray, photos: Path, files: list[str], repeats: int = 3) -> dict:
    """Seconds per photo: bytes read by the driver and shipped, against a path the task reads."""

    @ray.remote(num_cpus=1)
    def by_path(path: str) -> int:
        with open(path, "rb") as fh:
            return len(fh.read())

    @ray.remote(num_cpus=1)
    def by_bytes(data: bytes) -> int:
        return len(data)

    paths = [str(photos / rel) for rel in files]
    ray.get([by_path.remote(p) for p in paths[:4]] + [by_bytes.remote(b"x") for _ in range(4)])  # warm workers
    best = {"paths": float("inf"), "bytes": float("inf")}
    for _ in range(repeats):
        t = time.perf_counter()
        ray.get([by_path.remote(p) for p in paths])
        best["paths"] = min(best["paths"], time.perf_counter() - t)
        t = time.perf_counter()
        refs = []
        for p in paths:
            with open(p, "rb") as fh:
                refs.append(by_bytes.remote(ray.put(fh.read())))
        ray.get(refs)
        best["bytes"] = min(best["bytes"], time.perf_counter() - t)
    mean_bytes = sum(os.path.getsize(p) for p in paths) / len(paths)
    extra = (best["bytes"] - best["paths"]) / len(paths)
    return {"photos": len(paths), "mean_file_bytes": round(mean_bytes),
            "paths_seconds_per_photo": round(best["paths"] / len(paths), 5),
            "bytes_seconds_per_photo": round(best["bytes"] / len(paths), 5),
            "extra_seconds_per_photo_shipping_bytes": round(extra, 5),
            # what a 1 Gbit/s driver link can ship at most, whatever the cluster's size
            "photos_per_s_1_gbit_link_sample_files": round(125e6 / mean_bytes, 1),
            "photos_per_s_1_gbit_link_4_MB_camera_jpegs": round(125e6 / 4e6, 1),
            "note": "one machine: no network; on a cluster every shipped byte also crosses the driver's link"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=Path("data/sample"))
    parser.add_argument("--weights", default="random")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a one-machine Ray of this benchmark only
    import ray

    from pipeline import ray_executor

    files = scan_images(args.photos).images
    base = ExtractConfig(weights=args.weights, batch_size=args.batch_size, device="cpu", precision="fp32")
    result = {"photos": str(args.photos), "images": len(files), "model": base.model, "weights": args.weights,
              "batch_size": args.batch_size, "precision": "fp32", "load_average_before": os.getloadavg()}
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        tmp = Path(tmp)

        def fresh(name: str) -> Path:
            shutil.rmtree(tmp / name, ignore_errors=True)
            return tmp / name

        threads = torch.get_num_threads()
        runs["local"] = timed_extract(args.photos, fresh("local"), base)
        torch.set_num_threads(1)
        runs["local_1_thread_no_workers"] = timed_extract(args.photos, fresh("local1"), replace(base, workers=0))
        torch.set_num_threads(threads)
        package = str(Path(ray_executor.__file__).resolve().parent)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 runtime_env={"py_modules": [package]})
        try:
            for actors in (1, 2):
                cfg = replace(base, executor="ray", ray_address="local", ray_actors=actors)
                runs[f"ray_{actors}_embedder"] = timed_extract(args.photos, fresh(f"ray{actors}"), cfg)
                runs[f"ray_{actors}_embedder"]["batches"] = ray_executor.last_stats.batches_back
            result["shipping"] = shipping_cost(ray, args.photos, files)
        finally:
            ray.shutdown()
    n = len(files)
    one = runs["ray_1_embedder"]["seconds_per_image"]
    ref = runs["local_1_thread_no_workers"]["seconds_per_image"]
    result["runs"] = runs
    result["ray_overhead_seconds_per_image"] = round(one - ref, 4)
    steady_one = 1 / runs["ray_1_embedder"]["images_per_s_after_first_batch"]
    steady_ref = 1 / runs["local_1_thread_no_workers"]["images_per_s_after_first_batch"]
    result["ray_overhead_seconds_per_image_after_first_batch"] = round(steady_one - steady_ref, 4)
    result["ray_2_over_1_embedder"] = round(runs["ray_2_embedder"]["images_per_s"] / runs["ray_1_embedder"]["images_per_s"], 2)
    result["ray_2_embedders_over_local"] = round(runs["ray_2_embedder"]["images_per_s"] / runs["local"]["images_per_s"], 2)
    result["load_average_after"] = os.getloadavg()
    path = write_result("ray", result)
    print(f"{n} photos; images/s: " + ", ".join(f"{k} {v['images_per_s']}" for k, v in runs.items()))
    print(f"Ray overhead per image (1 embedder - local 1 thread): {result['ray_overhead_seconds_per_image']} s, "
          f"{result['ray_overhead_seconds_per_image_after_first_batch']} s once the models are loaded; "
          f"shipping bytes instead of paths: +{result['shipping']['extra_seconds_per_photo_shipping_bytes']} s/photo "
          f"on one machine; load average {result['load_average_before']} -> {result['load_average_after']}")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
