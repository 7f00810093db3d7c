from __future__ import annotations

import json
from typing import Any

import pytest

from pathsentry.commands.core import json_schemas
from pathsentry.schemas import (
    MAX_EVENT_BYTES,
    EventError,
    HttpProbe,
    Login,
    Traceroute,
    parse_event,
    topic_for,
)
from tests.conftest import EventFactory


def test_valid_login_round_trip_keeps_unknown_fields(make_login: EventFactory) -> None:
    raw = make_login(guild="night-owls", client={"local_ip": "192.168.0.5", "os": "win11"})
    ev = parse_event(json.dumps(raw).encode())
    assert isinstance(ev, Login)
    assert ev.model_extra == {"guild": "night-owls"}
    assert str(ev.client.local_ip) == "192.168.0.5"  # type: ignore[union-attr]
    assert topic_for(ev) == ("logins", "hero01")
    again = parse_event(ev.model_dump_json().encode())
    assert again == ev


def test_telemetry_topic_and_key(make_traceroute: EventFactory, make_http_probe: EventFactory) -> None:
    tr = parse_event(make_traceroute(session_id="sess-9"))
    assert isinstance(tr, Traceroute)
    assert topic_for(tr) == ("network-telemetry", "sess-9")
    hp = parse_event(make_http_probe())
    assert isinstance(hp, HttpProbe) and not hp.target.encrypted


@pytest.mark.parametrize(
    ("mutate", "reason", "needle"),
    [
        (lambda e: e.update(ts="2026-11-22T21:00:00"), "invalid", "ts"),
        (lambda e: e.update(src_ip="999.1.1.1"), "invalid", "src_ip"),
        (lambda e: e.update(src_ip="not-an-ip"), "invalid", "src_ip"),
        (lambda e: e.update(app_rtt_ms=[]), "invalid", "app_rtt_ms"),
        (lambda e: e.update(app_rtt_ms=[-1.0]), "invalid", "greater than or equal to 0"),
        (lambda e: e.update(app_rtt_ms=[float("nan")]), "invalid", "NaN"),
        (lambda e: e.update(app_rtt_ms=[1.0] * 1000), "invalid", "app_rtt_ms"),
        (lambda e: e.update(account="x" * 65), "invalid", "account"),
        (lambda e: e.update(account=""), "invalid", "account"),
        (lambda e: e.update(event_id="e" * 129), "invalid", "event_id"),
        (lambda e: e.pop("server_id"), "invalid", "server_id"),
        (lambda e: e.update(kind="teleport"), "unknown_kind", "teleport"),
        (lambda e: e.pop("kind"), "unknown_kind", "None"),
        (lambda e: e.update(outcome="maybe"), "invalid", "outcome"),
    ],
)
def test_hostile_logins_rejected_with_reason(
    make_login: EventFactory, mutate: Any, reason: str, needle: str
) -> None:
    raw = make_login()
    mutate(raw)
    with pytest.raises(EventError) as ei:
        parse_event(raw)
    assert ei.value.reason == reason
    assert needle in str(ei.value)


def test_nan_literal_and_garbage_bytes() -> None:
    with pytest.raises(EventError) as ei:
        parse_event(b'{"kind": "login", "app_rtt_ms": [NaN]}')
    assert ei.value.reason == "bad_json"
    with pytest.raises(EventError) as ei:
        parse_event(b"\xff\xfe\x00garbage")
    assert ei.value.reason == "bad_json"
    with pytest.raises(EventError) as ei:
        parse_event(b"[1, 2, 3]")
    assert ei.value.reason == "not_an_object"


def test_oversized_message_is_refused_before_decoding() -> None:
    with pytest.raises(EventError) as ei:
        parse_event(b"{" + b" " * MAX_EVENT_BYTES + b"}")
    assert ei.value.reason == "oversized"


def test_deeply_nested_json_is_refused() -> None:
    deep = b'{"kind": "login", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    with pytest.raises(EventError) as ei:
        parse_event(deep)
    assert ei.value.reason in ("bad_json", "invalid")


def test_ttl_bounds_and_hop_limits(make_traceroute: EventFactory, make_http_probe: EventFactory) -> None:
    with pytest.raises(EventError, match="ttl"):
        parse_event(make_traceroute(hops=[{"ttl": 0, "ip": None, "rtt_ms": []}]))
    with pytest.raises(EventError, match="hops"):
        parse_event(make_traceroute(hops=[{"ttl": 1, "rtt_ms": [1.0]}] * 10_000))
    with pytest.raises(EventError, match="ttl"):
        parse_event(make_http_probe(ttl={"syn_ack": 256, "response": 52}))
    ok = parse_event(make_http_probe(ttl={"syn_ack": None, "response": 53}, status=None))
    assert isinstance(ok, HttpProbe) and ok.ttl is not None and ok.ttl.response == 53


def test_ipv6_and_naive_vs_aware_times(make_login: EventFactory) -> None:
    ev = parse_event(make_login(src_ip="2001:db8::1", ts="2026-11-22T12:00:00Z"))
    assert ev.src_ip.version == 6
    assert ev.ts.utcoffset() is not None


def test_json_schema_export_covers_every_kind() -> None:
    schemas = json_schemas()
    union = json.dumps(schemas["event.schema.json"])
    for kind in ("login", "rtt_probe", "traceroute", "http_probe"):
        assert f"{kind}.schema.json" in schemas
        assert f'"{kind}"' in union
    assert "alert_id" in json.dumps(schemas["alert.schema.json"])


def test_json_schema_export_covers_the_v1_1_kinds() -> None:
    schemas = json_schemas()
    union = json.dumps(schemas["feedback.schema.json"])
    for kind in ("account_label", "interaction"):
        assert f"{kind}.schema.json" in schemas
        assert f'"{kind}"' in union
    label = json.dumps(schemas["account_label.schema.json"])
    assert all(f'"{v}"' in label for v in ("bot", "farm", "fraud", "takeover", "cleared"))
    assert "src_ip" not in json.dumps(schemas["interaction.schema.json"])
