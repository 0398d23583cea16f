"""The whole pipeline end to end: represent, render, index.html, export, check_html."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cli import main
from pipeline.cluster import normalize_features
from pipeline.losses import LOSS_NAMES, PARAM_NAME, loss_to_centers
from pipeline.render import shorten, font

from check_html import broken_links, check_site, chromium, crawl
from conftest import make_photos

HOSTILE = "<img src=x onerror=alert(1)>.jpg"
FAST = ["--weights", "random", "--device", "cpu", "--workers", "0", "--n-init", "1"]


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    photos, out = root / "photos", root / "out"
    make_photos(photos, 10)
    (photos / "a" / HOSTILE).write_bytes(b"definitely not a jpeg")
    rgba = Image.new("RGBA", (480, 160), (0, 0, 255, 0))
    rgba.paste((200, 0, 0, 255), (0, 0, 240, 160))
    rgba.save(photos / "b" / "transparent.png")
    rotated = Image.new("RGB", (480, 160), (10, 200, 10))
    exif = rotated.getexif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    rotated.save(photos / "b" / "rotated.jpg", exif=exif)
    assert main(["run", str(photos), "--out", str(out), "--k", "3", *FAST]) == 0
    return photos, out


def test_every_output_exists_and_agrees_with_the_manifest(pipeline_run):
    _, out = pipeline_run
    manifest = rows(out / "manifest.csv")
    embedded = [r["path"] for r in manifest if r["status"] == "ok"]
    assert len(embedded) == 12 and [r["path"] for r in manifest if r["status"] != "ok"] == [f"a/{HOSTILE}"]
    assert (out / "index.html").is_file() and (out / "sheets" / "losses.png").is_file()
    assert (out / "duplicates.csv").is_file() and (out / "duplicates.json").is_file()  # run includes dupes
    for loss in LOSS_NAMES:
        assignments = rows(out / "clusters" / loss / "assignments.csv")
        assert [r["path"] for r in assignments] == embedded
        assert (out / "sheets" / f"representatives_{loss}.png").is_file()
        loss_of = {a["path"]: float(a["loss_to_center"]) for a in assignments}
        assert [r["path"] for r in rows(out / "clusters" / loss / "outliers.csv")] == sorted(
            embedded, key=lambda p: (-loss_of[p], p))  # 12 photos, fewer than 50: all of them, worst first
        for cluster in {int(r["cluster"]) for r in assignments}:
            assert (out / "sheets" / loss / f"cluster_{cluster}.png").is_file()


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_representatives_are_members_and_minimise_the_loss_to_their_center(pipeline_run, loss):
    _, out = pipeline_run
    folder = out / "clusters" / loss
    assignments = rows(folder / "assignments.csv")
    reps = rows(folder / "representatives.csv")
    summary = json.loads((folder / "summary.json").read_text())
    # recompute every member's loss from the cached features and the saved centers
    manifest = rows(out / "manifest.csv")
    ok = [i for i, r in enumerate(manifest) if r["status"] == "ok"]
    X = normalize_features(np.load(out / "features.npy", allow_pickle=False)[ok], summary["normalize"])
    centers = np.load(folder / "centers.npy", allow_pickle=False)
    labels = np.array([int(r["cluster"]) for r in assignments])
    param = summary["params"].get(PARAM_NAME.get(loss, ""), None)
    losses = loss_to_centers(torch.from_numpy(X), torch.from_numpy(centers), torch.from_numpy(labels),
                             loss, param).double().numpy()
    assert sum(int(r["size"]) for r in reps) == len(assignments)
    for rep in reps:
        c = int(rep["cluster"])
        members = [i for i, r in enumerate(assignments) if int(r["cluster"]) == c]
        best = [i for i in members if assignments[i]["path"] == rep["representative"]]
        assert len(best) == 1  # a member of its own cluster
        assert losses[best[0]] <= losses[members].min() + 1e-6
        marked = [assignments[i]["path"] for i in members if assignments[i]["is_representative"] == "1"]
        assert marked == [rep["representative"]]
        assert sorted(int(assignments[i]["rank"]) for i in members) == list(range(len(members)))


def test_hostile_file_names_show_as_text(pipeline_run):
    _, out = pipeline_run
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in page
    assert broken_links(out / "index.html") == []


def test_a_second_run_redoes_no_work(pipeline_run, capsys):
    photos, out = pipeline_run
    summaries = sorted((out / "clusters").glob("*/summary.json"))
    assert len(summaries) == len(LOSS_NAMES)
    before = {path: path.stat().st_mtime_ns for path in summaries}
    features = (out / "features.npy").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["run", str(photos), "--out", str(out), "--k", "3", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "decoded 0, reused 13" in printed  # the unreadable file is not retried either
    assert f"({0} fitted, {len(LOSS_NAMES)} up to date)" in printed  # no loss is refitted
    assert {path: path.stat().st_mtime_ns for path in summaries} == before
    assert (out / "features.npy").stat().st_mtime_ns == features
    assert "index.html" in printed


def test_recluster_and_represent_without_the_photos(pipeline_run, tmp_path):
    photos, cached = pipeline_run
    out = tmp_path / "out"
    shutil.copytree(cached, out)
    hidden = tmp_path / "elsewhere"
    shutil.move(str(photos), str(hidden))
    try:
        assert main(["cluster", "--out", str(out), "--k", "4", "--n-init", "1", "--losses", "square,huber"]) == 0
        assert main(["represent", "--out", str(out), "--losses", "square,huber"]) == 0
    finally:
        shutil.move(str(hidden), str(photos))
    assert len(rows(out / "clusters" / "huber" / "representatives.csv")) == 4


def test_thumbnails_of_transparent_rotated_and_odd_sized_photos(pipeline_run):
    _, out = pipeline_run
    manifest = {r["path"]: r["sha1"] for r in rows(out / "manifest.csv")}
    thumbs = out / "thumbs"
    with Image.open(thumbs / f"{manifest['b/transparent.png']}_160.jpg") as im:
        assert im.size == (160, 53)
        assert min(im.getpixel((150, 26))) > 240  # transparent half is white, not blue or black
        r, g, b = im.getpixel((20, 26))
        assert r > 150 and g < 80 and b < 80
    with Image.open(thumbs / f"{manifest['b/rotated.jpg']}_160.jpg") as im:
        assert im.size == (53, 160)  # EXIF orientation 6: upright portrait


def test_a_cluster_of_one_photo(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    make_photos(photos, 2)
    assert main(["run", str(photos), "--out", str(out), "--k", "2", "--losses", "absolute", *FAST]) == 0
    reps = rows(out / "clusters" / "absolute" / "representatives.csv")
    assert sorted(int(r["size"]) for r in reps) == [1, 1] and all(r["outliers"] == "" for r in reps)
    assert (out / "sheets" / "absolute" / "cluster_0.png").is_file()


def test_export_as_links_and_copies_keeps_names_and_handles_clashes(tmp_path, capsys):
    photos, out = tmp_path / "photos", tmp_path / "out"
    make_photos(photos, 3)
    shutil.copy(photos / "a" / "img_01.jpg", photos / "b" / "img_01.jpg")  # same name in two folders
    assert main(["run", str(photos), "--out", str(out), "--k", "1", "--losses", "square", *FAST]) == 0
    links = tmp_path / "links"
    assert main(["export", "--out", str(out), "--loss", "square", "--to", str(links)]) == 0
    names = sorted(p.name for p in (links / "cluster_0").iterdir())
    assert names == ["img_00.png", "img_01.jpg", "img_01_2.jpg", "img_02.jpg"]
    assert all((links / "cluster_0" / n).is_symlink() for n in names)
    assert (links / "cluster_0" / "img_01_2.jpg").read_bytes() == (photos / "b" / "img_01.jpg").read_bytes()

    copies = tmp_path / "copies"
    assert main(["export", "--out", str(out), "--loss", "square", "--to", str(copies), "--copy"]) == 0
    assert not any(p.is_symlink() for p in (copies / "cluster_0").iterdir())
    assert "4 copies in 1 cluster folders" in capsys.readouterr().out
    # exporting again replaces the earlier export; a folder of the user's is refused
    assert main(["export", "--out", str(out), "--loss", "square", "--to", str(copies), "--copy"]) == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "holiday.txt").write_text("keep me")
    assert main(["export", "--out", str(out), "--loss", "square", "--to", str(mine)]) == 2
    assert "not empty" in capsys.readouterr().err and (mine / "holiday.txt").read_text() == "keep me"


def test_shorten_keeps_both_ends():
    face = font(12)
    name = "a_very_long_photo_name_from_a_camera_0001.jpeg"
    short = shorten(name, face, 100)
    assert face.getlength(short) <= 100 and short.startswith("a_ve") and short.endswith("jpeg") and "…" in short
    assert shorten("cat.jpg", face, 100) == "cat.jpg"


@pytest.mark.skipif(chromium() is None, reason="Chromium not installed (apt-get install chromium)")
def test_the_whole_site_loads_in_chromium(pipeline_run):
    """The crawl from index.html: every page, every image, every link, no JavaScript error
    (the keys are tested in test_site.py)."""
    _, out = pipeline_run
    pages, problems = check_site(out / "index.html", keys=False)
    assert problems == []
    # the overview, a page per cluster, an outliers page per loss, the duplicates page and the map
    assert len(pages) == 1 + 3 * len(LOSS_NAMES) + len(LOSS_NAMES) + 2
    assert out / "site" / "map.html" in pages


def test_missing_photo_is_drawn_as_a_placeholder_and_reported(tmp_path, capsys):
    photos, out = tmp_path / "photos", tmp_path / "out"
    make_photos(photos, 3)
    assert main(["extract", str(photos), "--out", str(out), *FAST[:-2]]) == 0
    assert main(["cluster", "--out", str(out), "--k", "2", "--losses", "square", "--n-init", "1"]) == 0
    os.remove(photos / "b" / "img_00.png")
    assert main(["render", "--out", str(out)]) == 0
    assert "not drawn: b/img_00.png" in capsys.readouterr().err
    # its cluster page shows a grey box with its name and why, and links no photo that is not there
    [page] = [p for p in (out / "site" / "square").iterdir() if "b/img_00.png" in p.read_text(encoding="utf-8")]
    assert '<span class="placeholder"><b>b/img_00.png</b><br>file not found</span>' in page.read_text(encoding="utf-8")
    assert all(broken_links(p) == [] for p in crawl(out / "index.html"))


def test_a_refit_never_leaves_old_sheets_or_broken_links(pipeline_run, capsys):
    _, cached = pipeline_run
    out = cached.with_name("refit")  # beside the original: the pages' relative links to the photos hold
    shutil.copytree(cached, out)
    assert (out / "sheets" / "square" / "cluster_2.png").is_file()
    assert main(["cluster", "--out", str(out), "--k", "2", "--losses", "square", "--n-init", "1"]) == 0
    assert "no sheets yet" in capsys.readouterr().out
    assert not (out / "sheets" / "square").exists() and not (out / "clusters/square/representatives.csv").exists()
    assert not (out / "site" / "square").exists()
    assert (out / "sheets" / "representatives_huber.png").is_file()  # other losses keep theirs
    assert all(broken_links(page) == [] for page in crawl(out / "index.html"))
    assert main(["render", "--out", str(out), "--losses", "square"]) == 0
    assert sorted(p.name for p in (out / "sheets" / "square").iterdir()) == ["cluster_0.png", "cluster_1.png"]
    assert sorted(p.name for p in (out / "site" / "square").iterdir()) == ["cluster_0.html", "cluster_1.html"]
    assert all(broken_links(page) == [] for page in crawl(out / "index.html"))
