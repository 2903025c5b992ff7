"""GetContainerEvents' fan-out: many subscribers, slow ones drop (counted), held events, statuses."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri import events as cri_events
from wharfd.cri.events import CREATED, DELETED, STARTED, STOPPED, ContainerEvents
from wharfd.runtime import prom

DROPPED = "containerd_cri_container_events_dropped_total"


def dropped() -> float:
    prom.enable()  # as a daemon serving metrics does: the drop counter is then prometheus_client's
    return REGISTRY.get_sample_value(DROPPED) or 0.0


def event(id: str, kind: cri.ContainerEventType = CREATED) -> cri.ContainerEventResponse:
    return cri.ContainerEventResponse(container_id=id, container_event_type=kind, created_at=1)


async def take(sub: cri_events.Subscription, n: int) -> list[str]:
    out: list[str] = []
    async for ev in sub:
        out.append(ev.container_id)
        if len(out) == n:
            break
    return out


def test_every_subscriber_gets_every_event_in_order() -> None:
    async def main() -> tuple[list[str], list[str], list[str]]:
        broker = ContainerEvents()
        with broker.subscribe() as a, broker.subscribe() as b, broker.subscribe() as c:
            assert broker.subscribers == 3
            for i in range(50):
                broker.send(event(f"c{i}"))
            got = await asyncio.gather(take(a, 50), take(b, 50), take(c, 50))
        assert broker.subscribers == 0
        return got[0], got[1], got[2]

    a, b, c = asyncio.run(main())
    assert a == b == c == [f"c{i}" for i in range(50)]


def test_a_slow_subscriber_drops_and_counts_without_holding_up_the_others() -> None:
    async def main() -> tuple[list[str], int, float]:
        broker = ContainerEvents(buffer=4)
        before = dropped()
        with broker.subscribe() as slow, broker.subscribe() as fast:
            reader = asyncio.create_task(take(fast, 20))
            for i in range(20):
                broker.send(event(f"c{i}"))  # never waits, whatever the slow one does
                await asyncio.sleep(0)  # let the fast reader keep up
            got = await asyncio.wait_for(reader, 5)
            kept = await take(slow, 4)
        assert kept == ["c0", "c1", "c2", "c3"]
        return got, slow.dropped, dropped() - before

    got, slow_dropped, counted = asyncio.run(main())
    assert got == [f"c{i}" for i in range(20)]
    assert slow_dropped == 16
    assert counted == 16


def test_events_without_subscribers_are_held_then_given_to_the_first_one() -> None:
    async def main() -> list[str]:
        broker = ContainerEvents()
        broker.send(event("early-1"))
        broker.send(event("early-2", STARTED))
        with broker.subscribe() as sub:
            broker.send(event("late"))
            return await take(sub, 3)

    assert asyncio.run(main()) == ["early-1", "early-2", "late"]


def test_held_events_expire_and_count_as_dropped() -> None:
    async def main() -> tuple[list[str], float]:
        broker = ContainerEvents(hold=0.05, hold_max=2)
        before = dropped()
        broker.send(event("old"))
        await asyncio.sleep(0.1)
        broker.send(event("a"))  # "old" expires here
        broker.send(event("b"))
        broker.send(event("c"))  # the backlog holds 2: "a" goes
        with broker.subscribe() as sub:
            got = await take(sub, 2)
        return got, dropped() - before

    got, counted = asyncio.run(main())
    assert got == ["b", "c"]
    assert counted == 2


def test_close_ends_every_stream() -> None:
    async def main() -> list[list[str]]:
        broker = ContainerEvents(buffer=2)
        with broker.subscribe() as a, broker.subscribe() as b:
            broker.send(event("x"))
            broker.send(event("y"))  # b's queue is now full: its end must still arrive
            broker.close()
            broker.send(event("ignored"))
            results = list(await asyncio.wait_for(asyncio.gather(take(a, 10), take(b, 10)), 5))
        with broker.subscribe() as late:
            results.append(await asyncio.wait_for(take(late, 1), 5))
        return results

    assert asyncio.run(main()) == [["x", "y"], ["x", "y"], []]


def test_emit_carries_the_pod_status_and_every_container_status() -> None:
    async def sandbox_status(id: str) -> cri.PodSandboxStatus | None:
        return cri.PodSandboxStatus(id=id, state=cri.SANDBOX_READY)

    async def container_statuses(id: str) -> list[cri.ContainerStatus]:
        return [
            cri.ContainerStatus(id="c1", state=cri.CONTAINER_RUNNING),
            cri.ContainerStatus(id="c2", state=cri.CONTAINER_EXITED),
        ]

    async def main() -> cri.ContainerEventResponse:
        broker = ContainerEvents()
        broker.sandbox_status = sandbox_status
        broker.container_statuses = container_statuses
        with broker.subscribe() as sub:
            await broker.emit("c2", "pod", STOPPED)
            async for ev in sub:
                return ev
        raise AssertionError("no event")

    ev = asyncio.run(main())
    assert (ev.container_id, ev.container_event_type) == ("c2", STOPPED)
    assert ev.created_at > 0
    assert ev.pod_sandbox_status.id == "pod"
    assert [(s.id, s.state) for s in ev.containers_statuses] == [
        ("c1", cri.CONTAINER_RUNNING),
        ("c2", cri.CONTAINER_EXITED),
    ]


def test_emit_still_sends_when_a_status_cannot_be_had() -> None:
    async def gone(id: str) -> cri.PodSandboxStatus | None:
        raise LookupError(f"sandbox {id} is gone")

    async def main() -> cri.ContainerEventResponse:
        broker = ContainerEvents()
        broker.sandbox_status = gone
        with broker.subscribe() as sub:
            await broker.emit("pod", "pod", DELETED)
            async for ev in sub:
                return ev
        raise AssertionError("no event")

    ev = asyncio.run(main())
    assert ev.container_event_type == DELETED
    assert not ev.HasField("pod_sandbox_status")


def test_the_drop_counter_is_exported_under_containerds_name() -> None:
    from prometheus_client import generate_latest

    prom.enable()
    text = generate_latest(REGISTRY).decode()
    assert "# TYPE containerd_cri_container_events_dropped_total counter" in text
