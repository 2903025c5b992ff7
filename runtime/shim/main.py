"""``containerd-shim-wharf-v2``: the command line containerd's runtime v2 launcher speaks.

::

    containerd-shim-wharf-v2 -namespace NS -address GRPC -publish-binary BIN -id ID [-bundle B] [-debug] start|delete
    containerd-shim-wharf-v2 -v            version
    containerd-shim-wharf-v2 -info         stdin: runtime options Any; stdout: RuntimeInfo protobuf

Flags follow Go's ``flag`` package (``-name value``, ``-name=value``, one or two
dashes, parsing stops at the first non-flag). Without an action the binary
serves the Task API on the listening socket inherited as fd 3, as containerd's
own shims do when re-executed; ``start`` normally forks servers from the
zygote instead (:mod:`wharfd.runtime.shim.zygote`). Imports are kept to what
each action needs: this process starts for every container.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from wharfd.runtime import errors
from wharfd.runtime.shim.launch import Flags

RUNTIME_NAME = "io.containerd.wharf.v2"
_VALUE_FLAGS = {"namespace", "address", "publish-binary", "id", "bundle", "socket"}
_BOOL_FLAGS = {"debug", "v", "info"}


class UsageError(Exception):
    """The command line is malformed."""


def parse(argv: Sequence[str]) -> tuple[Flags, set[str], list[str]]:
    """(value flags, bool flags set, positional arguments) from ``argv`` (without the program name)."""
    flags, switches, i = Flags(), set[str](), 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, has_value, value = arg.lstrip("-").partition("=")
        if arg.startswith("---") or not name:
            raise UsageError(f"bad flag syntax: {arg}")
        if name in _BOOL_FLAGS:
            if not has_value or value.lower() in ("1", "t", "true"):
                switches.add(name)
        elif name in _VALUE_FLAGS:
            if not has_value:
                i += 1
                if i >= len(argv):
                    raise UsageError(f"flag needs an argument: -{name}")
                value = argv[i]
            setattr(flags, name.replace("-", "_"), value)
        else:
            raise UsageError(f"flag provided but not defined: -{name}")
        i += 1
    return flags, switches, list(argv[i:])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = sys.argv[1:] if argv is None else argv
    flags = Flags()
    try:
        flags, switches, rest = parse(args)
        flags.debug = "debug" in switches
        if "v" in switches:
            return _version()
        if "info" in switches:
            sys.stdout.buffer.write(_info(_stdin()))
            return 0
        action = rest[0] if rest else ""
        if action == "start":
            sys.stdout.buffer.write(_start(flags))
        elif action == "delete":
            from wharfd.runtime.shim.launch import delete

            sys.stdout.buffer.write(delete(flags))
        elif action == "":
            _serve_inherited(flags)
        else:
            raise UsageError(f"unknown action {action!r}: want start or delete")
        sys.stdout.flush()
        return 0
    except UsageError as exc:
        print(f"containerd-shim-wharf-v2: {exc}", file=sys.stderr)
        return 2
    except (errors.WharfError, OSError) as exc:
        print(f"{flags.id}: {exc}", file=sys.stderr)
        return 1


def _stdin() -> bytes:
    return b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()


def _start(flags: Flags) -> bytes:
    from wharfd.runtime.shim.launch import start

    if not (flags.id and flags.namespace):
        raise UsageError("start needs -id and -namespace")
    return start(flags, _stdin())


def _version() -> int:
    from wharfd.runtime.version import revision, version

    print(f"{sys.argv[0]}:")
    print(f"  Version:  {version()}")
    print(f"  Revision: {revision()}")
    print(f"  Python version: {sys.version.split()[0]}")
    return 0


def _info(data: bytes) -> bytes:
    """RuntimeInfo: name, version, the options given, and runc's features (if it reports them)."""
    import json
    import subprocess

    from google.protobuf import any_pb2

    from wharfd.api.types import introspection_pb2
    from wharfd.runtime.shim import options
    from wharfd.runtime.version import revision, version

    info = introspection_pb2.RuntimeInfo(name=RUNTIME_NAME)
    info.version.version, info.version.revision = version(), revision()
    binary = "runc"
    if data:
        given = any_pb2.Any()
        given.ParseFromString(data)
        opts = options.from_any(given)
        if opts is not None:
            info.options.CopyFrom(given)
            binary = opts.binary_name or binary
    result = subprocess.run([binary, "features"], capture_output=True, check=False)
    if result.returncode == 0:
        json.loads(result.stdout)  # refuse to pass on garbage
        info.features.CopyFrom(
            any_pb2.Any(
                type_url="types.containerd.io/opencontainers/runtime-spec/1/features/Features",
                value=result.stdout,
            )
        )
    return info.SerializeToString()


def _serve_inherited(flags: Flags) -> None:
    """Serve on fd 3 in this process (the re-exec style of containerd's own shims)."""
    import os
    import socket

    from wharfd.runtime.shim import options, server

    if not flags.id:
        raise UsageError("serving needs -id")
    bundle = flags.bundle or os.getcwd()
    server.configure_logging()
    listener = socket.socket(fileno=3)
    launch = server.Launch(
        id=flags.id,
        namespace=flags.namespace,
        bundle=bundle,
        socket_path=listener.getsockname(),
        grpc_address=flags.address,
        ttrpc_address=os.environ.get("TTRPC_ADDRESS", ""),
        debug=flags.debug,
        options=options.read(bundle).SerializeToString(),
        env=dict(os.environ),
    )
    server.run(launch, listener)


if __name__ == "__main__":
    sys.exit(main())
