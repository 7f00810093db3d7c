"""Traceroutes of other tools as contract-v1 events, and the route check over them.

The records are typed after RIPE Atlas traceroute results (a probe behind NAT, a
silent hop, load-balanced hops, late and ICMP-error packets, the ``hop 255`` a
traceroute that never reached its target ends with, failed measurements) and an
``mtr --json`` report.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from pathsentry.cli import main
from pathsentry.config import load_config
from pathsentry.enrich.geo import CsvPrefixTable, GeoResolver
from pathsentry.schemas import Traceroute, parse_event
from pathsentry.traceroutes.atlas import atlas_event
from pathsentry.traceroutes.check import Target, check_routes, synthetic_relays
from pathsentry.traceroutes.mtr import mtr_event
from pathsentry.traceroutes.records import RecordError, read_records


def _packets(ip: str, *rtts: float) -> list[dict[str, Any]]:
    return [{"from": ip, "rtt": r, "size": 28, "ttl": 250} for r in rtts]


STARS = [{"x": "*"}, {"x": "*"}, {"x": "*"}]


def _atlas(src: str, dst: str, hops: list[list[dict[str, Any]]], prb: int = 713,
           **kw: Any) -> dict[str, Any]:
    return {"af": 4, "type": "traceroute", "msm_id": 3082698, "prb_id": prb,
            "timestamp": 1450178299, "from": src, "src_addr": "192.168.1.20",
            "dst_addr": dst, "proto": "UDP", "paris_id": 1,
            "result": [{"hop": i + 1, "result": h} for i, h in enumerate(hops)], **kw}


BEHIND_NAT = _atlas("212.66.97.165", "66.220.156.68", [
    _packets("192.168.1.1", 1.6, 1.7, 1.6),
    STARS,
    [*_packets("151.6.84.152", 4.2, 3.9), {"from": "151.6.84.154", "rtt": 4.5}],
    [{"from": "151.6.5.144", "rtt": 5.4}, {"from": "151.6.5.144", "late": 1},
     {"from": "151.6.5.144", "rtt": 5.1, "err": "H"}],
])


def test_an_atlas_traceroute_becomes_a_client_run_traceroute_from_the_probe() -> None:
    event = atlas_event(BEHIND_NAT, server_id="us-ash-1")
    tr = parse_event(event)
    assert isinstance(tr, Traceroute)
    assert str(tr.src_ip) == "212.66.97.165"  # the public ``from``, not the NAT address
    assert (tr.direction, tr.vantage_id, tr.ts.isoformat()) == (
        "client_to_server", "client", "2015-12-15T11:18:19+00:00")
    assert (tr.model_extra or {})["server_id"] == "us-ash-1"
    assert (tr.model_extra or {})["dst_addr"] == "66.220.156.68"
    assert [(h.ttl, str(h.ip) if h.ip else None, h.rtt_ms) for h in tr.hops] == [
        (1, "192.168.1.1", [1.6, 1.7, 1.6]),
        (2, None, []),                       # ``*`` ``*`` ``*``
        (3, "151.6.84.152", [4.2, 3.9]),     # the address most packets came from
        (4, "151.6.5.144", [5.4, 5.1]),      # the late packet has no RTT; the error one has
    ]
    assert tr.hops[2].model_extra == {"other_ips": ["151.6.84.154"]}


def test_an_ipv6_traceroute_keeps_its_addresses() -> None:
    rec = _atlas("2001:983:ba7e:1:fad1:11ff:fea9:f090", "2a00:1450:4013:c01::5e", [
        _packets("2001:983:ba7e:1:ca0e:14ff:fe74:7476", 1.5, 1.4, 1.6),
        _packets("2001:7f8:1::a501:5169:1", 8.1, 8.0, 8.3),
    ])
    tr = parse_event(atlas_event(rec))
    assert isinstance(tr, Traceroute)
    assert str(tr.src_ip) == "2001:983:ba7e:1:fad1:11ff:fea9:f090"
    assert str(tr.hops[1].ip) == "2001:7f8:1::a501:5169:1"


@pytest.mark.parametrize(("record", "reason"), [
    ([1, 2], "not a JSON object but list"),
    ({**BEHIND_NAT, "type": "ping"}, "a 'ping' result, not a traceroute"),
    ({**BEHIND_NAT, "from": "10.1.2.3", "src_addr": "192.168.1.20"}, "no public source address"),
    ({**BEHIND_NAT, "timestamp": "yesterday"}, "no timestamp"),
    ({**BEHIND_NAT, "result": [{"error": "name resolution failed: non-recoverable"}]},
     "no hops: name resolution failed: non-recoverable"),
    ({**BEHIND_NAT, "result": [{"hop": 1, "error": "connect failed: Network is unreachable"}]},
     "no hops: connect failed"),
    ({**BEHIND_NAT, "result": [{"hop": i, "result": STARS} for i in range(1, 70)]},
     "69 hops, more than the contract's 64"),
])
def test_a_bad_atlas_record_gets_its_reason(record: Any, reason: str) -> None:
    with pytest.raises(RecordError) as err:
        atlas_event(record)
    assert str(err.value).startswith(reason)


def test_records_are_read_from_arrays_api_answers_and_jsonl_with_bad_lines() -> None:
    array = list(read_records(io.StringIO(json.dumps([BEHIND_NAT, BEHIND_NAT])), "a"))
    api = list(read_records(io.StringIO(json.dumps({"meta_data": {}, "results": [BEHIND_NAT]})), "b"))
    lines = list(read_records(io.StringIO(json.dumps(BEHIND_NAT) + "\n{oops\n"), "c"))
    assert [r.where for r in array] == ["a[0]", "a[1]"] and array[1].record == BEHIND_NAT
    assert [r.where for r in api] == ["b[0]"]
    assert lines[0].record == BEHIND_NAT
    assert lines[1].record is None and lines[1].error == "c:2: not JSON ({oops)"


def test_the_command_converts_the_good_records_and_names_the_bad_ones(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "results.json"
    src.write_text(json.dumps([BEHIND_NAT, {**BEHIND_NAT, "result": [{"error": "bind failed"}]}]))
    out = tmp_path / "events.jsonl"
    assert main(["traceroutes", str(src), "--format", "atlas", "--out", str(out)]) == 1
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["event_id"] for e in events] == ["atlas-3082698-713-1450178299"]
    err = capsys.readouterr().err
    assert f"bad record {src}[1]: no hops: bind failed" in err
    assert "wrote 1 traceroute events" in err


MTR = {"report": {"mtr": {"src": "pc", "dst": "66.220.156.68", "tests": 10}, "hubs": [
    {"count": 1, "host": "192.168.1.1", "Loss%": 0.0, "Snt": 10,
     "Last": 1.3, "Avg": 1.4, "Best": 1.2, "Wrst": 3.2, "StDev": 0.5},
    {"count": 2, "host": "???", "Loss%": 100.0, "Snt": 10,
     "Last": 0.0, "Avg": 0.0, "Best": 0.0, "Wrst": 0.0, "StDev": 0.0},
    {"count": 3, "host": "151.6.84.152", "Loss%": 80.0, "Snt": 10,
     "Last": 4.4, "Avg": 4.2, "Best": 3.9, "Wrst": 4.4, "StDev": 0.2},
]}}


def test_an_mtr_report_keeps_its_single_packet_figures_as_samples() -> None:
    tr = parse_event(mtr_event(MTR, src_ip="212.66.97.165", ts="2026-01-01T00:00:00Z"))
    assert isinstance(tr, Traceroute)
    assert [(h.ttl, h.rtt_ms) for h in tr.hops] == [
        (1, [1.2, 1.3, 3.2]), (2, []), (3, [3.9, 4.4])]  # two of ten came back: Best, Wrst


def test_an_mtr_report_with_names_is_refused_and_the_command_needs_the_source(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    named = {"report": {"hubs": [{**MTR["report"]["hubs"][0], "host": "router.lan"}]}}
    with pytest.raises(RecordError, match="is a name, not an address"):
        mtr_event(named, src_ip="212.66.97.165", ts="2026-01-01T00:00:00Z")
    src = tmp_path / "mtr.json"
    src.write_text(json.dumps(MTR))
    assert main(["traceroutes", str(src), "--format", "mtr"]) == 2
    assert "--src-ip" in capsys.readouterr().err


GEO = """cidr,country,asn,as_name,lat,lon,kind
212.66.96.0/19,IT,20912,Access IT,,,residential
151.6.0.0/16,IT,1267,Backbone IT,,,business
62.115.0.0/16,SE,1299,Carrier SE,,,business
193.0.0.0/16,SE,3333,Target SE,,,hosting
91.198.174.0/24,US,14907,Anycast-ish,,,hosting
81.2.0.0/16,GB,5089,Access GB,,,residential
80.239.0.0/16,GB,5089,Backbone GB,,,business
"""


def _geo() -> GeoResolver:
    return GeoResolver([CsvPrefixTable.from_lines(io.StringIO(GEO))])


def _event(src: str, dst: str, hops: list[tuple[str, float]], prb: int) -> dict[str, Any]:
    return atlas_event(_atlas(src, dst, [_packets(ip, ms, ms + 0.2, ms + 0.1) for ip, ms in hops],
                              prb=prb))


ITALY = _event("212.66.97.165", "193.0.14.129", [
    ("192.168.1.1", 0.5), ("151.6.84.152", 4.0), ("151.6.5.144", 5.0),
    ("62.115.12.45", 31.0), ("193.0.14.129", 33.0)], prb=1)
BRITAIN = _event("81.2.69.160", "193.0.14.129", [
    ("81.2.1.1", 2.0), ("80.239.1.1", 3.0), ("62.115.12.45", 27.0),
    ("193.0.14.129", 29.0)], prb=2)


def test_each_traceroute_is_judged_with_its_probes_country_as_home() -> None:
    verdicts = list(check_routes([ITALY, BRITAIN], load_config(text="", env={}), _geo(),
                                 silence=2))
    assert [(v.home, v.silenced, v.flagged) for v in verdicts] == [
        ("IT", 0, False), ("IT", 1, False), ("IT", 2, False),
        ("GB", 0, False), ("GB", 1, False), ("GB", 2, False)]
    assert verdicts[0].country_path == ["IT", "SE"]
    assert verdicts[0].target_country == "SE"


def test_a_target_its_own_rtt_rules_out_is_skipped_unless_placed() -> None:
    # an address registered in the US that answers a probe in Italy within 12 ms
    near = _event("212.66.97.165", "91.198.174.225", [
        ("151.6.84.152", 4.0), ("91.198.174.225", 12.0)], prb=3)
    cfg = load_config(text="", env={})
    (skipped,) = check_routes([near], cfg, _geo())
    assert skipped.skipped is not None and skipped.skipped.startswith(
        "target geolocation breaks its RTT bound (US")
    (placed,) = check_routes([near], cfg, _geo(), target=Target(52.37, 4.90, "NL"))
    assert placed.skipped is None and placed.target_country == "NL"


def test_synthetic_relays_from_real_shapes_are_flagged() -> None:
    relays = list(synthetic_relays([ITALY, BRITAIN], load_config(text="", env={}), _geo()))
    assert sorted(v.event_id for v in relays) == ["relay-GB-IT", "relay-IT-GB"]
    assert all(v.flagged for v in relays)
    it_gb = next(v for v in relays if v.event_id == "relay-IT-GB")
    assert it_gb.home == "GB" and it_gb.country_path[:2] == ["IT", "GB"]


def test_a_silenced_router_stays_silent_where_it_answers_again() -> None:
    # the probe's access router answers TTL 2 and, once the path dies, TTL 6 again
    looped = _event("212.66.97.165", "193.0.14.129", [
        ("192.168.1.1", 0.5), ("151.6.84.152", 21.0), ("62.115.12.45", 25.0),
        ("62.115.12.46", 34.0), ("62.115.12.47", 34.5), ("151.6.84.152", 21.5)], prb=4)
    verdicts = list(check_routes([looped], load_config(text="", env={}), _geo(), silence=1))
    assert [(v.silenced, v.flagged) for v in verdicts] == [(0, False), (1, False)]
    assert verdicts[0].country_path == ["IT", "SE", "IT"]
    assert verdicts[1].country_path == ["SE"]  # not SE → IT: the router is silent twice
