"""Platform specifiers, normalization, the host platform, and containerd's preference order."""

from __future__ import annotations

import pytest

from wharfd.runtime import errors
from wharfd.runtime.images import platforms
from wharfd.runtime.images.platforms import Platform, format_platform, normalize, only, parse

HOST = platforms.host()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("linux/x86-64/v3", Platform("linux", "amd64", "v3")),
        ("linux/aarch64", Platform("linux", "arm64")),
        ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
        ("linux/arm64/8", Platform("linux", "arm64", "v8")),
        ("linux/arm", Platform("linux", "arm")),
        ("linux/arm/7", Platform("linux", "arm", "v7")),
        ("linux/armhf", Platform("linux", "arm")),
        ("linux/armel", Platform("linux", "arm", "v6")),
        ("linux/i386", Platform("linux", "386")),
        ("Linux/AMD64", Platform("linux", "amd64")),
        ("macos/arm64", Platform("darwin", "arm64")),
        ("windows(10.0.17763)/amd64", Platform("windows", "amd64", os_version="10.0.17763")),
        (
            "windows(10.0.17763+win32k+b)/amd64",
            Platform("windows", "amd64", os_version="10.0.17763", os_features=("win32k", "b")),
        ),
        ("linux(%2B1)/amd64", Platform("linux", "amd64", os_version="+1")),
        ("s390x", Platform(HOST.os, "s390x")),
        ("aarch64", Platform(HOST.os, "arm64")),
    ],
)
def test_parse(spec: str, expected: Platform) -> None:
    assert parse(spec) == expected


def test_single_os_takes_the_host_architecture() -> None:
    assert parse("linux") == Platform(
        "linux", HOST.architecture, HOST.variant if HOST.architecture == "arm" else ""
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("linux/*", "wildcards"),
        ("a/b/c/d", "at most"),
        ("linux/am d64", "invalid component"),
        ("lin(ux/amd64", "invalid OS component"),
        ("nosuchthing", "unknown operating system or architecture"),
    ],
)
def test_parse_rejects(spec: str, message: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=message):
        parse(spec)


@pytest.mark.parametrize(
    ("platform", "text"),
    [
        (Platform("linux", "arm64", "v8"), "linux/arm64/v8"),
        (Platform("linux", "amd64"), "linux/amd64"),
        (Platform("windows", "amd64", os_version="10.0", os_features=("z", "a")), "windows(10.0+a+z)/amd64"),
        (Platform("linux", "amd64", os_version="1/2"), "linux(1%2F2)/amd64"),
        (Platform("", "amd64"), "unknown"),
    ],
)
def test_format(platform: Platform, text: str) -> None:
    assert format_platform(platform) == text
    if platform.os:
        assert normalize(parse(text)) == normalize(platform)


def test_normalize() -> None:
    assert normalize(Platform("linux", "aarch64", "8")) == Platform("linux", "arm64")
    assert normalize(Platform("linux", "x86_64", "v1")) == Platform("linux", "amd64")
    assert normalize(Platform("linux", "arm")) == Platform("linux", "arm", "v7")
    assert normalize(Platform("linux", "amd64", os_features=("b", "a", "b"))).os_features == ("a", "b")


def _vector(spec: str) -> list[str]:
    return [format_platform(p) for p in only(parse(spec)).platforms]


def test_preference_orders() -> None:
    assert _vector("linux/amd64") == ["linux/amd64", "linux/386"]
    assert _vector("linux/amd64/v3") == ["linux/amd64/v3", "linux/amd64/v2", "linux/amd64", "linux/386"]
    assert _vector("linux/arm/v7") == ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
    assert _vector("linux/arm/v5") == ["linux/arm/v5"]
    assert _vector("linux/arm64") == [
        "linux/arm64",
        "linux/arm/v8",
        "linux/arm/v7",
        "linux/arm/v6",
        "linux/arm/v5",
    ]
    assert _vector("linux/arm64/v8.2")[:4] == [
        "linux/arm64/v8.2",
        "linux/arm64/v8.1",
        "linux/arm64",
        "linux/arm/v8",
    ]
    assert _vector("linux/arm64/v9.1")[:5] == [
        "linux/arm64/v9.1",
        "linux/arm64/v9",
        "linux/arm64/v8.6",
        "linux/arm64/v8.5",
        "linux/arm64/v8.4",
    ]


def test_matcher_matches_and_ranks() -> None:
    matcher = only(Platform("linux", "amd64", "v2"))
    assert matcher.match(Platform("linux", "amd64"))  # v1 images run on v2
    assert matcher.match(Platform("linux", "x86_64", "v1"))
    assert matcher.match(Platform("linux", "386"))
    assert not matcher.match(Platform("linux", "amd64", "v3"))
    assert not matcher.match(Platform("windows", "amd64"))
    assert not matcher.match(Platform("linux", "arm64"))
    assert matcher.rank(Platform("linux", "amd64", "v2")) == 0
    assert matcher.less(Platform("linux", "amd64"), Platform("linux", "386"))
    assert not matcher.less(Platform("linux", "386"), Platform("linux", "amd64"))
    arm = only(parse("linux/arm64/v8"))
    assert arm.match(Platform("linux", "arm64", "v8")) and arm.match(Platform("linux", "arm64"))
    assert arm.match(Platform("linux", "arm", "v6"))
    assert not arm.match(Platform("linux", "arm64", "v8.1"))


def test_strict_and_any_and_all() -> None:
    strict = platforms.only_strict(parse("linux/amd64"))
    assert strict.match(Platform("linux", "amd64")) and not strict.match(Platform("linux", "386"))
    either = platforms.any_of([parse("linux/amd64"), parse("linux/arm64")])
    assert either.rank(Platform("linux", "arm64")) == either.rank(Platform("linux", "amd64")) == 0
    assert platforms.ALL.match(Platform("plan9", "mips"))


def test_os_features_must_be_a_subset() -> None:
    matcher = only(Platform("windows", "amd64", os_features=("win32k",)))
    assert matcher.match(Platform("windows", "amd64"))
    assert matcher.match(Platform("windows", "amd64", os_features=("win32k",)))
    assert not matcher.match(Platform("windows", "amd64", os_features=("other",)))


def test_host_platform_is_runnable_here() -> None:
    assert HOST.os == "linux"
    assert HOST.architecture in {"amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64"}
    assert platforms.default().match(Platform("linux", HOST.architecture))
    if HOST.architecture == "amd64":
        assert HOST.variant in {"v1", "v2", "v3", "v4"}


def test_json_round_trip_and_validation() -> None:
    p = Platform("windows", "amd64", "", "10.0", ("win32k",))
    assert Platform.from_json(p.to_json()) == p
    with pytest.raises(errors.InvalidArgument, match=r'manifests\[0\].platform."os": expected a string'):
        Platform.from_json({"os": 1}, what="manifests[0].platform")
    with pytest.raises(errors.InvalidArgument, match=r"os\.features"):
        Platform.from_json({"os": "linux", "os.features": "x"})
