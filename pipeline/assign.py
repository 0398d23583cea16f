"""`assign`: place new photos into a run's existing clusters, with no refit.

The new photos are embedded exactly as the run's were: the model, weights, geometry,
normalisation, precision and library versions come from the run's cache_key.json, and a
setup that would give another key (other weights, another torch) is refused rather than
mixed in. Under each clustered loss a new photo goes to its cheapest center with the
parameter the clustering used (summary.json), after the same row normalisation the
clustering applied (`cluster.normalize_features`); the loss math is `losses.assign` and
`losses.loss_to_centers`, the engine's own.

Writes assigned.csv only: path (the new photo's absolute path), loss, cluster,
loss_to_center, rank_among_members (how many of the cluster's members are nearer its
center: 0 means it would be the new representative) and clustering_fingerprint (the
summary.json fingerprint of the clustering it was placed into; `read_assigned` keeps only
the rows of clusterings that are still current). The run's features, manifest and
clusterings are never changed: the new photos do not become part of the run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from . import backbones, jpeg_device
from .cache import OK, load_embedded, read_key
from .cluster import check_current, normalize_features, read_summary
from .config import ExtractConfig
from .errors import UserError
from .images import IMAGE_EXTENSIONS, scan_images
from .layout import Layout
from .losses import assign as assign_to_centers
from .losses import loss_to_centers
from .represent import chosen_clusterings, read_assignments
from .tables import read_frame, write_frame

ASSIGNED_COLUMNS = ["path", "loss", "cluster", "loss_to_center", "rank_among_members", "clustering_fingerprint"]
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class AssignReport:
    placed: int = 0  # new photos embedded and placed
    losses: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    frame: pd.DataFrame | None = None  # what assigned.csv holds


# ----------------------------------------------------------------------------- the run's embedding

@dataclass
class Embedding:
    weights: object  # weights.Weights
    resize: str
    half: torch.dtype | None
    device: torch.device
    jpeg_decoder: str = "pillow"  # pillow | device, as the run's JPEGs were decoded


def _weights_spec(weights_id: str, model: str = "vgg16") -> tuple[str, int] | None:
    """The --weights value (and seed) that loads the weights of this cache key id, if it can be told."""
    from .weights import OXFORD_ID

    seeded = re.fullmatch(r"random:seed=(-?\d+)", weights_id)
    if seeded:
        return "random", int(seeded.group(1))
    if weights_id.startswith("file:"):
        return None  # a state-dict file: only the user knows where it is
    if model != "vgg16":
        return "auto", 0  # the model's own pretrained weights
    if weights_id.startswith("torchvision:"):
        return "imagenet", 0
    if weights_id == OXFORD_ID:
        return "oxford", 0
    return None


def _differences(run: dict, here: dict, prefix: str = "") -> list[str]:
    found = []
    for name in sorted(set(run) | set(here)):
        a, b = run.get(name), here.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{name}.")
        elif a != b:
            found.append(f"{prefix}{name}: {a!r} in the run, {b!r} here")
    return found


def reproduce_embedding(out_dir: Path, cfg: ExtractConfig, weights: str | None = None,
                        log: Callable[[str], None] = print) -> Embedding:
    """The weights, geometry and precision that give exactly the cache key of `out_dir`'s
    features, or a one-line UserError saying why they cannot be had here."""
    from .extract import cache_key, native_bf16
    from .kmeans import resolve_device

    key = read_key(out_dir)
    if not key or "weights" not in key or "precision" not in key:
        raise UserError(f"{Layout(out_dir).cache_key} is missing or unreadable, so the run's model is unknown; run "
                        f"`photoclust extract PHOTOS --out {out_dir}` again first")
    backbone = backbones.by_model_id(str(key.get("model", "")))
    if backbone is None:
        raise UserError(f"{Layout(out_dir).cache_key}: the run was embedded with the model {key.get('model')!r}, which "
                        f"this photoclust does not know ({', '.join(backbones.MODEL_NAMES)}); run `photoclust extract "
                        f"PHOTOS --out {out_dir}` again first")
    run_spec = _weights_spec(str(key["weights"]), backbone.name)
    if weights is None and run_spec is None:
        raise UserError(f"the run in {out_dir} was embedded with the weights file {key['weights']}: pass the "
                        "same file with --weights PATH")
    # --weights random takes the run's seed: the seed is part of those weights
    loaded = backbone.load(weights or run_spec[0], seed=run_spec[1] if run_spec else 0, log=log)
    if loaded.id != key["weights"]:
        raise UserError(f"--weights {weights} gives the weights {loaded.id}, but the run in {out_dir} was embedded "
                        f"with {key['weights']}; new photos must be embedded with the run's own weights")
    precision = str(key["precision"])
    if precision not in PRECISIONS:
        raise UserError(f"{Layout(out_dir).cache_key}: unknown precision {precision!r}; run `photoclust extract "
                        f"PHOTOS --out {out_dir}` again first")
    device = resolve_device(cfg.device, prefer_mps=True)
    half = PRECISIONS[precision]
    if half == torch.float16 and device.type != "cuda":
        raise UserError(f"the run in {out_dir} was embedded in float16 on a CUDA GPU, which {device} cannot "
                        "reproduce; assign on a machine with one (--device cuda)")
    if half == torch.bfloat16 and device.type == "mps":
        raise UserError(f"the run in {out_dir} was embedded in bfloat16, which Apple MPS cannot reproduce; "
                        "pass --device cpu")
    if half == torch.bfloat16 and not native_bf16(device):
        log(f"warning: the run was embedded in bfloat16, which {device} emulates (slowly)")
    def key_here(resize: str, jpeg_on: torch.device | None) -> dict:
        return json.loads(json.dumps(cache_key(loaded, resize, precision, jpeg_on)))  # as cache_key.json holds it

    for resize in ("crop", "squash"):
        for jpeg_on in (None, device):  # JPEGs decoded by Pillow, or on this device
            if key_here(resize, jpeg_on) == key:
                if jpeg_on is not None and (why_not := jpeg_device.works_on(device)):
                    raise UserError(f"the run in {out_dir} decoded its JPEGs on {device}, which this torchvision "
                                    f"cannot ({why_not}); assign where it can, or run `photoclust extract PHOTOS "
                                    f"--out {out_dir} --jpeg-decoder pillow` first")
                return Embedding(loaded, resize, half, device, "pillow" if jpeg_on is None else "device")
    differences = _differences(key, key_here("squash" if "squash" in str(key.get("geometry", "")) else "crop",
                                             device if "jpeg_decoder" in key else None))
    raise UserError(f"new photos cannot be embedded here exactly as the run in {out_dir} was ("
                    f"{'; '.join(differences[:3])}); run `photoclust extract PHOTOS --out {out_dir}` to re-embed "
                    "the run with this setup, then assign again")


def embed_new(folder: Path, out_dir: Path, cfg: ExtractConfig, embedding: Embedding,
              log: Callable[[str], None] = print,
              progress: bool | None = None) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """(relative paths, float32 features, unreadable (path, reason)) of the images under `folder`."""
    from .extract import embed_files

    folder = Path(folder)
    try:
        scan = scan_images(folder, exclude=[out_dir])
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise UserError(f"NEW_PHOTOS {folder}: {exc}; pass the folder of the new photos") from None
    for skipped, why in scan.skipped:
        log(f"skipping {skipped}: {why}")
    if not scan.images and not scan.unreadable:
        raise UserError(f"NEW_PHOTOS {folder}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}); "
                        f"check the folder{scan.not_read_hint()}")
    for note in scan.not_read_notes():
        log(note)
    unreadable = list(scan.unreadable)
    todo = []
    for rel in scan.images:
        path = folder / rel
        try:
            st = path.stat()
        except OSError as exc:
            unreadable.append((rel, f"cannot stat: {exc.strerror or exc}"))
            continue
        todo.append((path, rel, st.st_size, st.st_mtime_ns))
    paths, rows = [], []
    if todo:
        log(f"embedding {len(todo)} new image(s) with {embedding.weights.id} on {embedding.device}")
        run_cfg = replace(cfg, resize=embedding.resize, jpeg_decoder=embedding.jpeg_decoder)
        for entries, batch in embed_files(todo, embedding.weights, run_cfg, embedding.device, embedding.half,
                                          progress, desc="assign"):
            for entry, row in zip(entries, batch):
                if entry.status == OK:
                    paths.append(entry.path)
                    rows.append(row)
                else:
                    unreadable.append((entry.path, entry.reason))
    dim = backbones.feature_dim(embedding.weights)
    features = np.stack(rows).astype(np.float32) if rows else np.empty((0, dim), np.float32)
    return paths, features, sorted(unreadable)


# ----------------------------------------------------------------------------- placing (pure)

def place(features: np.ndarray, centers: np.ndarray, loss: str, param: float | None,
          normalize: str) -> tuple[np.ndarray, np.ndarray]:
    """(cluster, loss to that center) of every new feature row: the cheapest center under
    `loss`, in the clustering's normalised space. No refit: the centers stay as they are."""
    X = torch.from_numpy(normalize_features(np.asarray(features, np.float32), normalize))
    C = torch.from_numpy(np.ascontiguousarray(centers, dtype=np.float32))
    labels = assign_to_centers(X, C, loss, param)
    cost = loss_to_centers(X, C, labels, loss, param).double()
    return labels.numpy().astype(np.int64), cost.numpy()


def rank_among(members_cluster: np.ndarray, members_loss: np.ndarray, cluster: np.ndarray,
               loss: np.ndarray) -> np.ndarray:
    """For each new photo, how many members of its cluster have a smaller loss to the center."""
    ranks = np.empty(len(cluster), dtype=np.int64)
    for j in np.unique(cluster):
        theirs = np.sort(members_loss[members_cluster == j])
        mine = cluster == j
        ranks[mine] = np.searchsorted(theirs, loss[mine], side="left")
    return ranks


def _round(values: np.ndarray) -> np.ndarray:
    # as the cluster stage writes loss_to_center, so ranks compare like with like
    return np.array([float(f"{v:.9g}") for v in values], dtype=np.float64)


# ----------------------------------------------------------------------------- the stage

def _clustering(out_dir: Path, loss: str, fingerprint: str, dim: int) -> tuple[dict, np.ndarray, float | None]:
    summary = check_current(out_dir, loss, fingerprint)
    path = Layout(out_dir).centers(loss)
    again = f"run `photoclust cluster --out {out_dir} --losses {loss} --force`"
    try:
        centers = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{path}: cannot read it ({exc}); {again}") from None
    if centers.ndim != 2 or centers.shape != (int(summary.get("k", -1)), dim):
        raise UserError(f"{path}: {centers.shape} centers do not fit its summary.json (k={summary.get('k')}); {again}")
    params = summary.get("params") or {}
    return summary, centers, (float(next(iter(params.values()))) if params else None)


def assign_run(out_dir: Path, new: Path, cfg: ExtractConfig, *, losses: list[str] | None = None,
               weights: str | None = None, log: Callable[[str], None] = print,
               progress: bool | None = None) -> AssignReport:
    """Embed the images under `new` as `out_dir`'s run was embedded and place them into its
    clusters under every clustered loss (or `losses`); writes assigned.csv."""
    out_dir, new = Path(out_dir), Path(new)
    layout = Layout(out_dir)
    embedded = load_embedded(out_dir)
    chosen = chosen_clusterings(out_dir, losses)
    clusterings = {loss: _clustering(out_dir, loss, embedded.fingerprint, embedded.features.shape[1])
                   for loss in chosen}
    embedding = reproduce_embedding(out_dir, cfg, weights, log)
    paths, features, unreadable = embed_new(new, out_dir, cfg, embedding, log, progress)
    for path, reason in unreadable:
        log(f"  unreadable: {new / path}: {reason}")
    if not paths:
        raise UserError(f"NEW_PHOTOS {new}: none of its {len(unreadable)} image(s) could be decoded (reasons above)")

    absolute = [str(new.resolve() / rel) for rel in paths]
    parts = []
    for loss, (summary, centers, param) in clusterings.items():
        members = read_assignments(out_dir, loss)
        cluster, cost = place(features, centers, loss, param, summary.get("normalize", "l2"))
        cost = _round(cost)
        ranks = rank_among(members["cluster"].to_numpy(np.int64), members["loss_to_center"].to_numpy(np.float64),
                           cluster, cost)
        parts.append(pd.DataFrame({"path": absolute, "loss": loss, "cluster": cluster, "loss_to_center": cost,
                                   "rank_among_members": ranks,
                                   "clustering_fingerprint": str(summary.get("fingerprint", ""))}))
    frame = pd.concat(parts, ignore_index=True)[ASSIGNED_COLUMNS]
    write_frame(layout.assigned, frame)
    return AssignReport(placed=len(paths), losses=list(chosen), unreadable=unreadable, frame=frame)


def read_assigned(out_dir: Path) -> pd.DataFrame:
    """assigned.csv without the rows of clusterings refitted since (or of other features);
    an empty frame when there is none. For pages and notebooks: reads only."""
    path = Layout(out_dir).assigned
    if not path.is_file():
        return pd.DataFrame({c: [] for c in ASSIGNED_COLUMNS})
    try:
        frame = read_frame(path, text_columns=["path", "loss", "clustering_fingerprint"])
    except (OSError, UnicodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{path}: cannot read it ({exc}); run `photoclust assign NEW_PHOTOS --out {out_dir}` "
                        "again") from None
    if list(frame.columns) != ASSIGNED_COLUMNS:
        raise UserError(f"{path}: unexpected columns; run `photoclust assign NEW_PHOTOS --out {out_dir}` again")
    try:
        fingerprint = load_embedded(out_dir, repair=False).fingerprint
    except UserError:
        return frame.iloc[:0]
    current = set()
    for loss in frame["loss"].unique():
        summary = read_summary(out_dir, loss)
        if summary is not None and summary.get("features_fingerprint") == fingerprint:
            current.add((loss, summary.get("fingerprint")))
    keep = [(loss, fp) in current for loss, fp in zip(frame["loss"], frame["clustering_fingerprint"])]
    return frame[keep].reset_index(drop=True)
