"""The event exchange: topics, filters, fan-out and the drop policy."""

from __future__ import annotations

import asyncio

import pytest

from wharfd.api.events import namespace_pb2, task_pb2
from wharfd.runtime import errors, events


def test_topic_validation() -> None:
    assert events.validate_topic("/tasks/exit") == "/tasks/exit"
    for bad in ("tasks/exit", "/", "/tasks/", "/a b", ""):
        with pytest.raises(errors.InvalidArgument):
            events.validate_topic(bad)


def test_pack_uses_bare_type_url() -> None:
    assert events.pack(task_pb2.TaskOOM(container_id="x")).type_url == "containerd.events.TaskOOM"


async def _scenario() -> None:
    exchange = events.Exchange()
    async with (
        exchange.subscribe(['topic~="/tasks/.*"', "namespace==b"]) as tasks_or_b,
        exchange.subscribe(["event.exit_status==3"]) as by_field,
        exchange.subscribe() as everything,
    ):
        await exchange.publish(
            "/tasks/exit", task_pb2.TaskExit(container_id="c", exit_status=3), namespace="a"
        )
        await exchange.publish("/namespaces/create", namespace_pb2.NamespaceCreate(name="b"), namespace="b")
        await exchange.publish("/namespaces/create", namespace_pb2.NamespaceCreate(name="c"), namespace="c")
        assert [e.topic for e in _drain(tasks_or_b)] == ["/tasks/exit", "/namespaces/create"]
        assert [e.namespace for e in _drain(by_field)] == ["a"]
        assert len(_drain(everything)) == 3
    assert exchange.subscribers == 0


def _drain(sub: events.Subscription) -> list[events.event_pb2.Envelope]:
    out = []
    while not sub.queue.empty():
        out.append(sub.queue.get_nowait())
    return out


def test_fan_out_with_filters() -> None:
    asyncio.run(_scenario())


def test_slow_subscriber_drops_oldest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "QUEUE_SIZE", 3)

    async def run() -> None:
        exchange = events.Exchange()
        async with exchange.subscribe() as sub:
            for i in range(5):
                await exchange.publish("/tasks/start", task_pb2.TaskStart(pid=i), namespace="n")
            assert sub.dropped == 2
            pids = [task_pb2.TaskStart.FromString(e.event.value).pid for e in _drain(sub)]
            assert pids == [2, 3, 4]

    asyncio.run(run())


def test_publish_needs_a_namespace() -> None:
    async def run() -> None:
        with pytest.raises(errors.FailedPrecondition):
            await events.Exchange().publish("/tasks/start", task_pb2.TaskStart())

    asyncio.run(run())
