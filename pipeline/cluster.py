"""Stage 2: cached features -> generalized k-means under each configured loss.

Reads only what `extract` wrote (features.npy, manifest.csv, cache_key.json) and writes,
per loss, clusters/<loss>/{assignments.csv, centers.npy, summary.json}. A loss whose
inputs (features, configuration, and the engine's code for that loss, see
`kmeans.engine_fingerprint`) are unchanged since its summary was written is not recomputed.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from . import atomic
from .cache import key_id, load_embedded
from .config import ClusterConfig
from .errors import UserError
from .kmeans import GeneralizedKMeans, engine_fingerprint
from .layout import Layout
from .losses import PARAM_NAME, ParamScaleError, pointwise_loss
from .tables import write_csv

ASSIGNMENT_COLUMNS = ["path", "cluster", "loss_to_center"]
PHASES = {"sample": "on a sample", "full": "all points"}


@dataclass
class LossResult:
    loss: str
    k: int
    params: dict
    objective: float
    iterations: int
    converged: bool
    seconds: float
    sizes: list[int]
    algorithm: str = "exact"  # or "sampled" (kmeans.uses_sample)
    reused: bool = False


def normalize_features(features: np.ndarray, mode: str) -> np.ndarray:
    """l2: every row scaled to unit length (cosine geometry); none: raw VGG16 features."""
    if mode == "none":
        return features.astype(np.float32, copy=True)
    norms = np.linalg.norm(features.astype(np.float64), axis=1, keepdims=True)
    return (features / np.maximum(norms, 1e-12)).astype(np.float32)


def _fingerprint(features_fingerprint: str, cfg: ClusterConfig, loss: str) -> str:
    digest = hashlib.sha256(features_fingerprint.encode())
    settings = {"loss": loss, "k": cfg.k, "normalize": cfg.normalize, "seed": cfg.seed, "n_init": cfg.n_init,
                "max_iter": cfg.max_iter, "param": cfg.params.get(loss), "exact": cfg.exact,
                "engine": engine_fingerprint(loss)}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def read_summary(out_dir: Path, loss: str) -> dict | None:
    try:
        summary = json.loads(Layout(out_dir).summary(loss).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def check_current(out_dir: Path, loss: str, features_fingerprint: str) -> dict:
    """The summary of `loss`'s clustering, if it belongs to the features cached now.

    Every stage after `cluster` calls this, so a clustering of other (older) features or
    one a crash left half-written is refused, never drawn or exported as current.
    """
    summary = read_summary(out_dir, loss)
    again = f"run `photoclust cluster --out {out_dir}` (or `make cluster`) first"
    if summary is None or not Layout(out_dir).assignments(loss).is_file():
        raise UserError(f"the {loss} clustering in {out_dir} is incomplete (an interrupted run?); {again}")
    if summary.get("features_fingerprint") != features_fingerprint:
        raise UserError(f"the {loss} clustering in {out_dir} was made from other features than the cached ones "
                        f"(the photos changed since); {again}")
    return summary


def cluster_run(out_dir: Path, cfg: ClusterConfig, *, log: Callable[[str], None] = print,
                force: bool = False) -> list[LossResult]:
    """Cluster the cached features of `out_dir` under every loss in `cfg.losses`."""
    out_dir = Path(out_dir)
    layout = Layout(out_dir)
    embedded = load_embedded(out_dir)
    paths = embedded.paths
    features = normalize_features(embedded.features, cfg.normalize)
    base = cfg
    results = []
    for loss in cfg.losses:
        cfg = replace(base, k=_resolve_k(out_dir, base, loss, embedded.fingerprint, log))
        if cfg.k > len(paths):
            raise UserError(f"{base.origin('k')}: k={cfg.k} is larger than the {len(paths)} embedded images "
                            f"in {out_dir}; choose a smaller k")
        fingerprint = _fingerprint(embedded.fingerprint, cfg, loss)
        previous = read_summary(out_dir, loss)
        if not force and previous is not None and previous.get("fingerprint") == fingerprint \
                and layout.assignments(loss).is_file() and layout.centers(loss).is_file():
            result = LossResult(**{f: previous[f] for f in LossResult.__dataclass_fields__ if f != "reused"},
                                reused=True)
            log(f"{loss:>19}: up to date (k={result.k}, objective {result.objective:.6g}); nothing to do")
        else:
            result = _fit_one(features, paths, cfg, loss, layout, fingerprint, embedded.fingerprint,
                              key_id(embedded.key))
            how = "" if result.algorithm == "exact" else " (sampled: restarts on a sample, then steps on all)"
            log(f"{loss:>19}: k={result.k} objective {result.objective:.6g} in {result.iterations} iterations"
                f"{how}, {result.seconds:.2f} s{_describe_params(result.params)}; sizes {result.sizes}")
        results.append(result)
    return results


def _resolve_k(out_dir: Path, cfg: ClusterConfig, loss: str, features_fingerprint: str,
               log: Callable[[str], None]) -> int:
    """k as configured, or for "auto" the k a sweep suggested (running the sweep if none did)."""
    if cfg.k != "auto":
        return cfg.k
    from .sweep import DEFAULT_K_RANGE, sweep_run, suggested_k

    k = suggested_k(out_dir, loss, features_fingerprint)
    if k is None:
        log(f"{loss:>19}: k=auto and no sweep yet: sweeping k over {DEFAULT_K_RANGE}")
        k = sweep_run(out_dir, cfg, DEFAULT_K_RANGE, [loss], log=log)[0].suggested
    return k


def _drop_previous(layout: Layout, loss: str) -> None:
    """A refit makes this loss's files stale: the summary goes first (without it the folder
    counts as incomplete, so a crash mid-refit is never taken for a finished clustering),
    then the later stages' files, so no page or sheet shows the old clusters."""
    for path in (layout.summary(loss), layout.representatives(loss), layout.outliers(loss),
                 layout.representatives_sheet(loss), layout.outliers_page(loss)):
        if path.exists():
            atomic.remove(path)
    for folder in (layout.cluster_sheets(loss), layout.cluster_pages(loss)):
        if folder.exists():
            atomic.remove_tree(folder)


def _describe_params(params: dict) -> str:
    return "".join(f", {name}={value:.4g}" for name, value in params.items())


def _fit_one(features: np.ndarray, paths: list[str], cfg: ClusterConfig, loss: str, layout: Layout,
             fingerprint: str, features_fingerprint: str, features_key: str) -> LossResult:
    param = cfg.params.get(loss, "auto") if loss in PARAM_NAME else None
    started = time.perf_counter()
    try:
        # One bar per phase of the fit (the whole data; or the sample, then all points), counting
        # iterations against the phase's worst case; on a terminal only, gone when the loss is done.
        with tqdm(total=cfg.n_init * cfg.max_iter, desc=loss, unit="it", leave=False, disable=None,
                  dynamic_ncols=True) as bar:
            def phase(name: str, iterations: int) -> None:
                bar.reset(total=iterations)
                bar.set_description_str(loss if name == "fit" else f"{loss} ({PHASES[name]})")

            def progress(iteration: int, objective: float) -> None:
                bar.update(1)
                bar.set_postfix_str(f"objective {objective:.6g}", refresh=False)

            model = GeneralizedKMeans(n_clusters=cfg.k, loss=loss, param=param, n_init=cfg.n_init,
                                      max_iter=cfg.max_iter, seed=cfg.seed, device=cfg.device, exact=cfg.exact,
                                      on_iteration=progress, on_phase=phase).fit(features)
    except ParamScaleError as exc:  # the engine knows the data, the config knows where the value was set
        raise UserError(f"{cfg.origin(f'params.{loss}')}: {exc}") from None
    except ValueError as exc:  # the engine's validation messages are written for users
        raise UserError(f"cluster ({loss}): {exc}") from None
    seconds = time.perf_counter() - started

    labels, centers = model.labels_, model.cluster_centers_
    used = next(iter(model.params_.values()), None)
    per_point = pointwise_loss(torch.from_numpy(features), torch.from_numpy(centers[labels]), loss, used)
    per_point = per_point.double().cpu().numpy()
    sizes = np.bincount(labels, minlength=cfg.k).tolist()
    result = LossResult(loss=loss, k=cfg.k, params={k: float(v) for k, v in model.params_.items()},
                        objective=float(model.objective_), iterations=int(model.n_iter_),
                        converged=bool(model.converged_), seconds=round(seconds, 4), sizes=sizes,
                        algorithm=model.algorithm_)

    _drop_previous(layout, loss)
    write_csv(layout.assignments(loss), ASSIGNMENT_COLUMNS,
              [(p, int(c), float(f"{v:.9g}")) for p, c, v in zip(paths, labels, per_point)])
    atomic.save_npy(layout.centers(loss), centers.astype(np.float32))
    summary = {**asdict(result), "seed": cfg.seed, "n_init": cfg.n_init, "max_iter": cfg.max_iter,
               "normalize": cfg.normalize, "n_images": len(paths), "param_setting": param,
               "features_cache_key": features_key, "features_fingerprint": features_fingerprint,
               "fingerprint": fingerprint,
               "device": str(model.device_) if hasattr(model, "device_") else cfg.device,
               # which algorithm ran: "exact" (every point, every iteration) or "sampled"
               # (restarts on sample_size rows, then full_steps steps on all of them)
               "exact_setting": cfg.exact, "sample_size": model.sample_size_,
               "full_steps": model.full_steps_}
    summary.pop("reused")
    # Written last: its fingerprint vouches for the two files above.
    atomic.write_text(layout.summary(loss), json.dumps(summary, indent=2) + "\n")
    return result
