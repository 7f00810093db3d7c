"""Path or origin: the origin's own failures across many ISPs, framing, several injectors.

A small world of eight ISPs reaching one CDN origin (``ws.example.com`` and
``www.example.com``) all day, run through both injection stages.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from pathsentry.config import load_config
from pathsentry.detectors import build_detectors
from pathsentry.detectors.base import DetectorContext
from pathsentry.engine import Engine
from pathsentry.enrich.geo import CsvPrefixTable, GeoResolver
from pathsentry.schemas import Alert, FlaggedEvent, parse_event
from tests.fixtures import CDN_ORIGINS

KST = timezone(timedelta(hours=9))
DAY0 = datetime(2026, 3, 2, tzinfo=KST)
ISPS = {4766: "Korea Telecom", 9318: "SK Broadband", 3786: "LG Uplus", 17858: "LG Powercomm",
        9644: "SK Telecom", 4249: "LG Telecom", 38091: "CJ Hellovision", 9848: "Sejong"}
KT, SKB, LGU = 4766, 9318, 3786


def lines_of(asn: int) -> list[str]:
    i = list(ISPS).index(asn)
    return [f"58.{120 + i}.{j}" for j in range(2)]


GEO = "cidr,country,asn,as_name,lat,lon,kind\n" + "".join(
    f"{line}.0/24,KR,{asn},{name},37.5,127.0,residential\n"
    for asn, name in ISPS.items() for line in lines_of(asn))
TARGETS = (("ws.example.com", 80, "ws", "ws_upgrade"), ("www.example.com", 80, "http", "get"),
           ("www.example.com", 8080, "http", "get"), ("ws.example.com", 443, "wss", "ws_upgrade"),
           ("www.example.com", 443, "https", "get"))
WS_HEADERS = ["server", "date", "connection", "upgrade", "sec-websocket-accept", "cf-ray"]
WWW_HEADERS = ["server", "date", "content-type", "content-length", "cf-ray", "cf-cache-status"]
CDN_ERROR = ["server", "date", "content-type", "content-length", "cf-ray"]
REDIRECT = ["server", "date", "location", "content-length", "cf-ray"]
FORGED = {"page": (200, ["content-type", "content-length", "connection"], "cd" * 32),
          "redirect": (302, ["location", "content-length", "connection"], None),
          "block": (403, ["content-type", "content-length", "cache-control"], "ef" * 32)}


@dataclass(frozen=True)
class Injector:
    ports: tuple[int, ...]
    hours: range
    answer: str
    ttl_delta: int | None  # None: no TTL visible
    rate: float = 0.8


@dataclass
class World:
    hosts: int = 6
    every_min: int = 20
    #: (start minute, minutes, status, with the CDN's marks)
    outages: list[tuple[int, int, int, bool]] = field(default_factory=list)
    #: the hosts the outages hit (none: every host)
    outage_hosts: tuple[str, ...] = ()
    #: the unmarked box's answer TTL from its SYN-ACK's (+1: as a box one hop nearer)
    unmarked_ttl_delta: int = 1
    maintenance: tuple[int, int] | None = None
    error_rate: float = 0.0
    redirect_rate: float = 0.0
    #: the origin's answers leave one hop nearer than its SYN-ACKs this share of the time
    lb_share: float = 0.0
    injectors: dict[int, Injector] = field(default_factory=dict)
    #: accounts of one KT line reporting forged answers every few minutes all day
    framers: int = 0
    #: addresses each framer reports from (over KT's lines); from each, after its
    #: account's report, also reports without an account and a sensor's report
    framer_addresses: int = 1
    #: ...the reports without an account from other addresses of the same lines instead
    framer_fresh: bool = False
    #: what each subscriber probes, one at random each time
    targets: tuple[tuple[str, int, str, str], ...] = TARGETS
    #: the hours and ports the framers forge on (a box's signature: TTL +1, no marks)
    framer_hours: range = range(24)
    framer_ports: tuple[int, ...] = (80,)
    #: KT subscribers each forged once by a sparse box: the i-th on its first probe to
    #: port ``sparse_ports[i % len]`` from 09 + i o'clock (a tiny share of KT's answers)
    sparse: int = 0
    sparse_ports: tuple[int, ...] = (80,)
    #: the box forges the first ``sparse`` subscribers probing ``sparse_ports`` in this
    #: hour, once each (None: the i-th victim from 09 + i o'clock, as above)
    sparse_hour: int | None = None
    #: the injectors forge only for the first N subscribers of each ASN's first line (0: all)
    victims: int = 0
    #: ...each from this hour (by host number; none: from the injector's first hour)
    victims_from: tuple[int, ...] = ()
    #: subscribers (host numbers) of KT's first line whose probes the sensor reports
    #: instead of the client (without an account)
    sensor_hosts: tuple[int, ...] = ()
    seed: int = 1


def genuine(ev: dict[str, Any], w: World, minute: int, rng: random.Random) -> None:
    ws = ev["request"] == "ws_upgrade"
    plain = ev["target"]["scheme"] in ("ws", "http")
    ev.update(status=101 if ws else 200, header_names=list(WS_HEADERS if ws else WWW_HEADERS),
              server_header="cloudflare", body_sha256=None if ws else "ab" * 32)
    if rng.random() < w.lb_share:
        ev["ttl"] = {"syn_ack": 52, "response": 53}
    for start, length, status, marks in w.outages:
        if start <= minute < start + length and (
                not w.outage_hosts or ev["target"]["host"] in w.outage_hosts):
            if marks:
                ev.update(status=status, header_names=list(CDN_ERROR), body_sha256="11" * 32)
            else:  # a box of the origin's own answering without the CDN
                ev.update(status=status, header_names=["content-type"], server_header="nginx",
                          body_sha256="12" * 32,
                          ttl={"syn_ack": 52, "response": 52 + w.unmarked_ttl_delta})
            return
    if w.maintenance and w.maintenance[0] <= minute < sum(w.maintenance):
        ev.update(status=503, header_names=[*WWW_HEADERS, "retry-after"], body_sha256="33" * 32)
    elif rng.random() < w.error_rate:
        ev.update(status=rng.choice((404, 500, 502)), header_names=list(CDN_ERROR),
                  body_sha256="44" * 32)
    elif plain and not ws and rng.random() < w.redirect_rate:
        ev.update(status=301, header_names=list(REDIRECT), body_sha256=None)


def probe(n: int, src: str, account: str, ts: datetime, target: tuple[str, int, str, str],
          rng: random.Random) -> dict[str, Any]:
    host, port, scheme, request = target
    connect = rng.uniform(8.0, 30.0)
    return {"kind": "http_probe", "event_id": f"p{n}", "ts": ts.isoformat(), "src_ip": src,
            "account": account, "target": {"host": host, "port": port, "scheme": scheme},
            "request": request, "connect_ms": round(connect, 3),
            "ttfb_ms": round(connect + rng.uniform(2.0, 30.0), 3),
            "ttl": {"syn_ack": 52, "response": 52}, "reporter": "client"}


def forge(ev: dict[str, Any], inj: Injector, rng: random.Random) -> None:
    status, headers, body = FORGED[inj.answer]
    ev.update(status=status, header_names=list(headers), server_header=None, body_sha256=body,
              ttfb_ms=round(ev["connect_ms"] * rng.uniform(0.15, 0.6), 3),
              ttl=None if inj.ttl_delta is None else {"syn_ack": 52, "response": 52 + inj.ttl_delta})


def sparse_victim(w: World, src: str, ts: datetime, port: int, done: set[str]) -> bool:
    """Is this probe the one the sparse box forges for its subscriber ``src``?"""
    if w.sparse_hour is not None:  # the first subscribers on those ports in that hour
        if (src in done or len(done) >= w.sparse or ts.hour != w.sparse_hour
                or port not in w.sparse_ports):
            return False
        done.add(src)
        return True
    hosts = [f"{line}.{h}" for h in range(1, w.hosts + 1) for line in lines_of(KT)]
    victims = hosts[: w.sparse]
    if src not in victims or src in done:
        return False
    i = victims.index(src)
    if port != w.sparse_ports[i % len(w.sparse_ports)] or ts.hour < 9 + i:
        return False
    done.add(src)
    return True


def events(w: World) -> Iterator[dict[str, Any]]:
    rng, n = random.Random(w.seed), 0
    done: set[str] = set()
    for minute in range(0, 24 * 60, w.every_min):
        for asn in ISPS:
            inj = w.injectors.get(asn)
            for line in lines_of(asn):
                for host_no in range(1, w.hosts + 1):
                    n += 1
                    ts = DAY0 + timedelta(minutes=minute + rng.uniform(0, w.every_min))
                    target = rng.choice(w.targets)
                    ev = probe(n, f"{line}.{host_no}", f"u{line}.{host_no}", ts, target, rng)
                    genuine(ev, w, minute, rng)
                    if asn == KT and line == lines_of(KT)[0] and host_no in w.sensor_hosts:
                        ev.update(reporter="sensor", account=None)
                    victim = not w.victims or (
                        line == lines_of(asn)[0] and host_no <= w.victims
                        and ts.hour >= dict(enumerate(w.victims_from, 1)).get(host_no, 0))
                    if (inj is not None and victim and ts.hour in inj.hours
                            and target[1] in inj.ports and rng.random() < inj.rate):
                        forge(ev, inj, rng)
                    elif asn == KT and sparse_victim(w, ev["src_ip"], ts, target[1], done):
                        forge(ev, Injector((80, 8080), range(24), "block", 1), rng)
                    yield ev
        for ev in framed(w, minute, rng, n):
            n += 1
            yield ev


def framed(w: World, minute: int, rng: random.Random, n: int) -> Iterator[dict[str, Any]]:
    """The framers' reports in the slot at ``minute``: each framer from its next
    address, on the next of its ports, when the hour is one of theirs; its account's
    report first, then from the same address (``framer_fresh``: from another of the
    line's, one its account never used) one without an account and a sensor's."""
    slot = minute // w.every_min
    ts0 = DAY0 + timedelta(minutes=minute)
    if ts0.hour not in w.framer_hours:
        return
    for k in range(w.framers):
        j = slot % w.framer_addresses
        line, host = lines_of(KT)[j % 2], 100 + 10 * k + j
        port = w.framer_ports[slot % len(w.framer_ports)]
        target = next(t for t in TARGETS if t[1] == port)
        for i, (account, reporter) in enumerate(
                ((f"framer{k}", "client"), (None, "client"), (None, "sensor"))
                if w.framer_addresses > 1 else ((f"framer{k}", "client"),)):
            n += 1
            addr = f"{line}.{host + 100 if w.framer_fresh and not account else host}"
            ev = probe(n, addr, f"framer{k}", ts0 + timedelta(seconds=10 * k + i), target, rng)
            ev.update(account=account, reporter=reporter)
            genuine(ev, w, minute, rng)
            forge(ev, Injector((port,), range(24), "page", 1), rng)
            yield ev


#: flags not held for a later witness (``injection_hold``)
AT_ONCE = "[detectors.injection]\nhold_s = 0\n"


def run(w: World, extra: str = "", restart_at: int | None = None
        ) -> tuple[list[Alert], list[FlaggedEvent]]:
    """Both injection stages over the world's events; with ``restart_at``, their state
    is saved (as JSON) before that event and loaded into a new engine that goes on."""
    cfg = load_config(text=CDN_ORIGINS + extra, env={})
    geo = GeoResolver([CsvPrefixTable.from_lines(io.StringIO(GEO))])

    def engine() -> Engine:
        dets = build_detectors(DetectorContext(cfg, geo), only=["injection", "injection_cells"])
        return Engine(cfg, geo=geo, detectors=dets)

    eng = engine()
    alerts: list[Alert] = []
    flags: list[FlaggedEvent] = []
    for i, raw in enumerate(sorted(events(w), key=lambda e: e["ts"])):
        if i == restart_at:
            saved = json.loads(json.dumps(eng.state()))
            eng = engine()
            eng.load_state(saved)
        found = eng.process(parse_event(raw))
        alerts.extend(found.alerts)
        flags.extend(found.flags)
    tail = eng.flush()
    alerts.extend(tail.alerts)
    flags.extend(tail.flags)
    # (the flags still held for a witness: the end of the input releases them)
    held = next(d for d in eng.session_detectors if d.name == "injection").finish(eng.session_ts)
    flags.extend(held.flags if held else [])
    return alerts, flags


def final(alerts: list[Alert]) -> dict[int, Alert]:
    """The last version of each ASN's alert."""
    out: dict[int, Alert] = {}
    for a in alerts:
        out[a.subject["asn"]] = a
    return out


def test_the_origins_own_failures_across_every_isp_raise_nothing() -> None:
    """A 25-minute CDN outage (503 with the CDN's headers and the SYN-ACK's TTL), a
    maintenance page, genuine 4xx/5xx, redirects to https and a load balancer whose
    answers leave one hop nearer than its SYN-ACKs a third of the time."""
    w = World(outages=[(600, 25, 503, True)], maintenance=(900, 40), error_rate=0.03,
              redirect_rate=0.3, lb_share=0.33)
    alerts, flags = run(w)
    assert flags == [] and alerts == []


def test_an_outage_without_the_cdns_marks_seen_everywhere_is_the_origins() -> None:
    """The origin's fallback box answers every ISP for 25 minutes without the CDN's
    headers and from one hop nearer: it looks forged on each line, but every network
    sees it at once. A few answers before that is clear are held for a witness, and
    the answers of other networks that follow witness them: none is flagged (flagged at
    once, a few are); no ISP is named."""
    alerts, flags = run(World(outages=[(600, 25, 502, False)]))
    assert alerts == [] and flags == []
    alerts, flags = run(World(outages=[(600, 25, 502, False)]), AT_ONCE)
    assert alerts == []
    assert 0 < len(flags) <= 12
    assert {f.ts.astimezone(KST).hour for f in flags} == {10}


def test_two_accounts_cannot_frame_an_isp() -> None:
    alerts, flags = run(World(framers=2))
    assert len(flags) > 100 and {f.account for f in flags} == {"framer0", "framer1"}
    assert alerts == []


def test_six_accounts_reporting_forgeries_name_the_isp() -> None:
    """The control of the framing test: the rule is about distinct sources."""
    alerts, _ = run(World(framers=6))
    assert list(final(alerts)) == [KT]


def sparse_alert(w: World) -> Alert:
    """The one alert of a world whose only injector is the sparse box, checked against
    the forged answers: ports and hours named are among theirs."""
    alerts, flags = run(w)
    forged = [e for e in events(w) if e["server_header"] is None]
    assert len(forged) == len(flags) == w.sparse == len({e["src_ip"] for e in forged})
    plain = [e for e in events(w) if e["src_ip"].startswith(tuple(lines_of(KT)))
             and e["target"]["port"] != 443]
    assert len(plain) > 50 * len(forged)
    [alert] = final(alerts).values()
    assert alert.subject["asn"] == KT
    assert set(alert.subject["ports"]) == {e["target"]["port"] for e in forged}
    hours = {datetime.fromisoformat(e["ts"]).astimezone(KST).hour for e in forged}
    named = {h for a, b in hour_runs(alert.subject["hours"]) for h in range(a, b)}
    assert named and named <= hours
    return alert


def test_a_sparse_box_forging_once_for_each_of_six_subscribers_is_named() -> None:
    """Six forged answers in a day among KT's hundreds of plaintext ones, each from
    another subscriber in another hour: too few for any hourly cell or a rate floor,
    enough distinct sources for a count that TLS and the other ISPs (none flagged)
    cannot explain. Every hour with a forgery is named (none has two sources)."""
    alert = sparse_alert(World(sparse=6))
    assert alert.subject["hours"] == "09–15"


def test_a_sparse_box_spread_over_two_ports_is_named_on_both() -> None:
    """Eight subscribers forged once each, four on port 80 and four on 8080: no port
    has five sources, the ASN's all-port cell has eight (the cells of fewer sources
    that the exact tails find are there too, each under five: suspected only)."""
    alert = sparse_alert(World(sparse=8, sparse_ports=(80, 8080)))
    cells = {(c["prefix"], c["port"], c["hour"]): c for c in alert.evidence["cells"]}
    assert cells[("*", None, None)]["suspect_clients"] >= 5
    assert all(c["suspect_clients"] < 5 for k, c in cells.items() if k != ("*", None, None))
    assert alert.evidence["level"] == "confirmed"


def hour_runs(text: str) -> list[tuple[int, int]]:
    """``"09–11, 14–15"`` as ``[(9, 11), (14, 15)]`` (no run wraps in these tests)."""
    return [(int(a), int(b)) for a, b in (r.split("–") for r in text.split(", "))]


def test_four_subscribers_forged_once_each_are_suspected_at_most() -> None:
    """Under ``min_suspect_clients`` (5) distinct sources, and no sensor witness, the
    count confirms nothing: four forged answers the other ISPs' baselines cannot
    explain are a suspected alert at most (low, "could be collusion")."""
    alerts, flags = run(World(sparse=4))
    assert len(flags) == 4
    assert {a.evidence["level"] for a in alerts} <= {"suspected"}
    assert {a.severity for a in alerts} <= {"low"}
    assert all("could be collusion" in a.summary for a in alerts)


INJECTORS = {
    KT: Injector((80,), range(20, 24), "redirect", None),
    SKB: Injector((8080,), range(9, 13), "block", 2),
    LGU: Injector((80, 8080), range(14, 18), "page", 0, rate=0.5),
}


@pytest.fixture(scope="module")
def three_injectors() -> tuple[list[Alert], list[FlaggedEvent]]:
    return run(World(injectors=INJECTORS, outages=[(15 * 60, 30, 503, True)],
                     error_rate=0.02, redirect_rate=0.2, seed=7))


def test_each_injecting_isp_is_named_with_its_own_ports_and_hours(
        three_injectors: tuple[list[Alert], list[FlaggedEvent]]) -> None:
    alerts, _ = three_injectors
    got = final(alerts)
    assert sorted(got) == sorted(INJECTORS)
    assert len({a.alert_id for a in alerts}) == 3
    expected = {KT: ([80], "20–24"), SKB: ([8080], "09–13"), LGU: ([80, 8080], "14–18")}
    for asn, alert in got.items():
        assert (alert.subject["ports"], alert.subject["hours"]) == expected[asn], asn
        assert set(alert.subject["prefixes"]) <= {f"{p}.0/24" for p in lines_of(asn)}


def test_forgeries_of_every_kind_are_flagged_and_nothing_else(
        three_injectors: tuple[list[Alert], list[FlaggedEvent]]) -> None:
    _, flags = three_injectors
    by_asn: dict[int | None, set[int]] = {}
    for f in flags:
        by_asn.setdefault(f.asn, set()).add(f.ts.astimezone(KST).hour)
    assert set(by_asn) == set(INJECTORS)
    for asn, hours in by_asn.items():
        assert hours <= set(INJECTORS[asn].hours), asn
    kt = [f for f in flags if f.asn == KT]
    assert all("ttl_delta" not in f.evidence and "origin_marks" in f.evidence for f in kt)
    skb = next(f for f in flags if f.asn == SKB)
    assert skb.evidence["ttl_delta"]["delta"] == 2
    assert skb.evidence["ttl_delta"]["expected_deltas"] == [0]
    assert skb.evidence["fast_answer"]["ttfb_ms"] < skb.evidence["fast_answer"]["expected_min_ms"]


@pytest.mark.parametrize("framers", [2, 3])
def test_colluding_accounts_with_many_addresses_cannot_frame_an_isp(framers: int) -> None:
    """Two (three) colluding accounts forge a box's telemetry against a clean KT: TTL
    one higher, none of the CDN's marks, a fast answer, on both plaintext ports, in the
    same evening hours, each from four addresses over both of KT's lines, and from each
    address also a report without an account and a sensor's. Many forged-looking
    answers from 8 (12) addresses on two lines are still 2 (3) sources: nothing (a
    suspected alert, never a confirmed one)."""
    alerts, flags = run(World(framers=framers, framer_addresses=4, framer_hours=range(18, 23),
                              framer_ports=(80, 8080)))
    assert len(flags) == 45 * framers
    assert len({f.src_ip for f in flags}) == 4 * framers
    assert {f.evidence["reporter"] for f in flags} == {"client", "sensor"}
    assert {f.account for f in flags} == {None, *(f"framer{k}" for k in range(framers))}
    framed_at_most_suspected(alerts, framers)


def framed_at_most_suspected(alerts: list[Alert], framers: int) -> None:
    """Two colluders raise nothing; three, a suspected alert at most (the sensor's
    reports from their own lines witness nothing), every version of it low."""
    if framers == 2:
        assert alerts == []
        return
    assert alerts and {a.evidence["level"] for a in alerts} == {"suspected"}
    assert {a.severity for a in alerts} == {"low"}
    last = final(alerts)[KT]
    assert last.summary.startswith("suspected, 3 sources")
    assert (last.evidence["sources"]["distinct"], last.evidence["sources"]["sensor_witnesses"]) \
        == (3, 0)


def few_victims(victims: int, sensor_hosts: tuple[int, ...] = ()) -> list[Alert]:
    """KT's box forges every block page on ports 80 and 8080 from 10 to 18 o'clock, only
    for the first ``victims`` subscribers of one line (the sensor reports for
    ``sensor_hosts``)."""
    w = World(injectors={KT: Injector((80, 8080), range(10, 18), "block", 1, rate=1.0)},
              victims=victims,
              sensor_hosts=sensor_hosts, seed=5)
    alerts, flags = run(w)
    assert len({f.src_ip for f in flags}) == victims
    return alerts


def test_three_subscribers_forged_are_suspected_only() -> None:
    """Three sources are as many as three colluding accounts: a low alert that says so,
    with the box's port and hours."""
    alerts = few_victims(3)
    last = final(alerts)[KT]
    assert (last.evidence["level"], last.severity) == ("suspected", "low")
    assert (last.subject["ports"], last.subject["hours"]) == ([80, 8080], "10–18")
    assert "could be collusion" in last.summary


def test_a_sensor_witness_among_three_sources_confirms_the_isp() -> None:
    """One of the three victims' forged answers is seen by the operator's sensor on a
    line no reporting account used: no account can write that, and the ISP is confirmed
    (the suspected version comes first, the confirmed one raises the same alert)."""
    alerts = few_victims(3, sensor_hosts=(2,))
    last = final(alerts)[KT]
    assert last.evidence["level"] == "confirmed"
    assert last.evidence["sources"] == {"distinct": 3, "sensor_witnesses": 1,
                                        "confirmed_from": 5, "suspected_from": 3,
                                        "witnesses_to_confirm": 1}
    assert (last.subject["ports"], last.subject["hours"]) == ([80, 8080], "10–18")
    assert len({a.alert_id for a in alerts}) == 1


def test_the_level_and_the_witnesses_survive_a_restart() -> None:
    """Three subscribers' clients report forged answers from 10 o'clock (suspected); the
    box forges for a fourth, whose probes the sensor reports, from 14 (confirmed). Saved
    at noon, between the two, the restored stages go on to the same versions."""
    w = World(injectors={KT: Injector((80, 8080), range(10, 18), "block", 1, rate=1.0)},
              victims=4, victims_from=(10, 10, 10, 14), sensor_hosts=(4,), seed=5)
    whole, _ = run(w)
    noon = sum(1 for e in events(w) if datetime.fromisoformat(e["ts"]).hour < 12)
    restarted, _ = run(w, restart_at=noon)
    levels = [(a.version, a.evidence["level"], a.subject["hours"]) for a in whole]
    assert [(a.version, a.evidence["level"], a.subject["hours"]) for a in restarted] == levels
    assert levels[0][1] == "suspected" and levels[-1][1] == "confirmed"


def test_two_subscribers_forged_name_nobody_even_with_a_sensor_witness() -> None:
    assert few_victims(2, sensor_hosts=(2,)) == []


def test_a_sparse_box_forging_five_subscribers_in_one_hour_is_named() -> None:
    """Five subscribers on both KT lines forged once each between 14:00 and 15:00, on
    ports 80 and 8080, in an ISP whose subscribers probe mostly plaintext (a quarter
    TLS): no port's cell has five sources, and the ASN's own TLS probes are about a third
    as many as its plaintext ones, too few to tell five forged answers in hundreds
    from a path that marks TLS as often. Topped up with the other ISPs' TLS answers
    (none anomalous), the control is as large as the cell, and KT is named; with the
    ISP's own TLS alone and Newcombe's interval only (no exact tails) it is not."""
    plain = tuple(t for t in TARGETS if t[1] != 443)
    w = World(sparse=5, sparse_ports=(80, 8080), sparse_hour=14, seed=3,
              targets=plain * 2 + TARGETS[3:])
    alert = sparse_alert(w)
    assert (alert.subject["ports"], alert.subject["hours"]) == ([80, 8080], "14–15")
    assert len(alert.subject["prefixes"]) == 2
    alerts, _ = run(w, "[detectors.injection_cells]\ntls_borrow = false\nalpha = 0.0\n")
    assert alerts == []


@pytest.mark.parametrize("framers", [2, 3])
def test_reports_without_an_account_vouch_for_their_line_when_configured(framers: int) -> None:
    """The framers send their reports without an account from addresses their accounts
    never used: counted by address (the default), each address is one more source and
    KT is framed; with ``anonymous_sources = "line"`` they vouch for their line, the
    line for the account that reported from it, and no ISP is confirmed."""
    w = World(framers=framers, framer_addresses=4, framer_hours=range(18, 23),
              framer_ports=(80, 8080), framer_fresh=True)
    alerts, flags = run(w)
    assert len({f.src_ip for f in flags}) == 8 * framers
    assert list(final(alerts)) == [KT]
    alerts, _ = run(w, '[detectors.injection_cells]\nanonymous_sources = "line"\n')
    framed_at_most_suspected(alerts, framers)


def three_in_one_hour(sensor_hosts: tuple[int, ...] = ()) -> Alert:
    """KT's box forges one answer each for three subscribers of one line between 14:00
    and 15:00: three of KT's hundreds of plaintext answers that day, too few for
    Newcombe's interval against the other ISPs and TLS taken at the cell's own size,
    and far above the other ISPs' baselines (none flagged) in the exact tails."""
    w = World(sparse=3, sparse_ports=(80, 8080), sparse_hour=14, seed=3,
              sensor_hosts=sensor_hosts)
    alerts, flags = run(w)
    assert len(flags) == 3 == len({f.src_ip for f in flags})
    assert run(w, "[detectors.injection_cells]\nalpha = 0.0\n")[0] == []
    last = final(alerts)[KT]
    assert (last.subject["ports"], last.subject["hours"]) == ([80], "14–15")
    return last


def test_three_subscribers_forged_once_in_one_hour_are_suspected_by_the_exact_tails() -> None:
    last = three_in_one_hour()
    assert (last.evidence["level"], last.severity) == ("suspected", "low")
    assert last.evidence["sources"]["distinct"] == 3
    assert "could be collusion" in last.summary


def test_three_subscribers_forged_once_with_a_sensor_witness_are_confirmed() -> None:
    """The same three, on a line whose probes the operator's sensor reports (no account
    reported from it): each is a witness, and KT is confirmed."""
    last = three_in_one_hour(sensor_hosts=tuple(range(1, 7)))
    assert last.evidence["level"] == "confirmed"
    assert last.evidence["sources"]["sensor_witnesses"] == 3


def test_an_outage_flagging_three_subscribers_of_one_isp_names_nobody() -> None:
    """A 40-minute outage without the CDN's marks, every ISP probing every 5 minutes:
    before it is seen everywhere, the first answers of several ISPs are flagged, three
    subscribers' of one ISP among them. Enough sources for a suspected alert, yet the
    other ISPs at the same minutes show the same: nobody is named. (The box's answers,
    one hop nearer than its SYN-ACK and no sooner than the round trip, are the
    origin's once another network got them so, from either host: ``late_witness`` and
    ``witness_origins`` are off here, and flags are not held for a later witness, so
    that they stay flagged.)"""
    alerts, flags = run(World(outages=[(600, 40, 502, False)], every_min=5),
                        AT_ONCE + "late_witness = false\nwitness_origins = false\n")
    sources: dict[int | None, set[str | None]] = {}
    for f in flags:
        sources.setdefault(f.asn, set()).add(f.src_ip)
    assert max(len(s) for s in sources.values()) >= 3 and len(sources) >= 3
    assert {f.ts.astimezone(KST).hour for f in flags} == {10}
    assert alerts == []
