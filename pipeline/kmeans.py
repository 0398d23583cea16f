"""The generalized k-means engine: k-means++ seeding, assign, update, restarts.

    model = GeneralizedKMeans(n_clusters=8, loss="huber").fit(X)
    model.labels_, model.cluster_centers_, model.objective_, model.n_iter_, model.params_

Each outer iteration assigns every point to its cheapest center (`losses.assign`) and
moves every center to (or towards) the minimiser of its members' loss
(`losses.update_centers`); both steps never raise the objective, so the loop stops when
labels stop changing or the objective's relative change falls below `tol`. `n_init`
seeded restarts run and the lowest objective wins; the same seed gives the same result.
Computation is float32 on the chosen device (CUDA when available), sums in float64.
"""

from __future__ import annotations

import ast
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
from .losses import PARAM_NAME, LossInputError


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


def validate_features(X, n_clusters: int | None = None) -> np.ndarray:
    """Check a feature matrix and return it as a C-contiguous float32 array.

    Errors name the problem: not 2-D, empty, NaN/Inf rows (how many, which first),
    k < 1 or larger than the number of rows (`kmeans_plus_plus` catches k larger than
    the number of distinct rows).
    """
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = np.asarray(X)
    if X.ndim != 2:
        raise LossInputError(f"features must be a 2-D matrix (n points x d dimensions); got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise LossInputError(f"features matrix is empty (shape {X.shape}); nothing to cluster")
    if not np.issubdtype(X.dtype, np.number) or np.iscomplexobj(X):
        raise LossInputError(f"features must be real numbers; got dtype {X.dtype}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise LossInputError(f"{len(rows)} of {X.shape[0]} feature rows contain NaN or Inf (first: row "
                             f"{rows[0]}); drop or fix them before clustering")
    if n_clusters is not None:
        if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or n_clusters < 1:
            raise LossInputError(f"n_clusters (k) must be an integer >= 1; got {n_clusters!r}")
        if n_clusters > X.shape[0]:
            raise LossInputError(f"n_clusters (k) = {n_clusters} is larger than the {X.shape[0]} points")
        # Fewer distinct rows than k is caught by k-means++ (it runs out of new points),
        # which costs nothing, unlike sorting every row here.
    return X


def kmeans_plus_plus(X: torch.Tensor, k: int, rng: np.random.Generator, trials: int | None = None) -> torch.Tensor:
    """Greedy k-means++ seeding on squared distance (as scikit-learn): indices of k rows.

    Each new center is the best of `trials` (default 2 + log k) candidates drawn with
    probability proportional to the squared distance to the nearest chosen center.
    """
    n = X.shape[0]
    trials = trials or 2 + int(math.log(k))
    x_sq = L.row_sq_norms(X)
    first = int(rng.integers(n))
    chosen = [first]
    closest = (x_sq - 2 * X @ X[first] + x_sq[first]).clamp(min=0).double()
    for _ in range(1, k):
        cumulative = torch.cumsum(closest, 0)
        total = float(cumulative[-1])
        if total <= 0:  # every point sits on one of the distinct centers chosen so far
            raise LossInputError(f"n_clusters (k) = {k} is larger than the {len(chosen)} distinct points; "
                                 "choose a smaller k")
        u = torch.as_tensor(rng.random(trials) * total, dtype=torch.float64, device=X.device)
        candidates = torch.searchsorted(cumulative, u, right=True).clamp(max=n - 1)
        d2 = (x_sq[:, None] - 2 * X @ X[candidates].T + x_sq[candidates][None, :]).clamp(min=0).double()
        options = torch.minimum(closest[:, None], d2)
        best = int(options.sum(0).argmin())
        chosen.append(int(candidates[best]))
        closest = options[:, best]
    return torch.tensor(chosen, dtype=torch.int64, device=X.device)


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
    return GeneralizedKMeans(k, loss, n_init=1, seed=seed, device=X.device)._resolve_param(X, None)


class GeneralizedKMeans:
    """k-means under any of the six losses of `pipeline.losses`.

    Parameters
    ----------
    n_clusters : k >= 1.
    loss : square | absolute | huber | pseudo_huber | correntropy | epsilon_insensitive.
    param : the loss's parameter (delta, sigma or epsilon): a positive number, or "auto"
        (default) to derive it from the data's scale (`losses.auto_param` on the
        residuals of a square-loss fit). Ignored by square and absolute. A number more
        than 1e4 times smaller or larger than the data's scale (`losses.data_scale`) is
        refused with `losses.ParamScaleError`; auto values are kept inside that range.
    init : "k-means++" (default) or a (k, d) array of initial centers (then n_init = 1).
    n_init, max_iter, tol, seed, device : restarts, outer iterations per restart,
        relative objective change that counts as converged, random seed, torch device.
    inner_steps : majorize-minimize steps per center update (default per loss).
    on_iteration : called as on_iteration(iteration, objective) after every outer
        iteration of every restart (for progress bars).
    """

    def __init__(self, n_clusters: int = 8, loss: str = "square", param: float | str | None = "auto", *,
                 init="k-means++", n_init: int = 4, max_iter: int = 100, tol: float = 1e-6, seed: int = 0,
                 device: str | torch.device = "auto", inner_steps: int | None = None,
                 on_iteration: Callable[[int, float], None] | None = None):
        self.n_clusters, self.loss, self.param, self.init = n_clusters, L.check_loss(loss), param, init
        self.n_init, self.max_iter, self.tol, self.seed = n_init, max_iter, tol, seed
        self.device, self.inner_steps, self.on_iteration = device, inner_steps, on_iteration
        for name, value, low in (("n_init", n_init, 1), ("max_iter", max_iter, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise LossInputError(f"{name} must be an integer >= {low}; got {value!r}")
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
            raise LossInputError(f"tol must be a finite number >= 0; got {tol!r}")
        if loss in PARAM_NAME and param != "auto":
            L.validate_param(loss, param)

    # ------------------------------------------------------------------ public API

    def fit(self, X) -> "GeneralizedKMeans":
        Xn = validate_features(X, self.n_clusters)
        device = resolve_device(self.device)
        Xt = torch.from_numpy(Xn).to(device)
        k = self.n_clusters
        explicit = self._explicit_init(Xn)
        param = self._resolve_param(Xt, explicit)

        best = None
        for run in range(1 if explicit is not None else self.n_init):
            rng = np.random.default_rng([self.seed, run])
            C0 = explicit.to(device) if explicit is not None else Xt[kmeans_plus_plus(Xt, k, rng)].clone()
            result = self._lloyd(Xt, C0, param)
            if best is None or result[2] < best[2]:
                best = result
        labels, centers, objective, n_iter, converged = self._polish(Xt, best, param)
        self._check_filled(labels, objective)
        self.labels_ = labels.cpu().numpy()
        self.cluster_centers_ = centers.cpu().numpy()
        self.objective_ = float(objective)
        self.n_iter_ = int(n_iter)
        self.converged_ = bool(converged)
        self.params_ = {PARAM_NAME[self.loss]: float(param)} if self.loss in PARAM_NAME else {}
        self.device_ = device
        return self

    def predict(self, X) -> np.ndarray:
        if not hasattr(self, "cluster_centers_"):
            raise LossInputError("call fit() before predict()")
        Xn = validate_features(X)
        if Xn.shape[1] != self.cluster_centers_.shape[1]:
            raise LossInputError(f"X has {Xn.shape[1]} dimensions, the model was fitted on "
                                 f"{self.cluster_centers_.shape[1]}")
        Xt = torch.from_numpy(Xn).to(self.device_)
        C = torch.from_numpy(self.cluster_centers_).to(self.device_)
        return L.assign(Xt, C, self.loss, self._param_value()).cpu().numpy()

    def loss_to_center(self, X) -> np.ndarray:
        """Each row's loss to the center it is assigned to (float64)."""
        labels = self.predict(X)
        Xt = torch.from_numpy(validate_features(X)).to(self.device_)
        C = torch.from_numpy(self.cluster_centers_).to(self.device_)
        return L.loss_to_centers(Xt, C, torch.from_numpy(labels).to(self.device_), self.loss,
                                 self._param_value()).double().cpu().numpy()

    # ------------------------------------------------------------------ internals

    def _param_value(self) -> float | None:
        return next(iter(self.params_.values())) if self.params_ else None

    def _explicit_init(self, Xn: np.ndarray) -> torch.Tensor | None:
        if isinstance(self.init, str):
            if self.init != "k-means++":
                raise LossInputError(f"init must be 'k-means++' or a (k, d) array of centers; got {self.init!r}")
            return None
        C0 = np.asarray(self.init, dtype=np.float32)
        if C0.shape != (self.n_clusters, Xn.shape[1]) or not np.isfinite(C0).all():
            raise LossInputError(f"init array must be finite with shape ({self.n_clusters}, {Xn.shape[1]}); "
                                 f"got {C0.shape}")
        return torch.from_numpy(np.ascontiguousarray(C0))

    def _resolve_param(self, X: torch.Tensor, explicit: torch.Tensor | None) -> float | None:
        if self.loss not in PARAM_NAME:
            return None
        scale = L.data_scale(X, self.loss)
        if self.param != "auto":
            return L.check_param_scale(self.loss, L.validate_param(self.loss, self.param), scale)
        # The scale comes from the residuals of a short square-loss fit of the same data.
        if explicit is not None:
            C0 = explicit.to(X.device)
        else:
            C0 = X[kmeans_plus_plus(X, self.n_clusters, np.random.default_rng([self.seed, 0]))].clone()
        labels, centers, *_ = self._lloyd(X, C0, None, loss="square", max_iter=min(self.max_iter, 20))
        return L.clamp_to_range(L.auto_param(X, centers, labels, self.loss), scale)

    def _reseed_empty(self, X, C, labels, loss, param) -> torch.Tensor:
        """Empty clusters move to the points with the largest loss to their center.

        Ties (a saturated or flat loss gives many points the same cost) go to the point
        farthest from its center, so a new center never lands on an old one.
        """
        counts = torch.bincount(labels, minlength=C.shape[0])
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty) == 0:
            return C
        cost = L.loss_to_centers(X, C, labels, loss, param)
        distance = L.loss_to_centers(X, C, labels, "square", None)
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

    def _lloyd(self, X, C, param, loss=None, max_iter=None):
        loss = loss or self.loss
        max_iter = max_iter or self.max_iter
        # The loop tracks the objective from the assignment pass itself (free); the exact
        # value (no GEMM rounding) is computed once at the end.
        # squared norms for the GEMM-based assignments, computed once for the whole loop
        spec = L.get_loss(loss)
        x_sq = L.row_sq_norms(X) if spec.by_distance else None
        labels, cost = L.assign(X, C, loss, param, with_cost=True, x_sq=x_sq)
        objective = float(cost.double().sum())
        converged, n_iter = False, 0
        for n_iter in range(1, max_iter + 1):
            C = self._reseed_empty(X, C, labels, loss, param)
            C = L.update_centers(X, labels, C, loss, param, steps=self.inner_steps)
            new_labels, cost = L.assign(X, C, loss, param, with_cost=True, x_sq=x_sq)
            new_objective = float(cost.double().sum())
            stable = bool(torch.equal(new_labels, labels))
            change = abs(objective - new_objective) / max(abs(objective), 1e-300)
            labels, objective = new_labels, new_objective
            if self.on_iteration is not None and loss == self.loss:
                self.on_iteration(n_iter, objective)
            if stable and (change <= self.tol or spec.exact_update):
                converged = True  # exact updates: same labels means the same centers next time
                break
        objective = float(L.loss_to_centers(X, C, labels, loss, param).double().sum())
        return labels, C, objective, n_iter, converged

    def _polish(self, X, result, param):
        """Finish the best restart's centers where the loss has a `polish` (epsilon-insensitive)."""
        labels, C, objective, n_iter, converged = result
        C = L.get_loss(self.loss).polish(X, labels, C, param)
        if C is None:
            return result
        labels = L.assign(X, C, self.loss, param)
        objective = float(L.loss_to_centers(X, C, labels, self.loss, param).double().sum())
        return labels, C, objective, n_iter, converged
