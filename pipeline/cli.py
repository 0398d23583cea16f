"""Command line: argument parsing only; each subcommand calls one stage function."""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from .errors import UserError
from .layout import Layout, default_output


def _default_out(photos: str) -> Path:
    return default_output(photos)


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None,
                   help="TOML run configuration (default: ./pipeline.toml when present)")


def _add_out(p: argparse.ArgumentParser) -> None:
    """The output folder a reading stage works in: from --out, else from the photo folder."""
    p.add_argument("photos", nargs="?", default=None, metavar="PHOTOS",
                   help="the photo folder given to extract; its output folder is outputs/<folder name>, "
                        "as extract chose it")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder of a previous extract (wins over PHOTOS; default: outputs/<PHOTOS "
                        "folder name>, or outputs/sample when neither is given and it exists)")


class _DeprecatedAlias(argparse.Action):
    """A hidden old spelling of an option: works, and says on stderr what to write instead."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"photoclust: note: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("photoclust")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def _add_extract_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="the network that embeds the photos: vgg16 (default, 512-d) | efficientnet-lite0 (1280-d, "
                        "about 5x faster on a CPU) | resnet18, resnet50, efficientnet_b0, convnext_tiny, vit_b_16 "
                        "(torchvision's; weights from the torch hub cache); `photoclust models` lists them")
    p.add_argument("--weights", default=None,
                   help="auto | imagenet | oxford (VGG16 only) | random | PATH to a state dict of the --model")
    p.add_argument("--resize", default=None,
                   help="crop: resize 256 + center crop 224 (default); squash: 224x224 like the tutorial")
    p.add_argument("--batch-size", default=None,
                   help="images per forward pass: auto (default: 16, on a CUDA GPU what fits, up to 256) or a number")
    p.add_argument("--workers", default=None, help="decoding processes (default auto)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | mps")
    p.add_argument("--precision", default=None,
                   help="auto (bf16 where the CPU or GPU computes it natively, else fp32) | fp32 | bf16")
    p.add_argument("--jpeg-decoder", default=None,
                   help="auto (default: Pillow in the decoding workers) | pillow | device (JPEGs decoded where the "
                        "model runs: nvJPEG on a CUDA GPU)")
    p.add_argument("--executor", default=None,
                   help="local (default): embed on this machine | ray: on a Ray cluster (pip install "
                        "'photoclust[ray]'; every node must see the photo folder at the same path)")
    p.add_argument("--ray-address", default=None,
                   help="with --executor ray: auto (default: RAY_ADDRESS, or the cluster `ray start` made on this "
                        "machine) | HOST:PORT of the head | local (a one-machine Ray for this run)")
    p.add_argument("--ray-actors", default=None,
                   help="with --executor ray: embedders to start (default auto: one per GPU of the cluster, "
                        "else one per CPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of --weights random")


def _add_cluster_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """Cluster options; `run` prefixes the two that extract also has (seed, device)."""
    p.add_argument("--k", default=None, help="number of clusters, or auto: the k `sweep` suggested")
    p.add_argument("--losses", default=None,
                   help="comma-separated: square,absolute,huber,pseudo_huber,correntropy,epsilon_insensitive")
    p.add_argument("--normalize", default=None,
                   help="l2: unit-length rows (default); none: raw features, as the tutorial")
    p.add_argument(f"--{prefix}seed", dest="cluster_seed", default=None, help="clustering seed")
    p.add_argument("--n-init", default=None, help="k-means++ restarts; the lowest objective wins")
    p.add_argument("--max-iter", default=None, help="iterations per restart (default 100)")
    p.add_argument(f"--{prefix}device", dest="cluster_device", default=None, help="auto | cpu | cuda | mps")
    p.add_argument("--exact", action="store_true", default=None,
                   help="every iteration on every point, however many (default: from 20,000 photos up, "
                        "restarts on a random sample, then a few steps on all; pipeline.toml: [cluster] exact)")
    p.add_argument("--param", action="append", default=[], metavar="LOSS=VALUE",
                   help="a loss parameter, a number or auto, e.g. --param huber=0.05 (repeatable)")


def _add_palette_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-palette", action="store_true",
                   help="no strip of each cluster's dominant colours on the representatives sheet and the cluster "
                        "pages (pipeline.toml: [render] palette = false)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="photoclust", description=(
        "Turn a folder of photos into clusters you can look at: VGG16 (or EfficientNet-Lite0, ...) embeddings, "
        "k-means under six losses, contact sheets."))
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                        help="print the version of photoclust and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument("--no-wait", action="store_true",
                         help="if another run is using the output folder, stop at once instead of waiting")

    ext = sub.add_parser("extract", parents=[waiting], help="embed every image under a folder (VGG16 512-d by default, --model for another network), incrementally")
    ext.add_argument("photos", help="folder of photos (searched recursively)")
    ext.add_argument("--out", type=Path, default=None, help="output folder (default: outputs/<folder name>)")
    _add_config(ext)
    _add_extract_options(ext)
    ext.set_defaults(run=_run_extract)

    mod = sub.add_parser("models", help="the networks --model can embed photos with: feature dimension, licence, "
                                        "where the weights come from and whether they are here")
    mod.set_defaults(run=_run_models)

    clu = sub.add_parser("cluster", parents=[waiting], help="cluster the cached features under each configured loss (opens no image)")
    _add_out(clu)
    _add_config(clu)
    _add_cluster_options(clu)
    clu.add_argument("--force", action="store_true", help="refit even when the inputs are unchanged")
    clu.set_defaults(run=_run_cluster)

    rep = sub.add_parser("represent", parents=[waiting], help="representative and ranked members of every cluster (opens no image)")
    _add_out(rep)
    rep.add_argument("--losses", default=None, help="comma-separated losses (default: every clustered loss)")
    rep.set_defaults(run=_run_represent)

    dup = sub.add_parser("dupes", parents=[waiting],
                         help="exact and near-duplicate photos -> duplicates.csv (opens no image)")
    _add_out(dup)
    dup.add_argument("--threshold", default=None, metavar="T",
                     help="cosine similarity of the features at or above which two photos are near-duplicates, "
                          "in (0, 1] (default: the model's own, calibrated by make bench-dupes: 0.86 for vgg16, 0.82 for "
                          "efficientnet-lite0, 0.86 for the others)")
    dup.set_defaults(run=_run_dupes)

    ren = sub.add_parser("render", parents=[waiting], help="contact sheets (PNG), the map (site/map.html) and index.html (opens only the photos drawn)")
    _add_out(ren)
    ren.add_argument("--losses", default=None, help="comma-separated losses (default: every clustered loss)")
    ren.add_argument("--max-per-sheet", type=int, default=None, help="members drawn per cluster sheet (default 120)")
    ren.add_argument("--map-method", default="pca", help="projection of the map page (site/map.html): pca (default), "
                     "or umap / tsne with the optional extra: pip install 'photoclust[map]'")
    _add_palette_option(ren)
    _add_config(ren)
    ren.set_defaults(run=_run_render)

    run = sub.add_parser("run", parents=[waiting], help="extract, cluster, represent, dupes and render in one go")
    run.add_argument("photos", help="folder of photos (searched recursively)")
    run.add_argument("--out", type=Path, default=None, help="output folder (default: outputs/<folder name>)")
    _add_config(run)
    _add_extract_options(run)
    _add_cluster_options(run, prefix="cluster-")
    _add_palette_option(run)
    run.set_defaults(run=_run_all)

    swp = sub.add_parser("sweep", parents=[waiting], help="fit a range of k and suggest one (objective curve + silhouette)")
    _add_out(swp)
    _add_config(swp)
    swp.add_argument("--k-range", dest="k_range", default=None, metavar="FIRST:LAST[:STEP]",
                     help="the k to fit, inclusive, e.g. 2:40 or 2:40:2 (default 2:40)")
    swp.add_argument("--k", dest="k_range", action=_DeprecatedAlias, new="--k-range", default=None)
    swp.add_argument("--losses", default=None,
                     help="comma-separated losses to sweep, e.g. square,huber (default square)")
    swp.add_argument("--loss", dest="losses", action=_DeprecatedAlias, new="--losses", default=None)
    swp.add_argument("--normalize", default=None,
                     help="l2: unit-length rows (default); none: raw features, as the tutorial")
    swp.add_argument("--seed", dest="cluster_seed", default=None, help="clustering seed")
    swp.add_argument("--n-init", default=None, help="k-means++ restarts per k; the lowest objective wins")
    swp.add_argument("--param", action="append", default=[], metavar="LOSS=VALUE",
                     help="a loss parameter, a number or auto, e.g. --param huber=0.05 (repeatable)")
    swp.set_defaults(run=_run_sweep)

    ev = sub.add_parser("evaluate", parents=[waiting], help="score every clustering against labels (folder names or a CSV)")
    _add_out(ev)
    ev.add_argument("--labels", default="folder",
                    help="folder: the first folder under the photo root (default); or a CSV with path,label")
    ev.add_argument("--models", default=None, metavar="A,B",
                    help="compare backbones: embed the run's photos with each model (e.g. vgg16,efficientnet-lite0; "
                         "each in models/<model>/ of the output folder, cached), cluster with the config's settings "
                         "and print NMI per loss side by side (-> evaluation_models.csv)")
    _add_config(ev)
    ev.set_defaults(run=_run_evaluate)

    exp = sub.add_parser("export", parents=[waiting], help="lay a clustering out as folders of links (or copies)")
    _add_out(exp)
    exp.add_argument("--loss", required=True, metavar="NAME",
                     help="the one loss whose clustering is exported, e.g. huber (a single name, "
                          "unlike the comma-separated --losses of the other stages)")
    exp.add_argument("--to", type=Path, required=True, help="new or empty folder (or an earlier export)")
    exp.add_argument("--copy", action="store_true", help="copy the photos instead of linking them")
    exp.set_defaults(run=_run_export)

    asg = sub.add_parser("assign", parents=[waiting],
                         help="place new photos into a run's existing clusters (no refit; the run is not changed)")
    asg.add_argument("new", metavar="NEW_PHOTOS", help="folder of new photos (searched recursively)")
    asg.add_argument("--out", type=Path, default=None,
                     help="output folder of the run whose clusters they join (default: outputs/sample if it exists)")
    _add_config(asg)
    asg.add_argument("--losses", default=None, help="comma-separated losses (default: every clustered loss)")
    asg.add_argument("--weights", default=None,
                     help="only for a run embedded with a weights file: that PATH (other weights are refused; "
                          "by default the run's own weights, from its cache_key.json)")
    asg.add_argument("--batch-size", default=None,
                     help="images per forward pass: auto (default: 16, on a CUDA GPU what fits, up to 256) or a number")
    asg.add_argument("--workers", default=None, help="decoding processes (default auto)")
    asg.add_argument("--device", default=None, help="auto | cpu | cuda | mps")
    asg.set_defaults(run=_run_assign)

    pal = sub.add_parser("palette", parents=[waiting],
                         help="the dominant colours of a photo, or of each photo of a folder and of the whole folder "
                              "(swatch PNG, CSV, JSON); the photos are only read")
    pal.add_argument("target", metavar="IMAGE_OR_FOLDER", help="a photo, or a folder of photos (searched recursively)")
    pal.add_argument("--k", default="6", help="how many colours (default 6; fewer when the image has fewer)")
    _add_loss_option(pal)
    pal.add_argument("--space", default="lab",
                     help="lab: cluster in CIELAB, where distance follows perceived difference (default); "
                          "rgb: in sRGB 0-255")
    pal.add_argument("--out", type=Path, default=None,
                     help="folder for the palette files (default: outputs/palette/<photo or folder name>)")
    pal.add_argument("--seed", default="0", help="k-means++ seed (default 0): the same seed gives the same bytes")
    pal.set_defaults(run=_run_palette)

    qua = sub.add_parser("quantize", parents=[waiting],
                         help="a photo redrawn with k colours, saved as an indexed PNG; PSNR and file sizes")
    qua.add_argument("image", metavar="IMAGE", help="the photo (read only: never written over)")
    qua.add_argument("--k", default="16", metavar="K",
                     help="number of colours, 1 to 256 (default 16); or a comma-separated list such as "
                          "2,4,8,16,32: one PNG strip with the image at each k, its k and PSNR under it")
    _add_colour_options(qua)
    qua.add_argument("--space", default="lab",
                     help="where colours are fitted and compared: lab (CIELAB, perceptual distances; default) "
                          "or rgb (sRGB 0-255)")
    qua.add_argument("--dither", default="none",
                     help="none (default): each pixel takes its cluster's colour; floyd-steinberg: error "
                          "diffusion onto the fitted palette (in --space)")
    qua.add_argument("-o", "--output", type=Path, default=None, metavar="OUT.png",
                     help="the PNG to write (default: outputs/quantize/<name>_k<K>.png); never the input")
    qua.set_defaults(run=_run_quantize)

    seg = sub.add_parser("segment", parents=[waiting],
                         help="a photo cut into k regions by colour and position: a label map and a side-by-side")
    seg.add_argument("image", metavar="IMAGE", help="the photo (read only: never written over)")
    seg.add_argument("--k", default="8", metavar="K", help="number of segments, 1 to 256 (default 8)")
    seg.add_argument("--xy-weight", default="1", metavar="W",
                     help="how much position counts against colour, 0 to 1000 (default 1: as much as colour): "
                          "0 clusters by colour alone, larger makes compact regions")
    _add_colour_options(seg)
    seg.add_argument("-o", "--output", type=Path, default=None, metavar="DIR",
                     help="folder for <name>_labels.png (the label map: pixel value = segment, 0 the largest) "
                          "and <name>_segments.png (photo | segments in their mean colour); default "
                          "outputs/segment")
    seg.set_defaults(run=_run_segment)

    pat = sub.add_parser("patches", parents=[waiting],
                         help="a dictionary of small image patches by k-means for many K: MSE curve, atlases, "
                              "reconstructions (MNIST-style IDX file or a folder of images)")
    pat.add_argument("source", metavar="SOURCE",
                     help="an IDX image file as MNIST ships it (.gz or not; labels and the t10k test file beside "
                          "it are used when present), or a folder of images (read as greyscale)")
    pat.add_argument("--size", default="5", help="patch side in pixels, 1 to 32 (default 5: 5 x 5 patches)")
    pat.add_argument("--k", default=None, metavar="KS",
                     help="dictionary sizes: K values or FIRST:LAST[:STEP] ranges, comma-separated "
                          "(default 100:1000:100,2000:10000:1000)")
    _add_loss_option(pat)
    pat.add_argument("--out", type=Path, default=None,
                     help="output folder (default: outputs/patches/<source name>); finished K there are reused")
    pat.add_argument("--show", default="8", help="images reconstructed per split (train, test) at every K (default 8)")
    pat.add_argument("--seed", default="0", help="seed of the subsamples and initial centers (default 0)")
    pat.add_argument("--backend", default="auto",
                     help="nearest-center search: auto (torch on a GPU, faiss on the CPU when installed, else "
                          "torch), torch, or faiss (pip install 'photoclust[faiss]')")
    pat.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda | mps")
    pat.set_defaults(run=_run_patches)
    return parser


def _add_loss_option(p: argparse.ArgumentParser) -> None:
    """--loss of the commands that fit one clustering (the names are spelled out here rather
    than read from the loss registry, which would import torch for every --help)."""
    p.add_argument("--loss", default="square",
                   help="the clustering loss: square (default), absolute, huber, pseudo_huber, correntropy, "
                        "epsilon_insensitive (their parameters: auto)")


def _add_colour_options(p: argparse.ArgumentParser) -> None:
    _add_loss_option(p)
    p.add_argument("--seed", default="0", help="seed of the k-means++ restarts (and of segment's pixel sample; "
                                                "default 0): the same seed gives the same bytes")


def _parse_params(items: list[str]) -> dict[str, str] | None:
    params = {}
    for item in items:
        loss, sep, value = item.partition("=")
        if not sep or not value.strip() or not loss.strip():
            raise UserError(f"--param {item!r}: write LOSS=VALUE, e.g. --param huber=0.05 or --param correntropy=auto")
        params[loss.strip()] = value.strip()
    return params or None


SAMPLE_OUT = Path("outputs") / "sample"


def _out(args: argparse.Namespace) -> Path:
    """extract and run: --out, else outputs/<name of the photo folder>."""
    return args.out if args.out is not None else _default_out(args.photos)


def _stage_out(args: argparse.Namespace) -> Path:
    """The output folder a reading stage works in: --out, else the one extract made for the
    PHOTOS folder, else outputs/sample if it exists (never silently another run's folder)."""
    if args.out is not None:
        return args.out
    if args.photos:
        out = _default_out(args.photos)
        if not out.is_dir():
            raise UserError(f"{out}: no output folder for the photos in {args.photos}; run "
                            f"`photoclust extract {args.photos}` first, or pass --out")
        return out
    if SAMPLE_OUT.is_dir():
        return SAMPLE_OUT
    raise UserError(f"which output folder? pass the photo folder (`photoclust {args.command} PHOTOS`, "
                    "as given to extract) or --out FOLDER")


def _losses(value: str | None) -> list[str] | None:
    return [s.strip() for s in value.split(",") if s.strip()] if value else None


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def _load(args: argparse.Namespace, extract: bool = False, cluster: bool = False):
    from .config import load_config

    ext = dict(model=args.model, weights=args.weights, resize=args.resize, batch_size=args.batch_size, workers=args.workers,
               device=args.device, precision=args.precision, jpeg_decoder=args.jpeg_decoder, executor=args.executor,
               ray_address=args.ray_address, ray_actors=args.ray_actors) if extract else None
    clu = None
    if cluster:  # sweep has only some of the cluster options
        clu = {key: getattr(args, attr, None) for key, attr in (
            ("k", "k"), ("losses", "losses"), ("normalize", "normalize"), ("seed", "cluster_seed"),
            ("n_init", "n_init"), ("max_iter", "max_iter"), ("device", "cluster_device"), ("exact", "exact"))}
        params = _parse_params(args.param)
        if params:
            clu["params"] = params
    ren = {"palette": False if getattr(args, "no_palette", False) else None}
    return load_config(args.config, extract=ext, cluster=clu, render=ren,
                       flags={**_cluster_flags(args), "render.palette": "--no-palette"})


def _cluster_flags(args: argparse.Namespace) -> dict[str, str]:
    """`run` spells two cluster flags --cluster-seed and --cluster-device (extract has --seed, --device)."""
    if args.command != "run":
        return {}
    return {"cluster.seed": "--cluster-seed", "cluster.device": "--cluster-device"}


def _locked(args: argparse.Namespace, out: Path, create: bool = False):
    """The output folder's lock for the whole command (see lock.py); `create` for extract and run."""
    from .lock import output_lock

    return output_lock(out, wait=not args.no_wait, create=create, log=_log)


def _extract(args: argparse.Namespace, cfg, out: Path) -> None:
    from .extract import extract_folder

    report = extract_folder(Path(args.photos), out, cfg.extract, seed=args.seed, log=_log)
    for path, reason in report.unreadable_files[:10]:
        print(f"  unreadable: {path}: {reason}", file=sys.stderr)
    if report.unreadable > 10:
        print(f"  ... and {report.unreadable - 10} more", file=sys.stderr)
    print(f"{report.summary()}; decoded {report.decoded}, reused {report.reused} cached"
          f"{f', dropped {report.dropped} deleted' if report.dropped else ''} in {report.seconds:.1f} s -> {out}")


def _cluster(cfg, out: Path, force: bool = False) -> int:
    """Run the cluster stage; returns how many losses were refitted."""
    from .cluster import cluster_run

    results = cluster_run(out, cfg.cluster, log=_log, force=force)
    fitted = sum(not r.reused for r in results)
    print(f"clustered under {len(results)} loss(es) ({fitted} fitted, {len(results) - fitted} up to date) "
          f"-> {out}/clusters/")
    return fitted


def _render(out: Path, losses: list[str] | None, max_per_sheet: int | None, map_method: str = "pca",
            palette: bool = True) -> None:
    from .projection import check_method
    from .render import MAX_PER_SHEET, render_run
    from .report import write_index

    if max_per_sheet is not None and max_per_sheet < 1:
        raise UserError(f"--max-per-sheet must be at least 1, got {max_per_sheet}")
    check_method(map_method)
    report = render_run(out, losses, max_per_sheet=max_per_sheet or MAX_PER_SHEET, log=_log, map_method=map_method,
                        palette=palette)
    for path, reason in report.missing[:5]:
        print(f"  not drawn: {path}: {reason}", file=sys.stderr)
    index = write_index(out)
    print(f"{len(report.sheets)} sheets; open {index.resolve().as_uri()}")


def _run_models(args: argparse.Namespace) -> int:
    from .backbones import REGISTRY, available

    for b in REGISTRY.values():
        print(f"{b.name}: {b.feature_dim}-d; {b.description}\n  weights: {b.weights_from} [{available(b)}]\n"
              f"  SHA-256: {b.weights_sha256}\n  licence: {b.licence}")
    return 0


def _run_extract(args: argparse.Namespace) -> int:
    cfg, out = _load(args, extract=True), _out(args)
    with _locked(args, out, create=True):
        _extract(args, cfg, out)
    return 0


def _run_cluster(args: argparse.Namespace) -> int:
    cfg, out = _load(args, cluster=True), _stage_out(args)
    with _locked(args, out):
        refreshed = bool(_cluster(cfg, out, force=args.force)) and Layout(out).index.is_file()
        if refreshed:  # under the same lock: the page must not show the refitted losses' old sheets
            from .report import write_index

            write_index(out)
    if refreshed:
        print("  refitted losses have no sheets yet: `make represent sheets` (python -m pipeline render) draws them")
    return 0


def _run_represent(args: argparse.Namespace) -> int:
    from .represent import represent_run

    out = _stage_out(args)
    with _locked(args, out):
        results = represent_run(out, _losses(args.losses), log=_log)
    print(f"representatives of {len(results)} clustering(s) -> {out}/clusters/")
    return 0


def _run_dupes(args: argparse.Namespace) -> int:
    from .dupes import check_threshold, dupes_run

    threshold = check_threshold(args.threshold) if args.threshold is not None else None
    out = _stage_out(args)
    with _locked(args, out):
        result = dupes_run(out, threshold, log=_log)
    print(f"{result.groups} duplicate group(s), {result.photos} photos -> {Layout(out).duplicates}")
    return 0


def _run_render(args: argparse.Namespace) -> int:
    cfg = _load(args)
    out = _stage_out(args)
    with _locked(args, out):
        _render(out, _losses(args.losses), args.max_per_sheet, args.map_method, palette=cfg.render.palette)
    return 0


def _run_all(args: argparse.Namespace) -> int:
    from .represent import represent_run

    cfg = _load(args, extract=True, cluster=True)
    out = _out(args)
    with _locked(args, out, create=True):
        _extract(args, cfg, out)
        _cluster(cfg, out)
        represent_run(out, list(cfg.cluster.losses), log=_log)
        from .dupes import dupes_run

        dupes_run(out, log=_log)
        _render(out, list(cfg.cluster.losses), None, palette=cfg.render.palette)
    return 0


def _run_sweep(args: argparse.Namespace) -> int:
    from .sweep import DEFAULT_K_RANGE, sweep_run

    out = _stage_out(args)
    cfg = _load(args, cluster=True).cluster
    with _locked(args, out):
        results = sweep_run(out, cfg, args.k_range or DEFAULT_K_RANGE, _losses(args.losses), log=_log)
    for r in results:
        print(f"{r.loss}: suggested k = {r.suggested} (knee {r.knee}) -> {out}/sweep/{r.loss}.png; "
              "`cluster --k auto` uses it")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_run
    from .report import write_index

    out = _stage_out(args)
    if args.models is not None:
        return _evaluate_models(args, out)
    with _locked(args, out):
        result = evaluate_run(out, args.labels, log=_log)
        if Layout(out).index.is_file():
            write_index(out)  # under the same lock: no other run's stage slips in between
    print(result.markdown)
    best = result.table.sort_values("nmi", ascending=False).iloc[0]
    print(f"best NMI: {best['loss']} ({best['nmi']:.3f}); {int(best['labelled'])} labelled photos in "
          f"{int(best['classes'])} classes -> {out}/evaluation.csv")
    return 0


def _evaluate_models(args: argparse.Namespace, out: Path) -> int:
    from .config import load_config
    from .evaluate import evaluate_models

    cfg = load_config(args.config)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    with _locked(args, out):
        result = evaluate_models(out, models, cfg, args.labels, log=_log)
    print(result.markdown)
    print(f"-> {Layout(out).evaluation_models}")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from .export import export_clusters
    from .losses import check_loss

    out = _stage_out(args)
    with _locked(args, out):
        report = export_clusters(out, check_loss(args.loss), args.to, copy=args.copy)
    what = "copies" if args.copy else "links"
    print(f"{report.files} {what} in {report.clusters} cluster folders -> {args.to}"
          f"{f' ({report.renamed} renamed to avoid a name clash)' if report.renamed else ''}"
          f"{f'; {len(report.missing)} photos no longer exist' if report.missing else ''}")
    if report.kept:
        print(f"  kept {len(report.kept)} file(s) in {args.to} that an earlier export made but that have changed "
              f"since (first: {report.kept[0]})", file=sys.stderr)
    return 0


def _run_assign(args: argparse.Namespace) -> int:
    from .assign import assign_run
    from .config import load_config

    out = args.out if args.out is not None else SAMPLE_OUT
    if args.out is None and not SAMPLE_OUT.is_dir():
        raise UserError("which run? pass --out FOLDER, the output folder whose clusters the new photos join")
    cfg = load_config(args.config, extract=dict(batch_size=args.batch_size, workers=args.workers,
                                                device=args.device)).extract
    with _locked(args, out):
        report = assign_run(out, Path(args.new), cfg, losses=_losses(args.losses), weights=args.weights, log=_log)
    print(f"{report.placed} new photo(s) placed under {len(report.losses)} loss(es)"
          f"{f', {len(report.unreadable)} unreadable' if report.unreadable else ''} -> {Layout(out).assigned}")
    return 0


def _run_palette(args: argparse.Namespace) -> int:
    from .layout import default_palette_output
    from .palette import check_out, check_settings, palette_run

    k = _integer(args.k, "--k", 1)
    seed = _integer(args.seed, "--seed", 0)
    check_settings(k, args.loss, args.space)
    target = Path(args.target)
    if not target.exists():
        raise UserError(f"{target}: no such photo or folder")
    out = args.out if args.out is not None else default_palette_output(target)
    check_out(target, out)
    with _locked(args, out, create=True):
        report = palette_run(target, out, k=k, loss=args.loss, space=args.space, seed=seed, log=_log)
    what = "the photo" if not target.is_dir() else f"{report.photos} photo(s) and the whole folder"
    print(f"palette of {what}"
          f"{f' ({len(report.unreadable)} unreadable, left out)' if report.unreadable else ''} -> {out}")
    return 0


def _integer(value: str, flag: str, minimum: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number < minimum:
        raise UserError(f"{flag} must be an integer >= {minimum}, got {value}")
    return number

def _colour_lock(args: argparse.Namespace, folder: Path, names: list[str]):
    """The lock of the folder a colour command writes its files `names` into: made when
    missing, marked as an output folder (which finding photos skips) only when it is
    photoclust's default, not one the user chose with -o; only those files' temporaries
    left by a killed run are removed (the folder is never walked)."""
    from .lock import output_lock

    return output_lock(folder, wait=not args.no_wait, create=True, marker=args.output is None, targets=names,
                       log=_log)


def _run_quantize(args: argparse.Namespace) -> int:
    from .colour import check_space
    from .losses import check_loss
    from .quantize import check_dither, check_output, default_output, parse_ks, quantize_file, read_image

    ks, space, dither, loss = parse_ks(args.k), check_space(args.space), check_dither(args.dither), \
        check_loss(args.loss)
    seed = _integer(args.seed, "--seed", 0)
    output = args.output if args.output is not None else default_output(Path(args.image), ks, loss, space, dither)
    check_output(Path(args.image), output)
    image = read_image(Path(args.image))
    with _colour_lock(args, output.parent, [output.name]):
        report = quantize_file(Path(args.image), ks, output, loss=loss, space=space, dither=dither,
                               seed=seed, image=image, log=_log)
    for line in report.lines(Path(args.image)):
        print(line)
    return 0


def _run_segment(args: argparse.Namespace) -> int:
    from .losses import check_loss
    from .layout import SEGMENT_FOLDER
    from .segment import check_k, check_outputs, check_xy_weight, segment_file
    from .quantize import read_image

    k, weight, loss = check_k(args.k), check_xy_weight(args.xy_weight), check_loss(args.loss)
    seed = _integer(args.seed, "--seed", 0)
    folder = args.output if args.output is not None else SEGMENT_FOLDER
    paths = check_outputs(Path(args.image), folder)
    image = read_image(Path(args.image))
    with _colour_lock(args, folder, [p.name for p in paths]):
        seg, paths = segment_file(Path(args.image), folder, k=k, xy_weight=weight, loss=loss, seed=seed,
                                  image=image)
    shrunk = f" (the photo has too few distinct points for {k})" if seg.k < k else ""
    print(f"{seg.k} segments{shrunk}, largest {seg.sizes[0] / seg.sizes.sum():.0%} of the photo; fitted on "
          f"{seg.sampled} pixels -> {paths[0]}, {paths[1]}")
    return 0


def _run_patches(args: argparse.Namespace) -> int:
    from .layout import default_patches_output
    from .patches import DEFAULT_KS, check_size, parse_ks, patches_run

    size = check_size(_integer(args.size, "--size", 1))
    ks = parse_ks(args.k if args.k is not None else DEFAULT_KS)
    show = _integer(args.show, "--show", 0)
    seed = _integer(args.seed, "--seed", 0)
    source = Path(args.source)
    if not source.exists():
        raise UserError(f"{source}: no such IDX file or folder of images")
    out = args.out if args.out is not None else default_patches_output(source)
    with _locked(args, out, create=True):
        report = patches_run(source, out, ks=ks, size=size, loss=args.loss, seed=seed, show=show,
                             backend=args.backend, device=args.device, log=_log)
    print(f"{len(report.fitted)} dictionaries fitted, {len(report.reused)} reused; {report.patches:,} patches "
          f"({report.blank:,} blank dropped)"
          f"{f'; knee at K = {report.knee}' if report.knee is not None else ''} -> {out}")
    return 0


_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space and rerun (finished work is kept)",
    errno.EDQUOT: "the disk quota is used up: free some space and rerun (finished work is kept)",
    errno.EROFS: "the folder is read-only: choose a writable --out",
    errno.EACCES: "no permission: choose a folder you can write (--out) or fix its permissions",
    errno.EPERM: "not permitted: choose a folder you can write (--out) or fix its permissions",
    errno.ENOTDIR: "part of this path is a file, not a folder: choose another path",
    errno.EISDIR: "a folder stands where a file should be: move it away or choose another --out",
    errno.ENOENT: "no such file or folder: check the path",
    errno.ENAMETOOLONG: "the path is too long: choose a shorter --out",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error: the path, what went wrong, what to do."""
    where = f"{exc.filename}: " if exc.filename else ""
    what = exc.strerror or str(exc)
    advice = _ADVICE.get(exc.errno)
    return f"{where}{what}" + (f"; {advice}" if advice else "")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as exc:
        print(f"photoclust: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only folder, a file where a folder should be, ...
        print(f"photoclust: error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("photoclust: interrupted; finished batches are saved, rerun the same command to resume",
              file=sys.stderr)
        return 130
