"""Chain ids: the name of a stack of layers, as the OCI image spec and containerd define it.

``ChainID(L0) = DiffID(L0)`` and ``ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))``,
hashing the two digest strings (``sha256:<hex>``) joined by one space. A
snapshot of an unpacked image is keyed by the chain id of its layers, so two
images sharing a base share its snapshots.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

from wharfd.runtime import errors

_DIGEST = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")


def check_digest(value: str, field: str) -> str:
    """``value`` if it is a canonical sha256/sha512 digest; else InvalidArgument naming ``field``."""
    if not _DIGEST.fullmatch(value):
        raise errors.InvalidArgument(f"{field}: {value!r} is not a sha256 or sha512 digest")
    return value


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """The chain id of every prefix of ``diff_ids``: element i names layers 0..i."""
    out: list[str] = []
    for i, diff_id in enumerate(diff_ids):
        check_digest(diff_id, f"diff_ids[{i}]")
        if out:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
        else:
            out.append(diff_id)
    return out


def chain_id(diff_ids: Sequence[str]) -> str:
    """The chain id of the whole stack; InvalidArgument when it is empty or a diff id is malformed."""
    ids = chain_ids(diff_ids)
    if not ids:
        raise errors.InvalidArgument("diff_ids: an image needs at least one layer")
    return ids[-1]
