"""Fuzzing ``parse_event``: whatever arrives, it returns a valid event or raises
:class:`EventError` with a known reason, never anything else; an accepted event
survives ``model_dump_json`` -> ``parse_event`` unchanged, and the detectors take
it without raising (a detector exception would stop the worker's agent on it)."""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pathsentry.config import load_config
from pathsentry.engine import Engine
from pathsentry.schemas import EventError, parse_event
from pathsentry.schemas.events import MAX_EVENT_BYTES
from tests.faults.support import recent_world, sim_events, write_world
from tests.hostile.corpus import (
    CONFUSABLE_NAMES,
    KNOWN_REASONS,
    ODD_IPS,
    SQL_NAMES,
    deep_json,
    nasty_messages,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@cache
def _world() -> tuple[list[dict[str, Any]], Path]:
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="pathsentry-fuzz-"))
    spec = recent_world(seed=3, accounts=200)
    return sim_events(spec, 3000), write_world(d, spec)


@cache
def _engine() -> Engine:
    events, config = _world()
    engine = Engine(load_config(config, env={}))
    for ev in events:  # warm the detectors up with genuine traffic
        engine.process(parse_event(ev))
    return engine


def seeds() -> list[dict[str, Any]]:
    """One genuine event of each kind."""
    events, _ = _world()
    by_kind: dict[str, dict[str, Any]] = {}
    for ev in events:
        by_kind.setdefault(ev["kind"], ev)
    assert set(by_kind) == {"login", "rtt_probe", "traceroute", "http_probe"}
    return list(by_kind.values())


def check(raw: bytes | str | dict[str, Any]) -> Any:
    """The property: a valid event that round-trips and that the engine takes, or a known refusal."""
    try:
        ev = parse_event(raw)
    except EventError as e:
        assert e.reason in KNOWN_REASONS, e.reason
        return None
    again = parse_event(ev.model_dump_json().encode())
    assert again == ev, (ev, again)
    assert again.model_dump_json() == ev.model_dump_json()
    _engine().process(ev)
    return ev


JSON_SCALARS = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40)
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
HOSTILE_VALUES = (
    st.sampled_from([
        math.nan, math.inf, -math.inf, -1.0, -0.0, 0.0, 1e308, 5e-324, 60_000.0, 60_000.1,
        2**63, 2**64, -(2**63), 0, 256, 65536, "", " ", "\x00", "NaN", "1e309", "١٢٣", "１２３",
        "0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59-23:59", "2026-02-30T00:00:00Z",
        "2026-01-01T00:00:00+25:00", "2026-01-01T00:00:00", 1_700_000_000, -62135596800,
        [], {}, [[[[[]]]]], "a" * 300, "x" * 70,
        *ODD_IPS, *SQL_NAMES, *CONFUSABLE_NAMES,
    ])
    | JSON
)
HOP = st.fixed_dictionaries(
    {"ttl": st.integers(-5, 300), "ip": st.sampled_from(ODD_IPS) | st.ip_addresses().map(str),
     "rtt_ms": st.lists(st.floats(allow_nan=True), max_size=4)}
)


def _set_path(obj: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    out = dict(obj)
    head, *rest = path
    if rest and isinstance(out.get(head), dict):
        out[head] = _set_path(out[head], rest, value)
    else:
        out[head] = value
    return out


def _paths(ev: dict[str, Any]) -> list[list[str]]:
    out: list[list[str]] = []
    for k, v in ev.items():
        out.append([k])
        if isinstance(v, dict):
            out.extend([k, k2] for k2 in v)
    return [*out, ["extra_field"], ["client", "local_ip"]]


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    ev: dict[str, Any] = draw(st.sampled_from(seeds()))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(ev)))
        ev = _set_path(ev, path, draw(HOSTILE_VALUES))
    if ev["kind"] == "traceroute" and draw(st.booleans()):
        ev = {**ev, "hops": draw(st.lists(HOP, min_size=0, max_size=70))}
    if draw(st.booleans()):
        ev = {**ev, "account": draw(st.sampled_from(SQL_NAMES + CONFUSABLE_NAMES) | st.text(max_size=80))}
    return ev


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(raw: bytes) -> None:
    check(raw)


@FUZZ
@given(JSON)
def test_arbitrary_json(doc: Any) -> None:
    check(json.dumps(doc).encode())
    check(json.dumps(doc))


@FUZZ
@given(mutated_events())
def test_mutated_events_as_bytes(ev: dict[str, Any]) -> None:
    # json allows NaN / Infinity literals: producers in other languages send them
    check(json.dumps(ev, ensure_ascii=False).encode("utf-8", "surrogatepass"))


@FUZZ
@given(mutated_events())
def test_mutated_events_as_dicts(ev: dict[str, Any]) -> None:
    """The in-process path (``EventProducer.send(dict)``, replay of parsed objects)."""
    check(ev)


@FUZZ
@given(st.sampled_from(seeds()), st.sampled_from(ODD_IPS) | st.ip_addresses().map(str))
def test_every_odd_address_form(ev: dict[str, Any], ip: Any) -> None:
    accepted = check(json.dumps({**ev, "src_ip": ip}).encode())
    if accepted is not None:
        # whatever form was accepted, it is a canonical address afterwards
        import ipaddress

        assert str(accepted.src_ip) == str(ipaddress.ip_address(ip))


@pytest.mark.parametrize("depth", [10, 500, 1000, 5000, 100_000])
def test_deep_json(depth: int) -> None:
    with pytest.raises(EventError) as e:
        parse_event(deep_json(depth))
    assert e.value.reason in {"invalid", "bad_json"}


@pytest.mark.parametrize("size", [MAX_EVENT_BYTES + 1, 10 << 20])
def test_oversized_payloads_are_refused_unparsed(size: int) -> None:
    raw = b'{"kind":"login","pad":"' + b"a" * size + b'"}'
    for form in (raw, raw.decode()):
        with pytest.raises(EventError) as e:
            parse_event(form)
        assert e.value.reason == "oversized"


def test_oversized_text_is_measured_in_bytes() -> None:
    """A str of MAX_EVENT_BYTES 4-byte characters is 4x the byte limit on the wire."""
    raw = '{"kind":"login","pad":"' + "\U0001f600" * (MAX_EVENT_BYTES // 2) + '"}'
    assert len(raw.encode()) > 2 * MAX_EVENT_BYTES
    with pytest.raises(EventError) as e:
        parse_event(raw)
    assert e.value.reason == "oversized"


def test_corpus_reasons() -> None:
    """Every message of the worker corpus gets the reason the worker test expects."""
    by_kind = {e["kind"]: e for e in seeds()}
    for nasty in nasty_messages(by_kind["login"], by_kind["traceroute"]):
        if nasty.reason is None:
            ev = check(nasty.value)
            assert ev is not None and ev.account == nasty.account, nasty.name
        else:
            with pytest.raises(EventError) as e:
                parse_event(nasty.value)
            assert e.value.reason == nasty.reason, nasty.name


@pytest.mark.parametrize("extra", [math.nan, math.inf, b"bytes", {1, 2}, 2**70], ids=repr)
def test_dict_input_with_non_json_extras_is_refused_or_round_trips(extra: Any) -> None:
    """Extras of a dict event are not validated: a value JSON cannot carry must be refused
    (``EventProducer.send(dict)`` validates the dict, then serialises it with orjson)."""
    check({**seeds()[0], "extra_field": extra})
