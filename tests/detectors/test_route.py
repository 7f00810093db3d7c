"""Hop-country routes on small simulated paths built from latency physics.

Each hop's RTT is the fibre leg from the probing end to where the router really
is (not where its address geolocates), plus per-hop processing; squatted hops sit
in Seoul with a Chinese registration, rate-limited hops answer one probe late.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from pathsentry.config import Config, load_config
from pathsentry.detectors.base import DetectorContext, Enriched, Findings
from pathsentry.detectors.physics import great_circle_km
from pathsentry.detectors.route import RouteDetector, compress
from pathsentry.enrich.enricher import Enricher
from pathsentry.enrich.geo import CsvPrefixTable, GeoResolver
from pathsentry.schemas import parse_event
from tests.fixtures import server_toml

SEOUL = (37.5665, 126.9780)
SHANGHAI = (31.2304, 121.4737)
BEIJING = (39.9042, 116.4074)

CONFIG = 'home_countries = ["KR"]\n' + server_toml("kr-sel-1") + """
[[allow]]
cidr = "203.0.113.0/24"
reason = "game relay network"
"""

GEO = """cidr,country,asn,as_name,lat,lon,kind
211.234.0.0/16,KR,4766,Korea Telecom,37.5665,126.9780,residential
112.174.0.0/16,KR,4766,Korea Telecom,37.5665,126.9780,business
202.97.1.0/24,CN,4134,Chinanet,31.2304,121.4737,business
202.97.2.0/24,CN,4134,Chinanet,31.2304,121.4737,business
219.158.1.0/24,CN,4837,China Unicom,39.9042,116.4074,business
58.40.1.0/24,CN,4812,China Telecom SH,31.2304,121.4737,business
36.110.1.0/24,CN,4134,Chinanet,31.2304,121.4737,residential
203.0.113.0/24,KR,64511,Relay Net,37.5665,126.9780,hosting
"""

#: A router: its address and where it really is.
Router = tuple[str, tuple[float, float]]

KR_CORE: list[Router] = [("112.174.1.1", SEOUL), ("112.174.2.1", SEOUL)]
CN_EDGE: list[Router] = [("202.97.1.1", SHANGHAI), ("202.97.1.77", SHANGHAI)]
SQUATTED: Router = ("58.40.1.9", SEOUL)  # registered in Shanghai, racked in Seoul


def _ms(a: tuple[float, float], b: tuple[float, float]) -> float:
    return great_circle_km(*a, *b) * 2.0 / 100.0


@dataclass
class Lab:
    cfg: Config
    det: RouteDetector
    enricher: Enricher
    rng: random.Random = field(default_factory=lambda: random.Random(4))
    n: int = 0

    def _event(self, kind: str, src: str, session: str, **kw: Any) -> Enriched:
        self.n += 1
        raw = {"kind": kind, "event_id": f"{kind}-{self.n}", "session_id": session,
               "ts": f"2026-11-22T21:{self.n // 60:02d}:{self.n % 60:02d}+09:00",
               "src_ip": src, **kw}
        return self.enricher.enrich(parse_event(raw))

    def hops(self, routers: list[Router], origin: tuple[float, float],
             spike_at: str | None = None, samples: int = 3) -> list[dict[str, Any]]:
        """Hops in probing order, RTTs measured from ``origin``; ``spike_at`` is an address."""
        out = []
        for i, (ip, where) in enumerate(routers):
            base = _ms(origin, where) + 0.3 * (i + 1)
            rtts = [round(base + self.rng.expovariate(1 / 0.3), 3) for _ in range(samples)]
            if spike_at == ip:
                rtts[1] = round(rtts[1] + 180.0, 3)  # ICMP rate limit on the router's CPU
            out.append({"ttl": i + 1, "ip": ip, "rtt_ms": rtts})
        return out

    def traceroute(self, src: str, session: str, routers: list[Router],
                   direction: str = "server_to_client", client_at: tuple[float, float] = SEOUL,
                   **kw: Any) -> tuple[Enriched, Findings]:
        if direction == "server_to_client":
            hops = self.hops(list(reversed(routers)), SEOUL, **kw)
            vantage = "kr-sel-1"
        else:
            hops = self.hops(routers, client_at, **kw)
            vantage = "client"
        ev = self._event("traceroute", src, session, vantage_id=vantage, direction=direction,
                         hops=hops)
        return ev, self.det.process(ev) or Findings()

    def login(self, src: str, session: str, account: str) -> tuple[Enriched, Findings]:
        ev = self._event("login", src, session, account=account, server_id="kr-sel-1",
                         app_rtt_ms=[20.0, 21.0], tcp_rtt_ms=20.0)
        return ev, self.det.process(ev) or Findings()


def _lab() -> Lab:
    cfg = load_config(text=CONFIG, env={})
    geo = GeoResolver([CsvPrefixTable.from_lines(io.StringIO(GEO))])
    return Lab(cfg, RouteDetector(DetectorContext(cfg, geo)), Enricher(cfg, geo))


@pytest.fixture
def lab() -> Lab:
    return _lab()


def test_foreign_origin_before_home_exit_is_flagged(lab: Lab) -> None:
    ev, out = lab.traceroute("211.234.5.6", "f1", CN_EDGE + KR_CORE)
    route = ev.notes["route"]
    assert route["country_path"] == ["CN", "KR"]
    assert route["asn_path"] == [4134, 4766]
    assert route["foreign_origin"] is True
    assert route["last_foreign_prefix"] == "202.97.1.0/24"
    assert [f.kind for f in out.flags] == ["route_anomaly"]
    flag = out.flags[0]
    assert flag.event_id == ev.event.event_id and flag.score >= 0.8
    assert flag.evidence["country_path"] == ["CN", "KR"]
    assert "CN → KR" in flag.reasons[0]
    assert out.alerts[0].subject == {"prefix": "211.234.5.0/24"}


def test_client_run_traceroute_is_read_from_the_client_end(lab: Lab) -> None:
    login, _ = lab.login("211.234.5.7", "f2", "xiaopai002")
    ev, out = lab.traceroute("211.234.5.7", "f2", CN_EDGE + KR_CORE,
                             direction="client_to_server", client_at=SHANGHAI)
    assert ev.notes["route"]["foreign_origin"] is True
    assert ev.notes["route"]["gate"] == "destination"
    assert ev.notes["account"] == "xiaopai002"
    assert ev.notes["login_event_id"] == login.event.event_id
    assert out.flags[0].account == "xiaopai002"
    assert out.alerts[0].subject == {"prefix": "211.234.5.0/24"}
    assert out.alerts[0].accounts == ["xiaopai002"]


def _alert_ids(lab: Lab, traceroute_first: bool) -> tuple[set[str], list[str]]:
    ids: set[str] = set()
    accounts: list[str] = []
    steps = [lambda: lab.traceroute("211.234.5.8", "o1", CN_EDGE + KR_CORE)[1],
             lambda: lab.login("211.234.5.8", "o1", "xiaopai003")[1]]
    for step in steps if traceroute_first else steps[::-1]:
        for alert in step().alerts:
            ids.add(alert.alert_id)
            accounts = alert.accounts
    return ids, accounts


def test_route_alert_subject_does_not_depend_on_arrival_order() -> None:
    """The stream may deliver a session's traceroute before or after its login."""
    first = _alert_ids(_lab(), traceroute_first=True)
    second = _alert_ids(_lab(), traceroute_first=False)
    assert len(first[0]) == 1 and first[0] == second[0]
    assert first[1] == second[1] == ["xiaopai003"]


def test_home_route_is_not_flagged_and_still_gets_a_signature(lab: Lab) -> None:
    ev, out = lab.traceroute("211.234.9.9", "h1", KR_CORE)
    assert not out
    assert ev.notes["route"]["country_path"] == ["KR"]
    assert ev.notes["route"]["foreign_origin"] is False
    assert len(ev.notes["route"]["signature"]) == 16


def test_squatted_hop_is_gated_not_counted(lab: Lab) -> None:
    """A CN-registered router 0.8 ms from Seoul cannot be in Shanghai."""
    ev, out = lab.traceroute("211.234.9.10", "q1", [SQUATTED, *KR_CORE])
    route = ev.notes["route"]
    assert not out.flags
    assert route["gated_hops"] == [3]  # reversed: the squatted hop is farthest from the server
    assert route["country_path"] == ["KR"]


def test_icmp_spike_does_not_let_a_squatted_hop_through(lab: Lab) -> None:
    """One rate-limited sample would stretch a mean or max bound to 18,000 km."""
    ev, out = lab.traceroute("211.234.9.11", "q2", [SQUATTED, *KR_CORE],
                                   spike_at=SQUATTED[0])
    assert not out.flags
    assert 3 in ev.notes["route"]["gated_hops"]


def test_icmp_spike_on_a_home_hop_changes_nothing(lab: Lab) -> None:
    ev, out = lab.traceroute("211.234.9.12", "q3", KR_CORE, spike_at=KR_CORE[1][0])
    assert not out and ev.notes["route"]["country_path"] == ["KR"]


def test_hops_with_too_few_samples_are_unverified(lab: Lab) -> None:
    ev, out = lab.traceroute("211.234.9.13", "u1", CN_EDGE + KR_CORE, samples=2)
    assert not out.flags
    assert ev.notes["route"]["country_path"] == []


def test_foreign_client_on_foreign_route_is_not_a_relay(lab: Lab) -> None:
    """A Chinese address on a Chinese path hides nothing."""
    ev, out = lab.traceroute("36.110.1.5", "c1", CN_EDGE + KR_CORE)
    assert ev.notes["route"]["country_path"] == ["CN", "KR"]
    assert ev.notes["route"]["foreign_origin"] is False
    assert not out


def test_allow_listed_relay_is_not_flagged(lab: Lab) -> None:
    ev, out = lab.traceroute("203.0.113.20", "a1", CN_EDGE + KR_CORE)
    assert ev.notes["route"]["foreign_origin"] is True
    assert not out
    assert "game relay network" in ev.notes["route"]["suppressed"]


def test_login_after_traceroute_gets_route_and_flag_gains_account(lab: Lab) -> None:
    tr, out1 = lab.traceroute("211.234.5.8", "j1", CN_EDGE + KR_CORE)
    assert out1.flags[0].account is None
    login, out2 = lab.login("211.234.5.8", "j1", "xiaopai003")
    assert login.notes["route"] == tr.notes["route"]
    assert out2.flags[0].event_id == tr.event.event_id
    assert out2.flags[0].account == "xiaopai003"
    assert out2.alerts[0].alert_id == out1.alerts[0].alert_id
    assert out2.alerts[0].accounts == ["xiaopai003"] and out2.alerts[0].version == 2


def test_same_relay_same_signature_other_relay_other_signature(lab: Lab) -> None:
    a, _ = lab.traceroute("211.234.5.10", "g1", CN_EDGE + KR_CORE)
    b, _ = lab.traceroute("211.234.5.11", "g2", CN_EDGE + KR_CORE)
    other = [("202.97.2.1", SHANGHAI), *KR_CORE]
    c, _ = lab.traceroute("211.234.5.12", "g3", other)
    assert a.notes["route"]["signature"] == b.notes["route"]["signature"]
    assert c.notes["route"]["signature"] != a.notes["route"]["signature"]


def test_one_alert_per_account_updated_not_duplicated(lab: Lab) -> None:
    alerts = []
    for i in range(3):
        lab.login("211.234.5.20", f"r{i}", "bot07")
        _, out = lab.traceroute("211.234.5.20", f"r{i}", CN_EDGE + KR_CORE)
        alerts.extend(out.alerts)
    assert len({a.alert_id for a in alerts}) == 1
    assert [a.version for a in alerts] == [1, 2, 3]
    assert len(alerts[-1].event_ids) == 3


def test_state_round_trip_keeps_session_joins(lab: Lab) -> None:
    tr, _ = lab.traceroute("211.234.5.30", "s9", CN_EDGE + KR_CORE)
    snap = json.loads(json.dumps(lab.det.state()))
    fresh = RouteDetector(lab.det.ctx)
    fresh.load_state(snap)
    lab.det = fresh
    login, out = lab.login("211.234.5.30", "s9", "restart01")
    assert login.notes["route"]["signature"] == tr.notes["route"]["signature"]
    assert out.alerts[0].version == 2


def test_compress_merges_runs_only() -> None:
    assert compress(["CN", "KR", "CN", "CN"]) == ["CN", "KR", "CN"]


def test_sessions_of_a_moved_partition_join_on_their_next_owner(lab: Lab) -> None:
    """The traceroute ran on one worker, the session's partition moved, the login runs on
    the next owner: with the partition's sessions handed over the login still gets the
    route and the flag its account; the previous owner forgets them."""
    tr, _ = lab.traceroute("211.234.5.40", "moved-1", CN_EDGE + KR_CORE)
    lab.traceroute("211.234.5.41", "stays-1", CN_EDGE + KR_CORE)

    def part_of(session_id: str) -> int:
        return 0 if session_id.startswith("moved") else 1

    shares = json.loads(json.dumps(lab.det.session_state(part_of, [0])))
    assert [k for k, _ in shares["0"]["sessions"]] == ["moved-1"]
    old = lab.det
    for handed_over in (True, False):
        lab.det = RouteDetector(old.ctx)
        if handed_over:
            lab.det.load_sessions(shares["0"])
        login, out = lab.login("211.234.5.40", "moved-1", "moved01")
        if handed_over:
            assert login.notes["route"]["signature"] == tr.notes["route"]["signature"]
            assert out.flags[0].event_id == tr.event.event_id
            assert out.flags[0].account == "moved01"
        else:
            assert "route" not in login.notes and not out.flags
    assert old.drop_sessions(part_of, [0]) == 1
    assert list(old.sessions) == ["stays-1"]
