"""`sweep`: how many clusters? Fit every k of a range and suggest one.

For each k: the objective (the MSE-vs-K curve of the tutorials) and the mean silhouette
under the loss's own dissimilarity, loss(x_i, x_j), computed on a fixed random subsample
of at most `SILHOUETTE_SAMPLE` points (the pairwise matrix is made once for all k).

The suggestion (documented in the README):
  1. knee: scale k and the objective to [0, 1]; the knee is the k whose point lies
     farthest below the straight line from the first to the last point of the curve
     (the "Kneedle" rule: where adding clusters stops paying off);
  2. cross-check: among the k up to the knee + 2, take the one with the highest
     silhouette (past the knee more clusters buy little; before it, the best-separated
     clustering wins). On curves without a sharp elbow the knee moves with the range
     swept; the silhouette step keeps the suggestion stable (the sample: knee 5 on 2:12,
     11 on 2:40, suggestion 3 on both).

k-means++ seeding is greedy and sequential, so the first k centers of one seeding for
the largest k are a k-means++ seeding for k: the sweep seeds once per restart and every
k reuses the prefix.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from . import losses as L
from . import atomic
from .cache import load_embedded
from .layout import Layout
from .tables import write_frame
from .cluster import normalize_features
from .config import ClusterConfig
from .errors import UserError
from .kmeans import GeneralizedKMeans, auto_param_at, kmeans_plus_plus, resolve_device

SILHOUETTE_SAMPLE = 2000
DEFAULT_K_RANGE = "2:40"
KNEE_WINDOW = 2


@dataclass
class SweepResult:
    loss: str
    table: pd.DataFrame  # k, objective, silhouette, iterations, seconds
    knee: int
    suggested: int
    param: float | None
    silhouette_sample: int


def parse_k_range(text: str, n_points: int) -> list[int]:
    """"2:40" (inclusive) or "2:40:2"; capped at n_points - 1 (silhouette needs two clusters
    and a point left over)."""
    try:
        parts = [int(p) for p in str(text).split(":")]
    except ValueError:
        raise UserError(f"--k-range {text!r}: write a range like 2:40 (first:last) or 2:40:2 (with a step)") from None
    if len(parts) not in (2, 3) or parts[0] < 2 or parts[1] < parts[0] or (len(parts) == 3 and parts[2] < 1):
        raise UserError(f"--k-range {text!r}: write first:last[:step] with 2 <= first <= last, e.g. 2:40")
    ks = [k for k in range(parts[0], parts[1] + 1, parts[2] if len(parts) == 3 else 1) if k < n_points]
    if not ks:
        raise UserError(f"--k-range {text}: every k is at least the number of embedded images ({n_points})")
    return ks


def silhouettes(dissimilarity: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette from a square dissimilarity matrix (points in a singleton cluster score 0)."""
    k = int(labels.max()) + 1
    onehot = np.zeros((len(labels), k))
    onehot[np.arange(len(labels)), labels] = 1
    sizes = onehot.sum(0)
    sums = dissimilarity @ onehot  # (n, k): total dissimilarity to each cluster
    own = sizes[labels] - 1
    a = np.where(own > 0, sums[np.arange(len(labels)), labels] / np.maximum(own, 1), 0.0)
    other = np.where(onehot.astype(bool) | (sizes == 0)[None, :], np.inf, sums / np.maximum(sizes, 1)[None, :])
    b = other.min(1)
    s = np.where((own > 0) & np.isfinite(b), (b - a) / np.maximum(np.maximum(a, b), 1e-300), 0.0)
    return float(s.mean())


def knee(ks: list[int], objectives: list[float]) -> int:
    """The k farthest below the chord of the normalised objective curve (Kneedle)."""
    if len(ks) < 3:
        return ks[0]
    x = (np.array(ks, float) - ks[0]) / (ks[-1] - ks[0])
    y = np.array(objectives, float)
    span = y.max() - y.min()
    y = (y - y.min()) / span if span > 0 else np.zeros_like(y)
    chord = y[0] + (y[-1] - y[0]) * x
    return ks[int(np.argmax(chord - y))]


def suggest(ks: list[int], objectives: list[float], silhouette: list[float]) -> tuple[int, int]:
    """(knee, suggested k): the best silhouette among k <= knee + KNEE_WINDOW (ties: smaller k)."""
    at = knee(ks, objectives)
    allowed = [i for i, k in enumerate(ks) if k <= at + KNEE_WINDOW and np.isfinite(silhouette[i])]
    best = max(allowed, key=lambda i: (silhouette[i], -ks[i])) if allowed else ks.index(at)
    return at, ks[best]


def sweep_features(X: np.ndarray, ks: list[int], loss: str, cfg: ClusterConfig, *,
                   log: Callable[[str], None] = print) -> SweepResult:
    """Fit every k in `ks` under `loss` on the (normalised) features X."""
    device = resolve_device(cfg.device)
    Xt = torch.from_numpy(X).to(device)
    setting = cfg.params.get(loss, "auto") if loss in L.PARAM_NAME else None
    param = None
    if loss in L.PARAM_NAME:
        # One parameter for the whole sweep, so the curve compares like with like: the
        # configured number, or auto's value at the configured k.
        reference_k = min(max(cfg.k, 2), len(X) - 1) if cfg.k != "auto" else ks[len(ks) // 2]
        if setting == "auto":
            param = auto_param_at(Xt, reference_k, loss, cfg.seed)
        else:  # checked here too: the silhouette's cost matrix comes before any fit
            try:
                param = L.check_param_scale(loss, setting, L.data_scale(Xt, loss))
            except L.ParamScaleError as exc:
                raise UserError(f"{cfg.origin(f'params.{loss}')}: {exc}") from None
    rng = np.random.default_rng([cfg.seed, 7])
    sample = np.sort(rng.choice(len(X), min(len(X), SILHOUETTE_SAMPLE), replace=False))
    S = Xt[torch.from_numpy(sample).to(device)]
    dissimilarity = L.cost_matrix(S, S, loss, param).double().cpu().numpy()
    seedings = [kmeans_plus_plus(Xt, max(ks), np.random.default_rng([cfg.seed, r])) for r in range(cfg.n_init)]

    records = []
    for k in ks:
        started = time.perf_counter()
        best = None
        for seeding in seedings:
            model = GeneralizedKMeans(k, loss, param=param, init=Xt[seeding[:k]].cpu().numpy(),
                                      max_iter=cfg.max_iter, seed=cfg.seed, device=device).fit(X)
            if best is None or model.objective_ < best.objective_:
                best = model
        labels = best.labels_[sample]
        score = silhouettes(dissimilarity, labels) if len(set(labels)) > 1 else float("nan")
        records.append({"k": k, "objective": best.objective_, "silhouette": score, "iterations": best.n_iter_,
                        "seconds": round(time.perf_counter() - started, 4)})
        log(f"{loss:>19}: k={k:<3} objective {best.objective_:.6g}  silhouette {score:.4f}")
    table = pd.DataFrame(records)
    at, suggested = suggest(ks, table["objective"].tolist(), table["silhouette"].tolist())
    return SweepResult(loss, table, at, suggested, param, len(sample))


def plot(result: SweepResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = result.table
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(t["k"], t["objective"], "o-", color="tab:blue", ms=3, label="objective")
    ax.set_xlabel("k (number of clusters)")
    ax.set_ylabel(f"objective ({result.loss})", color="tab:blue")
    right = ax.twinx()
    right.plot(t["k"], t["silhouette"], "s--", color="tab:orange", ms=3, label="silhouette")
    right.set_ylabel(f"silhouette ({result.silhouette_sample} points)", color="tab:orange")
    ax.axvline(result.suggested, color="tab:red", lw=1.5)
    ax.annotate(f"suggested k = {result.suggested}", (result.suggested, t["objective"].max()),
                xytext=(6, -4), textcoords="offset points", color="tab:red", va="top")
    if result.knee != result.suggested:
        ax.axvline(result.knee, color="grey", lw=1, ls=":")
    ax.set_title(f"{result.loss}: objective and silhouette by k (knee {result.knee})", fontsize=10)
    fig.tight_layout()
    atomic.write_with(path, lambda fh: fig.savefig(fh, format="png"))
    plt.close(fig)


def sweep_run(out_dir: Path, cfg: ClusterConfig, k_range: str, losses: list[str] | None = None, *,
              log: Callable[[str], None] = print) -> list[SweepResult]:
    """Sweep k for each loss (default: square) on the cached features; writes sweep/<loss>.*"""
    out_dir = Path(out_dir)
    layout = Layout(out_dir)
    embedded = load_embedded(out_dir)
    paths = embedded.paths
    X = normalize_features(embedded.features, cfg.normalize)
    ks = parse_k_range(k_range, len(paths))
    results = []
    for loss in losses or ["square"]:
        L.check_loss(loss)
        result = sweep_features(X, ks, loss, cfg, log=log)
        write_frame(layout.sweep_file(loss, ".csv"), result.table)
        plot(result, layout.sweep_file(loss, ".png"))
        meta = {"loss": loss, "k_range": k_range, "knee": result.knee, "suggested_k": result.suggested,
                "rule": "knee of the normalised objective curve (farthest below the chord), then the highest "
                        f"silhouette among k <= knee + {KNEE_WINDOW}",
                "param": result.param, "normalize": cfg.normalize, "seed": cfg.seed, "n_init": cfg.n_init,
                "silhouette_sample": result.silhouette_sample, "n_images": len(paths),
                "features_fingerprint": embedded.fingerprint}
        atomic.write_text(layout.sweep_file(loss, ".json"), json.dumps(meta, indent=2) + "\n")
        log(f"{loss:>19}: knee at k={result.knee}, suggested k={result.suggested} -> {layout.sweep_file(loss, '.png')}")
        results.append(result)
    return results


def suggested_k(out_dir: Path, loss: str, features_fingerprint: str) -> int | None:
    """The k a sweep of the current features suggested for `loss` (else square's), if any."""
    for name in (loss, "square"):
        try:
            meta = json.loads(Layout(out_dir).sweep_file(name, ".json").read_text(encoding="utf-8"))
            if meta.get("features_fingerprint") == features_fingerprint:  # a sweep of other photos says nothing
                return int(meta["suggested_k"])
        except (OSError, KeyError, ValueError, TypeError, AttributeError):
            continue
    return None
