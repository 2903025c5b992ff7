"""Where an idle daemon's memory goes: /proc/<pid>/smaps by kind of mapping, and its threads.

    sudo .venv/bin/python bench/daemon_memory.py [--config-extra TOML] [--pods N [--handler wharf]]

Starts a real wharfd (the test helper of e2e/daemon.py: its own root, state and
socket under /tmp), waits until it answers health, lets it settle for a second,
then prints, idle and (with ``--pods``, through the CRI rig of
e2e/cri_support.py) after pulling the images and with N pods running:

* RSS / PSS / private (dirty + clean) in MiB from smaps, grouped as shared
  objects' text and data (``*.so``: the interpreter's extension modules, grpc's
  core, libssl, ...), the anonymous heap and arenas (``[heap]`` and nameless
  mappings: Python objects, malloc arenas), thread stacks and the rest;
* the largest shared objects;
* the number of threads and their names (``/proc/<pid>/task/*/comm``).

containerd's idle daemon RSS on the reference machine is 51 MiB (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e.daemon import Daemon
from wharfd.api.cri.v1 import api_pb2 as cri

HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$")


def smaps(pid: int) -> list[tuple[str, dict[str, int]]]:
    """Every mapping of ``pid``: (path or pseudo-name, {field: kB})."""
    out: list[tuple[str, dict[str, int]]] = []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        m = HEADER.match(line)
        if m:
            out.append((m.group(3), {}))
            continue
        key, _, rest = line.partition(":")
        fields = rest.split()
        if out and len(fields) == 2 and fields[1] == "kB":
            out[-1][1][key] = int(fields[0])
    return out


def kind(name: str, stacks: set[str]) -> str:
    if name in stacks:
        return "thread stacks"
    if ".so" in name or name.endswith("/python3.11") or "/bin/python" in name:
        return "shared objects (.so, interpreter)"
    if name in ("[heap]", ""):
        return "anonymous (heap, arenas, Python objects)"
    if name.startswith("[stack"):
        return "main stack"
    return "other files and pseudo-mappings"


def report(pid: int) -> None:
    maps = smaps(pid)
    # Thread stacks are anonymous mappings; /proc/<pid>/task/*/stat gives each thread's stack pointer.
    stack_ranges: list[tuple[int, int]] = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        stack_ranges.append((lo, hi))
    sps = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        # "<nr> <args...> <sp> <pc>", or "running"; the stack pointer finds the thread's stack mapping.
        fields = (task / "syscall").read_text().split()
        if len(fields) > 2:
            sps.append(int(fields[-2], 16))
    totals: dict[str, Counter[str]] = defaultdict(Counter)
    per_so: Counter[str] = Counter()
    names = [name for name, _ in maps]
    stack_names = {"[thread stack]"}
    for (name, fields), (lo, hi) in zip(maps, stack_ranges, strict=True):
        label = name
        if not name and any(lo <= sp < hi for sp in sps if sp):
            label = "[thread stack]"
        k = kind(label, stack_names)
        totals[k]["Rss"] += fields.get("Rss", 0)
        totals[k]["Pss"] += fields.get("Pss", 0)
        totals[k]["Private"] += fields.get("Private_Dirty", 0) + fields.get("Private_Clean", 0)
        totals[k]["mappings"] += 1
        if k.startswith("shared objects"):
            per_so[os.path.basename(name)] += fields.get("Rss", 0)
    del names
    mib = 1024.0
    print("| mappings | RSS | PSS | private | n |\n|---|---|---|---|---|")
    for k, c in sorted(totals.items(), key=lambda kv: -kv[1]["Rss"]):
        print(
            f"| {k} | {c['Rss'] / mib:.1f} | {c['Pss'] / mib:.1f} | {c['Private'] / mib:.1f} | {c['mappings']} |"
        )
    all_rss = sum(c["Rss"] for c in totals.values())
    all_pss = sum(c["Pss"] for c in totals.values())
    print(f"| total | {all_rss / mib:.1f} | {all_pss / mib:.1f} | | |")
    print(
        "\nlargest shared objects (RSS MiB): "
        + ", ".join(f"{n} {v / mib:.1f}" for n, v in per_so.most_common(8))
    )
    comms = Counter((t / "comm").read_text().strip() for t in Path(f"/proc/{pid}/task").iterdir())
    print(f"threads: {sum(comms.values())}: " + ", ".join(f"{n} x{c}" for n, c in comms.most_common()))


def with_pods(pods: int, handler: str, settle: float) -> None:
    """Idle, after pulling the pause and busybox images, then with ``pods`` pods running."""
    from e2e.cri_support import PAUSE_REF, TIMEOUT, CriRig

    with CriRig() as rig:
        assert rig.daemon.proc is not None
        pid = rig.daemon.proc.pid
        time.sleep(settle)
        print("\n## idle")
        report(pid)
        rig.pull()
        rig.pull(PAUSE_REF)
        time.sleep(settle)
        print("\n## after pulling busybox and pause")
        report(pid)
        running = []
        for i in range(pods):
            config = rig.pod_config(f"pod-{i}")
            request = cri.RunPodSandboxRequest(config=config, runtime_handler=handler)
            pod_id = rig.runtime.RunPodSandbox(request, timeout=2 * TIMEOUT).pod_sandbox_id
            create = cri.CreateContainerRequest(
                pod_sandbox_id=pod_id,
                config=rig.container_config("app", ["sleep", "3600"]),
                sandbox_config=config,
            )
            ctr_id = rig.runtime.CreateContainer(create, timeout=TIMEOUT).container_id
            rig.runtime.StartContainer(cri.StartContainerRequest(container_id=ctr_id), timeout=TIMEOUT)
            running.append(pod_id)
        for _ in range(20):  # kubelet's relist
            rig.runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=TIMEOUT)
            rig.runtime.ListContainers(cri.ListContainersRequest(), timeout=TIMEOUT)
        time.sleep(settle)
        print(f"\n## {len(running)} pods running (handler {handler or 'runc'})")
        report(pid)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-extra", default="", help="TOML appended to the daemon's config")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds to wait before each measurement")
    parser.add_argument("--pods", type=int, default=0, help="also measure after a pull and with N pods")
    parser.add_argument("--handler", default="", help="runtime handler of the pods ('wharf': our shim)")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    if args.pods:
        with_pods(args.pods, args.handler, args.settle)
        return
    with tempfile.TemporaryDirectory(prefix="wharfd-test-mem-") as tmp:
        daemon = Daemon(Path(tmp) / "d", extra_config=args.config_extra)
        daemon.start()
        try:
            time.sleep(args.settle)
            assert daemon.proc is not None
            report(daemon.proc.pid)
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
