"""Descriptors, indexes, manifests and image configs: parsed from registry bytes and validated.

Everything here comes from the network, so nothing is trusted: sizes are
bounded before JSON is parsed (manifests and indexes at 4 MiB as containerd
does, configs at 8 MiB), bytes are checked against the descriptor that named
them, and every field the runtime later uses is type-checked. Errors name the
object and the field::

    ResourceExhausted   manifest sha256:... is 5000000 bytes; the limit is 4194304
    NotImplemented      a media type we do not handle (Docker schema 1, unknown types)
    InvalidArgument     malformed JSON or a field of the wrong type or value
    DataLoss            bytes whose size or digest differ from their descriptor
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wharfd.runtime import errors
from wharfd.runtime.images import mediatypes
from wharfd.runtime.images.platforms import Matcher, Platform
from wharfd.runtime.images.reference import validate_digest

MAX_MANIFEST_SIZE = 4 * 1024 * 1024
MAX_CONFIG_SIZE = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A reference to content: media type, digest and size (plus optional OCI extras)."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)
    platform: Platform | None = None
    artifact_type: str = ""
    data: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_json(cls, obj: object, *, what: str = "descriptor") -> Descriptor:
        """Validate and read the OCI JSON form."""
        if not isinstance(obj, Mapping):
            raise errors.InvalidArgument(f"{what}: expected an object")
        media_type = _string(obj, "mediaType", what, required=True)
        digest = validate_digest(_string(obj, "digest", what, required=True), what=f"{what}.digest")
        size = obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise errors.InvalidArgument(f"{what}.size: expected a non-negative integer, got {size!r}")
        platform = None
        if obj.get("platform") is not None:
            platform = Platform.from_json(obj["platform"], what=f"{what}.platform")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            urls=tuple(_string_list(obj, "urls", what)),
            annotations=_string_map(obj, "annotations", what),
            platform=platform,
            artifact_type=_string(obj, "artifactType", what),
            data=_embedded(obj, what),
        )

    def to_json(self) -> dict[str, Any]:
        """The OCI JSON form, omitting empty optional fields."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.data is not None:
            out["data"] = base64.b64encode(self.data).decode()
        return out


@dataclass(frozen=True)
class Index:
    """An OCI image index or a Docker manifest list."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str = ""


@dataclass(frozen=True)
class Manifest:
    """An OCI or Docker schema 2 image manifest."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str = ""


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image configuration the runtime uses; ``raw`` keeps the whole document."""

    platform: Platform
    diff_ids: tuple[str, ...]
    config: Mapping[str, Any]
    created: str = ""
    history: tuple[Mapping[str, Any], ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)


def digest_of(data: bytes) -> str:
    """The sha256 digest of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def verify(desc: Descriptor, data: bytes) -> None:
    """Raise DataLoss unless ``data`` has the size and digest ``desc`` promises."""
    if len(data) != desc.size:
        raise errors.DataLoss(f"{desc.digest}: got {len(data)} bytes, descriptor says {desc.size}")
    algorithm, _, expected = desc.digest.partition(":")
    actual = hashlib.new(algorithm, data).hexdigest()
    if actual != expected:
        raise errors.DataLoss(f"{desc.digest}: content has digest {algorithm}:{actual}")


def parse(desc: Descriptor, data: bytes) -> Index | Manifest:
    """Verify ``data`` against ``desc`` and parse it as the index or manifest its media type says."""
    what = f"manifest {desc.digest}"
    _check_size(len(data), MAX_MANIFEST_SIZE, what)
    verify(desc, data)
    check_manifest_type(desc.media_type, what)
    if mediatypes.is_index(desc.media_type):
        return parse_index(data, media_type=desc.media_type, what=what)
    return parse_manifest(data, media_type=desc.media_type, what=what)


def check_manifest_type(media_type: str, what: str) -> None:
    """Raise NotImplemented unless ``media_type`` is an index or image manifest type we read."""
    if media_type in mediatypes.SCHEMA1_TYPES:
        raise errors.NotImplemented(
            f'{what}: Docker schema 1 manifests ("{media_type}") are not supported; '
            f"rebuild the image as {mediatypes.DOCKER_MANIFEST} or {mediatypes.OCI_MANIFEST}"
        )
    if not (mediatypes.is_index(media_type) or mediatypes.is_manifest(media_type)):
        expected = ", ".join(sorted(mediatypes.INDEX_TYPES | mediatypes.MANIFEST_TYPES))
        raise errors.NotImplemented(
            f'{what}: unexpected media type "{media_type}"; expected one of {expected}'
        )


def parse_index(data: bytes, *, media_type: str = mediatypes.OCI_INDEX, what: str = "index") -> Index:
    """Parse an index / manifest list body."""
    obj = _load(data, MAX_MANIFEST_SIZE, what)
    _check_body(obj, media_type, what, forbidden=("config", "layers"))
    manifests = obj.get("manifests")
    if not isinstance(manifests, list):
        raise errors.InvalidArgument(f"{what}.manifests: expected a list")
    return Index(
        media_type=media_type,
        manifests=tuple(
            Descriptor.from_json(m, what=f"{what}.manifests[{i}]") for i, m in enumerate(manifests)
        ),
        annotations=_string_map(obj, "annotations", what),
        subject=_subject(obj, what),
        artifact_type=_string(obj, "artifactType", what),
    )


def parse_manifest(
    data: bytes, *, media_type: str = mediatypes.OCI_MANIFEST, what: str = "manifest"
) -> Manifest:
    """Parse an image manifest body."""
    obj = _load(data, MAX_MANIFEST_SIZE, what)
    _check_body(obj, media_type, what, forbidden=("manifests",))
    layers = obj.get("layers")
    if not isinstance(layers, list):
        raise errors.InvalidArgument(f"{what}.layers: expected a list")
    return Manifest(
        media_type=media_type,
        config=Descriptor.from_json(obj.get("config"), what=f"{what}.config"),
        layers=tuple(Descriptor.from_json(x, what=f"{what}.layers[{i}]") for i, x in enumerate(layers)),
        annotations=_string_map(obj, "annotations", what),
        subject=_subject(obj, what),
        artifact_type=_string(obj, "artifactType", what),
    )


def parse_config(data: bytes, *, what: str = "image config") -> ImageConfig:
    """Parse an image configuration and check the fields the runtime relies on."""
    obj = _load(data, MAX_CONFIG_SIZE, what)
    rootfs = obj.get("rootfs")
    if not isinstance(rootfs, Mapping) or rootfs.get("type") != "layers":
        raise errors.InvalidArgument(f'{what}.rootfs: expected an object with type "layers"')
    diff_ids = _string_list(rootfs, "diff_ids", f"{what}.rootfs")
    for i, diff_id in enumerate(diff_ids):
        validate_digest(diff_id, what=f"{what}.rootfs.diff_ids[{i}]")
    config = obj.get("config")
    config = {} if config is None else config
    if not isinstance(config, Mapping):
        raise errors.InvalidArgument(f"{what}.config: expected an object")
    _check_run_config(config, f"{what}.config")
    history = obj.get("history")
    history = [] if history is None else history
    if not isinstance(history, list) or not all(isinstance(h, Mapping) for h in history):
        raise errors.InvalidArgument(f"{what}.history: expected a list of objects")
    return ImageConfig(
        platform=Platform.from_json(obj, what=what),
        diff_ids=tuple(diff_ids),
        config=config,
        created=_string(obj, "created", what),
        history=tuple(history),
        raw=obj,
    )


def select(index: Index, matcher: Matcher, limit: int | None = 1) -> list[Descriptor]:
    """The index entries ``matcher`` accepts, best first; entries without a platform come last."""
    ranked = [
        (rank, i, d)
        for i, d in enumerate(index.manifests)
        if d.platform is not None and (rank := matcher.rank(d.platform)) is not None
    ]
    chosen = [d for _, _, d in sorted(ranked, key=lambda t: (t[0], t[1]))]
    chosen += [d for d in index.manifests if d.platform is None]
    return chosen if limit is None else chosen[:limit]


def children(obj: Index | Manifest) -> list[Descriptor]:
    """What an index or manifest points at: the manifests, or the config followed by the layers."""
    if isinstance(obj, Index):
        return list(obj.manifests)
    return [obj.config, *obj.layers]


def _check_size(size: int, limit: int, what: str) -> None:
    if size > limit:
        raise errors.ResourceExhausted(f"{what} is {size} bytes; the limit is {limit}")


def _load(data: bytes, limit: int, what: str) -> Mapping[str, Any]:
    _check_size(len(data), limit, what)
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise errors.InvalidArgument(f"{what}: not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise errors.InvalidArgument(f"{what}: expected a JSON object")
    return obj


def _check_body(obj: Mapping[str, Any], media_type: str, what: str, *, forbidden: Sequence[str]) -> None:
    if obj.get("schemaVersion") != 2:
        raise errors.InvalidArgument(f"{what}.schemaVersion: expected 2, got {obj.get('schemaVersion')!r}")
    body_type = obj.get("mediaType")
    if body_type is not None and body_type != media_type:
        raise errors.InvalidArgument(
            f'{what}.mediaType: body says "{body_type}" but it was served as "{media_type}"'
        )
    # A body with the other kind's fields is ambiguous: refuse it rather than guess.
    for key in forbidden:
        if key in obj:
            raise errors.InvalidArgument(f'{what}: unexpected field "{key}" for media type "{media_type}"')


def _subject(obj: Mapping[str, Any], what: str) -> Descriptor | None:
    subject = obj.get("subject")
    return None if subject is None else Descriptor.from_json(subject, what=f"{what}.subject")


def _check_run_config(config: Mapping[str, Any], what: str) -> None:
    for key in ("User", "WorkingDir", "StopSignal"):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise errors.InvalidArgument(f"{what}.{key}: expected a string")
    for key in ("Env", "Entrypoint", "Cmd"):
        _string_list(config, key, what)
    for key in ("ExposedPorts", "Volumes"):
        if config.get(key) is not None and not isinstance(config[key], Mapping):
            raise errors.InvalidArgument(f"{what}.{key}: expected an object")
    _string_map(config, "Labels", what)


def _string(obj: Mapping[str, Any], key: str, what: str, *, required: bool = False) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise errors.InvalidArgument(
            f"{what}.{key}: expected a non-empty string" if required else f"{what}.{key}: expected a string"
        )
    return value


def _string_list(obj: Mapping[str, Any], key: str, what: str) -> list[str]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise errors.InvalidArgument(f"{what}.{key}: expected a list of strings")
    return value


def _string_map(obj: Mapping[str, Any], key: str, what: str) -> dict[str, str]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise errors.InvalidArgument(f"{what}.{key}: expected an object of strings")
    return dict(value)


def _embedded(obj: Mapping[str, Any], what: str) -> bytes | None:
    value = obj.get("data")
    if value is None:
        return None
    if not isinstance(value, str):
        raise errors.InvalidArgument(f"{what}.data: expected base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise errors.InvalidArgument(f"{what}.data: invalid base64: {exc}") from exc
