"""``wharf content`` against the real daemon, and the stock ctr listing the same blobs."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess

import pytest

from e2e.daemon import BIN, Daemon
from wharfd.runtime.ctr.tabwriter import Writer

CTR = shutil.which("ctr")


def ingest(daemon: Daemon, ref: str, data: bytes, *flags: str) -> subprocess.CompletedProcess[bytes]:
    """Pipe ``data`` into ``wharf content ingest``."""
    cmd = [str(BIN / "wharf"), "--address", str(daemon.address), "content", "ingest", *flags, ref]
    return subprocess.run(cmd, input=data, capture_output=True, timeout=60)


def test_lifecycle(daemon: Daemon) -> None:
    data = os.urandom(5 * 1024 * 1024 + 3)  # several Write and Read messages
    dgst = "sha256:" + hashlib.sha256(data).hexdigest()
    result = ingest(daemon, "upload", data, "--expected-size", str(len(data)), "--expected-digest", dgst)
    assert result.returncode == 0, result.stderr
    again = ingest(daemon, "upload-again", data, "--expected-digest", dgst)
    assert again.returncode == 0, again.stderr  # already present is success
    bad = ingest(daemon, "bad", b"abc", "--expected-digest", "sha256:" + hashlib.sha256(b"xyz").hexdigest())
    assert bad.returncode == 1 and b"failed commit on ref" in bad.stderr

    got = subprocess.run(
        [str(BIN / "wharf"), "--address", str(daemon.address), "content", "get", dgst],
        capture_output=True,
        timeout=60,
    )
    assert got.stdout == data

    lines = daemon.wharf("content", "ls").stdout.splitlines()
    assert lines[0].startswith("DIGEST\t") and lines[0].endswith("\tLABELS")
    assert re.fullmatch(rf"{dgst}\t+5\.243MB\t+(Less than a second|\d+ seconds?)\t+-", lines[1])
    assert daemon.wharf("content", "label", dgst, "b=2", "a=1").stdout == "a=1,b=2\n"
    assert daemon.wharf("content", "ls", "-q").stdout == dgst + "\n"
    assert daemon.wharf("content", "rm", dgst).stdout == dgst + "\n"
    assert daemon.wharf("content", "ls", "-q").stdout == ""


def test_active_ingest_listed(daemon: Daemon) -> None:
    short = ingest(daemon, "partial", b"x" * 1500, "--expected-size", "4000")
    assert short.returncode == 1 and b"unexpected EOF" in short.stderr
    lines = daemon.wharf("content", "active").stdout.splitlines()
    assert lines[0].split("\t")[0] == "REF"
    assert lines[1].split("\t")[0] == "partial" and "1.5kB" in lines[1].split("\t")


@pytest.mark.skipif(CTR is None, reason="the stock ctr is not installed (Debian package containerd)")
def test_stock_ctr_reads_the_same(daemon: Daemon) -> None:
    for i in range(3):
        assert ingest(daemon, f"r{i}", os.urandom(1000 * 10**i)).returncode == 0
    assert CTR is not None
    cmd = [CTR, "--address", str(daemon.address), "content", "ls"]
    stock = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout
    ours = daemon.wharf("content", "ls").stdout
    # AGE ticks between the two runs, and its width moves the tab stops; so compare
    # the cells, and check that our tabwriter lays out ctr's own cells as ctr did.
    ours_cells, stock_cells = _cells(ours), _cells(stock)
    for row in (*ours_cells, *stock_cells):
        row[2] = "AGE"
    assert ours_cells == stock_cells
    relaid = io.StringIO()
    tw = Writer(relaid, 1, 8, 1, padchar="\t")
    for line in stock.splitlines():
        tw.write("\t".join(re.split(r"\t+", line)) + "\n")
    tw.flush()
    assert relaid.getvalue() == stock


def _cells(table: str) -> list[list[str]]:
    return [re.split(r"\t+", line) for line in table.splitlines()]
