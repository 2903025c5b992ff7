"""The subset of Go's ``text/template`` that CNI config templates use.

containerd renders ``cni.conf_template`` with the fields ``.PodCIDR``,
``.PodCIDRRanges`` and ``.Routes``; the templates people write for it (kind's,
the docs' examples) use only a handful of constructs, and those are what this
module implements:

* text, and actions ``{{ … }}`` with the trim markers ``{{-`` and ``-}}``;
* comments ``{{/* … */}}``;
* printing an operand: ``.``, ``.Field``, ``$``, ``$var``, ``$var.Field``, or a
  quoted string / integer literal;
* ``{{if X}} … {{else if Y}} … {{else}} … {{end}}`` with Go's truth rules
  (empty string, empty list, 0, false and nil are false);
* ``{{range X}}``, ``{{range $x := X}}``, ``{{range $i, $x := X}}``, each with an
  optional ``{{else}}`` for an empty list; ``.`` is the element inside.

Functions, pipelines with ``|``, ``with``, ``define``/``template`` and
variable assignment outside ``range`` are refused with an error naming the
construct. Values print as Go prints them: lists as ``[a b]``, booleans as
``true``/``false``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wharfd.runtime import errors

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_OPEN = "{{"
_VAR = r"\$[A-Za-z_][A-Za-z0-9_]*"
_RANGE_VARS = re.compile(rf"^(?:({_VAR})\s*,\s*)?({_VAR})\s*:=\s*(.+)$", re.S)


class TemplateError(errors.InvalidArgument):
    """A template that cannot be parsed or executed; the message names the template and the construct."""


@dataclass
class _Text:
    text: str


@dataclass
class _Print:
    operand: str


@dataclass
class _If:
    branches: list[tuple[str, list[_Node]]] = field(default_factory=list)
    otherwise: list[_Node] = field(default_factory=list)


@dataclass
class _Range:
    operand: str
    key_var: str | None
    value_var: str | None
    body: list[_Node] = field(default_factory=list)
    otherwise: list[_Node] = field(default_factory=list)


_Node = _Text | _Print | _If | _Range


def _tokens(source: str) -> list[tuple[str, str]]:
    """("text", s) and ("action", s) pieces, with the trim markers applied to the text around them."""
    out: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for match in _ACTION.finditer(source):
        text = source[pos : match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        out.append(("text", text))
        out.append(("action", match.group(2).strip()))
        trim_next = bool(match.group(3))
        pos = match.end()
    tail = source[pos:]
    if _OPEN in tail:
        raise TemplateError(f"unclosed action {tail[tail.index(_OPEN) :][:30]!r}")
    out.append(("text", tail.lstrip() if trim_next else tail))
    return out


class _Parser:
    def __init__(self, name: str, source: str) -> None:
        self.name = name
        try:
            self.tokens = _tokens(source)
        except TemplateError as exc:
            raise self.fail(str(exc)) from None
        self.pos = 0

    def fail(self, what: str) -> TemplateError:
        return TemplateError(f"CNI config template {self.name}: {what}")

    def parse(self) -> list[_Node]:
        nodes, end = self.block()
        if end is not None:
            raise self.fail(f"unexpected {{{{{end}}}}}")
        return nodes

    def block(self) -> tuple[list[_Node], str | None]:
        """Nodes up to an ``end``/``else…`` action (returned) or the end of input (None)."""
        nodes: list[_Node] = []
        while self.pos < len(self.tokens):
            kind, value = self.tokens[self.pos]
            self.pos += 1
            if kind == "text":
                if value:
                    nodes.append(_Text(value))
                continue
            if value.startswith("/*"):
                if not value.endswith("*/"):
                    raise self.fail(f"unclosed comment {{{{{value}}}}}")
                continue
            word = value.split(None, 1)[0] if value else ""
            if word in ("end", "else"):
                return nodes, value
            if word == "if":
                nodes.append(self.if_(value[2:].strip()))
            elif word == "range":
                nodes.append(self.range_(value[5:].strip()))
            else:
                nodes.append(_Print(self.operand(value)))
        return nodes, None

    def operand(self, text: str) -> str:
        if not text:
            raise self.fail("empty action {{}}")
        if "|" in text or (" " in text and not text.startswith('"')):
            word = text.split(maxsplit=1)[0]
            raise self.fail(
                f"{{{{{text}}}}}: {word!r} is not supported (only fields, variables and literals)"
            )
        return text

    def if_(self, condition: str) -> _If:
        node = _If()
        cond = self.operand(condition)
        while True:
            body, end = self.block()
            node.branches.append((cond, body))
            if end is None:
                raise self.fail(f"{{{{if {condition}}}}} has no {{{{end}}}}")
            if end == "end":
                return node
            rest = end[4:].strip()
            if rest.startswith("if "):
                cond = self.operand(rest[3:].strip())
                continue
            if rest:
                raise self.fail(f"{{{{{end}}}}} is not supported")
            node.otherwise, end = self.block()
            if end != "end":
                raise self.fail(f"{{{{if {condition}}}}} has no {{{{end}}}}")
            return node

    def range_(self, spec: str) -> _Range:
        key = value = None
        match = _RANGE_VARS.match(spec)
        if match:
            key, value, spec = match.group(1), match.group(2), match.group(3).strip()
        node = _Range(self.operand(spec), key, value)
        node.body, end = self.block()
        if end == "else":
            node.otherwise, end = self.block()
        if end != "end":
            raise self.fail(f"{{{{range {spec}}}}} has no {{{{end}}}}")
        return node


def _truth(value: Any) -> bool:
    return bool(value)


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<no value>"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(_format(v) for v in value) + "]"
    return str(value)


class Template:
    """A parsed template; :meth:`render` executes it against a mapping of fields."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self._nodes = _Parser(name, source).parse()

    def render(self, data: Mapping[str, Any]) -> str:
        """The template's output with ``data`` as ``.`` (and ``$``)."""
        out: list[str] = []
        self._run(self._nodes, data, {"$": data}, out)
        return "".join(out)

    def _fail(self, what: str) -> TemplateError:
        return TemplateError(f"CNI config template {self.name}: {what}")

    def _value(self, operand: str, dot: Any, scope: Mapping[str, Any]) -> Any:
        if operand.startswith('"') and operand.endswith('"') and len(operand) >= 2:
            return operand[1:-1]
        if re.fullmatch(r"-?[0-9]+", operand):
            return int(operand)
        if operand in ("true", "false"):
            return operand == "true"
        head, *fields = operand.split(".")
        if head == "":
            base = dot
        elif head in scope:
            base = scope[head]
        else:
            raise self._fail(f"undefined variable or function {head!r}")
        for name in (f for f in fields if f):
            if not isinstance(base, Mapping) or name not in base:
                raise self._fail(f"can't evaluate field {name} in {operand}")
            base = base[name]
        return base

    def _run(self, nodes: Sequence[_Node], dot: Any, scope: dict[str, Any], out: list[str]) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                out.append(node.text)
            elif isinstance(node, _Print):
                out.append(_format(self._value(node.operand, dot, scope)))
            elif isinstance(node, _If):
                for cond, body in node.branches:
                    if _truth(self._value(cond, dot, scope)):
                        self._run(body, dot, scope, out)
                        break
                else:
                    self._run(node.otherwise, dot, scope, out)
            else:
                self._range(node, dot, scope, out)

    def _range(self, node: _Range, dot: Any, scope: dict[str, Any], out: list[str]) -> None:
        items = self._value(node.operand, dot, scope)
        if isinstance(items, Mapping):
            pairs: list[tuple[Any, Any]] = sorted(items.items())
        elif isinstance(items, (list, tuple)):
            pairs = list(enumerate(items))
        elif items is None:
            pairs = []
        else:
            raise self._fail(f"range can't iterate over {_format(items)}")
        if not pairs:
            self._run(node.otherwise, dot, scope, out)
            return
        for key, item in pairs:
            inner = dict(scope)
            if node.value_var:
                inner[node.value_var] = item
            if node.key_var:
                inner[node.key_var] = key
            self._run(node.body, item, inner, out)
