"""`dupes`: exact and near-duplicate photos, from the cached features (opens no photo).

- exact: files with the same content, by the SHA-1 that manifest.csv already holds;
- near: photos whose L2-normalised 512-d features have a cosine similarity of at least
  `threshold` (resized, recompressed, lightly cropped or re-exposed copies, burst shots).

Two photos are in one group when a chain of exact or near pairs joins them (union-find,
connected components). duplicates.csv has one row per photo in a group of two or more:

  group       0, 1, ...: the largest group first, ties by the group's first path
  path        as in manifest.csv; a group's members sorted by path
  kind        exact: another member of the group has the same content (SHA-1);
              near: no other member has the same content
  similarity  cosine of the member's features to the group's first member's (1.000000
              for the first member and for exact copies of it)

Only decoded photos (status ok) take part; unreadable files are listed in manifest.csv.

The search (`similar_pairs`) never builds the n x n matrix: it walks the upper triangle in
blocks, scores one block of `block_rows` query rows against `block_cols` key rows with
one matrix product, keeps the pairs at or above the threshold, hands them to union-find
and drops the block. Peak memory, in bytes, for n photos of d = 512 dimensions:

    4·n·d                    the unit-length rows (float32; on the GPU when one is used)
  + 5·block_rows·block_cols  one block's scores (float32) and its mask (bool)
  + 20·P                     the P pairs of that block kept (two int64 indices, a float32)
  + 16·n                     union-find's parents and the labels
  + 8·65536·d                one chunk of rows in float64 while normalising

P <= block_rows·block_cols, and P is a few per photo at any useful threshold. For 100,000
photos with the default 4096 x 4096 blocks: 205 MB + 84 MB + (at most 336 MB) + 1.6 MB +
268 MB, under 0.9 GB at worst; the features as loaded (another 4·n·d) come on top.

The default threshold was calibrated with `make bench-dupes` (benchmarks/bench_dupes.py,
outputs/bench/dupes.json): see DEFAULT_THRESHOLD.

duplicates.json (written after duplicates.csv, atomically) records the features
fingerprint and the SHA-256 of duplicates.csv: `read_duplicates` refuses a table made from
other features or changed since; a rerun with unchanged inputs writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from . import atomic
from .errors import UserError
from .layout import Layout

if TYPE_CHECKING:
    import pandas as pd

# Calibrated by `make bench-dupes` (outputs/bench/dupes.json; the README's "Duplicates and
# outliers" has the table): on the sample's photos and their edited copies (Oxford VGG16
# weights, bf16), 0.86 gives the highest F1 of the pairs that end up in one group (0.963:
# precision 0.960, recall 0.965). Lower thresholds chain different photos into one group
# (grouped precision 0.87 at 0.85, 0.26 at 0.80); higher ones miss the half-size and
# quality-30 copies of these small images (grouped recall 0.85 at 0.90).
DEFAULT_THRESHOLD = 0.86


def model_threshold(key: dict) -> float:
    """The default threshold for features of the cache key `key`: its model's own, calibrated
    by `make bench-dupes MODEL=...` (cosines of different networks' features are not on one
    scale), or DEFAULT_THRESHOLD for a model nobody calibrated."""
    from .backbones import by_model_id

    backbone = by_model_id(str(key.get("model", "")))
    return backbone.dupes_threshold if backbone is not None and backbone.dupes_threshold else DEFAULT_THRESHOLD
BLOCK = 4096
COLUMNS = ["group", "path", "kind", "similarity"]
RECORD_FORMAT = 1


def check_threshold(value, origin: str = "--threshold") -> float:
    """`value` as a cosine threshold in (0, 1], or a one-line UserError naming `origin`."""
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        threshold = math.nan
    if not (0.0 < threshold <= 1.0):  # also refuses NaN
        raise UserError(f"{origin} must be a cosine similarity in (0, 1] (default {DEFAULT_THRESHOLD}), "
                        f"got {value!r}")
    return threshold


def unit_rows(features: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Every row scaled to unit length (float32, norms in float64 a chunk of rows at a time);
    an all-zero row stays zero."""
    features = np.asarray(features)
    unit = np.empty(features.shape, dtype=np.float32)
    for start in range(0, len(features), chunk):
        rows = features[start:start + chunk].astype(np.float64)
        unit[start:start + chunk] = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return unit


def similar_pairs(unit: np.ndarray, threshold: float, *, block_rows: int = BLOCK, block_cols: int = BLOCK,
                  device: str = "cpu", progress: bool | None = False
                  ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every pair i < j of rows of `unit` with unit[i] . unit[j] >= threshold, one block at a time.

    Yields (i, j, similarity) arrays per block that has pairs (int64, int64, float32); only
    blocks that reach above the diagonal are scored. Memory: see the module docstring.
    """
    import torch
    from tqdm import tqdm

    if block_rows < 1 or block_cols < 1:
        raise ValueError("block sizes must be at least 1")
    n = len(unit)
    x = torch.from_numpy(np.ascontiguousarray(unit, dtype=np.float32)).to(device)
    with torch.inference_mode():
        for a in tqdm(range(0, n, block_rows), desc="near-duplicates", unit="block", leave=False,
                      disable=None if progress is None else not progress, dynamic_ncols=True):
            a2 = min(n, a + block_rows)
            query = x[a:a2]
            for b in range(0, n, block_cols):
                b2 = min(n, b + block_cols)
                if b2 - 1 <= a:  # every column of this block is at or left of every row's diagonal
                    continue
                scores = query @ x[b:b2].T
                hit = scores >= threshold
                if b < a2:  # the block crosses the diagonal: keep j > i only
                    rows = torch.arange(a, a2, device=x.device)[:, None]
                    cols = torch.arange(b, b2, device=x.device)[None, :]
                    hit &= cols > rows
                r, c = hit.nonzero(as_tuple=True)
                if r.numel():
                    yield ((r + a).cpu().numpy().astype(np.int64), (c + b).cpu().numpy().astype(np.int64),
                           scores[r, c].float().cpu().numpy())
                del scores, hit


class UnionFind:
    """Connected components of n nodes under batches of edges, vectorised with numpy.

    Every node points to a node of smaller or equal index, so a component's root is its
    smallest member; `union` hooks roots onto smaller roots until every edge of the batch
    joins one root, flattening the forest in between (pointer jumping).
    """

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)

    def _flatten(self) -> None:
        parent = self.parent
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        self.parent = parent

    def union(self, i: np.ndarray, j: np.ndarray) -> None:
        i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
        while i.size:
            self._flatten()
            ri, rj = self.parent[i], self.parent[j]
            apart = ri != rj
            i, j = ri[apart], rj[apart]
            if i.size:
                np.minimum.at(self.parent, np.maximum(i, j), np.minimum(i, j))

    def labels(self) -> np.ndarray:
        """The component of every node, named by its smallest member."""
        self._flatten()
        return self.parent.copy()


def exact_edges(sha1s: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Edges joining every photo to the first photo of the same content (empty SHA-1s never)."""
    first: dict[str, int] = {}
    i, j = [], []
    for index, digest in enumerate(sha1s):
        if not digest:
            continue
        if digest in first:
            i.append(first[digest])
            j.append(index)
        else:
            first[digest] = index
    return np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)


def group_table(paths: Sequence[str], sha1s: Sequence[str], unit: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """duplicates.csv as a frame, from every photo's component label (see the module docstring)."""
    import pandas as pd

    labels = np.asarray(labels)
    sizes = np.bincount(labels, minlength=len(paths)) if len(paths) else np.zeros(0, np.int64)
    members: dict[int, list[int]] = {}
    for index in np.flatnonzero(sizes[labels] >= 2):
        members.setdefault(int(labels[index]), []).append(int(index))
    groups = [sorted(m, key=lambda k: paths[k]) for m in members.values()]
    groups.sort(key=lambda m: (-len(m), paths[m[0]]))
    rows = []
    for number, group in enumerate(groups):
        first = group[0]
        sims = np.clip(unit[group].astype(np.float64) @ unit[first].astype(np.float64), -1.0, 1.0)
        digests = [sha1s[k] for k in group]
        counts: dict[str, int] = {}
        for digest in digests:
            counts[digest] = counts.get(digest, 0) + 1
        by_content: dict[str, float] = {digests[0]: 1.0} if digests[0] else {}
        for k, digest, sim in zip(group, digests, sims):
            exact = bool(digest) and counts[digest] >= 2
            # copies of one content share one value: that of the first copy (1.0 for the first member's)
            value = by_content.setdefault(digest, float(sim)) if digest else float(sim)
            rows.append((number, paths[k], "exact" if exact else "near", 1.0 if k == first else value))
    return pd.DataFrame(rows, columns=COLUMNS)


def find_duplicates(paths: Sequence[str], sha1s: Sequence[str], features: np.ndarray, threshold: float, *,
                    block_rows: int = BLOCK, block_cols: int = BLOCK, device: str = "cpu",
                    progress: bool | None = False) -> pd.DataFrame:
    """The duplicate groups of these photos (duplicates.csv as a frame): pure, no I/O."""
    if not (len(paths) == len(sha1s) == len(features)):
        raise ValueError("paths, sha1s and features must have one entry per photo")
    unit = unit_rows(features)
    components = UnionFind(len(paths))
    components.union(*exact_edges(sha1s))
    for i, j, _ in similar_pairs(unit, threshold, block_rows=block_rows, block_cols=block_cols, device=device,
                                 progress=progress):
        components.union(i, j)
    return group_table(paths, sha1s, unit, components.labels())


# ----------------------------------------------------------------------------- the stage

@dataclass
class DupesResult:
    threshold: float
    groups: int
    photos: int  # photos in a group
    exact: int  # of which have an exact copy in their group
    reused: bool  # the inputs were unchanged: nothing was written


def _inputs_digest(features_fingerprint: str, sha1s: Sequence[str], threshold: float) -> str:
    digest = hashlib.sha256(json.dumps({"format": RECORD_FORMAT, "features": features_fingerprint,
                                        "threshold": threshold}, sort_keys=True).encode())
    digest.update("\n".join(sha1s).encode())
    return digest.hexdigest()[:16]


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def read_record(out_dir: Path) -> dict | None:
    try:
        record = json.loads(Layout(out_dir).duplicates_record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def check_current(out_dir: Path, features_fingerprint: str) -> dict:
    """duplicates.json, if duplicates.csv is complete, unchanged and of the features cached now;
    otherwise a one-line UserError that says to run `dupes`."""
    layout = Layout(out_dir)
    record = read_record(out_dir)
    again = f"run `photoclust dupes --out {out_dir}` (or `make dupes`)"
    if record is None or not layout.duplicates.is_file():
        raise UserError(f"{layout.duplicates}: missing or incomplete (an interrupted run?); {again}")
    if record.get("features_fingerprint") != features_fingerprint:
        raise UserError(f"{layout.duplicates} was made from other features than the cached ones "
                        f"(the photos changed since); {again}")
    if record.get("csv_sha256") != _sha256(layout.duplicates):
        raise UserError(f"{layout.duplicates} changed since `dupes` wrote it; {again}")
    return record


def read_duplicates(out_dir: Path, features_fingerprint: str) -> tuple[pd.DataFrame, dict]:
    """(duplicates.csv as a frame, its record) after `check_current`."""
    from .tables import read_frame

    record = check_current(out_dir, features_fingerprint)
    return read_frame(Layout(out_dir).duplicates, text_columns=["path", "kind"]), record


def dupes_run(out_dir: Path, threshold: float | None = None, *, device: str = "auto",
              log: Callable[[str], None] = print) -> DupesResult:
    """Find the duplicate groups of `out_dir`'s cached features and write duplicates.csv
    (`threshold` None: the features' model's own, see model_threshold)."""
    from .cache import OK, load_embedded
    from .kmeans import resolve_device
    from .tables import write_frame

    out_dir = Path(out_dir)
    layout = Layout(out_dir)
    embedded = load_embedded(out_dir)
    threshold = check_threshold(model_threshold(embedded.key) if threshold is None else threshold)
    sha1s = [e.sha1 for e in embedded.entries if e.status == OK]
    assert len(sha1s) == len(embedded.paths)
    inputs = _inputs_digest(embedded.fingerprint, sha1s, threshold)
    record = read_record(out_dir)
    counts = [record.get(key) for key in ("groups", "photos", "exact")] if record else []
    if record is not None and record.get("inputs") == inputs and all(isinstance(c, int) for c in counts) \
            and record.get("csv_sha256") == _sha256(layout.duplicates):
        log(f"dupes: up to date ({counts[0]} groups at similarity >= {threshold}); nothing to do")
        return DupesResult(threshold, *counts, reused=True)
    table = find_duplicates(embedded.paths, sha1s, embedded.features, threshold,
                            device=str(resolve_device(device)), progress=None)
    write_frame(layout.duplicates, table, float_format="%.6f")
    result = DupesResult(threshold, int(table["group"].nunique()), len(table), int((table["kind"] == "exact").sum()),
                         reused=False)
    record = {"format": RECORD_FORMAT, "threshold": threshold, "groups": result.groups, "photos": result.photos,
              "exact": result.exact, "features_fingerprint": embedded.fingerprint, "inputs": inputs,
              "csv_sha256": _sha256(layout.duplicates)}
    # Written last: it vouches for duplicates.csv (a crash before it leaves a table its readers refuse).
    atomic.write_text(layout.duplicates_record, json.dumps(record, indent=2) + "\n")
    log(f"dupes: {result.groups} groups, {result.photos} photos ({result.exact} with an exact copy) at similarity "
        f">= {threshold} -> {layout.duplicates}")
    return result
