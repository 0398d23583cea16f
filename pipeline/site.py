"""The browsable site: a page per cluster, and pages for duplicates, outliers and new photos,
rendered from jinja2 templates (pipeline/templates/, autoescaped) that index.html uses too.

  site/<loss>/cluster_<j>.html   every member of cluster j, nearest to the center first: a
                                 lazy-loaded thumbnail, its rank and loss; prev/next links (and keys)
  site/outliers_<loss>.html      clusters/<loss>/outliers.csv, worst first, linking each cluster page
  site/duplicates.html           duplicates.csv, one row per group, largest group first
  site/assigned.html             assigned.csv (its current rows), by loss and cluster, linking the cluster pages

The functions here gather plain dicts and lists (strings ready to print: names made
readable by `display_name`, numbers formatted, links relative and percent-encoded per
segment); the templates only lay them out and escape them. Nothing is fetched from the
network and every link is relative, so the folder works from file:// with no server. A photo
links from its page to the photo in the photo folder (a relative path, or a file:// URL
where none exists, as between two Windows drives); a photo without a thumbnail shows a grey
box with its name and the reason. Pages are written with `atomic.write_text`; a page whose
CSV is gone, or whose cluster no longer exists, is removed.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from . import atomic, dupes
from .errors import UserError
from .layout import Layout
from .losses import LOSS_NAMES
from .tables import display_name, read_frame

CLUSTER_PAGE = re.compile(r"cluster_(\d+)\.html")


# ----------------------------------------------------------------------------- templates

@functools.lru_cache(maxsize=None)
def environment():
    """The jinja2 environment over the package's templates: autoescaping on for every
    template, an undefined name is an error rather than an empty string."""
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("pipeline", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True)


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)


def write_page(path: Path, template: str, **context) -> Path:
    atomic.write_text(path, render(template, **context))
    return path


# ----------------------------------------------------------------------------- names and links

def shown(name) -> str:
    """A file name from the data as a person reads it (the template escapes it)."""
    return display_name(str(name))


def href(relative: str) -> str:
    """A relative URL for a relative POSIX path: each segment percent-encoded (a name's bytes
    as they are on disk, so a name that is not UTF-8 still finds its file)."""
    return quote(relative.encode("utf-8", "surrogateescape"), safe="/")


def link(page: Path, target: Path) -> str:
    """The relative URL from `page` to `target`, both inside the output folder."""
    return href(Path(os.path.relpath(target, Path(page).parent)).as_posix())


def photo_link(page: Path, photo: Path) -> str | None:
    """A URL from `page` to a photo outside the output folder: relative when the two share a
    root, a file:// URL otherwise; None when the photo is not there (nothing to open)."""
    photo = Path(photo)
    if not os.path.lexists(photo):
        return None
    photo = Path(os.path.abspath(photo))  # not resolve(): a link to a photo stays the link extract followed
    try:
        return href(Path(os.path.relpath(photo, Path(page).parent.resolve())).as_posix())
    except ValueError:  # another drive (Windows): no relative path between them
        return photo.as_uri()


def params_text(summary: dict) -> str:
    text = ", ".join(f"{name} = {value:.4g}" for name, value in summary.get("params", {}).items()) or "none"
    if summary.get("param_setting") == "auto" and summary.get("params"):
        text += " (auto: from the data's scale)"
    return text


def number(value, digits: int = 4) -> str:
    try:
        return f"{float(value):.{digits}g}"
    except (TypeError, ValueError):
        return shown(value)


class Photos:
    """Photo cards for the pages: thumbnail and photo links from a given page.

    `thumbs` is render's `Thumbnails` (after `prepare`): `cache_path(path)` names a photo's
    thumbnail, `available[path]` says whether it exists, `reasons[path]` why not."""

    def __init__(self, layout: Layout, source: Path, thumbs):
        self.layout, self.source, self.thumbs = layout, Path(source), thumbs

    def photo_path(self, path: str) -> Path:
        return self.source / path  # an absolute path (assigned.csv may hold one) stays as it is

    def card(self, page: Path, path: str, **fields) -> dict:
        has_thumb = self.thumbs.available.get(path, False)
        return {"name": shown(path),
                "thumb": link(page, self.thumbs.cache_path(path)) if has_thumb else None,
                "reason": "" if has_thumb else shown(self.thumbs.reasons.get(path) or "no thumbnail"),
                "photo": photo_link(page, self.photo_path(path)), "representative": False, **fields}


# ----------------------------------------------------------------------------- reading the CSVs

def _read(path: Path, columns: list[str], text_columns: list[str]) -> pd.DataFrame:
    """A CSV another stage wrote, with the columns the page needs; one line naming it otherwise."""
    try:
        frame = read_frame(path, text_columns=text_columns)
    except (OSError, UnicodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{path}: cannot read it ({exc}); make it again or delete it") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: no column {', '.join(missing)}; make it again or delete it")
    for column in text_columns:
        frame[column] = frame[column].astype(str)
    return frame


# ----------------------------------------------------------------------------- the pages

def palette_strip(palette) -> list[dict] | None:
    """A cluster's dominant colours (palette.Palette) as the page draws them: hex code, share
    as text and as a CSS flex weight."""
    if palette is None:
        return None
    return [{"hex": code, "share": f"{100 * share:.1f}%", "weight": f"{share:.6f}"}
            for code, share in zip(palette.hex, palette.shares)]


def cluster_pages(layout: Layout, loss: str, frame: pd.DataFrame, summary: dict, photos: Photos,
                  with_outliers: bool = False, palettes: dict | None = None) -> list[Path]:
    """One page per cluster of `loss`: every member nearest first, prev/next around the clusters
    (a link to the loss's outliers page `with_outliers`; a strip of its dominant colours from
    `palettes`, {cluster: palette.Palette})."""
    clusters = sorted(int(c) for c in frame["cluster"].unique())
    ordered = frame.sort_values(["cluster", "rank"], kind="stable")
    written = []
    overview = lambda page: f"{link(page, layout.index)}#{quote(loss)}"
    for position, (cluster, members) in enumerate(ordered.groupby("cluster", sort=True)):
        cluster = int(cluster)
        page = layout.cluster_page(loss, cluster)
        neighbour = lambda step: {"cluster": clusters[(position + step) % len(clusters)],
                                  "href": link(page, layout.cluster_page(loss, clusters[(position + step) % len(clusters)]))}
        sheet = layout.cluster_sheet(loss, cluster)
        outliers = layout.outliers_page(loss)
        cards = [photos.card(page, row.path, rank=int(row.rank) + 1, loss=number(row.loss_to_center),
                             representative=int(row.rank) == 0)
                 for row in members.itertuples()]
        written.append(write_page(
            page, "cluster.html", title=f"{loss} · cluster {cluster} ({len(members)} photos)", loss=loss,
            cluster=cluster, position=position + 1, count=len(clusters), params=params_text(summary),
            members=cards, overview=overview(page),
            prev=neighbour(-1) if len(clusters) > 1 else None, next=neighbour(1) if len(clusters) > 1 else None,
            sheet=link(page, sheet) if sheet.is_file() else None, assignments=link(page, layout.assignments(loss)),
            outliers=link(page, outliers) if with_outliers else None,
            palette=palette_strip((palettes or {}).get(cluster))))
    # Pages of clusters this clustering does not have (never ours to keep showing).
    folder = layout.cluster_pages(loss)
    for stale in sorted(folder.glob("cluster_*.html")):
        match = CLUSTER_PAGE.fullmatch(stale.name)
        if match and int(match.group(1)) not in clusters:
            atomic.remove(stale)
    return written


def outliers_rows(layout: Layout, loss: str, frame: pd.DataFrame) -> pd.DataFrame | None:
    """outliers.csv of `loss`, worst first; None when it names a photo or cluster that the
    current clustering does not (it was made from an earlier clustering)."""
    table = _read(layout.outliers(loss), ["rank", "path", "cluster", "loss_to_center", "robust_z"], ["path"])
    cluster_of = dict(zip(frame["path"], frame["cluster"].astype(int)))
    if any(cluster_of.get(p) != int(c) for p, c in zip(table["path"], table["cluster"])):
        return None
    return table.sort_values("rank", kind="stable")


def outliers_page(layout: Layout, loss: str, table: pd.DataFrame, photos: Photos) -> Path:
    page = layout.outliers_page(loss)
    rows = []
    for row in table.itertuples():
        cluster_page = layout.cluster_page(loss, int(row.cluster))
        rows.append(photos.card(page, row.path, rank=shown(row.rank), cluster=int(row.cluster),
                                cluster_page=link(page, cluster_page) if cluster_page.is_file() else None,
                                loss=number(row.loss_to_center), z=number(row.robust_z, 3)))
    return write_page(page, "outliers.html", title=f"outliers under {loss}", loss=loss, rows=rows,
                      overview=f"{link(page, layout.index)}#{quote(loss)}", csv=link(page, layout.outliers(loss)))


def duplicate_groups(layout: Layout) -> pd.DataFrame:
    return _read(layout.duplicates, ["group", "path", "kind", "similarity"], ["path", "kind", "group"])


def duplicates_page(layout: Layout, table: pd.DataFrame, photos: Photos) -> Path:
    """Each group side by side, largest first (ties: the order of duplicates.csv)."""
    page = layout.duplicates_page
    groups: dict[str, list] = {}
    for row in table.itertuples():
        groups.setdefault(row.group, []).append(
            photos.card(page, row.path, kind=shown(row.kind), similarity=number(row.similarity)))
    ordered = sorted(groups.items(), key=lambda item: -len(item[1]))  # stable: first appearance breaks ties
    return write_page(page, "duplicates.html", title="duplicates", photos=len(table),
                      groups=[{"group": shown(g), "members": members} for g, members in ordered],
                      overview=link(page, layout.index), csv=link(page, layout.duplicates))


def assigned_rows(layout: Layout, log: Callable[[str], None]) -> pd.DataFrame | None:
    """The rows of assigned.csv whose clustering is still the current one (`assign.read_assigned`);
    None when no row is."""
    from .assign import read_assigned

    current = read_assigned(layout.root)
    stale = len(read_frame(layout.assigned, ["path"])) - len(current)
    if stale:
        log(f"{layout.assigned}: {stale} placement(s) into clusterings refitted since (or of other features) "
            "left out; `photoclust assign` places them again")
    return current if len(current) else None


def assigned_page(layout: Layout, table: pd.DataFrame, photos: Photos) -> Path:
    """By loss (the registry's order, then any other by name), cluster, loss to the center."""
    page = layout.assigned_page
    order = {loss: i for i, loss in enumerate(LOSS_NAMES)}
    losses = []
    by_loss = sorted(table.groupby("loss", sort=True), key=lambda item: (order.get(item[0], len(order)), item[0]))
    for loss, rows in by_loss:
        clusters = []
        for cluster, members in rows.groupby("cluster", sort=True):
            members = members.sort_values(["loss_to_center", "path"], kind="stable")
            cluster_page = layout.cluster_page(loss, int(cluster)) if loss in order else None
            clusters.append({"cluster": int(cluster),
                             "page": link(page, cluster_page) if cluster_page and cluster_page.is_file() else None,
                             "members": [photos.card(page, r.path, loss=number(r.loss_to_center),
                                                     rank=int(r.rank_among_members) + 1)
                                         for r in members.itertuples()]})
        losses.append({"loss": shown(loss), "clusters": clusters})
    return write_page(page, "assigned.html", title="new photos placed into the clusters", photos=len(table),
                      losses=losses, overview=link(page, layout.index), csv=link(page, layout.assigned))


def _remove(path: Path) -> None:
    if path.exists():
        atomic.remove(path)


def write_site(out_dir: Path, frames: dict[str, pd.DataFrame], summaries: dict[str, dict], thumbs, source: Path,
               *, known_paths: Iterable[str] = (), features_fingerprint: str | None = None,
               log: Callable[[str], None] = print,
               progress: bool | None = None, palettes: dict[str, dict] | None = None) -> list[Path]:
    """Every page of the site for the clusterings in `frames` (assignments with ranks, each
    current: render checked them), plus the pages of the CSVs that exist. `thumbs` is render's
    `Thumbnails` (the members' thumbnails prepared; others are made here); `known_paths` are
    the manifest's paths, which duplicates.csv must stay within; `palettes` ({loss: {cluster:
    palette.Palette}}, from render) puts a colour strip on each cluster page. Returns the pages written."""
    layout = Layout(out_dir)
    photos = Photos(layout, source, thumbs)
    written: list[Path] = []

    outliers = {}
    for loss, frame in frames.items():
        if layout.outliers(loss).is_file():
            table = outliers_rows(layout, loss, frame)
            if table is None:
                log(f"{layout.outliers(loss)} names photos or clusters the current {loss} clustering does not "
                    "(it was made from an earlier clustering): no outliers page until it is made again")
            outliers[loss] = table
    duplicates = duplicate_groups(layout) if layout.duplicates.is_file() else None
    if duplicates is not None and features_fingerprint is not None:
        try:  # made from the features cached now, and not edited since (dupes.json vouches)
            dupes.check_current(out_dir, features_fingerprint)
        except UserError as exc:
            log(f"{exc}: no duplicates page until then")
            duplicates = None
    if duplicates is not None:
        known = set(known_paths)
        strangers = [p for p in duplicates["path"] if p not in known]
        if strangers:
            log(f"{layout.duplicates} names photos that are not in manifest.csv (first: {display_name(strangers[0])}; "
                "it was made before the last extract): no duplicates page until it is made again")
            duplicates = None
    assigned = assigned_rows(layout, log) if layout.assigned.is_file() else None

    extra = [*(duplicates["path"] if duplicates is not None else []), *(assigned["path"] if assigned is not None else [])]
    thumbs.prepare(sorted(set(extra)), progress)

    for loss, frame in frames.items():
        written += cluster_pages(layout, loss, frame, summaries[loss], photos, outliers.get(loss) is not None,
                                 (palettes or {}).get(loss))
    for loss in frames:
        if outliers.get(loss) is not None:
            written.append(outliers_page(layout, loss, outliers[loss], photos))
        else:
            _remove(layout.outliers_page(loss))
    if duplicates is not None:
        written.append(duplicates_page(layout, duplicates, photos))
    else:
        _remove(layout.duplicates_page)
    if assigned is not None:
        written.append(assigned_page(layout, assigned, photos))
    else:
        _remove(layout.assigned_page)
    return written
