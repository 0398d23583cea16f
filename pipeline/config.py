"""One validated run configuration: TOML file + command-line overrides, checked once.

Every value remembers where it came from (a key of the file, a command-line flag, or the
built-in default), so an error blames the place the user has to edit.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

from .backbones import MODEL_NAMES
from .errors import UserError
from .losses import LOSS_NAMES, PARAM_NAME

DEFAULT_CONFIG = Path("pipeline.toml")
RESIZE_MODES = ("crop", "squash")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")
EXECUTORS = ("local", "ray")
JPEG_DECODERS = ("auto", "pillow", "device")
NORMALIZATIONS = ("l2", "none")
SECTIONS = ("extract", "cluster", "render")


@dataclass(frozen=True)
class ExtractConfig:
    model: str = "vgg16"  # a backbones.REGISTRY name: vgg16 | efficientnet-lite0 | resnet50 | ...
    weights: str = "auto"
    resize: str = "crop"
    batch_size: int | None = None  # None = auto: 16 off CUDA, what fits on a CUDA GPU (extract.resolve_batch_size)
    workers: int | None = None  # None = auto
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16: bf16 where the device computes it natively
    jpeg_decoder: str = "auto"  # auto (= pillow, for now) | pillow | device: JPEGs decoded where the model runs
    executor: str = "local"  # local | ray: embed on this machine or on a Ray cluster (ray_executor.py)
    ray_address: str = "auto"  # auto (RAY_ADDRESS or the cluster started on this machine) | HOST:PORT | local
    ray_actors: int | None = None  # None = auto: one embedder per GPU of the cluster, else one per CPU


@dataclass(frozen=True)
class ClusterConfig:
    k: int | str = 4  # or "auto": the k a `sweep` suggested
    losses: tuple[str, ...] = field(default_factory=lambda: tuple(LOSS_NAMES))  # every registered loss
    normalize: str = "l2"
    seed: int = 0
    n_init: int = 4
    max_iter: int = 100
    device: str = "auto"
    # False: large collections train on a sample and finish on all points (kmeans.uses_sample);
    # True: every iteration on every point, at any size.
    exact: bool = False
    # loss name -> a positive number or "auto"; only the four robust losses have one.
    params: dict[str, float | str] = field(default_factory=lambda: {n: "auto" for n in PARAM_NAME})
    # key ("k", "params.huber", ...) -> where its value came from, for later error messages
    # (the engine can reject a parameter only once it has seen the data).
    origins: dict[str, str] = field(default_factory=dict, compare=False)

    def origin(self, key: str) -> str:
        return self.origins.get(key, f"cluster.{key}")


@dataclass(frozen=True)
class RenderConfig:
    palette: bool = True  # a strip of each cluster's dominant colours on the sheets and pages


@dataclass(frozen=True)
class Config:
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    source: str = "defaults"


# A setting is (value, where): `where` starts every error message about it, e.g.
# "pipeline.toml: cluster.k", "--k" or "--param huber".
Setting = tuple[Any, str]


def load_config(path: Path | None = None, extract: dict[str, Any] | None = None,
                cluster: dict[str, Any] | None = None, flags: dict[str, str] | None = None,
                render: dict[str, Any] | None = None) -> Config:
    """Read `path` (default ./pipeline.toml when it exists), apply overrides, validate.

    Overrides whose value is None are ignored, so argparse defaults of None mean
    "keep what the file says". `flags` names the command-line flag of an override key
    ("cluster.seed" -> "--cluster-seed"); the default is --key-with-dashes. The cluster
    override "params" is a {loss: value} table merged into the file's, named --param LOSS.
    """
    raw, source = _read_file(path)
    flags = flags or {}
    ext = _settings(raw, "extract", ExtractConfig, source)
    clu = _settings(raw, "cluster", ClusterConfig, source)
    ext.update(_overrides("extract", extract, flags))
    overrides = _overrides("cluster", cluster, flags)
    params = _param_settings(clu.pop("params", None), source)
    if "params" in overrides:  # per-loss overrides merge into the file's table
        given, _ = overrides.pop("params")
        params.update({loss: (value, f"--param {loss}") for loss, value in given.items()})
    clu.update(overrides)
    ren = _settings(raw, "render", RenderConfig, source)
    ren.update(_overrides("render", render, flags))
    return Config(extract=_validate_extract(ext), cluster=_validate_cluster(clu, params),
                  render=_validate_render(ren), source=source)


def _read_file(path: Path | None) -> tuple[dict[str, Any], str]:
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    if path is None:
        return {}, "defaults"
    if not Path(path).is_file():
        raise UserError(f"config file {path} not found: pass --config with an existing TOML file")
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8")), str(path)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML ({exc}); fix the file or pass another --config") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc}); pass another --config") from None


def _settings(raw: dict[str, Any], name: str, cls: type, source: str) -> dict[str, Setting]:
    """The file's [name] table as {key: (value, "file: name.key")}, its keys checked."""
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise UserError(f"{source}: unknown section(s) {sorted(unknown)}; allowed: "
                        f"{', '.join(f'[{s}]' for s in SECTIONS)}")
    section = raw.get(name, {})
    if not isinstance(section, dict):
        raise UserError(f"{source}: {name} must be a table ([{name}] with its keys below it), "
                        f"got {section!r}")
    allowed = {f.name for f in fields(cls)} - {"origins"}
    unknown = set(section) - allowed
    if unknown:
        raise UserError(f"{source}: unknown key(s) {sorted(unknown)} in [{name}]; allowed: {sorted(allowed)}")
    return {key: (value, f"{source}: {name}.{key}") for key, value in section.items()}


def _overrides(section: str, values: dict[str, Any] | None, flags: dict[str, str]) -> dict[str, Setting]:
    return {key: (value, flags.get(f"{section}.{key}", "--" + key.replace("_", "-")))
            for key, value in (values or {}).items() if value is not None}


def _param_settings(table: Setting | None, source: str) -> dict[str, Setting]:
    if table is None:
        return {}
    given, where = table
    if not isinstance(given, dict):
        raise UserError(f"{where} must be a table like [cluster.params] huber = \"auto\", "
                        f"got {_describe(given, where)}")
    return {loss: (value, f"{where}.{loss}") for loss, value in given.items()}


def _describe(value: Any, where: str) -> str:
    """The value as the user wrote it: a flag's text as typed; a TOML value with its
    kind when the kind alone can be the mistake (a table, a list, true/false)."""
    if where.startswith("--"):
        return str(value)
    kind = {dict: "a table", list: "a list", bool: "a boolean"}.get(type(value))
    return f"{kind} {value!r}" if kind else repr(value)


def _int(setting: Setting, minimum: int, auto: str | None = None) -> int | str:
    """An integer >= minimum (TOML integer or its decimal text); `auto` also allows that word."""
    value, where = setting
    if auto is not None and value == auto:
        return auto
    wanted = f"an integer >= {minimum}" + (f" or \"{auto}\"" if auto else "")
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            pass
    if number is None or number < minimum:
        raise UserError(f"{where} must be {wanted}, got {_describe(value, where)}")
    return number


def _choice(setting: Setting, allowed: tuple[str, ...]) -> str:
    value, where = setting
    if not isinstance(value, str) or value not in allowed:
        raise UserError(f"{where} must be one of {', '.join(allowed)}; got {_describe(value, where)}")
    return value


def _text(setting: Setting, what: str) -> str:
    value, where = setting
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where} must be {what}; got {_describe(value, where)}")
    return value


def _bool(setting: Setting) -> bool:
    value, where = setting
    if not isinstance(value, bool):
        raise UserError(f"{where} must be true or false; got {_describe(value, where)}")
    return value


def _get(values: dict[str, Setting], defaults: Any, section: str, key: str) -> Setting:
    return values.get(key, (getattr(defaults, key), f"default {section}.{key}"))


def _validate_extract(values: dict[str, Setting]) -> ExtractConfig:
    cfg = ExtractConfig()
    get = partial(_get, values, cfg, "extract")
    workers = _int(get("workers"), 0, auto="auto") if "workers" in values else None
    batch_size = _int(get("batch_size"), 1, auto="auto") if "batch_size" in values else None
    actors = _int(get("ray_actors"), 1, auto="auto") if "ray_actors" in values else None
    return replace(
        cfg,
        model=_choice(get("model"), MODEL_NAMES),
        weights=_text(get("weights"), "auto, imagenet, oxford, random or the path of a VGG16 state dict"),
        resize=_choice(get("resize"), RESIZE_MODES),
        batch_size=None if batch_size == "auto" else batch_size,
        workers=None if workers == "auto" else workers,
        device=_choice(get("device"), DEVICES),
        precision=_choice(get("precision"), PRECISIONS),
        jpeg_decoder=_choice(get("jpeg_decoder"), JPEG_DECODERS),
        executor=_choice(get("executor"), EXECUTORS),
        ray_address=_text(get("ray_address"), "auto, local or HOST:PORT of a Ray cluster's head"),
        ray_actors=None if actors == "auto" else actors,
    )


def _validate_render(values: dict[str, Setting]) -> RenderConfig:
    cfg = RenderConfig()
    return replace(cfg, palette=_bool(_get(values, cfg, "render", "palette")))


def parse_param(value: Any, loss: str, where: str) -> float | str:
    """A loss parameter is a positive finite number or the word "auto"."""
    if value == "auto":
        return "auto"
    wrong = UserError(f"{where} ({PARAM_NAME[loss]}) must be a positive number or \"auto\", "
                      f"got {_describe(value, where)}")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise wrong
    try:
        number = float(value)
    except ValueError:
        raise wrong from None
    if not math.isfinite(number) or number <= 0:
        raise wrong
    return number


def _losses(setting: Setting) -> tuple[str, ...]:
    value, where = setting
    names = [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise UserError(f"{where} must be a list of loss names or a comma-separated string, "
                        f"got {_describe(value, where)}")
    if not names:
        raise UserError(f"{where} is empty; choose from {', '.join(LOSS_NAMES)}")
    for loss in names:
        if loss not in LOSS_NAMES:
            raise UserError(f"{where}: unknown loss {loss!r}; choose from {', '.join(LOSS_NAMES)}")
    if len(set(names)) != len(names):
        raise UserError(f"{where} lists a loss twice: {', '.join(names)}")
    return tuple(names)


def _validate_params(given: dict[str, Setting]) -> dict[str, float | str]:
    params = dict(ClusterConfig().params)
    for loss, (value, where) in given.items():
        if loss not in PARAM_NAME:
            raise UserError(f"{where}: only {', '.join(PARAM_NAME)} take a parameter")
        params[loss] = parse_param(value, loss, where)
    return params


def _validate_cluster(values: dict[str, Setting], params: dict[str, Setting]) -> ClusterConfig:
    cfg = ClusterConfig()
    get = partial(_get, values, cfg, "cluster")
    origins = {key: where for key, (_, where) in values.items()}
    origins.update({f"params.{loss}": where for loss, (_, where) in params.items()})
    return replace(
        cfg,
        k=_int(get("k"), 1, auto="auto"),
        losses=_losses(get("losses")),
        normalize=_choice(get("normalize"), NORMALIZATIONS),
        seed=_int(get("seed"), 0),
        n_init=_int(get("n_init"), 1),
        max_iter=_int(get("max_iter"), 1),
        device=_choice(get("device"), DEVICES),
        exact=_bool(get("exact")),
        params=_validate_params(params),
        origins=origins,
    )
