"""The ``wharf`` entry point: global flags, the command tree, and how failures are reported.

Every command group lives in its own module under ``wharfd.runtime.ctr`` and
exposes ``register(subparsers)``; adding a group is adding its module name to
:data:`GROUPS`. Failures print one line, ``wharf: <message>``, and exit 1, as
ctr prints ``ctr: <err>``; ``--debug`` adds the traceback of unexpected ones.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from wharfd.runtime.ctr import commands

PROG = "wharf"
# Printed by --version after the program name, as ctr prints its Go module path.
PACKAGE = "wharfd"
DEFAULT_ADDRESS = "/run/wharfd/wharfd.sock"
DEFAULT_NAMESPACE = "default"
ADDRESS_ENV = "WHARF_ADDRESS"
NAMESPACE_ENV = "WHARF_NAMESPACE"

# Command groups in ctr's order of registration; each is a module in this package.
GROUPS: tuple[str, ...] = (
    "plugins",
    "version",
    "containers",
    "content",
    "events",
    "images",
    "leases",
    "namespaces",
    "run",
    "snapshots",
    "tasks",
    "oci",
    "info",
)


class UsageError(Exception):
    """The command line itself is wrong."""

    def __init__(self, message: str, parser: argparse.ArgumentParser) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    # argparse exits 2 from deep inside parse_args; raise instead so main()
    # reports it like any other failure (exit 1, as ctr).
    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self)


def _env(name: str, default: str) -> str:
    # An empty variable counts as unset: "WHARF_ADDRESS= wharf …" should not dial "".
    return os.environ.get(name) or default


def build_parser() -> argparse.ArgumentParser:
    """The full command tree with ctr's global flags."""
    from wharfd.runtime import version

    parser = _Parser(
        prog=PROG,
        add_help=False,
        description="wharf is the administrative client of the wharfd daemon; "
        "its commands and output follow containerd's ctr.",
    )
    parser.add_argument("-h", "--help", action="help", help="Show help")
    parser.add_argument("--debug", action="store_true", help="Enable debug output in logs")
    parser.add_argument(
        "-a",
        "--address",
        default=_env(ADDRESS_ENV, DEFAULT_ADDRESS),
        help=f"Address for wharfd's GRPC server (env ${ADDRESS_ENV}; default %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=commands.duration_arg,
        default=0.0,
        help="Total timeout for wharf commands, e.g. 10s (default 0: none)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=commands.duration_arg,
        default=0.0,
        help="Timeout for connecting to wharfd (default 0: 10s)",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        default=_env(NAMESPACE_ENV, DEFAULT_NAMESPACE),
        help=f"Namespace to use with commands (env ${NAMESPACE_ENV}; default %(default)s)",
    )
    parser.add_argument(
        "-v",
        "--version",
        action="version",
        version=f"{PROG} {PACKAGE} {version.version()}",
        help="Print the version",
    )
    parser.set_defaults(func=lambda _args: parser.print_help())
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for group in GROUPS:
        importlib.import_module(f"wharfd.runtime.ctr.{group}").register(subparsers)
    return parser


class _StderrHandler(logging.Handler):
    # Looks sys.stderr up at each record, so redirection after setup still applies.
    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def _setup_logging(debug: bool) -> tuple[logging.Logger, logging.Handler, int]:
    from wharfd.runtime.logs import TextFormatter

    handler = _StderrHandler()
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger("wharfd")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    return logger, handler, previous


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``wharf`` with ``argv`` (default: the process arguments); return the exit code."""
    # ctr discards gRPC's own logging so it cannot mix into command output.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        exc.parser.print_usage(sys.stderr)
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    logger, handler, previous = _setup_logging(args.debug)
    try:
        return _run(args)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def _run(args: argparse.Namespace) -> int:
    from wharfd.runtime import errors
    from wharfd.runtime.client import describe

    try:
        code = args.func(args)
    except (commands.CommandError, errors.WharfError, OSError) as exc:
        print(f"{PROG}: {describe(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # A bug, not a condition the user can fix: say so, with details under --debug.
        commands.log.debug("unexpected failure", exc_info=True)
        print(f"{PROG}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        sys.stdout.flush()
    return int(code or 0)
