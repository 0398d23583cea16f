"""Extraction precision: bf16 where the hardware has it, fp32 on request, never mixed in one cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import weights as W
from pipeline.cli import main
from pipeline.config import ExtractConfig
from pipeline.extract import autocast_dtype, embed_batch, extract_folder, native_bf16, to_network_pixels
from pipeline.images import open_rgb

from conftest import make_photos

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
CPU = torch.device("cpu")


def test_auto_follows_the_hardware_and_explicit_choices_are_kept():
    assert autocast_dtype("fp32", CPU) is None
    assert autocast_dtype("bf16", CPU, log=lambda m: None) is torch.bfloat16
    assert autocast_dtype("auto", CPU) is (torch.bfloat16 if native_bf16(CPU) else None)


def test_bf16_without_native_support_warns_that_it_is_slow(monkeypatch):
    monkeypatch.setattr("pipeline.extract.native_bf16", lambda device: False)
    said = []
    assert autocast_dtype("bf16", CPU, log=said.append) is torch.bfloat16
    assert len(said) == 1 and "emulated" in said[0]
    assert autocast_dtype("auto", CPU) is None


def test_a_bad_precision_is_one_line(tmp_path, capsys):
    make_photos(tmp_path / "p", 1)
    assert main(["extract", str(tmp_path / "p"), "--out", str(tmp_path / "o"), "--precision", "fp8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--precision" in err and "fp32" in err


def test_bf16_and_fp32_features_never_share_a_cache(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    make_photos(photos, 3)
    fast = dict(weights="random", workers=0, device="cpu")
    extract_folder(photos, out, ExtractConfig(precision="fp32", **fast), log=lambda m: None, progress=False)
    fp32 = np.load(out / "features.npy")
    assert json.loads((out / "cache_key.json").read_text())["precision"] == "float32"
    report = extract_folder(photos, out, ExtractConfig(precision="bf16", **fast), log=lambda m: None, progress=False)
    assert report.decoded == 3  # nothing reused across precisions
    assert json.loads((out / "cache_key.json").read_text())["precision"] == "bfloat16"
    bf16 = np.load(out / "features.npy")
    assert not np.array_equal(bf16, fp32)
    # the fp32 cache was moved aside, not lost: switching back decodes nothing
    again = extract_folder(photos, out, ExtractConfig(precision="fp32", **fast), log=lambda m: None, progress=False)
    assert again.decoded == 0 and np.array_equal(np.load(out / "features.npy"), fp32)


@pytest.mark.skipif(W.oxford_onnx_path() is None, reason="the Oxford weights are not installed (make install)")
def test_bf16_embeddings_of_real_photos_agree_with_fp32():
    """With the real weights on sample photos, every bf16 embedding has cosine >= 0.999 to
    its fp32 embedding (the bar for letting `auto` pick bf16)."""
    weights = W.load_oxford()
    model = W.build_features_model(weights).to(memory_format=torch.channels_last).eval()
    paths = [sorted((SAMPLE / folder).iterdir())[0] for folder in ("birds", "flowers", "fruit", "mammals")]
    pixels = torch.stack([to_network_pixels(open_rgb(p, (256, 256)), weights.preprocess, "crop") for p in paths])
    with torch.inference_mode():
        x = weights.preprocess.normalize(pixels)
        fp32 = torch.from_numpy(embed_batch(model, x, None))
        bf16 = torch.from_numpy(embed_batch(model, x, torch.bfloat16))
    cosine = torch.nn.functional.cosine_similarity(fp32, bf16)
    assert cosine.min().item() >= 0.999, cosine
    assert not torch.equal(fp32, bf16)  # bf16 really ran
