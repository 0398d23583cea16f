"""Fault injection: SIGKILL a run at every write point of every stage, rerun, compare.

A clean run first lists its write points (PHOTOCLUST_FAULT_LOG, see pipeline/faults.py);
then, for each point in turn, a fresh copy of the starting state is run with
PHOTOCLUST_KILL_AT=N (the process kills itself there, as on a power cut: no cleanup runs),
the same command is run again without the fault, and the output folder must equal the
clean run's: byte-identical features and manifest, the same clusterings, sheets, site pages and
exported files, no temporary file, no journal left.

The runs are forked from a server that imported torch once (multiprocessing forkserver),
so a run costs its own work, not Python's start-up.
"""

from __future__ import annotations

import filecmp
import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import make_photos

TEMP_NAME = ".photoclust-tmp"
ARGS = ["--weights", "random", "--device", "cpu", "--workers", "0", "--batch-size", "1"]
CLUSTER_ARGS = ["--k", "2", "--losses", "square,huber", "--n-init", "1"]
# Each write point's try is its own processes and folders: tries run side by side, one per core.
POINT_WORKERS = max(1, min(4, os.cpu_count() or 1))
# Differ from run to run by nature (timings, the device string); compared without them.
VOLATILE_SUMMARY_KEYS = ("seconds", "device")


def _child(argv: list[str], env: dict[str, str], stderr: str | None) -> None:
    os.environ.update(env)
    if stderr:
        fd = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 2)
    from pipeline import faults
    from pipeline.cli import main

    faults.reset()
    os._exit(main(argv))


@pytest.fixture(scope="module")
def runner():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torchvision", "pandas", "PIL.Image", "pipeline.cli", "pipeline.extract",
                                "pipeline.cluster", "pipeline.render", "pipeline.report", "pipeline.site",
                                "pipeline.export", "pipeline.assign", "pipeline.palette", "pipeline.quantize",
                                "pipeline.segment", "pipeline.patches", "matplotlib.pyplot", "jinja2"])

    # Tries run in threads (for_each_point), but multiprocessing is not thread-safe there:
    # start() polls every other child, and two threads reading one child's exit status from
    # the forkserver get it once and 255 the other time. So start and reap one at a time,
    # and wait for the exit by the child's sentinel, which reads nothing.
    bookkeeping = threading.Lock()

    def run(argv: list[str], kill_at: int | None = None, log: Path | None = None, stderr: Path | None = None) -> int:
        env = {"PHOTOCLUST_KILL_AT": str(kill_at)} if kill_at else {}
        if log is not None:
            env["PHOTOCLUST_FAULT_LOG"] = str(log)
        process = ctx.Process(target=_child, args=([str(a) for a in argv], env, str(stderr) if stderr else None))
        with bookkeeping:
            process.start()
        assert multiprocessing.connection.wait([process.sentinel], 120), f"{argv} hung"
        with bookkeeping:
            process.join()
            return process.exitcode

    return run


def write_points(run, argv: list[str], log: Path) -> list[str]:
    assert run(argv, log=log) == 0
    points = [line.split("\t", 1)[1] for line in log.read_text().splitlines()]
    log.unlink()
    assert points, f"{argv} passed no write point"
    return points


def leftovers(out: Path) -> list[str]:
    return [str(p) for p in out.rglob("*.photoclust-tmp")] + [str(p) for p in out.rglob("*.next")]


def same_file(a: Path, b: Path) -> bool:
    if a.parent.name == "sweep" and a.suffix == ".csv":  # its seconds column is a timing
        from pipeline.tables import read_frame

        return read_frame(a).drop(columns="seconds").equals(read_frame(b).drop(columns="seconds"))
    if a.name == "summary.json":
        load = lambda p: {k: v for k, v in json.loads(p.read_text()).items() if k not in VOLATILE_SUMMARY_KEYS}
        return load(a) == load(b)
    return filecmp.cmp(a, b, shallow=False)


def assert_same_outputs(out: Path, clean: Path, skip: tuple[str, ...] = ("index.html",)) -> None:
    """Every file of the clean run exists in `out` with the same content, and nothing else."""
    def files(root: Path) -> set[str]:
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}

    ours, theirs = files(out), files(clean)
    assert ours - {"damaged"} == theirs, f"extra {sorted(ours - theirs)}, missing {sorted(theirs - ours)}"
    for rel in sorted(theirs):
        if rel in skip:
            continue
        if (clean / rel).is_symlink():
            assert os.readlink(out / rel) == os.readlink(clean / rel), rel
        else:
            assert same_file(out / rel, clean / rel), rel


def for_each_point(points: list[str], check) -> None:
    """check(n, name) for every write point n (from 1), POINT_WORKERS at a time; the first
    failure (in point order) is raised and the tries not yet started are dropped."""
    pool = ThreadPoolExecutor(POINT_WORKERS)
    try:
        for future in [pool.submit(check, n, name) for n, name in enumerate(points, start=1)]:
            future.result()
    finally:
        pool.shutdown(cancel_futures=True)


def every_kill_reruns_clean(runner, argv, points: list[str], clean: Path, prepare, skip=("index.html",)) -> None:
    """For each write point n: a run killed there (SIGKILL, no cleanup), then the same run
    again, gives exactly the clean run's files and leaves no temporary file. `prepare(n)`
    makes the starting folder of that try and returns it."""
    def check(n: int, name: str) -> None:
        target = prepare(n)
        assert runner(argv(target), kill_at=n) == -9, name
        assert runner(argv(target)) == 0, name
        assert_same_outputs(target, clean, skip=skip)
        assert not leftovers(target), name
        shutil.rmtree(target)

    for_each_point(points, check)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three photos committed in `base`; then one deleted and one added (same count)."""
    root = tmp_path_factory.mktemp("faults")
    folder = root / "photos"
    made = make_photos(folder, 4)
    hidden = root / "later.png"
    shutil.move(made[3], hidden)
    return root, folder, made, hidden


def test_extract_killed_at_every_write_point_resumes_to_the_clean_result(runner, photos, tmp_path):
    root, folder, made, hidden = photos
    base = tmp_path / "base"
    assert runner(["extract", folder, "--out", base, *ARGS]) == 0
    # The next run has a deleted photo and a new one to embed, over a committed cache.
    made[0].unlink()
    shutil.copy2(hidden, made[3])
    try:
        clean = tmp_path / "clean"
        assert runner(["extract", folder, "--out", clean, *ARGS]) == 0
        probe = tmp_path / "probe"
        shutil.copytree(base, probe)
        points = write_points(runner, ["extract", folder, "--out", probe, *ARGS], tmp_path / "log")
        assert any("journal" in p for p in points) and any("features.json" in p for p in points)

        def check(n: int, name: str) -> None:
            out = tmp_path / f"kill{n}"
            shutil.copytree(base, out)
            assert runner(["extract", folder, "--out", out, *ARGS], kill_at=n) == -9, name
            assert runner(["extract", folder, "--out", out, *ARGS]) == 0, name
            assert (out / "features.npy").read_bytes() == (clean / "features.npy").read_bytes(), name
            assert (out / "manifest.csv").read_bytes() == (clean / "manifest.csv").read_bytes(), name
            assert not (out / "journal").exists() and not leftovers(out), name
            shutil.rmtree(out)

        for_each_point(points, check)
    finally:
        shutil.copy2(made[3], made[0]) if not made[0].exists() else None
        made[3].unlink(missing_ok=True)


@pytest.fixture(scope="module")
def extracted(runner, photos, tmp_path_factory):
    _, folder, _, _ = photos
    out = tmp_path_factory.mktemp("extracted") / "out"
    assert runner(["extract", folder, "--out", out, *ARGS]) == 0
    return folder, out


def test_each_stage_killed_at_every_write_point_reruns_to_the_clean_result(runner, extracted, tmp_path):
    """cluster, represent, dupes, render, sweep, evaluate and assign in turn, each from the
    clean result of the ones before."""
    folder, base = extracted
    new = tmp_path / "new"  # photos for `assign` to place
    make_photos(new, 2, seed=7)
    stages = [["cluster", *CLUSTER_ARGS], ["represent"], ["dupes", "--threshold", "0.5"], ["render"],
              ["sweep", "--k-range", "2:3", "--n-init", "1"], ["evaluate"],
              ["assign", new, "--device", "cpu", "--workers", "0", "--batch-size", "1"]]
    before = tmp_path / "before"
    shutil.copytree(base, before)
    for stage in stages:
        argv = lambda out: [stage[0], "--out", out, *stage[1:]]
        clean = tmp_path / f"clean_{stage[0]}"
        shutil.copytree(before, clean)
        assert runner(argv(clean)) == 0
        probe = tmp_path / "probe"
        shutil.copytree(before, probe)
        points = write_points(runner, argv(probe), tmp_path / "log")
        shutil.rmtree(probe)
        every_kill_reruns_clean(runner, argv, points, clean,
                                lambda n: Path(shutil.copytree(before, tmp_path / f"kill{n}")))
        before = clean
    for stage_file in ("assignments.csv", "centers.npy", "summary.json", "representatives.csv", "losses.png",
                       "cluster_1.html", "index.html", "square.json", "evaluation.csv", "assigned.csv",
                       "outliers.csv", "duplicates.csv", "duplicates.json",
                       "map.csv", "map.html", "points.js", "atlas_0.jpg", "map.json"):  # the map (render)
        assert list(before.rglob(stage_file)), stage_file


def test_refit_killed_at_every_write_point_never_passes_for_a_finished_clustering(runner, extracted, tmp_path):
    """A refit with another k over a finished run, killed anywhere: a loss whose summary.json
    exists has assignments and centers of that summary's k (a half-written refit has no
    summary, and the later stages refuse it); the rerun of the refit gives the clean result."""
    import numpy as np

    from pipeline.tables import read_rows

    folder, base = extracted
    start = tmp_path / "start"
    shutil.copytree(base, start)
    assert runner(["run", folder, "--out", start, *ARGS, *CLUSTER_ARGS]) == 0
    refit = lambda out: ["cluster", "--out", out, "--k", "3", "--losses", "square,huber", "--n-init", "1"]
    clean, probe = tmp_path / "clean", tmp_path / "probe"
    shutil.copytree(start, clean)
    shutil.copytree(start, probe)
    assert runner(refit(clean)) == 0
    points = write_points(runner, refit(probe), tmp_path / "log")

    def check(n: int, name: str) -> None:
        out = tmp_path / f"kill{n}"
        shutil.copytree(start, out)
        assert runner(refit(out), kill_at=n) == -9, name
        for loss in ("square", "huber"):
            folder_of_loss = out / "clusters" / loss
            if (folder_of_loss / "summary.json").is_file():
                k = json.loads((folder_of_loss / "summary.json").read_text())["k"]
                labels = {int(r["cluster"]) for r in read_rows(folder_of_loss / "assignments.csv")[1]}
                assert max(labels) < k and np.load(folder_of_loss / "centers.npy").shape[0] == k, name
            else:
                assert runner(["render", "--out", out, "--losses", loss]) == 2, name
        assert runner(refit(out)) == 0, name
        assert_same_outputs(out, clean)
        shutil.rmtree(out)

    for_each_point(points, check)


def test_export_killed_at_every_write_point_gives_the_clean_folders(runner, extracted, tmp_path):
    folder, base = extracted
    start = tmp_path / "start"
    shutil.copytree(base, start)
    assert runner(["run", folder, "--out", start, *ARGS, *CLUSTER_ARGS]) == 0
    for copy in ([], ["--copy"]):
        argv = lambda target: ["export", "--out", start, "--loss", "huber", "--to", target, *copy]
        clean = tmp_path / f"clean{len(copy)}"
        assert runner(argv(clean)) == 0
        assert runner(argv(clean)) == 0  # a re-export over itself is the same folder
        points = write_points(runner, argv(tmp_path / f"probe{len(copy)}"), tmp_path / "log")
        every_kill_reruns_clean(runner, argv, points, clean, lambda n: tmp_path / f"kill{len(copy)}_{n}",
                                skip=(".photoclust-export",))
    photos_after = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    assert len([p for p in photos_after if p.endswith((".jpg", ".png"))]) == 3  # the photos are untouched


def test_palette_killed_at_every_write_point_gives_the_clean_folder(runner, tmp_path):
    """`palette` over a folder (a broken file among the photos): killed at any write point,
    the rerun gives the clean run's files, and the photos are untouched."""
    folder = tmp_path / "photos"
    make_photos(folder, 1, seed=5)  # b/img_00.png
    (folder / "a").mkdir()
    (folder / "a" / "broken.jpg").write_bytes(b"not a photo")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    argv = lambda target: ["palette", folder, "--out", target, "--k", "3"]
    clean = tmp_path / "clean"
    assert runner(argv(clean)) == 0
    points = write_points(runner, argv(tmp_path / "probe"), tmp_path / "log")
    assert any("palette.json" in p for p in points) and any("img_00.png.palette.png" in p for p in points)
    every_kill_reruns_clean(runner, argv, points, clean, lambda n: tmp_path / f"kill{n}", skip=())
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert (clean / "palette.csv").is_file() and (clean / "photos" / "b" / "img_00.png.palette.json").is_file()


def test_quantize_and_segment_killed_at_every_write_point_give_the_clean_files(runner, tmp_path):
    """The colour commands write into a folder the user chose (-o): killed anywhere and run
    again, the folder holds exactly the clean run's files (a file of the user's there is
    left alone) and no temporary file; the photo is never written."""
    photo = make_photos(tmp_path / "photos", 1, seed=3)[0]
    before = photo.read_bytes()
    commands = {"quantize": lambda target: ["quantize", photo, "--k", "4", "-o", target / "q.png"],
                "strip": lambda target: ["quantize", photo, "--k", "2,4", "--dither", "floyd-steinberg",
                                         "-o", target / "strip.png"],
                "segment": lambda target: ["segment", photo, "--k", "3", "-o", target]}
    for label, argv in commands.items():
        def fresh(name: str) -> Path:
            target = tmp_path / name
            target.mkdir()
            (target / "keep.txt").write_text("the user's own file")
            return target

        clean = fresh(f"clean_{label}")
        assert runner(argv(clean)) == 0
        points = write_points(runner, argv(fresh(f"probe_{label}")), tmp_path / "log")
        assert len(points) >= 2, points
        every_kill_reruns_clean(runner, argv, points, clean, lambda n: fresh(f"kill_{label}_{n}"), skip=())
    assert photo.read_bytes() == before


def test_patches_killed_at_every_write_point_gives_the_clean_folder(runner, tmp_path):
    """`patches` on a small IDX file (with a test split beside it): killed at any write point,
    the rerun skips the finished K and gives the clean run's files byte for byte."""
    import gzip

    import numpy as np

    from pipeline.idx import to_bytes

    rng = np.random.default_rng(4)
    images = (rng.random((6, 9, 9)) < 0.5) * rng.integers(1, 256, size=(6, 9, 9))
    data = tmp_path / "data"
    data.mkdir()
    (data / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(to_bytes(images), mtime=0))
    (data / "t10k-images-idx3-ubyte").write_bytes(to_bytes(images[:2]))
    argv = lambda target: ["patches", data / "train-images-idx3-ubyte.gz", "--out", target, "--k", "2,3",
                           "--show", "1", "--backend", "torch", "--device", "cpu"]
    clean = tmp_path / "clean"
    assert runner(argv(clean)) == 0
    points = write_points(runner, argv(tmp_path / "probe"), tmp_path / "log")
    assert any("k00003.json" in p for p in points) and any("patches.json" in p for p in points)
    every_kill_reruns_clean(runner, argv, points, clean, lambda n: tmp_path / f"kill{n}", skip=())
    for made in ("mse.csv", "mse.png", "k00002.npy", "k00003.png", "reconstructions_train.png",
                 "reconstructions_test.png"):
        assert list(clean.rglob(made)), made


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MB filesystem (tmpfs), when this machine lets the tests mount one (root)."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root and permission to mount")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(disk: Path, leave: int) -> Path:
    """Fill `disk` until `leave` bytes are free; returns the filler file."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return filler


def test_disk_full_and_read_only_on_a_real_filesystem(runner, photos, small_disk, tmp_path):
    import subprocess

    _, folder, _, hidden = photos
    out = small_disk / "out"
    assert runner(["extract", folder, "--out", out, *ARGS]) == 0
    before = {name: (out / name).read_bytes() for name in ("features.npy", "manifest.csv", "features.json")}
    # A new photo, and no room for the commit: one line, exit 1, the old cache intact, no temporary file.
    shutil.copy2(hidden, folder / "new.png")
    try:
        filler = _fill(small_disk, 4096)
        assert runner(["extract", folder, "--out", out, *ARGS], stderr=tmp_path / "err") == 1
        last = (tmp_path / "err").read_text().splitlines()[-1]
        assert last.startswith("photoclust: error: ") and "No space left on device" in last and "free some" in last
        assert {name: (out / name).read_bytes() for name in before} == before
        assert not leftovers(out)
        filler.unlink()
        assert runner(["extract", folder, "--out", out, *ARGS]) == 0
        assert not (out / "journal").exists()
        clean = tmp_path / "clean"
        assert runner(["extract", folder, "--out", clean, *ARGS]) == 0
        assert (out / "features.npy").read_bytes() == (clean / "features.npy").read_bytes()
        assert (out / "manifest.csv").read_bytes() == (clean / "manifest.csv").read_bytes()
    finally:
        (folder / "new.png").unlink()
    # Read-only: a stage that has to write stops with one line naming the file (exit 1) and
    # changes nothing; one with nothing to write (extract of an unchanged folder) just works.
    assert runner(["extract", folder, "--out", out, *ARGS]) == 0
    assert runner(["cluster", "--out", out, "--k", "2", "--losses", "square"]) == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    listing = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    for stage in (["cluster", "--force", "--k", "2", "--losses", "square"], ["render"]):
        assert runner([*stage, "--out", out], stderr=tmp_path / "err") == 1, stage
        text = (tmp_path / "err").read_text()
        assert text.count("photoclust: error:") == 1 and "Read-only file system" in text and "Traceback" not in text
        assert TEMP_NAME not in text  # the message names the user's file, not a temporary one
    assert runner(["extract", folder, "--out", out, *ARGS], stderr=tmp_path / "err") == 0, (tmp_path / "err").read_text()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == listing
