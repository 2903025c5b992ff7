"""Helpers that compare generated descriptors with tables of upstream wire facts.

A table row is (message, field, number, type). ``type`` is spelled as in a
.proto file with full names: ``string``, ``repeated uint32``,
``map<string, string>``, ``containerd.types.Mount``, ``repeated runtime.v1.Mount``.
Every field of a listed message must be in the table, and no more: a field
added, renamed or renumbered on either side fails the test.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor

_SCALARS = {
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_FIXED32: "fixed32",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_SFIXED32: "sfixed32",
    FieldDescriptor.TYPE_SFIXED64: "sfixed64",
    FieldDescriptor.TYPE_SINT32: "sint32",
    FieldDescriptor.TYPE_SINT64: "sint64",
}

FieldRow = tuple[str, str, int, str]
EnumRow = tuple[str, str, int]
MethodRow = tuple[str, str, str, str]  # service, method, "[stream ]Input", "[stream ]Output"


def _type_name(field: FieldDescriptor) -> str:
    if field.message_type is not None:
        return field.message_type.full_name
    if field.enum_type is not None:
        return field.enum_type.full_name
    return _SCALARS[field.type]


def field_type(field: FieldDescriptor) -> str:
    """Spell a field's type the way the tables do."""
    msg = field.message_type
    if msg is not None and msg.GetOptions().map_entry:
        key, value = msg.fields_by_name["key"], msg.fields_by_name["value"]
        return f"map<{_type_name(key)}, {_type_name(value)}>"
    name = _type_name(field)
    if field.is_repeated:
        return f"repeated {name}"
    return name


def _message(name: str) -> Descriptor:
    return descriptor_pool.Default().FindMessageTypeByName(name)


def check_fields(rows: Iterable[FieldRow]) -> list[str]:
    """Return one line per difference between the table and the generated descriptors."""
    problems: list[str] = []
    by_message: dict[str, dict[str, tuple[int, str]]] = {}
    for message, field, number, type_ in rows:
        by_message.setdefault(message, {})[field] = (number, type_)
    for message, expected in by_message.items():
        try:
            desc = _message(message)
        except KeyError:
            problems.append(f"{message}: message missing")
            continue
        actual = {f.name: (f.number, field_type(f)) for f in desc.fields}
        for name, want in expected.items():
            got = actual.get(name)
            if got is None:
                problems.append(f"{message}.{name}: field missing")
            elif got != want:
                problems.append(f"{message}.{name}: got {got}, upstream {want}")
        for name in actual.keys() - expected.keys():
            problems.append(f"{message}.{name}: not in the upstream table")
    return problems


def check_enums(rows: Iterable[EnumRow]) -> list[str]:
    """Compare enum value names and numbers with the table, in both directions."""
    problems: list[str] = []
    by_enum: dict[str, dict[str, int]] = {}
    for enum, value, number in rows:
        by_enum.setdefault(enum, {})[value] = number
    pool = descriptor_pool.Default()
    for enum, expected in by_enum.items():
        try:
            desc = pool.FindEnumTypeByName(enum)
        except KeyError:
            problems.append(f"{enum}: enum missing")
            continue
        actual = {v.name: v.number for v in desc.values}
        if actual != expected:
            problems.append(f"{enum}: got {sorted(actual.items())}, upstream {sorted(expected.items())}")
    return problems


def _io(method: MethodDescriptor) -> tuple[str, str]:
    inp = ("stream " if method.client_streaming else "") + method.input_type.full_name
    out = ("stream " if method.server_streaming else "") + method.output_type.full_name
    return inp, out


def check_methods(rows: Iterable[MethodRow]) -> list[str]:
    """Compare a service's methods (name, request, response, streaming) with the table."""
    problems: list[str] = []
    by_service: dict[str, dict[str, tuple[str, str]]] = {}
    for service, method, inp, out in rows:
        by_service.setdefault(service, {})[method] = (inp, out)
    pool = descriptor_pool.Default()
    for service, expected in by_service.items():
        try:
            desc = pool.FindServiceByName(service)
        except KeyError:
            problems.append(f"{service}: service missing")
            continue
        actual = {m.name: _io(m) for m in desc.methods}
        for name, want in expected.items():
            if actual.get(name) != want:
                problems.append(f"{service}/{name}: got {actual.get(name)}, upstream {want}")
        for name in actual.keys() - expected.keys():
            problems.append(f"{service}/{name}: not in the upstream table")
    return problems
