"""Clustering speed and quality, all in one run on the same data:

1. each robust loss against the tutorial's algorithm (benchmarks/tutorial_reference.py) on
   n=2000, d=512, k=5 VGG-like data from the same initial centers and parameters;
2. square loss against scikit-learn and faiss-cpu, fixed iterations, same initial centers,
   on 20,000 x 512 (k=20) and 2,000,000 x 25 (k=1000);
3. one large case per robust loss: 200,000 x 512, k=50 on CPU (1,000,000 x 512, k=100 on CUDA);
4. each robust loss against the tutorial's algorithm on a small problem: the first 400 of
   scikit-learn's 8 x 8 digits (400 x 64, 0-16), k=10 (whole fit, median of 15), where fixed
   costs per call dominate; the reference runs twice, with NumPy-summed objectives and as
   the tutorial wrote it (a Python loop over the points per objective);
5. reclustering a large collection: all six losses with default settings (auto parameter,
   4 restarts; the sampled path) on 200,000 x 512, k=50 L2-normalised VGG-like rows, wall
   clock in total; and quality, sampled against exact (`exact=True`), on 50,000 x 512,
   k=20 (objective ratio, ARI) and on Fashion-MNIST's first 20,000 training images
   (pixels, k=10: NMI against the true labels; needs `dataset-fashion-mnist`);
6. the same six default fits on 1,000,000 x 512, k=100 (about 10 minutes on 2 cores).

Parts 1 and 4 time our fit from the reference's start with its parameter, and also our
default call (auto parameter, k-means++, 4 restarts: `whole_fit_seconds`), which the
reference is not charged for.

Every measurement runs in its own process (data read from a .npy file the run makes once),
so its peak memory is its own: peak_rss_above_baseline_mb is the growth of the process's
resident memory past what it held with the libraries imported and the data loaded.

    python benchmarks/bench_cluster.py [--quick] [--device auto] [--parts 1,2,3,4,5,6]
writes outputs/bench/cluster.json (a run of some parts keeps the others' figures there).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import BENCH_DIR, blobs, vgg_like, write_result  # noqa: E402

from pipeline import losses as L  # noqa: E402

# the losses with a parameter and an iterative update, as registered (the tutorial's four)
ROBUST = tuple(name for name in L.PARAM_NAME if not L.get_loss(name).exact_update)


def memory_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process from /proc, in MiB (0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if field == "VmHWM" else 0.0


def data_for(case: dict) -> np.ndarray:
    if case["data"] == "vgg":
        return vgg_like(case["n"], case["d"], case["k"], seed=case["seed"], dtype=np.float32)
    if case["data"] == "vgg_l2":  # as the cluster stage sees features: unit rows, 4 latent groups per cluster
        X = vgg_like(case["n"], case["d"], 4 * case["k"], seed=case["seed"], dtype=np.float32)
        return X / np.linalg.norm(X, axis=1, keepdims=True)
    if case["data"] == "digits":  # the "real data scaled 0-16": scikit-learn's bundled 8 x 8 digits
        from sklearn.datasets import load_digits

        return load_digits().data[: case["n"]].astype(np.float32)
    if case["data"] == "fashion":
        X = fashion_images(case["n"])[0].reshape(case["n"], -1).astype(np.float32)
        return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return blobs(case["n"], case["d"], case["k"], seed=case["seed"])


def fashion_images(n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The first n training images of Debian's dataset-fashion-mnist and their labels (None without it)."""
    from benchmarks.bench_patches import fashion_mnist
    from pipeline import idx

    source = fashion_mnist()
    if source is None:
        return None
    images = idx.read_images(source)
    return images[:n], idx.read_labels(idx.labels_beside(source), len(images))[:n]


def initial_centers(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    return X[np.random.default_rng(seed + 1).choice(len(X), k, replace=False)].copy()


# ----------------------------------------------------------------------------- workers

def run_ours(X, C0, case):
    import torch

    from pipeline.kmeans import GeneralizedKMeans

    torch.set_num_threads(case.get("threads") or torch.get_num_threads())
    times, cpu = [], []
    for _ in range(case.get("repeats", 1)):  # short fits are timed several times: the median counts
        model = GeneralizedKMeans(case["k"], case["loss"], param=case.get("param", "auto"), init=C0,
                                  max_iter=case["iters"], tol=case.get("tol", 1e-6), device=case["device"])
        if case["device"] == "cuda":
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        model.fit(X)
        if case["device"] == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    # cpu_seconds: this process's CPU time (all its threads), less sensitive to other load than wall time
    result = {"seconds": float(np.median(times)), "cpu_seconds": float(np.median(cpu)), "repeats": len(times),
              "objective": model.objective_,
              "iterations": model.n_iter_, "params": model.params_, "device": str(model.device_)}
    if case.get("whole_fit"):  # what a user's call costs: auto parameter, k-means++, n_init restarts
        whole, whole_cpu = [], []
        for _ in range(case.get("repeats", 1)):
            start, start_cpu = time.perf_counter(), time.process_time()
            default = GeneralizedKMeans(case["k"], case["loss"], device=case["device"]).fit(X)
            whole.append(time.perf_counter() - start)
            whole_cpu.append(time.process_time() - start_cpu)
        result["whole_fit_seconds"] = float(np.median(whole))
        result["whole_fit_cpu_seconds"] = float(np.median(whole_cpu))
        result["whole_fit_objective"] = default.objective_
    if case.get("target") is not None:  # when our fit first reaches the reference's objective
        reached = []
        for _ in range(case.get("repeats", 1)):
            start, first = time.perf_counter(), []

            def on_iteration(iteration: int, objective: float) -> None:
                if not first and objective <= case["target"] * (1 + 1e-5):  # equal to within 1e-5
                    first.append(time.perf_counter() - start)

            GeneralizedKMeans(case["k"], case["loss"], param=case.get("param", "auto"), init=C0,
                              max_iter=case["iters"], tol=case.get("tol", 1e-6), device=case["device"],
                              on_iteration=on_iteration).fit(X)
            reached.append(first[0] if first else float("nan"))
        result["seconds_to_reference_objective"] = float(np.median(reached))
    return result


def run_sklearn(X, C0, case):
    from sklearn.cluster import KMeans

    start = time.perf_counter()
    model = KMeans(case["k"], init=C0, n_init=1, max_iter=case["iters"], tol=0, algorithm="lloyd").fit(X)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "objective": float(model.inertia_), "iterations": int(model.n_iter_)}


def run_faiss(X, C0, case):
    import faiss

    km = faiss.Kmeans(X.shape[1], case["k"], niter=case["iters"], seed=1, verbose=False,
                      max_points_per_centroid=len(X))  # use every point, as the others do
    start = time.perf_counter()
    km.train(X, init_centroids=C0)
    seconds = time.perf_counter() - start
    # faiss reports the objective of the last assignment; recompute it with the final centers
    index = faiss.IndexFlatL2(X.shape[1])
    index.add(km.centroids)
    dist, _ = index.search(X, 1)
    return {"seconds": seconds, "objective": float(dist.astype(np.float64).sum()), "iterations": case["iters"]}


def run_tutorial(X, C0, case):
    from benchmarks import tutorial_reference as T

    counter = T.Counter()
    params = L.PARAM_NAME
    start, start_cpu = time.perf_counter(), time.process_time()
    # "as_written": the tutorial's own per-point Python loop for each objective; else NumPy sums it
    vectorized = not case.get("as_written", False)
    _, _, objective = T.generalized_clustering(X.astype(np.float64), C0, case["loss"],
                                               {params[case["loss"]]: case["param"]}, vectorized=vectorized,
                                               counter=counter)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - start_cpu
    if not vectorized:
        return {"seconds": seconds, "cpu_seconds": cpu_seconds, "objective": objective,
                "objective_evaluations": counter.evaluations, "points_evaluated": counter.points}
    # The tutorial sums each objective with a Python loop over the cluster's points; price one
    # such per-point call here and replace the vectorized objective time with it.
    loss_func = T.get_loss_func(case["loss"], {params[case["loss"]]: case["param"]})
    sample = X[:200].astype(np.float64)
    t0 = time.perf_counter()
    for x in sample:
        loss_func(x, C0[0])
    per_point = (time.perf_counter() - t0) / len(sample)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "objective": objective,
            "objective_evaluations": counter.evaluations,
            "points_evaluated": counter.points, "vectorized_objective_seconds": counter.seconds,
            "tutorial_loop_estimated_seconds": seconds - counter.seconds + counter.points * per_point}


def run_default(X, C0, case):
    """A user's call: GeneralizedKMeans(k, loss) with every default (exact as the case says);
    the labels go to case["labels_path"] for the quality comparison."""
    from pipeline.kmeans import GeneralizedKMeans

    start, start_cpu = time.perf_counter(), time.process_time()
    model = GeneralizedKMeans(case["k"], case["loss"], param=case.get("param", "auto"), exact=case.get("exact", False),
                              seed=case.get("fit_seed", 0), device=case["device"]).fit(X)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    if case.get("labels_path"):
        np.save(case["labels_path"], model.labels_, allow_pickle=False)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "objective": model.objective_,
            "algorithm": model.algorithm_, "sample_size": model.sample_size_, "full_steps": model.full_steps_,
            "iterations": model.n_iter_, "params": model.params_, "device": str(model.device_)}


RUNNERS = {"ours": run_ours, "sklearn": run_sklearn, "faiss": run_faiss, "tutorial": run_tutorial,
           "default": run_default}


def worker(case: dict) -> dict:
    import torch  # noqa: F401  (libraries load before the baseline is read)

    if case["runner"] == "faiss":
        import faiss  # noqa: F401
    if case["runner"] == "sklearn":
        import sklearn.cluster  # noqa: F401
    X = np.load(case["path"], allow_pickle=False)
    C0 = initial_centers(X, case["k"], case["seed"])
    if case["runner"] in ("ours", "default"):  # first calls initialise torch's thread pools and kernels
        warm = X[: 4 * case["k"]]  # its own rows as centers: no cluster can stay empty
        run_ours(warm, warm[: case["k"]].copy(), {**case, "iters": 1, "repeats": 1})
    baseline = memory_mb("VmRSS")
    result = RUNNERS[case["runner"]](X, C0, case)
    result["data_mb"] = round(X.nbytes / 2**20, 1)
    result["peak_rss_mb"] = round(memory_mb("VmHWM"), 1)
    result["peak_rss_above_baseline_mb"] = round(memory_mb("VmHWM") - baseline, 1)
    return result


DATA_DIR = ROOT / "outputs" / "bench" / "data"


def measure(case: dict) -> dict:
    """Run one case in a fresh process; its data is made once and read from a .npy file."""
    spec = {key: case[key] for key in ("data", "n", "d", "k", "seed")}
    path = DATA_DIR / ("_".join(f"{key}{value}" for key, value in spec.items()) + ".npy")
    if not path.is_file():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        np.save(path, data_for(case), allow_pickle=False)
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps({**case, "path": str(path)})],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- parts

def robust_vs_tutorial(device: str, quick: bool) -> list[dict]:
    """Part 1: same data, same initial centers, the parameter our `auto` picks given to both."""
    return _against_tutorial({"data": "vgg", "n": 400 if quick else 2000, "d": 512, "k": 5, "seed": 0,
                              "device": device}, repeats=7)


def small_vs_tutorial(device: str, quick: bool) -> list[dict]:
    """Part 4: a small problem (400 x 64, k=10), where per-call overheads, not arithmetic,
    decide the time (the goal: every robust loss at least 100x the tutorial's algorithm)."""
    return _against_tutorial({"data": "digits", "n": 400, "d": 64, "k": 10, "seed": 0, "device": device},
                             repeats=15, as_written=True)


def _against_tutorial(base: dict, repeats: int, as_written: bool = False) -> list[dict]:
    """Our fits against the reference with NumPy-summed objectives; with `as_written`
    also against the tutorial's algorithm as it is written (each objective a Python loop
    over the points: what the issue timed, affordable only on small problems)."""
    import torch

    from pipeline.kmeans import GeneralizedKMeans

    X = data_for(base)
    C0 = initial_centers(X, base["k"], 0)
    square = GeneralizedKMeans(base["k"], "square", init=C0).fit(X)
    Xt = torch.from_numpy(X)
    rows = []
    for loss in ROBUST:
        param = L.auto_param(Xt, torch.from_numpy(square.cluster_centers_), torch.from_numpy(square.labels_), loss)
        case = {**base, "loss": loss, "param": param}
        ref = measure({**case, "runner": "tutorial", "iters": 3})
        written = measure({**case, "runner": "tutorial", "iters": 3, "as_written": True}) if as_written else None
        ours = measure({**case, "runner": "ours", "iters": 100, "repeats": repeats, "target": ref.get("objective"),
                        "whole_fit": True})
        row = {"loss": loss, "param": param, "ours": ours, "tutorial_reference": ref}
        if written is not None:
            row["tutorial_as_written"] = written
        if "error" not in ours and "error" not in ref:
            row["speedup_vs_reference"] = round(ref["seconds"] / ours["seconds"], 1)
            row["speedup_vs_tutorial_loop_estimate"] = round(ref["tutorial_loop_estimated_seconds"] / ours["seconds"], 1)
            row["objective_ratio_ours_to_reference"] = ours["objective"] / ref["objective"]
            # the same quality: our fit's time until its objective first comes within 1e-5 of the reference's
            row["speedup_to_the_reference_objective"] = round(ref["seconds"] / ours["seconds_to_reference_objective"], 1)
            # our default call (auto parameter, k-means++, 4 restarts) against the reference given both
            row["speedup_whole_default_fit"] = round(ref["seconds"] / ours["whole_fit_seconds"], 1)
            # the same ratios in CPU time (less sensitive to other processes on a shared machine)
            row["cpu_speedup_vs_reference"] = round(ref["cpu_seconds"] / ours["cpu_seconds"], 1)
            row["cpu_speedup_whole_default_fit"] = round(ref["cpu_seconds"] / ours["whole_fit_cpu_seconds"], 1)
            row["whole_default_fit_objective_ratio"] = ours["whole_fit_objective"] / ref["objective"]
        if written is not None and "error" not in ours and "error" not in written:
            # the same algorithm and result (its objective equals the NumPy-summed run's), timed as written
            row["as_written_objective_ratio_to_reference"] = written["objective"] / ref.get("objective", float("nan"))
            row["speedup_vs_tutorial_as_written"] = round(written["seconds"] / ours["seconds"], 1)
            row["speedup_whole_default_fit_vs_tutorial_as_written"] = round(written["seconds"] /
                                                                            ours["whole_fit_seconds"], 1)
            row["cpu_speedup_whole_default_fit_vs_tutorial_as_written"] = round(
                written["cpu_seconds"] / ours["whole_fit_cpu_seconds"], 1)
            print(f"  {loss}: the tutorial as written {written['seconds']:.1f} s -> same start "
                  f"{row['speedup_vs_tutorial_as_written']}x, whole default fit "
                  f"{row['speedup_whole_default_fit_vs_tutorial_as_written']}x "
                  f"(CPU time {row['cpu_speedup_whole_default_fit_vs_tutorial_as_written']}x)", flush=True)
        print(f"  {loss}: ours {ours.get('seconds', float('nan')):.3f} s, reference "
              f"{ref.get('seconds', float('nan')):.1f} s -> {row.get('speedup_vs_reference')}x "
              f"(tutorial loop est. {row.get('speedup_vs_tutorial_loop_estimate')}x; "
              f"{row.get('speedup_to_the_reference_objective')}x to reach its objective; whole default fit "
              f"{row.get('speedup_whole_default_fit')}x; CPU time {row.get('cpu_speedup_vs_reference')}x and "
              f"{row.get('cpu_speedup_whole_default_fit')}x), objective ratio "
              f"{row.get('objective_ratio_ours_to_reference')}", flush=True)
        rows.append(row)
    return rows


def square_vs_libraries(device: str, quick: bool) -> list[dict]:
    """Part 2: fixed iterations from the same initial centers; tol=0 everywhere."""
    cases = [{"data": "vgg", "n": 20_000, "d": 512, "k": 20, "iters": 20},
             {"data": "blobs", "n": 200_000 if quick else 2_000_000, "d": 25, "k": 1000, "iters": 5 if quick else 10}]
    rows = []
    for spec in cases:
        case = {**spec, "seed": 0, "loss": "square", "device": device, "tol": 0.0}
        row = {"case": f"{spec['n']} x {spec['d']}, k={spec['k']}, {spec['iters']} iterations"}
        for runner in ("ours", "sklearn", "faiss"):
            result = measure({**case, "runner": runner})
            if "seconds" in result:
                result["seconds_per_iteration"] = result["seconds"] / max(1, result["iterations"])
            row[runner] = result
            print(f"  {row['case']} {runner}: {result}", flush=True)
        if "seconds" in row["ours"] and "seconds" in row["faiss"]:
            row["per_iteration_ours_over_faiss"] = row["ours"]["seconds_per_iteration"] / row["faiss"]["seconds_per_iteration"]
            row["inertia_ours_over_faiss"] = row["ours"]["objective"] / row["faiss"]["objective"]
        rows.append(row)
    return rows


def large_robust(device: str, quick: bool) -> list[dict]:
    """Part 3: time per iteration and peak memory at scale (parameter fixed: auto's cost is separate)."""
    on_gpu = device == "cuda"
    n, k = (1_000_000, 100) if on_gpu else (20_000 if quick else 200_000, 50)
    rows = []
    for loss in ROBUST:
        case = {"data": "vgg", "n": n, "d": 512, "k": k, "seed": 0, "loss": loss, "device": device,
                "iters": 3, "tol": 0.0, "param": {"huber": 0.5, "pseudo_huber": 0.5, "correntropy": 15.0,
                                                   "epsilon_insensitive": 10.0}[loss], "runner": "ours"}
        result = measure(case)
        if "seconds" in result:
            result["seconds_per_iteration"] = result["seconds"] / max(1, result["iterations"])
            result["cpu_seconds_per_iteration"] = result["cpu_seconds"] / max(1, result["iterations"])
        rows.append({"loss": loss, "case": f"{n} x 512, k={k}", **result})
        print(f"  {loss} {n} x 512 k={k}: {result}", flush=True)
    return rows


ALL_LOSSES = tuple(L.LOSS_NAMES)


def six_default_fits(device: str, n: int, k: int) -> dict:
    """Parts 5 and 6: every loss's default fit, each in its own process, and their total."""
    rows = []
    for loss in ALL_LOSSES:
        result = measure({"data": "vgg_l2", "n": n, "d": 512, "k": k, "seed": 0, "loss": loss, "device": device,
                          "runner": "default"})
        rows.append({"loss": loss, **result})
        print(f"  {n} x 512, k={k}, {loss}: {result}", flush=True)
    total = sum(row.get("seconds", float("nan")) for row in rows)
    print(f"  all six: {total:.1f} s", flush=True)
    return {"case": f"{n} x 512 (L2-normalised VGG-like), k={k}, default settings", "total_seconds": total,
            "losses": rows}


def sampled_against_exact(device: str, case: dict, truth: np.ndarray | None = None) -> list[dict]:
    """Part 5's quality check: the default (sampled) fit against exact=True on the same data.
    The sampled fit gets the parameter the exact fit's auto chose: objectives under different
    parameters do not compare (epsilon's falls by about n for every 1 its epsilon grows)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rows = []
    for loss in ALL_LOSSES:
        labels = {}
        row = {"loss": loss}
        # exact_seed1: how far two exact fits differ by their seed alone (the ARI to read the other against)
        for name in ("exact", "sampled", "exact_seed1"):
            path = DATA_DIR / f"labels_{name}.npy"
            # the others run at the parameter the first exact fit's auto chose (seed 1's auto would differ)
            param = next(iter(row["exact"].get("params", {}).values()), "auto") if name != "exact" else "auto"
            row[name] = measure({**case, "loss": loss, "device": device, "runner": "default", "param": param,
                                 "exact": name != "sampled", "labels_path": str(path),
                                 "fit_seed": 1 if name == "exact_seed1" else 0})
            labels[name] = np.load(path) if "error" not in row[name] else None
        if all(value is not None for value in labels.values()):
            row["objective_sampled_over_exact"] = row["sampled"]["objective"] / row["exact"]["objective"]
            row["ari_sampled_vs_exact"] = float(adjusted_rand_score(labels["exact"], labels["sampled"]))
            row["ari_exact_seed0_vs_seed1"] = float(adjusted_rand_score(labels["exact"], labels["exact_seed1"]))
            row["speedup"] = row["exact"]["seconds"] / row["sampled"]["seconds"]
            if truth is not None:
                row["nmi_exact"] = float(normalized_mutual_info_score(truth, labels["exact"]))
                row["nmi_sampled"] = float(normalized_mutual_info_score(truth, labels["sampled"]))
                row["nmi_exact_seed1"] = float(normalized_mutual_info_score(truth, labels["exact_seed1"]))
        print(f"  {case['data']} {case['n']} x {case['d']}, k={case['k']}, {loss}: objective ratio "
              f"{row.get('objective_sampled_over_exact')}, ARI {row.get('ari_sampled_vs_exact')} (exact seed 0 "
              f"vs 1: {row.get('ari_exact_seed0_vs_seed1')}), NMI exact "
              f"{row.get('nmi_exact')} sampled {row.get('nmi_sampled')}, {row.get('speedup')}x", flush=True)
        rows.append(row)
    return rows


def recluster(device: str, quick: bool) -> dict:
    n, quality_n = (40_000, 30_000) if quick else (200_000, 50_000)
    result = {"timing": six_default_fits(device, n, 50),
              "quality_vgg_like": sampled_against_exact(device, {"data": "vgg_l2", "n": quality_n, "d": 512,
                                                                 "k": 20, "seed": 0})}
    fashion = fashion_images(20_000)
    if fashion is not None:
        result["quality_fashion_mnist"] = sampled_against_exact(
            device, {"data": "fashion", "n": 20_000, "d": 784, "k": 10, "seed": 0}, truth=fashion[1])
    else:
        print("  Fashion-MNIST not installed (apt-get install dataset-fashion-mnist): its quality check skipped")
    return result


def main() -> None:
    global ROBUST
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--parts", default="1,2,3,4,5,6")
    parser.add_argument("--losses", default=",".join(ROBUST),
                        help="robust losses to measure in parts 1, 3 and 4 (comma-separated; default: all). "
                             "A partial run replaces only these losses' rows")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    from pipeline.kmeans import resolve_device

    device = str(resolve_device(args.device))
    chosen = tuple(name.strip() for name in args.losses.split(",") if name.strip())
    unknown = [name for name in chosen if name not in ROBUST]
    if unknown or not chosen:
        parser.error(f"--losses: choose among {', '.join(ROBUST)}; got {args.losses!r}")
    ROBUST = chosen
    parts = {p.strip() for p in args.parts.split(",")}
    result = {"device": device, "quick": args.quick}
    started = time.perf_counter()
    if "1" in parts:
        print("1. robust losses vs the tutorial's algorithm", flush=True)
        result["robust_vs_tutorial"] = robust_vs_tutorial(device, args.quick)
    if "2" in parts:
        print("2. square loss vs scikit-learn and faiss", flush=True)
        result["square_vs_libraries"] = square_vs_libraries(device, args.quick)
    if "3" in parts:
        print("3. robust losses at scale", flush=True)
        result["large_robust"] = large_robust(device, args.quick)
    if "4" in parts:
        print("4. robust losses on a small problem (400 x 64 digits, k=10) vs the tutorial's algorithm", flush=True)
        result["small_vs_tutorial"] = small_vs_tutorial(device, args.quick)
    if "5" in parts:
        print("5. reclustering a large collection: six losses, default settings; sampled vs exact", flush=True)
        result["recluster"] = recluster(device, args.quick)
    if "6" in parts:
        print("6. six losses, default settings, 1,000,000 x 512, k=100", flush=True)
        result["recluster_million"] = six_default_fits(device, 100_000 if args.quick else 1_000_000, 100)
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    name = "cluster" if not args.quick else "cluster_quick"
    previous = BENCH_DIR / f"{name}.json"
    if parts != {"1", "2", "3", "4", "5", "6"} and previous.is_file():  # a partial rerun keeps the other parts' figures
        kept = json.loads(previous.read_text())
        for part in ("robust_vs_tutorial", "large_robust", "small_vs_tutorial"):  # and the other losses' rows
            if part in result and part in kept:
                new = {row["loss"]: row for row in result[part]}
                result[part] = [new.pop(row["loss"], row) for row in kept[part]] + list(new.values())
        result = {**{k: v for k, v in kept.items() if k not in ("machine", "total_seconds")}, **result,
                  "parts_rerun": sorted(parts)}
    shutil.rmtree(DATA_DIR, ignore_errors=True)
    print(f"-> {write_result(name, result)}")


if __name__ == "__main__":
    main()
