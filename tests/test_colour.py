"""pipeline.colour: CIELAB against published values, an image's colours and their counts,
and palettes fitted on the engine that give back exactly the colours an image is made of."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import colour as C

# sRGB -> CIELAB (D65), as published by Bruce Lindbloom's and EasyRGB's calculators
REFERENCE = [((255, 255, 255), (100.0, 0.0, 0.0)), ((0, 0, 0), (0.0, 0.0, 0.0)),
             ((255, 0, 0), (53.2408, 80.0925, 67.2032)), ((0, 255, 0), (87.7347, -86.1827, 83.1793)),
             ((0, 0, 255), (32.2970, 79.1875, -107.8602)), ((128, 128, 128), (53.5850, 0.0, 0.0)),
             ((255, 255, 0), (97.1393, -21.5537, 94.4780))]


@pytest.mark.parametrize("rgb, lab", REFERENCE)
def test_lab_matches_the_published_values(rgb, lab):
    np.testing.assert_allclose(C.rgb_to_lab(np.array(rgb, dtype=np.uint8)), lab, atol=2e-3)


def test_lab_round_trips_every_colour_of_a_coarse_grid():
    levels = np.arange(0, 256, 15, dtype=np.uint8)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    np.testing.assert_array_equal(C.from_space(C.to_space(grid, "lab"), "lab"), grid)


def test_colours_of_counts_every_distinct_colour():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4, size=(50, 40, 3), dtype=np.uint8) * 60
    colours = C.colours_of(C.pixel_codes(image))
    expected, counts = np.unique(image.reshape(-1, 3), axis=0, return_counts=True)
    np.testing.assert_array_equal(colours.rgb, expected)  # codes ascending = rows in r, g, b order
    np.testing.assert_array_equal(colours.counts, counts)
    assert colours.pixels == 50 * 40


@pytest.mark.parametrize("space", C.SPACES)
@pytest.mark.parametrize("loss", ["square", "absolute", "huber"])
def test_an_image_of_k_flat_colours_gives_back_those_colours_and_shares(space, loss):
    palette = np.array([[200, 30, 40], [20, 120, 220], [250, 240, 230], [10, 10, 10]], dtype=np.uint8)
    sizes = np.array([500, 300, 150, 50])
    image = np.repeat(palette, sizes, axis=0).reshape(25, 40, 3)
    fit = C.fit_colours(C.colours_of(C.pixel_codes(image)), 4, loss, space)
    order = np.lexsort(fit.rgb.T[::-1])
    expected = np.lexsort(palette.T[::-1])
    np.testing.assert_array_equal(fit.rgb[order], palette[expected])
    np.testing.assert_allclose(fit.shares[order], (sizes / sizes.sum())[expected])


def test_a_photo_with_more_colours_than_the_fit_takes_is_pooled_and_every_pixel_labelled():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(300, 300, 3), dtype=np.uint8)  # ~90,000 distinct colours
    codes = C.pixel_codes(image)
    colours = C.colours_of(codes)
    assert len(colours.codes) > C.MAX_FIT_POINTS
    fit = C.fit_colours(colours, 8, "square", "rgb")
    labels = fit.pixel_labels(colours, codes)
    assert labels.shape == (300 * 300,) and set(np.unique(labels)) == set(range(8))
    # every pixel sits on its nearest center (the square loss's assignment), checked directly
    d2 = ((image.reshape(-1, 3)[:, None, :].astype(np.float64) - fit.centers[None].astype(np.float64)) ** 2).sum(-1)
    chosen = d2[np.arange(len(labels)), labels]
    assert (chosen <= d2.min(1) * (1 + 1e-5) + 1e-6).all()  # float32 GEMM rounding may split exact ties
    np.testing.assert_allclose(fit.objective, d2.min(1).sum(), rtol=1e-4)
