"""The one way photoclust writes a file: all of it or none of it.

Every write goes to a temporary file with a unique name in the target's own folder, is
flushed and fsynced, then renamed over the target (atomic on POSIX), and the folder is
fsynced so the rename survives a power cut. Any exception (disk full, read-only folder,
Ctrl-C) removes the temporary file and leaves the previous version of the target as it
was. A process killed outright cannot clean up: its temporary files carry TEMP_SUFFIX,
and `remove_stale_temporaries` clears them under the output folder's lock.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from . import faults

TEMP_SUFFIX = ".photoclust-tmp"


def _file_mode() -> int:
    """The mode `open()` would give a new file under this process's umask (tempfile makes
    its files 0600, which would leave a site or CSV unreadable to the web server or the
    colleague it is meant for)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some filesystems do not open folders; the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """`with atomic_path(p) as tmp:` fill the file `tmp` (any way you like); it becomes `p`
    only if the block ends normally, and is removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:80]}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as exc:  # read-only folder, disk full: name the file the user knows
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        faults.point(f"rename {path.name}")
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename in (None, tmp):  # name the file the user knows
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    fsync_dir(path.parent)
    faults.point(f"written {path.name}")


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb", **open_args: Any) -> Iterator[IO]:
    """`with atomic_open(p, "w", encoding="utf-8") as fh:` writes p only if the block ends normally."""
    with atomic_path(path) as tmp, open(tmp, mode, **open_args) as fh:
        yield fh


def copy_file(source: Path, destination: Path) -> None:
    """A copy with the source's times and mode that never exists half-written under its name."""
    import shutil

    with atomic_path(destination) as tmp:
        shutil.copyfile(source, tmp)
        shutil.copystat(source, tmp)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: Path, text: str) -> None:
    # surrogateescape: a file name with bytes that are not UTF-8 is written back byte for byte.
    with atomic_open(path, "w", encoding="utf-8", errors="surrogateescape", newline="") as fh:
        fh.write(text)


def write_with(path: Path, save: Callable[[IO], None]) -> None:
    """Atomic write through a library's own saver: `write_with(p, lambda fh: image.save(fh, "PNG"))`."""
    with atomic_open(path, "wb") as fh:
        save(fh)


def save_npy(path: Path, array) -> None:
    import numpy as np

    write_with(path, lambda fh: np.save(fh, array, allow_pickle=False))


def replace(src: Path, dst: Path) -> None:
    """A rename that is itself a write point (the commit steps of the features cache)."""
    faults.point(f"rename {Path(src).name} -> {Path(dst).name}")
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


def remove(path: Path) -> None:
    """Delete one file we own (never a photo), as a write point."""
    faults.point(f"remove {Path(path).name}")
    Path(path).unlink(missing_ok=True)


def remove_tree(folder: Path) -> None:
    """Delete a folder we own (never one of photos), as a write point."""
    import shutil

    faults.point(f"remove {Path(folder).name}/")
    shutil.rmtree(folder, ignore_errors=True)


def remove_stale_temporaries(folder: Path, targets: Iterable[str] | None = None) -> int:
    """Delete the temporary files that killed runs left under `folder`; returns how many.
    With `targets` (file names), only the temporaries of those files directly in `folder`:
    a folder the user chose (quantize -o) is never walked.

    Only called while holding the folder's lock, so no live writer owns them.
    """
    removed = 0
    if targets is not None:
        prefixes = tuple(f".{name[:80]}." for name in targets)
        for entry in os.scandir(folder):
            if entry.name.endswith(TEMP_SUFFIX) and entry.name.startswith(prefixes) and entry.is_file():
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
        return removed
    for dirpath, _, names in os.walk(folder):
        for name in names:
            if name.endswith(TEMP_SUFFIX):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
    return removed
