"""Platforms: parse ``os[/arch[/variant]]`` specifiers, describe the host, and rank image platforms.

Specifiers and normalization follow containerd, so ``--platform`` values and
the choice made from a multi-platform index are the same as with ``ctr``:

* ``x86_64``/``x86-64`` -> ``amd64``, ``aarch64`` -> ``arm64``, ``i386`` -> ``386``,
  ``armhf`` -> ``arm/v7``, ``armel`` -> ``arm/v6``, ``macos`` -> ``darwin``;
  ``arm64/v8`` and ``amd64/v1`` are the same as no variant, plain ``arm`` means ``arm/v7``.
* A one-word specifier is an OS if it names one (the host architecture is
  assumed), otherwise an architecture (the host OS is assumed).
* ``os(version+feature...)`` carries an OS version and OS features.

:func:`only` gives the matcher a puller uses: the platform itself first, then
what it can also run, best first. ``amd64/v3`` also runs v2, v1 and ``386``;
``arm/v7`` runs v6 and v5; ``arm64/v8.x`` runs the earlier v8 minors and then
32-bit ``arm/v8`` down to v5; ``arm64/v9.x`` runs v9 minors, then ``v8.(x+5)``
and down.
"""

from __future__ import annotations

import functools
import platform as _platform
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol
from urllib.parse import unquote

from wharfd.runtime import errors

# fmt: off
_KNOWN_OS = frozenset({
    "aix", "android", "darwin", "dragonfly", "freebsd", "hurd", "illumos", "ios", "js", "linux", "nacl",
    "netbsd", "openbsd", "plan9", "solaris", "windows", "zos",
})
_KNOWN_ARCH = frozenset({
    "386", "amd64", "amd64p32", "arm", "armbe", "arm64", "arm64be", "ppc64", "ppc64le", "loong64", "mips",
    "mipsle", "mips64", "mips64le", "mips64p32", "mips64p32le", "ppc", "riscv", "riscv64", "s390", "s390x",
    "sparc", "sparc64", "wasm",
})
# /proc/cpuinfo "CPU architecture" values of ARM kernels.
_ARM_CPU_VARIANTS = {
    "8": "v8", "aarch64": "v8", "7": "v7", "7m": "v7", "6": "v6", "6tej": "v6", "5": "v5", "5t": "v5",
    "5te": "v5", "5tej": "v5", "4": "v4", "4t": "v4", "3": "v3",
}
# fmt: on
_COMPONENT = re.compile(r"^[A-Za-z0-9_.-]+$")
_OS_PART = re.compile(r"^([A-Za-z0-9_-]+)(?:\(([A-Za-z0-9_.%-]*)((?:\+[A-Za-z0-9_.%-]+)*)\))?$")
# x86-64 micro-architecture levels, each adding CPU flags to the one below.
_AMD64_LEVELS = (
    ("v2", frozenset({"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"})),
    ("v3", frozenset({"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"})),
    ("v4", frozenset({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"})),
)


@dataclass(frozen=True, slots=True)
class Platform:
    """An OCI platform. ``os_features`` is kept sorted when normalized."""

    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    def __str__(self) -> str:
        return format_platform(self)

    @classmethod
    def from_json(cls, obj: object, *, what: str = "platform") -> Platform:
        """Read the OCI JSON form (``os``, ``architecture``, ``variant``, ``os.version``, ``os.features``)."""
        if not isinstance(obj, Mapping):
            raise errors.InvalidArgument(f"{what}: expected an object")
        fields: dict[str, str] = {}
        for key in ("os", "architecture", "variant", "os.version"):
            value = obj.get(key, "")
            if not isinstance(value, str):
                raise errors.InvalidArgument(f'{what}."{key}": expected a string')
            fields[key] = value
        features = obj.get("os.features") or []
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise errors.InvalidArgument(f'{what}."os.features": expected a list of strings')
        return cls(
            fields["os"], fields["architecture"], fields["variant"], fields["os.version"], tuple(features)
        )

    def to_json(self) -> dict[str, Any]:
        """The OCI JSON form, omitting empty fields."""
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.variant:
            out["variant"] = self.variant
        return out


def normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    """Canonical (architecture, variant) for the aliases people and kernels use."""
    arch, variant = arch.lower(), variant.lower()
    if arch == "i386":
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        return "arm64", "" if variant in ("8", "v8") else variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            return "arm", "v7"
        if variant in ("5", "6", "8"):
            return "arm", "v" + variant
    return arch, variant


def normalize(p: Platform) -> Platform:
    """The canonical form used for comparison."""
    os_name = p.os.lower() or host().os
    arch, variant = normalize_arch(p.architecture, p.variant)
    return replace(
        p,
        os="darwin" if os_name == "macos" else os_name,
        architecture=arch,
        variant=variant,
        os_features=tuple(sorted(set(p.os_features))),
    )


def parse(specifier: str) -> Platform:
    """Parse ``<os>[(<version>[+<feature>...])]``, ``<arch>`` or ``<os>/<arch>[/<variant>]``."""
    if "*" in specifier:
        raise errors.InvalidArgument(f'platform "{specifier}": wildcards are not supported')
    parts = specifier.split("/")
    if len(parts) > 3:
        raise errors.InvalidArgument(f'platform "{specifier}": expected at most os/arch/variant')
    os_match = _OS_PART.match(parts[0])
    if not os_match:
        raise errors.InvalidArgument(f'platform "{specifier}": invalid OS component "{parts[0]}"')
    for part in parts[1:]:
        if not _COMPONENT.match(part):
            raise errors.InvalidArgument(f'platform "{specifier}": invalid component "{part}"')
    os_name = os_match.group(1).lower()
    os_name = "darwin" if os_name == "macos" else os_name
    base = Platform(
        os=os_name,
        architecture="",
        os_version=_decode(os_match.group(2) or ""),
        os_features=tuple(_decode(f) for f in (os_match.group(3) or "").split("+")[1:]),
    )
    if len(parts) == 1:
        return _parse_single(specifier, base)
    arch, variant = normalize_arch(parts[1], parts[2] if len(parts) == 3 else "")
    if len(parts) == 2 and arch == "arm" and variant == "v7":
        variant = ""
    if len(parts) == 3 and arch == "arm64" and not variant:
        variant = "v8"
    return replace(base, architecture=arch, variant=variant)


def _parse_single(specifier: str, base: Platform) -> Platform:
    if base.os in _KNOWN_OS:
        here = host()
        variant = here.variant if here.architecture == "arm" and here.variant != "v7" else ""
        return replace(base, architecture=here.architecture, variant=variant)
    arch, variant = normalize_arch(specifier, "")
    if arch == "arm" and variant == "v7":
        variant = ""
    if arch in _KNOWN_ARCH:
        return Platform(os=host().os, architecture=arch, variant=variant)
    raise errors.InvalidArgument(f'platform "{specifier}": unknown operating system or architecture')


def _decode(value: str) -> str:
    return unquote(value) if "%" in value else value


def _encode(value: str) -> str:
    for char, code in (("%", "%25"), ("+", "%2B"), ("(", "%28"), (")", "%29"), ("/", "%2F")):
        value = value.replace(char, code)
    return value


def format_platform(p: Platform) -> str:
    """The specifier form: ``linux/arm64/v8``, ``windows(10.0.17763)/amd64``; ``unknown`` without an OS."""
    if not p.os:
        return "unknown"
    options = _encode(p.os_version) + "".join("+" + _encode(f) for f in sorted(p.os_features))
    head = f"{p.os}({options})" if options else p.os
    return "/".join(part for part in (head, p.architecture, p.variant) if part)


@functools.cache
def host() -> Platform:
    """This machine's platform, with the CPU variant read from /proc/cpuinfo as containerd does."""
    os_name = "linux" if sys.platform.startswith("linux") else sys.platform
    arch, _ = normalize_arch(_platform.machine() or "amd64", "")
    variant = ""
    if arch in ("arm", "arm64"):
        variant = _ARM_CPU_VARIANTS.get(_cpuinfo("cpu architecture").lower(), "")
    elif arch == "amd64":
        variant = _amd64_level(set(_cpuinfo("flags").split()))
    return Platform(os=os_name, architecture=arch, variant=variant)


def _cpuinfo(field: str) -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() == field:
                    return value.strip()
    except OSError:
        pass
    return ""


def _amd64_level(flags: set[str]) -> str:
    level = "v1"
    for name, required in _AMD64_LEVELS:
        if not required <= flags:
            break
        level = name
    return level


def _matches(want: Platform, got: Platform) -> bool:
    """Exact match after normalization; ``got``'s OS features must be a subset of ``want``'s."""
    got = normalize(got)
    return (
        want.os == got.os
        and want.architecture == got.architecture
        and want.variant == got.variant
        and set(got.os_features) <= set(want.os_features)
    )


class Matcher(Protocol):
    """Decides whether an image platform is usable, and how much it is preferred."""

    def match(self, p: Platform) -> bool:
        """Whether ``p`` can run here."""
        ...

    def rank(self, p: Platform) -> int | None:
        """Preference order (0 is best), or None when ``p`` does not match."""
        ...


@dataclass(frozen=True)
class Ordered:
    """Matches any of ``platforms`` and prefers them in the order given."""

    platforms: tuple[Platform, ...]

    def match(self, p: Platform) -> bool:
        """Whether ``p`` matches one of the platforms."""
        return self.rank(p) is not None

    def rank(self, p: Platform) -> int | None:
        """Index of the first platform ``p`` matches."""
        return next((i for i, want in enumerate(self.platforms) if _matches(want, p)), None)

    def less(self, a: Platform, b: Platform) -> bool:
        """Whether ``a`` sorts before ``b`` (containerd's ``Less``)."""
        ra, rb = self.rank(a), self.rank(b)
        return ra is not None and (rb is None or ra < rb)


@dataclass(frozen=True)
class AnyOf(Ordered):
    """Matches any of ``platforms`` with no preference between them."""

    def rank(self, p: Platform) -> int | None:
        """0 for any match."""
        return 0 if super().rank(p) is not None else None


class _All:
    def match(self, p: Platform) -> bool:
        return True

    def rank(self, p: Platform) -> int | None:
        return 0


ALL: Matcher = _All()


def ordered(platforms: Iterable[Platform]) -> Ordered:
    """Match any of ``platforms``, in that order of preference."""
    return Ordered(tuple(normalize(p) for p in platforms))


def any_of(platforms: Iterable[Platform]) -> AnyOf:
    """Match any of ``platforms`` without preference."""
    return AnyOf(tuple(normalize(p) for p in platforms))


def only(p: Platform) -> Ordered:
    """Match ``p`` and the platforms it can also run, best first (containerd's ``Only``)."""
    return Ordered(tuple(normalize(v) for v in _vector(normalize(p))))


def only_strict(p: Platform) -> Ordered:
    """Match ``p`` alone (after normalization)."""
    return Ordered((normalize(p),))


def default() -> Ordered:
    """The matcher for images this host can run."""
    return only(host())


def _vector(p: Platform) -> list[Platform]:
    out = [p]
    level = _variant_number(p.variant)
    if p.architecture == "amd64":
        if level is not None and level > 1:
            out += [replace(p, variant=f"v{n}") for n in range(level - 1, 0, -1)]
        out.append(replace(p, architecture="386", variant=""))
    elif p.architecture == "arm":
        if level is not None and level > 5:
            out += [replace(p, variant=f"v{n}") for n in range(level - 1, 4, -1)]
    elif p.architecture == "arm64":
        out += _arm64_fallbacks(p)
    return out


def _arm64_fallbacks(p: Platform) -> list[Platform]:
    variant = p.variant or "v8"
    major_text, _, minor_text = variant.removeprefix("v").partition(".")
    out: list[Platform] = []
    if major_text.isdigit() and int(major_text) >= 8:
        major, minor = int(major_text), int(minor_text) if minor_text.isdigit() else 0
        if major == 9:
            out += [replace(p, variant=_arm64_variant(9, m)) for m in range(minor - 1, -1, -1)]
            # v9.0 branched from v8.5: v9.x can run v8.(x+5) and below.
            major, minor = 8, minor + 5
            out.append(replace(p, variant=f"v8.{minor}"))
        out += [replace(p, variant=_arm64_variant(major, m)) for m in range(minor - 1, -1, -1)]
    arm_variant = "v8" if variant.startswith(("v8.", "v9.")) else variant
    return out + _vector(Platform(p.os, "arm", arm_variant, p.os_version, p.os_features))


def _arm64_variant(major: int, minor: int) -> str:
    return f"v{major}" if minor == 0 else f"v{major}.{minor}"


def _variant_number(variant: str) -> int | None:
    digits = variant.removeprefix("v")
    return int(digits) if digits.isdigit() else None
