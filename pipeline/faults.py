"""Named write points, so the fault-injection tests can kill a run anywhere it writes.

Every place that changes a file on disk calls `point("what happens next")`. Normally
that costs one dictionary look-up. With `PHOTOCLUST_KILL_AT=N` in the environment the
N-th point of the process sends SIGKILL to the process itself (no cleanup runs, as on a
power cut); with `PHOTOCLUST_FAULT_LOG=FILE` every point appends its name to FILE, which
is how the tests count the points of a clean run before killing at each in turn.
"""

from __future__ import annotations

import os
import signal
import threading

_passed = 0
_lock = threading.Lock()  # render makes thumbnails in threads: one count, no point skipped or doubled


def point(name: str) -> None:
    global _passed
    kill_at = os.environ.get("PHOTOCLUST_KILL_AT")
    log = os.environ.get("PHOTOCLUST_FAULT_LOG")
    if kill_at is None and log is None:
        return
    with _lock:
        _passed += 1
        if log:
            with open(log, "a", encoding="utf-8", errors="backslashreplace") as fh:
                fh.write(f"{_passed}\t{name}\n")
        if kill_at is not None and _passed == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)


def reset() -> None:
    """Start counting again (a test process that runs several stages in turn)."""
    global _passed
    _passed = 0
