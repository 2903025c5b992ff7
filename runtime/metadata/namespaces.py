"""The namespace store: names and labels of the partitions every object lives in.

Namespaces are global (the ``namespaces`` table has no ``namespace`` column).
Behaviour follows containerd's metadata store, since stock clients depend on it:

- a namespace can come into being implicitly: containerd creates it when the
  first object or label lands in it. Other stores call
  :func:`create_if_missing` inside their write transaction for the same effect;
- :meth:`NamespaceStore.labels` of a namespace that does not exist is ``{}``,
  not an error (the containerd client reads default labels of a namespace
  before its first object creates it);
- a label whose value is empty is never stored: setting one removes the key;
- deletion refuses while any table with a ``namespace`` column still has rows
  for it.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from wharfd.runtime import errors
from wharfd.runtime.metadata import labels as label_rules
from wharfd.runtime.metadata.db import Database, utcnow
from wharfd.runtime.namespaces import validate_identifier

_LABELS_FIELD = "namespace.Labels"
_LABELS_PATH = "labels"


@dataclass(frozen=True)
class Namespace:
    """A namespace and its labels."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)


def _quote(value: str) -> str:
    # Close to Go's %q, which containerd uses for names in its messages.
    return json.dumps(value, ensure_ascii=False)


def _decode(text: str) -> dict[str, str]:
    decoded = json.loads(text)
    return {str(k): str(v) for k, v in decoded.items()}


def _encode(labels: Mapping[str, str]) -> str:
    return json.dumps(dict(labels), sort_keys=True, ensure_ascii=False)


def create_if_missing(conn: sqlite3.Connection, name: str) -> None:
    """Create namespace ``name`` unless it exists; for use inside a :meth:`Database.write`."""
    validate_identifier(name, what="namespace")
    now = utcnow()
    conn.execute(
        "INSERT OR IGNORE INTO namespaces (name, labels, created_at, updated_at) VALUES (?, '{}', ?, ?)",
        (name, now, now),
    )


def tables_holding(conn: sqlite3.Connection, name: str) -> builtins.list[str]:
    """Name the tables that still have rows in namespace ``name``, in creation order.

    Any table with a ``namespace`` column counts, so tables added by later
    migrations are covered without touching this function.
    """
    tables = [
        row[0]
        for row in conn.execute(
            "SELECT m.name FROM sqlite_master AS m, pragma_table_info(m.name) AS c "
            "WHERE m.type = 'table' AND m.name <> 'namespaces' AND c.name = 'namespace' "
            "ORDER BY m.rowid"
        )
    ]
    held = []
    for table in tables:
        quoted = '"' + table.replace('"', '""') + '"'
        # The table name comes from sqlite_master, not from the caller.
        query = f"SELECT EXISTS (SELECT 1 FROM {quoted} WHERE namespace = ?)"  # noqa: S608
        if conn.execute(query, (name,)).fetchone()[0]:
            held.append(table)
    return held


def _apply_update(
    current: Mapping[str, str], labels: Mapping[str, str], paths: Iterable[str]
) -> tuple[dict[str, str], bool]:
    """Return the labels after the update, and whether containerd would have written any label.

    No paths means "replace all labels", as containerd does; ``labels`` as a
    path means the same (containerd's other services accept it).
    """
    paths = builtins.list(paths) or [_LABELS_PATH]
    result = dict(current)
    writes = False
    for path in paths:
        if path == _LABELS_PATH:
            label_rules.validate_all(labels, field=_LABELS_FIELD)
            writes = writes or bool(result) or bool(labels)
            result = {k: v for k, v in labels.items() if v}
        elif path.startswith(_LABELS_PATH + ".") and len(path) > len(_LABELS_PATH) + 1:
            key = path[len(_LABELS_PATH) + 1 :]
            value = labels.get(key, "")
            label_rules.validate(key, value, field=_LABELS_FIELD)
            if value:
                result[key] = value
            else:
                result.pop(key, None)
            writes = True
        else:
            raise errors.InvalidArgument(f"cannot update {_quote(path)} field")
    return result, writes


class NamespaceStore:
    """Namespaces over the metadata :class:`Database`."""

    def __init__(self, db: Database) -> None:
        """Use ``db``; its schema must include the ``namespaces`` table (migration 1)."""
        self._db = db

    async def create(self, name: str, labels: Mapping[str, str] | None = None) -> Namespace:
        """Create namespace ``name``; AlreadyExists if it exists. Empty label values are dropped."""
        validate_identifier(name, what="namespace")
        labels = dict(labels or {})
        label_rules.validate_all(labels, field=_LABELS_FIELD)
        stored = {k: v for k, v in labels.items() if v}

        def insert(conn: sqlite3.Connection) -> None:
            now = utcnow()
            try:
                conn.execute(
                    "INSERT INTO namespaces (name, labels, created_at, updated_at) VALUES (?, ?, ?, ?)",
                    (name, _encode(stored), now, now),
                )
            except sqlite3.IntegrityError as exc:
                raise errors.AlreadyExists(f"namespace {_quote(name)}: already exists") from exc

        await self._db.write(insert)
        return Namespace(name, stored)

    async def get(self, name: str) -> Namespace:
        """Return namespace ``name``; NotFound if it does not exist."""

        def select(conn: sqlite3.Connection) -> Namespace:
            row = conn.execute("SELECT labels FROM namespaces WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise errors.NotFound(f"namespace {_quote(name)}: not found")
            return Namespace(name, _decode(row[0]))

        return await self._db.read(select)

    async def labels(self, name: str) -> dict[str, str]:
        """Return the labels of ``name``, or ``{}`` if it does not exist (containerd's Labels)."""

        def select(conn: sqlite3.Connection) -> dict[str, str]:
            row = conn.execute("SELECT labels FROM namespaces WHERE name = ?", (name,)).fetchone()
            return {} if row is None else _decode(row[0])

        return await self._db.read(select)

    async def list(self) -> builtins.list[Namespace]:
        """Return every namespace, ordered by name."""

        def select(conn: sqlite3.Connection) -> builtins.list[Namespace]:
            rows = conn.execute("SELECT name, labels FROM namespaces ORDER BY name")
            return [Namespace(row[0], _decode(row[1])) for row in rows]

        return await self._db.read(select)

    async def update(self, name: str, labels: Mapping[str, str], paths: Iterable[str] = ()) -> Namespace:
        """Change the labels of ``name`` by field paths and return the result.

        ``labels.<key>`` sets that key to ``labels[key]``, or removes it when
        the value is empty or absent; ``labels`` or no paths replaces them all.
        Like containerd, an update that writes a label creates the namespace
        if it does not exist yet (``ctr namespaces label`` relies on it).
        """
        paths = builtins.list(paths)

        def change(conn: sqlite3.Connection) -> Namespace:
            row = conn.execute("SELECT labels FROM namespaces WHERE name = ?", (name,)).fetchone()
            current = {} if row is None else _decode(row[0])
            result, writes = _apply_update(current, labels, paths)
            if not writes:
                return Namespace(name, result)
            if row is None:
                create_if_missing(conn, name)
            conn.execute(
                "UPDATE namespaces SET labels = ?, updated_at = ? WHERE name = ?",
                (_encode(result), utcnow(), name),
            )
            return Namespace(name, result)

        return await self._db.write(change)

    async def delete(self, name: str) -> None:
        """Delete namespace ``name``: FailedPrecondition while it holds objects, NotFound if missing."""

        def remove(conn: sqlite3.Connection) -> None:
            held = tables_holding(conn, name)
            if held:
                raise errors.FailedPrecondition(
                    f"namespace {_quote(name)} must be empty, but it still has {', '.join(held)}: "
                    "failed precondition"
                )
            if conn.execute("DELETE FROM namespaces WHERE name = ?", (name,)).rowcount == 0:
                raise errors.NotFound(f"namespace {_quote(name)}: not found")

        await self._db.write(remove)

    async def ensure(self, *names: str) -> None:
        """Create each of ``names`` that does not exist yet; existing ones are left as they are."""

        def create_all(conn: sqlite3.Connection) -> None:
            for name in names:
                create_if_missing(conn, name)

        await self._db.write(create_all)
