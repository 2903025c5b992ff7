"""Start time and memory per pod: containerd-shim-wharf-v2 beside the stock containerd-shim-runc-v2.

    .venv/bin/python bench/shim.py [--pods 30]

Needs root, runc and /bin/busybox. For each shim binary, in the same run, it
launches ``--pods`` pods as a daemon would (``start`` in the bundle; the stock
1.6 shim gets the legacy protocol, ours the bootstrap one), creates and starts
one busybox ``sleep`` container in each over ttrpc, then reads every shim's
``/proc/<pid>/smaps_rollup``. PSS charges shared pages to each sharer, so the
shims' sum of PSS is what they cost together; our zygote (the process the
shims are forked from) is reported on its own and as a share per pod, and so is
its pre-forked spare (one idle shim per node, not per pod; ``WHARF_SHIM_ZYGOTE_SPARE=0``
in the environment runs without). Each
shim's threads and its private memory by kind of mapping (``/proc/<pid>/smaps``:
``[heap]`` is malloc's, anonymous mappings hold pymalloc's arenas and thread
stacks, files their written data) say where the rest goes.
With ``ksmd`` running (``--ksm daemon``, the default, turns it on as the
daemon does, with the kernel's default scan rate), our shims' figures are taken
twice: 1 s after the last start, and once ``ksmd`` has reached a steady state
(a full scan adds under 1% to the pages it shares): it shares again the pages
the shims copied from the zygote and left unchanged. What that took, in time and
in ksmd's CPU, is printed. The stock shim marks nothing mergeable: KSM does not
apply to it.
Everything started is deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from google.protobuf import any_pb2, empty_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ksm import enable_ksmd, ksm_running, ksm_settings, ksmd_cpu_seconds, wait_for_merging
from wharfd.api.runtime.bootstrap.v1 import bootstrap_pb2
from wharfd.api.runtime.task.v3 import shim_pb2 as api
from wharfd.api.types import mount_pb2
from wharfd.api.types.runc.options import oci_pb2
from wharfd.runtime.ttrpc.client import TtrpcClient
from wharfd.runtime.ttrpc.server import TtrpcServer

OURS = Path(sys.executable).parent / "containerd-shim-wharf-v2"
STOCK = shutil.which("containerd-shim-runc-v2") or "/usr/bin/containerd-shim-runc-v2"
NAMESPACE = "wharfd-bench"
MD = {"containerd-namespace-ttrpc": NAMESPACE}


def breakdown(pid: int) -> dict[str, int]:
    """Private (clean + dirty) KiB of ``pid`` by kind of mapping, from /proc/<pid>/smaps."""
    totals: dict[str, int] = {}
    kind = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            name = head[5] if len(head) > 5 else ""
            if name.startswith("["):
                kind = name
            elif name:
                kind = "file " + os.path.basename(name)
            else:
                kind = "anonymous"
        elif head[0] in ("Private_Dirty:", "Private_Clean:"):
            totals[kind] = totals.get(kind, 0) + int(head[1])
    return totals


def threads(pid: int) -> int:
    """The number of threads of ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB from smaps_rollup."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            values[key] = int(rest.split()[0])
    return values["Rss"], values["Pss"]


class Bench:
    def __init__(self, root: Path, pods: int, merge_wait: float, ksm_idle: float = 0.0) -> None:
        self.root, self.pods, self.merge_wait, self.ksm_idle = root, pods, merge_wait, ksm_idle
        self.rootfs = root / "busybox"
        self.spec = self._spec()
        self.log_fds: list[int] = []
        self.addresses: list[str] = []

    def _spec(self) -> dict[str, object]:
        (self.rootfs / "bin").mkdir(parents=True)
        shutil.copy2("/bin/busybox", self.rootfs / "bin" / "busybox")
        (self.rootfs / "bin" / "sleep").symlink_to("busybox")
        for name in ("proc", "dev", "sys", "tmp"):
            (self.rootfs / name).mkdir()
        subprocess.run(["runc", "spec", "--bundle", str(self.root)], check=True)
        spec: dict[str, object] = json.loads((self.root / "config.json").read_text())
        return spec

    def bundle(self, kind: str, index: int) -> tuple[str, Path]:
        cid = f"{kind}-{index}"
        bundle = self.root / cid
        (bundle / "rootfs").mkdir(parents=True)
        spec = json.loads(json.dumps(self.spec))
        spec["process"].update(args=["sleep", "100000"], terminal=False)
        spec["root"] = {"path": "rootfs", "readonly": False}
        spec["linux"]["cgroupsPath"] = f"/wharfd-bench-{self.root.name}/{cid}"
        (bundle / "config.json").write_text(json.dumps(spec))
        # As containerd does: a "log" FIFO the shim writes to, held open by the daemon
        # (the stock shim exits at once without it).
        os.mkfifo(bundle / "log")
        self.log_fds.append(os.open(bundle / "log", os.O_RDWR | os.O_NONBLOCK))
        return cid, bundle

    def options(self, kind: str) -> any_pb2.Any:
        opts = oci_pb2.Options(root=str(self.root / f"runc-{kind}"))
        return any_pb2.Any(type_url="containerd.runc.v1.Options", value=opts.SerializeToString())

    async def start(self, kind: str, cid: str, bundle: Path) -> tuple[str, float]:
        binary = OURS if kind == "wharf" else Path(STOCK)
        stdin = b""
        if kind == "wharf":
            params = bootstrap_pb2.BootstrapParams(
                instance_id=cid, namespace=NAMESPACE, socket_dir=str(self.root / "s")
            )
            params.extensions.add().value.CopyFrom(self.options(kind))
            stdin = params.SerializeToString()
        env = {**os.environ, "TTRPC_ADDRESS": str(self.root / "d.ttrpc")}
        argv = [str(binary), "-namespace", NAMESPACE, "-address", str(self.root / "d.sock"),
                "-publish-binary", "/bin/true", "-id", cid, "start"]  # fmt: skip
        began = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=bundle, env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate(stdin)
        elapsed = time.perf_counter() - began
        if proc.returncode != 0:
            raise RuntimeError(f"{binary} start: {err.decode()}")
        address = (
            bootstrap_pb2.BootstrapResult.FromString(out).address if kind == "wharf" else out.decode().strip()
        )
        self.addresses.append(address)
        return address, elapsed

    async def pod(self, kind: str, index: int) -> tuple[TtrpcClient, str, int, float]:
        cid, bundle = self.bundle(kind, index)
        address, elapsed = await self.start(kind, cid, bundle)
        client = await TtrpcClient.connect(address, timeout=10)
        service = "containerd.task.v3.Task" if kind == "wharf" else "containerd.task.v2.Task"
        rootfs = mount_pb2.Mount(type="bind", source=str(self.rootfs), options=["rbind", "ro"])
        create = api.CreateTaskRequest(
            id=cid, bundle=str(bundle), rootfs=[rootfs], options=self.options(kind)
        )
        await client.call(service, "Create", create, api.CreateTaskResponse, timeout=30, metadata=MD)
        await client.call(
            service, "Start", api.StartRequest(id=cid), api.StartResponse, timeout=30, metadata=MD
        )
        connected = await client.call(
            service, "Connect", api.ConnectRequest(id=cid), api.ConnectResponse, timeout=10, metadata=MD
        )
        return client, cid, connected.shim_pid, elapsed

    async def measure(self, kind: str) -> dict[str, float]:
        pods = []
        try:
            for index in range(self.pods):
                pods.append(await self.pod(kind, index))
            await asyncio.sleep(1.0)
            starts = [elapsed for *_, elapsed in pods]
            result = {
                "first start ms": starts[0] * 1000,
                "median start ms": statistics.median(starts[1:] or starts) * 1000,
            }
            pids = [pid for _, _, pid, _ in pods]
            result.update(self.usage(kind, pids, "1 s after start: "))
            # The stock shim marks nothing mergeable: ksmd leaves it alone (its figures stay as they are).
            if kind == "wharf" and self.merge_wait and ksm_running():
                began, cpu = time.monotonic(), ksmd_cpu_seconds()
                scans = await wait_for_merging(self.merge_wait)
                waited = time.monotonic() - began
                result["KSM: seconds until steady"] = waited
                result["KSM: full scans meanwhile"] = scans
                result["KSM: ksmd CPU % of one core meanwhile"] = (ksmd_cpu_seconds() - cpu) / waited * 100
                result.update(self.usage(kind, pids, "after KSM: "))
                if self.ksm_idle:  # what keeping them merged costs, the shims idle
                    cpu = ksmd_cpu_seconds()
                    await asyncio.sleep(self.ksm_idle)
                    result["KSM: ksmd CPU % of one core, steady, shims idle"] = (
                        (ksmd_cpu_seconds() - cpu) / self.ksm_idle * 100
                    )
            return result
        finally:
            await self.teardown(kind, pods)

    def usage(self, kind: str, pids: list[int], prefix: str) -> dict[str, float]:
        """Memory of the shims (and the zygote, the spare) now, keys prefixed by ``prefix``."""
        usage = [memory(pid) for pid in pids]
        result = {
            "RSS MiB/shim": statistics.mean(r for r, _ in usage) / 1024,
            "PSS MiB/shim": statistics.mean(p for _, p in usage) / 1024,
            "threads/shim": statistics.mean(threads(pid) for pid in pids),
        }
        parts: dict[str, float] = {}
        for pid in pids:
            for name, kib in breakdown(pid).items():
                parts[name] = parts.get(name, 0) + kib / 1024 / len(pids)
        for name, mib in sorted(parts.items(), key=lambda item: -item[1]):
            if mib >= 0.02:
                result[f"private MiB/shim: {name}"] = mib
        zygote = zygote_pid(self.root / "s") if kind == "wharf" else 0
        if zygote:
            rss, pss = memory(zygote)
            result["zygote RSS MiB"], result["zygote PSS MiB"] = rss / 1024, pss / 1024
            result["PSS MiB/pod incl. zygote share"] = result["PSS MiB/shim"] + pss / 1024 / len(pids)
            for spare in spares_of(zygote):  # per node, not per pod: kept out of the figures above
                rss, pss = memory(spare)
                result["spare RSS MiB (per node)"], result["spare PSS MiB (per node)"] = (
                    rss / 1024,
                    pss / 1024,
                )
        return {prefix + key: value for key, value in result.items()}

    async def teardown(self, kind: str, pods: list[tuple[TtrpcClient, str, int, float]]) -> None:
        service = "containerd.task.v3.Task" if kind == "wharf" else "containerd.task.v2.Task"
        for client, cid, pid, _ in pods:
            with contextlib.suppress(Exception):
                await client.call(
                    service, "Kill", api.KillRequest(id=cid, signal=9), empty_pb2.Empty, metadata=MD
                )
                await client.call(
                    service, "Wait", api.WaitRequest(id=cid), api.WaitResponse, timeout=10, metadata=MD
                )
                await client.call(
                    service, "Delete", api.DeleteRequest(id=cid), api.DeleteResponse, metadata=MD
                )
                await client.call(
                    service, "Shutdown", api.ShutdownRequest(id=cid), empty_pb2.Empty, metadata=MD
                )
            with contextlib.suppress(Exception):
                await client.close()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def zygote_pid(socket_dir: Path) -> int:
    for path in socket_dir.glob("wharf-zygote-*.sock"):
        with socket.socket(socket.AF_UNIX) as sock, contextlib.suppress(OSError):
            sock.connect(str(path))
            return int(struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0])
    return 0


def spares_of(zygote: int) -> list[int]:
    """The zygote's pre-forked spare (a child named wharf-spare), if it has one."""
    found = []
    for child in Path(f"/proc/{zygote}/task/{zygote}/children").read_text().split():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{child}/comm").read_text().startswith("wharf-spare"):
                found.append(int(child))
    return found


def cleanup(root: Path) -> None:
    zygote = zygote_pid(root / "s")
    if zygote:
        os.kill(zygote, signal.SIGKILL)
    for runc_root in root.glob("runc-*"):
        for state in runc_root.iterdir():
            subprocess.run(["runc", "--root", str(runc_root), "delete", "--force", state.name], check=False)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if line.split()[4].startswith(str(root))]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / f"wharfd-bench-{root.name}"
        if top.is_dir():
            for dirpath, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
    shutil.rmtree(root, ignore_errors=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=30)
    parser.add_argument(
        "--ksm",
        choices=("daemon", "asis"),
        default="daemon",
        help="daemon: turn ksmd on as the daemon does by default (merge_shim_memory); asis: leave it",
    )
    parser.add_argument(
        "--merge-wait", type=float, default=300.0, help="longest wait for ksmd's two full scans (0: none)"
    )
    parser.add_argument(
        "--ksm-idle", type=float, default=0.0, help="then measure ksmd's CPU for this many seconds (0: not)"
    )
    args = parser.parse_args()
    if args.ksm == "daemon":
        enable_ksmd()
    root = Path(tempfile.mkdtemp(prefix="wb-", dir="/tmp"))
    events = TtrpcServer()
    events.register("containerd.services.events.ttrpc.v1.Events", "Forward", _forward)
    await events.listen(root / "d.ttrpc")
    bench = Bench(root, args.pods, args.merge_wait, args.ksm_idle)
    results = {}
    try:
        results["containerd-shim-runc-v2 (stock)"] = await bench.measure("stock")
        results["containerd-shim-wharf-v2"] = await bench.measure("wharf")
    finally:
        await events.close()
        for fd in bench.log_fds:
            os.close(fd)
        for address in bench.addresses:
            with contextlib.suppress(OSError):
                os.unlink(address.removeprefix("unix://"))
        await asyncio.to_thread(cleanup, root)
    print(f"{args.pods} pods, one busybox sleep container each; ksmd: {ksm_settings()}")
    for name, figures in results.items():
        print(f"\n{name}")
        for key, value in figures.items():
            print(f"  {key:<44} {value:8.2f}")


async def _forward(payload: bytes, metadata: dict[str, list[str]]) -> bytes:
    return b""


if __name__ == "__main__":
    asyncio.run(main())
