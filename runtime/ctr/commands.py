"""Helpers every ``wharf`` command group shares: the client, label arguments, durations and JSON.

This module must not import grpc at load time: the parser is built from every
group module, and ``wharf --help`` should not pay for the RPC stack.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from wharfd.runtime.client import Client

    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

log = logging.getLogger("wharfd.ctr")

Handler: TypeAlias = Callable[[argparse.Namespace], "int | None"]

SUPPRESS_DEPRECATIONS_ENV = "WHARF_SUPPRESS_DEPRECATION_WARNINGS"


class CommandError(Exception):
    """A command failed for a reason it states itself; printed as ``wharf: <message>``."""


def add_group(subparsers: Subparsers, name: str, *, aliases: Sequence[str] = (), help: str) -> Subparsers:
    """Add a command group; run without a subcommand it prints its help, as ctr does."""
    parser = subparsers.add_parser(name, aliases=list(aliases), help=help, description=help)
    parser.set_defaults(func=lambda _args: parser.print_help())
    return parser.add_subparsers(title="commands", metavar="COMMAND")


def add_command(
    subparsers: Subparsers,
    name: str,
    handler: Handler,
    *,
    aliases: Sequence[str] = (),
    help: str,
) -> argparse.ArgumentParser:
    """Add a command that runs ``handler(args)``; its return value is the exit code (None is 0)."""
    parser = subparsers.add_parser(name, aliases=list(aliases), help=help, description=help)
    parser.set_defaults(func=handler)
    return parser


def label_args(items: Sequence[str]) -> dict[str, str]:
    """Parse ``k=v`` arguments; a bare ``k`` means ``k=true``, as ctr's LabelArgs."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        labels[key] = value if sep else "true"
    return labels


def object_with_label_args(items: Sequence[str]) -> tuple[str, dict[str, str]]:
    """Split ``<name> [k=v…]`` into the name ("" when absent) and its labels."""
    if not items:
        return "", {}
    return items[0], label_args(items[1:])


def format_labels(labels: dict[str, str]) -> str:
    """Labels as ctr lists them: ``k=v`` pairs sorted and joined by commas."""
    return ",".join(sorted(f"{k}={v}" for k, v in labels.items()))


_DURATION_PART = re.compile(r"(\d*)(?:\.(\d*))?([^\d.]*)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # Greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float:
    """Parse a Go duration (``10s``, ``1m30s``, ``1.5h``, ``0``) into seconds, with Go's error texts."""
    rest = text
    sign = 1.0
    if rest[:1] in ("-", "+"):
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f'time: invalid duration "{text}"')
    total = 0.0
    while rest:
        match = _DURATION_PART.match(rest)
        assert match is not None  # every part of the pattern may be empty
        whole, frac, unit = match.group(1), match.group(2), match.group(3)
        if not whole and not frac:
            raise ValueError(f'time: invalid duration "{text}"')
        if not unit:
            raise ValueError(f'time: missing unit in duration "{text}"')
        if unit not in _DURATION_UNITS:
            raise ValueError(f'time: unknown unit "{unit}" in duration "{text}"')
        total += float(f"{whole or 0}.{frac or 0}") * _DURATION_UNITS[unit]
        rest = rest[match.end() :]
    return sign * total


def duration_arg(text: str) -> float:
    """``argparse`` type for Go durations."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def marshal_indent(value: Any) -> str:
    """``json.MarshalIndent(value, "", "    ")`` as Go writes it.

    Callers build dicts in Go struct-field order and drop ``omitempty`` fields
    themselves; Go sorts map keys, so callers sort those.
    """
    text = json.dumps(value, indent=4, ensure_ascii=False)
    # Go escapes HTML-significant characters and the JS line separators; they
    # can only occur inside strings, so plain replacement is safe.
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def print_json(value: Any) -> None:
    """Print ``value`` as ctr's PrintAsJSON does."""
    print(marshal_indent(value))


def _parse_bool(text: str) -> bool | None:
    # Go's strconv.ParseBool vocabulary; anything else is an error (None).
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    return None


def _warn_deprecations(client: Client) -> None:
    raw = os.environ.get(SUPPRESS_DEPRECATIONS_ENV, "")
    if raw and (suppress := _parse_bool(raw)) is not None:
        if suppress:
            return
    elif raw:
        log.warning("failed to parse %s=%s", SUPPRESS_DEPRECATIONS_ENV, raw)
    from google.protobuf import empty_pb2

    from wharfd.runtime import errors
    from wharfd.runtime.client import describe

    try:
        server = client.introspection.Server(empty_pb2.Empty())
    except errors.WharfError as exc:
        log.warning("failed to check deprecations: %s", describe(exc))
        return
    for warning in server.deprecations:
        log.warning("DEPRECATION: %s", warning.message)


@contextlib.contextmanager
def new_client(args: argparse.Namespace) -> Iterator[Client]:
    """Connect as the global flags say, warn about deprecated features in use, and close on exit."""
    from wharfd.runtime.client import Client

    with Client(
        args.address,
        namespace=args.namespace,
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
    ) as client:
        _warn_deprecations(client)
        yield client
