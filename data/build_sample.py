#!/usr/bin/env python3
"""Build data/sample/ from Debian's tuxpaint-stamps-default photo stamps.

The package ships Tux Paint "stamps": small images in a category tree under
/usr/share/tuxpaint/stamps. Many are real photographs cut out on a
transparent background; others are drawings, clip-art, silhouettes, cartoons
or SVGs. This script keeps the photographs of four categories, composites
each on white, and writes one JPEG per stamp into one folder per category
(the folder name is the ground-truth label):

    mammals  <- animals/mammals/**
    birds    <- animals/birds/**
    fruit    <- food/fruit/**
    flowers  <- plants/flowers/**

Which stamps count as photos (in this order):

1. Only raster PNGs: SVGs are vector drawings, and a PNG with an SVG of the
   same name beside it is Tux Paint's rendering of that drawing.
2. Subfolders named ``cartoon`` (drawings), ``toys`` (a teddy bear) and
   ``plastic`` (an artificial flower) are skipped: not real members of the
   category.
3. Pixel heuristic over the opaque pixels (alpha >= 250) of the stamp:
   - flat ratio: the share of horizontally adjacent opaque pixel pairs whose
     RGB is exactly equal. Drawings are filled with flat colours (>= 0.59 on
     every drawing of the four categories, cartoon/ ones included); photos
     have sensor noise and gradients (<= 0.44 on every photo there,
     palette-quantised ones included).
   - colour entropy: Shannon entropy (bits) of the histogram of colours
     quantised to 6 bits per channel. Photos >= 5.9 bits, drawings mostly
     0.5-5.5 bits.
   - distinct colours: at least 200 exact RGB values (a silhouette has 1).
   A stamp is a photo when flat ratio < 0.5 AND entropy >= 5.0 AND distinct
   colours >= 200.
4. EXCLUDE: stamps that pass the pixel test but, looked at by eye, are
   realistic paintings or 3D renders rather than photographs.

Each category is capped at --max-per-category images (default 40) so the
labels stay roughly balanced. When a category has more, variety wins:
first one stamp per species (same folder and same first word of the name:
pig, pig_golden, pig_golden2 are one species), taken round-robin over the
sorted subfolders, then second variants the same way, and so on.
Images are cropped to their opaque bounding box, composited
on white, shrunk (never enlarged) to a long side of --max-side px (default
256) and saved as baseline JPEG, quality 88, without metadata. The output is
deterministic for a given stamps tree and Pillow version.

Also writes LICENSE (GPL-2 notice, source package and version) and
SOURCES.csv (output file -> original stamp path) into the output folder.

Usage: python data/build_sample.py [--stamps DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = OrderedDict(
    [
        ("mammals", "animals/mammals"),
        ("birds", "animals/birds"),
        ("fruit", "food/fruit"),
        ("flowers", "plants/flowers"),
    ]
)

# Subfolders whose stamps are not real photographs of the category.
SKIP_DIRS = {"cartoon", "toys", "plastic"}

# Pass the pixel heuristic but are paintings / renders (checked by eye on a
# contact sheet, tuxpaint-stamps 2022.06.04). Paths relative to --stamps.
EXCLUDE = {
    "animals/mammals/dogs/dog.png",  # natural-history illustration (stippled)
    "animals/mammals/bovines/yak.png",  # painting
    "animals/mammals/aquatic/whale.png",  # blue-tinted 3D render
    "animals/mammals/rodents/mouse.png",  # 3D render
    "animals/birds/tucan.png",  # watercolour illustration
}

FLAT_RATIO_MAX = 0.5
ENTROPY_MIN = 5.0
DISTINCT_MIN = 200
ALPHA_OPAQUE = 250

PACKAGE = "tuxpaint-stamps-default"


def photo_stats(img: Image.Image) -> dict:
    """Colour statistics of the opaque area of an image (see module doc)."""
    a = np.asarray(img.convert("RGBA"))
    opaque = a[..., 3] >= ALPHA_OPAQUE
    rgb = a[..., :3].astype(np.int64)
    px = rgb[opaque]
    if len(px) < 2:
        return {"flat": 1.0, "entropy": 0.0, "distinct": len(px)}
    keys = ((px >> 2) * np.array([4096, 64, 1])).sum(axis=1)
    _, counts = np.unique(keys, return_counts=True)
    p = counts / counts.sum()
    entropy = float(-(p * np.log2(p)).sum())
    distinct = len(np.unique((px * np.array([65536, 256, 1])).sum(axis=1)))
    pair = opaque[:, 1:] & opaque[:, :-1]
    same = (rgb[:, 1:] == rgb[:, :-1]).all(axis=-1)
    flat = float(same[pair].mean()) if pair.any() else 1.0
    return {"flat": flat, "entropy": entropy, "distinct": distinct}


def is_photo(stats: dict) -> bool:
    return (
        stats["flat"] < FLAT_RATIO_MAX
        and stats["entropy"] >= ENTROPY_MIN
        and stats["distinct"] >= DISTINCT_MIN
    )


def safe_name(stem: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", stem.lower()).strip("_")
    return s or "stamp"


def candidates(stamps: Path, subdir: str) -> list[Path]:
    base = stamps / subdir
    out = []
    for p in sorted(base.rglob("*")):
        if not p.is_file() or p.suffix.lower() != ".png":
            continue
        rel_parts = p.relative_to(base).parts[:-1]
        if any(part.lower() in SKIP_DIRS for part in rel_parts):
            continue
        if p.with_suffix(".svg").exists() or p.with_suffix(".SVG").exists():
            continue
        out.append(p)
    return out


def species_key(stem: str) -> str:
    """First word of a stamp name: pig, pig_golden, pig_golden2 -> pig."""
    return re.split(r"[-_\d]", stem.lower())[0] or stem.lower()


def round_robin_cap(paths: list[Path], base: Path, cap: int) -> list[Path]:
    """Pick at most cap stamps, favouring variety (see module doc)."""
    if cap <= 0 or len(paths) <= cap:
        return paths
    # rank of each stamp among the stamps of the same folder and first word
    seen: dict[tuple[str, str], int] = {}
    ranked: dict[int, "OrderedDict[str, list[Path]]"] = {}
    for p in paths:  # already sorted
        folder = p.parent.relative_to(base).as_posix()
        k = (folder, species_key(p.stem))
        r = seen.get(k, 0)
        seen[k] = r + 1
        ranked.setdefault(r, OrderedDict()).setdefault(folder, []).append(p)
    chosen: list[Path] = []
    for r in sorted(ranked):
        queues = [list(q) for _, q in sorted(ranked[r].items())]
        while len(chosen) < cap and any(queues):
            for q in queues:
                if q and len(chosen) < cap:
                    chosen.append(q.pop(0))
    return sorted(chosen)


def render(path: Path, max_side: int) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        rgba = im.convert("RGBA")
    bbox = rgba.getchannel("A").getbbox()
    if bbox:
        rgba = rgba.crop(bbox)
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    w, h = rgb.size
    scale = max_side / max(w, h)
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = rgb.resize(size, Image.LANCZOS)
    return rgb


def package_version() -> str:
    try:
        r = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", PACKAGE],
            capture_output=True, text=True, check=False,
        )
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip()
    except OSError:
        pass
    return "unknown"


LICENSE_TEXT = """\
Sample photos in this folder (mammals/, birds/, fruit/, flowers/)
==================================================================

The images are photo stamps taken from the Debian binary package
"tuxpaint-stamps-default" (source package "tuxpaint-stamps", version {version}),
the stamp collection of Tux Paint.

  Upstream-Name: tuxpaint-stamps
  Source: http://sourceforge.net/projects/tuxpaint
  Copyright: 2002-2022 by Bill Kendrick <bill@newbreedsoftware.com>
  License: GPL-2

The notice given in /usr/share/doc/tuxpaint-stamps-default/copyright:

  This package is free software; you can redistribute it and/or modify
  it under the terms of the GNU General Public License as published by
  the Free Software Foundation; either version 2 of the License, or
  (at your option) any later version.

  This package is distributed in the hope that it will be useful,
  but WITHOUT ANY WARRANTY; without even the implied warranty of
  MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
  GNU General Public License for more details.

  You should have received a copy of the GNU General Public License
  along with this program. If not, see <https://www.gnu.org/licenses/>

On Debian systems the complete text of the GNU General Public License
version 2 is in /usr/share/common-licenses/GPL-2.

Modifications: the selected stamps (PNG with transparency) were cropped to
their opaque area, composited on a white background, shrunk to a long side
of at most {max_side} px and saved as JPEG (quality {quality}) by
data/build_sample.py, which regenerates this folder from the installed
package (apt-get install tuxpaint-stamps-default). SOURCES.csv maps each
file here to its original stamp. These modified images are distributed
under the same license, GPL version 2 or (at your option) any later version.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stamps", default="/usr/share/tuxpaint/stamps", type=Path,
                    help="Tux Paint stamps directory (default: %(default)s)")
    ap.add_argument("--out", default=Path(__file__).resolve().parent / "sample",
                    type=Path, help="output folder (default: data/sample)")
    ap.add_argument("--max-side", type=int, default=256,
                    help="long side in px, images are never enlarged (default: 256)")
    ap.add_argument("--quality", type=int, default=88, help="JPEG quality (default: 88)")
    ap.add_argument("--max-per-category", type=int, default=40,
                    help="cap per category, 0 for no cap (default: 40)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="print the decision and statistics for every stamp")
    args = ap.parse_args(argv)

    stamps: Path = args.stamps
    missing = [d for d in CATEGORIES.values() if not (stamps / d).is_dir()]
    if missing:
        print(f"error: Tux Paint stamps not found in {stamps} (missing {missing[0]}); "
              f"install them with: sudo apt-get install {PACKAGE}", file=sys.stderr)
        return 2

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    sources = []
    counts = {}
    for label, subdir in CATEGORIES.items():
        base = stamps / subdir
        keep = []
        for p in candidates(stamps, subdir):
            rel = p.relative_to(stamps).as_posix()
            with Image.open(p) as im:
                st = photo_stats(im)
            ok = is_photo(st) and rel not in EXCLUDE
            if args.verbose:
                why = "photo" if ok else ("excluded" if is_photo(st) else "drawing")
                print(f"{why:8s} flat={st['flat']:.2f} ent={st['entropy']:5.2f} "
                      f"distinct={st['distinct']:6d}  {rel}")
            if ok:
                keep.append(p)
        keep = round_robin_cap(keep, base, args.max_per_category)

        dest = out / label
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        used: set[str] = set()
        for p in keep:
            name = safe_name(p.stem)
            if name in used:
                name = safe_name(f"{p.parent.name}_{p.stem}")
            n = 2
            while name in used:
                name = f"{safe_name(p.stem)}_{n}"
                n += 1
            used.add(name)
            img = render(p, args.max_side)
            fn = f"{name}.jpg"
            img.save(dest / fn, "JPEG", quality=args.quality, optimize=True)
            sources.append((f"{label}/{fn}", label, p.relative_to(stamps).as_posix()))
        counts[label] = len(keep)

    with open(out / "SOURCES.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "label", "stamp"])
        w.writerows(sources)
    (out / "LICENSE").write_text(
        LICENSE_TEXT.format(version=package_version(), max_side=args.max_side,
                            quality=args.quality),
        encoding="utf-8",
    )
    total = sum(counts.values())
    print(", ".join(f"{k}: {v}" for k, v in counts.items()) + f" -> {total} images in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
