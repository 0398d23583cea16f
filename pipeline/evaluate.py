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

from . import atomic, metrics
from .cache import load_embedded, read_source
from .cluster import check_current
from .errors import UserError
from .layout import Layout
from .represent import clustered_losses, read_assignments
from .tables import write_frame

METRIC_COLUMNS = ["loss", "k", "labelled", "unlabelled", "classes", "nmi", "ari", "accuracy", "purity"]


@dataclass
class Evaluation:
    table: pd.DataFrame  # one row per loss, METRIC_COLUMNS
    agreement: pd.DataFrame  # losses x losses ARI
    markdown: str


def folder_labels(paths: list[str]) -> list[str | None]:
    """The first folder of each relative path; None for photos directly in the root."""
    return [p.split("/", 1)[0] if "/" in p else None for p in paths]


def csv_labels(csv_path: Path, photo_root: Path | None = None) -> dict[str, str]:
    """path -> label from a CSV with columns path,label.

    Paths are relative to the photo folder, as in manifest.csv; an absolute path, or one
    relative to the CSV's own folder that leads into the photo folder, is accepted too.
    """
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"--labels {csv_path}: cannot read it as CSV ({exc})") from None
    if not {"path", "label"} <= set(frame.columns):
        raise UserError(f"--labels {csv_path}: needs the columns path,label (found {', '.join(frame.columns)})")
    return {_photo_relative(p, Path(csv_path).parent, photo_root): label for p, label in zip(frame["path"], frame["label"])}


def _photo_relative(path: str, csv_dir: Path, photo_root: Path | None) -> str:
    if photo_root is None or not (Path(path).is_absolute() or path.startswith(("../", "./"))):
        return path
    try:
        return (csv_dir / path).resolve().relative_to(photo_root.resolve()).as_posix()
    except ValueError:
        return path  # outside the photo folder: matches no photo, counted as unlabelled


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
    atomic.write_with(path, lambda fh: fig.savefig(fh, format="png"))
    plt.close(fig)


def evaluate_run(out_dir: Path, labels: str | Path | None = None, *,
                 log: Callable[[str], None] = print) -> Evaluation:
    out_dir = Path(out_dir)
    layout = Layout(out_dir)
    losses = clustered_losses(out_dir)
    if not losses:
        raise UserError(f"no clusterings in {out_dir}/clusters: run `python -m pipeline cluster --out {out_dir}` first")
    fingerprint = load_embedded(out_dir).fingerprint
    lookup = None if labels in (None, "folder") else csv_labels(Path(labels), read_source(out_dir))
    rows, labelings = [], {}
    for loss in losses:
        check_current(out_dir, loss, fingerprint)
        frame = read_assignments(out_dir, loss)
        paths = frame["path"].tolist()
        truth = folder_labels(paths) if lookup is None else [lookup.get(p) or None for p in paths]
        keep = np.array([t is not None for t in truth])
        if not keep.any() and lookup is None:
            raise UserError(f"no labels for the photos of {out_dir}: they are not in subfolders of the photo folder; "
                            "pass --labels labels.csv with columns path,label")
        if not keep.any():
            example = next(iter(lookup), "")
            raise UserError(f"--labels {labels}: none of its {len(lookup)} paths names a photo of {out_dir} (first: "
                            f"{example!r}); write paths relative to the photo folder {read_source(out_dir)}, "
                            f"like {paths[0]!r} (as in manifest.csv)")
        t = np.array([x for x in truth if x is not None])
        p = frame["cluster"].to_numpy()[keep]
        labelings[loss] = pd.Series(frame["cluster"].to_numpy(), index=paths)
        rows.append({"loss": loss, "k": int(frame["cluster"].max()) + 1, "labelled": int(keep.sum()),
                     "unlabelled": int((~keep).sum()), "classes": len(set(t)), "nmi": metrics.nmi(t, p),
                     "ari": metrics.ari(t, p), "accuracy": metrics.accuracy(t, p), "purity": metrics.purity(t, p)})
        counts, classes, clusters = metrics.contingency(t, p)
        confusion_figure(counts, classes, clusters, f"{loss}: NMI {rows[-1]['nmi']:.3f}",
                         layout.confusion(loss))
    table = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    agreement = pd.DataFrame(index=losses, columns=losses, dtype=float)
    for a in losses:
        for b in losses:
            common = labelings[a].index.intersection(labelings[b].index)
            agreement.loc[a, b] = metrics.ari(labelings[a][common].to_numpy(), labelings[b][common].to_numpy())
    write_frame(layout.evaluation, table, float_format="%.6f")
    write_frame(layout.agreement, agreement.astype(float).rename_axis("loss").reset_index(), float_format="%.6f")
    if table["classes"].min() < 2:
        log("warning: fewer than two labels among the photos: the scores say little")
    return Evaluation(table, agreement, markdown_table(table))


# ----------------------------------------------------------------------------- backbones side by side

MODEL_COLUMNS = ["model", "feature_dim", *METRIC_COLUMNS]


@dataclass
class ModelsEvaluation:
    table: pd.DataFrame  # one row per (model, loss), MODEL_COLUMNS
    markdown: str


def models_markdown(table: pd.DataFrame) -> str:
    """NMI per loss (rows) and model (columns), and each model's mean over the losses."""
    models = list(dict.fromkeys(table["model"]))
    nmi = table.pivot(index="loss", columns="model", values="nmi")
    losses = list(dict.fromkeys(table["loss"]))
    lines = ["| loss | " + " | ".join(f"NMI {m}" for m in models) + " |", "|---" * (len(models) + 1) + "|"]
    lines += [f"| {loss} | " + " | ".join(f"{nmi.loc[loss, m]:.3f}" for m in models) + " |" for loss in losses]
    lines.append("| mean | " + " | ".join(f"{nmi[m].mean():.3f}" for m in models) + " |")
    return "\n".join(lines)


def evaluate_models(out_dir: Path, models: list[str], cfg, labels: str | Path | None = None, *,
                    photos: Path | None = None, seed: int = 0, log: Callable[[str], None] = print,
                    progress: bool | None = None) -> ModelsEvaluation:
    """Embed the run's photos with each of `models` (each in its own output folder,
    models/<model>/, so the run itself is never changed and a rerun reuses every cache),
    cluster them with the run's configuration (`cfg`, a config.Config) and score them
    against the labels. Writes evaluation_models.csv; returns the table and a markdown
    table of NMI per loss side by side."""
    from dataclasses import replace

    from . import backbones
    from .cluster import cluster_run
    from .extract import extract_folder

    out_dir = Path(out_dir)
    layout = Layout(out_dir)
    if not models:
        raise UserError(f"--models is empty; name two or more of {', '.join(backbones.MODEL_NAMES)}")
    if len(set(models)) != len(models):
        raise UserError(f"--models names a model twice: {', '.join(models)}")
    entries = [backbones.get(m, "--models") for m in models]
    photos = Path(photos) if photos is not None else read_source(out_dir)
    parts = []
    for backbone in entries:
        # the configured weights for the configured model (or random ones for all: tests, speed);
        # every other model its own pretrained weights
        spec = cfg.extract.weights if cfg.extract.weights == "random" or backbone.name == cfg.extract.model \
            else "auto"
        run = layout.model_run(backbone.name)
        log(f"{backbone.name}: embedding, clustering and scoring in {run}")
        extract_folder(photos, run, replace(cfg.extract, model=backbone.name, weights=spec), seed=seed, log=log,
                       progress=progress)
        cluster_run(run, cfg.cluster, log=log)
        result = evaluate_run(run, labels, log=log)
        parts.append(result.table.assign(model=backbone.name, feature_dim=backbone.feature_dim))
    table = pd.concat(parts, ignore_index=True)[MODEL_COLUMNS]
    write_frame(layout.evaluation_models, table, float_format="%.6f")
    return ModelsEvaluation(table, models_markdown(table))
