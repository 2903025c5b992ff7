"""``wharf content``: list, read, write, label and delete blobs of the content store.

The registry-facing commands (``fetch``, ``fetch-blob``, ``fetch-object``,
``push-object``), ``edit`` and ``prune`` wait for the image pull pipeline
and are not offered yet. Sizes and ages print as Docker's go-units does
(``1.234MB``, ``3 minutes``), because ctr uses it for these columns.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import queue
import re
import sys
import time
from collections.abc import Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any

from wharfd.runtime.ctr import commands
from wharfd.runtime.ctr.tabwriter import Writer

if TYPE_CHECKING:
    from wharfd.runtime.client import Client
    from wharfd.runtime.ctr.commands import Subparsers

# ctr copies through 1 MiB buffers; each becomes one Write message.
CHUNK = 1 << 20
_DECIMAL_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
# go-digest: hex lengths of the algorithms ctr knows, and the general digest grammar.
_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
_DIGEST_GRAMMAR = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")


def parse_digest(text: str) -> str:
    """Validate a digest as go-digest's ``Parse`` does, with its error texts."""
    algorithm, sep, encoded = text.partition(":")
    if not algorithm or not sep or not encoded:
        raise commands.CommandError("invalid checksum digest format")
    if algorithm not in _HEX_LENGTHS:
        if not _DIGEST_GRAMMAR.fullmatch(text):
            raise commands.CommandError("invalid checksum digest format")
        raise commands.CommandError("unsupported digest algorithm")
    if len(encoded) != _HEX_LENGTHS[algorithm]:
        raise commands.CommandError("invalid checksum digest length")
    if not re.fullmatch(r"[a-f0-9]+", encoded):
        raise commands.CommandError("invalid checksum digest format")
    return text


def human_size(size: float) -> str:
    """go-units' ``HumanSize``: four significant digits in powers of 1000, no space (``1.234MB``)."""
    unit = 0
    while size >= 1000 and unit < len(_DECIMAL_UNITS) - 1:
        size /= 1000
        unit += 1
    return f"{size:.4g}{_DECIMAL_UNITS[unit]}"


def human_duration(seconds: float) -> str:
    """go-units' ``HumanDuration`` (``Less than a second``, ``About a minute``, ``3 hours``, …)."""
    whole = int(seconds)
    if whole < 1:
        return "Less than a second"
    if whole == 1:
        return "1 second"
    if whole < 60:
        return f"{whole} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def _since(stamp: Any) -> float:
    return time.time() - float(stamp.seconds + stamp.nanos / 1e9)


def register(subparsers: Subparsers) -> None:
    """Add ``content`` and its subcommands, in ctr's order."""
    group = commands.add_group(subparsers, "content", help="Manage content")
    active = commands.add_command(group, "active", _active, help="Display active transfers")
    # ctr declares these two and never reads them; accepted so its command lines work.
    active.add_argument("-t", "--timeout", type=commands.duration_arg, default=0.0, help="Unused, as in ctr")
    active.add_argument("--root", default="/tmp/content", help="Unused, as in ctr")
    active.add_argument("match", nargs="?", default="", metavar="<filter>", help='e.g. ref~="^pull-"')
    delete = commands.add_command(
        group, "delete", _delete, aliases=["del", "remove", "rm"], help="Permanently delete one or more blobs"
    )
    delete.add_argument("digests", nargs="*", metavar="<digest>")
    get = commands.add_command(group, "get", _get, help="Get the data for an object")
    get.add_argument("digest", nargs="?", default="", metavar="<digest>")
    ingest = commands.add_command(group, "ingest", _ingest, help="Accept content into the store")
    ingest.add_argument("--expected-size", type=int, default=0, help="Validate against provided size")
    ingest.add_argument("--expected-digest", default="", help="Verify content against expected digest")
    ingest.add_argument("ref", nargs="?", default="", metavar="<key>")
    ls = commands.add_command(group, "list", _list, aliases=["ls"], help="List all blobs in the store")
    ls.add_argument("-q", "--quiet", action="store_true", help="Print only the blob digest")
    ls.add_argument("filters", nargs="*", metavar="filter")
    label = commands.add_command(group, "label", _label, help="Add labels to content")
    label.add_argument("args", nargs="*", metavar="<digest> [<label>=<value> ...]")


def _active(args: argparse.Namespace) -> None:
    from wharfd.api.services.content.v1 import content_pb2 as pb

    with commands.new_client(args) as client:
        filters = [args.match] if args.match else []
        statuses = client.content.ListStatuses(pb.ListStatusesRequest(filters=filters)).statuses
    tw = Writer(sys.stdout, 1, 8, 1, padchar="\t")
    tw.write("REF\tSIZE\tAGE\t\n")
    for status in statuses:
        tw.write(
            f"{status.ref}\t{human_size(status.offset)}\t{human_duration(_since(status.started_at))}\t\n"
        )
    tw.flush()


def _list(args: argparse.Namespace) -> None:
    from wharfd.api.services.content.v1 import content_pb2 as pb

    with commands.new_client(args) as client:
        stream = client.content.List(pb.ListContentRequest(filters=args.filters))
        if args.quiet:
            for response in stream:
                for info in response.info:
                    print(info.digest)
            return
        tw = Writer(sys.stdout, 1, 8, 1, padchar="\t")
        tw.write("DIGEST\tSIZE\tAGE\tLABELS\n")
        try:
            for response in stream:
                for info in response.info:
                    labels = commands.format_labels(dict(info.labels)) or "-"
                    age = human_duration(_since(info.created_at))
                    tw.write(f"{info.digest}\t{human_size(info.size)}\t{age}\t{labels}\n")
        finally:
            tw.flush()  # ctr flushes what it has even when the stream fails


def _delete(args: argparse.Namespace) -> None:
    from wharfd.api.services.content.v1 import content_pb2 as pb
    from wharfd.runtime import errors
    from wharfd.runtime.client import describe

    failure: str | None = None
    with commands.new_client(args) as client:
        for arg in args.digests:
            try:
                client.content.Delete(pb.DeleteContentRequest(digest=parse_digest(arg)))
            except errors.NotFound:
                continue  # already gone: nothing to report, as ctr
            except (commands.CommandError, errors.WharfError) as exc:
                # Keep going so one bad digest does not hide the others; fail at the end.
                failure = failure or describe(exc)
                commands.log.error("could not delete %s: %s", arg, describe(exc))
                continue
            print(arg)
    if failure:
        raise commands.CommandError(failure)


def _get(args: argparse.Namespace) -> None:
    digest = parse_digest(args.digest)
    with commands.new_client(args) as client:
        copy_blob(client, digest, sys.stdout.buffer)


def copy_blob(
    client: Client, digest: str, out: IO[bytes], *, metadata: Sequence[tuple[str, str]] = ()
) -> None:
    """Stream a whole blob to ``out``."""
    from wharfd.api.services.content.v1 import content_pb2 as pb

    for chunk in client.content.Read(pb.ReadContentRequest(digest=digest), metadata=metadata):
        out.write(chunk.data)
    out.flush()


def read_blob(client: Client, digest: str, limit: int) -> bytes:
    """A whole blob in memory; ResourceExhausted when it is larger than ``limit`` bytes."""
    from wharfd.api.services.content.v1 import content_pb2 as pb
    from wharfd.runtime import errors

    buf = io.BytesIO()
    # One byte past the limit tells an oversized blob from one that just fits.
    for chunk in client.content.Read(pb.ReadContentRequest(digest=digest, size=limit + 1)):
        buf.write(chunk.data)
    if buf.tell() > limit:
        raise errors.ResourceExhausted(f"content {digest}: larger than the {limit} bytes allowed here")
    return buf.getvalue()


def _label(args: argparse.Namespace) -> None:
    from google.protobuf import field_mask_pb2

    from wharfd.api.services.content.v1 import content_pb2 as pb

    obj, labels = commands.object_with_label_args(args.args)
    with commands.new_client(args) as client:
        digest = parse_digest(obj)
        if not labels:
            info = client.content.Info(pb.InfoRequest(digest=digest)).info
        else:
            wanted = pb.Info(digest=digest, labels={k: v for k, v in labels.items() if v})
            mask = field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels])
            info = client.content.Update(pb.UpdateRequest(info=wanted, update_mask=mask)).info
    print(commands.format_labels(dict(info.labels)))


def _ingest(args: argparse.Namespace) -> None:
    if args.expected_digest:
        parse_digest(args.expected_digest)
    if not args.ref:
        raise commands.CommandError("must specify a transaction reference")
    with commands.new_client(args) as client:
        write_blob(client, args.ref, sys.stdin.buffer, args.expected_size, args.expected_digest)


class _WriteStream:
    """The bidi Write call driven one request, one answer at a time."""

    def __init__(self, client: Client, metadata: Sequence[tuple[str, str]]) -> None:
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._responses = client.content.Write(iter(self._requests.get, None), metadata=metadata)

    def send(self, request: Any) -> Any:
        self._requests.put(request)
        return next(self._responses)

    def close(self) -> None:
        self._requests.put(None)  # ends the request iterator, so the call can finish
        self._responses.cancel()


@contextlib.contextmanager
def _write_stream(client: Client, metadata: Sequence[tuple[str, str]]) -> Iterator[_WriteStream]:
    stream = _WriteStream(client, metadata)
    try:
        yield stream
    finally:
        stream.close()


def write_blob(
    client: Client,
    ref: str,
    source: IO[bytes],
    size: int = 0,
    expected: str = "",
    *,
    labels: dict[str, str] | None = None,
    metadata: Sequence[tuple[str, str]] = (),
) -> None:
    """Ingest ``source`` under ``ref`` and commit it, as ctr's ``content.WriteBlob``.

    An ingest left at some offset by an earlier attempt is resumed there. A
    blob the store already has (by ``expected``) is success, not an error.
    """
    from wharfd.api.services.content.v1 import content_pb2 as pb
    from wharfd.runtime import errors
    from wharfd.runtime.client import describe

    with _write_stream(client, metadata) as stream:
        try:
            status = stream.send(
                pb.WriteContentRequest(action=pb.STAT, ref=ref, total=size, expected=expected)
            )
        except errors.AlreadyExists:
            return
        offset = status.offset
        if offset:
            _skip(source, offset, ref)
        while chunk := source.read(CHUNK):
            answer = stream.send(pb.WriteContentRequest(action=pb.WRITE, offset=offset, data=chunk))
            if answer.offset < offset + len(chunk):
                raise errors.DataLoss(f"ref {ref}: short write at offset {offset}")
            offset = answer.offset
        if size and offset < size:
            raise commands.CommandError("failed to read expected number of bytes: unexpected EOF")
        commit = pb.WriteContentRequest(
            action=pb.COMMIT, offset=offset, total=size, expected=expected, labels=labels or {}
        )
        try:
            stream.send(commit)
        except errors.AlreadyExists:
            return
        except errors.WharfError as exc:
            raise commands.CommandError(f'failed commit on ref "{ref}": {describe(exc)}') from exc


def _skip(source: IO[bytes], offset: int, ref: str) -> None:
    # Resume after what the ingest already holds: seek if we can, else read past it.
    try:
        if source.seek(offset) == offset:
            return
    except (OSError, io.UnsupportedOperation):
        pass
    left = offset
    while left > 0:
        data = source.read(min(CHUNK, left))
        if not data:
            raise commands.CommandError(f"unable to resume write to {ref}: input ends before offset {offset}")
        left -= len(data)
