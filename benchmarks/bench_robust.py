"""Robustness study: what junk photos do to each loss's clustering of the sample.

The benchmark makes junk images (uniform noise, flat colours, rendered text, extreme
crops of sample photos), embeds them with the same weights as the sample (the sample's
own cached features are reused), then for a growing share of junk (0, 5, 10, 20% of the
sample's size) clusters sample + junk under every loss (k = number of categories,
auto parameters, 4 restarts) for 5 seeds and reports:

  nmi                NMI against the true categories, junk excluded from the score
  junk_clusters      clusters whose members are mostly junk: centers the junk pulled away
  junk_in_captured   junk images in those clusters (the junk that took a center)

    python benchmarks/bench_robust.py [--photos data/sample] [--out outputs/sample]
writes outputs/bench/robust.json and outputs/bench/robust.png.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import BENCH_DIR, write_result  # noqa: E402
from pipeline.cache import load_embedded  # noqa: E402
from pipeline.cluster import normalize_features  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.extract import extract_folder  # noqa: E402
from pipeline.kmeans import GeneralizedKMeans  # noqa: E402
from pipeline.losses import LOSS_NAMES  # noqa: E402
from pipeline.metrics import nmi  # noqa: E402

SHARES = (0.0, 0.05, 0.10, 0.20)
SEEDS = range(5)
WORDS = "invoice receipt page scan notes table total date signature form".split()


def make_junk(folder: Path, count: int, photos: list[Path], seed: int = 0) -> list[Path]:
    """`count` junk images cycling through four kinds, deterministic for a seed."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(count):
        kind = ("noise", "flat", "text", "crop")[i % 4]
        if kind == "noise":
            image = Image.fromarray(rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8))
        elif kind == "flat":
            image = Image.new("RGB", (256, 256), tuple(int(v) for v in rng.integers(0, 256, 3)))
        elif kind == "text":
            image = Image.new("RGB", (256, 256), (250, 250, 245))
            draw = ImageDraw.Draw(image)
            face = ImageFont.load_default(size=int(rng.integers(14, 26)))
            for line in range(8):
                words = " ".join(rng.choice(WORDS, size=3))
                draw.text((10, 10 + 30 * line), words, fill=(20, 20, 20), font=face)
        else:  # an extreme crop: a few percent of a sample photo, blown up
            with Image.open(photos[int(rng.integers(len(photos)))]) as source:
                source = source.convert("RGB")
                w, h = source.size
                side = max(8, int(min(w, h) * 0.12))
                x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
                image = source.crop((x, y, x + side, y + side)).resize((256, 256), Image.Resampling.NEAREST)
        path = folder / f"junk_{i:02d}_{kind}.jpg"
        image.save(path, quality=90)
        made.append(path)
    return made


def embed_with_junk(photos: Path, out: Path, n_junk: int, work: Path) -> tuple[list[str], np.ndarray]:
    """Sample + junk features; the sample's rows come from its cache in `out`."""
    root, cache = work / "photos", work / "out"
    for category in sorted(p for p in photos.iterdir() if p.is_dir()):
        (root / category.name).mkdir(parents=True)
        for f in category.iterdir():
            (root / category.name / f.name).symlink_to(f.resolve())
    make_junk(root / "junk", n_junk, sorted(photos.glob("*/*.jpg")))
    cache.mkdir()
    for name in ("features.npy", "manifest.csv", "features.json", "cache_key.json"):
        if (out / name).is_file():
            shutil.copy2(out / name, cache / name)
    report = extract_folder(root, cache, load_config(None).extract, log=lambda m: None, progress=False)
    print(f"embedded {report.embedded} images ({report.decoded} decoded: the junk; {report.reused} from the cache)",
          flush=True)
    embedded = load_embedded(cache)
    paths, features = embedded.paths, embedded.features
    return paths, features


def study(paths: list[str], features: np.ndarray) -> dict:
    labels = np.array([p.split("/", 1)[0] for p in paths])
    junk = labels == "junk"
    real = np.flatnonzero(~junk)
    junk_rows = np.flatnonzero(junk)
    k = len(set(labels[~junk]))
    X = normalize_features(features, "l2")
    rows = []
    for share in SHARES:
        take = np.r_[real, junk_rows[: int(round(share * len(real)))]]
        for loss in LOSS_NAMES:
            scores, captured_clusters, captured_junk = [], [], []
            for seed in SEEDS:
                model = GeneralizedKMeans(k, loss, n_init=4, seed=seed).fit(X[take])
                assigned = model.labels_
                is_junk = junk[take]
                scores.append(nmi(labels[take][~is_junk], assigned[~is_junk]))
                mostly_junk = [c for c in range(k) if is_junk[assigned == c].mean() > 0.5] \
                    if is_junk.any() else []
                captured_clusters.append(len(mostly_junk))
                captured_junk.append(int(np.isin(assigned[is_junk], mostly_junk).sum()))
            rows.append({"junk_share": share, "junk_images": int(len(take) - len(real)), "loss": loss,
                         "nmi_mean": float(np.mean(scores)), "nmi_min": float(np.min(scores)),
                         "junk_clusters_mean": float(np.mean(captured_clusters)),
                         "junk_in_captured_mean": float(np.mean(captured_junk))})
            print(f"  junk {share:>4.0%} {loss:>19}: NMI {np.mean(scores):.3f} (min {np.min(scores):.3f}), "
                  f"clusters taken by junk {np.mean(captured_clusters):.1f}", flush=True)
    return {"k": k, "seeds": list(SEEDS), "rows": rows}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for loss in LOSS_NAMES:
        rows = [r for r in result["rows"] if r["loss"] == loss]
        ax.plot([100 * r["junk_share"] for r in rows], [r["nmi_mean"] for r in rows], "o-", ms=4, label=loss)
    ax.set_xlabel("junk images added (% of the sample)")
    ax.set_ylabel(f"NMI on the real photos (mean of {len(result['seeds'])} seeds)")
    ax.set_title("How junk photos change each loss's clustering of the sample", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=Path("data/sample"))
    parser.add_argument("--out", type=Path, default=Path("outputs/sample"))
    args = parser.parse_args()
    n_sample = len(list(args.photos.glob("*/*.jpg")))
    with tempfile.TemporaryDirectory() as tmp:
        paths, features = embed_with_junk(args.photos, args.out, int(round(max(SHARES) * n_sample)), Path(tmp))
    result = study(paths, features)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    plot(result, BENCH_DIR / "robust.png")
    print(f"-> {write_result('robust', result)} and {BENCH_DIR / 'robust.png'}")


if __name__ == "__main__":
    main()
