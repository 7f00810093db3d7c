"""The compiled decoder (``pathsentry.schemas.fast``) against the reference ``parse_event``:
the same events (same model, fields, ``model_fields_set``, ``model_extra``, time zone and
serialisation) or the same refusal (reason and detail), on the hostile corpus, on simulated
worlds and on generated near-valid messages; and the Structs cover every model constraint."""

from __future__ import annotations

import copy
import json
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticSerializationError

from pathsentry.schemas import AnyEvent, EventError, parse_event
from pathsentry.schemas.fast import (
    EVENT_MODELS,
    FastDecoder,
    UnmirroredConstraint,
    decode_event,
    mirror,
)
from pathsentry.sim.model import WorldSpec
from pathsentry.sim.params import draw_params
from pathsentry.sim.world import iter_world
from tests.conftest import EventFactory
from tests.hostile.corpus import CONFUSABLE_NAMES, ODD_IPS, SQL_NAMES, nasty_messages


def reference(raw: bytes) -> AnyEvent | EventError:
    try:
        return parse_event(raw)
    except EventError as e:
        return e


def _json(ev: AnyEvent) -> str:
    try:
        return ev.model_dump_json()
    except PydanticSerializationError as e:  # extras nested deeper than pydantic writes
        return str(e)


def assert_same(raw: bytes, got: AnyEvent | EventError) -> None:
    """``got`` is what the reference makes of ``raw``, down to the last attribute."""
    want = reference(raw)
    if isinstance(want, EventError):
        assert isinstance(got, EventError), (raw[:300], got)
        assert (got.reason, got.detail) == (want.reason, want.detail)
        return
    assert not isinstance(got, EventError), (raw[:300], got)
    assert type(got) is type(want)
    assert got == want
    assert got.__dict__ == want.__dict__ and list(got.__dict__) == list(want.__dict__)
    assert got.model_fields_set == want.model_fields_set
    assert got.model_extra == want.model_extra
    assert got.ts.tzinfo == want.ts.tzinfo and type(got.ts.tzinfo) is type(want.ts.tzinfo)
    assert _json(got) == _json(want)
    assert repr(got) == repr(want)
    for name in type(want).model_fields:  # nested models: the same down every level
        a, b = getattr(got, name), getattr(want, name)
        for x, y in zip(a, b, strict=True) if isinstance(a, list) else [(a, b)]:
            if isinstance(y, BaseModel):
                assert type(x) is type(y)
                assert x.model_fields_set == y.model_fields_set
                assert x.model_extra == y.model_extra


def check_batch(raws: list[bytes]) -> FastDecoder:
    dec = FastDecoder()
    got = dec.decode(raws)
    assert len(got) == len(raws)
    for raw, g in zip(raws, got, strict=True):
        assert_same(raw, g)
    return dec


# -- genuine traffic ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [3, 11])
def test_simulated_worlds_decode_identically_on_the_compiled_path(seed: int) -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    spec = WorldSpec(seed=seed, accounts=300, hours=6.0, start=start, params=draw_params(seed, 6.0))
    raws = [orjson.dumps(ev) for _, ev in zip(range(3000), iter_world(spec), strict=False)]
    assert {orjson.loads(r)["kind"] for r in raws} == {"login", "rtt_probe", "traceroute", "http_probe"}
    dec = check_batch(raws)
    assert dec.fallbacks == 0  # genuine traffic never needs the reference
    assert dec.with_extras > 0  # the simulator's traceroutes carry an extra server_id


def test_extra_fields_are_kept_at_every_level(make_traceroute: EventFactory,
                                              make_http_probe: EventFactory,
                                              make_login: EventFactory) -> None:
    tr = make_traceroute(hops=[{"ttl": 1, "ip": "10.0.0.1", "rtt_ms": [1.0], "asn": 4766},
                               {"ttl": 2, "rtt_ms": []}], note={"deep": [1, 2.5, None]})
    hp = make_http_probe(target={"host": "ws.example.com", "port": 443, "scheme": "wss", "sni": "x"},
                         ttl={"syn_ack": 52, "hops_guess": 12})
    lo = make_login(client={"local_ip": "192.168.0.2", "os": "win11", "gpu": "rtx"}, big=2**70)
    raws = [json.dumps(e).encode() for e in (tr, hp, lo)]
    dec = check_batch(raws)
    assert dec.fallbacks == 0 and dec.with_extras == 3
    ev = decode_event(raws[0])
    assert ev.model_extra == {"note": {"deep": [1, 2.5, None]}}
    assert ev.hops[0].model_extra == {"asn": 4766}  # type: ignore[union-attr]


def test_deep_and_repeated_extra_fields(make_login: EventFactory) -> None:
    good = json.dumps(make_login()).encode()[:-1]
    raws = [good + b', "x": ' + b"[" * d + b"]" * d + b"}" for d in (10, 998, 1022, 1023, 1024)]
    raws += [good + b', "x": 1, "y": {"z": [true]}, "x": 2}', good + b', "session_id": null, "account": "b"}']
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(5000)  # to compare the accepted ~1000-deep lists
    try:
        check_batch(raws)
    finally:
        sys.setrecursionlimit(limit)


def test_lax_values_the_reference_coerces_go_to_it(make_login: EventFactory,
                                                   make_http_probe: EventFactory) -> None:
    """msgspec is strict; what pydantic's lax mode takes (a number as text, 64.0 as an
    integer, a Unix time) is handed to the reference and comes out as it decides."""
    raws = [
        json.dumps(make_login(app_rtt_ms=["4.5", 3])).encode(),
        json.dumps(make_login(ts=1767225600)).encode(),
        json.dumps(make_http_probe(status=101.0, seq_conflict="yes")).encode(),
    ]
    dec = check_batch(raws)
    assert dec.fallbacks == 3
    assert not any(isinstance(reference(r), EventError) for r in raws)


# -- hostile messages ---------------------------------------------------------------------------

def test_hostile_corpus_same_outcome(make_login: EventFactory, make_traceroute: EventFactory) -> None:
    corpus = nasty_messages(make_login(), make_traceroute())
    raws = [n.value for n in corpus]
    dec = check_batch(raws)
    refused = sum(n.reason is not None for n in corpus)
    assert dec.fallbacks == refused  # each refusal is the reference's, reason and detail


def test_text_payloads_and_refusals_come_back_in_order(make_login: EventFactory) -> None:
    good = json.dumps(make_login()).encode()
    envelope = b'{"t": 1, "e": ' + good + b"}"
    got = FastDecoder().decode([b"[]", good, good.decode(), b"{" + b" " * (300 << 10) + b"}",
                                bytearray(good), memoryview(envelope)[14:-1], memoryview(b"[" + good)[1:5]])
    assert [g.reason if isinstance(g, EventError) else type(g).__name__ for g in got] == [
        "not_an_object", "Login", "Login", "oversized", "Login", "Login", "bad_json"]
    assert got[1] == got[2] == got[4] == got[5]
    with pytest.raises(EventError, match="unknown_kind"):
        decode_event(b'{"kind": "teleport"}')


# -- generated near-valid messages -------------------------------------------------------------

_SEEDS: list[dict[str, Any]] = []
_DROP = object()


def _seeds() -> list[dict[str, Any]]:
    if not _SEEDS:
        spec = WorldSpec(seed=5, accounts=100, hours=4.0, start=datetime(2026, 3, 1, tzinfo=UTC))
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for ev in iter_world(spec):
            by_kind.setdefault(ev["kind"], []).append(ev)
            if all(len(v) >= 3 for v in by_kind.values()) and len(by_kind) == 4:
                break
        http = by_kind["http_probe"][0]
        full = {**http, "status": 101, "header_names": ["server"], "server_header": "nginx",
                "body_sha256": "a" * 64, "body_len": 10, "connect_ms": 1.5, "ttfb_ms": 2.5,
                "ttl": {"syn_ack": 52, "response": 52}, "retransmits": 0, "seq_conflict": False,
                "reporter": "edge"}
        login = {**by_kind["login"][0], "client": {"local_ip": "192.168.1.2", "device_id": "d", "os": "x"}}
        _SEEDS.extend([*(v[0] for v in by_kind.values()), full, login])
    return _SEEDS


_LONG = ["x" * n for n in (0, 1, 45, 46, 63, 64, 65, 127, 128, 129, 253, 254, 256, 257)]
_TIMES = [
    "2026-01-01T00:00:00Z", "2026-01-01T00:00:00", "2026-01-01 00:00:00+09:00", "2026-01-01t00:00:00z",
    "2026-01-01T00:00:00.1234567Z", "2026-01-01T00:00:00.999999999+01:00", "2026-01-01T00:00:00,5Z",
    "2026-01-01T00:00Z", "2026-01-01T00:00:00+0900", "2026-01-01T00:00:00+09", "2026-02-30T00:00:00Z",
    "2026-01-01T24:00:00Z", "2026-12-31T23:59:60Z", "2026-01-01T00:00:00+24:00", "2026-01-01T00:00:00-00:00",
    "1767225600", "2026-01-01", "20260101T000000Z", "2026-01-01T00:00:00.Z", " 2026-01-01T00:00:00Z",
]
_NUMBERS = [0, -0.0, 1, 1.5, -1, 255, 256, 999, 1000, 60000, 60000.0, 60000.000001, 65535, 65536,
            2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**80, 1e-320, 1e300, 64.0, 64.5,
            True, False, "1", "1.5", "64", " 5", "1e3", "inf", "NaN", "true", "yes", "on"]
_POOL = [
    None, [], {}, [None], [1.0] * 65, [1.0] * 64, ["x"] * 129, "a" * 64, "A" * 64, "g" * 64, "a" * 63 + "\n",
    "a" * 64 + "\n", "a" * 65, "ab", "\u0000", "😀" * 64, "😀" * 65, "ﬀ", "١٢٣", *_LONG, *_TIMES, *_NUMBERS,
    *ODD_IPS, *SQL_NAMES, *CONFUSABLE_NAMES, "login", "rtt_probe", "traceroute", "http_probe", "icmp", "tcp",
    "app", "client_to_server", "ws_upgrade", "get", "wss", "https", "http", "ws", "edge", "sensor",
    "failure", "success", "client", [{"ttl": 1}], [{"ttl": 0}], [{"ttl": 1, "ip": None, "rtt_ms": None}],
    {"host": "h", "port": 1, "scheme": "ws"}, {"syn_ack": None}, {"local_ip": "::1"},
]
_VALUES = st.one_of(
    st.none(), st.sampled_from(_POOL).map(copy.deepcopy), st.sampled_from(_NUMBERS), st.integers(),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=70),
)
#: one of each JSON type and edge, for the exhaustive sweep
_SWEEP = [None, True, 0, -1, -0.0, 1.5, 256, 65536, 60000.000001, 2**63, 2**64, "", "x", "1.5", "x" * 65,
          "x" * 129, "x" * 257, "😀" * 65, "a" * 64, "a" * 64 + "\n", "1.2.3.4 ", "::1",
          "2026-01-01T00:00:00.1234567Z", [], [1.0], [1.0] * 65, {}, {"ttl": 1}]


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def near_valid(draw: st.DrawFn) -> bytes:
    """A genuine event with a few fields replaced, removed or added (at any depth), or its
    bytes cut or altered."""
    ev = copy.deepcopy(draw(st.sampled_from(_seeds())))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(ev)
        path = draw(st.sampled_from(paths))
        parent = ev
        for p in path[:-1]:
            parent = parent[p]
        op = draw(st.sampled_from(["set", "set", "set", "drop", "add"]))
        if op == "set":
            parent[path[-1]] = draw(_VALUES)
        elif op == "drop":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["extra", "kind", "ts", "zz", "server_id"]))] = draw(_VALUES)
    raw = json.dumps(ev, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        i = draw(st.integers(0, len(raw)))
        raw = raw[:i] + draw(st.binary(max_size=3)) + raw[i + draw(st.integers(0, 3)):]
    return raw


def test_every_field_of_every_kind_set_to_each_json_type_or_dropped() -> None:
    raws = []
    for seed in _seeds():
        for path in _paths(seed):
            for value in [*_SWEEP, _DROP]:
                ev = copy.deepcopy(seed)
                parent = ev
                for p in path[:-1]:
                    parent = parent[p]
                if value is _DROP:
                    del parent[path[-1]]
                else:
                    parent[path[-1]] = copy.deepcopy(value)
                raws.append(json.dumps(ev).encode())
    assert len(raws) > 1500
    dec = check_batch(raws)
    assert 0 < dec.fallbacks < len(raws)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(near_valid(), min_size=1, max_size=8))
def test_near_valid_messages_decode_as_the_reference_does(raws: list[bytes]) -> None:
    check_batch(raws)


# -- one source of truth ------------------------------------------------------------------------

def test_every_model_field_has_its_struct_counterpart() -> None:
    for model in EVENT_MODELS:
        for strict in (True, False):
            m = mirror(model, strict)
            assert set(m.struct.__struct_fields__) == set(model.model_fields) - {"kind"}
            assert m.struct.__struct_config__.tag == model.model_fields["kind"].annotation.__args__[0]
            assert m.struct.__struct_config__.forbid_unknown_fields is strict


@pytest.mark.parametrize("annotation", [
    Annotated[int, Field(multiple_of=2)],
    Annotated[float, Field(ge=0, decimal_places=2)],
    Annotated[str, Field(pattern="^a$", strict=True), "a marker"],
    dict[str, int],
    int | str,
    Annotated[datetime, Field()],
])
def test_a_constraint_without_counterpart_stops_the_mirror(annotation: Any) -> None:
    toy = type("Toy", (BaseModel,), {"__annotations__": {"x": annotation},
                                      "model_config": ConfigDict(extra="allow")})
    with pytest.raises(UnmirroredConstraint):
        mirror(toy)


def test_structs_alone_hold_the_validated_fields(make_login: EventFactory) -> None:
    good = json.dumps(make_login(guild="x")).encode()
    s, bad = FastDecoder().structs([good, b'{"kind": "login"}'])
    assert bad is None and s is not None
    assert s.account == parse_event(good).account and not hasattr(s, "guild")  # type: ignore[attr-defined]
