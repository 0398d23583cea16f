"""`extract --executor ray`: the embedding of new or changed photos runs on a Ray cluster.

Everything else stays on the driver (the `photoclust extract` process) exactly as in a local
run: finding the photos, deciding what is new or changed (size and mtime against the
committed cache and the journal), journaling each finished batch as it comes back, and the
one commit at the end. So the outputs, the cache key and the incremental and resume rules are
the local path's; only `embed` differs. Ray is imported here and nowhere else: the local path
never loads this module.

How photos reach the workers: as paths. Every node must see the photo folder at the same
absolute path (a filesystem all nodes mount: NFS, a cluster filesystem, a bucket mounted with
the same path). Shipping the bytes through the driver instead would make the driver's disk
and network the bottleneck of the whole cluster (every photo read once on the driver, put in
the object store, pulled by a worker; `make bench-ray` measures that cost per image next to
the rest). Before anything is sent, a probe on every node that can hold an embedder stats one
photo the driver sees; a node that does not see it (missing, or another size or mtime)
stops the run with one line naming the node and the path.

Plain Ray actors, not Ray Data: the driver needs every finished batch back in hand to journal
it (a Ray Data pipeline would stream them too, but brings pyarrow and its own scheduler for
what is one list of paths, and a failed actor would be Ray Data's to retry, not ours to
see). One `Embedder` actor per GPU when the cluster has GPUs (num_gpus=1 each), else one per
CPU (num_cpus=1, torch on one thread); each loads the model once, from weights the driver
put in the object store once (so every node embeds with the same weights, whatever its own
caches hold). Each actor has at most IN_FLIGHT batches queued. A killed actor process is
restarted by Ray (max_restarts) and its queued calls retried (max_task_retries); an actor
that dies for good has its batches sent to another.

The precision a run records in its cache key is resolved on the workers (`--precision auto`
depends on the hardware that computes it): the probe returns each node's, and nodes that
disagree stop the run with a line saying to pass `--precision fp32`.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from . import backbones
from .cache import OK, UNREADABLE, Entry
from .errors import UserError
from .extract import CPU_BATCH, PhotoDataset, autocast_dtype, embed_batch, precision_name

INSTALL = "pip install 'photoclust[ray]' on this machine and every node (`make install` does it here)"
IN_FLIGHT = 2  # batches queued per actor: one computing, one waiting, so no actor idles between batches
RESTARTS = 3  # Ray restarts a killed actor and retries its calls this many times
PROBE_TIMEOUT_S = 300  # the first task on a node imports torch: slow on a loaded machine
STALL_TIMEOUT_S = 900  # no batch back for this long: the cluster cannot run the actors
MTIME_SLACK_NS = 2_000_000_000  # filesystems that keep coarser mtimes (NFS v3, FAT) than the driver's


@dataclass
class RunStats:
    """What the last Ray run did (read by the tests and the benchmark)."""
    batches_sent: int = 0  # embed calls submitted (a retry Ray makes itself is not counted)
    batches_back: int = 0
    pids: list[int] = field(default_factory=list)  # the actor process that embedded each batch, in arrival order
    restarts: int = 0  # batches that came back from a restarted actor process
    resubmitted: int = 0  # batches sent again after their actor died for good
    actors: int = 0
    nodes: int = 0


last_stats = RunStats()


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"--executor ray: Ray is not installed; {INSTALL}") from None
    return ray


# ----------------------------------------------------------------------------- on the workers

def probe(root: str, sample: tuple[str, int, int] | None, device: str, precision: str) -> dict:
    """Run once on every node before any photo is sent: does it see the photo folder, and
    which precision would it embed in."""
    info = {"host": socket.gethostname(), "sees": True, "why": ""}
    if sample is not None:
        rel, size, mtime_ns = sample
        path = os.path.join(root, rel)
        try:
            st = os.stat(path)
        except OSError as exc:
            info.update(sees=False, why=f"cannot stat {path}: {exc.strerror or exc}")
        else:
            if st.st_size != size or abs(st.st_mtime_ns - mtime_ns) > MTIME_SLACK_NS:
                info.update(sees=False, why=f"{path} is another file there ({st.st_size} bytes, "
                                            f"not the driver's {size})")
    info["precision"] = precision_name(autocast_dtype(precision, torch.device(device), log=lambda m: None))
    return info


class Embedder:
    """One model on one worker: a batch of paths -> (sha1, reason, ok) per path, rows, pid.
    Decoding happens here, exactly as a local DataLoader worker does it (PhotoDataset)."""

    def __init__(self, weights: list, resize: str, device: str, dtype: str, threads: int):
        import ray

        # [ref]: a reference inside a list is not resolved by Ray before the call, so a restart
        # fetches the weights again from the driver, which holds them until close()
        weights = ray.get(weights[0])
        torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.half = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        self.model = backbones.build(weights).to(self.device).to(memory_format=torch.channels_last)
        self.dim = backbones.feature_dim(weights)
        self.pre, self.resize = weights.preprocess, resize

    def embed(self, paths: list[str]):
        data = PhotoDataset([Path(p) for p in paths], self.pre, self.resize)
        items = [data[i] for i in range(len(paths))]
        rows = np.full((len(items), self.dim), np.nan, dtype=np.float32)
        good = [j for j, (_, pixels, _, _) in enumerate(items) if pixels is not None]
        if good:
            with torch.inference_mode():
                batch = torch.stack([items[j][1] for j in good]).to(self.device)
                rows[good] = embed_batch(self.model, self.pre.normalize(batch), self.half)
        return [(sha1, reason, pixels is not None) for _, pixels, sha1, reason in items], rows, os.getpid()


# ----------------------------------------------------------------------------- on the driver

def check_probes(probes: list[dict], root: Path, address: str) -> str:
    """The precision every node agrees on; a node that cannot see the photos, or nodes that
    disagree on the precision, stop the run with one line."""
    blind = [p for p in probes if not p["sees"]]
    if blind:
        p = blind[0]
        raise UserError(f"--executor ray: node {p['host']} of the Ray cluster at {address} does not see the photo "
                        f"folder {root} ({p['why']}); photos are read by the workers, so mount the folder at the "
                        f"same path on every node")
    kinds = sorted({p["precision"] for p in probes})
    if len(kinds) > 1:
        raise UserError(f"--executor ray: the nodes of the Ray cluster at {address} would embed in different "
                        f"precisions ({', '.join(kinds)}); pass --precision fp32 so every node computes the same")
    return kinds[0]


class RayCluster:
    """A connection to a Ray cluster that embeds batches of photos (see the module docstring)."""

    def __init__(self, cfg, root: Path, sample: tuple[str, int, int] | None, log: Callable[[str], None]):
        ray = self.ray = import_ray()
        self.cfg, self.log = cfg, log
        self.address = cfg.ray_address
        self.owns = not ray.is_initialized()  # a caller's own connection (the benchmark's) is left open
        if self.owns:
            self._connect()
        try:
            self._inspect(root, sample)
        except BaseException:
            self.close()
            raise

    def _connect(self) -> None:
        ray = self.ray
        package = str(Path(__file__).resolve().parent)
        # The driver's own pipeline package goes to every worker (py_modules), so the workers
        # run the driver's code; Python, torch and Ray must be installed there already.
        options = dict(runtime_env={"py_modules": [package]}, log_to_driver=False, logging_level=logging.WARNING,
                       include_dashboard=False)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if self.address not in ("auto", "local"):
            reachable(self.address)  # Ray itself retries an unreachable head for minutes
        try:
            if self.address == "local":
                ray.init(**options)
            else:
                ray.init(address=self.address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"--ray-address {self.address}: cannot connect to a Ray cluster ({first}); start one "
                            "with `ray start --head` or pass --ray-address HOST:PORT of its head") from None

    def _inspect(self, root: Path, sample) -> None:
        ray, cfg = self.ray, self.cfg
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        total = ray.cluster_resources()
        gpus, cpus = int(total.get("GPU", 0)), int(total.get("CPU", 0))
        if cfg.device == "mps":
            raise UserError("--executor ray: --device mps is not available on a Ray cluster; use auto, cpu or cuda")
        if cfg.device == "cuda" and not gpus:
            raise UserError(f"--device cuda: the Ray cluster at {self.address} has no GPU; use --device auto or cpu")
        self.use_gpu = bool(gpus) and cfg.device in ("auto", "cuda")
        self.device = "cuda" if self.use_gpu else "cpu"
        self.resources = {"num_gpus": 1, "num_cpus": 1} if self.use_gpu else {"num_cpus": 1}
        capacity = gpus if self.use_gpu else cpus
        if capacity < 1:
            raise UserError(f"--executor ray: the Ray cluster at {self.address} has no CPU to run an embedder on")
        if cfg.ray_actors is not None and cfg.ray_actors > capacity:
            raise UserError(f"--ray-actors {cfg.ray_actors}: the Ray cluster at {self.address} has room for "
                            f"{capacity} ({'GPUs' if self.use_gpu else 'CPUs'}); pass at most {capacity}")
        self.capacity = cfg.ray_actors or capacity
        need = "GPU" if self.use_gpu else "CPU"
        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(need, 0) >= 1]
        remote = ray.remote(probe)
        refs = [remote.options(**self.resources, max_retries=RESTARTS,
                               scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(root.resolve()), sample, self.device, cfg.precision) for n in nodes]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
        if len(ready) < len(refs):
            raise UserError(f"--executor ray: {len(refs) - len(ready)} node(s) of the Ray cluster at {self.address} "
                            f"did not answer within {PROBE_TIMEOUT_S} s; check `ray status`")
        precision = check_probes(ray.get(refs), root, self.address)
        self.dtype = precision
        self.half = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[precision]
        self.nodes = last_stats.nodes = len(nodes)
        self.describe = f"ray ({self.device}, {self.nodes} node(s) at {self.address})"

    def embed(self, todo, weights, cfg, device=None, half=None, progress=None, desc: str = "extract"):
        """Yield (entries, rows) per finished batch, in the order they finish; `todo` holds
        (path, rel, size, mtime_ns) as for extract.embed_files."""
        global last_stats
        ray = self.ray
        stats = last_stats
        size = cfg.batch_size or CPU_BATCH  # auto: the CPU's batch; a GPU embedder's memory is not known here
        batches = [todo[i:i + size] for i in range(0, len(todo), size)]
        n = min(self.capacity, len(batches))
        stats.actors = n
        # once; every actor, and a restarted one, loads it from the object store (held until close())
        weights_ref = self.weights_ref = ray.put(weights)
        actor = ray.remote(Embedder).options(**self.resources, max_restarts=RESTARTS, max_task_retries=RESTARTS)
        self.actors = [actor.remote([weights_ref], cfg.resize, self.device, self.dtype, 1) for _ in range(n)]
        self.log(f"ray: {len(batches)} batch(es) to {n} embedder(s) on {self.device} across {self.nodes} node(s)")
        alive = set(range(n))
        load = [0] * n
        queue = deque((b, 0) for b in range(len(batches)))
        pending: dict = {}
        last_pid: dict[int, int] = {}

        def fill() -> None:
            for a in sorted(alive, key=lambda a: load[a]):
                while queue and load[a] < IN_FLIGHT:
                    b, tries = queue.popleft()
                    ref = self.actors[a].embed.remote([str(p) for p, _, _, _ in batches[b]])
                    pending[ref] = (b, a, tries)
                    load[a] += 1
                    stats.batches_sent += 1

        bar_off = None if progress is None else not progress
        with tqdm(total=len(todo), unit="img", desc=desc, disable=bar_off, dynamic_ncols=True) as bar:
            fill()
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=STALL_TIMEOUT_S)
                if not done:
                    raise UserError(f"--executor ray: no batch came back from the Ray cluster at {self.address} in "
                                    f"{STALL_TIMEOUT_S} s; check `ray status` (the finished batches are journaled: "
                                    "rerun to resume)")
                ref = done[0]
                b, a, tries = pending.pop(ref)
                load[a] -= 1
                try:
                    results, rows, pid = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    alive.discard(a)  # past its restarts: its batches go to the others
                    if not alive or tries >= RESTARTS:
                        raise UserError(f"--executor ray: the embedders on the Ray cluster at {self.address} keep "
                                        f"dying ({str(exc).splitlines()[0]}); the finished batches are journaled: "
                                        "rerun to resume") from None
                    queue.append((b, tries + 1))
                    stats.resubmitted += 1
                    fill()
                    continue
                if a in last_pid and last_pid[a] != pid:
                    stats.restarts += 1
                last_pid[a] = pid
                fill()  # keep the actors busy while the driver journals this batch
                entries = [Entry(rel, size, mtime_ns, sha1, OK if ok else UNREADABLE, reason)
                           for (_, rel, size, mtime_ns), (sha1, reason, ok) in zip(batches[b], results)]
                stats.pids.append(pid)
                stats.batches_back += 1
                bar.update(len(entries))
                yield entries, rows
        if stats.restarts or stats.resubmitted:
            self.log(f"ray: {stats.restarts} batch(es) came back from a restarted embedder, "
                     f"{stats.resubmitted} sent again")

    def close(self) -> None:
        ray = self.ray
        for a in getattr(self, "actors", []):
            try:
                ray.kill(a)
            except Exception:  # already gone
                pass
        self.actors = []
        if self.owns and ray.is_initialized():
            ray.shutdown()


def reachable(address: str, timeout: float = 10.0) -> None:
    """A HOST:PORT that accepts a TCP connection, or a one-line UserError."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray-address {address}: expected auto, local or HOST:PORT of a Ray cluster's head")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UserError(f"--ray-address {address}: nothing answers there ({exc.strerror or exc}); start the head "
                        "with `ray start --head --port PORT` or pass the address it printed") from None


def connect(cfg, root: Path, files: list[str], log: Callable[[str], None]) -> RayCluster:
    """Connect to the cluster of `cfg.ray_address` and check it can embed the photos under
    `root` (`files`: their relative paths; the first the driver can stat is the probe's)."""
    global last_stats
    last_stats = RunStats()
    sample = None
    for rel in files[:20]:
        try:
            st = (root / rel).stat()
        except OSError:
            continue
        sample = (rel, st.st_size, st.st_mtime_ns)
        break
    return RayCluster(cfg, root, sample, log)
