"""`photoclust palette` and the colour strips of render: palettes that give back exactly the
colours a picture is made of, the swatch's bars as wide as the shares, a folder's palettes
(a broken file among them), errors as one line, and the strips on the sheets and pages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import colour
from pipeline import palette as P
from pipeline.cli import main
from pipeline.layout import Layout, PaletteLayout
from pipeline.tables import read_frame

# four flat colours and how many pixels of a 40 x 25 picture each covers
FLAT = np.array([[200, 30, 40], [20, 120, 220], [250, 240, 230], [10, 10, 10]], dtype=np.uint8)
SIZES = np.array([500, 300, 150, 50])


def flat_picture(path: Path, colours=FLAT, sizes=SIZES, width: int = 40) -> Path:
    pixels = np.repeat(colours, sizes, axis=0).reshape(-1, width, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)  # PNG: lossless, so the pixels are exactly these colours
    return path


def hex_of(rgb) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def runs(row: np.ndarray) -> list[tuple[tuple[int, ...], int]]:
    """(colour, length) of each run of equal pixels along a row of RGB pixels."""
    out: list[tuple[tuple[int, ...], int]] = []
    for pixel in map(tuple, row.tolist()):
        if out and out[-1][0] == pixel:
            out[-1] = (pixel, out[-1][1] + 1)
        else:
            out.append((pixel, 1))
    return out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_an_image_of_flat_colours_gives_exactly_those_colours_and_shares_in_csv_and_json(tmp_path):
    photo = flat_picture(tmp_path / "flat.png")
    out = tmp_path / "pal"
    assert main(["palette", str(photo), "--out", str(out)]) == 0  # k = 6 by default: the 4 colours are all
    files = PaletteLayout(out).files()
    table = read_frame(files["csv"], text_columns=["hex"])
    assert list(table.columns) == P.COLUMNS
    order = np.argsort(-SIZES)  # largest share first
    assert list(table["hex"]) == [hex_of(c) for c in FLAT[order]] == ["#c81e28", "#1478dc", "#faf0e6", "#0a0a0a"]
    np.testing.assert_array_equal(table[["r", "g", "b"]].to_numpy(), FLAT[order])
    np.testing.assert_allclose(table["share"], SIZES[order] / SIZES.sum(), atol=1e-6)
    np.testing.assert_array_equal(table["pixels"], SIZES[order])
    np.testing.assert_allclose(table[["lab_L", "lab_a", "lab_b"]].to_numpy(), colour.rgb_to_lab(FLAT[order]),
                               atol=1e-4)
    record = json.loads(files["json"].read_text())
    assert record["pixels"] == 1000 and record["distinct_colours"] == 4 and record["colours_found"] == 4
    assert (record["k"], record["loss"], record["space"]) == (6, "square", "lab")
    assert [c["hex"] for c in record["colours"]] == list(table["hex"])
    assert [c["share"] for c in record["colours"]] == pytest.approx(list(SIZES[order] / SIZES.sum()), abs=1e-6)
    assert files["png"].is_file()
    assert not (out / "photos").exists()


@pytest.mark.parametrize("loss, space", [("absolute", "rgb"), ("huber", "lab"), ("correntropy", "rgb")])
def test_every_loss_and_space_gives_back_the_flat_colours(tmp_path, loss, space):
    photo = flat_picture(tmp_path / "flat.png")
    out = tmp_path / "pal"
    assert main(["palette", str(photo), "--out", str(out), "--k", "4", "--loss", loss, "--space", space]) == 0
    table = read_frame(PaletteLayout(out).files()["csv"], text_columns=["hex"])
    assert sorted(table["hex"]) == sorted(hex_of(c) for c in FLAT)
    np.testing.assert_array_equal(table["pixels"], np.sort(SIZES)[::-1])


def test_colours_are_counted_the_same_by_sorting_and_by_the_table(monkeypatch):
    rng = np.random.default_rng(2)
    codes = colour.pixel_codes(rng.integers(0, 6, size=(300, 200, 3), dtype=np.uint8) * 51)
    by_sort = colour.colours_of(codes)
    monkeypatch.setattr(colour, "_SORT_MAX_PIXELS", 0)
    by_table = colour.colours_of(codes)
    np.testing.assert_array_equal(by_sort.codes, by_table.codes)
    np.testing.assert_array_equal(by_sort.counts, by_table.counts)
    assert by_table.codes.dtype == by_sort.codes.dtype == np.int64 and by_sort.pixels == 300 * 200


def test_a_strip_pools_its_pictures_colours_in_bins_at_their_mean():
    one = Image.fromarray(np.repeat(FLAT, SIZES, axis=0).reshape(-1, 40, 3))
    shade = FLAT[0] + np.array([3, 0, 1], dtype=np.uint8)  # the same 5-bit bin as FLAT[0]
    two = Image.fromarray(np.broadcast_to(shade, (10, 30, 3)).copy())
    pooled = P.pooled_colours([P.binned_colours(one), P.binned_colours(two)])
    assert np.all(np.diff(pooled.codes) > 0) and pooled.pixels == 1000 + 300
    mean = np.rint((FLAT[0].astype(float) * 500 + shade.astype(float) * 300) / 800).astype(np.uint8)
    expected = {hex_of(c): n for c, n in zip(FLAT[1:], SIZES[1:])} | {hex_of(mean): 800}
    assert {hex_of(c): int(n) for c, n in zip(pooled.rgb, pooled.counts)} == expected
    palette = P.cluster_palette([P.binned_colours(one), P.binned_colours(two)])
    assert palette.hex[0] == hex_of(mean) and list(palette.pixels) == [800, 300, 150, 50]
    assert P.pooled_colours([]) is None and P.cluster_palette([]) is None


def test_hex_codes_are_lowercase_two_digits_per_channel():
    assert colour.hex_code((255, 0, 16)) == "#ff0010"
    assert colour.hex_code(np.array([1, 2, 3], dtype=np.uint8)) == "#010203"


def test_the_swatch_bars_are_as_wide_as_the_shares_with_readable_codes(tmp_path):
    photo = flat_picture(tmp_path / "flat.png")
    out = tmp_path / "pal"
    assert main(["palette", str(photo), "--out", str(out)]) == 0
    files = PaletteLayout(out).files()
    table = read_frame(files["csv"], text_columns=["hex"])
    swatch = np.asarray(Image.open(files["png"]).convert("RGB"))
    row = swatch[P.BAR_TOP + 3, P.SWATCH_PAD:P.SWATCH_PAD + P.SWATCH_WIDTH]  # above the text on the bars
    bars = runs(row)
    assert [c for c, _ in bars] == [tuple(int(v) for v in rgb) for rgb in table[["r", "g", "b"]].to_numpy()]
    widths = np.array([n for _, n in bars])
    assert widths.sum() == P.SWATCH_WIDTH
    assert np.abs(widths - table["share"].to_numpy() * P.SWATCH_WIDTH).max() <= 1
    # the code on each bar wide enough to hold it is drawn in the colour that reads on it
    edges = np.concatenate([[0], np.cumsum(widths)]) + P.SWATCH_PAD
    band = swatch[P.BAR_TOP + P.BAR_HEIGHT // 2 - 16:P.BAR_TOP + P.BAR_HEIGHT // 2 + 16]
    for (rgb, _), a, b in zip(bars, edges[:-1], edges[1:]):
        cut = band[:, a:b].reshape(-1, 3).astype(int)
        ink = cut[np.abs(cut - np.array(rgb)).sum(1) > 150]
        if b - a < 80:
            continue  # the 5% bar is too narrow for its code: the legend names it
        assert len(ink) > 30, rgb
        ink_light = ink.mean() > 127
        assert ink_light == (P.relative_luminance(rgb) < 0.18), (rgb, ink.mean())


def test_a_folder_gives_each_photo_its_palette_and_the_folder_the_summed_counts(tmp_path, capsys):
    photos = tmp_path / "photos"
    pictures = {"a.png": (FLAT[:2], [600, 400]), "sub/b.png": (FLAT[1:3], [100, 300]),
                "sub/c.png": (FLAT[2:], [250, 150])}
    for rel, (colours, sizes) in pictures.items():
        flat_picture(photos / rel, colours, np.array(sizes))
    (photos / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (photos / "sub" / "d.NEF").write_bytes(b"II*\x00 raw")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in photos.rglob("*") if p.is_file()}
    out = tmp_path / "pal"
    assert main(["palette", str(photos), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 2 and "sub/broken.jpg" in lines[1], lines
    assert lines[0].startswith("not read: 1 camera RAW file (sub/d.NEF): ")
    layout = PaletteLayout(out)
    per_photo = {}
    for rel, (colours, sizes) in pictures.items():
        files = layout.files(rel)
        assert all(f.is_file() for f in files.values()), rel
        table = read_frame(files["csv"], text_columns=["hex"])
        assert dict(zip(table["hex"], table["pixels"])) == {hex_of(c): n for c, n in zip(colours, sizes)}
        per_photo[rel] = table
    assert not any("broken" in p.name for p in out.rglob("*"))
    whole = read_frame(layout.files()["csv"], text_columns=["hex"])
    summed: dict[str, int] = {}
    for table in per_photo.values():
        for code, n in zip(table["hex"], table["pixels"]):
            summed[code] = summed.get(code, 0) + int(n)
    assert dict(zip(whole["hex"], whole["pixels"])) == summed  # 4 colours, k = 6: each its own
    record = json.loads(layout.files()["json"].read_text())
    assert record["photos"] == 3 and [u["path"] for u in record["unreadable"]] == ["sub/broken.jpg"]
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in photos.rglob("*") if p.is_file()} == before

    # fewer colours than the folder has: one fit over every photo's pixels, as if they were one picture
    out2 = tmp_path / "pal2"
    assert main(["palette", str(photos), "--out", str(out2), "--k", "2", "--seed", "3"]) == 0
    codes = np.concatenate([colour.pixel_codes(np.asarray(Image.open(photos / rel).convert("RGB")))
                            for rel in pictures])
    expected = P.palette_of(colour.colours_of(codes), 2, seed=3)
    whole = read_frame(PaletteLayout(out2).files()["csv"], text_columns=["hex"])
    assert list(whole["hex"]) == expected.hex and list(whole["pixels"]) == list(expected.pixels)

    # a photo gone from the folder takes its files with it; the others stay
    os.remove(photos / "sub" / "c.png")
    assert main(["palette", str(photos), "--out", str(out)]) == 0
    assert not any(f.exists() for f in layout.files("sub/c.png").values())
    assert all(f.is_file() for f in layout.files("a.png").values())


def test_the_same_input_gives_the_same_bytes(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)).save(photos / "n.png")
    outs = [tmp_path / "one", tmp_path / "two"]
    for out in outs:
        assert main(["palette", str(photos), "--out", str(out), "--k", "5", "--loss", "huber"]) == 0
    names = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert len(names) == 7  # the marker, the whole folder's three files, the photo's three
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


@pytest.mark.parametrize("flag, value, named", [("--space", "hsv", "--space"), ("--loss", "cubic", "--loss"),
                                                 ("--k", "0", "--k"), ("--k", "six", "--k")])
def test_a_bad_setting_is_one_line_and_writes_nothing(tmp_path, capsys, flag, value, named):
    photo = flat_picture(tmp_path / "flat.png")
    out = tmp_path / "pal"
    assert main(["palette", str(photo), "--out", str(out), flag, value]) == 2
    line = one_error_line(capsys)
    assert line.startswith("photoclust: error: ") and named in line and value in line
    assert not out.exists()


def test_an_unreadable_photo_or_an_output_over_the_photos_is_one_line(tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"nope")
    assert main(["palette", str(broken), "--out", str(tmp_path / "pal")]) == 2
    assert "broken.jpg" in one_error_line(capsys)
    photos = tmp_path / "photos"
    flat_picture(photos / "a.png")
    assert main(["palette", str(photos), "--out", str(photos)]) == 2
    assert "--out" in one_error_line(capsys)
    assert main(["palette", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in one_error_line(capsys)
    assert sorted(p.name for p in photos.iterdir()) == ["a.png"]


def test_the_default_output_folder_is_outputs_palette_name(tmp_path, monkeypatch):
    photo = flat_picture(tmp_path / "photos" / "holiday.png")
    monkeypatch.chdir(tmp_path)
    assert main(["palette", str(photo)]) == 0
    assert (tmp_path / "outputs" / "palette" / "holiday" / "palette.csv").is_file()
    assert main(["palette", "photos"]) == 0
    assert (tmp_path / "outputs" / "palette" / "photos" / "photos" / "holiday.png.palette.csv").is_file()
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["holiday.png"]


# ----------------------------------------------------------------------------- render's strips

FAST = ["--weights", "random", "--device", "cpu", "--workers", "0", "--n-init", "1"]
TINTS = np.array([[220, 40, 40], [40, 180, 60], [50, 60, 210], [240, 200, 40]], dtype=np.uint8)


@pytest.fixture(scope="module")
def strip_run(tmp_path_factory):
    """A run over flat-coloured photos of one size (so each member's thumbnail has as many
    pixels as any other): each cluster's palette is its members' colours, shares by count."""
    root = tmp_path_factory.mktemp("strips")
    photos, out = root / "photos", root / "out"
    photos.mkdir()
    for i in range(12):
        pixels = np.broadcast_to(TINTS[i % len(TINTS)], (48, 64, 3)).copy()
        pixels[: 8 + i] = TINTS[(i + 1) % len(TINTS)]  # two colours a photo, in several proportions
        Image.fromarray(pixels).save(photos / f"p{i:02d}.png")
    assert main(["run", str(photos), "--out", str(out), "--k", "2", "--losses", "square", *FAST]) == 0
    return photos, out


def strips_of(out: Path) -> dict[int, "P.Palette"]:
    """The palette each cluster's strip must show: that of its members' cached thumbnails."""
    from pipeline.cache import OK, load_embedded
    from pipeline.render import thumbnail_file

    layout = Layout(out)
    sha1_of = {e.path: e.sha1 for e in load_embedded(out).entries if e.status == OK}
    frame = read_frame(layout.assignments("square"), ["path"])
    expected = {}
    for cluster, members in frame.sort_values("rank").groupby("cluster"):
        thumbs = [Image.open(thumbnail_file(layout.thumbs, p, sha1_of[p])).convert("RGB") for p in members["path"]]
        expected[int(cluster)] = P.cluster_palette(P.binned_colours(im) for im in thumbs)
    return expected


def has_strip(sheet: np.ndarray, palette: "P.Palette") -> bool:
    """Whether 12 rows of the sheet show the palette's bars, as wide as its shares, over 160 px."""
    from pipeline.render import STRIP_HEIGHT, THUMB_PX

    want = [(tuple(int(v) for v in c), int(w))
            for c, w in zip(palette.rgb, np.diff(P.bar_edges(palette.shares, THUMB_PX))) if w > 0]
    rows = 0
    for y in range(sheet.shape[0]):
        found = runs(sheet[y])
        rows += any(found[i:i + len(want)] == want for i in range(len(found) - len(want) + 1))
    return rows >= STRIP_HEIGHT


def test_each_cluster_tile_and_page_has_a_strip_of_its_colours(strip_run):
    photos, out = strip_run
    layout = Layout(out)
    expected = strips_of(out)
    sheet = np.asarray(Image.open(layout.representatives_sheet("square")).convert("RGB"))
    for cluster, palette in expected.items():
        # the strip's main colours are the members' flat colours (JPEG thumbnails: within a few
        # levels; the fifth colour, if any, gathers the blended pixels along the edges)
        main = palette.rgb[palette.shares > 0.05]
        assert len(main) >= 2
        for rgb in main:
            assert np.abs(TINTS.astype(int) - rgb.astype(int)).max(axis=1).min() <= 8, rgb
        assert has_strip(sheet, palette), cluster
        text = layout.cluster_page("square", cluster).read_text(encoding="utf-8")
        assert 'class="palette"' in text
        for code in palette.hex:
            assert f"background:{code};" in text and f"<code>{code}</code>" in text


def test_palette_false_in_the_config_or_no_palette_leaves_the_strips_out(strip_run, tmp_path):
    _, out = strip_run
    layout = Layout(out)
    expected = strips_of(out)
    config = tmp_path / "pipeline.toml"
    config.write_text("[render]\npalette = false\n")
    for flags in (["--config", str(config)], ["--no-palette"]):
        assert main(["render", "--out", str(out), *flags]) == 0
        sheet = np.asarray(Image.open(layout.representatives_sheet("square")).convert("RGB"))
        assert not any(has_strip(sheet, p) for p in expected.values()), flags
        for cluster in expected:
            assert 'class="palette"' not in layout.cluster_page("square", cluster).read_text(encoding="utf-8")
    assert main(["render", "--out", str(out)]) == 0  # on again by default
    sheet = np.asarray(Image.open(layout.representatives_sheet("square")).convert("RGB"))
    assert all(has_strip(sheet, p) for p in expected.values())


def test_a_bad_render_palette_setting_names_the_key(tmp_path, capsys, strip_run):
    _, out = strip_run
    config = tmp_path / "bad.toml"
    config.write_text('[render]\npalette = "no"\n')
    assert main(["render", "--out", str(out), "--config", str(config)]) == 2
    line = one_error_line(capsys)
    assert "render.palette" in line and "true or false" in line
