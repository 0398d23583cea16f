"""Finding and decoding images, on small files the tests make in tmp_path."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.images import IMAGE_EXTENSIONS, UnreadableImage, find_images, open_rgb, scan_images, thumbnail

from conftest import needs_permission_bits

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def near(actual: tuple[int, ...], expected: tuple[int, ...], tol: int = 12) -> bool:
    """Pixel equality with slack for JPEG's lossy coding."""
    return all(abs(a - e) <= tol for a, e in zip(actual, expected))


def saved(im: Image.Image, path: Path, **params: object) -> Path:
    im.save(path, **params)
    return path


def decoded(path: Path, **kwargs: object) -> Image.Image:
    im = open_rgb(path, **kwargs)
    assert im.mode == "RGB"
    return im


# ------------------------------------------------------------------------ modes


def test_rgb_png_is_returned_loaded_and_independent_of_the_file(tmp_path: Path) -> None:
    im = Image.new("RGB", (4, 3), RED)
    im.putpixel((1, 1), BLUE)
    path = saved(im, tmp_path / "a.png")
    out = decoded(path)
    path.unlink()  # pixels must not depend on the (closed) file any more
    assert out.size == (4, 3)
    assert out.getpixel((0, 0)) == RED and out.getpixel((1, 1)) == BLUE


def test_rgba_transparency_is_composited_on_white(tmp_path: Path) -> None:
    im = Image.new("RGBA", (3, 1), (0, 0, 0, 0))  # fully transparent black
    im.putpixel((1, 0), (255, 0, 0, 255))
    im.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black
    out = decoded(saved(im, tmp_path / "a.png"))
    assert out.getpixel((0, 0)) == WHITE
    assert out.getpixel((1, 0)) == RED
    assert near(out.getpixel((2, 0)), (127, 127, 127), tol=2)


def test_la_transparency_is_composited_on_white(tmp_path: Path) -> None:
    im = Image.new("LA", (2, 1), (0, 0))
    im.putpixel((1, 0), (100, 255))
    out = decoded(saved(im, tmp_path / "a.png"))
    assert out.getpixel((0, 0)) == WHITE
    assert out.getpixel((1, 0)) == (100, 100, 100)


def _palette_image() -> Image.Image:
    im = Image.new("P", (3, 1), 0)
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 - 3) * 3)
    im.putpixel((1, 0), 1)
    im.putpixel((2, 0), 2)
    return im


def test_palette_without_transparency(tmp_path: Path) -> None:
    out = decoded(saved(_palette_image(), tmp_path / "a.png"))
    assert [out.getpixel((x, 0)) for x in range(3)] == [BLACK, RED, BLUE]


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_transparency_index_becomes_white(tmp_path: Path, suffix: str) -> None:
    path = saved(_palette_image(), tmp_path / f"a{suffix}", transparency=0)  # black index
    with Image.open(path) as raw:
        assert raw.mode == "P" and "transparency" in raw.info
    out = decoded(path)
    assert [out.getpixel((x, 0)) for x in range(3)] == [WHITE, RED, BLUE]


def test_palette_per_entry_alpha_becomes_white(tmp_path: Path) -> None:
    path = saved(_palette_image(), tmp_path / "a.png", transparency=bytes([0, 255, 255]))
    out = decoded(path)
    assert [out.getpixel((x, 0)) for x in range(3)] == [WHITE, RED, BLUE]


def test_greyscale_colour_key_becomes_white(tmp_path: Path) -> None:
    im = Image.new("L", (2, 1), 0)
    im.putpixel((1, 0), 90)
    out = decoded(saved(im, tmp_path / "a.png", transparency=0))
    assert out.getpixel((0, 0)) == WHITE and out.getpixel((1, 0)) == (90, 90, 90)


def test_bilevel_and_greyscale(tmp_path: Path) -> None:
    bilevel = Image.new("1", (2, 1), 0)
    bilevel.putpixel((1, 0), 1)
    out = decoded(saved(bilevel, tmp_path / "b.png"))
    assert out.getpixel((0, 0)) == BLACK and out.getpixel((1, 0)) == WHITE

    grey = Image.new("L", (1, 1), 77)
    assert decoded(saved(grey, tmp_path / "g.bmp")).getpixel((0, 0)) == (77, 77, 77)


@pytest.mark.parametrize("suffix,tol", [(".tif", 0), (".jpg", 12)])
def test_cmyk(tmp_path: Path, suffix: str, tol: int) -> None:
    im = Image.new("CMYK", (16, 8), (0, 0, 0, 0))  # no ink: white
    im.paste((0, 255, 255, 0), (8, 0, 16, 8))  # magenta + yellow: red
    path = saved(im, tmp_path / f"a{suffix}")
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    out = decoded(path)
    assert near(out.getpixel((2, 4)), WHITE, tol) and near(out.getpixel((13, 4)), RED, tol)


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(1, 256)
    path = saved(Image.fromarray(ramp), tmp_path / "a.png")
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")  # I;16 (or I in older Pillow)
    row = np.asarray(decoded(path))[0, :, 0]
    assert row[0] == 0 and row[-1] == 255 and abs(int(row[128]) - 128) <= 1
    assert np.all(np.diff(row.astype(int)) >= 0)  # still a gradient
    assert np.count_nonzero(row == 255) < 5


@pytest.mark.parametrize(
    "values,expected",
    [
        ([0, 100, 255], [0, 100, 255]),  # 8-bit data in a 32-bit image: as is
        ([0, 32896, 65535], [0, 128, 255]),  # 16-bit data
        ([-1000, 0, 1000], [0, 128, 255]),  # anything else: stretched
    ],
)
def test_32_bit_integer_greyscale(tmp_path: Path, values: list[int], expected: list[int]) -> None:
    im = Image.fromarray(np.array([values], dtype=np.int32))
    assert im.mode == "I"
    row = np.asarray(decoded(saved(im, tmp_path / "a.tif")))[0, :, 0]
    assert np.abs(row.astype(int) - expected).max() <= 1


@pytest.mark.parametrize(
    "values,expected",
    [
        ([0.0, 0.5, 1.0], [0, 128, 255]),  # 0..1 floats
        ([0.0, 100.0, 255.0], [0, 100, 255]),  # 0..255 floats
        ([-2.0, 0.0, 2.0], [0, 128, 255]),  # anything else: stretched
    ],
)
def test_float_greyscale(tmp_path: Path, values: list[float], expected: list[int]) -> None:
    im = Image.fromarray(np.array([values], dtype=np.float32))
    assert im.mode == "F"
    row = np.asarray(decoded(saved(im, tmp_path / "a.tif")))[0, :, 0]
    assert np.abs(row.astype(int) - expected).max() <= 1


# ------------------------------------------------------------- orientation, frames


def _corner_marked(size: tuple[int, int]) -> Image.Image:
    """Blue image whose top-left quadrant is red, to tell rotations from mirrors."""
    w, h = size
    im = Image.new("RGB", size, BLUE)
    im.paste(RED, (0, 0, w // 2, h // 2))
    return im


def _with_orientation(im: Image.Image, path: Path, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return saved(im, path, exif=exif.tobytes(), quality=95)


def test_exif_orientation_6_rotates_clockwise(tmp_path: Path) -> None:
    path = _with_orientation(_corner_marked((60, 30)), tmp_path / "a.jpg", 6)
    out = decoded(path)
    assert out.size == (30, 60)
    # The stored top-left corner is shown top-right after a clockwise quarter turn.
    assert near(out.getpixel((25, 5)), RED)
    assert near(out.getpixel((5, 5)), BLUE) and near(out.getpixel((25, 50)), BLUE)


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, GREEN, BLUE)]
    path = tmp_path / "a.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as raw:
        assert raw.n_frames == 3
    assert near(decoded(path).getpixel((4, 4)), RED, tol=0)


# ------------------------------------------------------------------------ draft


def test_large_jpeg_is_decoded_at_reduced_size(tmp_path: Path) -> None:
    path = saved(Image.new("RGB", (4000, 3000), GREEN), tmp_path / "big.jpg")
    out = decoded(path, min_size=(256, 256))
    assert out.width < 4000
    assert out.width >= 256 and out.height >= 256
    assert out.size == (500, 375)  # libjpeg's 1/8 scale
    assert near(out.getpixel((10, 10)), GREEN)
    assert decoded(path).size == (4000, 3000)  # no request: full size


def test_draft_request_is_in_upright_coordinates(tmp_path: Path) -> None:
    # Stored 800x1600, shown 1600x800; asking (200, 400) of the upright image must not
    # reduce the stored frame 4x (that would show 400x200, too short).
    path = _with_orientation(Image.new("RGB", (800, 1600), GREEN), tmp_path / "a.jpg", 6)
    out = decoded(path, min_size=(200, 400))
    assert out.width >= 200 and out.height >= 400
    assert out.size == (800, 400)


def test_min_size_on_small_or_non_jpeg_files_keeps_full_size(tmp_path: Path) -> None:
    small_jpeg = saved(Image.new("RGB", (300, 200)), tmp_path / "a.jpg")
    assert decoded(small_jpeg, min_size=(256, 256)).size == (300, 200)
    big_png = saved(Image.new("RGB", (900, 900)), tmp_path / "a.png")
    assert decoded(big_png, min_size=(64, 64)).size == (900, 900)


def test_thumbnail_long_side(tmp_path: Path) -> None:
    path = saved(Image.new("RGB", (4000, 3000), GREEN), tmp_path / "big.jpg")
    thumb = thumbnail(path, 256)
    assert thumb.mode == "RGB" and thumb.size == (256, 192)
    tall = saved(Image.new("RGBA", (50, 100), (0, 0, 0, 0)), tmp_path / "tall.png")
    small = thumbnail(tall, 20)
    assert small.size == (10, 20) and small.getpixel((5, 5)) == WHITE
    with pytest.raises(ValueError, match="thumbnail size must be a positive number of pixels, got 0"):
        thumbnail(path, 0)


# -------------------------------------------------------------------- bad files


def _reason_for(path: Path) -> str:
    with pytest.raises(UnreadableImage) as info:
        open_rgb(path)
    reason = info.value.reason
    assert reason and "\n" not in reason and str(info.value) == reason
    return reason


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.touch()
    assert _reason_for(path) == "empty file"


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file(tmp_path: Path, suffix: str) -> None:
    noise = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    whole = saved(Image.fromarray(noise), tmp_path / f"whole{suffix}").read_bytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(whole[: len(whole) // 2])
    assert _reason_for(path) == "truncated image data"


def test_text_file_named_like_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("not a picture\n")
    assert _reason_for(path) == "not an image (cannot identify format)"


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert _reason_for(tmp_path / "gone.jpg") == "file not found"
    (tmp_path / "dir.jpg").mkdir()
    assert _reason_for(tmp_path / "dir.jpg")  # some short reason, not a raw OSError


@needs_permission_bits
def test_permission_denied(tmp_path: Path) -> None:
    path = saved(Image.new("RGB", (2, 2)), tmp_path / "locked.png")
    path.chmod(0)
    try:
        assert _reason_for(path) == "permission denied"
    finally:
        path.chmod(0o644)


def test_permission_error_from_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs as root too, where chmod cannot make a file unreadable.
    path = saved(Image.new("RGB", (2, 2)), tmp_path / "a.png")

    def refuse(*args: object, **kwargs: object) -> Image.Image:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", refuse)
    assert _reason_for(path) == "permission denied"


@pytest.mark.parametrize("side", [40, 100])  # 1600 px: Pillow warns; 10000 px: Pillow raises
def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, side: int) -> None:
    path = saved(Image.new("RGB", (side, side)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    filters_before = list(warnings.filters)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning must not escape either
        reason = _reason_for(path)
    assert reason == f"too large: {side * side} pixels exceeds the decompression-bomb limit of 1000"
    assert warnings.filters == filters_before


def test_image_at_the_pixel_limit_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = saved(Image.new("RGB", (25, 40)), tmp_path / "ok.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert decoded(path).size == (25, 40)


# ------------------------------------------------------------------ find_images


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")  # find_images looks at names only, never decodes
    return path


def _relative(root: Path, found: list[Path]) -> list[str]:
    return [p.relative_to(root).as_posix() for p in found]


def test_extensions() -> None:
    base = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
    assert base <= IMAGE_EXTENSIONS and IMAGE_EXTENSIONS <= base | {".heic", ".heif", ".avif"}
    assert all(e == e.lower() for e in IMAGE_EXTENSIONS)
    assert isinstance(IMAGE_EXTENSIONS, frozenset)


def test_find_images_recursive_sorted_and_filtered(tmp_path: Path) -> None:
    for rel in [
        "b.png", "a.JPG", "A.jpeg", "x/y/z.TIFF", "x/c.gif", "x.jpg",
        "birds/robin.webp", "birds/owl.Bmp", "birds/notes.txt", "readme.md", "noext",
        ".hidden.jpg", ".cache/in_hidden_dir.jpg", "x/.thumbs/t.png", "x/.y.png",
    ]:
        _touch(tmp_path / rel)
    (tmp_path / "folder.jpg").mkdir()  # a directory with an image-like name
    found = find_images(tmp_path)
    assert all(isinstance(p, Path) and p.is_relative_to(tmp_path) for p in found)
    rels = _relative(tmp_path, found)
    assert rels == sorted(rels)
    assert rels == [
        "A.jpeg", "a.JPG", "b.png", "birds/owl.Bmp", "birds/robin.webp",
        "x.jpg", "x/c.gif", "x/y/z.TIFF",
    ]


def test_find_images_accepts_str_and_hidden_root(tmp_path: Path) -> None:
    root = tmp_path / ".photos"
    _touch(root / "a.png")
    assert _relative(root, find_images(str(root))) == ["a.png"]  # type: ignore[arg-type]


def test_find_images_missing_or_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_images(tmp_path / "nowhere")
    file = _touch(tmp_path / "a.jpg")
    with pytest.raises(NotADirectoryError, match="a.jpg"):
        find_images(file)


def test_find_images_empty_folder(tmp_path: Path) -> None:
    assert find_images(tmp_path) == []


symlinks = pytest.mark.skipif(os.name != "posix", reason="needs POSIX symlinks")


@symlinks
def test_file_links_followed_and_broken_links_skipped(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = _touch(tmp_path / "elsewhere" / "real.jpg")
    _touch(root / "a.png")
    (root / "link.jpg").symlink_to(outside)
    (root / "broken.jpg").symlink_to(tmp_path / "missing.jpg")
    (root / "broken_dir").symlink_to(tmp_path / "missing_dir")
    assert _relative(root, find_images(root)) == ["a.png", "link.jpg"]


@symlinks
def test_directory_link_loop_terminates_without_duplicates(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _touch(root / "a.png")
    _touch(root / "sub" / "b.png")
    (root / "sub" / "up").symlink_to(root)  # loop back to the parent
    (root / "sub" / "self").symlink_to(".")  # loop onto itself
    assert _relative(root, find_images(root)) == ["a.png", "sub/b.png"]


@symlinks
def test_directory_links_followed_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _touch(tmp_path / "shared" / "s.jpg")
    _touch(root / "a.png")
    (root / "one").symlink_to(tmp_path / "shared")
    (root / "two").symlink_to(tmp_path / "shared")  # same real directory again
    assert _relative(root, find_images(root)) == ["a.png", "one/s.jpg"]


def test_find_images_lists_each_folder_once_and_stats_no_file(tmp_path: Path, monkeypatch) -> None:
    """Finding scales with folders, not files: one listing per folder, file types from the
    listing itself (no stat, no open per file). Timing lives in benchmarks, not here."""
    for d in range(10):
        sub = tmp_path / f"d{d:02d}"
        sub.mkdir()
        for f in range(200):
            (sub / f"{f:04d}.jpg").touch()
    calls = {"scandir": 0, "stat": 0, "open": 0}

    def counting(name, real):
        def call(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(os, "scandir", counting("scandir", os.scandir))
    monkeypatch.setattr(os, "stat", counting("stat", os.stat))
    monkeypatch.setattr(os, "open", counting("open", os.open))
    found = find_images(tmp_path)
    monkeypatch.undo()
    assert len(found) == 2000
    assert calls["scandir"] == 11  # the root and its ten folders, each listed once
    assert calls["stat"] <= 4 * 11  # a few per folder (is it ours? an export?), none per file
    assert calls["open"] == 0


def test_photos_in_formats_it_cannot_decode_are_listed_with_what_to_do(tmp_path: Path) -> None:
    for rel in ["a.jpg", "IMG_0001.CR2", "raw/IMG_0002.nef", "raw/IMG_0003.dng", "raw/IMG_0004.ARW",
                "notes.txt", ".hidden.cr2", "raw/.IMG_0005.nef"]:
        _touch(tmp_path / rel)
    (tmp_path / "folder.nef").mkdir()  # a folder named like a RAW file is walked, not listed
    _touch(tmp_path / "folder.nef" / "inside.jpg")
    scan = scan_images(tmp_path)
    assert scan.images == ["a.jpg", "folder.nef/inside.jpg"]
    assert scan.not_read == ["IMG_0001.CR2", "raw/IMG_0002.nef", "raw/IMG_0003.dng", "raw/IMG_0004.ARW"]
    assert scan.unreadable == []
    [note] = scan.not_read_notes()
    assert note.startswith("not read: 4 camera RAW files (IMG_0001.CR2, raw/IMG_0002.nef, raw/IMG_0003.dng and 1 more)")
    assert "export the RAW files to JPEG" in note


def test_heic_without_pillow_heif_is_listed_with_the_install_line(tmp_path: Path, monkeypatch) -> None:
    from pipeline import images

    readable = images.IMAGE_EXTENSIONS - {".heic", ".heif"}
    monkeypatch.setattr(images, "IMAGE_EXTENSIONS", readable)
    monkeypatch.setattr(images, "_NOT_READ_KINDS", images.not_read_kinds(readable))
    for rel in ["IMG_1.HEIC", "IMG_2.heic", "IMG_3.JPG", "IMG_3.CR3"]:
        _touch(tmp_path / rel)
    scan = scan_images(tmp_path)
    assert scan.images == ["IMG_3.JPG"] and scan.not_read == ["IMG_1.HEIC", "IMG_2.heic", "IMG_3.CR3"]
    heic, raw = scan.not_read_notes()  # in the order of their first file
    assert heic.startswith("not read: 2 HEIC photos (IMG_1.HEIC, IMG_2.heic): install pillow-heif")
    assert raw.startswith("not read: 1 camera RAW file (IMG_3.CR3): ")


def test_a_raw_file_beside_its_jpeg_is_named_as_its_twin(tmp_path: Path) -> None:
    for rel in ["DSC_0001.JPG", "DSC_0001.NEF", "DSC_0002.jpg", "DSC_0002.nef", "DSC_0003.NEF",
                "day2/DSC_0004.NEF", "DSC_0004.JPG"]:  # the last RAW's JPEG is in another folder
        _touch(tmp_path / rel)
    scan = scan_images(tmp_path)
    twins, alone = scan.not_read_notes()
    assert twins == ("not read: 2 camera RAW files (DSC_0001.NEF, DSC_0002.nef): each has a photo of the "
                     "same name beside it (the camera's or phone's JPEG), which is read")
    assert alone.startswith("not read: 2 camera RAW files (DSC_0003.NEF, day2/DSC_0004.NEF): "
                            "photoclust does not decode RAW")
