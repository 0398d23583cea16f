"""The features cache of one output folder: boring, inspectable files, committed as one unit.

  features.npy    float32 (n, d), d the model's feature dimension (VGG16 512,
                  EfficientNet-Lite0 1280; cache_key.json's feature_dim); row i belongs to row i of manifest.csv; rows of files
                  that could not be decoded are NaN
  manifest.csv    path (relative, POSIX), size, mtime_ns, sha1, status (ok|unreadable), reason
  features.json   the commit record: the SHA-256 of features.npy and of manifest.csv as
                  written together. A pair that does not match it (a crash between the two
                  renames, a manifest re-sorted in a spreadsheet, a truncated file) is never
                  used: a half-finished commit is completed, anything else is set aside
  cache_key.json  model, weights, preprocessing, precision and library versions that made it
  journal/        batches of an extraction still in progress (appended, flushed per batch),
                  so a killed run loses at most the batch in flight
  cache/<id>/     the files of other cache keys, moved aside, never overwritten or reused
  damaged/<time>/ cache files that failed their check, set aside (never deleted)
  source.json     the photo folder the manifest's relative paths start from (for the sheets)

A commit writes the new pair under temporary names (.features.npy.next,
.manifest.csv.next), then the record (the commit point), then renames the pair into
place. Whoever next opens the cache finishes a commit that a crash interrupted.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import numpy as np

from . import atomic, faults
from .errors import UserError
from .layout import Layout
from .tables import read_rows, write_csv

DEFAULT_FEATURE_DIM = 512  # VGG16's; a cache's own dimension is its key's feature_dim
OK, UNREADABLE = "ok", "unreadable"
RECORD_FORMAT = 1


@dataclass(frozen=True)
class Entry:
    path: str
    size: int
    mtime_ns: int
    sha1: str
    status: str
    reason: str = ""


MANIFEST_COLUMNS = [f.name for f in fields(Entry)]


class CacheDamaged(Exception):
    """The features cache on disk cannot be trusted; `reason` says why, in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def key_id(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (sha1 for the manifest's photos, sha256 for the commit record)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, algorithm).hexdigest()


def _empty(dim: int) -> tuple[list[Entry], np.ndarray]:
    return [], np.empty((0, dim), np.float32)


def feature_dim(out_dir: Path) -> int | None:
    """The feature dimension the active cache key promises (the model's), None when no key says."""
    try:
        return int(read_key(out_dir)["feature_dim"])
    except (KeyError, TypeError, ValueError):
        return None


def _fits(features: np.ndarray, rows: int, dim: int | None) -> bool:
    return features.ndim == 2 and features.shape[0] == rows and (dim is None or features.shape[1] == dim)


def _pending(path: Path) -> Path:
    return path.with_name(f".{path.name}.next")


def _cache_files(layout: Layout) -> list[Path]:
    # The key file goes last when moving out and comes last when moving in: while it is
    # missing or still names the old key, a rerun repeats the move from where it stopped.
    return [layout.features, layout.manifest, layout.record, _pending(layout.features), _pending(layout.manifest),
            layout.journal, layout.cache_key]


# ----------------------------------------------------------------------------- cache keys

def activate_key(out_dir: Path, key: dict) -> None:
    """Make `key` the cache in `out_dir`'s top level, stashing another key's files aside."""
    layout = Layout(out_dir)
    layout.root.mkdir(parents=True, exist_ok=True)
    wanted = key_id(key)
    current = _read_key_id(layout)
    if current == wanted:
        return
    if current is not None:
        _move_cache_files(layout, layout.root, layout.stash(current))
    stashed = layout.stash(wanted)
    if stashed.is_dir():
        _move_cache_files(layout, stashed, layout.root)
        stashed.rmdir()
    atomic.write_text(layout.cache_key, json.dumps(key, indent=2, sort_keys=True))


def _read_key_id(layout: Layout) -> str | None:
    if not layout.cache_key.is_file():
        return None
    try:
        return key_id(json.loads(layout.cache_key.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "unreadable-key"


def _move_cache_files(layout: Layout, src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for path in _cache_files(layout):
        source, target = src / path.name, dst / path.name
        if source.exists():
            if target.is_dir():
                atomic.remove_tree(target)
            atomic.replace(source, target)


def read_key(out_dir: Path) -> dict:
    path = Layout(out_dir).cache_key
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}


# ----------------------------------------------------------------------------- reading

def load_cache(out_dir: Path, repair: bool = True) -> tuple[list[Entry], np.ndarray]:
    """Entries and features of the active key (empty when there is none yet).

    Finishes a commit a crash interrupted; raises CacheDamaged when the files on disk do
    not match their record. With `repair=False` it writes nothing (for readers that hold
    no lock, see api.py): a commit in progress or interrupted is CacheDamaged too.
    """
    layout = Layout(out_dir)
    pairs = [(layout.features, "features_sha256"), (layout.manifest, "manifest_sha256")]
    if not layout.record.is_file():
        if layout.features.exists() or layout.manifest.exists():
            raise CacheDamaged(f"{layout.features.name} and {layout.manifest.name} have no {layout.record.name} "
                               "to vouch for them (an older photoclust or a damaged folder)")
        if repair:
            _drop_pending(layout)
        return _empty(feature_dim(out_dir) or DEFAULT_FEATURE_DIM)
    try:
        record = json.loads(layout.record.read_text(encoding="utf-8"))
        expected = {name: str(record[name]) for _, name in pairs}
        rows = int(record["rows"])
    except (OSError, ValueError, KeyError, TypeError):
        raise CacheDamaged(f"{layout.record.name} is unreadable") from None
    for path, name in pairs:
        if path.is_file() and file_digest(path) == expected[name]:
            continue
        pending = _pending(path)
        if not repair and pending.is_file():
            raise CacheDamaged(f"{path.name} is being committed by another run, or its commit was interrupted")
        if pending.is_file() and file_digest(pending) == expected[name]:
            atomic.replace(pending, path)  # the commit was interrupted after its record: finish it
            continue
        state = "is missing" if not path.exists() else "was changed or damaged after it was written"
        raise CacheDamaged(f"{path.name} {state} (it does not match {layout.record.name})")
    if repair:
        _drop_pending(layout)
    entries = read_manifest(layout.manifest)
    try:
        features = np.load(layout.features, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise CacheDamaged(f"{layout.features.name} cannot be read ({exc})") from None
    if features.dtype != np.float32 or not _fits(features, len(entries), feature_dim(out_dir)) or len(entries) != rows:
        raise CacheDamaged(f"{layout.features.name} {features.shape} does not fit {layout.manifest.name} "
                           f"({len(entries)} rows)")
    return entries, features


def _drop_pending(layout: Layout) -> None:
    for path in (layout.features, layout.manifest):
        if _pending(path).exists():
            atomic.remove(_pending(path))  # an uncommitted write: its record never landed


def read_manifest(path: Path) -> list[Entry]:
    try:
        header, rows = read_rows(path)
    except (OSError, UnicodeError, ValueError) as exc:
        raise CacheDamaged(f"{Path(path).name} cannot be read ({exc})") from None
    if header != MANIFEST_COLUMNS:
        raise CacheDamaged(f"{Path(path).name} has the columns {header}, not {MANIFEST_COLUMNS}")
    try:
        return [Entry(r["path"], int(r["size"]), int(r["mtime_ns"]), r["sha1"], r["status"], r["reason"])
                for r in rows]
    except (KeyError, TypeError, ValueError):
        raise CacheDamaged(f"{Path(path).name} has a garbled row") from None


def set_aside(out_dir: Path) -> Path | None:
    """Move the cache files that failed their check to damaged/<time>/ (never deleted)."""
    layout = Layout(out_dir)
    present = [p for p in (layout.features, layout.manifest, layout.record) if p.exists()]
    if not present:
        return None
    folder = layout.set_aside / time.strftime("%Y%m%d-%H%M%S")
    n = 1
    while folder.exists():
        n += 1
        folder = folder.with_name(f"{folder.name.split('.')[0]}.{n}")
    folder.mkdir(parents=True)
    for path in present:
        atomic.replace(path, folder / path.name)
    _drop_pending(layout)
    return folder


# ----------------------------------------------------------------------------- writing

def write_cache(out_dir: Path, entries: list[Entry], features: np.ndarray) -> None:
    """Commit `entries` and their `features` as one unit (see the module docstring)."""
    layout = Layout(out_dir)
    features = np.ascontiguousarray(features, dtype=np.float32)
    if not _fits(features, len(entries), feature_dim(out_dir)):
        raise ValueError(f"{features.shape} features for {len(entries)} manifest rows")
    atomic.save_npy(_pending(layout.features), features)
    write_csv(_pending(layout.manifest), MANIFEST_COLUMNS, [astuple(e) for e in entries])
    record = {"format": RECORD_FORMAT, "rows": len(entries),
              "features_sha256": file_digest(_pending(layout.features)),
              "manifest_sha256": file_digest(_pending(layout.manifest))}
    atomic.write_text(layout.record, json.dumps(record, indent=2) + "\n")  # the commit point
    atomic.replace(_pending(layout.features), layout.features)
    atomic.replace(_pending(layout.manifest), layout.manifest)


# ----------------------------------------------------------------------------- later stages

@dataclass(frozen=True)
class Embedded:
    """What the stages after extraction read: the decoded photos and their features."""
    paths: list[str]
    features: np.ndarray
    key: dict
    fingerprint: str  # of these paths and rows: a clustering records it, later stages check it
    entries: list[Entry]  # every manifest row, the unreadable ones too (their reasons, the photos' SHA-1)


def features_fingerprint(paths: list[str], features: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update("\n".join(paths).encode("utf-8", "surrogateescape"))
    digest.update(np.ascontiguousarray(features, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def load_embedded(out_dir: Path, repair: bool = True) -> Embedded:
    """The decoded photos' paths and features; `repair=False` writes nothing (see `load_cache`)."""
    layout = Layout(out_dir)
    if not (layout.features.exists() or layout.record.exists()):
        raise UserError(f"no features in {out_dir}: run `photoclust extract PHOTOS --out {out_dir}` "
                        "(or `make features`) first")
    try:
        entries, features = load_cache(out_dir, repair=repair)
    except CacheDamaged as exc:
        raise UserError(f"{out_dir}: {exc.reason}; run `photoclust extract PHOTOS --out {out_dir}` to rebuild "
                        "the features") from None
    ok = [i for i, e in enumerate(entries) if e.status == OK]
    if not ok:
        raise UserError(f"{layout.manifest} lists no decoded image; check the photo folder (unreadable files "
                        "and their reasons are listed in it)")
    paths = [entries[i].path for i in ok]
    rows = features[ok]
    return Embedded(paths, rows, read_key(out_dir), features_fingerprint(paths, rows), entries)


# ----------------------------------------------------------------------------- the journal

class Journal:
    """Append-only record of finished batches: one JSON line per image plus its float32 row.

    Rows are written before their lines, and a line is only trusted when complete, so a
    run killed at any point leaves a readable prefix.
    """

    def __init__(self, out_dir: Path):
        self.dir = Layout(out_dir).journal
        self.dim = feature_dim(out_dir) or DEFAULT_FEATURE_DIM  # the journal moves with its key (_cache_files)
        self.rows_path = self.dir / "rows.f32"
        self.lines_path = self.dir / "entries.jsonl"

    def read(self) -> tuple[list[Entry], np.ndarray]:
        if not (self.rows_path.is_file() and self.lines_path.is_file()):
            return _empty(self.dim)
        entries = []
        for line in self.lines_path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # torn last line
            try:
                entries.append(Entry(**json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                break
        raw = np.fromfile(self.rows_path, dtype=np.float32)
        n = min(len(entries), raw.size // self.dim)
        return entries[:n], raw[: n * self.dim].reshape(n, self.dim).copy()

    def append(self, entries: list[Entry], rows: np.ndarray) -> None:
        import os

        self.dir.mkdir(parents=True, exist_ok=True)
        faults.point("append journal rows")
        with open(self.rows_path, "ab") as fh:
            fh.write(np.ascontiguousarray(rows, dtype=np.float32).tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        faults.point("append journal entries")
        with open(self.lines_path, "a", encoding="utf-8") as fh:
            # json.dumps writes a name's undecodable bytes as \udcXX escapes: ASCII, exact round trip.
            fh.write("".join(json.dumps(e.__dict__) + "\n" for e in entries))
            fh.flush()
            os.fsync(fh.fileno())

    def reset(self, entries: list[Entry], rows: np.ndarray) -> None:
        """Rewrite the journal to hold exactly these records (drops a torn tail)."""
        if not self.dir.exists():
            return
        self.clear()
        if entries:
            self.append(entries, rows)

    def clear(self) -> None:
        if self.dir.exists():
            atomic.remove_tree(self.dir)


# ----------------------------------------------------------------------------- the photo folder

def write_source(out_dir: Path, photos: Path) -> None:
    text = json.dumps({"photos": str(Path(photos).resolve())}, indent=2) + "\n"
    layout = Layout(out_dir)
    try:
        if layout.source.read_text(encoding="utf-8") == text:
            return  # unchanged: no write (and no write point) on a rerun
    except (OSError, UnicodeDecodeError):
        pass
    atomic.write_text(layout.source, text)


def read_source(out_dir: Path) -> Path:
    """The photo folder of `out_dir`'s manifest, as recorded by the last extract."""
    try:
        return Path(json.loads(Layout(out_dir).source.read_text(encoding="utf-8"))["photos"])
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        raise UserError(f"{out_dir}/source.json is missing or unreadable: run `photoclust extract PHOTOS "
                        f"--out {out_dir}` again so the sheets know where the photos are") from None
