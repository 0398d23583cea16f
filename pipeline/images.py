"""Finding photos in a folder and decoding any of them safely to RGB.

Everything here is pure Pillow/numpy: the extraction stage calls `scan_images` once and
`open_rgb` per file (in DataLoader workers), and the contact sheets call `thumbnail`.
A file that cannot be decoded raises `UnreadableImage` with a short reason for the
manifest; no raw Pillow/OS error escapes for a bad file.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import PIL
from PIL import Image, ImageOps, UnidentifiedImageError

from .layout import EXPORT_MARKER, LEGACY_OUTPUT_MARKER, OUTPUT_MARKER

_BASE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff",
                               ".gif"})
_HEIF_EXTENSIONS = frozenset({".heic", ".heif"})
_AVIF_EXTENSIONS = frozenset({".avif"})


def _register_heif() -> frozenset[str]:
    """Register the HEIC/HEIF opener if the optional `pillow_heif` is installed."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return frozenset()
    register_heif_opener()
    return _HEIF_EXTENSIONS


def _avif() -> frozenset[str]:
    """AVIF where this Pillow was built with it (its wheels are, from Pillow 11.2)."""
    from PIL import features

    return _AVIF_EXTENSIONS if features.check("avif") else frozenset()


# Module import runs once per process, so the opener is registered once.
IMAGE_EXTENSIONS: frozenset[str] = _BASE_EXTENSIONS | _register_heif() | _avif()

# Photos in formats this installation cannot decode. A walk lists them (Scan.not_read) and
# the stages say so, rather than passing over a phone's HEIC photos or a camera's RAW
# files without a word. Each value: the kind of file, and what to do about it.
_CAMERA_RAW = ("camera RAW file", "photoclust does not decode RAW: embed the camera's JPEGs (shoot RAW+JPEG) "
               "or export the RAW files to JPEG or TIFF")
_TWIN = "each has a photo of the same name beside it (the camera's or phone's JPEG), which is read"
_RAW_EXTENSIONS = (".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".raf",
                   ".pef", ".srw", ".x3f", ".3fr", ".iiq", ".rwl", ".erf", ".mef", ".mos", ".kdc", ".dcr")


def not_read_kinds(readable: frozenset[str]) -> dict[str, tuple[str, str]]:
    """extension -> (kind of file, what to do) for the photos a walk finds but cannot decode,
    given the extensions this installation reads."""
    heif = ("HEIC photo", "install pillow-heif to read them (pip install pillow-heif, or "
                          "pip install 'photoclust[heif]'; make install does)")
    avif = ("AVIF image", f"this Pillow ({PIL.__version__}) was built without AVIF: upgrade Pillow to 11.2 or later")
    return {**{ext: _CAMERA_RAW for ext in _RAW_EXTENSIONS},
            **{ext: heif for ext in _HEIF_EXTENSIONS - readable},
            **{ext: avif for ext in _AVIF_EXTENSIONS - readable}}


_NOT_READ_KINDS = not_read_kinds(IMAGE_EXTENSIONS)

_EXIF_ORIENTATION = 0x0112
_ROTATING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # these swap width and height
_WHITE = (255, 255, 255)


class UnreadableImage(Exception):
    """A file that cannot be decoded; `reason` is a short phrase for the manifest."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- finding

# A folder holding one of these files was written by photoclust: its sheets, thumbnails
# and export links are not photos, so a walk never enters it (`photoclust run .` puts
# ./outputs/ inside the photo folder, and an export may land there too).
# (OUTPUT_MARKER, EXPORT_MARKER, LEGACY_OUTPUT_MARKER: see layout.py)

OUTPUT_FOLDER = "a photoclust output folder"
EXPORT_FOLDER = "a photoclust export folder"
EXCLUDED_FOLDER = "the output folder of this run"


@dataclass
class Scan:
    """What one walk of a photo folder found; every path is relative POSIX, sorted.

    images      image files to decode
    unreadable  (path, reason) for what was found but cannot be read: a broken or looping
                link with an image name ("broken link -> target"), an image-named entry
                that cannot be inspected ("cannot read: ..."), a pipe or device with an
                image name ("not a regular file"), or a subfolder that cannot be listed
                ("cannot list folder: Permission denied"); a folder's path ends in "/"
                ("sub/") so it never reads as a file of the same name. A listed file that
                cannot be opened is in `images`: decoding records why it failed.
    skipped     (folder, why) for the folders not entered: photoclust output and export
                folders and the caller's excluded folders (no trailing "/")
    not_read    photos in a format this installation cannot decode (camera RAW; HEIC
                without pillow-heif); `not_read_notes` says what to do about them
    """

    images: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    not_read: list[str] = field(default_factory=list)

    def not_read_notes(self) -> list[str]:
        """One line per kind of photo that was not read: how many, a few of them, what to do.
        A file with a readable photo of the same name beside it (a camera's RAW+JPEG pair, a
        phone's HEIC exported as JPEG) is that photo's twin: its line says so instead."""
        readable = {os.path.splitext(rel)[0].lower() for rel in self.images}
        by_kind: dict[tuple[str, str], list[str]] = {}
        for rel in self.not_read:
            stem, ext = os.path.splitext(rel)
            kind = _NOT_READ_KINDS[ext.lower()]
            if stem.lower() in readable:
                kind = (kind[0], _TWIN)
            by_kind.setdefault(kind, []).append(rel)
        notes = []
        for (kind, advice), paths in by_kind.items():
            shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
            notes.append(f"not read: {len(paths)} {kind}{'s' if len(paths) != 1 else ''} ({shown}): {advice}")
        return notes

    def not_read_hint(self) -> str:
        """The notes as the tail of a one-line error ("; not read: ..."), "" when there are none."""
        return "".join(f"; {note}" for note in self.not_read_notes())


def find_images(root: Path) -> list[Path]:
    """Every image file under `root`, sorted by relative POSIX path.

    The images of `scan_images(root)`; use that to learn what was unreadable or skipped.
    """
    root = Path(root)
    return [root / rel for rel in scan_images(root).images]


def scan_images(root: Path, exclude: Iterable[Path] = ()) -> Scan:
    """Walk `root` for image files, reporting what could not be read and what was skipped.

    Hidden files and directories are skipped, file links are followed, directory links
    are followed but each real directory is walked once (no loops, no duplicates).
    Subfolders that are photoclust output or export folders (see the markers above) and
    the folders in `exclude` (however reached) are not entered; `root` itself is always
    walked, since the user named it. Broken links whose names are not image names are
    not photos and are ignored.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a directory: {root}")
    scan = _walk(root, _existing_dir_keys(exclude))
    scan.images.sort()
    scan.unreadable.sort()
    scan.skipped.sort()
    scan.not_read.sort()
    return scan


def _dir_key(st: os.stat_result) -> tuple[int, int]:
    # (device, inode) identifies the real directory however it was reached.
    return (st.st_dev, st.st_ino)


def _existing_dir_keys(folders: Iterable[Path]) -> set[tuple[int, int]]:
    keys = set()
    for folder in folders:
        try:
            st = os.stat(folder)
        except OSError:  # not made yet: nothing of it can be in the tree
            continue
        if stat.S_ISDIR(st.st_mode):
            keys.add(_dir_key(st))
    return keys


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def photoclust_folder(path: str | Path) -> str | None:
    """Why photoclust wrote the folder at `path` (a phrase for the log), or None if it did not."""
    if os.path.isfile(os.path.join(path, OUTPUT_MARKER)) or os.path.isfile(os.path.join(path, LEGACY_OUTPUT_MARKER)):
        return OUTPUT_FOLDER
    if os.path.isfile(os.path.join(path, EXPORT_MARKER)):
        return EXPORT_FOLDER
    return None


def _walk(root: Path, excluded: set[tuple[int, int]]) -> Scan:
    """Depth-first in name order (deterministic); the root must be listable."""
    scan = Scan()
    visited = {_dir_key(root.stat())}
    stack: list[tuple[str, str]] = [(os.fspath(root), "")]
    while stack:
        dirpath, prefix = stack.pop()
        try:
            entries = _sorted_entries(dirpath)
        except OSError as exc:
            if not prefix:  # the folder the user named must be readable
                raise
            scan.unreadable.append((prefix, f"cannot list folder: {_strerror(exc)}"))
            continue
        subdirs: list[tuple[str, str]] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = prefix + entry.name
            try:
                if entry.is_dir():  # follows links; False for broken links
                    key = _dir_key(entry.stat())
                    if key in visited:
                        continue
                    visited.add(key)
                    why = EXCLUDED_FOLDER if key in excluded else photoclust_folder(entry.path)
                    if why:
                        scan.skipped.append((rel, why))
                    else:
                        subdirs.append((entry.path, rel + "/"))
                elif not _is_image_name(entry.name):
                    if os.path.splitext(entry.name)[1].lower() in _NOT_READ_KINDS and entry.is_file():
                        scan.not_read.append(rel)
                    continue
                elif entry.is_file():
                    scan.images.append(rel)
                elif entry.is_symlink() and not os.path.exists(entry.path):
                    scan.unreadable.append((rel, _broken_link(entry.path, None)))
                else:  # a pipe, socket or device named like a photo: opening it could block
                    scan.unreadable.append((rel, "not a regular file"))
            except OSError as exc:
                problem = _entry_problem(entry, rel, exc)
                if problem is not None:
                    scan.unreadable.append(problem)
        stack.extend(reversed(subdirs))  # pop() then visits them in name order
    return scan


def _entry_problem(entry: os.DirEntry[str], rel: str, exc: OSError) -> tuple[str, str] | None:
    """The manifest row for an entry that could not be inspected, if it may hold photos."""
    if _is_image_name(entry.name):
        if _answers(entry.is_symlink):  # e.g. a link to itself
            return rel, _broken_link(entry.path, exc)
        return rel, f"cannot read: {_strerror(exc)}"
    if _answers(entry.is_dir):  # listed but not enterable, e.g. a folder without x permission
        return rel + "/", f"cannot list folder: {_strerror(exc)}"
    return None  # neither an image name nor a folder: nothing photoclust would have read


def _answers(test: Callable[[], bool]) -> bool:
    # DirEntry tests may stat and fail again; failing counts as "no".
    try:
        return test()
    except OSError:
        return False


def _broken_link(path: str, exc: OSError | None) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    why = f" ({_strerror(exc)})" if exc is not None and exc.errno != errno.ENOENT else ""
    return f"broken link -> {target}{why}"


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _sorted_entries(dirpath: str) -> list[os.DirEntry[str]]:
    with os.scandir(dirpath) as it:
        return sorted(it, key=lambda e: e.name)


# --------------------------------------------------------------------------- decoding


def open_rgb(path: Path, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode `path` to a fully loaded RGB image, upright per its EXIF orientation.

    With `min_size=(w, h)`, a large JPEG is decoded at a reduced scale (Pillow `draft`)
    that still keeps both sides of the upright image at least w and h.
    Raises `UnreadableImage` for any file that cannot be decoded.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise UnreadableImage("empty file")
        # DecompressionBombWarning becomes an error: MAX_IMAGE_PIXELS is the documented limit.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return _decode(im, min_size)
    except UnreadableImage:
        raise
    except Exception as exc:  # Pillow plugins raise many types for corrupt data
        raise UnreadableImage(_reason(exc)) from exc


def thumbnail(path: Path, size: int) -> Image.Image:
    """An RGB thumbnail of `path` whose long side is at most `size` pixels."""
    if size < 1:
        raise ValueError(f"thumbnail size must be a positive number of pixels, got {size}")
    im = open_rgb(path, min_size=(size, size))
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    return im


def _decode(im: Image.Image, min_size: tuple[int, int] | None) -> Image.Image:
    _check_pixel_limit(im.size)
    orientation = exif_orientation(im)
    if min_size is not None and min(min_size) > 0:
        # draft sees the stored (unrotated) frame, so ask for the rotated request.
        w, h = min_size
        im.draft("RGB", (h, w) if orientation in _ROTATING_ORIENTATIONS else (w, h))
    im.load()  # first frame only, for animations
    upright = _exif_transpose(im)
    rgb = _to_rgb(upright)
    # Never hand back the file-backed object: closing it invalidates its pixels.
    return rgb.copy() if rgb is im else rgb


def _check_pixel_limit(size: tuple[int, int]) -> None:
    # Explicit check too, in case a warnings filter elsewhere let the warning through.
    if not within_pixel_limit(size):
        raise UnreadableImage(_too_large(size[0] * size[1]))


def within_pixel_limit(size: tuple[int, int]) -> bool:
    """Whether an image of `size` is within Pillow's decompression-bomb limit (MAX_IMAGE_PIXELS)."""
    limit = Image.MAX_IMAGE_PIXELS
    return limit is None or size[0] * size[1] <= limit


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1-8) of an opened image; 1 when absent or unreadable."""
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # corrupt EXIF must not make good pixels unreadable
        return 1


def _exif_transpose(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # corrupt EXIF: keep the stored orientation
        return im


# ----------------------------------------------------------------------- mode handling


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparency is composited on white."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        im = _high_depth_to_l(im)
    if im.mode == "RGB":
        return im
    if im.mode == "LAB":
        return _lab_to_rgb(im)
    if im.mode == "La":  # Pillow converts premultiplied La only to LA
        im = im.convert("LA")
    if _has_alpha(im):
        return _over_white(im.convert("RGBA"))
    return im.convert("RGB")


def _lab_to_rgb(im: Image.Image) -> Image.Image:
    # Pillow's plain convert() reinterprets LAB channels; a colour transform is needed.
    from PIL import ImageCms

    transform = ImageCms.buildTransform(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
    )
    return ImageCms.applyTransform(im, transform)


def _has_alpha(im: Image.Image) -> bool:
    # "transparency" covers palette indices/alphas and single-colour keys of L and RGB.
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def _over_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float greyscale to 8-bit L without clipping to white.

    16-bit modes use their full declared range (0..65535). Modes without a declared
    range (I, F) are read as 8-bit, 16-bit or 0..1 data when their values fit one of
    those ranges, else stretched from their own minimum to maximum.
    """
    a = np.asarray(im, dtype=np.float64)
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    if im.mode.startswith("I;16"):
        scaled = a / 257.0
    else:
        scaled = _scale_unknown_range(a, is_float=im.mode == "F")
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def _scale_unknown_range(a: np.ndarray, is_float: bool) -> np.ndarray:
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo >= 0 and is_float and hi <= 1.0:
        return a * 255.0
    if lo >= 0 and hi <= 255:
        return a
    if lo >= 0 and hi <= 65535 and not is_float:
        return a / 257.0
    span = hi - lo
    return (a - lo) * (255.0 / span) if span > 0 else np.zeros_like(a)


# -------------------------------------------------------------------------- reasons

_BOMB_PIXELS = re.compile(r"Image size \((\d+) pixels\)")


def _too_large(pixels: int) -> str:
    return (
        f"too large: {pixels} pixels exceeds the decompression-bomb limit of "
        f"{Image.MAX_IMAGE_PIXELS}"
    )


def _reason(exc: BaseException) -> str:
    """A short, one-line manifest reason for a decode failure."""
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        match = _BOMB_PIXELS.search(str(exc))
        return _too_large(int(match.group(1))) if match else f"too large: {_first_line(exc)}"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image (cannot identify format)"
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    message = _first_line(exc)
    if _looks_truncated(exc, message):
        return "truncated image data"
    return f"decode error: {message}"


def _looks_truncated(exc: BaseException, message: str) -> bool:
    # Pillow reports short files with several wordings depending on the plugin.
    lowered = message.lower()
    return isinstance(exc, EOFError) or any(
        phrase in lowered
        for phrase in ("truncated", "broken data stream", "premature end", "unexpected end")
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return line[:200] or type(exc).__name__
