"""Relay detection on small simulated worlds built from latency physics.

Every RTT below is ``great circle x inflation / 100 + access + jitter`` for the
path the packets really travel: an L4 relay's TCP leg stops at the relay, an L3
VPN's every layer goes through the exit, split-tunnel probes reach the client.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from typing import Any

import pytest

from pathsentry.config import Config, load_config
from pathsentry.detectors.base import DetectorContext, Enriched, Findings
from pathsentry.detectors.latency import BoundedLRU, LatencyDetector, feasible_region
from pathsentry.detectors.physics import great_circle_km
from pathsentry.enrich.enricher import Enricher
from pathsentry.enrich.geo import CsvPrefixTable, GeoResolver
from pathsentry.schemas import parse_event
from tests.fixtures import server_toml

SEOUL = (37.5665, 126.9780)
BUSAN = (35.1796, 129.0756)
TOKYO = (35.6762, 139.6503)
SHANGHAI = (31.2304, 121.4737)
GANGWON = (37.75, 128.90)

CONFIG = 'home_countries = ["KR"]\n' + server_toml("kr-sel-1", "kr-pus-1", "jp-tyo-1", "cn-sha-1") + """
[[allow]]
cidr = "203.0.113.0/24"
reason = "cloud-gaming provider (contract 2026-04)"
[detectors.latency]
warmup_samples = 20
"""

#: cidr, country, asn, lat, lon, kind
GEO_ROWS = [
    ("211.234.1.0/24", "KR", 4766, *SEOUL, "residential"),
    ("211.234.2.0/24", "KR", 4766, *SEOUL, "residential"),
    ("211.234.3.0/24", "KR", 4766, *SEOUL, "residential"),
    ("121.180.5.0/24", "KR", 4766, *GANGWON, "residential"),
    ("223.38.0.0/24", "KR", 9644, *SEOUL, "mobile"),
    ("45.64.1.0/24", "KR", 38700, *SEOUL, "hosting"),
    ("203.0.113.0/24", "KR", 64511, *SEOUL, "hosting"),
    ("175.200.1.0/24", "KR", 4766, *BUSAN, "business"),
    ("58.120.0.0/16", "KR", 4766, *SEOUL, "residential"),
    ("223.39.0.0/16", "KR", 9644, *SEOUL, "mobile"),
    ("45.65.0.0/16", "KR", 38701, *SEOUL, "hosting"),
]


def _table() -> CsvPrefixTable:
    lines = ["cidr,country,asn,as_name,lat,lon,kind"]
    lines += [f"{c},{cc},{asn},AS{asn},{la},{lo},{k}" for c, cc, asn, la, lo, k in GEO_ROWS]
    return CsvPrefixTable.from_lines(io.StringIO("\n".join(lines) + "\n"))


def leg_ms(a: tuple[float, float], b: tuple[float, float], inflation: float = 2.0) -> float:
    return great_circle_km(*a, *b) * inflation / 100.0


@dataclass
class World:
    """A tiny event generator with explicit physics and a detector under test."""

    cfg: Config
    det: LatencyDetector
    enricher: Enricher
    rng: random.Random
    n: int = 0

    def enrich(self, raw: dict[str, Any]) -> Enriched:
        return self.enricher.enrich(parse_event(raw))

    def _base(self, kind: str, ip: str, session: str, **kw: Any) -> dict[str, Any]:
        self.n += 1
        minute, second = divmod(self.n, 60)
        return {"kind": kind, "event_id": f"{kind}-{self.n}", "session_id": session,
                "ts": f"2026-11-22T{10 + minute // 60:02d}:{minute % 60:02d}:{second:02d}+09:00",
                "src_ip": ip, **kw}

    def samples(self, base: float, jitter: float, n: int = 5, spike_p: float = 0.0) -> list[float]:
        out = []
        for _ in range(n):
            extra = self.rng.expovariate(1.0 / jitter) if jitter > 0 else 0.0
            if spike_p and self.rng.random() < spike_p:
                extra += self.rng.uniform(10.0, 60.0)
            out.append(round(base + extra, 3))
        return out

    def login(self, account: str, ip: str, app: list[float], tcp: float | None,
              session: str | None = None, server: str = "kr-sel-1") -> tuple[Enriched, Findings]:
        sid = session or f"s{self.n + 1}"
        ev = self.enrich(self._base("login", ip, sid, account=account, server_id=server,
                                    app_rtt_ms=app, tcp_rtt_ms=tcp))
        return ev, self.det.process(ev) or Findings()

    def probe(self, ip: str, session: str, vantage: str, rtt: list[float],
              method: str = "app") -> Findings:
        ev = self.enrich(self._base("rtt_probe", ip, session, vantage_id=vantage,
                                    method=method, rtt_ms=rtt))
        return self.det.process(ev) or Findings()

    def direct(self, account: str, ip: str, where: tuple[float, float], access: float,
               jitter: float = 0.3, spike_p: float = 0.0) -> tuple[Enriched, Findings]:
        """A genuine client at ``where``: every layer sees the same path."""
        base = leg_ms(SEOUL, where) + access
        app = self.samples(base, jitter, spike_p=spike_p)
        tcp = round(min(app) + self.rng.uniform(0.0, 2.0 * jitter), 3)
        return self.login(account, ip, app, tcp)

    def warm(self, prefix: str, where: tuple[float, float], access: tuple[float, float],
             n: int = 30, jitter: float = 0.3) -> None:
        for i in range(n):
            host = 10 + i % 200
            _, out = self.direct(f"warm{prefix}{i}", f"{prefix}.{host}", where,
                                  self.rng.uniform(*access), jitter)
            assert not out.flags, out.flags[0].reasons


def warm_server(w: World, n: int = 30, server: str = "kr-sel-1") -> None:
    """Honest Seoul players from ``n`` different /24s teach the server's app overhead."""
    for i in range(n):
        base = leg_ms(SEOUL, SEOUL) + w.rng.uniform(1.0, 4.0)
        app = w.samples(base, 0.3)
        w.login(f"local{i}", f"58.120.{i}.{10 + i}", app,
                round(min(app) + w.rng.uniform(0.0, 0.6), 3), server=server)


def make_world(seed: int = 1, **settings: Any) -> World:
    cfg = load_config(text=CONFIG, env={})
    if settings:
        dets = {**cfg.detectors, "latency": {**cfg.detectors.get("latency", {}), **settings}}
        cfg = cfg.model_copy(update={"detectors": dets})
    geo = GeoResolver([_table()])
    return World(cfg, LatencyDetector(DetectorContext(cfg, geo)), Enricher(cfg, geo),
                 random.Random(seed))


@pytest.fixture
def world() -> World:
    w = make_world()
    warm_server(w)
    w.warm("211.234.1", SEOUL, (1.0, 4.0))
    return w


# -- attacks -------------------------------------------------------------------


def test_l4_relay_is_flagged_with_tcp_app_gap(world: World) -> None:
    """A Shanghai client behind a Seoul SOCKS relay: TCP ends at the relay."""
    tcp = round(leg_ms(SEOUL, SEOUL) + 0.3, 3)
    app = world.samples(tcp + leg_ms(SEOUL, SHANGHAI) + 3.0, 0.5)
    ev, out = world.login("xiaopai001", "45.64.1.20", app, tcp)
    assert [f.kind for f in out.flags] == ["vpn_relay"]
    flag = out.flags[0]
    assert flag.event_id == ev.event.event_id
    assert flag.score >= 0.85
    gap = flag.evidence["gap"]
    assert gap["verdict"] == "relay"
    assert gap["gap_km"] > 1500
    assert "TCP terminates" in flag.reasons[0]
    assert ev.notes["relay"]["flagged"] is True
    assert ev.notes["relay"]["exit_prefix"] == "45.64.1.0/24"
    assert ev.notes["relay"]["gap_ms"] == pytest.approx(min(app) - tcp, abs=0.01)
    assert out.alerts and out.alerts[0].subject == {"account": "xiaopai001"}
    assert flag.alert_id == out.alerts[0].alert_id


def test_l3_vpn_from_abroad_via_hosting_exit_breaks_physics(world: World) -> None:
    """Tunnel from Shanghai to a Seoul VPS: tcp == app, both far above a DC's RTT."""
    rtt = leg_ms(SEOUL, SEOUL) + 0.3 + leg_ms(SEOUL, SHANGHAI) + 4.0
    app = world.samples(rtt, 0.6)
    ev, out = world.login("wanderer", "45.64.1.30", app, round(min(app) + 0.2, 3))
    assert out.flags, ev.notes["relay"]
    phys = out.flags[0].evidence["physics"]
    assert phys["verdict"] == "detour"
    assert phys["excess_km"] > 1000
    assert out.flags[0].evidence["baseline"]["used"] is None  # no prefix history yet


def test_l3_vpn_via_residential_exit_stands_out_of_its_prefix_baseline(world: World) -> None:
    rtt = leg_ms(SEOUL, SHANGHAI) + 2.0 + leg_ms(SEOUL, SEOUL) + 1.0
    app = world.samples(rtt, 0.5)
    ev, out = world.login("farmer", "211.234.1.99", app, round(min(app) + 0.3, 3))
    assert out.flags, ev.notes["relay"]
    base = out.flags[0].evidence["baseline"]
    assert base["used"] == "prefix"
    level = base["levels"][0]
    assert level["samples"] >= 20 and level["excess_ms"] > 10
    assert any("p90" in r for r in out.flags[0].reasons)


def test_split_tunnel_probes_violate_vantage_disks(world: World) -> None:
    """Probes that reach the real client (Shanghai) contradict a Seoul claim."""
    rtt = leg_ms(SEOUL, SHANGHAI) + 2.0
    ev, out = world.login("tourist", "211.234.2.40", world.samples(rtt, 0.4), rtt + 0.5,
                          session="sp-1")
    assert not out.flags  # prefix is cold and the ASN fallback alone is not enough
    late = world.probe("211.234.2.40", "sp-1", "cn-sha-1", world.samples(1.5, 0.2))
    late.extend(world.probe("211.234.2.40", "sp-1", "jp-tyo-1",
                            world.samples(leg_ms(TOKYO, SHANGHAI) + 1.5, 0.2)))
    assert late.flags, "a late probe must re-assess the session's login"
    flag = late.flags[-1]
    assert flag.event_id == ev.event.event_id
    vant = flag.evidence["vantages"]
    assert vant["verdict"] == "violated" and "cn-sha-1" in vant["violated"]
    region = vant["feasible_region"]
    assert region is not None
    assert great_circle_km(region["centroid"][0], region["centroid"][1], *SHANGHAI) < 400


def test_probe_answered_by_vpn_endpoint_shows_a_network_layer_gap(world: World) -> None:
    """ICMP to an L3 exit is answered by the VPN server, the game packets go on."""
    rtt = leg_ms(SEOUL, SHANGHAI) + 3.0
    world.probe("211.234.3.7", "sg-1", "kr-sel-1", [0.9, 1.0, 1.1], method="icmp")
    _, out = world.login("hidden", "211.234.3.7", world.samples(rtt, 0.4), rtt + 0.4,
                          session="sg-1")
    assert out.flags
    assert out.flags[0].evidence["gap"]["source"] == "icmp probe"
    assert "the network layer answers" in out.flags[0].reasons[0]


def test_repeated_relay_sessions_raise_the_account_score_and_update_one_alert(
    world: World,
) -> None:
    """A Busan client behind a Seoul relay: each session alone is moderate evidence."""
    tcp = 0.5
    app = [round(tcp + leg_ms(SEOUL, BUSAN) + 4.0 + 0.1 * i, 3) for i in range(5)]
    scores, alerts = [], []
    for _ in range(3):
        _, out = world.login("repeat01", "45.64.1.50", app, tcp)
        assert out.flags
        scores.append(out.flags[0].score)
        alerts.extend(out.alerts)
    assert scores[0] < 0.85, "one moderate session alone must not raise an alert"
    assert scores[0] < scores[1] < scores[2]
    assert len({a.alert_id for a in alerts}) == 1
    assert [a.version for a in alerts] == [1, 2]
    assert len(alerts[-1].event_ids) == 2
    assert any("also suspicious" in r for r in out.flags[0].reasons)


# -- hard negatives -------------------------------------------------------------


def test_lte_jitter_and_spikes_are_not_relays() -> None:
    w = make_world(seed=3)
    flags = 0
    for i in range(300):
        access = w.rng.uniform(15.0, 45.0)
        base = leg_ms(SEOUL, SEOUL) + access
        app = w.samples(base, 4.0, spike_p=0.12)
        tcp = round(base + w.rng.expovariate(1 / 4.0), 3)  # a smoothed RTT, also jittery
        _, out = w.login(f"phone{i % 60}", f"223.38.0.{i % 250}", app, tcp)
        flags += len(out.flags)
    assert flags == 0


def test_lte_session_with_every_sample_spiked_is_not_a_relay() -> None:
    """A CGNAT prefix with a steady 18 ms baseline; one short session spikes throughout."""
    w = make_world(seed=8)
    w.warm("223.38.0", SEOUL, (18.0, 18.5), n=30, jitter=0.5)
    tcp = 18.4
    app = [round(tcp + 15.5 + 0.3 * i, 3) for i in range(3)]
    ev, out = w.login("commuter", "223.38.0.77", app, tcp)
    assert not out.flags, out.flags[0].reasons
    base = w.det._assess(w.det.sessions.peek(ev.event.session_id or ""))  # type: ignore[arg-type]
    assert base.evidence["baseline"]["used"] == "prefix"
    assert base.evidence["baseline"]["levels"][0]["spread_ms"] == 8.0


def test_rural_dsl_with_consistently_high_rtt_is_not_a_relay(world: World) -> None:
    flagged = []
    for i in range(120):
        _, out = world.direct(f"farmer{i % 40}", f"121.180.5.{10 + i % 30}", GANGWON,
                               world.rng.uniform(24.0, 30.0), jitter=1.0)
        if out.flags:
            flagged.append(out.flags[0].reasons)
    assert flagged == []


def test_allow_listed_cloud_gaming_relay_is_never_flagged(world: World) -> None:
    """A legitimate game relay terminates TCP close to the server like an L4 relay."""
    for i in range(20):
        tcp = 0.4
        app = world.samples(tcp + leg_ms(SEOUL, TOKYO) + 1.0, 0.3)
        ev, out = world.login(f"cloud{i}", f"203.0.113.{i + 1}", app, tcp)
        assert not out.flags and not out.alerts
        assert ev.notes["relay"]["flagged"] is False
        assert "cloud-gaming provider" in ev.notes["relay"]["suppressed"]


def test_pc_bang_many_accounts_on_one_ip_are_not_relays(world: World) -> None:
    for i in range(60):
        ev, out = world.direct(f"player{i:03d}", "175.200.1.7", BUSAN,
                               world.rng.uniform(0.5, 1.2), jitter=0.2)
        assert not out.flags, out.flags[0].reasons
        assert ev.notes["relay"]["score"] < 0.6


def test_warm_up_baseline_gives_no_verdict_and_says_so() -> None:
    w = make_world(seed=5)
    for i in range(5):
        w.direct(f"new{i}", f"211.234.2.{i + 1}", SEOUL, 2.0)
    ev, _ = w.direct("new9", "211.234.2.77", SEOUL, 2.0)
    det_ev = w.det._assess(w.det.sessions.peek(ev.event.session_id or ""))  # type: ignore[arg-type]
    levels = det_ev.evidence["baseline"]["levels"]
    assert levels[0]["level"] == "prefix"
    assert levels[0]["verdict"].startswith("warm-up: 6 < 20 samples")
    assert det_ev.evidence["baseline"]["used"] is None
    assert "baseline" not in det_ev.components


def test_one_noisy_session_does_not_flag_a_clean_account(world: World) -> None:
    for _ in range(4):
        world.direct("steady", "211.234.1.5", SEOUL, 2.0)
    # a moderately slow session (a congested evening): some baseline excess, no more
    ev, out = world.direct("steady", "211.234.1.5", SEOUL, 13.0)
    assert not out.flags and not out.alerts
    assert 0.0 < ev.notes["relay"]["score"] < 0.6
    assert world.det._with_history("steady", world.det.sessions.peek(
        ev.event.session_id or ""), 0.55)[0] < 0.55  # type: ignore[arg-type]


# -- state, memory, helpers ---------------------------------------------------------


def test_state_snapshot_restores_baselines_and_model(world: World) -> None:
    snap = json.loads(json.dumps(world.det.state()))
    fresh = make_world(seed=9)
    fresh.det.load_state(snap)
    assert len(fresh.det.baselines) == len(world.det.baselines)
    key = "kr-sel-1|p|211.234.1.0/24"
    assert fresh.det.baselines.peek(key).quantiles() == world.det.baselines.peek(key).quantiles()  # type: ignore[union-attr]
    rtt = leg_ms(SEOUL, SHANGHAI) + 3.0
    app = [round(rtt + 0.2 * i, 3) for i in range(5)]
    _, a = world.login("restart", "211.234.1.66", app, rtt + 0.3, session="r1")
    _, b = fresh.login("restart", "211.234.1.66", app, rtt + 0.3, session="r1")
    assert a.flags and b.flags
    assert a.flags[0].evidence["baseline"] == b.flags[0].evidence["baseline"]
    assert a.flags[0].score == b.flags[0].score


def test_memory_is_bounded_by_evicting_cold_keys() -> None:
    w = make_world(baseline_keys_max=10, sessions_max=5, accounts_max=7)
    for i in range(40):
        w.direct(f"acc{i}", f"211.234.{1 + i % 3}.{i + 1}", SEOUL, 2.0)
    assert len(w.det.sessions) == 5
    assert len(w.det.accounts) == 7
    assert len(w.det.baselines) <= 10
    assert w.det.sessions.evicted == 35


def test_bounded_lru_keeps_recently_used() -> None:
    lru: BoundedLRU[int, str] = BoundedLRU(3)
    for i in range(3):
        lru.put(i, str(i))
    lru.get(0)
    lru.put(3, "3")
    assert list(lru.keys()) == [2, 0, 3]


def test_feasible_region_is_none_when_disks_do_not_meet() -> None:
    assert feasible_region([(*SEOUL, 100.0), (*TOKYO, 100.0)]) is None
    region = feasible_region([(*SEOUL, 400.0), (*BUSAN, 100.0)])
    assert region is not None
    assert great_circle_km(region["centroid"][0], region["centroid"][1], *BUSAN) < 100


# -- cheap paths give the same answers ---------------------------------------------


class _Unpruned(LatencyDetector):
    """Re-assesses every probe of a session in full and always asks the model."""

    prune = False


def _replay_world(tmp_path: Any, detector: type[LatencyDetector], seed: int = 4) -> list[Any]:
    from datetime import UTC, datetime

    from pathsentry.config import load_config
    from pathsentry.detectors.route import RouteDetector
    from pathsentry.engine import Engine
    from pathsentry.sim import WorldSpec, write_world_files
    from pathsentry.sim.world import iter_world

    spec = WorldSpec(seed=seed, accounts=1500, hours=12.0, start=datetime(2026, 3, 1, tzinfo=UTC))
    _, toml = write_world_files(spec, tmp_path)
    cfg = load_config(toml, env={})
    dets = {**cfg.detectors, "latency": {**cfg.detectors.get("latency", {}), "hst_window": 60}}
    cfg = cfg.model_copy(update={"detectors": dets})
    engine = Engine(cfg, detectors=[])
    ctx = DetectorContext(cfg, engine.ctx.geo)
    route, det = RouteDetector(ctx), detector(ctx)
    out: list[Any] = []
    for raw in iter_world(spec):
        ev = engine.enricher.enrich(parse_event(raw))
        if route.wants(ev.kind):
            route.process(ev)
        if det.wants(ev.kind):
            found = det.process(ev) or Findings()
            out.append((ev.event.event_id, ev.kind, ev.notes.get("relay"),
                        [f.model_dump(mode="json") for f in found.flags],
                        [a.model_dump(mode="json") for a in found.alerts]))
    out.append(json.loads(json.dumps(det.state(), default=str)))
    return out


def test_pruned_probes_give_exactly_the_full_assessments(tmp_path: Any) -> None:
    pruned = _replay_world(tmp_path, LatencyDetector)
    full = _replay_world(tmp_path, _Unpruned)
    assert pruned == full
    probe_flags = [r for r in pruned[:-1] if r[1] == "rtt_probe" and r[3]]
    assert probe_flags, "the world must exercise flags raised by late probes"
    assert any(r[3] and "half_space_trees" in r[3][0]["evidence"]["model"] for r in pruned[:-1])


def test_state_snapshot_restores_sessions_for_late_probes() -> None:
    """A probe after a restart re-assesses the login it belongs to, as without the restart
    (the saved login keeps its minimum, second-slowest and slowest samples); a snapshot
    holding the whole login event (older format) restores too."""
    w = make_world()
    w.warm("211.234.1", SEOUL, (1.0, 4.0))
    rtt = leg_ms(SEOUL, SHANGHAI) + 2.0
    app = w.samples(rtt, 0.4, n=7)
    ev, out = w.login("tourist", "211.234.2.40", app, rtt + 0.5, session="sp-1")
    assert not out.flags
    snap = json.loads(json.dumps(w.det.state()))
    login = next(r["login"] for r in snap["sessions"] if r["id"] == "sp-1")
    assert login["app_rtt_samples"] == 7
    assert login["event"]["app_rtt_ms"] == [min(app), sorted(app)[-2], max(app)]
    old_format = json.loads(json.dumps(snap))
    for row in old_format["sessions"]:
        if row["login"] is not None and row["id"] == "sp-1":
            row["login"]["event"] = ev.event.model_dump(mode="json")
            del row["login"]["app_rtt_p10_ms"], row["login"]["app_rtt_samples"]
    results = []
    for state in (None, snap, old_format):
        v = make_world()
        v.n = w.n
        if state is None:
            v = w
        else:
            v.det.load_state(json.loads(json.dumps(state)))
        late = v.probe("211.234.2.40", "sp-1", "cn-sha-1", [1.4, 1.5, 1.6])
        assert late.flags
        results.append([f.model_dump(mode="json") for f in late.flags])
    assert results[0] == results[1] == results[2]


def test_feasible_region_matches_the_reference_grid() -> None:
    """The grid arithmetic is the one of destination_point() and great_circle_km()."""
    from pathsentry.detectors.physics import destination_point

    def reference(disks: list[tuple[float, float, float]]) -> Any:
        anchor = min(range(len(disks)), key=lambda i: disks[i][2])
        alat, alon, arad = disks[anchor]
        points = [(alat, alon)] + [destination_point(alat, alon, 360.0 * b / 16, arad * r / 4)
                                   for r in range(1, 5) for b in range(16)]
        inside = [p for p in points
                  if all(great_circle_km(p[0], p[1], la, lo) <= rad for la, lo, rad in disks)]
        if not inside:
            return None
        clat = sum(p[0] for p in inside) / len(inside)
        clon = sum(p[1] for p in inside) / len(inside)
        return [clat, clon, len(inside)]

    rng = random.Random(11)
    for _ in range(300):
        base = (rng.uniform(-70, 70), rng.uniform(-170, 170))
        disks = [(base[0] + rng.uniform(-5, 5), base[1] + rng.uniform(-5, 5), rng.uniform(5, 1500))
                 for _ in range(rng.randint(1, 4))]
        ref, got = reference(disks), feasible_region(disks)
        if ref is None:
            assert got is None
        else:
            assert got is not None and got["points_inside"] == ref[2]
            assert got["centroid"] == [round(ref[0], 3), round(ref[1], 3)]


def test_queued_half_space_trees_score_and_learn_like_river() -> None:
    from river import anomaly

    from pathsentry.detectors.latency import QueuedHalfSpaceTrees

    rng = random.Random(5)
    ref = anomaly.HalfSpaceTrees(n_trees=5, height=5, window_size=40, seed=3)
    q = QueuedHalfSpaceTrees(anomaly.HalfSpaceTrees(n_trees=5, height=5, window_size=40, seed=3))
    names = ("a", "b", "c")
    for i in range(400):
        row = (rng.random(), rng.random(), rng.random())
        x = dict(zip(names, row, strict=True))
        if i % 37 == 5:  # a point that lacks a feature is routed by the current window
            del x["b"]
            ref.learn_one(x)
            q.learn(x)
        else:
            ref.learn_one(x)
            q.learn_row(names, row)
        probe = (rng.random(), rng.random(), rng.random())
        assert q.score_row(names, probe) == ref.score_one(dict(zip(names, probe, strict=True)))
        assert q.score({"a": probe[0]}) == ref.score_one({"a": probe[0]})
    q.sync()
    assert [[(n.l_mass, n.r_mass) for n in t] for t in ref._tree_nodes] == [
        [(n.l_mass, n.r_mass) for n in t] for t in q.model._tree_nodes]


def test_sessions_of_a_moved_partition_are_assessed_by_their_next_owner() -> None:
    """A login ran on one worker, its session's partition moved, a late probe runs on the
    next owner: with the partition's sessions handed over the probe re-assesses the login
    (as without the move); without them it has no login to assess. Only the moved
    partition's sessions are handed over, and the previous owner forgets exactly those."""
    w = make_world()
    w.warm("211.234.1", SEOUL, (1.0, 4.0))
    rtt = leg_ms(SEOUL, SHANGHAI) + 2.0
    ev, out = w.login("tourist", "211.234.2.40", w.samples(rtt, 0.4, n=7), rtt + 0.5,
                      session="moved-1")
    assert not out.flags

    def part_of(session_id: str) -> int:
        return 0 if session_id.startswith("moved") else 1

    shares = json.loads(json.dumps(w.det.session_state(part_of, [0, 1])))
    assert [r["id"] for r in shares["0"]["sessions"]] == ["moved-1"]
    assert len(shares["1"]["sessions"]) == 30  # the warm-up logins
    assert "baselines" not in shares["0"] and "model" not in shares["0"]
    results = []
    for handed_over in (True, False):
        v = make_world()
        v.n = w.n
        if handed_over:
            v.det.load_sessions(shares["0"])
        results.append(v.probe("211.234.2.40", "moved-1", "cn-sha-1", [1.4, 1.5, 1.6]))
    assert results[0].flags and results[0].flags[-1].event_id == ev.event.event_id
    assert results[0].flags[-1].evidence["vantages"]["verdict"] == "violated"
    assert not results[1].flags
    assert w.det.drop_sessions(part_of, [0]) == 1
    assert "moved-1" not in set(w.det.sessions.keys()) and len(list(w.det.sessions.keys())) == 30


def test_a_worker_new_to_the_group_starts_from_the_learned_baselines(world: World) -> None:
    """A VPN through a residential exit stands out only of a warm prefix baseline: a new
    worker started from another worker's learned state (no sessions in it) flags it as
    that worker does; a cold one has no baseline to judge by. What a worker has learned
    itself is never overwritten."""
    learned = json.loads(json.dumps(world.det.learned_state()))
    assert "sessions" not in learned and len(learned["baselines"]) == len(world.det.baselines)
    rtt = leg_ms(SEOUL, SHANGHAI) + 2.0 + leg_ms(SEOUL, SEOUL) + 1.0
    app = [round(rtt + 0.2 * i, 3) for i in range(5)]
    verdicts = []
    for warm in (True, False):
        new = make_world(seed=9)
        if warm:
            new.det.load_learned(learned)
            assert not list(new.det.sessions.keys())
        _, out = new.login("farmer", "211.234.1.99", app, round(min(app) + 0.3, 3), session="f1")
        verdicts.append(out.flags[0].evidence["baseline"]["used"] if out.flags else None)
    assert verdicts == ["prefix", None]

    own = make_world(seed=3)
    own.warm("211.234.1", BUSAN, (30.0, 34.0))  # its own, very different history of the prefix
    key = "kr-sel-1|p|211.234.1.0/24"
    mine = own.det.baselines.peek(key).quantiles()  # type: ignore[union-attr]
    own.det.load_learned(learned)
    assert own.det.baselines.peek(key).quantiles() == mine  # type: ignore[union-attr]
