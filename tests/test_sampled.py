"""The sampled path of the engine (large collections): restarts on a random sample, then a
few steps on every point. The sizes are shrunk here (SAMPLE_MIN_ROWS, SAMPLE_PER_CLUSTER)
so that a few thousand rows take the path a real collection takes from 20,000 photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import kmeans
from pipeline.kmeans import GeneralizedKMeans, sample_size, uses_sample
from pipeline.losses import LOSS_NAMES, LossInputError

from benchmarks.common import vgg_like


@pytest.fixture
def small_sample(monkeypatch):
    monkeypatch.setattr(kmeans, "SAMPLE_MIN_ROWS", 200)
    monkeypatch.setattr(kmeans, "SAMPLE_PER_CLUSTER", 40)


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score(a, b)


def test_the_sample_grows_with_k_and_the_path_starts_at_twice_the_sample():
    assert sample_size(5_000, 4) == 5_000  # fewer rows than the sample: all of them
    assert sample_size(1_000_000, 4) == kmeans.SAMPLE_MIN_ROWS
    assert sample_size(1_000_000, 100) == 100 * kmeans.SAMPLE_PER_CLUSTER
    assert not uses_sample(2 * kmeans.SAMPLE_MIN_ROWS - 1, 4)
    assert uses_sample(2 * kmeans.SAMPLE_MIN_ROWS, 4)
    assert not uses_sample(2 * kmeans.SAMPLE_MIN_ROWS, 4, exact=True)
    assert not uses_sample(2 * kmeans.SAMPLE_MIN_ROWS, 100)  # k = 100 samples 25,600 rows


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_sampled_fit_finds_the_exact_fits_clusters_and_objective(loss, small_sample):
    X = vgg_like(2400, 16, 6, seed=1, outliers=0.0, dtype=np.float32)
    exact = GeneralizedKMeans(6, loss, exact=True).fit(X)
    fast = GeneralizedKMeans(6, loss).fit(X)
    assert (exact.algorithm_, exact.sample_size_, exact.full_steps_) == ("exact", 2400, 0)
    assert (fast.algorithm_, fast.sample_size_) == ("sampled", 240)
    assert 1 <= fast.full_steps_ <= kmeans.FULL_STEPS
    assert adjusted_rand(fast.labels_, exact.labels_) > 0.99
    assert fast.objective_ <= exact.objective_ * 1.01
    # the labels are the last full pass's: every point sits on its cheapest center
    assert np.array_equal(fast.predict(X), fast.labels_)
    assert fast.objective_ == pytest.approx(-fast.score(X), rel=1e-5)


def test_sampled_fit_is_reproducible_and_the_seed_matters(small_sample):
    X = vgg_like(2000, 16, 8, seed=2, dtype=np.float32)
    a, b = (GeneralizedKMeans(8, "huber", seed=3).fit(X) for _ in range(2))
    assert np.array_equal(a.labels_, b.labels_) and np.array_equal(a.cluster_centers_, b.cluster_centers_)
    other = GeneralizedKMeans(8, "huber", seed=4).fit(X)
    assert not np.array_equal(other.cluster_centers_, a.cluster_centers_)


def test_phases_are_reported_in_order(small_sample):
    X = vgg_like(2000, 16, 4, seed=3, dtype=np.float32)
    phases, iterations = [], []
    GeneralizedKMeans(4, "correntropy", on_phase=lambda name, most: phases.append((name, most)),
                      on_iteration=lambda i, objective: iterations.append(phases[-1][0])).fit(X)
    assert [name for name, _ in phases] == ["sample", "full"]
    assert phases[1][1] == kmeans.FULL_STEPS
    assert "sample" in iterations and "full" in iterations
    assert iterations == sorted(iterations, key=["sample", "full"].index)  # the sample's first, then all points'
    phases.clear()
    GeneralizedKMeans(4, "correntropy", exact=True, on_phase=lambda name, most: phases.append((name, most))).fit(X)
    assert phases == [("fit", 4 * 100)]


def test_sampled_fit_honours_sample_weight(small_sample):
    X = vgg_like(2000, 8, 3, seed=4, dtype=np.float32)
    weight = np.random.default_rng(0).integers(0, 4, size=len(X)).astype(float)
    model = GeneralizedKMeans(3, "absolute", seed=1).fit(X, sample_weight=weight)
    assert model.algorithm_ == "sampled"
    assert model.objective_ == pytest.approx(-model.score(X, sample_weight=weight), rel=1e-6)
    # points of weight 0 do not pull the centers: dropping them gives the same medians' objective
    kept = weight > 0
    assert model.score(X[kept], sample_weight=weight[kept]) == pytest.approx(model.score(X, sample_weight=weight))


def test_a_tensor_stays_on_its_device_in_the_sampled_path(small_sample):
    X = torch.from_numpy(vgg_like(2000, 8, 3, seed=5, dtype=np.float32))
    labels = GeneralizedKMeans(3, "pseudo_huber").fit_predict(X)
    assert isinstance(labels, torch.Tensor) and labels.device == X.device and labels.shape == (2000,)


def test_exact_must_be_a_boolean():
    with pytest.raises(LossInputError, match="exact must be True or False"):
        GeneralizedKMeans(2, exact="yes").fit(np.eye(4))


@pytest.mark.parametrize("loss", ["absolute", "huber", "pseudo_huber"])
def test_assignment_among_the_nearest_centers(loss):
    from pipeline import losses as L

    rng = np.random.default_rng(6)
    X = torch.from_numpy(rng.normal(size=(500, 12)).astype(np.float32))
    C = torch.from_numpy(rng.normal(size=(20, 12)).astype(np.float32))
    # with every center a candidate it is the full assignment
    labels, cost = L.assign_among_nearest(X, C, loss, 0.5, candidates=20)
    assert torch.equal(labels, L.assign(X, C, loss, 0.5))
    torch.testing.assert_close(cost, L.loss_to_centers(X, C, labels, loss, 0.5))
    # with few candidates and each row's current center, no row's cost rises
    current = torch.from_numpy(rng.integers(0, 20, size=500))
    labels, cost = L.assign_among_nearest(X, C, loss, 0.5, candidates=2, current=current)
    assert (cost <= L.loss_to_centers(X, C, current, loss, 0.5) + 1e-6).all()
    nearest_two = torch.cdist(X, C).topk(2, largest=False).indices
    assert ((labels[:, None] == nearest_two).any(1) | (labels == current)).all()


def test_many_clusters_finish_among_the_nearest_then_on_every_center(small_sample):
    # k = 24 > 2 x NEAR_CANDIDATES: the steps on all points compare each with its nearest centers
    X = vgg_like(3000, 16, 24, seed=7, outliers=0.0, dtype=np.float32)
    model = GeneralizedKMeans(24, "pseudo_huber").fit(X)
    assert model.algorithm_ == "sampled" and 24 > 2 * kmeans.NEAR_CANDIDATES
    assert np.array_equal(model.predict(X), model.labels_)  # the last pass saw every center
    assert model.objective_ == pytest.approx(-model.score(X), rel=1e-5)
    assert all(b <= a * (1 + 1e-6) for a, b in zip(model.objective_history_, model.objective_history_[1:]))
    exact = GeneralizedKMeans(24, "pseudo_huber", exact=True).fit(X)
    assert model.objective_ <= exact.objective_ * 1.01


def test_a_sample_that_misses_rare_rows_falls_back_to_the_whole_data(small_sample):
    # 3,000 rows, of which only 6 are distinct from the first: k = 5 fits the whole data, while
    # a 200-row sample almost surely holds fewer than 5 distinct rows
    X = np.zeros((3000, 4), dtype=np.float32)
    X[np.arange(1, 3000, 500)] = np.arange(1, 7, dtype=np.float32)[:, None] * 10
    model = GeneralizedKMeans(5, "huber").fit(X)
    assert model.algorithm_ == "exact" and model.sample_size_ == 3000
    assert len(np.unique(model.labels_)) == 5
    with pytest.raises(LossInputError, match="larger than the 7 distinct points"):
        GeneralizedKMeans(8, "huber").fit(X)
