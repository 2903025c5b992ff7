"""containerd's filter syntax."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from wharfd.runtime import errors, filters

OBJ = {
    ("name",): "docker.io/library/busybox:latest",
    ("topic",): "/tasks/exit",
    ("labels", "io.kubernetes.pod.uid"): "abc",
    ("labels", "tier"): "web",
}


def get(path: Sequence[str]) -> str | None:
    return OBJ.get(tuple(path))


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        ("", True),
        ("name", True),
        ("nope", False),
        ("topic==/tasks/exit", True),
        ("topic!=/tasks/exit", False),
        ('topic~="^/tasks/"', True),
        ("topic~=exit$", True),
        ('labels."io.kubernetes.pod.uid"==abc', True),
        ("labels.tier==web,topic==/tasks/exit", True),
        ("labels.tier==web,topic==/tasks/start", False),
        ('name=="docker.io/library/busybox:latest"', True),
        ("labels.missing", False),
        ("labels.missing!=x", True),
    ],
)
def test_single_filter(text: str, matches: bool) -> None:
    assert filters.parse([text]).matches(get) is matches


def test_any_of_several_strings() -> None:
    assert filters.parse(["topic==/x", "labels.tier==web"]).matches(get)
    assert not filters.parse(["topic==/x", "labels.tier==db"]).matches(get)


@pytest.mark.parametrize("bad", ["==x", 'name=="unterminated', "name~=(", "name==a b", "a-b==c"])
def test_invalid_filters(bad: str) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        filters.parse([bad])
    assert "filter" in str(info.value)


def test_labels_adaptor() -> None:
    labels = {"a.b": "1"}
    assert filters.labels_adaptor(labels, ["labels", "a", "b"]) == "1"
    assert filters.labels_adaptor(labels, ["labels", "x"]) is None
    assert filters.labels_adaptor({}, ["name"]) is None
