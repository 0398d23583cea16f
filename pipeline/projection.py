"""2-D projections of the embeddings (for the map page), and how to score one.

`project(features, method, seed)` returns an (n, 2) float64 array; pure, no I/O.

- `pca` (default, always available): center, then the SVD of the d x d scatter matrix
  (float64, torch.linalg.svd; the same top components as an SVD of the centered rows, 6x
  faster when n >> d). Each component's sign is fixed so its largest loading is positive,
  so the same features give the same picture on every machine and every run.
- `umap` (the optional extra `pip install 'photoclust[map]'`, umap-learn): cosine
  neighbourhoods, 15 neighbours, seeded (umap-learn then runs single-threaded).
- `tsne` (scikit-learn's Barnes-Hut t-SNE, the same extra): PCA initialisation, perplexity
  30 (less for small collections), seeded.

With fewer photos than a neighbourhood method needs (`MIN_POINTS[method]`), `project`
falls back to `pca` (and says so through `used_method`).

The scores (`trustworthiness`, `knn_preservation`, `knn_label_accuracy`, `silhouette`) are
what `benchmarks/bench_map.py` measures the methods by.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import UserError

METHODS = ("pca", "umap", "tsne")
DEFAULT_METHOD = "pca"
EXTRA = {"umap": "umap-learn", "tsne": "scikit-learn"}
MIN_POINTS = {"pca": 1, "umap": 17, "tsne": 5}


# ----------------------------------------------------------------------------- projections

def pca_2d(features: np.ndarray) -> np.ndarray:
    """The rows of `features` on their first two principal components, signs fixed."""
    X = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    n, d = X.shape
    out = np.zeros((n, 2))
    if n < 2:
        return out
    Xc = X - X.mean(dim=0, keepdim=True)
    if n > d:
        _, _, vh = torch.linalg.svd(Xc.T @ Xc)  # symmetric: its right singular vectors are the components
    else:
        _, _, vh = torch.linalg.svd(Xc, full_matrices=False)
    components = vh[:2]  # (<=2, d)
    largest = components.abs().argmax(dim=1)
    signs = torch.sign(components[torch.arange(len(components)), largest])
    signs[signs == 0] = 1
    components = components * signs[:, None]
    out[:, :len(components)] = (Xc @ components.T).numpy()
    return out


def _umap_2d(features: np.ndarray, seed: int) -> np.ndarray:
    import umap

    reducer = umap.UMAP(n_components=2, n_neighbors=15, metric="cosine", min_dist=0.1, random_state=seed)
    return np.asarray(reducer.fit_transform(np.asarray(features, dtype=np.float32)), dtype=np.float64)


def _tsne_2d(features: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, (len(features) - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, method="barnes_hut")
    return np.asarray(tsne.fit_transform(np.asarray(features, dtype=np.float32)), dtype=np.float64)


def available(method: str) -> bool:
    """Whether `method`'s library is installed."""
    if method == "pca":
        return True
    try:
        if method == "umap":
            import umap  # noqa: F401
        elif method == "tsne":
            import sklearn.manifold  # noqa: F401
        else:
            return False
    except ImportError:
        return False
    return True


def check_method(method: str, where: str = "--map-method") -> str:
    """`method` if it can run here; a UserError that says what to install otherwise."""
    if method not in METHODS:
        raise UserError(f"{where} must be one of {', '.join(METHODS)}, got {method!r}")
    if not available(method):
        raise UserError(f"{where} {method} needs {EXTRA[method]}: pip install 'photoclust[map]' "
                        f"(or pip install {EXTRA[method]}), or use --map-method pca")
    return method


def used_method(method: str, n: int) -> str:
    """The method `project` runs for n points: `method`, or pca when there are too few."""
    return method if n >= MIN_POINTS[method] else "pca"


def project(features: np.ndarray, method: str = DEFAULT_METHOD, seed: int = 0) -> np.ndarray:
    """(n, 2) float64 coordinates of the rows of `features` (same input and seed, same output)."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be a 2-D array, got shape {features.shape}")
    method = used_method(check_method(method), len(features))
    if method == "umap":
        return _umap_2d(features, seed)
    if method == "tsne":
        return _tsne_2d(features, seed)
    return pca_2d(features)


def to_unit_box(xy: np.ndarray) -> np.ndarray:
    """Shift and scale (one factor for both axes, so shapes keep their proportions) into
    [0, 1] x [0, 1], centred: the coordinates the map page draws."""
    xy = np.asarray(xy, dtype=np.float64)
    if len(xy) == 0:
        return xy.reshape(0, 2)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = float((hi - lo).max())
    if not np.isfinite(span) or span <= 0:
        return np.full_like(xy, 0.5)
    return (xy - (lo + hi) / 2) / span + 0.5


# ----------------------------------------------------------------------------- scores

def _sq_distances(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    sq = (X * X).sum(axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (X @ X.T)
    np.maximum(d2, 0.0, out=d2)
    np.fill_diagonal(d2, np.inf)
    return d2


def _neighbors(X: np.ndarray, k: int) -> np.ndarray:
    d2 = _sq_distances(X)
    return np.argsort(d2, axis=1, kind="stable")[:, :k]


def trustworthiness(X: np.ndarray, Y: np.ndarray, k: int = 10) -> float:
    """Venna & Kaski's trustworthiness of the embedding Y of X: 1 when every one of a point's
    k nearest neighbours in Y is also among its nearest in X, lower the farther (by rank in
    X) the intruders are. O(n^2) memory: score a sample of a large collection."""
    n = len(X)
    if not 0 < k < n / 2:
        raise ValueError(f"k must be in (0, n/2), got k={k} for n={n}")
    order = np.argsort(_sq_distances(X), axis=1, kind="stable")  # order[i, r-1] = r-th neighbour of i in X
    ranks = np.empty_like(order)
    ranks[np.arange(n)[:, None], order] = np.arange(1, n + 1)[None, :]
    ours = _neighbors(Y, k)
    penalty = np.maximum(ranks[np.arange(n)[:, None], ours] - k, 0).sum()
    return float(1.0 - 2.0 / (n * k * (2 * n - 3 * k - 1)) * penalty)


def knn_preservation(X: np.ndarray, Y: np.ndarray, k: int = 10) -> float:
    """Mean share of each point's k nearest neighbours in X that are among its k nearest in Y."""
    a, b = _neighbors(X, k), _neighbors(Y, k)
    return float(np.mean([len(np.intersect1d(a[i], b[i], assume_unique=True)) / k for i in range(len(X))]))


def knn_label_accuracy(Y: np.ndarray, labels, k: int = 5) -> float:
    """Leave-one-out accuracy of a k-nearest-neighbour vote on the map: how well the map keeps
    the labelled groups apart (1 = every photo's map neighbours mostly share its label)."""
    labels = np.asarray(labels)
    _, codes = np.unique(labels, return_inverse=True)
    votes = codes[_neighbors(Y, k)]
    counts = np.stack([(votes == c).sum(axis=1) for c in range(codes.max() + 1)], axis=1)
    return float(np.mean(counts.argmax(axis=1) == codes))


def silhouette(Y: np.ndarray, labels) -> float:
    """Mean silhouette of the labelled groups on the map (Euclidean), -1 to 1."""
    labels = np.asarray(labels)
    d = np.sqrt(_sq_distances(Y))
    np.fill_diagonal(d, 0.0)
    groups = np.unique(labels)
    if len(groups) < 2:
        raise ValueError("silhouette needs at least two labels")
    mean_to = np.stack([d[:, labels == g].sum(axis=1) for g in groups], axis=1)
    sizes = np.array([(labels == g).sum() for g in groups], dtype=np.float64)
    own = np.searchsorted(groups, labels)
    rows = np.arange(len(labels))
    own_size = sizes[own] - 1
    a = np.where(own_size > 0, mean_to[rows, own] / np.maximum(own_size, 1), 0.0)
    other = mean_to / sizes[None, :]
    other[rows, own] = np.inf
    b = other.min(axis=1)
    s = np.where(own_size > 0, (b - a) / np.maximum(np.maximum(a, b), 1e-300), 0.0)
    return float(s.mean())
