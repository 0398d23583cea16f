"""The extraction benchmark's helpers, on a few small files: a GPU session has minutes, and a
benchmark that breaks there wastes them (benchmarks/gpu_check.sh runs it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks import bench_extract as B

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def test_large_jpegs_are_made_distinct_then_copied(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "LARGE_SIZE", (64, 48))
    monkeypatch.setattr(B, "LARGE_JPEGS", 3)
    B.make_large_jpegs(tmp_path / "large", sorted(SAMPLE.rglob("*.jpg"))[:2], 5)
    files = sorted((tmp_path / "large").iterdir())
    assert [f.name for f in files] == [f"large_{i:04d}.jpg" for i in range(5)]
    data = [f.read_bytes() for f in files]
    assert len(set(data[:3])) == 3 and data[3] == data[0] and data[4] == data[1]
    with Image.open(files[0]) as im:
        assert im.size == (64, 48) and im.format == "JPEG"


def test_the_device_decoder_and_writing_are_timed(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "LARGE_SIZE", (320, 240))
    B.make_large_jpegs(tmp_path / "large", sorted(SAMPLE.rglob("*.jpg"))[:3], 3)
    paths = sorted((tmp_path / "large").iterdir())
    timed = B.time_device_decode(paths, torch.device("cpu"), batch_size=2)
    assert timed["images"] == 3 and timed["device_decode_ms"] > 0 and timed["device_resize_ms"] > 0
    seconds = B.time_writing(paths, 512, batch_size=2)
    assert seconds > 0


def test_agreement_names_its_comparison():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 8)).astype(np.float32)
    same = B.agreement(a, a.copy(), k=2, name="ari_pillow_vs_device")
    assert same["cosine_min"] > 0.9999 and set(same["ari_pillow_vs_device"].values()) == {1.0}


def test_every_step_of_one_image_is_timed(tmp_path, monkeypatch):
    from pipeline import backbones

    monkeypatch.setattr(B, "LARGE_SIZE", (320, 240))
    B.make_large_jpegs(tmp_path / "large", sorted(SAMPLE.rglob("*.jpg"))[:2], 2)
    weights = backbones.resolve("vgg16", "random", log=lambda m: None)
    model = backbones.build(weights)
    split = B.time_split(sorted((tmp_path / "large").iterdir()), model, weights, torch.device("cpu"),
                         None, "crop", batch_size=2)
    assert list(split) == ["hash_ms", "decode_ms", "resize_ms", "forward_ms", "write_ms"]
    assert split["forward_ms"] > 0 and split["decode_ms"] > 0 and split["hash_ms"] >= 0
