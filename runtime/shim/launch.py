"""The ``start`` and ``delete`` actions of the shim binary (runtime v2 launch protocol).

``start`` (cwd = bundle) reads the daemon's BootstrapParams from stdin (or,
from older daemons, the raw runtime options or nothing), picks the group the
container belongs to (``io.containerd.runc.v2.group`` or
``io.kubernetes.cri.sandbox-id`` annotation, else its own id), derives the
group's socket like containerd does::

    <socket_dir>/<hex sha256("<grpc address>/<namespace>/<group>")>

(``socket_dir``: the daemon's BootstrapParams; from a legacy daemon, which
sends none, ``$WHARF_SHIM_SOCKET_DIR`` or /run/wharfd/s)

and answers with that socket once a shim serves it: an existing one (pod
grouping) or a new one forked by the zygote, which is started first if it is
not running. Daemons that sent BootstrapParams get a BootstrapResult
(version 3, ttrpc); legacy daemons get the bare ``unix://`` address.

``delete`` cleans up after a shim that is gone: ``runc delete --force``,
unmount the rootfs, and print a DeleteResponse (status 137, now).
"""

from __future__ import annotations

import binascii
import contextlib
import fcntl
import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Mapping

from wharfd.runtime import errors
from wharfd.runtime.shim import wire

# Imports stay light (no protobuf, no dataclasses): this process runs for every container.
DEFAULT_SOCKET_DIR = "/run/wharfd/s"
SOCKET_DIR_ENV = "WHARF_SHIM_SOCKET_DIR"  # the socket dir when the daemon names none (legacy start)
# containerd's precedence: an explicit group, then the pod's sandbox.
GROUP_ANNOTATIONS = ("io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id")
MAX_SOCKET_PATH = 106
TASK_API_VERSION = 3
ZYGOTE_START_TIMEOUT = 10.0
CONNECT_TIMEOUT = 30.0  # how long a full listen backlog is waited out
OPTIONS_TYPE = "containerd.runc.v1.Options"
# What containerd's CRI sends a runtime type it does not know as runc's (ours, to a stock
# containerd): a runtime config file's type and path. runc has no use for them: no options.
GENERIC_OPTIONS_TYPE = "runtimeoptions.v1.Options"
# The folders under wharfd/runtime holding the code a shim runs: its own package and the
# shared modules it imports (ttrpc; errors, mount, namespaces, version; the Mount type).
# Any change there must give a new zygote, not a fork of old code.
CODE_DIRS = ("shim", "ttrpc", ".", "snapshots")


class Flags:
    """The shim binary's flags, as containerd passes them."""

    def __init__(self, *, namespace: str = "", address: str = "", id: str = "", bundle: str = "") -> None:
        """Unset flags are empty, as Go's flag package leaves them."""
        self.namespace, self.address, self.id, self.bundle = namespace, address, id, bundle
        self.publish_binary = self.socket = ""
        self.debug = False


class Bootstrap:
    """What ``start`` learned from stdin: BootstrapParams fields, or legacy options."""

    def __init__(self, *, sent: bool = False, ttrpc_address: str = "", socket_dir: str | None = None) -> None:
        """``sent``: the daemon spoke the bootstrap protocol (and gets a BootstrapResult)."""
        self.sent = sent
        self.ttrpc_address = ttrpc_address
        self.socket_dir = socket_dir
        self.options = b""  # serialized containerd.runc.v1.Options


def read_bootstrap(data: bytes, flags: Flags) -> Bootstrap:
    """Decode stdin: BootstrapParams (checked against the flags), legacy options, or nothing."""
    if not data:
        return Bootstrap()
    params = _params(data)
    if params is not None and params.instance_id == flags.id:
        if params.namespace != flags.namespace:
            raise errors.InvalidArgument(
                f"bootstrap namespace {params.namespace!r} does not match -namespace {flags.namespace!r}"
            )
        boot = Bootstrap(sent=True, ttrpc_address=params.ttrpc_address, socket_dir=params.socket_dir)
        for extension in params.extensions:
            type_url, value = _any(extension)
            if names_type(type_url, OPTIONS_TYPE):
                boot.options = value  # anything else (GENERIC_OPTIONS_TYPE) holds nothing for runc
        return boot
    # Before the bootstrap protocol, daemons sent the runtime options Any (or nothing).
    type_url, value = _any(data)
    if names_type(type_url, OPTIONS_TYPE):
        boot = Bootstrap()
        boot.options = value
        return boot
    if names_type(type_url, GENERIC_OPTIONS_TYPE):
        return Bootstrap()
    if params is not None and params.namespace == flags.namespace:
        raise errors.InvalidArgument(
            f"bootstrap instance_id {params.instance_id!r} does not match -id {flags.id!r}"
        )
    kind = f"options of type {type_url!r}" if type_url else "unreadable data"
    raise errors.InvalidArgument(f"start: stdin holds {kind}, want BootstrapParams or {OPTIONS_TYPE}")


class _Params:
    """The BootstrapParams fields ``start`` uses."""

    def __init__(self) -> None:
        self.instance_id = self.namespace = self.ttrpc_address = ""
        self.socket_dir: str | None = None  # proto3 optional: unset differs from ""
        self.extensions: list[bytes] = []  # each Extension's Any


def _params(data: bytes) -> _Params | None:
    """BootstrapParams (containerd.runtime.bootstrap.v1); None if ``data`` is not one."""
    params = _Params()
    try:
        for number, _kind, value in wire.fields(data):
            if number == 1:
                params.instance_id = wire.text(value)
            elif number == 2:
                params.namespace = wire.text(value)
            elif number == 5:
                params.ttrpc_address = wire.text(value)
            elif number == 9:
                params.socket_dir = wire.text(value)
            elif number == 8 and isinstance(value, bytes):
                params.extensions += [v for n, _k, v in wire.fields(value) if n == 1 and isinstance(v, bytes)]
    except (ValueError, UnicodeDecodeError):
        return None
    return params


def _any(data: bytes) -> tuple[str, bytes]:
    """(type_url, value) of a google.protobuf.Any; ("", b"") if it is not one."""
    type_url, value = "", b""
    try:
        for number, _kind, field in wire.fields(data):
            if number == 1:
                type_url = wire.text(field)
            elif number == 2 and isinstance(field, bytes):
                value = field
    except (ValueError, UnicodeDecodeError):
        return "", b""
    return type_url, value


def names_type(type_url: str, name: str) -> bool:
    """Whether an Any's ``type_url`` names message ``name``: bare, or ``<prefix>/name``."""
    return type_url == name or type_url.endswith("/" + name)


def group_of(annotations: Mapping[str, str], default: str) -> str:
    """The shim group named by a container's annotations (:data:`GROUP_ANNOTATIONS`), else ``default``."""
    for key in GROUP_ANNOTATIONS:
        if annotations.get(key):
            return str(annotations[key])
    return default


def default_socket_dir() -> str:
    """Where shim sockets go when the daemon names no directory: ``$WHARF_SHIM_SOCKET_DIR``, else
    :data:`DEFAULT_SOCKET_DIR`."""
    return os.environ.get(SOCKET_DIR_ENV) or DEFAULT_SOCKET_DIR


def group_id(bundle: str, container_id: str) -> str:
    """The group a container's shim serves: its sandbox (annotation), else itself."""
    try:
        with open(os.path.join(bundle, "config.json"), encoding="utf-8") as f:
            annotations = json.load(f).get("annotations") or {}
    except FileNotFoundError:
        annotations = {}
    except ValueError as exc:
        raise errors.InvalidArgument(f"start: {bundle}/config.json: {exc}") from exc
    return group_of(annotations, container_id)


def socket_path(socket_dir: str, grpc_address: str, namespace: str, group: str) -> str:
    """The group's socket path: the hex sha256 of containerd's ``filepath.Join(address, ns, id)``."""
    joined = os.path.normpath("/".join(p for p in (grpc_address, namespace, group) if p))
    if joined.startswith("//"):  # Go's Clean collapses a leading "//"; POSIX normpath keeps it
        joined = "/" + joined.lstrip("/")
    path = os.path.join(socket_dir, hashlib.sha256(joined.encode()).hexdigest())
    if len(path) > MAX_SOCKET_PATH:
        raise errors.InvalidArgument(
            f"shim socket path {path!r} is {len(path)} bytes; unix sockets allow {MAX_SOCKET_PATH}: "
            "use a shorter socket_dir"
        )
    return path


def control_path(socket_dir: str, executable: str = "") -> str:
    """The zygote's control socket for this interpreter and this version of the shim code.

    ``executable``: the interpreter as the shim binary names it (default ``sys.executable``),
    for a daemon addressing the zygote of a ``start`` it does in-process. The code's stamp
    (~60 stats) is taken at most once per :data:`STAMP_TTL`: a daemon launching shims in a
    row reuses it, and still finds new code within that long.
    """
    package_dir = os.path.dirname(os.path.abspath(__file__))
    now = time.monotonic()
    if now - _stamp[0] > STAMP_TTL:
        runtime_dir = os.path.dirname(package_dir)
        _stamp[:] = [now, max(_newest(os.path.join(runtime_dir, d)) for d in CODE_DIRS)]
    stamp = _stamp[1]
    tag = hashlib.sha256(f"{executable or sys.executable}\0{package_dir}\0{stamp}".encode()).hexdigest()[:12]
    return os.path.join(socket_dir, f"wharf-zygote-{tag}.sock")


STAMP_TTL = 1.0
_stamp: list[float] = [-STAMP_TTL - 1.0, 0]  # (when taken, the newest mtime of the shim code)


def _newest(directory: str) -> int:
    """The newest mtime of the modules in ``directory`` (not recursive)."""
    newest = 0
    for entry in os.scandir(directory):
        if entry.name.endswith(".py"):
            with contextlib.suppress(OSError):  # a dangling link of an editable install
                newest = max(newest, entry.stat().st_mtime_ns)
    return newest


def start(flags: Flags, stdin: bytes) -> bytes:
    """Run the ``start`` action; return what to print on stdout."""
    boot = read_bootstrap(stdin, flags)
    bundle = flags.bundle or os.getcwd()
    socket_dir = boot.socket_dir if boot.socket_dir is not None else default_socket_dir()
    path = socket_path(socket_dir, flags.address, flags.namespace, group_id(bundle, flags.id))
    request = launch_request(
        flags,
        bundle=bundle,
        socket_path=path,
        ttrpc_address=os.environ.get("TTRPC_ADDRESS") or boot.ttrpc_address,
        options=boot.options,
        env=dict(os.environ),
    )
    ensure_shim(socket_dir, request)
    address = write_address(bundle, path)
    if not boot.sent:
        return address.encode()
    return bootstrap_result(address)


def launch_request(
    flags: Flags, *, bundle: str, socket_path: str, ttrpc_address: str, options: bytes, env: dict[str, str]
) -> dict[str, object]:
    """What the zygote needs to fork a shim serving ``socket_path`` (a server.Launch, as JSON)."""
    return {
        "id": flags.id,
        "namespace": flags.namespace,
        "bundle": bundle,
        "socket_path": socket_path,
        "grpc_address": flags.address,
        "ttrpc_address": ttrpc_address,
        "debug": flags.debug,
        "options": binascii.b2a_base64(options, newline=False).decode(),
        "env": env,
        "oom_score_adj": _oom_score_adj(),
    }


def ensure_shim(
    socket_dir: str, request: dict[str, object], *, start_zygote: bool = True, executable: str = ""
) -> bool:
    """Make sure a shim serves ``request["socket_path"]``: an existing one, or one the zygote forks.

    False (nothing done) if no zygote runs and ``start_zygote`` is off: the daemon's
    in-process start then falls back to exec'ing ``start``, which starts one.
    """
    if _can_connect(str(request["socket_path"])):
        return True
    return _ask_zygote(socket_dir, request, start_zygote, executable)


def write_address(bundle: str, path: str) -> str:
    """Record the shim's address in ``<bundle>/address`` (best effort) and return it."""
    address = "unix://" + path
    with contextlib.suppress(OSError), open(os.path.join(bundle, "address"), "w", encoding="utf-8") as f:
        f.write(address)
    return address


def bootstrap_result(address: str) -> bytes:
    """The BootstrapResult ``start`` answers a bootstrap-speaking daemon with."""
    return wire.encode((1, TASK_API_VERSION), (2, address), (3, "ttrpc"))


def _oom_score_adj() -> int | None:
    try:
        with open("/proc/self/oom_score_adj", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _ask_zygote(socket_dir: str, request: dict[str, object], start_zygote: bool, executable: str) -> bool:
    os.makedirs(socket_dir, mode=0o711, exist_ok=True)
    control = control_path(socket_dir, executable)
    reply = _request(control, request)
    if reply is None:
        if not start_zygote:
            return False
        _start_zygote(control)
        reply = _request(control, request)
    if reply is None:
        raise errors.Unavailable(f"shim zygote at {control} does not answer")
    if "error" in reply:
        raise errors.WharfError(f"shim zygote: {reply['error']}")
    return True


def _request(control: str, request: dict[str, object]) -> dict[str, object] | None:
    """One request to the zygote; None if no zygote listens there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        if not _connect(sock, control, CONNECT_TIMEOUT):
            return None
        sock.sendall(json.dumps(request).encode())
        sock.shutdown(socket.SHUT_WR)
        data = b"".join(iter(lambda: sock.recv(65536), b""))
    if not data:
        return None  # the zygote went away mid-request (idle exit): start another
    reply: dict[str, object] = json.loads(data)
    return reply


def _start_zygote(control: str) -> None:
    """Start a zygote unless another ``start`` just did (serialized with a lock file)."""
    import subprocess

    with open(control + ".lock", "w", encoding="ascii") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _can_connect(control):
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(control)
        # The zygote's own failures (it has no other stderr) land next to its socket.
        with open(control + ".log", "ab") as log:
            zygote = subprocess.Popen(
                [sys.executable, "-m", "wharfd.runtime.shim.zygote", control],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
                cwd="/",
            )
        deadline = time.monotonic() + ZYGOTE_START_TIMEOUT
        while not _can_connect(control):
            if zygote.poll() is not None or time.monotonic() > deadline:
                raise errors.Unavailable(
                    f"shim zygote did not come up at {control}: {_tail(control + '.log')}"
                )
            time.sleep(0.005)


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            lines = f.read()[-2000:].decode(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "no log"


def _connect(sock: socket.socket, path: str, timeout: float) -> bool:
    """Connect ``sock`` to the unix socket ``path``; False if nothing listens there.

    A socket with a timeout is non-blocking underneath, and a unix socket whose
    listen backlog is full refuses such a connect with EAGAIN at once instead of
    waiting: the listener is alive, only busy, so keep trying until ``timeout``.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            sock.connect(path)
            return True
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        except BlockingIOError:
            if time.monotonic() + delay > deadline:
                raise errors.Unavailable(f"{path}: listen backlog still full after {timeout:g}s") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def _can_connect(path: str) -> bool:
    """Whether something listens on ``path`` (a full backlog counts as listening)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return True


def delete(flags: Flags) -> bytes:
    """Run the ``delete`` action (the shim is gone): clean up and return a DeleteResponse."""
    import subprocess

    from wharfd.api.runtime.task.v3 import shim_pb2
    from wharfd.runtime import mount
    from wharfd.runtime.shim import options

    bundle = flags.bundle or os.getcwd()
    opts = options.read(bundle)
    argv = [
        opts.binary_name or "runc",
        "--root",
        options.root(opts, flags.namespace),
        "delete",
        "--force",
        flags.id,
    ]
    result = subprocess.run(argv, capture_output=True, check=False)
    if result.returncode != 0:
        print(f"warning: {' '.join(argv)}: {result.stderr.decode(errors='replace').strip()}", file=sys.stderr)
    rootfs = os.path.join(bundle, "rootfs")
    try:
        mount.unmount_all(rootfs)
    except OSError as exc:
        print(f"warning: {exc}; detaching", file=sys.stderr)
        with contextlib.suppress(OSError):
            mount.unmount(rootfs, mount.MNT_DETACH)
    try:
        with open(os.path.join(bundle, "init.pid"), encoding="ascii") as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        pid = 0
    now = time.time_ns()
    response = shim_pb2.DeleteResponse(pid=pid, exit_status=128 + 9)
    response.exited_at.FromNanoseconds(now)
    return response.SerializeToString()
