"""Nearest centers for tens of millions of rows, in bounded memory: the search and the
full-data pass of `photoclust patches`.

* `Searcher(C, backend)`: the index of the nearest center (squared Euclidean distance) of
  every row of a block, and that squared distance. Backends:
    torch  the default, always present, CPU or CUDA: |c|^2 - 2 x.c in float32 GEMM blocks
           (|x|^2 is the same for every center of a row, so the argmin leaves it out),
           the block's minimum per row; no n x k matrix, only rows x k blocks.
    faiss  faiss-cpu's exact `IndexFlatL2` (the optional extra `photoclust[faiss]`): a fused
           GEMM + argmin kernel, about 2x faster than torch's GEMM on a CPU at d = 25.
  `auto` picks torch on a CUDA device, faiss on the CPU when it is installed, else torch.
* `full_pass(data, C, loss, param, ...)`: every row of a (n, d) array (uint8 patches are
  converted a chunk at a time) assigned to its cheapest center under `loss`, with the
  exact squared error and loss of each row summed in float64, the cluster sizes and
  (optionally) the per-cluster sums a Lloyd update needs, and the labels. Distance losses
  (square, correntropy, epsilon-insensitive: `by_distance` in the registry) go through
  the searcher; the others through `losses.assign` (their own chunked costs).
* `lloyd(data, C0, ...)`: square-loss Lloyd iterations made of full passes (empty
  clusters split the largest one, as faiss does), for the subsample fits and the
  full-data reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from . import losses as L
from .errors import UserError
from .threads import one_torch_thread

BACKENDS = ("auto", "torch", "faiss")
CHUNK_ROWS = 1 << 18  # rows converted to float32 at a time in a full pass (26 MB at d = 25)
_TORCH_BLOCK_BYTES = 32 << 20  # the rows x k distance block of one CPU thread (measured: 4 MB 1.8x slower)
MIN_PARALLEL_ROWS = 1 << 13  # a full pass splits its data into chunks of at least this many rows per thread
SPLIT_EPS = 1.0 / 1024  # an empty cluster takes half of the largest one, both nudged by this


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(name: str, device: torch.device) -> str:
    """`auto`: torch on a GPU, faiss on the CPU when installed, else torch; an explicit
    backend must be present."""
    if name not in BACKENDS:
        raise UserError(f"--backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "faiss" if device.type == "cpu" and faiss_available() else "torch"
    if name == "faiss":
        if device.type != "cpu":
            raise UserError("--backend faiss runs on the CPU only; use --backend torch (or auto) with a GPU")
        if not faiss_available():
            raise UserError("--backend faiss: faiss is not installed; pip install 'photoclust[faiss]' "
                            "(or use --backend torch)")
    return name


_POOLS: dict = {}


def _pool(workers: int):
    """Threads for the searches on a CPU, one per core torch would use (`_workers()`, read
    by the caller before it drops torch to one thread). Each works a whole block (GEMM,
    then the row minima) on one torch thread: no barrier between the threads, which on a
    shared 2-core machine made torch's own two threads 6x slower than one (300,000 x 25
    rows, K = 1000, load average 9: 18.6 s on 2 threads, 2.9 s on 1)."""
    if workers not in _POOLS:
        from concurrent.futures import ThreadPoolExecutor

        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="photoclust-nearest")
    return _POOLS[workers]


def _workers() -> int:
    return max(1, torch.get_num_threads())


class Searcher:
    """Nearest of the centers C (k, d) for blocks of rows, by one backend."""

    def __init__(self, C: torch.Tensor, backend: str = "torch"):
        self.C = C.to(torch.float32).contiguous()
        self.backend = backend
        if backend == "faiss":
            import faiss

            self.index = faiss.IndexFlatL2(C.shape[1])
            self.index.add(np.ascontiguousarray(self.C.cpu().numpy()))
        else:
            self.c_sq = (self.C * self.C).sum(1)
            k = C.shape[0]
            budget = _TORCH_BLOCK_BYTES if C.device.type == "cpu" else 256 << 20  # the block of one thread
            self.rows = max(64, budget // (4 * k))

    def search(self, X: torch.Tensor, threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels int64, squared distances float32) of the rows of X (float32, on C's device).
        threads=1: all of it on the calling thread (the caller runs several searches at once)."""
        if self.backend == "faiss":
            import faiss

            before = faiss.omp_get_max_threads()  # OpenMP's setting is the calling thread's own
            faiss.omp_set_num_threads(threads or before)
            try:
                d2, labels = self.index.search(np.ascontiguousarray(X.numpy()), 1)
            finally:
                faiss.omp_set_num_threads(before)
            return torch.from_numpy(labels[:, 0]), torch.from_numpy(np.maximum(d2[:, 0], 0))
        n = X.shape[0]
        labels = torch.empty(n, dtype=torch.int64, device=X.device)
        best = torch.empty(n, dtype=torch.float32, device=X.device)

        def block(start: int) -> None:
            rows = slice(start, min(n, start + self.rows))
            distances = torch.addmm(self.c_sq, X[rows], self.C.T, alpha=-2.0)
            torch.min(distances, 1, out=(best[rows], labels[rows]))
            best[rows] += (X[rows] * X[rows]).sum(1)

        starts = range(0, n, self.rows)
        if X.device.type != "cpu" or len(starts) == 1 or threads == 1:
            for start in starts:
                block(start)
        else:  # blocks in parallel threads, each on one torch thread (see _pool)
            list(_in_order(block, starts, _workers()))
        return labels, best.clamp_(min=0)


@dataclass
class PassResult:
    counts: np.ndarray  # (k,) int64 rows per cluster
    sq_error: float  # sum over rows of |x - c|^2 (exact, float64)
    loss_total: float  # sum over rows of loss(x, c)
    sums: np.ndarray | None = None  # (k, d) float64 per-cluster sums (with_sums)
    labels: np.ndarray | None = None  # (n,) int32 (with_labels)
    rows: int = 0


def full_pass(data: np.ndarray, C, loss: str = "square", param: float | None = None, *, backend: str = "torch",
              device: torch.device | str = "cpu", with_sums: bool = False, with_labels: bool = False,
              chunk_rows: int = CHUNK_ROWS, progress: Callable[[int], None] | None = None) -> PassResult:
    """Assign every row of `data` (n, d; any numeric dtype, converted to float32 a chunk at a
    time) to its cheapest center under `loss` and sum what a k-means needs (see PassResult).
    Memory: the data, one float32 chunk and its rows x k block per worker, the labels if asked for.

    For the square loss the squared error comes from the per-cluster sums, exactly (float64
    sums of the rows' values): sum |x|^2 - 2 sum_j c_j . S_j + sum_j n_j |c_j|^2, with no
    residual gathered per row; the other losses sum their pointwise loss of the residuals.

    On a CPU, distance losses work the chunks in parallel threads, each chunk whole (convert,
    search on one thread, sums) in one of them: the per-chunk sums then overlap the other
    thread's search instead of following a search on every core (20M x 25, K = 1000 with
    faiss: see docs/BENCHMARKS.md). The chunks' totals are added in chunk order, so the
    result does not depend on the threads."""
    device = torch.device(device)
    spec = L.get_loss(loss)
    Ct = torch.as_tensor(np.asarray(C, dtype=np.float32) if not isinstance(C, torch.Tensor) else C,
                         dtype=torch.float32).to(device).contiguous()
    k, d = Ct.shape
    square = spec.name == "square"
    searcher = Searcher(Ct, backend) if spec.by_distance else None
    want_sums = with_sums or square
    labels_out = np.empty(len(data), dtype=np.int32) if with_labels else None
    workers = _workers() if searcher is not None and device.type == "cpu" else 1
    if workers > 1:  # equal chunks, as many as a multiple of the workers (none idle at the end), none tiny
        rounds = max(1, -(-len(data) // (workers * chunk_rows)))
        even = -(-len(data) // (workers * rounds))  # <= chunk_rows
        chunk_rows = even if even >= MIN_PARALLEL_ROWS else min(chunk_rows, MIN_PARALLEL_ROWS)
    starts = range(0, len(data), chunk_rows)
    parallel = workers > 1 and len(starts) > 1  # else the one chunk's search uses every core itself

    def chunk(start: int) -> _ChunkTotals:
        stop = min(len(data), start + chunk_rows)
        rows = np.ascontiguousarray(data[start:stop])
        rows32 = rows.astype(np.float32, copy=False)
        X = torch.from_numpy(rows32).to(device)
        if searcher is None:
            labels = L.assign(X, Ct, loss, param)
        else:
            labels = searcher.search(X, threads=1 if parallel else None)[0]
        flat = labels.cpu().numpy()
        out = _ChunkTotals(stop - start, np.bincount(flat, minlength=k))
        if want_sums:  # a bincount per coordinate: exact float64 sums (4x faster than one 2-D bincount)
            out.sums = np.empty((k, d), dtype=np.float64)
            for j in range(d):
                out.sums[:, j] = np.bincount(flat, weights=rows[:, j], minlength=k)
        if square:  # integer rows of d <= 256 bytes: each row's float32 sum of squares is exact (< 2^24)
            exact32 = rows.dtype in (np.uint8, np.int8) and d <= 256
            out.x_sq = float(np.einsum("ij,ij->i", rows32, rows32).sum(dtype=np.float64)) if exact32 else \
                float(np.einsum("ij,ij->", rows32.astype(np.float64), rows32.astype(np.float64)))
        else:
            residual = X - L.rows_of(Ct, labels.to(device))
            errors = (residual * residual).sum(1)
            out.sq_error = float(errors.double().sum())
            out.loss_total = float(spec.pointwise(residual, param).double().sum())
            del residual
        if labels_out is not None:
            labels_out[start:stop] = flat
        return out

    counts = np.zeros(k, dtype=np.int64)
    sums = np.zeros((k, d), dtype=np.float64) if want_sums else None
    x_sq = sq_error = loss_total = 0.0
    for part in _in_order(chunk, starts, workers if parallel else 1):
        counts += part.counts
        if sums is not None:
            sums += part.sums
        x_sq, sq_error, loss_total = x_sq + part.x_sq, sq_error + part.sq_error, loss_total + part.loss_total
        if progress is not None:
            progress(part.rows)
    if square:
        C64 = Ct.double().cpu().numpy()
        sq_error = max(0.0, x_sq - 2.0 * float((C64 * sums).sum()) + float((counts * (C64 * C64).sum(1)).sum()))
        loss_total = sq_error
    return PassResult(counts, sq_error, loss_total, sums if with_sums else None, labels_out, len(data))


@dataclass
class _ChunkTotals:
    rows: int
    counts: np.ndarray
    sums: np.ndarray | None = None
    x_sq: float = 0.0
    sq_error: float = 0.0
    loss_total: float = 0.0


def _in_order(work: Callable, items, workers: int):
    """work(item) for every item, yielded in the items' order; with several workers, in
    parallel threads (each on one torch thread), at most 2 * workers items in flight so
    that finished results never pile up in memory."""
    if workers <= 1:
        yield from map(work, items)
        return
    from collections import deque

    pending: deque = deque()
    try:
        with one_torch_thread():
            for item in items:
                pending.append(_pool(workers).submit(work, item))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:  # an error (or an interrupt) stops the chunks not yet started
        for future in pending:
            future.cancel()


def split_empty(C: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, int]:
    """Give every empty cluster half of the currently largest one (faiss's rule): both get its
    center nudged apart by SPLIT_EPS in alternating directions. Returns (centers, splits)."""
    C, counts = C.copy(), counts.astype(np.float64).copy()
    empty = np.flatnonzero(counts == 0)
    signs = np.where(np.arange(C.shape[1]) % 2 == 0, 1.0, -1.0)
    for j in empty:
        big = int(np.argmax(counts))
        if counts[big] < 2:
            break
        C[j] = C[big] * (1 + SPLIT_EPS * signs)
        C[big] = C[big] * (1 - SPLIT_EPS * signs)
        counts[j] = counts[big] = counts[big] / 2
    return C, len(empty)


@dataclass
class LloydResult:
    centers: np.ndarray  # (k, d) float32
    iterations: int
    history: list[float]  # the MSE of the assignment of each iteration
    converged: bool


def lloyd(data: np.ndarray, C0: np.ndarray, *, max_iter: int = 25, tol: float = 0.0, backend: str = "torch",
          device: torch.device | str = "cpu", chunk_rows: int = CHUNK_ROWS,
          on_iteration: Callable[[int, float], None] | None = None) -> LloydResult:
    """Square-loss Lloyd on `data` from C0, each iteration one full pass (assign, then means):
    stops after `max_iter` iterations, or when no label changes, or when the MSE falls by
    less than `tol` (relative) in one iteration."""
    C = np.asarray(C0, dtype=np.float32).copy()
    history: list[float] = []
    previous = None
    converged = False
    iteration = 0
    for iteration in range(1, max_iter + 1):
        result = full_pass(data, C, "square", None, backend=backend, device=device, with_sums=True,
                           with_labels=True, chunk_rows=chunk_rows)
        history.append(result.sq_error / (len(data) * C.shape[1]))
        if on_iteration is not None:
            on_iteration(iteration, history[-1])
        means = result.sums / np.maximum(result.counts, 1)[:, None]
        C_new = np.where(result.counts[:, None] > 0, means, C).astype(np.float32)
        C_new, _ = split_empty(C_new, result.counts)
        stable = previous is not None and np.array_equal(previous, result.labels)
        small = len(history) > 1 and history[-2] - history[-1] <= tol * max(history[-2], 1e-300)
        C, previous = C_new, result.labels
        if stable or small:
            converged = True
            break
    return LloydResult(C, iteration, history, converged)


def nearest_reference(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    """The nearest center of every row in float64, by brute force (for tests, small inputs)."""
    X64, C64 = np.asarray(X, np.float64), np.asarray(C, np.float64)
    return ((X64[:, None, :] - C64[None, :, :]) ** 2).sum(-1).argmin(1)
