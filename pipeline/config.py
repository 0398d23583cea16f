"""One validated run configuration: TOML file + command-line overrides, checked once."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import UserError
from .losses import LOSS_NAMES, PARAM_NAME

DEFAULT_CONFIG = Path("pipeline.toml")
RESIZE_MODES = ("crop", "squash")
DEVICES = ("auto", "cpu", "cuda", "mps")
NORMALIZATIONS = ("l2", "none")


@dataclass(frozen=True)
class ExtractConfig:
    weights: str = "auto"
    resize: str = "crop"
    batch_size: int = 16
    workers: int | None = None  # None = auto
    device: str = "auto"


@dataclass(frozen=True)
class ClusterConfig:
    k: int | str = 4  # or "auto": the k a `sweep` suggested
    losses: tuple[str, ...] = LOSS_NAMES
    normalize: str = "l2"
    seed: int = 0
    n_init: int = 4
    max_iter: int = 100
    device: str = "auto"
    # loss name -> a positive number or "auto"; only the four robust losses have one.
    params: dict[str, float | str] = field(default_factory=lambda: {n: "auto" for n in PARAM_NAME})


@dataclass(frozen=True)
class Config:
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    source: str = "defaults"


def load_config(path: Path | None = None, extract: dict[str, Any] | None = None,
                cluster: dict[str, Any] | None = None) -> Config:
    """Read `path` (default ./pipeline.toml when it exists), apply overrides, validate.

    Overrides whose value is None are ignored, so argparse defaults of None mean
    "keep what the file says".
    """
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    if path is not None:
        if not Path(path).is_file():
            raise UserError(f"config file {path} not found: pass --config with an existing TOML file")
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not valid TOML ({exc}); fix the file or pass another --config") from None
        source = str(path)
    unknown = set(raw) - {"extract", "cluster"}
    if unknown:
        raise UserError(f"{source}: unknown section(s) {sorted(unknown)}; allowed: [extract], [cluster]")

    ext = _section(raw, "extract", ExtractConfig, source)
    clu = _section(raw, "cluster", ClusterConfig, source)
    ext.update({k: v for k, v in (extract or {}).items() if v is not None})
    overrides = {k: v for k, v in (cluster or {}).items() if v is not None}
    if "params" in overrides:  # per-loss overrides merge into the file's table
        overrides["params"] = {**clu.get("params", {}), **overrides["params"]}
    clu.update(overrides)
    return Config(extract=_validate_extract(ext, source), cluster=_validate_cluster(clu, source), source=source)


def _section(raw: dict[str, Any], name: str, cls: type, source: str) -> dict[str, Any]:
    section = dict(raw.get(name, {}))
    allowed = {f.name for f in fields(cls)}
    unknown = set(section) - allowed
    if unknown:
        raise UserError(f"{source}: unknown key(s) {sorted(unknown)} in [{name}]; allowed: {sorted(allowed)}")
    return section


def _int(value: Any, key: str, minimum: int, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UserError(f"{source}: {key} must be an integer >= {minimum}, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise UserError(f"{source}: {key} must be an integer >= {minimum}, got {value!r}") from None
    if number < minimum:
        raise UserError(f"{source}: {key} must be an integer >= {minimum}, got {number}")
    return number


def _choice(value: Any, key: str, allowed: tuple[str, ...], source: str) -> str:
    if value not in allowed:
        raise UserError(f"{source}: {key} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _validate_extract(values: dict[str, Any], source: str) -> ExtractConfig:
    cfg = ExtractConfig()
    weights = str(values.get("weights", cfg.weights))
    workers = values.get("workers", cfg.workers)
    workers = None if workers in (None, "auto") else _int(workers, "extract.workers", 0, source)
    return replace(
        cfg,
        weights=weights,
        resize=_choice(values.get("resize", cfg.resize), "extract.resize", RESIZE_MODES, source),
        batch_size=_int(values.get("batch_size", cfg.batch_size), "extract.batch_size", 1, source),
        workers=workers,
        device=_choice(values.get("device", cfg.device), "extract.device", DEVICES, source),
    )


def parse_param(value: Any, loss: str, source: str) -> float | str:
    """A loss parameter is a positive finite number or the word "auto"."""
    name = f"cluster.params.{loss} ({PARAM_NAME[loss]})"
    if value == "auto":
        return "auto"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{source}: {name} must be a positive number or \"auto\", got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise UserError(f"{source}: {name} must be a positive number or \"auto\", got {value!r}")
    return number


def _validate_cluster(values: dict[str, Any], source: str) -> ClusterConfig:
    cfg = ClusterConfig()
    losses = values.get("losses", cfg.losses)
    if isinstance(losses, str):
        losses = [s.strip() for s in losses.split(",") if s.strip()]
    losses = tuple(losses)
    if not losses:
        raise UserError(f"{source}: cluster.losses is empty; choose from {', '.join(LOSS_NAMES)}")
    for loss in losses:
        if loss not in LOSS_NAMES:
            raise UserError(f"{source}: unknown loss {loss!r} in cluster.losses; choose from {', '.join(LOSS_NAMES)}")
    if len(set(losses)) != len(losses):
        raise UserError(f"{source}: cluster.losses lists a loss twice: {', '.join(losses)}")

    params = dict(cfg.params)
    given = values.get("params", {})
    if not isinstance(given, dict):
        raise UserError(f"{source}: cluster.params must be a table like [cluster.params] huber = \"auto\"")
    for loss, value in given.items():
        if loss not in PARAM_NAME:
            raise UserError(f"{source}: cluster.params.{loss}: only {', '.join(PARAM_NAME)} take a parameter")
        params[loss] = parse_param(value, loss, source)

    return replace(
        cfg,
        k="auto" if values.get("k") == "auto" else _int(values.get("k", cfg.k), "cluster.k (or \"auto\")", 1, source),
        losses=losses,
        normalize=_choice(values.get("normalize", cfg.normalize), "cluster.normalize", NORMALIZATIONS, source),
        seed=_int(values.get("seed", cfg.seed), "cluster.seed", 0, source),
        n_init=_int(values.get("n_init", cfg.n_init), "cluster.n_init", 1, source),
        max_iter=_int(values.get("max_iter", cfg.max_iter), "cluster.max_iter", 1, source),
        device=_choice(values.get("device", cfg.device), "cluster.device", DEVICES, source),
        params=params,
    )
