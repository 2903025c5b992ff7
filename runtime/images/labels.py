"""The labels a pull leaves on content and snapshots, so that garbage collection and later pulls can follow.

Wire facts shared with containerd (its ``images`` and ``snapshots`` packages):

* ``containerd.io/gc.ref.content.m.<i>`` on an index, one per child manifest
  fetched; ``<i>`` is the child's position in the index, so pulling two
  platforms of one index at different times never makes one label replace
  the other;
* ``containerd.io/gc.ref.content.config`` and ``containerd.io/gc.ref.content.l.<i>``
  on a manifest;
* ``containerd.io/gc.ref.snapshot.<snapshotter>`` = chain id on an image
  config once it is unpacked (the rootfs stays as long as the config does);
* ``containerd.io/uncompressed`` = diff id on a layer blob;
* ``containerd.io/distribution.source.<registry host>`` = the repositories
  (comma-separated) a blob came from, so a push can cross-mount it;
* ``containerd.io/snapshot.ref`` = chain id on an unpacked layer's snapshot
  (with it, ``prepare`` fails with AlreadyExists when the layer is there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from wharfd.runtime.images.manifest import Descriptor, Index, Manifest

GC_REF_CONTENT = "containerd.io/gc.ref.content"
GC_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot."
UNCOMPRESSED = "containerd.io/uncompressed"
DISTRIBUTION_SOURCE = "containerd.io/distribution.source."
SNAPSHOT_REF = "containerd.io/snapshot.ref"
# The lease a pull works under lives a day at most, as containerd's does, so a
# daemon killed mid-pull does not pin the half-fetched content for ever.
LEASE_EXPIRE = "containerd.io/gc.expire"
LEASE_LIFETIME = 24 * 3600.0


def children_labels(obj: Index | Manifest, fetched: Sequence[Descriptor] | None = None) -> dict[str, str]:
    """The gc.ref labels of an index or manifest for its children (those ``fetched``, for an index)."""
    if isinstance(obj, Manifest):
        labels = {f"{GC_REF_CONTENT}.config": obj.config.digest}
        labels.update({f"{GC_REF_CONTENT}.l.{i}": layer.digest for i, layer in enumerate(obj.layers)})
        return labels
    wanted = {d.digest for d in (obj.manifests if fetched is None else fetched)}
    return {f"{GC_REF_CONTENT}.m.{i}": d.digest for i, d in enumerate(obj.manifests) if d.digest in wanted}


def snapshot_label(snapshotter: str) -> str:
    """The config label naming the unpacked rootfs in ``snapshotter``."""
    return GC_REF_SNAPSHOT + snapshotter


def distribution_source(
    host: str, repository: str, current: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The distribution source label for a blob of ``host/repository``, merged with what it has."""
    key = DISTRIBUTION_SOURCE + host
    known = [r for r in (current or {}).get(key, "").split(",") if r]
    if repository not in known:
        known.append(repository)
    return {key: ",".join(sorted(known))}


def merge(current: Mapping[str, str], wanted: Mapping[str, str]) -> dict[str, str]:
    """The labels of ``wanted`` that ``current`` lacks or holds with another value."""
    return {k: v for k, v in wanted.items() if current.get(k) != v}
