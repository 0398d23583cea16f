"""Stage 3: per loss and cluster, the representative (the member with the smallest loss to
its center under that loss: the tutorial's `find_closest_image` for all clusters at once),
every member's rank by loss to center, and the outliers (largest loss).

Reads clusters/<loss>/assignments.csv (written by `cluster`) and writes back its `rank`
and `is_representative` columns, plus clusters/<loss>/representatives.csv. Opens no image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .cache import load_embedded
from .cluster import check_current
from .errors import UserError
from .layout import Layout
from .losses import LOSS_NAMES
from .tables import read_frame, write_frame

OUTLIERS_PER_CLUSTER = 3
REPRESENTATIVE_COLUMNS = ["cluster", "size", "representative", "representative_loss", "median_loss",
                          "outliers", "outlier_losses"]


def rank_members(labels: np.ndarray, loss_to_center: np.ndarray) -> np.ndarray:
    """Rank of every point inside its cluster by loss to center: 0 = nearest (ties by row order)."""
    labels = np.asarray(labels)
    order = np.lexsort((np.arange(len(labels)), loss_to_center, labels))  # by cluster, then loss, then row
    sorted_labels = labels[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_labels)) + 1]
    sizes = np.diff(np.r_[starts, len(labels)])
    ranks = np.empty(len(labels), dtype=np.int64)
    ranks[order] = np.arange(len(labels)) - np.repeat(starts, sizes)
    return ranks


def summarize_clusters(paths: list[str], labels: np.ndarray, loss_to_center: np.ndarray,
                       ranks: np.ndarray, outliers: int = OUTLIERS_PER_CLUSTER) -> pd.DataFrame:
    """One row per non-empty cluster: size, representative, median loss, the farthest members."""
    frame = pd.DataFrame({"path": paths, "cluster": labels, "loss": loss_to_center, "rank": ranks})
    rows = []
    for cluster, members in frame.sort_values(["cluster", "rank"]).groupby("cluster", sort=True):
        far = members.iloc[::-1].head(min(outliers, len(members) - 1))  # never the representative itself
        rows.append({"cluster": int(cluster), "size": len(members), "representative": members["path"].iloc[0],
                     "representative_loss": float(members["loss"].iloc[0]),
                     "median_loss": float(members["loss"].median()),
                     "outliers": "|".join(far["path"]), "outlier_losses": "|".join(f"{v:.6g}" for v in far["loss"])})
    return pd.DataFrame(rows, columns=REPRESENTATIVE_COLUMNS)


@dataclass
class Representation:
    loss: str
    clusters: pd.DataFrame  # representatives.csv


def clustered_losses(out_dir: Path) -> list[str]:
    """Losses (in the canonical order) that have a clustering in `out_dir`."""
    layout = Layout(out_dir)
    return [loss for loss in LOSS_NAMES if layout.assignments(loss).is_file() or layout.summary(loss).is_file()]


def read_assignments(out_dir: Path, loss: str) -> pd.DataFrame:
    path = Layout(out_dir).assignments(loss)
    try:
        frame = read_frame(path, text_columns=["path"])
    except (OSError, UnicodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{path}: cannot read it ({exc}); run `python -m pipeline cluster --out {out_dir}` again") \
            from None
    if not {"path", "cluster", "loss_to_center"} <= set(frame.columns):
        raise UserError(f"{path}: missing columns; run `python -m pipeline cluster --out {out_dir}` again")
    return frame


def represent_run(out_dir: Path, losses: list[str] | None = None, *,
                  log: Callable[[str], None] = print) -> list[Representation]:
    """Representatives for every clustered loss (or the given ones) of `out_dir`."""
    out_dir = Path(out_dir)
    available = clustered_losses(out_dir)
    if not available:
        raise UserError(f"no clusterings in {out_dir}/clusters: run `python -m pipeline cluster --out {out_dir}` "
                        "(or `make cluster`) first")
    chosen = losses or available
    missing = [loss for loss in chosen if loss not in available]
    if missing:
        raise UserError(f"no clustering for {', '.join(missing)} in {out_dir}/clusters; cluster with "
                        f"--losses {','.join(missing)} first")
    fingerprint = load_embedded(out_dir).fingerprint
    layout = Layout(out_dir)
    results = []
    for loss in chosen:
        check_current(out_dir, loss, fingerprint)
        frame = read_assignments(out_dir, loss)
        labels = frame["cluster"].to_numpy(np.int64)
        ranks = rank_members(labels, frame["loss_to_center"].to_numpy(np.float64))
        frame["rank"] = ranks
        frame["is_representative"] = (ranks == 0).astype(int)
        clusters = summarize_clusters(frame["path"].tolist(), labels, frame["loss_to_center"].to_numpy(), ranks)
        write_frame(layout.assignments(loss), frame)
        write_frame(layout.representatives(loss), clusters)
        log(f"{loss:>19}: {len(clusters)} representatives -> {layout.representatives(loss)}")
        results.append(Representation(loss, clusters))
    return results
