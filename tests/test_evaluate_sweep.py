"""Metrics against scikit-learn, the evaluate stage, and the k sweep."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sklearn import metrics as skm

from benchmarks.common import vgg_like
from pipeline import metrics
from pipeline.cli import main
from pipeline.config import ClusterConfig
from pipeline.errors import UserError
from pipeline.evaluate import folder_labels
from pipeline.sweep import knee, parse_k_range, silhouettes, suggest, sweep_features

from conftest import make_photos

CASES = [
    ([0, 0, 1, 1], [0, 0, 1, 1]),
    ([0, 0, 1, 1], [1, 1, 0, 0]),
    ([0, 0, 0, 0], [0, 1, 2, 3]),
    ([0, 1, 2, 3], [0, 0, 0, 0]),
    ([0, 0, 0, 0], [5, 5, 5, 5]),
    (["a", "a", "b", "b", "c"], [0, 0, 0, 1, 1]),
]


def random_cases():
    rng = np.random.default_rng(0)
    for n, classes, clusters in ((50, 3, 3), (200, 4, 7), (300, 6, 2), (1000, 10, 10)):
        yield rng.integers(0, classes, n), rng.integers(0, clusters, n)


@pytest.mark.parametrize("truth, predicted", CASES + list(random_cases()))
def test_metrics_agree_with_scikit_learn(truth, predicted):
    assert metrics.nmi(truth, predicted) == pytest.approx(skm.normalized_mutual_info_score(truth, predicted),
                                                          abs=1e-9)
    assert metrics.ari(truth, predicted) == pytest.approx(skm.adjusted_rand_score(truth, predicted), abs=1e-9)
    table = skm.cluster.contingency_matrix(truth, predicted)
    assert metrics.purity(truth, predicted) == pytest.approx(table.max(0).sum() / table.sum(), abs=1e-12)


def test_accuracy_matches_clusters_to_classes_one_to_one():
    assert metrics.accuracy([0, 0, 1, 1, 2, 2], [2, 2, 0, 0, 1, 1]) == 1.0  # a relabelling is perfect
    # more clusters than classes: the extra cluster's points count as wrong
    assert metrics.accuracy([0, 0, 0, 1, 1, 1], [0, 0, 2, 1, 1, 1]) == pytest.approx(5 / 6)
    # fewer clusters than classes: a class without a cluster is all wrong
    assert metrics.accuracy([0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 1, 1]) == pytest.approx(4 / 6)
    # purity may count one cluster for two classes; accuracy may not
    assert metrics.purity([0, 0, 1, 1], [0, 0, 0, 0]) == 0.5 and metrics.accuracy([0, 0, 1, 1], [0, 0, 0, 0]) == 0.5


def test_silhouette_matches_scikit_learn_with_a_precomputed_distance():
    X = vgg_like(80, 6, 3, seed=1)
    labels = np.random.default_rng(2).integers(0, 3, 80)
    labels[0] = 3  # a singleton cluster scores 0, as in scikit-learn
    D = np.linalg.norm(X[:, None] - X[None], axis=2)
    assert silhouettes(D, labels) == pytest.approx(skm.silhouette_score(D, labels, metric="precomputed"), abs=1e-9)


def test_knee_and_suggestion():
    ks = list(range(2, 13))
    elbow = [100, 60, 25, 22, 20, 18, 16, 15, 14, 13, 12]  # bends at k=4
    assert knee(ks, elbow) == 4
    flat_silhouette = [0.1] * len(ks)
    assert suggest(ks, elbow, flat_silhouette) == (4, 2)  # ties go to the smaller k
    sil = [0.1, 0.2, 0.5, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9]
    assert suggest(ks, elbow, sil) == (4, 4)  # k=12's silhouette is beyond the knee window


@pytest.mark.parametrize("text, n, expected", [("2:5", 100, [2, 3, 4, 5]), ("2:9:3", 100, [2, 5, 8]),
                                                ("3:40", 6, [3, 4, 5])])  # capped below the number of photos
def test_k_range(text, n, expected):
    assert parse_k_range(text, n) == expected


@pytest.mark.parametrize("text, advice", [("5", "first:last"), ("1:4", "2 <= first"), ("4:2", "first <= last"),
                                          ("a:b", "like 2:40"), ("2:4:0", "first:last\\[:step\\]"),
                                          ("7:9", "at least the number of embedded images \\(6\\)")])
def test_bad_k_range_says_how_to_write_it(text, advice):
    with pytest.raises(UserError, match=f"^--k-range '?{text}'?: .*{advice}"):
        parse_k_range(text, 6)


def test_sweep_finds_the_planted_number_of_clusters():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 6, size=(5, 8))
    X = (centers[rng.integers(0, 5, 300)] + rng.normal(0, 0.5, size=(300, 8))).astype(np.float32)
    result = sweep_features(X, list(range(2, 13)), "square", ClusterConfig(n_init=2), log=lambda m: None)
    assert result.suggested == 5
    objectives = result.table["objective"].to_numpy()
    assert (np.diff(objectives) <= 1e-6 * objectives[0]).all()  # shared seeding: more k, never worse


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    photos, out = root / "photos", root / "out"
    make_photos(photos, 10)
    make_photos(photos / "c", 1, seed=5)  # c/b/img_00.png: label "c"
    assert main(["extract", str(photos), "--out", str(out), "--weights", "random", "--device", "cpu",
                 "--workers", "0"]) == 0
    assert main(["cluster", "--out", str(out), "--k", "2", "--n-init", "1", "--losses", "square,huber"]) == 0
    return photos, out


def test_evaluate_prints_a_table_and_writes_csvs(clustered, capsys):
    _, out = clustered
    assert main(["evaluate", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| loss | k | NMI | ARI | accuracy | purity |" in printed and "| huber | 2 |" in printed
    table = (out / "evaluation.csv").read_text().splitlines()
    assert table[0] == "loss,k,labelled,unlabelled,classes,nmi,ari,accuracy,purity" and len(table) == 3
    assert table[1].startswith("square,2,11,0,3,")
    agreement = (out / "evaluation_agreement.csv").read_text().splitlines()
    assert agreement[1].startswith("square,1.000000,")
    assert (out / "evaluation" / "confusion_square.png").is_file()


def test_evaluate_with_a_labels_csv_and_without_labels(clustered, tmp_path, capsys):
    _, out = clustered
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\na/img_01.jpg,x\nb/img_00.png,y\n")
    assert main(["evaluate", "--out", str(out), "--labels", str(labels)]) == 0
    assert "2 labelled photos" in capsys.readouterr().out
    labels.write_text("file,label\n")
    assert main(["evaluate", "--out", str(out), "--labels", str(labels)]) == 2
    assert "path,label" in capsys.readouterr().err
    assert folder_labels(["top.jpg", "a/b/c.jpg"]) == [None, "a"]


def test_sweep_stage_and_cluster_k_auto(clustered, tmp_path, capsys):
    _, cached = clustered
    out = tmp_path / "out"
    shutil.copytree(cached, out)
    assert main(["sweep", "--out", str(out), "--k-range", "2:5", "--n-init", "1"]) == 0
    meta = json.loads((out / "sweep" / "square.json").read_text())
    assert 2 <= meta["suggested_k"] <= 5 and "silhouette" in meta["rule"]
    assert (out / "sweep" / "square.csv").read_text().splitlines()[0] == "k,objective,silhouette,iterations,seconds"
    assert (out / "sweep" / "square.png").is_file()
    assert main(["cluster", "--out", str(out), "--k", "auto", "--losses", "square", "--n-init", "1"]) == 0
    summary = json.loads((out / "clusters" / "square" / "summary.json").read_text())
    assert summary["k"] == meta["suggested_k"]
