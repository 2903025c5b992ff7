"""containerd's filter syntax, used by every List call and by event subscriptions.

A request carries a list of filter strings; an object matches when ANY string
matches, and a string matches when ALL of its comma-separated selectors do::

    selector  = fieldpath [ op value ]      op: "==" | "!=" | "~=" (regular expression)
    fieldpath = field { "." field }         field: a name, or a "quoted" string (for label keys with dots)
    value     = a bare word up to "," | a "quoted" string

``labels."io.kubernetes.pod.uid"==abc`` and ``topic~="/tasks/.*"`` are typical.
A selector without an operator only checks that the field is present.
Objects are matched through an *adaptor*: a function from a field path to the
field's value, or None when the object has no such field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from wharfd.runtime import errors

Adaptor = Callable[[Sequence[str]], str | None]


@dataclass(frozen=True)
class Selector:
    """One ``fieldpath op value`` term."""

    path: tuple[str, ...]
    op: str = ""  # "" means presence
    value: str = ""

    def matches(self, adaptor: Adaptor) -> bool:
        """Whether the object seen through ``adaptor`` satisfies this term."""
        got = adaptor(self.path)
        if self.op == "":
            return got is not None
        if self.op == "==":
            return got == self.value
        if self.op == "!=":
            return got != self.value
        if got is None:
            return False
        return re.search(self.value, got) is not None


@dataclass(frozen=True)
class Filter:
    """A parsed request filter: any conjunction must match (no conjunctions matches everything)."""

    any_of: tuple[tuple[Selector, ...], ...] = ()

    def matches(self, adaptor: Adaptor) -> bool:
        """Whether the object seen through ``adaptor`` passes the filter."""
        if not self.any_of:
            return True
        return any(all(sel.matches(adaptor) for sel in conj) for conj in self.any_of)


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, what: str) -> errors.InvalidArgument:
        return errors.InvalidArgument(f"filter {self.text!r}: {what} at offset {self.pos}")

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def done(self) -> bool:
        self.skip_space()
        return self.pos >= len(self.text)

    def quoted(self) -> str:
        quote = self.text[self.pos]
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            self.pos += 1
            if ch == quote:
                return "".join(out)
            if ch == "\\" and self.pos < len(self.text):
                nxt = self.text[self.pos]
                self.pos += 1
                out.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
            else:
                out.append(ch)
        raise self.error("unterminated quoted string")

    def field(self) -> str:
        self.skip_space()
        if self.peek() == '"':
            return self.quoted()
        match = re.compile(r"[A-Za-z0-9_]+").match(self.text, self.pos)
        if not match:
            raise self.error("expected a field name")
        self.pos = match.end()
        return match.group()

    def value(self) -> str:
        self.skip_space()
        if self.peek() == '"':
            return self.quoted()
        match = re.compile(r"[^,\s]*").match(self.text, self.pos)
        assert match is not None
        self.pos = match.end()
        if not match.group():
            raise self.error("expected a value")
        return match.group()


def _parse_one(text: str) -> tuple[Selector, ...]:
    scan = _Scanner(text)
    selectors: list[Selector] = []
    while True:
        path = [scan.field()]
        while scan.peek() == ".":
            scan.pos += 1
            path.append(scan.field())
        scan.skip_space()
        op = scan.peek(2)
        if op in ("==", "!=", "~="):
            scan.pos += 2
            value = scan.value()
            if op == "~=":
                try:
                    re.compile(value)
                except re.error as exc:
                    raise scan.error(f"bad regular expression {value!r}: {exc}") from exc
            selectors.append(Selector(tuple(path), op, value))
        else:
            selectors.append(Selector(tuple(path)))
        if scan.done():
            return tuple(selectors)
        if scan.peek() != ",":
            raise scan.error("expected ',' or an operator")
        scan.pos += 1


def parse(filters: Iterable[str]) -> Filter:
    """Parse a request's filter strings; empty strings are ignored. Raises InvalidArgument."""
    return Filter(tuple(_parse_one(f) for f in filters if f.strip()))


def labels_adaptor(labels: Mapping[str, str], path: Sequence[str]) -> str | None:
    """Resolve ``labels.<key>`` (the key may itself contain dots when unquoted)."""
    if not path or path[0] != "labels":
        return None
    if len(path) == 1:
        return "" if labels else None
    return labels.get(".".join(path[1:]))
