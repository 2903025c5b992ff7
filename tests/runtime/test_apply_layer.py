"""Layer blob decoding: compression detection, both digests, damaged and odd streams."""

from __future__ import annotations

import gzip
import hashlib
import io
import os

import pytest
import zstandard

from wharfd.runtime import errors
from wharfd.runtime.images.layer import Compression, LayerReader, LayerWriter, detect

PAYLOAD = os.urandom(200_000) + b"\0" * 3_000_000 + b"tail"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _read_all(
    blob: bytes, threaded: bool = False, media_type: str | None = None, step: int = 10240
) -> LayerReader:
    reader = LayerReader(io.BytesIO(blob), media_type, threaded=threaded)
    out = []
    with reader:
        while chunk := reader.read(step):
            out.append(chunk)
        reader.drain()
    assert b"".join(out) == PAYLOAD
    return reader


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize(
    ("blob", "compression"),
    [
        (PAYLOAD, Compression.NONE),
        (gzip.compress(PAYLOAD), Compression.GZIP),
        (zstandard.ZstdCompressor().compress(PAYLOAD), Compression.ZSTD),
    ],
    ids=["plain", "gzip", "zstd"],
)
def test_reader_yields_the_tar_and_both_digests(
    blob: bytes, compression: Compression, threaded: bool
) -> None:
    reader = _read_all(blob, threaded)
    assert reader.compression is compression
    assert reader.digest == _sha(blob)
    assert reader.diff_id == _sha(PAYLOAD)
    assert (reader.compressed_size, reader.size) == (len(blob), len(PAYLOAD))


def test_magic_decides_over_the_media_type() -> None:
    blob = gzip.compress(PAYLOAD)
    reader = _read_all(blob, media_type="application/vnd.docker.image.rootfs.diff.tar")
    assert reader.compression is Compression.GZIP
    assert detect(b"\x28\xb5\x2f\xfd...", "application/vnd.oci.image.layer.v1.tar+gzip") is Compression.ZSTD
    assert detect(b"plain", "application/vnd.oci.image.layer.v1.tar+zstd") is Compression.NONE


@pytest.mark.parametrize(
    "media_type",
    ["application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"],
)
def test_non_layer_media_types_are_refused(media_type: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="media type"):
        LayerReader(io.BytesIO(b""), media_type)


def test_multi_member_gzip_and_zero_padding_are_accepted() -> None:
    half = len(PAYLOAD) // 2
    blob = gzip.compress(PAYLOAD[:half]) + gzip.compress(PAYLOAD[half:]) + b"\0" * 5000
    assert _read_all(blob).diff_id == _sha(PAYLOAD)


def test_multi_frame_zstd_is_accepted() -> None:
    c = zstandard.ZstdCompressor()
    blob = c.compress(PAYLOAD[:1000]) + c.compress(PAYLOAD[1000:])
    assert _read_all(blob, threaded=True).diff_id == _sha(PAYLOAD)


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (gzip.compress(PAYLOAD)[:-100], "gzip layer: compressed stream is truncated"),
        (zstandard.ZstdCompressor().compress(PAYLOAD)[:-100], "zstd layer: compressed stream is truncated"),
        (gzip.compress(PAYLOAD) + b"garbage", "garbage after the end"),
        (gzip.compress(PAYLOAD) + b"\0\0junk", "garbage after the end"),
        (
            gzip.compress(PAYLOAD)[:5000] + b"\xff" * 100 + gzip.compress(PAYLOAD)[5100:],
            "corrupt compressed data",
        ),
    ],
    ids=["gzip-truncated", "zstd-truncated", "gzip-garbage", "gzip-padding-junk", "gzip-corrupt"],
)
def test_damaged_streams_are_data_loss(blob: bytes, message: str, threaded: bool) -> None:
    with (
        pytest.raises(errors.DataLoss, match=message),
        LayerReader(io.BytesIO(blob), threaded=threaded) as reader,
    ):
        reader.drain()


def test_gzip_output_is_bounded_per_step() -> None:
    """A compression bomb is decoded a bounded piece at a time."""
    reader = LayerReader(io.BytesIO(gzip.compress(b"\0" * (64 << 20))))
    sizes = []
    while chunk := reader.read(1 << 30):
        sizes.append(len(chunk))
    assert sum(sizes) == 64 << 20 and max(sizes) <= 1 << 20


def test_closing_stops_the_helper_thread_early() -> None:
    reader = LayerReader(io.BytesIO(gzip.compress(os.urandom(20 << 20), compresslevel=1)), threaded=True)
    assert reader.read(100)
    reader.close()
    assert reader._thread is not None and not reader._thread.is_alive()


@pytest.mark.parametrize("compression", list(Compression))
def test_writer_is_the_inverse_of_the_reader(compression: Compression) -> None:
    out = io.BytesIO()
    writer = LayerWriter(out, compression)
    for i in range(0, len(PAYLOAD), 70_000):
        writer.write(PAYLOAD[i : i + 70_000])
    writer.close()
    reader = _read_all(out.getvalue())
    assert reader.compression is compression
    assert (reader.digest, reader.diff_id) == (writer.digest, writer.diff_id)
    assert writer.media_type.startswith("application/vnd.oci.image.layer.v1.tar")
