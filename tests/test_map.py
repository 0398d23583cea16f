"""The map: the projection (pipeline/projection.py), the files render writes for it
(pipeline/photomap.py: map.csv, site/map.html, site/map/) and the page itself in headless
Chromium: drawn, no JavaScript error, a click on a photo leads to the photo."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import unquote_to_bytes, urljoin, urlparse

import numpy as np
import pytest
from PIL import Image

from pipeline import photomap, projection
from pipeline.cache import Entry, activate_key, file_digest, write_cache, write_source
from pipeline.cli import main
from pipeline.cluster import cluster_run
from pipeline.config import ClusterConfig
from pipeline.errors import UserError
from pipeline.layout import Layout
from pipeline.render import render_run
from pipeline.report import write_index
from pipeline.tables import read_frame

from check_html import chromium

HOSTILE = ["</script><script>alert(1)</script>.png", "\"quote's\" & <b>bold</b>.jpg", "=cmd|' .jpg",
           "line\nbreak.jpg", "not utf-8 \udcff.jpg", "%41 ?#x.jpg"]
BACKGROUND = (0x20, 0x21, 0x24)  # map.html's canvas colour


def blobs(n_per: int, groups: int, d: int = 512, spread: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, size=(groups, d))
    labels = np.repeat(np.arange(groups), n_per)
    return centers[labels] + rng.normal(0, spread, size=(len(labels), d)), labels


# ----------------------------------------------------------------------------- the projection

def test_pca_is_deterministic_and_independent_of_row_order():
    X, _ = blobs(20, 3, d=64)
    first = projection.project(X, "pca")
    assert first.shape == (60, 2) and first.dtype == np.float64
    np.testing.assert_array_equal(projection.project(X, "pca"), first)
    order = np.random.default_rng(1).permutation(len(X))
    np.testing.assert_allclose(projection.project(X[order], "pca"), first[order], atol=1e-9)


def test_pca_fixes_the_sign_of_each_component():
    """Negating the data negates the picture exactly (the components keep their signs): an SVD's
    arbitrary sign never flips the map between runs or machines."""
    X, _ = blobs(10, 3, d=40)
    np.testing.assert_allclose(projection.project(-X, "pca"), -projection.project(X, "pca"), atol=1e-9)
    centred = X - X.mean(0)
    _, _, vh = np.linalg.svd(centred, full_matrices=False)
    for j in range(2):
        component = vh[j] * np.sign(vh[j][np.argmax(np.abs(vh[j]))])  # largest loading positive
        np.testing.assert_allclose(projection.project(X, "pca")[:, j], centred @ component, atol=1e-8)


def test_pca_separates_well_separated_clusters():
    X, labels = blobs(30, 4)
    Y = projection.project(X, "pca")
    assert projection.knn_label_accuracy(Y, labels) == 1.0
    assert projection.silhouette(Y, labels) > 0.6


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_tiny_collections_project(n):
    X, _ = blobs(max(n, 1), 1, d=16)
    Y = projection.project(X[:n], "pca")
    assert Y.shape == (n, 2) and np.isfinite(Y).all()
    box = projection.to_unit_box(Y)
    assert box.shape == (n, 2) and ((box >= 0) & (box <= 1)).all()
    assert projection.used_method("umap", n) == "pca"


def test_the_unit_box_keeps_proportions():
    xy = np.array([[0.0, 0.0], [4.0, 1.0], [2.0, 0.5]])
    box = projection.to_unit_box(xy)
    np.testing.assert_allclose(box, [[0, 0.375], [1, 0.625], [0.5, 0.5]])


def test_the_scores_agree_with_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    manifold = pytest.importorskip("sklearn.manifold")
    X, labels = blobs(25, 3, d=30, spread=0.8)
    Y = projection.project(X, "pca") + np.random.default_rng(0).normal(0, 0.3, size=(75, 2))
    assert projection.trustworthiness(X, Y, 7) == pytest.approx(manifold.trustworthiness(X, Y, n_neighbors=7), abs=1e-12)
    assert projection.silhouette(Y, labels) == pytest.approx(metrics.silhouette_score(Y, labels), abs=1e-12)
    assert projection.knn_preservation(X, X, 5) == 1.0 and projection.trustworthiness(X, X, 5) == pytest.approx(1.0)


def test_tsne_is_seeded_when_installed():
    pytest.importorskip("sklearn.manifold")
    X, labels = blobs(15, 3, d=32)
    Y = projection.project(X, "tsne", seed=3)
    np.testing.assert_array_equal(projection.project(X, "tsne", seed=3), Y)
    assert projection.knn_label_accuracy(Y, labels) == 1.0


def test_an_unknown_or_missing_method_is_one_line(monkeypatch):
    with pytest.raises(UserError, match="--map-method must be one of pca, umap, tsne, got 'mds'"):
        projection.check_method("mds")
    monkeypatch.setattr(projection, "available", lambda method: method == "pca")
    with pytest.raises(UserError, match=r"needs umap-learn: pip install 'photoclust\[map\]'"):
        projection.check_method("umap")


# ----------------------------------------------------------------------------- the files

def make_output(root: Path, names: dict[str, int], seed: int = 0) -> tuple[Path, Path, np.ndarray]:
    """Photos `names` (path -> group), their features (three far-apart groups, no model),
    clustered under square and huber (k = 3) and rendered: an output folder as `run` leaves it."""
    photos, out = root / "photos <b>&", root / "out"
    rng = np.random.default_rng(seed)
    colours = [(220, 40, 40), (40, 200, 60), (40, 60, 220)]
    entries = []
    for path, group in sorted(names.items()):
        file = photos / path
        file.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(np.array(colours[group]) + rng.normal(0, 20, size=(36, 52, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(file, "PNG" if path.endswith(".png") else "JPEG")
        st = file.stat()
        entries.append(Entry(path, st.st_size, st.st_mtime_ns, file_digest(file, "sha1"), "ok"))
    centers = rng.normal(0, 1, size=(3, 512))
    features = np.abs(centers[[names[e.path] for e in entries]] + rng.normal(0, 0.05, size=(len(entries), 512)))
    activate_key(out, {"weights": "test"})
    write_cache(out, entries, features.astype(np.float32))
    write_source(out, photos)
    cfg = ClusterConfig(k=3, losses=("square", "huber"), n_init=1, device="cpu")
    cluster_run(out, cfg, log=lambda line: None)
    render_run(out, log=lambda line: None, progress=False)
    write_index(out)
    return photos, out, features


def sample_names(count: int = 12) -> dict[str, int]:
    names = {f"g{i % 3}/photo_{i:02d}.jpg": i % 3 for i in range(count)}
    for i, name in enumerate(HOSTILE):
        names[f"g{i % 3}/{name}"] = i % 3
    return names


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    names = sample_names()
    photos, out, _ = make_output(tmp_path_factory.mktemp("map"), names)
    return photos, out, names


def read_points(out: Path) -> dict:
    text = Layout(out).map_script.read_text(encoding="utf-8")
    match = re.fullmatch(r"const PHOTOCLUST_MAP = (.*);\n", text, re.S)
    assert match, text[:80]
    return json.loads(match.group(1))


def test_map_csv_has_one_row_per_embedded_photo(rendered):
    _, out, names = rendered
    frame = read_frame(Layout(out).map_points, text_columns=["path"])
    assert list(frame.columns) == ["path", "x", "y"]
    assert frame["path"].tolist() == sorted(names)  # the manifest's order, exact names
    xy = frame[["x", "y"]].to_numpy()
    assert ((xy >= 0) & (xy <= 1)).all() and len(np.unique(xy, axis=0)) > 3


def test_points_js_parses_and_names_atlases_that_exist(rendered):
    photos, out, names = rendered
    layout = Layout(out)
    data = read_points(out)
    n = len(names)
    assert all(len(data[key]) == n for key in ("x", "y", "atlas", "cell_index", "name", "href"))
    assert data["losses"] == ["square", "huber"] and all(len(data["cluster"][loss]) == n for loss in data["losses"])
    for loss in data["losses"]:
        assignments = read_frame(layout.assignments(loss), text_columns=["path"])
        assert data["cluster"][loss] == assignments.set_index("path").loc[sorted(names), "cluster"].tolist()
    frame = read_frame(layout.map_points, text_columns=["path"])
    assert data["x"] == frame["x"].tolist() and data["y"] == frame["y"].tolist()
    for i, src in enumerate(data["atlases"]):
        atlas = layout.map_page.parent / src
        assert atlas.is_file() and atlas == layout.map_atlas(i)
        with Image.open(atlas) as im:
            assert im.format == "JPEG" and im.width == data["grid"] * data["cell"]
    assert sorted(set(data["atlas"])) == list(range(len(data["atlases"])))
    # every link resolves, from the page's folder, to the photo it names
    page_url = layout.map_page.resolve().as_uri()
    for path, href in zip(sorted(names), data["href"]):
        target = urlparse(urljoin(page_url, data["photos"] + href))
        assert os.fsdecode(unquote_to_bytes(target.path)) == str((photos / path).resolve())


def test_the_atlas_cell_shows_the_photo(rendered):
    _, out, names = rendered
    data = read_points(out)
    atlas = Image.open(Layout(out).map_atlas(0)).convert("RGB")
    cell = data["cell"]
    for i, path in enumerate(sorted(names)):
        x, y = photomap.cell_origin(data["cell_index"][i], cell)
        mean = np.asarray(atlas.crop((x + 4, y + 4, x + cell - 4, y + cell - 4))).reshape(-1, 3).mean(0)
        assert np.argmax(mean) == [0, 1, 2][names[path]], path  # red, green or blue, as the photo


def test_hostile_names_are_escaped(rendered):
    _, out, names = rendered
    layout = Layout(out)
    script = layout.map_script.read_text(encoding="utf-8")
    assert "<" not in script and ">" not in script and "&" not in script and script.isascii()
    data = read_points(out)
    shown = dict(zip(sorted(names), data["name"]))
    assert shown["g0/" + HOSTILE[0]] == "g0/" + HOSTILE[0]  # shown exactly, as text
    assert shown["g0/" + HOSTILE[3]] == "g0/line\ufffdbreak.jpg"  # control characters and bytes that
    assert shown["g1/" + HOSTILE[4]] == "g1/not utf-8 \ufffd.jpg"  # are not UTF-8: U+FFFD, as on the sheets
    page = layout.map_page.read_text(encoding="utf-8")
    assert "photos <b>&" not in page and "photos &lt;b&gt;&amp;" in page  # the folder's name in the title
    assert page.count("<script") == 2
    index = layout.index.read_text(encoding="utf-8")
    assert 'href="site/map.html"' in index


def test_a_rerun_reuses_the_map_and_a_change_of_features_rebuilds_it(tmp_path):
    names = {f"g{i % 3}/p{i:02d}.jpg": i % 3 for i in range(9)}
    photos, out, features = make_output(tmp_path, names)
    layout = Layout(out)
    files = [layout.map_points, layout.map_script, layout.map_page, layout.map_record, layout.map_atlas(0)]
    before = {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files}
    report = photomap.write_map(out, *_inputs(out), log=lambda line: None)
    assert not report.projected and report.atlases_made == 0 and report.atlases_kept == 1
    assert {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files} == before  # nothing written

    # other features for the same photos: a new projection, the atlas (same photos) kept
    from pipeline.cache import load_cache
    entries, _ = load_cache(out)
    write_cache(out, entries, np.roll(features, 1, axis=0).astype(np.float32))
    cluster_run(out, ClusterConfig(k=3, losses=("square", "huber"), n_init=1, device="cpu"), log=lambda line: None)
    report = photomap.write_map(out, *_inputs(out), log=lambda line: None)
    assert report.projected and report.atlases_made == 0
    record = json.loads(layout.map_record.read_text())
    from pipeline.cache import load_embedded
    assert record["key"]["features_fingerprint"] == load_embedded(out).fingerprint
    assert layout.map_points.read_bytes() != before[layout.map_points][1]

    # a new photo: its row in map.csv and the atlas drawn again
    extra = photos / "g0" / "new.png"
    Image.new("RGB", (30, 30), (220, 40, 40)).save(extra)
    st = extra.stat()
    entries.append(Entry("g0/new.png", st.st_size, st.st_mtime_ns, file_digest(extra, "sha1"), "ok"))
    entries.sort(key=lambda e: e.path)
    rows = np.vstack([np.roll(features, 1, axis=0), features[:1]]).astype(np.float32)
    write_cache(out, entries, rows)
    cluster_run(out, ClusterConfig(k=3, losses=("square", "huber"), n_init=1, device="cpu"), log=lambda line: None)
    report = photomap.write_map(out, *_inputs(out), log=lambda line: None)
    assert report.projected and report.atlases_made == 1
    assert "g0/new.png" in read_frame(layout.map_points, text_columns=["path"])["path"].tolist()
    assert len(read_points(out)["x"]) == 10

    # a record that does not match what is there (a crash mid-rebuild) is never trusted
    record = json.loads(layout.map_record.read_text())
    record["atlases"] = ["0" * 16]
    layout.map_record.write_text(json.dumps(record))
    assert photomap.write_map(out, *_inputs(out), log=lambda line: None).atlases_made == 1


def _inputs(out: Path):
    from pipeline.cache import load_embedded
    from pipeline.represent import read_assignments

    return load_embedded(out), {loss: read_assignments(out, loss) for loss in ("square", "huber")}


def test_render_refuses_an_unknown_map_method(rendered, capsys):
    _, out, _ = rendered
    assert main(["render", "--out", str(out), "--map-method", "mds"]) == 2
    assert "--map-method must be one of" in capsys.readouterr().err


# ----------------------------------------------------------------------------- in the browser

PROBE = """<script>
(function () {
  function report() {
    var m = window.photoclustMap, out = {errors: window.__errors};
    if (m) {
      var state = m.state();
      if (state.atlasesLoaded < state.atlases && !window.__waited) { window.__waited = 1; setTimeout(report, 2000); return; }
      m.drawNow();
      out.state = m.state();
      out.count = m.count;
      out.hits = [];
      for (var i = 0; i < m.count; i++) {
        var p = m.screenOf(i);
        out.hits.push({index: i, at: p, link: m.hitTest(p[0], p[1]), own: m.link(i)});
      }
      out.shown = m.drawn();
      out.empty = m.hitTest(-5000, -5000);
      m.setLoss("huber");
      out.loss = m.state().loss;
      m.zoom(0.02);
      out.zoomedOut = m.state().mode;
    }
    var pre = document.createElement("pre");
    pre.id = "result";
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }
  window.addEventListener("load", function () { setTimeout(report, 200); });
})();
</script>"""
CATCHER = "<script>window.__errors = []; window.onerror = function (m, s, l) { window.__errors.push(m + ' at ' + l); };</script>"


def run_page(page: Path, timeout: int = 120) -> dict:
    """Open a copy of `page` (same folder, so its links hold) with an error catcher first and a
    probe last, in headless Chromium; returns what the probe reported."""
    text = page.read_text(encoding="utf-8")
    wrapped = text.replace("<head>", "<head>" + CATCHER, 1).replace("</body>", PROBE + "</body>", 1)
    wrapper = page.parent / ".probe_map.html"
    wrapper.write_text(wrapped, encoding="utf-8")
    try:
        with tempfile.TemporaryDirectory() as profile:
            proc = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                                   "--allow-file-access-from-files", "--virtual-time-budget=10000",
                                   "--window-size=1000,700", f"--user-data-dir={profile}", "--dump-dom",
                                   wrapper.resolve().as_uri()], capture_output=True, text=True, timeout=timeout)
    finally:
        wrapper.unlink(missing_ok=True)
    match = re.search(r'<pre id="result">(.*?)</pre>', proc.stdout, re.S)
    assert match, f"no result from Chromium (exit {proc.returncode}): {proc.stderr[-500:]}"
    return json.loads(html.unescape(match.group(1)))


def screenshot(page: Path, path: Path, size: str = "1000,700") -> Image.Image:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                        "--virtual-time-budget=10000", f"--window-size={size}", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--screenshot={path}", page.resolve().as_uri()],
                       capture_output=True, timeout=120)
    return Image.open(path).convert("RGB")


needs_chromium = pytest.mark.skipif(chromium() is None, reason="no Chromium (apt-get install chromium)")


@needs_chromium
def test_the_page_draws_without_errors_and_a_click_leads_to_the_photo(rendered):
    photos, out, names = rendered
    page = Layout(out).map_page
    result = run_page(page)
    assert result["errors"] == [], result["errors"]
    assert result["count"] == len(names)
    assert result["state"]["atlasesLoaded"] == result["state"]["atlases"] == 1
    assert result["state"]["mode"] == "thumbnails" and result["state"]["drawn"] == len(result["shown"])
    page_url = page.resolve().as_uri()
    opened = set()
    for hit in result["hits"]:
        assert hit["link"] is not None, hit  # a point's own position always hits a photo
        target = Path(os.fsdecode(unquote_to_bytes(urlparse(urljoin(page_url, hit["link"])).path)))
        assert target.is_file() and target.parent.parent == photos.resolve(), target
        opened.add(target)
    # overlapping thumbnails: the hit is the topmost (last drawn) photo whose thumbnail covers the spot
    shown = result["shown"]
    assert 3 <= len(shown) <= len(names) and shown == sorted(shown)
    at = np.array([result["hits"][i]["at"] for i in shown])
    half = result["state"]["size"] / 2 + 1
    for hit in result["hits"]:
        covering = np.flatnonzero((np.abs(at - hit["at"]) <= half).all(axis=1))
        assert hit["link"] == result["hits"][shown[covering.max()]]["own"], hit
    assert len(opened) >= 3  # the three far-apart groups
    assert result["empty"] is None and result["loss"] == "huber" and result["zoomedOut"] == "dots"


@needs_chromium
def test_the_canvas_is_drawn(rendered, tmp_path):
    _, out, _ = rendered
    shot = np.asarray(screenshot(Layout(out).map_page, tmp_path / "map.png"))[80:]  # below the header
    painted = np.abs(shot.astype(int) - BACKGROUND).sum(axis=2) > 30
    assert painted.mean() > 0.004, painted.mean()  # at least the three groups' thumbnails
    # the photos' own colours are there: red, green and blue thumbnails
    pixels = shot[painted]
    for channel in range(3):
        others = [c for c in range(3) if c != channel]
        assert ((pixels[:, channel] > 150) & (pixels[:, others].max(axis=1) < 110)).sum() > 50, channel
