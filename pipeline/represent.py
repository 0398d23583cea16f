"""Stage 3: per loss and cluster, the representative (the member with the smallest loss to
its center under that loss: the tutorial's `find_closest_image` for all clusters at once),
every member's rank by loss to center, and the outliers (largest loss).

Reads clusters/<loss>/assignments.csv (written by `cluster`) and writes back its `rank`
and `is_representative` columns, plus clusters/<loss>/representatives.csv and
clusters/<loss>/outliers.csv. Opens no image.

outliers.csv: the photos with the largest loss to their own center across the whole
collection (junk, mis-scans), worst first, with columns

  rank            1 = the largest loss_to_center of all (ties by path)
  path, cluster   as in assignments.csv
  loss_to_center  the photo's loss to its own cluster's center, as in assignments.csv
  robust_z        (loss_to_center - median) / MAD of the photo's own cluster: how many
                  median absolute deviations above its cluster's median loss it lies. Where
                  the MAD is 0 (more than half of a cluster at the same loss, as the
                  epsilon-insensitive loss's zeros can be), the mean absolute deviation
                  from the median stands in; where that is 0 too, robust_z is 0.

It lists the worst max(OUTLIERS_AT_LEAST, OUTLIERS_SHARE of the photos) (50 or 2%,
whichever is larger, at most all of them), and beyond those every photo whose robust_z is
at least OUTLIER_Z (5 MADs: about 3.4 standard deviations of a normal distribution, whose
MAD is 0.674 of its standard deviation; Iglewicz and Hoaglin's 3.5 on their rescaled z).
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
OUTLIERS_AT_LEAST = 50
OUTLIERS_SHARE = 0.02
OUTLIER_Z = 5.0
OUTLIER_COLUMNS = ["rank", "path", "cluster", "loss_to_center", "robust_z"]
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


def robust_z(labels: np.ndarray, loss_to_center: np.ndarray) -> np.ndarray:
    """Every point's (loss - median) / MAD within its own cluster (see the module docstring)."""
    labels = np.asarray(labels)
    losses = np.asarray(loss_to_center, dtype=np.float64)
    z = np.zeros(len(losses))
    for cluster in np.unique(labels):
        members = labels == cluster
        values = losses[members]
        median = np.median(values)
        deviation = np.abs(values - median)
        scale = np.median(deviation)
        if scale <= 0:
            scale = deviation.mean()
        z[members] = (values - median) / scale if scale > 0 else 0.0
    return z


def outliers_table(paths: list[str], labels: np.ndarray, loss_to_center: np.ndarray,
                   at_least: int = OUTLIERS_AT_LEAST, share: float = OUTLIERS_SHARE,
                   z_flag: float = OUTLIER_Z) -> pd.DataFrame:
    """outliers.csv as a frame: the worst max(at_least, share of n) photos by loss to their
    center, plus any with robust_z >= z_flag, worst first (ties by path), ranked from 1."""
    losses = np.asarray(loss_to_center, dtype=np.float64)
    z = robust_z(labels, losses)
    order = sorted(range(len(paths)), key=lambda i: (-losses[i], paths[i]))
    count = min(len(paths), max(at_least, int(np.ceil(share * len(paths)))))
    chosen = [i for rank, i in enumerate(order) if rank < count or z[i] >= z_flag]
    return pd.DataFrame({"rank": np.arange(1, len(chosen) + 1), "path": [paths[i] for i in chosen],
                         "cluster": np.asarray(labels, dtype=np.int64)[chosen],
                         "loss_to_center": losses[chosen], "robust_z": np.round(z[chosen], 4)},
                        columns=OUTLIER_COLUMNS)


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


def chosen_clusterings(out_dir: Path, losses: list[str] | None = None) -> list[str]:
    """The clustered losses of `out_dir` a stage works on (all, or `losses`), or a one-line
    UserError saying which clustering to make first."""
    available = clustered_losses(out_dir)
    if not available:
        raise UserError(f"no clusterings in {out_dir}/clusters: run `photoclust cluster --out {out_dir}` "
                        "(or `make cluster`) first")
    chosen = losses or available
    missing = [loss for loss in chosen if loss not in available]
    if missing:
        raise UserError(f"no clustering for {', '.join(missing)} in {out_dir}/clusters; cluster with "
                        f"--losses {','.join(missing)} first")
    return chosen


def represent_run(out_dir: Path, losses: list[str] | None = None, *,
                  log: Callable[[str], None] = print) -> list[Representation]:
    """Representatives for every clustered loss (or the given ones) of `out_dir`."""
    out_dir = Path(out_dir)
    chosen = chosen_clusterings(out_dir, losses)
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
        write_frame(layout.outliers(loss), outliers_table(frame["path"].tolist(), labels,
                                                          frame["loss_to_center"].to_numpy(np.float64)))
        log(f"{loss:>19}: {len(clusters)} representatives -> {layout.representatives(loss)}")
        results.append(Representation(loss, clusters))
    return results
