"""The six clustering losses of the tutorial, each defined once, with the math below.

Everything here works on torch tensors and runs unchanged on CPU or CUDA. Computation
happens in the dtype of `X` (float32 in the engine, float64 in tests); every sum over
points is accumulated in float64 (the mean's per-chunk partial sums, at most a few
thousand rows each, in the data's dtype).

Notation: `r = x - mu` (a residual vector), `d = ||r||_2`.

| loss                  | loss(x, mu)                                   | parameter |
|-----------------------|-----------------------------------------------|-----------|
| square                | sum_j r_j^2                                   |           |
| absolute              | sum_j |r_j|                                   |           |
| huber                 | sum_j h(r_j), h = t^2/2 or delta(|t|-delta/2) | delta     |
| pseudo_huber          | sum_j delta^2 (sqrt(1 + (r_j/delta)^2) - 1)   | delta     |
| correntropy           | 1 - exp(-d^2 / (2 sigma^2))                   | sigma     |
| epsilon_insensitive   | max(0, d - epsilon)                           | epsilon   |

Public functions: `pointwise_loss`, `cost_matrix`, `assign`, `loss_to_centers`,
`cluster_objectives`, `update_centers`, `polish_centers`, `auto_param`, `validate_param`,
`data_scale`, `check_param_scale`.
No function loops in Python over points or point-center pairs: work is done in row
chunks (and center chunks) whose size is bounded by `max_chunk_bytes`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from .errors import UserError

LOSS_NAMES = ("square", "absolute", "huber", "pseudo_huber", "correntropy", "epsilon_insensitive")
PARAM_NAME = {"huber": "delta", "pseudo_huber": "delta", "correntropy": "sigma", "epsilon_insensitive": "epsilon"}

# Losses that are a sum over coordinates (cost matrix needs an elementwise pass over d)
# and losses that are a monotone function of the Euclidean distance (argmin via GEMM).
COORDINATE_LOSSES = ("square", "absolute", "huber", "pseudo_huber")
DISTANCE_LOSSES = ("correntropy", "epsilon_insensitive")

DEFAULT_MAX_CHUNK_BYTES = 256 * 2**20
# On CPU, blocks that stay in the L2/L3 cache beat big ones by 2-3x (and big fresh
# buffers cost page faults); on a GPU, big blocks amortise kernel launches.
_CPU_BLOCK_BYTES = 2 * 2**20
_CPU_GEMM_BLOCK_BYTES = 8 * 2**20

# auto_param constants, quoted by the docstring of auto_param.
HUBER_EFFICIENCY = 1.345  # Huber's constant for 95% efficiency under Gaussian noise
MAD_TO_SIGMA = 1.4826  # MAD * 1.4826 estimates the standard deviation of Gaussian noise
EPSILON_QUANTILE = 0.1
AUTO_MAX_ROWS = 16384  # 16384 x 512 float64 residuals: 64 MB

# A parameter more than this many times smaller or larger than the data's scale turns
# every loss into a degenerate one (all points saturated, or float32 over/underflow):
# no clustering needs it, so it is refused rather than fitted.
PARAM_SCALE_RANGE = 1e4

# Inner-step defaults of update_centers per loss (the engine's outer loop keeps going, so
# a few majorize-minimize steps per outer iteration suffice).
DEFAULT_INNER_STEPS = {"huber": 3, "pseudo_huber": 3, "correntropy": 5, "epsilon_insensitive": 3}


class LossInputError(UserError, ValueError):
    """Bad loss name, parameter or input array. A ValueError for library callers and a
    UserError so the CLI prints it as one line."""


class ParamScaleError(LossInputError):
    """A loss parameter far outside the data's scale (callers may say where it was set)."""


# ----------------------------------------------------------------------------- validation

def check_loss(loss: str) -> str:
    """Return `loss` if it is one of the six names, else raise naming all six."""
    if loss not in LOSS_NAMES:
        raise LossInputError(f"unknown loss {loss!r}; choose one of: {', '.join(LOSS_NAMES)}")
    return loss


def validate_param(loss: str, value: float | None) -> float | None:
    """Check the numeric parameter of `loss` and return it as a float.

    square/absolute take no parameter: `value` must be None (returns None). The other
    four need a finite number > 0; the error names the parameter (delta, sigma, epsilon).
    """
    check_loss(loss)
    if loss not in PARAM_NAME:
        if value is not None:
            raise LossInputError(f"loss {loss!r} takes no parameter; got {value!r}")
        return None
    name = PARAM_NAME[loss]
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise LossInputError(f"{name} (parameter of {loss}) must be a positive number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise LossInputError(f"{name} (parameter of {loss}) must be a positive finite number, got {value!r}")
    return number


# ----------------------------------------------------------------------------- the losses

def coordinate_loss(r: torch.Tensor, loss: str, param: float | None) -> torch.Tensor:
    """Per-coordinate loss of residuals `r` (any shape) for the four coordinate-sum losses."""
    if loss == "square":
        return r * r
    if loss == "absolute":
        return r.abs()
    if loss == "huber":
        a = r.abs()
        q = a.clamp(max=param)
        return q * (a - 0.5 * q)  # |r|<=delta: r^2/2; else delta(|r| - delta/2)
    if loss == "pseudo_huber":
        # delta^2 (sqrt(1+u^2) - 1) rewritten as r^2 / (1 + sqrt(1+u^2)): no cancellation.
        return r * r / (1.0 + torch.sqrt(1.0 + (r / param) ** 2))
    raise ValueError(f"{loss!r} is not a coordinate-sum loss")


def distance_loss(d2: torch.Tensor, loss: str, param: float | None) -> torch.Tensor:
    """Loss as a function of the squared Euclidean distance `d2` (any shape)."""
    if loss == "square":
        return d2
    if loss == "correntropy":
        return -torch.expm1(-d2 / (2.0 * param * param))
    if loss == "epsilon_insensitive":
        return (torch.sqrt(d2) - param).clamp(min=0.0)
    raise ValueError(f"{loss!r} is not a function of the distance alone")


def pointwise_loss(X: torch.Tensor, C: torch.Tensor, loss: str, param: float | None) -> torch.Tensor:
    """loss(X[i], C[i]) for matched rows: shape (n,), dtype of X."""
    check_loss(loss)
    r = X - C
    if loss in DISTANCE_LOSSES:
        return distance_loss((r * r).sum(-1), loss, param)
    return coordinate_loss(r, loss, param).sum(-1)


# ----------------------------------------------------------------------------- chunking

def _is_cpu(device: torch.device) -> bool:
    return device.type == "cpu"


def _row_slices(n: int, rows: int) -> Iterator[slice]:
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


def _rows_for(width: int, device: torch.device, max_chunk_bytes: int, itemsize: int = 4,
              temporaries: int = 1) -> int:
    """Rows per chunk so that `temporaries` buffers of rows x width stay within budget."""
    budget = max_chunk_bytes if not _is_cpu(device) else min(max_chunk_bytes, _CPU_BLOCK_BYTES)
    return max(1, budget // max(1, width * itemsize * temporaries))


def _pass_rows(X: torch.Tensor, max_chunk_bytes: int) -> int:
    """Rows per chunk for O(n*d) passes (several n-chunk x d temporaries, float64 ones)."""
    budget = max_chunk_bytes if not _is_cpu(X.device) else min(max_chunk_bytes, 8 * _CPU_BLOCK_BYTES)
    return max(1, budget // max(1, X.shape[1] * 8 * 4))


def _sq_norms(X: torch.Tensor) -> torch.Tensor:
    return (X * X).sum(1)


def row_sq_norms(X: torch.Tensor, max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES) -> torch.Tensor:
    """|x_i|^2 for every row, in row chunks (X * X whole would copy the data once more)."""
    out = torch.empty(X.shape[0], dtype=X.dtype, device=X.device)
    for s in _row_slices(X.shape[0], _pass_rows(X, max_chunk_bytes)):
        out[s] = _sq_norms(X[s])
    return out


def _sq_distances(Xc: torch.Tensor, C: torch.Tensor, c_sq: torch.Tensor, out: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """|x|^2 - 2 x.c + |c|^2 by one GEMM (clamped at 0 against rounding)."""
    d2 = torch.addmm(c_sq, Xc, C.T, alpha=-2.0, out=out)
    d2 += _sq_norms(Xc)[:, None]
    return d2.clamp_(min=0.0)


def _coordinate_cost_block(Xc: torch.Tensor, C: torch.Tensor, loss: str, param: float | None) -> torch.Tensor:
    """(rows, k) costs for the coordinate-sum losses, in center blocks bounded in memory."""
    if loss == "square":
        return _sq_distances(Xc, C, _sq_norms(C))
    if loss == "absolute":
        return torch.cdist(Xc, C, p=1.0)
    out = torch.empty(Xc.shape[0], C.shape[0], dtype=Xc.dtype, device=Xc.device)
    budget = (_CPU_BLOCK_BYTES if _is_cpu(Xc.device) else DEFAULT_MAX_CHUNK_BYTES) // Xc.element_size()
    temporaries = 2 if loss == "pseudo_huber" else 1  # residuals and the denominator
    per_block = max(1, min(C.shape[0], budget // max(1, Xc.shape[0] * Xc.shape[1] * temporaries)))
    for cs in _row_slices(C.shape[0], per_block):
        out[:, cs] = _fast_coordinate_costs(Xc, C[cs], loss, param)
    return out


def _fast_coordinate_costs(Xc: torch.Tensor, Cb: torch.Tensor, loss: str, param: float) -> torch.Tensor:
    """(rows, centers) sums of huber or pseudo-huber over coordinates, with as few passes
    over the rows x centers x d block as torch allows (this is the engine's hot loop):
    huber through torch's fused kernel; pseudo-huber in the cancellation-free form
    r^2 / (1 + sqrt(1 + u^2)) of `coordinate_loss` (delta^2 (sqrt(1 + u^2) - 1) rounds
    to 0 in float32 once u^2 < 1e-7, i.e. delta above ~3000 residuals: every center
    then costs 0 and all points fall into the first cluster)."""
    shape = (Xc.shape[0], Cb.shape[0], Xc.shape[1])
    if loss == "huber":
        return torch.nn.functional.huber_loss(Xc[:, None, :].expand(shape), Cb[None, :, :].expand(shape),
                                              reduction="none", delta=param).sum(-1)
    r2 = (Xc[:, None, :] - Cb[None, :, :]).square_()
    denominator = torch.mul(r2, 1.0 / (param * param)).add_(1.0).sqrt_().add_(1.0)
    return r2.div_(denominator).sum(-1)


def _cost_rows(X: torch.Tensor, k: int, loss: str, max_chunk_bytes: int) -> int:
    """Rows per chunk of a cost-matrix pass: the (rows, k) block plus the loss's temporaries."""
    if loss in COORDINATE_LOSSES and loss not in ("square", "absolute"):
        # the broadcast residual block is rows x centers-in-block x d; keep at least 1 center
        return _rows_for(X.shape[1] * min(k, 8), X.device, max_chunk_bytes, X.element_size())
    if _is_cpu(X.device):  # GEMM blocks: measured best at ~8 MB (2 MB: +20% time, 32 MB: +20%)
        return max(1, min(max_chunk_bytes, _CPU_GEMM_BLOCK_BYTES) // max(1, k * X.element_size() * 2))
    return _rows_for(k, X.device, max_chunk_bytes * 4, X.element_size(), temporaries=2)


def cost_matrix(X: torch.Tensor, C: torch.Tensor, loss: str, param: float | None,
                max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES) -> torch.Tensor:
    """(n, k) matrix of loss(X[i], C[j]). Memory beyond the output is bounded by chunking."""
    check_loss(loss)
    out = torch.empty(X.shape[0], C.shape[0], dtype=X.dtype, device=X.device)
    for s in _row_slices(X.shape[0], _cost_rows(X, C.shape[0], loss, max_chunk_bytes)):
        out[s] = _block_costs(X[s], C, loss, param)
    return out


def _block_costs(Xc: torch.Tensor, C: torch.Tensor, loss: str, param: float | None) -> torch.Tensor:
    if loss in DISTANCE_LOSSES:
        return distance_loss(_sq_distances(Xc, C, _sq_norms(C)), loss, param)
    return _coordinate_cost_block(Xc, C, loss, param)


def assign(X: torch.Tensor, C: torch.Tensor, loss: str, param: float | None,
           max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES, with_cost: bool = False,
           x_sq: torch.Tensor | None = None):
    """Index of the cheapest center for every row of X (the n x k matrix is never built whole).

    Correntropy and epsilon-insensitive are non-decreasing in the Euclidean distance, so
    their argmin is the nearest center by distance (this also breaks epsilon's ties at 0
    by distance, as LOSSES.md asks); both share the square loss's GEMM. With
    `with_cost=True` also returns each row's cost to its center, from the same pass (for
    the distance losses through the GEMM expansion, so with its rounding: use
    `loss_to_centers` where exact values matter). `x_sq`, the rows' squared norms, saves
    recomputing them when the caller assigns the same X many times.
    """
    check_loss(loss)
    rows = _cost_rows(X, C.shape[0], loss, max_chunk_bytes)
    labels = torch.empty(X.shape[0], dtype=torch.int64, device=X.device)
    cost = torch.empty(X.shape[0], dtype=X.dtype, device=X.device) if with_cost else None
    by_distance = loss in DISTANCE_LOSSES or loss == "square"
    c_sq = _sq_norms(C) if by_distance else None
    for s in _row_slices(X.shape[0], rows):
        if by_distance:
            # |x|^2 is the same for every center of a row: argmin needs only |c|^2 - 2 x.c
            block = torch.addmm(c_sq, X[s], C.T, alpha=-2.0)
        else:
            block = _coordinate_cost_block(X[s], C, loss, param)
        best, labels[s] = block.min(1)
        if with_cost:
            norms = x_sq[s] if x_sq is not None else _sq_norms(X[s])
            cost[s] = distance_loss((best + norms).clamp_(min=0.0), loss, param) if by_distance else best
    return (labels, cost) if with_cost else labels


def loss_to_centers(X: torch.Tensor, C: torch.Tensor, labels: torch.Tensor, loss: str, param: float | None,
                    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES) -> torch.Tensor:
    """loss(X[i], C[labels[i]]) for every row, computed directly (no GEMM cancellation)."""
    check_loss(loss)
    out = torch.empty(X.shape[0], dtype=X.dtype, device=X.device)
    for s in _row_slices(X.shape[0], _pass_rows(X, max_chunk_bytes)):
        out[s] = pointwise_loss(X[s], C[labels[s]], loss, param)
    return out


def cluster_objectives(X: torch.Tensor, C: torch.Tensor, labels: torch.Tensor, loss: str,
                       param: float | None) -> torch.Tensor:
    """(k,) float64: the summed loss of each cluster's members to its center."""
    per_point = loss_to_centers(X, C, labels, loss, param).double()
    return torch.zeros(C.shape[0], dtype=torch.float64, device=X.device).index_add_(0, labels, per_point)


# ----------------------------------------------------------------------------- center updates

def _accumulator_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def cluster_sums(X: torch.Tensor, labels: torch.Tensor, k: int, max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster sums of rows (k, d) and counts (k,): each row chunk is summed in the
    data's dtype, the chunk totals in float64 (pairwise-style: no n x d float64 copy)."""
    acc = _accumulator_dtype(X.device)
    sums = torch.zeros(k, X.shape[1], dtype=acc, device=X.device)
    partial = torch.empty(k, X.shape[1], dtype=X.dtype, device=X.device)
    for s in _row_slices(X.shape[0], _pass_rows(X, max_chunk_bytes)):
        sums += partial.zero_().index_add_(0, labels[s], X[s])
    counts = torch.bincount(labels, minlength=k)
    return sums, counts


def _weighted_means(X: torch.Tensor, labels: torch.Tensor, C: torch.Tensor, weight_fn, max_chunk_bytes: int
                    ) -> torch.Tensor:
    """One majorize-minimize step: mu_c = sum_i w_i x_i / sum_i w_i over the members of c.

    `weight_fn(Xc, residual, labels_c)` gives weights per row (n_c, 1) or per coordinate
    (n_c, d). Clusters whose weights sum to zero keep their center.
    """
    acc = _accumulator_dtype(X.device)
    k, d = C.shape
    num = torch.zeros(k, d, dtype=acc, device=X.device)
    den = torch.zeros(k, d, dtype=acc, device=X.device)
    for s in _row_slices(X.shape[0], _pass_rows(X, max_chunk_bytes)):
        Xc, lc = X[s], labels[s]
        w = weight_fn(Xc, Xc - C[lc], lc).to(acc)
        num.index_add_(0, lc, w * Xc.to(acc))
        den.index_add_(0, lc, w.expand(-1, d) if w.shape[1] == 1 else w)
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), C.to(acc)).to(C.dtype)


def _sortable_bits(values: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 in [0, 2^32) with the same order (IEEE-754 bit trick, exact)."""
    bits = values.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return torch.where(bits >= 0x80000000, 0xFFFFFFFF - bits, bits + 0x80000000)


def _segment_medians(X: torch.Tensor, labels: torch.Tensor, C: torch.Tensor, max_chunk_bytes: int
                     ) -> torch.Tensor:
    """Coordinate-wise median of each cluster's members, all clusters at once, exactly.

    Per block of columns, the values are sorted so that each cluster's values sit together
    in ascending order; the median of cluster c is then at fixed offsets from the start
    of its segment (mean of the two middle values, as NumPy). float32 does this with one
    integer sort of (label, order-preserving bits of the value); other dtypes sort the
    values, then stable-sort their labels.
    """
    n, d = X.shape
    k = C.shape[0]
    counts = torch.bincount(labels, minlength=k)
    starts = torch.cumsum(counts, 0) - counts
    nonempty = counts > 0
    lo = (starts + (counts - 1).clamp(min=0) // 2)[nonempty]
    hi = (starts + counts // 2)[nonempty]
    out = C.clone()
    cols = max(1, max_chunk_bytes // max(1, n * 32))  # a few n x cols int64 temporaries
    for cs in _row_slices(d, cols):
        block = X[:, cs].T.contiguous()  # (cols, n): sorting along contiguous rows is ~5x faster
        if block.dtype == torch.float32:
            keys = (labels[None, :] << 32) | _sortable_bits(block)
            grouped = block.gather(1, keys.argsort(dim=1)).T
        else:
            values, order = block.sort(dim=1)
            grouped = values.gather(1, labels[order].argsort(dim=1, stable=True)).T
        out[nonempty, cs] = ((grouped[lo].double() + grouped[hi].double()) / 2).to(X.dtype)
    return out


def _huber_weights(delta: float):
    def weights(Xc, r, lc):  # min(1, delta/|r|) per coordinate
        return (delta / r.abs().clamp(min=torch.finfo(r.dtype).tiny)).clamp(max=1.0)
    return weights


def _pseudo_huber_weights(delta: float):
    def weights(Xc, r, lc):  # rho'(t)/t = 1/sqrt(1 + (t/delta)^2) per coordinate
        return torch.rsqrt(1.0 + (r / delta) ** 2)
    return weights


def _correntropy_weights(sigma: float, floor: torch.Tensor):
    def weights(Xc, r, lc):
        # exp(-d^2/2s^2), divided per cluster by its largest weight (floor = smallest d^2)
        # so that far clusters do not underflow to all-zero weights; a common factor per
        # cluster leaves the weighted mean unchanged.
        d2 = (r * r).sum(1, keepdim=True)
        return torch.exp(-(d2 - floor[lc, None]) / (2.0 * sigma * sigma))
    return weights


def _min_sq_distance_per_cluster(X: torch.Tensor, C: torch.Tensor, labels: torch.Tensor,
                                 max_chunk_bytes: int) -> torch.Tensor:
    d2 = loss_to_centers(X, C, labels, "square", None, max_chunk_bytes)
    floor = torch.full((C.shape[0],), float("inf"), dtype=d2.dtype, device=X.device)
    floor.scatter_reduce_(0, labels, d2, reduce="amin")
    return torch.where(torch.isfinite(floor), floor, torch.zeros_like(floor))


def _epsilon_step(X, labels, C, epsilon: float, max_chunk_bytes: int, halvings: int = 5) -> torch.Tensor:
    """One guarded Weiszfeld step for max(0, d - epsilon).

    Weiszfeld on the points outside the tube (w = 1/d) majorizes their distances, but a
    point inside the tube can leave it, so the step may raise the objective: each cluster
    then halves its step until its objective does not rise (or keeps its center).
    """
    def weights(Xc, r, lc):
        d = torch.sqrt((r * r).sum(1, keepdim=True))
        return torch.where(d > epsilon, 1.0 / d.clamp(min=torch.finfo(d.dtype).tiny), torch.zeros_like(d))

    before = cluster_objectives(X, C, labels, "epsilon_insensitive", epsilon)
    target = _weighted_means(X, labels, C, weights, max_chunk_bytes)
    result = C.clone()
    pending = torch.ones(C.shape[0], dtype=torch.bool, device=C.device)
    step = 1.0
    for _ in range(halvings + 1):
        trial = C + step * (target - C)
        after = cluster_objectives(X, trial, labels, "epsilon_insensitive", epsilon)
        accept = pending & (after <= before)
        result[accept] = trial[accept]
        pending &= ~accept
        if not pending.any():
            break
        step *= 0.5
    return result


def update_centers(X: torch.Tensor, labels: torch.Tensor, C: torch.Tensor, loss: str, param: float | None,
                   steps: int | None = None, max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES) -> torch.Tensor:
    """New centers for all clusters at once, given the assignment. Never raises the objective.

    square: mean; absolute: coordinate-wise median (both exact). huber, pseudo_huber:
    IRLS per coordinate; correntropy: half-quadratic fixed point; epsilon_insensitive:
    guarded Weiszfeld. The last four run `steps` majorize-minimize steps (default
    DEFAULT_INNER_STEPS[loss]). Empty clusters keep their center (the engine re-seeds them).
    """
    check_loss(loss)
    k = C.shape[0]
    if loss == "square":
        sums, counts = cluster_sums(X, labels, k, max_chunk_bytes)
        nonempty = counts > 0
        out = C.clone()
        out[nonempty] = (sums[nonempty] / counts[nonempty, None].to(sums.dtype)).to(C.dtype)
        return out
    if loss == "absolute":
        return _segment_medians(X, labels, C, max_chunk_bytes)
    steps = DEFAULT_INNER_STEPS[loss] if steps is None else steps
    for _ in range(steps):
        if loss == "huber":
            C = _weighted_means(X, labels, C, _huber_weights(param), max_chunk_bytes)
        elif loss == "pseudo_huber":
            C = _weighted_means(X, labels, C, _pseudo_huber_weights(param), max_chunk_bytes)
        elif loss == "correntropy":
            floor = _min_sq_distance_per_cluster(X, C, labels, max_chunk_bytes)
            C = _weighted_means(X, labels, C, _correntropy_weights(param, floor), max_chunk_bytes)
        else:
            C = _epsilon_step(X, labels, C, param, max_chunk_bytes)
    return C


def _smoothed_epsilon(X: torch.Tensor, labels: torch.Tensor, C: torch.Tensor, epsilon: float, smooth: float,
                      max_chunk_bytes: int) -> tuple[float, torch.Tensor]:
    """Value and gradient (w.r.t. every center) of sum_i smooth * softplus((d_i - epsilon) / smooth),
    a smooth convex upper bound of max(0, d - epsilon) within n * smooth * log 2 of it."""
    acc = _accumulator_dtype(X.device)
    value = torch.zeros((), dtype=acc, device=X.device)
    grad = torch.zeros(C.shape, dtype=acc, device=X.device)
    for s in _row_slices(X.shape[0], _pass_rows(X, max_chunk_bytes)):
        lc = labels[s]
        r = X[s].to(acc) - C[lc].to(acc)
        d = torch.sqrt((r * r).sum(1)).clamp(min=torch.finfo(acc).tiny)
        t = (d - epsilon) / smooth
        value += smooth * torch.nn.functional.softplus(t).sum()
        grad.index_add_(0, lc, -(torch.sigmoid(t) / d)[:, None] * r)
    return float(value), grad


def polish_centers(X: torch.Tensor, labels: torch.Tensor, C: torch.Tensor, epsilon: float,
                   stages: tuple[int, ...] = (3, 6), max_iter: int = 20,
                   max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES) -> torch.Tensor:
    """Finish epsilon-insensitive centers where the guarded Weiszfeld step stalls.

    Weiszfeld stops at the edge of the tube (points at d = epsilon are kinks that also
    stop gradient methods). Here scipy's L-BFGS minimises a softplus-smoothed objective
    with the smoothing shrunk per stage (epsilon * 10^-stage), all
    centers at once since the objective separates by cluster. A cluster keeps its old
    center unless the polished one is strictly better, so the objective never rises.
    """
    from scipy.optimize import minimize

    before = cluster_objectives(X, C, labels, "epsilon_insensitive", epsilon)
    flat = C.double().cpu().numpy().ravel()
    for stage in stages:
        smooth = epsilon * 10.0 ** -stage

        def value_and_grad(values: np.ndarray, smooth=smooth) -> tuple[float, np.ndarray]:
            centers = torch.from_numpy(values.reshape(C.shape)).to(X.device)
            value, grad = _smoothed_epsilon(X, labels, centers, epsilon, smooth, max_chunk_bytes)
            return value, grad.double().cpu().numpy().ravel()

        flat = minimize(value_and_grad, flat, jac=True, method="L-BFGS-B",
                        options={"maxiter": max_iter, "ftol": 1e-13, "gtol": 1e-10}).x
    polished = torch.from_numpy(flat.reshape(C.shape)).to(device=C.device, dtype=C.dtype)
    after = cluster_objectives(X, polished, labels, "epsilon_insensitive", epsilon)
    better = (after < before) & torch.isfinite(after)
    return torch.where(better[:, None], polished, C)


# ----------------------------------------------------------------------------- parameter scale

def data_scale(X: torch.Tensor, loss: str, max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES) -> float:
    """The features' spread in the units of `loss`'s parameter: the RMS distance of the
    rows to their mean, per coordinate for huber and pseudo_huber (their delta applies to
    each coordinate). 1.0 when every row is the same: any parameter then gives the same
    clusters, and the range around 1 still keeps the arithmetic finite."""
    acc = _accumulator_dtype(X.device)
    n, d = X.shape
    rows = _pass_rows(X, max_chunk_bytes)
    mean = sum(X[s].to(acc).sum(0) for s in _row_slices(n, rows)) / n
    spread = sum(float(((X[s].to(acc) - mean) ** 2).sum()) for s in _row_slices(n, rows))
    per = n * d if loss in ("huber", "pseudo_huber") else n
    scale = math.sqrt(spread / per)
    return scale if math.isfinite(scale) and scale > 0 else 1.0


def param_range(scale: float) -> tuple[float, float]:
    """The usable parameter values for data of this scale."""
    return scale / PARAM_SCALE_RANGE, scale * PARAM_SCALE_RANGE


def check_param_scale(loss: str, value: float, scale: float) -> float:
    """`value` if it lies within PARAM_SCALE_RANGE of the data's scale, else a
    ParamScaleError naming the parameter, its value and the usable range."""
    low, high = param_range(scale)
    if low <= value <= high:
        return value
    unit = "RMS spread per coordinate" if loss in ("huber", "pseudo_huber") else "RMS distance to their mean"
    raise ParamScaleError(
        f"{PARAM_NAME[loss]} = {value:g} is outside the usable range {low:.3g} to {high:.3g} for these features "
        f"({1 / PARAM_SCALE_RANGE:g} to {PARAM_SCALE_RANGE:g} times their {unit}, {scale:.3g}); "
        "choose a value in that range, or auto")


def clamp_to_range(value: float, scale: float) -> float:
    low, high = param_range(scale)
    return min(max(value, low), high)


def auto_param(X: torch.Tensor, C: torch.Tensor, labels: torch.Tensor, loss: str) -> float | None:
    """A parameter on the data's own scale, from the residuals of a (square-loss) fit.

    huber, pseudo_huber: delta = 1.345 * 1.4826 * MAD of the residual coordinates (Huber's
      95%-efficiency constant times a robust estimate of the noise standard deviation);
    correntropy: sigma = median distance of a point to its center (so a typical point
      sits where the kernel is neither flat at 0 nor saturated at 1);
    epsilon_insensitive: epsilon = 10% quantile of the distance to the center (the
      tightest tenth of each cluster costs nothing; the rest count by distance).
    At most AUTO_MAX_ROWS evenly spaced rows are used, so the result is deterministic.
    """
    check_loss(loss)
    if loss not in PARAM_NAME:
        return None
    n = X.shape[0]
    rows = torch.linspace(0, n - 1, min(n, AUTO_MAX_ROWS), device=X.device).round().long().unique()
    residual = (X[rows] - C[labels[rows]]).double()
    if loss in ("huber", "pseudo_huber"):
        flat = residual.flatten()
        mad = (flat - flat.median()).abs().median().item()
        if mad <= 0:  # more than half the coordinates sit exactly on their center
            mad = flat.abs().mean().item()
        value = HUBER_EFFICIENCY * MAD_TO_SIGMA * mad
    else:
        dist = residual.norm(dim=1)
        value = (dist.median() if loss == "correntropy" else dist.quantile(EPSILON_QUANTILE)).item()
        if value <= 0:  # many exact duplicates of their center: fall back to the mean distance
            value = dist.mean().item()
    if not math.isfinite(value) or value <= 0:
        value = 1e-6  # every point on its center: any small positive scale gives the same clusters
    return float(value)
