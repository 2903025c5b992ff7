"""The daemon's ksmd switch (runtime/tasks/memory_merge.py) and the zygote's marking (sharing.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wharfd.runtime.shim.sharing import MERGE_ENV
from wharfd.runtime.tasks.memory_merge import enable_ksmd


@pytest.mark.parametrize(("before", "after", "state"), [("0", "1", "running"), ("1", "1", "running")])
def test_ksmd_is_started_when_off(tmp_path: Path, before: str, after: str, state: str) -> None:
    (tmp_path / "run").write_text(before + "\n")
    assert enable_ksmd(tmp_path) == state
    assert (tmp_path / "run").read_text().strip() == after


def test_an_unmerge_request_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("2\n")
    assert enable_ksmd(tmp_path) == "stopped by run = 2"
    assert (tmp_path / "run").read_text().strip() == "2"


def test_no_ksm_in_the_kernel(tmp_path: Path) -> None:
    assert enable_ksmd(tmp_path / "missing") == "unavailable"


def _marked(env: dict[str, str]) -> dict[str, int]:
    code = textwrap.dedent(
        """
        import json
        from wharfd.runtime.shim.sharing import mark_mergeable
        marked = mark_mergeable()
        flagged = 0
        for line in open("/proc/self/smaps"):
            if line.startswith("VmFlags:") and " mg" in line:
                flagged += 1
        print(json.dumps({"marked": marked, "flagged": flagged}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    answer: dict[str, int] = json.loads(out.stdout)
    return answer


@pytest.mark.skipif(not Path("/sys/kernel/mm/ksm").exists(), reason="the kernel has no KSM")
def test_mark_mergeable_flags_the_private_writable_mappings() -> None:
    env = {k: v for k, v in os.environ.items() if k != MERGE_ENV}
    answer = _marked(env)
    assert answer["marked"] > 1 << 20 and answer["flagged"] >= 3  # the heap, arenas, libraries' data
    assert _marked({**env, MERGE_ENV: "0"}) == {"marked": 0, "flagged": 0}
