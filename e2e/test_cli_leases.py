"""``wharf leases`` against the real daemon, and the stock ctr listing the same leases."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from e2e.daemon import Daemon

CTR = shutil.which("ctr")


def test_lifecycle(daemon: Daemon) -> None:
    assert daemon.wharf("leases", "create", "--id", "pull-1", "team=a").stdout == "pull-1\n"
    generated = daemon.wharf("leases", "create", "-x", "0").stdout.strip()
    assert generated
    lines = daemon.wharf("leases", "ls").stdout.splitlines()
    assert lines[0].split() == ["ID", "CREATED", "AT", "LABELS"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows[generated][1] == "-"
    assert re.fullmatch(r"containerd\.io/gc\.expire=\S+,team=a", rows["pull-1"][1])
    assert daemon.wharf("leases", "ls", "-q", "labels.team==a").stdout == "pull-1\n"
    assert daemon.wharf("leases", "rm", "--sync", "pull-1", generated).stdout == f"pull-1\n{generated}\n"
    gone = daemon.wharf("leases", "rm", "pull-1", check=False)
    assert (gone.returncode, gone.stderr) == (1, 'wharf: lease "pull-1": not found\n')
    # containerd takes any lease id (ctr's random ones are not identifiers), but not a "/".
    bad = daemon.wharf("leases", "create", "--id", "bad/id", check=False)
    assert bad.returncode == 1 and "bad/id" in bad.stderr
    duplicate = daemon.wharf("leases", "create", "--id", "pull-1", check=False)
    assert duplicate.returncode == 0  # pull-1 was removed above: the id is free again


@pytest.mark.skipif(CTR is None, reason="the stock ctr is not installed (Debian package containerd)")
def test_stock_ctr_reads_the_same(daemon: Daemon) -> None:
    daemon.wharf("leases", "create", "--id", "one", "b=2", "a=1")
    daemon.wharf("leases", "create", "--id", "two", "-x", "0")
    assert CTR is not None
    stock = subprocess.run(
        [CTR, "--address", str(daemon.address), "leases", "ls"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert daemon.wharf("leases", "ls").stdout == stock.stdout
