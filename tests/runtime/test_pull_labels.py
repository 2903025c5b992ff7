"""The labels a pull writes: gc references by child position, distribution sources merged."""

from __future__ import annotations

from wharfd.runtime.images import labels as L
from wharfd.runtime.images import mediatypes
from wharfd.runtime.images.manifest import Descriptor, Index, Manifest


def d(n: int, media_type: str = mediatypes.OCI_MANIFEST) -> Descriptor:
    return Descriptor(media_type, "sha256:" + f"{n:02x}" * 32, n)


def test_manifest_labels_name_config_and_layers() -> None:
    m = Manifest(mediatypes.OCI_MANIFEST, d(1, mediatypes.OCI_CONFIG), (d(2), d(3)))
    assert L.children_labels(m) == {
        "containerd.io/gc.ref.content.config": d(1).digest,
        "containerd.io/gc.ref.content.l.0": d(2).digest,
        "containerd.io/gc.ref.content.l.1": d(3).digest,
    }


def test_index_labels_keep_the_position_of_fetched_children() -> None:
    index = Index(mediatypes.OCI_INDEX, (d(1), d(2), d(3)))
    assert L.children_labels(index, [d(3)]) == {"containerd.io/gc.ref.content.m.2": d(3).digest}
    assert len(L.children_labels(index)) == 3


def test_distribution_source_merges_repositories() -> None:
    first = L.distribution_source("docker.io", "library/busybox")
    assert first == {"containerd.io/distribution.source.docker.io": "library/busybox"}
    both = L.distribution_source("docker.io", "team/busybox", first)
    assert both == {"containerd.io/distribution.source.docker.io": "library/busybox,team/busybox"}
    assert L.distribution_source("docker.io", "team/busybox", both) == both


def test_merge_keeps_only_what_changes() -> None:
    assert L.merge({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"}) == {"b": "3", "c": "4"}
    assert L.snapshot_label("overlayfs") == "containerd.io/gc.ref.snapshot.overlayfs"
