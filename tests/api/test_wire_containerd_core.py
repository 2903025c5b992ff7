"""Wire compatibility of containerd's core types and metadata services.

The tables below are transcribed from containerd's .proto files (main branch,
2.x): package containerd.types (mount, descriptor, platform, metrics, event,
introspection, sandbox) and the version, namespaces, introspection, containers,
images, content, leases, diff and snapshots services.
"""

from __future__ import annotations

from types import ModuleType

from google.protobuf.descriptor import Descriptor, FileDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from tests.api.wire import EnumRow, FieldRow, MethodRow, check_enums, check_fields, check_methods
from wharfd.api.services.containers.v1 import containers_pb2
from wharfd.api.services.content.v1 import content_pb2
from wharfd.api.services.diff.v1 import diff_pb2
from wharfd.api.services.images.v1 import images_pb2
from wharfd.api.services.introspection.v1 import introspection_pb2
from wharfd.api.services.leases.v1 import leases_pb2
from wharfd.api.services.namespaces.v1 import namespace_pb2
from wharfd.api.services.snapshots.v1 import snapshots_pb2
from wharfd.api.services.version.v1 import version_pb2
from wharfd.api.types import (
    descriptor_pb2,
    event_pb2,
    metrics_pb2,
    mount_pb2,
    platform_pb2,
    sandbox_pb2,
)
from wharfd.api.types import (
    introspection_pb2 as types_introspection_pb2,
)

MODULES = [
    mount_pb2,
    descriptor_pb2,
    platform_pb2,
    metrics_pb2,
    event_pb2,
    types_introspection_pb2,
    sandbox_pb2,
    version_pb2,
    namespace_pb2,
    introspection_pb2,
    containers_pb2,
    images_pb2,
    content_pb2,
    leases_pb2,
    diff_pb2,
    snapshots_pb2,
]


def _qualify(package: str, type_: str) -> str:
    """Expand names written ".Name" (relative to ``package``) inside a type spelling."""
    for prefix in ("repeated ", "stream "):
        if type_.startswith(prefix):
            return prefix + _qualify(package, type_.removeprefix(prefix))
    if type_.startswith("map<"):
        key, value = type_[4:-1].split(", ")
        return f"map<{_qualify(package, key)}, {_qualify(package, value)}>"
    return package + type_ if type_.startswith(".") else type_


def _rows(package: str, rows: list[FieldRow]) -> list[FieldRow]:
    return [(f"{package}.{m}", f, n, _qualify(package, t)) for m, f, n, t in rows]


def _methods(package: str, service: str, rows: list[tuple[str, str, str]]) -> list[MethodRow]:
    return [(f"{package}.{service}", m, _qualify(package, i), _qualify(package, o)) for m, i, o in rows]


_CONTAINERS = "containerd.services.containers.v1"
_CONTENT = "containerd.services.content.v1"
_DIFF = "containerd.services.diff.v1"
_IMAGES = "containerd.services.images.v1"
_INTROSPECTION = "containerd.services.introspection.v1"
_LEASES = "containerd.services.leases.v1"
_NAMESPACES = "containerd.services.namespaces.v1"
_SNAPSHOTS = "containerd.services.snapshots.v1"
_VERSION = "containerd.services.version.v1"
_TYPES = "containerd.types"

FIELDS: list[FieldRow] = [
    *_rows(
        _TYPES,
        [
            ("Mount", "type", 1, "string"),
            ("Mount", "source", 2, "string"),
            ("Mount", "target", 3, "string"),
            ("Mount", "options", 4, "repeated string"),
            ("ActiveMount", "mount", 1, ".Mount"),
            ("ActiveMount", "mounted_at", 2, "google.protobuf.Timestamp"),
            ("ActiveMount", "mount_point", 3, "string"),
            ("ActiveMount", "data", 4, "map<string, string>"),
            ("ActivationInfo", "name", 1, "string"),
            ("ActivationInfo", "active", 2, "repeated .ActiveMount"),
            ("ActivationInfo", "system", 3, "repeated .Mount"),
            ("ActivationInfo", "labels", 4, "map<string, string>"),
            ("Descriptor", "media_type", 1, "string"),
            ("Descriptor", "digest", 2, "string"),
            ("Descriptor", "size", 3, "int64"),
            ("Descriptor", "annotations", 5, "map<string, string>"),
            ("Platform", "os", 1, "string"),
            ("Platform", "architecture", 2, "string"),
            ("Platform", "variant", 3, "string"),
            ("Platform", "os_version", 4, "string"),
            ("Platform", "os_features", 5, "repeated string"),
            ("Metric", "timestamp", 1, "google.protobuf.Timestamp"),
            ("Metric", "id", 2, "string"),
            ("Metric", "data", 3, "google.protobuf.Any"),
            ("Envelope", "timestamp", 1, "google.protobuf.Timestamp"),
            ("Envelope", "namespace", 2, "string"),
            ("Envelope", "topic", 3, "string"),
            ("Envelope", "event", 4, "google.protobuf.Any"),
            ("RuntimeRequest", "runtime_path", 1, "string"),
            ("RuntimeRequest", "options", 2, "google.protobuf.Any"),
            ("RuntimeVersion", "version", 1, "string"),
            ("RuntimeVersion", "revision", 2, "string"),
            ("RuntimeInfo", "name", 1, "string"),
            ("RuntimeInfo", "version", 2, ".RuntimeVersion"),
            ("RuntimeInfo", "options", 3, "google.protobuf.Any"),
            ("RuntimeInfo", "features", 4, "google.protobuf.Any"),
            ("RuntimeInfo", "annotations", 5, "map<string, string>"),
            ("Sandbox", "sandbox_id", 1, "string"),
            ("Sandbox.Runtime", "name", 1, "string"),
            ("Sandbox.Runtime", "options", 2, "google.protobuf.Any"),
            ("Sandbox", "runtime", 2, ".Sandbox.Runtime"),
            ("Sandbox", "spec", 3, "google.protobuf.Any"),
            ("Sandbox", "labels", 4, "map<string, string>"),
            ("Sandbox", "created_at", 5, "google.protobuf.Timestamp"),
            ("Sandbox", "updated_at", 6, "google.protobuf.Timestamp"),
            ("Sandbox", "extensions", 7, "map<string, google.protobuf.Any>"),
            ("Sandbox", "sandboxer", 10, "string"),
        ],
    ),
    *_rows(
        _VERSION,
        [
            ("VersionResponse", "version", 1, "string"),
            ("VersionResponse", "revision", 2, "string"),
        ],
    ),
    *_rows(
        _NAMESPACES,
        [
            ("Namespace", "name", 1, "string"),
            ("Namespace", "labels", 2, "map<string, string>"),
            ("GetNamespaceRequest", "name", 1, "string"),
            ("GetNamespaceResponse", "namespace", 1, ".Namespace"),
            ("ListNamespacesRequest", "filter", 1, "string"),
            ("ListNamespacesResponse", "namespaces", 1, "repeated .Namespace"),
            ("CreateNamespaceRequest", "namespace", 1, ".Namespace"),
            ("CreateNamespaceResponse", "namespace", 1, ".Namespace"),
            ("UpdateNamespaceRequest", "namespace", 1, ".Namespace"),
            ("UpdateNamespaceRequest", "update_mask", 2, "google.protobuf.FieldMask"),
            ("UpdateNamespaceResponse", "namespace", 1, ".Namespace"),
            ("DeleteNamespaceRequest", "name", 1, "string"),
        ],
    ),
    *_rows(
        _INTROSPECTION,
        [
            ("Plugin", "type", 1, "string"),
            ("Plugin", "id", 2, "string"),
            ("Plugin", "requires", 3, "repeated string"),
            ("Plugin", "platforms", 4, "repeated containerd.types.Platform"),
            ("Plugin", "exports", 5, "map<string, string>"),
            ("Plugin", "capabilities", 6, "repeated string"),
            ("Plugin", "init_err", 7, "google.rpc.Status"),
            ("PluginsRequest", "filters", 1, "repeated string"),
            ("PluginsResponse", "plugins", 1, "repeated .Plugin"),
            ("ServerResponse", "uuid", 1, "string"),
            ("ServerResponse", "pid", 2, "uint64"),
            ("ServerResponse", "pidns", 3, "uint64"),
            ("ServerResponse", "deprecations", 4, "repeated .DeprecationWarning"),
            ("DeprecationWarning", "id", 1, "string"),
            ("DeprecationWarning", "message", 2, "string"),
            ("DeprecationWarning", "last_occurrence", 3, "google.protobuf.Timestamp"),
            ("PluginInfoRequest", "type", 1, "string"),
            ("PluginInfoRequest", "id", 2, "string"),
            ("PluginInfoRequest", "options", 3, "google.protobuf.Any"),
            ("PluginInfoResponse", "plugin", 1, ".Plugin"),
            ("PluginInfoResponse", "extra", 2, "google.protobuf.Any"),
        ],
    ),
    *_rows(
        _CONTAINERS,
        [
            ("Container", "id", 1, "string"),
            ("Container", "labels", 2, "map<string, string>"),
            ("Container", "image", 3, "string"),
            ("Container.Runtime", "name", 1, "string"),
            ("Container.Runtime", "options", 2, "google.protobuf.Any"),
            ("Container", "runtime", 4, ".Container.Runtime"),
            ("Container", "spec", 5, "google.protobuf.Any"),
            ("Container", "snapshotter", 6, "string"),
            ("Container", "snapshot_key", 7, "string"),
            ("Container", "created_at", 8, "google.protobuf.Timestamp"),
            ("Container", "updated_at", 9, "google.protobuf.Timestamp"),
            ("Container", "extensions", 10, "map<string, google.protobuf.Any>"),
            ("Container", "sandbox", 11, "string"),
            ("GetContainerRequest", "id", 1, "string"),
            ("GetContainerResponse", "container", 1, ".Container"),
            ("ListContainersRequest", "filters", 1, "repeated string"),
            ("ListContainersResponse", "containers", 1, "repeated .Container"),
            ("CreateContainerRequest", "container", 1, ".Container"),
            ("CreateContainerResponse", "container", 1, ".Container"),
            ("UpdateContainerRequest", "container", 1, ".Container"),
            ("UpdateContainerRequest", "update_mask", 2, "google.protobuf.FieldMask"),
            ("UpdateContainerResponse", "container", 1, ".Container"),
            ("DeleteContainerRequest", "id", 1, "string"),
            ("ListContainerMessage", "container", 1, ".Container"),
        ],
    ),
    *_rows(
        _IMAGES,
        [
            ("Image", "name", 1, "string"),
            ("Image", "labels", 2, "map<string, string>"),
            ("Image", "target", 3, "containerd.types.Descriptor"),
            ("Image", "created_at", 7, "google.protobuf.Timestamp"),
            ("Image", "updated_at", 8, "google.protobuf.Timestamp"),
            ("GetImageRequest", "name", 1, "string"),
            ("GetImageResponse", "image", 1, ".Image"),
            ("CreateImageRequest", "image", 1, ".Image"),
            ("CreateImageRequest", "source_date_epoch", 2, "google.protobuf.Timestamp"),
            ("CreateImageResponse", "image", 1, ".Image"),
            ("UpdateImageRequest", "image", 1, ".Image"),
            ("UpdateImageRequest", "update_mask", 2, "google.protobuf.FieldMask"),
            ("UpdateImageRequest", "source_date_epoch", 3, "google.protobuf.Timestamp"),
            ("UpdateImageResponse", "image", 1, ".Image"),
            ("ListImagesRequest", "filters", 1, "repeated string"),
            ("ListImagesResponse", "images", 1, "repeated .Image"),
            ("DeleteImageRequest", "name", 1, "string"),
            ("DeleteImageRequest", "sync", 2, "bool"),
            ("DeleteImageRequest", "target", 3, "containerd.types.Descriptor"),
        ],
    ),
    *_rows(
        _CONTENT,
        [
            ("Info", "digest", 1, "string"),
            ("Info", "size", 2, "int64"),
            ("Info", "created_at", 3, "google.protobuf.Timestamp"),
            ("Info", "updated_at", 4, "google.protobuf.Timestamp"),
            ("Info", "labels", 5, "map<string, string>"),
            ("InfoRequest", "digest", 1, "string"),
            ("InfoResponse", "info", 1, ".Info"),
            ("UpdateRequest", "info", 1, ".Info"),
            ("UpdateRequest", "update_mask", 2, "google.protobuf.FieldMask"),
            ("UpdateResponse", "info", 1, ".Info"),
            ("ListContentRequest", "filters", 1, "repeated string"),
            ("ListContentResponse", "info", 1, "repeated .Info"),
            ("DeleteContentRequest", "digest", 1, "string"),
            ("ReadContentRequest", "digest", 1, "string"),
            ("ReadContentRequest", "offset", 2, "int64"),
            ("ReadContentRequest", "size", 3, "int64"),
            ("ReadContentResponse", "offset", 1, "int64"),
            ("ReadContentResponse", "data", 2, "bytes"),
            ("Status", "started_at", 1, "google.protobuf.Timestamp"),
            ("Status", "updated_at", 2, "google.protobuf.Timestamp"),
            ("Status", "ref", 3, "string"),
            ("Status", "offset", 4, "int64"),
            ("Status", "total", 5, "int64"),
            ("Status", "expected", 6, "string"),
            ("StatusRequest", "ref", 1, "string"),
            ("StatusResponse", "status", 1, ".Status"),
            ("ListStatusesRequest", "filters", 1, "repeated string"),
            ("ListStatusesResponse", "statuses", 1, "repeated .Status"),
            ("WriteContentRequest", "action", 1, ".WriteAction"),
            ("WriteContentRequest", "ref", 2, "string"),
            ("WriteContentRequest", "total", 3, "int64"),
            ("WriteContentRequest", "expected", 4, "string"),
            ("WriteContentRequest", "offset", 5, "int64"),
            ("WriteContentRequest", "data", 6, "bytes"),
            ("WriteContentRequest", "labels", 7, "map<string, string>"),
            ("WriteContentResponse", "action", 1, ".WriteAction"),
            ("WriteContentResponse", "started_at", 2, "google.protobuf.Timestamp"),
            ("WriteContentResponse", "updated_at", 3, "google.protobuf.Timestamp"),
            ("WriteContentResponse", "offset", 4, "int64"),
            ("WriteContentResponse", "total", 5, "int64"),
            ("WriteContentResponse", "digest", 6, "string"),
            ("AbortRequest", "ref", 1, "string"),
        ],
    ),
    *_rows(
        _LEASES,
        [
            ("Lease", "id", 1, "string"),
            ("Lease", "created_at", 2, "google.protobuf.Timestamp"),
            ("Lease", "labels", 3, "map<string, string>"),
            ("CreateRequest", "id", 1, "string"),
            ("CreateRequest", "labels", 3, "map<string, string>"),
            ("CreateResponse", "lease", 1, ".Lease"),
            ("DeleteRequest", "id", 1, "string"),
            ("DeleteRequest", "sync", 2, "bool"),
            ("ListRequest", "filters", 1, "repeated string"),
            ("ListResponse", "leases", 1, "repeated .Lease"),
            ("Resource", "id", 1, "string"),
            ("Resource", "type", 2, "string"),
            ("AddResourceRequest", "id", 1, "string"),
            ("AddResourceRequest", "resource", 2, ".Resource"),
            ("DeleteResourceRequest", "id", 1, "string"),
            ("DeleteResourceRequest", "resource", 2, ".Resource"),
            ("ListResourcesRequest", "id", 1, "string"),
            ("ListResourcesResponse", "resources", 1, "repeated .Resource"),
        ],
    ),
    *_rows(
        _DIFF,
        [
            ("ApplyRequest", "diff", 1, "containerd.types.Descriptor"),
            ("ApplyRequest", "mounts", 2, "repeated containerd.types.Mount"),
            ("ApplyRequest", "payloads", 3, "map<string, google.protobuf.Any>"),
            ("ApplyRequest", "sync_fs", 4, "bool"),
            ("ApplyResponse", "applied", 1, "containerd.types.Descriptor"),
            ("DiffRequest", "left", 1, "repeated containerd.types.Mount"),
            ("DiffRequest", "right", 2, "repeated containerd.types.Mount"),
            ("DiffRequest", "media_type", 3, "string"),
            ("DiffRequest", "ref", 4, "string"),
            ("DiffRequest", "labels", 5, "map<string, string>"),
            ("DiffRequest", "source_date_epoch", 6, "google.protobuf.Timestamp"),
            ("DiffResponse", "diff", 3, "containerd.types.Descriptor"),
        ],
    ),
    *_rows(
        _SNAPSHOTS,
        [
            ("PrepareSnapshotRequest", "snapshotter", 1, "string"),
            ("PrepareSnapshotRequest", "key", 2, "string"),
            ("PrepareSnapshotRequest", "parent", 3, "string"),
            ("PrepareSnapshotRequest", "labels", 4, "map<string, string>"),
            ("PrepareSnapshotResponse", "mounts", 1, "repeated containerd.types.Mount"),
            ("ViewSnapshotRequest", "snapshotter", 1, "string"),
            ("ViewSnapshotRequest", "key", 2, "string"),
            ("ViewSnapshotRequest", "parent", 3, "string"),
            ("ViewSnapshotRequest", "labels", 4, "map<string, string>"),
            ("ViewSnapshotResponse", "mounts", 1, "repeated containerd.types.Mount"),
            ("MountsRequest", "snapshotter", 1, "string"),
            ("MountsRequest", "key", 2, "string"),
            ("MountsResponse", "mounts", 1, "repeated containerd.types.Mount"),
            ("RemoveSnapshotRequest", "snapshotter", 1, "string"),
            ("RemoveSnapshotRequest", "key", 2, "string"),
            ("CommitSnapshotRequest", "snapshotter", 1, "string"),
            ("CommitSnapshotRequest", "name", 2, "string"),
            ("CommitSnapshotRequest", "key", 3, "string"),
            ("CommitSnapshotRequest", "labels", 4, "map<string, string>"),
            ("CommitSnapshotRequest", "parent", 5, "string"),
            ("StatSnapshotRequest", "snapshotter", 1, "string"),
            ("StatSnapshotRequest", "key", 2, "string"),
            ("Info", "name", 1, "string"),
            ("Info", "parent", 2, "string"),
            ("Info", "kind", 3, ".Kind"),
            ("Info", "created_at", 4, "google.protobuf.Timestamp"),
            ("Info", "updated_at", 5, "google.protobuf.Timestamp"),
            ("Info", "labels", 6, "map<string, string>"),
            ("StatSnapshotResponse", "info", 1, ".Info"),
            ("UpdateSnapshotRequest", "snapshotter", 1, "string"),
            ("UpdateSnapshotRequest", "info", 2, ".Info"),
            ("UpdateSnapshotRequest", "update_mask", 3, "google.protobuf.FieldMask"),
            ("UpdateSnapshotResponse", "info", 1, ".Info"),
            ("ListSnapshotsRequest", "snapshotter", 1, "string"),
            ("ListSnapshotsRequest", "filters", 2, "repeated string"),
            ("ListSnapshotsResponse", "info", 1, "repeated .Info"),
            ("UsageRequest", "snapshotter", 1, "string"),
            ("UsageRequest", "key", 2, "string"),
            ("UsageResponse", "size", 1, "int64"),
            ("UsageResponse", "inodes", 2, "int64"),
            ("CleanupRequest", "snapshotter", 1, "string"),
        ],
    ),
]

ENUMS: list[EnumRow] = [
    ("containerd.services.content.v1.WriteAction", "STAT", 0),
    ("containerd.services.content.v1.WriteAction", "WRITE", 1),
    ("containerd.services.content.v1.WriteAction", "COMMIT", 2),
    ("containerd.services.snapshots.v1.Kind", "UNKNOWN", 0),
    ("containerd.services.snapshots.v1.Kind", "VIEW", 1),
    ("containerd.services.snapshots.v1.Kind", "ACTIVE", 2),
    ("containerd.services.snapshots.v1.Kind", "COMMITTED", 3),
]

METHODS: list[MethodRow] = [
    *_methods(
        _VERSION,
        "Version",
        [
            ("Version", "google.protobuf.Empty", ".VersionResponse"),
        ],
    ),
    *_methods(
        _NAMESPACES,
        "Namespaces",
        [
            ("Get", ".GetNamespaceRequest", ".GetNamespaceResponse"),
            ("List", ".ListNamespacesRequest", ".ListNamespacesResponse"),
            ("Create", ".CreateNamespaceRequest", ".CreateNamespaceResponse"),
            ("Update", ".UpdateNamespaceRequest", ".UpdateNamespaceResponse"),
            ("Delete", ".DeleteNamespaceRequest", "google.protobuf.Empty"),
        ],
    ),
    *_methods(
        _INTROSPECTION,
        "Introspection",
        [
            ("Plugins", ".PluginsRequest", ".PluginsResponse"),
            ("Server", "google.protobuf.Empty", ".ServerResponse"),
            ("PluginInfo", ".PluginInfoRequest", ".PluginInfoResponse"),
        ],
    ),
    *_methods(
        _CONTAINERS,
        "Containers",
        [
            ("Get", ".GetContainerRequest", ".GetContainerResponse"),
            ("List", ".ListContainersRequest", ".ListContainersResponse"),
            ("ListStream", ".ListContainersRequest", "stream .ListContainerMessage"),
            ("Create", ".CreateContainerRequest", ".CreateContainerResponse"),
            ("Update", ".UpdateContainerRequest", ".UpdateContainerResponse"),
            ("Delete", ".DeleteContainerRequest", "google.protobuf.Empty"),
        ],
    ),
    *_methods(
        _IMAGES,
        "Images",
        [
            ("Get", ".GetImageRequest", ".GetImageResponse"),
            ("List", ".ListImagesRequest", ".ListImagesResponse"),
            ("Create", ".CreateImageRequest", ".CreateImageResponse"),
            ("Update", ".UpdateImageRequest", ".UpdateImageResponse"),
            ("Delete", ".DeleteImageRequest", "google.protobuf.Empty"),
        ],
    ),
    *_methods(
        _CONTENT,
        "Content",
        [
            ("Info", ".InfoRequest", ".InfoResponse"),
            ("Update", ".UpdateRequest", ".UpdateResponse"),
            ("List", ".ListContentRequest", "stream .ListContentResponse"),
            ("Delete", ".DeleteContentRequest", "google.protobuf.Empty"),
            ("Read", ".ReadContentRequest", "stream .ReadContentResponse"),
            ("Status", ".StatusRequest", ".StatusResponse"),
            ("ListStatuses", ".ListStatusesRequest", ".ListStatusesResponse"),
            ("Write", "stream .WriteContentRequest", "stream .WriteContentResponse"),
            ("Abort", ".AbortRequest", "google.protobuf.Empty"),
        ],
    ),
    *_methods(
        _LEASES,
        "Leases",
        [
            ("Create", ".CreateRequest", ".CreateResponse"),
            ("Delete", ".DeleteRequest", "google.protobuf.Empty"),
            ("List", ".ListRequest", ".ListResponse"),
            ("AddResource", ".AddResourceRequest", "google.protobuf.Empty"),
            ("DeleteResource", ".DeleteResourceRequest", "google.protobuf.Empty"),
            ("ListResources", ".ListResourcesRequest", ".ListResourcesResponse"),
        ],
    ),
    *_methods(
        _DIFF,
        "Diff",
        [
            ("Apply", ".ApplyRequest", ".ApplyResponse"),
            ("Diff", ".DiffRequest", ".DiffResponse"),
        ],
    ),
    *_methods(
        _SNAPSHOTS,
        "Snapshots",
        [
            ("Prepare", ".PrepareSnapshotRequest", ".PrepareSnapshotResponse"),
            ("View", ".ViewSnapshotRequest", ".ViewSnapshotResponse"),
            ("Mounts", ".MountsRequest", ".MountsResponse"),
            ("Commit", ".CommitSnapshotRequest", "google.protobuf.Empty"),
            ("Remove", ".RemoveSnapshotRequest", "google.protobuf.Empty"),
            ("Stat", ".StatSnapshotRequest", ".StatSnapshotResponse"),
            ("Update", ".UpdateSnapshotRequest", ".UpdateSnapshotResponse"),
            ("List", ".ListSnapshotsRequest", "stream .ListSnapshotsResponse"),
            ("Usage", ".UsageRequest", ".UsageResponse"),
            ("Cleanup", ".CleanupRequest", "google.protobuf.Empty"),
        ],
    ),
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


def test_fields_match_upstream() -> None:
    assert check_fields(FIELDS) == []


def test_enums_match_upstream() -> None:
    assert check_enums(ENUMS) == []


def test_methods_match_upstream() -> None:
    assert check_methods(METHODS) == []


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
    assert messages == {row[0] for row in FIELDS}
    assert enums == {row[0] for row in ENUMS}
    assert services == {row[0] for row in METHODS}


def test_packages() -> None:
    """Each file sits in the package containerd uses for it."""
    packages = {_file(m).package for m in MODULES}
    assert packages == {
        "containerd.types",
        "containerd.services.version.v1",
        "containerd.services.namespaces.v1",
        "containerd.services.introspection.v1",
        "containerd.services.containers.v1",
        "containerd.services.images.v1",
        "containerd.services.content.v1",
        "containerd.services.leases.v1",
        "containerd.services.diff.v1",
        "containerd.services.snapshots.v1",
    }


def _round_trip(message: Message, wire: bytes) -> None:
    """Check ``message`` encodes to exactly ``wire`` and decodes back unchanged."""
    assert message.SerializeToString(deterministic=True) == wire
    parsed = type(message)()
    parsed.ParseFromString(wire)
    assert parsed == message


def test_mount_bytes() -> None:
    mount = mount_pb2.Mount(type="bind", source="/a", options=["ro"])
    _round_trip(mount, b"\x0a\x04bind\x12\x02/a\x22\x02ro")


def test_descriptor_annotations_use_field_5() -> None:
    desc = descriptor_pb2.Descriptor(media_type="m", size=1, annotations={"k": "v"})
    _round_trip(desc, b"\x0a\x01m\x18\x01\x2a\x06\x0a\x01k\x12\x01v")


def test_namespace_with_labels_bytes() -> None:
    ns = namespace_pb2.Namespace(name="k8s.io", labels={"a": "b"})
    _round_trip(ns, b"\x0a\x06k8s.io\x12\x06\x0a\x01a\x12\x01b")


def test_write_content_request_bytes() -> None:
    req = content_pb2.WriteContentRequest(
        action=content_pb2.COMMIT, ref="r", total=5, offset=300, data=b"\x00\x01"
    )
    # offset 300 is the two-byte varint 0xac 0x02.
    _round_trip(req, b"\x08\x02\x12\x01r\x18\x05\x28\xac\x02\x32\x02\x00\x01")


def test_sandboxer_is_field_10() -> None:
    sandbox = sandbox_pb2.Sandbox(sandbox_id="s", sandboxer="shim")
    _round_trip(sandbox, b"\x0a\x01s\x52\x04shim")


def test_diff_response_uses_field_3() -> None:
    resp = diff_pb2.DiffResponse(diff=descriptor_pb2.Descriptor(digest="d"))
    _round_trip(resp, b"\x1a\x03\x12\x01d")


def test_delete_image_target_has_presence() -> None:
    req = images_pb2.DeleteImageRequest(name="i", sync=True)
    assert not req.HasField("target")
    req.target.SetInParent()
    assert req.HasField("target")
    _round_trip(req, b"\x0a\x01i\x10\x01\x1a\x00")


def test_snapshot_info_kind_bytes() -> None:
    info = snapshots_pb2.Info(name="n", kind=snapshots_pb2.COMMITTED)
    _round_trip(info, b"\x0a\x01n\x18\x03")


def test_server_response_uint64_bytes() -> None:
    resp = introspection_pb2.ServerResponse(uuid="u", pid=1, pidns=4026531836)
    # 4026531836 = 0xeffffffc as a five-byte varint.
    _round_trip(resp, b"\x0a\x01u\x10\x01\x18\xfc\xff\xff\xff\x0e")


def test_envelope_bytes() -> None:
    env = event_pb2.Envelope(timestamp=Timestamp(seconds=1), namespace="n", topic="/t")
    _round_trip(env, b"\x0a\x02\x08\x01\x12\x01n\x1a\x02/t")
