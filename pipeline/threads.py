"""Thread limits for work made of many small steps, and the model's share of the CPU
during extraction (`model_threads`).

The engine's small fits, the colour commands and the patch search's blocks are many small
operations, where torch's (and OpenBLAS's) worker threads cost more in synchronisation than
they save, and far more when other processes share the cores (on the 2-core development
machine under load, 1.4x to 10x slower on two threads). torch is imported on first use, so
importing this module stays cheap. Every limit gives the previous setting back afterwards.
"""

from __future__ import annotations

import contextlib
import math


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op work on `n` threads while the block runs."""
    import torch

    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def one_torch_thread():
    """torch's intra-op work on one thread while the block runs."""
    return torch_threads(1)


def model_threads(cores: int, forward_ms: float, decode_ms: float) -> int:
    """Threads for a model's forward pass on `cores` CPU threads that it shares with decoding
    workers. forward_ms: the forward's core time per photo (its time on all the threads,
    times their number); decode_ms: a worker's core time to read, hash, decode and resize one.

    All of them, unless decoding sets the pace: when the forward needs at most half the core
    time decoding does, the model's threads mostly wait for each other at every layer while
    the decoders hold the cores (EfficientNet-Lite0 on 12 MP JPEGs, 2 cores: its 6 ms forward
    took 25 to 86 ms a photo in the run). Then it gets its share of the cores, counting
    decoding at half (the workers also run in the gaps the model leaves), rounded up: on 2
    cores one thread for Lite0 (14 ms against 40) and both for VGG16 (57 against 40).
    """
    if cores <= 1 or forward_ms * 2 > decode_ms:
        return max(1, cores)
    return max(1, min(cores, math.ceil(cores * forward_ms / (forward_ms + decode_ms / 2))))


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
