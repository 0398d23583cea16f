"""The loss registry: a loss defined here, in the test file only, runs through the whole
engine (fit, predict, transform, the cluster and represent stages, the CLI) and every
public view of the registry; a change to a loss's code makes cached clusterings refit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks.common import vgg_like
from pipeline import losses as L
from pipeline.cache import Entry, activate_key, write_cache
from pipeline.cli import main
from pipeline.cluster import cluster_run
from pipeline.config import ClusterConfig
from pipeline.kmeans import GeneralizedKMeans, engine_fingerprint
from pipeline.represent import represent_run


class Cauchy(L.Loss):
    """Cauchy (Lorentzian) loss: (c^2 / 2) log(1 + d^2 / c^2), non-decreasing in d.

    IRLS weight rho'(d)/d = 1 / (1 + d^2 / c^2) per point; rho is concave in d^2, so each
    weighted mean minimises a majorizer and the objective never rises."""

    name = "cauchy"
    param_name = "c"
    by_distance = True
    inner_steps = 2

    def of_sq_distance(self, d2, c):
        return 0.5 * c * c * torch.log1p(d2 / (c * c))

    def pointwise(self, r, c):
        return self.of_sq_distance((r * r).sum(-1), c)

    def irls_weights(self, r, c):
        return 1.0 / (1.0 + (r * r).sum(1, keepdim=True) / (c * c))


def cauchy_reference(x: np.ndarray, mu: np.ndarray, c: float) -> float:
    return float(0.5 * c * c * np.log1p(np.sum((x - mu) ** 2) / c**2))


@pytest.fixture
def cauchy():
    L.register(Cauchy)
    try:
        yield L.get_loss("cauchy")
    finally:
        L.unregister("cauchy")


def test_a_registered_loss_appears_in_every_view_and_leaves_with_unregister(cauchy):
    assert "cauchy" in L.LOSS_NAMES and L.LOSS_NAMES[-1] == "cauchy" and len(L.LOSS_NAMES) == 7
    assert L.PARAM_NAME["cauchy"] == "c" and "cauchy" in L.DISTANCE_LOSSES
    assert L.DEFAULT_INNER_STEPS["cauchy"] == 2
    assert L.check_loss("cauchy") == "cauchy" and L.validate_param("cauchy", 2) == 2.0
    with pytest.raises(L.LossInputError, match="c \\(parameter of cauchy\\)"):
        L.validate_param("cauchy", -1)
    L.unregister("cauchy")
    try:
        assert "cauchy" not in L.LOSS_NAMES and "cauchy" not in L.PARAM_NAME
        with pytest.raises(L.LossInputError, match="unknown loss 'cauchy'; choose one of: square, absolute"):
            L.pointwise_loss(torch.zeros(1, 2), torch.zeros(1, 2), "cauchy", 1.0)
    finally:
        L.register(Cauchy)


def test_registering_a_taken_name_needs_replace(cauchy):
    with pytest.raises(ValueError, match="already registered"):
        L.register(Cauchy)
    with pytest.raises(TypeError):
        L.register(int)


@pytest.mark.parametrize("name", ["cost_matrix", "assign", "loss_to_centers", "update_centers", "auto_param",
                                  "data_scale", "validate_param", "check_loss", "pointwise_loss"])
def test_an_unknown_name_fails_loudly_everywhere(name):
    X = torch.zeros(3, 2)
    calls = {"cost_matrix": lambda: L.cost_matrix(X, X, "hinge", 1.0),
             "assign": lambda: L.assign(X, X, "hinge", 1.0),
             "loss_to_centers": lambda: L.loss_to_centers(X, X, torch.zeros(3, dtype=torch.int64), "hinge", 1.0),
             "update_centers": lambda: L.update_centers(X, torch.zeros(3, dtype=torch.int64), X, "hinge", 1.0),
             "auto_param": lambda: L.auto_param(X, X, torch.zeros(3, dtype=torch.int64), "hinge"),
             "data_scale": lambda: L.data_scale(X, "hinge"),
             "validate_param": lambda: L.validate_param("hinge", 1.0),
             "check_loss": lambda: L.check_loss("hinge"),
             "pointwise_loss": lambda: L.pointwise_loss(X, X, "hinge", 1.0)}
    with pytest.raises(L.LossInputError) as err:
        calls[name]()
    assert str(err.value).count("\n") == 0 and all(n in str(err.value) for n in L.LOSS_NAMES)


def test_the_toy_loss_clusters_through_the_engine(cauchy):
    X = vgg_like(150, 8, 3, seed=2, outliers=0.1)
    c = 2.0
    seen = []
    model = GeneralizedKMeans(3, "cauchy", param=c, n_init=2, seed=1,
                              on_iteration=lambda i, obj: seen.append(obj)).fit(X)
    assert model.params_ == {"c": c} and sorted(set(model.labels_)) == [0, 1, 2]
    pairwise = np.array([[cauchy_reference(x, mu, c) for mu in model.cluster_centers_.astype(np.float64)]
                         for x in X.astype(np.float32).astype(np.float64)])
    np.testing.assert_array_equal(model.predict(X), model.labels_)
    np.testing.assert_array_equal(pairwise[np.arange(len(X)), model.labels_], pairwise.min(1))
    assert model.objective_ == pytest.approx(pairwise.min(1).sum(), rel=1e-5)
    assert all(b <= a * (1 + 1e-6) for a, b in zip(seen, seen[1:]))  # IRLS never raises the objective
    auto = GeneralizedKMeans(3, "cauchy", n_init=1).fit(X)  # the base class's auto rule
    assert auto.params_["c"] > 0


@pytest.fixture
def features_cache(tmp_path):
    out = tmp_path / "out"
    rng = np.random.default_rng(0)
    features = rng.random((30, 512), dtype=np.float32)
    features[10:20] += 1.0
    activate_key(out, {"weights": "test"})
    write_cache(out, [Entry(f"p/{i}.jpg", 1, 1, f"{i:040x}", "ok") for i in range(30)], features)
    return out


def test_the_toy_loss_runs_through_the_cluster_and_represent_stages(cauchy, features_cache, capsys):
    out = features_cache
    cfg = ClusterConfig(k=3, losses=("square", "cauchy"), n_init=1, device="cpu", params={"cauchy": "auto"})
    results = cluster_run(out, cfg, log=lambda line: None)
    assert [r.loss for r in results] == ["square", "cauchy"] and not results[1].reused
    summary = json.loads((out / "clusters" / "cauchy" / "summary.json").read_text())
    assert list(summary["params"]) == ["c"] and sum(summary["sizes"]) == 30
    reps = represent_run(out, log=lambda line: None)
    assert [r.loss for r in reps] == ["square", "cauchy"] and len(reps[1].clusters) == 3
    # and through the command line: the config's parser sees the registered name too
    assert main(["cluster", "--out", str(out), "--k", "3", "--n-init", "1", "--losses", "cauchy",
                 "--param", "cauchy=0.5", "--device", "cpu"]) == 0
    assert json.loads((out / "clusters" / "cauchy" / "summary.json").read_text())["params"] == {"c": 0.5}
    capsys.readouterr()


def test_changing_a_loss_changes_the_engine_fingerprint_and_refits(cauchy, features_cache, monkeypatch):
    cfg = ClusterConfig(k=3, losses=("huber", "cauchy"), n_init=1, device="cpu")
    before = {name: engine_fingerprint(name) for name in ("huber", "cauchy", "square")}
    cluster_run(features_cache, cfg, log=lambda line: None)
    assert all(r.reused for r in cluster_run(features_cache, cfg, log=lambda line: None))

    # a patched method of a registered loss: only that loss refits
    def steeper_weights(self, r, delta):
        return (delta / r.abs().clamp(min=1e-30)).clamp(max=1.0) ** 2

    monkeypatch.setattr(type(L.get_loss("huber")), "irls_weights", steeper_weights)
    assert engine_fingerprint("huber") != before["huber"] and engine_fingerprint("square") == before["square"]
    assert [r.reused for r in cluster_run(features_cache, cfg, log=lambda line: None)] == [False, True]
    monkeypatch.undo()
    assert engine_fingerprint("huber") == before["huber"]
    assert [r.reused for r in cluster_run(features_cache, cfg, log=lambda line: None)] == [False, True]

    # another class registered under the same name
    class SteeperCauchy(Cauchy):
        inner_steps = 4

    L.register(SteeperCauchy, replace=True)
    try:
        assert engine_fingerprint("cauchy") != before["cauchy"]
        assert [r.reused for r in cluster_run(features_cache, cfg, log=lambda line: None)] == [True, False]
    finally:
        L.register(Cauchy, replace=True)
    assert engine_fingerprint("cauchy") == before["cauchy"]
