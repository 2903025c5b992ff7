"""Image archives as tar streams over async byte sources and sinks, never held whole in memory.

:class:`TarReader` walks a tar stream arriving in arbitrary pieces (a gRPC
byte stream, a file read in chunks): it parses each 512-byte header with the
standard library, applies PAX (``path``, ``linkpath``, ``size``) and GNU long
name records to the entry that follows, and hands out the entry's data in
pieces. :func:`header` and :func:`padding` build the blocks an archive writer
needs; :data:`END` closes an archive, as Go's tar writer does (two zero
blocks, no padding to a 10 KiB record).

Names are checked here, because everything an archive says is untrusted:
absolute names, ``..`` components and NUL bytes are refused (InvalidArgument,
naming the entry) even though import writes nothing to the filesystem by name.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass

from wharfd.runtime import errors

BLOCK = 512
END = bytes(2 * BLOCK)
# PAX and GNU long-name records are metadata: cap them so a hostile archive cannot make us buffer much.
_MAX_META = 1 << 20

REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


@dataclass(frozen=True)
class Entry:
    """One member of an archive, with names already cleaned (``./a//b`` is ``a/b``)."""

    name: str
    type: bytes
    size: int
    linkname: str = ""

    @property
    def is_file(self) -> bool:
        """A regular file (the only kind that carries data we keep)."""
        return self.type in REGULAR

    @property
    def is_dir(self) -> bool:
        """A directory entry."""
        return self.type == tarfile.DIRTYPE

    @property
    def is_symlink(self) -> bool:
        """A symbolic link (legacy Docker archives link repeated layers)."""
        return self.type == tarfile.SYMTYPE


def clean_name(name: str, *, what: str = "archive entry") -> str:
    """The cleaned relative form of an entry name; InvalidArgument for names that escape the archive."""
    if "\x00" in name:
        raise errors.InvalidArgument(f"{what} {name!r}: name contains a NUL byte")
    if name.startswith("/"):
        raise errors.InvalidArgument(
            f'{what} "{name}": absolute path names are not allowed in an image archive'
        )
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise errors.InvalidArgument(f'{what} "{name}": path escapes the archive ("..")')
    return "/".join(parts)


def link_target(entry: Entry) -> str:
    """Where a symlink entry points, as a cleaned archive name; refuse targets outside the archive."""
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(entry.name), entry.linkname))
    if entry.linkname.startswith("/") or joined == ".." or joined.startswith("../"):
        raise errors.InvalidArgument(
            f'archive entry "{entry.name}": link target "{entry.linkname}" is outside the archive'
        )
    return clean_name(joined, what=f'archive entry "{entry.name}" link target')


class TarReader:
    """Reads entries from a tar stream given as an async iterator of byte pieces."""

    def __init__(self, source: AsyncIterator[bytes]) -> None:
        self._source = source
        self._buffer = bytearray()
        self._eof = False
        self._remaining = 0  # data bytes of the current entry not yet handed out
        self._pad = 0  # padding after the current entry's data

    async def _fill(self, n: int) -> None:
        while len(self._buffer) < n and not self._eof:
            try:
                piece = await anext(self._source)
            except StopAsyncIteration:
                self._eof = True
                break
            self._buffer += piece

    async def _take(self, n: int, what: str) -> bytes:
        await self._fill(n)
        if len(self._buffer) < n:
            raise errors.InvalidArgument(f"image archive is truncated: {what}")
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    async def _skip_rest(self) -> None:
        while self._remaining:
            async for _ in self.data():
                pass
        if self._pad:
            await self._take(self._pad, "padding after an entry")
            self._pad = 0

    async def next(self) -> Entry | None:
        """The next entry (its data must be read with :meth:`data` or is skipped); None at the end."""
        await self._skip_rest()
        pax: dict[str, str] = {}
        long_name = long_link = ""
        while True:
            await self._fill(BLOCK)
            if not self._buffer and self._eof:
                return None  # tolerated, as Go's reader does: no end-of-archive blocks at all
            block = await self._take(BLOCK, "header block")
            if block == bytes(BLOCK):
                return None
            info = _parse_header(block)
            if info.type in (
                tarfile.XHDTYPE,
                tarfile.XGLTYPE,
                tarfile.GNUTYPE_LONGNAME,
                tarfile.GNUTYPE_LONGLINK,
            ):
                meta = await self._meta(info.size, info.type)
                if info.type == tarfile.XHDTYPE:
                    pax.update(_pax_records(meta))
                elif info.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = meta.rstrip(b"\x00").decode("utf-8", "surrogateescape")
                elif info.type == tarfile.GNUTYPE_LONGLINK:
                    long_link = meta.rstrip(b"\x00").decode("utf-8", "surrogateescape")
                continue
            return self._entry(info, pax, long_name, long_link)

    def _entry(self, info: tarfile.TarInfo, pax: dict[str, str], long_name: str, long_link: str) -> Entry:
        name = pax.get("path") or long_name or info.name
        size = info.size
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                raise errors.InvalidArgument(
                    f'archive entry "{name}": bad PAX size {pax["size"]!r}'
                ) from None
        if size < 0:
            raise errors.InvalidArgument(f'archive entry "{name}": negative size')
        entry_type = info.type
        # As tarfile decides: regular files and unknown types are followed by data; links, dirs and devices not.
        has_data = info.isreg() or entry_type not in tarfile.SUPPORTED_TYPES
        self._remaining = size if has_data else 0
        self._pad = -self._remaining % BLOCK
        return Entry(clean_name(name), entry_type, size, pax.get("linkpath") or long_link or info.linkname)

    async def _meta(self, size: int, kind: bytes) -> bytes:
        if size > _MAX_META:
            raise errors.ResourceExhausted(
                f"image archive: {kind!r} header record of {size} bytes is too large"
            )
        data = await self._take(size, "extended header")
        pad = -size % BLOCK
        if pad:
            await self._take(pad, "extended header padding")
        return data

    async def data(self, chunk: int = 1 << 20) -> AsyncIterator[bytes]:
        """The current entry's data in pieces of at most ``chunk`` bytes."""
        while self._remaining:
            await self._fill(1)
            if not self._buffer:
                raise errors.InvalidArgument("image archive is truncated inside an entry's data")
            n = min(self._remaining, len(self._buffer), chunk)
            out = bytes(self._buffer[:n])
            del self._buffer[:n]
            self._remaining -= n
            yield out
        if self._pad:
            await self._take(self._pad, "padding after an entry")
            self._pad = 0

    async def read_all(self, limit: int, what: str) -> bytes:
        """The current entry's whole data, refusing more than ``limit`` bytes."""
        if self._remaining > limit:
            raise errors.ResourceExhausted(f"{what} is {self._remaining} bytes; the limit is {limit}")
        return b"".join([piece async for piece in self.data()])


def _parse_header(block: bytes) -> tarfile.TarInfo:
    try:
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError as exc:
        raise errors.InvalidArgument(f"image archive: not a valid tar header ({exc})") from exc


def _pax_records(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            raise errors.InvalidArgument("image archive: malformed PAX record")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise errors.InvalidArgument("image archive: malformed PAX record length") from None
        record = data[space + 1 : pos + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise errors.InvalidArgument("image archive: malformed PAX record")
        key, _, value = record[:-1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def header(name: str, size: int = 0, *, mode: int = 0o644, directory: bool = False) -> bytes:
    """A header block (USTAR, PAX records only when needed) for a file or directory owned by root."""
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.mode = mode
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mtime = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def padding(size: int) -> bytes:
    """Zero bytes that round ``size`` up to a whole block."""
    return bytes(-size % BLOCK)
