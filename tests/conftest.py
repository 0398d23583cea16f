from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Converted weights go to a throwaway cache, never the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PHOTOCLUST_CACHE", str(tmp_path_factory.mktemp("photoclust-cache")))
    yield
    mp.undo()


def make_photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n small, distinct images (JPEG and PNG, odd sizes) in two subfolders."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        h, w = rng.integers(40, 90, size=2)
        base = rng.integers(0, 255, size=3)
        pixels = np.clip(base + rng.normal(0, 25, size=(h, w, 3)), 0, 255).astype(np.uint8)
        path = sub / (f"img_{i:02d}.jpg" if i % 3 else f"img_{i:02d}.png")
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths
