"""Wire compatibility of containerd's transfer, streaming and sandbox APIs.

The tables are transcribed from containerd's .proto files (main branch, 2.x):
api/types/transfer/*.proto (containerd.types.transfer) and the transfer,
streaming and sandbox services.
"""

from __future__ import annotations

from types import ModuleType

from google.protobuf import any_pb2
from google.protobuf.descriptor import Descriptor, FileDescriptor
from google.protobuf.message import Message

from tests.api.wire import EnumRow, FieldRow, MethodRow, check_enums, check_fields, check_methods
from wharfd.api.services.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc
from wharfd.api.services.streaming.v1 import streaming_pb2, streaming_pb2_grpc
from wharfd.api.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc
from wharfd.api.types import descriptor_pb2, platform_pb2
from wharfd.api.types.transfer import (
    container_pb2,
    imagestore_pb2,
    importexport_pb2,
    progress_pb2,
    registry_pb2,
)
from wharfd.api.types.transfer import (
    streaming_pb2 as types_streaming_pb2,
)

MODULES = [
    container_pb2,
    imagestore_pb2,
    importexport_pb2,
    progress_pb2,
    registry_pb2,
    types_streaming_pb2,
    transfer_pb2,
    streaming_pb2,
    sandbox_pb2,
]

FIELDS: list[FieldRow] = [
    ("containerd.services.sandbox.v1.StoreCreateRequest", "sandbox", 1, "containerd.types.Sandbox"),
    ("containerd.services.sandbox.v1.StoreCreateResponse", "sandbox", 1, "containerd.types.Sandbox"),
    ("containerd.services.sandbox.v1.StoreUpdateRequest", "sandbox", 1, "containerd.types.Sandbox"),
    ("containerd.services.sandbox.v1.StoreUpdateRequest", "fields", 2, "repeated string"),
    ("containerd.services.sandbox.v1.StoreUpdateResponse", "sandbox", 1, "containerd.types.Sandbox"),
    ("containerd.services.sandbox.v1.StoreDeleteRequest", "sandbox_id", 1, "string"),
    ("containerd.services.sandbox.v1.StoreListRequest", "filters", 1, "repeated string"),
    ("containerd.services.sandbox.v1.StoreListResponse", "list", 1, "repeated containerd.types.Sandbox"),
    ("containerd.services.sandbox.v1.StoreGetRequest", "sandbox_id", 1, "string"),
    ("containerd.services.sandbox.v1.StoreGetResponse", "sandbox", 1, "containerd.types.Sandbox"),
    ("containerd.services.sandbox.v1.ControllerCreateRequest", "sandbox_id", 1, "string"),
    (
        "containerd.services.sandbox.v1.ControllerCreateRequest",
        "rootfs",
        2,
        "repeated containerd.types.Mount",
    ),
    ("containerd.services.sandbox.v1.ControllerCreateRequest", "options", 3, "google.protobuf.Any"),
    ("containerd.services.sandbox.v1.ControllerCreateRequest", "netns_path", 4, "string"),
    ("containerd.services.sandbox.v1.ControllerCreateRequest", "annotations", 5, "map<string, string>"),
    ("containerd.services.sandbox.v1.ControllerCreateRequest", "sandbox", 6, "containerd.types.Sandbox"),
    ("containerd.services.sandbox.v1.ControllerCreateRequest", "sandboxer", 10, "string"),
    ("containerd.services.sandbox.v1.ControllerCreateResponse", "sandbox_id", 1, "string"),
    ("containerd.services.sandbox.v1.ControllerStartRequest", "sandbox_id", 1, "string"),
    ("containerd.services.sandbox.v1.ControllerStartRequest", "sandboxer", 10, "string"),
    ("containerd.services.sandbox.v1.ControllerStartResponse", "sandbox_id", 1, "string"),
    ("containerd.services.sandbox.v1.ControllerStartResponse", "pid", 2, "uint32"),
    ("containerd.services.sandbox.v1.ControllerStartResponse", "created_at", 3, "google.protobuf.Timestamp"),
    ("containerd.services.sandbox.v1.ControllerStartResponse", "labels", 4, "map<string, string>"),
    ("containerd.services.sandbox.v1.ControllerStartResponse", "address", 5, "string"),
    ("containerd.services.sandbox.v1.ControllerStartResponse", "version", 6, "uint32"),
    ("containerd.services.sandbox.v1.ControllerStartResponse", "spec", 7, "google.protobuf.Any"),
    ("containerd.services.sandbox.v1.ControllerPlatformRequest", "sandbox_id", 1, "string"),
    ("containerd.services.sandbox.v1.ControllerPlatformRequest", "sandboxer", 10, "string"),
    ("containerd.services.sandbox.v1.ControllerPlatformResponse", "platform", 1, "containerd.types.Platform"),
    ("containerd.services.sandbox.v1.ControllerStopRequest", "sandbox_id", 1, "string"),
    ("containerd.services.sandbox.v1.ControllerStopRequest", "timeout_secs", 2, "uint32"),
    ("containerd.services.sandbox.v1.ControllerStopRequest", "sandboxer", 10, "string"),
    ("containerd.services.sandbox.v1.ControllerWaitRequest", "sandbox_id", 1, "string"),
    ("containerd.services.sandbox.v1.ControllerWaitRequest", "sandboxer", 10, "string"),
    ("containerd.services.sandbox.v1.ControllerWaitResponse", "exit_status", 1, "uint32"),
    ("containerd.services.sandbox.v1.ControllerWaitResponse", "exited_at", 2, "google.protobuf.Timestamp"),
    ("containerd.services.sandbox.v1.ControllerStatusRequest", "sandbox_id", 1, "string"),
    ("containerd.services.sandbox.v1.ControllerStatusRequest", "verbose", 2, "bool"),
    ("containerd.services.sandbox.v1.ControllerStatusRequest", "sandboxer", 10, "string"),
    ("containerd.services.sandbox.v1.ControllerStatusResponse", "sandbox_id", 1, "string"),
    ("containerd.services.sandbox.v1.ControllerStatusResponse", "pid", 2, "uint32"),
    ("containerd.services.sandbox.v1.ControllerStatusResponse", "state", 3, "string"),
    ("containerd.services.sandbox.v1.ControllerStatusResponse", "info", 4, "map<string, string>"),
    ("containerd.services.sandbox.v1.ControllerStatusResponse", "created_at", 5, "google.protobuf.Timestamp"),
    ("containerd.services.sandbox.v1.ControllerStatusResponse", "exited_at", 6, "google.protobuf.Timestamp"),
    ("containerd.services.sandbox.v1.ControllerStatusResponse", "extra", 7, "google.protobuf.Any"),
    ("containerd.services.sandbox.v1.ControllerStatusResponse", "address", 8, "string"),
    ("containerd.services.sandbox.v1.ControllerStatusResponse", "version", 9, "uint32"),
    ("containerd.services.sandbox.v1.ControllerShutdownRequest", "sandbox_id", 1, "string"),
    ("containerd.services.sandbox.v1.ControllerShutdownRequest", "sandboxer", 10, "string"),
    ("containerd.services.sandbox.v1.ControllerMetricsRequest", "sandbox_id", 1, "string"),
    ("containerd.services.sandbox.v1.ControllerMetricsRequest", "sandboxer", 10, "string"),
    ("containerd.services.sandbox.v1.ControllerMetricsResponse", "metrics", 1, "containerd.types.Metric"),
    ("containerd.services.sandbox.v1.ControllerUpdateRequest", "sandbox_id", 1, "string"),
    ("containerd.services.sandbox.v1.ControllerUpdateRequest", "sandboxer", 2, "string"),
    ("containerd.services.sandbox.v1.ControllerUpdateRequest", "sandbox", 3, "containerd.types.Sandbox"),
    ("containerd.services.sandbox.v1.ControllerUpdateRequest", "fields", 4, "repeated string"),
    ("containerd.services.streaming.v1.StreamInit", "id", 1, "string"),
    ("containerd.services.transfer.v1.TransferRequest", "source", 1, "google.protobuf.Any"),
    ("containerd.services.transfer.v1.TransferRequest", "destination", 2, "google.protobuf.Any"),
    (
        "containerd.services.transfer.v1.TransferRequest",
        "options",
        3,
        "containerd.services.transfer.v1.TransferOptions",
    ),
    ("containerd.services.transfer.v1.TransferOptions", "progress_stream", 1, "string"),
    ("containerd.types.transfer.ContainerPath", "container_id", 1, "string"),
    ("containerd.types.transfer.ContainerPath", "path", 2, "string"),
    ("containerd.types.transfer.ContainerPath", "no_walk", 3, "bool"),
    ("containerd.types.transfer.ContainerPath", "preserve_ownership", 4, "bool"),
    ("containerd.types.transfer.ImageStore", "name", 1, "string"),
    ("containerd.types.transfer.ImageStore", "labels", 2, "map<string, string>"),
    ("containerd.types.transfer.ImageStore", "platforms", 3, "repeated containerd.types.Platform"),
    ("containerd.types.transfer.ImageStore", "all_metadata", 4, "bool"),
    ("containerd.types.transfer.ImageStore", "manifest_limit", 5, "uint32"),
    (
        "containerd.types.transfer.ImageStore",
        "extra_references",
        6,
        "repeated containerd.types.transfer.ImageReference",
    ),
    (
        "containerd.types.transfer.ImageStore",
        "unpacks",
        10,
        "repeated containerd.types.transfer.UnpackConfiguration",
    ),
    ("containerd.types.transfer.UnpackConfiguration", "platform", 1, "containerd.types.Platform"),
    ("containerd.types.transfer.UnpackConfiguration", "snapshotter", 2, "string"),
    ("containerd.types.transfer.ImageReference", "name", 1, "string"),
    ("containerd.types.transfer.ImageReference", "is_prefix", 2, "bool"),
    ("containerd.types.transfer.ImageReference", "allow_overwrite", 3, "bool"),
    ("containerd.types.transfer.ImageReference", "add_digest", 4, "bool"),
    ("containerd.types.transfer.ImageReference", "skip_named_digest", 5, "bool"),
    ("containerd.types.transfer.ImageImportStream", "stream", 1, "string"),
    ("containerd.types.transfer.ImageImportStream", "media_type", 2, "string"),
    ("containerd.types.transfer.ImageImportStream", "force_compress", 3, "bool"),
    ("containerd.types.transfer.ImageExportStream", "stream", 1, "string"),
    ("containerd.types.transfer.ImageExportStream", "media_type", 2, "string"),
    ("containerd.types.transfer.ImageExportStream", "platforms", 3, "repeated containerd.types.Platform"),
    ("containerd.types.transfer.ImageExportStream", "all_platforms", 4, "bool"),
    ("containerd.types.transfer.ImageExportStream", "skip_compatibility_manifest", 5, "bool"),
    ("containerd.types.transfer.ImageExportStream", "skip_non_distributable", 6, "bool"),
    ("containerd.types.transfer.Progress", "event", 1, "string"),
    ("containerd.types.transfer.Progress", "name", 2, "string"),
    ("containerd.types.transfer.Progress", "parents", 3, "repeated string"),
    ("containerd.types.transfer.Progress", "progress", 4, "int64"),
    ("containerd.types.transfer.Progress", "total", 5, "int64"),
    ("containerd.types.transfer.Progress", "desc", 6, "containerd.types.Descriptor"),
    ("containerd.types.transfer.OCIRegistry", "reference", 1, "string"),
    ("containerd.types.transfer.OCIRegistry", "resolver", 2, "containerd.types.transfer.RegistryResolver"),
    ("containerd.types.transfer.RegistryResolver", "auth_stream", 1, "string"),
    ("containerd.types.transfer.RegistryResolver", "headers", 2, "map<string, string>"),
    ("containerd.types.transfer.RegistryResolver", "host_dir", 3, "string"),
    ("containerd.types.transfer.RegistryResolver", "default_scheme", 4, "string"),
    ("containerd.types.transfer.RegistryResolver", "http_debug", 5, "containerd.types.transfer.HTTPDebug"),
    ("containerd.types.transfer.RegistryResolver", "logs_stream", 6, "string"),
    ("containerd.types.transfer.AuthRequest", "host", 1, "string"),
    ("containerd.types.transfer.AuthRequest", "reference", 2, "string"),
    ("containerd.types.transfer.AuthRequest", "wwwauthenticate", 3, "repeated string"),
    ("containerd.types.transfer.AuthResponse", "authType", 1, "containerd.types.transfer.AuthType"),
    ("containerd.types.transfer.AuthResponse", "secret", 2, "string"),
    ("containerd.types.transfer.AuthResponse", "username", 3, "string"),
    ("containerd.types.transfer.AuthResponse", "expire_at", 4, "google.protobuf.Timestamp"),
    ("containerd.types.transfer.Data", "data", 1, "bytes"),
    ("containerd.types.transfer.WindowUpdate", "update", 1, "int32"),
    ("containerd.types.transfer.ReadStream", "stream", 1, "string"),
    ("containerd.types.transfer.ReadStream", "media_type", 2, "string"),
    ("containerd.types.transfer.WriteStream", "stream", 1, "string"),
    ("containerd.types.transfer.WriteStream", "media_type", 2, "string"),
]

ENUMS: list[EnumRow] = [
    ("containerd.types.transfer.HTTPDebug", "DISABLED", 0),
    ("containerd.types.transfer.HTTPDebug", "DEBUG", 1),
    ("containerd.types.transfer.HTTPDebug", "TRACE", 2),
    ("containerd.types.transfer.HTTPDebug", "BOTH", 3),
    ("containerd.types.transfer.AuthType", "NONE", 0),
    ("containerd.types.transfer.AuthType", "CREDENTIALS", 1),
    ("containerd.types.transfer.AuthType", "REFRESH", 2),
    ("containerd.types.transfer.AuthType", "HEADER", 3),
]

METHODS: list[MethodRow] = [
    (
        "containerd.services.sandbox.v1.Store",
        "Create",
        "containerd.services.sandbox.v1.StoreCreateRequest",
        "containerd.services.sandbox.v1.StoreCreateResponse",
    ),
    (
        "containerd.services.sandbox.v1.Store",
        "Update",
        "containerd.services.sandbox.v1.StoreUpdateRequest",
        "containerd.services.sandbox.v1.StoreUpdateResponse",
    ),
    (
        "containerd.services.sandbox.v1.Store",
        "Delete",
        "containerd.services.sandbox.v1.StoreDeleteRequest",
        "containerd.services.sandbox.v1.StoreDeleteResponse",
    ),
    (
        "containerd.services.sandbox.v1.Store",
        "List",
        "containerd.services.sandbox.v1.StoreListRequest",
        "containerd.services.sandbox.v1.StoreListResponse",
    ),
    (
        "containerd.services.sandbox.v1.Store",
        "Get",
        "containerd.services.sandbox.v1.StoreGetRequest",
        "containerd.services.sandbox.v1.StoreGetResponse",
    ),
    (
        "containerd.services.sandbox.v1.Controller",
        "Create",
        "containerd.services.sandbox.v1.ControllerCreateRequest",
        "containerd.services.sandbox.v1.ControllerCreateResponse",
    ),
    (
        "containerd.services.sandbox.v1.Controller",
        "Start",
        "containerd.services.sandbox.v1.ControllerStartRequest",
        "containerd.services.sandbox.v1.ControllerStartResponse",
    ),
    (
        "containerd.services.sandbox.v1.Controller",
        "Platform",
        "containerd.services.sandbox.v1.ControllerPlatformRequest",
        "containerd.services.sandbox.v1.ControllerPlatformResponse",
    ),
    (
        "containerd.services.sandbox.v1.Controller",
        "Stop",
        "containerd.services.sandbox.v1.ControllerStopRequest",
        "containerd.services.sandbox.v1.ControllerStopResponse",
    ),
    (
        "containerd.services.sandbox.v1.Controller",
        "Wait",
        "containerd.services.sandbox.v1.ControllerWaitRequest",
        "containerd.services.sandbox.v1.ControllerWaitResponse",
    ),
    (
        "containerd.services.sandbox.v1.Controller",
        "Status",
        "containerd.services.sandbox.v1.ControllerStatusRequest",
        "containerd.services.sandbox.v1.ControllerStatusResponse",
    ),
    (
        "containerd.services.sandbox.v1.Controller",
        "Shutdown",
        "containerd.services.sandbox.v1.ControllerShutdownRequest",
        "containerd.services.sandbox.v1.ControllerShutdownResponse",
    ),
    (
        "containerd.services.sandbox.v1.Controller",
        "Metrics",
        "containerd.services.sandbox.v1.ControllerMetricsRequest",
        "containerd.services.sandbox.v1.ControllerMetricsResponse",
    ),
    (
        "containerd.services.sandbox.v1.Controller",
        "Update",
        "containerd.services.sandbox.v1.ControllerUpdateRequest",
        "containerd.services.sandbox.v1.ControllerUpdateResponse",
    ),
    (
        "containerd.services.streaming.v1.Streaming",
        "Stream",
        "stream google.protobuf.Any",
        "stream google.protobuf.Any",
    ),
    (
        "containerd.services.transfer.v1.Transfer",
        "Transfer",
        "containerd.services.transfer.v1.TransferRequest",
        "google.protobuf.Empty",
    ),
]

# Messages with no fields at all.
EMPTY_MESSAGES = [
    "containerd.services.sandbox.v1.StoreDeleteResponse",
    "containerd.services.sandbox.v1.ControllerStopResponse",
    "containerd.services.sandbox.v1.ControllerShutdownResponse",
    "containerd.services.sandbox.v1.ControllerUpdateResponse",
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
    for module in MODULES[:6]:
        assert _file(module).package == "containerd.types.transfer"
    assert _file(transfer_pb2).package == "containerd.services.transfer.v1"
    assert _file(streaming_pb2).package == "containerd.services.streaming.v1"
    assert _file(sandbox_pb2).package == "containerd.services.sandbox.v1"


def test_grpc_stubs_generated() -> None:
    assert hasattr(transfer_pb2_grpc, "TransferStub")
    assert hasattr(streaming_pb2_grpc, "StreamingStub")
    assert hasattr(sandbox_pb2_grpc, "StoreStub")
    assert hasattr(sandbox_pb2_grpc, "ControllerStub")


def test_progress_bytes() -> None:
    progress = progress_pb2.Progress(
        event="x",
        name="n",
        parents=["p"],
        progress=5,
        total=10,
        desc=descriptor_pb2.Descriptor(digest="d"),
    )
    _round_trip(progress, b"\x0a\x01x\x12\x01n\x1a\x01p\x20\x05\x28\x0a\x32\x03\x12\x01d")


def test_progress_negative_int64() -> None:
    # int64 is not zigzag-encoded: -1 takes ten bytes.
    _round_trip(progress_pb2.Progress(total=-1), b"\x28" + b"\xff" * 9 + b"\x01")


def test_image_store_unpacks_is_field_10() -> None:
    store = imagestore_pb2.ImageStore(name="n", unpacks=[imagestore_pb2.UnpackConfiguration(snapshotter="s")])
    _round_trip(store, b"\x0a\x01n\x52\x03\x12\x01s")


def test_image_store_references_bytes() -> None:
    store = imagestore_pb2.ImageStore(
        platforms=[platform_pb2.Platform(os="linux")],
        extra_references=[imagestore_pb2.ImageReference(name="r", is_prefix=True, add_digest=True)],
    )
    _round_trip(store, b"\x1a\x07\x0a\x05linux\x32\x07\x0a\x01r\x10\x01\x20\x01")


def test_auth_response_bytes() -> None:
    resp = registry_pb2.AuthResponse(authType=registry_pb2.HEADER, secret="s", username="u")
    _round_trip(resp, b"\x08\x03\x12\x01s\x1a\x01u")


def test_registry_resolver_bytes() -> None:
    reg = registry_pb2.OCIRegistry(
        reference="r",
        resolver=registry_pb2.RegistryResolver(auth_stream="a", http_debug=registry_pb2.BOTH),
    )
    _round_trip(reg, b"\x0a\x01r\x12\x05\x0a\x01a\x28\x03")


def test_window_update_negative_int32() -> None:
    # A negative int32 is sign-extended to a ten-byte varint.
    _round_trip(types_streaming_pb2.WindowUpdate(update=-1), b"\x08" + b"\xff" * 9 + b"\x01")


def test_data_and_stream_init_bytes() -> None:
    _round_trip(types_streaming_pb2.Data(data=b"\x00\x01"), b"\x0a\x02\x00\x01")
    _round_trip(streaming_pb2.StreamInit(id="i"), b"\x0a\x01i")


def test_import_stream_bytes() -> None:
    imp = importexport_pb2.ImageImportStream(stream="s", media_type="m", force_compress=True)
    _round_trip(imp, b"\x0a\x01s\x12\x01m\x18\x01")


def test_container_path_bytes() -> None:
    path = container_pb2.ContainerPath(container_id="c", path="/p", preserve_ownership=True)
    _round_trip(path, b"\x0a\x01c\x12\x02/p\x20\x01")


def test_transfer_request_bytes() -> None:
    source = any_pb2.Any()
    source.Pack(registry_pb2.OCIRegistry(reference="r"))
    assert source.type_url == "type.googleapis.com/containerd.types.transfer.OCIRegistry"
    req = transfer_pb2.TransferRequest(options=transfer_pb2.TransferOptions(progress_stream="p"))
    _round_trip(req, b"\x1a\x03\x0a\x01p")


def test_controller_sandboxer_field_numbers() -> None:
    """sandboxer is field 10 on most controller requests but field 2 on Update."""
    start = sandbox_pb2.ControllerStartRequest(sandbox_id="s", sandboxer="x")
    _round_trip(start, b"\x0a\x01s\x52\x01x")
    update = sandbox_pb2.ControllerUpdateRequest(sandbox_id="s", sandboxer="x", fields=["f"])
    _round_trip(update, b"\x0a\x01s\x12\x01x\x22\x01f")


def test_controller_stop_bytes() -> None:
    stop = sandbox_pb2.ControllerStopRequest(sandbox_id="s", timeout_secs=30)
    _round_trip(stop, b"\x0a\x01s\x10\x1e")
