"""``wharf events`` against the real daemon: the lines ctr prints, and a quiet exit on Ctrl-C."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time

from e2e.daemon import BIN, Daemon

CTR = shutil.which("ctr")


def _watch(cmd: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def test_events_until_interrupted(daemon: Daemon) -> None:
    address = str(daemon.address)
    watchers = [_watch([str(BIN / "wharf"), "--address", address, "events", 'topic~="^/namespaces/"'])]
    if CTR is not None:  # the stock ctr, watching the same stream, must print the same lines
        watchers.append(_watch([CTR, "--address", address, "events", 'topic~="^/namespaces/"']))
    time.sleep(1.5)  # let both subscriptions register
    daemon.wharf("namespaces", "create", "evtest", "k=v")
    daemon.wharf("snapshots", "prepare", "filtered-out")
    daemon.wharf("namespaces", "rm", "evtest")
    time.sleep(0.5)
    (out, err), *others = [_stop(p) for p in watchers]
    assert watchers[0].returncode == 0 and err == ""
    lines = out.splitlines()
    assert [line.split(" ", 4)[4] for line in lines] == [
        'evtest /namespaces/create {"name":"evtest","labels":{"k":"v"}}',
        'evtest /namespaces/delete {"name":"evtest"}',
    ]
    assert all(line.split(" ")[2:4] == ["+0000", "UTC"] for line in lines)
    for stock_out, _ in others:
        assert stock_out == out
