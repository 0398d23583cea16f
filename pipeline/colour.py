"""Colour on the engine: sRGB <-> CIELAB, an image's colours with their pixel counts, and
k-means of those colours (any loss) with every pixel labelled at the end.

The pure functions here serve the colour commands (palette, quantize, segment): an image
is an (h, w, 3) uint8 sRGB array, and the work is done on its distinct colours weighted by
how many pixels carry each, never on an (h * w) x k matrix.

CIELAB (CIE 1976 L*a*b*) with the D65 white point, from sRGB as IEC 61966-2-1 defines it:
    linear = c / 12.92 where c <= 0.04045, else ((c + 0.055) / 1.055) ** 2.4
    XYZ = M @ linear (M below, rows X, Y, Z), white (Xn, Yn, Zn) = M @ (1, 1, 1)
    L* = 116 f(Y / Yn) - 16,  a* = 500 (f(X / Xn) - f(Y / Yn)),  b* = 200 (f(Y / Yn) - f(Z / Zn))
    f(t) = t ** (1/3) where t > (6/29) ** 3, else t / (3 (6/29) ** 2) + 4/29
Distances in Lab follow perceived colour difference far better than in RGB (CIE76 delta E
is the Euclidean distance), so palettes cluster in Lab by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .threads import one_thread

SPACES = ("lab", "rgb")
# sRGB (linear) -> XYZ, D65 (IEC 61966-2-1 primaries)
SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
XYZ_TO_SRGB = np.linalg.inv(SRGB_TO_XYZ)
D65_WHITE = SRGB_TO_XYZ.sum(axis=1)  # (0.95047, 1.0, 1.08883): linear (1, 1, 1) is white
_DELTA = 6.0 / 29.0
# A palette is fitted on at most this many weighted points: beyond it, the distinct
# colours are pooled into bins of 4 levels per channel (their weighted means, so the
# square loss's centers stay exact means) and every distinct colour is labelled after.
MAX_FIT_POINTS = 65536
_BIN_SHIFT = 2


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


def _f(t: np.ndarray) -> np.ndarray:
    return np.where(t > _DELTA ** 3, np.cbrt(t), t / (3 * _DELTA ** 2) + 4.0 / 29.0)


def _f_inverse(t: np.ndarray) -> np.ndarray:
    return np.where(t > _DELTA, t ** 3, 3 * _DELTA ** 2 * (t - 4.0 / 29.0))


# srgb_to_linear of the 256 levels of an 8-bit channel: uint8 colours are looked up, not
# raised to the power 2.4 (the same numbers, several times faster for a photo's colours)
_LINEAR_OF_LEVEL = srgb_to_linear(np.arange(256, dtype=np.float64) / 255.0)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (..., 3), uint8 or floats in [0, 255], -> CIELAB (..., 3) float64 (D65)."""
    rgb = np.asarray(rgb)
    linear = _LINEAR_OF_LEVEL[rgb] if rgb.dtype == np.uint8 else srgb_to_linear(rgb.astype(np.float64) / 255.0)
    xyz = linear @ SRGB_TO_XYZ.T
    fx, fy, fz = (_f(xyz[..., i] / D65_WHITE[i]) for i in range(3))
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB (..., 3) -> sRGB floats in [0, 255] (out-of-gamut colours clipped)."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16.0) / 116.0
    fx, fz = fy + lab[..., 1] / 500.0, fy - lab[..., 2] / 200.0
    xyz = np.stack([_f_inverse(f) * D65_WHITE[i] for i, f in enumerate((fx, fy, fz))], axis=-1)
    return linear_to_srgb(xyz @ XYZ_TO_SRGB.T) * 255.0


def to_space(rgb: np.ndarray, space: str) -> np.ndarray:
    """sRGB colours (m, 3) as the float32 points clustered in `space` (lab, or rgb 0-255)."""
    check_space(space)
    return (rgb_to_lab(rgb) if space == "lab" else np.asarray(rgb, dtype=np.float64)).astype(np.float32)


def from_space(values: np.ndarray, space: str) -> np.ndarray:
    """Points of `space` back to sRGB uint8 (rounded, clipped to the gamut)."""
    check_space(space)
    rgb = lab_to_rgb(values) if space == "lab" else np.asarray(values, dtype=np.float64)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def check_space(space: str) -> str:
    if space not in SPACES:
        from .errors import UserError

        raise UserError(f"--space must be one of {', '.join(SPACES)}; got {space!r}")
    return space


def hex_code(rgb) -> str:
    r, g, b = (int(v) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


# ----------------------------------------------------------------------------- an image's colours

def pixel_codes(image: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 -> (h * w,) int32 codes r << 16 | g << 8 | b."""
    image = np.ascontiguousarray(image, dtype=np.uint8).reshape(-1, 3)
    codes = image[:, 0].astype(np.int32)  # built in place: one (h * w) int32 array, no temporaries
    codes <<= 8
    codes |= image[:, 1]
    codes <<= 8
    codes |= image[:, 2]
    return codes


def decode(codes: np.ndarray) -> np.ndarray:
    """int codes -> (m, 3) uint8 sRGB."""
    codes = np.asarray(codes, dtype=np.int64)
    return np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], axis=1).astype(np.uint8)


@dataclass(frozen=True)
class Colours:
    """The distinct colours of an image (codes ascending) and how many pixels carry each."""
    codes: np.ndarray  # (m,) int64
    counts: np.ndarray  # (m,) int64

    @property
    def rgb(self) -> np.ndarray:
        return decode(self.codes)

    @property
    def pixels(self) -> int:
        return int(self.counts.sum())


# Up to this many pixels, colours are counted by sorting (np.unique), above it in a 2^24
# table: the table costs ~55 ms however few the pixels (allocating and scanning 128 MB), the
# sort grows with them (NumPy 2.4 on the 2-core development machine, random codes: 4,000
# pixels 0.05 ms against 58 ms; 1 M 15 ms against 95 ms; 3 M 42 ms against 150 ms; a 12 MP
# photo's 57 ms against 78 ms, where a sort without SIMD would be several times slower).
_SORT_MAX_PIXELS = 1 << 22


def colours_of(codes: np.ndarray) -> Colours:
    """Distinct colours and counts of pixel codes (ascending codes), by a sort for up to
    `_SORT_MAX_PIXELS` pixels (thumbnails, small photos) and by one count over the 2^24
    colours above (a 128 MB table: bounded whatever the photo)."""
    codes = np.asarray(codes)
    if codes.size <= _SORT_MAX_PIXELS:
        present, counts = np.unique(codes, return_counts=True)
        return Colours(present.astype(np.int64), counts.astype(np.int64))
    table = np.bincount(codes, minlength=1 << 24)
    present = np.flatnonzero(table)
    return Colours(present.astype(np.int64), table[present].astype(np.int64))


# ----------------------------------------------------------------------------- fitting

@dataclass
class ColourFit:
    """k colours fitted to an image's colours: centers in the fitted space and as sRGB,
    each distinct colour's label, each center's share of the pixels."""
    space: str
    loss: str
    centers: np.ndarray  # (k, 3) float32 in `space`
    rgb: np.ndarray  # (k, 3) uint8
    labels: np.ndarray  # (m,) one per distinct colour (Colours order)
    shares: np.ndarray  # (k,) float64, summing to 1
    params: dict
    objective: float  # the loss summed over every pixel (each distinct colour times its count)

    def pixel_labels(self, colours: Colours, codes: np.ndarray) -> np.ndarray:
        """The label of every pixel (codes as `pixel_codes` gives them), through a 2^24 lookup."""
        lookup = np.zeros(1 << 24, dtype=np.int16)
        lookup[colours.codes] = self.labels
        return lookup[codes]


def _pooled(points: np.ndarray, colours: Colours) -> tuple[np.ndarray, np.ndarray]:
    """Weighted means (in the fitted space) and total counts of the distinct colours pooled
    by the top 6 bits of each channel: at most 262,144 points whatever the photo."""
    rgb = colours.rgb >> _BIN_SHIFT
    bits = 8 - _BIN_SHIFT
    bins = (rgb[:, 0].astype(np.int64) << (2 * bits)) | (rgb[:, 1].astype(np.int64) << bits) | rgb[:, 2]
    # one count over the 2^18 bins, not np.unique's sort of the (up to millions of) colours
    weight = np.bincount(bins, weights=colours.counts, minlength=1 << (3 * bits))
    used = np.flatnonzero(weight)
    means = np.stack([np.bincount(bins, weights=points[:, j] * colours.counts, minlength=len(weight))[used]
                      for j in range(points.shape[1])], axis=1) / weight[used, None]
    return means.astype(np.float32), weight[used]


def fit_colours(colours: Colours, k: int, loss: str = "square", space: str = "lab", *, seed: int = 0,
                param: float | str = "auto", max_points: int = MAX_FIT_POINTS, n_init: int | None = None) -> ColourFit:
    """k colours for an image's colours under `loss` (`GeneralizedKMeans`, weighted by pixel
    counts; `n_init` restarts, the engine's default when None). Fewer distinct colours than
    k: each is its own center (k shrinks to them)."""
    with one_thread():  # the Lab conversion too: see one_thread
        return _fit_colours(colours, k, loss, space, seed, param, max_points, n_init)


def _fit_colours(colours, k, loss, space, seed, param, max_points, n_init) -> ColourFit:
    from .kmeans import GeneralizedKMeans

    points = to_space(colours.rgb, space)
    weights = colours.counts.astype(np.float64)
    k = min(k, len(points))
    if len(points) > max_points:
        fit_points, fit_weights = _pooled(points, colours)
        if len(fit_points) < k:  # too few bins: fit the distinct colours themselves
            fit_points, fit_weights = points, weights
    else:
        fit_points, fit_weights = points, weights
    restarts = {} if n_init is None else {"n_init": n_init}
    model = GeneralizedKMeans(k, loss, param=param, seed=seed, **restarts).fit(fit_points, sample_weight=fit_weights)
    labels = model.predict(points)
    per_colour = model.loss_to_center(points)
    shares = np.bincount(labels, weights=weights, minlength=k) / weights.sum()
    return ColourFit(space, loss, model.cluster_centers_, from_space(model.cluster_centers_, space),
                     labels.astype(np.int16), shares, dict(model.params_), float((per_colour * weights).sum()))
