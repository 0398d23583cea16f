"""Near-duplicate calibration: which cosine threshold finds edited copies of a photo, and
nothing else?

The benchmark copies the sample photos into a temporary folder, untouched and in four
edited versions each (all saved as JPEG, quality 95, except the recompressed one):

  original   the file as it is (the same bytes)
  resize50   half the width and height (Lanczos)
  jpeg30     recompressed at JPEG quality 30
  crop10     the left and top 10% cut off (an off-centre crop: the model's own centre
             crop would hide a centred one)
  bright30   brightness +30% (PIL ImageEnhance.Brightness(1.3))

embeds them with the real pipeline (`python -m pipeline extract TEMP --out TEMP_OUT
--weights oxford`, default precision, as `make run` does on a machine without the
torchvision download) and scores pairs found by `pipeline.dupes.similar_pairs` (cosine of
the L2-normalised features >= threshold) against the truth (two files are a true pair when
they come from the same original):

  all pairs     precision and recall over every pair of the 5 x n files
  per edit      pairs of an original with an edited file of that kind: precision and
                recall (true: the original's own copy)
  originals     false pairs among the untouched originals alone (different photos
                that the threshold would call near-duplicates)
  grouped       the pairs of files in one group of what `dupes` writes
  groups        at the default threshold: how many originals have all five versions in
                one group, and how many groups mix originals

It scores the pairs twice: found directly (cosine >= threshold) and grouped (two files in
one group of duplicates.csv, after union-find has joined chains: what a person sees). The
threshold it suggests is the one with the highest F1 of the grouped pairs, ties to the
higher threshold. With --scale N it also times `find_duplicates` on N random 512-d rows
(1% of them noisy copies of others) in a separate process and reports its peak memory.

    python benchmarks/bench_dupes.py [--photos data/sample] [--model vgg16] [--weights oxford] [--scale 100000]
writes outputs/bench/dupes.json (make bench-dupes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.common import write_result  # noqa: E402
from pipeline.cache import OK, load_embedded  # noqa: E402
from pipeline.dupes import DEFAULT_THRESHOLD, find_duplicates, similar_pairs, unit_rows  # noqa: E402
from pipeline.images import find_images  # noqa: E402

KINDS = ("original", "resize50", "jpeg30", "crop10", "bright30")
THRESHOLDS = [round(t, 2) for t in np.arange(0.50, 1.0, 0.01)]


def edit(image: Image.Image, kind: str) -> Image.Image:
    w, h = image.size
    if kind == "resize50":
        return image.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS)
    if kind == "crop10":
        return image.crop((int(round(w * 0.1)), int(round(h * 0.1)), w, h))
    if kind == "bright30":
        return ImageEnhance.Brightness(image).enhance(1.3)
    return image  # jpeg30: the same pixels, saved at quality 30


def make_copies(photos: Path, root: Path) -> None:
    """root/<kind>/<relative path of the original>, for every photo and kind."""
    for source in find_images(photos):
        rel = source.relative_to(photos)
        for kind in KINDS:
            target = (root / kind / rel).with_suffix(".jpg")
            target.parent.mkdir(parents=True, exist_ok=True)
            if kind == "original":
                shutil.copyfile(source, root / kind / rel)
                continue
            with Image.open(source) as opened:
                image = ImageOps.exif_transpose(opened).convert("RGB")
            edit(image, kind).save(target, quality=30 if kind == "jpeg30" else 95)


def evaluate(paths: list[str], sha1s: list[str], features: np.ndarray, thresholds: list[float]) -> dict:
    kind = np.array([p.split("/", 1)[0] for p in paths])
    origin = np.array([p.split("/", 1)[1].rsplit(".", 1)[0] for p in paths])
    n = len(paths)
    unit = unit_rows(features)
    found = [b for b in similar_pairs(unit, min(thresholds))]
    i = np.concatenate([b[0] for b in found]) if found else np.zeros(0, np.int64)
    j = np.concatenate([b[1] for b in found]) if found else np.zeros(0, np.int64)
    sim = np.concatenate([b[2] for b in found]) if found else np.zeros(0, np.float32)
    same = origin[i] == origin[j]
    total_true = sum(int(c) * (int(c) - 1) // 2 for c in np.unique(origin, return_counts=True)[1])
    rows = []
    for t in thresholds:
        hit = sim >= t
        row = {"threshold": t, "all": score_counts(int((hit & same).sum()), int(hit.sum()), total_true)}
        for k in KINDS[1:]:
            pair = ((kind[i] == "original") & (kind[j] == k)) | ((kind[i] == k) & (kind[j] == "original"))
            true_k = len(set(origin[kind == k]) & set(origin[kind == "original"]))
            row[k] = score_counts(int((hit & pair & same).sum()), int((hit & pair).sum()), true_k)
        among = (kind[i] == "original") & (kind[j] == "original")
        row["false_pairs_among_originals"] = int((hit & among).sum())
        row["false_pairs_among_originals_paths"] = sorted(
            [paths[a], paths[b]] for a, b in zip(i[hit & among], j[hit & among]))
        row["grouped"] = grouped_pairs(paths, sha1s, features, t, origin)
        rows.append(row)
    return {"photos": n, "originals": int((kind == "original").sum()), "rows": rows}


def grouped_pairs(paths: list[str], sha1s: list[str], features: np.ndarray, threshold: float,
                  origin: np.ndarray) -> dict:
    """Precision and recall of the pairs that end up in one group of duplicates.csv (what a
    person sees: union-find joins chains, so a group can hold pairs the threshold alone would not)."""
    table = find_duplicates(paths, sha1s, features, threshold)
    index = {p: k for k, p in enumerate(paths)}
    tp = predicted = 0
    for _, members in table.groupby("group")["path"]:
        o = origin[[index[p] for p in members]]
        m = len(o)
        predicted += m * (m - 1) // 2
        tp += sum(int(c) * (int(c) - 1) // 2 for c in np.unique(o, return_counts=True)[1])
    total_true = sum(int(c) * (int(c) - 1) // 2 for c in np.unique(origin, return_counts=True)[1])
    return score_counts(tp, predicted, total_true)


def score_counts(tp: int, predicted: int, true: int) -> dict:
    precision = tp / predicted if predicted else 1.0
    recall = tp / true if true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "pairs_found": predicted, "true_pairs": true}


def groups_at(paths: list[str], sha1s: list[str], features: np.ndarray, threshold: float) -> dict:
    table = find_duplicates(paths, sha1s, features, threshold)
    origin_of = lambda p: p.split("/", 1)[1].rsplit(".", 1)[0]
    originals = sorted({origin_of(p) for p in paths})
    groups = {g: {origin_of(p) for p in members} for g, members in table.groupby("group")["path"]}
    complete = 0
    for o in originals:
        versions = table.loc[table["path"].map(origin_of) == o, "group"]
        complete += int(len(versions) == len(KINDS) and versions.nunique() == 1)
    return {"threshold": threshold, "groups": len(groups), "photos_in_groups": len(table),
            "originals_with_all_versions_in_one_group": complete, "originals": len(originals),
            "groups_mixing_originals": sum(len(o) > 1 for o in groups.values()),
            "largest_group": int(table["group"].value_counts().max()) if len(table) else 0}


def scale_run(n: int) -> None:
    """Child process: time find_duplicates on n random rows, print a JSON line."""
    rng = np.random.default_rng(0)
    features = np.empty((n, 512), np.float32)
    for start in range(0, n, 65536):
        m = min(n, start + 65536) - start
        features[start:start + m] = rng.standard_normal((m, 512), dtype=np.float32)
    copies = rng.choice(n, size=n // 100, replace=False)
    sources = rng.integers(0, n, size=len(copies))
    features[copies] = features[sources] + 0.2 * rng.standard_normal((len(copies), 512), dtype=np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    table = find_duplicates([f"{i:07d}" for i in range(n)], [""] * n, features, DEFAULT_THRESHOLD)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n": n, "seconds": round(seconds, 2), "groups": int(table["group"].nunique()),
                      "peak_rss_mb": round(peak / 1024, 1), "rss_before_search_mb": round(before / 1024, 1),
                      "features_mb": round(features.nbytes / 2**20, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=REPO / "data" / "sample")
    parser.add_argument("--model", default="vgg16", help="as extract's --model (default vgg16)")
    parser.add_argument("--weights", default=None, help="as extract's --weights (default: oxford for vgg16, else auto)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the copies and their features in this folder (a rerun then embeds nothing)")
    parser.add_argument("--scale", type=int, default=0, help="also time find_duplicates on this many random rows")
    parser.add_argument("--scale-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.weights is None:
        args.weights = "oxford" if args.model == "vgg16" else "auto"
    if args.scale_child:
        scale_run(args.scale_child)
        return

    with tempfile.TemporaryDirectory(prefix="bench-dupes-") as tmp:
        work = args.work.resolve() if args.work else Path(tmp)
        photos, out = work / "photos", work / "out"
        if not photos.is_dir():
            make_copies(args.photos.resolve(), photos)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipeline", "extract", str(photos), "--out", str(out),
                        "--model", args.model, "--weights", args.weights], cwd=REPO, check=True)
        extract_seconds = time.perf_counter() - started
        embedded = load_embedded(out)
        key = embedded.key
        sha1s = [e.sha1 for e in embedded.entries if e.status == OK]
        study = evaluate(embedded.paths, sha1s, embedded.features, THRESHOLDS)
        best = max(study["rows"], key=lambda r: (r["grouped"]["f1"], r["threshold"]))
        default_row = next(r for r in study["rows"] if abs(r["threshold"] - DEFAULT_THRESHOLD) < 1e-9)
        result = {
            "command": "make bench-dupes",
            "model": args.model, "weights": args.weights, "precision": key.get("precision"), "extract_seconds": round(extract_seconds, 1),
            "kinds": list(KINDS), **{k: v for k, v in study.items() if k != "rows"},
            "suggested_threshold": best["threshold"], "suggestion_rule": "highest F1 of the pairs in one group, ties to the higher",
            "default_threshold": DEFAULT_THRESHOLD, "at_default": default_row,
            "groups_at_default": groups_at(embedded.paths, sha1s, embedded.features, DEFAULT_THRESHOLD),
            "thresholds": study["rows"],
        }
    if args.scale:
        child = subprocess.run([sys.executable, __file__, "--scale-child", str(args.scale)], cwd=REPO, check=True,
                               capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        result["scale"] = json.loads(child.stdout.strip().splitlines()[-1])
    path = write_result("dupes" if args.model == "vgg16" else f"dupes_{args.model}", result)

    print(f"{'threshold':>9} {'P pairs':>7} {'R pairs':>7} {'F1':>6} {'P groups':>8} {'R groups':>8} {'F1':>6} "
          + " ".join(f"{'R ' + k:>11}" for k in KINDS[1:]) + "  false among originals")
    for row in study["rows"]:
        if round(row["threshold"] * 100) % 5 == 0 or row is best or row is default_row:
            a, g = row["all"], row["grouped"]
            print(f"{row['threshold']:>9.2f} {a['precision']:>7.3f} {a['recall']:>7.3f} {a['f1']:>6.3f} "
                  f"{g['precision']:>8.3f} {g['recall']:>8.3f} {g['f1']:>6.3f} "
                  + " ".join(f"{row[k]['recall']:>11.3f}" for k in KINDS[1:])
                  + f"  {row['false_pairs_among_originals']}")
    print(f"suggested threshold (best grouped F1): {best['threshold']}; default {DEFAULT_THRESHOLD}: "
          f"{result['groups_at_default']}")
    if "scale" in result:
        print(f"scale: {result['scale']}")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
