"""Layer unpack throughput: wharfd's apply against GNU tar, in the same run, on tmpfs.

    .venv/bin/python bench/unpack.py [--runs 3] [--zstd] [--src DIR ...]

Builds a layer of about 100 MB compressed (by default a copy of
/usr/lib/python3*, /usr/share/doc: thousands of small files and a few large
ones; a synthetic tree where those are missing), then times, best of
``--runs``, each extraction into a fresh directory under /dev/shm so that the
disk does not dominate (tools.md §5):

* GNU tar ``-xzf`` (``-I zstd`` with ``--zstd``), which decompresses in a
  second process;
* ``apply_layer`` in overlay mode, with its decode thread (the default) and
  single-threaded;
* each of those twice at once in two worker processes, against once, to show
  that independent layers scale (the unpack pipeline's parallelism).

Throughput is uncompressed tar MB (10^6 bytes) per wall second. CPU seconds
include children and all threads. Needs root (tar keeps owners, devices).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from wharfd.runtime.images.apply import apply_layer

DEFAULT_SRC = ["/usr/lib/python3", "/usr/lib/python3.11", "/usr/share/doc"]


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _synthetic(root: Path) -> None:
    rnd = os.urandom(1 << 20)
    for d in range(400):
        sub = root / f"d{d:03}"
        sub.mkdir(parents=True)
        for f in range(20):
            size = 200 + (d * 7919 + f * 104729) % 16000
            (sub / f"f{f:02}.py").write_bytes((b"import os\n" * (size // 10))[:size])
    for i in range(12):
        (root / f"big{i}.bin").write_bytes(rnd * 4 + b"\0" * (4 << 20))


def build(work: Path, sources: list[str], zstd: bool) -> tuple[Path, int]:
    """The layer blob and its uncompressed size."""
    tar = work / "layer.tar"
    present = [s for s in sources if os.path.isdir(s)]
    if present:
        subprocess.run(["tar", "-cf", tar, "-C", "/", *[s.lstrip("/") for s in present]], check=True)
    else:
        _synthetic(work / "synthetic")
        subprocess.run(["tar", "-cf", tar, "-C", work, "synthetic"], check=True)
        shutil.rmtree(work / "synthetic")
    blob = work / ("layer.tar.zst" if zstd else "layer.tar.gz")
    with blob.open("wb") as out:
        subprocess.run(
            ["zstd", "-3", "-c", tar] if zstd else ["gzip", "-6", "-c", tar], stdout=out, check=True
        )
    size = tar.stat().st_size
    tar.unlink()
    return blob, size


def _fresh(work: Path, name: str) -> Path:
    path = work / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir()
    return path


def gnu_tar(blob: Path, dest: Path) -> None:
    """GNU tar, decompressing through gzip -d or zstd -d as it always does."""
    how = ["-I", "zstd"] if blob.suffix == ".zst" else ["-z"]
    subprocess.run(["tar", *how, "-xf", str(blob), "-C", str(dest)], check=True)


def ours(blob: Path, dest: Path) -> None:
    """wharfd's apply in one thread, as a pool worker per core would call it."""
    apply_layer(blob, dest, "overlay", threaded=False)


def _ours_threaded(blob: Path, dest: Path) -> None:
    apply_layer(blob, dest, "overlay", threaded=True)


def best(runs: int, fn: Callable[[], float | None], reset: Callable[[], object]) -> tuple[float, float]:
    """Best (wall, cpu) over ``runs``; ``reset`` runs untimed before each; ``fn`` may report its own CPU."""
    results = []
    for _ in range(runs):
        reset()
        wall, cpu = time.perf_counter(), _cpu()
        own = fn()
        results.append((time.perf_counter() - wall, own if own is not None else _cpu() - cpu))
    return min(results)


def _in_worker(fn: Callable[[Path, Path], None], blob: Path, dest: Path) -> float:
    """Run ``fn`` in a pool worker; the CPU seconds it took there (threads and children included)."""
    cpu = _cpu()
    fn(blob, dest)
    return _cpu() - cpu


def _pair(
    pool: ProcessPoolExecutor, fn: Callable[[Path, Path], None], blob: Path, dests: list[Path]
) -> float:
    return sum(f.result() for f in [pool.submit(_in_worker, fn, blob, d) for d in dests])


def main() -> None:
    """Run the benchmark and print a table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--zstd", action="store_true", help="zstd layer (tar -I zstd) instead of gzip")
    ap.add_argument("--src", nargs="*", default=DEFAULT_SRC, help="directories to pack into the layer")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wharfd-bench-", dir="/dev/shm"))
    try:
        blob, tar_size = build(work, args.src, args.zstd)
        csize = blob.stat().st_size
        print(f"layer: {blob.name} {csize / 1e6:.1f} MB compressed, {tar_size / 1e6:.1f} MB tar")
        print(f"best of {args.runs}; {os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.2f}")
        rows: dict[str, tuple[float, float]] = {}
        out = work / "out"
        for name, fn in (("GNU tar", gnu_tar), ("wharfd", ours), ("wharfd, decode thread", _ours_threaded)):
            rows[name] = best(args.runs, partial(fn, blob, out), partial(_fresh, work, "out"))
        dests = [work / "p1", work / "p2"]

        def reset() -> None:
            for d in dests:
                _fresh(work, d.name)

        with ProcessPoolExecutor(2) as pool:
            _pair(pool, ours, blob, [_fresh(work, "warm1"), _fresh(work, "warm2")])  # start the workers
            for name, fn in (
                ("GNU tar", gnu_tar),
                ("wharfd", ours),
                ("wharfd, decode thread", _ours_threaded),
            ):
                rows[f"2 at once: {name}"] = best(args.runs, partial(_pair, pool, fn, blob, dests), reset)
        report(rows, tar_size, csize)
        print(f"load average after: {os.getloadavg()[0]:.2f} (other work on the machine skews wall times)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(rows: dict[str, tuple[float, float]], tar_size: int, csize: int) -> None:
    """Print throughput per row, then the ratios that matter."""
    print(f"{'':32} {'wall s':>7} {'cpu s':>7} {'tar MB/s':>9} {'blob MB/s':>10}")
    for name, (wall, cpu) in rows.items():
        n = 2 if name.startswith("2 at once") else 1
        rate = n * tar_size / wall / 1e6
        print(f"{name:32} {wall:7.3f} {cpu:7.3f} {rate:9.1f} {rate * csize / tar_size:10.1f}")
    gnu = rows["GNU tar"][0]
    for name in ("wharfd", "wharfd, decode thread"):
        print(f"{name} / GNU tar throughput, one layer: {gnu / rows[name][0]:.2f}x")
    for name in ("GNU tar", "wharfd", "wharfd, decode thread"):
        pair = rows[f"2 at once: {name}"][0]
        print(f"{name}: 2 layers in 2 processes give {2 * rows[name][0] / pair:.2f}x the throughput of 1")


if __name__ == "__main__":
    main()
