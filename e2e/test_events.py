"""Events through the real daemon: object events on Subscribe, and shim-style ttrpc Forward."""

from __future__ import annotations

import socket
import struct
import threading

import grpc

from e2e.daemon import Daemon
from wharfd.api.events import namespace_pb2 as ns_events
from wharfd.api.events import task_pb2 as task_events
from wharfd.api.services.events.v1 import events_pb2 as pb
from wharfd.api.services.events.v1 import events_pb2_grpc as pb_grpc
from wharfd.api.services.namespaces.v1 import namespace_pb2 as nspb
from wharfd.api.services.namespaces.v1 import namespace_pb2_grpc as nspb_grpc
from wharfd.api.services.ttrpc.events.v1 import events_pb2 as ttrpc_events
from wharfd.api.ttrpc import request_pb2
from wharfd.api.types import event_pb2


def _collect(
    daemon: Daemon, filters: list[str], count: int, out: list[event_pb2.Envelope]
) -> threading.Thread:
    ready = threading.Event()

    def run() -> None:
        with daemon.channel() as ch:
            stream = pb_grpc.EventsStub(ch).Subscribe(pb.SubscribeRequest(filters=filters), timeout=20)
            ready.set()
            for envelope in stream:
                out.append(envelope)
                if len(out) == count:
                    stream.cancel()
                    return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(5)
    return thread


def test_namespace_events_reach_subscribers(daemon: Daemon) -> None:
    got: list[event_pb2.Envelope] = []
    thread = _collect(daemon, ['topic~="/namespaces/.*",namespace==evt'], 2, got)
    import time

    time.sleep(0.5)  # let the subscription register before publishing
    with daemon.channel() as ch:
        stub = nspb_grpc.NamespacesStub(ch)
        stub.Create(nspb.CreateNamespaceRequest(namespace=nspb.Namespace(name="other")), timeout=5)
        stub.Create(nspb.CreateNamespaceRequest(namespace=nspb.Namespace(name="evt")), timeout=5)
        stub.Delete(nspb.DeleteNamespaceRequest(name="evt"), timeout=5)
    thread.join(10)
    assert [e.topic for e in got] == ["/namespaces/create", "/namespaces/delete"]
    assert got[0].event.type_url == "containerd.events.NamespaceCreate"
    assert ns_events.NamespaceCreate.FromString(got[0].event.value).name == "evt"


def _ttrpc_call(path: str, service: str, method: str, payload: bytes) -> request_pb2.Response:
    request = request_pb2.Request(service=service, method=method, payload=payload)
    data = request.SerializeToString()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(struct.pack(">IIBB", len(data), 1, 1, 0) + data)
        header = sock.recv(10, socket.MSG_WAITALL)
        length, stream_id, type_, _flags = struct.unpack(">IIBB", header)
        assert (stream_id, type_) == (1, 2)
        body = sock.recv(length, socket.MSG_WAITALL) if length else b""
    return request_pb2.Response.FromString(body)


def test_ttrpc_forward_from_a_shim(daemon: Daemon) -> None:
    got: list[event_pb2.Envelope] = []
    thread = _collect(daemon, ["topic==/tasks/exit"], 1, got)
    import time

    time.sleep(0.5)
    exit_event = task_events.TaskExit(container_id="c1", id="c1", pid=42, exit_status=3)
    envelope = event_pb2.Envelope(namespace="default", topic="/tasks/exit")
    envelope.event.type_url = "containerd.events.TaskExit"
    envelope.event.value = exit_event.SerializeToString()
    envelope.timestamp.GetCurrentTime()
    response = _ttrpc_call(
        f"{daemon.address}.ttrpc",
        "containerd.services.events.ttrpc.v1.Events",
        "Forward",
        ttrpc_events.ForwardRequest(envelope=envelope).SerializeToString(),
    )
    assert response.status.code == 0, response.status.message
    thread.join(10)
    assert len(got) == 1
    assert task_events.TaskExit.FromString(got[0].event.value).exit_status == 3


def test_ttrpc_unknown_method_is_unimplemented(daemon: Daemon) -> None:
    response = _ttrpc_call(f"{daemon.address}.ttrpc", "containerd.task.v2.Task", "State", b"")
    assert response.status.code == grpc.StatusCode.UNIMPLEMENTED.value[0]


def test_publish_requires_namespace(daemon: Daemon) -> None:
    with daemon.channel() as ch:
        stub = pb_grpc.EventsStub(ch)
        try:
            stub.Publish(pb.PublishRequest(topic="/x/y"), timeout=5)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "namespace is required" in (exc.details() or "")
        else:
            raise AssertionError("Publish without a namespace succeeded")
