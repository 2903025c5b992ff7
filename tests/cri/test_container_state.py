"""The container RPCs' pure parts: list filters, status fields, resource merges, create-time checks."""

from __future__ import annotations

import base64
import signal
from pathlib import Path
from typing import cast

import pytest

from wharfd.api.cri.v1 import api_pb2 as cri
from wharfd.cri import container_create, container_exec, container_list, container_status, container_update
from wharfd.cri.container_stop import stop_signal_number
from wharfd.cri.store import Container, ContainerMetadata, ContainerStatus, CriState
from wharfd.runtime import errors
from wharfd.runtime.metadata.containers import ContainerStore
from wharfd.runtime.snapshots.snapshotter import Mount


def make_state(tmp_path: Path) -> CriState:
    # The list and status helpers read only the in-memory stores: no database, no tasks.
    return CriState(
        config={},
        root=tmp_path,
        state_dir=tmp_path,
        meta=cast(ContainerStore, None),
        tasks=None,
        snapshotters={},
    )


def add(state: CriState, cid: str, pod: str, status: ContainerStatus, **labels: str) -> Container:
    config = cri.ContainerConfig(metadata=cri.ContainerMetadata(name=cid), labels=labels)
    meta = ContainerMetadata(id=cid, name=f"{cid}_{pod}", sandbox_id=pod, config=config, image_id="sha256:i")
    container = state.new_container(meta, status)
    state.containers.add(container)
    return container


CREATED = ContainerStatus(created_at=1)
RUNNING = ContainerStatus(created_at=2, started_at=3, pid=7)
EXITED = ContainerStatus(created_at=4, started_at=5, finished_at=6, exit_code=1)


@pytest.fixture
def state(tmp_path: Path) -> CriState:
    state = make_state(tmp_path)
    add(state, "aaa111", "pod1", CREATED, tier="web")
    add(state, "aaa222", "pod1", RUNNING, tier="web", app="x")
    add(state, "bbb333", "pod2", EXITED, tier="db")
    return state


@pytest.mark.parametrize(
    ("wanted", "ids"),
    [
        (None, ["aaa111", "aaa222", "bbb333"]),
        (cri.ContainerFilter(id="aaa2"), ["aaa222"]),
        (cri.ContainerFilter(id="aaa"), []),  # ambiguous prefix: nothing
        (cri.ContainerFilter(id="zzz"), []),
        (cri.ContainerFilter(pod_sandbox_id="pod1"), ["aaa111", "aaa222"]),
        (cri.ContainerFilter(state=cri.ContainerStateValue(state=cri.CONTAINER_EXITED)), ["bbb333"]),
        (cri.ContainerFilter(state=cri.ContainerStateValue(state=cri.CONTAINER_CREATED)), ["aaa111"]),
        (cri.ContainerFilter(label_selector={"tier": "web"}), ["aaa111", "aaa222"]),
        (cri.ContainerFilter(label_selector={"tier": "web", "app": "x"}), ["aaa222"]),
        (cri.ContainerFilter(label_selector={"tier": "web"}, pod_sandbox_id="pod2"), []),
    ],
)
def test_list_filters(state: CriState, wanted: cri.ContainerFilter | None, ids: list[str]) -> None:
    assert [c.id for c in container_list.select(state, wanted)] == ids


def test_cri_container_and_reasons(state: CriState) -> None:
    exited = state.containers.get("bbb333")
    message = container_status.to_cri_container(exited)
    assert (message.id, message.pod_sandbox_id, message.state) == ("bbb333", "pod2", cri.CONTAINER_EXITED)
    assert (message.image_ref, message.image_id, message.created_at) == ("sha256:i", "sha256:i", 4)
    assert dict(message.labels) == {"tier": "db"}
    assert container_status.reason_of(exited) == "Error"
    assert container_status.reason_of(state.containers.get("aaa222")) == ""
    zero = add(state, "ccc", "pod3", ContainerStatus(created_at=1, started_at=2, finished_at=3))
    assert container_status.reason_of(zero) == "Completed"
    oom = add(
        state, "ddd", "pod3", ContainerStatus(created_at=1, finished_at=3, exit_code=137, reason="OOMKilled")
    )
    assert container_status.reason_of(oom) == "OOMKilled"


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("", cri.RUNTIME_DEFAULT),
        ("SIGTERM", cri.SIGTERM),
        ("9", cri.SIGKILL),
        ("QUIT", cri.SIGQUIT),
        ("SIGRTMIN+3", cri.RUNTIME_DEFAULT),
    ],
)
def test_stop_signal_enum(name: str, want: int) -> None:
    assert container_status.stop_signal_enum(name) == want


def test_stop_signal_number() -> None:
    assert stop_signal_number("") == signal.SIGTERM
    assert stop_signal_number("SIGQUIT") == signal.SIGQUIT
    assert stop_signal_number("bogus") == signal.SIGTERM


def test_resources_after_updates(state: CriState) -> None:
    created = cri.LinuxContainerResources(
        cpu_period=100000, cpu_quota=20000, memory_limit_in_bytes=64, oom_score_adj=5
    )
    merged = container_update.merge(
        created,
        cri.LinuxContainerResources(
            cpu_quota=50000,
            oom_score_adj=900,
            unified={"a": "1"},
            hugepage_limits=[cri.HugepageLimit(page_size="2MB", limit=4)],
        ),
    )
    assert (merged.cpu_period, merged.cpu_quota, merged.memory_limit_in_bytes) == (100000, 50000, 64)
    assert merged.oom_score_adj == 5  # not updatable
    assert dict(merged.unified) == {"a": "1"} and merged.hugepage_limits[0].limit == 4
    container = state.containers.get("aaa222")
    assert container_status.current_resources(container) is None
    container.set_memory_only(resources=base64.b64encode(merged.SerializeToString()).decode())
    assert container_status.current_resources(container) == merged


@pytest.mark.parametrize(
    ("log_dir", "log_path", "want"),
    [
        ("/var/log/pods/p", "c/0.log", "/var/log/pods/p/c/0.log"),
        ("", "c.log", ""),
        ("/var/log/pods/p", "", ""),
    ],
)
def test_log_path(log_dir: str, log_path: str, want: str) -> None:
    pod = cri.PodSandboxConfig(log_directory=log_dir)
    assert container_create.log_path(pod, cri.ContainerConfig(log_path=log_path)) == want


@pytest.mark.parametrize("bad", ["/abs.log", "../escape.log", "a/../../b.log"])
def test_log_path_stays_in_the_pod_directory(bad: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="log_path"):
        container_create.log_path(cri.PodSandboxConfig(log_directory="/p"), cri.ContainerConfig(log_path=bad))


def test_readonly_view_of_a_prepared_rootfs() -> None:
    overlay = Mount(
        "overlay",
        "overlay",
        options=("workdir=/s/2/work", "upperdir=/s/2/fs", "lowerdir=/s/1/fs", "index=off"),
    )
    bind = Mount("bind", "/s/3/fs", options=("rw", "rbind"))
    assert container_create.readonly_mounts([overlay, bind]) == [
        Mount("overlay", "overlay", options=("index=off", "lowerdir=/s/2/fs:/s/1/fs")),
        Mount("bind", "/s/3/fs", options=("rbind", "ro")),
    ]


def test_exec_process_and_output_cap() -> None:
    spec = {
        "process": {
            "args": ["sleep", "1"],
            "terminal": True,
            "consoleSize": {"height": 1, "width": 1},
            "cwd": "/w",
        }
    }
    assert container_exec.process_spec(spec, ["ls"]) == {"args": ["ls"], "terminal": False, "cwd": "/w"}
    assert spec["process"]["args"] == ["sleep", "1"]  # the container's spec is not changed
    capture = container_exec._Capture(limit=5)
    for chunk in (b"abc", b"defg", b"h"):
        capture.add(chunk)
    assert bytes(capture.data) == b"abcde"
