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

from .cache import OK, atomic_write_bytes, read_manifest
from .render import cluster_sheet_name
from .represent import clustered_losses

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; } td, th { padding: .2em .7em; border-bottom: 1px solid #eee; text-align: left; }
img.sheet { max-width: 100%; border: 1px solid #ddd; }
.muted { color: #777; } code { background: #f4f4f4; padding: 0 .25em; }
"""


def href(relative: str) -> str:
    """A relative URL for a path inside the output folder (each segment percent-encoded)."""
    return escape(quote(relative), quote=True)


def _summary(out_dir: Path, loss: str) -> dict:
    try:
        return json.loads((out_dir / "clusters" / loss / "summary.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _loss_section(out_dir: Path, loss: str) -> str:
    summary = _summary(out_dir, loss)
    reps_path = out_dir / "clusters" / loss / "representatives.csv"
    reps = pd.read_csv(reps_path, keep_default_na=False) if reps_path.is_file() else pd.DataFrame()
    params = ", ".join(f"{escape(k)} = {v:.4g}" for k, v in summary.get("params", {}).items()) or "none"
    setting = summary.get("param_setting")
    if setting == "auto" and summary.get("params"):
        params += " <span class=muted>(auto: from the data's scale)</span>"
    def sheet_link(cluster: int) -> str:
        name = cluster_sheet_name(loss, cluster)
        return f"<a href=\"{href(name)}\">cluster {cluster}</a>" if (out_dir / name).is_file() else f"cluster {cluster}"

    rows = "".join(
        f"<tr><td>{sheet_link(int(r.cluster))}</td>"
        f"<td>{int(r.size)}</td><td>{escape(str(r.representative))}</td><td>{float(r.representative_loss):.4g}</td>"
        f"<td>{escape(str(r.outliers).replace('|', ', '))}</td></tr>"
        for r in reps.itertuples())
    sheet = f"sheets/representatives_{loss}.png"
    # Link only what exists: `cluster` or `evaluate` may rewrite the page before `render` ran.
    reps_link = (f" · <a href=\"{href(f'clusters/{loss}/representatives.csv')}\">representatives.csv</a>"
                 if reps_path.is_file() else "")
    picture = (f"<p><img class=sheet src=\"{href(sheet)}\" alt=\"representatives under {escape(loss)}\"></p>"
               if (out_dir / sheet).is_file() else
               "<p class=muted>No sheets yet: run <code>make sheets</code> (python -m pipeline render).</p>")
    return f"""
<h2 id="{escape(loss)}">{escape(loss)}</h2>
<p>k = {summary.get('k', '?')}, parameters: {params}; objective {summary.get('objective', float('nan')):.6g}
after {summary.get('iterations', '?')} iterations ({'converged' if summary.get('converged') else 'iteration cap reached'}),
{summary.get('seconds', float('nan')):.2f} s; seed {summary.get('seed', '?')}, {summary.get('n_init', '?')} restarts,
features normalised: {escape(str(summary.get('normalize', '?')))}.
<a href="{href(f'clusters/{loss}/assignments.csv')}">assignments.csv</a>{reps_link}</p>
{picture}
<table><tr><th>cluster sheet</th><th>size</th><th>representative</th><th>its loss</th><th>farthest members</th></tr>
{rows}</table>"""


def _sweep_section(out_dir: Path) -> str:
    parts = []
    for meta_path in sorted((out_dir / "sweep").glob("*.json")):
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


def _evaluation_section(out_dir: Path) -> str:
    path = out_dir / "evaluation.csv"
    if not path.is_file():
        return ""
    table = pd.read_csv(path)
    rows = "".join(f"<tr><td><a href=\"#{escape(str(r.loss))}\">{escape(str(r.loss))}</a></td><td>{int(r.k)}</td>"
                   f"<td>{r.nmi:.3f}</td><td>{r.ari:.3f}</td><td>{r.accuracy:.3f}</td><td>{r.purity:.3f}</td></tr>"
                   for r in table.itertuples())
    figures = "".join(f"<img src=\"{href(f'evaluation/confusion_{r.loss}.png')}\" alt=\"confusion {escape(str(r.loss))}\">"
                      for r in table.itertuples() if (out_dir / "evaluation" / f"confusion_{r.loss}.png").is_file())
    labelled = int(table["labelled"].iloc[0]) if len(table) else 0
    return (f"<h2 id=evaluation>Against the labels</h2><p>{labelled} labelled photos. "
            "<a href=\"evaluation.csv\">evaluation.csv</a> · "
            "<a href=\"evaluation_agreement.csv\">agreement between the losses (ARI)</a></p>"
            "<table><tr><th>loss</th><th>k</th><th>NMI</th><th>ARI</th><th>accuracy</th><th>purity</th></tr>"
            f"{rows}</table><p>{figures}</p>")


def write_index(out_dir: Path, title: str | None = None) -> Path:
    """Write out_dir/index.html from what the stages left there; returns its path."""
    out_dir = Path(out_dir)
    entries = read_manifest(out_dir / "manifest.csv") if (out_dir / "manifest.csv").is_file() else []
    ok = sum(e.status == OK for e in entries)
    bad = [e for e in entries if e.status != OK]
    losses = clustered_losses(out_dir)
    title = title or f"photoclust: {out_dir.name}"
    nav = " · ".join(f"<a href=\"#{escape(loss)}\">{escape(loss)}</a>" for loss in losses)
    comparison = (f"<h2>All losses side by side</h2><p><img class=sheet src=\"{href('sheets/losses.png')}\" "
                  "alt=\"representatives under each loss\"></p>") if (out_dir / "sheets" / "losses.png").is_file() else ""
    unreadable = ("<h2 id=unreadable>Files that could not be read</h2><table><tr><th>file</th><th>reason</th></tr>"
                  + "".join(f"<tr><td>{escape(e.path)}</td><td>{escape(e.reason)}</td></tr>" for e in bad)
                  + "</table>") if bad else "<p class=muted>Every image file was read.</p>"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body>
<h1>{escape(title)}</h1>
<p>{ok} photos embedded, {len(bad)} unreadable (<a href="manifest.csv">manifest.csv</a>).
Clustered under: {nav or '<span class=muted>nothing yet</span>'}.</p>
{comparison}
{_evaluation_section(out_dir)}
{_sweep_section(out_dir)}
{''.join(_loss_section(out_dir, loss) for loss in losses)}
{unreadable}
<p class=muted>Made by photoclust. Every path is relative to this folder.</p>
</body></html>
"""
    path = out_dir / "index.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path
