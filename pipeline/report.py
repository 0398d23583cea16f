"""index.html: one self-contained page per output folder (relative links only, works from
file://), with per loss the parameters, objective, cluster sizes, the representatives sheet
and links to every cluster sheet, and the files that could not be read, with reasons.
Every file name and value from the data is HTML-escaped.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from . import atomic
from .cache import OK, load_embedded
from .cluster import read_summary
from .errors import UserError
from .layout import Layout
from .represent import clustered_losses
from .tables import display_name, read_frame

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; } td, th { padding: .2em .7em; border-bottom: 1px solid #eee; text-align: left; }
img.sheet { max-width: 100%; border: 1px solid #ddd; }
.muted { color: #777; } code { background: #f4f4f4; padding: 0 .25em; }
"""


def shown(name) -> str:
    """A file name from the data, as HTML text."""
    return escape(display_name(str(name)))


def href(relative: str) -> str:
    """A relative URL for a path inside the output folder (each segment percent-encoded)."""
    return escape(quote(relative), quote=True)


def _loss_section(layout: Layout, loss: str, fingerprint: str | None) -> str:
    summary = read_summary(layout.root, loss)
    if summary is None or summary.get("features_fingerprint") != fingerprint:
        state = "is incomplete (an interrupted run?)" if summary is None else "was made from other features"
        return (f"<h2 id=\"{escape(loss)}\">{escape(loss)}</h2><p class=muted>This clustering {state}: run "
                "<code>make cluster</code> (python -m pipeline cluster), then <code>make sheets</code>.</p>")
    reps_path = layout.representatives(loss)
    reps = read_frame(reps_path, ["representative", "outliers"]) if reps_path.is_file() else pd.DataFrame()
    params = ", ".join(f"{escape(k)} = {v:.4g}" for k, v in summary.get("params", {}).items()) or "none"
    setting = summary.get("param_setting")
    if setting == "auto" and summary.get("params"):
        params += " <span class=muted>(auto: from the data's scale)</span>"
    def sheet_link(cluster: int) -> str:
        sheet = layout.cluster_sheet(loss, cluster)
        return (f"<a href=\"{href(layout.relative(sheet))}\">cluster {cluster}</a>" if sheet.is_file()
                else f"cluster {cluster}")

    rows = "".join(
        f"<tr><td>{sheet_link(int(r.cluster))}</td>"
        f"<td>{int(r.size)}</td><td>{shown(r.representative)}</td><td>{float(r.representative_loss):.4g}</td>"
        f"<td>{shown(str(r.outliers).replace('|', ', '))}</td></tr>"
        for r in reps.itertuples())
    sheet = layout.representatives_sheet(loss)
    # Link only what exists: `cluster` or `evaluate` may rewrite the page before `render` ran.
    reps_link = (f" · <a href=\"{href(layout.relative(reps_path))}\">representatives.csv</a>"
                 if reps_path.is_file() else "")
    picture = (f"<p><img class=sheet src=\"{href(layout.relative(sheet))}\" alt=\"representatives under "
               f"{escape(loss)}\"></p>" if sheet.is_file() else
               "<p class=muted>No sheets yet: run <code>make sheets</code> (python -m pipeline render).</p>")
    return f"""
<h2 id="{escape(loss)}">{escape(loss)}</h2>
<p>k = {summary.get('k', '?')}, parameters: {params}; objective {summary.get('objective', float('nan')):.6g}
after {summary.get('iterations', '?')} iterations ({'converged' if summary.get('converged') else 'iteration cap reached'}),
{summary.get('seconds', float('nan')):.2f} s; seed {summary.get('seed', '?')}, {summary.get('n_init', '?')} restarts,
features normalised: {escape(str(summary.get('normalize', '?')))}.
<a href="{href(layout.relative(layout.assignments(loss)))}">assignments.csv</a>{reps_link}</p>
{picture}
<table><tr><th>cluster sheet</th><th>size</th><th>representative</th><th>its loss</th><th>farthest members</th></tr>
{rows}</table>"""


def _sweep_section(layout: Layout) -> str:
    parts = []
    for meta_path in sorted(layout.sweep_dir.glob("*.json")):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        loss = meta_path.stem
        parts.append(f"<p>{escape(loss)}: suggested k = {int(meta.get('suggested_k', 0))} (knee at "
                     f"{int(meta.get('knee', 0))}; rule: {escape(str(meta.get('rule', '')))}). "
                     f"<a href=\"{href(f'sweep/{loss}.csv')}\">{escape(loss)}.csv</a></p>"
                     f"<p><img src=\"{href(f'sweep/{loss}.png')}\" alt=\"sweep of k under {escape(loss)}\"></p>")
    return "<h2 id=sweep>Choosing k</h2>" + "".join(parts) if parts else ""


def _evaluation_section(layout: Layout) -> str:
    path = layout.evaluation
    if not path.is_file():
        return ""
    table = read_frame(path)
    rows = "".join(f"<tr><td><a href=\"#{escape(str(r.loss))}\">{escape(str(r.loss))}</a></td><td>{int(r.k)}</td>"
                   f"<td>{r.nmi:.3f}</td><td>{r.ari:.3f}</td><td>{r.accuracy:.3f}</td><td>{r.purity:.3f}</td></tr>"
                   for r in table.itertuples())
    figures = "".join(f"<img src=\"{href(f'evaluation/confusion_{r.loss}.png')}\" alt=\"confusion {escape(str(r.loss))}\">"
                      for r in table.itertuples() if layout.confusion(r.loss).is_file())
    labelled = int(table["labelled"].iloc[0]) if len(table) else 0
    return (f"<h2 id=evaluation>Against the labels</h2><p>{labelled} labelled photos. "
            f"<a href=\"{href(layout.relative(layout.evaluation))}\">evaluation.csv</a> · "
            f"<a href=\"{href(layout.relative(layout.agreement))}\">agreement between the losses (ARI)</a></p>"
            "<table><tr><th>loss</th><th>k</th><th>NMI</th><th>ARI</th><th>accuracy</th><th>purity</th></tr>"
            f"{rows}</table><p>{figures}</p>")


def write_index(out_dir: Path, title: str | None = None) -> Path:
    """Write out_dir/index.html from what the stages left there; returns its path."""
    out_dir = Path(out_dir)
    layout = Layout(out_dir)
    try:
        embedded = load_embedded(out_dir)
        entries, fingerprint = embedded.entries, embedded.fingerprint
    except UserError:
        entries, fingerprint = [], None
    ok = sum(e.status == OK for e in entries)
    bad = [e for e in entries if e.status != OK]
    losses = clustered_losses(out_dir)
    title = title or f"photoclust: {out_dir.name}"
    nav = " · ".join(f"<a href=\"#{escape(loss)}\">{escape(loss)}</a>" for loss in losses)
    comparison = (f"<h2>All losses side by side</h2><p><img class=sheet src=\"{href('sheets/losses.png')}\" "
                  "alt=\"representatives under each loss\"></p>") if layout.losses_sheet.is_file() else ""
    unreadable = ("<h2 id=unreadable>Files that could not be read</h2><table><tr><th>file</th><th>reason</th></tr>"
                  + "".join(f"<tr><td>{shown(e.path)}</td><td>{shown(e.reason)}</td></tr>" for e in bad)
                  + "</table>") if bad else "<p class=muted>Every image file was read.</p>"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{shown(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body>
<h1>{shown(title)}</h1>
<p>{ok} photos embedded, {len(bad)} unreadable (<a href="{href(layout.relative(layout.manifest))}">manifest.csv</a>).
Clustered under: {nav or '<span class=muted>nothing yet</span>'}.</p>
{f'<p><a href="{href(layout.relative(layout.map_page))}">Map of all photos</a>: every photo placed by similarity, coloured by cluster.</p>' if layout.map_page.is_file() else ''}
{comparison}
{_evaluation_section(layout)}
{_sweep_section(layout)}
{''.join(_loss_section(layout, loss, fingerprint) for loss in losses)}
{unreadable}
<p class=muted>Made by photoclust. Every path is relative to this folder.</p>
</body></html>
"""
    atomic.write_text(layout.index, page)
    return layout.index
