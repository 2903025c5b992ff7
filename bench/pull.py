"""Pull + unpack throughput through the Puller, against GNU tar on the same blobs, in the same run.

    .venv/bin/python bench/pull.py [--runs 3] [--root /dev/shm] [--cache /var/tmp/wharfd-bench-pull]

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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support lives beside bench/

from tests.support.images import busybox_files, canonical_json, tar_bytes
from tests.support.registry import run_registry
from wharfd.runtime import events, gc, mount, namespaces, plugin
from wharfd.runtime.images import mediatypes
from wharfd.runtime.images.manifest import Descriptor, digest_of
from wharfd.runtime.images.pull import PLUGIN as PULL_PLUGIN
from wharfd.runtime.images.pull import Puller
from wharfd.runtime.metadata import plugin as metadata_plugin
from wharfd.runtime.registry import HostsConfig, Resolver, Transport
from wharfd.runtime.services import content as content_service
from wharfd.runtime.services import diff as diff_service
from wharfd.runtime.services import snapshots as snapshots_service

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


def tree_cpu(skip: int) -> float:
    """CPU seconds so far of this process and its descendants (the workers), but ``skip``'s."""
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
    total, todo = 0.0, [os.getpid()]
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

def memory(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            got = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in f if l.split()[-1] == "kB"}
    except (OSError, ValueError):
        return 0, 0
    return got.get("Rss", 0), got.get("Pss", 0)

me = int(sys.argv[1])
skip = {os.getpid(), *map(int, sys.argv[2:])}  # this sampler, the registry
peak = [0, 0, 0]
import select
while not select.select([sys.stdin], [], [], 0.02)[0]:
    mem = [memory(p) for p in tree(me, skip)]
    peak = [max(peak[0], memory(me)[0]), max(peak[1], sum(m[0] for m in mem)), max(peak[2], sum(m[1] for m in mem))]
print(*peak)
"""


@contextlib.contextmanager
def sampling(sample: Sample, skip: int) -> Iterator[None]:
    """Sample memory every 20 ms from another process (a thread here would compete for the GIL).

    ``skip`` is a child process not to count (the registry).
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", _SAMPLER, str(os.getpid()), str(skip)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield
    finally:
        out, _ = proc.communicate("stop\n")
        sample.rss_self, sample.rss_tree, sample.pss_tree = (int(x) for x in out.split())


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
        content_service.STORE_PLUGIN,
        snapshots_service.OVERLAYFS_PLUGIN,
        gc.PLUGIN,
        diff_service.DIFFER_PLUGIN,
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
    sample.lat_p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) > 2 else sample.lat_max
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
    return Sample(seconds, max(latencies), statistics.quantiles(latencies, n=100)[98], len(latencies))


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
        f"  peak RSS: this process {rss:.0f} MB; with fork server and workers {tree:.0f} MB (PSS {pss:.0f} MB)"
    )


def main() -> None:
    """Build, push, measure, print."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="warm pulls per image (best is reported)")
    ap.add_argument("--root", default="/dev/shm", help="where the daemon root and tar's directories go")
    ap.add_argument("--cache", default="/var/tmp/wharfd-bench-pull", help="where built layer blobs are kept")
    ap.add_argument("--only", choices=["a", "b"], help="measure one image")
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    images = {"a": build_a(cache), "b": build_b(cache)}
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; root {args.root}")
    with (
        tempfile.TemporaryDirectory(prefix="registry-", dir=args.root) as reg_dir,
        run_registry(Path(reg_dir)) as reg,
    ):
        refs = {name: asyncio.run(push(reg.host, f"bench/{name}", blobs)) for name, blobs in images.items()}
        for name, blobs in images.items():
            if args.only and name != args.only:
                continue
            with tempfile.TemporaryDirectory(prefix="wharfd-bench-", dir=args.root) as work:
                tar = gnu_tar(blobs, Path(work), args.runs)
                cold, warm, idle = asyncio.run(
                    measure(refs[name], Path(work) / "root", args.runs, reg.process.pid)
                )
            report(name, blobs, cold, warm, idle, tar)
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (other work on the machine skews wall times)")


if __name__ == "__main__":
    main()
