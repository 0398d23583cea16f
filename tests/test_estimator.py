"""GeneralizedKMeans as a scikit-learn-shaped estimator: parameters, weights, tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.common import vgg_like
from pipeline import losses as L
from pipeline.kmeans import GeneralizedKMeans, NotFittedError, kmeans_plus_plus

# one parameter per loss that takes one, on the scale of vgg_like(.., d=6) data
PARAMS = {"huber": 1.0, "pseudo_huber": 1.0, "correntropy": 3.0, "epsilon_insensitive": 1.0}


def param_for(loss: str):
    return PARAMS[loss] if L.get_loss(loss).param_name is not None else "auto"


def test_get_params_and_set_params_round_trip():
    model = GeneralizedKMeans(5, "huber", param=0.3, n_init=2, random_state=7)
    params = model.get_params()
    assert params["n_clusters"] == 5 and params["loss"] == "huber" and params["random_state"] == 7
    assert set(params) == {"n_clusters", "loss", "param", "init", "n_init", "max_iter", "tol", "seed", "device",
                           "inner_steps", "on_iteration", "random_state", "exact", "on_phase"}
    again = GeneralizedKMeans(**params)
    assert again.get_params() == params
    assert model.set_params(loss="absolute", n_clusters=3) is model
    assert model.loss == "absolute" and model.n_clusters == 3
    with pytest.raises(ValueError, match="invalid parameter 'k'"):
        model.set_params(k=3)


def test_a_fitted_model_keeps_answering_for_the_loss_it_was_fitted_with():
    X = vgg_like(80, 4, 3, seed=5)
    model = GeneralizedKMeans(3, "correntropy", param=2.0, n_init=1).fit(X)
    before = model.transform(X)
    model.set_params(loss="absolute")  # takes effect at the next fit
    np.testing.assert_array_equal(model.transform(X), before)
    assert model.fit(X).transform(X).shape == (80, 3) and model.params_ == {}


def test_scikit_learn_clone_gives_an_unfitted_copy_with_the_same_parameters():
    base = pytest.importorskip("sklearn.base")
    X = vgg_like(60, 4, 3, seed=0)
    model = GeneralizedKMeans(3, "correntropy", param=2.0, n_init=1).fit(X)
    copy = base.clone(model)
    assert copy.get_params() == model.get_params() and not hasattr(copy, "labels_")


def test_settings_are_checked_by_fit_not_by_the_constructor():
    model = GeneralizedKMeans(2, loss="hinge", n_init=0)  # stored as given
    with pytest.raises(L.LossInputError, match="unknown loss 'hinge'"):
        model.fit(np.eye(4))
    with pytest.raises(L.LossInputError, match="inner_steps"):
        GeneralizedKMeans(2, inner_steps=0).fit(np.eye(4))
    with pytest.raises(L.LossInputError, match="random_state"):
        GeneralizedKMeans(2, random_state=-1).fit(np.eye(4))


@pytest.mark.parametrize("method", ["predict", "transform", "score", "loss_to_center"])
def test_an_unfitted_model_says_so(method):
    with pytest.raises(NotFittedError, match=f"not fitted yet: call fit\\(X\\) before {method}") as err:
        getattr(GeneralizedKMeans(2), method)(np.eye(3))
    assert isinstance(err.value, ValueError) and isinstance(err.value, AttributeError)


def test_square_inertia_and_weighted_inertia_equal_scikit_learns():
    cluster = pytest.importorskip("sklearn.cluster")
    X = vgg_like(500, 16, 5, seed=3).astype(np.float32)
    weights = np.random.default_rng(0).uniform(0.1, 3.0, size=len(X))
    init = X[[0, 100, 200, 300, 400]]
    for w in (None, weights):
        sk = cluster.KMeans(5, init=init, n_init=1, max_iter=300, tol=0, algorithm="lloyd").fit(X, sample_weight=w)
        ours = GeneralizedKMeans(5, "square", init=init, max_iter=300, tol=0).fit(X, sample_weight=w)
        assert ours.inertia_ == pytest.approx(sk.inertia_, rel=1e-5)
        np.testing.assert_array_equal(ours.labels_, sk.labels_)
        assert ours.score(X, sample_weight=w) == pytest.approx(sk.score(X, sample_weight=w), rel=1e-5)


@pytest.mark.parametrize("loss", list(L.LOSS_NAMES))
def test_integer_weights_give_the_same_fit_as_repeating_rows(loss):
    """Weight 0 drops a row, weight 3 counts it three times: for every loss's update."""
    X = vgg_like(90, 6, 3, seed=4, outliers=0.1).astype(np.float32)
    counts = np.random.default_rng(1).integers(0, 4, size=len(X))
    counts[[0, 30, 60]] = 1  # the initial centers are points of the data
    repeated = np.repeat(X, counts, axis=0)
    init = X[[0, 30, 60]]
    weighted = GeneralizedKMeans(3, loss, param=param_for(loss), init=init).fit(X, sample_weight=counts)
    plain = GeneralizedKMeans(3, loss, param=param_for(loss), init=init).fit(repeated)
    np.testing.assert_allclose(weighted.cluster_centers_, plain.cluster_centers_, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.repeat(weighted.labels_, counts), plain.labels_)
    assert weighted.objective_ == pytest.approx(plain.objective_, rel=1e-4)
    assert weighted.score(X, sample_weight=counts) == pytest.approx(-plain.objective_, rel=1e-4)


@pytest.mark.parametrize("loss", ["absolute", "huber"])
def test_weighted_k_means_plus_plus_never_seeds_at_a_weightless_point(loss):
    X = vgg_like(200, 6, 4, seed=2)
    w = np.ones(len(X))
    w[::2] = 0.0
    for seed in range(5):
        indices = kmeans_plus_plus(torch.from_numpy(X), 4, np.random.default_rng(seed),
                                   sample_weight=torch.from_numpy(w))
        assert (indices % 2 == 1).all()
    model = GeneralizedKMeans(4, loss, param=param_for(loss), n_init=3).fit(X, sample_weight=w)
    assert np.bincount(model.labels_[1::2], minlength=4).min() > 0  # every cluster holds weight


def test_transform_score_fit_predict_history_and_fitted_attributes():
    X = vgg_like(200, 8, 4, seed=6)
    model = GeneralizedKMeans(4, "huber", param=0.8, n_init=2, seed=3)
    labels = model.fit_predict(X)
    np.testing.assert_array_equal(labels, model.labels_)
    costs = model.transform(X)
    assert costs.shape == (200, 4)
    np.testing.assert_array_equal(costs.argmin(1), model.predict(X))
    assert model.score(X) == pytest.approx(-model.objective_, rel=1e-6)
    assert model.n_features_in_ == 8 and len(model.objective_history_) == model.n_iter_
    history = model.objective_history_
    assert all(b <= a * (1 + 1e-6) for a, b in zip(history, history[1:]))
    assert history[-1] == pytest.approx(model.objective_, rel=1e-5)
    with pytest.raises(L.LossInputError, match="X has 3 dimensions, the model was fitted on 8"):
        model.predict(X[:, :3])


def test_random_state_is_an_alias_of_seed():
    X = vgg_like(150, 8, 4, seed=1)
    a = GeneralizedKMeans(4, "absolute", n_init=2, seed=9).fit(X)
    b = GeneralizedKMeans(4, "absolute", n_init=2, random_state=9).fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)


def test_a_tensor_is_clustered_where_it_lies_and_answers_in_tensors():
    X = vgg_like(150, 8, 3, seed=8).astype(np.float32)
    from_numpy = GeneralizedKMeans(3, "correntropy", param=3.0, n_init=2).fit(X)
    Xt = torch.from_numpy(X).double()  # any real dtype; computed in float32 as the array
    from_tensor = GeneralizedKMeans(3, "correntropy", param=3.0, n_init=2).fit(Xt)
    np.testing.assert_array_equal(from_numpy.labels_, from_tensor.labels_)
    np.testing.assert_array_equal(from_numpy.cluster_centers_, from_tensor.cluster_centers_)
    assert from_tensor.device_ == Xt.device
    labels = from_tensor.predict(Xt)
    assert isinstance(labels, torch.Tensor) and labels.device == Xt.device
    assert isinstance(from_tensor.transform(Xt), torch.Tensor)
    assert isinstance(from_tensor.fit_predict(Xt, sample_weight=torch.ones(150)), torch.Tensor)
    with pytest.raises(L.LossInputError, match="1 of 150 feature rows contain NaN"):
        GeneralizedKMeans(3).fit(torch.cat([Xt[:149], torch.full((1, 8), float("nan"), dtype=Xt.dtype)]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_cuda_tensor_stays_on_the_gpu():
    X = torch.from_numpy(vgg_like(300, 16, 4, seed=0).astype(np.float32)).cuda()
    for loss in L.LOSS_NAMES:
        model = GeneralizedKMeans(4, loss, n_init=1).fit(X, sample_weight=torch.ones(300, device="cuda"))
        assert model.device_.type == "cuda" and model.predict(X).device.type == "cuda"


@pytest.mark.parametrize("weights, message", [
    (np.ones(5), "one weight per point"), (-np.ones(10), ">= 0"), (np.zeros(10), "positive sum"),
    (np.r_[np.ones(9), np.nan], "finite"),
])
def test_bad_sample_weights_are_refused(weights, message):
    with pytest.raises(L.LossInputError, match=message):
        GeneralizedKMeans(2).fit(np.arange(20, dtype=float).reshape(10, 2), sample_weight=weights)
