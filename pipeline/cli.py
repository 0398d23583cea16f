"""Command line: argument parsing only; each subcommand calls one stage function."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UserError


def _default_out(photos: str) -> Path:
    return Path("outputs") / (Path(photos).resolve().name or "photos")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None,
                   help="TOML run configuration (default: ./pipeline.toml when present)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="photoclust", description=(
        "Turn a folder of photos into clusters you can look at: VGG16 embeddings, "
        "k-means under six losses, contact sheets."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")

    ext = sub.add_parser("extract", help="embed every image under a folder (VGG16, 512-d), incrementally")
    ext.add_argument("photos", help="folder of photos (searched recursively)")
    ext.add_argument("--out", type=Path, default=None, help="output folder (default: outputs/<folder name>)")
    _add_config(ext)
    ext.add_argument("--weights", default=None,
                     help="auto | imagenet | oxford | random | PATH to a torchvision VGG16 state dict")
    ext.add_argument("--resize", choices=("crop", "squash"), default=None,
                     help="crop: resize 256 + center crop 224 (default); squash: 224x224 like the tutorial")
    ext.add_argument("--batch-size", type=int, default=None)
    ext.add_argument("--workers", default=None, help="decoding processes (default auto)")
    ext.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default=None)
    ext.add_argument("--seed", type=int, default=0, help="seed of --weights random")
    ext.set_defaults(run=_run_extract)

    clu = sub.add_parser("cluster", help="cluster the cached features under each configured loss (opens no image)")
    clu.add_argument("--out", type=Path, default=None,
                     help="output folder of a previous extract (default: outputs/sample)")
    _add_config(clu)
    clu.add_argument("--k", type=int, default=None, help="number of clusters")
    clu.add_argument("--losses", default=None,
                     help="comma-separated: square,absolute,huber,pseudo_huber,correntropy,epsilon_insensitive")
    clu.add_argument("--normalize", choices=("l2", "none"), default=None,
                     help="l2: unit-length rows (default); none: raw features, as the tutorial")
    clu.add_argument("--seed", type=int, default=None)
    clu.add_argument("--n-init", type=int, default=None, help="k-means++ restarts; the lowest objective wins")
    clu.add_argument("--max-iter", type=int, default=None)
    clu.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default=None)
    clu.add_argument("--param", action="append", default=[], metavar="LOSS=VALUE",
                     help="a loss parameter, a number or auto, e.g. --param huber=0.05 (repeatable)")
    clu.add_argument("--force", action="store_true", help="refit even when the inputs are unchanged")
    clu.set_defaults(run=_run_cluster)
    return parser


def _parse_params(items: list[str]) -> dict[str, str] | None:
    params = {}
    for item in items:
        loss, sep, value = item.partition("=")
        if not sep or not value:
            raise UserError(f"--param {item!r}: write LOSS=VALUE, e.g. --param huber=0.05 or --param correntropy=auto")
        params[loss.strip()] = value.strip()
    return params or None


def _run_cluster(args: argparse.Namespace) -> int:
    from .cluster import cluster_run
    from .config import load_config

    overrides = dict(k=args.k, losses=args.losses, normalize=args.normalize, seed=args.seed,
                     n_init=args.n_init, max_iter=args.max_iter, device=args.device)
    params = _parse_params(args.param)
    if params:
        overrides["params"] = params
    cfg = load_config(args.config, cluster=overrides)
    out = args.out or Path("outputs") / "sample"
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    results = cluster_run(out, cfg.cluster, log=log, force=args.force)
    fitted = sum(not r.reused for r in results)
    print(f"clustered under {len(results)} loss(es) ({fitted} fitted, {len(results) - fitted} up to date) "
          f"-> {out}/clusters/")
    return 0


def _run_extract(args: argparse.Namespace) -> int:
    from .config import load_config
    from .extract import extract_folder

    cfg = load_config(args.config, extract=dict(weights=args.weights, resize=args.resize,
                                                batch_size=args.batch_size, workers=args.workers,
                                                device=args.device))
    out = args.out or _default_out(args.photos)
    report = extract_folder(Path(args.photos), out, cfg.extract, seed=args.seed,
                            log=lambda msg: print(msg, file=sys.stderr))
    for path, reason in report.unreadable_files[:10]:
        print(f"  unreadable: {path}: {reason}", file=sys.stderr)
    if report.unreadable > 10:
        print(f"  ... and {report.unreadable - 10} more", file=sys.stderr)
    print(f"{report.summary()}; decoded {report.decoded}, reused {report.reused} cached"
          f"{f', dropped {report.dropped} deleted' if report.dropped else ''} in {report.seconds:.1f} s -> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as exc:
        print(f"photoclust: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("photoclust: interrupted; finished batches are saved, rerun the same command to resume",
              file=sys.stderr)
        return 130
