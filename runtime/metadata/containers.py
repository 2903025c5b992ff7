"""The container store: containerd's container records, per namespace (table ``containers``, migration 6).

A container here is metadata only: the spec, the runtime that will run it,
its rootfs snapshot and labels. Processes are tasks, owned by the task
manager. The rules are containerd's metadata store's, since stock clients
depend on them:

- the id follows the identifier grammar; a runtime name and a spec are
  required; a snapshot key needs a snapshotter; extension names are non-empty;
- label values that are empty are never stored (setting one removes the key);
- ``update`` takes field paths ``labels``, ``labels.<key>``, ``spec``,
  ``extensions``, ``extensions.<name>``, ``image`` and ``snapshotkey`` (we also
  accept the proto name ``snapshot_key``). With no paths it replaces all of
  those, and then the runtime name and the snapshotter must be unchanged (they
  are immutable). ``labels.<key>`` or ``extensions.<name>`` absent from the
  request removes that entry;
- filters see ``id``, ``image``, ``runtime.name``, ``snapshotter`` and
  ``labels.<key>``; a field with an empty value counts as absent.

A container's snapshot stays alive through garbage collection as long as
the record names it (``wharfd.runtime.gc`` reads this table).
"""

from __future__ import annotations

import base64
import builtins
import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from google.protobuf import any_pb2

from wharfd.runtime import errors, filters, namespaces
from wharfd.runtime.metadata import labels as label_rules
from wharfd.runtime.metadata.db import Database, utcnow
from wharfd.runtime.metadata.namespaces import create_if_missing

_LABELS_FIELD = "containers.Labels"
# What an update without field paths replaces (containerd's full-replace set).
_FULL_REPLACE = ("labels", "spec", "extensions", "image", "snapshotkey")


@dataclass(frozen=True)
class Container:
    """One container record in the current namespace."""

    id: str
    image: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    runtime_name: str = ""
    runtime_options: any_pb2.Any | None = None
    spec: any_pb2.Any | None = None
    snapshotter: str = ""
    snapshot_key: str = ""
    sandbox_id: str = ""
    extensions: dict[str, any_pb2.Any] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


def validate(container: Container) -> None:
    """Check what containerd checks before storing a container; InvalidArgument naming the field."""
    namespaces.validate_identifier(container.id, what="container.ID: identifier")
    if any(not name for name in container.extensions):
        raise errors.InvalidArgument("container.Extension keys must not be zero-length")
    label_rules.validate_all(container.labels, field=_LABELS_FIELD)
    if not container.runtime_name:
        raise errors.InvalidArgument("container.Runtime.Name must be set")
    if container.spec is None:
        raise errors.InvalidArgument("container.Spec must be set")
    if container.snapshot_key and not container.snapshotter:
        raise errors.InvalidArgument("container.Snapshotter must be set if container.SnapshotKey is set")


def adaptor(container: Container) -> filters.Adaptor:
    """Fields for containerd's container filters."""

    def get(path: Sequence[str]) -> str | None:
        if not path:
            return None
        head = path[0]
        if head == "labels":
            return filters.labels_adaptor(container.labels, path)
        if head == "runtime":
            value = container.runtime_name if tuple(path[1:]) == ("name",) else ""
        else:
            value = {"id": container.id, "image": container.image, "snapshotter": container.snapshotter}.get(
                head, ""
            )
        return value or None

    return get


# --- rows ---------------------------------------------------------------------------------------

_COLUMNS = (
    "id, labels, image, runtime_name, runtime_options, spec, snapshotter, snapshot_key, sandbox_id,"
    " extensions, created_at, updated_at"
)
_SELECT_ONE = f"SELECT {_COLUMNS} FROM containers WHERE namespace=? AND id=?"  # noqa: S608
_SELECT_ALL = f"SELECT {_COLUMNS} FROM containers WHERE namespace=? ORDER BY id"  # noqa: S608
_INSERT = f"INSERT INTO containers (namespace, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
_UPDATE = (
    "UPDATE containers SET labels=?, image=?, runtime_name=?, runtime_options=?, spec=?, snapshotter=?,"
    " snapshot_key=?, sandbox_id=?, extensions=?, updated_at=? WHERE namespace=? AND id=?"
)


def _any(blob: bytes | None) -> any_pb2.Any | None:
    return None if blob is None else any_pb2.Any.FromString(blob)


def _blob(value: any_pb2.Any | None) -> bytes | None:
    # Deterministic so that an unchanged message is stored as the same bytes.
    return None if value is None else value.SerializeToString(deterministic=True)


def _encode_extensions(extensions: Mapping[str, any_pb2.Any]) -> str:
    return json.dumps(
        {
            name: {"type_url": ext.type_url, "value": base64.b64encode(ext.value).decode()}
            for name, ext in extensions.items()
        },
        sort_keys=True,
    )


def _decode_extensions(text: str) -> dict[str, any_pb2.Any]:
    return {
        name: any_pb2.Any(type_url=ext["type_url"], value=base64.b64decode(ext["value"]))
        for name, ext in json.loads(text).items()
    }


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _row(row: sqlite3.Row | tuple[object, ...]) -> Container:
    cid, labels, image, rname, ropts, spec, snapshotter, key, sandbox, exts, created, updated = row
    return Container(
        id=str(cid),
        image=str(image),
        labels=json.loads(str(labels)),
        runtime_name=str(rname),
        runtime_options=_any(ropts if isinstance(ropts, bytes) else None),
        spec=_any(spec if isinstance(spec, bytes) else None),
        snapshotter=str(snapshotter),
        snapshot_key=str(key),
        sandbox_id=str(sandbox),
        extensions=_decode_extensions(str(exts)),
        created_at=_time(str(created)),
        updated_at=_time(str(updated)),
    )


def _values(c: Container) -> tuple[object, ...]:
    """The mutable columns, in :data:`_UPDATE` order (id and timestamps excluded)."""
    return (
        json.dumps({k: v for k, v in c.labels.items() if v}, sort_keys=True, ensure_ascii=False),
        c.image,
        c.runtime_name,
        _blob(c.runtime_options),
        _blob(c.spec),
        c.snapshotter,
        c.snapshot_key,
        c.sandbox_id,
        _encode_extensions(c.extensions),
    )


def _select(conn: sqlite3.Connection, ns: str, cid: str) -> Container | None:
    row = conn.execute(_SELECT_ONE, (ns, cid)).fetchone()
    return None if row is None else _row(row)


# --- the store ----------------------------------------------------------------------------------


class ContainerStore:
    """Containers over the metadata database, in the current call's namespace."""

    def __init__(self, db: Database) -> None:
        """Use ``db``; its schema must include the ``containers`` table (migration 6)."""
        self._db = db

    async def get(self, id: str) -> Container:
        """The container ``id``; NotFound otherwise."""
        ns = namespaces.required()

        def read(conn: sqlite3.Connection) -> Container:
            found = _select(conn, ns, id)
            if found is None:
                raise errors.NotFound(f'container "{id}" in namespace "{ns}": not found')
            return found

        return await self._db.read(read)

    async def list(self, filters: Iterable[str] = ()) -> builtins.list[Container]:
        """Containers matching any of the filters, sorted by id."""
        ns = namespaces.required()
        flt = _parse_filters(filters)

        def read(conn: sqlite3.Connection) -> builtins.list[Container]:
            return [_row(r) for r in conn.execute(_SELECT_ALL, (ns,))]

        return [c for c in await self._db.read(read) if flt.matches(adaptor(c))]

    async def create(self, c: Container) -> Container:
        """Store a new container; AlreadyExists when the id is taken in this namespace."""
        ns = namespaces.required()
        try:
            validate(c)
        except errors.InvalidArgument as exc:
            raise errors.InvalidArgument(f"create container failed validation: {exc}") from None

        def write(conn: sqlite3.Connection) -> Container:
            create_if_missing(conn, ns)
            now = utcnow()
            try:
                conn.execute(_INSERT, (ns, c.id, *_values(c), now, now))
            except sqlite3.IntegrityError:
                raise errors.AlreadyExists(f'container "{c.id}": already exists') from None
            stored = _select(conn, ns, c.id)
            assert stored is not None
            return stored

        return await self._db.write(write)

    async def update(self, c: Container, fieldpaths: Sequence[str] = ()) -> Container:
        """Change the fields ``fieldpaths`` name (none: every mutable field) to those of ``c``."""
        ns = namespaces.required()
        if not c.id:
            raise errors.InvalidArgument("must specify a container id")
        paths = builtins.list(fieldpaths)

        def write(conn: sqlite3.Connection) -> Container:
            current = _select(conn, ns, c.id)
            if current is None:
                raise errors.NotFound(f'container "{c.id}": not found')
            updated = _apply(current, c, paths)
            try:
                validate(updated)
            except errors.InvalidArgument as exc:
                raise errors.InvalidArgument(f"update failed validation: {exc}") from None
            conn.execute(_UPDATE, (*_values(updated), utcnow(), ns, c.id))
            stored = _select(conn, ns, c.id)
            assert stored is not None
            return stored

        return await self._db.write(write)

    async def delete(self, id: str) -> Container:
        """Remove the record (its snapshot is left to the caller or to GC); NotFound if absent."""
        ns = namespaces.required()

        def write(conn: sqlite3.Connection) -> Container:
            found = _select(conn, ns, id)
            if found is None:
                raise errors.NotFound(f"container {id}: not found")
            conn.execute("DELETE FROM containers WHERE namespace=? AND id=?", (ns, id))
            return found

        return await self._db.write(write)


def _parse_filters(strings: Iterable[str]) -> filters.Filter:
    # ContainerStore.list's parameter is called ``filters`` (the interface), shadowing the module.
    return filters.parse(strings)


def _apply(current: Container, new: Container, paths: builtins.list[str]) -> Container:
    """``current`` with the fields ``paths`` select taken from ``new`` (containerd's field mask rules)."""
    if not paths:
        # Immutable fields must match when everything is replaced, so that making them
        # mutable later cannot silently change what old clients do.
        if new.snapshotter != current.snapshotter:
            raise errors.InvalidArgument("container.Snapshotter field is immutable")
        if new.runtime_name != current.runtime_name:
            raise errors.InvalidArgument("container.Runtime.Name field is immutable")
        paths = builtins.list(_FULL_REPLACE)
    labels = label_rules.apply_paths(current.labels, new.labels, paths, field=_LABELS_FIELD)
    result = current if labels is None else replace(current, labels=labels)
    for path in paths:
        if path == "labels" or path.startswith("labels."):
            continue
        if path.startswith("extensions.") and len(path) > len("extensions."):
            name = path[len("extensions.") :]
            extensions = dict(result.extensions)
            if name in new.extensions:
                extensions[name] = new.extensions[name]
            else:
                extensions.pop(name, None)
            result = replace(result, extensions=extensions)
        elif path == "extensions":
            result = replace(result, extensions=dict(new.extensions))
        elif path == "spec":
            result = replace(result, spec=new.spec)
        elif path == "image":
            result = replace(result, image=new.image)
        elif path in ("snapshotkey", "snapshot_key"):
            result = replace(result, snapshot_key=new.snapshot_key)
        else:
            raise errors.InvalidArgument(f'cannot update "{path}" field on "{current.id}"')
    return result
