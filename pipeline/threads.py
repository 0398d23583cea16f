"""Thread limits for work made of many small steps.

The engine's small fits, the colour commands and the patch search's blocks are many small
operations, where torch's (and OpenBLAS's) worker threads cost more in synchronisation than
they save, and far more when other processes share the cores (on the 2-core development
machine under load, 1.4x to 10x slower on two threads). torch is imported on first use, so
importing this module stays cheap. Every limit gives the previous setting back afterwards.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def one_torch_thread():
    """torch's intra-op work on one thread while the block runs."""
    import torch

    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def one_thread():
    """torch and NumPy's BLAS on one thread (a 3 x 3 colour transform of 464,000 colours
    took 120 ms with OpenBLAS on two threads under load and 1.3 ms on one)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - slower, same numbers
        limits = contextlib.nullcontext()
    else:
        limits = threadpool_limits(limits=1, user_api="blas")
    with one_torch_thread(), limits:
        yield
