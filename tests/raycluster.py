"""A real two-node Ray cluster on this machine's loopback address, for tests/test_ray.py.

Each node is a `ray start --block` process in a session of its own (start_new_session), so
every process the node starts (GCS, raylet, agents, the workers Ray forks) carries that
session id; stopping sends SIGTERM to the `ray start` process (which stops its node), then
SIGKILL to whatever of the session is still alive, found by session id, never by name. Ports
are chosen free; temporary directories are short (Ray's Unix sockets live there) and removed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_S = 120  # `ray start` imports Ray and launches GCS and a raylet: slow on a loaded 2-core machine
RAY_BIN = Path(sys.executable).with_name("ray")


def free_ports(n: int) -> list[int]:
    """n distinct ports nothing listens on right now (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def session_pids(sid: int) -> list[int]:
    """Processes whose session id is `sid` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) == sid:
                pids.append(int(entry.name))
        except (ProcessLookupError, PermissionError):
            continue
    return pids


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass
class Node:
    proc: subprocess.Popen
    log: Path

    def pids(self) -> list[int]:
        return session_pids(self.proc.pid)

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"


@dataclass
class Cluster:
    address: str
    nodes: list[Node] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)

    def embedder_pids(self) -> list[int]:
        """The Embedder actor processes running on the cluster's nodes."""
        return [pid for node in self.nodes for pid in node.pids() if cmdline(pid).startswith("ray::Embedder")]

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes
        deadline = time.monotonic() + 30
        for node in self.nodes:
            try:
                node.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            for pid in node.pids():  # anything of the node's session left over
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait(timeout=10)
        for path in self.folders:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


# Telemetry off; no token authentication (a loopback cluster of one test; without this, Ray
# enables it whenever a ~/.ray/auth_token exists, and nodes and drivers must then agree on it).
ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def _env() -> dict:
    env = dict(os.environ, **ENV)
    env.pop("RAY_ADDRESS", None)
    return env


def _start(args: list[str], log: Path) -> Node:
    fh = open(log, "wb")
    try:
        proc = subprocess.Popen([str(RAY_BIN), "start", "--block", "--disable-usage-stats", *args],
                                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env(),
                                start_new_session=True)
    finally:
        fh.close()
    return Node(proc, log)


def _wait_started(node: Node, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if b"Ray runtime started" in node.log.read_bytes():
            return
        if node.proc.poll() is not None:
            raise RuntimeError(f"{what}: `ray start` exited with {node.proc.returncode}:\n{node.tail()}")
        time.sleep(0.2)
    raise RuntimeError(f"{what}: `ray start` did not report 'Ray runtime started' within {START_TIMEOUT_S} s:\n"
                       f"{node.tail()}")


def _node_args(folder: Path, ports: list[int]) -> list[str]:
    agent, grpc, runtime_env, metrics, manager, objects = ports
    return ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0",
            "--object-store-memory", "100000000", "--temp-dir", str(folder),
            "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(grpc),
            "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics),
            "--node-manager-port", str(manager), "--object-manager-port", str(objects),
            "--min-worker-port", "0", "--max-worker-port", "0"]


def start_cluster(n_nodes: int = 2) -> Cluster:
    """A head and n_nodes - 1 more nodes, one CPU each, all on 127.0.0.1; waits until the
    cluster lists every node alive. The caller must call stop(), also on failure."""
    ports = free_ports(2 + 6 * n_nodes)
    gcs, dashboard = ports[0], ports[1]
    cluster = Cluster(address=f"127.0.0.1:{gcs}")
    try:
        for i in range(n_nodes):
            folder = Path(tempfile.mkdtemp(prefix=f"pcray{i}-", dir="/tmp"))  # short: Unix socket paths
            cluster.folders.append(folder)
            node_args = _node_args(folder, ports[2 + 6 * i: 8 + 6 * i])
            if i == 0:
                node_args = ["--head", "--port", str(gcs), "--include-dashboard=false", "--dashboard-port",
                             str(dashboard), *node_args]
            else:
                node_args = ["--address", cluster.address, *node_args]
            node = _start(node_args, folder.with_suffix(".log"))
            cluster.folders.append(node.log)
            cluster.nodes.append(node)
            _wait_started(node, "head node" if i == 0 else f"node {i + 1}")
        _wait_nodes(cluster, n_nodes)
    except BaseException:
        cluster.stop()
        raise
    return cluster


WAIT_NODES = """
import sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    alive = sum(1 for n in ray.nodes() if n.get("Alive"))
    if alive >= int(sys.argv[2]):
        sys.exit(0)
    time.sleep(0.2)
sys.exit(f"{alive} of {sys.argv[2]} nodes alive")
"""


def _wait_nodes(cluster: Cluster, n: int) -> None:
    # In a child process, so the test process holds no Ray connection of its own.
    proc = subprocess.run([sys.executable, "-c", WAIT_NODES, cluster.address, str(n), str(START_TIMEOUT_S)],
                          capture_output=True, text=True, env=_env(), timeout=START_TIMEOUT_S + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"the cluster at {cluster.address} did not list {n} live nodes: {proc.stderr[-2000:]}\n"
                           + "\n".join(node.tail() for node in cluster.nodes))
