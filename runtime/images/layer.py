"""Layer blobs as byte streams: compression, decompression and the two digests.

A layer blob is a tar, stored plain, gzip- or zstd-compressed. One pass over
it has to yield three things: the tar stream for the extractor, the digest of
the blob as stored (checked against the manifest descriptor) and the *diff
id*, the digest of the uncompressed tar (checked against the image config's
``rootfs.diff_ids``, and the input of chain ids). :class:`LayerReader` does
all three while the extractor reads; :class:`LayerWriter` is its mirror for
producing a layer (``diff``).

Compression is decided by the blob's first bytes, not by its media type:
Docker's plain ``…rootfs.diff.tar`` type is often gzip in practice, and a
layer whose magic contradicts its media type decodes the way containerd
would decode it. The media type must still name a layer.

Decoding is bounded in memory: gzip output is capped per call
(``max_length``) and zstd is fed in small slices, so a compression bomb costs
disk, never a burst of RAM. A stream that ends before its last gzip member
or zstd frame is complete raises :class:`~wharfd.runtime.errors.DataLoss`.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
import queue
import threading
from typing import BinaryIO

from wharfd.runtime import errors
from wharfd.runtime.images import mediatypes

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# 1 MiB reads keep per-call overhead (hashing, decoding) negligible; tools.md §5.
_READ = 1 << 20
# Cap on one gzip decode step's output, and the zstd input slice: with zstd's
# worst ratio (an RLE block of 128 KiB from 4 bytes) 16 KiB in is at most 512 MiB out.
_OUT_MAX = 1 << 20
_ZSTD_SLICE = 16 << 10
# Chunks the helper thread may decode ahead of the extractor (each at most ~1 MiB).
_AHEAD = 8


# The codecs load with the first layer: the daemon imports this module at start-up, long before.
@functools.cache
def _decode_errors() -> tuple[type[Exception], ...]:
    import zstandard
    from isal import isal_zlib

    gzip_error: type[Exception] = isal_zlib.error  # type: ignore[assignment]  # isal's stub types it as an instance
    return (gzip_error, zstandard.ZstdError)


class Compression(enum.Enum):
    """How a layer blob is stored."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


def sniff(head: bytes) -> Compression:
    """The compression whose magic number starts ``head`` (NONE when neither matches)."""
    if head.startswith(GZIP_MAGIC):
        return Compression.GZIP
    if head.startswith(ZSTD_MAGIC):
        return Compression.ZSTD
    return Compression.NONE


def detect(head: bytes, media_type: str | None = None) -> Compression:
    """Decide a blob's compression from its first bytes, after checking ``media_type`` names a layer."""
    if media_type is not None:
        try:
            mediatypes.layer_compression(mediatypes.base(media_type))
        except ValueError:
            raise errors.InvalidArgument(f"media type {media_type!r}: not a layer") from None
        if mediatypes.is_encrypted(media_type):
            raise errors.InvalidArgument(f"media type {media_type!r}: encrypted layers are not supported")
    return sniff(head)


class _Decoder:
    """Decodes a sequence of gzip members or zstd frames; the format-specific step is ``_decode``."""

    name = ""
    magic = b""

    def __init__(self) -> None:
        self.pending = b""  # input not yet decoded
        self.in_member = True
        self._padding = False  # after the last member only zero bytes may follow

    def _start(self) -> None:
        raise NotImplementedError

    def _decode(self) -> bytes:
        """Decode some of ``pending``; set ``in_member`` False when a member/frame ends."""
        raise NotImplementedError

    def step(self) -> bytes:
        """Make progress on ``pending``; may return b"" while consuming it."""
        if self.in_member:
            return self._decode()
        data = self.pending
        if not data.strip(b"\0"):
            # Some tools pad the blob with zeros; gzip(1) and Go accept that.
            self._padding = True
            self.pending = b""
        elif not self._padding and data.startswith(self.magic):
            self._start()
            self.in_member = True
        elif self._padding or not self.magic.startswith(data):
            raise errors.DataLoss(f"{self.name} layer: garbage after the end of the compressed stream")
        return b""

    def needs_input(self) -> bool:
        """Whether ``step`` cannot progress without more input."""
        if not self.pending:
            return True
        return not self.in_member and not self._padding and self.magic.startswith(self.pending)

    def finish(self) -> None:
        """At the end of input: check it ended between members."""
        if self.in_member or (self.pending and not self._padding):
            raise errors.DataLoss(f"{self.name} layer: compressed stream is truncated")


class _Gunzip(_Decoder):
    name = "gzip"
    magic = GZIP_MAGIC

    def __init__(self) -> None:
        super().__init__()
        self._start()

    def _start(self) -> None:
        from isal import isal_zlib

        self._obj = isal_zlib.decompressobj(wbits=31)

    def _decode(self) -> bytes:
        obj = self._obj
        out: bytes = obj.decompress(self.pending, _OUT_MAX)
        self.pending = obj.unconsumed_tail
        if obj.eof:
            self.pending = obj.unused_data
            self.in_member = False
        return out


class _Unzstd(_Decoder):
    name = "zstd"
    magic = ZSTD_MAGIC

    def __init__(self) -> None:
        import zstandard

        super().__init__()
        self._dctx = zstandard.ZstdDecompressor()
        self._start()
        self._off = 0

    def _start(self) -> None:
        self._obj = self._dctx.decompressobj()

    def _decode(self) -> bytes:
        # Slices through a memoryview: re-slicing the bytes would copy the rest every step.
        off = self._off
        piece = memoryview(self.pending)[off : off + _ZSTD_SLICE]
        self._off = off = off + len(piece)
        out = self._obj.decompress(piece)
        if self._obj.eof:
            self.pending = self._obj.unused_data + self.pending[off:]
            self._off = 0
            self.in_member = False
        elif off >= len(self.pending):
            self.pending = b""
            self._off = 0
        return out


class _Producer:
    """Reads the blob and hashes it, decodes it and hashes the output, one chunk per call."""

    def __init__(self, source: BinaryIO, media_type: str | None) -> None:
        self._src = source
        head = source.read(_READ)
        self.compression = detect(head, media_type)
        self.blob = hashlib.sha256()
        # A plain layer's blob is its tar: one hash serves both digests.
        self.tar = self.blob if self.compression is Compression.NONE else hashlib.sha256()
        self.compressed_size = 0
        self.size = 0
        self._dec: _Decoder | None = None
        if self.compression is Compression.GZIP:
            self._dec = _Gunzip()
        elif self.compression is Compression.ZSTD:
            self._dec = _Unzstd()
        self._head: bytes | None = self._take(head)
        self._eof = False

    def _take(self, chunk: bytes) -> bytes | None:
        self.blob.update(chunk)
        self.compressed_size += len(chunk)
        if self._dec is None:
            self.size += len(chunk)
            return chunk
        self._dec.pending += chunk
        return None

    def next(self) -> bytes:
        """The next piece of the tar stream; b"" at its end."""
        if self._head:
            head, self._head = self._head, None
            return head
        dec = self._dec
        try:
            while not self._eof:
                if dec is not None and not dec.needs_input():
                    out = dec.step()
                    if out:
                        self.tar.update(out)
                        self.size += len(out)
                        return out
                    continue
                chunk = self._src.read(_READ)
                if not chunk:
                    if dec is not None:
                        # Output the decoder may still hold for input it already took.
                        out = dec.step() if dec.in_member else b""
                        if out:
                            self.tar.update(out)
                            self.size += len(out)
                            return out
                        dec.finish()
                    self._eof = True
                    break
                plain = self._take(chunk)
                if plain:
                    return plain
        except _decode_errors() as exc:
            raise errors.DataLoss(f"{self.compression.value} layer: corrupt compressed data: {exc}") from exc
        return b""


class LayerReader:
    """A readable uncompressed tar stream over a layer blob, hashing both sides as it goes.

    ``read(n)`` may return fewer than ``n`` bytes before the end (``tarfile``
    loops). The digests and sizes are final once :meth:`drain` returned.

    With ``threaded=True`` reading, hashing and decompression run on a helper
    thread (isal, zstd and hashlib release the GIL), a few chunks ahead of the
    consumer: the way ``tar -z`` runs gzip in a second process. Close the
    reader (or use it as a context manager) to stop that thread early.
    """

    def __init__(self, source: BinaryIO, media_type: str | None = None, *, threaded: bool = False) -> None:
        self._p = _Producer(source, media_type)
        self.compression = self._p.compression
        self._buf = b""
        self._pos = 0
        self._queue: queue.Queue[bytes | BaseException] | None = None
        self._stop = False
        self._thread: threading.Thread | None = None
        if threaded:
            self._queue = queue.Queue(maxsize=_AHEAD)
            self._thread = threading.Thread(target=self._produce, name="layer-decode", daemon=True)
            self._thread.start()

    def _produce(self) -> None:
        assert self._queue is not None
        try:
            while True:
                chunk = self._p.next()
                if not self._put(chunk) or not chunk:
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> bool:
        assert self._queue is not None
        while not self._stop:
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=0.1)
                return True
        return False

    def _next(self) -> bytes:
        if self._queue is None:
            return self._p.next()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        if not item:
            self._queue.put(item)  # keep answering b"" after the end
        return item

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the tar stream (all the rest when negative); b"" at the end."""
        if self._pos >= len(self._buf):
            self._buf, self._pos = self._next(), 0
            if not self._buf:
                return b""
        buf, pos = self._buf, self._pos
        if size < 0:
            rest = [buf[pos:]]
            while chunk := self._next():
                rest.append(chunk)
            self._buf, self._pos = b"", 0
            return b"".join(rest)
        end = pos + size
        self._pos = end
        return buf[pos:end]

    def drain(self) -> int:
        """Read and hash whatever is left (tar padding after the end marker); returns the byte count."""
        left = len(self._buf) - self._pos
        self._buf, self._pos = b"", 0
        while chunk := self._next():
            left += len(chunk)
        if self._thread is not None:
            self._thread.join()
        return left

    def close(self) -> None:
        """Stop the helper thread, if any; the source stays open (the caller owns it)."""
        self._stop = True
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> LayerReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def compressed_size(self) -> int:
        """Blob bytes read so far."""
        return self._p.compressed_size

    @property
    def size(self) -> int:
        """Tar bytes produced so far."""
        return self._p.size

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of the blob bytes read so far."""
        return "sha256:" + self._p.blob.hexdigest()

    @property
    def diff_id(self) -> str:
        """``sha256:<hex>`` of the uncompressed bytes produced so far."""
        return "sha256:" + self._p.tar.hexdigest()


class LayerWriter:
    """A writable tar sink that compresses into ``dest``, hashing both sides (the inverse of LayerReader)."""

    def __init__(self, dest: BinaryIO, compression: Compression = Compression.GZIP, level: int = 1) -> None:
        self._dest = dest
        self.compression = compression
        self._tar = hashlib.sha256()
        self._blob = self._tar if compression is Compression.NONE else hashlib.sha256()
        self.size = 0
        self.compressed_size = 0
        import zstandard
        from isal import isal_zlib

        gzip, zstd = compression is Compression.GZIP, compression is Compression.ZSTD
        self._gz = isal_zlib.compressobj(level, isal_zlib.DEFLATED, 31) if gzip else None
        self._zst = zstandard.ZstdCompressor(level=3).compressobj() if zstd else None

    def write(self, data: bytes) -> int:
        """Add tar bytes; returns ``len(data)`` as file objects do."""
        self._tar.update(data)
        self.size += len(data)
        if self._gz is not None:
            self._out(self._gz.compress(data))
        elif self._zst is not None:
            self._out(self._zst.compress(data))
        else:
            self._out(data, hashed=True)
        return len(data)

    def _out(self, data: bytes, hashed: bool = False) -> None:
        if data:
            if not hashed:
                self._blob.update(data)
            self.compressed_size += len(data)
            self._dest.write(data)

    def close(self) -> None:
        """Flush the compressor's tail; the destination stays open (the caller owns it)."""
        if self._gz is not None:
            self._out(self._gz.flush())
            self._gz = None
        elif self._zst is not None:
            self._out(self._zst.flush())
            self._zst = None

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of the blob written (valid after :meth:`close`)."""
        return "sha256:" + self._blob.hexdigest()

    @property
    def diff_id(self) -> str:
        """``sha256:<hex>`` of the uncompressed tar written."""
        return "sha256:" + self._tar.hexdigest()

    @property
    def media_type(self) -> str:
        """The OCI layer media type matching the compression."""
        return {
            Compression.NONE: mediatypes.OCI_LAYER,
            Compression.GZIP: mediatypes.OCI_LAYER_GZIP,
            Compression.ZSTD: mediatypes.OCI_LAYER_ZSTD,
        }[self.compression]
