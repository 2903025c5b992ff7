"""``wharf events``: print the daemon's events as they happen, one line each, until interrupted.

A line is what ctr's ``fmt.Println(timestamp, namespace, topic, event)``
prints: Go's ``time.Time`` text, then the event as Go's ``encoding/json``
writes the generated protobuf struct (proto field names, zero values
omitted, ``{}`` for a set but empty message). Ctrl-C ends the command
quietly with status 0.
"""

from __future__ import annotations

import argparse
import base64
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from wharfd.runtime.ctr import commands

# protobuf's upb and pure-Python descriptors differ in type; only their shared attributes are used.
FieldDescriptor = Any

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from wharfd.runtime.ctr.commands import Subparsers

# Modules whose event types a subscriber may receive; importing them fills the type registry.
EVENT_MODULES = ("container", "content", "image", "namespace", "sandbox", "snapshot", "task")


def register(subparsers: Subparsers) -> None:
    """Add ``events [event]``."""
    events = commands.add_command(
        subparsers, "events", _events, aliases=["event"], help="Display wharfd events"
    )
    events.add_argument("filters", nargs="*", metavar="filter")


def _events(args: argparse.Namespace) -> int:
    from wharfd.api.services.events.v1 import events_pb2 as pb

    with commands.new_client(args) as client:
        stream = client.events.Subscribe(pb.SubscribeRequest(filters=args.filters))
        try:
            for envelope in stream:
                line = format_envelope(envelope)
                if line is not None:
                    print(line, flush=True)
        except KeyboardInterrupt:
            stream.cancel()
    return 0


def format_envelope(envelope: Any) -> str | None:
    """One output line for an Envelope, or None (with a warning) for an event of unknown type."""
    text = ""
    if envelope.HasField("event"):
        try:
            event = unpack(envelope.event)
        except LookupError as exc:
            commands.log.warning("cannot unmarshal an event from Any: %s", exc)
            return None
        text = go_json(event)
    return f"{go_time(envelope.timestamp)} {envelope.namespace} {envelope.topic} {text}"


def unpack(packed: Any) -> Message:
    """The message inside an Any, by its type URL (with or without a ``…/`` prefix)."""
    import importlib

    from google.protobuf import descriptor_pool, message_factory

    for name in EVENT_MODULES:
        importlib.import_module(f"wharfd.api.events.{name}_pb2")
    full_name = packed.type_url.rsplit("/", 1)[-1]
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(full_name)
    except KeyError:
        raise LookupError(f'type with url "{packed.type_url}": not found') from None
    event: Message = message_factory.GetMessageClass(descriptor)()
    event.ParseFromString(packed.value)
    return event


def go_time(stamp: Any) -> str:
    """A Timestamp as Go's ``time.Time.String`` prints a UTC time: ``2006-01-02 15:04:05.999999999 +0000 UTC``."""
    whole = datetime.fromtimestamp(stamp.seconds, UTC).replace(tzinfo=None).isoformat(sep=" ")
    fraction = f".{stamp.nanos:09d}".rstrip("0") if stamp.nanos else ""
    return f"{whole}{fraction} +0000 UTC"


def go_json(message: Message) -> str:
    """``json.Marshal`` of the protoc-gen-go struct for ``message``, compact as Go writes it."""
    text = json.dumps(_message(message), ensure_ascii=False, separators=(",", ":"))
    # Go escapes HTML-significant characters and the JS line separators inside strings.
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _message(message: Message) -> dict[str, Any]:
    # Struct fields follow declaration order; a oneof sits where its first member is.
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None and not _synthetic(oneof):
            if oneof.fields[0] is field and (chosen := message.WhichOneof(oneof.name)):
                member = message.DESCRIPTOR.fields_by_name[chosen]
                # A oneof has no json tag: Go names it (and its wrapper's field) in CamelCase.
                out[_camel(oneof.name)] = {_camel(chosen): _value(member, getattr(message, chosen))}
            continue
        if _omitted(message, field):
            continue
        out[field.name] = _field(field, getattr(message, field.name))
    return out


def _synthetic(oneof: Any) -> bool:
    # proto3 "optional" makes a one-member oneof whose name starts with "_".
    return bool(len(oneof.fields) == 1 and oneof.name == "_" + oneof.fields[0].name)


def _omitted(message: Message, field: FieldDescriptor) -> bool:
    # Everything is omitempty: nil pointers (unset messages, optionals, oneof members),
    # empty slices and maps, and zero scalars.
    if _is_repeated(field):
        return len(getattr(message, field.name)) == 0
    if field.has_presence:
        return not message.HasField(field.name)
    return bool(not getattr(message, field.name))


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _field(field: FieldDescriptor, value: Any) -> Any:
    message_type = field.message_type
    if message_type is not None and message_type.GetOptions().map_entry:
        value_field = message_type.fields_by_name["value"]
        return {str(k): _value(value_field, v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if _is_repeated(field):
        return [_value(field, v) for v in value]
    return _value(field, value)


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None:
        return _message(value)
    if field.type == field.TYPE_BYTES:
        return base64.b64encode(value).decode()
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)  # Go writes 1, not 1.0
    return value


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))
