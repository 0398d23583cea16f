"""`assign`: new photos placed into a run's clusters with the run's own embedding and no
refit; the run's cache and clusterings never change; bad input is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.assign import ASSIGNED_COLUMNS, rank_among, read_assigned
from pipeline.cli import main
from pipeline.layout import Layout
from pipeline.losses import LOSS_NAMES
from pipeline.tables import read_frame

from conftest import make_photos

FAST = ["--weights", "random", "--device", "cpu", "--workers", "0"]
ASSIGN = ["--device", "cpu", "--workers", "0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """(photos, out): 10 photos clustered under every loss (k=3), ranked."""
    root = tmp_path_factory.mktemp("assign")
    photos = root / "photos"
    make_photos(photos, 10)
    out = root / "out"
    assert main(["extract", str(photos), "--out", str(out), *FAST]) == 0
    assert main(["cluster", "--out", str(out), "--k", "3", "--n-init", "1", "--max-iter", "10"]) == 0
    assert main(["represent", "--out", str(out)]) == 0
    return photos, out


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _error(capsys) -> str:
    """The one error line of a failed command (warnings may come before it)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("photoclust: error:")]
    assert len(errors) == 1, err
    return errors[0]


def test_copies_of_clustered_photos_join_their_own_clusters_under_every_loss(run, tmp_path, capsys):
    photos, cached = run
    out = tmp_path / "out"
    shutil.copytree(cached, out)
    new = tmp_path / "new"
    originals = ["a/img_01.jpg", "b/img_04.jpg", "a/img_09.png"]
    for i, rel in enumerate(originals):  # other names, other folders: only the pixels are the same
        (new / "sub").mkdir(parents=True, exist_ok=True)
        shutil.copy(photos / rel, new / "sub" / f"copy_{i}{Path(rel).suffix}")
    fresh = make_photos(tmp_path / "fresh", 1, seed=11)[0]
    shutil.copy(fresh, new / "fresh.png")
    (new / "broken.jpg").write_bytes(b"not a jpeg at all")
    before = _snapshot(out)

    assert main(["assign", str(new), "--out", str(out), *ASSIGN]) == 0
    err = capsys.readouterr().err
    assert "unreadable:" in err and "broken.jpg" in err  # reported, not silently dropped

    after = _snapshot(out)
    assert set(after) - set(before) == {"assigned.csv"}
    assert {name: after[name] for name in before} == before  # features, manifest, clusterings: byte for byte
    frame = read_frame(Layout(out).assigned, ["path", "loss", "clustering_fingerprint"])
    assert list(frame.columns) == ASSIGNED_COLUMNS
    assert len(frame) == 4 * len(LOSS_NAMES) and not frame["path"].str.contains("broken").any()
    assert list(frame["loss"].unique()) == list(LOSS_NAMES)
    for loss in LOSS_NAMES:
        members = read_frame(Layout(out).assignments(loss), ["path"]).set_index("path")
        summary = json.loads(Layout(out).summary(loss).read_text())
        rows = frame[frame["loss"] == loss].set_index("path")
        assert (rows["clustering_fingerprint"] == summary["fingerprint"]).all()
        assert rows["cluster"].between(0, summary["k"] - 1).all()
        for i, rel in enumerate(originals):
            placed = rows.loc[str((new / "sub" / f"copy_{i}{Path(rel).suffix}").resolve())]
            member = members.loc[rel]
            assert placed["cluster"] == member["cluster"], (loss, rel)
            # the same loss to the same center, so it ranks where the photo itself does
            assert placed["loss_to_center"] == pytest.approx(member["loss_to_center"], rel=1e-4, abs=1e-7), (loss, rel)
            assert abs(int(placed["rank_among_members"]) - int(member["rank"])) <= 1, (loss, rel)
    assert read_assigned(out).equals(frame)

    # Deterministic: the same command gives the same bytes.
    first = Layout(out).assigned.read_bytes()
    assert main(["assign", str(new), "--out", str(out), *ASSIGN]) == 0
    assert Layout(out).assigned.read_bytes() == first


def test_rows_of_a_refitted_clustering_are_not_current(run, tmp_path):
    _, cached = run
    out = tmp_path / "out"
    shutil.copytree(cached, out)
    new = tmp_path / "new"
    make_photos(new, 2, seed=5)
    assert main(["assign", str(new), "--out", str(out), *ASSIGN, "--losses", "square,huber"]) == 0
    assert sorted(read_assigned(out)["loss"].unique()) == ["huber", "square"]
    assert main(["cluster", "--out", str(out), "--k", "2", "--losses", "huber", "--n-init", "1"]) == 0
    assert list(read_assigned(out)["loss"].unique()) == ["square"]


def test_rank_among_members_counts_the_nearer_members():
    members_cluster = np.array([0, 0, 0, 1, 1])
    members_loss = np.array([0.1, 0.2, 0.3, 0.5, 0.6])
    assert rank_among(members_cluster, members_loss, np.array([0, 0, 1, 0]),
                      np.array([0.05, 0.2, 0.7, 0.25])).tolist() == [0, 1, 2, 2]


def test_bad_new_folders_give_one_line(run, tmp_path, capsys):
    _, cached = run
    out = tmp_path / "out"
    shutil.copytree(cached, out)
    assert main(["assign", str(tmp_path / "nowhere"), "--out", str(out), *ASSIGN]) == 2
    assert "NEW_PHOTOS" in (line := _error(capsys)) and "nowhere" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photos here")
    assert main(["assign", str(empty), "--out", str(out), *ASSIGN]) == 2
    assert "no images found" in _error(capsys)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"")
    assert main(["assign", str(broken), "--out", str(out), *ASSIGN]) == 2
    assert "none of its 1 image(s) could be decoded" in _error(capsys)
    assert not Layout(out).assigned.exists()


def test_a_missing_incomplete_or_stale_run_gives_one_line(run, tmp_path, capsys, monkeypatch):
    photos, cached = run
    new = tmp_path / "new"
    make_photos(new, 1, seed=3)
    assert main(["assign", str(new), "--out", str(tmp_path / "no_run"), *ASSIGN]) == 2
    assert "photoclust extract" in _error(capsys)
    monkeypatch.chdir(tmp_path)  # no outputs/sample here to fall back on
    assert main(["assign", str(new), *ASSIGN]) == 2
    assert "--out" in _error(capsys)

    extracted = tmp_path / "extracted"
    assert main(["extract", str(photos), "--out", str(extracted), *FAST]) == 0
    capsys.readouterr()
    assert main(["assign", str(new), "--out", str(extracted), *ASSIGN]) == 2
    assert "photoclust cluster" in _error(capsys)

    stale = tmp_path / "stale"
    shutil.copytree(cached, stale)
    more = tmp_path / "more"
    shutil.copytree(photos, more)
    shutil.copy(new / "b" / "img_00.png", more / "added.png")
    assert main(["extract", str(more), "--out", str(stale), *FAST]) == 0
    capsys.readouterr()
    assert main(["assign", str(new), "--out", str(stale), *ASSIGN]) == 2
    assert "other features than the cached ones" in _error(capsys)
    for folder in (extracted, stale):
        assert not Layout(folder).assigned.exists()


def test_an_embedding_that_cannot_be_reproduced_is_refused(run, tmp_path, capsys):
    _, cached = run
    new = tmp_path / "new"
    make_photos(new, 1, seed=3)

    def tampered(name: str, change) -> Path:
        out = tmp_path / name
        shutil.copytree(cached, out)
        key = json.loads(Layout(out).cache_key.read_text())
        change(key)
        Layout(out).cache_key.write_text(json.dumps(key))
        return out

    other_torch = tampered("torch", lambda key: key["versions"].update(torch="1.0.0"))
    assert main(["assign", str(new), "--out", str(other_torch), *ASSIGN]) == 2
    line = _error(capsys)
    assert "versions.torch: '1.0.0' in the run" in line and "photoclust extract" in line

    weights_file = tampered("file", lambda key: key.update(weights="file:mine.pth:sha256=0123456789abcdef"))
    assert main(["assign", str(new), "--out", str(weights_file), *ASSIGN]) == 2
    assert "--weights PATH" in _error(capsys)

    other_seed = tmp_path / "seed"
    shutil.copytree(cached, other_seed)
    assert main(["assign", str(new), "--out", str(other_seed), *ASSIGN, "--weights", "random"]) == 0  # the run's seed
    saved = tmp_path / "other.pth"
    from pipeline.weights import load_random
    import torch

    torch.save(load_random(1).state_dict, saved)
    capsys.readouterr()
    assert main(["assign", str(new), "--out", str(other_seed), *ASSIGN, "--weights", str(saved)]) == 2
    line = _error(capsys)
    assert "but the run" in line and "random:seed=0" in line
    for out in (other_torch, weights_file):
        assert not Layout(out).assigned.exists()
