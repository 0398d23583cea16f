"""photoclust quantize: an image drawn with k colours as an indexed PNG, lossless when it has
at most k colours, its PSNR, Floyd-Steinberg dithering onto the fitted palette, the
comparison strip, and one-line errors that never touch the photo."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from PIL import Image

from pipeline import colour as C
from pipeline import quantize as Q
from pipeline.cli import main


def gradient_photo(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth photo-like image with a few thousand distinct colours."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    image = np.stack([255 * x / (w - 1), 255 * y / (h - 1), 128 + 100 * np.sin(x / 7 + y / 5)], axis=-1)
    return np.clip(np.rint(image + rng.normal(0, 3, image.shape)), 0, 255).astype(np.uint8)


def blend_photo(h: int = 48, w: int = 96, seed: int = 0) -> np.ndarray:
    """A smooth blend from blue to yellow, left to right, with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, w)[None, :, None]
    a, b = np.array([30, 60, 200]), np.array([220, 180, 40])
    return np.clip(np.rint(a + t * (b - a) + rng.normal(0, 2, (h, w, 3))), 0, 255).astype(np.uint8)


def few_colours(h: int = 30, w: int = 40, m: int = 5, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(m, 3), dtype=np.uint8)
    return palette[rng.integers(0, m, size=(h, w))]


def save(tmp_path, image: np.ndarray, name: str = "photo.png"):
    path = tmp_path / name
    Image.fromarray(image).save(path)
    return path


def one_line_error(capsys, argv) -> str:
    assert main([str(a) for a in argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("photoclust: error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


# ----------------------------------------------------------------------------- lossless

@pytest.mark.parametrize("dither", Q.DITHERS)
@pytest.mark.parametrize("k", [5, 8])
def test_an_image_with_at_most_k_colours_comes_back_losslessly(tmp_path, dither, k):
    image = few_colours(m=5)
    photo = save(tmp_path, image)
    out = tmp_path / "out.png"
    assert main(["quantize", str(photo), "--k", str(k), "--dither", dither, "-o", str(out)]) == 0
    with Image.open(out) as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), image)
    q = Q.quantize_image(image, k, dither=dither)
    assert math.isinf(q.psnr) and not q.fitted and len(q.palette) == 5


def test_one_colour_more_than_k_is_not_lossless():
    image = few_colours(m=6)
    q = Q.quantize_image(image, 5)
    assert q.fitted and len(q.palette) == 5 and math.isfinite(q.psnr) and q.psnr > 0


# ----------------------------------------------------------------------------- PSNR

def test_psnr_matches_a_hand_computation():
    image = np.array([[[10, 20, 30], [200, 100, 50]]], dtype=np.uint8)
    palette = np.array([[13, 24, 30], [200, 100, 50]], dtype=np.uint8)
    indices = np.array([[0, 1]])
    # one pixel off by (3, 4, 0): squared error 25 over 2 pixels x 3 channels
    assert Q.psnr(image, palette, indices) == pytest.approx(10 * math.log10(255 ** 2 / (25 / 6)), rel=1e-12)
    assert Q.psnr(image, image.reshape(-1, 3), np.array([[0, 1]])) == math.inf


def test_the_reported_psnr_is_that_of_the_written_png(tmp_path):
    image = gradient_photo()
    photo = save(tmp_path, image)
    report = Q.quantize_file(photo, [6], tmp_path / "q.png", seed=3)
    with Image.open(tmp_path / "q.png") as im:
        decoded = np.asarray(im.convert("RGB")).astype(np.float64)
    mse = ((decoded - image) ** 2).mean()
    assert report.results[0].psnr == pytest.approx(10 * math.log10(255 ** 2 / mse), rel=1e-9)
    assert report.input_bytes == photo.stat().st_size and report.output_bytes == (tmp_path / "q.png").stat().st_size


# ----------------------------------------------------------------------------- the PNG

@pytest.mark.parametrize("space", C.SPACES)
@pytest.mark.parametrize("loss", ["square", "huber"])
def test_the_png_is_palette_mode_with_at_most_k_colours_and_decodes_to_the_quantized_pixels(tmp_path, space, loss):
    image = gradient_photo()
    k = 7
    q = Q.quantize_image(image, k, loss, space, seed=1)
    path = tmp_path / "q.png"
    path.write_bytes(Q.indexed_png(q))
    with Image.open(path) as im:
        assert im.mode == "P" and im.size == (image.shape[1], image.shape[0])
        assert len(im.getpalette()) // 3 <= k
        assert len(im.getcolors()) <= k
        np.testing.assert_array_equal(np.asarray(im), q.indices)
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), q.pixels)
    # without dithering each pixel shows its cluster's colour: the fit's palette, pixel by pixel
    colours = C.colours_of(C.pixel_codes(image))
    fit = C.fit_colours(colours, k, loss, space, seed=1)
    expected = fit.rgb[fit.pixel_labels(colours, C.pixel_codes(image))].reshape(image.shape)
    np.testing.assert_array_equal(q.pixels, expected)


def test_same_input_same_bytes(tmp_path):
    image = gradient_photo()
    assert Q.indexed_png(Q.quantize_image(image, 9, seed=4)) == Q.indexed_png(Q.quantize_image(image, 9, seed=4))


# ----------------------------------------------------------------------------- dithering

RIGHT, DOWN_LEFT, DOWN, DOWN_RIGHT = (np.float32(v / 16) for v in (7, 3, 5, 1))  # Floyd and Steinberg's


def reference_floyd_steinberg(values: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """The textbook loop, pixel by pixel, with the same clamp and float32 arithmetic."""
    work = values.astype(np.float32).copy()
    palette = palette.astype(np.float32)
    h, w, _ = work.shape
    low, high = palette.min(0), palette.max(0)
    out = np.zeros((h, w), dtype=np.int64)
    for y in range(h):
        for x in range(w):
            wanted = np.clip(work[y, x], low, high)
            index = int(Q.nearest(wanted[None], palette)[0])
            out[y, x] = index
            error = wanted - palette[index]
            if x + 1 < w:
                work[y, x + 1] += error * RIGHT
            if y + 1 < h:
                if x > 0:
                    work[y + 1, x - 1] += error * DOWN_LEFT
                work[y + 1, x] += error * DOWN
                if x + 1 < w:
                    work[y + 1, x + 1] += error * DOWN_RIGHT
    return out


@pytest.mark.parametrize("shape", [(13, 17), (1, 9), (9, 1), (2, 2), (20, 7)])
def test_the_vectorised_dithering_equals_the_pixel_by_pixel_loop(shape):
    rng = np.random.default_rng(sum(shape))
    values = rng.uniform(0, 255, size=(*shape, 3)).astype(np.float32)
    palette = rng.uniform(0, 255, size=(5, 3)).astype(np.float32)
    np.testing.assert_array_equal(Q.floyd_steinberg(values, palette), reference_floyd_steinberg(values, palette))


def box_blur(image: np.ndarray, r: int = 3) -> np.ndarray:
    padded = np.pad(image.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="edge")
    h, w, _ = image.shape
    return sum(padded[dy:dy + h, dx:dx + w] for dy in range(2 * r + 1) for dx in range(2 * r + 1)) / (2 * r + 1) ** 2


@pytest.mark.parametrize("space", C.SPACES)
def test_dithering_changes_pixels_keeps_only_palette_colours_and_keeps_local_averages(space):
    image = blend_photo()
    k = 3
    plain = Q.quantize_image(image, k, space=space, seed=2)
    dithered = Q.quantize_image(image, k, space=space, dither="floyd-steinberg", seed=2)
    assert (dithered.pixels != plain.pixels).any(axis=-1).mean() > 0.05
    fitted = C.fit_colours(C.colours_of(C.pixel_codes(image)), k, "square", space, seed=2).rgb
    used = {tuple(c) for c in dithered.pixels.reshape(-1, 3)}
    assert used <= {tuple(c) for c in fitted}
    # what dithering is for: seen from afar (blurred), the dithered blend is closer to the photo
    far = lambda q: np.abs(box_blur(q.pixels) - box_blur(image)).mean()
    assert far(dithered) < 0.7 * far(plain)


# ----------------------------------------------------------------------------- the strip and the command

def test_a_list_of_k_draws_one_strip_and_reports_each_k(tmp_path, capsys):
    image = gradient_photo()
    photo = save(tmp_path, image)
    out = tmp_path / "strip.png"
    assert main(["quantize", str(photo), "--k", "2,4,8", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    for k in (2, 4, 8):
        assert f"k = {k}: {k} colours, PSNR " in printed
    psnrs = [float(line.split("PSNR ")[1].split(" dB")[0]) for line in printed.splitlines() if "PSNR" in line]
    assert psnrs == sorted(psnrs) and psnrs[0] < psnrs[-1]  # more colours, closer to the photo
    with Image.open(out) as im:
        assert im.mode == "RGB"
        assert im.width > 4 * image.shape[1] and im.height > image.shape[0]  # the original and three k


def test_default_output_is_under_outputs_quantize(tmp_path, monkeypatch, capsys):
    photo = save(tmp_path, gradient_photo(), "my photo.png")
    monkeypatch.chdir(tmp_path)
    assert main(["quantize", str(photo), "--k", "3", "--dither", "floyd-steinberg"]) == 0
    out = tmp_path / "outputs" / "quantize" / "my photo_k3_fs.png"
    assert out.is_file() and (out.parent / ".photoclust-output").is_file()
    assert str(out.relative_to(tmp_path)) in capsys.readouterr().out


def test_errors_are_one_line_and_the_photo_is_never_written(tmp_path, capsys):
    photo = save(tmp_path, gradient_photo())
    before = photo.read_bytes()
    out = tmp_path / "out.png"
    for k in ("0", "257", "abc", "2,,4", "4,4", "-3", "1.5"):
        assert "--k" in one_line_error(capsys, ["quantize", photo, "--k", k, "-o", out])
    assert "--dither" in one_line_error(capsys, ["quantize", photo, "--dither", "atkinson", "-o", out])
    assert "--space" in one_line_error(capsys, ["quantize", photo, "--space", "hsv", "-o", out])
    assert "unknown loss" in one_line_error(capsys, ["quantize", photo, "--loss", "cubic", "-o", out])
    (tmp_path / "notes.png").write_text("not an image")
    assert "cannot read" in one_line_error(capsys, ["quantize", tmp_path / "notes.png", "-o", out])
    assert "cannot read" in one_line_error(capsys, ["quantize", tmp_path / "missing.jpg", "-o", out])
    os.symlink(photo, tmp_path / "link.png")
    for same in (photo, tmp_path / "." / photo.name, tmp_path / "link.png"):
        assert "input photo" in one_line_error(capsys, ["quantize", photo, "-o", same])
    assert ".png" in one_line_error(capsys, ["quantize", photo, "-o", tmp_path / "out.jpg"])
    assert photo.read_bytes() == before
    assert not out.exists() and not (tmp_path / "out.jpg").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.png", "notes.png", "photo.png"]
