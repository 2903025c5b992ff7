"""The `wharf` CLI, and the stock `ctr` where installed, against a real daemon."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from e2e.daemon import Daemon
from wharfd.runtime import version


def test_version(daemon: Daemon) -> None:
    out = daemon.wharf("version").stdout
    lines = out.splitlines()
    assert lines[0] == "Client:"
    assert lines[1] == f"  Version:  {version.version()}"
    assert "Server:" in lines
    server = lines[lines.index("Server:") :]
    assert server[1] == f"  Version:  {version.version()}"
    assert server[3].startswith("  UUID: ")


def test_namespaces_lifecycle(daemon: Daemon) -> None:
    ls = daemon.wharf("namespaces", "ls").stdout
    assert ls.splitlines()[0] == "NAME    LABELS "
    assert {"default", "k8s.io"} <= {line.split()[0] for line in ls.splitlines()[1:]}

    daemon.wharf("ns", "create", "demo", "team=a", "tier=web")
    daemon.wharf("ns", "label", "demo", "team=b")
    rows = {line.split()[0]: line for line in daemon.wharf("ns", "ls").stdout.splitlines()[1:]}
    assert rows["demo"].split()[1] == "team=b,tier=web"
    assert "demo" in daemon.wharf("ns", "ls", "-q").stdout.split()

    rm = daemon.wharf("ns", "rm", "demo")
    assert rm.stdout.strip() == "demo"
    assert "demo" not in daemon.wharf("ns", "ls", "-q").stdout.split()

    bad = daemon.wharf("ns", "create", "Not Valid", check=False)
    assert bad.returncode == 1
    assert bad.stderr.startswith("wharf: ") and "Not Valid" in bad.stderr


def test_plugins_ls(daemon: Daemon) -> None:
    out = daemon.wharf("plugins", "ls").stdout.splitlines()
    assert out[0].split() == ["TYPE", "ID", "PLATFORMS", "STATUS"]
    rows = {(line.split()[0], line.split()[1]): line.split()[-1] for line in out[1:]}
    assert rows[("io.containerd.grpc.v1", "cri")] == "ok"
    assert rows[("io.containerd.metadata.v1", "sqlite")] == "ok"
    assert rows[("io.containerd.server.v1", "metrics")] == "skip"
    detailed = daemon.wharf("plugins", "ls", "-d").stdout
    assert "no [metrics] address configured" in detailed


def test_info(daemon: Daemon) -> None:
    info = json.loads(daemon.wharf("info").stdout)
    assert info["server"]["pid"] == daemon.proc.pid  # type: ignore[union-attr]


def test_unreachable_daemon(tmp_path: Path) -> None:
    from e2e.daemon import BIN

    result = subprocess.run(
        [str(BIN / "wharf"), "--address", f"{tmp_path}/nothing.sock", "ns", "ls"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "nothing.sock" in result.stderr


CTR = shutil.which("ctr")


@pytest.mark.skipif(CTR is None, reason="the stock ctr is not installed (Debian package containerd)")
def test_stock_ctr_reads_the_same(daemon: Daemon) -> None:
    def ctr(*args: str) -> str:
        return subprocess.run(
            [str(CTR), "--address", str(daemon.address), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout

    assert ctr("namespaces", "ls") == daemon.wharf("namespaces", "ls").stdout
    assert ctr("plugins", "ls") == daemon.wharf("plugins", "ls").stdout
    server = ctr("version").split("Server:")[1]
    assert server == daemon.wharf("version").stdout.split("Server:")[1]
