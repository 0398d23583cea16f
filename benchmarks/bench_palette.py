"""`photoclust palette` on a 12 MP photo, timed step by step, and the cost of the clusters'
colour strips in render (the sample run's render with and without them).

    python benchmarks/bench_palette.py [--photos data/sample] [--out DIR] [--repeat 5] [--skip-render | --skip-photo]

The 12 MP photo is the README's photograph (data/colour/palette-chelsea.png, CC0) enlarged to
4000 x 3000 with Lanczos and a little seeded noise (a camera's sensor noise: without it an
enlargement has far fewer distinct colours than a photo), saved as JPEG quality 92. Steps:
decode (full size, EXIF-upright, `images.open_rgb`), pixel codes, distinct colours with
counts, the fit (`palette.palette_of`: Lab conversion, pooling, k-means, labelling every
distinct colour), the swatch and the files; the whole `palette_run` end to end in this
process; and `photoclust palette` in a new process (wall time with start-up, peak memory).
Also: how much a JPEG draft decode (1/2, 1/4 scale) would move the shares. The render part
runs `photoclust run --weights random` on the sample (or reuses --out) and times `render`
with and without palettes. -> outputs/bench/palette.json
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result  # noqa: E402
from pipeline import colour  # noqa: E402
from pipeline import palette as P  # noqa: E402
from pipeline.images import open_rgb  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "data" / "colour" / "palette-chelsea.png"
SIZE = (4000, 3000)
NOISE = 8  # levels (standard deviation) of sensor-like noise: about 140,000 distinct colours after JPEG


def make_photo(path: Path, seed: int = 0) -> Path:
    with Image.open(SOURCE) as im:
        big = np.asarray(im.convert("RGB").resize(SIZE, Image.Resampling.LANCZOS), dtype=np.int16)
    rng = np.random.default_rng(seed)
    for start in range(0, big.shape[0], 500):  # in bands: no 12 MP float array
        band = big[start:start + 500]
        band += rng.normal(0, NOISE, size=band.shape).round().astype(np.int16)
    Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=92)
    return path


def timed(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def draft_shares(path: Path, full: P.Palette, scale: int) -> dict:
    """The shares of the full-size palette's colours when the pixels come from a 1/scale
    JPEG draft decode: each draft colour labelled by the full fit's centers."""
    with Image.open(path) as im:
        im.draft("RGB", (im.width // scale, im.height // scale))
        pixels = np.asarray(im.convert("RGB"))
    colours = colour.colours_of(colour.pixel_codes(pixels))
    from pipeline.kmeans import GeneralizedKMeans

    model = GeneralizedKMeans(len(full.rgb), "square", init=colour.to_space(full.rgb, "lab"), max_iter=1)
    model.fit(colour.to_space(full.rgb, "lab"))  # centers = the full palette's colours
    labels = model.predict(colour.to_space(colours.rgb, "lab"))
    shares = np.bincount(labels, weights=colours.counts, minlength=len(full.rgb)) / colours.pixels
    return {"scale": f"1/{scale}", "size": list(pixels.shape[1::-1]),
            "max_share_change": float(np.abs(shares - full.shares).max())}


def cli_run(path: Path, out: Path, repeat: int) -> dict:
    """`photoclust palette PHOTO` as a user runs it: a new process each time (Python, torch and
    the first fit's warm-up included), its wall time and the largest peak memory of a run."""
    import subprocess

    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipeline", "palette", str(path), "--out", str(out)], cwd=REPO,
                       check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return {"wall_seconds": round(statistics.median(times), 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def photo_part(repeat: int, k: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        path = make_photo(Path(folder) / "big.jpg")
        out = Path(folder) / "out"
        decode_s, image = timed(lambda: open_rgb(path), repeat)
        pixels = np.asarray(image)
        codes_s, codes = timed(lambda: colour.pixel_codes(pixels), repeat)
        count_s, colours = timed(lambda: colour.colours_of(codes), repeat)
        fit_s, palette = timed(lambda: P.palette_of(colours, k), repeat)
        write_s, _ = timed(lambda: P.write_palette(P.PaletteLayout(out).files(), palette,
                                                   P.record(palette, "big.jpg", k, "square", "lab", 0), "big.jpg"),
                           repeat)
        del image, pixels, codes
        total_s, _ = timed(lambda: P.palette_run(path, out, k=k, log=lambda m: None), repeat)
        drafts = [draft_shares(path, palette, s) for s in (2, 4)]
        cli = cli_run(path, Path(folder) / "cli", max(1, repeat // 2))
        return {"photo": {"size": list(SIZE), "megapixels": SIZE[0] * SIZE[1] / 1e6,
                          "distinct_colours": int(len(colours.codes)), "jpeg_bytes": path.stat().st_size},
                "k": k, "repeat": repeat,
                "seconds": {"decode": round(decode_s, 4), "pixel_codes": round(codes_s, 4),
                            "colours_of": round(count_s, 4), "fit": round(fit_s, 4),
                            "swatch_and_files": round(write_s, 4), "palette_run_total": round(total_s, 4)},
                "command": cli,
                "palette": palette.hex, "shares": [round(float(s), 4) for s in palette.shares],
                "draft": drafts}


def render_part(photos: Path, out: Path | None, repeat: int) -> dict:
    from pipeline.cli import main
    from pipeline.render import render_run

    temporary = None
    if out is None:
        temporary = Path(tempfile.mkdtemp())
        out = temporary / "sample"
        assert main(["run", str(photos), "--out", str(out), "--weights", "random", "--workers", "0"]) == 0
    quiet = dict(log=lambda m: None, progress=False)
    try:
        render_run(out, **quiet)  # thumbnails made; the map projected
        with_s, without_s = [], []
        for _ in range(repeat):  # alternating, so both see the same machine
            for flag, times in ((True, with_s), (False, without_s)):
                start = time.perf_counter()
                render_run(out, palette=flag, **quiet)
                times.append(time.perf_counter() - start)
        from pipeline.cache import OK, load_embedded, read_source
        from pipeline.cluster import read_summary
        from pipeline.layout import Layout
        from pipeline.render import MAX_PER_SHEET, Thumbnails, cluster_palettes
        from pipeline.represent import clustered_losses, read_assignments

        losses = clustered_losses(out)
        clusters = sum(read_summary(out, loss)["k"] for loss in losses)
        frames = {loss: read_assignments(out, loss) for loss in losses}
        thumbs = Thumbnails(read_source(out), Layout(out).thumbs,
                            {e.path: e.sha1 for e in load_embedded(out).entries if e.status == OK})
        thumbs.prepare(sorted({p for f in frames.values() for p in f["path"]}), progress=False)
        strips_s, _ = timed(lambda: cluster_palettes(frames, thumbs, MAX_PER_SHEET), repeat * 2)
        return {"photos": str(photos), "losses": losses, "clusters": clusters, "repeat": repeat,
                "render_seconds_with_palette": round(statistics.median(with_s), 3),
                "render_seconds_without_palette": round(statistics.median(without_s), 3),
                "strips_seconds": round(strips_s, 3)}
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=REPO / "data" / "sample", help="photos of the render part")
    parser.add_argument("--out", type=Path, default=None,
                        help="an output folder of a finished run to render (default: a fresh run with random weights)")
    parser.add_argument("--repeat", type=int, default=5, help="timings per step (the median is kept)")
    parser.add_argument("--k", type=int, default=6, help="colours of the palette")
    parser.add_argument("--skip-render", action="store_true", help="only the 12 MP photo")
    parser.add_argument("--skip-photo", action="store_true", help="only the render part")
    args = parser.parse_args()
    result = {}
    if not args.skip_photo:
        result["twelve_mp"] = photo_part(args.repeat, args.k)
        print(result["twelve_mp"]["seconds"], result["twelve_mp"]["draft"])
    if not args.skip_render:
        result["render"] = render_part(args.photos, args.out, max(1, args.repeat // 2))
        print(result["render"])
    print(write_result("palette", result))


if __name__ == "__main__":
    main()
