from __future__ import annotations

import os
import tempfile
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


def _permission_bits_apply() -> bool:
    """Whether this process is refused a file its mode forbids: not for root with its usual
    capabilities (CAP_DAC_OVERRIDE), which is how CI runs."""
    if os.name != "posix":
        return False
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"
        probe.write_text("x")
        probe.chmod(0)
        try:
            probe.read_text()
            return False
        except PermissionError:
            return True


PERMISSIONS_ENFORCED = _permission_bits_apply()
# Tests of unreadable files and folders; as root, tests/test_permissions.py runs them again
# in a process without the capabilities that let root ignore permission bits.
needs_permission_bits = pytest.mark.skipif(not PERMISSIONS_ENFORCED,
                                           reason="this user ignores permission bits (test_permissions.py reruns it)")


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
