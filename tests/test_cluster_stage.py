"""The `cluster` stage: cached features in, one clustering per loss out, no image opened."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.cache import key_id, read_key
from pipeline.cli import main
from pipeline.losses import LOSS_NAMES

from conftest import make_photos


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A folder of 12 generated photos (one unreadable file too), embedded with random weights."""
    root = tmp_path_factory.mktemp("stage")
    photos, out = root / "photos", root / "out"
    make_photos(photos, 12)
    (photos / "a" / "bad.jpg").write_bytes(b"not an image")
    assert main(["extract", str(photos), "--out", str(out), "--weights", "random", "--device", "cpu",
                 "--workers", "0"]) == 0
    return photos, out


def cluster(out: Path, *args: str) -> int:
    return main(["cluster", "--out", str(out), "--k", "3", "--n-init", "2", *args])


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_every_loss_writes_assignments_centers_and_summary(extracted, tmp_path, capsys):
    photos, cached = extracted
    out = tmp_path / "out"
    shutil.copytree(cached, out)
    shutil.move(str(photos), str(tmp_path / "moved-away"))  # the stage must not open a photo
    try:
        assert cluster(out) == 0
    finally:
        shutil.move(str(tmp_path / "moved-away"), str(photos))
    assert "6 fitted, 0 up to date" in capsys.readouterr().out

    manifest = read_csv(out / "manifest.csv")
    embedded = [r["path"] for r in manifest if r["status"] == "ok"]
    assert len(embedded) == 12 and len(manifest) == 13
    for loss in LOSS_NAMES:
        folder = out / "clusters" / loss
        rows = read_csv(folder / "assignments.csv")
        assert [r["path"] for r in rows] == embedded  # the unreadable file is not clustered
        labels = np.array([int(r["cluster"]) for r in rows])
        assert set(labels) <= {0, 1, 2}
        centers = np.load(folder / "centers.npy", allow_pickle=False)
        assert centers.shape == (3, 512) and centers.dtype == np.float32
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["k"] == 3 and summary["seed"] == 0 and summary["n_images"] == 12
        assert summary["sizes"] == np.bincount(labels, minlength=3).tolist()
        losses = np.array([float(r["loss_to_center"]) for r in rows])
        assert summary["objective"] == pytest.approx(losses.sum(), rel=1e-5)
        assert summary["features_cache_key"] == key_id(read_key(out))
        if loss in ("huber", "pseudo_huber", "correntropy", "epsilon_insensitive"):
            assert summary["param_setting"] == "auto" and list(summary["params"].values())[0] > 0


def test_rerun_with_the_same_inputs_does_no_work_and_a_change_refits(extracted, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(extracted[1], out)
    assert cluster(out, "--losses", "square,huber") == 0
    first = (out / "clusters" / "huber" / "summary.json").read_text()
    capsys.readouterr()
    assert cluster(out, "--losses", "square,huber") == 0
    assert "0 fitted, 2 up to date" in capsys.readouterr().out
    assert (out / "clusters" / "huber" / "summary.json").read_text() == first

    assert cluster(out, "--losses", "square,huber", "--param", "huber=0.05") == 0
    assert "1 fitted, 1 up to date" in capsys.readouterr().out
    summary = json.loads((out / "clusters" / "huber" / "summary.json").read_text())
    assert summary["params"] == {"delta": 0.05}


def test_summary_records_the_sampled_path_and_exact_refits(extracted, tmp_path, capsys, monkeypatch):
    from pipeline import kmeans

    # 12 photos take the path of a large collection when the sample is 4 rows
    monkeypatch.setattr(kmeans, "SAMPLE_MIN_ROWS", 4)
    monkeypatch.setattr(kmeans, "SAMPLE_PER_CLUSTER", 1)
    out = tmp_path / "out"
    shutil.copytree(extracted[1], out)
    assert cluster(out, "--losses", "huber") == 0
    assert "(sampled: restarts on a sample, then steps on all)" in capsys.readouterr().err
    summary = json.loads((out / "clusters" / "huber" / "summary.json").read_text())
    assert (summary["algorithm"], summary["exact_setting"], summary["sample_size"]) == ("sampled", False, 4)
    assert 1 <= summary["full_steps"] <= kmeans.FULL_STEPS
    assert sorted(int(row["cluster"]) for row in read_csv(out / "clusters" / "huber" / "assignments.csv")) \
        == sorted(np.repeat(np.arange(3), summary["sizes"]).tolist())

    assert cluster(out, "--losses", "huber", "--exact") == 0  # another algorithm: refitted
    assert "1 fitted, 0 up to date" in capsys.readouterr().out
    summary = json.loads((out / "clusters" / "huber" / "summary.json").read_text())
    assert (summary["algorithm"], summary["exact_setting"], summary["sample_size"], summary["full_steps"]) == \
        ("exact", True, 12, 0)


def test_same_seed_same_assignments(extracted, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        shutil.copytree(extracted[1], out)
        assert cluster(out, "--losses", "correntropy", "--seed", "3") == 0
    assert (a / "clusters/correntropy/assignments.csv").read_text() == \
        (b / "clusters/correntropy/assignments.csv").read_text()


@pytest.mark.parametrize("args, message", [
    (["--losses", "square,hinge"], "unknown loss 'hinge'"),
    (["--k", "50"], "larger than the 12 embedded images"),
    (["--param", "huber=-1"], "delta"),
    (["--param", "huber"], "LOSS=VALUE"),
    (["--param", "square=2"], "only huber, pseudo_huber, correntropy, epsilon_insensitive take"),
])
def test_user_mistakes_get_one_line(extracted, args, message, capsys):
    assert main(["cluster", "--out", str(extracted[1]), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cluster_before_extract_says_what_to_run(tmp_path, capsys):
    assert main(["cluster", "--out", str(tmp_path / "nothing")]) == 2
    assert "extract" in capsys.readouterr().err
