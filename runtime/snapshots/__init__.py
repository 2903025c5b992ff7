"""Snapshotters: the copy-on-write directory trees containers run in.

:mod:`~wharfd.runtime.snapshots.snapshotter` holds the contract,
:mod:`~wharfd.runtime.snapshots.metadata` the namespaced SQLite layer every
snapshotter is served through, and :mod:`~wharfd.runtime.snapshots.overlay` /
:mod:`~wharfd.runtime.snapshots.native` the two on-disk backends.
"""
