"""``wharf containers``: ctr's output formats and every command against the real services."""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.field_mask_pb2 import FieldMask

from tests.runtime import ctr_services
from tests.runtime.ctr_services import OCI_MANIFEST, Served, create_image, digest, put_image_manifest, serve
from wharfd.api.services.containers.v1 import containers_pb2 as pb
from wharfd.api.services.containers.v1 import containers_pb2_grpc as pb_grpc
from wharfd.api.services.content.v1 import content_pb2 as cpb
from wharfd.api.services.snapshots.v1 import snapshots_pb2 as spb
from wharfd.api.services.tasks.v1 import tasks_pb2 as tpb
from wharfd.api.services.tasks.v1 import tasks_pb2_grpc as tpb_grpc
from wharfd.api.types.task import task_pb2
from wharfd.runtime import plugin
from wharfd.runtime.ctr import commands, main
from wharfd.runtime.ctr import containers as cli
from wharfd.runtime.ctr.snapshots import SNAPSHOTTER_ENV
from wharfd.runtime.oci import spec as oci_spec
from wharfd.runtime.services import boundary
from wharfd.runtime.services import plugins as api

RUNC = "io.containerd.runc.v2"
WHARF = "io.containerd.wharf.v2"  # the CLI's default runtime
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?Z")


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(commands.SUPPRESS_DEPRECATIONS_ENV, "true")
    monkeypatch.setenv(SNAPSHOTTER_ENV, "native")
    # The services as the daemon runs them, with the Containers service added.
    monkeypatch.setattr(ctr_services, "REGISTRATIONS", (*ctr_services.REGISTRATIONS, api.CONTAINERS_PLUGIN))


class FakeTasks(tpb_grpc.TasksServicer):
    """A Tasks service whose one task has the status a test sets; records deletes."""

    def __init__(self) -> None:
        self.status: task_pb2.Status | None = None
        self.deleted: list[str] = []

    @boundary.unary
    async def Get(self, request: tpb.GetRequest, context: Any) -> tpb.GetResponse:
        if self.status is None:
            from wharfd.runtime import errors

            raise errors.NotFound(f"no running task found: task {request.container_id} not found")
        return tpb.GetResponse(
            process=task_pb2.Process(container_id=request.container_id, status=self.status)
        )

    @boundary.unary
    async def Delete(self, request: tpb.DeleteTaskRequest, context: Any) -> tpb.DeleteResponse:
        self.deleted.append(request.container_id)
        self.status = None
        return tpb.DeleteResponse()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serve(tmp_path) as s:
        yield s


def parse(*argv: str) -> argparse.Namespace:
    return main.build_parser().parse_args(argv)


def add(served: Served, cid: str, **fields: Any) -> pb.Container:
    """Create a container through the API, with a small hand-made spec."""
    spec = oci_spec.to_any({"ociVersion": "1.1.0", "process": {"cwd": "/", "user": {"uid": 0, "gid": 0}}})
    msg = pb.Container(id=cid, runtime=pb.Container.Runtime(name=RUNC), spec=spec, **fields)
    with served.client() as client:
        created: pb.Container = (
            cli.containers_stub(client).Create(pb.CreateContainerRequest(container=msg)).container
        )
        return created


# --- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "handler"),
    [
        (["containers", "ls"], "_list"),
        (["c", "list", "-q", "labels.a==1"], "_list"),
        (["container", "info", "--spec", "x"], "_info"),
        (["c", "rm", "a", "b"], "_delete"),
        (["c", "del", "a"], "_delete"),
        (["c", "remove", "--keep-snapshot", "a"], "_delete"),
        (["c", "delete", "a"], "_delete"),
        (["c", "label", "a", "k=v"], "_label"),
        (["c", "create", "--env", "A=1", "img", "id", "sh", "-c", "echo hi"], "_create"),
    ],
)
def test_commands_and_aliases(argv: list[str], handler: str) -> None:
    assert parse(*argv).func is getattr(cli, handler)


def test_create_keeps_flags_after_the_id_as_the_command() -> None:
    args = parse("c", "create", "-t", "--label", "x=1", "img", "c1", "ls", "-l", "--color")
    assert (args.image, args.id, args.args, args.tty, args.label) == (
        "img",
        "c1",
        ["ls", "-l", "--color"],
        True,
        ["x=1"],
    )
    assert args.runtime == WHARF


def test_missing_arguments_are_reported(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert served.wharf("c", "info") == 1
    assert served.wharf("c", "label") == 1
    assert served.wharf("c", "rm") == 1
    assert served.wharf("c", "create") == 1
    assert served.wharf("c", "create", "img") == 1
    assert capsys.readouterr().err.splitlines() == [
        "wharf: container id must be provided",
        "wharf: container id must be provided",
        "wharf: must specify at least one container to delete",
        "wharf: image ref must be provided",
        "wharf: container id must be provided",
    ]


# --- output formats -----------------------------------------------------------------------------


def test_container_json_in_go_field_order() -> None:
    spec = {"process": {"args": ["sh"], "user": {"uid": 0, "gid": 0}, "cwd": "/"}, "ociVersion": "1.1.0",
            "annotations": {"z": "1", "a": "2"}, "x-unknown": True}  # fmt: skip
    created = timestamp_pb2.Timestamp(seconds=1700000000, nanos=120000000)
    c = pb.Container(
        id="c1",
        runtime=pb.Container.Runtime(name=RUNC, options=any_pb2.Any(type_url="containerd.runc.v1.Options")),
        spec=oci_spec.to_any(spec),
        created_at=created,
        extensions={"b": any_pb2.Any(type_url="x", value=b"\x01"), "a": any_pb2.Any()},
    )
    out = cli.container_json(c)
    assert list(out) == [
        "ID", "Labels", "Image", "Runtime", "SnapshotKey", "Snapshotter", "CreatedAt", "UpdatedAt",
        "Extensions", "SandboxID", "Spec",
    ]  # fmt: skip
    assert out["Labels"] is None and out["Runtime"] == {
        "Name": RUNC,
        "Options": {"type_url": "containerd.runc.v1.Options"},
    }
    assert (out["CreatedAt"], out["UpdatedAt"]) == ("2023-11-14T22:13:20.12Z", cli.ZERO_TIME)
    assert out["Extensions"] == {"a": {}, "b": {"type_url": "x", "value": "AQ=="}}
    assert list(out["Extensions"]) == ["a", "b"]
    assert list(out["Spec"]) == ["ociVersion", "process", "annotations", "x-unknown"]
    assert list(out["Spec"]["process"]) == ["user", "args", "cwd"]
    assert list(out["Spec"]["annotations"]) == ["a", "z"]


def test_a_spec_of_another_type_is_shown_as_an_any() -> None:
    other = any_pb2.Any(type_url="example.com/Spec", value=b"\x00")
    c = pb.Container(id="c", runtime=pb.Container.Runtime(name=RUNC), spec=other)
    assert cli.container_json(c)["Spec"] == {"type_url": "example.com/Spec", "value": "AA=="}
    with pytest.raises(commands.CommandError, match="not an OCI runtime spec"):
        cli.spec_json(other, strict=True)


def test_go_status_text() -> None:
    running = task_pb2.Process(status=task_pb2.RUNNING)
    assert cli._go_status(running) == "{running 0 0001-01-01 00:00:00 +0000 UTC}"
    paused = task_pb2.Process(
        status=task_pb2.PAUSED, exit_status=3, exited_at=timestamp_pb2.Timestamp(seconds=1, nanos=5)
    )
    assert cli._go_status(paused) == "{paused 3 1970-01-01 00:00:01.000000005 +0000 UTC}"


# --- against the services -----------------------------------------------------------------------


def test_list_quiet_and_filters(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    add(served, "web-1", image="docker.io/library/nginx:latest", labels={"app": "web"})
    add(served, "b")
    assert served.wharf("containers", "ls") == 0
    assert capsys.readouterr().out == (
        "CONTAINER    IMAGE                             RUNTIME                  \n"
        "b            -                                 io.containerd.runc.v2    \n"
        "web-1        docker.io/library/nginx:latest    io.containerd.runc.v2    \n"
    )
    assert served.wharf("c", "ls", "-q") == 0
    assert capsys.readouterr().out == "b\nweb-1\n"
    assert served.wharf("c", "ls", "-q", "labels.app==web") == 0
    assert capsys.readouterr().out == "web-1\n"
    assert served.wharf("c", "ls", "-q", "--", "labels.==") == 1
    assert capsys.readouterr().err.startswith("wharf: filter")


class OnlyList(pb_grpc.ContainersServicer):
    """A Containers service from before ListStream: only the unary List."""

    @boundary.unary
    async def List(self, request: pb.ListContainersRequest, context: Any) -> pb.ListContainersResponse:
        return pb.ListContainersResponse(
            containers=[pb.Container(id="only", runtime=pb.Container.Runtime(name=RUNC))]
        )


boundary.fill_unimplemented(OnlyList, pb.DESCRIPTOR.services_by_name["Containers"])


def test_list_falls_back_to_list_without_list_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    without = tuple(r for r in ctr_services.REGISTRATIONS if r is not api.CONTAINERS_PLUGIN)
    monkeypatch.setattr(ctr_services, "REGISTRATIONS", without)
    with serve(
        tmp_path, extra=[lambda server: pb_grpc.add_ContainersServicer_to_server(OnlyList(), server)]
    ) as s:
        assert s.wharf("c", "ls") == 0
    assert (
        capsys.readouterr().out
        == "CONTAINER    IMAGE    RUNTIME                  \nonly         -        io.containerd.runc.v2    \n"
    )


def test_info_prints_go_json(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    add(served, "c1", image="img", labels={"b": "2", "a": "<1>"}, snapshotter="native", snapshot_key="c1")
    assert served.wharf("c", "info", "c1") == 0
    out = capsys.readouterr().out
    info = json.loads(out)
    assert info["ID"] == "c1" and info["Labels"] == {"a": "<1>", "b": "2"}
    assert info["Runtime"] == {"Name": RUNC, "Options": None}
    assert STAMP.fullmatch(info["CreatedAt"]) and STAMP.fullmatch(info["UpdatedAt"])
    assert info["Spec"] == {"ociVersion": "1.1.0", "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/"}}
    assert out.startswith('{\n    "ID": "c1",\n    "Labels": {\n        "a": "\\u003c1\\u003e",\n')
    assert served.wharf("c", "info", "--spec", "c1") == 0
    assert json.loads(capsys.readouterr().out) == info["Spec"]
    assert served.wharf("c", "info", "nope") == 1
    assert capsys.readouterr().err == 'wharf: container "nope" in namespace "default": not found\n'


def test_label_sets_clears_and_prints(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    add(served, "c1", labels={"keep": "1"})
    assert served.wharf("c", "label", "c1", "x=1", "y") == 0
    assert capsys.readouterr().out == "keep=1,x=1,y=true\n"
    assert served.wharf("c", "label", "c1", "x=") == 0
    assert capsys.readouterr().out == "keep=1,y=true\n"
    assert served.wharf("c", "label", "c1") == 0  # nothing to change: show them
    assert capsys.readouterr().out == "keep=1,y=true\n"
    assert served.wharf("c", "label", "nope", "a=b") == 1
    assert "not found" in capsys.readouterr().err


def _prepare(served: Served, key: str, *, root: bool = True) -> None:
    # A GC root, as ctr's snapshots prepare makes it: deleting a container schedules a collection.
    labels = {"containerd.io/gc.root": "2024-01-01T00:00:00Z"} if root else {}
    with served.client() as client:
        client.snapshots.Prepare(spb.PrepareSnapshotRequest(snapshotter="native", key=key, labels=labels))


def _snapshots(served: Served) -> list[str]:
    with served.client() as client:
        return sorted(
            i.name
            for m in client.snapshots.List(spb.ListSnapshotsRequest(snapshotter="native"))
            for i in m.info
        )


def test_delete_removes_the_snapshot_unless_kept(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    for key in ("c1", "c2"):
        _prepare(served, key)
        add(served, key, snapshotter="native", snapshot_key=key)
    add(served, "gone-snapshot", snapshotter="native", snapshot_key="never-prepared")
    # No Tasks service at all: Unimplemented means there is no task to stop.
    assert served.wharf("c", "rm", "c1", "gone-snapshot") == 0
    assert served.wharf("c", "del", "--keep-snapshot", "c2") == 0
    assert _snapshots(served) == ["c2"]
    assert served.wharf("c", "ls", "-q") == 0
    assert capsys.readouterr().out == ""


def test_delete_keeps_going_and_fails_with_the_first_error(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    add(served, "ok")
    assert served.wharf("c", "rm", "missing", "ok") == 1
    err = capsys.readouterr().err
    assert "failed to delete container missing: " in err
    assert err.endswith('wharf: container "missing" in namespace "default": not found\n')
    with served.client() as client:
        assert list(cli.list_containers(client)) == []


def test_delete_consults_the_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tasks = FakeTasks()
    with serve(
        tmp_path, extra=[lambda server: tpb_grpc.add_TasksServicer_to_server(tasks, server)]
    ) as served:
        _prepare(served, "c1")
        add(served, "c1", snapshotter="native", snapshot_key="c1")
        tasks.status = task_pb2.RUNNING
        assert served.wharf("c", "rm", "c1") == 1
        assert capsys.readouterr().err.endswith(
            "wharf: cannot delete a non stopped container: {running 0 0001-01-01 00:00:00 +0000 UTC}\n"
        )
        assert _snapshots(served) == ["c1"] and tasks.deleted == []
        tasks.status = task_pb2.STOPPED
        assert served.wharf("c", "rm", "c1") == 0
        assert tasks.deleted == ["c1"] and _snapshots(served) == []


def test_deleted_container_no_longer_keeps_its_snapshot_from_gc(served: Served) -> None:
    _prepare(served, "rootfs", root=False)
    add(served, "c1", snapshotter="native", snapshot_key="rootfs")
    collector = served.plugins.instance(plugin.GC)
    served.run(collector.collect())
    assert _snapshots(served) == ["rootfs"]  # held by the container
    assert served.wharf("c", "rm", "--keep-snapshot", "c1") == 0
    served.run(collector.collect())
    assert _snapshots(served) == []


# --- create from an unpacked image (needs root: it mounts the image rootfs) ------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting the image rootfs needs root")
DIFF_ID = "sha256:" + "5e" * 32  # one layer: the chain id is the diff id


def _unpacked_image(
    served: Served, name: str, config: dict[str, Any], *, unpack: bool = True, diff_id: str = DIFF_ID
) -> None:
    """An image whose (single) layer is already a committed snapshot, as a pull with unpack leaves it."""
    arch = plugin.HOST_PLATFORM.split("/", 1)[1]
    document = {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    cfg = json.dumps(document | {"config": config}).encode()
    with served.client() as client:
        if unpack:
            request = spb.PrepareSnapshotRequest(snapshotter="native", key="extract")
            etc = Path(client.snapshots.Prepare(request).mounts[0].source) / "etc"
            etc.mkdir()
            (etc / "passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
            (etc / "group").write_text("root:x:0:\napp:x:1000:\nextra:x:2000:app\n")
            commit = spb.CommitSnapshotRequest(snapshotter="native", name=diff_id, key="extract")
            client.snapshots.Commit(commit)
        body = put_image_manifest(client, cfg, [b"layer"], store_layers=False)
        # As unpacking labels the config: the image then keeps its rootfs snapshot from GC.
        gc_ref = "containerd.io/gc.ref.snapshot.native"
        info = cpb.Info(digest=digest(cfg), labels={gc_ref: diff_id})
        client.content.Update(cpb.UpdateRequest(info=info, update_mask=FieldMask(paths=[f"labels.{gc_ref}"])))
        create_image(client, name, OCI_MANIFEST, body, labels={"from-image-record": "1"})


@needs_root
def test_create_builds_the_spec_from_the_image(served: Served) -> None:
    config = {
        "Env": ["PATH=/bin", "A=image"],
        "Entrypoint": ["/entry"],
        "Cmd": ["default"],
        "User": "app",
        "WorkingDir": "/work",
        "StopSignal": "SIGQUIT",
        "Labels": {"org.example": "yes", "containerd.io/gc.root": "sneaky"},
    }
    _unpacked_image(served, "example.com/app:1", config)
    argv = ["c", "create", "--env", "A=flag", "--label", "l=1", "--hostname", "box", "--memory-limit", "1048576",
            "--cap-add", "CAP_NET_ADMIN", "--read-only", "example.com/app:1", "c1"]  # fmt: skip
    assert served.wharf(*argv) == 0
    with served.client() as client:
        c = cli.containers_stub(client).Get(pb.GetContainerRequest(id="c1")).container
        info = client.snapshots.Stat(spb.StatSnapshotRequest(snapshotter="native", key="c1")).info
    assert (c.image, c.snapshotter, c.snapshot_key, c.runtime.name) == (
        "example.com/app:1",
        "native",
        "c1",
        WHARF,
    )
    assert c.runtime.options.type_url == "containerd.runc.v1.Options" and c.runtime.options.value == b""
    assert dict(c.labels) == {
        "org.example": "yes",
        "from-image-record": "1",
        "l": "1",
        "io.containerd.image.config.stop-signal": "SIGQUIT",
    }
    assert info.parent == DIFF_ID and info.kind == spb.ACTIVE
    spec = oci_spec.from_any(c.spec)
    process = spec["process"]
    assert process["args"] == ["/entry", "default"] and process["cwd"] == "/work"
    assert process["env"] == ["PATH=/bin", "A=flag"]
    assert process["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [1000, 2000]}
    assert "CAP_NET_ADMIN" in process["capabilities"]["bounding"]
    assert spec["hostname"] == "box" and spec["root"]["readonly"] is True
    assert spec["linux"]["resources"]["memory"] == {"limit": 1048576}
    assert spec["linux"]["cgroupsPath"] == "/default/c1" and spec["annotations"] == {"l": "1"}
    assert _snapshots(served) == sorted([DIFF_ID, "c1"])  # the temporary view is gone
    assert "wharf-rootfs-" not in Path("/proc/self/mountinfo").read_text()


@needs_root
def test_create_with_a_command_and_user_flag(served: Served) -> None:
    _unpacked_image(served, "example.com/app:1", {"Entrypoint": ["/entry"], "Cmd": ["x"]})
    assert (
        served.wharf(
            "c",
            "create",
            "-u",
            "app:extra",
            "--cwd",
            "/tmp",
            "-t",
            "example.com/app:1",
            "c1",
            "sh",
            "-c",
            "id",
        )
        == 0
    )
    with served.client() as client:
        c = cli.containers_stub(client).Get(pb.GetContainerRequest(id="c1")).container
    process = oci_spec.from_any(c.spec)["process"]
    assert process["args"] == ["sh", "-c", "id"]  # ctr: the command replaces Entrypoint too
    assert process["user"]["uid"] == 1000 and process["user"]["gid"] == 2000
    assert process["cwd"] == "/tmp" and process["terminal"] is True
    assert dict(c.labels)["io.containerd.image.config.stop-signal"] == "SIGTERM"


@needs_root
def test_create_failures_leave_nothing_behind(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    _unpacked_image(served, "example.com/app:1", {"User": "nobody-here"})
    assert served.wharf("c", "create", "example.com/app:1", "c1") == 1
    assert 'user "nobody-here"' in capsys.readouterr().err
    assert served.wharf("c", "create", "missing:1", "c2") == 1
    assert "not found" in capsys.readouterr().err
    _unpacked_image(served, "example.com/packed:1", {}, unpack=False, diff_id="sha256:" + "77" * 32)
    assert served.wharf("c", "create", "example.com/packed:1", "c3") == 1
    assert capsys.readouterr().err == (
        "wharf: image example.com/packed:1 is not unpacked in snapshotter native (pull it again to unpack it)\n"
    )
    add(served, "taken")
    _unpacked_image(served, "example.com/ok:1", {}, unpack=False)
    assert served.wharf("c", "create", "example.com/ok:1", "taken") == 1  # already unpacked: same chain id
    assert 'container "taken": already exists' in capsys.readouterr().err
    assert _snapshots(served) == [DIFF_ID]
    with served.client() as client:
        assert [c.id for c in cli.list_containers(client)] == ["taken"]
