"""The generalized k-means engine: k-means++ seeding, assign, update, restarts.

    model = GeneralizedKMeans(n_clusters=8, loss="huber").fit(X, sample_weight=None)
    model.labels_, model.cluster_centers_, model.objective_, model.n_iter_, model.params_
    model.predict(X), model.transform(X), model.score(X), model.get_params()

Each outer iteration assigns every point to its cheapest center (`losses.assign`) and
moves every center to (or towards) the minimiser of its members' loss
(`losses.update_centers`); both steps never raise the objective, so the loop stops when
labels stop changing or the objective's relative change falls below `tol`. `n_init`
seeded restarts run and the lowest objective wins; the same seed gives the same result.
On small problems the restarts run as one batched computation (`BATCH_MAX_ELEMENTS`), on
one CPU thread (`ONE_THREAD_MAX_ELEMENTS`): there the time is per-operation overhead.
Computation is float32 on the chosen device (CUDA when available), sums in float64.
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import functools
import hashlib
import inspect
import math
import os
import sys
import textwrap
from collections.abc import Callable

import numpy as np
import torch

from . import losses as L
from .losses import LossInputError
from .threads import one_torch_thread

# Restarts run as one batched computation while their stacked copies of X hold at most
# this many values (400 x 64 with 4 restarts: 102,400); larger problems run them in turn.
BATCH_MAX_ELEMENTS = 2**21
# Problems up to this many values (2000 x 512) run on one CPU thread (see `_threads_for`):
# on the shared 2-core development machine under load, same-start fits of 2000 x 512,
# k = 5 took 1.4x to 10x longer on two threads than on one (74 vs 347 ms for huber).
ONE_THREAD_MAX_ELEMENTS = 2**20
# Large problems train on a random sample, then finish on every point (`_fit_sampled`):
# SAMPLE_PER_CLUSTER rows per center (faiss's default, 256), at least SAMPLE_MIN_ROWS;
# the sampled path runs when the data holds at least twice the sample (and `exact` is off).
SAMPLE_PER_CLUSTER = 256
SAMPLE_MIN_ROWS = 10_000
# Full-data steps after the sample fit: at most FULL_STEPS, stopping once the objective's
# relative change falls below FULL_TOL (each step is one assignment pass over all points).
FULL_STEPS = 5
FULL_TOL = 1e-4
# In those steps a loss without a GEMM form (absolute, huber, pseudo_huber) compares each
# point with its NEAR_CANDIDATES nearest centers by Euclidean distance and its own (where
# k > 2 x NEAR_CANDIDATES); the last assignment compares it with every center.
NEAR_CANDIDATES = 8
# The chosen loss runs on the sample from this many of the square restarts' centers (the
# best first): from one, 50,000 x 512, k = 20 ended 1% (huber, absolute) to 2.4%
# (epsilon_insensitive) above the exact fit's objective; from four, within 0.15%
# (`make bench-cluster`, part 5; docs/BENCHMARKS.md).
SAMPLE_ROBUST_RUNS = 4


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(name: str | torch.device, prefer_mps: bool = False) -> torch.device:
    """auto: CUDA when torch sees a GPU, then (with `prefer_mps`, as extraction wants) Apple
    MPS, else CPU; clustering leaves MPS to an explicit choice since it has no float64.
    An explicit device must exist."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if prefer_mps and _mps_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LossInputError("device 'cuda': no CUDA GPU is visible to torch; use device auto or cpu")
    if name == "mps" and not _mps_available():
        raise LossInputError("device 'mps': Apple MPS is not available here; use device auto or cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise LossInputError(f"device must be auto, cpu, cuda or mps; got {name!r}")
    return torch.device(name)


class TooFewDistinctError(LossInputError):
    """k-means++ ran out of new points: fewer distinct rows (of positive weight) than k."""


class NotFittedError(LossInputError, AttributeError):
    """predict, transform or score before fit (a ValueError and an AttributeError, as scikit-learn's)."""


def _check_k(n_clusters, n_rows: int) -> None:
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or n_clusters < 1:
        raise LossInputError(f"n_clusters (k) must be an integer >= 1; got {n_clusters!r}")
    if n_clusters > n_rows:
        raise LossInputError(f"n_clusters (k) = {n_clusters} is larger than the {n_rows} points")
    # Fewer distinct rows than k is caught by k-means++ (it runs out of new points),
    # which costs nothing, unlike sorting every row here.


def _refuse_bad_rows(bad_rows: np.ndarray, n: int) -> None:
    if len(bad_rows):
        raise LossInputError(f"{len(bad_rows)} of {n} feature rows contain NaN or Inf (first: row "
                             f"{bad_rows[0]}); drop or fix them before clustering")


def validate_features(X, n_clusters: int | None = None) -> np.ndarray:
    """Check a feature matrix and return it as a C-contiguous float32 array.

    Errors name the problem: not 2-D, empty, NaN/Inf rows (how many, which first),
    k < 1 or larger than the number of rows (`kmeans_plus_plus` catches k larger than
    the number of distinct rows). (`GeneralizedKMeans` checks a torch tensor where it
    lies, with `validate_tensor`.)
    """
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = np.asarray(X)
    _check_shape(X.shape, X.ndim)
    if not np.issubdtype(X.dtype, np.number) or np.iscomplexobj(X):
        raise LossInputError(f"features must be real numbers; got dtype {X.dtype}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    _refuse_bad_rows(np.flatnonzero(~np.isfinite(X).all(axis=1)), X.shape[0])
    if n_clusters is not None:
        _check_k(n_clusters, X.shape[0])
    return X


def _check_shape(shape, ndim: int) -> None:
    if ndim != 2:
        raise LossInputError(f"features must be a 2-D matrix (n points x d dimensions); got shape {tuple(shape)}")
    if shape[0] == 0 or shape[1] == 0:
        raise LossInputError(f"features matrix is empty (shape {tuple(shape)}); nothing to cluster")


def validate_tensor(X: torch.Tensor, device: torch.device, n_clusters: int | None = None) -> torch.Tensor:
    """`validate_features` for a torch tensor, on `device` (no copy through the CPU):
    a contiguous float32 tensor, or the same errors."""
    _check_shape(X.shape, X.dim())
    if X.is_complex() or X.dtype == torch.bool:
        raise LossInputError(f"features must be real numbers; got dtype {X.dtype}")
    X = X.detach().to(device=device, dtype=torch.float32).contiguous()
    bad = ~torch.isfinite(X).all(1)
    if bool(bad.any()):
        _refuse_bad_rows(torch.nonzero(bad).flatten().cpu().numpy(), X.shape[0])
    if n_clusters is not None:
        _check_k(n_clusters, X.shape[0])
    return X


def validate_sample_weight(sample_weight, n: int, device: torch.device) -> torch.Tensor | None:
    """None, or n finite weights >= 0 with a positive sum, as float64 on `device`."""
    if sample_weight is None:
        return None
    if isinstance(sample_weight, torch.Tensor):
        w = sample_weight.detach().to(device=device, dtype=torch.float64)
    else:
        w = torch.as_tensor(np.asarray(sample_weight, dtype=np.float64), device=device)
    if w.shape != (n,):
        raise LossInputError(f"sample_weight must hold one weight per point ({n}); got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not float(w.sum()) > 0:
        raise LossInputError("sample_weight must be finite and >= 0, with a positive sum")
    return w.contiguous()


def kmeans_plus_plus(X: torch.Tensor, k: int, rng: np.random.Generator, trials: int | None = None,
                     sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy k-means++ seeding on squared distance (as scikit-learn): indices of k rows.

    Each new center is the best of `trials` (default 2 + log k) candidates drawn with
    probability proportional to the (weighted) squared distance to the nearest chosen
    center; the best candidate leaves the smallest (weighted) sum of those distances.
    With `sample_weight` the first center is drawn with probability proportional to the
    weight, and a point of weight 0 is never chosen.
    """
    return kmeans_plus_plus_batch(X, k, [rng], trials, sample_weight)[0]


def kmeans_plus_plus_batch(X: torch.Tensor, k: int, rngs: list[np.random.Generator], trials: int | None = None,
                           sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """`kmeans_plus_plus` for several generators at once (one seeding per restart): (len(rngs), k)
    indices. The seedings are computed together, one set of tensor operations per new center
    for all of them, and each seeding draws from its own generator exactly what it would alone."""
    n, runs, device = X.shape[0], len(rngs), X.device
    trials = trials or 2 + int(math.log(k))
    x_sq = L.row_sq_norms(X)
    w = sample_weight
    if w is None:
        first = torch.tensor([int(rng.integers(n)) for rng in rngs], dtype=torch.int64, device=device)
    else:
        cumulative_w = torch.cumsum(w, 0)
        u = torch.as_tensor([rng.random() for rng in rngs], dtype=torch.float64, device=device) * cumulative_w[-1]
        first = torch.searchsorted(cumulative_w, u, right=True).clamp(max=n - 1)
    chosen = [first]
    # closest[r]: each point's squared distance to the nearest center seeding r has chosen
    closest = (x_sq[None, :] - 2 * X[first] @ X.T + x_sq[first][:, None]).clamp(min=0).double()
    totals = []
    rows = torch.arange(runs, device=device)
    for _ in range(1, k):
        cumulative = torch.cumsum(closest if w is None else closest * w, 1)
        total = cumulative[:, -1:]
        totals.append(total)  # checked once at the end (0: every point sits on a chosen center)
        u = torch.as_tensor(np.stack([rng.random(trials) for rng in rngs]), dtype=torch.float64, device=device) * total
        candidates = torch.searchsorted(cumulative, u, right=True).clamp(max=n - 1)  # (runs, trials)
        flat = candidates.reshape(-1)
        d2 = (x_sq[None, :] - 2 * X[flat] @ X.T + x_sq[flat][:, None]).clamp(min=0).double()
        options = torch.minimum(closest[:, None, :], d2.view(runs, trials, n))
        best = (options.sum(2) if w is None else options @ w).argmin(1)
        chosen.append(candidates[rows, best])
        closest = options[rows, best]
    if totals:
        empty = (torch.cat(totals, 1) <= 0).cpu().numpy()
        if empty.any():
            distinct = int(np.argmax(empty.any(0))) + 1
            raise TooFewDistinctError(f"n_clusters (k) = {k} is larger than the {distinct} distinct points"
                                      f"{'' if w is None else ' of positive weight'}; choose a smaller k")
    return torch.stack(chosen, 1)


def _code_text(obj) -> str:
    """The code of a module, class or function, without comments, docstrings or layout
    (its AST), so that editing prose never invalidates a cache; the raw source where it
    does not parse alone (a lambda), the bytecode where there is no source."""
    try:
        source = textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):
        code = getattr(getattr(obj, "__func__", obj), "__code__", None)
        return repr((code.co_code, code.co_consts, code.co_names)) if code is not None else repr(obj)
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


@functools.lru_cache(maxsize=8)
def _module_text_at(name: str, mtime_ns: int) -> str:
    return _code_text(sys.modules[name])


def _module_text(name: str) -> str:
    """A module's code text, parsed once per version of its file."""
    return _module_text_at(name, os.stat(sys.modules[name].__file__).st_mtime_ns)


def engine_fingerprint(loss: str) -> str:
    """A digest of everything that decides `loss`'s clustering numerics: the code of the
    engine (this module and pipeline.losses), of the loss's class and its bases, of the
    methods the registered instance actually has (a patched method counts) and its
    settings. The cluster stage keys its cache on it: change the math, the cache refits."""
    spec = L.get_loss(loss)
    digest = hashlib.sha256()
    parts = [_module_text(__name__), _module_text(L.__name__)]
    parts += [_code_text(klass) for klass in type(spec).__mro__ if klass not in (L.Loss, object)]
    parts += [_code_text(getattr(spec, name)) for name in L.Loss.METHODS]
    parts.append(repr([(name, getattr(spec, name)) for name in L.Loss.SETTINGS]))
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def auto_param_at(X: torch.Tensor, k: int, loss: str, seed: int = 0) -> float | None:
    """The parameter `param="auto"` gives `loss` at k clusters on X (None for square/absolute)."""
    model = GeneralizedKMeans(k, loss, n_init=1, seed=seed, device=X.device)
    starts = _Starts(X, k, None, [np.random.default_rng([seed, 0])], None)
    return model._resolve_param(X, None, lambda: model._short_square_fit(X, None, starts))


def sample_size(n_rows: int, k: int) -> int:
    """How many rows the sampled path trains on for k clusters (all of them when fewer)."""
    return min(n_rows, max(SAMPLE_MIN_ROWS, SAMPLE_PER_CLUSTER * k))


def uses_sample(n_rows: int, k: int, exact: bool = False) -> bool:
    """Whether `fit` takes the sampled path: not `exact`, and at least twice the sample."""
    return not exact and n_rows >= 2 * sample_size(n_rows, k)


def _is_tensor(X) -> bool:
    return isinstance(X, torch.Tensor)


class GeneralizedKMeans:
    """k-means under any registered loss of `pipeline.losses`, shaped like a scikit-learn
    estimator (get_params/set_params, fit/predict/transform/score; no scikit-learn needed).

    Parameters (stored as given; checked by `fit`)
    ----------
    n_clusters : k >= 1.
    loss : a registered loss name: square | absolute | huber | pseudo_huber | correntropy |
        epsilon_insensitive, or one added with `losses.register`.
    param : the loss's parameter (delta, sigma, epsilon...): a positive number, or "auto"
        (default) to derive it from the data's scale (the loss's `auto_rule` on the
        residuals of a square-loss fit). Ignored by losses without one. A number outside
        the loss's usable range for the data's scale (1e-4 to 1e4 times
        `losses.data_scale`) is refused with `losses.ParamScaleError`; auto values are
        kept inside that range.
    init : "k-means++" (default) or a (k, d) array or tensor of initial centers (then n_init = 1).
    n_init, max_iter, tol : restarts, outer iterations per restart, relative objective
        change that counts as converged.
    seed, random_state : the random seed (random_state, scikit-learn's name, wins when set).
    device : torch device; "auto" is the device of a tensor X, else CUDA when available, else CPU.
    inner_steps : majorize-minimize steps per center update (default per loss).
    exact : False (default): above twice `sample_size(n, k)` rows, fit on a random sample
        and finish with a few steps on every point (`_fit_sampled`); True: every restart
        and iteration on all points, at any size.
    on_iteration : called as on_iteration(iteration, objective) after every outer
        iteration of every restart (for progress bars).
    on_phase : called as on_phase(phase, iterations) when a phase of the fit starts:
        "fit" (the whole-data algorithm; at most n_init * max_iter iterations), or
        "sample" (its fit of the sample) then "full" (at most FULL_STEPS steps on all points).

    After `fit`: labels_ (n,), cluster_centers_ (k, d) float32 (NumPy arrays), objective_
    (the weighted sum of each point's loss to its center; inertia_ is the same number),
    objective_history_ (the objective after each iteration of the winning restart), n_iter_,
    converged_, params_ ({parameter name: value used}), n_features_in_, device_, algorithm_
    ("exact" or "sampled"), sample_size_ (rows the restarts ran on), full_steps_ (the sampled
    path's steps on all points; 0 for exact).
    X may be a NumPy array or a torch tensor on any device: a tensor is clustered where it
    lies, and predict/transform/fit_predict then answer with tensors on its device.
    """

    def __init__(self, n_clusters: int = 8, loss: str = "square", param: float | str | None = "auto", *,
                 init="k-means++", n_init: int = 4, max_iter: int = 100, tol: float = 1e-6, seed: int = 0,
                 device: str | torch.device = "auto", inner_steps: int | None = None,
                 on_iteration: Callable[[int, float], None] | None = None, random_state: int | None = None,
                 exact: bool = False, on_phase: Callable[[str, int], None] | None = None):
        self.n_clusters, self.loss, self.param, self.init = n_clusters, loss, param, init
        self.n_init, self.max_iter, self.tol, self.seed = n_init, max_iter, tol, seed
        self.device, self.inner_steps, self.on_iteration = device, inner_steps, on_iteration
        self.random_state, self.exact, self.on_phase = random_state, exact, on_phase

    # ------------------------------------------------------------------ scikit-learn protocol

    @classmethod
    def _param_names(cls) -> list[str]:
        return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's arguments as stored (scikit-learn's clone relies on this)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> "GeneralizedKMeans":
        """Set constructor arguments by name (checked by the next fit); returns self."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise LossInputError(f"invalid parameter {name!r} for GeneralizedKMeans; valid: {', '.join(valid)}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = type(self)().get_params()
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if not _same(v, defaults[k])]
        return f"GeneralizedKMeans({', '.join(changed)})"

    # ------------------------------------------------------------------ public API

    def fit(self, X, y=None, sample_weight=None) -> "GeneralizedKMeans":
        """Cluster X (n, d); `y` is ignored; `sample_weight` (n,) weights each point's loss."""
        self._check_settings()
        keep_freed_memory()
        Xt, device = self._input(X, self.n_clusters)
        weight = validate_sample_weight(sample_weight, Xt.shape[0], device)
        explicit = self._explicit_init(Xt)
        runs = 1 if explicit is not None else self.n_init
        starts = _Starts(Xt, self.n_clusters, explicit, [np.random.default_rng([self._seed(), run])
                                                          for run in range(runs)], weight)
        sampled = explicit is None and uses_sample(Xt.shape[0], self.n_clusters, self.exact)
        with _threads_for(Xt):
            if sampled:
                try:
                    best, param, sample_rows, full_steps = self._fit_sampled(Xt, weight, runs)
                except TooFewDistinctError:  # the sample missed rare rows the whole data has: fit it all
                    sampled = False
            if not sampled:
                self._phase("fit", runs * self.max_iter)
                param = self._resolve_param(Xt, weight, lambda: self._short_square_fit(Xt, weight, starts))
                best = self._polish(Xt, self._restarts(Xt, starts(), param, weight), param, weight)
                sample_rows, full_steps = Xt.shape[0], 0
            labels, centers, objective, n_iter, converged, history = best
        self._check_filled(labels, objective)
        spec = L.get_loss(self.loss)
        self._centers, self._fitted_loss = centers, spec.name  # set_params(loss=...) needs a new fit
        self.labels_ = labels.cpu().numpy()
        self.cluster_centers_ = centers.cpu().numpy()
        self.objective_ = self.inertia_ = float(objective)
        self.objective_history_ = list(history)
        self.n_iter_ = int(n_iter)
        self.converged_ = bool(converged)
        self.params_ = {spec.param_name: float(param)} if spec.param_name is not None else {}
        self.n_features_in_ = int(Xt.shape[1])
        self.device_ = device
        self.algorithm_ = "sampled" if sampled else "exact"
        self.sample_size_, self.full_steps_ = int(sample_rows), int(full_steps)
        return self

    def fit_predict(self, X, y=None, sample_weight=None):
        """fit, then the labels (a tensor on X's device when X is a tensor)."""
        self.fit(X, sample_weight=sample_weight)
        return torch.from_numpy(self.labels_).to(X.device) if _is_tensor(X) else self.labels_

    def predict(self, X):
        """Index of the cheapest center for every row of X."""
        Xt = self._fitted_input(X, "predict")
        labels = L.assign(Xt, self._centers, self._fitted_loss, self._param_value())
        return self._answer(labels, X)

    def transform(self, X):
        """(n, k): the loss of every row of X to every center."""
        Xt = self._fitted_input(X, "transform")
        return self._answer(L.cost_matrix(Xt, self._centers, self._fitted_loss, self._param_value()), X)

    def score(self, X, y=None, sample_weight=None) -> float:
        """Minus the objective of X under the fitted centers (each row on its cheapest
        center; weighted by `sample_weight`): larger is better, as scikit-learn's."""
        Xt = self._fitted_input(X, "score")
        weight = validate_sample_weight(sample_weight, Xt.shape[0], Xt.device)
        loss, param = self._fitted_loss, self._param_value()
        labels = L.assign(Xt, self._centers, loss, param)
        per_point = L.loss_to_centers(Xt, self._centers, labels, loss, param).double()
        return -float(per_point.sum() if weight is None else (per_point * weight).sum())

    def loss_to_center(self, X) -> np.ndarray:
        """Each row's loss to the center it is assigned to (float64 NumPy array)."""
        Xt = self._fitted_input(X, "loss_to_center")
        loss, param = self._fitted_loss, self._param_value()
        labels = L.assign(Xt, self._centers, loss, param)
        return L.loss_to_centers(Xt, self._centers, labels, loss, param).double().cpu().numpy()

    # ------------------------------------------------------------------ input and settings

    def _seed(self):
        return self.seed if self.random_state is None else self.random_state

    def _check_settings(self) -> None:
        spec = L.get_loss(self.loss)
        for name, value, low in (("n_init", self.n_init, 1), ("max_iter", self.max_iter, 1)):
            if not _integer_at_least(value, low):
                raise LossInputError(f"{name} must be an integer >= {low}; got {value!r}")
        if not (isinstance(self.tol, (int, float)) and not isinstance(self.tol, bool)
                and math.isfinite(self.tol) and self.tol >= 0):
            raise LossInputError(f"tol must be a finite number >= 0; got {self.tol!r}")
        if self.inner_steps is not None and not _integer_at_least(self.inner_steps, 1):
            raise LossInputError(f"inner_steps must be None or an integer >= 1; got {self.inner_steps!r}")
        if not isinstance(self.exact, (bool, np.bool_)):
            raise LossInputError(f"exact must be True or False; got {self.exact!r}")
        if not _integer_at_least(self._seed(), 0):
            raise LossInputError(f"seed (random_state) must be an integer >= 0; got {self._seed()!r}")
        if spec.param_name is not None and self.param != "auto":
            L.validate_param(spec.name, self.param)

    def _input(self, X, n_clusters=None) -> tuple[torch.Tensor, torch.device]:
        """X as a float32 tensor on the device it will be clustered on, checked."""
        if _is_tensor(X):
            device = X.device if self.device == "auto" else resolve_device(self.device)
            return validate_tensor(X, device, n_clusters), device
        device = resolve_device(self.device)
        return torch.from_numpy(validate_features(X, n_clusters)).to(device), device

    def _fitted_input(self, X, action: str) -> torch.Tensor:
        if not hasattr(self, "_centers"):
            raise NotFittedError(f"this GeneralizedKMeans is not fitted yet: call fit(X) before {action}()")
        Xt = validate_tensor(X, self.device_) if _is_tensor(X) else \
            torch.from_numpy(validate_features(X)).to(self.device_)
        if Xt.shape[1] != self.n_features_in_:
            raise LossInputError(f"X has {Xt.shape[1]} dimensions, the model was fitted on {self.n_features_in_}")
        return Xt

    @staticmethod
    def _answer(result: torch.Tensor, X):
        """A tensor on X's device for tensor input, else a NumPy array."""
        return result.to(X.device) if _is_tensor(X) else result.cpu().numpy()

    # ------------------------------------------------------------------ internals

    def _param_value(self) -> float | None:
        return next(iter(self.params_.values())) if self.params_ else None

    def _explicit_init(self, X: torch.Tensor) -> torch.Tensor | None:
        if isinstance(self.init, str):
            if self.init != "k-means++":
                raise LossInputError(f"init must be 'k-means++' or a (k, d) array of centers; got {self.init!r}")
            return None
        if _is_tensor(self.init):
            C0 = self.init.detach().to(device=X.device, dtype=torch.float32).contiguous()
        else:
            C0 = torch.from_numpy(np.ascontiguousarray(np.asarray(self.init, dtype=np.float32))).to(X.device)
        if tuple(C0.shape) != (self.n_clusters, X.shape[1]) or not bool(torch.isfinite(C0).all()):
            raise LossInputError(f"init array must be finite with shape ({self.n_clusters}, {X.shape[1]}); "
                                 f"got {tuple(C0.shape)}")
        return C0

    def _resolve_param(self, X: torch.Tensor, weight: torch.Tensor | None, square_fit) -> float | None:
        """The loss's parameter on X: the given one checked against the data's scale, or
        `auto` from the residuals of a square-loss fit of X; `square_fit()` gives that
        fit's (labels, centers), and is called only for `auto`."""
        spec = L.get_loss(self.loss)
        if spec.param_name is None:
            return None
        scale = L.data_scale(X, spec.name, sample_weight=weight)
        if self.param != "auto":
            return L.check_param_scale(spec.name, L.validate_param(spec.name, self.param), scale)
        labels, centers = square_fit()
        return L.clamp_to_range(L.auto_param(X, centers, labels, spec.name, weight), scale, spec.name)

    def _short_square_fit(self, X: torch.Tensor, weight: torch.Tensor | None, starts: "_Starts"):
        """The exact path's square-loss fit for the auto parameter: at most 20 iterations from
        the first restart's start. Returns (labels, centers)."""
        labels, centers, *_ = self._lloyd(X, starts()[:1], None, loss="square", max_iter=min(self.max_iter, 20),
                                          weight=weight)
        return labels, centers

    def _reseed_empty(self, X, C, labels, loss, param, weight=None) -> torch.Tensor:
        """Empty clusters move to the points with the largest loss to their center.

        Ties (a saturated or flat loss gives many points the same cost) go to the point
        farthest from its center, so a new center never lands on an old one. Points of
        weight 0 come last.
        """
        counts = torch.bincount(labels, minlength=C.shape[0])
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty) == 0:
            return C
        cost = L.loss_to_centers(X, C, labels, loss, param)
        distance = L.loss_to_centers(X, C, labels, "square", None)
        if weight is not None:
            cost, distance = (torch.where(weight > 0, v, torch.full_like(v, -1.0)) for v in (cost, distance))
        by_distance = torch.argsort(distance, descending=True, stable=True)
        order = by_distance[torch.argsort(cost[by_distance], descending=True, stable=True)]
        C = C.clone()
        C[empty] = X[order[:len(empty)]]
        return C

    def _check_filled(self, labels: torch.Tensor, objective: float) -> None:
        """A fit with an empty cluster or a NaN objective must not pass for a result."""
        empty = int((torch.bincount(labels, minlength=self.n_clusters) == 0).sum())
        if empty:
            raise LossInputError(f"{self.loss}: {empty} of the k={self.n_clusters} clusters stayed empty "
                                 "(too few distinct points for k, or every point costs the same to every "
                                 "center); choose a smaller k or another parameter")
        if not math.isfinite(objective):
            raise LossInputError(f"{self.loss}: the objective is {objective} (the loss overflowed on these "
                                 "features); use param auto or rescale the features")

    @staticmethod
    def _totals(cost: torch.Tensor, weight: torch.Tensor | None) -> list[float]:
        """The objective of each restart from its rows' costs (runs, n)."""
        return (cost.double().sum(1) if weight is None else cost.double() @ weight).tolist()

    def _total(self, cost: torch.Tensor, weight: torch.Tensor | None) -> float:
        return self._totals(cost[None], weight)[0]

    def _lloyd(self, X, starts, param, loss=None, max_iter=None, weight=None):
        """Restarts from the centers `starts` (runs, k, d), computed together as one clustering
        of runs * k centers over `runs` copies of X (assignment picks the cheapest center
        within each restart's block); a restart that meets its stopping test leaves the
        batch, the others go on. Returns the best restart's (labels, centers, objective,
        iterations, converged, history): the lowest objective, the first on ties."""
        loss = loss or self.loss
        spec = L.get_loss(loss)
        max_iter = max_iter or self.max_iter
        runs, k, d = starts.shape
        n = X.shape[0]
        # the copies of X are all the same: the first m of them serve a batch of m restarts
        stacked = X if runs == 1 else X.repeat(runs, 1)
        stacked_weight = weight if weight is None or runs == 1 else weight.repeat(runs)
        C = starts.reshape(runs * k, d)
        # The loop tracks the objective from the assignment pass itself (free); the exact
        # value (no GEMM rounding) is computed once at the end.
        # squared norms for the GEMM-based assignments, computed once for the whole loop
        x_sq = L.row_sq_norms(X) if spec.by_distance else None
        labels, cost = self._assign_runs(X, C, loss, param, x_sq, runs)
        objective = self._totals(cost, weight)
        converged, n_iter, history = [False] * runs, [0] * runs, [[] for _ in range(runs)]
        finals: list = [None] * runs  # (labels, centers) of each restart when it stops
        ids = list(range(runs))  # the restarts still in the batch, in its order
        live_progress = self.on_iteration is not None and loss == self.loss and runs == 1
        for iteration in range(1, max_iter + 1):
            m = len(ids)
            C = self._reseed_runs(X, C, labels, loss, param, weight, m)
            C = L.update_centers(stacked[:m * n], labels, C, loss, param, steps=self.inner_steps,
                                 sample_weight=None if weight is None else stacked_weight[:m * n])
            new_labels, cost = self._assign_runs(X, C, loss, param, x_sq, m)
            new_objective = self._totals(cost, weight)
            stable = (new_labels.view(m, n) == labels.view(m, n)).all(1).tolist()
            labels = new_labels
            stay = []
            for j, run in enumerate(ids):
                change = abs(objective[run] - new_objective[j]) / max(abs(objective[run]), 1e-300)
                objective[run] = new_objective[j]
                n_iter[run] = iteration
                history[run].append(objective[run])
                if live_progress:
                    self.on_iteration(iteration, objective[run])
                if stable[j] and (change <= self.tol or spec.exact_update):
                    converged[run] = True  # exact updates: same labels means the same centers next time
                    finals[run] = (labels[j * n:(j + 1) * n] - j * k, C[j * k:(j + 1) * k])
                else:
                    stay.append(j)
            if not stay:
                break
            if len(stay) < m:  # drop the finished restarts from the batch
                keep = torch.tensor(stay, device=X.device)
                shift = (torch.arange(len(stay), device=X.device) - keep) * k
                labels = (labels.view(m, n)[keep] + shift[:, None]).reshape(-1)
                C = C.view(m, k, d)[keep].reshape(-1, d)
                ids = [ids[j] for j in stay]
        else:  # max_iter reached: the restarts still in the batch stop where they are
            for j, run in enumerate(ids):
                finals[run] = (labels[j * n:(j + 1) * n] - j * k, C[j * k:(j + 1) * k])
        offsets = torch.arange(runs, device=X.device).repeat_interleave(n) * k
        all_labels = torch.cat([labels for labels, _ in finals]) + offsets if runs > 1 else finals[0][0]
        all_centers = torch.cat([centers for _, centers in finals]) if runs > 1 else finals[0][1]
        exact = L.loss_to_centers(stacked, all_centers, all_labels, loss, param).view(runs, n)
        objectives = self._totals(exact, weight)
        if self.on_iteration is not None and loss == self.loss and runs > 1:
            for run in range(runs):  # as if the restarts had run one after the other
                for iteration, value in enumerate(history[run], 1):
                    self.on_iteration(iteration, value)
        best = min(range(runs), key=lambda run: (objectives[run], run))
        return (*finals[best], objectives[best], n_iter[best], converged[best], history[best])

    @staticmethod
    def _assign_runs(X, C, loss, param, x_sq, runs):
        """Labels (runs * n,) into C and costs (runs, n) of every restart's assignment."""
        labels, cost = L.assign(X, C, loss, param, with_cost=True, x_sq=x_sq, groups=runs)
        if runs == 1:
            return labels, cost[None]
        return labels.T.reshape(-1), cost.T

    def _reseed_runs(self, X, C, labels, loss, param, weight, runs):
        """`_reseed_empty` for each restart of the batch that has an empty cluster."""
        if runs == 1:
            return self._reseed_empty(X, C, labels, loss, param, weight)
        k, n = C.shape[0] // runs, X.shape[0]
        empty = (torch.bincount(labels, minlength=C.shape[0]) == 0).view(runs, k).any(1).tolist()
        if not any(empty):
            return C
        C = C.clone()
        for run in range(runs):
            if empty[run]:
                block = slice(run * k, (run + 1) * k)
                C[block] = self._reseed_empty(X, C[block], labels[run * n:(run + 1) * n] - run * k, loss, param,
                                              weight)
        return C

    def _restarts(self, X, starts, param, weight=None, loss=None):
        """The best of the restarts from `starts` (runs, k, d): one batched computation when
        their stacked copies of X are small enough, else one after the other."""
        runs = starts.shape[0]
        if runs > 1 and runs * X.numel() <= BATCH_MAX_ELEMENTS:
            return self._lloyd(X, starts, param, loss=loss, weight=weight)
        best = None
        for run in range(runs):
            result = self._lloyd(X, starts[run:run + 1], param, loss=loss, weight=weight)
            if best is None or result[2] < best[2]:
                best = result
        return best

    def _phase(self, name: str, iterations: int) -> None:
        if self.on_phase is not None:
            self.on_phase(name, iterations)

    def _fit_sampled(self, X, weight, runs):
        """The sampled path for large X: restarts on a random sample, then a few steps on all points.

        1. A uniform random sample of `sample_size(n, k)` rows (weights kept).
        2. On the sample: the square loss from `runs` k-means++ seedings (cheap: one GEMM
           per pass), ranked by their objective on all points; the auto parameter from the
           best one's residuals; then the chosen loss from each of the best
           SAMPLE_ROBUST_RUNS of them (warm starts, to convergence), the lowest objective on
           the sample kept and polished where the loss has a polish.
        3. On every point: at most FULL_STEPS update-and-assign steps from the sample's
           centers (`_steps_on_all`); the labels are the last full assignment's, so every
           point sits on its cheapest center.
        Returns (the full-data result, param, sample rows, full steps)."""
        n, k = X.shape[0], self.n_clusters
        m = sample_size(n, k)
        rng = np.random.default_rng([self._seed(), runs, 7919])  # its own stream, apart from the seedings'
        rows = torch.from_numpy(np.sort(rng.choice(n, m, replace=False))).to(X.device)
        S, w = X[rows], None if weight is None else weight[rows]
        spec = L.get_loss(self.loss)
        # progress counts the loss's own iterations: every restart's for square, else the one run's
        self._phase("sample", (runs if spec.name == "square" else 1) * self.max_iter)
        seeds = [np.random.default_rng([self._seed(), run]) for run in range(runs)]
        starts = S[kmeans_plus_plus_batch(S, k, seeds, sample_weight=w)]
        # each restart fitted on the sample, the best chosen on all points (one GEMM pass each):
        # the sample's own objective picks poorly where a few outliers sway it
        squares = [self._lloyd(S, starts[run:run + 1], None, loss="square", weight=w) for run in range(runs)]
        totals = [self._total(L.assign(X, result[1], "square", None, with_cost=True)[1], weight) for result in squares]
        order = sorted(range(runs), key=lambda run: (totals[run], run))
        square = squares[order[0]]
        param = self._resolve_param(S, w, lambda: square[:2])
        fitted = square
        if spec.name != "square":  # from the best square fits, the lowest objective on the sample wins
            fitted = min((self._lloyd(S, squares[run][1][None], param, weight=w)
                          for run in order[:SAMPLE_ROBUST_RUNS]), key=lambda result: result[2])
        fitted = self._polish(S, fitted, param, w)  # on the sample: a polish of all points costs minutes
        self._phase("full", FULL_STEPS)
        result = self._steps_on_all(X, fitted[1], param, weight)
        return result, param, m, result[3]

    def _steps_on_all(self, X, C, param, weight):
        """The sampled path's finish: at most FULL_STEPS update-and-assign steps on every point
        from the centers C, until the labels hold or the objective changes by less than
        FULL_TOL. A loss without a GEMM form assigns among each point's nearest centers and
        its own (`losses.assign_among_nearest`: never raises the objective, a tenth of the
        cost at k = 100); the final labels then come from one pass over every center."""
        loss, spec, k = self.loss, L.get_loss(self.loss), C.shape[0]
        near = not spec.by_distance and k > 2 * NEAR_CANDIDATES
        x_sq = L.row_sq_norms(X) if spec.by_distance else None

        def assign(current):
            if near:
                return L.assign_among_nearest(X, C, loss, param, NEAR_CANDIDATES, current)
            return L.assign(X, C, loss, param, with_cost=True, x_sq=x_sq)

        labels, cost = assign(None)
        objective, history, converged, steps = self._total(cost, weight), [], False, 0
        for steps in range(1, FULL_STEPS + 1):
            C = self._reseed_empty(X, C, labels, loss, param, weight)
            C = L.update_centers(X, labels, C, loss, param, steps=self.inner_steps, sample_weight=weight)
            new_labels, cost = assign(labels)
            new_objective = self._total(cost, weight)
            change = abs(objective - new_objective) / max(abs(objective), 1e-300)
            stable = bool(torch.equal(new_labels, labels))
            labels, objective = new_labels, new_objective
            history.append(objective)
            if self.on_iteration is not None:
                self.on_iteration(steps, objective)
            if stable or change <= FULL_TOL:
                converged = True
                break
        if near:  # every point on its cheapest center, as the exact algorithm leaves it
            labels = L.assign(X, C, loss, param)
        objective = self._total(L.loss_to_centers(X, C, labels, loss, param), weight)
        return labels, C, objective, steps, converged, history

    def _polish(self, X, result, param, weight=None):
        """Finish the best restart's centers where the loss has a `polish` (epsilon-insensitive)."""
        labels, C, objective, n_iter, converged, history = result
        C = L.get_loss(self.loss).polish(X, labels, C, param, sample_weight=weight)
        if C is None:
            return result
        labels = L.assign(X, C, self.loss, param)
        objective = self._total(L.loss_to_centers(X, C, labels, self.loss, param), weight)
        return labels, C, objective, n_iter, converged, history


class _Starts:
    """The restarts' initial centers (runs, k, d): the explicit init, else one k-means++
    seeding per restart, all computed together on first use (the auto parameter's
    square-loss fit starts from the first restart's)."""

    def __init__(self, X, k, explicit, rngs, weight):
        self._args, self._centers = (X, k, explicit, rngs, weight), None

    def __call__(self) -> torch.Tensor:
        if self._centers is None:
            X, k, explicit, rngs, weight = self._args
            self._centers = explicit[None] if explicit is not None else \
                X[kmeans_plus_plus_batch(X, k, rngs, sample_weight=weight)]
        return self._centers


@contextlib.contextmanager
def _threads_for(X: torch.Tensor):
    """A small problem on the CPU runs on one torch thread (the previous setting comes back
    after): its operations are too small to split, and a second thread costs more in
    synchronisation than it saves, far more when other processes share the cores."""
    small_on_cpu = X.device.type == "cpu" and X.numel() <= ONE_THREAD_MAX_ELEMENTS
    with one_torch_thread() if small_on_cpu else contextlib.nullcontext():
        yield


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Ask glibc's malloc (once per process, Linux only) to keep freed memory for reuse
    instead of handing it back to the kernel: blocks under 32 MB come from the heap, and
    up to 256 MB of free heap stays mapped. Every pass of the engine allocates temporaries
    of a few MB per row chunk; by default glibc maps such blocks fresh and trims the heap
    after them, so each pass pays one page fault per 4 kB touched (about 2 us each on the
    development machine's VM): a 2000 x 512 `loss_to_centers` took 3.6 ms with 900 faults,
    0.8 ms without. Left alone where MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ is
    set (the user's own choice). Returns whether the setting was applied."""
    if not sys.platform.startswith("linux") or \
            any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 * 2**20)) and bool(mallopt(m_trim_threshold, 256 * 2**20))


def _integer_at_least(value, low: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= low


def _same(a, b) -> bool:
    try:
        return bool(a == b) if not isinstance(a, (np.ndarray, torch.Tensor)) else a is b
    except (TypeError, ValueError, RuntimeError):
        return a is b
