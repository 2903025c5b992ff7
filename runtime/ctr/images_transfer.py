"""``wharf images pull|push|export|import|mount|unmount``: ctr 2.x's default, transfer-service forms.

``pull``, ``push``, ``export`` and ``import`` each make one ``Transfer`` call
under a temporary lease, with a progress stream and whatever else it needs
(credentials for a registry, the tar bytes of an archive); the daemon does
the work. References are normalized here (``busybox`` is
``docker.io/library/busybox:latest``), so the names ``images ls`` shows are
the ones a pull records. ``mount`` makes sure the image is unpacked (asking
the daemon to unpack it through a Transfer from the image store to itself),
takes a view (``--rw``: an active snapshot) of its chain id under a lease
named after the target, mounts it and prints the target; ``unmount`` undoes
that, and with ``--rm`` also drops the lease and the snapshot.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any

from wharfd.runtime.ctr import commands
from wharfd.runtime.ctr.snapshots import add_snapshotter_flag, resolve_snapshotter

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from wharfd.runtime.client import Client
    from wharfd.runtime.ctr.commands import Subparsers
    from wharfd.runtime.ctr.transfer_client import ClientStream, Worker

# How long to wait for the side streams to finish once Transfer has answered.
STREAM_GRACE = 10.0


def register_transfer(group: Subparsers) -> None:
    """Add pull, push, export, import, mount and unmount to the ``images`` group."""
    pull = commands.add_command(group, "pull", _pull, help="Pull an image from a remote")
    _registry_flags(pull)
    add_snapshotter_flag(pull)
    _label_flag(pull)
    _platform_flags(
        pull, "Pull content from a specific platform", "Pull content and metadata from all platforms"
    )
    pull.add_argument(
        "--skip-metadata", action="store_true", help="Skip metadata for unused platforms (push may then fail)"
    )
    pull.add_argument("ref", nargs="?", default="", metavar="<ref>")

    push = commands.add_command(group, "push", _push, help="Push an image to a remote")
    _registry_flags(push)
    push.add_argument("--platform", action="append", default=[], help="Push content from a specific platform")
    push.add_argument("remote", nargs="?", default="", metavar="<remote>")
    push.add_argument("local", nargs="?", default="", metavar="<local>")

    export = commands.add_command(group, "export", _export, help="Export images")
    _platform_flags(export, "Export content from a specific platform", "Export content from all platforms")
    export.add_argument("--skip-manifest-json", action="store_true", help="Do not add Docker's manifest.json")
    export.add_argument(
        "--skip-non-distributable", action="store_true", help="Do not add non-distributable blobs"
    )
    export.add_argument("out", nargs="?", default="", metavar="<out>")
    export.add_argument("refs", nargs="*", metavar="<image>")

    imp = commands.add_command(group, "import", _import, help="Import images")
    imp.add_argument("--base-name", default="", help="Base image name for added images")
    imp.add_argument("--digests", action="store_true", help="Whether to create digest images")
    imp.add_argument(
        "--skip-digest-for-named", action="store_true", help="Skip --digests for images named in the archive"
    )
    imp.add_argument("--index-name", default="", help="Image name to keep the index as")
    imp.add_argument("--all-platforms", action="store_true", help="Import content for all platforms")
    imp.add_argument("--platform", default="", help="Import content for a specific platform")
    imp.add_argument("--no-unpack", action="store_true", help="Skip unpacking the images")
    add_snapshotter_flag(imp)
    _label_flag(imp)
    imp.add_argument("input", nargs="?", default="", metavar="<in>")

    mount = commands.add_command(group, "mount", _mount, help="Mount an image to a target path")
    mount.add_argument("--rw", action="store_true", help="Enable write support on the mount")
    mount.add_argument("--platform", default="", help="Mount the image for the specified platform")
    add_snapshotter_flag(mount)
    mount.add_argument("ref", nargs="?", default="", metavar="<ref>")
    mount.add_argument("target", nargs="?", default="", metavar="<target>")

    unmount = commands.add_command(group, "unmount", _unmount, help="Unmount the image from the target")
    unmount.add_argument("--rm", action="store_true", help="Remove the snapshot after a successful unmount")
    add_snapshotter_flag(unmount)
    unmount.add_argument("target", nargs="?", default="", metavar="<target>")


def _registry_flags(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("-u", "--user", default="", help="User[:password] registry user and password")
    cmd.add_argument("--plain-http", action="store_true", help="Allow connections using plain HTTP")
    cmd.add_argument("--hosts-dir", default="", help="Custom hosts configuration directory")


def _label_flag(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--label", action="append", default=[], help="Labels to attach to the image")


def _platform_flags(cmd: argparse.ArgumentParser, one: str, every: str) -> None:
    cmd.add_argument("--platform", action="append", default=[], help=one)
    cmd.add_argument("--all-platforms", action="store_true", help=every)


# --- the transfer session -------------------------------------------------------------------


class Session:
    """Streams opened for one Transfer, the threads serving them, and the progress display."""

    def __init__(self, client: Client, lease: Sequence[tuple[str, str]], out: IO[str]) -> None:
        from wharfd.runtime.ctr.progress import Display

        self.client = client
        self.metadata = tuple(lease)
        self.display = Display(out)
        self.streams: list[ClientStream] = []
        self.workers: list[Worker] = []

    def open(self, kind: str) -> ClientStream:
        """A new stream under the session's lease."""
        from wharfd.runtime.ctr.transfer_client import ClientStream

        stream = ClientStream(self.client, kind, self.metadata)
        self.streams.append(stream)
        return stream

    def progress(self) -> str:
        """A progress stream feeding the display; its id."""
        from wharfd.runtime.ctr.transfer_client import serve_progress

        stream = self.open("progress")
        self.workers.append(serve_progress(stream, self.display))
        return stream.id

    def credentials(self, reference: str, user: str) -> str:
        """A credentials stream answering with ``user`` (``name[:password]``); its id."""
        from wharfd.runtime.ctr.transfer_client import serve_credentials

        username, _, secret = user.partition(":")
        if username and not secret:
            secret = _prompt_password()
        stream = self.open("creds")
        self.workers.append(serve_credentials(stream, reference, username, secret))
        return stream.id

    def run(self, source: Message, destination: Message, progress: str) -> None:
        """Call Transfer, then let the side streams drain and draw the last progress."""
        from wharfd.api.services.transfer.v1 import transfer_pb2 as tpb
        from wharfd.runtime.ctr.transfer_client import transfer_stub
        from wharfd.runtime.services.streaming import pack

        request = tpb.TransferRequest(
            source=pack(source),
            destination=pack(destination),
            options=tpb.TransferOptions(progress_stream=progress),
        )
        try:
            transfer_stub(self.client).Transfer(request, metadata=self.metadata)
        except BaseException:
            self.close()
            raise
        for worker in self.workers:
            worker.join(STREAM_GRACE)
        self.display.finish()
        self.close()

    def close(self) -> None:
        """Let go of every stream still open."""
        for stream in self.streams:
            stream.cancel()


@contextlib.contextmanager
def _session(args: argparse.Namespace, out: IO[str] | None = None) -> Iterator[Session]:
    from wharfd.runtime.ctr.leases import temporary_lease

    with commands.new_client(args) as client, temporary_lease(client) as lease:
        session = Session(client, lease, out or sys.stdout)
        try:
            yield session
        finally:
            session.close()


def _prompt_password() -> str:
    if not sys.stdin.isatty():
        raise commands.CommandError("a password is needed for --user, and stdin is not a terminal")
    sys.stdout.write("Password: ")
    sys.stdout.flush()
    secret = getpass.getpass(prompt="")
    sys.stdout.write("\n")
    return secret


def _normalized(ref: str) -> str:
    from wharfd.runtime.images.reference import parse_normalized

    return str(parse_normalized(ref))


def _platforms(specs: Sequence[str]) -> list[Any]:
    from wharfd.api.types import platform_pb2
    from wharfd.runtime.images import platforms

    out = []
    for spec in specs:
        p = platforms.parse(spec)
        out.append(platform_pb2.Platform(os=p.os, architecture=p.architecture, variant=p.variant))
    return out


def _host_platform() -> Any:
    from wharfd.runtime.images import platforms

    return _platforms([platforms.format_platform(platforms.host())])[0]


def _registry(reference: str, args: argparse.Namespace, auth_stream: str) -> Any:
    from wharfd.api.types.transfer import registry_pb2

    resolver = registry_pb2.RegistryResolver(
        host_dir=args.hosts_dir, default_scheme="http" if args.plain_http else "", auth_stream=auth_stream
    )
    return registry_pb2.OCIRegistry(reference=reference, resolver=resolver)


# --- commands ---------------------------------------------------------------------------------


def _pull(args: argparse.Namespace) -> None:
    from wharfd.api.types.transfer import imagestore_pb2 as ipb

    if not args.ref:
        raise commands.CommandError("please provide an image reference to pull")
    if args.platform and args.all_platforms:
        raise commands.CommandError("cannot specify both --platform and --all-platforms")
    ref = _normalized(args.ref)
    wanted = _platforms(args.platform) or ([] if args.all_platforms else [_host_platform()])
    store = ipb.ImageStore(
        name=ref,
        labels=commands.label_args(args.label),
        platforms=wanted,
        all_metadata=not args.skip_metadata,
        unpacks=[ipb.UnpackConfiguration(platform=p, snapshotter=args.snapshotter) for p in wanted],
    )
    with _session(args) as session:
        registry = _registry(ref, args, session.credentials(ref, args.user))
        session.run(registry, store, session.progress())


def _push(args: argparse.Namespace) -> None:
    from wharfd.api.types.transfer import imagestore_pb2 as ipb

    if not args.remote:
        raise commands.CommandError("please provide a remote image reference to push")
    remote = _normalized(args.remote)
    store = ipb.ImageStore(name=args.local or remote, platforms=_platforms(args.platform))
    with _session(args) as session:
        registry = _registry(remote, args, session.credentials(remote, args.user))
        session.run(store, registry, session.progress())


def _export(args: argparse.Namespace) -> None:
    from wharfd.api.types.transfer import imagestore_pb2 as ipb
    from wharfd.api.types.transfer import importexport_pb2 as xpb
    from wharfd.runtime.ctr.transfer_client import receive_to

    if not args.out or not args.refs:
        raise commands.CommandError("please provide both an output filename and an image reference to export")
    to_stdout = args.out == "-"
    out: IO[bytes] = sys.stdout.buffer if to_stdout else open(args.out, "wb")  # noqa: SIM115
    ok = False
    try:
        # The tar owns stdout when it goes there; progress moves to stderr.
        with _session(args, sys.stderr if to_stdout else None) as session:
            stream = session.open("export")
            session.workers.append(receive_to(stream, out))
            source = ipb.ImageStore(extra_references=[ipb.ImageReference(name=r) for r in args.refs])
            dest = xpb.ImageExportStream(
                stream=stream.id,
                platforms=_platforms(args.platform),
                all_platforms=args.all_platforms,
                skip_compatibility_manifest=args.skip_manifest_json,
                skip_non_distributable=args.skip_non_distributable,
            )
            session.run(source, dest, session.progress())
        ok = True
    finally:
        if not to_stdout:
            out.close()
            if not ok:
                with contextlib.suppress(OSError):
                    os.unlink(args.out)  # no half-written archive left behind


def _import(args: argparse.Namespace) -> None:
    from wharfd.api.types.transfer import importexport_pb2 as xpb
    from wharfd.runtime.ctr.transfer_client import send_from

    if not args.input:
        raise commands.CommandError("please provide an archive to import (or - for stdin)")
    store = import_store(args)
    source: IO[bytes] = sys.stdin.buffer if args.input == "-" else open(args.input, "rb")  # noqa: SIM115
    try:
        with _session(args) as session:
            stream = session.open("import")
            session.workers.append(send_from(stream, source))
            session.run(xpb.ImageImportStream(stream=stream.id), store, session.progress())
    finally:
        if args.input != "-":
            source.close()


def import_store(args: argparse.Namespace) -> Any:
    """The ImageStore ctr's transfer-mode import sends for these flags."""
    from wharfd.api.types.transfer import imagestore_pb2 as ipb

    prefix, overwrite = args.base_name, False
    if not prefix:
        prefix, overwrite = f"import-{time.strftime('%Y-%m-%d')}", True
    ref = ipb.ImageReference(name=prefix, is_prefix=True, allow_overwrite=overwrite)
    if args.digests:
        # As ctr words it: --skip-digest-for-named turns the skip of named digests *off*.
        ref.add_digest, ref.skip_named_digest = True, not args.skip_digest_for_named
    elif args.skip_digest_for_named:
        raise commands.CommandError("--skip-digest-for-named must be specified with --digests option")
    platform = _platforms([args.platform])[0] if args.platform else _host_platform()
    store = ipb.ImageStore(
        name=args.index_name, labels=commands.label_args(args.label), extra_references=[ref]
    )
    if not args.all_platforms:
        store.platforms.append(platform)
    if not args.no_unpack:
        store.unpacks.append(ipb.UnpackConfiguration(platform=platform, snapshotter=args.snapshotter))
    return store


def _mount(args: argparse.Namespace) -> None:
    from wharfd.runtime.ctr import images_mount

    if not args.ref:
        raise commands.CommandError("please provide an image reference to mount")
    if not args.target:
        raise commands.CommandError("please provide a target path to mount to")
    with commands.new_client(args) as client:
        snapshotter = resolve_snapshotter(client, args.snapshotter)
        images_mount.mount(client, args.ref, args.target, snapshotter, platform=args.platform, rw=args.rw)
    print(args.target)


def _unmount(args: argparse.Namespace) -> None:
    from wharfd.runtime.ctr import images_mount

    if not args.target:
        raise commands.CommandError("please provide a target path to unmount from")
    with commands.new_client(args) as client:
        snapshotter = resolve_snapshotter(client, args.snapshotter)
        images_mount.unmount(client, args.target, snapshotter, remove=args.rm)
    print(args.target)
