"""The safety layer end to end: every test builds a small photo folder, breaks something
the way a crash, a spreadsheet, a full disk or a second run would, and checks that no
photo and no result is lost or attached to the wrong photo, and that errors are one line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import pipeline.atomic
from pipeline import lock as lock_module
from pipeline import render as render_module
from pipeline.cache import read_manifest
from pipeline.cli import main
from pipeline.config import ExtractConfig
from pipeline.export import export_clusters
from pipeline.extract import extract_folder
from pipeline.tables import read_rows

from conftest import make_photos

REPO = Path(__file__).resolve().parents[1]
FAST = ["--weights", "random", "--device", "cpu", "--workers", "0"]
CLUSTER = ["--k", "3", "--n-init", "1", "--losses", "square,huber"]
CFG = ExtractConfig(weights="random", device="cpu", workers=0)


class Crash(Exception):
    """Stands for a kill: nothing after the point where it is raised runs."""


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def run_all(capsys, photos, out):
    rc, _, err = cli(capsys, "run", photos, "--out", out, *FAST, *CLUSTER)
    assert rc == 0, err
    return out


def one_error_line(err: str) -> str:
    """The error of a failed command: exactly one `photoclust: error:` line, no traceback."""
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("photoclust: error:")]
    assert len(errors) == 1, err
    assert err.rstrip("\n").splitlines()[-1] == errors[0]
    return errors[0]


def temporaries(folder: Path) -> list[str]:
    return [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names
            if n.endswith(pipeline.atomic.TEMP_SUFFIX)]


def manifest_paths(out: Path) -> list[str]:
    return [e.path for e in read_manifest(out / "manifest.csv")]


def assignment_paths(out: Path, loss: str = "square") -> list[str]:
    return [r["path"] for r in read_rows(out / "clusters" / loss / "assignments.csv")[1]]


def cache_state(out: Path):
    entries = read_manifest(out / "manifest.csv")
    return [(e.path, e.size, e.mtime_ns, e.sha1, e.status) for e in entries], np.load(out / "features.npy")


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` (not hidden): link target or content hash."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if rel.startswith(".") or path.is_dir() and not path.is_symlink():
            continue
        found[rel] = f"-> {os.readlink(path)}" if path.is_symlink() else path.read_bytes().hex()[:64]
    return found


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One finished run on 8 photos, shared by the tests that do not change its features."""
    root = tmp_path_factory.mktemp("base")
    photos, out = root / "photos", root / "out"
    make_photos(photos, 8)
    assert main(["run", str(photos), "--out", str(out), *FAST, *CLUSTER]) == 0
    return photos, out


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """Features (no clustering) of 6 photos, to copy and damage."""
    root = tmp_path_factory.mktemp("extracted")
    photos, out = root / "photos", root / "out"
    make_photos(photos, 6, seed=3)
    extract_folder(photos, out, CFG, log=lambda m: None, progress=False)
    return photos, out


# ----------------------------------------------------------------------------- 1


def test_rows_of_a_run_killed_during_its_final_write_are_saved(tmp_path, capsys):
    photos, out = tmp_path / "photos", tmp_path / "out"
    make_photos(photos, 6)
    assert cli(capsys, "extract", photos, "--out", out, *FAST)[0] == 0
    make_photos(tmp_path / "more", 1, seed=5)[0].rename(photos / "a" / "new.png")

    def killed(decoded):
        raise Crash  # after the batch is journaled, before the cache is committed

    with pytest.raises(Crash):
        extract_folder(photos, out, CFG, log=lambda m: None, on_batch=killed, progress=False)
    assert (out / "journal").is_dir() and "a/new.png" not in manifest_paths(out)

    rc, stdout, err = cli(capsys, "extract", photos, "--out", out, *FAST)
    assert rc == 0, err
    assert "decoded 0" in stdout  # the journaled row is reused, not decoded again
    assert "a/new.png" in manifest_paths(out) and len(manifest_paths(out)) == 7
    assert not (out / "journal").exists()
    assert cli(capsys, "cluster", "--out", out, *CLUSTER)[0] == 0
    assert sorted(assignment_paths(out)) == sorted(manifest_paths(out))


# ----------------------------------------------------------------------------- 2


def test_a_crash_between_the_two_renames_of_a_commit_is_finished(tmp_path, capsys, monkeypatch):
    photos, out, clean = tmp_path / "photos", tmp_path / "out", tmp_path / "clean"
    make_photos(photos, 8)
    assert cli(capsys, "extract", photos, "--out", out, *FAST)[0] == 0
    (photos / "a" / "img_01.jpg").unlink()  # first in order: every later row would shift
    shutil.copy(photos / "b" / "img_04.jpg", photos / "b" / "zz_new.jpg")
    os.utime(photos / "b" / "zz_new.jpg", ns=(1, 10**18))

    real, calls = pipeline.atomic.replace, []

    def replace(src, dst):
        calls.append(Path(dst).name)
        if len(calls) == 2:
            raise Crash  # features.npy renamed into place, manifest.csv not
        real(src, dst)

    monkeypatch.setattr(pipeline.atomic, "replace", replace)
    with pytest.raises(Crash):
        extract_folder(photos, out, CFG, log=lambda m: None, progress=False)
    monkeypatch.undo()
    assert calls == ["features.npy", "manifest.csv"] and (out / ".manifest.csv.next").is_file()

    assert cli(capsys, "extract", photos, "--out", out, *FAST)[0] == 0
    assert cli(capsys, "extract", photos, "--out", clean, *FAST)[0] == 0
    (rows, features), (clean_rows, clean_features) = cache_state(out), cache_state(clean)
    assert rows == clean_rows
    np.testing.assert_array_equal(features, clean_features)
    assert not (out / ".manifest.csv.next").exists() and not (out / "damaged").exists()


def _resort(path: Path) -> None:
    lines = path.read_bytes().split(b"\r\n")
    header, rows = lines[0], [r for r in lines[1:] if r]
    path.write_bytes(b"\r\n".join([header, *sorted(rows, reverse=True)]) + b"\r\n")


def _garble(path: Path) -> None:
    lines = path.read_bytes().split(b"\r\n")
    lines[3] = lines[3].replace(b",", b";", 2)  # size,mtime_ns no longer separate numbers
    path.write_bytes(b"\r\n".join(lines))


@pytest.mark.parametrize("damage", ["resorted", "features-0", "features-50", "features-cut", "garbled-row"])
def test_damaged_features_are_refused_then_set_aside_and_rebuilt(extracted, tmp_path, capsys, damage):
    photos, clean = extracted
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    if damage == "resorted":
        _resort(out / "manifest.csv")  # a spreadsheet sorted it by name, descending
    elif damage == "garbled-row":
        _garble(out / "manifest.csv")
    else:
        # 30000 bytes is more than the features of 6-12 photos hold: "cut" ends one row early
        full = (out / "features.npy").stat().st_size
        os.truncate(out / "features.npy", full - 2048 if damage == "features-cut" else int(damage.split("-")[1]))
    damaged = {name: (out / name).read_bytes() for name in ("features.npy", "manifest.csv")}

    rc, _, err = cli(capsys, "cluster", "--out", out, *CLUSTER)
    assert rc == 2
    assert "photoclust extract" in one_error_line(err)
    assert not (out / "clusters" / "square" / "summary.json").exists()

    rc, _, err = cli(capsys, "extract", photos, "--out", out, *FAST)
    assert rc == 0, err
    notices = [line for line in err.splitlines() if "cannot be trusted" in line]
    assert len(notices) == 1 and "damaged" in notices[0]
    (set_aside,) = (out / "damaged").iterdir()
    assert {name: (set_aside / name).read_bytes() for name in damaged} == damaged  # kept, never deleted
    (rows, features), (clean_rows, clean_features) = cache_state(out), cache_state(clean)
    assert rows == clean_rows
    np.testing.assert_array_equal(features, clean_features)
    assert cli(capsys, "cluster", "--out", out, *CLUSTER)[0] == 0


# ----------------------------------------------------------------------------- 3


@pytest.fixture(scope="module")
def exported(base, tmp_path_factory):
    photos, out = base
    target = tmp_path_factory.mktemp("exported") / "sorted"
    export_clusters(out, "square", target, copy=True)
    return photos, out, target


def test_export_never_writes_into_a_photo_folder(exported, tmp_path, capsys):
    photos, out, target = exported
    # the exported folder is itself used as a photo folder ...
    second = tmp_path / "second"
    run_all(capsys, target, second)
    before = tree(target)
    assert len([p for p in before if p.startswith("cluster_")]) == 8
    # ... so exporting into it again would remove photos: refused
    rc, _, err = cli(capsys, "export", "--out", second, "--loss", "square", "--to", target)
    assert rc == 2 and "overlaps the photo folder" in one_error_line(err)
    assert tree(target) == before

    photo_files = tree(photos)
    for to in (photos / "exported", photos / "a" / "deeper", photos, photos.parent):
        rc, _, err = cli(capsys, "export", "--out", out, "--loss", "square", "--to", to)
        assert rc == 2 and "overlaps the photo folder" in one_error_line(err), to
    assert tree(photos) == photo_files and not (photos / "exported").exists()


def test_re_export_removes_only_its_own_unchanged_files(exported, tmp_path, capsys):
    photos, out, first = exported
    target = tmp_path / "sorted"
    shutil.copytree(first, target, symlinks=True)
    (target / "cluster_0" / "mine.txt").write_text("the user's notes")
    (target / "cluster_9" / "deep").mkdir(parents=True)
    (target / "cluster_9" / "deep" / "keep.jpg").write_bytes(b"user photo")
    edited = sorted((target / "cluster_1").iterdir())[0]
    edited.write_bytes(b"edited by the user")

    rc, _, err = cli(capsys, "export", "--out", out, "--loss", "square", "--to", target, "--copy")
    assert rc == 0, err
    assert (target / "cluster_0" / "mine.txt").read_text() == "the user's notes"
    assert (target / "cluster_9" / "deep" / "keep.jpg").read_bytes() == b"user photo"
    assert edited.read_bytes() == b"edited by the user"
    assert "kept 1 file(s)" in err
    after = tree(target)
    stem, suffix = os.path.splitext(edited.name)
    assert f"cluster_1/{stem}_2{suffix}" in after  # its fresh copy sits beside the user's edit
    made = {p for p in after if p not in ("cluster_0/mine.txt", "cluster_9/deep/keep.jpg", f"cluster_1/{edited.name}")}
    assert len(made) == 8 and not temporaries(target)


def test_an_export_killed_midway_then_rerun_equals_a_clean_export(base, tmp_path, capsys, monkeypatch):
    photos, out = base
    clean, target = tmp_path / "clean", tmp_path / "target"
    assert cli(capsys, "export", "--out", out, "--loss", "huber", "--to", clean)[0] == 0
    (target / "cluster_9").mkdir(parents=True)
    (target / "cluster_9" / "mine.jpg").write_bytes(b"user photo")  # an earlier export's folder, the user's file
    (target / ".photoclust-export").write_text("made by photoclust export; an older version\n")

    real, links = os.symlink, []

    def symlink(src, dst, *args, **kwargs):
        if len(links) == 3:
            raise Crash
        links.append(dst)
        real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "symlink", symlink)
    with pytest.raises(Crash):
        export_clusters(out, "huber", target)
    monkeypatch.undo()
    assert len(links) == 3

    assert cli(capsys, "export", "--out", out, "--loss", "huber", "--to", target)[0] == 0
    assert tree(target) == {**tree(clean), "cluster_9/mine.jpg": b"user photo".hex()}


# ----------------------------------------------------------------------------- 4


def test_a_clustering_of_other_features_is_refused(tmp_path, capsys):
    photos, out = tmp_path / "photos", tmp_path / "out"
    names = make_photos(photos, 8)
    run_all(capsys, photos, out)
    make_photos(photos, 8, seed=7)  # same names, other pictures
    for path in names:
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))
    rc, _, err = cli(capsys, "extract", photos, "--out", out, *FAST)
    assert rc == 0, err

    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{p.relative_to(photos).as_posix()},x{i % 2}\n"
                                              for i, p in enumerate(names)))
    for argv in (["render"], ["represent"], ["export", "--loss", "square", "--to", tmp_path / "x"],
                 ["evaluate"], ["evaluate", "--labels", labels]):
        rc, _, err = cli(capsys, argv[0], "--out", out, *argv[1:])
        assert rc == 2, argv
        assert "photoclust cluster" in one_error_line(err), argv
    assert not (tmp_path / "x").exists()

    run_all(capsys, photos, out)
    for argv in (["render"], ["represent"], ["evaluate"]):
        assert cli(capsys, argv[0], "--out", out, *argv[1:])[0] == 0, argv


# ----------------------------------------------------------------------------- 5


def test_duplicate_photos_share_one_thumbnail(tmp_path, capsys, monkeypatch):
    photos, out = tmp_path / "photos", tmp_path / "out"
    originals = make_photos(photos, 12)
    for i in range(8):  # next to the original in name order, so the thumbnail threads meet them together
        shutil.copy(originals[1], photos / "a" / f"img_01_copy_{i}.jpg")
    (photos / "a" / "img_01_link.jpg").symlink_to(originals[1])
    real, decoded = render_module.thumbnail, []

    def thumbnail(path, size):
        decoded.append(path)  # list.append: safe from the thumbnail threads
        return real(path, size)

    monkeypatch.setattr(render_module, "thumbnail", thumbnail)
    run_all(capsys, photos, out)
    entries = read_manifest(out / "manifest.csv")
    assert len(entries) == 21 and len({e.sha1 for e in entries}) == 12
    assert len(decoded) == 12  # one thumbnail made per content, not one per copy
    for _ in range(3):
        rc, _, err = cli(capsys, "render", "--out", out)
        assert rc == 0, err
    assert len(decoded) == 12
    thumbs = [p for p in (out / "thumbs").iterdir() if not p.name.startswith(".")]
    assert len(thumbs) == 12
    assert {p.name.split("_")[0] for p in thumbs} == {e.sha1 for e in entries}


# ----------------------------------------------------------------------------- 6

NAMES = [b"caf\xe9.jpg", b"carriage\rreturn.jpg", b"line\nfeed.jpg", b"=SUM(A1).jpg", b"+plus.jpg",
         b"-minus.jpg", b"@at.jpg", b"'quoted.jpg", b"comma,name.jpg", b'double"quote.jpg']
FORMULAS = [b"=SUM(A1).jpg", b"+plus.jpg", b"-minus.jpg", b"@at.jpg", b"'quoted.jpg"]


def test_every_file_name_round_trips_through_the_csv_files(tmp_path, capsys):
    photos, out = tmp_path / "photos", tmp_path / "out"
    sources = make_photos(tmp_path / "made", len(NAMES))
    photos.mkdir()
    for source, name in zip(sources, NAMES):
        shutil.copy(source, os.path.join(os.fsencode(photos), name))
    on_disk = sorted(os.fsdecode(n) for n in os.listdir(os.fsencode(photos)))
    assert len(on_disk) == len(NAMES)

    run_all(capsys, photos, out)
    assert sorted(manifest_paths(out)) == on_disk
    assert sorted(read_rows(out / "manifest.csv")[1][i]["path"] for i in range(len(NAMES))) == on_disk
    for loss in ("square", "huber"):
        assert sorted(assignment_paths(out, loss)) == on_disk
    for csv_file in (out / "manifest.csv", out / "clusters" / "square" / "assignments.csv"):
        raw = csv_file.read_bytes()
        assert b"caf\xe9.jpg" in raw  # the original bytes, not a replacement character
        for name in FORMULAS:
            assert b"\r\n'" + name.replace(b'"', b'""') + b"," in raw, name
        assert b"\r\n=" not in raw and b"\r\n+" not in raw and b"\r\n@" not in raw


# ----------------------------------------------------------------------------- 7


def test_an_output_path_under_a_file_is_one_line(capsys, tmp_path, base):
    photos, _ = base
    rc, _, err = cli(capsys, "extract", photos, "--out", "/etc/passwd/x", *FAST)
    assert rc == 1 and "/etc/passwd/x" in one_error_line(err)
    afile = tmp_path / "afile"
    afile.write_text("x")
    rc, _, err = cli(capsys, "export", "--out", base[1], "--loss", "square", "--to", afile / "sorted")
    assert rc == 1 and "part of this path is a file" in one_error_line(err)
    assert afile.read_text() == "x"


def _read_only(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", refuse)


@pytest.mark.parametrize("stage", ["extract", "cluster", "render"])
def test_a_read_only_output_folder_is_one_line_and_leaves_no_temporary_file(base, tmp_path, capsys, monkeypatch,
                                                                             stage):
    photos, ready = base
    out = tmp_path / "out"
    if stage != "extract":
        shutil.copytree(ready, out)
        shutil.rmtree(out / "clusters" / "square")  # so cluster has to write
    argv = {"extract": ["extract", photos, "--out", out, *FAST],
            "cluster": ["cluster", "--out", out, *CLUSTER],
            "render": ["render", "--out", out]}[stage]
    _read_only(monkeypatch)
    rc, _, err = cli(capsys, *argv)
    monkeypatch.undo()
    assert rc == 1
    line = one_error_line(err)
    assert "Read-only file system" in line and "read-only" in line.split(";", 1)[1] and str(out) in line
    assert not temporaries(out)


def test_a_full_disk_during_the_final_write_keeps_the_previous_cache(tmp_path, capsys, monkeypatch):
    photos, out = tmp_path / "photos", tmp_path / "out"
    make_photos(photos, 6)
    assert cli(capsys, "extract", photos, "--out", out, *FAST)[0] == 0
    before = {name: (out / name).read_bytes() for name in ("features.npy", "manifest.csv", "features.json")}
    shutil.copy(photos / "a" / "img_01.jpg", photos / "a" / "img_99.jpg")

    real = pipeline.atomic.atomic_open

    @contextlib.contextmanager
    def full(path, mode="wb", **kwargs):
        with real(path, mode, **kwargs) as fh:
            yield fh
            if Path(path).name == ".manifest.csv.next":
                raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline.atomic, "atomic_open", full)
    rc, _, err = cli(capsys, "extract", photos, "--out", out, *FAST)
    monkeypatch.undo()
    assert rc == 1 and "disk is full" in one_error_line(err)
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not temporaries(out)
    assert len(manifest_paths(out)) == 6
    assert cli(capsys, "extract", photos, "--out", out, *FAST)[0] == 0
    assert len(manifest_paths(out)) == 7


def test_labels_csv_paths_are_resolved_into_the_photo_folder(base, tmp_path, capsys):
    photos, out = base
    folder = photos.parent / "labels"
    folder.mkdir(exist_ok=True)
    relative = folder / "x.csv"
    paths = manifest_paths(out)
    relative.write_text("path,label\n" + "".join(f"../photos/{p},{p.split('/')[0]}\n" for p in paths))
    rc, stdout, err = cli(capsys, "evaluate", "--out", out, "--labels", relative)
    assert rc == 0, err
    assert f"{len(paths)} labelled photos in 2 classes" in stdout

    nowhere = tmp_path / "nowhere.csv"
    nowhere.write_text("path,label\n" + "".join(f"elsewhere/{p},x\n" for p in paths))
    rc, _, err = cli(capsys, "evaluate", "--out", out, "--labels", nowhere)
    assert rc == 2 and "relative to the photo folder" in one_error_line(err)


# ----------------------------------------------------------------------------- 8


def test_a_second_run_on_the_same_output_folder_waits_or_stops(base, capsys, monkeypatch):
    _, out = base
    results, waiting = {}, threading.Event()

    def log(message):
        if "waiting for another photoclust run" in message:
            waiting.set()

    monkeypatch.setattr("pipeline.cli._log", log)

    def run(name, *argv):
        results[name] = main(["cluster", "--out", str(out), *CLUSTER, *argv])

    with lock_module.output_lock(out, log=log):
        stopper = threading.Thread(target=run, args=("no-wait", "--no-wait"))
        stopper.start()
        stopper.join(60)
        assert results["no-wait"] == 2
        assert "another photoclust run is working" in one_error_line(capsys.readouterr().err)

        waiter = threading.Thread(target=run, args=("wait",), daemon=True)
        waiter.start()
        assert waiting.wait(60)
        assert waiter.is_alive() and "wait" not in results
    waiter.join(60)
    assert results["wait"] == 0


# ----------------------------------------------------------------------------- 9


def test_make_features_quotes_a_photo_folder_with_spaces(tmp_path):
    work = tmp_path / "make here"
    work.mkdir()
    for name in ("pyproject.toml", "pipeline"):
        (work / name).symlink_to(REPO / name)
    photos = tmp_path / "my photos" / "summer 'trip'"
    make_photos(photos, 2)
    config = work / "fast config.toml"
    config.write_text('[extract]\nweights = "random"\ndevice = "cpu"\nworkers = 0\n')

    def make(*argv, dry=True):
        venv = Path(sys.executable).parent.parent
        # -o: never reinstall into the shared environment, whatever the stamp's age
        return subprocess.run(["make", "-f", str(REPO / "Makefile"), "-o", str(venv / ".photoclust-installed"),
                               *(["-n"] if dry else []), *argv,
                               f"PHOTOS={photos}", f"VENV={venv}", f"CONFIG={config}"],
                              cwd=work, capture_output=True, text=True, timeout=120)

    expected_out = "outputs/summer 'trip'"
    dry = make("features", "cluster", "export", "clean", "TO=sorted photos", "LABELS=my labels.csv")
    assert dry.returncode == 0, dry.stderr
    commands = [shlex.split(line) for line in dry.stdout.splitlines() if line.strip()]
    extract = next(c for c in commands if "extract" in c)
    assert extract[extract.index("extract") + 1] == str(photos)
    assert extract[extract.index("--out") + 1] == expected_out
    assert extract[extract.index("--config") + 1] == str(config)
    cluster = next(c for c in commands if "cluster" in c)
    assert cluster[cluster.index("--out") + 1] == expected_out
    export = next(c for c in commands if "export" in c)
    assert export[export.index("--to") + 1] == "sorted photos"
    assert next(c for c in commands if c[:2] == ["rm", "-rf"]) == ["rm", "-rf", "--", expected_out]

    real = make("features", dry=False)
    assert real.returncode == 0, real.stderr
    assert [e.path for e in read_manifest(work / expected_out / "manifest.csv")] == ["a/img_01.jpg",
                                                                                     "b/img_00.png"]


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_get_the_mode_the_users_umask_gives(tmp_path, umask, expected):
    # atomic writes go through a temporary file, which tempfile creates 0600; the result
    # must be readable by whoever the user's umask allows (a web server, a colleague)
    target = tmp_path / "index.html"
    code = ("import sys; from pathlib import Path; from pipeline import atomic; "
            "atomic.write_text(Path(sys.argv[1]), 'page')")
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code, str(target)], check=True, cwd=root,
                   preexec_fn=lambda: os.umask(umask))
    assert target.read_text() == "page"
    assert target.stat().st_mode & 0o777 == expected
