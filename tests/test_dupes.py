"""Duplicates (pipeline/dupes.py, `photoclust dupes`) and outliers (represent's outliers.csv)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import make_photos
from pipeline import dupes
from pipeline.cache import Entry, activate_key, load_embedded, write_cache
from pipeline.cli import main
from pipeline.dupes import UnionFind, check_current, dupes_run, find_duplicates, similar_pairs, unit_rows
from pipeline.errors import UserError
from pipeline.represent import outliers_table, robust_z
from pipeline.tables import read_frame, read_rows

FAST = ["--weights", "random", "--device", "cpu", "--workers", "0"]
quiet = dict(log=lambda line: None)


def sha(i: int) -> str:
    return f"{i:040x}"


def synthetic_cache(out: Path, features: np.ndarray, sha1s: list[str] | None = None,
                    paths: list[str] | None = None, key: dict | None = None) -> None:
    n = len(features)
    paths = paths or [f"p/{i:02d}.jpg" for i in range(n)]
    sha1s = sha1s or [sha(i) for i in range(n)]
    activate_key(out, key or {"weights": "test"})
    write_cache(out, [Entry(p, 1, 1, s, "ok") for p, s in zip(paths, sha1s)], features)


def spread(n: int, seed: int = 0) -> np.ndarray:
    """n non-negative 512-d rows (like pooled VGG16 features), pairwise far apart at cosine 0.9."""
    rng = np.random.default_rng(seed)
    return rng.gamma(0.3, 1.0, size=(n, 512)).astype(np.float32)


# ----------------------------------------------------------------------------- exact copies

def test_exact_copies_are_found_by_their_content(tmp_path, capsys):
    photos, out = tmp_path / "photos", tmp_path / "out"
    made = make_photos(photos, 5)
    shutil.copyfile(made[1], photos / "b" / "copy of img_01.jpg")
    (photos / "c").mkdir()
    shutil.copyfile(made[1], photos / "c" / "again.jpg")
    assert main(["extract", str(photos), "--out", str(out), *FAST]) == 0
    # threshold 1: only identical features could be near; the copies are found by SHA-1
    assert main(["dupes", "--out", str(out), "--threshold", "1"]) == 0
    header, rows = read_rows(out / "duplicates.csv")
    assert header == ["group", "path", "kind", "similarity"]
    assert [(r["group"], r["path"], r["kind"], r["similarity"]) for r in rows] == [
        ("0", "a/img_01.jpg", "exact", "1.000000"), ("0", "b/copy of img_01.jpg", "exact", "1.000000"),
        ("0", "c/again.jpg", "exact", "1.000000")]
    assert "1 duplicate group(s), 3 photos" in capsys.readouterr().out


# ----------------------------------------------------------------------------- near copies

def test_a_near_copy_is_grouped_as_near_with_its_cosine():
    features = spread(6)
    rng = np.random.default_rng(1)
    copy = features[2] * 1.3 + rng.normal(0, 0.02, 512).astype(np.float32)  # brighter, a little noise
    features = np.vstack([features, copy])
    paths = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg", "c_small.jpg"]
    table = find_duplicates(paths, [sha(i) for i in range(7)], features, 0.9)
    assert table["path"].tolist() == ["c.jpg", "c_small.jpg"] and set(table["kind"]) == {"near"}
    u = features.astype(np.float64) / np.linalg.norm(features.astype(np.float64), axis=1, keepdims=True)
    assert table["similarity"].tolist() == pytest.approx([1.0, u[6] @ u[2]], abs=1e-6)
    assert table["similarity"].iloc[1] < 1.0


def test_groups_join_chains_and_report_the_cosine_to_the_first_member():
    """a~b and b~c at the threshold but not a~c: one group of three (connected components)."""
    angles = np.radians([0.0, 20.0, 40.0, 90.0])
    features = np.zeros((4, 512), np.float32)
    features[:, 0], features[:, 1] = np.cos(angles), np.sin(angles)
    threshold = float(np.cos(np.radians(25)))
    table = find_duplicates(["a", "b", "c", "d"], [sha(i) for i in range(4)], features, threshold)
    assert table["path"].tolist() == ["a", "b", "c"] and set(table["group"]) == {0}
    assert table["similarity"].tolist() == pytest.approx([1.0, np.cos(np.radians(20)), np.cos(np.radians(40))],
                                                         abs=1e-6)


# ----------------------------------------------------------------------------- blocked search

def brute_force(unit: np.ndarray, threshold: float) -> dict[tuple[int, int], float]:
    full = unit.astype(np.float64) @ unit.astype(np.float64).T
    i, j = np.triu_indices(len(unit), 1)
    keep = full[i, j] >= threshold
    return {(a, b): s for a, b, s in zip(i[keep].tolist(), j[keep].tolist(), full[i, j][keep].tolist())}


@pytest.mark.parametrize("blocks", [(1, 1), (7, 13), (64, 5), (50, 50), (1000, 3), (4096, 4096)])
def test_the_blocked_search_equals_a_brute_force_search(blocks):
    rng = np.random.default_rng(3)
    base = rng.normal(size=(150, 24))
    near = base[rng.integers(0, 150, 60)] + rng.normal(0, 0.3, size=(60, 24))  # planted near pairs
    unit = unit_rows(np.vstack([base, near]))
    full = np.sort((unit.astype(np.float64) @ unit.T.astype(np.float64))[np.triu_indices(210, 1)])
    for wanted in (0.3, 0.8, 0.95):  # a threshold halfway between two observed cosines: no float ties
        k = np.searchsorted(full, wanted)
        threshold = float((full[k - 1] + full[k]) / 2)
        expected = brute_force(unit, threshold)
        found = {}
        for i, j, s in similar_pairs(unit, threshold, block_rows=blocks[0], block_cols=blocks[1]):
            assert (i < j).all()
            found.update(zip(zip(i.tolist(), j.tolist()), s.tolist()))
        assert found.keys() == expected.keys() and expected
        assert [found[p] for p in expected] == pytest.approx(list(expected.values()), abs=1e-5)


def components_by_search(n: int, edges: list[tuple[int, int]]) -> np.ndarray:
    neighbours = {i: [] for i in range(n)}
    for a, b in edges:
        neighbours[a].append(b)
        neighbours[b].append(a)
    label = np.full(n, -1)
    for start in range(n):
        if label[start] < 0:
            stack, label[start] = [start], start
            while stack:
                for other in neighbours[stack.pop()]:
                    if label[other] < 0:
                        label[other] = start
                        stack.append(other)
    return label


def test_union_find_joins_transitive_chains_across_batches():
    chain = UnionFind(8)
    chain.union([6, 4], [7, 5])
    chain.union([5, 2], [6, 3])  # 4-5-6-7 in two batches, and 2-3
    chain.union([3], [4])
    assert chain.labels().tolist() == [0, 1, 2, 2, 2, 2, 2, 2]
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = 60
        edges = [tuple(e) for e in rng.integers(0, n, size=(int(rng.integers(0, 70)), 2))]
        uf = UnionFind(n)
        for batch in np.array_split(np.array(edges, dtype=np.int64).reshape(-1, 2), 3):
            uf.union(batch[:, 0], batch[:, 1])
        assert uf.labels().tolist() == components_by_search(n, edges).tolist(), trial


# ----------------------------------------------------------------------------- the table

def test_groups_are_numbered_largest_first_then_by_first_path_with_members_by_path():
    features = spread(12)
    features[[9, 3]] = features[5]  # group {3, 5, 9}: exact-content copies? no: same features, other files
    features[7] = features[1]  # {1, 7}
    features[11] = features[0]  # {0, 11}
    paths = ["m", "z", "q", "d", "x", "b", "y", "c", "w", "k", "v", "a"]
    sha1s = [sha(i) for i in range(12)]
    sha1s[9] = sha1s[5]  # 9 is a byte-for-byte copy of 5
    table = find_duplicates(paths, sha1s, features, 0.99)
    assert list(table.columns) == ["group", "path", "kind", "similarity"]
    # sizes 3, 2, 2; the two pairs ordered by their first path: "a" (0, 11) before "c" (1, 7)
    assert list(zip(table["group"], table["path"], table["kind"])) == [
        (0, "b", "exact"), (0, "d", "near"), (0, "k", "exact"),
        (1, "a", "near"), (1, "m", "near"),
        (2, "c", "near"), (2, "z", "near")]


# ----------------------------------------------------------------------------- the stage

@pytest.fixture
def cache(tmp_path):
    out = tmp_path / "out"
    features = spread(10)
    features[4] = features[8] * 2.0  # near: the same direction
    sha1s = [sha(i) for i in range(10)]
    sha1s[6] = sha1s[1]  # exact copies
    synthetic_cache(out, features, sha1s)
    return out


def test_a_rerun_with_unchanged_inputs_writes_nothing(cache, tmp_path, monkeypatch):
    first = dupes_run(cache, **quiet)
    assert (first.groups, first.photos, first.exact, first.reused) == (2, 4, 2, False)
    stamp = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (cache / "duplicates.csv", cache / "duplicates.json")}
    log = tmp_path / "points"
    monkeypatch.setenv("PHOTOCLUST_FAULT_LOG", str(log))
    again = dupes_run(cache, **quiet)
    assert again.reused and (again.groups, again.photos) == (2, 4)
    assert not log.exists()  # not one write point passed
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in stamp} == stamp
    monkeypatch.delenv("PHOTOCLUST_FAULT_LOG")
    changed = dupes_run(cache, threshold=0.5, **quiet)  # another threshold: computed again
    assert not changed.reused


def test_duplicates_of_other_features_are_refused_until_dupes_runs_again(cache):
    dupes_run(cache, **quiet)
    check_current(cache, load_embedded(cache).fingerprint)
    features = spread(10, seed=5)  # the photos changed: new features, same paths
    synthetic_cache(cache, features)
    fingerprint = load_embedded(cache).fingerprint
    with pytest.raises(UserError, match="other features.*photoclust dupes"):
        check_current(cache, fingerprint)
    dupes_run(cache, **quiet)
    frame, record = dupes.read_duplicates(cache, fingerprint)
    assert record["features_fingerprint"] == fingerprint and frame.empty


def test_an_edited_or_half_written_duplicates_csv_is_refused_and_rewritten(cache):
    dupes_run(cache, **quiet)
    fingerprint = load_embedded(cache).fingerprint
    clean = (cache / "duplicates.csv").read_bytes()
    (cache / "duplicates.csv").write_bytes(clean.replace(b"exact", b"near"))
    with pytest.raises(UserError, match="changed since"):
        check_current(cache, fingerprint)
    assert not dupes_run(cache, **quiet).reused
    assert (cache / "duplicates.csv").read_bytes() == clean
    (cache / "duplicates.json").unlink()  # as a crash before the record leaves it
    with pytest.raises(UserError, match="incomplete"):
        check_current(cache, fingerprint)


@pytest.mark.parametrize("model, expected", [("vgg16", 0.86), ("efficientnet-lite0", 0.82), (None, 0.86)])
def test_without_a_threshold_each_model_gets_its_own(tmp_path, model, expected):
    # cosines of different networks' features are on different scales: two photos at cosine
    # 0.84 are near-duplicates in Lite0's features (calibrated 0.82), not in VGG16's (0.86)
    from pipeline.backbones import get

    features = np.zeros((3, 8), dtype=np.float32)
    features[0, 0] = 1.0
    features[1, :2] = (0.84, np.sqrt(1 - 0.84 ** 2))
    features[2, 5] = 1.0
    key = {"weights": "test", **({"model": get(model).model_id} if model else {})}
    out = tmp_path / "out"
    synthetic_cache(out, features, key=key)
    result = dupes_run(out, **quiet)
    assert result.threshold == expected
    assert result.photos == (2 if expected < 0.84 else 0)
    assert json.loads((out / "duplicates.json").read_text())["threshold"] == expected
    assert dupes_run(out, threshold=0.8, **quiet).photos == 2  # an explicit threshold wins


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2", "abc", "nan", ""])
def test_a_bad_threshold_is_one_line_naming_the_flag(cache, value, capsys):
    assert main(["dupes", "--out", str(cache), "--threshold", value]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "--threshold" in captured.err and "(0, 1]" in captured.err
    assert not (cache / "duplicates.csv").exists()


# ----------------------------------------------------------------------------- outliers

def by_hand(labels: np.ndarray, losses: np.ndarray) -> np.ndarray:
    z = np.empty(len(losses))
    for c in set(labels.tolist()):
        idx = [i for i in range(len(labels)) if labels[i] == c]
        values = np.array([losses[i] for i in idx])
        med = np.median(values)
        mad = np.median(np.abs(values - med))
        if mad == 0:
            mad = np.mean(np.abs(values - med))
        for i in idx:
            z[i] = 0.0 if mad == 0 else (losses[i] - med) / mad
    return z


def test_robust_z_is_distance_from_the_cluster_median_in_mads():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    losses = rng.gamma(2.0, 1.0, 300) * (labels + 1)
    labels = np.r_[labels, 7, 7, 7, 7, 9, 9]  # a cluster with MAD 0, and one with no spread at all
    losses = np.r_[losses, 0.0, 0.0, 0.0, 1.0, 2.0, 2.0]
    z = robust_z(labels, losses)
    assert z == pytest.approx(by_hand(labels, losses), rel=1e-12)
    assert z[-6:].tolist() == pytest.approx([0, 0, 0, 4.0, 0, 0])  # mean absolute deviation 0.25 stands in


def test_outliers_are_the_worst_losses_then_any_far_above_their_cluster():
    labels = np.array([0] * 6 + [1] * 6)
    losses = np.array([10.0, 10.1, 10.2, 10.3, 10.4, 10.5, 1.0, 1.1, 1.2, 1.3, 1.0, 3.0])
    paths = [f"p{i:02d}" for i in range(12)]
    paths[5], losses[3] = "a_tie", 10.5  # p03 ties with a_tie (row 5): by path, not by row
    table = outliers_table(paths, labels, losses, at_least=3, share=0.0, z_flag=5.0)
    assert list(table.columns) == ["rank", "path", "cluster", "loss_to_center", "robust_z"]
    z = by_hand(labels, losses)
    assert table["path"].tolist() == ["a_tie", "p03", "p04", "p11"]  # worst three, then p11 (z >= 5)
    assert table["rank"].tolist() == [1, 2, 3, 4]
    assert table["robust_z"].tolist() == pytest.approx(np.round(z[[5, 3, 4, 11]], 4).tolist())
    assert z[11] >= 5 > z[[0, 1, 2, 6, 7, 8, 9, 10]].max()
    # the default count: 50, or 2% of a larger collection
    many = np.arange(3000, dtype=float)
    assert len(outliers_table([f"{i}" for i in range(3000)], np.zeros(3000, int), many)) == 60
    assert len(outliers_table(paths, labels, losses)) == 12


def test_represent_writes_outliers_of_the_clustering(tmp_path):
    out = tmp_path / "out"
    features = spread(40)
    features[20:] += 2.0
    synthetic_cache(out, features)
    assert main(["cluster", "--out", str(out), "--k", "2", "--losses", "square,correntropy", "--n-init", "1"]) == 0
    assert main(["represent", "--out", str(out)]) == 0
    for loss in ("square", "correntropy"):
        assignments = read_frame(out / "clusters" / loss / "assignments.csv", text_columns=["path"])
        outliers = read_frame(out / "clusters" / loss / "outliers.csv", text_columns=["path"])
        worst = assignments.sort_values(["loss_to_center", "path"], ascending=[False, True])
        assert outliers["path"].tolist() == worst["path"].tolist()  # 40 photos: all of them, worst first
        assert outliers["cluster"].tolist() == worst["cluster"].tolist()
        assert outliers["loss_to_center"].tolist() == worst["loss_to_center"].tolist()
    # a refit drops the old outliers with the old representatives
    assert main(["cluster", "--out", str(out), "--k", "3", "--losses", "square", "--n-init", "1"]) == 0
    assert not (out / "clusters" / "square" / "outliers.csv").exists()
