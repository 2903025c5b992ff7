"""The OCI layer tar format: whiteout names, PAX records, and a strict streaming reader.

Shared by :mod:`~wharfd.runtime.images.apply` (reading layers) and
:mod:`~wharfd.runtime.images.diff` (writing them). What the image spec fixes:
``.wh.<name>`` hides ``<name>`` of lower layers, ``.wh..wh..opq`` hides every
lower entry of its directory, other ``.wh..wh.`` names are aufs bookkeeping.
xattrs travel as ``SCHILY.xattr.<name>`` PAX records (GNU tar and Go write
them so); their binary values survive tarfile's ``surrogateescape`` decoding.
"""

from __future__ import annotations

import tarfile
from decimal import Decimal
from typing import IO, Protocol, cast

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
XATTR_PAX = "SCHILY.xattr."
# xattrs that never travel in a layer: overlayfs acts on its own (redirects,
# opaqueness; layers say that with .wh. entries) and SELinux labels are the host's.
HOST_XATTRS = ("trusted.overlay.", "security.selinux")

# tarfile's header errors (not in typeshed, stable since Python 3.2).
_BAD_HEADER: tuple[type[Exception], ...] = (
    tarfile.InvalidHeaderError,  # type: ignore[attr-defined]
    tarfile.TruncatedHeaderError,  # type: ignore[attr-defined]
)
_FATAL_HEADER: type[Exception] = tarfile.SubsequentHeaderError  # type: ignore[attr-defined]


class Readable(Protocol):
    """A binary stream to read a layer from: a file, or a LayerReader."""

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes; b"" at the end."""
        ...


class _Header(tarfile.TarInfo):
    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> _Header:
        try:
            return super().fromtarfile(tarfile_)
        except _BAD_HEADER as exc:
            # TarFile.next() takes these for the end of the archive and stops
            # silently; in the middle of a layer they mean corruption.
            raise _FATAL_HEADER(str(exc)) from exc


def open_stream(stream: Readable) -> tarfile.TarFile:
    """A forward-only TarFile over ``stream`` that reports a corrupt header instead of ending early.

    Default buffer size on purpose: a larger one makes tarfile's stream
    re-slice it per header, 2x slower (tools.md §5). Raises tarfile.ReadError
    (``"empty file"`` for a zero-byte stream).
    """
    return tarfile.open(
        fileobj=cast(IO[bytes], stream),
        mode="r|",
        tarinfo=_Header,
        encoding="utf-8",
        errors="surrogateescape",
    )


def times(m: tarfile.TarInfo) -> tuple[int, int]:
    """(atime, mtime) of a member in ns; PAX values are parsed exactly rather than through a float."""
    pax = m.pax_headers
    mtime = int(Decimal(pax["mtime"]) * 10**9) if "mtime" in pax else int(m.mtime) * 10**9
    atime = int(Decimal(pax["atime"]) * 10**9) if "atime" in pax else mtime
    return atime, mtime


def xattrs(m: tarfile.TarInfo) -> list[tuple[str, bytes]]:
    """The member's xattrs as (name, raw value), without the host's own (:data:`HOST_XATTRS`)."""
    out = []
    for key, value in m.pax_headers.items():
        if key.startswith(XATTR_PAX):
            name = key[len(XATTR_PAX) :]
            if not name.startswith(HOST_XATTRS):
                out.append((name, value.encode("utf-8", "surrogateescape")))
    return out


def pax_xattrs(values: dict[str, bytes]) -> dict[str, str]:
    """PAX records for xattrs, binary values kept (tarfile writes them with hdrcharset=BINARY)."""
    return {XATTR_PAX + k: v.decode("utf-8", "surrogateescape") for k, v in values.items()}
