"""``wharf events``: Go's time text and JSON of events, and a live subscription ended by SIGINT."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.protobuf import any_pb2, timestamp_pb2

from tests.runtime.ctr_services import serve
from wharfd.api.events import container_pb2, namespace_pb2, task_pb2
from wharfd.api.types import event_pb2, mount_pb2
from wharfd.runtime import events as exchange_module
from wharfd.runtime import plugin
from wharfd.runtime.ctr import events as cli
from wharfd.runtime.ctr import main

WHARF = str(Path(sys.executable).parent / "wharf")


def stamp(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def test_parsing() -> None:
    args = main.build_parser().parse_args(["event", 'topic=="/tasks/exit"', "namespace==k8s.io"])
    assert args.func.__name__ == "_events" and args.filters == ['topic=="/tasks/exit"', "namespace==k8s.io"]


@pytest.mark.parametrize(
    ("seconds", "nanos", "text"),
    [
        (1714557600, 123456789, "2024-05-01 10:00:00.123456789 +0000 UTC"),
        (1714557600, 120000000, "2024-05-01 10:00:00.12 +0000 UTC"),
        (1714557600, 0, "2024-05-01 10:00:00 +0000 UTC"),
        (0, 0, "1970-01-01 00:00:00 +0000 UTC"),
    ],
)
def test_go_time(seconds: int, nanos: int, text: str) -> None:
    assert cli.go_time(stamp(seconds, nanos)) == text


def test_go_json_as_ctr_prints_namespace_events() -> None:
    assert cli.go_json(namespace_pb2.NamespaceCreate(name="evtest")) == '{"name":"evtest"}'
    labelled = namespace_pb2.NamespaceCreate(name="evtest", labels={"k": "v", "a": "b"})
    assert cli.go_json(labelled) == '{"name":"evtest","labels":{"a":"b","k":"v"}}'
    assert cli.go_json(namespace_pb2.NamespaceDelete()) == "{}"


def test_go_json_nested_repeated_and_zero_values() -> None:
    create = task_pb2.TaskCreate(
        container_id="c1",
        rootfs=[mount_pb2.Mount(type="overlay", source="overlay", options=["lowerdir=/a", "upperdir=/b"])],
        io=task_pb2.TaskIO(stdin="/in", terminal=True),
        pid=42,
    )
    assert cli.go_json(create) == (
        '{"container_id":"c1","rootfs":[{"type":"overlay","source":"overlay",'
        '"options":["lowerdir=/a","upperdir=/b"]}],"io":{"stdin":"/in","terminal":true},"pid":42}'
    )
    exited = task_pb2.TaskExit(container_id="c1", pid=42, exit_status=137, exited_at=stamp(1714557600, 5))
    assert cli.go_json(exited) == (
        '{"container_id":"c1","pid":42,"exit_status":137,"exited_at":{"seconds":1714557600,"nanos":5}}'
    )
    # A set but zero Timestamp is a non-nil pointer: "{}", not omitted.
    assert cli.go_json(task_pb2.TaskExit(exited_at=stamp(0))) == '{"exited_at":{}}'


def test_go_json_any_bytes_and_html_escapes() -> None:
    options = any_pb2.Any(type_url="containerd.runc.v1.Options", value=b"\x08\x01")
    event = container_pb2.ContainerCreate(
        id="a<b>&c",
        runtime=container_pb2.ContainerCreate.Runtime(name="io.containerd.runc.v2", options=options),
    )
    assert cli.go_json(event) == (
        '{"id":"a\\u003cb\\u003e\\u0026c","runtime":{"name":"io.containerd.runc.v2",'
        '"options":{"type_url":"containerd.runc.v1.Options","value":"CAE="}}}'
    )


def test_format_envelope() -> None:
    event = exchange_module.pack(namespace_pb2.NamespaceCreate(name="evtest", labels={"k": "v"}))
    envelope = event_pb2.Envelope(
        timestamp=stamp(1714557600, 1000), namespace="evtest", topic="/namespaces/create", event=event
    )
    assert cli.format_envelope(envelope) == (
        '2024-05-01 10:00:00.000001 +0000 UTC evtest /namespaces/create {"name":"evtest","labels":{"k":"v"}}'
    )
    # typeurl also resolves URLs with a host part.
    prefixed = any_pb2.Any(type_url="type.googleapis.com/containerd.events.NamespaceDelete", value=b"\n\x01x")
    envelope.event.CopyFrom(prefixed)
    assert cli.format_envelope(envelope).endswith(' {"name":"x"}')  # type: ignore[union-attr]
    # No event at all: Println still prints the empty operand after a space.
    envelope.ClearField("event")
    assert cli.format_envelope(envelope) == "2024-05-01 10:00:00.000001 +0000 UTC evtest /namespaces/create "


def test_unknown_event_type_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    envelope = event_pb2.Envelope(topic="/x", event=any_pb2.Any(type_url="example.com/Nope", value=b""))
    with caplog.at_level(logging.WARNING, logger="wharfd.ctr"):
        assert cli.format_envelope(envelope) is None
    assert "cannot unmarshal an event from Any" in caplog.text and "example.com/Nope" in caplog.text


def test_live_events_until_sigint(tmp_path: Path) -> None:
    with serve(tmp_path) as served:
        exchange = served.plugins.instance(plugin.EVENT)
        proc = subprocess.Popen(
            [WHARF, "-a", served.address, "events", 'topic~="/namespaces/"'],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 20
            while exchange.subscribers == 0:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the CLI never subscribed"
                time.sleep(0.05)
            assert served.wharf("namespaces", "create", "evtest", "k=v") == 0
            assert served.wharf("snapshots", "--snapshotter", "native", "prepare", "s") == 0  # filtered out
            assert served.wharf("namespaces", "rm", "evtest") == 0
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 0 and err == ""
    lines = out.splitlines()
    assert [line.split(" ", 6)[5:] for line in lines] == [
        ["/namespaces/create", '{"name":"evtest","labels":{"k":"v"}}'],
        ["/namespaces/delete", '{"name":"evtest"}'],
    ]
    assert all(line.split(" ")[2:5] == ["+0000", "UTC", "evtest"] for line in lines)
