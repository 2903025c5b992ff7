"""Turning on the kernel's same-page merging (KSM) for the shims' memory.

Our shims are forked from one zygote (runtime/shim/zygote.py). CPython writes
reference counts on every use, so each shim copies the inherited pages it
touches, ~4.5 MiB per pod, though most of them are, by the time anyone looks,
the same as the zygote's again (a count raised and lowered by a call). The
zygote marks its private memory mergeable (``madvise(MADV_MERGEABLE)``,
runtime/shim/sharing.py); ``ksmd`` then finds the identical pages and shares
them back: ~1.2 MiB of PSS per shim instead of ~4.9 (docs/benchmarks.md).

``ksmd`` only scans memory marked mergeable, so turning it on changes nothing
for other processes (unless they also mark theirs). It is off by default on
most distributions; the daemon turns it on (``/sys/kernel/mm/ksm/run`` 0 ->
1) when ``merge_shim_memory`` is true in ``[plugins."io.containerd.runtime.v2.task"]``
(the default), and leaves its other settings alone. ``run = 2`` (an
administrator's "unmerge everything") is respected.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("wharfd.tasks")

KSM_DIR = Path("/sys/kernel/mm/ksm")


def enable_ksmd(ksm_dir: Path = KSM_DIR) -> str:
    """Make sure ``ksmd`` runs; return its state afterwards ("running", "stopped by ...", "unavailable")."""
    run = ksm_dir / "run"
    try:
        current = run.read_text().strip()
    except OSError as exc:
        log.info("shim memory merging unavailable: %s", exc)
        return "unavailable"
    if current == "1":
        return "running"
    if current != "0":
        log.info("shim memory merging: ksmd left as set (run = %s: unmerging)", current)
        return f"stopped by run = {current}"
    try:
        run.write_text("1")
    except OSError as exc:
        log.warning("shim memory merging: cannot start ksmd (%s): %s", run, exc)
        return "unavailable"
    log.info("shim memory merging: started ksmd (%s = 1)", run)
    return "running"
