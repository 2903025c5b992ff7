"""The installation's uuid: a version 4 uuid made without the uuid module, kept across starts."""

from __future__ import annotations

import uuid
from pathlib import Path

from wharfd.runtime.services.plugins import load_uuid, random_uuid


def test_random_uuids_are_canonical_version_4() -> None:
    seen = {random_uuid() for _ in range(200)}
    assert len(seen) == 200
    for text in seen:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_load_uuid_keeps_the_first_one_and_replaces_garbage(tmp_path: Path) -> None:
    first = load_uuid(tmp_path)
    assert load_uuid(tmp_path) == first
    (tmp_path / "uuid").write_text(first.upper() + "\n")
    assert load_uuid(tmp_path) == first
    (tmp_path / "uuid").write_text("not a uuid\n")
    fresh = load_uuid(tmp_path)
    assert fresh != first and uuid.UUID(fresh).version == 4
    assert (tmp_path / "uuid").read_text().strip() == fresh
