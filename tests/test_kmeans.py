"""The generalized k-means engine: parity with scikit-learn, the tutorial baseline, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans

from pipeline.kmeans import GeneralizedKMeans, validate_features
from pipeline.losses import LOSS_NAMES, LossInputError, cluster_objectives

from benchmarks.common import vgg_like
from benchmarks.tutorial_reference import generalized_clustering


def test_square_loss_reaches_scikit_learns_inertia_from_the_same_centers():
    for seed in range(3):
        X = vgg_like(600, 32, 6, seed=seed).astype(np.float32)
        init = X[np.random.default_rng(seed).choice(len(X), 6, replace=False)]
        sk = KMeans(6, init=init, n_init=1, max_iter=300, tol=0, algorithm="lloyd").fit(X)
        ours = GeneralizedKMeans(6, "square", init=init, max_iter=300, tol=0).fit(X)
        assert abs(ours.objective_ - sk.inertia_) / sk.inertia_ < 1e-5
        assert ours.converged_


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_the_tutorial_algorithm_never_beats_ours_from_the_same_centers(loss):
    for seed in range(2):
        X = vgg_like(45, 6, 3, seed=seed, outliers=0.1)
        init = X[[0, 15, 30]]
        params = {"huber": {"delta": 1.0}, "pseudo_huber": {"delta": 1.0}, "correntropy": {"sigma": 3.0},
                  "epsilon_insensitive": {"epsilon": 1.0}}.get(loss, {})
        _, _, reference = generalized_clustering(X, init, loss, params)
        param = next(iter(params.values()), None)
        ours = GeneralizedKMeans(3, loss, param=param, init=init, max_iter=100).fit(X)
        assert ours.objective_ <= reference * (1 + 1e-6) + 1e-9, (seed, ours.objective_, reference)


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_fit_is_consistent_and_reproducible(loss):
    X = vgg_like(200, 16, 4, seed=5)
    a = GeneralizedKMeans(4, loss, n_init=2, seed=11).fit(X)
    b = GeneralizedKMeans(4, loss, n_init=2, seed=11).fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    assert a.objective_ == b.objective_ and a.params_ == b.params_
    # labels_ are the cheapest centers, objective_ is their summed loss, predict agrees
    np.testing.assert_array_equal(a.predict(X), a.labels_)
    assert a.objective_ == pytest.approx(a.loss_to_center(X).sum(), rel=1e-6)
    assert sorted(set(a.labels_)) == [0, 1, 2, 3]
    assert a.cluster_centers_.shape == (4, 16) and a.cluster_centers_.dtype == np.float32
    if loss in ("square", "absolute"):
        assert a.params_ == {}
    else:
        assert list(a.params_) == [{"huber": "delta", "pseudo_huber": "delta", "correntropy": "sigma",
                                    "epsilon_insensitive": "epsilon"}[loss]]


def test_more_restarts_never_give_a_worse_objective():
    X = vgg_like(300, 8, 6, seed=2)
    one = GeneralizedKMeans(6, "huber", n_init=1, seed=0).fit(X)
    many = GeneralizedKMeans(6, "huber", n_init=6, seed=0).fit(X)
    assert many.objective_ <= one.objective_


def test_an_empty_cluster_is_reseeded_at_the_worst_point_never_at_zero():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 0.1, (30, 2)), rng.normal(5, 0.1, (30, 2)), [[20.0, 20.0]]])
    init = np.array([[0.0, 0.0], [5.0, 5.0], [-100.0, -100.0]])  # the third center attracts nobody
    for loss in ("square", "absolute", "huber", "correntropy"):
        model = GeneralizedKMeans(3, loss, param=1.0 if loss in ("huber", "correntropy") else "auto",
                                  init=init).fit(X)
        sizes = np.bincount(model.labels_, minlength=3)
        assert (sizes > 0).all(), (loss, sizes)
        assert not (model.cluster_centers_ == 0).all(axis=1).any()
        assert model.labels_[-1] != model.labels_[0]  # the far point got its own cluster


def test_k_equal_to_the_number_of_points_and_k_one():
    X = vgg_like(5, 3, 2, seed=0)
    model = GeneralizedKMeans(5, "square", n_init=1).fit(X)
    assert sorted(model.labels_) == [0, 1, 2, 3, 4] and model.objective_ == pytest.approx(0, abs=1e-9)
    one = GeneralizedKMeans(1, "absolute").fit(X)
    np.testing.assert_allclose(one.cluster_centers_[0], np.median(X, 0), rtol=1e-6)


@pytest.mark.parametrize("X, k, message", [
    (np.empty((0, 4)), 2, "empty"),
    (np.ones((3, 0)), 1, "empty"),
    (np.ones(4), 1, "2-D"),
    (np.array([[1.0, np.nan], [2, 3], [np.inf, 1], [0, 0]]), 2, "2 of 4 feature rows contain NaN or Inf"),
    (np.ones((4, 2)), 0, "integer >= 1"),
    (np.ones((4, 2)), 2.5, "integer >= 1"),
    (np.ones((4, 2)), 5, "larger than the 4 points"),
    (np.vstack([np.ones((3, 2)), np.zeros((3, 2))]), 3, "larger than the 2 distinct points"),
])
def test_bad_input_is_refused_with_a_clear_message(X, k, message):
    with pytest.raises(LossInputError, match=message):
        GeneralizedKMeans(k, "square").fit(X)


@pytest.mark.parametrize("kwargs, message", [
    (dict(loss="hinge"), "square, absolute, huber, pseudo_huber, correntropy, epsilon_insensitive"),
    (dict(loss="huber", param=0), "delta"),
    (dict(loss="correntropy", param=-2.0), "sigma"),
    (dict(loss="epsilon_insensitive", param="wide"), "epsilon"),
    (dict(n_init=0), "n_init"),
    (dict(max_iter=0), "max_iter"),
    (dict(device="tpu"), "device"),
    (dict(init="random"), "init"),
])
def test_bad_parameters_are_refused_naming_them(kwargs, message):
    with pytest.raises(LossInputError, match=message):
        GeneralizedKMeans(2, **kwargs).fit(np.arange(12, dtype=float).reshape(6, 2))


def test_validate_features_returns_float32():
    out = validate_features(np.arange(6).reshape(3, 2), 2)
    assert out.dtype == np.float32 and out.flags.c_contiguous


def test_objective_matches_the_per_cluster_sums():
    import torch

    X = vgg_like(120, 10, 3, seed=9)
    model = GeneralizedKMeans(3, "pseudo_huber", param=0.5, n_init=1).fit(X)
    per_cluster = cluster_objectives(torch.from_numpy(X.astype(np.float32)),
                                     torch.from_numpy(model.cluster_centers_),
                                     torch.from_numpy(model.labels_), "pseudo_huber", 0.5)
    assert float(per_cluster.sum()) == pytest.approx(model.objective_, rel=1e-6)


def test_on_iteration_reports_every_iteration_with_a_falling_objective():
    seen = []
    X = vgg_like(150, 8, 3, seed=4)
    model = GeneralizedKMeans(3, "huber", param=0.5, n_init=1, on_iteration=lambda i, obj: seen.append((i, obj))).fit(X)
    assert [i for i, _ in seen] == list(range(1, model.n_iter_ + 1))
    objectives = [obj for _, obj in seen]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(objectives, objectives[1:]))
