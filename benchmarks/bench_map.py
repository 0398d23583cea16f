"""The map's projection: quality and time of pca, umap and tsne (pipeline/projection.py).

On the sample's own features (data/sample, 124 photos in 4 folders; `make features` first)
and on synthetic 20,000 x 512 VGG-like features (10 groups), both L2-normalised as the map
draws them, each method available here is timed and scored:

  seconds             wall time of project(), warm; first_call_seconds: the first call in the
                      process (imports; umap's includes numba's compilation)
  trustworthiness     Venna & Kaski, k = 10: are map neighbours true neighbours (1 = all)
  knn_preservation    share of each photo's 10 nearest neighbours kept among its 10 on the map
  knn_label_accuracy  leave-one-out 5-NN vote on the map against the folder (group) labels
  silhouette          of the folder (group) labels on the map, -1 to 1

The synthetic scores are of a random 2,000-point sample of the 20,000-point map (the scores
are O(n^2)). The same two label scores in the full 512-d space are the `reference` row.

Then the page itself (`page`): site/map.html with 20,000 synthetic photos (their PCA map, 5
atlases of flat-colour thumbnails) in headless Chromium (software rendering), the time of one
frame (drawNow) for the whole map, zoomed just enough to draw thumbnails (the most of them),
and zoomed 9 and 27 times: median and max of 15.

    python benchmarks/bench_map.py [--out outputs/sample] [--methods pca,umap,tsne] [--n 20000] [--no-page]
writes outputs/bench/map.json (`make bench-map`; umap and tsne need `pip install -e '.[map]'`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import vgg_like, write_result  # noqa: E402
from pipeline.cache import load_embedded  # noqa: E402
from pipeline.cluster import normalize_features  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline import projection  # noqa: E402


def scores(X: np.ndarray, Y: np.ndarray, labels: np.ndarray) -> dict:
    return {"trustworthiness": round(projection.trustworthiness(X, Y, 10), 4),
            "knn_preservation": round(projection.knn_preservation(X, Y, 10), 4),
            "knn_label_accuracy": round(projection.knn_label_accuracy(Y, labels, 5), 4),
            "silhouette": round(projection.silhouette(Y, labels), 4)}


def reference(X: np.ndarray, labels: np.ndarray) -> dict:
    return {"knn_label_accuracy": round(projection.knn_label_accuracy(X, labels, 5), 4),
            "silhouette": round(projection.silhouette(X, labels), 4)}


def measure(X: np.ndarray, labels: np.ndarray, methods: list[str], sample: int | None, called: set[str],
            seed: int = 0) -> dict:
    rows = {}
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(X), size=sample, replace=False)) if sample and sample < len(X) else slice(None)
    for method in methods:
        timing = {}
        if method not in called:  # the first call in this process: imports, numba's compilation
            start = time.perf_counter()
            projection.project(X, method, seed=seed)
            timing["first_call_seconds"] = round(time.perf_counter() - start, 3)
            called.add(method)
        start = time.perf_counter()
        Y = projection.project(X, method, seed=seed)
        timing["seconds"] = round(time.perf_counter() - start, 3)
        rows[method] = {**timing, **scores(X[keep], Y[keep], labels[keep])}
        print(f"  {method:>5}: " + "  ".join(f"{k} {v}" for k, v in rows[method].items()), flush=True)
    rows["reference"] = reference(X[keep], labels[keep])
    return rows


PAGE_PROBE = """<script>
window.addEventListener("load", function () {
  function run() {
    var m = window.photoclustMap, out = {views: [], state: m.state()};
    if (out.state.atlasesLoaded < out.state.atlases) { setTimeout(run, 500); return; }
    function measure(label) {
      var times = [];
      for (var i = 0; i < 15; i++) { times.push(m.drawNow()); }
      times.sort(function (a, b) { return a - b; });
      var s = m.state();
      out.views.push({view: label, mode: s.mode, drawn: s.drawn, thumbnail_px: Math.round(s.size),
                      ms_median: +times[7].toFixed(2), ms_max: +times[14].toFixed(2)});
    }
    measure("whole map");
    var whole = m.state();
    var smallest = (whole.minThumb + 0.5) / whole.size;  // the first zoom that draws thumbnails
    m.zoom(smallest);
    measure("zoom x" + smallest.toFixed(1) + " (smallest thumbnails)");
    [9, 27].forEach(function (f) { m.zoom(f * whole.scale / m.state().scale); measure("zoom x" + f); });
    var pre = document.createElement("pre");
    pre.id = "result";
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }
  run();
});
</script>"""


def page_timing(n: int, seed: int = 0) -> dict:
    """Frame times of the map page itself with n photos (synthetic thumbnails), in headless
    Chromium (software rendering, --disable-gpu): drawNow() 15 times per view, median and max."""
    import html
    import json
    import re
    import shutil
    import subprocess
    import tempfile

    from PIL import Image

    from pipeline import atomic, photomap
    from pipeline.layout import Layout

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return {"skipped": "no chromium"}
    features, labels = vgg_like(n, 512, 10, seed=seed, dtype=np.float32, return_labels=True)
    xy = photomap.rounded(projection.to_unit_box(projection.project(normalize_features(features, "l2"), "pca")))
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as folder:
        layout = Layout(Path(folder))
        atlases = []
        for index, start in enumerate(range(0, n, photomap.per_atlas())):
            count = min(photomap.per_atlas(), n - start)
            w, h = photomap.atlas_size(count)
            colours = rng.integers(0, 256, size=(h // photomap.CELL_PX, photomap.ATLAS_GRID, 3), dtype=np.uint8)
            cells = np.repeat(np.repeat(colours, photomap.CELL_PX, axis=0), photomap.CELL_PX, axis=1)
            image = Image.fromarray(cells)
            atomic.write_with(layout.map_atlas(index), lambda fh: image.save(fh, "JPEG", quality=photomap.ATLAS_QUALITY))
            atlases.append(f"map/atlas_{index}.jpg")
        paths = [f"p/{i:05d}.jpg" for i in range(n)]
        data = photomap.points_data(paths, xy, {"square": labels.tolist()}, "../photos/", atlases)
        atomic.write_text(layout.map_script, photomap.points_script(data))
        page = photomap.page_html("bench", "map/points.js", "../index.html")
        atomic.write_text(layout.map_page, page.replace("</body>", PAGE_PROBE + "</body>", 1))
        with tempfile.TemporaryDirectory() as profile:
            proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,800",
                                   "--allow-file-access-from-files", "--virtual-time-budget=60000",
                                   f"--user-data-dir={profile}", "--dump-dom", layout.map_page.as_uri()],
                                  capture_output=True, text=True, timeout=300)
    match = re.search(r'<pre id="result">(.*?)</pre>', proc.stdout, re.S)
    if not match:
        return {"skipped": f"no result from chromium: {proc.stderr[-300:]}"}
    return {"n": n, "window": "1280x800", **json.loads(html.unescape(match.group(1)))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/sample"), help="output folder with the sample's features")
    parser.add_argument("--methods", default=",".join(projection.METHODS), help="comma-separated methods to measure")
    parser.add_argument("--n", type=int, default=20000, help="rows of the synthetic data (timing)")
    parser.add_argument("--score-sample", type=int, default=2000, help="points of the synthetic map that are scored")
    parser.add_argument("--no-page", dest="page", action="store_false",
                        help="skip timing the map page itself in headless Chromium")
    args = parser.parse_args()
    wanted = [m for m in args.methods.split(",") if m]
    methods = [m for m in wanted if projection.available(m)]
    skipped = sorted(set(wanted) - set(methods))
    if skipped:
        print(f"not installed, skipped: {', '.join(skipped)} (pip install -e '.[map]')")
    result: dict = {"methods": methods, "skipped": skipped}
    called: set[str] = set()
    try:
        embedded = load_embedded(args.out)
    except UserError as exc:
        print(f"bench-map: {exc}", file=sys.stderr)
        return 2
    X = normalize_features(embedded.features, "l2")
    labels = np.array([p.split("/", 1)[0] if "/" in p else "" for p in embedded.paths])
    print(f"sample: {len(X)} photos, {len(set(labels))} folders")
    result["sample"] = {"n": len(X), "folders": len(set(labels)), **measure(X, labels, methods, None, called)}

    synthetic, groups = vgg_like(args.n, 512, 10, seed=0, dtype=np.float32, return_labels=True)
    synthetic = normalize_features(synthetic, "l2")
    print(f"synthetic: {args.n} x 512, 10 groups (scores on {args.score_sample} points)")
    result["synthetic"] = {"n": args.n, "scored": args.score_sample,
                           **measure(synthetic, groups, methods, args.score_sample, called)}
    if args.page:
        print(f"page: frame times with {args.n} photos in headless Chromium")
        result["page"] = page_timing(args.n)
        for row in result["page"].get("views", []):
            print("  " + "  ".join(f"{k} {v}" for k, v in row.items()))
    path = write_result("map", result)
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
