"""Specs from default_spec + options, run by the real runc on a busybox rootfs (root, cgroup v1 cgroupfs).

Each test uses its own cgroup parent ``/wharfd-test-<uuid>``; the container and
every cgroup directory under it are removed even when the test fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wharfd.runtime.oci import image_config, linux, seccomp
from wharfd.runtime.oci import process as proc
from wharfd.runtime.oci import spec as oci
from wharfd.runtime.oci.spec import SpecOpt

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
APPLETS = ("sh", "echo", "id", "cat", "grep", "unshare")
RUNC = shutil.which("runc")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="runs containers with runc: needs root"),
    pytest.mark.skipif(RUNC is None, reason="runc is not installed"),
    pytest.mark.skipif(not BUSYBOX.exists(), reason="needs /bin/busybox (apt-get install busybox-static)"),
]

Run = Callable[..., subprocess.CompletedProcess[str]]


def remove_cgroups(parent: str) -> None:
    """rmdir every cgroup directory under ``parent`` in every v1 hierarchy (and v2), deepest first."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / parent.lstrip("/")
        if not top.is_dir():
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
            Path(dirpath).rmdir()


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "bundle" / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    return root


@pytest.fixture
def run(tmp_path: Path, rootfs: Path) -> Iterator[Run]:
    """Run a container from default_spec + options; returns runc's completed process."""
    parent = f"/wharfd-test-{uuid.uuid4().hex[:12]}"
    state = tmp_path / "runc"
    started: list[str] = []

    def runner(*opts: SpecOpt) -> subprocess.CompletedProcess[str]:
        cid = f"wharfd-oci-{uuid.uuid4().hex[:12]}"
        spec = oci.generate(
            "default",
            cid,
            oci.with_root_path(str(rootfs)),
            linux.with_default_unix_devices(),
            linux.with_cgroups_path(f"{parent}/c{len(started) + 1}"),
            *opts,
        )
        (rootfs.parent / "config.json").write_bytes(oci.to_json(spec))
        started.append(cid)
        argv = [str(RUNC), "--root", str(state), "run", "--bundle", str(rootfs.parent), cid]
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)

    try:
        yield runner
    finally:
        for cid in started:
            subprocess.run([str(RUNC), "--root", str(state), "delete", "--force", cid], capture_output=True)
        remove_cgroups(parent)


def test_default_spec_runs_with_seccomp_filter(run: Run) -> None:
    result = run(
        proc.with_process_args("/bin/sh", "-c", "id; echo ok; cat /proc/self/status | grep -i seccomp"),
        seccomp.with_default_profile(),
    )
    assert result.returncode == 0, result.stderr
    assert "uid=0 gid=0" in result.stdout
    assert "\nok\n" in result.stdout
    assert re.search(r"^Seccomp:\s+2$", result.stdout, re.MULTILINE), result.stdout


def test_default_profile_is_what_denies_unshare(run: Run) -> None:
    # Creating a user namespace needs no capability, so only the filter can refuse it.
    script = proc.with_process_args("/bin/sh", "-c", "unshare -U true; echo rc=$?")
    confined = run(script, seccomp.with_default_profile())
    assert "rc=1" in confined.stdout and "Operation not permitted" in confined.stderr + confined.stdout
    unconfined = run(script, linux.with_seccomp(None))
    assert "rc=0" in unconfined.stdout, unconfined.stderr


def test_image_user_resolved_from_rootfs_is_what_runs(run: Run, rootfs: Path) -> None:
    (rootfs / "etc").mkdir()
    (rootfs / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\nwheel:x:10:app\napp:x:1000:\n")
    config = image_config.RunConfig(user="app", cmd=("id",), env=("PATH=/bin",))
    result = run(image_config.with_image_config(config, rootfs), seccomp.with_default_profile())
    assert result.returncode == 0, result.stderr
    # The spec lists [1000, 10]; setgroups(2) sorts them, so id prints them in numeric order.
    assert result.stdout.strip() == "uid=1000(app) gid=1000(app) groups=10(wheel),1000(app)"
