"""Shim launch rules and the task bundle, without a daemon: names, answers, protocol choice, layout."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest

from wharfd.api.runtime.bootstrap.v1 import bootstrap_pb2
from wharfd.runtime import errors
from wharfd.runtime.tasks import shim
from wharfd.runtime.tasks.bundle import Bundle, ShimAddress, annotations_of, walk
from wharfd.runtime.tasks.manager import _runtime_paths, _socket_dir


def test_binary_name_follows_containerd() -> None:
    assert shim.binary_name("io.containerd.runc.v2") == "containerd-shim-runc-v2"
    assert shim.binary_name("io.containerd.wharf.v2") == "containerd-shim-wharf-v2"
    assert shim.binary_name("runc.v1") == "containerd-shim-runc-v1"
    for bad in ("runc", "io.containerd.runc.", "a/b.c"):
        with pytest.raises(errors.InvalidArgument, match="invalid runtime name"):
            shim.binary_name(bad)


def test_resolve_path_and_errors(tmp_path: Path) -> None:
    with pytest.raises(errors.NotFound, match="containerd-shim-nosuch-v9 not installed"):
        shim.resolve("io.containerd.nosuch.v9")
    binary = tmp_path / "my-shim"
    binary.write_text("#!/bin/sh\n")
    with pytest.raises(errors.NotFound, match="missing or not executable"):
        shim.resolve("io.containerd.runc.v2", str(binary))
    binary.chmod(0o755)
    assert shim.resolve("io.containerd.runc.v2", str(binary)) == str(binary)
    assert shim.resolve(str(binary)) == str(binary)


def test_parse_start_answers() -> None:
    result = bootstrap_pb2.BootstrapResult(version=3, address="unix:///run/s/abc", protocol="ttrpc")
    assert shim.parse_start_output(result.SerializeToString()) == ShimAddress("unix:///run/s/abc", 3, "ttrpc")
    legacy = json.dumps({"version": 2, "address": "unix:///run/s/j", "protocol": "ttrpc"}).encode()
    assert shim.parse_start_output(legacy) == ShimAddress("unix:///run/s/j", 2, "ttrpc")
    assert shim.parse_start_output(b"unix:///run/containerd/s/ff\n") == ShimAddress(
        "unix:///run/containerd/s/ff"
    )
    with pytest.raises(errors.Unavailable, match="unintelligible"):
        shim.parse_start_output(b"")
    grpc_result = bootstrap_pb2.BootstrapResult(version=3, address="unix:///x", protocol="grpc")
    with pytest.raises(errors.NotImplemented, match="grpc"):
        shim.parse_start_output(grpc_result.SerializeToString())


def _fake_shim(tmp_path: Path, body: str) -> str:
    path = tmp_path / "containerd-shim-fake-v1"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def _launcher(tmp_path: Path) -> shim.Launcher:
    return shim.Launcher(
        grpc_address=str(tmp_path / "d.sock"),
        ttrpc_address=str(tmp_path / "d.sock.ttrpc"),
        publish_binary="/bin/true",
    )


def test_protocol_probe(tmp_path: Path) -> None:
    old = _fake_shim(tmp_path, 'echo "$0:"; echo "  Version:  1.6.20~ds1"; echo "  Go version: go1.19.8"\n')
    launcher = _launcher(tmp_path)
    assert asyncio.run(launcher._probe(old)) == shim.LEGACY
    new = _fake_shim(tmp_path, 'echo "  Version:  2.3.0"; echo "  Go version: go1.24"\n')
    assert asyncio.run(launcher._probe(new)) == shim.BOOTSTRAP
    python = _fake_shim(tmp_path, 'echo "  Version:  0.1.0"; echo "  Python version: 3.11.7"\n')
    assert asyncio.run(launcher._probe(python)) == shim.BOOTSTRAP


def test_start_falls_back_to_legacy_and_sends_the_env(tmp_path: Path) -> None:
    """A shim that chokes on BootstrapParams the way containerd < 2.3 does gets the legacy stdin."""
    record = tmp_path / "record"
    body = (
        f'cat > {record}.stdin; env > {record}.env; echo "$@" > {record}.argv\n'
        # BootstrapParams carry the namespace; the legacy options Any does not.
        f'if grep -q ns1 {record}.stdin; then echo "type with url c1: not found" >&2; exit 1; fi\n'
        'printf "unix:///run/s/legacy"\n'
    )
    binary = _fake_shim(tmp_path, body)
    launcher = _launcher(tmp_path)
    launcher.protocols[binary] = shim.BOOTSTRAP
    bundle = Bundle.at(tmp_path / "state", tmp_path / "root", "ns1", "c1")
    bundle.create(b"{}")
    from google.protobuf import any_pb2

    options = any_pb2.Any(type_url="containerd.runc.v1.Options", value=b"")
    address = asyncio.run(launcher.start(binary, bundle, options))
    assert address == ShimAddress("unix:///run/s/legacy", 2)
    assert launcher.protocols[binary] == shim.LEGACY
    argv = (tmp_path / "record.argv").read_text().split()
    assert (
        argv[-1] == "start"
        and argv[argv.index("-id") + 1] == "c1"
        and argv[argv.index("-namespace") + 1] == "ns1"
    )
    env = dict(
        line.split("=", 1) for line in (tmp_path / "record.env").read_text().splitlines() if "=" in line
    )
    assert env["TTRPC_ADDRESS"] == str(tmp_path / "d.sock.ttrpc") and env["MAX_SHIM_VERSION"] == "2"
    assert env["NAMESPACE"] == "ns1" and env["PWD"] == str(bundle.path)


def test_start_failure_names_the_shim_and_its_words(tmp_path: Path) -> None:
    binary = _fake_shim(tmp_path, 'echo "runc: no such file" >&2; exit 1\n')
    launcher = _launcher(tmp_path)
    launcher.protocols[binary] = shim.LEGACY
    bundle = Bundle.at(tmp_path / "state", tmp_path / "root", "ns1", "c1")
    bundle.create(b"{}")
    with pytest.raises(
        errors.Unavailable, match="c1: start shim containerd-shim-fake-v1: runc: no such file"
    ):
        asyncio.run(launcher.start(binary, bundle, None))


def test_bundle_layout_and_removal(tmp_path: Path) -> None:
    bundle = Bundle.at(tmp_path / "state", tmp_path / "root", "ns1", "c1")
    bundle.create(b'{"annotations": {"io.kubernetes.cri.sandbox-id": "sb"}}')
    assert (bundle.path / "config.json").read_bytes().startswith(b"{")
    assert (bundle.path / "rootfs").is_dir()
    assert os.readlink(bundle.path / "work") == str(tmp_path / "root" / "ns1" / "c1")
    assert stat.S_ISFIFO((bundle.path / "log").stat().st_mode)
    assert annotations_of((bundle.path / "config.json").read_bytes()) == {
        "io.kubernetes.cri.sandbox-id": "sb"
    }
    with pytest.raises(errors.AlreadyExists):
        bundle.create(b"{}")
    assert bundle.read_bootstrap() is None
    bundle.write_file("address", "unix:///old\n")
    assert bundle.read_bootstrap() == ShimAddress("unix:///old", 2)
    bundle.write_bootstrap(ShimAddress("unix:///new", 3))
    assert json.loads((bundle.path / "bootstrap.json").read_text()) == {
        "version": 3,
        "address": "unix:///new",
        "protocol": "ttrpc",
    }
    assert [b.id for b in walk(tmp_path / "state", tmp_path / "root")] == ["c1"]
    bundle.remove()
    assert not bundle.path.exists() and not bundle.work.exists()
    assert not (tmp_path / "state" / "ns1").exists()


def test_bundle_rejects_bad_names_and_corrupt_bootstrap(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidArgument):
        Bundle.at(tmp_path, tmp_path, "ns1", "../escape")
    bundle = Bundle.at(tmp_path / "state", tmp_path / "root", "ns1", "c1")
    bundle.create(b"{}")
    bundle.write_file("bootstrap.json", "{not json")
    with pytest.raises(errors.DataLoss, match=r"bootstrap\.json"):
        bundle.read_bootstrap()
    (tmp_path / "state" / "ns1" / "not..valid").mkdir()
    assert [b.id for b in walk(tmp_path / "state", tmp_path / "root")] == ["c1"]


def test_config_helpers() -> None:
    assert _socket_dir("/run/wharfd") == "/run/wharfd/s"
    assert _socket_dir("/" + "x" * 60) is None
    cri = {
        "containerd": {
            "runtimes": {"fast": {"runtime_type": "io.containerd.runc.v2", "runtime_path": "/opt/s"}}
        }
    }
    assert _runtime_paths(cri) == {"io.containerd.runc.v2": "/opt/s", "fast": "/opt/s"}


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts tmpfs: needs root")
def test_bundle_removal_unmounts_what_is_still_mounted(tmp_path: Path) -> None:
    from wharfd.runtime import mount
    from wharfd.runtime.snapshots.snapshotter import Mount

    bundle = Bundle.at(tmp_path / "state", tmp_path / "root", "ns1", "c1")
    bundle.create(b"{}")
    tmpfs = Mount("tmpfs", "tmpfs", "", ())
    try:
        mount.mount(tmpfs, bundle.rootfs)  # an empty mount: rmdir alone must not do
        mount.mount(tmpfs, bundle.rootfs)
        (bundle.rootfs / "sub").mkdir()
        mount.mount(tmpfs, bundle.rootfs / "sub")
        bundle.remove()
        assert not bundle.path.exists()
        assert not mount.is_mount_point(bundle.rootfs) and not mount.is_mount_point(bundle.rootfs / "sub")
    finally:
        if bundle.rootfs.exists():
            mount.unmount_all(bundle.rootfs, mount.MNT_DETACH)
