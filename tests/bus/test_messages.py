"""Wire messages round-trip through JSON and bad payloads give one typed error."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bus
from bus import EVENT_TYPES, PUBLIC_TYPES, MessageDecodeError, MessageTooLarge

aware_datetimes = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
st.register_type_strategy(datetime, aware_datetimes)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def strategy_for(info: mi.Type) -> st.SearchStrategy:
    """A hypothesis strategy for any msgspec type, honouring its constraints (from msgspec.inspect)."""
    match info:
        case mi.StructType():
            fields = {f.encode_name: strategy_for(f.type) for f in info.fields}
            return st.fixed_dictionaries(
                {n: s for n, s in fields.items() if n in {f.encode_name for f in info.fields if f.required}},
                optional={n: s for n, s in fields.items() if n not in {f.encode_name for f in info.fields if f.required}},
            ).map(lambda d: msgspec.convert(d, info.cls))
        case mi.UnionType():
            return st.one_of([strategy_for(t) for t in info.types])
        case mi.NoneType():
            return st.none()
        case mi.BoolType():
            return st.booleans()
        case mi.IntType():
            lo = info.ge if info.ge is not None else (info.gt + 1 if info.gt is not None else -(2**53))
            hi = info.le if info.le is not None else (info.lt - 1 if info.lt is not None else 2**53)
            return st.integers(lo, hi)
        case mi.FloatType():
            lo = info.ge if info.ge is not None else (info.gt if info.gt is not None else -1e12)
            hi = info.le if info.le is not None else 1e12
            return st.floats(lo, hi, exclude_min=info.gt is not None, allow_nan=False)
        case mi.StrType():
            if info.pattern:
                return st.from_regex(info.pattern, fullmatch=True).filter(
                    lambda v: (info.min_length or 0) <= len(v) <= (info.max_length or 10**6)
                )
            return st.text(min_size=info.min_length or 0, max_size=min(info.max_length or 30, 30))
        case mi.LiteralType():
            return st.sampled_from(info.values)
        case mi.DateTimeType():
            return aware_datetimes
        case mi.ListType():
            return st.lists(strategy_for(info.item_type), max_size=3)
        case mi.DictType():
            return st.dictionaries(st.text(max_size=8), strategy_for(info.value_type), max_size=3)
        case mi.AnyType():
            return json_values
    raise NotImplementedError(info)


@pytest.mark.parametrize("typ", PUBLIC_TYPES, ids=lambda t: t.__name__)
@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much], deadline=None)
@given(data=st.data())
def test_every_message_type_round_trips_through_json(typ: type, data: st.DataObject) -> None:
    value = data.draw(strategy_for(mi.type_info(typ)))
    decoded = bus.decode(bus.encode(value), typ)
    assert decoded == value
    if typ in EVENT_TYPES:
        assert bus.decode_event(bus.encode(value)) == value


def test_every_event_type_is_in_the_event_union() -> None:
    tags = {t.__struct_config__.tag for t in EVENT_TYPES}
    assert tags == {
        "accepted",
        "started",
        "message",
        "tool_call",
        "tool_result",
        "model_call",
        "security",
        "artifact",
        "log",
        "finished",
    }


BAD_EVENTS = {
    "malformed": b'{"type": "log", "task_id": ',
    "truncated": b'{"type":"log","task_id":"t_1","seq":1,"ts":"2026-01-01T00:00:00Z","line":"x"',
    "not json": b"hello",
    "invalid utf-8": b'{"type":"log","line":"\xff\xfe"}',
    "wrong type": b'{"type":"log","task_id":"t_1","seq":"one","ts":"2026-01-01T00:00:00Z","line":"x"}',
    "unknown tag": b'{"type":"explode","task_id":"t_1","seq":1,"ts":"2026-01-01T00:00:00Z"}',
    "missing tag": b'{"task_id":"t_1","seq":1,"ts":"2026-01-01T00:00:00Z"}',
    "seq zero": b'{"type":"log","task_id":"t_1","seq":0,"ts":"2026-01-01T00:00:00Z","line":"x"}',
    "task id with wildcard": b'{"type":"log","task_id":"a.>","seq":1,"ts":"2026-01-01T00:00:00Z","line":"x"}',
    "array": b"[1,2,3]",
    "deeply nested": b'{"type":"tool_call","task_id":"t","seq":1,"ts":"2026-01-01T00:00:00Z","id":"x","name":"n","input":'
    + b'{"a":' * 5000
    + b"1"
    + b"}" * 5001,
    "empty": b"",
}


@pytest.mark.parametrize("payload", BAD_EVENTS.values(), ids=BAD_EVENTS.keys())
def test_bad_event_payloads_raise_the_typed_decode_error(payload: bytes) -> None:
    with pytest.raises(MessageDecodeError) as info:
        bus.decode_event(payload)
    assert info.value.code in ("malformed_message", "message_too_large")
    assert "cannot decode event" in str(info.value)


def test_oversized_payload_is_refused_before_parsing() -> None:
    payload = b'{"type":"log","line":"' + b"x" * 2_000_000 + b'"}'
    with pytest.raises(MessageTooLarge) as info:
        bus.decode_event(payload, max_bytes=1_048_576)
    assert info.value.code == "message_too_large"
    assert "over the limit of 1048576 bytes" in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_decoders(data: bytes) -> None:
    for decoder in (bus.decode_event, bus.decode_job, bus.decode_request, bus.decode_reply):
        try:
            decoder(data)
        except MessageDecodeError:
            pass


def test_request_union_is_tagged_by_kind() -> None:
    req = bus.decode_request(b'{"kind":"task","description":"write hello.py"}')
    assert isinstance(req, bus.TaskRequest) and req.description == "write hello.py"
    with pytest.raises(MessageDecodeError, match="description"):
        bus.decode_request(b'{"kind":"task","description":""}')
    with pytest.raises(MessageDecodeError, match=r"\$\.kind"):
        bus.decode_request(b'{"kind":"shell","cmd":"rm -rf /"}')


def test_json_schemas_are_generated_for_every_public_message() -> None:
    schemas = bus.json_schemas()
    for typ in PUBLIC_TYPES:
        assert typ.__name__ in schemas
    assert {"Event", "Request", "SubmitReply"} <= set(schemas)
    task = schemas["TaskRequest"]
    assert task["properties"]["kind"] == {"enum": ["task"]}
    assert "description" in task["required"]
    assert len(schemas["Event"]["anyOf"]) == len(EVENT_TYPES)
