"""Spec options for the ``process`` section: argv, env, cwd, tty, user, rlimits, privileges, capabilities.

Same contract as :mod:`wharfd.runtime.oci.spec`: each ``with_…`` validates its
arguments up front and returns an option that changes a spec in place.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from wharfd.runtime import errors
from wharfd.runtime.oci import caps
from wharfd.runtime.oci.spec import DEFAULT_PATH_ENV, MAX_ID, Spec, SpecOpt, process_of, set_or_drop, strings

# --- argv, env, cwd, tty ------------------------------------------------------------------------------


def with_process_args(*args: str) -> SpecOpt:
    """Replace the process arguments (argv, including argv[0])."""
    checked = strings(args, "process.args")

    def opt(spec: Spec) -> None:
        process = process_of(spec)
        set_or_drop(process, "args", list(checked))
        process.pop("commandLine", None)

    return opt


def merge_env(base: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """containerd's replaceOrAppendEnvValues: ``overrides`` replace ``base`` by key, new keys append.

    An override without ``=`` (``"KEY"``) removes KEY. Order: base order, then new keys.
    """
    result: list[str | None] = list(base)
    index = {entry.partition("=")[0]: i for i, entry in enumerate(base)}
    for entry in overrides:
        key, eq, _ = entry.partition("=")
        if key in index:
            result[index[key]] = entry if eq else None
        elif eq:
            index[key] = len(result)
            result.append(entry)
    return [entry for entry in result if entry is not None]


def with_env(env: Sequence[str]) -> SpecOpt:
    """Set environment variables by key over the current ones (``"KEY"`` alone unsets KEY)."""
    checked = strings(env, "process.env")
    for i, entry in enumerate(checked):
        if not entry.partition("=")[0]:
            raise errors.InvalidArgument(f'process.env[{i}] "{entry}": empty variable name')

    def opt(spec: Spec) -> None:
        if checked:
            process = process_of(spec)
            set_or_drop(process, "env", merge_env(process.get("env", []), checked))

    return opt


def with_default_path_env() -> SpecOpt:
    """Set PATH to containerd's default, replacing any PATH (containerd's WithDefaultPathEnv)."""
    return with_env([DEFAULT_PATH_ENV])


def with_cwd(cwd: str) -> SpecOpt:
    """Set the working directory; runc requires it absolute."""
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise errors.InvalidArgument(f'process.cwd "{cwd}": must be an absolute path')

    def opt(spec: Spec) -> None:
        process_of(spec)["cwd"] = cwd

    return opt


def with_tty(width: int = 0, height: int = 0) -> SpecOpt:
    """Give the process a terminal and TERM=xterm (as containerd's WithTTY), optionally sized."""

    def opt(spec: Spec) -> None:
        process = process_of(spec)
        process["terminal"] = True
        process["env"] = [*process.get("env", []), "TERM=xterm"]
        if width or height:
            process["consoleSize"] = {"height": height, "width": width}

    return opt


def with_user(uid: int, gid: int, additional_gids: Iterable[int] = ()) -> SpecOpt:
    """Run as numeric ``uid``/``gid``; the primary gid is prepended to the additional gids if missing."""
    extra = list(additional_gids)
    for what, value in (("uid", uid), ("gid", gid), *(("additionalGids", g) for g in extra)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
            raise errors.InvalidArgument(f"process.user.{what} {value!r}: must be in 0..{MAX_ID}")
    gids = extra if gid in extra else [gid, *extra]

    def opt(spec: Spec) -> None:
        user = process_of(spec).setdefault("user", {})
        user.update(uid=uid, gid=gid, additionalGids=list(gids))

    return opt


def with_rlimit(kind: str, soft: int, hard: int) -> SpecOpt:
    """Set one POSIX rlimit, replacing an existing entry of the same type."""
    if kind not in _RLIMITS:
        raise errors.InvalidArgument(f'process.rlimits: unknown type "{kind}"')
    if not 0 <= soft <= hard < 2**64:
        raise errors.InvalidArgument(f"process.rlimits {kind}: need 0 <= soft ({soft}) <= hard ({hard})")
    entry = {"type": kind, "hard": hard, "soft": soft}

    def opt(spec: Spec) -> None:
        rlimits: list[dict[str, Any]] = process_of(spec).setdefault("rlimits", [])
        for i, existing in enumerate(rlimits):
            if existing.get("type") == kind:
                rlimits[i] = dict(entry)
                return
        rlimits.append(dict(entry))

    return opt


_RLIMITS = frozenset(
    f"RLIMIT_{name}"
    for name in (
        "AS", "CORE", "CPU", "DATA", "FSIZE", "LOCKS", "MEMLOCK", "MSGQUEUE",
        "NICE", "NOFILE", "NPROC", "RSS", "RTPRIO", "RTTIME", "SIGPENDING", "STACK",
    )
)  # fmt: skip


def with_no_new_privileges(enabled: bool = True) -> SpecOpt:
    """Set or clear no_new_privs (the default spec sets it; the CRI clears it unless asked)."""

    def opt(spec: Spec) -> None:
        set_or_drop(process_of(spec), "noNewPrivileges", enabled)

    return opt


def with_oom_score_adj(score: int) -> SpecOpt:
    """Set the process's oom_score_adj (-1000..1000)."""
    if not isinstance(score, int) or not -1000 <= score <= 1000:
        raise errors.InvalidArgument(f"process.oomScoreAdj {score!r}: must be in -1000..1000")

    def opt(spec: Spec) -> None:
        process_of(spec)["oomScoreAdj"] = score

    return opt


# --- capabilities -----------------------------------------------------------------------------


def with_capabilities(names: Iterable[str]) -> SpecOpt:
    """Set bounding, effective and permitted to ``names``; inheritable keeps only those still allowed."""
    checked = caps.validate(names, what="process.capabilities")

    def opt(spec: Spec) -> None:
        capabilities = _capabilities_of(spec)
        for key in ("bounding", "effective", "permitted"):
            set_or_drop(capabilities, key, list(checked))
        inheritable = [c for c in capabilities.get("inheritable", []) if c in checked]
        set_or_drop(capabilities, "inheritable", inheritable)

    return opt


def with_added_capabilities(names: Iterable[str]) -> SpecOpt:
    """Add ``names`` to bounding, effective and permitted (ctr --cap-add)."""
    checked = caps.validate(names, what="process.capabilities (add)")

    def opt(spec: Spec) -> None:
        capabilities = _capabilities_of(spec)
        for key in ("bounding", "effective", "permitted"):
            current = capabilities.setdefault(key, [])
            current.extend(c for c in checked if c not in current)

    return opt


def with_dropped_capabilities(names: Iterable[str]) -> SpecOpt:
    """Remove ``names`` from every set (ctr --cap-drop); ambient too, which must stay a subset."""
    checked = set(caps.validate(names, what="process.capabilities (drop)"))

    def opt(spec: Spec) -> None:
        capabilities = _capabilities_of(spec)
        for key in ("bounding", "effective", "permitted", "inheritable", "ambient"):
            if key in capabilities:
                set_or_drop(capabilities, key, [c for c in capabilities[key] if c not in checked])

    return opt


def with_ambient_capabilities(names: Iterable[str]) -> SpecOpt:
    """Set inheritable and ambient to ``names`` (for non-root processes that need capabilities)."""
    checked = caps.validate(names, what="process.capabilities (ambient)")

    def opt(spec: Spec) -> None:
        capabilities = _capabilities_of(spec)
        set_or_drop(capabilities, "inheritable", list(checked))
        set_or_drop(capabilities, "ambient", list(checked))

    return opt


def _capabilities_of(spec: Spec) -> dict[str, list[str]]:
    capabilities: dict[str, list[str]] = process_of(spec).setdefault("capabilities", {})
    return capabilities
