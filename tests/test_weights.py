from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pipeline import weights as W
from pipeline.errors import UserError

POOL5 = "functional_1/block5_pool_1/MaxPool2d:0"


@pytest.fixture(scope="module")
def oxford():
    return W.load_oxford()


def test_oxford_weights_carry_the_published_values(oxford):
    sd = oxford.state_dict
    assert float(sd["0.weight"][0, 0, 0, 0]) == pytest.approx(0.42947057, abs=1e-7)
    assert float(sd["0.bias"][25]) == pytest.approx(0.7446502, abs=1e-7)
    assert float(sd["26.bias"][510]) == pytest.approx(0.23517226, abs=1e-7)
    assert oxford.preprocess.bgr and oxford.preprocess.scale == 1.0
    assert (oxford.preprocess.resize, oxford.preprocess.crop) == (256, 224)


def test_converted_model_matches_onnxruntime_on_a_fixed_input(oxford):
    model = onnx.load(str(W.oxford_onnx_path()))
    model.graph.output.insert(0, onnx.helper.make_tensor_value_info(POOL5, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-120, 150, size=(1, 240, 240, 3)).astype(np.float32)  # NHWC, Caffe scale
    expected = session.run([POOL5], {"input": x})[0]
    with torch.inference_mode():
        ours = W.build_features_model(oxford)(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
    assert ours.shape == expected.shape == (1, 512, 7, 7)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-3)


def test_a_tampered_onnx_file_is_refused(tmp_path):
    model = onnx.load(str(W.oxford_onnx_path()))
    for init in model.graph.initializer:
        if init.name == "functional_1/block1_conv1_1/Squeeze:0":
            bias = onnx.numpy_helper.to_array(init).copy()
            bias[25] += 0.5
            init.CopyFrom(onnx.numpy_helper.from_array(bias, init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(UserError, match="differ from the published"):
        W.convert_oxford_onnx(bad)


def test_a_corrupt_cached_conversion_is_redone(oxford, monkeypatch, tmp_path):
    monkeypatch.setenv("PHOTOCLUST_CACHE", str(tmp_path))
    bad = {k: torch.zeros_like(v) for k, v in oxford.state_dict.items()}
    torch.save(bad, tmp_path / "vgg16_oxford_features.pt")
    with pytest.warns(UserWarning, match="converting again"):
        again = W.load_oxford()
    assert torch.equal(again.state_dict["0.weight"], oxford.state_dict["0.weight"])


def _write_imagenet_checkpoint(torch_home, seed=3):
    from torchvision.models import VGG16_Weights
    features = W.load_random(seed).state_dict
    ckpt = torch_home / "hub" / "checkpoints" / VGG16_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    ckpt.parent.mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in features.items()}, ckpt)
    return features


def test_imagenet_loads_the_checkpoint_in_torch_home_and_auto_prefers_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(W, "_can_reach", lambda *a, **k: False)
    written = _write_imagenet_checkpoint(tmp_path)
    for spec in ("imagenet", "auto"):
        weights = W.resolve_weights(spec)
        assert weights.id == "torchvision:VGG16_Weights.IMAGENET1K_V1"
        assert torch.equal(weights.state_dict["28.weight"], written["28.weight"])
        assert not weights.preprocess.bgr and weights.preprocess.scale == pytest.approx(1 / 255)
        W.build_features_model(weights)  # fits vgg16().features


def test_auto_falls_back_to_oxford_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(W, "_can_reach", lambda *a, **k: False)
    assert W.resolve_weights("auto").id == W.OXFORD_ID


def test_auto_without_any_weights_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(W, "_can_reach", lambda *a, **k: False)
    monkeypatch.setattr(W, "oxford_onnx_path", lambda: None)
    with pytest.raises(UserError, match="make install"):
        W.resolve_weights("auto")
    with pytest.raises(UserError, match="vgg16-397923af.pth"):
        W.resolve_weights("imagenet")


def test_random_weights_are_seeded_and_warn():
    messages = []
    a, b = W.resolve_weights("random", seed=1, log=messages.append), W.load_random(1)
    assert torch.equal(a.state_dict["0.weight"], b.state_dict["0.weight"])
    assert not torch.equal(a.state_dict["0.weight"], W.load_random(2).state_dict["0.weight"])
    assert not a.semantic and "not be semantic" in messages[0]


def test_state_dict_path(tmp_path):
    path = tmp_path / "mine.pth"
    whole = {f"features.{k}": v for k, v in W.vgg16_features().state_dict().items()}
    whole["classifier.6.bias"] = torch.zeros(1000)  # whole-model layout: classifier keys are ignored
    torch.save(whole, path)
    weights = W.resolve_weights(str(path))
    assert weights.id.startswith("file:mine.pth:sha256=")
    W.build_features_model(weights)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(UserError, match="junk.pth"):
        W.resolve_weights(str(tmp_path / "junk.pth"))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="do not fit VGG16"):
        W.build_features_model(W.resolve_weights(str(tmp_path / "other.pth")))
