"""Parsing and validating descriptors, indexes, manifests and configs from untrusted bytes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.images import build_image, build_index, build_layer, canonical_json, directory
from wharfd.runtime import errors
from wharfd.runtime.images import mediatypes, platforms
from wharfd.runtime.images.manifest import (
    MAX_MANIFEST_SIZE,
    Descriptor,
    Index,
    Manifest,
    children,
    digest_of,
    parse,
    parse_config,
    parse_index,
    parse_manifest,
    select,
    verify,
)
from wharfd.runtime.images.platforms import Platform

LAYER = build_layer([directory("etc"), directory("tmp", 0o1777)])


AMD64 = Platform("linux", "amd64")


def _image(platform: Platform = AMD64) -> Any:
    return build_image([LAYER], platform=platform, cmd=["sh", "-c", "true"], workdir="/tmp", user="0:0")


def _desc(media_type: str, data: bytes) -> Descriptor:
    return Descriptor(media_type, digest_of(data), len(data))


def test_manifest_and_config_round_trip() -> None:
    image = _image()
    parsed = parse(image.manifest_desc, image.manifest)
    assert isinstance(parsed, Manifest)
    assert parsed.config == image.config_desc
    assert parsed.layers == (LAYER.descriptor,)
    assert children(parsed) == [image.config_desc, LAYER.descriptor]
    config = parse_config(image.config)
    assert config.platform == Platform("linux", "amd64")
    assert config.diff_ids == (LAYER.diff_id,)
    assert config.config["Cmd"] == ["sh", "-c", "true"]
    assert config.config["WorkingDir"] == "/tmp"


def test_docker_types_parse_too() -> None:
    image = build_image([build_layer([directory("x")], docker=True)], docker=True)
    parsed = parse(image.manifest_desc, image.manifest)
    assert isinstance(parsed, Manifest) and parsed.media_type == mediatypes.DOCKER_MANIFEST
    assert parsed.layers[0].media_type == mediatypes.DOCKER_LAYER_GZIP
    index = build_index([image], docker=True)
    assert isinstance(parse(index.desc, index.data), Index)


def test_index_select_prefers_the_best_platform() -> None:
    images = [
        _image(Platform("linux", p, v))
        for p, v in [("arm64", ""), ("386", ""), ("amd64", ""), ("amd64", "v3"), ("arm", "v7")]
    ]
    index = build_index(images)
    parsed = parse(index.desc, index.data)
    assert isinstance(parsed, Index)
    host_v2 = platforms.only(Platform("linux", "amd64", "v2"))
    assert [d.platform for d in select(parsed, host_v2, limit=None)] == [
        Platform("linux", "amd64"),
        Platform("linux", "386"),
    ]
    assert select(parsed, platforms.only(Platform("linux", "amd64", "v4")))[0].platform == Platform(
        "linux", "amd64", "v3"
    )
    assert select(parsed, platforms.only(Platform("linux", "arm64", "v8")))[0].platform == Platform(
        "linux", "arm64"
    )
    assert select(parsed, platforms.only(Platform("linux", "arm", "v6"))) == []
    assert select(parsed, platforms.ALL, limit=None) == list(parsed.manifests)


def test_entries_without_platform_come_last() -> None:
    image = _image()
    bare = Descriptor(mediatypes.OCI_MANIFEST, image.manifest_desc.digest, image.manifest_desc.size)
    index = Index(mediatypes.OCI_INDEX, (bare, image.manifest_desc))
    assert select(index, platforms.default(), limit=None) == [image.manifest_desc, bare]


def test_unexpected_media_type_is_refused_by_name() -> None:
    image = _image()
    odd = Descriptor("application/x-tar", image.manifest_desc.digest, image.manifest_desc.size)
    with pytest.raises(
        errors.NotImplemented, match=r'unexpected media type "application/x-tar"; expected one of'
    ):
        parse(odd, image.manifest)


def test_schema1_is_refused_with_advice() -> None:
    body = b'{"schemaVersion": 1, "name": "x"}'
    with pytest.raises(errors.NotImplemented, match=r"schema 1 manifests .* not supported; rebuild"):
        parse(_desc(mediatypes.DOCKER_SCHEMA1_SIGNED, body), body)


def test_oversize_manifest_is_refused_before_parsing() -> None:
    body = b" " * (MAX_MANIFEST_SIZE + 1)
    desc = _desc(mediatypes.OCI_MANIFEST, body)
    with pytest.raises(errors.ResourceExhausted, match=f"is {MAX_MANIFEST_SIZE + 1} bytes; the limit is"):
        parse(desc, body)
    with pytest.raises(errors.ResourceExhausted):
        parse_index(body)


def test_bytes_must_match_the_descriptor() -> None:
    image = _image()
    with pytest.raises(errors.DataLoss, match=r"got .* bytes, descriptor says"):
        verify(image.manifest_desc, image.manifest + b" ")
    tampered = image.manifest.replace(b'"schemaVersion":2', b'"schemaVersion":3')
    with pytest.raises(errors.DataLoss, match="content has digest sha256:"):
        verify(image.manifest_desc, tampered)


def _manifest(**changes: Any) -> bytes:
    obj = json.loads(_image().manifest)
    for key, value in changes.items():
        if value is None:
            obj.pop(key, None)
        else:
            obj[key] = value
    return canonical_json(obj)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "expected a JSON object"),
        (_manifest(schemaVersion=1), "schemaVersion: expected 2"),
        (_manifest(mediaType=mediatypes.DOCKER_MANIFEST), "body says"),
        (_manifest(manifests=[]), 'unexpected field "manifests"'),
        (_manifest(layers=None), "layers: expected a list"),
        (_manifest(config={"mediaType": "x", "digest": "sha256:1", "size": 1}), "config.digest"),
        (
            _manifest(config={"mediaType": "x", "digest": "sha256:" + "a" * 64, "size": -1}),
            "config.size: expected a non-negative integer",
        ),
        (_manifest(config={"mediaType": "x", "digest": "sha256:" + "a" * 64, "size": True}), "config.size"),
        (_manifest(layers=[{"digest": "sha256:" + "a" * 64, "size": 1}]), r"layers\[0\].mediaType"),
        (_manifest(layers=[{**LAYER.descriptor.to_json(), "urls": "x"}]), r"layers\[0\].urls"),
        (
            _manifest(layers=[{**LAYER.descriptor.to_json(), "annotations": {"a": 1}}]),
            r"layers\[0\].annotations",
        ),
        (_manifest(layers=[{**LAYER.descriptor.to_json(), "data": "%%"}]), "invalid base64"),
        (_manifest(annotations=[]), "annotations: expected an object"),
    ],
)
def test_malformed_manifests_name_the_field(body: bytes, message: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=message):
        parse_manifest(body, what="manifest sha256:test")


def test_malformed_index_names_the_entry() -> None:
    body = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_INDEX,
            "manifests": [
                {
                    "mediaType": mediatypes.OCI_MANIFEST,
                    "digest": "sha256:" + "b" * 64,
                    "size": 1,
                    "platform": {"os": "linux", "architecture": 5},
                }
            ],
        }
    )
    with pytest.raises(errors.InvalidArgument, match=r'manifests\[0\].platform."architecture"'):
        parse_index(body)
    with pytest.raises(errors.InvalidArgument, match='unexpected field "layers"'):
        parse_index(canonical_json({"schemaVersion": 2, "manifests": [], "layers": []}))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rootfs": {"type": "other", "diff_ids": []}}, 'rootfs: expected an object with type "layers"'),
        ({"rootfs": {"type": "layers", "diff_ids": ["sha256:x"]}}, r"diff_ids\[0\]"),
        ({"config": {"Env": "PATH=/bin"}}, "config.Env: expected a list of strings"),
        ({"config": {"User": 0}}, "config.User: expected a string"),
        ({"config": {"Labels": {"a": 1}}}, "config.Labels"),
        ({"config": {"ExposedPorts": []}}, "config.ExposedPorts"),
        ({"history": {}}, "history"),
        ({"architecture": 1}, '"architecture": expected a string'),
    ],
)
def test_malformed_config_names_the_field(change: dict[str, Any], message: str) -> None:
    obj = {**json.loads(_image().config), **change}
    with pytest.raises(errors.InvalidArgument, match=message):
        parse_config(canonical_json(obj), what="image config sha256:test")


def test_config_size_limit() -> None:
    with pytest.raises(errors.ResourceExhausted, match="image config"):
        parse_config(b" " * (8 * 1024 * 1024 + 1))


def test_descriptor_json_round_trip() -> None:
    desc = Descriptor(
        mediatypes.OCI_LAYER_GZIP,
        "sha256:" + "c" * 64,
        3,
        urls=("https://x/y",),
        annotations={"k": "v"},
        platform=Platform("linux", "arm64", "v8"),
        artifact_type="application/x",
        data=b"abc",
    )
    assert Descriptor.from_json(desc.to_json()) == desc
    assert hash(desc) == hash(Descriptor.from_json(desc.to_json()))


def test_layer_media_type_helpers() -> None:
    assert mediatypes.layer_compression(mediatypes.OCI_LAYER_GZIP) == "gzip"
    assert mediatypes.layer_compression(mediatypes.OCI_LAYER_ZSTD) == "zstd"
    assert mediatypes.layer_compression(mediatypes.OCI_LAYER) == ""
    assert mediatypes.layer_compression(mediatypes.DOCKER_LAYER) == "unknown"
    assert mediatypes.layer_compression(mediatypes.DOCKER_LAYER_FOREIGN_GZIP) == "gzip"
    with pytest.raises(ValueError, match="not a layer"):
        mediatypes.layer_compression(mediatypes.OCI_CONFIG)
    assert mediatypes.is_layer(mediatypes.OCI_LAYER_GZIP + "+encrypted")
    assert mediatypes.is_encrypted(mediatypes.OCI_LAYER_GZIP + "+encrypted")
    assert not mediatypes.is_layer(mediatypes.OCI_MANIFEST)
    assert mediatypes.is_non_distributable(mediatypes.DOCKER_LAYER_FOREIGN_GZIP)
    assert mediatypes.base("Application/JSON; charset=utf-8") == "application/json"
