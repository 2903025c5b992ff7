"""One conformance suite for every snapshotter, run through its Python API.

Each case is an async function of a fresh snapshotter and a scratch
directory. Cases mount what the snapshotter returns (real mounts: run as
root), so they check files as a container would see them, and always
unmount in ``finally``. A test module runs every case of :data:`CASES`
against each backend::

    @pytest.mark.parametrize("case", testsuite.CASES, ids=testsuite.case_id)
    def test_overlay(case, tmp_path): asyncio.run(testsuite.run(case, make_overlay, tmp_path))
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

from wharfd.runtime import errors, mount, namespaces
from wharfd.runtime.snapshots.metadata import NamespacedSnapshotter
from wharfd.runtime.snapshots.snapshotter import Info, Kind, Mount

Case = Callable[[NamespacedSnapshotter, Path], Awaitable[None]]
Factory = Callable[[Path], contextlib.AbstractAsyncContextManager[NamespacedSnapshotter]]
NAMESPACE = "testsuite"


class SuiteFailure(AssertionError):
    """A snapshotter broke the contract."""


def expect(condition: object, message: str) -> None:
    """Fail the case with ``message`` unless ``condition`` holds."""
    if not condition:
        raise SuiteFailure(message)


async def expect_error(kind: type[errors.WharfError], call: Awaitable[object], *words: str) -> str:
    """Await ``call``, which must raise ``kind`` with a message containing every one of ``words``."""
    try:
        await call
    except kind as exc:
        for word in words:
            expect(word in str(exc), f"{kind.__name__} message {str(exc)!r} does not mention {word!r}")
        return str(exc)
    raise SuiteFailure(f"expected {kind.__name__}, but the call succeeded")


@contextlib.contextmanager
def in_namespace(name: str) -> Iterator[None]:
    """Run the block in namespace ``name``."""
    token = namespaces.current.set(name)
    try:
        yield
    finally:
        namespaces.current.reset(token)


@contextlib.asynccontextmanager
async def mounted(mounts: Sequence[Mount], target: Path) -> AsyncIterator[Path]:
    """Mount ``mounts`` on ``target`` (created) for the block; unmounted whatever happens."""
    await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(mount.mount_all, mounts, target)
    try:
        yield target
    finally:
        await asyncio.to_thread(mount.unmount_all, target)


async def run(case: Case, factory: Factory, base: Path) -> None:
    """Run ``case`` against a snapshotter from ``factory`` rooted under ``base``."""
    scratch = base / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        with in_namespace(NAMESPACE):
            async with factory(base / "root") as sn:
                await case(sn, scratch)
    finally:
        # A failed case must not leave mounts behind for the next one.
        await asyncio.to_thread(mount.unmount_all, scratch, mount.MNT_DETACH)


def case_id(case: Case) -> str:
    """A readable test id for ``case``."""
    return case.__name__.removeprefix("check_")


async def commit_layer(
    sn: NamespacedSnapshotter, scratch: Path, name: str, parent: str, files: dict[str, str]
) -> None:
    """Prepare on ``parent``, write ``files`` through the mount, and commit as ``name``."""
    mounts = await sn.prepare(f"{name}-active", parent)
    async with mounted(mounts, scratch / f"{name}-mnt") as root:
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
    await sn.commit(name, f"{name}-active")


# --- cases -------------------------------------------------------------------


async def check_lifecycle(sn: NamespacedSnapshotter, scratch: Path) -> None:
    """prepare → write → commit → child sees parent's files → deletions hide them in the next layer."""
    await commit_layer(sn, scratch, "base", "", {"etc/hostname": "base\n", "bin/tool": "v1"})
    info = await sn.stat("base")
    expect(info.kind == Kind.COMMITTED and info.parent == "", f"base after commit: {info}")
    await expect_error(errors.NotFound, sn.stat("base-active"), "base-active")

    mounts = await sn.prepare("child", "base")
    expect(await sn.mounts("child") == mounts, "Mounts must return what Prepare returned")
    async with mounted(mounts, scratch / "child") as root:
        expect((root / "etc/hostname").read_text() == "base\n", "child must see the parent's files")
        (root / "bin/tool").unlink()
        (root / "new").write_text("child")
    await sn.commit("top", "child")
    expect((await sn.stat("top")).parent == "base", "the committed child keeps its parent")

    async with mounted(await sn.view("look", "top"), scratch / "look") as root:
        expect((root / "new").read_text() == "child", "view must see the top layer")
        expect(not (root / "bin/tool").exists(), "a file deleted in a layer must stay hidden above it")
        expect((root / "etc/hostname").exists(), "files of lower layers show through")
        try:
            (root / "x").write_text("no")
        except OSError as exc:
            expect(exc.errno == errno.EROFS, f"writing into a view: {exc}")
        else:
            raise SuiteFailure("a view must be read-only")
    await expect_error(errors.FailedPrecondition, sn.mounts("top"), "top")


async def check_views(sn: NamespacedSnapshotter, scratch: Path) -> None:
    """Views with no, one and several parents are read-only and show their chain."""
    async with mounted(await sn.view("empty"), scratch / "empty") as root:
        expect(os.listdir(root) == [], "a view without parent is empty")
        expect(os.statvfs(root).f_flag & os.ST_RDONLY, "a view without parent is read-only")
    await commit_layer(sn, scratch, "l1", "", {"a": "1"})
    await commit_layer(sn, scratch, "l2", "l1", {"b": "2"})
    for key, parent, want in (("v1", "l1", ["a"]), ("v2", "l2", ["a", "b"])):
        async with mounted(await sn.view(key, parent), scratch / key) as root:
            expect(sorted(os.listdir(root)) == want, f"view of {parent}: {os.listdir(root)}")
            expect(os.statvfs(root).f_flag & os.ST_RDONLY, f"view of {parent} must be read-only")
        expect((await sn.stat(key)).kind == Kind.VIEW, f"{key} is a view")
    await expect_error(errors.FailedPrecondition, sn.commit("v1-done", "v1"), "v1", "not active")
    await expect_error(errors.InvalidArgument, sn.prepare("on-view", "v1"), "v1", "not a committed")


async def check_metadata_preserved(sn: NamespacedSnapshotter, scratch: Path) -> None:
    """Owners, modes, hard links, device nodes, symlinks and xattrs reach the child intact."""
    mounts = await sn.prepare("meta-active")
    async with mounted(mounts, scratch / "meta") as root:
        (root / "setuid").write_text("x")
        os.chown(root / "setuid", 1234, 5678)
        os.chmod(root / "setuid", 0o4755)  # noqa: S103 - the suite checks that setuid survives
        os.link(root / "setuid", root / "hardlink")
        os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.symlink("../setuid", root / "link")
        os.setxattr(root / "setuid", "trusted.wharfd", b"kept")
    await sn.commit("meta", "meta-active")
    async with mounted(await sn.prepare("meta-child", "meta"), scratch / "child") as root:
        st = os.lstat(root / "setuid")
        expect((st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o4755), f"owner/mode: {st}")
        expect(os.lstat(root / "hardlink").st_ino == st.st_ino, "hard links must stay one inode")
        dev = os.lstat(root / "null")
        expect(stat.S_ISCHR(dev.st_mode) and dev.st_rdev == os.makedev(1, 3), "device node kept")
        expect(os.readlink(root / "link") == "../setuid", "symlink target kept")
        expect(os.getxattr(root / "setuid", "trusted.wharfd") == b"kept", "xattr kept")


async def check_prepare_errors(sn: NamespacedSnapshotter, scratch: Path) -> None:
    """Duplicate keys, missing or uncommitted parents and empty keys are refused, leaving nothing."""
    await sn.prepare("busy")
    await expect_error(errors.AlreadyExists, sn.prepare("busy"), "busy")
    await expect_error(errors.NotFound, sn.prepare("orphan", "missing"), "missing")
    await expect_error(errors.InvalidArgument, sn.prepare("on-active", "busy"), "busy")
    await expect_error(errors.InvalidArgument, sn.prepare(""), "key")
    await expect_error(errors.InvalidArgument, sn.prepare("big", labels={"k": "v" * 5000}), "info.Labels")
    await expect_error(
        errors.AlreadyExists, sn.prepare("other", labels={"containerd.io/snapshot.ref": "busy"}), "busy"
    )
    expect([i.name for i in await sn.walk()] == ["busy"], "failed prepares must leave no record")
    expect(sn.backend.entries() == ["1"], f"failed prepares must leave no directory: {sn.backend.entries()}")


async def check_commit(sn: NamespacedSnapshotter, scratch: Path) -> None:
    """Commit replaces labels, resets timestamps, records usage, and refuses what it must."""
    await sn.prepare("work", labels={"old": "1"})
    await sn.prepare("other")
    await expect_error(errors.NotFound, sn.commit("x", "nope"), "nope")
    await sn.commit("done", "work", {"new": "2", "empty": ""})
    info = await sn.stat("done")
    expect(dict(info.labels) == {"new": "2"}, f"commit replaces labels and drops empty ones: {info.labels}")
    await expect_error(errors.AlreadyExists, sn.commit("done", "other"), "done")
    await expect_error(errors.FailedPrecondition, sn.commit("again", "done"), "done")
    expect((await sn.stat("other")).kind == Kind.ACTIVE, "a refused commit leaves the active snapshot")


async def check_remove(sn: NamespacedSnapshotter, scratch: Path) -> None:
    """Remove refuses parents with children (naming them), deletes files, and frees the key."""
    await commit_layer(sn, scratch, "parent", "", {"f": "x"})
    await sn.prepare("kid-a", "parent")
    await sn.view("kid-b", "parent")
    await expect_error(errors.FailedPrecondition, sn.remove("parent"), "parent", '"kid-a"', '"kid-b"')
    await expect_error(errors.NotFound, sn.remove("ghost"), "ghost")
    await sn.remove("kid-a")
    await sn.remove("kid-b")
    await sn.remove("parent")
    expect(await sn.walk() == [], "everything removed")
    expect(sn.backend.entries() == [], f"directories removed with their records: {sn.backend.entries()}")
    await sn.prepare("parent")
    expect((await sn.stat("parent")).kind == Kind.ACTIVE, "a removed key can be used again")


async def check_update_and_stat(sn: NamespacedSnapshotter, scratch: Path) -> None:
    """Labels change by field path; other fields cannot; updated moves, created does not."""
    await sn.prepare("s", labels={"a": "1", "b": "2"})
    before = await sn.stat("s")
    after = await sn.update(Info(Kind.UNKNOWN, "s", labels={"b": "", "c": "3"}), ["labels.b", "labels.c"])
    expect(dict(after.labels) == {"a": "1", "c": "3"}, f"labels.<k> sets or removes one key: {after.labels}")
    expect(after.created == before.created, "created never changes on update")
    moved = after.updated is not None and before.updated is not None and after.updated > before.updated
    expect(moved, f"updated must move forward: {before.updated} -> {after.updated}")
    after = await sn.update(Info(Kind.UNKNOWN, "s", labels={"z": "9"}))
    expect(dict(after.labels) == {"z": "9"}, "no field paths replaces all labels")
    await expect_error(errors.InvalidArgument, sn.update(Info(Kind.UNKNOWN, "s"), ["parent"]), "parent")
    await expect_error(errors.NotFound, sn.update(Info(Kind.UNKNOWN, "nope"), ["labels"]), "nope")
    expect(await sn.stat("s") == after, "stat shows what update returned")


async def check_walk_filters(sn: NamespacedSnapshotter, scratch: Path) -> None:
    """walk understands kind, name, parent and labels.<key>, ANDed by ',' and ORed across filters."""
    await commit_layer(sn, scratch, "base", "", {})
    await sn.prepare("c1", "base", {"app": "web", "dotted.key": "yes"})
    await sn.view("c2", "base", {"app": "db"})

    async def names(*filters: str) -> list[str]:
        return [i.name for i in await sn.walk(filters)]

    expect(await names() == ["base", "c1", "c2"], "no filter lists everything, ordered by key")
    expect(await names("kind==committed") == ["base"], "kind==committed")
    expect(await names("kind==view") == ["c2"], "kind==view")
    expect(await names("parent==base,labels.app==web") == ["c1"], "AND within a filter")
    expect(await names("name==c1", "name==c2") == ["c1", "c2"], "OR across filters")
    expect(await names('labels."dotted.key"==yes') == ["c1"], "quoted label key")
    expect(await names("labels.app~=^d") == ["c2"], "regular expression")
    expect(await names("labels.app") == ["c1", "c2"], "presence")
    await expect_error(errors.InvalidArgument, sn.walk(["name=="]), "filter")


async def check_usage(sn: NamespacedSnapshotter, scratch: Path) -> None:
    """Active usage is measured live; committed usage is what commit recorded."""
    mounts = await sn.prepare("u")
    empty = await sn.usage("u")
    async with mounted(mounts, scratch / "u") as root:
        (root / "blob").write_bytes(os.urandom(256 * 1024))
    grown = await sn.usage("u")
    expect(grown.size >= empty.size + 256 * 1024 and grown.inodes == empty.inodes + 1, f"{empty} -> {grown}")
    await sn.commit("u-done", "u")
    expect(await sn.usage("u-done") == grown, "committed usage is the one measured at commit")
    await expect_error(errors.NotFound, sn.usage("u"), "u")


async def check_namespaces_isolated(sn: NamespacedSnapshotter, scratch: Path) -> None:
    """The same key in two namespaces names two snapshots; parents never cross namespaces."""
    for ns, text in (("ns-a", "a"), ("ns-b", "b")):
        with in_namespace(ns):
            await commit_layer(sn, scratch, "same", "", {"who": text})
    with in_namespace("ns-a"):
        async with mounted(await sn.view("v", "same"), scratch / "va") as root:
            expect((root / "who").read_text() == "a", "each namespace sees its own snapshot")
        await sn.remove("v")
        await sn.remove("same")
        expect(await sn.walk() == [], "ns-a is empty")
    with in_namespace("ns-b"):
        expect([i.name for i in await sn.walk()] == ["same"], "ns-b keeps its snapshot")
    with in_namespace("ns-c"):
        await expect_error(errors.NotFound, sn.prepare("x", "same"), "same")
    token = namespaces.current.set(None)
    try:
        await expect_error(errors.FailedPrecondition, sn.prepare("x"), "namespace")
    finally:
        namespaces.current.reset(token)


async def check_cleanup(sn: NamespacedSnapshotter, scratch: Path) -> None:
    """Cleanup deletes directories no record points at (crash leftovers) and keeps the rest."""
    await commit_layer(sn, scratch, "kept", "", {"f": "x"})
    await sn.prepare("kept-active", "kept")
    before = sn.backend.entries()
    snapshots = sn.backend.root / "snapshots"
    for leftover in ("999", "new-1000", "rm-3", "junk"):
        (snapshots / leftover / "fs").mkdir(parents=True)
        (snapshots / leftover / "fs" / "data").write_text("orphan")
    await sn.cleanup()
    expect(sn.backend.entries() == before, f"cleanup left {sn.backend.entries()}, want {before}")
    expect((await sn.stat("kept")).kind == Kind.COMMITTED, "records untouched")


async def check_concurrent_prepares(sn: NamespacedSnapshotter, scratch: Path) -> None:
    """Racing prepares of one key: exactly one wins; of distinct keys: all succeed."""
    await commit_layer(sn, scratch, "base", "", {"f": "x"})
    results = await asyncio.gather(*(sn.prepare("same", "base") for _ in range(5)), return_exceptions=True)
    wins = [r for r in results if isinstance(r, list)]
    expect(len(wins) == 1, f"one prepare of a key wins: {results}")
    expect(all(isinstance(r, errors.AlreadyExists) for r in results if not isinstance(r, list)), f"{results}")
    await asyncio.gather(*(sn.prepare(f"k{i}", "base") for i in range(5)))
    await asyncio.gather(sn.cleanup(), *(sn.prepare(f"during-cleanup-{i}", "base") for i in range(5)))
    keys = {i.name for i in await sn.walk()}
    expect(len(keys) == 12, f"every prepared key is recorded: {sorted(keys)}")
    expect(len(sn.backend.entries()) == 12, f"one directory per record: {sn.backend.entries()}")


async def check_deep_chain(sn: NamespacedSnapshotter, scratch: Path) -> None:
    """128 committed layers, each adding a file; a container on top sees all of them."""
    parent = ""
    for i in range(128):
        mounts = await sn.prepare(f"layer-{i}-active", parent)
        # Written straight into the new layer: mounting 128 times would only slow the suite.
        await asyncio.to_thread(_write_into_layer, mounts, f"file-{i}", str(i))
        await sn.commit(f"layer-{i}", f"layer-{i}-active")
        parent = f"layer-{i}"
    async with mounted(await sn.prepare("container", parent), scratch / "rootfs") as root:
        found = sorted(os.listdir(root))
        expect(len(found) == 128 and (root / "file-0").read_text() == "0", f"saw {len(found)} files")
        (root / "written").write_text("ok")


def _write_into_layer(mounts: Sequence[Mount], name: str, text: str) -> None:
    for option in mounts[0].options:
        if option.startswith("upperdir="):
            Path(option.removeprefix("upperdir="), name).write_text(text)
            return
    Path(mounts[0].source, name).write_text(text)


CASES: tuple[Case, ...] = (
    check_lifecycle,
    check_views,
    check_metadata_preserved,
    check_prepare_errors,
    check_commit,
    check_remove,
    check_update_and_stat,
    check_walk_filters,
    check_usage,
    check_namespaces_isolated,
    check_cleanup,
    check_concurrent_prepares,
    check_deep_chain,
)
