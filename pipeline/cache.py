"""The features cache of one output folder: boring, inspectable files written atomically.

  features.npy    float32 (n, 512); row i belongs to row i of manifest.csv; rows of files
                  that could not be decoded are NaN
  manifest.csv    path (relative, POSIX), size, mtime_ns, sha1, status (ok|unreadable), reason
  cache_key.json  model, weights, preprocessing, precision and library versions that made it
  journal/        batches of an extraction still in progress (appended, flushed per batch),
                  so a killed run loses at most the batch in flight
  cache/<id>/     the files of other cache keys, moved aside, never overwritten or reused
  source.json     the photo folder the manifest's relative paths start from (for the sheets)
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import warnings
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import numpy as np

from .errors import UserError

FEATURE_DIM = 512
FEATURES = "features.npy"
MANIFEST = "manifest.csv"
KEY_FILE = "cache_key.json"
JOURNAL = "journal"
STASH = "cache"
SOURCE = "source.json"
OK, UNREADABLE = "ok", "unreadable"


@dataclass(frozen=True)
class Entry:
    path: str
    size: int
    mtime_ns: int
    sha1: str
    status: str
    reason: str = ""


MANIFEST_COLUMNS = [f.name for f in fields(Entry)]


def key_id(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def activate_key(out_dir: Path, key: dict) -> None:
    """Make `key` the cache in `out_dir`'s top level, stashing another key's files aside."""
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = key_id(key)
    current = _read_key_id(out_dir)
    if current == wanted:
        return
    if current is not None:
        _move_cache_files(out_dir, out_dir / STASH / current)
    stashed = out_dir / STASH / wanted
    if stashed.is_dir():
        _move_cache_files(stashed, out_dir)
        stashed.rmdir()
    atomic_write_bytes(out_dir / KEY_FILE, json.dumps(key, indent=2, sort_keys=True).encode())


def _read_key_id(out_dir: Path) -> str | None:
    path = out_dir / KEY_FILE
    if not path.is_file():
        return None
    try:
        return key_id(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "unreadable-key"


def _move_cache_files(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in (FEATURES, MANIFEST, KEY_FILE, JOURNAL):
        if (src / name).exists():
            if (dst / name).exists():
                shutil.rmtree(dst / name) if (dst / name).is_dir() else (dst / name).unlink()
            os.replace(src / name, dst / name)


def read_key(out_dir: Path) -> dict:
    path = out_dir / KEY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def read_cache(out_dir: Path) -> tuple[list[Entry], np.ndarray]:
    """Entries and features of the active key; empty when none or when inconsistent."""
    manifest, features = out_dir / MANIFEST, out_dir / FEATURES
    if not (manifest.is_file() and features.is_file()):
        return [], np.empty((0, FEATURE_DIM), np.float32)
    entries = read_manifest(manifest)
    rows = np.load(features, allow_pickle=False)
    if rows.ndim != 2 or rows.shape != (len(entries), FEATURE_DIM) or rows.dtype != np.float32:
        warnings.warn(f"{features} ({rows.shape}) does not match {manifest} ({len(entries)} rows); "
                      "ignoring the cache and extracting again")
        return [], np.empty((0, FEATURE_DIM), np.float32)
    return entries, rows


def read_manifest(path: Path) -> list[Entry]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != MANIFEST_COLUMNS:
            raise UserError(f"{path}: unexpected columns {reader.fieldnames}; delete the folder and extract again")
        return [Entry(r["path"], int(r["size"]), int(r["mtime_ns"]), r["sha1"], r["status"], r["reason"])
                for r in reader]


def write_cache(out_dir: Path, entries: list[Entry], features: np.ndarray) -> None:
    # Features first: a crash between the two renames leaves a length mismatch, which
    # read_cache detects, never a manifest that points at the wrong rows.
    atomic_save_npy(out_dir / FEATURES, np.ascontiguousarray(features, dtype=np.float32))
    atomic_write_csv(out_dir / MANIFEST, MANIFEST_COLUMNS, [astuple(e) for e in entries])


def load_embedded(out_dir: Path) -> tuple[list[str], np.ndarray, dict]:
    """What the later stages read: paths and features of the decoded images, and the key."""
    if not (out_dir / FEATURES).is_file():
        raise UserError(f"no features in {out_dir}: run `python -m pipeline extract PHOTOS --out {out_dir}` "
                        "(or `make features`) first")
    entries, features = read_cache(out_dir)
    ok = [i for i, e in enumerate(entries) if e.status == OK]
    if not ok:
        raise UserError(f"{out_dir}/{MANIFEST} lists no decoded image; check the photo folder")
    return [entries[i].path for i in ok], features[ok], read_key(out_dir)


class Journal:
    """Append-only record of finished batches: one JSON line per image plus its float32 row.

    Rows are written before their lines, and a line is only trusted when complete, so a
    run killed at any point leaves a readable prefix.
    """

    def __init__(self, out_dir: Path):
        self.dir = out_dir / JOURNAL
        self.rows_path = self.dir / "rows.f32"
        self.lines_path = self.dir / "entries.jsonl"

    def read(self) -> tuple[list[Entry], np.ndarray]:
        if not (self.rows_path.is_file() and self.lines_path.is_file()):
            return [], np.empty((0, FEATURE_DIM), np.float32)
        entries = []
        for line in self.lines_path.read_text(encoding="utf-8").splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # torn last line
            try:
                entries.append(Entry(**json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                break
        raw = np.fromfile(self.rows_path, dtype=np.float32)
        n = min(len(entries), raw.size // FEATURE_DIM)
        return entries[:n], raw[: n * FEATURE_DIM].reshape(n, FEATURE_DIM).copy()

    def append(self, entries: list[Entry], rows: np.ndarray) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.rows_path, "ab") as fh:
            fh.write(np.ascontiguousarray(rows, dtype=np.float32).tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        with open(self.lines_path, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(e.__dict__) + "\n" for e in entries))
            fh.flush()
            os.fsync(fh.fileno())

    def reset(self, entries: list[Entry], rows: np.ndarray) -> None:
        """Rewrite the journal to hold exactly these records (drops a torn tail)."""
        self.clear()
        if entries:
            self.append(entries, rows)

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def write_source(out_dir: Path, photos: Path) -> None:
    atomic_write_bytes(out_dir / SOURCE, (json.dumps({"photos": str(Path(photos).resolve())}, indent=2) + "\n").encode())


def read_source(out_dir: Path) -> Path:
    """The photo folder of `out_dir`'s manifest, as recorded by the last extract."""
    try:
        return Path(json.loads((out_dir / SOURCE).read_text(encoding="utf-8"))["photos"])
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        raise UserError(f"{out_dir}/{SOURCE} is missing or unreadable: run `python -m pipeline extract PHOTOS "
                        f"--out {out_dir}` again so the sheets know where the photos are") from None
