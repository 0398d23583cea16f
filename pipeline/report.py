"""index.html, the overview of an output folder (the site's templates, see site.py): per
loss its parameters, objective and a thumbnail of each cluster's representative with the
cluster's size, linking the cluster pages; a switch that shows one loss at a time (every
loss visible without JavaScript); links to the map, duplicates, outliers and assigned pages
when they exist; the comparison sheet, the evaluation and the sweeps; the files that could
not be read, with reasons. Every link is relative (the page works from file://) and every
name escaped by the template. `render` writes it, and `cluster` and `evaluate` write it again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from . import atomic
from .cache import OK, load_embedded, read_source
from .cluster import read_summary
from .errors import UserError
from .layout import Layout
from .represent import clustered_losses
from .site import link, number, params_text, photo_link, render
from .site import shown as readable
from .tables import read_frame


def shown(name) -> str:
    """A file name from the data as HTML text (escaped), for HTML built outside the templates."""
    from html import escape

    return escape(readable(name))


class _ThumbFiles:
    """The thumbnails render made, looked up by file (the overview makes none)."""

    def __init__(self, layout: Layout, sha1_of: dict[str, str]):
        self.folder, self.sha1_of = layout.thumbs, sha1_of

    def get(self, path: str) -> Path | None:
        from .render import thumbnail_file

        cached = thumbnail_file(self.folder, path, self.sha1_of.get(path))
        return cached if cached.is_file() else None


def _loss(layout: Layout, loss: str, fingerprint: str | None, thumbs: _ThumbFiles, source: Path | None) -> dict:
    summary = read_summary(layout.root, loss)
    if summary is None or summary.get("features_fingerprint") != fingerprint:
        return {"name": loss, "problem": "is incomplete (an interrupted run?)" if summary is None
                else "was made from other features"}
    page = layout.index
    reps_path = layout.representatives(loss)
    reps = read_frame(reps_path, ["representative", "outliers"]) if reps_path.is_file() else pd.DataFrame()
    clusters = []
    for r in reps.itertuples():
        cluster = int(r.cluster)
        thumb = thumbs.get(r.representative)
        cluster_page, sheet = layout.cluster_page(loss, cluster), layout.cluster_sheet(loss, cluster)
        clusters.append({
            "cluster": cluster, "size": int(r.size), "rep_loss": number(r.representative_loss),
            "farthest": readable(str(r.outliers).replace("|", ", ")),
            "page": link(page, cluster_page) if cluster_page.is_file() else None,
            "sheet": link(page, sheet) if sheet.is_file() else None,
            "rep": {"name": readable(r.representative), "thumb": link(page, thumb) if thumb else None,
                    "reason": "no thumbnail", "representative": False,
                    "photo": photo_link(page, source / r.representative) if source else None}})
    sheet, outliers = layout.representatives_sheet(loss), layout.outliers_page(loss)
    # Link only what exists: `cluster` or `evaluate` may rewrite the page before `render` ran.
    return {"name": loss, "problem": None, "k": summary.get("k", "?"), "params": params_text(summary),
            "objective": f"{summary.get('objective', float('nan')):.6g}",
            "iterations": summary.get("iterations", "?"), "converged": summary.get("converged"),
            "seconds": f"{summary.get('seconds', float('nan')):.2f}", "seed": summary.get("seed", "?"),
            "n_init": summary.get("n_init", "?"), "normalize": str(summary.get("normalize", "?")),
            "assignments": link(page, layout.assignments(loss)),
            "representatives": link(page, reps_path) if reps_path.is_file() else None,
            "sheet": link(page, sheet) if sheet.is_file() else None,
            "outliers": link(page, outliers) if outliers.is_file() else None,
            "clusters": clusters}


def _sweeps(layout: Layout) -> list[dict]:
    sweeps = []
    for meta_path in sorted(layout.sweep_dir.glob("*.json")):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        loss = meta_path.stem
        sweeps.append({"loss": loss, "suggested": int(meta.get("suggested_k", 0)), "knee": int(meta.get("knee", 0)),
                       "rule": str(meta.get("rule", "")),
                       "csv": link(layout.index, layout.sweep_file(loss, ".csv")),
                       "figure": link(layout.index, layout.sweep_file(loss, ".png"))})
    return sweeps


def _evaluation(layout: Layout) -> dict | None:
    if not layout.evaluation.is_file():
        return None
    table = read_frame(layout.evaluation)
    return {"labelled": int(table["labelled"].iloc[0]) if len(table) else 0,
            "csv": link(layout.index, layout.evaluation), "agreement": link(layout.index, layout.agreement),
            "rows": [{"loss": str(r.loss), "k": int(r.k), "nmi": f"{r.nmi:.3f}", "ari": f"{r.ari:.3f}",
                      "accuracy": f"{r.accuracy:.3f}", "purity": f"{r.purity:.3f}"} for r in table.itertuples()],
            "figures": [{"loss": str(r.loss), "src": link(layout.index, layout.confusion(r.loss))}
                        for r in table.itertuples() if layout.confusion(r.loss).is_file()]}


def _pages(layout: Layout, losses: list[str]) -> list[dict]:
    """The site's other pages that exist, for the overview's bar."""
    pages = [(layout.map_page, "map of all photos"), (layout.duplicates_page, "duplicates"),
             *((layout.outliers_page(loss), f"outliers under {loss}") for loss in losses),
             (layout.assigned_page, "new photos placed into the clusters")]
    return [{"href": link(layout.index, path), "label": label} for path, label in pages if path.is_file()]


def index_context(out_dir: Path, title: str | None = None) -> dict:
    """What index.html shows, as plain dicts and lists."""
    out_dir = Path(out_dir)
    layout = Layout(out_dir)
    try:
        embedded = load_embedded(out_dir)
        entries, fingerprint = embedded.entries, embedded.fingerprint
    except UserError:
        entries, fingerprint = [], None
    try:
        source = read_source(out_dir)
    except UserError:
        source = None
    thumbs = _ThumbFiles(layout, {e.path: e.sha1 for e in entries if e.status == OK})
    losses = clustered_losses(out_dir)
    return {
        "title": title or f"photoclust: {readable(out_dir.name)}",
        "ok": sum(e.status == OK for e in entries), "manifest": link(layout.index, layout.manifest),
        "pages": _pages(layout, losses),
        "losses": [_loss(layout, loss, fingerprint, thumbs, source) for loss in losses],
        "comparison": link(layout.index, layout.losses_sheet) if layout.losses_sheet.is_file() else None,
        "evaluation": _evaluation(layout), "sweeps": _sweeps(layout),
        "unreadable": [{"name": readable(e.path), "reason": readable(e.reason)} for e in entries if e.status != OK]}


def write_index(out_dir: Path, title: str | None = None) -> Path:
    """Write out_dir/index.html from what the stages left there; returns its path."""
    layout = Layout(out_dir)
    atomic.write_text(layout.index, render("index.html", **index_context(out_dir, title)))
    return layout.index
