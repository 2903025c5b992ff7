"""The zygote's preparation before forking: code relocation, pool filling, the version, the warm-up.

Each check runs in a fresh interpreter: what it measures (allocator pools,
code object addresses, loaded modules) is the whole process's state.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def python(code: str) -> dict[str, object]:
    """Run ``code`` in a new interpreter; it prints one JSON object, returned here."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True
    )
    answer: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return answer


def test_fill_pools_takes_up_the_free_blocks_of_used_pools() -> None:
    answer = python(
        """
        import json
        from wharfd.runtime.shim import sharing
        # Holes: every other object of a run of small ones freed.
        kept = [bytes(15) + bytes([i % 251]) for i in range(20000)][::2]
        before = sum(sharing.free_blocks().values())
        left = sharing.fill_pools()
        print(json.dumps({"before": before, "left": left, "fillers": len(sharing._FILLERS)}))
        """
    )
    assert isinstance(answer["before"], int) and answer["before"] > 10000
    assert isinstance(answer["left"], int) and answer["left"] < answer["before"] // 5
    assert answer["fillers"] and isinstance(answer["fillers"], int) and answer["fillers"] >= 10000


def test_relocate_hot_code_packs_the_code_that_ran_and_keeps_it_working() -> None:
    answer = python(
        """
        import json
        from wharfd.runtime.shim import sharing
        source = "".join(
            f"def f{i}(x):\\n    y = [x + k for k in range({i % 7 + 1})]\\n"
            f"    return sum(y) + {i} + len('{'-' * (i % 90)}')\\n"
            for i in range(400)
        )
        source += "def outer():\\n    def inner():\\n        return 41\\n    return inner() + 1\\n"
        scope = {}
        exec(compile(source, "generated", "exec"), scope)
        hot = [scope[f"f{i}"] for i in range(0, 400, 20)] + [scope["outer"]]
        cold = scope["f1"]
        before = {f: f.__code__ for f in hot + [cold]}
        expected = [f(1) if f is not scope["outer"] else f() for f in hot]
        moved = sharing.relocate_hot_code(lambda: [f(1) if f is not scope["outer"] else f() for f in hot])
        pages = lambda codes: len({id(c) // 4096 for c in codes})
        print(json.dumps({
            "moved": moved,
            "copied": all(f.__code__ is not before[f] for f in hot),
            "equal": all(f.__code__.co_code == before[f].co_code for f in hot),
            "cold_kept": cold.__code__ is before[cold],
            "works": [f(1) if f is not scope["outer"] else f() for f in hot] == expected,
            "pages_before": pages(before[f] for f in hot),
            "pages_after": pages(f.__code__ for f in hot),
        }))
        """
    )
    assert isinstance(answer["moved"], int) and answer["moved"] >= 21
    assert answer["copied"] and answer["equal"] and answer["cold_kept"] and answer["works"]
    assert isinstance(answer["pages_before"], int) and isinstance(answer["pages_after"], int)
    assert answer["pages_after"] < answer["pages_before"]


def test_warm_up_leaves_no_import_to_the_shims() -> None:
    # A shim opens pid files and oom_score_adj as ASCII text: that codec is looked up
    # (and encodings.ascii imported) in the zygote, not in each shim.
    answer = python(
        """
        import json, sys
        from wharfd.runtime.shim import server
        server.warm_up(2)
        before = set(sys.modules)
        with open("/proc/self/oom_score_adj", encoding="ascii") as f:
            f.read()
        print(json.dumps({"new": sorted(set(sys.modules) - before)}))
        """
    )
    assert answer["new"] == []
