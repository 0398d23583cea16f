"""The browsable site (pipeline/site.py, report.py and the templates) on a real run: the
crawl in Chromium, escaping, the keyboard, every member in rank order, and the pages made
from the CSVs of other stages (written here as those stages would)."""

from __future__ import annotations

import hashlib
import json

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.layout import Layout
from pipeline.tables import read_frame, write_frame

from check_html import KEYS, browse, check_site, chromium, crawl, target
from conftest import make_photos

HOSTILE = "<b>&\"'.jpg"
FAST = ["--weights", "random", "--device", "cpu", "--workers", "0", "--n-init", "1"]
LOSSES = ["square", "huber"]
needs_chromium = pytest.mark.skipif(chromium() is None, reason="Chromium not installed (apt-get install chromium)")


def not_utf8(folder: Path) -> Path:
    """A name whose bytes are not UTF-8 (café in Latin-1)."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/caf\xe9.jpg"))


class Cards(HTMLParser):
    """A page's photo cards in order: the photo link, the thumbnail and the caption text;
    and every element by tag."""

    def __init__(self):
        super().__init__()
        self.cards: list[dict] = []
        self.tags: list[str] = []
        self._caption = False

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        self.tags.append(tag)
        if tag == "figure":
            self.cards.append({"photo": None, "thumb": None, "caption": ""})
        elif tag == "a" and "thumb" in (values.get("class") or "").split():
            self.cards[-1]["photo"] = values["href"]
        elif tag == "img" and self.cards and self.cards[-1]["thumb"] is None:
            self.cards[-1]["thumb"] = values["src"]
            self.cards[-1]["lazy"] = values.get("loading") == "lazy"
        elif tag == "figcaption":
            self._caption = True

    def handle_endtag(self, tag):
        if tag == "figcaption":
            self._caption = False

    def handle_data(self, data):
        if self._caption:
            self.cards[-1]["caption"] += data


def cards(page: Path) -> Cards:
    parser = Cards()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def same(a: Path, b: Path) -> bool:
    return a.exists() and os.path.samefile(a, b)


@pytest.fixture(scope="module")
def site_run(tmp_path_factory):
    """A real run (two losses, k = 3) over photos with hostile names, then the CSVs the dupes,
    outliers and assign stages write, then render again with sheets capped at 2 photos."""
    root = tmp_path_factory.mktemp("site")
    photos, out, new = root / "photos", root / "out", root / "new"
    made = make_photos(photos, 9)
    Image.new("RGB", (70, 50), (240, 30, 30)).save(photos / "a" / HOSTILE, "JPEG")
    Image.new("RGB", (50, 70), (30, 30, 240)).save(not_utf8(photos / "b"), "JPEG")
    shutil.copy(made[1], photos / "a" / "copy_of_img_01.jpg")
    new.mkdir()
    Image.new("RGB", (60, 60), (20, 200, 20)).save(new / "later photo #1.jpg")
    shutil.copy(made[4], new / "img_04 again.jpg")
    assert main(["run", str(photos), "--out", str(out), "--k", "3", "--losses", ",".join(LOSSES), *FAST]) == 0
    layout = Layout(out)

    import pandas as pd

    write_frame(layout.duplicates, pd.DataFrame({
        "group": [1, 1, 2, 2, 2], "kind": ["exact", "exact", "near", "near", "near"],
        "path": ["a/img_01.jpg", "a/copy_of_img_01.jpg", "b/img_02.jpg", HOSTILE.join(["a/", ""]), "b/img_04.jpg"],
        "similarity": [1.0, 1.0, 0.97, 0.95, 0.93]}))
    # the table stands in for one `dupes` made from these features: seal it in its record as dupes does
    record = json.loads(layout.duplicates_record.read_text())
    record["csv_sha256"] = hashlib.sha256(layout.duplicates.read_bytes()).hexdigest()
    layout.duplicates_record.write_text(json.dumps(record))
    square = read_frame(layout.assignments("square"), ["path"]).sort_values("loss_to_center", ascending=False)
    worst = square.head(3)
    write_frame(layout.outliers("square"), pd.DataFrame({
        "rank": [1, 2, 3], "path": worst["path"], "cluster": worst["cluster"],
        "loss_to_center": worst["loss_to_center"], "robust_z": [4.5, 3.25, 3.0]}))
    assert main(["assign", str(new), "--out", str(out), "--device", "cpu", "--workers", "0"]) == 0
    assert main(["render", "--out", str(out), "--max-per-sheet", "2"]) == 0
    return photos, out, new


@needs_chromium
def test_the_whole_site_crawls_clean_in_chromium(site_run):
    _, out, _ = site_run
    layout = Layout(out)
    pages, problems = check_site(layout.index)
    assert problems == []
    expected = {layout.index, layout.duplicates_page, layout.assigned_page, layout.map_page}
    for loss in LOSSES:  # represent writes every loss's outliers.csv
        expected |= {layout.cluster_page(loss, j) for j in range(3)} | {layout.outliers_page(loss)}
    assert set(pages) == expected


def test_every_member_is_on_its_cluster_page_in_rank_order(site_run):
    photos, out, _ = site_run
    layout = Layout(out)
    biggest = 0
    for loss in LOSSES:
        frame = read_frame(layout.assignments(loss), ["path"])
        for cluster, members in frame.groupby("cluster"):
            page = layout.cluster_page(loss, int(cluster))
            shown = cards(page).cards
            members = members.sort_values("rank")
            assert len(shown) == len(members)  # not capped: the sheets show 2 (--max-per-sheet 2)
            for card, row in zip(shown, members.itertuples()):
                assert same(target(page, card["photo"]), photos / row.path), (card, row.path)
                assert card["lazy"] and target(page, card["thumb"]).is_file()
                assert card["caption"].startswith(f"#{row.rank + 1} · loss ")
            biggest = max(biggest, len(members))
    assert biggest > 2


def test_hostile_names_are_escaped_and_still_open_their_photo(site_run):
    photos, out, _ = site_run
    layout = Layout(out)
    frame = read_frame(layout.assignments("square"), ["path"])
    for name, shown in ((f"a/{HOSTILE}", "a/&lt;b&gt;&amp;&#34;&#39;.jpg"), ("b/caf\udce9.jpg", "b/caf\ufffd.jpg")):
        cluster = int(frame.loc[frame["path"] == name, "cluster"].iloc[0])
        page = layout.cluster_page("square", cluster)
        text = page.read_text(encoding="utf-8")
        assert HOSTILE not in text and shown in text
        parsed = cards(page)
        assert "b" not in parsed.tags  # the name's <b> is text, not an element
        [card] = [c for c in parsed.cards if same(target(page, c["photo"]), photos / name)]
        assert card["photo"].endswith("%3Cb%3E%26%22%27.jpg" if "<" in name else "caf%E9.jpg")


@needs_chromium
def test_the_keys_go_to_the_previous_and_next_cluster_pages(site_run):
    _, out, _ = site_run
    layout = Layout(out)
    pages = [layout.cluster_page("huber", j) for j in range(3)]
    seen = browse(pages, keys=True)
    for j, page in enumerate(pages):
        step = {"next": 1, "prev": -1}
        for key, rel in KEYS.items():
            landed = seen[page].keys[key]
            expected = pages[(j + step[rel]) % 3]
            assert landed == expected.resolve().as_uri(), (page.name, key, landed)
            assert expected.is_file()
        assert seen[page].errors == []


def test_duplicates_page_shows_the_largest_group_first(site_run):
    photos, out, _ = site_run
    page = Layout(out).duplicates_page
    text = page.read_text(encoding="utf-8")
    assert text.index("group 2: 3 photos") < text.index("group 1: 2 photos")
    linked = [target(page, c["photo"]) for c in cards(page).cards]
    wanted = ["b/img_02.jpg", f"a/{HOSTILE}", "b/img_04.jpg", "a/img_01.jpg", "a/copy_of_img_01.jpg"]
    assert all(same(a, photos / b) for a, b in zip(linked, wanted, strict=True))
    assert "exact &middot; similarity 1<" in text and "near &middot; similarity 0.97<" in text


def test_outliers_page_is_worst_first_and_links_the_cluster_pages(site_run):
    photos, out, _ = site_run
    layout = Layout(out)
    page = layout.outliers_page("square")
    table = read_frame(layout.outliers("square"), ["path"])
    shown = cards(page).cards
    assert [c["caption"].split(" · ")[0] for c in shown] == ["#1", "#2", "#3"]
    for card, row in zip(shown, table.itertuples(), strict=True):
        assert same(target(page, card["photo"]), photos / row.path)
        assert f"cluster {row.cluster}" in card["caption"]
    text = page.read_text(encoding="utf-8")
    for cluster in table["cluster"]:
        assert f'href="square/cluster_{cluster}.html"' in text
    # the overview and the cluster pages of that loss link it
    assert 'href="site/outliers_square.html"' in layout.index.read_text(encoding="utf-8")
    assert '"../outliers_square.html"' in layout.cluster_page("square", 0).read_text(encoding="utf-8")


def test_assigned_page_groups_by_loss_and_cluster(site_run):
    """The placements `assign` made, by loss (square before huber), then cluster, nearest first."""
    _, out, new = site_run
    layout = Layout(out)
    page = layout.assigned_page
    text = page.read_text(encoding="utf-8")
    table = read_frame(layout.assigned, ["path", "loss"])
    assert len(table) == 2 * len(LOSSES)
    assert text.index(">square</h2>") < text.index(">huber</h2>")
    wanted = []
    for loss in LOSSES:
        for cluster, rows in table[table["loss"] == loss].groupby("cluster"):
            assert f'<a href="{loss}/cluster_{cluster}.html">cluster {cluster}</a>: {len(rows)} new' in text
            wanted += list(rows.sort_values("loss_to_center")["path"])
    shown = cards(page).cards
    assert all(same(target(page, c["photo"]), Path(w)) for c, w in zip(shown, wanted, strict=True))
    assert all(target(page, c["thumb"]).is_file() for c in shown)
    assert {Path(p).parent for p in wanted} == {new}


def test_index_links_every_cluster_page_and_the_other_pages(site_run):
    _, out, _ = site_run
    layout = Layout(out)
    text = layout.index.read_text(encoding="utf-8")
    for loss in LOSSES:
        for j in range(3):
            assert f'href="site/{loss}/cluster_{j}.html"' in text
    for page in ("site/duplicates.html", "site/assigned.html", "site/outliers_square.html"):
        assert f'href="{page}"' in text
    assert 'href="site/map.html"' in text  # render draws the map (photomap.py)
    assert "Files that could not be read" not in text and "Every image file was read" in text


@needs_chromium
def test_the_loss_switch_shows_one_loss_with_javascript_and_all_without(site_run, tmp_path):
    _, out, _ = site_run
    index = Layout(out).index
    static = re.findall(r"<section[^>]*>", index.read_text(encoding="utf-8"))
    assert len(static) == len(LOSSES) and not any("hidden" in tag for tag in static)  # without JavaScript: all

    def visible(fragment: str) -> list[str]:
        proc = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}",
                               "--virtual-time-budget=5000", "--dump-dom", index.resolve().as_uri() + fragment],
                              capture_output=True, text=True, timeout=120)
        sections = re.findall(r'<section id="([^"]+)" class="loss"( hidden="")?>', proc.stdout)
        assert len(sections) == len(LOSSES), proc.stderr[-500:]
        return [name for name, hidden in sections if not hidden]

    assert visible("") == ["square"]
    assert visible("#huber") == ["huber"]


def test_stale_or_missing_csvs_take_their_pages_away(site_run, tmp_path, capsys):
    _, cached, _ = site_run
    out = tmp_path / "out"
    shutil.copytree(cached, out)
    layout = Layout(out)
    # outliers.csv of an earlier clustering: a photo in a cluster it is not in now
    table = read_frame(layout.outliers("square"), ["path"])
    table.loc[0, "cluster"] = (int(table.loc[0, "cluster"]) + 1) % 3
    write_frame(layout.outliers("square"), table)
    # duplicates.csv edited after `dupes` wrote it: its record no longer vouches for it
    groups = read_frame(layout.duplicates, ["path", "kind"])
    write_frame(layout.duplicates, groups.head(2))
    capsys.readouterr()
    assert main(["render", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "made from an earlier clustering" in err and "duplicates.csv changed since `dupes` wrote it" in err
    assert not layout.duplicates_page.exists()
    layout.duplicates.unlink()
    assert main(["render", "--out", str(out)]) == 0
    assert not layout.outliers_page("square").exists() and not layout.duplicates_page.exists()
    assert layout.assigned_page.is_file()
    index = layout.index.read_text(encoding="utf-8")
    assert "outliers_square.html" not in index and "duplicates.html" not in index
    assert all("outliers_square" not in p.read_text(encoding="utf-8") for p in layout.cluster_pages("square").iterdir())
    # placements into a clustering refitted since are left out, and said so
    assigned = read_frame(layout.assigned, ["path", "loss", "clustering_fingerprint"])
    assigned.loc[assigned["loss"] == "huber", "clustering_fingerprint"] = "0" * 16
    write_frame(layout.assigned, assigned)
    assert main(["render", "--out", str(out)]) == 0
    assert "2 placement(s) into clusterings refitted since" in capsys.readouterr().err
    assert ">huber</h2>" not in layout.assigned_page.read_text(encoding="utf-8")
    # a CSV without the columns the page needs: one line naming it
    write_frame(layout.outliers("square"), table.drop(columns="robust_z"))
    assert main(["render", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "outliers.csv: no column robust_z" in err and "Traceback" not in err


def test_a_refit_takes_the_old_cluster_pages_away(site_run, tmp_path):
    _, cached, _ = site_run
    out = tmp_path / "out"
    shutil.copytree(cached, out)
    layout = Layout(out)
    assert main(["cluster", "--out", str(out), "--k", "2", "--losses", "square", "--n-init", "1"]) == 0
    assert not layout.cluster_pages("square").exists() and not layout.outliers_page("square").exists()
    assert layout.cluster_page("huber", 2).is_file()  # other losses keep theirs
    assert all(p.is_file() for p in crawl(layout.index))
    assert not layout.outliers("square").exists()  # the old clusters' outliers went with them
    assert main(["render", "--out", str(out), "--losses", "square"]) == 0
    assert sorted(p.name for p in layout.cluster_pages("square").iterdir()) == ["cluster_0.html", "cluster_1.html"]


def test_the_templates_ship_with_the_package():
    """An installed photoclust has every template: pyproject's package-data covers them all."""
    import fnmatch
    import tomllib

    import pipeline

    package = Path(pipeline.__file__).parent
    project = tomllib.loads((package.parent / "pyproject.toml").read_text(encoding="utf-8"))
    globs = project["tool"]["setuptools"]["package-data"]["pipeline"]
    templates = [p.relative_to(package).as_posix() for p in (package / "templates").iterdir()]
    assert templates and all(any(fnmatch.fnmatch(t, g) for g in globs) for t in templates), (templates, globs)
    assert any(d.replace(" ", "").startswith("jinja2>=") for d in project["project"]["dependencies"])


def test_the_overview_links_the_map_page_once_it_exists(site_run):
    from pipeline.report import write_index

    _, cached, _ = site_run
    out = cached.with_name("with_map")  # beside the original: the relative links to the photos hold
    shutil.copytree(cached, out)
    layout = Layout(out)
    layout.map_page.write_text("<!DOCTYPE html><title>map</title><a href=\"../index.html\">overview</a>\n")
    write_index(out)
    assert '<a href="site/map.html">map of all photos</a>' in layout.index.read_text(encoding="utf-8")
    assert layout.map_page in crawl(layout.index)
