"""Wire compatibility of containerd's task, event and mount APIs.

The tables are transcribed from containerd's .proto files (main branch, 2.x):
api/types/task/task.proto (containerd.v1.types), api/events/*.proto
(containerd.events, plus the image events that live in
containerd.services.images.v1), and the tasks, events and mounts services.
"""

from __future__ import annotations

from types import ModuleType

from google.protobuf import any_pb2
from google.protobuf.descriptor import Descriptor, FileDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from tests.api.wire import EnumRow, FieldRow, MethodRow, check_enums, check_fields, check_methods
from wharfd.api.events import (
    container_pb2,
    content_pb2,
    image_pb2,
    namespace_pb2,
    sandbox_pb2,
    snapshot_pb2,
    task_pb2,
)
from wharfd.api.services.events.v1 import events_pb2, events_pb2_grpc
from wharfd.api.services.mounts.v1 import mounts_pb2, mounts_pb2_grpc
from wharfd.api.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from wharfd.api.types import event_pb2, mount_pb2
from wharfd.api.types.task import task_pb2 as types_task_pb2

MODULES = [
    types_task_pb2,
    tasks_pb2,
    events_pb2,
    mounts_pb2,
    container_pb2,
    content_pb2,
    image_pb2,
    namespace_pb2,
    sandbox_pb2,
    snapshot_pb2,
    task_pb2,
]

FIELDS: list[FieldRow] = [
    ("containerd.events.ContainerCreate", "id", 1, "string"),
    ("containerd.events.ContainerCreate", "image", 2, "string"),
    ("containerd.events.ContainerCreate.Runtime", "name", 1, "string"),
    ("containerd.events.ContainerCreate.Runtime", "options", 2, "google.protobuf.Any"),
    ("containerd.events.ContainerCreate", "runtime", 3, "containerd.events.ContainerCreate.Runtime"),
    ("containerd.events.ContainerUpdate", "id", 1, "string"),
    ("containerd.events.ContainerUpdate", "image", 2, "string"),
    ("containerd.events.ContainerUpdate", "labels", 3, "map<string, string>"),
    ("containerd.events.ContainerUpdate", "snapshot_key", 4, "string"),
    ("containerd.events.ContainerDelete", "id", 1, "string"),
    ("containerd.events.ContentCreate", "digest", 1, "string"),
    ("containerd.events.ContentCreate", "size", 2, "int64"),
    ("containerd.events.ContentCreate", "mediaType", 3, "string"),
    ("containerd.events.ContentDelete", "digest", 1, "string"),
    ("containerd.services.images.v1.ImageCreate", "name", 1, "string"),
    ("containerd.services.images.v1.ImageCreate", "labels", 2, "map<string, string>"),
    ("containerd.services.images.v1.ImageUpdate", "name", 1, "string"),
    ("containerd.services.images.v1.ImageUpdate", "labels", 2, "map<string, string>"),
    ("containerd.services.images.v1.ImageDelete", "name", 1, "string"),
    ("containerd.events.NamespaceCreate", "name", 1, "string"),
    ("containerd.events.NamespaceCreate", "labels", 2, "map<string, string>"),
    ("containerd.events.NamespaceUpdate", "name", 1, "string"),
    ("containerd.events.NamespaceUpdate", "labels", 2, "map<string, string>"),
    ("containerd.events.NamespaceDelete", "name", 1, "string"),
    ("containerd.events.SandboxCreate", "sandbox_id", 1, "string"),
    ("containerd.events.SandboxStart", "sandbox_id", 1, "string"),
    ("containerd.events.SandboxExit", "sandbox_id", 1, "string"),
    ("containerd.events.SandboxExit", "exit_status", 2, "uint32"),
    ("containerd.events.SandboxExit", "exited_at", 3, "google.protobuf.Timestamp"),
    ("containerd.events.SnapshotPrepare", "key", 1, "string"),
    ("containerd.events.SnapshotPrepare", "parent", 2, "string"),
    ("containerd.events.SnapshotPrepare", "snapshotter", 5, "string"),
    ("containerd.events.SnapshotCommit", "key", 1, "string"),
    ("containerd.events.SnapshotCommit", "name", 2, "string"),
    ("containerd.events.SnapshotCommit", "snapshotter", 5, "string"),
    ("containerd.events.SnapshotRemove", "key", 1, "string"),
    ("containerd.events.SnapshotRemove", "snapshotter", 5, "string"),
    ("containerd.events.TaskCreate", "container_id", 1, "string"),
    ("containerd.events.TaskCreate", "bundle", 2, "string"),
    ("containerd.events.TaskCreate", "rootfs", 3, "repeated containerd.types.Mount"),
    ("containerd.events.TaskCreate", "io", 4, "containerd.events.TaskIO"),
    ("containerd.events.TaskCreate", "checkpoint", 5, "string"),
    ("containerd.events.TaskCreate", "pid", 6, "uint32"),
    ("containerd.events.TaskStart", "container_id", 1, "string"),
    ("containerd.events.TaskStart", "pid", 2, "uint32"),
    ("containerd.events.TaskDelete", "container_id", 1, "string"),
    ("containerd.events.TaskDelete", "pid", 2, "uint32"),
    ("containerd.events.TaskDelete", "exit_status", 3, "uint32"),
    ("containerd.events.TaskDelete", "exited_at", 4, "google.protobuf.Timestamp"),
    ("containerd.events.TaskDelete", "id", 5, "string"),
    ("containerd.events.TaskIO", "stdin", 1, "string"),
    ("containerd.events.TaskIO", "stdout", 2, "string"),
    ("containerd.events.TaskIO", "stderr", 3, "string"),
    ("containerd.events.TaskIO", "terminal", 4, "bool"),
    ("containerd.events.TaskExit", "container_id", 1, "string"),
    ("containerd.events.TaskExit", "id", 2, "string"),
    ("containerd.events.TaskExit", "pid", 3, "uint32"),
    ("containerd.events.TaskExit", "exit_status", 4, "uint32"),
    ("containerd.events.TaskExit", "exited_at", 5, "google.protobuf.Timestamp"),
    ("containerd.events.TaskOOM", "container_id", 1, "string"),
    ("containerd.events.TaskExecAdded", "container_id", 1, "string"),
    ("containerd.events.TaskExecAdded", "exec_id", 2, "string"),
    ("containerd.events.TaskExecStarted", "container_id", 1, "string"),
    ("containerd.events.TaskExecStarted", "exec_id", 2, "string"),
    ("containerd.events.TaskExecStarted", "pid", 3, "uint32"),
    ("containerd.events.TaskPaused", "container_id", 1, "string"),
    ("containerd.events.TaskResumed", "container_id", 1, "string"),
    ("containerd.events.TaskCheckpointed", "container_id", 1, "string"),
    ("containerd.events.TaskCheckpointed", "checkpoint", 2, "string"),
    ("containerd.services.events.v1.PublishRequest", "topic", 1, "string"),
    ("containerd.services.events.v1.PublishRequest", "event", 2, "google.protobuf.Any"),
    ("containerd.services.events.v1.ForwardRequest", "envelope", 1, "containerd.types.Envelope"),
    ("containerd.services.events.v1.SubscribeRequest", "filters", 1, "repeated string"),
    ("containerd.services.mounts.v1.ActivateRequest", "name", 1, "string"),
    ("containerd.services.mounts.v1.ActivateRequest", "mounts", 2, "repeated containerd.types.Mount"),
    ("containerd.services.mounts.v1.ActivateRequest", "labels", 3, "map<string, string>"),
    ("containerd.services.mounts.v1.ActivateRequest", "temporary", 4, "bool"),
    ("containerd.services.mounts.v1.ActivateResponse", "info", 1, "containerd.types.ActivationInfo"),
    ("containerd.services.mounts.v1.DeactivateRequest", "name", 1, "string"),
    ("containerd.services.mounts.v1.InfoRequest", "name", 1, "string"),
    ("containerd.services.mounts.v1.InfoResponse", "info", 1, "containerd.types.ActivationInfo"),
    ("containerd.services.mounts.v1.UpdateRequest", "info", 1, "containerd.types.ActivationInfo"),
    ("containerd.services.mounts.v1.UpdateRequest", "update_mask", 2, "google.protobuf.FieldMask"),
    ("containerd.services.mounts.v1.UpdateResponse", "info", 1, "containerd.types.ActivationInfo"),
    ("containerd.services.mounts.v1.ListRequest", "filters", 1, "repeated string"),
    ("containerd.services.mounts.v1.ListMessage", "info", 1, "containerd.types.ActivationInfo"),
    ("containerd.services.tasks.v1.CreateTaskRequest", "container_id", 1, "string"),
    ("containerd.services.tasks.v1.CreateTaskRequest", "rootfs", 3, "repeated containerd.types.Mount"),
    ("containerd.services.tasks.v1.CreateTaskRequest", "stdin", 4, "string"),
    ("containerd.services.tasks.v1.CreateTaskRequest", "stdout", 5, "string"),
    ("containerd.services.tasks.v1.CreateTaskRequest", "stderr", 6, "string"),
    ("containerd.services.tasks.v1.CreateTaskRequest", "terminal", 7, "bool"),
    ("containerd.services.tasks.v1.CreateTaskRequest", "checkpoint", 8, "containerd.types.Descriptor"),
    ("containerd.services.tasks.v1.CreateTaskRequest", "options", 9, "google.protobuf.Any"),
    ("containerd.services.tasks.v1.CreateTaskRequest", "runtime_path", 10, "string"),
    ("containerd.services.tasks.v1.CreateTaskRequest", "task_api_address", 11, "string"),
    ("containerd.services.tasks.v1.CreateTaskRequest", "task_api_version", 12, "uint32"),
    ("containerd.services.tasks.v1.CreateTaskResponse", "container_id", 1, "string"),
    ("containerd.services.tasks.v1.CreateTaskResponse", "pid", 2, "uint32"),
    ("containerd.services.tasks.v1.StartRequest", "container_id", 1, "string"),
    ("containerd.services.tasks.v1.StartRequest", "exec_id", 2, "string"),
    ("containerd.services.tasks.v1.StartResponse", "pid", 1, "uint32"),
    ("containerd.services.tasks.v1.DeleteTaskRequest", "container_id", 1, "string"),
    ("containerd.services.tasks.v1.DeleteResponse", "id", 1, "string"),
    ("containerd.services.tasks.v1.DeleteResponse", "pid", 2, "uint32"),
    ("containerd.services.tasks.v1.DeleteResponse", "exit_status", 3, "uint32"),
    ("containerd.services.tasks.v1.DeleteResponse", "exited_at", 4, "google.protobuf.Timestamp"),
    ("containerd.services.tasks.v1.DeleteProcessRequest", "container_id", 1, "string"),
    ("containerd.services.tasks.v1.DeleteProcessRequest", "exec_id", 2, "string"),
    ("containerd.services.tasks.v1.GetRequest", "container_id", 1, "string"),
    ("containerd.services.tasks.v1.GetRequest", "exec_id", 2, "string"),
    ("containerd.services.tasks.v1.GetResponse", "process", 1, "containerd.v1.types.Process"),
    ("containerd.services.tasks.v1.ListTasksRequest", "filter", 1, "string"),
    ("containerd.services.tasks.v1.ListTasksResponse", "tasks", 1, "repeated containerd.v1.types.Process"),
    ("containerd.services.tasks.v1.KillRequest", "container_id", 1, "string"),
    ("containerd.services.tasks.v1.KillRequest", "exec_id", 2, "string"),
    ("containerd.services.tasks.v1.KillRequest", "signal", 3, "uint32"),
    ("containerd.services.tasks.v1.KillRequest", "all", 4, "bool"),
    ("containerd.services.tasks.v1.ExecProcessRequest", "container_id", 1, "string"),
    ("containerd.services.tasks.v1.ExecProcessRequest", "stdin", 2, "string"),
    ("containerd.services.tasks.v1.ExecProcessRequest", "stdout", 3, "string"),
    ("containerd.services.tasks.v1.ExecProcessRequest", "stderr", 4, "string"),
    ("containerd.services.tasks.v1.ExecProcessRequest", "terminal", 5, "bool"),
    ("containerd.services.tasks.v1.ExecProcessRequest", "spec", 6, "google.protobuf.Any"),
    ("containerd.services.tasks.v1.ExecProcessRequest", "exec_id", 7, "string"),
    ("containerd.services.tasks.v1.ResizePtyRequest", "container_id", 1, "string"),
    ("containerd.services.tasks.v1.ResizePtyRequest", "exec_id", 2, "string"),
    ("containerd.services.tasks.v1.ResizePtyRequest", "width", 3, "uint32"),
    ("containerd.services.tasks.v1.ResizePtyRequest", "height", 4, "uint32"),
    ("containerd.services.tasks.v1.CloseIORequest", "container_id", 1, "string"),
    ("containerd.services.tasks.v1.CloseIORequest", "exec_id", 2, "string"),
    ("containerd.services.tasks.v1.CloseIORequest", "stdin", 3, "bool"),
    ("containerd.services.tasks.v1.PauseTaskRequest", "container_id", 1, "string"),
    ("containerd.services.tasks.v1.ResumeTaskRequest", "container_id", 1, "string"),
    ("containerd.services.tasks.v1.ListPidsRequest", "container_id", 1, "string"),
    (
        "containerd.services.tasks.v1.ListPidsResponse",
        "processes",
        1,
        "repeated containerd.v1.types.ProcessInfo",
    ),
    ("containerd.services.tasks.v1.CheckpointTaskRequest", "container_id", 1, "string"),
    ("containerd.services.tasks.v1.CheckpointTaskRequest", "parent_checkpoint", 2, "string"),
    ("containerd.services.tasks.v1.CheckpointTaskRequest", "options", 3, "google.protobuf.Any"),
    (
        "containerd.services.tasks.v1.CheckpointTaskResponse",
        "descriptors",
        1,
        "repeated containerd.types.Descriptor",
    ),
    ("containerd.services.tasks.v1.UpdateTaskRequest", "container_id", 1, "string"),
    ("containerd.services.tasks.v1.UpdateTaskRequest", "resources", 2, "google.protobuf.Any"),
    ("containerd.services.tasks.v1.UpdateTaskRequest", "annotations", 3, "map<string, string>"),
    ("containerd.services.tasks.v1.MetricsRequest", "filters", 1, "repeated string"),
    ("containerd.services.tasks.v1.MetricsResponse", "metrics", 1, "repeated containerd.types.Metric"),
    ("containerd.services.tasks.v1.WaitRequest", "container_id", 1, "string"),
    ("containerd.services.tasks.v1.WaitRequest", "exec_id", 2, "string"),
    ("containerd.services.tasks.v1.WaitResponse", "exit_status", 1, "uint32"),
    ("containerd.services.tasks.v1.WaitResponse", "exited_at", 2, "google.protobuf.Timestamp"),
    ("containerd.v1.types.Process", "container_id", 1, "string"),
    ("containerd.v1.types.Process", "id", 2, "string"),
    ("containerd.v1.types.Process", "pid", 3, "uint32"),
    ("containerd.v1.types.Process", "status", 4, "containerd.v1.types.Status"),
    ("containerd.v1.types.Process", "stdin", 5, "string"),
    ("containerd.v1.types.Process", "stdout", 6, "string"),
    ("containerd.v1.types.Process", "stderr", 7, "string"),
    ("containerd.v1.types.Process", "terminal", 8, "bool"),
    ("containerd.v1.types.Process", "exit_status", 9, "uint32"),
    ("containerd.v1.types.Process", "exited_at", 10, "google.protobuf.Timestamp"),
    ("containerd.v1.types.ProcessInfo", "pid", 1, "uint32"),
    ("containerd.v1.types.ProcessInfo", "info", 2, "google.protobuf.Any"),
]

ENUMS: list[EnumRow] = [
    ("containerd.v1.types.Status", "UNKNOWN", 0),
    ("containerd.v1.types.Status", "CREATED", 1),
    ("containerd.v1.types.Status", "RUNNING", 2),
    ("containerd.v1.types.Status", "STOPPED", 3),
    ("containerd.v1.types.Status", "PAUSED", 4),
    ("containerd.v1.types.Status", "PAUSING", 5),
]

METHODS: list[MethodRow] = [
    (
        "containerd.services.events.v1.Events",
        "Publish",
        "containerd.services.events.v1.PublishRequest",
        "google.protobuf.Empty",
    ),
    (
        "containerd.services.events.v1.Events",
        "Forward",
        "containerd.services.events.v1.ForwardRequest",
        "google.protobuf.Empty",
    ),
    (
        "containerd.services.events.v1.Events",
        "Subscribe",
        "containerd.services.events.v1.SubscribeRequest",
        "stream containerd.types.Envelope",
    ),
    (
        "containerd.services.mounts.v1.Mounts",
        "Activate",
        "containerd.services.mounts.v1.ActivateRequest",
        "containerd.services.mounts.v1.ActivateResponse",
    ),
    (
        "containerd.services.mounts.v1.Mounts",
        "Deactivate",
        "containerd.services.mounts.v1.DeactivateRequest",
        "google.protobuf.Empty",
    ),
    (
        "containerd.services.mounts.v1.Mounts",
        "Info",
        "containerd.services.mounts.v1.InfoRequest",
        "containerd.services.mounts.v1.InfoResponse",
    ),
    (
        "containerd.services.mounts.v1.Mounts",
        "Update",
        "containerd.services.mounts.v1.UpdateRequest",
        "containerd.services.mounts.v1.UpdateResponse",
    ),
    (
        "containerd.services.mounts.v1.Mounts",
        "List",
        "containerd.services.mounts.v1.ListRequest",
        "stream containerd.services.mounts.v1.ListMessage",
    ),
    (
        "containerd.services.tasks.v1.Tasks",
        "Create",
        "containerd.services.tasks.v1.CreateTaskRequest",
        "containerd.services.tasks.v1.CreateTaskResponse",
    ),
    (
        "containerd.services.tasks.v1.Tasks",
        "Start",
        "containerd.services.tasks.v1.StartRequest",
        "containerd.services.tasks.v1.StartResponse",
    ),
    (
        "containerd.services.tasks.v1.Tasks",
        "Delete",
        "containerd.services.tasks.v1.DeleteTaskRequest",
        "containerd.services.tasks.v1.DeleteResponse",
    ),
    (
        "containerd.services.tasks.v1.Tasks",
        "DeleteProcess",
        "containerd.services.tasks.v1.DeleteProcessRequest",
        "containerd.services.tasks.v1.DeleteResponse",
    ),
    (
        "containerd.services.tasks.v1.Tasks",
        "Get",
        "containerd.services.tasks.v1.GetRequest",
        "containerd.services.tasks.v1.GetResponse",
    ),
    (
        "containerd.services.tasks.v1.Tasks",
        "List",
        "containerd.services.tasks.v1.ListTasksRequest",
        "containerd.services.tasks.v1.ListTasksResponse",
    ),
    (
        "containerd.services.tasks.v1.Tasks",
        "Kill",
        "containerd.services.tasks.v1.KillRequest",
        "google.protobuf.Empty",
    ),
    (
        "containerd.services.tasks.v1.Tasks",
        "Exec",
        "containerd.services.tasks.v1.ExecProcessRequest",
        "google.protobuf.Empty",
    ),
    (
        "containerd.services.tasks.v1.Tasks",
        "ResizePty",
        "containerd.services.tasks.v1.ResizePtyRequest",
        "google.protobuf.Empty",
    ),
    (
        "containerd.services.tasks.v1.Tasks",
        "CloseIO",
        "containerd.services.tasks.v1.CloseIORequest",
        "google.protobuf.Empty",
    ),
    (
        "containerd.services.tasks.v1.Tasks",
        "Pause",
        "containerd.services.tasks.v1.PauseTaskRequest",
        "google.protobuf.Empty",
    ),
    (
        "containerd.services.tasks.v1.Tasks",
        "Resume",
        "containerd.services.tasks.v1.ResumeTaskRequest",
        "google.protobuf.Empty",
    ),
    (
        "containerd.services.tasks.v1.Tasks",
        "ListPids",
        "containerd.services.tasks.v1.ListPidsRequest",
        "containerd.services.tasks.v1.ListPidsResponse",
    ),
    (
        "containerd.services.tasks.v1.Tasks",
        "Checkpoint",
        "containerd.services.tasks.v1.CheckpointTaskRequest",
        "containerd.services.tasks.v1.CheckpointTaskResponse",
    ),
    (
        "containerd.services.tasks.v1.Tasks",
        "Update",
        "containerd.services.tasks.v1.UpdateTaskRequest",
        "google.protobuf.Empty",
    ),
    (
        "containerd.services.tasks.v1.Tasks",
        "Metrics",
        "containerd.services.tasks.v1.MetricsRequest",
        "containerd.services.tasks.v1.MetricsResponse",
    ),
    (
        "containerd.services.tasks.v1.Tasks",
        "Wait",
        "containerd.services.tasks.v1.WaitRequest",
        "containerd.services.tasks.v1.WaitResponse",
    ),
]

# Messages with no fields at all.
EMPTY_MESSAGES = [
    "containerd.services.tasks.v1.ExecProcessResponse",
]


def _messages(desc: Descriptor) -> list[str]:
    names = [desc.full_name]
    for nested in desc.nested_types:
        if not nested.GetOptions().map_entry:
            names.extend(_messages(nested))
    return names


def _file(module: ModuleType) -> FileDescriptor:
    desc = module.DESCRIPTOR
    assert isinstance(desc, FileDescriptor)
    return desc


def _round_trip(message: Message, wire: bytes) -> None:
    assert message.SerializeToString(deterministic=True) == wire
    parsed = type(message)()
    parsed.ParseFromString(wire)
    assert parsed == message


def test_fields_match_upstream() -> None:
    assert check_fields(FIELDS) == []


def test_enums_match_upstream() -> None:
    assert check_enums(ENUMS) == []


def test_methods_match_upstream() -> None:
    assert check_methods(METHODS) == []


def test_empty_messages_have_no_fields() -> None:
    for module in MODULES:
        for desc in _file(module).message_types_by_name.values():
            if desc.full_name in EMPTY_MESSAGES:
                assert list(desc.fields) == [], desc.full_name


def test_no_messages_beyond_the_tables() -> None:
    """Every message, enum and service the files define is covered by a table."""
    messages: set[str] = set()
    enums: set[str] = set()
    services: set[str] = set()
    for module in MODULES:
        fd = _file(module)
        for desc in fd.message_types_by_name.values():
            messages.update(_messages(desc))
            enums.update(e.full_name for e in desc.enum_types)
        enums.update(e.full_name for e in fd.enum_types_by_name.values())
        services.update(s.full_name for s in fd.services_by_name.values())
    assert messages == {row[0] for row in FIELDS} | set(EMPTY_MESSAGES)
    assert enums == {row[0] for row in ENUMS}
    assert services == {row[0] for row in METHODS}


def test_packages() -> None:
    """Image events share the images service package; the other events do not."""
    assert _file(types_task_pb2).package == "containerd.v1.types"
    assert _file(tasks_pb2).package == "containerd.services.tasks.v1"
    assert _file(events_pb2).package == "containerd.services.events.v1"
    assert _file(mounts_pb2).package == "containerd.services.mounts.v1"
    assert _file(image_pb2).package == "containerd.services.images.v1"
    for module in (container_pb2, content_pb2, namespace_pb2, sandbox_pb2, snapshot_pb2, task_pb2):
        assert _file(module).package == "containerd.events"


def test_grpc_stubs_generated() -> None:
    assert hasattr(tasks_pb2_grpc, "TasksStub")
    assert hasattr(events_pb2_grpc, "EventsStub")
    assert hasattr(mounts_pb2_grpc, "MountsStub")


def test_task_exit_bytes() -> None:
    exit_event = task_pb2.TaskExit(
        container_id="c", id="e", pid=7, exit_status=137, exited_at=Timestamp(seconds=2)
    )
    # 137 is the two-byte varint 0x89 0x01; exited_at is field 5 holding {seconds: 2}.
    _round_trip(exit_event, b"\x0a\x01c\x12\x01e\x18\x07\x20\x89\x01\x2a\x02\x08\x02")


def test_task_delete_exec_id_is_field_5() -> None:
    delete = task_pb2.TaskDelete(container_id="c", exit_status=1, id="e")
    _round_trip(delete, b"\x0a\x01c\x18\x01\x2a\x01e")


def test_task_create_io_bytes() -> None:
    create = task_pb2.TaskCreate(
        container_id="c",
        rootfs=[mount_pb2.Mount(type="t")],
        io=task_pb2.TaskIO(stdout="o", terminal=True),
        pid=9,
    )
    _round_trip(create, b"\x0a\x01c\x1a\x03\x0a\x01t\x22\x05\x12\x01o\x20\x01\x30\x09")


def test_container_create_nested_runtime_bytes() -> None:
    create = container_pb2.ContainerCreate(
        id="c", runtime=container_pb2.ContainerCreate.Runtime(name="io.containerd.runc.v2")
    )
    assert create.DESCRIPTOR.nested_types_by_name["Runtime"].full_name == (
        "containerd.events.ContainerCreate.Runtime"
    )
    _round_trip(create, b"\x0a\x01c\x1a\x17\x0a\x15io.containerd.runc.v2")


def test_content_create_camel_case_media_type() -> None:
    create = content_pb2.ContentCreate(digest="d", size=3, mediaType="m")
    _round_trip(create, b"\x0a\x01d\x10\x03\x1a\x01m")


def test_snapshot_events_skip_fields_3_and_4() -> None:
    _round_trip(snapshot_pb2.SnapshotPrepare(key="k", snapshotter="s"), b"\x0a\x01k\x2a\x01s")
    _round_trip(snapshot_pb2.SnapshotRemove(key="k", snapshotter="s"), b"\x0a\x01k\x2a\x01s")


def test_event_type_urls() -> None:
    """Subscribers decode by type URL, which is the message's full name."""
    packed = any_pb2.Any()
    packed.Pack(task_pb2.TaskOOM(container_id="c"))
    assert packed.type_url == "type.googleapis.com/containerd.events.TaskOOM"
    packed.Pack(image_pb2.ImageCreate(name="i"))
    assert packed.type_url == "type.googleapis.com/containerd.services.images.v1.ImageCreate"


def test_process_status_bytes() -> None:
    proc = types_task_pb2.Process(container_id="c", pid=1, status=types_task_pb2.RUNNING)
    _round_trip(proc, b"\x0a\x01c\x18\x01\x20\x02")


def test_create_task_request_bytes() -> None:
    req = tasks_pb2.CreateTaskRequest(
        container_id="c", rootfs=[mount_pb2.Mount(type="t")], task_api_version=3
    )
    # rootfs is field 3 (2 is unused); task_api_version is field 12, tag 0x60.
    _round_trip(req, b"\x0a\x01c\x1a\x03\x0a\x01t\x60\x03")


def test_kill_request_bytes() -> None:
    req = tasks_pb2.KillRequest(container_id="c", exec_id="e", signal=9, all=True)
    _round_trip(req, b"\x0a\x01c\x12\x01e\x18\x09\x20\x01")


def test_forward_request_bytes() -> None:
    req = events_pb2.ForwardRequest(envelope=event_pb2.Envelope(namespace="n", topic="/t"))
    _round_trip(req, b"\x0a\x07\x12\x01n\x1a\x02/t")


def test_activate_request_bytes() -> None:
    req = mounts_pb2.ActivateRequest(name="a", labels={"k": "v"}, temporary=True)
    _round_trip(req, b"\x0a\x01a\x1a\x06\x0a\x01k\x12\x01v\x20\x01")
