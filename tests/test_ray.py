"""`extract --executor ray` on a real two-node Ray cluster started on this machine
(tests/raycluster.py): the same features, manifest and cache key as the local path; reruns
send nothing; a killed embedder is restarted by Ray; a killed driver resumes from its journal."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ExtractConfig
from pipeline.errors import UserError
from pipeline.extract import extract_folder

from conftest import make_photos

ray = pytest.importorskip("ray", reason="Ray is not installed: `make install` installs photoclust[ray]")

from pipeline import ray_executor  # noqa: E402  (imports ray)
from raycluster import ENV, start_cluster  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LOCAL = ExtractConfig(weights="random", batch_size=2, workers=0, device="cpu")


def ray_cfg(address: str, **kw) -> ExtractConfig:
    return ExtractConfig(**{**LOCAL.__dict__, "executor": "ray", "ray_address": address, **kw})


def run(photos, out, cfg, **kw):
    return extract_folder(photos, out, cfg, log=lambda m: None, progress=False, **kw)


def manifest(out: Path) -> list[dict]:
    with open(out / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def assert_same_features(a: Path, b: Path) -> None:
    x, y = np.load(a / "features.npy"), np.load(b / "features.npy")
    assert x.shape == y.shape
    assert np.array_equal(np.isnan(x), np.isnan(y))
    ok = ~np.isnan(x).any(axis=1)
    cos = (x[ok] * y[ok]).sum(1) / np.linalg.norm(x[ok], axis=1) / np.linalg.norm(y[ok], axis=1)
    assert cos.min() >= 1 - 1e-6, cos.min()


@pytest.fixture(scope="module")
def cluster():
    mp = pytest.MonkeyPatch()  # the drivers (this process, its children) talk to the cluster as its nodes do
    for name, value in ENV.items():
        mp.setenv(name, value)
    mp.delenv("RAY_ADDRESS", raising=False)
    try:
        started = start_cluster(2)
    except BaseException:
        mp.undo()
        raise
    try:
        yield started
    finally:
        started.stop()
        mp.undo()
    assert not [pid for node in started.nodes for pid in node.pids()], "processes of the test cluster outlived stop()"
    assert not [path for path in started.folders if path.exists()], "the test cluster's files outlived stop()"


KILL_DRIVER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from pipeline.config import ExtractConfig
    from pipeline.extract import extract_folder

    def die_after_two_batches(done):
        if done >= 4:
            os.kill(os.getpid(), signal.SIGKILL)

    cfg = ExtractConfig(weights="random", batch_size=2, workers=0, device="cpu", executor="ray",
                        ray_address=sys.argv[3])
    extract_folder(Path(sys.argv[1]), Path(sys.argv[2]), cfg, log=lambda m: None, progress=False,
                   on_batch=die_after_two_batches)
""")


def test_ray_run_killed_driver_and_killed_embedder_gives_the_local_result(tmp_path, cluster):
    """One run through every failure (one test: each Ray run costs seconds of start-up)."""
    photos = tmp_path / "photos"
    make_photos(photos, 14)
    (photos / "b" / "empty.png").write_bytes(b"")  # unreadable: a NaN row on both paths
    local, remote = tmp_path / "local", tmp_path / "remote"
    run(photos, local, LOCAL)

    # 1. the driver is killed after two batches: they are in its journal
    proc = subprocess.run([sys.executable, "-c", KILL_DRIVER, str(photos), str(remote), cluster.address], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert not (remote / "features.npy").exists()
    assert (remote / "journal" / "entries.jsonl").read_text().count("\n") == 4

    # 2. the rerun sends only the other 11 files, and an embedder is killed mid-run
    killed = []

    def kill_an_embedder(done: int) -> None:
        if killed:
            return
        # the embedder of the batch just journaled has its next batch queued: Ray must retry it
        pid = ray_executor.last_stats.pids[-1]
        assert pid in cluster.embedder_pids(), (pid, cluster.embedder_pids())
        os.kill(pid, signal.SIGKILL)
        killed.append((pid, len(ray_executor.last_stats.pids)))

    report = run(photos, remote, ray_cfg(cluster.address), on_batch=kill_an_embedder)
    stats = ray_executor.last_stats
    assert (report.decoded, report.reused, report.embedded, report.unreadable) == (11, 4, 14, 1)
    assert (stats.nodes, stats.actors, stats.batches_sent, stats.batches_back) == (2, 2, 6, 6)
    pid, seen = killed[0]
    assert pid not in stats.pids[seen:], "a batch came back from the killed process"
    assert stats.restarts >= 1, f"Ray did not restart the killed embedder: {stats}"
    assert not (remote / "journal").exists()

    # 3. the same result as the local path: manifest, cache key, features
    assert manifest(remote) == manifest(local)
    assert (remote / "cache_key.json").read_text() == (local / "cache_key.json").read_text()
    assert_same_features(remote, local)

    # 4. nothing new: nothing goes to the cluster
    again = run(photos, remote, ray_cfg(cluster.address))
    assert (again.decoded, again.reused) == (0, 15)
    assert (ray_executor.last_stats.nodes, ray_executor.last_stats.batches_sent) == (2, 0)
    assert manifest(remote) == manifest(local)


def test_a_node_that_cannot_see_the_photos_is_refused_in_one_line(tmp_path):
    probes = [{"host": "a", "sees": True, "why": "", "precision": "float32"},
              {"host": "b", "sees": False, "why": "cannot stat /p/x.jpg: No such file or directory",
               "precision": "float32"}]
    with pytest.raises(UserError) as err:
        ray_executor.check_probes(probes, Path("/p"), "10.0.0.1:6379")
    assert "node b" in str(err.value) and "same path on every node" in str(err.value)
    assert "\n" not in str(err.value)
    probes[1].update(sees=True, precision="bfloat16")
    with pytest.raises(UserError, match="--precision fp32"):
        ray_executor.check_probes(probes, Path("/p"), "10.0.0.1:6379")
    probes[1]["precision"] = "float32"
    assert ray_executor.check_probes(probes, Path("/p"), "x") == "float32"


def test_an_address_nobody_answers_is_one_line(tmp_path):
    from raycluster import free_ports

    photos = tmp_path / "photos"
    make_photos(photos, 1)
    with pytest.raises(UserError, match="nothing answers there"):
        run(photos, tmp_path / "out", ray_cfg(f"127.0.0.1:{free_ports(1)[0]}"))
    with pytest.raises(UserError, match="HOST:PORT"):
        run(photos, tmp_path / "out", ray_cfg("no-port-here"))


LOCAL_RUN = textwrap.dedent("""
    import sys
    from pipeline.cli import main
    code = main(["extract", sys.argv[1], "--out", sys.argv[2], "--weights", "random", "--workers", "0",
                 "--device", "cpu"])
    assert code == 0, code
    loaded = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
    print("RAY:" + ",".join(loaded))
""")


def test_the_local_path_never_imports_ray(tmp_path):
    photos = tmp_path / "photos"
    make_photos(photos, 2)
    proc = subprocess.run([sys.executable, "-c", LOCAL_RUN, str(photos), str(tmp_path / "out")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RAY:\n" in proc.stdout, proc.stdout
    assert (tmp_path / "out" / "features.npy").exists()


MISSING_RAY = textwrap.dedent("""
    import sys
    sys.modules["ray"] = None  # as if Ray were not installed
    from pipeline.cli import main
    sys.exit(main(["extract", sys.argv[1], "--out", sys.argv[2], "--weights", "random", "--executor", "ray"]))
""")


def test_without_ray_installed_the_ray_executor_says_how_to_install_it(tmp_path):
    photos = tmp_path / "photos"
    make_photos(photos, 1)
    proc = subprocess.run([sys.executable, "-c", MISSING_RAY, str(photos), str(tmp_path / "out")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "pip install 'photoclust[ray]'" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
