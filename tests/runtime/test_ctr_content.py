"""``wharf content``: go-units sizes and ages, digest parsing, and every command against the real Content service."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime.ctr_services import Served, digest, put, serve
from wharfd.api.services.content.v1 import content_pb2 as pb
from wharfd.runtime.ctr import commands, main
from wharfd.runtime.ctr import content as cli

WHARF = str(Path(sys.executable).parent / "wharf")


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(commands.SUPPRESS_DEPRECATIONS_ENV, "true")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serve(tmp_path) as s:
        yield s


def padded(text: str, width: int) -> str:
    """A cell padded with tabs as tabwriter(1, 8, 1, '\\t') pads a column ``width`` wide."""
    column = -(-(width + 1) // 8) * 8
    return text + "\t" * -(-(column - len(text)) // 8)


def stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


@pytest.mark.parametrize(
    ("argv", "handler"),
    [
        (["content", "ls", "-q"], "_list"),
        (["content", "list"], "_list"),
        (["content", "rm", "x"], "_delete"),
        (["content", "del", "x"], "_delete"),
        (["content", "remove", "x"], "_delete"),
        (["content", "delete", "x"], "_delete"),
        (["content", "get", "x"], "_get"),
        (["content", "ingest", "--expected-size", "3", "--expected-digest", "d", "ref"], "_ingest"),
        (["content", "active", "-t", "5s", "--root", "/x", "ref-.*"], "_active"),
        (["content", "label", "d", "a=b"], "_label"),
    ],
)
def test_commands_and_aliases(argv: list[str], handler: str) -> None:
    assert main.build_parser().parse_args(argv).func.__name__ == handler


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0B"), (6, "6B"), (999, "999B"), (1000, "1kB"), (1234, "1.234kB"), (1_999_500, "2MB"),
     (2_621_440, "2.621MB"), (999_950, "1000kB"), (3 * 10**12, "3TB"), (10**27, "1000YB")],
)  # fmt: skip
def test_human_size_is_go_units(size: int, text: str) -> None:
    assert cli.human_size(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-5, "Less than a second"), (0.9, "Less than a second"), (1, "1 second"), (59.9, "59 seconds"),
     (60, "About a minute"), (119, "About a minute"), (120, "2 minutes"), (3599, "59 minutes"),
     (3600, "About an hour"), (5399, "About an hour"), (5400, "2 hours"), (47 * 3600, "47 hours"),
     (48 * 3600, "2 days"), (13 * 86400, "13 days"), (14 * 86400, "2 weeks"), (59 * 86400, "8 weeks"),
     (60 * 86400, "2 months"), (729 * 86400, "24 months"), (730 * 86400, "2 years")],
)  # fmt: skip
def test_human_duration_is_go_units(seconds: float, text: str) -> None:
    assert cli.human_duration(seconds) == text


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "invalid checksum digest format"),
        ("sha256", "invalid checksum digest format"),
        ("sha256:", "invalid checksum digest format"),
        ("sha256:abc", "invalid checksum digest length"),
        ("sha256:" + "A" * 64, "invalid checksum digest format"),
        ("md5:" + "a" * 32, "unsupported digest algorithm"),
        ("Bad Algo:abc", "invalid checksum digest format"),
    ],
)
def test_parse_digest_errors(text: str, error: str) -> None:
    with pytest.raises(commands.CommandError, match=f"^{error}$"):
        cli.parse_digest(text)
    assert cli.parse_digest("sha512:" + "0" * 128).startswith("sha512:")


def test_ingest_get_list_label_delete(
    served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"hello\n"
    stdin(monkeypatch, data)
    assert (
        served.wharf("content", "ingest", "--expected-size", "6", "--expected-digest", digest(data), "r1")
        == 0
    )
    assert capsys.readouterr() == ("", "")

    assert served.wharf("content", "ls") == 0
    lines = capsys.readouterr().out.split("\n")
    age = lines[1].split("\t")[2]
    width = len(digest(data))
    assert lines[0] == padded("DIGEST", width) + "SIZE\t" + padded("AGE", len(age)) + "LABELS"
    assert lines[1] == padded(digest(data), width) + "6B\t" + padded(age, len(age)) + "-"
    assert "\t" * 9 in lines[0]
    assert served.wharf("content", "ls", "-q") == 0
    assert capsys.readouterr().out == digest(data) + "\n"

    assert served.wharf("content", "label", digest(data), "b=2", "a=1") == 0
    assert capsys.readouterr().out == "a=1,b=2\n"
    assert served.wharf("content", "label", digest(data), "a=") == 0
    assert capsys.readouterr().out == "b=2\n"
    assert served.wharf("content", "ls", "labels.b==2") == 0
    assert capsys.readouterr().out.split("\n")[1].endswith("\tb=2")

    with served.client() as client:
        buf = io.BytesIO()
        cli.copy_blob(client, digest(data), buf)
    assert buf.getvalue() == data

    missing = "sha256:" + "0" * 64
    assert served.wharf("content", "rm", "sha256:bad", missing, digest(data)) == 1
    captured = capsys.readouterr()
    assert captured.out == digest(data) + "\n"  # the missing one is skipped silently
    assert captured.err.endswith("wharf: invalid checksum digest length\n")
    assert 'msg="could not delete sha256:bad: invalid checksum digest length"' in captured.err
    assert served.wharf("content", "ls", "-q") == 0
    assert capsys.readouterr().out == ""


def test_get_writes_bytes(served: Served, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    blob = os.urandom(3 * cli.CHUNK + 17)  # several Read messages
    with served.client() as client:
        put(client, blob)
    assert served.wharf("content", "get", digest(blob)) == 0
    assert capsysbinary.readouterr().out == blob
    assert served.wharf("content", "get", "sha256:" + "1" * 64) == 1
    assert b"not found" in capsysbinary.readouterr().err


def test_ingest_of_existing_content_succeeds(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    with served.client() as client:
        d = put(client, b"same")
    stdin(monkeypatch, b"same")
    assert served.wharf("content", "ingest", "--expected-digest", d, "again") == 0


def test_ingest_failures(
    served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert served.wharf("content", "ingest") == 1
    assert capsys.readouterr().err == "wharf: must specify a transaction reference\n"
    assert served.wharf("content", "ingest", "--expected-digest", "nope", "r") == 1
    assert capsys.readouterr().err == "wharf: invalid checksum digest format\n"
    stdin(monkeypatch, b"short")
    assert served.wharf("content", "ingest", "--expected-size", "10", "r") == 1
    assert capsys.readouterr().err == "wharf: failed to read expected number of bytes: unexpected EOF\n"
    stdin(monkeypatch, b"other")
    assert served.wharf("content", "ingest", "--expected-digest", digest(b"wanted"), "r2") == 1
    assert capsys.readouterr().err.startswith('wharf: failed commit on ref "r2": ')


def _leave_partial_ingest(served: Served, ref: str, data: bytes) -> None:
    with served.client() as client:
        requests = [
            pb.WriteContentRequest(action=pb.STAT, ref=ref),
            pb.WriteContentRequest(action=pb.WRITE, offset=0, data=data),
        ]
        answers = list(client.content.Write(iter(requests)))
    assert answers[-1].offset == len(data)


def test_active_and_resumed_ingest(
    served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(2500)
    _leave_partial_ingest(served, "upload-1", data[:1000])
    _leave_partial_ingest(served, "other", b"x")
    # ctr passes the argument on as a filter.
    assert served.wharf("content", "active", 'ref~="upload-.*"') == 0
    lines = capsys.readouterr().out.split("\n")
    age = lines[1].split("\t")[2]
    assert lines[0] == "REF\t\tSIZE\t" + padded("AGE", len(age))
    assert lines[1] == "upload-1\t1kB\t" + padded(age, len(age)) and lines[2:] == [""]
    # A seekable stdin resumes by seeking past what the ingest holds.
    stdin(monkeypatch, data)
    assert served.wharf("content", "ingest", "--expected-digest", digest(data), "upload-1") == 0
    with served.client() as client:
        buf = io.BytesIO()
        cli.copy_blob(client, digest(data), buf)
    assert buf.getvalue() == data
    assert served.wharf("content", "active") == 0
    assert capsys.readouterr().out.split("\n")[1].startswith("other\t")


def test_resumed_ingest_from_a_pipe(served: Served) -> None:
    data = os.urandom(3000)
    _leave_partial_ingest(served, "piped", data[:1234])
    size = str(len(data))
    result = subprocess.run(
        [WHARF, "-a", served.address, "content", "ingest", "--expected-size", size, "piped"],
        input=data,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    with served.client() as client:
        info = client.content.Info(pb.InfoRequest(digest=digest(data))).info
    assert info.size == len(data) and hashlib.sha256(data).hexdigest() in info.digest
