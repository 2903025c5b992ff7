"""Chain ids as the OCI image spec defines them."""

from __future__ import annotations

import hashlib

import pytest

from wharfd.runtime import errors
from wharfd.runtime.images.chainid import chain_id, chain_ids

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64


def test_single_layer_chain_id_is_its_diff_id() -> None:
    assert chain_id([A]) == A


def test_chain_follows_the_spec_formula() -> None:
    ab = "sha256:" + hashlib.sha256(f"{A} {B}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {C}".encode()).hexdigest()
    assert chain_ids([A, B, C]) == [A, ab, abc]
    assert chain_id([A, B, C]) == abc


def test_order_matters() -> None:
    assert chain_id([A, B]) != chain_id([B, A])


@pytest.mark.parametrize("bad", ["", "sha256:abc", "md5:" + "a" * 32, "sha256:" + "A" * 64, A + "\n"])
def test_malformed_diff_ids_are_refused_by_position(bad: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=r"diff_ids\[1\]"):
        chain_ids([A, bad])


def test_empty_stack_is_refused() -> None:
    with pytest.raises(errors.InvalidArgument, match="at least one layer"):
        chain_id([])
