"""What a walk of the photo folder leaves out, and says so: photoclust's own output and
export folders, broken links and unlistable folders; and names in any script on the sheets."""

from __future__ import annotations

import csv
import errno
import os
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from pipeline import render
from pipeline.cli import main
from pipeline.config import ExtractConfig
from pipeline.errors import UserError
from pipeline.export import MARKER as EXPORT_FILE_WRITTEN
from pipeline.extract import extract_folder
from pipeline.images import (EXCLUDED_FOLDER, EXPORT_FOLDER, EXPORT_MARKER, OUTPUT_FOLDER, OUTPUT_MARKER,
                             find_images, scan_images)

from conftest import make_photos, needs_permission_bits

CFG = ExtractConfig(weights="random", batch_size=4, workers=0, device="cpu")
posix = pytest.mark.skipif(os.name != "posix", reason="needs POSIX links and permissions")
not_root = needs_permission_bits


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")  # finding looks at names only, never decodes
    return path


def _photo(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path)
    return path


def _manifest(out: Path) -> dict[str, tuple[str, str]]:
    with open(out / "manifest.csv", newline="") as fh:
        return {r["path"]: (r["status"], r["reason"]) for r in csv.DictReader(fh)}


@pytest.fixture
def refuse_listing(monkeypatch: pytest.MonkeyPatch):
    """Make os.scandir refuse the given folders, as an unreadable folder does for a non-root user."""
    refused: set[str] = set()
    real = os.scandir

    def scandir(path=".", *args, **kwargs):
        if not isinstance(path, int) and os.path.realpath(path) in refused:  # int: a directory fd
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)
    return lambda folder: refused.add(os.path.realpath(folder))


# ------------------------------------------------------------- output and export folders


def test_marker_names() -> None:
    assert (OUTPUT_MARKER, EXPORT_MARKER) == (".photoclust-output", ".photoclust-export")
    assert EXPORT_FILE_WRITTEN == EXPORT_MARKER  # what export writes is what finding reads


def test_output_and_export_folders_are_not_entered_and_are_reported(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _touch(root / "a.png")
    _touch(root / "trip" / "b.jpg")
    _touch(root / "outputs" / "sample" / OUTPUT_MARKER)
    _touch(root / "outputs" / "sample" / "sheets" / "losses.png")
    _touch(root / "outputs" / "older" / "cache_key.json")  # an output made before the marker existed
    _touch(root / "outputs" / "older" / "thumbs" / "abc_160.jpg")
    _touch(root / "trip" / "by_cluster" / EXPORT_MARKER)
    _touch(root / "trip" / "by_cluster" / "cluster_0" / "b.jpg")
    scan = scan_images(root)
    assert scan.images == ["a.png", "trip/b.jpg"]
    assert scan.skipped == [("outputs/older", OUTPUT_FOLDER), ("outputs/sample", OUTPUT_FOLDER),
                            ("trip/by_cluster", EXPORT_FOLDER)]
    assert scan.unreadable == []
    assert [p.relative_to(root).as_posix() for p in find_images(root)] == scan.images


def test_the_folder_the_user_names_is_walked_even_with_a_marker(tmp_path: Path) -> None:
    _touch(tmp_path / OUTPUT_MARKER)
    _touch(tmp_path / "a.png")
    assert scan_images(tmp_path).images == ["a.png"]


def test_excluded_folder_is_skipped_without_a_marker_however_it_is_reached(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _touch(root / "a.png")
    _touch(root / "out" / "x.png")
    scan = scan_images(root, exclude=[root / "out"])
    assert (scan.images, scan.skipped) == (["a.png"], [("out", EXCLUDED_FOLDER)])
    # the same folder named another way (relative, through a link) is still the same folder
    (tmp_path / "via").symlink_to(root)
    assert scan_images(root, exclude=[tmp_path / "via" / "out"]).skipped == [("out", EXCLUDED_FOLDER)]
    # a folder that does not exist yet excludes nothing
    assert scan_images(root, exclude=[root / "later"]).images == ["a.png", "out/x.png"]


# ---------------------------------------------------------------- what cannot be read


@posix
def test_broken_links_with_image_names_are_reported(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _touch(root / "a.png")
    (root / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    (root / "loop.jpg").symlink_to("loop.jpg")  # a link to itself
    (root / "broken_dir").symlink_to(tmp_path / "missing_dir")  # not an image name: not a photo
    scan = scan_images(root)
    assert scan.images == ["a.png"]
    assert [rel for rel, _ in scan.unreadable] == ["gone.jpg", "loop.jpg"]
    reasons = dict(scan.unreadable)
    assert reasons["gone.jpg"] == f"broken link -> {tmp_path / 'missing.jpg'}"
    assert reasons["loop.jpg"].startswith("broken link -> loop.jpg (")  # "Too many levels of symbolic links"


@posix
def test_directory_link_loops_still_end(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _touch(root / "sub" / "b.png")
    (root / "sub" / "up").symlink_to(root)
    (root / "sub" / "self").symlink_to(".")
    scan = scan_images(root)
    assert (scan.images, scan.unreadable, scan.skipped) == (["sub/b.png"], [], [])


@posix
def test_pipe_named_like_a_photo_is_reported_not_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "camera.jpg")
    assert scan_images(tmp_path).unreadable == [("camera.jpg", "not a regular file")]


def test_unlistable_subfolder_gets_a_row_for_the_folder(tmp_path: Path, refuse_listing) -> None:
    _touch(tmp_path / "a.png")
    _touch(tmp_path / "private" / "b.png")
    refuse_listing(tmp_path / "private")
    scan = scan_images(tmp_path)
    assert scan.images == ["a.png"]
    assert scan.unreadable == [("private/", "cannot list folder: Permission denied")]


def test_unlistable_root_is_an_error(tmp_path: Path, refuse_listing) -> None:
    refuse_listing(tmp_path)
    with pytest.raises(PermissionError):
        scan_images(tmp_path)


@not_root
def test_folder_without_read_permission(tmp_path: Path) -> None:
    _touch(tmp_path / "a.png")
    _touch(tmp_path / "private" / "b.png")
    (tmp_path / "private").chmod(0)
    try:
        scan = scan_images(tmp_path)
    finally:
        (tmp_path / "private").chmod(0o755)
    assert scan.images == ["a.png"]
    assert scan.unreadable == [("private/", "cannot list folder: Permission denied")]


@not_root
def test_folder_listable_but_not_enterable(tmp_path: Path) -> None:
    _touch(tmp_path / "half" / "b.png")
    (tmp_path / "half" / "inner").mkdir()
    (tmp_path / "half").chmod(0o444)  # names can be read, the entries cannot be looked at
    try:
        scan = scan_images(tmp_path)
    finally:
        (tmp_path / "half").chmod(0o755)
    # the file's type comes with its name, so it is found (decoding then records it as unreadable)
    assert scan.images == ["half/b.png"]
    assert scan.unreadable == [("half/inner/", "cannot list folder: Permission denied")]


# ------------------------------------------------------------------------ extract


def test_extract_skips_outputs_exports_and_its_own_out_dir_and_records_unreadable(
        tmp_path: Path, refuse_listing) -> None:
    photos = tmp_path / "photos"
    make_photos(photos, 3)
    _photo(photos / "outputs" / "older" / "thumbs" / "abc_160.jpg")
    _touch(photos / "outputs" / "older" / "cache_key.json")
    _photo(photos / "export" / "cluster_0" / "img_01.jpg")
    _touch(photos / "export" / EXPORT_MARKER)
    out = photos / "outputs" / "this"  # no marker: skipped because it is out_dir
    _photo(out / "sheets" / "losses.png")
    (photos / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    _photo(photos / "private" / "secret.jpg")
    refuse_listing(photos / "private")

    lines: list[str] = []
    report = extract_folder(photos, out, CFG, log=lines.append, progress=False)
    assert lines[:3] == ["skipping export: a photoclust export folder",
                         "skipping outputs/older: a photoclust output folder",
                         "skipping outputs/this: the output folder of this run"]
    rows = _manifest(out)
    assert list(rows) == sorted(rows)
    assert rows == {"a/img_01.jpg": ("ok", ""), "b/img_00.png": ("ok", ""), "b/img_02.jpg": ("ok", ""),
                    "gone.jpg": ("unreadable", f"broken link -> {tmp_path / 'deleted.jpg'}"),
                    "private/": ("unreadable", "cannot list folder: Permission denied")}
    assert (report.embedded, report.unreadable, report.decoded) == (3, 2, 3)

    # the link is mended: its target is decoded, the rest reused, out_dir (now with a cache) still skipped
    _photo(tmp_path / "deleted.jpg", (10, 200, 10))
    lines.clear()
    again = extract_folder(photos, out, CFG, log=lines.append, progress=False)
    assert "skipping outputs/this: the output folder of this run" in lines
    assert (again.decoded, again.reused, again.dropped, again.unreadable) == (1, 3, 0, 1)
    assert _manifest(out)["gone.jpg"] == ("ok", "")


def test_a_new_broken_link_alone_is_written_to_the_manifest(tmp_path: Path) -> None:
    photos, out = tmp_path / "photos", tmp_path / "out"
    make_photos(photos, 2)
    extract_folder(photos, out, CFG, log=lambda m: None, progress=False)
    (photos / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    report = extract_folder(photos, out, CFG, log=lambda m: None, progress=False)
    assert (report.decoded, report.unreadable) == (0, 1)
    assert _manifest(out)["gone.jpg"][0] == "unreadable"


def test_only_unreadable_paths_says_what_could_not_be_read(tmp_path: Path) -> None:
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    with pytest.raises(UserError, match=r"1 path\(s\) could not be read \(gone.jpg: broken link -> "):
        extract_folder(tmp_path, tmp_path / "out", CFG, log=lambda m: None, progress=False)


def test_run_twice_in_the_photo_folder_does_not_embed_its_own_outputs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    photos = tmp_path / "photos"
    make_photos(photos, 3)
    monkeypatch.chdir(photos)
    fast = ["--weights", "random", "--device", "cpu", "--workers", "0"]
    assert main(["extract", ".", *fast]) == 0
    out = photos / "outputs" / "photos"  # the default: outputs/<folder name> under the cwd
    _photo(out / "sheets" / "losses.png")  # what render would have drawn there
    _photo(out / "thumbs" / "abc_160.jpg")
    assert main(["extract", ".", *fast]) == 0
    assert "skipping outputs/photos: the output folder of this run" in capsys.readouterr().err
    assert sorted(_manifest(out)) == ["a/img_01.jpg", "b/img_00.png", "b/img_02.jpg"]


@not_root
def test_file_without_read_permission_gets_a_row(tmp_path: Path) -> None:
    photos, out = tmp_path / "photos", tmp_path / "out"
    make_photos(photos, 2)
    locked = _photo(photos / "locked.jpg")
    locked.chmod(0)
    try:
        extract_folder(photos, out, CFG, log=lambda m: None, progress=False)
    finally:
        locked.chmod(0o644)
    assert _manifest(out)["locked.jpg"] == ("unreadable", "cannot read: Permission denied")


# ------------------------------------------------------------------------ fonts


def _glyph(face: ImageFont.ImageFont, text: str) -> bytes:
    im = Image.new("L", (40, 40), 0)
    ImageDraw.Draw(im).text((4, 4), text, fill=255, font=face)
    return im.tobytes()


@pytest.mark.parametrize("a,b", [("Ж", "Я"), ("λ", "Ω"), ("é", "ß")])
def test_sheet_font_draws_cyrillic_and_greek_letters_not_boxes(a: str, b: str) -> None:
    face = render.font(12)
    assert isinstance(face, ImageFont.FreeTypeFont)
    assert _glyph(face, a) != _glyph(face, b)  # a missing glyph draws the same box for both
    assert any(_glyph(face, a)) and any(_glyph(face, b))


def test_bold_font_is_a_different_face() -> None:
    assert _glyph(render.font(18, bold=True), "Ж") != _glyph(render.font(18), "Ж")


def test_font_falls_back_to_pillows_default(monkeypatch: pytest.MonkeyPatch) -> None:
    render.font.cache_clear()
    monkeypatch.setattr(render, "font_file", lambda bold=False: None)
    try:
        face = render.font(12)
        assert face.getlength("abc") > 0
    finally:
        render.font.cache_clear()


def test_tile_fits_captions_in_any_script() -> None:
    face = render.font(12)
    lines = ["Фотография_лето_Ωμέγα.jpg", "кластер · 3 photos, gjpqy"]
    cell = render.tile(None, lines, face)
    line_height = face.size + 3
    assert cell.size == (render.THUMB_PX + 2 * render.PAD,
                         render.THUMB_PX + 2 * render.PAD + 2 * line_height)
    top = render.THUMB_PX + 2 * render.PAD + line_height - 2  # where tile draws the last line
    box = ImageDraw.Draw(cell).textbbox((render.PAD, top), render.shorten(lines[1], face, render.THUMB_PX),
                                        font=face)
    assert box[3] <= cell.height  # descenders stay inside the cell
