"""Image archives: export to an OCI layout tar, import OCI and ``docker save`` tars, refuse malformed ones.

Everything runs against a real SQLite database and the local content store.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from tests.support.images import (
    AMD64,
    File,
    Image,
    ImageIndex,
    build_image,
    build_index,
    build_layer,
    canonical_json,
    directory,
)
from wharfd.runtime import errors, namespaces
from wharfd.runtime.content.local import LocalStore
from wharfd.runtime.images import archive, walk
from wharfd.runtime.images.destination import Destination, Reference
from wharfd.runtime.images.dockerarchive import write_blob
from wharfd.runtime.images.manifest import Descriptor, parse_index
from wharfd.runtime.images.platforms import Platform, only_strict, ordered
from wharfd.runtime.metadata import images as records
from wharfd.runtime.metadata.db import Database

T = TypeVar("T")
ARM64 = Platform("linux", "arm64", "v8")


@dataclass
class Env:
    db: Database
    store: LocalStore
    images: records.ImageStore


def run(tmp: Path, fn: Callable[[Env], Awaitable[T]]) -> T:
    async def main() -> T:
        namespaces.current.set("default")
        async with await Database.open(tmp / "metadata.db") as db:
            return await fn(Env(db, LocalStore(tmp / "content", db), records.ImageStore(db)))

    return asyncio.run(main())


def small_image(text: str = "hello", platform: Platform = AMD64) -> Image:
    layer = build_layer([directory("etc"), File("etc/motd", text.encode())])
    return build_image([layer], platform=platform)


async def put_image(env: Env, image: Image) -> None:
    for layer in image.layers:
        await write_blob(env.store, f"t-{layer.descriptor.digest}", layer.blob, layer.descriptor)
    await write_blob(env.store, "t-config", image.config, image.config_desc)
    desc = image.manifest_desc
    await write_blob(
        env.store, "t-manifest", image.manifest, Descriptor(desc.media_type, desc.digest, desc.size)
    )


async def put_index(env: Env, index: ImageIndex) -> None:
    for image in index.images:
        await put_image(env, image)
    await write_blob(env.store, "t-index", index.data, index.desc)


async def record(env: Env, name: str, desc: Descriptor) -> records.Image:
    return await env.images.create(
        records.Image(name, records.Descriptor(desc.media_type, desc.digest, desc.size))
    )


async def export_bytes(env: Env, images: list[records.Image], opts: archive.ExportOptions) -> bytes:
    out = bytearray()

    async def sink(data: bytes) -> None:
        out.extend(data)

    await archive.export(env.store, images, sink, opts)
    return bytes(out)


async def pieces(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def members(data: bytes) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m)
            out[m.name] = f.read() if f else None
    return out


def make_tar(entries: Iterable[tuple[str, bytes | None, str]]) -> bytes:
    """A tar of (name, data, kind) where kind is file, dir or a symlink target prefixed with '->'."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, kind in entries:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind.startswith("->"):
                info.type, info.linkname = tarfile.SYMTYPE, kind[2:]
                tar.addfile(info)
            else:
                assert data is not None
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --- export ----------------------------------------------------------------------


def test_export_layout(tmp_path: Path) -> None:
    image = small_image()

    async def go(env: Env) -> bytes:
        await put_image(env, image)
        img = await record(env, "docker.io/library/demo:1", image.manifest_desc)
        return await export_bytes(env, [img], archive.ExportOptions(platforms=only_strict(AMD64)))

    data = run(tmp_path, go)
    files = members(data)
    names = list(files)
    assert names == sorted(names)
    assert files["oci-layout"] == b'{"imageLayoutVersion":"1.0.0"}'
    index = json.loads(files["index.json"] or b"")
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    [entry] = index["manifests"]
    assert entry["digest"] == image.manifest_desc.digest
    assert entry["annotations"] == {
        "io.containerd.image.name": "docker.io/library/demo:1",
        "org.opencontainers.image.ref.name": "1",
    }
    docker = json.loads(files["manifest.json"] or b"")
    assert docker == [
        {
            "Config": archive.blob_name(image.config_desc.digest),
            "RepoTags": ["demo:1"],
            "Layers": [archive.blob_name(image.layers[0].descriptor.digest)],
        }
    ]
    for blob in (image.config, image.manifest, image.layers[0].blob):
        assert files[archive.blob_name(walk.manifest.digest_of(blob))] == blob
    assert {"blobs", "blobs/sha256"} <= set(names)
    # Go's writer ends with two zero blocks and no record padding.
    assert data.endswith(bytes(1024)) and len(data) % 512 == 0


def test_export_platforms_and_skip_manifest_json(tmp_path: Path) -> None:
    amd, arm = small_image("amd"), small_image("arm", ARM64)
    index = build_index([amd, arm])

    async def go(env: Env) -> tuple[bytes, bytes]:
        await put_index(env, index)
        img = await record(env, "example.com/multi:2", index.desc)
        one = await export_bytes(env, [img], archive.ExportOptions(platforms=ordered([ARM64])))
        everything = archive.ExportOptions(
            platforms=ordered([ARM64]), all_platforms=True, skip_manifest_json=True
        )
        return one, await export_bytes(env, [img], everything)

    one, everything = run(tmp_path, go)
    files = members(one)
    assert archive.blob_name(arm.manifest_desc.digest) in files
    assert archive.blob_name(amd.manifest_desc.digest) not in files
    assert json.loads(files["manifest.json"] or b"")[0]["Config"] == archive.blob_name(arm.config_desc.digest)
    files = members(everything)
    assert archive.blob_name(amd.layers[0].descriptor.digest) in files
    assert "manifest.json" not in files


def test_export_refuses_missing_content_before_writing(tmp_path: Path) -> None:
    image = small_image()
    written: list[bytes] = []

    async def go(env: Env) -> None:
        await put_image(env, image)
        await env.store.delete(image.layers[0].descriptor.digest)
        img = await record(env, "docker.io/library/demo:1", image.manifest_desc)

        async def sink(data: bytes) -> None:
            written.append(data)

        await archive.export(env.store, [img], sink, archive.ExportOptions(platforms=only_strict(AMD64)))

    with pytest.raises(errors.NotFound, match=image.layers[0].descriptor.digest):
        run(tmp_path, go)
    assert written == []


def test_export_no_platform_match(tmp_path: Path) -> None:
    index = build_index([small_image("arm", ARM64)])

    async def go(env: Env) -> None:
        await put_index(env, index)
        img = await record(env, "example.com/arm:1", index.desc)
        await export_bytes(env, [img], archive.ExportOptions(platforms=only_strict(AMD64)))

    with pytest.raises(errors.NotFound, match="no manifest for the requested platform"):
        run(tmp_path, go)


# --- round trip ------------------------------------------------------------------


def test_export_import_round_trip(tmp_path: Path) -> None:
    amd, arm = small_image("amd"), small_image("arm", ARM64)
    index = build_index([amd, arm])

    async def go(env: Env) -> tuple[list[records.Image], list[str], list[str]]:
        await put_index(env, index)
        imgs = [await record(env, "example.com/multi:2", index.desc)]
        single = small_image("single")
        await put_image(env, single)
        imgs.append(await record(env, "docker.io/library/single:latest", single.manifest_desc))
        data = await export_bytes(
            env, imgs, archive.ExportOptions(platforms=ordered([AMD64]), all_platforms=True)
        )
        before = sorted(i.digest for i in await env.store.walk())
        namespaces.current.set("fresh")
        root = await archive.import_archive(env.store, pieces(data, 777))
        visited = await walk.walk_tree(env.store, root)
        index_entries = await archive.named_entries(env.store, root)
        dest = Destination(references=(Reference("import-x", is_prefix=True, allow_overwrite=True),))
        stored = []
        for entry in index_entries:
            stored += await dest.store(env.images, walk.to_record(entry))
        after = sorted(i.digest for i in await env.store.walk() if i.digest != root.digest)
        assert len(visited) >= 8
        return stored, before, after

    stored, before, after = run(tmp_path, go)
    assert {(i.name, i.target.digest) for i in stored} == {
        ("example.com/multi:2", index.desc.digest),
        ("docker.io/library/single:latest", stored[1].target.digest),
    }
    assert before == after  # every blob came back with the same digest


def test_import_sets_gc_labels(tmp_path: Path) -> None:
    image = small_image()

    async def go(env: Env) -> dict[str, str]:
        await put_image(env, image)
        img = await record(env, "docker.io/library/demo:1", image.manifest_desc)
        data = await export_bytes(env, [img], archive.ExportOptions(platforms=only_strict(AMD64)))
        namespaces.current.set("other")
        root = await archive.import_archive(env.store, pieces(data))
        await walk.walk_tree(env.store, root)
        return dict((await env.store.info(image.manifest_desc.digest)).labels)

    labels = run(tmp_path, go)
    assert labels["containerd.io/gc.ref.content.config"] == image.config_desc.digest
    assert labels["containerd.io/gc.ref.content.l.0"] == image.layers[0].descriptor.digest


# --- docker save -----------------------------------------------------------------


def docker_save_tar(image: Image, tags: list[str]) -> bytes:
    layer = image.layers[0]
    config_name = image.config_desc.digest.split(":")[1] + ".json"
    manifest = [{"Config": config_name, "RepoTags": tags, "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]
    return make_tar(
        [
            ("aaa", None, "dir"),
            ("aaa/VERSION", b"1.0", "file"),
            ("aaa/json", b"{}", "file"),
            ("aaa/layer.tar", layer.blob, "file"),
            ("bbb", None, "dir"),
            ("bbb/layer.tar", None, "->../aaa/layer.tar"),
            (config_name, image.config, "file"),
            ("manifest.json", json.dumps(manifest).encode(), "file"),
            ("repositories", b"{}", "file"),
        ]
    )


def test_import_docker_save(tmp_path: Path) -> None:
    raw = build_layer([File("hello", b"hi")], compression="none")
    image = build_image([raw, raw], docker=True)
    data = docker_save_tar(image, ["demo:7", "example.com/team/app"])

    async def go(env: Env) -> tuple[list[Descriptor], dict[str, object]]:
        root = await archive.import_archive(env.store, pieces(data, 300))
        await walk.walk_tree(env.store, root)
        entries = list(parse_index(await walk.read_blob(env.store, root)).manifests)
        manifest = json.loads(await walk.read_blob(env.store, entries[0]))
        return entries, manifest

    entries, manifest = run(tmp_path, go)
    assert [e.annotations["io.containerd.image.name"] for e in entries] == [
        "docker.io/library/demo:7",
        "example.com/team/app:latest",
    ]
    assert entries[0].annotations["org.opencontainers.image.ref.name"] == "7"
    assert entries[0].media_type == "application/vnd.docker.distribution.manifest.v2+json"
    assert entries[0].platform == AMD64
    assert manifest["config"] == {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        "digest": image.config_desc.digest,
        "size": image.config_desc.size,
    }
    layers = manifest["layers"]
    assert isinstance(layers, list) and len(layers) == 2
    assert {layer["mediaType"] for layer in layers} == {"application/vnd.docker.image.rootfs.diff.tar"}
    assert {layer["digest"] for layer in layers} == {raw.descriptor.digest}


def test_import_gzipped_docker_layers(tmp_path: Path) -> None:
    image = build_image([build_layer([File("x", b"1")])], docker=True)
    data = docker_save_tar(image, [])

    async def go(env: Env) -> str:
        root = await archive.import_archive(env.store, pieces(data))
        [entry] = parse_index(await walk.read_blob(env.store, root)).manifests
        return str(json.loads(await walk.read_blob(env.store, entry))["layers"][0]["mediaType"])

    assert run(tmp_path, go) == "application/vnd.docker.image.rootfs.diff.tar.gzip"


# --- malformed archives --------------------------------------------------------------

LAYOUT = ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}', "file")


def import_fails(tmp: Path, data: bytes) -> errors.WharfError:
    async def go(env: Env) -> list[object]:
        try:
            root = await archive.import_archive(env.store, pieces(data))
            await walk.walk_tree(env.store, root)
        except errors.WharfError as exc:
            # Nothing half-written stays behind.
            assert await env.store.list_statuses() == []
            return [exc]
        return []

    [exc] = run(tmp, go)
    assert isinstance(exc, errors.WharfError)
    return exc


@pytest.mark.parametrize("name", ["../evil", "blobs/../../evil", "/etc/passwd"])
def test_import_refuses_escaping_names(tmp_path: Path, name: str) -> None:
    exc = import_fails(tmp_path, make_tar([LAYOUT, (name, b"x", "file")]))
    assert isinstance(exc, errors.InvalidArgument)
    assert name in str(exc)


def test_import_refuses_escaping_symlink(tmp_path: Path) -> None:
    exc = import_fails(tmp_path, make_tar([("layer.tar", None, "->../../etc/shadow")]))
    assert isinstance(exc, errors.InvalidArgument) and "outside the archive" in str(exc)


def test_import_missing_blob(tmp_path: Path) -> None:
    image = small_image()
    entry = {"mediaType": image.manifest_desc.media_type, "digest": image.manifest_desc.digest, "size": 10}
    index = canonical_json({"schemaVersion": 2, "manifests": [entry]})
    exc = import_fails(tmp_path, make_tar([LAYOUT, ("index.json", index, "file")]))
    assert isinstance(exc, errors.NotFound) and image.manifest_desc.digest in str(exc)


@pytest.mark.parametrize(
    ("index", "match"),
    [
        (b"not json", "not valid JSON"),
        (b'{"schemaVersion": 2, "manifests": [{"digest": "sha256:x"}]}', "mediaType"),
        (b'{"schemaVersion": 1, "manifests": []}', "schemaVersion"),
    ],
)
def test_import_bad_index(tmp_path: Path, index: bytes, match: str) -> None:
    exc = import_fails(tmp_path, make_tar([LAYOUT, ("index.json", index, "file")]))
    assert isinstance(exc, errors.InvalidArgument)
    assert match in str(exc) and "index.json" in str(exc)


def test_import_blob_digest_mismatch(tmp_path: Path) -> None:
    wrong = "blobs/sha256/" + "0" * 64
    exc = import_fails(tmp_path, make_tar([LAYOUT, (wrong, b"not that", "file")]))
    assert isinstance(exc, errors.DataLoss) and wrong in str(exc)


def test_import_unrecognized_and_truncated(tmp_path: Path) -> None:
    exc = import_fails(tmp_path, make_tar([("hello.txt", b"hi", "file")]))
    assert isinstance(exc, errors.InvalidArgument) and "unrecognized image archive" in str(exc)
    whole = make_tar([LAYOUT, ("blobs/sha256/" + "1" * 64, b"x" * 5000, "file")])
    exc = import_fails(tmp_path / "t", whole[:3000])
    assert isinstance(exc, errors.InvalidArgument) and "truncated" in str(exc)


def test_import_docker_missing_layer(tmp_path: Path) -> None:
    image = small_image()
    manifest = [{"Config": "c.json", "RepoTags": ["x:1"], "Layers": ["nope/layer.tar"]}]
    data = make_tar(
        [("c.json", image.config, "file"), ("manifest.json", json.dumps(manifest).encode(), "file")]
    )
    exc = import_fails(tmp_path, data)
    assert isinstance(exc, errors.InvalidArgument) and "nope/layer.tar" in str(exc)
