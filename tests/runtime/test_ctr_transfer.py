"""The transfer commands' client side: progress display, import flags, and the progress relay and throttle."""

from __future__ import annotations

import argparse
import asyncio
import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from wharfd.api.types import descriptor_pb2
from wharfd.api.types.transfer import progress_pb2
from wharfd.runtime import errors
from wharfd.runtime.ctr import images_transfer, progress
from wharfd.runtime.ctr.main import build_parser
from wharfd.runtime.images import progress as relay
from wharfd.runtime.images import tarstream

LAYER = "layer-sha256:" + "a" * 64
MANIFEST = "manifest-sha256:" + "b" * 64


def msg(
    event: str, name: str = "", parents: tuple[str, ...] = (), done: int = 0, total: int = 0
) -> progress_pb2.Progress:
    return progress_pb2.Progress(event=event, name=name, parents=list(parents), progress=done, total=total)


# --- display -------------------------------------------------------------------------------


def test_tree_and_render_match_ctr_layout() -> None:
    tree = progress.Tree()
    tree.update(msg("Pulling from OCI Registry (r)"))
    root = msg("fetching image content", "r")
    tree.update(root)
    m = msg("complete", MANIFEST, ("r",), 400, 400)
    m.desc.CopyFrom(
        descriptor_pb2.Descriptor(
            media_type="application/vnd.oci.image.manifest.v1+json", digest="sha256:" + "b" * 64
        )
    )
    tree.update(m)
    tree.update(msg("downloading", LAYER, (MANIFEST,), 512, 2048))
    screen, total = tree.render(2.0)
    lines = screen.splitlines()
    assert lines[0] == f"{'r':<40}\tfetching image content\t"
    assert lines[1].startswith(f"{'└──manifest (bbbbbbbbbbbb)':<40}\tcomplete   \t|")
    assert lines[2].startswith(f"{'   └──layer (aaaaaaaaaaaa)':<40}\tdownloading\t|")
    assert lines[2].endswith("\t 512.0 B/2.0 KiB\t")
    assert lines[3] == "application/vnd.oci.image.manifest.v1+json sha256:" + "b" * 64
    assert lines[4] == "Pulling from OCI Registry (r)\telapsed: 2.0 s\ttotal:  912.0 \t(456.0 B/s)\t"
    assert total == 912


def test_bar_and_names() -> None:
    assert progress.bar(0.5, 12) == f"|{progress.GREEN}+++++{progress.RESET}-----|"
    assert progress.display_name(LAYER) == "layer (aaaaaaaaaaaa)"
    assert progress.display_name("docker.io/library/busybox:1") == "docker.io/library/busybox:1"
    assert (
        progress.status_line("Done", 12.25, 3 << 20)
        == "Done\telapsed: 12.2s\ttotal:  3.0 Mi\t(250.8 KiB/s)\t"
    )


def test_plain_display_prints_changes_and_ctr_final_line() -> None:
    out = io.StringIO()
    display = progress.Display(out, terminal=False)
    display(msg("Pulling from OCI Registry (r)"))
    display(msg("waiting", LAYER, ("r",), 0, 10))
    display(msg("downloading", LAYER, ("r",), 5, 10))
    display(msg("downloading", LAYER, ("r",), 7, 10))  # same state: no new line
    display(msg("complete", LAYER, ("r",), 10, 10))
    display(msg("Completed pull from OCI Registry (r)"))
    display.finish()
    lines = out.getvalue().splitlines()
    assert lines[:4] == [
        "Pulling from OCI Registry (r)",
        "layer (aaaaaaaaaaaa): waiting",
        "layer (aaaaaaaaaaaa): downloading",
        "layer (aaaaaaaaaaaa): complete",
    ]
    assert lines[4].startswith("Completed pull from OCI Registry (r)\telapsed: ")
    assert len(lines) == 5


def test_terminal_display_redraws_in_place() -> None:
    out = io.StringIO()
    display = progress.Display(out, terminal=True)
    display(msg("waiting", LAYER, (), 0, 10))
    display._last_draw = 0.0  # allow the next redraw at once
    display(msg("complete", LAYER, (), 10, 10))
    display.finish()
    text = out.getvalue()
    assert progress.CLEAR_LINE in text
    assert text.rstrip("\n").splitlines()[-1].startswith("\telapsed: ")


# --- import flags -----------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["images", "import", *argv])


def test_import_flags_build_ctr_image_store() -> None:
    store = images_transfer.import_store(parse("--base-name", "foo/bar", "--label", "a=b", "x.tar"))
    [ref] = store.extra_references
    assert (ref.name, ref.is_prefix, ref.allow_overwrite, ref.add_digest) == ("foo/bar", True, False, False)
    assert dict(store.labels) == {"a": "b"} and len(store.platforms) == 1 and len(store.unpacks) == 1
    store = images_transfer.import_store(parse("--digests", "--all-platforms", "--no-unpack", "x.tar"))
    [ref] = store.extra_references
    assert ref.name.startswith("import-") and ref.allow_overwrite and ref.add_digest and ref.skip_named_digest
    assert not store.platforms and not store.unpacks
    store = images_transfer.import_store(
        parse("--digests", "--skip-digest-for-named", "--index-name", "i:1", "x")
    )
    assert store.name == "i:1" and not store.extra_references[0].skip_named_digest
    store = images_transfer.import_store(parse("--platform", "linux/arm64", "--snapshotter", "native", "x"))
    assert store.platforms[0].architecture == "arm64" and store.unpacks[0].snapshotter == "native"
    from wharfd.runtime.ctr.commands import CommandError

    with pytest.raises(CommandError, match="--digests"):
        images_transfer.import_store(parse("--skip-digest-for-named", "x"))


def test_transfer_commands_are_registered() -> None:
    args = build_parser().parse_args(["images", "pull", "--plain-http", "--platform", "linux/amd64", "x/y:1"])
    assert args.plain_http and args.platform == ["linux/amd64"] and args.ref == "x/y:1"
    args = build_parser().parse_args(["i", "export", "--skip-manifest-json", "out.tar", "a:1", "b:2"])
    assert args.out == "out.tar" and args.refs == ["a:1", "b:2"] and args.skip_manifest_json
    args = build_parser().parse_args(["images", "unmount", "--rm", "/mnt"])
    assert args.rm and args.target == "/mnt"


# --- server side: relay and throttle -----------------------------------------------------------


def test_pull_relay_states() -> None:
    seen: list[relay.Progress] = []

    class NoStore:
        async def open_blob(self, digest: str) -> Path:
            raise errors.NotFound(digest)

    r = relay.PullRelay("img", NoStore(), seen.append)  # type: ignore[arg-type]

    async def feed() -> None:
        await r.relay(LAYER, "layer", "waiting", 0, 10)
        await r.relay(LAYER, "layer", "downloading", 5, 10)
        await r.relay(LAYER, "layer", "unpacking", 10, 10)  # still downloading: not shown yet
        await r.relay(LAYER, "layer", "downloaded", 10, 10)
        await r.relay(LAYER, "layer", "done", 10, 10)
        await r.relay(LAYER, "layer", "downloaded", 10, 10)  # late: ignored
        await r.relay(MANIFEST, "manifest", "exists", 3, 3)
        await r.relay(MANIFEST, "manifest", "done", 3, 3)

    asyncio.run(feed())
    assert [(p.name[:5], p.event) for p in seen] == [
        ("layer", "waiting"),
        ("layer", "downloading"),
        ("layer", "extracting"),
        ("layer", "extracted"),
        ("manif", "already exists"),
        ("manif", "already exists"),
    ]
    assert all(p.parents == ("img",) for p in seen)


def test_throttle_limits_byte_updates_and_refreshes_at_the_end() -> None:
    seen: list[relay.Progress] = []
    t = relay.Throttle(seen.append, interval=60)
    for n in range(5):
        t(relay.Progress("downloading", LAYER, (), n, 10))
    t(relay.Progress("downloading", LAYER, (), 10, 10))  # the last byte always goes out
    t(relay.Progress("complete", LAYER, (), 10, 10))
    t.status("Done", last=True)
    assert [(p.event, p.progress) for p in seen] == [
        ("downloading", 0),
        ("downloading", 10),
        ("complete", 10),
        ("Done", 0),
        ("complete", 10),
    ]
    assert not relay.Throttle(None).enabled


# --- tar stream reader details -------------------------------------------------------------------


def test_tar_reader_long_names_and_pax() -> None:
    long_name = "blobs/" + "d" * 150 + "/file"
    buf = io.BytesIO()
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            info = tarfile.TarInfo(long_name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
            link = tarfile.TarInfo("link")
            link.type, link.linkname = tarfile.SYMTYPE, "x" * 120
            tar.addfile(link)
        data = buf.getvalue()
        buf = io.BytesIO()

        async def read(blob: bytes = data) -> list[tuple[str, bytes, str]]:
            async def pieces() -> AsyncIterator[bytes]:
                for i in range(0, len(blob), 7):
                    yield blob[i : i + 7]

            reader = tarstream.TarReader(pieces())
            out = []
            while (entry := await reader.next()) is not None:
                out.append((entry.name, b"".join([c async for c in reader.data()]), entry.linkname))
            return out

        assert asyncio.run(read()) == [(long_name, b"abc", ""), ("link", b"", "x" * 120)]


def test_platform_matchers_accept_what_the_host_runs() -> None:
    from wharfd.runtime.images import platforms
    from wharfd.runtime.images.transfer import compatible, host_default

    v4 = platforms.Platform("linux", "amd64", "v4")
    assert compatible((v4,)).match(platforms.Platform("linux", "amd64"))
    assert not compatible((v4,)).match(platforms.Platform("linux", "arm64", "v8"))
    here = platforms.host()
    assert host_default().match(platforms.Platform(here.os, here.architecture))
    assert all(p.architecture == here.architecture for p in host_default().platforms)
