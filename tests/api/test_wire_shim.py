"""Wire compatibility of the shim-side protos: task API v2/v3, bootstrap, runc options,
ttrpc envelopes, the daemon's ttrpc Events service and the cgroup metrics.

The tables are transcribed from the upstream .proto files (containerd main for the
containerd.* packages, the ttrpc and cgroups projects for ``ttrpc`` and
``io.containerd.cgroups.*``), never from this repo's files. Within a table a name
starting with ``.`` is relative to that table's package.
"""

from __future__ import annotations

import re
import struct

import pytest
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool
from google.protobuf.message import Message

from tests.api.wire import EnumRow, FieldRow, MethodRow, check_enums, check_fields, check_methods

# Importing the generated modules puts their descriptors in the default pool.
from wharfd.api.runtime.bootstrap.v1 import bootstrap_pb2
from wharfd.api.runtime.task.v2 import shim_pb2 as shim_v2
from wharfd.api.runtime.task.v3 import shim_pb2 as shim_v3
from wharfd.api.services.ttrpc.events.v1 import events_pb2
from wharfd.api.ttrpc import request_pb2
from wharfd.api.types.cgroups.v1 import metrics_pb2 as cg1
from wharfd.api.types.cgroups.v2 import metrics_pb2 as cg2
from wharfd.api.types.runc.options import oci_pb2

# The task tables are those of containerd.task.v2; upstream v3 differs only in its package.
_TASK_FIELDS: list[FieldRow] = [
    (".CreateTaskRequest", "id", 1, "string"),
    (".CreateTaskRequest", "bundle", 2, "string"),
    (".CreateTaskRequest", "rootfs", 3, "repeated containerd.types.Mount"),
    (".CreateTaskRequest", "terminal", 4, "bool"),
    (".CreateTaskRequest", "stdin", 5, "string"),
    (".CreateTaskRequest", "stdout", 6, "string"),
    (".CreateTaskRequest", "stderr", 7, "string"),
    (".CreateTaskRequest", "checkpoint", 8, "string"),
    (".CreateTaskRequest", "parent_checkpoint", 9, "string"),
    (".CreateTaskRequest", "options", 10, "google.protobuf.Any"),
    (".CreateTaskResponse", "pid", 1, "uint32"),
    (".DeleteRequest", "id", 1, "string"),
    (".DeleteRequest", "exec_id", 2, "string"),
    (".DeleteResponse", "pid", 1, "uint32"),
    (".DeleteResponse", "exit_status", 2, "uint32"),
    (".DeleteResponse", "exited_at", 3, "google.protobuf.Timestamp"),
    (".ExecProcessRequest", "id", 1, "string"),
    (".ExecProcessRequest", "exec_id", 2, "string"),
    (".ExecProcessRequest", "terminal", 3, "bool"),
    (".ExecProcessRequest", "stdin", 4, "string"),
    (".ExecProcessRequest", "stdout", 5, "string"),
    (".ExecProcessRequest", "stderr", 6, "string"),
    (".ExecProcessRequest", "spec", 7, "google.protobuf.Any"),
    (".ResizePtyRequest", "id", 1, "string"),
    (".ResizePtyRequest", "exec_id", 2, "string"),
    (".ResizePtyRequest", "width", 3, "uint32"),
    (".ResizePtyRequest", "height", 4, "uint32"),
    (".StateRequest", "id", 1, "string"),
    (".StateRequest", "exec_id", 2, "string"),
    (".StateResponse", "id", 1, "string"),
    (".StateResponse", "bundle", 2, "string"),
    (".StateResponse", "pid", 3, "uint32"),
    (".StateResponse", "status", 4, "containerd.v1.types.Status"),
    (".StateResponse", "stdin", 5, "string"),
    (".StateResponse", "stdout", 6, "string"),
    (".StateResponse", "stderr", 7, "string"),
    (".StateResponse", "terminal", 8, "bool"),
    (".StateResponse", "exit_status", 9, "uint32"),
    (".StateResponse", "exited_at", 10, "google.protobuf.Timestamp"),
    (".StateResponse", "exec_id", 11, "string"),
    (".KillRequest", "id", 1, "string"),
    (".KillRequest", "exec_id", 2, "string"),
    (".KillRequest", "signal", 3, "uint32"),
    (".KillRequest", "all", 4, "bool"),
    (".CloseIORequest", "id", 1, "string"),
    (".CloseIORequest", "exec_id", 2, "string"),
    (".CloseIORequest", "stdin", 3, "bool"),
    (".PidsRequest", "id", 1, "string"),
    (".PidsResponse", "processes", 1, "repeated containerd.v1.types.ProcessInfo"),
    (".CheckpointTaskRequest", "id", 1, "string"),
    (".CheckpointTaskRequest", "path", 2, "string"),
    (".CheckpointTaskRequest", "options", 3, "google.protobuf.Any"),
    (".UpdateTaskRequest", "id", 1, "string"),
    (".UpdateTaskRequest", "resources", 2, "google.protobuf.Any"),
    (".UpdateTaskRequest", "annotations", 3, "map<string, string>"),
    (".StartRequest", "id", 1, "string"),
    (".StartRequest", "exec_id", 2, "string"),
    (".StartResponse", "pid", 1, "uint32"),
    (".WaitRequest", "id", 1, "string"),
    (".WaitRequest", "exec_id", 2, "string"),
    (".WaitResponse", "exit_status", 1, "uint32"),
    (".WaitResponse", "exited_at", 2, "google.protobuf.Timestamp"),
    (".StatsRequest", "id", 1, "string"),
    (".StatsResponse", "stats", 1, "google.protobuf.Any"),
    (".ConnectRequest", "id", 1, "string"),
    (".ConnectResponse", "shim_pid", 1, "uint32"),
    (".ConnectResponse", "task_pid", 2, "uint32"),
    (".ConnectResponse", "version", 3, "string"),
    (".ShutdownRequest", "id", 1, "string"),
    (".ShutdownRequest", "now", 2, "bool"),
    (".PauseRequest", "id", 1, "string"),
    (".ResumeRequest", "id", 1, "string"),
]

_TASK_METHODS: list[MethodRow] = [
    (".Task", "State", ".StateRequest", ".StateResponse"),
    (".Task", "Create", ".CreateTaskRequest", ".CreateTaskResponse"),
    (".Task", "Start", ".StartRequest", ".StartResponse"),
    (".Task", "Delete", ".DeleteRequest", ".DeleteResponse"),
    (".Task", "Pids", ".PidsRequest", ".PidsResponse"),
    (".Task", "Pause", ".PauseRequest", "google.protobuf.Empty"),
    (".Task", "Resume", ".ResumeRequest", "google.protobuf.Empty"),
    (".Task", "Checkpoint", ".CheckpointTaskRequest", "google.protobuf.Empty"),
    (".Task", "Kill", ".KillRequest", "google.protobuf.Empty"),
    (".Task", "Exec", ".ExecProcessRequest", "google.protobuf.Empty"),
    (".Task", "ResizePty", ".ResizePtyRequest", "google.protobuf.Empty"),
    (".Task", "CloseIO", ".CloseIORequest", "google.protobuf.Empty"),
    (".Task", "Update", ".UpdateTaskRequest", "google.protobuf.Empty"),
    (".Task", "Wait", ".WaitRequest", ".WaitResponse"),
    (".Task", "Stats", ".StatsRequest", ".StatsResponse"),
    (".Task", "Connect", ".ConnectRequest", ".ConnectResponse"),
    (".Task", "Shutdown", ".ShutdownRequest", "google.protobuf.Empty"),
]

_BOOTSTRAP_FIELDS: list[FieldRow] = [
    (".BootstrapParams", "instance_id", 1, "string"),
    (".BootstrapParams", "namespace", 2, "string"),
    (".BootstrapParams", "log_level", 3, ".LogLevel"),
    (".BootstrapParams", "containerd_version", 4, "string"),
    (".BootstrapParams", "containerd_ttrpc_address", 5, "string"),
    (".BootstrapParams", "containerd_grpc_address", 6, "string"),
    (".BootstrapParams", "containerd_binary", 7, "string"),
    (".BootstrapParams", "extensions", 8, "repeated .Extension"),
    (".BootstrapParams", "socket_dir", 9, "string"),
    (".Extension", "value", 1, "google.protobuf.Any"),
    (".BootstrapResult", "version", 1, "int32"),
    (".BootstrapResult", "address", 2, "string"),
    (".BootstrapResult", "protocol", 3, "string"),
    (".BootstrapResult", "capabilities", 4, "repeated .Capability"),
    (".BootstrapResult", "metadata", 5, "map<string, string>"),
]

_BOOTSTRAP_ENUMS: list[EnumRow] = [
    (".LogLevel", "LOG_LEVEL_INFO", 0),
    (".LogLevel", "LOG_LEVEL_TRACE", -8),
    (".LogLevel", "LOG_LEVEL_DEBUG", -4),
    (".LogLevel", "LOG_LEVEL_WARN", 4),
    (".LogLevel", "LOG_LEVEL_ERROR", 8),
    (".LogLevel", "LOG_LEVEL_FATAL", 10),
    (".LogLevel", "LOG_LEVEL_PANIC", 12),
    (".Capability", "CAPABILITY_UNSPECIFIED", 0),
]

_RUNC_FIELDS: list[FieldRow] = [
    (".Options", "no_pivot_root", 1, "bool"),
    (".Options", "no_new_keyring", 2, "bool"),
    (".Options", "shim_cgroup", 3, "string"),
    (".Options", "io_uid", 4, "uint32"),
    (".Options", "io_gid", 5, "uint32"),
    (".Options", "binary_name", 6, "string"),
    (".Options", "root", 7, "string"),
    (".Options", "systemd_cgroup", 9, "bool"),
    (".Options", "criu_image_path", 10, "string"),
    (".Options", "criu_work_path", 11, "string"),
    (".Options", "task_api_address", 12, "string"),
    (".Options", "task_api_version", 13, "uint32"),
    (".CheckpointOptions", "exit", 1, "bool"),
    (".CheckpointOptions", "open_tcp", 2, "bool"),
    (".CheckpointOptions", "external_unix_sockets", 3, "bool"),
    (".CheckpointOptions", "terminal", 4, "bool"),
    (".CheckpointOptions", "file_locks", 5, "bool"),
    (".CheckpointOptions", "empty_namespaces", 6, "repeated string"),
    (".CheckpointOptions", "cgroups_mode", 7, "string"),
    (".CheckpointOptions", "image_path", 8, "string"),
    (".CheckpointOptions", "work_path", 9, "string"),
    (".CheckpointOptions", "parent_path", 10, "string"),
    (".ProcessDetails", "exec_id", 1, "string"),
]

_TTRPC_FIELDS: list[FieldRow] = [
    (".Request", "service", 1, "string"),
    (".Request", "method", 2, "string"),
    (".Request", "payload", 3, "bytes"),
    (".Request", "timeout_nano", 4, "int64"),
    (".Request", "metadata", 5, "repeated .KeyValue"),
    (".Response", "status", 1, "google.rpc.Status"),
    (".Response", "payload", 2, "bytes"),
    (".StringList", "list", 1, "repeated string"),
    (".KeyValue", "key", 1, "string"),
    (".KeyValue", "value", 2, "string"),
]

_TTRPC_EVENTS_FIELDS: list[FieldRow] = [
    (".ForwardRequest", "envelope", 1, "containerd.types.Envelope"),
]

_TTRPC_EVENTS_METHODS: list[MethodRow] = [
    (".Events", "Forward", ".ForwardRequest", "google.protobuf.Empty"),
]

_CGROUPS_V1_FIELDS: list[FieldRow] = [
    (".Metrics", "hugetlb", 1, "repeated .HugetlbStat"),
    (".Metrics", "pids", 2, ".PidsStat"),
    (".Metrics", "cpu", 3, ".CPUStat"),
    (".Metrics", "memory", 4, ".MemoryStat"),
    (".Metrics", "blkio", 5, ".BlkIOStat"),
    (".Metrics", "rdma", 6, ".RdmaStat"),
    (".Metrics", "network", 7, "repeated .NetworkStat"),
    (".Metrics", "cgroup_stats", 8, ".CgroupStats"),
    (".Metrics", "memory_oom_control", 9, ".MemoryOomControl"),
    (".HugetlbStat", "usage", 1, "uint64"),
    (".HugetlbStat", "max", 2, "uint64"),
    (".HugetlbStat", "failcnt", 3, "uint64"),
    (".HugetlbStat", "pagesize", 4, "string"),
    (".PidsStat", "current", 1, "uint64"),
    (".PidsStat", "limit", 2, "uint64"),
    (".CPUStat", "usage", 1, ".CPUUsage"),
    (".CPUStat", "throttling", 2, ".Throttle"),
    (".CPUUsage", "total", 1, "uint64"),
    (".CPUUsage", "kernel", 2, "uint64"),
    (".CPUUsage", "user", 3, "uint64"),
    (".CPUUsage", "per_cpu", 4, "repeated uint64"),
    (".Throttle", "periods", 1, "uint64"),
    (".Throttle", "throttled_periods", 2, "uint64"),
    (".Throttle", "throttled_time", 3, "uint64"),
    (".MemoryStat", "cache", 1, "uint64"),
    (".MemoryStat", "rss", 2, "uint64"),
    (".MemoryStat", "rss_huge", 3, "uint64"),
    (".MemoryStat", "mapped_file", 4, "uint64"),
    (".MemoryStat", "dirty", 5, "uint64"),
    (".MemoryStat", "writeback", 6, "uint64"),
    (".MemoryStat", "pg_pg_in", 7, "uint64"),
    (".MemoryStat", "pg_pg_out", 8, "uint64"),
    (".MemoryStat", "pg_fault", 9, "uint64"),
    (".MemoryStat", "pg_maj_fault", 10, "uint64"),
    (".MemoryStat", "inactive_anon", 11, "uint64"),
    (".MemoryStat", "active_anon", 12, "uint64"),
    (".MemoryStat", "inactive_file", 13, "uint64"),
    (".MemoryStat", "active_file", 14, "uint64"),
    (".MemoryStat", "unevictable", 15, "uint64"),
    (".MemoryStat", "hierarchical_memory_limit", 16, "uint64"),
    (".MemoryStat", "hierarchical_swap_limit", 17, "uint64"),
    (".MemoryStat", "total_cache", 18, "uint64"),
    (".MemoryStat", "total_rss", 19, "uint64"),
    (".MemoryStat", "total_rss_huge", 20, "uint64"),
    (".MemoryStat", "total_mapped_file", 21, "uint64"),
    (".MemoryStat", "total_dirty", 22, "uint64"),
    (".MemoryStat", "total_writeback", 23, "uint64"),
    (".MemoryStat", "total_pg_pg_in", 24, "uint64"),
    (".MemoryStat", "total_pg_pg_out", 25, "uint64"),
    (".MemoryStat", "total_pg_fault", 26, "uint64"),
    (".MemoryStat", "total_pg_maj_fault", 27, "uint64"),
    (".MemoryStat", "total_inactive_anon", 28, "uint64"),
    (".MemoryStat", "total_active_anon", 29, "uint64"),
    (".MemoryStat", "total_inactive_file", 30, "uint64"),
    (".MemoryStat", "total_active_file", 31, "uint64"),
    (".MemoryStat", "total_unevictable", 32, "uint64"),
    (".MemoryStat", "usage", 33, ".MemoryEntry"),
    (".MemoryStat", "swap", 34, ".MemoryEntry"),
    (".MemoryStat", "kernel", 35, ".MemoryEntry"),
    (".MemoryStat", "kernel_tcp", 36, ".MemoryEntry"),
    (".MemoryEntry", "limit", 1, "uint64"),
    (".MemoryEntry", "usage", 2, "uint64"),
    (".MemoryEntry", "max", 3, "uint64"),
    (".MemoryEntry", "failcnt", 4, "uint64"),
    (".MemoryOomControl", "oom_kill_disable", 1, "uint64"),
    (".MemoryOomControl", "under_oom", 2, "uint64"),
    (".MemoryOomControl", "oom_kill", 3, "uint64"),
    (".BlkIOStat", "io_service_bytes_recursive", 1, "repeated .BlkIOEntry"),
    (".BlkIOStat", "io_serviced_recursive", 2, "repeated .BlkIOEntry"),
    (".BlkIOStat", "io_queued_recursive", 3, "repeated .BlkIOEntry"),
    (".BlkIOStat", "io_service_time_recursive", 4, "repeated .BlkIOEntry"),
    (".BlkIOStat", "io_wait_time_recursive", 5, "repeated .BlkIOEntry"),
    (".BlkIOStat", "io_merged_recursive", 6, "repeated .BlkIOEntry"),
    (".BlkIOStat", "io_time_recursive", 7, "repeated .BlkIOEntry"),
    (".BlkIOStat", "sectors_recursive", 8, "repeated .BlkIOEntry"),
    (".BlkIOEntry", "op", 1, "string"),
    (".BlkIOEntry", "device", 2, "string"),
    (".BlkIOEntry", "major", 3, "uint64"),
    (".BlkIOEntry", "minor", 4, "uint64"),
    (".BlkIOEntry", "value", 5, "uint64"),
    (".RdmaStat", "current", 1, "repeated .RdmaEntry"),
    (".RdmaStat", "limit", 2, "repeated .RdmaEntry"),
    (".RdmaEntry", "device", 1, "string"),
    (".RdmaEntry", "hca_handles", 2, "uint32"),
    (".RdmaEntry", "hca_objects", 3, "uint32"),
    (".NetworkStat", "name", 1, "string"),
    (".NetworkStat", "rx_bytes", 2, "uint64"),
    (".NetworkStat", "rx_packets", 3, "uint64"),
    (".NetworkStat", "rx_errors", 4, "uint64"),
    (".NetworkStat", "rx_dropped", 5, "uint64"),
    (".NetworkStat", "tx_bytes", 6, "uint64"),
    (".NetworkStat", "tx_packets", 7, "uint64"),
    (".NetworkStat", "tx_errors", 8, "uint64"),
    (".NetworkStat", "tx_dropped", 9, "uint64"),
    (".CgroupStats", "nr_sleeping", 1, "uint64"),
    (".CgroupStats", "nr_running", 2, "uint64"),
    (".CgroupStats", "nr_stopped", 3, "uint64"),
    (".CgroupStats", "nr_uninterruptible", 4, "uint64"),
    (".CgroupStats", "nr_io_wait", 5, "uint64"),
]

_CGROUPS_V2_FIELDS: list[FieldRow] = [
    (".Metrics", "pids", 1, ".PidsStat"),
    (".Metrics", "cpu", 2, ".CPUStat"),
    (".Metrics", "memory", 4, ".MemoryStat"),
    (".Metrics", "rdma", 5, ".RdmaStat"),
    (".Metrics", "io", 6, ".IOStat"),
    (".Metrics", "hugetlb", 7, "repeated .HugeTlbStat"),
    (".Metrics", "memory_events", 8, ".MemoryEvents"),
    (".Metrics", "network", 9, "repeated .NetworkStat"),
    (".PSIData", "avg10", 1, "double"),
    (".PSIData", "avg60", 2, "double"),
    (".PSIData", "avg300", 3, "double"),
    (".PSIData", "total", 4, "uint64"),
    (".PSIStats", "some", 1, ".PSIData"),
    (".PSIStats", "full", 2, ".PSIData"),
    (".PidsStat", "current", 1, "uint64"),
    (".PidsStat", "limit", 2, "uint64"),
    (".CPUStat", "usage_usec", 1, "uint64"),
    (".CPUStat", "user_usec", 2, "uint64"),
    (".CPUStat", "system_usec", 3, "uint64"),
    (".CPUStat", "nr_periods", 4, "uint64"),
    (".CPUStat", "nr_throttled", 5, "uint64"),
    (".CPUStat", "throttled_usec", 6, "uint64"),
    (".CPUStat", "psi", 7, ".PSIStats"),
    (".CPUStat", "nr_bursts", 8, "uint64"),
    (".CPUStat", "burst_usec", 9, "uint64"),
    (".MemoryStat", "anon", 1, "uint64"),
    (".MemoryStat", "file", 2, "uint64"),
    (".MemoryStat", "kernel_stack", 3, "uint64"),
    (".MemoryStat", "slab", 4, "uint64"),
    (".MemoryStat", "sock", 5, "uint64"),
    (".MemoryStat", "shmem", 6, "uint64"),
    (".MemoryStat", "file_mapped", 7, "uint64"),
    (".MemoryStat", "file_dirty", 8, "uint64"),
    (".MemoryStat", "file_writeback", 9, "uint64"),
    (".MemoryStat", "anon_thp", 10, "uint64"),
    (".MemoryStat", "inactive_anon", 11, "uint64"),
    (".MemoryStat", "active_anon", 12, "uint64"),
    (".MemoryStat", "inactive_file", 13, "uint64"),
    (".MemoryStat", "active_file", 14, "uint64"),
    (".MemoryStat", "unevictable", 15, "uint64"),
    (".MemoryStat", "slab_reclaimable", 16, "uint64"),
    (".MemoryStat", "slab_unreclaimable", 17, "uint64"),
    (".MemoryStat", "pgfault", 18, "uint64"),
    (".MemoryStat", "pgmajfault", 19, "uint64"),
    (".MemoryStat", "workingset_refault", 20, "uint64"),
    (".MemoryStat", "workingset_activate", 21, "uint64"),
    (".MemoryStat", "workingset_nodereclaim", 22, "uint64"),
    (".MemoryStat", "pgrefill", 23, "uint64"),
    (".MemoryStat", "pgscan", 24, "uint64"),
    (".MemoryStat", "pgsteal", 25, "uint64"),
    (".MemoryStat", "pgactivate", 26, "uint64"),
    (".MemoryStat", "pgdeactivate", 27, "uint64"),
    (".MemoryStat", "pglazyfree", 28, "uint64"),
    (".MemoryStat", "pglazyfreed", 29, "uint64"),
    (".MemoryStat", "thp_fault_alloc", 30, "uint64"),
    (".MemoryStat", "thp_collapse_alloc", 31, "uint64"),
    (".MemoryStat", "usage", 32, "uint64"),
    (".MemoryStat", "usage_limit", 33, "uint64"),
    (".MemoryStat", "swap_usage", 34, "uint64"),
    (".MemoryStat", "swap_limit", 35, "uint64"),
    (".MemoryStat", "max_usage", 36, "uint64"),
    (".MemoryStat", "swap_max_usage", 37, "uint64"),
    (".MemoryStat", "psi", 38, ".PSIStats"),
    (".MemoryStat", "workingset_refault_anon", 39, "uint64"),
    (".MemoryStat", "workingset_refault_file", 40, "uint64"),
    (".MemoryStat", "workingset_activate_anon", 41, "uint64"),
    (".MemoryStat", "workingset_activate_file", 42, "uint64"),
    (".MemoryEvents", "low", 1, "uint64"),
    (".MemoryEvents", "high", 2, "uint64"),
    (".MemoryEvents", "max", 3, "uint64"),
    (".MemoryEvents", "oom", 4, "uint64"),
    (".MemoryEvents", "oom_kill", 5, "uint64"),
    (".MemoryEvents", "oom_group_kill", 6, "uint64"),
    (".RdmaStat", "current", 1, "repeated .RdmaEntry"),
    (".RdmaStat", "limit", 2, "repeated .RdmaEntry"),
    (".RdmaEntry", "device", 1, "string"),
    (".RdmaEntry", "hca_handles", 2, "uint32"),
    (".RdmaEntry", "hca_objects", 3, "uint32"),
    (".IOStat", "usage", 1, "repeated .IOEntry"),
    (".IOStat", "psi", 2, ".PSIStats"),
    (".IOEntry", "major", 1, "uint64"),
    (".IOEntry", "minor", 2, "uint64"),
    (".IOEntry", "rbytes", 3, "uint64"),
    (".IOEntry", "wbytes", 4, "uint64"),
    (".IOEntry", "rios", 5, "uint64"),
    (".IOEntry", "wios", 6, "uint64"),
    (".HugeTlbStat", "current", 1, "uint64"),
    (".HugeTlbStat", "max", 2, "uint64"),
    (".HugeTlbStat", "pagesize", 3, "string"),
    (".HugeTlbStat", "failcnt", 4, "uint64"),
    (".NetworkStat", "name", 1, "string"),
    (".NetworkStat", "rx_bytes", 2, "uint64"),
    (".NetworkStat", "rx_packets", 3, "uint64"),
    (".NetworkStat", "rx_errors", 4, "uint64"),
    (".NetworkStat", "rx_dropped", 5, "uint64"),
    (".NetworkStat", "tx_bytes", 6, "uint64"),
    (".NetworkStat", "tx_packets", 7, "uint64"),
    (".NetworkStat", "tx_errors", 8, "uint64"),
    (".NetworkStat", "tx_dropped", 9, "uint64"),
]

# Upstream messages with no fields at all (absent from the field tables above).
_EMPTY_MESSAGES = ["containerd.task.v2.ExecProcessResponse", "containerd.task.v3.ExecProcessResponse"]

_RELATIVE = re.compile(r"(?<![\w.])\.(?=[A-Za-z])")


def _abs(package: str, text: str) -> str:
    return _RELATIVE.sub(package + ".", text)


def _fields(package: str, rows: list[FieldRow]) -> list[FieldRow]:
    return [(_abs(package, m), f, n, _abs(package, t)) for m, f, n, t in rows]


def _enums(package: str, rows: list[EnumRow]) -> list[EnumRow]:
    return [(_abs(package, e), v, n) for e, v, n in rows]


def _methods(package: str, rows: list[MethodRow]) -> list[MethodRow]:
    return [(_abs(package, s), m, _abs(package, i), _abs(package, o)) for s, m, i, o in rows]


FIELDS: list[FieldRow] = [
    *_fields("containerd.task.v2", _TASK_FIELDS),
    *_fields("containerd.task.v3", _TASK_FIELDS),
    *_fields("containerd.runtime.bootstrap.v1", _BOOTSTRAP_FIELDS),
    *_fields("containerd.runc.v1", _RUNC_FIELDS),
    *_fields("ttrpc", _TTRPC_FIELDS),
    *_fields("containerd.services.events.ttrpc.v1", _TTRPC_EVENTS_FIELDS),
    *_fields("io.containerd.cgroups.v1", _CGROUPS_V1_FIELDS),
    *_fields("io.containerd.cgroups.v2", _CGROUPS_V2_FIELDS),
]

ENUMS: list[EnumRow] = _enums("containerd.runtime.bootstrap.v1", _BOOTSTRAP_ENUMS)

METHODS: list[MethodRow] = [
    *_methods("containerd.task.v2", _TASK_METHODS),
    *_methods("containerd.task.v3", _TASK_METHODS),
    *_methods("containerd.services.events.ttrpc.v1", _TTRPC_EVENTS_METHODS),
]

_FILES = {
    "task v2": (shim_v2, "containerd.task.v2"),
    "task v3": (shim_v3, "containerd.task.v3"),
    "bootstrap": (bootstrap_pb2, "containerd.runtime.bootstrap.v1"),
    "runc options": (oci_pb2, "containerd.runc.v1"),
    "ttrpc": (request_pb2, "ttrpc"),
    "ttrpc events": (events_pb2, "containerd.services.events.ttrpc.v1"),
    "cgroups v1": (cg1, "io.containerd.cgroups.v1"),
    "cgroups v2": (cg2, "io.containerd.cgroups.v2"),
}


# --- tables ---


def test_fields_match_upstream() -> None:
    """Every field of every upstream message exists with the same number and type, and no more."""
    assert check_fields(FIELDS) == []


def test_enums_match_upstream() -> None:
    """LogLevel and Capability carry exactly upstream's names and numbers."""
    assert check_enums(ENUMS) == []


def test_methods_match_upstream() -> None:
    """Both Task services and the ttrpc Events service expose exactly upstream's methods."""
    assert check_methods(METHODS) == []


def test_empty_messages_exist_without_fields() -> None:
    """Messages upstream defines with no fields are present and stay empty."""
    pool = descriptor_pool.Default()
    for name in _EMPTY_MESSAGES:
        assert pool.FindMessageTypeByName(name).fields == []


@pytest.mark.parametrize("label", sorted(_FILES))
def test_no_messages_beyond_upstream(label: str) -> None:
    """Each file defines only the messages, enums and services upstream has."""
    module, package = _FILES[label]
    known_messages = {row[0] for row in FIELDS} | set(_EMPTY_MESSAGES)
    known_enums = {row[0] for row in ENUMS}
    known_services = {row[0] for row in METHODS}
    file = module.DESCRIPTOR
    assert file.package == package
    for message in file.message_types_by_name.values():
        assert message.full_name in known_messages
    for enum in file.enum_types_by_name.values():
        assert enum.full_name in known_enums
    for service in file.services_by_name.values():
        assert service.full_name in known_services


def test_task_v2_and_v3_have_the_same_shape() -> None:
    """v3 is the v2 API under another package: same message names in both files."""
    assert set(shim_v2.DESCRIPTOR.message_types_by_name) == set(shim_v3.DESCRIPTOR.message_types_by_name)
    assert len(shim_v2.DESCRIPTOR.message_types_by_name) == 26


def test_runc_options_field_8_is_reserved() -> None:
    """Field 8 (the old criu_path) is reserved, and 12/13 are marked deprecated."""
    proto = descriptor_pb2.DescriptorProto()
    oci_pb2.Options.DESCRIPTOR.CopyToProto(proto)
    assert [(r.start, r.end) for r in proto.reserved_range] == [(8, 9)]
    by_name = {f.name: f for f in proto.field}
    assert by_name["task_api_address"].options.deprecated
    assert by_name["task_api_version"].options.deprecated
    assert not by_name["binary_name"].options.HasField("deprecated")


def test_bootstrap_socket_dir_has_presence() -> None:
    """socket_dir is proto3 optional: set-but-empty differs from unset."""
    params = bootstrap_pb2.BootstrapParams()
    assert not params.HasField("socket_dir")
    params.socket_dir = ""
    assert params.HasField("socket_dir")
    assert params.SerializeToString() == b"\x4a\x00"


# --- byte-level round trips ---


def _roundtrip(message: Message, wire: bytes) -> None:
    assert message.SerializeToString(deterministic=True) == wire
    parsed = type(message)()
    parsed.ParseFromString(wire)
    assert parsed == message


def test_ttrpc_request_carrying_a_state_request() -> None:
    """A ttrpc Request for containerd.task.v2.Task/State, and the frame that carries it."""
    state = shim_v2.StateRequest(id="c1")
    assert state.SerializeToString() == b"\x0a\x02c1"
    request = request_pb2.Request(
        service="containerd.task.v2.Task", method="State", payload=state.SerializeToString()
    )
    wire = b"\x0a\x17containerd.task.v2.Task" + b"\x12\x05State" + b"\x1a\x04\x0a\x02c1"
    _roundtrip(request, wire)
    assert len(wire) == 38
    # Frame header: data length, stream id, type (1 = request), flags; all big-endian.
    frame = struct.pack(">IIBB", len(wire), 1, 1, 0) + wire
    assert frame[:10] == b"\x00\x00\x00\x26\x00\x00\x00\x01\x01\x00"
    inner = shim_v2.StateRequest()
    inner.ParseFromString(request_pb2.Request.FromString(frame[10:]).payload)
    assert inner.id == "c1"


def test_ttrpc_request_with_timeout_and_metadata() -> None:
    """timeout_nano is a varint; metadata is a repeated KeyValue."""
    request = request_pb2.Request(
        service="s",
        method="m",
        timeout_nano=1_000_000_000,
        metadata=[request_pb2.KeyValue(key="containerd-namespace-ttrpc", value="k8s.io")],
    )
    wire = (
        b"\x0a\x01s\x12\x01m"
        + b"\x20\x80\x94\xeb\xdc\x03"
        + b"\x2a\x24\x0a\x1acontainerd-namespace-ttrpc\x12\x06k8s.io"
    )
    _roundtrip(request, wire)


def test_ttrpc_response_with_status() -> None:
    """A failed call: Response.status is a google.rpc.Status (code 5 = NotFound)."""
    response = request_pb2.Response()
    response.status.code = 5
    response.status.message = "x"
    _roundtrip(response, b"\x0a\x05\x08\x05\x12\x01x")
    _roundtrip(request_pb2.StringList(list=["a", "b"]), b"\x0a\x01a\x0a\x01b")


def test_bootstrap_result() -> None:
    """What a version-3 shim prints on stdout after `start`."""
    result = bootstrap_pb2.BootstrapResult(
        version=3, address="unix:///run/containerd/s/ab", protocol="ttrpc", metadata={"k": "v"}
    )
    wire = (
        b"\x08\x03"
        + b"\x12\x1bunix:///run/containerd/s/ab"
        + b"\x1a\x05ttrpc"
        + b"\x2a\x06\x0a\x01k\x12\x01v"
    )
    _roundtrip(result, wire)


def test_bootstrap_params_with_negative_log_level_and_extension() -> None:
    """A negative enum is a ten-byte varint; runtime options travel as an Any extension."""
    options = any_pb2.Any(type_url="containerd.runc.v1.Options", value=b"\x48\x01")
    params = bootstrap_pb2.BootstrapParams(
        instance_id="c1",
        namespace="k8s.io",
        log_level=bootstrap_pb2.LOG_LEVEL_DEBUG,
        extensions=[bootstrap_pb2.Extension(value=options)],
        socket_dir="",
    )
    wire = (
        b"\x0a\x02c1"
        + b"\x12\x06k8s.io"
        + b"\x18\xfc\xff\xff\xff\xff\xff\xff\xff\xff\x01"
        + b"\x42\x22\x0a\x20\x0a\x1acontainerd.runc.v1.Options\x12\x02\x48\x01"
        + b"\x4a\x00"
    )
    _roundtrip(params, wire)
    # Bare type URLs (no "type.googleapis.com/") fail Any.Is/Unpack in Python; parse the value directly.
    assert oci_pb2.Options.FromString(params.extensions[0].value.value).systemd_cgroup


def test_bootstrap_unknown_log_level_is_kept() -> None:
    """LogLevel is an open enum: an unnamed number survives a round trip."""
    params = bootstrap_pb2.BootstrapParams.FromString(b"\x18\x02")
    assert params.log_level == 2
    assert params.SerializeToString() == b"\x18\x02"


def test_runc_options() -> None:
    """Options as containerd puts them in the container's runtime options."""
    options = oci_pb2.Options(
        io_uid=1000, binary_name="crun", root="/run/containerd/runc", systemd_cgroup=True
    )
    wire = b"\x20\xe8\x07" + b"\x32\x04crun" + b"\x3a\x14/run/containerd/runc" + b"\x48\x01"
    _roundtrip(options, wire)


def test_runc_options_old_criu_path_is_ignored_but_kept() -> None:
    """A field-8 string from an old sender lands in no field and is re-emitted unchanged."""
    options = oci_pb2.Options.FromString(b"\x42\x04criu")
    assert options.ListFields() == []
    assert options.SerializeToString() == b"\x42\x04criu"


def test_runc_checkpoint_options_and_process_details() -> None:
    """Repeated strings and a lone exec id."""
    opts = oci_pb2.CheckpointOptions(exit=True, empty_namespaces=["network"], cgroups_mode="soft")
    _roundtrip(opts, b"\x08\x01" + b"\x32\x07network" + b"\x3a\x04soft")
    _roundtrip(oci_pb2.ProcessDetails(exec_id="e1"), b"\x0a\x02e1")


def test_task_state_and_wait_responses() -> None:
    """StateResponse status is containerd.v1.types.Status; 137 needs a two-byte varint."""
    state = shim_v3.StateResponse(id="c1", pid=42, status="RUNNING")
    _roundtrip(state, b"\x0a\x02c1\x18\x2a\x20\x02")
    wait = shim_v3.WaitResponse(exit_status=137)
    wait.exited_at.seconds = 1
    _roundtrip(wait, b"\x08\x89\x01\x12\x02\x08\x01")


def test_task_create_with_rootfs_mount() -> None:
    """CreateTaskRequest.rootfs is a repeated containerd.types.Mount."""
    request = shim_v2.CreateTaskRequest(id="c1", bundle="/b")
    request.rootfs.add(type="bind", source="/s", options=["rbind"])
    mount = b"\x0a\x04bind\x12\x02/s\x22\x05rbind"
    _roundtrip(request, b"\x0a\x02c1\x12\x02/b\x1a\x11" + mount)


def test_stats_response_with_cgroup_v2_metrics() -> None:
    """Shims pack metrics as Any with the bare type URL io.containerd.cgroups.v2.Metrics."""
    metrics = cg2.Metrics(pids=cg2.PidsStat(current=3, limit=10), memory=cg2.MemoryStat(usage=4096))
    # memory.usage is field 32: its tag needs two bytes (0x80 0x02).
    metrics_wire = b"\x0a\x04\x08\x03\x10\x0a" + b"\x22\x04\x80\x02\x80\x20"
    _roundtrip(metrics, metrics_wire)
    stats = any_pb2.Any(type_url="io.containerd.cgroups.v2.Metrics", value=metrics_wire)
    response = shim_v3.StatsResponse(stats=stats)
    wire = b"\x0a\x30\x0a\x20io.containerd.cgroups.v2.Metrics\x12\x0c" + metrics_wire
    _roundtrip(response, wire)
    assert response.stats.type_url == cg2.Metrics.DESCRIPTOR.full_name
    assert cg2.Metrics.FromString(response.stats.value) == metrics


def test_cgroup_v1_packed_per_cpu() -> None:
    """per_cpu is a packed repeated uint64 inside Metrics.cpu.usage."""
    metrics = cg1.Metrics(cpu=cg1.CPUStat(usage=cg1.CPUUsage(total=5, per_cpu=[1, 2])))
    _roundtrip(metrics, b"\x1a\x08\x0a\x06\x08\x05\x22\x02\x01\x02")
    assert metrics.DESCRIPTOR.full_name == "io.containerd.cgroups.v1.Metrics"


def test_cgroup_v2_deprecated_workingset_fields() -> None:
    """The pre-5.9 workingset counters stay on the wire but are marked deprecated."""
    proto = descriptor_pb2.DescriptorProto()
    cg2.MemoryStat.DESCRIPTOR.CopyToProto(proto)
    deprecated = sorted(f.name for f in proto.field if f.options.deprecated)
    assert deprecated == ["workingset_activate", "workingset_refault"]


def test_forward_request() -> None:
    """What a shim sends to Events/Forward on the daemon's ttrpc socket."""
    request = events_pb2.ForwardRequest()
    request.envelope.namespace = "k8s.io"
    request.envelope.topic = "/tasks/exit"
    _roundtrip(request, b"\x0a\x15\x12\x06k8s.io\x1a\x0b/tasks/exit")
