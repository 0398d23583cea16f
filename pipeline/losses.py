"""The clustering losses, each one class in a registry, with its math in its docstring.

Everything here works on torch tensors and runs unchanged on CPU or CUDA. Computation
happens in the dtype of `X` (float32 in the engine, float64 in tests); every sum over
points is accumulated in float64 (the mean's per-chunk partial sums, at most a few
thousand rows each, in the data's dtype).

Notation: `r = x - mu` (a residual vector), `d = ||r||_2`, `w_i` an optional sample weight.

| class              | name                  | loss(x, mu)                                   | parameter |
|--------------------|-----------------------|-----------------------------------------------|-----------|
| Square             | square                | sum_j r_j^2                                   |           |
| Absolute           | absolute              | sum_j |r_j|                                   |           |
| Huber              | huber                 | sum_j h(r_j), h = t^2/2 or delta(|t|-delta/2) | delta     |
| PseudoHuber        | pseudo_huber          | sum_j delta^2 (sqrt(1 + (r_j/delta)^2) - 1)   | delta     |
| Correntropy        | correntropy           | 1 - exp(-d^2 / (2 sigma^2))                   | sigma     |
| EpsilonInsensitive | epsilon_insensitive   | max(0, d - epsilon)                           | epsilon   |

A loss is a subclass of `Loss` registered with `@register` (see `Loss` for what a class
declares and which methods it may override); `get_loss(name)` returns the registered
instance or raises `LossInputError` naming every choice. The module-level names
(`LOSS_NAMES`, `PARAM_NAME`, `check_loss`, `pointwise_loss`, `cost_matrix`, `assign`,
`loss_to_centers`, `cluster_objectives`, `update_centers`, `auto_param`, ...) are thin
views over the registry, so a loss registered later shows up in all of them.
No function loops in Python over points or point-center pairs: work is done in row
chunks (and center chunks) whose size is bounded by `max_chunk_bytes`.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType

import numpy as np
import torch

from .errors import UserError

DEFAULT_MAX_CHUNK_BYTES = 256 * 2**20
# On CPU, blocks that stay in the L2/L3 cache beat big ones by 2-3x (and big fresh
# buffers cost page faults); on a GPU, big blocks amortise kernel launches.
_CPU_BLOCK_BYTES = 2 * 2**20
_CPU_GEMM_BLOCK_BYTES = 8 * 2**20
_POLISH_COPY_BYTES = 64 * 2**20  # largest float64 copy of the rows the epsilon polish keeps

# auto_param constants, quoted by the docstrings of the loss classes.
HUBER_EFFICIENCY = 1.345  # Huber's constant for 95% efficiency under Gaussian noise
MAD_TO_SIGMA = 1.4826  # MAD * 1.4826 estimates the standard deviation of Gaussian noise
EPSILON_QUANTILE = 0.1
AUTO_MAX_ROWS = 16384  # 16384 x 512 float64 residuals: 64 MB

# A parameter more than this many times smaller or larger than the data's scale turns
# every loss into a degenerate one (all points saturated, or float32 over/underflow):
# no clustering needs it, so it is refused rather than fitted.
PARAM_SCALE_RANGE = 1e4


class LossInputError(UserError, ValueError):
    """Bad loss name, parameter or input array. A ValueError for library callers and a
    UserError so the CLI prints it as one line."""


class ParamScaleError(LossInputError):
    """A loss parameter far outside the data's scale (callers may say where it was set)."""


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


def rows_of(table: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """table[labels]: each label's row of a per-cluster table (centers, sums, flags).
    index_select gives the same values as advanced indexing at a fraction of the cost on
    the CPU (40 x 64 centers to 1,600 rows: 18 us against 115; 50 x 512 to 200,000 rows:
    0.20 s against 0.34 s, one thread), and every center update and loss pass does it."""
    return table.index_select(0, labels)


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _tiny(t: torch.Tensor) -> float:
    return torch.finfo(t.dtype).tiny


# ----------------------------------------------------------------------------- shared center updates

# Per-cluster sums of a chunk: up to this many clusters, one GEMM with the (k, rows) one-hot
# (or weight) matrix beats index_add_ (a 1024 x 512 chunk on 2 cores: about 2x faster at
# k = 5 to 32 in float32 and float64, slower from k = 50: the GEMM does k times the work).
_ONE_HOT_MAX_K = 32


def _index_add_wins(values: torch.Tensor, row_weights: torch.Tensor | None) -> bool:
    """On one CPU thread (the engine's small problems) index_add_ beats the one-hot GEMM
    except for weighted float64 rows, whose products cost a float64 copy: unweighted
    2000 x 512 float32, k = 5: 123 us against 333; 400 x 64, k = 10: 9 against 16;
    weighted float64 2000 x 512: 1380 against 900 (one thread, the development machine)."""
    return values.device.type == "cpu" and torch.get_num_threads() == 1 and \
        (row_weights is None or values.dtype == torch.float32)


def _chunk_sums(values: torch.Tensor, labels: torch.Tensor, k: int, row_weights: torch.Tensor | None = None
                ) -> torch.Tensor:
    """(k, m) sums of the rows of `values` (rows, m) by label (each row times `row_weights`
    (rows,) when given), in the values' dtype: the caller adds chunk totals in float64.

    Rows narrower than k (colours: m = 3 or 5) are summed by index_add_ in float64 instead:
    there the (k, rows) one-hot matrix costs more than the rows themselves (a weighted
    update of 22,000 colours, k = 16: 1.1 ms by the GEMM, 0.3 ms so, on one thread), and a
    long chunk of few coordinates is cheap to convert."""
    if values.shape[1] < k:
        values = values.to(_accumulator_dtype(values.device))
        if row_weights is not None:
            values = values * row_weights[:, None].to(values.dtype)
        return torch.zeros(k, values.shape[1], dtype=values.dtype, device=values.device).index_add_(0, labels, values)
    if k <= _ONE_HOT_MAX_K and not _index_add_wins(values, row_weights):
        rows = values.shape[0]
        select = torch.zeros(k, rows, dtype=values.dtype, device=values.device)
        select[labels, torch.arange(rows, device=values.device)] = 1 if row_weights is None else row_weights
        return select @ values
    if row_weights is not None:
        values = values * row_weights[:, None]
    return torch.zeros(k, values.shape[1], dtype=values.dtype, device=values.device).index_add_(0, labels, values)


def cluster_sums(X: torch.Tensor, labels: torch.Tensor, k: int, max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster sums of rows (k, d) and counts (k,): each row chunk is summed in the
    data's dtype, the chunk totals in float64 (pairwise-style: no n x d float64 copy)."""
    sums = torch.zeros(k, X.shape[1], dtype=_accumulator_dtype(X.device), device=X.device)
    for s in _row_slices(X.shape[0], _pass_rows(X, max_chunk_bytes)):
        sums += _chunk_sums(X[s], labels[s], k)
    counts = torch.bincount(labels, minlength=k)
    return sums, counts


def weighted_means(X: torch.Tensor, labels: torch.Tensor, C: torch.Tensor, weight_fn,
                   max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES, sample_weight: torch.Tensor | None = None,
                   row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """One majorize-minimize (IRLS) step: mu_c = sum_i w_i x_i / sum_i w_i over the members of c.

    `weight_fn(Xc, residual, labels_c)` gives weights per row (n_c, 1) or per coordinate
    (n_c, d); or `row_weights` (n,) holds them already (no residual pass). `sample_weight`
    (n,) multiplies them. Clusters whose weights sum to zero keep their center. As
    `cluster_sums`: chunk sums in the data's dtype, their totals in float64.
    """
    acc = _accumulator_dtype(X.device)
    k, d = C.shape
    num = torch.zeros(k, d, dtype=acc, device=X.device)
    den = None  # (k, 1) for weights per row (summed once, not once per coordinate), else (k, d)
    for s in _row_slices(X.shape[0], _pass_rows(X, max_chunk_bytes)):
        Xc, lc = X[s], labels[s]
        w = weight_fn(Xc, Xc - rows_of(C, lc), lc) if row_weights is None else row_weights[s, None]
        w = w.to(X.dtype)
        if sample_weight is not None:
            w = w * sample_weight[s, None].to(X.dtype)
        if w.shape[1] == 1:  # weights per row scale the selection matrix, not the data
            num += _chunk_sums(Xc, lc, k, w[:, 0])
            chunk_den = torch.zeros(k, 1, dtype=acc, device=X.device).index_add_(0, lc, w.to(acc))
        else:
            num += _chunk_sums(w * Xc, lc, k)
            chunk_den = _chunk_sums(w, lc, k)
        den = chunk_den if den is None else den + chunk_den
    den = (den if den is not None else torch.zeros(k, 1, dtype=acc, device=X.device)).expand(k, d)
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), C.to(acc)).to(C.dtype)


def _sortable_bits(values: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 in [0, 2^32) with the same order (IEEE-754 bit trick, exact)."""
    bits = values.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return torch.where(bits >= 0x80000000, 0xFFFFFFFF - bits, bits + 0x80000000)


def _grouped_order(block: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(cols, n) permutation per column: by cluster, then ascending value."""
    if block.dtype == torch.float32:
        return ((labels[None, :] << 32) | _sortable_bits(block)).argsort(dim=1)
    order = block.argsort(dim=1, stable=True)
    return order.gather(1, labels[order].argsort(dim=1, stable=True))


def segment_medians(X: torch.Tensor, labels: torch.Tensor, C: torch.Tensor,
                    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES, sample_weight: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Coordinate-wise (weighted) median of each cluster's members, all clusters at once, exactly.

    Per block of columns, the values are sorted so that each cluster's values sit together
    in ascending order. Unweighted, the median of cluster c is at fixed offsets from the
    start of its segment (mean of the two middle values, as NumPy). float32 does this with
    one integer sort of (label, order-preserving bits of the value); other dtypes sort the
    values, then stable-sort their labels. Weighted, the median is the mean of the first
    value whose cumulative weight reaches W/2 and the first that passes it (W the
    cluster's total weight): with integer weights, exactly NumPy's median of the rows
    repeated. Clusters without members (or weight) keep their center.
    """
    if sample_weight is not None:
        return _weighted_segment_medians(X, labels, C, sample_weight, max_chunk_bytes)
    if _is_cpu(X.device) and X.numel() >= _SELECT_MEDIANS_MIN_ELEMENTS:
        return _selected_medians(X, labels, C)
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


# From this many values on a CPU, medians come from selection per cluster (linear time),
# not one n log n sort of all clusters; the medians are the same, bit for bit.
_SELECT_MEDIANS_MIN_ELEMENTS = 2**20


def _selected_medians(X: torch.Tensor, labels: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """`segment_medians` by quickselect: per cluster, its members' columns made contiguous,
    then the one or two middle values of each column (torch.kthvalue, linear time)."""
    counts = torch.bincount(labels, minlength=C.shape[0]).tolist()
    order = torch.argsort(labels, stable=True)
    out, start = C.clone(), 0
    for cluster, count in enumerate(counts):
        if count:
            block = X[order[start:start + count]].T.contiguous()
            lo = torch.kthvalue(block, (count + 1) // 2, dim=1).values
            hi = lo if count % 2 else torch.kthvalue(block, count // 2 + 1, dim=1).values
            out[cluster] = ((lo.double() + hi.double()) / 2).to(X.dtype)
            start += count
    return out


def _weighted_segment_medians(X, labels, C, sample_weight, max_chunk_bytes):
    n, d = X.shape
    k = C.shape[0]
    counts = torch.bincount(labels, minlength=k)
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    weight = sample_weight.to(torch.float64)
    total = torch.zeros(k, dtype=torch.float64, device=X.device).index_add_(0, labels, weight)
    live = (counts > 0) & (total > 0)
    out = C.clone()
    cols = max(1, max_chunk_bytes // max(1, n * 48))
    for cs in _row_slices(d, cols):
        block = X[:, cs].T.contiguous()
        order = _grouped_order(block, labels)
        values = block.gather(1, order)
        cumulative = weight[order].cumsum(1)  # (cols, n), non-decreasing along each row
        before = torch.where(starts > 0, cumulative[:, (starts - 1).clamp(min=0)], torch.zeros_like(total))
        half = before + (cumulative[:, (ends - 1).clamp(min=0)] - before) / 2
        lo = torch.searchsorted(cumulative, half.contiguous(), right=False)
        hi = torch.searchsorted(cumulative, half.contiguous(), right=True)
        last = (ends - 1).clamp(min=0)[None, :]
        lo, hi = torch.minimum(lo, last), torch.minimum(hi, last)
        median = (values.gather(1, lo).double() + values.gather(1, hi).double()) / 2  # (cols, k)
        out[live, cs] = median.T[live].to(X.dtype)
    return out


def cluster_objectives(X: torch.Tensor, C: torch.Tensor, labels: torch.Tensor, loss: str,
                       param: float | None, sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """(k,) float64: the (weighted) summed loss of each cluster's members to its center."""
    per_point = loss_to_centers(X, C, labels, loss, param).double()
    if sample_weight is not None:
        per_point = per_point * sample_weight.double()
    return torch.zeros(C.shape[0], dtype=torch.float64, device=X.device).index_add_(0, labels, per_point)


def _cluster_min(values: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Smallest value per cluster (0 for a cluster without members)."""
    floor = torch.full((k,), float("inf"), dtype=values.dtype, device=values.device)
    floor.scatter_reduce_(0, labels, values, reduce="amin")
    return torch.where(torch.isfinite(floor), floor, torch.zeros_like(floor))


# ----------------------------------------------------------------------------- the Loss class

class Loss:
    """One clustering loss: what the engine needs to know about it, in one place.

    A subclass sets these class attributes:
      name            the name users type (config, --losses); unique in the registry.
      param_name      the name of its one positive parameter ("delta"), or None.
      by_distance     True when the loss is a non-decreasing function of the Euclidean
                      distance d alone: the cheapest center is then the nearest one, so
                      assignment runs through one GEMM (and `of_sq_distance` is defined).
      exact_update    True when `update` returns the exact minimiser in one step (same
                      labels then mean the same centers: the loop may stop).
      inner_steps     majorize-minimize steps per `update` by default.
      scale_per_coordinate
                      True when the parameter applies to each coordinate (the data scale
                      is then the RMS spread per coordinate, else per point).
      broadcast_block True when `pair_costs` builds a rows x centers x d block (the cost
                      pass then takes fewer rows at a time). Default: not by_distance.
      block_temporaries
                      how many such blocks `pair_costs` holds at once.
    and defines `pointwise` (the math), plus where it applies `of_sq_distance` (by_distance
    losses) and either `irls_weights` (the default `update` then runs IRLS) or `update`.
    Optional overrides: `costs`/`pair_costs` (a faster (rows, k) block), `auto_rule`,
    `polish`. Every method takes the parameter as an argument: instances hold no state.
    """

    name: str = ""
    param_name: str | None = None
    by_distance: bool = False
    exact_update: bool = False
    inner_steps: int = 1
    scale_per_coordinate: bool = False
    broadcast_block: bool | None = None
    block_temporaries: int = 1

    # The attributes and methods that define the numerics (the cache fingerprint hashes them).
    SETTINGS = ("name", "param_name", "by_distance", "exact_update", "inner_steps", "scale_per_coordinate",
                "broadcast_block", "block_temporaries")
    METHODS = ("pointwise", "of_sq_distance", "pair_costs", "costs", "irls_weights", "update", "auto_rule",
               "polish", "param_range")

    def __repr__(self) -> str:
        return f"<loss {self.name} ({type(self).__name__})>"

    # -- the math

    def pointwise(self, r: torch.Tensor, param: float | None) -> torch.Tensor:
        """loss of residual vectors r (..., d) -> (...)."""
        raise NotImplementedError(f"loss {self.name!r} defines no pointwise()")

    def of_sq_distance(self, d2: torch.Tensor, param: float | None) -> torch.Tensor:
        """The loss as a function of the squared distance (by_distance losses only)."""
        raise ValueError(f"{self.name!r} is not a function of the distance alone")

    # -- cost blocks

    def uses_broadcast_block(self) -> bool:
        return (not self.by_distance) if self.broadcast_block is None else self.broadcast_block

    def pair_costs(self, Xc: torch.Tensor, Cb: torch.Tensor, param: float | None) -> torch.Tensor:
        """(rows, centers) costs of a block small enough to broadcast to rows x centers x d."""
        return self.pointwise(Xc[:, None, :] - Cb[None, :, :], param)

    def costs(self, Xc: torch.Tensor, C: torch.Tensor, param: float | None) -> torch.Tensor:
        """(rows, k) matrix loss(Xc[i], C[j]): one GEMM for by_distance losses, else
        `pair_costs` over blocks of centers bounded in memory."""
        if self.by_distance:
            return self.of_sq_distance(_sq_distances(Xc, C, _sq_norms(C)), param)
        out = torch.empty(Xc.shape[0], C.shape[0], dtype=Xc.dtype, device=Xc.device)
        budget = (_CPU_BLOCK_BYTES if _is_cpu(Xc.device) else DEFAULT_MAX_CHUNK_BYTES) // Xc.element_size()
        per_block = max(1, min(C.shape[0], budget // max(1, Xc.shape[0] * Xc.shape[1] * self.block_temporaries)))
        for cs in _row_slices(C.shape[0], per_block):
            out[:, cs] = self.pair_costs(Xc, C[cs], param)
        return out

    # -- center updates

    def irls_weights(self, r: torch.Tensor, param: float | None) -> torch.Tensor:
        """IRLS weights rho'(t)/t of residuals r (rows, d): shape (rows, 1) or (rows, d)."""
        raise NotImplementedError(f"loss {self.name!r} defines neither irls_weights() nor update()")

    def update(self, X: torch.Tensor, labels: torch.Tensor, C: torch.Tensor, param: float | None,
               steps: int | None = None, sample_weight: torch.Tensor | None = None,
               max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES) -> torch.Tensor:
        """`steps` IRLS steps (weighted means with weights `irls_weights`): each one
        minimises a quadratic majorizer of the loss, so the objective never rises while
        rho'(t)/t is non-increasing in |t| (true of every concave-in-t^2 loss)."""
        for _ in range(self.inner_steps if steps is None else steps):
            C = weighted_means(X, labels, C, lambda Xc, r, lc: self.irls_weights(r, param), max_chunk_bytes,
                               sample_weight)
        return C

    def polish(self, X: torch.Tensor, labels: torch.Tensor, C: torch.Tensor, param: float | None,
               sample_weight: torch.Tensor | None = None) -> torch.Tensor | None:
        """Better centers for the final restart where the update stalls; None: nothing to do."""
        return None

    # -- the parameter

    def auto_rule(self, residual: torch.Tensor, weights: torch.Tensor | None = None) -> float:
        """A parameter from float64 residuals (m, d) of a square-loss fit, each row counted
        `weights` times if given. Default: the median distance of a point to its center
        (the mean where that is 0)."""
        dist = residual.norm(dim=1)
        value = weighted_quantile(dist, weights, 0.5)
        return value if value > 0 else weighted_mean(dist, weights)

    def param_range(self, scale: float) -> tuple[float, float]:
        """The usable parameter values for data of this scale."""
        return scale / PARAM_SCALE_RANGE, scale * PARAM_SCALE_RANGE

    def scale_unit(self) -> str:
        return "RMS spread per coordinate" if self.scale_per_coordinate else "RMS distance to their mean"


# ----------------------------------------------------------------------------- the registry

_REGISTRY: dict[str, Loss] = {}


def register(cls=None, *, replace: bool = False):
    """Class decorator (or call): add a `Loss` subclass to the registry under `cls.name`.

    A name already taken is refused unless `replace=True` (which keeps its place in the
    order). Returns the class, so `@register` leaves it usable.
    """
    def add(klass):
        loss = klass() if isinstance(klass, type) else klass
        if not isinstance(loss, Loss) or not isinstance(loss.name, str) or not loss.name.isidentifier():
            raise TypeError(f"{klass!r}: a loss is a Loss subclass with an identifier as its name")
        if loss.name in _REGISTRY and not replace:
            raise ValueError(f"a loss named {loss.name!r} is already registered ({_REGISTRY[loss.name]!r})")
        if loss.param_name is not None and not loss.param_name.isidentifier():
            raise TypeError(f"{loss.name}: param_name must be an identifier or None")
        _REGISTRY[loss.name] = loss
        return klass
    return add if cls is None else add(cls)


def unregister(name: str) -> Loss:
    """Remove a loss from the registry (returns it, e.g. to register it again later)."""
    return _REGISTRY.pop(check_loss(name))


def registry() -> Mapping[str, Loss]:
    """Read-only view: name -> loss instance, in registration order."""
    return MappingProxyType(_REGISTRY)


def get_loss(loss: str | Loss) -> Loss:
    """The registered loss called `loss`, else a LossInputError naming every choice."""
    if isinstance(loss, Loss):
        return loss
    found = _REGISTRY.get(loss) if isinstance(loss, str) else None
    if found is None:
        raise LossInputError(f"unknown loss {loss!r}; choose one of: {', '.join(_REGISTRY)}")
    return found


def check_loss(loss: str) -> str:
    """Return `loss` if it is a registered name, else raise naming all of them."""
    return get_loss(loss).name


class _Names(Sequence):
    """A live, read-only tuple of the registered names that satisfy `keep`."""

    def __init__(self, keep=lambda loss: True):
        self._keep = keep

    def _names(self) -> tuple[str, ...]:
        return tuple(name for name, loss in _REGISTRY.items() if self._keep(loss))

    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self):
        return iter(self._names())

    def __contains__(self, name) -> bool:
        return name in self._names()

    def __eq__(self, other) -> bool:
        return self._names() == (tuple(other) if isinstance(other, (Sequence, _Names)) else other)

    def __repr__(self) -> str:
        return repr(self._names())


class _Table(Mapping):
    """A live, read-only dict name -> `value(loss)` over the registered losses with `keep`."""

    def __init__(self, value, keep):
        self._value, self._keep = value, keep

    def _items(self) -> dict:
        return {name: self._value(loss) for name, loss in _REGISTRY.items() if self._keep(loss)}

    def __getitem__(self, name):
        return self._items()[name]

    def __len__(self) -> int:
        return len(self._items())

    def __iter__(self):
        return iter(self._items())

    def __repr__(self) -> str:
        return repr(self._items())


LOSS_NAMES = _Names()
PARAM_NAME = _Table(lambda loss: loss.param_name, lambda loss: loss.param_name is not None)
# Losses that are a monotone function of the Euclidean distance but not a coordinate sum,
# and the inner-step defaults of the iterative updates (read from the classes).
DISTANCE_LOSSES = _Names(lambda loss: loss.by_distance and not isinstance(loss, CoordinateLoss))
COORDINATE_LOSSES = _Names(lambda loss: isinstance(loss, CoordinateLoss))
DEFAULT_INNER_STEPS = _Table(lambda loss: loss.inner_steps, lambda loss: not loss.exact_update)


# ----------------------------------------------------------------------------- validation

def validate_param(loss: str, value: float | None) -> float | None:
    """Check the numeric parameter of `loss` and return it as a float.

    A loss without a parameter takes None (returns None). The others need a finite
    number > 0; the error names the parameter (delta, sigma, epsilon, ...).
    """
    spec = get_loss(loss)
    if spec.param_name is None:
        if value is not None:
            raise LossInputError(f"loss {spec.name!r} takes no parameter; got {value!r}")
        return None
    name = spec.param_name
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise LossInputError(f"{name} (parameter of {spec.name}) must be a positive number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise LossInputError(f"{name} (parameter of {spec.name}) must be a positive finite number, got {value!r}")
    return number


# ----------------------------------------------------------------------------- the six losses

class CoordinateLoss(Loss):
    """A sum over coordinates: loss(x, mu) = sum_j rho(r_j); subclasses define `elementwise` (rho)."""

    def elementwise(self, r: torch.Tensor, param: float | None) -> torch.Tensor:
        raise NotImplementedError

    def pointwise(self, r, param):
        return self.elementwise(r, param).sum(-1)

    def derivatives(self, r: torch.Tensor, param: float | None):
        """(rho'(r), rho''(r), rho'(r)/r) per coordinate, for the guarded Newton step of
        the default `update`; None (the default): the update is plain IRLS."""
        return None

    def update(self, X, labels, C, param, steps=None, sample_weight=None, max_chunk_bytes=DEFAULT_MAX_CHUNK_BYTES):
        """`steps` guarded Newton steps where the class defines `derivatives`, else IRLS."""
        if type(self).derivatives is CoordinateLoss.derivatives:
            return super().update(X, labels, C, param, steps, sample_weight, max_chunk_bytes)
        for _ in range(self.inner_steps if steps is None else steps):
            C = _guarded_newton_step(self, X, labels, C, param, max_chunk_bytes, sample_weight)
        return C


def _guarded_newton_step(spec: CoordinateLoss, X: torch.Tensor, labels: torch.Tensor, C: torch.Tensor,
                         param: float | None, max_chunk_bytes: int, sample_weight=None) -> torch.Tensor:
    """One center update for a convex coordinate loss: per cluster and coordinate, the
    better of the IRLS step (the weighted mean, a majorize-minimize step: never uphill)
    and the Newton step mu + sum rho'(r) / sum rho''(r), by their summed loss.

    With the labels fixed the objective separates into one convex function of one
    number per cluster and coordinate, so choosing per (cluster, coordinate) is exact:
    each sum ends at or below the IRLS step's, hence never above the current one, while
    Newton's quadratic convergence finishes the center in a step or two where IRLS
    creeps (pseudo-Huber: 15 more outer iterations to reach tol 1e-6 on 400 x 64).
    Clusters without members (or weight) keep their center; a coordinate without
    curvature (Huber: no member inside delta) takes the IRLS step.
    """
    acc = _accumulator_dtype(X.device)
    k, d = C.shape
    slope, curve, weight = (torch.zeros(k, d, dtype=acc, device=X.device) for _ in range(3))
    rows = _pass_rows(X, max_chunk_bytes)
    # (separate sums, not one of the three concatenated: fresh buffers of a few
    # hundred kB cost page faults, more than the two extra sums)
    for s in _row_slices(X.shape[0], rows):
        lc = labels[s]
        sw = None if sample_weight is None else sample_weight[s].to(X.dtype)
        for total, part in zip((slope, curve, weight), spec.derivatives(X[s] - rows_of(C, lc), param)):
            total += _chunk_sums(part, lc, k, sw)
    center = C.to(acc)
    irls = torch.where(weight > 0, center + slope / torch.where(weight > 0, weight, 1.0), center)
    newton = torch.where(curve > 0, center + slope / torch.where(curve > 0, curve, 1.0), irls)
    cost = [torch.zeros(k, d, dtype=acc, device=X.device) for _ in range(2)]
    for candidate, total in zip((irls.to(C.dtype), newton.to(C.dtype)), cost):
        for s in _row_slices(X.shape[0], rows):
            lc = labels[s]
            total += _chunk_sums(spec.elementwise(X[s] - rows_of(candidate, lc), param), lc, k,
                                 None if sample_weight is None else sample_weight[s].to(X.dtype))
    return torch.where(cost[1] <= cost[0], newton, irls).to(C.dtype)


def _mad_rule(residual: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """1.345 * 1.4826 * MAD of the residual coordinates (mean |r| where the MAD is 0)."""
    flat = residual.flatten()
    flat_weights = None if weights is None else weights.repeat_interleave(residual.shape[1])
    mad = weighted_quantile((flat - weighted_quantile(flat, flat_weights, 0.5)).abs(), flat_weights, 0.5)
    if mad <= 0:  # more than half the coordinates sit exactly on their center
        mad = weighted_mean(flat.abs(), flat_weights)
    return HUBER_EFFICIENCY * MAD_TO_SIGMA * mad


def weighted_quantile(values: torch.Tensor, weights: torch.Tensor | None, q: float) -> float:
    """The q-quantile of `values`, each counted `weights` times (torch's own definitions
    without weights: the lower median for q = 0.5, linear interpolation otherwise), so
    that integer weights give exactly the quantile of the repeated values."""
    if weights is None:
        return (values.median() if q == 0.5 else values.quantile(q)).item()
    order = torch.argsort(values)
    ordered, cumulative = values[order], torch.cumsum(weights[order].double(), 0)
    total = cumulative[-1].item()

    def at(index: float) -> float:  # the value at this position of the repeated, sorted values
        j = int(torch.searchsorted(cumulative, torch.tensor([index], dtype=torch.float64,
                                                             device=values.device), right=True))
        return ordered[min(j, len(ordered) - 1)].item()

    position = q * (total - 1)
    if q == 0.5:
        return at(math.floor(position))
    low, high = math.floor(position), math.ceil(position)
    return at(low) + (position - low) * (at(high) - at(low))


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> float:
    if weights is None:
        return values.mean().item()
    return ((values * weights).sum() / weights.sum()).item()


@register
class Square(CoordinateLoss):
    """Squared Euclidean distance: loss = sum_j r_j^2 = d^2.

    Center: the (weighted) mean, exact. A function of d, so assignment is one GEMM."""

    name = "square"
    by_distance = True
    exact_update = True

    def elementwise(self, r, param):
        return r * r

    def of_sq_distance(self, d2, param):
        return d2

    def update(self, X, labels, C, param, steps=None, sample_weight=None, max_chunk_bytes=DEFAULT_MAX_CHUNK_BYTES):
        if sample_weight is not None:  # the weights are the sample weights: no residual pass
            return weighted_means(X, labels, C, None, max_chunk_bytes, row_weights=sample_weight)
        sums, counts = cluster_sums(X, labels, C.shape[0], max_chunk_bytes)
        nonempty = counts > 0
        out = C.clone()
        out[nonempty] = (sums[nonempty] / counts[nonempty, None].to(sums.dtype)).to(C.dtype)
        return out


@register
class Absolute(CoordinateLoss):
    """Manhattan distance: loss = sum_j |r_j|.

    Center: the coordinate-wise (weighted) median, exact (`segment_medians`)."""

    name = "absolute"
    exact_update = True
    broadcast_block = False  # torch.cdist(p=1) never builds the rows x k x d block

    def elementwise(self, r, param):
        return r.abs()

    def costs(self, Xc, C, param):
        return torch.cdist(Xc, C, p=1.0)

    def update(self, X, labels, C, param, steps=None, sample_weight=None, max_chunk_bytes=DEFAULT_MAX_CHUNK_BYTES):
        return segment_medians(X, labels, C, max_chunk_bytes, sample_weight)


@register
class Huber(CoordinateLoss):
    """Huber loss per coordinate: h(t) = t^2/2 for |t| <= delta, delta (|t| - delta/2) beyond.

    Center: one guarded Newton step per assignment (`_guarded_newton_step`): the better of
    the IRLS step (weights min(1, delta/|r_j|)) and the Newton step (rho'' = 1 inside
    delta, 0 outside: exact once the members inside delta stay the same).
    auto: delta = 1.345 * 1.4826 * MAD of the residual coordinates (Huber's 95%-efficiency
    constant times a robust estimate of the noise standard deviation)."""

    name = "huber"
    param_name = "delta"
    inner_steps = 1
    scale_per_coordinate = True

    def elementwise(self, r, param):
        a = r.abs()
        q = a.clamp(max=param)
        return q * (a - 0.5 * q)  # |r|<=delta: r^2/2; else delta(|r| - delta/2)

    def pair_costs(self, Xc, Cb, param):
        # torch's fused kernel: one pass over the rows x centers x d block (the hot loop)
        shape = (Xc.shape[0], Cb.shape[0], Xc.shape[1])
        return torch.nn.functional.huber_loss(Xc[:, None, :].expand(shape), Cb[None, :, :].expand(shape),
                                              reduction="none", delta=param).sum(-1)

    def irls_weights(self, r, param):  # min(1, delta/|r|) per coordinate
        return (param / r.abs().clamp(min=_tiny(r))).clamp(max=1.0)

    def derivatives(self, r, param):
        weight = (param / r.abs().clamp(min=_tiny(r))).clamp(max=1.0)
        return r.clamp(-param, param), (weight == 1.0).to(r.dtype), weight

    def auto_rule(self, residual, weights=None):
        return _mad_rule(residual, weights)


@register
class PseudoHuber(CoordinateLoss):
    """Pseudo-Huber loss per coordinate: delta^2 (sqrt(1 + (t/delta)^2) - 1), computed as
    t^2 / (1 + sqrt(1 + (t/delta)^2)): the same number without cancellation (the first
    form rounds to 0 in float32 once (t/delta)^2 < 1e-7, i.e. delta above ~3000 residuals:
    every center would cost 0 and all points fall into the first cluster).

    Center: guarded Newton steps per coordinate (default 2; `_guarded_newton_step`): the
    better of the IRLS step (weights 1/sqrt(1 + (r_j/delta)^2)) and the Newton step
    (rho'' = (1 + (r_j/delta)^2)^(-3/2)). auto: as Huber's delta."""

    name = "pseudo_huber"
    param_name = "delta"
    inner_steps = 2
    scale_per_coordinate = True
    # Two rows x centers x d blocks live at once (residuals, denominator); counted as 4 so
    # that on the CPU each stays at 128k values (512 kB) and both fit a core's L2 cache:
    # with 256k-value blocks the pass cost 4.5 ns per value, with 128k 1.0-1.1 ns
    # (pair_costs alone on 400 x 64 and 512 x 512 points, k = 40 and 50, one thread).
    block_temporaries = 4

    def elementwise(self, r, param):  # two temporaries: fresh big buffers cost page faults
        return (r * r).div_((r / param).square_().add_(1.0).sqrt_().add_(1.0))

    def pair_costs(self, Xc, Cb, param):
        r2 = (Xc[:, None, :] - Cb[None, :, :]).square_()
        denominator = torch.mul(r2, 1.0 / (param * param)).add_(1.0).sqrt_().add_(1.0)
        return r2.div_(denominator).sum(-1)

    def irls_weights(self, r, param):  # rho'(t)/t = 1/sqrt(1 + (t/delta)^2) per coordinate
        return torch.rsqrt(1.0 + (r / param) ** 2)

    def derivatives(self, r, param):
        q = (r / param).square_().add_(1.0)
        weight = torch.rsqrt(q)
        return r * weight, weight / q, weight

    def auto_rule(self, residual, weights=None):
        return _mad_rule(residual, weights)


@register
class Correntropy(Loss):
    """Correntropy-induced loss: 1 - exp(-d^2 / (2 sigma^2)), computed as -expm1(.).

    Non-decreasing in d: assignment is the nearest center (one GEMM).
    Center: half-quadratic fixed point, weights exp(-d_i^2 / 2 sigma^2) per point, each
    cluster's weights divided by its largest one (a common factor leaves the weighted
    mean unchanged; without it far clusters underflow to all-zero weights). Default 1 step
    per assignment: more steps between assignments cost more in total (docs/LOSSES.md).
    auto: sigma = median distance of a point to its center (a typical point sits where
    the kernel is neither flat at 0 nor saturated at 1)."""

    name = "correntropy"
    param_name = "sigma"
    by_distance = True
    inner_steps = 1

    def of_sq_distance(self, d2, param):
        return -torch.expm1(-d2 / (2.0 * param * param))

    def pointwise(self, r, param):
        return self.of_sq_distance((r * r).sum(-1), param)

    def update(self, X, labels, C, param, steps=None, sample_weight=None, max_chunk_bytes=DEFAULT_MAX_CHUNK_BYTES):
        for _ in range(self.inner_steps if steps is None else steps):
            d2 = loss_to_centers(X, C, labels, "square", None, max_chunk_bytes)
            if sample_weight is not None:  # a weightless member must not set the scale
                d2 = torch.where(sample_weight > 0, d2, torch.full_like(d2, float("inf")))
            floor = _cluster_min(d2, labels, C.shape[0])
            if sample_weight is not None:
                d2 = torch.where(torch.isfinite(d2), d2, rows_of(floor, labels))  # weight 0 anyway
            # one distance pass serves both the floor and the weights
            weights = torch.exp(-(d2 - rows_of(floor, labels)) / (2.0 * param * param))
            C = weighted_means(X, labels, C, None, max_chunk_bytes, sample_weight, row_weights=weights)
        return C

    def auto_rule(self, residual, weights=None):
        dist = residual.norm(dim=1)
        value = weighted_quantile(dist, weights, 0.5)
        return value if value > 0 else weighted_mean(dist, weights)  # many exact duplicates of their center


@register
class EpsilonInsensitive(Loss):
    """Epsilon-insensitive loss: max(0, d - epsilon) (zero inside a tube of radius epsilon).

    Non-decreasing in d: assignment is the nearest center (one GEMM; ties at 0 go by distance).
    Center: guarded Weiszfeld (weights 1/d_i outside the tube, 0 inside; a step that
    raises a cluster's objective is halved until it does not), default 2 steps per
    assignment (3 reached the same objectives with more work), then
    `polish` (L-BFGS on a softplus-smoothed objective) for the final centers.
    auto: epsilon = 10% quantile of the distance to the center (the tightest tenth of
    each cluster costs nothing; the rest count by distance)."""

    name = "epsilon_insensitive"
    param_name = "epsilon"
    by_distance = True
    inner_steps = 2

    def of_sq_distance(self, d2, param):
        return (torch.sqrt(d2) - param).clamp(min=0.0)

    def pointwise(self, r, param):
        return self.of_sq_distance((r * r).sum(-1), param)

    def update(self, X, labels, C, param, steps=None, sample_weight=None, max_chunk_bytes=DEFAULT_MAX_CHUNK_BYTES):
        for _ in range(self.inner_steps if steps is None else steps):
            C = _epsilon_step(X, labels, C, param, max_chunk_bytes, sample_weight)
        return C

    def polish(self, X, labels, C, param, sample_weight=None):
        return polish_centers(X, labels, C, param, sample_weight=sample_weight)

    def auto_rule(self, residual, weights=None):
        dist = residual.norm(dim=1)
        value = weighted_quantile(dist, weights, EPSILON_QUANTILE)
        return value if value > 0 else weighted_mean(dist, weights)


def _epsilon_step(X, labels, C, epsilon: float, max_chunk_bytes: int, sample_weight=None, halvings: int = 5
                  ) -> torch.Tensor:
    """One guarded Weiszfeld step for max(0, d - epsilon).

    Weiszfeld on the points outside the tube (w = 1/d) majorizes their distances, but a
    point inside the tube can leave it, so the step may raise the objective: each cluster
    then halves its step until its objective does not rise (or keeps its center).
    """
    # one pass over the points gives both each cluster's objective and the Weiszfeld weights
    d = loss_to_centers(X, C, labels, "square", None, max_chunk_bytes).sqrt_()
    per_point = (d - epsilon).clamp_(min=0.0).double()
    if sample_weight is not None:
        per_point = per_point * sample_weight.double()
    before = torch.zeros(C.shape[0], dtype=torch.float64, device=X.device).index_add_(0, labels, per_point)
    weights = torch.where(d > epsilon, 1.0 / d.clamp(min=_tiny(d)), torch.zeros_like(d))
    target = weighted_means(X, labels, C, None, max_chunk_bytes, sample_weight, row_weights=weights)
    result = C.clone()
    pending = torch.ones(C.shape[0], dtype=torch.bool, device=C.device)
    rows, row_labels, row_weight = X, labels, sample_weight
    step = 1.0
    for _ in range(halvings + 1):
        trial = C + step * (target - C)
        after = cluster_objectives(rows, trial, row_labels, "epsilon_insensitive", epsilon, row_weight)
        accept = pending & (after <= before)
        result[accept] = trial[accept]
        pending &= ~accept
        if not pending.any():
            break
        step *= 0.5
        # the halvings price only the members of the clusters still pending (often a few
        # stalled at the tube's edge): the same per-cluster sums over fewer rows
        members = rows_of(pending, labels)
        if int(members.sum()) * 2 <= rows.shape[0]:
            keep = torch.nonzero(members).flatten()
            rows, row_labels = X[keep], labels[keep]
            row_weight = None if sample_weight is None else sample_weight[keep]
    return result


def _smoothed_epsilon(X: torch.Tensor, labels: torch.Tensor, C: torch.Tensor, epsilon: float, smooth: float,
                      max_chunk_bytes: int, sample_weight=None, start: "_PolishStart | None" = None
                      ) -> tuple[float, torch.Tensor]:
    """Value and gradient (w.r.t. every center) of sum_i w_i smooth * softplus((d_i - epsilon) / smooth),
    a smooth convex upper bound of max(0, d - epsilon) within n * smooth * log 2 of it.

    With `start` (few centers, rows kept in float64), the distances come from the rows'
    residuals y_i to their center at the start of the polish and the centers' shifts s_c
    since: d_i^2 = |y_i|^2 - 2 y_i.s_c + |s_c|^2, one (n, k) product instead of an (n, d)
    residual and its square (2000 x 512, k = 5: 0.8 ms against 1.6 ms); y and s are both
    small, so nothing cancels."""
    acc = _accumulator_dtype(X.device)
    value = torch.zeros((), dtype=acc, device=X.device)
    grad = torch.zeros(C.shape, dtype=acc, device=X.device)
    if start is not None:
        shift = C.to(acc) - start.centers
        lc = labels
        cross = (start.residuals @ shift.T).gather(1, lc[:, None])[:, 0]
        d = (start.sq_norms - 2.0 * cross + rows_of((shift * shift).sum(1), lc)).clamp_(min=0.0).sqrt_()
        d = d.clamp_(min=torch.finfo(acc).tiny)
        t = (d - epsilon) / smooth
        soft, slope = torch.nn.functional.softplus(t), torch.sigmoid(t) / d
        if sample_weight is not None:
            w = sample_weight.to(acc)
            soft, slope = soft * w, slope * w
        value += smooth * soft.sum()
        # the gradient -sum_i slope_i (x_i - c) = -sum_i slope_i y_i + (sum_i slope_i) s_c
        grad -= _chunk_sums(start.residuals, lc, C.shape[0], slope)
        grad += torch.zeros(C.shape[0], dtype=acc, device=X.device).index_add_(0, lc, slope)[:, None] * shift
        return float(value), grad
    for s in _row_slices(X.shape[0], _pass_rows(X, max_chunk_bytes)):
        lc = labels[s]
        r = X[s].to(acc) - rows_of(C, lc).to(acc)
        d = torch.sqrt((r * r).sum(1)).clamp(min=torch.finfo(acc).tiny)
        t = (d - epsilon) / smooth
        soft, slope = torch.nn.functional.softplus(t), torch.sigmoid(t) / d
        if sample_weight is not None:
            w = sample_weight[s].to(acc)
            soft, slope = soft * w, slope * w
        value += smooth * soft.sum()
        grad += _chunk_sums(r, lc, C.shape[0], -slope)
    return float(value), grad


class _PolishStart:
    """The rows' float64 residuals to their centers at the start of the polish and their
    squared norms (for `_smoothed_epsilon`'s product form)."""

    # the (n, k) product pays for few centers on many values (2000 x 512, k = 5: 1.5 ms a
    # pass against 3.4 ms); on small problems its extra operations cost more (400 x 64)
    MAX_CENTERS = 8
    MIN_VALUES = 2**17

    def __init__(self, rows: torch.Tensor, labels: torch.Tensor, C: torch.Tensor):
        self.centers = C.to(rows.dtype)
        self.residuals = rows - rows_of(self.centers, labels)
        self.sq_norms = (self.residuals * self.residuals).sum(1)


def polish_centers(X: torch.Tensor, labels: torch.Tensor, C: torch.Tensor, epsilon: float,
                   stages: tuple[int, ...] = (3, 6), max_iter: int = 20,
                   max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES, sample_weight=None) -> torch.Tensor:
    """Finish epsilon-insensitive centers where the guarded Weiszfeld step stalls.

    Weiszfeld stops at the edge of the tube (points at d = epsilon are kinks that also
    stop gradient methods). Here scipy's L-BFGS minimises a softplus-smoothed objective
    with the smoothing shrunk per stage (epsilon * 10^-stage), all
    centers at once since the objective separates by cluster. A cluster keeps its old
    center unless the polished one is strictly better, so the objective never rises.
    """
    before = cluster_objectives(X, C, labels, "epsilon_insensitive", epsilon, sample_weight)
    flat = C.double().cpu().numpy().ravel()
    acc = _accumulator_dtype(X.device)
    # ~40 gradient passes follow: convert the rows once where the copy is small
    # (2000 x 512: 8 MB), else each pass converts its chunk
    small = X.numel() * 8 <= min(max_chunk_bytes, _POLISH_COPY_BYTES)
    rows = X.to(acc) if small else X
    start = _PolishStart(rows, labels, C) if small and C.shape[0] <= _PolishStart.MAX_CENTERS \
        and X.numel() >= _PolishStart.MIN_VALUES else None
    with _one_blas_thread():
        flat = _lbfgs_stages(rows, labels, C, epsilon, flat, stages, max_iter, max_chunk_bytes, sample_weight,
                             start)
    polished = torch.from_numpy(flat.reshape(C.shape)).to(device=C.device, dtype=C.dtype)
    after = cluster_objectives(X, polished, labels, "epsilon_insensitive", epsilon, sample_weight)
    better = (after < before) & torch.isfinite(after)
    return torch.where(better[:, None], polished, C)


def _one_blas_thread():
    """L-BFGS-B's vectors are only k x d long, yet NumPy's OpenBLAS threads, once woken,
    spin and starve torch's own threads: on 2 cores, 400 x 64 points, k = 10, a fit took
    20x longer. threadpoolctl (where installed) keeps BLAS on one thread meanwhile."""
    controller = _blas_controller()
    return controller.limit(limits=1, user_api="blas") if controller is not None else contextlib.nullcontext()


@functools.lru_cache(maxsize=1)
def _blas_controller():
    """threadpoolctl's view of the loaded thread pools, made once (scanning the loaded
    libraries costs ~2 ms, as much as a small fit's polish), after scipy loaded its BLAS."""
    import scipy.optimize  # noqa: F401

    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - slower, same numbers
        return None
    return ThreadpoolController()


def _lbfgs_stages(X, labels, C, epsilon, flat, stages, max_iter, max_chunk_bytes, sample_weight,
                  start=None) -> np.ndarray:
    from scipy.optimize import minimize

    for stage in stages:
        smooth = epsilon * 10.0 ** -stage

        def value_and_grad(values: np.ndarray, smooth=smooth) -> tuple[float, np.ndarray]:
            centers = torch.from_numpy(values.reshape(C.shape)).to(X.device)
            value, grad = _smoothed_epsilon(X, labels, centers, epsilon, smooth, max_chunk_bytes, sample_weight,
                                            start)
            return value, grad.double().cpu().numpy().ravel()

        flat = minimize(value_and_grad, flat, jac=True, method="L-BFGS-B",
                        options={"maxiter": max_iter, "ftol": 1e-13, "gtol": 1e-10}).x
    return flat


# ----------------------------------------------------------------------------- views by name

def coordinate_loss(r: torch.Tensor, loss: str, param: float | None) -> torch.Tensor:
    """Per-coordinate loss of residuals `r` (any shape) for a coordinate-sum loss."""
    spec = get_loss(loss)
    if not isinstance(spec, CoordinateLoss):
        raise ValueError(f"{loss!r} is not a coordinate-sum loss")
    return spec.elementwise(r, param)


def distance_loss(d2: torch.Tensor, loss: str, param: float | None) -> torch.Tensor:
    """Loss as a function of the squared Euclidean distance `d2` (any shape)."""
    return get_loss(loss).of_sq_distance(d2, param)


def pointwise_loss(X: torch.Tensor, C: torch.Tensor, loss: str, param: float | None) -> torch.Tensor:
    """loss(X[i], C[i]) for matched rows: shape (n,), dtype of X."""
    return get_loss(loss).pointwise(X - C, param)


def _cost_rows(X: torch.Tensor, k: int, spec: Loss, max_chunk_bytes: int) -> int:
    """Rows per chunk of a cost-matrix pass: the (rows, k) block plus the loss's temporaries."""
    if spec.uses_broadcast_block():
        # the broadcast residual block is rows x centers-in-block x d; keep at least 1 center
        return _rows_for(X.shape[1] * min(k, 8), X.device, max_chunk_bytes, X.element_size())
    if _is_cpu(X.device):  # GEMM blocks: measured best at ~8 MB (2 MB: +20% time, 32 MB: +20%)
        return max(1, min(max_chunk_bytes, _CPU_GEMM_BLOCK_BYTES) // max(1, k * X.element_size() * 2))
    return _rows_for(k, X.device, max_chunk_bytes * 4, X.element_size(), temporaries=2)


def cost_matrix(X: torch.Tensor, C: torch.Tensor, loss: str, param: float | None,
                max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES) -> torch.Tensor:
    """(n, k) matrix of loss(X[i], C[j]). Memory beyond the output is bounded by chunking."""
    spec = get_loss(loss)
    out = torch.empty(X.shape[0], C.shape[0], dtype=X.dtype, device=X.device)
    for s in _row_slices(X.shape[0], _cost_rows(X, C.shape[0], spec, max_chunk_bytes)):
        out[s] = spec.costs(X[s], C, param)
    return out


def assign(X: torch.Tensor, C: torch.Tensor, loss: str, param: float | None,
           max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES, with_cost: bool = False,
           x_sq: torch.Tensor | None = None, groups: int = 1):
    """Index of the cheapest center for every row of X (the n x k matrix is never built whole).

    A `by_distance` loss (square, correntropy, epsilon-insensitive) is non-decreasing in the
    Euclidean distance, so its argmin is the nearest center by distance (this also breaks
    epsilon's ties at 0 by distance); all of them share one GEMM. With `with_cost=True`
    also returns each row's cost to its center, from the same pass (for the distance
    losses through the GEMM expansion, so with its rounding: use `loss_to_centers` where
    exact values matter). `x_sq`, the rows' squared norms, saves recomputing them when
    the caller assigns the same X many times.

    `groups` > 1 assigns X to several independent sets of centers at once (the engine's
    restarts): C holds `groups` consecutive blocks of k = len(C) / groups centers, and
    labels (and costs) come back with shape (n, groups), label j of group g being the
    index g * k + (cheapest center of block g) into C.
    """
    spec = get_loss(loss)
    k = C.shape[0] // groups
    rows = _cost_rows(X, C.shape[0], spec, max_chunk_bytes)
    shape = (X.shape[0],) if groups == 1 else (X.shape[0], groups)
    labels = torch.empty(shape, dtype=torch.int64, device=X.device)
    cost = torch.empty(shape, dtype=X.dtype, device=X.device) if with_cost else None
    offsets = None if groups == 1 else torch.arange(0, C.shape[0], k, device=X.device)
    by_distance = spec.by_distance
    c_sq = _sq_norms(C) if by_distance else None
    for s in _row_slices(X.shape[0], rows):
        if by_distance:
            # |x|^2 is the same for every center of a row: argmin needs only |c|^2 - 2 x.c
            block = torch.addmm(c_sq, X[s], C.T, alpha=-2.0)
        else:
            block = spec.costs(X[s], C, param)
        if groups == 1:
            best, labels[s] = block.min(1)
        else:
            best, local = block.view(block.shape[0], groups, k).min(2)
            labels[s] = local + offsets
        if with_cost:
            norms = x_sq[s] if x_sq is not None else _sq_norms(X[s])
            if by_distance:
                cost[s] = spec.of_sq_distance((best + (norms if groups == 1 else norms[:, None])).clamp_(min=0.0), param)
            else:
                cost[s] = best
    return (labels, cost) if with_cost else labels


def assign_among_nearest(X: torch.Tensor, C: torch.Tensor, loss: str, param: float | None, candidates: int,
                         current: torch.Tensor | None = None,
                         max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, costs): each row's cheapest center among its `candidates` nearest by Euclidean
    distance (one GEMM) and, when given, its `current` center. Not `assign`: a center that is
    cheaper under `loss` but farther than the candidates is missed. With `current` the cost of
    every row can only fall, so an update-then-this step never raises the objective. For a
    loss without a GEMM form this costs candidates / k of `assign`."""
    spec = get_loss(loss)
    n, d = X.shape
    width = candidates + (current is not None)
    labels = torch.empty(n, dtype=torch.int64, device=X.device)
    cost = torch.empty(n, dtype=X.dtype, device=X.device)
    c_sq = _sq_norms(C)
    rows = _rows_for(max(width * d, C.shape[0]), X.device, max_chunk_bytes, X.element_size(), temporaries=3)
    for s in _row_slices(n, rows):
        near = torch.addmm(c_sq, X[s], C.T, alpha=-2.0).topk(candidates, dim=1, largest=False).indices
        if current is not None:
            near = torch.cat([current[s, None], near], 1)
        block = spec.pointwise(X[s, None, :] - C[near], param)  # (rows, width)
        best, pick = block.min(1)
        labels[s], cost[s] = near.gather(1, pick[:, None])[:, 0], best
    return labels, cost


def loss_to_centers(X: torch.Tensor, C: torch.Tensor, labels: torch.Tensor, loss: str, param: float | None,
                    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES) -> torch.Tensor:
    """loss(X[i], C[labels[i]]) for every row, computed directly (no GEMM cancellation)."""
    spec = get_loss(loss)
    out = torch.empty(X.shape[0], dtype=X.dtype, device=X.device)
    for s in _row_slices(X.shape[0], _pass_rows(X, max_chunk_bytes)):
        out[s] = spec.pointwise(X[s] - rows_of(C, labels[s]), param)
    return out


def update_centers(X: torch.Tensor, labels: torch.Tensor, C: torch.Tensor, loss: str, param: float | None,
                   steps: int | None = None, max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
                   sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """New centers for all clusters at once, given the assignment. Never raises the objective.

    Each loss's `update` (see its class): exact for square (mean) and absolute (median),
    else `steps` majorize-minimize steps (default: the class's `inner_steps`). Empty
    clusters keep their center (the engine re-seeds them).
    """
    return get_loss(loss).update(X, labels, C, param, steps=steps, sample_weight=sample_weight,
                                 max_chunk_bytes=max_chunk_bytes)


# ----------------------------------------------------------------------------- parameter scale

def data_scale(X: torch.Tensor, loss: str, max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
               sample_weight: torch.Tensor | None = None) -> float:
    """The features' spread in the units of `loss`'s parameter: the RMS distance of the
    rows to their (weighted) mean, per coordinate for losses whose parameter applies per
    coordinate (huber, pseudo_huber). 1.0 when every row is the same: any parameter then
    gives the same clusters, and the range around 1 still keeps the arithmetic finite."""
    spec = get_loss(loss)
    acc = _accumulator_dtype(X.device)
    n, d = X.shape
    rows = _pass_rows(X, max_chunk_bytes)
    w = None if sample_weight is None else sample_weight.to(acc)
    weigh = (lambda s, v: v) if w is None else (lambda s, v: v * w[s, None])
    count = float(n) if w is None else float(w.sum())
    mean = sum(weigh(s, X[s].to(acc)).sum(0) for s in _row_slices(n, rows)) / count
    spread = sum(float(weigh(s, (X[s].to(acc) - mean).square_()).sum()) for s in _row_slices(n, rows))
    per = count * d if spec.scale_per_coordinate else count
    scale = math.sqrt(spread / per)
    return scale if math.isfinite(scale) and scale > 0 else 1.0


def param_range(scale: float, loss: str | None = None) -> tuple[float, float]:
    """The usable parameter values for data of this scale (the loss's own rule if given)."""
    return get_loss(loss).param_range(scale) if loss is not None else \
        (scale / PARAM_SCALE_RANGE, scale * PARAM_SCALE_RANGE)


def check_param_scale(loss: str, value: float, scale: float) -> float:
    """`value` if it lies within the loss's usable range for the data's scale, else a
    ParamScaleError naming the parameter, its value and the usable range."""
    spec = get_loss(loss)
    low, high = spec.param_range(scale)
    if low <= value <= high:
        return value
    factors = spec.param_range(1.0)
    raise ParamScaleError(
        f"{spec.param_name} = {value:g} is outside the usable range {low:.3g} to {high:.3g} for these features "
        f"({factors[0]:g} to {factors[1]:g} times their {spec.scale_unit()}, {scale:.3g}); "
        "choose a value in that range, or auto")


def clamp_to_range(value: float, scale: float, loss: str | None = None) -> float:
    low, high = param_range(scale, loss)
    return min(max(value, low), high)


def auto_param(X: torch.Tensor, C: torch.Tensor, labels: torch.Tensor, loss: str,
               sample_weight: torch.Tensor | None = None) -> float | None:
    """A parameter on the data's own scale, from the residuals of a (square-loss) fit:
    the loss's `auto_rule` (its class docstring states it) on at most AUTO_MAX_ROWS
    evenly spaced rows, so the result is deterministic; with `sample_weight`, each row
    counts as often as its weight. None for a loss without one."""
    spec = get_loss(loss)
    if spec.param_name is None:
        return None
    n = X.shape[0]
    rows = torch.linspace(0, n - 1, min(n, AUTO_MAX_ROWS), device=X.device).round().long().unique()
    residual = (X[rows] - rows_of(C, labels[rows])).double()
    # a loss's own auto_rule may predate weights: it is only asked with them when there are some
    value = spec.auto_rule(residual) if sample_weight is None else \
        spec.auto_rule(residual, sample_weight[rows].double())
    if not math.isfinite(value) or value <= 0:
        value = 1e-6  # every point on its center: any small positive scale gives the same clusters
    return float(value)
