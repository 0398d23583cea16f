"""`evaluate`: how well each loss's clustering matches known labels.

Ground truth is the first folder level under the photo root (`birds/crow.jpg` -> `birds`,
the sample's categories) or a CSV with columns `path,label` (paths as in manifest.csv).
Photos without a label are left out and counted. Writes evaluation.csv (per loss: NMI,
ARI, accuracy, purity), evaluation_agreement.csv (ARI between every two losses'
labelings), evaluation/confusion_<loss>.png, and returns a markdown table for the terminal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from . import metrics
from .cache import atomic_write_bytes
from .errors import UserError
from .represent import clustered_losses, read_assignments

METRIC_COLUMNS = ["loss", "k", "labelled", "unlabelled", "classes", "nmi", "ari", "accuracy", "purity"]


@dataclass
class Evaluation:
    table: pd.DataFrame  # one row per loss, METRIC_COLUMNS
    agreement: pd.DataFrame  # losses x losses ARI
    markdown: str


def folder_labels(paths: list[str]) -> list[str | None]:
    """The first folder of each relative path; None for photos directly in the root."""
    return [p.split("/", 1)[0] if "/" in p else None for p in paths]


def csv_labels(csv_path: Path) -> dict[str, str]:
    """path -> label from a CSV with columns path,label."""
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"--labels {csv_path}: cannot read it as CSV ({exc})") from None
    if not {"path", "label"} <= set(frame.columns):
        raise UserError(f"--labels {csv_path}: needs the columns path,label (found {', '.join(frame.columns)})")
    return dict(zip(frame["path"], frame["label"]))


def markdown_table(table: pd.DataFrame) -> str:
    lines = ["| loss | k | NMI | ARI | accuracy | purity |", "|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.loss} | {r.k} | {r.nmi:.3f} | {r.ari:.3f} | {r.accuracy:.3f} | {r.purity:.3f} |")
    return "\n".join(lines)


def confusion_figure(table: np.ndarray, classes, clusters, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(clusters), 1.0 + 0.5 * len(classes)), dpi=110)
    ax.imshow(table, cmap="Blues")
    ax.set_xticks(range(len(clusters)), [str(c) for c in clusters])
    ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    ax.set_xlabel("cluster")
    ax.set_ylabel("label")
    ax.set_title(title, fontsize=10)
    high = table.max() / 2 if table.size else 0
    for (i, j), value in np.ndenumerate(table):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=8, color="white" if value > high else "black")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def evaluate_run(out_dir: Path, labels: str | Path | None = None, *,
                 log: Callable[[str], None] = print) -> Evaluation:
    out_dir = Path(out_dir)
    losses = clustered_losses(out_dir)
    if not losses:
        raise UserError(f"no clusterings in {out_dir}/clusters: run `python -m pipeline cluster --out {out_dir}` first")
    lookup = None if labels in (None, "folder") else csv_labels(Path(labels))
    rows, labelings = [], {}
    for loss in losses:
        frame = read_assignments(out_dir, loss)
        paths = frame["path"].tolist()
        truth = folder_labels(paths) if lookup is None else [lookup.get(p) or None for p in paths]
        keep = np.array([t is not None for t in truth])
        if not keep.any():
            raise UserError(f"no labels for the photos of {out_dir}: they are not in subfolders of the photo folder; "
                            "pass --labels labels.csv with columns path,label")
        t = np.array([x for x in truth if x is not None])
        p = frame["cluster"].to_numpy()[keep]
        labelings[loss] = pd.Series(frame["cluster"].to_numpy(), index=paths)
        rows.append({"loss": loss, "k": int(frame["cluster"].max()) + 1, "labelled": int(keep.sum()),
                     "unlabelled": int((~keep).sum()), "classes": len(set(t)), "nmi": metrics.nmi(t, p),
                     "ari": metrics.ari(t, p), "accuracy": metrics.accuracy(t, p), "purity": metrics.purity(t, p)})
        counts, classes, clusters = metrics.contingency(t, p)
        confusion_figure(counts, classes, clusters, f"{loss}: NMI {rows[-1]['nmi']:.3f}",
                         out_dir / "evaluation" / f"confusion_{loss}.png")
    table = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    agreement = pd.DataFrame(index=losses, columns=losses, dtype=float)
    for a in losses:
        for b in losses:
            common = labelings[a].index.intersection(labelings[b].index)
            agreement.loc[a, b] = metrics.ari(labelings[a][common].to_numpy(), labelings[b][common].to_numpy())
    atomic_write_bytes(out_dir / "evaluation.csv", table.to_csv(index=False, float_format="%.6f").encode())
    atomic_write_bytes(out_dir / "evaluation_agreement.csv",
                       agreement.to_csv(index_label="loss", float_format="%.6f").encode())
    if table["classes"].min() < 2:
        log("warning: fewer than two labels among the photos: the scores say little")
    return Evaluation(table, agreement, markdown_table(table))
