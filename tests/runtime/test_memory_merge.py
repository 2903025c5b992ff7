"""The daemon's ksmd switch (runtime/tasks/memory_merge.py) and the zygote's marking (sharing.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wharfd.cri.config import Config
from wharfd.runtime import events, plugin
from wharfd.runtime.shim.sharing import MERGE_ENV
from wharfd.runtime.tasks import manager, memory_merge
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


@pytest.mark.parametrize(("merge", "after"), [(False, "0"), (True, "1")])
def test_the_task_plugin_starts_ksmd_only_when_merge_shim_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, merge: bool, after: str
) -> None:
    """``merge_shim_memory`` in ``[plugins."io.containerd.runtime.v2.task"]``: false leaves ksmd as it is."""
    ksm = tmp_path / "ksm"
    ksm.mkdir()
    (ksm / "run").write_text("0\n")
    monkeypatch.setattr(memory_merge, "KSM_DIR", ksm)
    cfg = Config(version=2, root=str(tmp_path / "root"), state=str(tmp_path / "state"))
    plugins = plugin.PluginSet([events.PLUGIN, manager.PLUGIN], required=[manager.PLUGIN.uri])

    def context(reg: plugin.Registration) -> plugin.InitContext:
        section = {"merge_shim_memory": merge} if reg is manager.PLUGIN else {}
        return plugin.InitContext(
            reg, cfg, section, tmp_path / "root" / reg.uri, tmp_path / "state" / reg.uri, plugins
        )

    async def main() -> None:
        await plugins.start(context)
        await plugins.close()

    asyncio.run(main())
    assert (ksm / "run").read_text().strip() == after
