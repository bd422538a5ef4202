"""Encoding, decoding and signing of wire messages.

One reusable Decoder per type; every decode failure (malformed JSON, invalid UTF-8,
wrong types, unknown tags, too deep, too large) becomes MessageDecodeError.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import inspect
from typing import Any, TypeVar

import msgspec

from ._errors import MessageDecodeError, MessageTooLarge, SignatureError
from ._messages import (
    PUBLIC_TYPES,
    AuditNotice,
    Cancel,
    Event,
    Heartbeat,
    Job,
    Policy,
    Request,
    SubmitReply,
    kind_of,
)

T = TypeVar("T")

DEFAULT_MAX_BYTES = 1_048_576

_encoder = msgspec.json.Encoder()
_canonical = msgspec.json.Encoder(order="sorted")
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def encode(message: Any) -> bytes:
    return _encoder.encode(message)


def canonical(message: Any) -> bytes:
    """Deterministic JSON (sorted keys) used for signatures and hash chains."""
    return _canonical.encode(message)


def _type_name(typ: Any) -> str:
    name = getattr(typ, "__name__", None)
    if name:
        return name
    if typ is Event:
        return "event"
    if typ is Request:
        return "request"
    if typ is SubmitReply:
        return "submit reply"
    return str(typ)


def decode(data: bytes | str, typ: type[T] | Any, *, max_bytes: int = DEFAULT_MAX_BYTES) -> T:
    """Decode ``data`` as ``typ``; raise MessageDecodeError (or MessageTooLarge)."""
    name = _type_name(typ)
    if len(data) > max_bytes:
        raise MessageTooLarge(len(data), max_bytes, type_name=name)
    decoder = _decoders.get(typ)
    if decoder is None:
        decoder = _decoders[typ] = msgspec.json.Decoder(typ)
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise MessageDecodeError(str(exc), type_name=name, size=len(data)) from None
    except msgspec.DecodeError as exc:
        raise MessageDecodeError(f"not valid JSON ({exc})", type_name=name, size=len(data)) from None
    except (RecursionError, UnicodeDecodeError, ValueError) as exc:
        raise MessageDecodeError(str(exc) or type(exc).__name__, type_name=name, size=len(data)) from None


def decode_event(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Event:
    return decode(data, Event, max_bytes=max_bytes)


def decode_job(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Job:
    return decode(data, Job, max_bytes=max_bytes)


def decode_request(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Request:
    return decode(data, Request, max_bytes=max_bytes)


def decode_reply(data: bytes) -> SubmitReply:
    return decode(data, SubmitReply)


def decode_heartbeat(data: bytes) -> Heartbeat:
    return decode(data, Heartbeat)


def decode_control(data: bytes) -> Cancel:
    return decode(data, Cancel)


def decode_notice(data: bytes) -> AuditNotice:
    return decode(data, AuditNotice)


# --------------------------------------------------------------------------- signing


_EMPTY_FACTORIES = (list, dict, set, tuple)


@functools.cache
def _fields(cls: type[msgspec.Struct]) -> tuple[msgspec.structs.FieldInfo, ...]:
    """A Struct type's fields, resolved once (``msgspec.structs.fields`` evaluates the
    type annotations on every call: it was most of the cost of signing a job)."""
    return msgspec.structs.fields(cls)


def essential(value: Any) -> Any:
    """``value`` as builtins with every Struct field left out that holds its default.

    What a signature covers: a newer sender's extra field at its default is absent here,
    exactly as on an older receiver that does not know the field (schema-evolution rule:
    new fields go last, with a default). A field it sets to a non-default value is signed;
    a receiver that dropped it cannot verify the job, which is the safe answer."""
    if isinstance(value, msgspec.Struct):
        config = value.__struct_config__
        out: dict[str, Any] = {}
        if config.tag is not None and config.tag_field is not None:
            out[config.tag_field] = config.tag
        for field in _fields(type(value)):
            item = getattr(value, field.name)
            if field.default is not msgspec.NODEFAULT and _same(item, field.default):
                continue
            if field.default_factory in _EMPTY_FACTORIES and _same(item, field.default_factory()):
                continue
            out[field.name] = essential(item)
        return out
    if isinstance(value, dict):
        return {k: essential(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [essential(v) for v in value]
    return value


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _signed_bytes(task_id: str, policy: Policy, request: Request) -> bytes:
    return canonical({"task_id": task_id, "policy": essential(policy), "request": essential(request)})


def _legacy_signed_bytes(task_id: str, policy: Policy, request: Request) -> bytes:
    """What servers signed before defaults were left out (every field): still verified."""
    return canonical({"task_id": task_id, "policy": policy, "request": request})


def _hmac(secret: str | bytes, data: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        raise ValueError("job secret is empty")
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def sign_job(task_id: str, policy: Policy, request: Request, secret: str | bytes) -> str:
    """Hex HMAC-SHA256 over the canonical encoding (sorted keys, defaults left out) of the
    job's signed parts: the task id, the policy and the request."""
    return _hmac(secret, _signed_bytes(task_id, policy, request))


def verify_job(job: Job, secret: str | bytes) -> None:
    """Raise SignatureError unless ``job.signature`` matches and the ids agree."""
    if not job.signature:
        raise SignatureError(job.task_id, "job is not signed")
    if job.policy.task_id != job.task_id:
        raise SignatureError(job.task_id, "policy belongs to another task")
    if job.policy.kind != kind_of(job.request):
        raise SignatureError(job.task_id, "policy kind does not match the request")
    for signed in (_signed_bytes, _legacy_signed_bytes):
        if hmac.compare_digest(_hmac(secret, signed(job.task_id, job.policy, job.request)), job.signature):
            return
    raise SignatureError(job.task_id, "policy signature does not verify (forged or altered)")


# --------------------------------------------------------------------------- schemas


SUBJECT_TAGGED = ("CompleteRequest", "TaskRequest")
"""Requests whose ``kind`` the submit subject already says: optional in their own schema."""


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema (draft 2020-12) of every public message, by type name.

    Strict and interpreter-independent: no OpenAPI ``discriminator`` (strict validators
    reject unknown keywords; ``kind`` is a ``const``-like enum in each branch, which is
    what selects it), and every description normalised with ``inspect.cleandoc`` (Python
    3.13 dedents docstrings at compile time, 3.11 does not).
    """
    out: dict[str, dict[str, Any]] = {}
    for typ in PUBLIC_TYPES:
        (_schema,), components = msgspec.json.schema_components([typ], ref_template="#/$defs/{name}")
        document: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": typ.__name__}
        document.update(components[typ.__name__])
        defs = {k: v for k, v in components.items() if k != typ.__name__}
        if defs:
            document["$defs"] = defs
        if typ.__name__ in SUBJECT_TAGGED:
            document["required"] = [f for f in document.get("required", []) if f != "kind"]
        out[typ.__name__] = document
    for alias, name in ((Event, "Event"), (Request, "Request"), (SubmitReply, "SubmitReply")):
        schemas, components = msgspec.json.schema_components([alias], ref_template="#/$defs/{name}")
        out[name] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": name,
            **schemas[0],
            "$defs": components,
        }
    return {name: _strict(doc) for name, doc in out.items()}


def _strict(node: Any) -> Any:
    """Drop ``discriminator`` and normalise descriptions, recursively."""
    if isinstance(node, dict):
        return {
            k: inspect.cleandoc(v) if k == "description" and isinstance(v, str) else _strict(v)
            for k, v in node.items()
            if k != "discriminator"
        }
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node
