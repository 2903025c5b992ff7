"""Pull + unpack throughput against GNU tar, and the daemon's responsiveness while it pulls.

    .venv/bin/python bench/pull.py [--runs 3] [--root /dev/shm] [--cache /var/tmp/wharfd-bench-pull]
        [--mode both|inprocess|daemon] [--via cri|transfer] [--wrap none|diagnose|profile]

Two images are pushed to Debian's docker-registry on 127.0.0.1:

* (a) ~85 MB: one incompressible (random) 85 MB layer over a busybox layer;
* (b) ~100 MB of gzip: /usr/lib/python3.11, /usr/lib/python3, /usr/share/doc
  (thousands of small files) and a layer of a few large binaries, four layers.

For each image the Puller (the real plugins: SQLite, content store,
overlayfs, GC, worker pool; in this process, on its event loop) pulls and
unpacks it under ``--root``; between runs the image is deleted and collected,
so every run downloads and unpacks everything with a warm worker pool (the
first, cold run is shown apart). The baseline is GNU tar ``-xzf`` of the
same layer blobs one after another into fresh directories on the same
filesystem. MB/s is compressed (downloaded) MB (10^6 bytes) per wall second;
the tar column is uncompressed MB/s.

While each pull runs, ``ImageStore.list()`` is called every 5 ms on the same
loop: its max and p99 latency show whether the pull ever stalls the loop. RSS
and PSS are sampled every 20 ms for this process and for its descendants
(the forkserver and the workers); the peaks are shown.

Daemon mode (``--mode daemon``, and the second half of ``both``): the real
``wharfd`` on a temporary root and socket (as e2e/daemon.py starts it), the
registry reached through a hosts.toml. Each image is pulled ``--runs`` + 1
times through CRI PullImage in k8s.io (or ``wharf images pull``, the Transfer
API, with ``--via transfer``), every image deleted and collected in between.
Meanwhile a separate client process calls CRI ListImages and containerd
Images.List in turn, one call every 5 ms over the socket, and times each; the
same probe with no pull running is the baseline. The probe (kubelet's stand-in)
and the memory sampler run in sessions of their own, as kubelet runs in a
service of its own: where the kernel shares the CPU between sessions
(autogroup), they would otherwise queue behind the registry, which serves
from this machine and shares the benchmark's session. The registry stands
for one on another machine, whose CPU is not the node's: by default
(``--registry-cpu remote``) it runs in a cpu cgroup of its own with the
lowest weight (cgroup v1 ``cpu.shares`` 2), so that it takes the CPU the node
leaves idle rather than competing with the daemon as no remote registry
would; ``--registry-cpu shared`` leaves it competing. Also shown: the CPU of the
daemon's loop thread and of its other threads, how long the loop thread was
runnable without a core (schedstat), and the peak RSS of the daemon and of the
daemon with its fork server and workers (from ``statm``; their PSS is read once, as
each pull ends: reading it walks the page tables under the process's mmap lock,
which every 20 ms would itself hold the daemon up). ``--wrap diagnose`` runs the
daemon with recorders of slow loop callbacks (wall and CPU time), loop lag and
garbage collections (and each thread's name by kernel thread id; with
``WHARFD_BENCH_STACKS=0.002`` also samples of every thread's innermost frames),
written to ``<cache>/diag.json``; ``--wrap profile`` with cProfile on its loop
thread. Every probe call's start and latency, per pull, goes to
``<cache>/daemon-calls.json`` beside the daemon's pid: with ``perf record -k
CLOCK_MONOTONIC -e sched:sched_switch -e sched:sched_wakeup`` run around the
benchmark, the slow calls can be matched with what each thread was doing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support lives beside bench/

from e2e.daemon import BIN, Daemon
from tests.support.images import busybox_files, canonical_json, tar_bytes
from tests.support.registry import run_registry
from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.api.cri.v1 import api_pb2_grpc as cri_grpc
from wharfd.api.services.content.v1 import content_pb2 as cpb
from wharfd.api.services.content.v1 import content_pb2_grpc as cpb_grpc
from wharfd.api.services.images.v1 import images_pb2 as ipb
from wharfd.api.services.images.v1 import images_pb2_grpc as ipb_grpc
from wharfd.runtime import events, gc, mount, namespaces, plugin
from wharfd.runtime.content import plugin as content_plugin
from wharfd.runtime.images import mediatypes
from wharfd.runtime.images.manifest import Descriptor, digest_of
from wharfd.runtime.images.pull import PLUGIN as PULL_PLUGIN
from wharfd.runtime.images.pull import Puller
from wharfd.runtime.metadata import plugin as metadata_plugin
from wharfd.runtime.registry import HostsConfig, Resolver, Transport
from wharfd.runtime.services import differ
from wharfd.runtime.snapshots import plugin as snapshots_plugin

PY_SOURCES = ["/usr/lib/python3.11", "/usr/lib/python3", "/usr/share/doc"]
BIG_FILES = ["/usr/sbin/runc", "/usr/bin/runc", "/usr/lib/x86_64-linux-gnu/libcrypto.so.3", "/bin/busybox"]
CHUNK = 1 << 20


@dataclass(frozen=True)
class Blob:
    """A layer blob on disk."""

    path: Path
    digest: str
    diff_id: str
    size: int
    tar_size: int


@dataclass
class Sample:
    """What one measured pull gave."""

    wall: float
    lat_max: float = 0.0
    lat_p99: float = 0.0
    calls: int = 0
    rss_self: int = 0
    pss_self: int = 0
    rss_tree: int = 0
    pss_tree: int = 0
    cpu: float = 0.0  # seconds of CPU: this process and its workers (not the registry)


# --- building the images ------------------------------------------------------------------------


def _sha(path: Path, *, gunzip: bool = False) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    if gunzip:
        proc = subprocess.Popen(["gzip", "-dc", str(path)], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        while chunk := proc.stdout.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
        proc.wait()
    else:
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                n += len(chunk)
    return "sha256:" + h.hexdigest(), n


def _blob(path: Path) -> Blob:
    digest, size = _sha(path)
    diff_id, tar_size = _sha(path, gunzip=True)
    return Blob(path, digest, diff_id, size, tar_size)


def _gzip_tar(out: Path, args: list[str]) -> Blob:
    """``tar -cf - args | gzip -6``, kept in ``out`` for later runs."""
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        with tmp.open("wb") as f:
            tar = subprocess.Popen(["tar", "-cf", "-", *args], stdout=subprocess.PIPE)
            subprocess.run(["gzip", "-6", "-n"], stdin=tar.stdout, stdout=f, check=True)
            if tar.wait() != 0:
                raise RuntimeError(f"tar {args} failed")
        tmp.rename(out)
    return _blob(out)


def build_a(cache: Path) -> list[Blob]:
    """busybox, then one incompressible 85 MB file."""
    base = cache / "a-busybox.tar.gz"
    if not base.exists():
        with base.open("wb") as f:
            subprocess.run(["gzip", "-6", "-n"], input=tar_bytes(busybox_files()), stdout=f, check=True)
    src = cache / "a-random"
    if not (cache / "a-random.tar.gz").exists():
        src.mkdir(exist_ok=True)
        with (src / "random.bin").open("wb") as f:
            for _ in range(85):
                f.write(os.urandom(1_000_000))
    blobs = [_blob(base), _gzip_tar(cache / "a-random.tar.gz", ["-C", str(src), "."])]
    shutil.rmtree(src, ignore_errors=True)
    return blobs


def build_b(cache: Path) -> list[Blob]:
    """Python's library, docs (many small files), and a few large binaries."""
    blobs = []
    for i, source in enumerate(PY_SOURCES):
        if os.path.isdir(source):
            blobs.append(_gzip_tar(cache / f"b-{i}.tar.gz", ["-C", "/", source.lstrip("/")]))
    big = [p.lstrip("/") for p in BIG_FILES if os.path.isfile(p)]
    blobs.append(_gzip_tar(cache / "b-big.tar.gz", ["-C", "/", *big]))
    return blobs


def image_json(blobs: list[Blob]) -> tuple[bytes, bytes]:
    """The config and manifest of an image of ``blobs``."""
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [b.diff_id for b in blobs]},
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_MANIFEST,
            "config": {"mediaType": mediatypes.OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": [
                {"mediaType": mediatypes.OCI_LAYER_GZIP, "digest": b.digest, "size": b.size} for b in blobs
            ],
        }
    )
    return config, manifest


async def push(host: str, repo: str, blobs: list[Blob]) -> str:
    """Push the image (streaming the blobs from disk); returns its reference."""
    config, manifest = image_json(blobs)
    async with Transport(HostsConfig(plain_http=True)) as transport:
        pusher = Resolver(transport).pusher(f"{host}/{repo}")
        for b in blobs:

            async def source(offset: int, path: Path = b.path) -> AsyncIterator[bytes]:
                with path.open("rb") as f:
                    f.seek(offset)
                    while chunk := await asyncio.to_thread(f.read, CHUNK):
                        yield chunk

            await pusher.push_blob(Descriptor(mediatypes.OCI_LAYER_GZIP, b.digest, b.size), source)
        await pusher.push_blob(Descriptor(mediatypes.OCI_CONFIG, digest_of(config), len(config)), config)
        desc = Descriptor(mediatypes.OCI_MANIFEST, digest_of(manifest), len(manifest))
        await pusher.push_manifest(desc, manifest, reference="1")
    return f"{host}/{repo}:1"


# --- measuring ------------------------------------------------------------------------------------


def gnu_tar(blobs: list[Blob], root: Path, runs: int) -> tuple[float, float]:
    """Best (wall, CPU) of ``tar -xzf`` of every blob in turn, each into a fresh directory."""
    results = []
    for _ in range(runs):
        dests = [Path(tempfile.mkdtemp(prefix="tar-", dir=root)) for _ in blobs]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        for blob, dest in zip(blobs, dests, strict=True):
            subprocess.run(["tar", "-xzf", str(blob.path), "-C", str(dest)], check=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        results.append((wall, cpu))
        for dest in dests:
            shutil.rmtree(dest)
    return min(results)


def tree_cpu(skip: int, root: int | None = None) -> float:
    """CPU seconds so far of ``root`` (default: this process) and its descendants, but ``skip``'s."""
    ticks = os.sysconf("SC_CLK_TCK")
    kids: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            kids.setdefault(int(fields[1]), []).append(int(entry))
            cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    total, todo = 0.0, [os.getpid() if root is None else root]
    while todo:
        pid = todo.pop()
        if pid != skip:
            total += cpu.get(pid, 0.0)
            todo += kids.get(pid, [])
    return total


_SAMPLER = r"""
import os, sys, time

def tree(root, skip):
    kids = {}
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                with open(f"/proc/{e}/stat") as f:
                    kids.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(e))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid not in skip:
            out.append(pid)
            todo += kids.get(pid, [])
    return out

PAGE = os.sysconf("SC_PAGE_SIZE")

def rss(pid):
    # statm: a counter the kernel keeps. smaps_rollup (PSS) walks the page tables under the
    # process's mmap lock: every 20 ms it would hold up the daemon being measured.
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0

def pss(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            got = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in f if l.split()[-1] == "kB"}
    except (OSError, ValueError):
        return 0
    return got.get("Pss", 0)

me = int(sys.argv[1])
skip = {os.getpid(), *map(int, sys.argv[2:])}  # this sampler, the registry
peak = [0, 0]
import select
while not select.select([sys.stdin], [], [], 0.02)[0]:
    now = [rss(me), sum(rss(p) for p in tree(me, skip))]
    peak = [max(a, b) for a, b in zip(peak, now)]
procs = tree(me, skip)
print(peak[0], pss(me), peak[1], sum(pss(p) for p in procs))
"""


@contextlib.contextmanager
def sampling(sample: Sample, skip: int, root: int | None = None) -> Iterator[None]:
    """Sample the RSS of ``root`` (default: this process) and its descendants every 20 ms; PSS at the end.

    From another process (a thread here would compete for the GIL). ``skip`` is
    a child process not to count (the registry).
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", _SAMPLER, str(os.getpid() if root is None else root), str(skip)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield
    finally:
        out, _ = proc.communicate("stop\n")
        sample.rss_self, sample.pss_self, sample.rss_tree, sample.pss_tree = (int(x) for x in out.split())


async def probe(images: object, latencies: list[float], stop: asyncio.Event) -> None:
    """A cheap call on the loop every 5 ms; its latency is what a CRI call would see."""
    while not stop.is_set():
        start = time.perf_counter()
        await images.list()  # type: ignore[attr-defined]
        latencies.append(time.perf_counter() - start)
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def daemon(root: Path) -> AsyncIterator[plugin.PluginSet]:
    """The plugins a pull needs, started as the daemon starts them."""
    regs = [
        metadata_plugin.PLUGIN,
        events.PLUGIN,
        content_plugin.PLUGIN,
        snapshots_plugin.OVERLAYFS_PLUGIN,
        gc.PLUGIN,
        differ.PLUGIN,
        PULL_PLUGIN,
    ]
    plugins = plugin.PluginSet(regs)

    def context(reg: plugin.Registration) -> plugin.InitContext:
        return plugin.InitContext(reg, None, {}, root / reg.uri, root / "state" / reg.uri, plugins)

    await plugins.start(context)
    for p in plugins.plugins:
        if p.error is not None:
            raise RuntimeError(f"{p.registration.uri}: {p.error}")
    try:
        yield plugins
    finally:
        await plugins.close()
        await asyncio.to_thread(mount.unmount_all, root, mount.MNT_DETACH)


async def pull_once(plugins: plugin.PluginSet, ref: str, registry_pid: int) -> Sample:
    """One measured pull, then the image deleted and collected."""
    puller: Puller = plugins.instance(plugin.TRANSFER, "local")
    images = plugins.instance(plugin.METADATA).images
    latencies: list[float] = []
    stop = asyncio.Event()
    sample = Sample(0.0)
    cpu = tree_cpu(registry_pid)
    # The sampler starts before the probe and stops after it: its fork and its last
    # read block this loop for a moment, which is the benchmark's doing, not the pull's.
    with sampling(sample, registry_pid):
        task = asyncio.create_task(probe(images, latencies, stop))
        start = time.perf_counter()
        result = await puller.pull(ref)
        sample.wall = time.perf_counter() - start
        stop.set()
        await task
    sample.cpu = tree_cpu(registry_pid) - cpu
    sample.calls = len(latencies)
    sample.lat_max = max(latencies)
    sample.lat_p99 = (
        statistics.quantiles(latencies, n=100, method="inclusive")[98]
        if len(latencies) > 2
        else sample.lat_max
    )
    await images.delete(result.name)
    await plugins.instance(plugin.GC, "scheduler").collect()
    return sample


async def idle_latency(plugins: plugin.PluginSet, seconds: float = 1.0) -> Sample:
    """The probe with no pull running: what the machine's other load costs it."""
    latencies: list[float] = []
    stop = asyncio.Event()
    task = asyncio.create_task(probe(plugins.instance(plugin.METADATA).images, latencies, stop))
    await asyncio.sleep(seconds)
    stop.set()
    await task
    return Sample(
        seconds,
        max(latencies),
        statistics.quantiles(latencies, n=100, method="inclusive")[98],
        len(latencies),
    )


async def measure(ref: str, root: Path, runs: int, registry_pid: int) -> tuple[Sample, list[Sample], Sample]:
    """The cold first pull, ``runs`` warm ones, and the probe alone."""
    namespaces.current.set("default")
    async with daemon(root) as plugins:
        cold = await pull_once(plugins, ref, registry_pid)
        warm = [await pull_once(plugins, ref, registry_pid) for _ in range(runs)]
        return cold, warm, await idle_latency(plugins)


def report(
    name: str, blobs: list[Blob], cold: Sample, warm: list[Sample], idle: Sample, tar: tuple[float, float]
) -> None:
    """Print one image's figures."""
    size = sum(b.size for b in blobs)
    tar_size = sum(b.tar_size for b in blobs)
    best = min(warm, key=lambda s: s.wall)
    median = statistics.median(s.wall for s in warm)
    mb = 1e6
    print(f"\nimage {name}: {len(blobs)} layers, {size / mb:.1f} MB gzip, {tar_size / mb:.1f} MB tar")
    print(f"  {'':34} {'wall s':>7} {'MB/s':>7} {'tar MB/s':>9} {'CPU s':>7}")
    rows = [
        ("GNU tar -xzf, layer by layer (best)", tar[0], tar[1]),
        ("wharfd pull+unpack (best warm)", best.wall, best.cpu),
        ("wharfd pull+unpack (median warm)", median, statistics.median(s.cpu for s in warm)),
        ("wharfd pull+unpack (cold pool)", cold.wall, cold.cpu),
    ]
    for label, wall, cpu in rows:
        print(f"  {label:34} {wall:7.3f} {size / wall / mb:7.1f} {tar_size / wall / mb:9.1f} {cpu:7.2f}")
    print(f"  wharfd / GNU tar throughput: best {tar[0] / best.wall:.2f}x, median {tar[0] / median:.2f}x")
    print(f"  warm runs: {[round(s.wall, 3) for s in warm]}")
    lat_max = max(s.lat_max for s in warm) * 1e3
    lat_p99 = statistics.median(s.lat_p99 for s in warm) * 1e3
    print(f"  ImageStore.list() every 5 ms during warm pulls: max {lat_max:.1f} ms, p99 {lat_p99:.1f} ms")
    print(f"    (cold pull: max {cold.lat_max * 1e3:.1f} ms, p99 {cold.lat_p99 * 1e3:.1f} ms)")
    print(f"    (no pull running: max {idle.lat_max * 1e3:.1f} ms, p99 {idle.lat_p99 * 1e3:.1f} ms)")
    rss = max(s.rss_self for s in [cold, *warm]) / mb
    tree = max(s.rss_tree for s in [cold, *warm]) / mb
    pss = max(s.pss_tree for s in [cold, *warm]) / mb
    print(
        f"  peak RSS: this process {rss:.0f} MB; with fork server and workers {tree:.0f} MB "
        f"(PSS at the end {pss:.0f} MB)"
    )


# --- through the real daemon --------------------------------------------------------------------

DOMAIN = "bench.wharf.test"  # a hosts.toml sends it to the local registry over HTTP
K8S = (("containerd-namespace", "k8s.io"),)
PROBE_PERIOD = 0.005

# A separate client process (as kubelet is): CRI ListImages and containerd Images.List in turn,
# one call every PROBE_PERIOD, each timed on the client; stops when a line arrives on stdin.
_PROBE = r"""
import json, select, sys, time
import grpc
from wharfd.api.cri.v1 import api_pb2 as cri, api_pb2_grpc as cri_grpc
from wharfd.api.services.images.v1 import images_pb2 as ipb, images_pb2_grpc as ipb_grpc

channel = grpc.insecure_channel("unix://" + sys.argv[1])
period = float(sys.argv[2])
calls = {
    "CRI ListImages": (cri_grpc.ImageServiceStub(channel).ListImages, cri.ListImagesRequest(), ()),
    "Images.List": (
        ipb_grpc.ImagesStub(channel).List, ipb.ListImagesRequest(), (("containerd-namespace", "k8s.io"),)
    ),
}
for fn, req, md in calls.values():
    fn(req, metadata=md, timeout=10)  # connected and warm before anything is timed
print("ready", flush=True)
out = {name: [] for name in calls}
while not select.select([sys.stdin], [], [], 0)[0]:
    for name, (fn, req, md) in calls.items():
        start = time.monotonic()
        fn(req, metadata=md, timeout=30)
        out[name].append((start, time.monotonic() - start))
        time.sleep(period)
print(json.dumps(out), flush=True)
"""

# Runs the daemon with two observers on its event loop (``--diagnose``): every callback that
# holds the loop longer than the threshold is recorded with what ran, and a timer task measures
# how late the loop wakes it (lag). Written as JSON to $WHARFD_BENCH_DIAG at exit.
_DIAG_DAEMON = r"""
import asyncio, atexit, json, os, sys, time
from wharfd.cri import daemon

THRESHOLD = float(os.environ.get("WHARFD_BENCH_SLOW", "0.003"))
if os.environ.get("WHARFD_BENCH_SWITCH"):
    sys.setswitchinterval(float(os.environ["WHARFD_BENCH_SWITCH"]))
slow, lags = [], []
_run = asyncio.events.Handle._run

def describe(handle):
    cb = handle._callback
    task = getattr(cb, "__self__", None)
    coro = task.get_coro() if isinstance(task, asyncio.Task) else None
    if coro is not None:
        where = "done"
        while coro is not None:  # down to the innermost awaited coroutine
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is None:
                break
            where = f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno}"
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        return f"task {getattr(task.get_coro(), '__qualname__', '?')} (now at {where})"
    return f"{getattr(cb, '__qualname__', cb)} {getattr(getattr(cb, '__code__', None), 'co_filename', '')}"

def timed(self):
    start, cpu = time.monotonic(), time.thread_time()
    _run(self)
    took = time.monotonic() - start
    if took > THRESHOLD:
        # CPU time of the loop thread: the rest of ``took`` it waited (for the GIL, or a core).
        slow.append((start, took, time.thread_time() - cpu, describe(self)))

asyncio.events.Handle._run = timed

import gc, threading
collections, _gc_start = [], {}

def gc_timer(phase, info):
    # Collections of every thread: each stops the whole interpreter (it holds the GIL).
    if phase == "start":
        _gc_start[threading.get_ident()] = time.monotonic()
    elif (began := _gc_start.pop(threading.get_ident(), None)) is not None:
        collections.append((began, time.monotonic() - began, info["generation"], info["collected"]))

gc.callbacks.append(gc_timer)

async def lag_probe():
    while True:
        start = time.monotonic()
        await asyncio.sleep(0.001)
        lags.append((start, time.monotonic() - start - 0.001))

_asyncio_run = asyncio.run

def run(main, **kwargs):
    async def observed():
        probe = asyncio.ensure_future(lag_probe())
        try:
            return await main
        finally:
            probe.cancel()
    return _asyncio_run(observed(), **kwargs)

asyncio.run = run

# Every thread's name by kernel thread id (what perf, strace and /proc show), and with
# $WHARFD_BENCH_STACKS set, every N s the innermost frames of each thread but this sampler's.
names, stacks = {}, []

def sampler(period):
    me = threading.get_ident()
    while True:
        time.sleep(period)
        now = time.monotonic()
        idents = {t.ident: t.native_id for t in threading.enumerate()}
        for t in threading.enumerate():
            names[t.native_id] = t.name
        if period > 0.05:
            continue
        for ident, frame in sys._current_frames().items():
            if ident == me:
                continue
            where = []
            while frame is not None and len(where) < 6:
                where.append(f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno}:{frame.f_code.co_name}")
                frame = frame.f_back
            stacks.append((now, idents.get(ident, 0), where))

threading.Thread(target=sampler, args=(float(os.environ.get("WHARFD_BENCH_STACKS", "0.5")),), daemon=True).start()

@atexit.register
def dump():
    with open(os.environ["WHARFD_BENCH_DIAG"], "w") as f:
        json.dump({"slow": slow, "lags": lags, "gc": collections, "threads": names, "stacks": stacks}, f)

sys.exit(daemon.main(sys.argv[1:]))
"""

# cProfile of the daemon's main thread (the event loop), written to $WHARFD_BENCH_PROFILE at exit.
_PROFILE_DAEMON = r"""
import cProfile, os, sys
from wharfd.cri import daemon
profiler = cProfile.Profile()
code = profiler.runcall(daemon.main, sys.argv[1:])
profiler.dump_stats(os.environ["WHARFD_BENCH_PROFILE"])
sys.exit(code)
"""


@dataclass
class RpcRun:
    """One pull through the daemon, with the probe's calls during it."""

    wall: float
    calls: dict[str, list[tuple[float, float]]]  # kind -> [(monotonic start, latency)]
    started: float  # monotonic
    mem: Sample
    loop_cpu: float  # CPU s of the daemon's main (event loop) thread
    thread_cpu: list[float]  # CPU s of each other thread of the daemon, largest first
    loop_waited: float  # s the loop thread was runnable but had no core (schedstat run_delay)


@contextlib.contextmanager
def rpc_probe(address: Path, out: dict[str, list[tuple[float, float]]]) -> Iterator[None]:
    """The probe process, running for the body."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _PROBE, str(address), str(PROBE_PERIOD)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("the probe process did not start")
    try:
        yield
    finally:
        stdout, _ = proc.communicate("stop\n", timeout=120)
        out.update(json.loads(stdout))


def start_daemon(base: Path, hosts_dir: Path, wrap: str) -> Daemon:
    """A wharfd on its own root and socket (as e2e/daemon.py starts it), optionally observed."""
    config = f'[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "{hosts_dir}"\n'
    d = Daemon(base, config)
    d.write_config()
    env = dict(os.environ)
    if wrap == "none":
        cmd = [str(BIN / "wharfd")]
    else:
        cmd = [sys.executable, "-c", _DIAG_DAEMON if wrap == "diagnose" else _PROFILE_DAEMON]
        env["WHARFD_BENCH_DIAG"] = str(base / "diag.json")
        env["WHARFD_BENCH_PROFILE"] = str(base / "daemon.prof")
    with d.log_path.open("ab") as log:
        # Not at debug level: logging every request would be the benchmark's own load.
        d.proc = subprocess.Popen(
            [*cmd, "--config", str(d.config_path), "--log-level", "info"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    d.wait_ready()
    return d


def remove_images(channel: grpc.Channel) -> None:
    """Delete every image of k8s.io, the last delete collecting garbage (content and snapshots)."""
    stub = ipb_grpc.ImagesStub(channel)
    names = [i.name for i in stub.List(ipb.ListImagesRequest(), metadata=K8S, timeout=60).images]
    for i, name in enumerate(names):
        stub.Delete(ipb.DeleteImageRequest(name=name, sync=i == len(names) - 1), metadata=K8S, timeout=120)
    left = cpb_grpc.ContentStub(channel).List(cpb.ListContentRequest(), metadata=K8S, timeout=60)
    if any(True for _ in left):
        raise RuntimeError("content left after deleting every image: the next pull would not download it")


def daemon_pull(d: Daemon, channel: grpc.Channel, ref: str, via: str, hosts_dir: Path, skip: int) -> RpcRun:
    """One pull (CRI PullImage or the Transfer API through ``wharf images pull``) with the probe."""
    calls: dict[str, list[tuple[float, float]]] = {}
    assert d.proc is not None
    mem = Sample(0.0)
    cpu = tree_cpu(skip, d.proc.pid)
    threads = thread_cpu(d.proc.pid)
    delay = run_delay(d.proc.pid)
    with sampling(mem, skip, d.proc.pid), rpc_probe(d.address, calls):
        started = time.monotonic()
        if via == "cri":
            request = cri.PullImageRequest(image=cri.ImageSpec(image=ref))
            cri_grpc.ImageServiceStub(channel).PullImage(request, timeout=600)
        else:
            d.wharf("images", "pull", "--hosts-dir", str(hosts_dir), ref, namespace="k8s.io")
        wall = time.monotonic() - started
    mem.cpu = tree_cpu(skip, d.proc.pid) - cpu
    waited = run_delay(d.proc.pid) - delay
    after = thread_cpu(d.proc.pid)
    main_cpu = after.get(d.proc.pid, 0.0) - threads.get(d.proc.pid, 0.0)
    others = sorted((v - threads.get(t, 0.0) for t, v in after.items() if t != d.proc.pid), reverse=True)
    # Only the calls made while the pull ran.
    during = {k: [c for c in v if started <= c[0] <= started + wall] for k, v in calls.items()}
    return RpcRun(wall, during, started, mem, main_cpu, others, waited)


def run_delay(pid: int, tid: int | None = None) -> float:
    """Seconds thread ``tid`` of ``pid`` (its main thread by default) spent runnable, waiting for a core."""
    try:
        with open(f"/proc/{pid}/task/{tid or pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far of each thread of ``pid``."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError, IndexError):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def daemon_idle(d: Daemon, seconds: float) -> dict[str, list[tuple[float, float]]]:
    """The probe with no pull running."""
    calls: dict[str, list[tuple[float, float]]] = {}
    with rpc_probe(d.address, calls):
        time.sleep(seconds)
    return calls


def _stats(latencies: list[float]) -> str:
    if not latencies:
        return "no calls"
    ms = sorted(x * 1e3 for x in latencies)
    p99 = statistics.quantiles(ms, n=100, method="inclusive")[98] if len(ms) > 2 else ms[-1]
    return f"median {statistics.median(ms):5.2f}  p99 {p99:6.2f}  max {ms[-1]:6.2f} ms  ({len(ms)} calls)"


def report_daemon(
    name: str,
    blobs: list[Blob],
    via: str,
    runs: list[RpcRun],
    idle: dict[str, list[tuple[float, float]]],
) -> None:
    """Print one image's figures through the daemon (the first pull of the first image starts the pool)."""
    cold, warm = runs[0], runs[1:] or runs
    size = sum(b.size for b in blobs)
    mb = 1e6
    walls = [r.wall for r in warm]
    print(f"\nimage {name} through the daemon ({via}), {size / mb:.1f} MB gzip")
    print(
        f"  pull wall: first {cold.wall:.3f} s; warm best {min(walls):.3f} s ({size / min(walls) / mb:.0f} MB/s), "
        f"median {statistics.median(walls):.3f} s; runs {[round(w, 3) for w in walls]}"
    )
    print(
        f"  CPU s per warm pull: daemon + workers {statistics.median(r.mem.cpu for r in warm):.2f}; "
        f"the daemon's loop thread {statistics.median(r.loop_cpu for r in warm):.2f}, its other threads "
        f"{statistics.median(sum(r.thread_cpu) for r in warm):.2f} (busiest: "
        f"{[round(x, 2) for x in warm[-1].thread_cpu[:4]]})"
    )
    print(
        "  the loop thread waited for a core (runnable, not running) "
        f"{statistics.median(r.loop_waited for r in warm) * 1e3:.0f} ms per warm pull"
    )
    for kind in idle:
        print(f"  {kind:15} no pull:     {_stats([c[1] for c in idle[kind]])}")
        print(f"  {kind:15} warm pulls:  {_stats([c[1] for r in warm for c in r.calls[kind]])}")
        print(f"  {kind:15} first pull:  {_stats([c[1] for c in cold.calls[kind]])}")
    slowest = sorted(
        (
            (c[1], kind, c[0] - r.started, i)
            for i, r in enumerate(runs)
            for kind in r.calls
            for c in r.calls[kind]
        ),
        reverse=True,
    )[:5]
    print(
        "  slowest calls: "
        + ", ".join(f"{lat * 1e3:.1f} ms ({kind}, run {i}, at {at:.2f} s)" for lat, kind, at, i in slowest)
    )
    m = [r.mem for r in runs]
    print(
        f"  peak RSS: daemon {max(x.rss_self for x in m) / mb:.0f} MB "
        f"(PSS at the end {max(x.pss_self for x in m) / mb:.0f}); "
        f"with fork server and workers {max(x.rss_tree for x in m) / mb:.0f} MB "
        f"(PSS {max(x.pss_tree for x in m) / mb:.0f})"
    )


def report_diagnosis(path: Path, windows: list[tuple[float, float]]) -> None:
    """What held the daemon's loop during the pulls (from the ``--diagnose`` wrapper's file)."""
    try:
        diag = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"\n(no diagnosis: {exc})")
        return

    def inside(t: float) -> bool:
        return any(a <= t <= b for a, b in windows)

    lags = sorted(lag * 1e3 for t, lag in diag["lags"] if inside(t))
    if len(lags) > 2:
        p99 = statistics.quantiles(lags, n=100, method="inclusive")[98]
        print(
            f"\nloop lag during pulls (1 ms timer): median {statistics.median(lags):.2f} "
            f"p99 {p99:.2f} max {lags[-1]:.2f} ms"
        )
    gcs = [(took * 1e3, gen) for t, took, gen, _ in diag["gc"] if inside(t)]
    for gen in (0, 1, 2):
        took = [x for x, g in gcs if g == gen]
        if took:
            print(
                f"garbage collections of generation {gen} during pulls: {len(took)}, "
                f"{sum(took):.1f} ms in all, max {max(took):.1f} ms"
            )
    by_what: dict[str, list[tuple[float, float]]] = {}
    for t, took, cpu, what in diag["slow"]:
        if inside(t):
            by_what.setdefault(what, []).append((took * 1e3, cpu * 1e3))
    print("callbacks holding the loop > threshold during pulls (count, total ms, of it on CPU, max ms):")
    for what, took in sorted(by_what.items(), key=lambda kv: -sum(x[0] for x in kv[1]))[:15]:
        total, cpu = sum(x[0] for x in took), sum(x[1] for x in took)
        print(f"  {len(took):5d} {total:8.1f} {cpu:8.1f} {max(x[0] for x in took):7.1f}  {what}")


def measure_daemon(
    args: argparse.Namespace, images: dict[str, list[Blob]], registry: Any, refs: dict[str, str]
) -> None:
    """Everything in daemon mode: one daemon, pulls of each image, the probe beside them."""
    with tempfile.TemporaryDirectory(prefix="wharfd-bench-daemon-", dir=args.root) as work:
        base = Path(work)
        hosts_dir = base / "certs.d"
        (hosts_dir / DOMAIN).mkdir(parents=True)
        (hosts_dir / DOMAIN / "hosts.toml").write_text(f'server = "{registry.url}"\n')
        d = start_daemon(base / "daemon", hosts_dir, args.wrap)
        windows: list[tuple[float, float]] = []
        raw: list[dict[str, Any]] = []
        try:
            with d.channel() as channel:
                for name, blobs in images.items():
                    if args.only and name != args.only:
                        continue
                    ref = f"{DOMAIN}/{refs[name].split('/', 1)[1]}"
                    runs = []
                    for _ in range(args.runs + 1):  # the first is cold for the first image only
                        runs.append(daemon_pull(d, channel, ref, args.via, hosts_dir, registry.process.pid))
                        windows.append((runs[-1].started, runs[-1].started + runs[-1].wall))
                        remove_images(channel)
                    idle = daemon_idle(d, statistics.median(r.wall for r in runs))
                    raw.append(
                        {
                            "image": name,
                            "pid": d.proc.pid if d.proc else 0,
                            "idle": idle,
                            "runs": [{"started": r.started, "wall": r.wall, "calls": r.calls} for r in runs],
                        }
                    )
                    report_daemon(name, blobs, args.via, runs, idle)
        finally:
            code = d.stop(timeout=60)
            if code != 0:
                print(d.log()[-3000:])
            with contextlib.suppress(FileNotFoundError):
                shutil.copy(d.log_path, Path(args.cache) / "daemon.log")
            (Path(args.cache) / "daemon-calls.json").write_text(json.dumps(raw))
            if args.wrap == "diagnose":
                with contextlib.suppress(FileNotFoundError):
                    shutil.copy(base / "daemon" / "diag.json", Path(args.cache) / "diag.json")
                report_diagnosis(base / "daemon" / "diag.json", windows)
            elif args.wrap == "profile":
                out = Path(args.cache) / "daemon.prof"
                shutil.copy(base / "daemon" / "daemon.prof", out)
                stats = pstats.Stats(str(out))
                print(f"\ndaemon main-thread profile (all of its life) in {out}; top by own time:")
                stats.sort_stats("tottime").print_stats(25)


@contextlib.contextmanager
def registry_cpu(pid: int, mode: str) -> Iterator[None]:
    """``remote``: the registry in a cpu cgroup of weight 2 (cgroup v1), as if on another machine."""
    cpu_root = Path("/sys/fs/cgroup/cpu")
    if mode == "shared" or not (cpu_root / "cpu.shares").exists():
        print(
            f"registry CPU: shared with the node{'' if mode == 'shared' else ' (no cgroup v1 cpu controller)'}"
        )
        yield
        return
    group = cpu_root / "wharfd-bench-registry"
    group.mkdir(exist_ok=True)
    (group / "cpu.shares").write_text("2")
    (group / "cgroup.procs").write_text(str(pid))
    print(f"registry CPU: remote stand-in ({group}, cpu.shares 2)")
    try:
        yield
    finally:
        (cpu_root / "cgroup.procs").write_text(str(pid))
        with contextlib.suppress(OSError):
            group.rmdir()


def main() -> None:
    """Build, push, measure, print."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="warm pulls per image (best is reported)")
    ap.add_argument("--root", default="/dev/shm", help="where the daemon root and tar's directories go")
    ap.add_argument("--cache", default="/var/tmp/wharfd-bench-pull", help="where built layer blobs are kept")
    ap.add_argument("--only", choices=["a", "b"], help="measure one image")
    ap.add_argument(
        "--mode",
        choices=["both", "inprocess", "daemon"],
        default="both",
        help="the Puller in this process, the real daemon with a probe process, or both (default)",
    )
    ap.add_argument(
        "--via",
        choices=["cri", "transfer"],
        default="cri",
        help="daemon mode: CRI PullImage or wharf images pull",
    )
    ap.add_argument(
        "--registry-cpu",
        choices=["remote", "shared"],
        default="remote",
        help="the registry in a lowest-weight cpu cgroup, standing for a remote one (default), or competing",
    )
    ap.add_argument(
        "--wrap",
        choices=["none", "diagnose", "profile"],
        default="none",
        help="daemon mode: record slow loop callbacks and loop lag, or cProfile the daemon's loop thread",
    )
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    images = {"a": build_a(cache), "b": build_b(cache)}
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; root {args.root}")
    with (
        tempfile.TemporaryDirectory(prefix="registry-", dir=args.root) as reg_dir,
        run_registry(Path(reg_dir)) as reg,
        registry_cpu(reg.process.pid, args.registry_cpu),
    ):
        refs = {name: asyncio.run(push(reg.host, f"bench/{name}", blobs)) for name, blobs in images.items()}
        for name, blobs in images.items():
            if args.mode == "daemon" or (args.only and name != args.only):
                continue
            with tempfile.TemporaryDirectory(prefix="wharfd-bench-", dir=args.root) as work:
                tar = gnu_tar(blobs, Path(work), args.runs)
                cold, warm, idle = asyncio.run(
                    measure(refs[name], Path(work) / "root", args.runs, reg.process.pid)
                )
            report(name, blobs, cold, warm, idle, tar)
        if args.mode != "inprocess":
            print(f"\nload average {os.getloadavg()[0]:.2f} before the daemon runs")
            measure_daemon(args, images, reg, refs)
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (other work on the machine skews wall times)")


if __name__ == "__main__":
    main()
