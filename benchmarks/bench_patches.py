"""`make bench-patches`: the patch dictionary at the scale of Fashion-MNIST (28.9M 5 x 5 patches).

1. extraction: the 60,000 training images -> non-blank uint8 patches (seconds, GB);
2. one full-data square-loss Lloyd iteration at 20M x 25, K = 1000, from the same initial
   centers: ours (`nearest.full_pass` + the means, on the uint8 patches, with the torch and the
   faiss search), faiss-cpu's `Kmeans(niter=1)` on every point, scikit-learn's `KMeans(max_iter=1)`;
   the MSE after the iteration is reported for each (they must agree);
3. per K: the subsample method `photoclust patches` uses (at most 256 patches per center,
   50 iterations, then one full-data pass) against full Lloyd on all 28.9M patches from the
   same initial centers (`--lloyd-iters` iterations), and scikit-learn's MiniBatchKMeans (batches of
   8192, `--minibatch-epochs` passes) on the same training subsample from those centers (on all 28.9M
   patches one pass took over 7 minutes at K = 50 on this machine); MSE of all patches for each,
   seconds, and the ratio to full Lloyd.

Every measurement runs in its own process (peak memory is its own; `peak_rss_above_data_mb` is
the growth past the process's memory with the libraries imported and the patches loaded).
The load average of the machine is recorded before and after each, since other work shares it.
Writes outputs/bench/patches.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result  # noqa: E402


def memory_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def fashion_mnist() -> Path | None:
    try:
        files = subprocess.run(["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return None
    return next((Path(f) for f in files if "train-images-idx3-ubyte" in f), None)


def initial_centers(patches: np.ndarray, k: int, seed: int) -> np.ndarray:
    from pipeline import patches as P

    return P.distinct_rows(P.subsample(patches, k, seed), k, seed).astype(np.float32)


def worker(case: dict) -> dict:
    import torch  # noqa: F401

    from pipeline import nearest
    from pipeline import patches as P

    if case["kind"] in ("iter_faiss",):
        import faiss  # noqa: F401
    if case["kind"] in ("iter_sklearn", "minibatch"):
        import sklearn.cluster  # noqa: F401
    patches = np.load(case["path"], allow_pickle=False)
    if case.get("rows"):
        patches = patches[:case["rows"]]
    k, seed = case["k"], case.get("seed", 0)
    C0 = initial_centers(patches, k, seed)
    device = torch.device("cpu")
    baseline = memory_mb("VmRSS")
    result: dict = {"rows": len(patches), "k": k}
    start = time.perf_counter()
    if case["kind"] == "iter_ours":
        out = nearest.full_pass(patches, C0, "square", None, backend=case["backend"], device=device, with_sums=True)
        C1 = np.where(out.counts[:, None] > 0, out.sums / np.maximum(out.counts, 1)[:, None], C0).astype(np.float32)
        result["seconds"] = time.perf_counter() - start
        result["mse_of_the_assignment"] = out.sq_error / patches.size
    elif case["kind"] == "iter_faiss":
        import faiss

        X = patches.astype(np.float32)
        baseline = memory_mb("VmRSS")
        start = time.perf_counter()
        km = faiss.Kmeans(X.shape[1], k, niter=1, seed=1, verbose=False, max_points_per_centroid=len(X))
        km.train(X, init_centroids=C0)
        result["seconds"] = time.perf_counter() - start
        result["note"] = "float32 copy of the patches made before the clock starts (faiss needs float32)"
        C1 = km.centroids
    elif case["kind"] == "iter_sklearn":
        from sklearn.cluster import KMeans

        X = patches.astype(np.float32)
        baseline = memory_mb("VmRSS")
        start = time.perf_counter()
        km = KMeans(k, init=C0, n_init=1, max_iter=1, algorithm="lloyd", tol=0).fit(X)
        result["seconds"] = time.perf_counter() - start
        result["note"] = ("float32 copy made before the clock starts; fit also assigns the labels again "
                          "after its one update (a second E-step)")
        C1 = km.cluster_centers_.astype(np.float32)
    elif case["kind"] == "subsample":
        d = P.train(patches, k, "square", seed, case["backend"], device, log=lambda m: None)
        result.update(seconds=time.perf_counter() - start, mse=d.mse, iterations=d.iterations,
                      train_points=d.train_points)
        C1 = None
    elif case["kind"] == "full_lloyd":
        fit = nearest.lloyd(patches, C0, max_iter=case["iters"], backend=case["backend"], device=device)
        mse = nearest.full_pass(patches, fit.centers, backend=case["backend"], device=device).sq_error / patches.size
        result.update(seconds=time.perf_counter() - start, mse=mse, iterations=fit.iterations,
                      converged=fit.converged, history=[round(v, 4) for v in fit.history])
        C1 = None
    elif case["kind"] == "minibatch":
        from sklearn.cluster import MiniBatchKMeans

        X = P.subsample(patches, k, seed).astype(np.float32)  # the same training patches as ours
        baseline = memory_mb("VmRSS")
        start = time.perf_counter()
        km = MiniBatchKMeans(k, init=C0, n_init=1, batch_size=case["batch"], max_iter=case["epochs"],
                             random_state=seed).fit(X)
        result["seconds"] = time.perf_counter() - start
        result["n_steps"] = int(km.n_steps_)
        del X
        result["mse"] = nearest.full_pass(patches, km.cluster_centers_.astype(np.float32), backend="faiss"
                                          if nearest.faiss_available() else "torch").sq_error / patches.size
        C1 = None
    else:
        raise ValueError(case["kind"])
    result["peak_rss_mb"] = round(memory_mb("VmHWM"), 1)
    result["peak_rss_above_data_mb"] = round(memory_mb("VmHWM") - baseline, 1)
    result["data_mb"] = round(patches.nbytes / 2**20, 1)
    if C1 is not None:  # the MSE of every row on the updated centers (one exact pass; not timed)
        result["mse_after_iteration"] = nearest.full_pass(patches, C1, backend="torch" if not nearest.faiss_available()
                                                          else "faiss", device=device).sq_error / patches.size
    result["seconds"] = round(result["seconds"], 3)
    return result


def measure(case: dict, timeout: int = 5400) -> dict:
    before = load()
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(case)], capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        result = {"error": proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]}
    else:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(case={k: v for k, v in case.items() if k != "path"}, load_before=before, load_after=load(),
                  wall_seconds=round(time.perf_counter() - started, 1))
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, default=None,
                        help="an IDX image file (default: Fashion-MNIST's training images, found with dpkg -L)")
    parser.add_argument("--iteration-rows", type=int, default=20_000_000, help="rows of the one-iteration race")
    parser.add_argument("--iteration-k", type=int, default=1000)
    parser.add_argument("--ks", default="100,1000", help="K of the subsample-vs-full-Lloyd comparison")
    parser.add_argument("--lloyd-iters", type=int, default=20, help="iterations of full Lloyd (the reference)")
    parser.add_argument("--minibatch-epochs", type=int, default=25, help="MiniBatchKMeans max_iter (passes)")
    parser.add_argument("--backends", default=None,
                        help="our search backends to race, comma-separated (default: faiss when installed, torch)")
    parser.add_argument("--name", default="patches", help="outputs/bench/<name>.json")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: iteration,curve,minibatch,"
                                                   "sklearn,torch,faiss (faiss-cpu's own Kmeans),lloyd (full Lloyd)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    from pipeline import nearest
    from pipeline import patches as P

    source = args.source or fashion_mnist()
    if source is None:
        sys.exit("no source: apt-get install dataset-fashion-mnist, or pass --source train-images-idx3-ubyte.gz")
    skip = set(filter(None, args.skip.split(",")))
    results: dict = {"source": source.name, "load_at_start": load()}
    start = time.perf_counter()
    images = P.load_source(source).train.images
    patches, blank = P.extract_patches(images, 5)
    results["extraction"] = {"images": len(images), "patches": len(patches), "blank": blank,
                             "gb_uint8": round(patches.nbytes / 1e9, 3),
                             "seconds": round(time.perf_counter() - start, 2)}
    print(json.dumps(results["extraction"]), flush=True)
    backends = args.backends.split(",") if args.backends else \
        (["faiss"] if nearest.faiss_available() else []) + ([] if "torch" in skip else ["torch"])
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "patches.npy")
        np.save(path, patches)
        del patches, images
        if "iteration" not in skip:
            race = {"rows": args.iteration_rows, "k": args.iteration_k, "path": path}
            results["one_iteration"] = {f"ours_{b}": measure({**race, "kind": "iter_ours", "backend": b})
                                        for b in backends}
            if nearest.faiss_available() and "faiss" not in skip:
                results["one_iteration"]["faiss"] = measure({**race, "kind": "iter_faiss"})
            if "sklearn" not in skip:
                results["one_iteration"]["sklearn_kmeans"] = measure({**race, "kind": "iter_sklearn"})
        if "curve" not in skip:
            backend = backends[0]
            results["per_k"] = {}
            for k in [int(v) for v in args.ks.split(",")]:
                entry = {"subsample": measure({"k": k, "path": path, "kind": "subsample", "backend": backend})}
                if "lloyd" not in skip:
                    entry["full_lloyd"] = measure({"k": k, "path": path, "kind": "full_lloyd", "backend": backend,
                                                   "iters": args.lloyd_iters})
                if "minibatch" not in skip:
                    entry["minibatch_kmeans"] = measure({"k": k, "path": path, "kind": "minibatch", "batch": 8192,
                                                         "epochs": args.minibatch_epochs})
                if "mse" in entry["subsample"] and "mse" in entry.get("full_lloyd", {}):
                    entry["subsample_mse_over_full_lloyd"] = round(entry["subsample"]["mse"]
                                                                   / entry["full_lloyd"]["mse"], 5)
                results["per_k"][str(k)] = entry
                write_result(args.name, results)  # what is measured so far survives an interrupted run
    results["load_at_end"] = load()
    print(f"-> {write_result(args.name, results)}")


if __name__ == "__main__":
    main()
