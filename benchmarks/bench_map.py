"""The map's projection: quality and time of pca, umap and tsne (pipeline/projection.py).

On the sample's own features (data/sample, 124 photos in 4 folders; `make features` first)
and on synthetic 20,000 x 512 VGG-like features (10 groups), both L2-normalised as the map
draws them, each method available here is timed and scored:

  seconds             wall time of project(), warm; first_call_seconds: the first call in the
                      process (imports; umap's includes numba's compilation)
  trustworthiness     Venna & Kaski, k = 10: are map neighbours true neighbours (1 = all)
  knn_preservation    share of each photo's 10 nearest neighbours kept among its 10 on the map
  knn_label_accuracy  leave-one-out 5-NN vote on the map against the folder (group) labels
  silhouette          of the folder (group) labels on the map, -1 to 1

The synthetic scores are of a random 2,000-point sample of the 20,000-point map (the scores
are O(n^2)). The same two label scores in the full 512-d space are the `reference` row.

    python benchmarks/bench_map.py [--out outputs/sample] [--methods pca,umap,tsne] [--n 20000]
writes outputs/bench/map.json (`make bench-map`; umap and tsne need `pip install -e '.[map]'`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import vgg_like, write_result  # noqa: E402
from pipeline.cache import load_embedded  # noqa: E402
from pipeline.cluster import normalize_features  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline import projection  # noqa: E402


def scores(X: np.ndarray, Y: np.ndarray, labels: np.ndarray) -> dict:
    return {"trustworthiness": round(projection.trustworthiness(X, Y, 10), 4),
            "knn_preservation": round(projection.knn_preservation(X, Y, 10), 4),
            "knn_label_accuracy": round(projection.knn_label_accuracy(Y, labels, 5), 4),
            "silhouette": round(projection.silhouette(Y, labels), 4)}


def reference(X: np.ndarray, labels: np.ndarray) -> dict:
    return {"knn_label_accuracy": round(projection.knn_label_accuracy(X, labels, 5), 4),
            "silhouette": round(projection.silhouette(X, labels), 4)}


def measure(X: np.ndarray, labels: np.ndarray, methods: list[str], sample: int | None, called: set[str],
            seed: int = 0) -> dict:
    rows = {}
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(X), size=sample, replace=False)) if sample and sample < len(X) else slice(None)
    for method in methods:
        timing = {}
        if method not in called:  # the first call in this process: imports, numba's compilation
            start = time.perf_counter()
            projection.project(X, method, seed=seed)
            timing["first_call_seconds"] = round(time.perf_counter() - start, 3)
            called.add(method)
        start = time.perf_counter()
        Y = projection.project(X, method, seed=seed)
        timing["seconds"] = round(time.perf_counter() - start, 3)
        rows[method] = {**timing, **scores(X[keep], Y[keep], labels[keep])}
        print(f"  {method:>5}: " + "  ".join(f"{k} {v}" for k, v in rows[method].items()), flush=True)
    rows["reference"] = reference(X[keep], labels[keep])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/sample"), help="output folder with the sample's features")
    parser.add_argument("--methods", default=",".join(projection.METHODS), help="comma-separated methods to measure")
    parser.add_argument("--n", type=int, default=20000, help="rows of the synthetic data (timing)")
    parser.add_argument("--score-sample", type=int, default=2000, help="points of the synthetic map that are scored")
    args = parser.parse_args()
    wanted = [m for m in args.methods.split(",") if m]
    methods = [m for m in wanted if projection.available(m)]
    skipped = sorted(set(wanted) - set(methods))
    if skipped:
        print(f"not installed, skipped: {', '.join(skipped)} (pip install -e '.[map]')")
    result: dict = {"methods": methods, "skipped": skipped}
    called: set[str] = set()
    try:
        embedded = load_embedded(args.out)
    except UserError as exc:
        print(f"bench-map: {exc}", file=sys.stderr)
        return 2
    X = normalize_features(embedded.features, "l2")
    labels = np.array([p.split("/", 1)[0] if "/" in p else "" for p in embedded.paths])
    print(f"sample: {len(X)} photos, {len(set(labels))} folders")
    result["sample"] = {"n": len(X), "folders": len(set(labels)), **measure(X, labels, methods, None, called)}

    synthetic, groups = vgg_like(args.n, 512, 10, seed=0, dtype=np.float32, return_labels=True)
    synthetic = normalize_features(synthetic, "l2")
    print(f"synthetic: {args.n} x 512, 10 groups (scores on {args.score_sample} points)")
    result["synthetic"] = {"n": args.n, "scored": args.score_sample,
                           **measure(synthetic, groups, methods, args.score_sample, called)}
    path = write_result("map", result)
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
