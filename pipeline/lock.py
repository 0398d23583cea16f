"""One run at a time per output folder: an advisory lock (fcntl.flock) on the folder itself.

A second run on the same folder waits, saying so, or with `wait=False` (`--no-wait`) stops
at once with one line. The lock is re-entrant inside a thread (`run` holds it across its
stages); another thread of the same process waits like another process would. The kernel
drops it when the process dies, so a killed run never leaves the folder locked. A first
run that fails before writing anything (a typo in a flag, missing weights) removes the
folder it made, so no empty output folder is left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .atomic import remove_stale_temporaries, write_text
from .errors import UserError
from .layout import Layout

_held: dict[tuple[int, str], tuple[int, int]] = {}  # (thread, real path of the folder) -> (fd, depth)


@contextlib.contextmanager
def output_lock(out_dir: Path, *, wait: bool = True, create: bool = True, marker: bool = True,
                targets: Iterable[str] | None = None, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the lock of `out_dir` for the block; with `create`, make the folder first (and
    with `marker`, mark it as an output folder that finding photos skips). With `targets`
    (the names of the files the command writes there: quantize, segment), only their
    temporaries left by a killed run are removed, and the folder is never walked."""
    layout = Layout(out_dir)
    made = create and not layout.root.exists()
    if create:
        layout.root.mkdir(parents=True, exist_ok=True)
        if marker and not layout.marker.exists():
            write_text(layout.marker, "photoclust output folder: photoclust never reads photos from here\n")
    elif not layout.root.is_dir():
        raise UserError(f"--out {out_dir}: no such output folder; run `photoclust extract PHOTOS --out {out_dir}` first")
    key = (threading.get_ident(), os.path.realpath(layout.root))
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _held[key]
            _held[key] = (fd, depth - 1)
        return
    fd = os.open(layout.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise UserError(f"another photoclust run is working in {out_dir}; wait for it to finish "
                                "or rerun without --no-wait to queue behind it") from None
            log(f"waiting for another photoclust run to finish in {out_dir} ...")
            fcntl.flock(fd, fcntl.LOCK_EX)
        _held[key] = (fd, 1)
        removed = remove_stale_temporaries(layout.root, targets)
        if removed:
            log(f"removed {removed} temporary file(s) left by an interrupted run in {out_dir}")
        try:
            yield
        except BaseException:
            if made:
                _remove_if_untouched(layout)
            raise
        finally:
            del _held[key]
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _remove_if_untouched(layout: Layout) -> None:
    """Remove a folder this run made if nothing but its marker is in it."""
    try:
        if set(os.listdir(layout.root)) <= {layout.marker.name}:
            layout.marker.unlink(missing_ok=True)
            layout.root.rmdir()
    except OSError:
        pass  # something else is there now: keep it
