"""Shared bits of the benchmarks: where figures go and what machine made them."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parents[1] / "outputs" / "bench"


def machine() -> dict:
    info = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_result(name: str, result: dict) -> Path:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    path = BENCH_DIR / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2) + "\n")
    return path
