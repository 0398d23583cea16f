"""photoclust segment: pixels clustered on colour and position, the label map, the side by
side, a large photo fitted on a sample and labelled in blocks, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline import segment as S
from pipeline.cli import main

from test_quantize import gradient_photo, one_line_error, save

RED, BLUE = (200, 30, 40), (30, 60, 200)


def stripes(h: int = 30, w: int = 90) -> np.ndarray:
    """red | blue | red: two regions of the same colour, far apart."""
    image = np.empty((h, w, 3), dtype=np.uint8)
    image[:] = RED
    image[:, w // 3: 2 * w // 3] = BLUE
    return image


def test_a_high_xy_weight_separates_two_regions_of_one_colour_and_zero_does_not():
    image = stripes()
    left, middle, right = image.shape[1] // 6, image.shape[1] // 2, 5 * image.shape[1] // 6
    far = S.segment_image(image, k=2, xy_weight=10.0).labels
    assert far[0, left] != far[0, right]
    assert len(np.unique(far[:, :left])) == 1 and len(np.unique(far[:, -left:])) == 1
    colour_only = S.segment_image(image, k=2, xy_weight=0.0).labels
    assert colour_only[0, left] == colour_only[0, right] != colour_only[0, middle]
    np.testing.assert_array_equal(colour_only == colour_only[0, left], (image == RED).all(-1))


def test_colour_only_with_more_segments_than_colours_makes_one_per_colour():
    seg = S.segment_image(stripes(), k=5, xy_weight=0.0)
    assert seg.k == 2 and sorted(seg.sizes) == [900, 1800]
    assert {tuple(c) for c in seg.mean_rgb} == {RED, BLUE}


def test_fitted_on_a_sample_and_labelled_in_blocks_like_one_block(monkeypatch):
    image = gradient_photo(60, 70)
    whole = S.segment_image(image, k=6, xy_weight=0.7, sample=1000, seed=5)
    assert whole.sampled == 1000 and whole.labels.shape == image.shape[:2]
    monkeypatch.setattr(S, "BLOCK_PIXELS", 333)  # 13 blocks
    blocks = S.segment_image(image, k=6, xy_weight=0.7, sample=1000, seed=5)
    np.testing.assert_array_equal(blocks.labels, whole.labels)
    # the segments' mean colours are those of their pixels; 0 is the largest
    for j in range(whole.k):
        members = image[whole.labels == j].astype(np.float64)
        np.testing.assert_array_equal(whole.mean_rgb[j], np.rint(members.mean(0)).astype(np.uint8))
    assert list(whole.sizes) == sorted(whole.sizes, reverse=True) and whole.sizes.sum() == 60 * 70


def test_the_command_writes_a_full_size_label_map_and_a_side_by_side(tmp_path, capsys):
    image = gradient_photo(45, 61)
    photo = save(tmp_path, image, "shot.png")
    out = tmp_path / "segs"
    assert main(["segment", str(photo), "--k", "4", "--xy-weight", "2", "-o", str(out)]) == 0
    assert "4 segments" in capsys.readouterr().out
    with Image.open(out / "shot_labels.png") as im:
        assert im.mode == "P" and im.size == (61, 45)
        labels = np.asarray(im)
    expected = S.segment_image(image, k=4, xy_weight=2.0)
    np.testing.assert_array_equal(labels, expected.labels)
    with Image.open(out / "shot_segments.png") as im:
        assert im.size == (2 * 61 + 8, 45)
        side = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(side[:, :61], image)
    filled = side[:, 61 + 8:]
    inside = ~S.boundaries(expected.labels)
    np.testing.assert_array_equal(filled[inside], expected.mean_rgb[expected.labels][inside])
    assert (filled[~inside] == S.BOUNDARY).all() and (~inside).any()
    assert sorted(p.name for p in out.iterdir()) == ["shot_labels.png", "shot_segments.png"]


def test_errors_are_one_line_and_the_photo_is_never_written(tmp_path, capsys):
    photo = save(tmp_path, gradient_photo(), "pic.png")
    before = photo.read_bytes()
    out = tmp_path / "out"
    for k in ("0", "257", "x", "2,4"):
        assert "--k" in one_line_error(capsys, ["segment", photo, "--k", k, "-o", out])
    for weight in ("-1", "nan", "inf", "heavy", "1e9"):
        assert "--xy-weight" in one_line_error(capsys, ["segment", photo, "--xy-weight", weight, "-o", out])
    assert "unknown loss" in one_line_error(capsys, ["segment", photo, "--loss", "cubic", "-o", out])
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really")
    assert "cannot read" in one_line_error(capsys, ["segment", tmp_path / "bad.jpg", "-o", out])
    # an output that is the photo under another name (a link in the folder given): refused
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "pic_segments.png").symlink_to(photo)
    assert "input photo" in one_line_error(capsys, ["segment", photo, "-o", linked])
    assert "is a file" in one_line_error(capsys, ["segment", photo, "-o", photo])
    assert photo.read_bytes() == before and not out.exists()
    assert [p.name for p in linked.iterdir()] == ["pic_segments.png"]
