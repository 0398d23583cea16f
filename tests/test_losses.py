"""The six losses: cost matrices, assignment, and center updates that never raise the objective."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from benchmarks.common import vgg_like
from pipeline import losses as L

# the losses whose center update is iterative (read from the registry)
ROBUST = tuple(name for name, loss in L.registry().items() if not loss.exact_update)


def reference_loss(x: np.ndarray, mu: np.ndarray, loss: str, p: float | None) -> float:
    """Each loss written out from its definition (the table atop pipeline/losses.py), one pair at a
    time, in float64: an oracle independent of the engine."""
    r = x - mu
    d = np.linalg.norm(r)
    if loss == "square":
        return float(np.sum(r**2))
    if loss == "absolute":
        return float(np.sum(np.abs(r)))
    if loss == "huber":
        a = np.abs(r)
        return float(np.sum(np.where(a <= p, 0.5 * a**2, p * (a - 0.5 * p))))
    if loss == "pseudo_huber":
        return float(np.sum(p**2 * (np.sqrt(1 + (r / p) ** 2) - 1)))
    if loss == "correntropy":
        return float(1 - np.exp(-d**2 / (2 * p**2)))
    if loss == "epsilon_insensitive":
        return float(max(0.0, d - p))
    raise AssertionError(f"no reference for {loss!r}: write it out here")


PARAMS = {"square": None, "absolute": None, "huber": 0.8, "pseudo_huber": 0.8, "correntropy": 3.0,
          "epsilon_insensitive": 2.5}


@pytest.mark.parametrize("loss", L.LOSS_NAMES)
def test_cost_matrix_and_assignment_match_the_pairwise_definition(loss):
    X = vgg_like(40, 6, 3, seed=1)
    C = X[[0, 5, 9]] + 0.3
    p = PARAMS[loss]
    expected = np.array([[reference_loss(x, c, loss, p) for c in C] for x in X])
    Xt, Ct = torch.from_numpy(X), torch.from_numpy(C)
    got = L.cost_matrix(Xt, Ct, loss, p, max_chunk_bytes=512).numpy()  # tiny chunks: many blocks
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    labels = L.assign(Xt, Ct, loss, p, max_chunk_bytes=512).numpy()
    np.testing.assert_array_equal(expected[np.arange(len(X)), labels], expected.min(1))
    per_point = L.loss_to_centers(Xt, Ct, torch.from_numpy(labels), loss, p).numpy()
    np.testing.assert_allclose(per_point, expected.min(1), rtol=1e-9, atol=1e-9)


def test_pseudo_huber_has_no_cancellation_for_tiny_residuals():
    r = torch.tensor([1e-6], dtype=torch.float32)
    value = L.coordinate_loss(r, "pseudo_huber", 10.0)
    assert float(value) == pytest.approx(0.5e-12, rel=1e-3)  # the naive formula gives 0 in float32


@pytest.mark.parametrize("medians", ["sort", "select"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_absolute_update_is_the_coordinatewise_median_exactly(dtype, medians, monkeypatch):
    # both ways to the medians (one sort of all clusters; selection per cluster, on large inputs)
    monkeypatch.setattr(L, "_SELECT_MEDIANS_MIN_ELEMENTS", 0 if medians == "select" else 2**62)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(101, 9)).astype(dtype)
    X[:10] = X[10:20]  # ties
    labels = rng.integers(0, 4, size=101)
    C = torch.full((5, 9), 7.0, dtype=torch.from_numpy(X).dtype)  # cluster 4 has no member
    got = L.update_centers(torch.from_numpy(X), torch.from_numpy(labels), C, "absolute", None).numpy()
    for c in range(4):
        np.testing.assert_array_equal(got[c], np.median(X[labels == c], axis=0).astype(dtype))
    assert (got[4] == 7.0).all()


def test_square_update_is_the_mean_and_empty_clusters_keep_their_center():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(30, 5))
    labels = np.r_[np.zeros(10, int), np.ones(20, int)]
    C = torch.full((3, 5), 7.0, dtype=torch.float64)
    got = L.update_centers(torch.from_numpy(X), torch.from_numpy(labels), C, "square", None).numpy()
    np.testing.assert_allclose(got[0], X[:10].mean(0))
    np.testing.assert_allclose(got[1], X[10:].mean(0))
    np.testing.assert_array_equal(got[2], 7.0)  # cluster 2 has no member


@pytest.mark.parametrize("loss", ROBUST)
def test_every_center_update_never_raises_the_objective(loss):
    for seed in range(12):
        X = torch.from_numpy(vgg_like(150, 16, 4, seed=seed, outliers=0.1))
        labels = torch.from_numpy(np.random.default_rng(seed).integers(0, 4, size=150))
        C = X[:4].clone() + 0.5
        scale = float(torch.cdist(X, C).median())
        p = scale * (0.05 if loss in ("huber", "pseudo_huber") else 0.5)
        start = before = L.cluster_objectives(X, C, labels, loss, p)
        for step in range(15):
            moved = L.update_centers(X, labels, C, loss, p, steps=1)
            after = L.cluster_objectives(X, moved, labels, loss, p)
            assert (after <= before * (1 + 1e-12) + 1e-12).all(), (seed, step, (after - before).max())
            if step == 0:  # the start is far from every optimum: the first step moves every center
                assert (moved != C).any(1).all(), (seed, "a center did not move")
            C, before = moved, after
        # the steps made progress: never raising the objective is not enough (a no-op does that)
        assert (before < start * (1 - 1e-3)).all(), (seed, (before / start).max())


@pytest.mark.parametrize("loss", ROBUST)
def test_our_center_is_at_least_as_good_as_scipy_minimize(loss):
    for seed in range(4):
        X = vgg_like(60, 5, 1, seed=seed, outliers=0.15)
        start = X.mean(0)
        p = {"huber": 0.7, "pseudo_huber": 0.7, "correntropy": 2.5, "epsilon_insensitive": 1.5}[loss]

        def objective(mu):
            return sum(reference_loss(x, mu, loss, p) for x in X)

        scipy_best = minimize(objective, start, method="BFGS").fun
        Xt, labels = torch.from_numpy(X), torch.zeros(60, dtype=torch.int64)
        C = L.update_centers(Xt, labels, torch.from_numpy(start[None]), loss, p, steps=300)
        if loss == "epsilon_insensitive":
            C = L.polish_centers(Xt, labels, C, p)
        ours = float(L.cluster_objectives(Xt, C, labels, loss, p)[0])
        assert ours <= scipy_best * (1 + 1e-7) + 1e-9, (seed, ours, scipy_best)


def test_correntropy_weights_survive_far_clusters():
    """Every member far beyond sigma: exp underflows, yet the center still moves to the members."""
    X = torch.tensor([[100.0, 0.0], [102.0, 0.0], [101.0, 1.0]], dtype=torch.float64)
    labels = torch.zeros(3, dtype=torch.int64)
    C = torch.zeros(1, 2, dtype=torch.float64)
    moved = L.update_centers(X, labels, C, "correntropy", 1.0, steps=1)
    assert float(moved[0, 0]) > 99.0


def test_auto_parameters_give_a_non_degenerate_correntropy_on_vgg_scaled_data():
    # Raw VGG16 GAP features: non-negative, coordinates up to ~10, distances in the tens.
    # (No gross outliers here: a point 15 sigma from every center costs 1.0 to each of
    # them in float32, by design of correntropy; `assign` still ranks it by distance.)
    X = torch.from_numpy(vgg_like(300, 512, 5, seed=7, outliers=0.0).astype(np.float32) * 2.0)
    C = X[:5].clone()
    labels = L.assign(X, C, "square", None)
    tutorial = L.cost_matrix(X, C, "correntropy", 1.0)
    assert (tutorial == 1.0).float().mean() > 0.99  # the tutorial's sigma = 1 saturates

    sigma = L.auto_param(X, C, labels, "correntropy")
    cost = L.cost_matrix(X, C, "correntropy", sigma)
    spread = cost.max(1).values - cost.min(1).values
    assert (spread > 1e-3).all()  # no row of the cost matrix is constant
    assert 0.05 < float(cost.min(1).values.median()) < 0.95
    for loss in ("huber", "pseudo_huber", "epsilon_insensitive"):
        value = L.auto_param(X, C, labels, loss)
        assert 0 < value < float(torch.cdist(X, C).max())


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), "big", True])
def test_bad_parameters_are_refused_naming_the_parameter(value):
    with pytest.raises(L.LossInputError, match="delta"):
        L.validate_param("huber", value)


def test_unknown_loss_lists_all_six():
    with pytest.raises(L.LossInputError) as err:
        L.check_loss("hinge")
    assert all(name in str(err.value) for name in L.LOSS_NAMES)


@pytest.mark.parametrize("k", [3, L._ONE_HOT_MAX_K + 7])  # one GEMM per chunk, and index_add_ beyond it
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weighted_means_match_numpy_on_both_summation_paths(k, dtype):
    rng = np.random.default_rng(k)
    n, d = 3000, 7
    X = rng.normal(3.0, 2.0, size=(n, d)).astype(dtype)
    labels = rng.integers(0, k - 1, size=n)  # the last cluster stays empty: it keeps its center
    row_w, coord_w = rng.random(n), rng.random((n, d))
    C = torch.full((k, d), 9.0, dtype=torch.from_numpy(X).dtype)
    Xt, lt = torch.from_numpy(X), torch.from_numpy(labels)
    rows = L.weighted_means(Xt, lt, C, None, max_chunk_bytes=4096, row_weights=torch.from_numpy(row_w))
    per_coordinate = torch.from_numpy(coord_w.astype(dtype))
    seen, calls = [0], [0]  # weight_fn sees the row chunks in order: hand it the matching rows

    def coordinate_weights(Xc, r, lc):
        start = seen[0]
        seen[0] += Xc.shape[0]
        calls[0] += 1
        return per_coordinate[start:start + Xc.shape[0]]

    coords = L.weighted_means(Xt, lt, C, coordinate_weights, max_chunk_bytes=4096)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for c in range(k - 1):
        members = labels == c
        np.testing.assert_allclose(rows[c].numpy(), np.average(X[members], axis=0, weights=row_w[members]), rtol=tol)
        expected = (coord_w[members] * X[members]).sum(0) / coord_w[members].sum(0)
        np.testing.assert_allclose(coords[c].numpy(), expected, rtol=tol)
    assert (rows[k - 1] == 9.0).all() and (coords[k - 1] == 9.0).all()
    assert seen[0] == n and calls[0] > 1  # every row, in several chunks (the small budget)


@pytest.mark.parametrize("weighted", [False, True])
def test_the_polish_product_form_matches_the_direct_residuals(weighted):
    # the epsilon polish's two ways to its smoothed objective (the (n, k) product form for
    # few centers on many values, the direct residual pass otherwise) agree, gradient too;
    # checked against a finite difference of the value
    X = torch.from_numpy(vgg_like(300, 12, 4, seed=3, outliers=0.1)).double()
    labels = torch.from_numpy(np.random.default_rng(0).integers(0, 4, 300))
    start = torch.stack([X[labels == c].mean(0) for c in range(4)])
    C = start + 0.05 * torch.from_numpy(np.random.default_rng(1).normal(size=start.shape))
    w = torch.from_numpy(np.random.default_rng(2).random(300)) if weighted else None
    form = L._PolishStart(X, labels, start)
    for smooth in (1e-3, 1e-6):
        direct = L._smoothed_epsilon(X, labels, C, 2.5, smooth, L.DEFAULT_MAX_CHUNK_BYTES, w)
        product = L._smoothed_epsilon(X, labels, C, 2.5, smooth, L.DEFAULT_MAX_CHUNK_BYTES, w, start=form)
        assert product[0] == pytest.approx(direct[0], rel=1e-12)
        torch.testing.assert_close(product[1], direct[1], rtol=1e-9, atol=1e-12)
    step = torch.zeros_like(C)
    step[2, 5] = 1e-6
    plus = L._smoothed_epsilon(X, labels, C + step, 2.5, 1e-3, L.DEFAULT_MAX_CHUNK_BYTES, w, start=form)[0]
    minus = L._smoothed_epsilon(X, labels, C - step, 2.5, 1e-3, L.DEFAULT_MAX_CHUNK_BYTES, w, start=form)[0]
    assert (plus - minus) / 2e-6 == pytest.approx(float(product[1][2, 5]), rel=1e-4)
