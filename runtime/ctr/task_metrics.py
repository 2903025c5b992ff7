"""``wharf tasks metrics``: one data point of a task's cgroup metrics, as ctr prints it.

The table has ctr's rows for cgroup v1 (memory, cpuacct, pids) or v2 (pids,
cpu, memory); ``--format json`` prints the whole metrics message with proto
field names and numbers as numbers, as Go's encoding/json prints it.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from wharfd.runtime.ctr import commands
from wharfd.runtime.ctr.tabwriter import Writer
from wharfd.runtime.ctr.tasks import tasks_stub


def show(args: argparse.Namespace) -> None:
    """Print one data point of a task's metrics as a table or JSON."""
    from wharfd.api.services.tasks.v1 import tasks_pb2 as tpb

    with commands.new_client(args) as client:
        reply = tasks_stub(client).Metrics(tpb.MetricsRequest(filters=[f"id=={args.id}"]))
    if not reply.metrics:
        raise commands.CommandError(f"no metrics received for {args.id}")
    metric = reply.metrics[0]
    data = _unpack_metrics(metric.data)
    if args.format == "json":
        commands.print_json(_plain(data))
        return
    tw = Writer(sys.stdout, 1, 8, 4)
    tw.write("ID\tTIMESTAMP\t\n")
    tw.write(f"{metric.id}\t{_go_time(metric.timestamp)}\t\n\n")
    tw.write("METRIC\tVALUE\t\n")
    for name, value in metric_rows(data):
        tw.write(f"{name}\t{value}\t\n")
    tw.flush()


def _unpack_metrics(data: Any) -> Any:
    from wharfd.api.types.cgroups.v1 import metrics_pb2 as v1
    from wharfd.api.types.cgroups.v2 import metrics_pb2 as v2

    for module in (v1, v2):
        if data.type_url.rsplit("/", 1)[-1] == module.Metrics.DESCRIPTOR.full_name:
            return module.Metrics.FromString(data.value)
    raise commands.CommandError(f"cannot convert metric data type {data.type_url!r}")


def metric_rows(data: Any) -> list[tuple[str, Any]]:
    """The ``METRIC VALUE`` rows ctr prints for cgroup v1 or v2 metrics."""
    rows: list[tuple[str, Any]] = []
    v2 = data.DESCRIPTOR.full_name.endswith("v2.Metrics")
    if v2:
        if data.HasField("pids"):
            rows += [("pids.current", data.pids.current), ("pids.limit", data.pids.limit)]
        if data.HasField("cpu"):
            for key in (
                "usage_usec",
                "user_usec",
                "system_usec",
                "nr_periods",
                "nr_throttled",
                "throttled_usec",
            ):
                rows.append((f"cpu.{key}", getattr(data.cpu, key)))
        if data.HasField("memory"):
            for key in ("usage", "usage_limit", "swap_usage", "swap_limit"):
                rows.append((f"memory.{key}", getattr(data.memory, key)))
        return rows
    if data.HasField("memory"):
        rows += [
            ("memory.usage_in_bytes", data.memory.usage.usage),
            ("memory.limit_in_bytes", data.memory.usage.limit),
            ("memory.stat.cache", data.memory.total_cache),
        ]
    if data.HasField("cpu"):
        per_cpu = "[" + " ".join(str(v) for v in data.cpu.usage.per_cpu) + "]"
        rows += [("cpuacct.usage", data.cpu.usage.total), ("cpuacct.usage_percpu", per_cpu)]
    if data.HasField("pids"):
        rows += [("pids.current", data.pids.current), ("pids.limit", data.pids.limit)]
    return rows


def _plain(message: Any) -> Any:
    """A message as Go's encoding/json prints protobuf structs: proto field names, numbers as numbers."""
    out: dict[str, Any] = {}
    for fd, value in message.ListFields():
        if fd.message_type is not None:
            out[fd.name] = [_plain(v) for v in value] if fd.is_repeated else _plain(value)
        else:
            out[fd.name] = list(value) if fd.is_repeated else value
    return out


def _go_time(ts: Any) -> str:
    when = datetime.fromtimestamp(ts.seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    nanos = f".{ts.nanos:09d}".rstrip("0") if ts.nanos else ""
    return f"{when}{nanos} +0000 UTC"
