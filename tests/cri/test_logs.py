"""The CRI log format (wharfd.cri.logs) and the FIFO copies into it (wharfd.cri.container_io), exactly."""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wharfd.cri.container_io import ContainerIO
from wharfd.cri.logs import LineSplitter, LogFile, rfc3339nano

STAMP = b"2026-11-28T05:53:00.5Z"


def entries(out: bytes) -> list[tuple[str, str, bytes]]:
    """(stream, tag, content) of each entry, checking the timestamp field is there."""
    result = []
    for line in out.split(b"\n")[:-1]:
        stamp, stream, tag, content = line.split(b" ", 3)
        assert stamp == STAMP
        result.append((stream.decode(), tag.decode(), content))
    assert out.endswith(b"\n") or not out
    return result


def run(splitter: LineSplitter, *chunks: bytes, eof: bool = True) -> list[tuple[str, str, bytes]]:
    out = b"".join(splitter.feed(c, STAMP) for c in chunks)
    if eof:
        out += splitter.finish(STAMP)
    return entries(out)


@pytest.mark.parametrize(
    ("data", "want"),
    [
        (b"hello\n", [("F", b"hello")]),
        (b"a\nb\n", [("F", b"a"), ("F", b"b")]),
        (b"\n", [("F", b"")]),
        (b"crlf\r\n", [("F", b"crlf")]),
        (b"lone\rcr\n", [("F", b"lone\rcr")]),
        (b"two\r\r\n", [("F", b"two\r")]),
        (b"no newline", [("P", b"no newline")]),
        (b"end\ntail", [("F", b"end"), ("P", b"tail")]),
        (b"cr at eof\r", [("P", b"cr at eof\r")]),
        (b"", []),
    ],
)
def test_lines_and_tags(data: bytes, want: list[tuple[str, bytes]]) -> None:
    got = run(LineSplitter("stdout", 16), data)
    assert [(tag, content) for _, tag, content in got] == want


@pytest.mark.parametrize(
    ("length", "want"),
    [
        (8, [("F", 8)]),  # exactly the limit: one full line
        (9, [("P", 8), ("F", 1)]),
        (16, [("P", 8), ("F", 8)]),  # a multiple: the last piece is the F
        (17, [("P", 8), ("P", 8), ("F", 1)]),
    ],
)
def test_long_lines_split(length: int, want: list[tuple[str, int]]) -> None:
    got = run(LineSplitter("stderr", 8), b"x" * length + b"\n")
    assert [(tag, len(content)) for _, tag, content in got] == want
    assert all(stream == "stderr" for stream, _, _ in got)


def test_long_line_with_crlf_counts_without_it() -> None:
    # 8 bytes + "\r\n": the "\r" is stripped, so it is one full line, not P + F("").
    got = run(LineSplitter("stdout", 8), b"12345678\r", b"\n")
    assert [(tag, content) for _, tag, content in got] == [("F", b"12345678")]


def test_unterminated_long_output_is_partial_pieces() -> None:
    got = run(LineSplitter("stdout", 4), b"abcdefghij")
    assert [(tag, content) for _, tag, content in got] == [("P", b"abcd"), ("P", b"efgh"), ("P", b"ij")]


def test_no_limit_never_splits() -> None:
    got = run(LineSplitter("stdout", -1), b"y" * 100_000 + b"\n")
    assert [(tag, len(content)) for _, tag, content in got] == [("F", 100_000)]


def test_result_does_not_depend_on_chunking() -> None:
    rng = random.Random(7)
    words = [b"a", b"bb", b"\r", b"\n", b"\r\n", b"cccccccccc", b"dd\n"]
    for _ in range(200):
        data = b"".join(rng.choice(words) for _ in range(rng.randint(0, 40)))
        whole = run(LineSplitter("stdout", 5), data)
        cuts = sorted(rng.sample(range(len(data) + 1), k=min(len(data) + 1, rng.randint(0, 6))))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert run(LineSplitter("stdout", 5), *pieces) == whole, data


def test_pending_resumes_a_line() -> None:
    first = LineSplitter("stdout", 16)
    assert first.feed(b"abc", STAMP) == b""
    second = LineSplitter("stdout", 16, first.pending)
    assert entries(second.feed(b"def\n", STAMP)) == [("stdout", "F", b"abcdef")]


def test_bad_stream_name() -> None:
    with pytest.raises(ValueError, match="stdout or stderr"):
        LineSplitter("stdin")


@pytest.fixture
def utc() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def test_rfc3339nano_trims_the_fraction(utc: None) -> None:
    base = 1_764_309_180 * 10**9  # 2025-11-28T05:53:00Z
    assert rfc3339nano(base) == b"2025-11-28T05:53:00Z"
    assert rfc3339nano(base + 500_000_000) == b"2025-11-28T05:53:00.5Z"
    assert rfc3339nano(base + 123_456_789) == b"2025-11-28T05:53:00.123456789Z"
    assert rfc3339nano(base + 1_000) == b"2025-11-28T05:53:00.000001Z"


def test_rfc3339nano_offset() -> None:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "XXX-05:30"
    time.tzset()
    try:
        assert rfc3339nano(0) == b"1970-01-01T05:30:00+05:30"
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_log_file_reopen_continues_at_the_path(tmp_path: Path) -> None:
    path = tmp_path / "pods" / "c_0.log"
    log = LogFile(str(path))
    log.write(b"one\n")
    path.rename(tmp_path / "pods" / "c_0.log.20261128-055300")
    log.write(b"two\n")  # still the renamed file
    log.reopen()
    log.write(b"three\n")
    log.close()
    assert (tmp_path / "pods" / "c_0.log.20261128-055300").read_bytes() == b"one\ntwo\n"
    assert path.read_bytes() == b"three\n"


def test_log_file_without_path_discards() -> None:
    log = LogFile("")
    log.write(b"x\n")
    assert log.closed


# --- FIFOs to log file ----------------------------------------------------------------------------

LINE = re.compile(rb"^\S+ (stdout|stderr) ([PF]) (.*)$")


def parsed(path: Path) -> list[tuple[str, str, bytes]]:
    out = []
    for line in path.read_bytes().split(b"\n")[:-1]:
        match = LINE.match(line)
        assert match, line
        out.append((match[1].decode(), match[2].decode(), match[3]))
    return out


class Shim:
    """Plays the shim's part: opens each output FIFO (read end kept, as the shims do) and writes."""

    def __init__(self, io: ContainerIO) -> None:
        self.keep: list[int] = []
        self.writers: dict[str, int] = {}
        for name in io.streams():
            path = io.directory / name
            self.keep.append(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
            self.writers[name] = os.open(path, os.O_WRONLY | os.O_NONBLOCK)

    def write(self, stream: str, data: bytes) -> None:
        os.write(self.writers[stream], data)

    def close(self) -> None:
        for fd in [*self.writers.values(), *self.keep]:
            os.close(fd)


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


def test_container_output_reaches_the_log(tmp_path: Path) -> None:
    log_path = tmp_path / "logs" / "c.log"

    async def main() -> None:
        io = ContainerIO(tmp_path / "io", terminal=False, stdin=False, log_path=str(log_path), max_line=8)
        io.open(create=True)
        shim = Shim(io)
        await io.start_copying()
        shim.write("stdout", b"out 1\nout")
        await _settle()
        shim.write("stderr", b"err 1\r\n")
        await _settle()
        shim.write("stdout", b" 2 is long\n")
        shim.close()  # the process and the shim are done: end of file
        assert await io.drained(5)
        io.close()

    asyncio.run(main())
    assert parsed(log_path) == [
        ("stdout", "F", b"out 1"),
        ("stderr", "F", b"err 1"),
        ("stdout", "P", b"out 2 is"),
        ("stdout", "F", b" long"),
    ]


def test_nothing_is_lost_across_a_reader_restart(tmp_path: Path) -> None:
    """The daemon goes away mid-line while the shim keeps writing; the next reader finds everything."""
    log_path = tmp_path / "c.log"

    async def main() -> None:
        first = ContainerIO(tmp_path / "io", terminal=True, stdin=False, log_path=str(log_path), max_line=0)
        first.open(create=True)
        shim = Shim(first)
        await first.start_copying()
        shim.write("stdout", b"line 1\nhalf")
        await _settle()
        first.close()  # the daemon dies: no EOF, the unfinished line is in stdout.partial
        assert (tmp_path / "io" / "stdout.partial").read_bytes() == b"half"
        shim.write("stdout", b" done\nline 3\n")  # written while nobody reads: waits in the FIFO
        second = ContainerIO(tmp_path / "io", terminal=True, stdin=False, log_path=str(log_path), max_line=0)
        second.open(create=False)
        await second.start_copying()
        await _settle()
        shim.write("stdout", b"last")
        shim.close()
        assert await second.drained(5)
        second.close()

    asyncio.run(main())
    assert [(t, c) for _, t, c in parsed(log_path)] == [
        ("F", b"line 1"),
        ("F", b"half done"),
        ("F", b"line 3"),
        ("P", b"last"),
    ]
    assert not (tmp_path / "io" / "stdout.partial").exists()


def _dead(pid: int, wait: float = 2.0) -> bool:
    """Gone, or a zombie waiting for init to reap it, within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def test_output_of_a_process_that_ended_while_nobody_read(tmp_path: Path) -> None:
    """The shim wrote, then closed every end it had (as the stock shim does at exit): the keeper kept the pipe."""
    log_path = tmp_path / "c.log"

    async def main() -> None:
        first = ContainerIO(tmp_path / "io", terminal=False, stdin=False, log_path=str(log_path), max_line=0)
        first.open(create=True)
        first.keep()
        keeper = (tmp_path / "io" / "keeper.pid").read_text().split()[0]
        shim = Shim(first)
        await first.start_copying()
        first.close()  # the daemon dies before anything was written
        shim.write("stdout", b"one\ntwo\n")
        shim.write("stderr", b"three")
        shim.close()
        second = ContainerIO(tmp_path / "io", terminal=False, stdin=False, log_path=str(log_path), max_line=0)
        second.open(create=False)
        second.keep()  # the one kept already: no second keeper
        await second.start_copying()
        assert await second.drained(5)  # end of file is seen although the writers left before the open
        second.close()
        assert not (tmp_path / "io" / "keeper.pid").exists()
        assert _dead(int(keeper))

    asyncio.run(main())
    assert sorted(parsed(log_path)) == [
        ("stderr", "P", b"three"),
        ("stdout", "F", b"one"),
        ("stdout", "F", b"two"),
    ]


def test_reopen_while_copying(tmp_path: Path) -> None:
    log_path = tmp_path / "c.log"

    async def main() -> None:
        io = ContainerIO(tmp_path / "io", terminal=True, stdin=False, log_path=str(log_path), max_line=0)
        io.open(create=True)
        shim = Shim(io)
        await io.start_copying()
        shim.write("stdout", b"before\n")
        await _settle()
        log_path.rename(tmp_path / "c.log.1")
        await io.reopen_log()
        shim.write("stdout", b"after\n")
        shim.close()
        assert await io.drained(5)
        io.close()

    asyncio.run(main())
    assert [c for _, _, c in parsed(tmp_path / "c.log.1")] == [b"before"]
    assert [c for _, _, c in parsed(log_path)] == [b"after"]
