"""Shared bits of the benchmarks: where figures go and what machine made them."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

from pipeline import atomic
from pipeline.extract import native_bf16

BENCH_DIR = Path(__file__).resolve().parents[1] / "outputs" / "bench"


def machine() -> dict:
    info = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_bf16": native_bf16(torch.device("cpu")), "cpu_amx": "amx_bf16" in cpu_flags()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpuinfo_field(name: str) -> str:
    """The first `name` line of /proc/cpuinfo ("" where there is none, as off Linux). Only a
    record of what made the figures: the program's own choices ask torch, never this."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return ""


def cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (AMX, the bf16 units change extraction's speed several times)."""
    return set(_cpuinfo_field("flags").split())


def write_result(name: str, result: dict) -> Path:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    path = BENCH_DIR / f"{name}.json"
    atomic.write_text(path, json.dumps({"machine": machine(), **result}, indent=2) + "\n")
    return path


def vgg_like(n: int, d: int, k: int, seed: int, outliers: float = 0.05, dtype=np.float64,
             return_labels: bool = False):
    """Data shaped like pooled VGG16 features: non-negative, skewed clusters (gamma centers,
    Gaussian spread, clipped at 0) with a share of far outliers. Built in row blocks so
    large benchmark matrices do not need float64 copies. With `return_labels`, also each
    row's cluster (the same data either way)."""
    rng = np.random.default_rng(seed)
    centers = rng.gamma(2.0, 1.0, size=(k, d))
    out = np.empty((n, d), dtype=dtype)
    labels = np.empty(n, dtype=np.int64)
    for start in range(0, n, 65536):
        m = min(n, start + 65536) - start
        labels[start:start + m] = rng.integers(k, size=m)
        block = centers[labels[start:start + m]] + rng.normal(0.0, 0.7, size=(m, d))
        bad = rng.random(m) < outliers
        block[bad] += rng.gamma(2.0, 6.0, size=(bad.sum(), d))
        out[start:start + m] = np.clip(block, 0, None)
    return (out, labels) if return_labels else out


def blobs(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """float32 Gaussian blobs (the 2M x 25 "patches" case of seed 002)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 4.0, size=(k, d)).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 262144):
        m = min(n, start + 262144) - start
        out[start:start + m] = centers[rng.integers(k, size=m)] + rng.normal(0.0, 1.0, size=(m, d)).astype(np.float32)
    return out
