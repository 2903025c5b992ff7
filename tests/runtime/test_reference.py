"""Image reference parsing and normalization (Docker/CRI rules)."""

from __future__ import annotations

import pytest

from wharfd.runtime import errors
from wharfd.runtime.images import reference
from wharfd.runtime.images.reference import Reference, parse, parse_normalized

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("user/repo", "docker.io/user/repo:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/library/busybox:1", "docker.io/library/busybox:1"),
        ("localhost/repo", "localhost/repo:latest"),
        ("localhost:5000/repo:tag", "localhost:5000/repo:tag"),
        ("127.0.0.1:5000/a/b/c:v1.0-rc_1", "127.0.0.1:5000/a/b/c:v1.0-rc_1"),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
        ("[::1]:5000/repo", "[::1]:5000/repo:latest"),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        (f"busybox:1@{DIGEST}", f"docker.io/library/busybox:1@{DIGEST}"),
        ("a__b/c-d/e.f--g", "docker.io/a__b/c-d/e.f--g:latest"),
    ],
)
def test_normalizes_like_docker(text: str, expected: str) -> None:
    assert str(parse_normalized(text)) == expected


def test_parts() -> None:
    ref = parse(f"myhost:5000/team/app:v2@{DIGEST}")
    assert ref == Reference("myhost:5000", "team/app", "v2", DIGEST)
    assert ref.name == "myhost:5000/team/app"
    assert ref.object == DIGEST
    assert parse("myhost:5000/team/app:v2").object == "v2"
    assert parse("busybox").tag == ""  # parse() adds no default tag


def test_first_component_is_a_domain_only_when_it_looks_like_one() -> None:
    assert parse("foo/bar").domain == "docker.io"
    assert parse("foo.com/bar").domain == "foo.com"
    assert parse("foo:1/bar").domain == "foo:1"
    assert parse("localhost/bar").domain == "localhost"
    # Docker treats an upper-case first component as a domain name too.
    assert parse("Foo/bar").domain == "Foo"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("Busybox", "must be lower case"),
        ("docker.io/Library/busybox", "must be lower case"),
        ("busybox:", "tag"),
        ("busybox:-x", "tag"),
        ("busybox:" + "a" * 129, "tag longer than 128"),
        ("busybox@sha256:abc", "needs 64 lower-case hex"),
        ("busybox@md5:" + "a" * 32, 'unsupported digest algorithm "md5"'),
        ("busybox@", "empty digest"),
        ("a" * 64, "image ID"),
        ("docker.io/bad..name", "must be lower-case letters"),
        ("bad..name/x", 'invalid registry domain "bad..name"'),
        ("-bad.com/x", "invalid registry domain"),
        ("x/" + "a" * 260, "longer than 255"),
        ("foo//bar", "must be lower-case letters"),
    ],
)
def test_rejects_invalid(text: str, message: str) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        parse(text)
    assert message in str(info.value)
    if text:
        assert text[:40] in str(info.value)  # the message names the input


def test_name_length_counts_the_domain() -> None:
    path = "a" * (255 - len("docker.io/library/"))
    assert parse(path).name == "docker.io/library/" + path
    with pytest.raises(errors.InvalidArgument):
        parse(path + "a")


@pytest.mark.parametrize(
    ("text", "familiar"),
    [
        ("docker.io/library/busybox:latest", "busybox:latest"),
        ("docker.io/user/repo", "user/repo"),
        ("docker.io/library/a/b", "library/a/b"),
        ("quay.io/x/y:1", "quay.io/x/y:1"),
        (f"busybox@{DIGEST}", f"busybox@{DIGEST}"),
    ],
)
def test_familiar(text: str, familiar: str) -> None:
    assert parse(text).familiar() == familiar


def test_with_tag_and_digest() -> None:
    ref = parse_normalized("busybox")
    assert str(ref.with_digest(DIGEST)) == f"docker.io/library/busybox@{DIGEST}"
    assert str(ref.with_tag("2")) == "docker.io/library/busybox:2"
    with pytest.raises(errors.InvalidArgument, match="invalid tag"):
        ref.with_tag(".x")


def test_validate_digest() -> None:
    assert reference.validate_digest(DIGEST) == DIGEST
    assert reference.is_digest("sha512:" + "0" * 128)
    assert not reference.is_digest("sha256:" + "A" * 64)
    with pytest.raises(errors.InvalidArgument, match='config digest "nope"'):
        reference.validate_digest("nope", what="config digest")
