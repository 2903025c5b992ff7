"""Applying an OCI image config's run settings to a spec, with ctr's and the CRI's override rules.

The ``config`` object of an image configuration carries Entrypoint, Cmd, Env,
WorkingDir, User and StopSignal. Two clients override them differently:

* ``ctr run IMAGE ID [ARGS…]`` (containerd's ``oci.WithImageConfigArgs``):
  ARGS replace Cmd, Entrypoint stays (:func:`ctr_process_args`).
* the CRI (``CreateContainer``): ``command`` replaces Entrypoint *and*
  drops Cmd, ``args`` replace Cmd (:func:`cri_process_args`).

:func:`with_image_config` is ctr's whole rule set: env from the image (or the
default PATH if it has none) overridden by the spec's own env, argv, cwd
(``/`` if unset), and the user resolved inside the image rootfs. It reads the
rootfs, so build specs off the event loop.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wharfd.runtime import errors
from wharfd.runtime.oci import users
from wharfd.runtime.oci.process import merge_env, with_cwd, with_process_args, with_user
from wharfd.runtime.oci.spec import DEFAULT_PATH_ENV, Spec, SpecOpt, process_of

# Label callers put on containers so that stop (and the CRI) know the image's signal.
STOP_SIGNAL_LABEL = "io.containerd.image.config.stop-signal"
DEFAULT_STOP_SIGNAL = "SIGTERM"


@dataclass(frozen=True)
class RunConfig:
    """The run settings of an image (the ``config`` object of its configuration)."""

    user: str = ""
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""
    stop_signal: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, config: Mapping[str, Any] | None, *, what: str = "image config.config") -> RunConfig:
        """Read the fields from the JSON object; InvalidArgument naming a field of the wrong type."""
        config = config or {}
        if not isinstance(config, Mapping):
            raise errors.InvalidArgument(f"{what}: expected an object")

        def text(key: str) -> str:
            value = config.get(key)
            if value is None:
                return ""
            if not isinstance(value, str):
                raise errors.InvalidArgument(f"{what}.{key}: expected a string")
            return value

        def strings(key: str) -> tuple[str, ...]:
            value = config.get(key)
            if value is None:
                return ()
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise errors.InvalidArgument(f"{what}.{key}: expected a list of strings")
            return tuple(value)

        labels = config.get("Labels")
        labels = {} if labels is None else labels
        if not isinstance(labels, Mapping) or not all(isinstance(v, str) for v in labels.values()):
            raise errors.InvalidArgument(f"{what}.Labels: expected an object of strings")
        return cls(
            user=text("User"),
            env=strings("Env"),
            entrypoint=strings("Entrypoint"),
            cmd=strings("Cmd"),
            working_dir=text("WorkingDir"),
            stop_signal=text("StopSignal"),
            labels=dict(labels),
        )


def ctr_process_args(config: RunConfig, args: Sequence[str] = ()) -> list[str]:
    """ctr's argv: Entrypoint followed by ``args`` if any were given, else by Cmd."""
    return [*config.entrypoint, *(args or config.cmd)]


def cri_process_args(config: RunConfig, command: Sequence[str] = (), args: Sequence[str] = ()) -> list[str]:
    """The CRI's argv (containerd's CRI WithProcessArgs, itself Docker's rule).

    A ``command`` replaces Entrypoint and Cmd, followed only by ``args``.
    Without one, Entrypoint is kept (unless it is the ``[""]`` that resets it)
    and ``args``, when given, replace Cmd. An empty result is InvalidArgument.
    """
    if command:
        argv = [*command, *args]
    else:
        entrypoint = [] if list(config.entrypoint) == [""] else list(config.entrypoint)
        argv = [*entrypoint, *(args or config.cmd)]
    if not argv:
        raise errors.InvalidArgument("container config: no command specified (and the image has none)")
    return argv


def image_env(config: RunConfig) -> list[str]:
    """The image's Env, or containerd's default PATH when the image sets none."""
    return list(config.env) or [DEFAULT_PATH_ENV]


def parse_signal(name: str, *, what: str = "stop signal") -> int:
    """A signal number from ``SIGTERM``, ``TERM``, ``15`` or ``SIGRTMIN+3``; InvalidArgument otherwise."""
    text = name.strip().upper()
    if text.isdigit():
        number = int(text)
    else:
        text = text if text.startswith("SIG") else f"SIG{text}"
        base, plus, offset = text.partition("+")
        if base == "SIGRTMIN" and (not plus or offset.isdigit()):
            number = signal.SIGRTMIN + int(offset or 0)
        elif base == "SIGRTMAX" and not plus:
            number = signal.SIGRTMAX
        else:
            member = signal.Signals.__members__.get(text)
            number = member.value if member else 0
    if not 0 < number <= signal.SIGRTMAX:
        raise errors.InvalidArgument(f'{what} "{name}": not a signal name or number')
    return int(number)


def stop_signal(config: RunConfig, default: str = DEFAULT_STOP_SIGNAL) -> str:
    """The image's StopSignal (checked), or ``default``: the value of :data:`STOP_SIGNAL_LABEL`."""
    if not config.stop_signal:
        return default
    parse_signal(config.stop_signal, what="image config StopSignal")
    return config.stop_signal


def with_image_user(userstr: str, rootfs: str | os.PathLike[str], *, image: str = "") -> SpecOpt:
    """Run as ``userstr`` resolved in the image rootfs (ctr --user, or the image's User).

    Resolution happens when the option runs; a missing user or group is
    InvalidArgument naming it and ``image``.
    """

    def opt(spec: Spec) -> None:
        user = users.resolve(userstr, rootfs, image=image)
        with_user(user.uid, user.gid, user.additional_gids)(spec)

    return opt


def with_image_config(
    config: RunConfig, rootfs: str | os.PathLike[str], *, args: Sequence[str] = (), image: str = ""
) -> SpecOpt:
    """ctr's application of an image config (containerd's WithImageConfigArgs) to a Linux spec.

    The spec's env so far (from with_env) overrides the image's by key; ``args``
    replace Cmd. Apply later options (ctr --cwd, --user) after this one.
    """

    if config.working_dir and not config.working_dir.startswith("/"):
        of_image = f' of image "{image}"' if image else ""
        raise errors.InvalidArgument(f'WorkingDir "{config.working_dir}"{of_image}: must be an absolute path')

    def opt(spec: Spec) -> None:
        process = process_of(spec)
        process["env"] = merge_env(image_env(config), process.get("env", []))
        with_process_args(*ctr_process_args(config, args))(spec)
        with_cwd(config.working_dir or "/")(spec)
        with_image_user(config.user, rootfs, image=image)(spec)

    return opt
