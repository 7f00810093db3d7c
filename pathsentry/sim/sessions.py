"""Event builders: one game session (login, rtt probes, traceroute, http probes) of an
account, and the launcher's line checks. Every builder returns ``(ts_ms, event, truth)``
triples; the event is a contract-v1 dict, the truth its label (see
:mod:`pathsentry.sim.truth`).

The physics is honest: a relayed session's application RTT includes the leg to the
real user, the TCP RTT ends wherever TCP really ends (at an L4 relay, at the user
through an L3 tunnel), an ICMP echo to a relay exit is answered by the relay.
"""

from __future__ import annotations

import hashlib
import random
from datetime import datetime
from typing import Any

from pathsentry.sim.model import KST, Account, GameServer, WorldPlan
from pathsentry.sim.network import GAMEDC, KT, NTT, Prefix, Router
from pathsentry.sim.params import Failover, loop_overrun
from pathsentry.sim.physics import (
    ACCESS,
    AccessProfile,
    Point,
    inflation_for,
    leg_ms,
    sample_rtts,
    stable_unit,
)

__all__ = [
    "API_BODY_SHA256",
    "GENUINE_BODY_SHA256",
    "INJECTED_BODY_SHA256",
    "Builder",
    "Triple",
    "fmt_ts",
    "kst_hour",
]

Triple = tuple[int, dict[str, Any], dict[str, Any]]

GENUINE_BODY_SHA256 = hashlib.sha256(b"<!doctype html><title>game.example</title>").hexdigest()
#: The ISP box's page: a script that fingerprints the PC and redirects after 2 s.
INJECTED_BODY_SHA256 = hashlib.sha256(
    b"<script>fp(canvas,gpu);setTimeout(function(){location.href=u},2000)</script>"
).hexdigest()
_EDGE = Point(37.5326, 127.0246)  # the CDN's Seoul edge
_SERVER_STACK_MS = 0.05
_TARGETS: tuple[tuple[str, str, int, str], ...] = (
    ("ws", "ws", 80, "ws_upgrade"), ("ws", "ws", 8080, "ws_upgrade"),
    ("wss", "ws", 443, "ws_upgrade"), ("http", "www", 80, "get"),
    ("http", "www", 8080, "get"), ("https", "www", 443, "get"),
)
_API_TARGETS: tuple[tuple[str, str, int, str], ...] = (
    ("http", "api", 80, "get"), ("https", "api", 443, "get"),
)
_WS_HEADERS = ["server", "date", "connection", "upgrade", "sec-websocket-accept", "cf-ray"]
_WWW_HEADERS = ["server", "date", "content-type", "content-length", "cf-ray", "cf-cache-status"]
_CDN_ERROR_HEADERS = ["server", "date", "content-type", "content-length", "cf-ray"]
_REDIRECT_HEADERS = ["server", "date", "location", "content-length", "cf-ray"]
_API_HEADERS = ["server", "date", "content-type", "content-length", "x-request-id"]
_FORGED_HEADERS = ["content-type", "content-length", "connection"]
#: A box of the origin's own answering its failure without the CDN, per server software.
_FALLBACK_HEADERS: dict[str, list[str]] = {
    "nginx": ["server", "date", "content-type", "content-length", "connection"],
    "openresty": ["server", "date", "content-type", "content-length", "connection", "retry-after"],
    "Apache": ["date", "server", "content-length", "connection", "content-type"],
}
#: What a box forges, per answer kind: status, header names, body hash, body length.
_FORGERIES: dict[str, tuple[int, list[str], str | None, int]] = {
    "page": (200, _FORGED_HEADERS, INJECTED_BODY_SHA256, 1187),
    "redirect": (302, ["location", "content-length", "connection"], None, 0),
    "block": (403, ["content-type", "content-length", "cache-control"],
              hashlib.sha256(b"<h1>warning: this site is blocked</h1>").hexdigest(), 1530),
}
API_BODY_SHA256 = hashlib.sha256(b'{"ok":true,"realm":"game.example"}').hexdigest()
_CDN_ERROR_BODY = {s: hashlib.sha256(f"cdn error {s}".encode()).hexdigest()
                   for s in (404, 500, 502, 503, 504)}
_MAINTENANCE_BODY = hashlib.sha256(b"<title>maintenance</title>").hexdigest()


def fmt_ts(ts_ms: int) -> str:
    """RFC 3339 with the KST offset and millisecond precision.

    >>> fmt_ts(1772377200000)
    '2026-03-02T00:00:00.000+09:00'
    """
    return datetime.fromtimestamp(ts_ms / 1000, KST).isoformat(timespec="milliseconds")


def kst_hour(ts_ms: int) -> int:
    """Hour of day in Korea (KST has no daylight saving).

    >>> kst_hour(1772377200000 + 13 * 3_600_000)
    13
    """
    return (ts_ms // 1000 + 9 * 3600) // 3600 % 24


def _eid(*parts: object) -> str:
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=9).hexdigest()


def _truth(event: dict[str, Any], label: str, klass: str, expect: list[str]) -> dict[str, Any]:
    """An event's truth record; an attack's ``klass`` is its label, or a finer
    ``label/variant`` (``resi_proxy/l4``) where the account names one."""
    if label != "benign":
        klass = klass if klass.startswith(label + "/") else label
    return {"type": "event", "event_id": event["event_id"], "ts": event["ts"],
            "kind": event["kind"], "account": event.get("account"), "label": label,
            "klass": klass, "expect": expect}


class Builder:
    """Builds the events of one world's sessions (stateless apart from the plan)."""

    def __init__(self, plan: WorldPlan) -> None:
        self.plan = plan
        self.seed = plan.spec.seed
        self.key = plan.spec.key  # ids and sessions differ per segment of a live world
        self.net = plan.net
        self.ws_host = f"ws.{plan.spec.domain}"
        self.www_host = f"www.{plan.spec.domain}"
        self.api_host = f"api.{plan.spec.domain}"
        self.home_countries = frozenset({"KR"})
        self.params = plan.spec.params
        #: the share of app pings a server answers one loop late (:func:`.params.with_overrun`)
        self.overrun = loop_overrun(self.params.extra)
        self.targets = _TARGETS + (_API_TARGETS if self.params.api_origin else ())
        span = plan.spec.end_ms - plan.spec.start_ms
        self.outages = [(plan.spec.start_ms + int(w.at * span),
                         plan.spec.start_ms + int(w.at * span + w.minutes * 60_000), w.status)
                        for w in self.params.outages]
        self.failovers = {fo.outage: fo for fo in self.params.failovers}
        self.maintenance = [(plan.spec.start_ms + int(w.at * span),
                             plan.spec.start_ms + int(w.at * span + w.minutes * 60_000))
                            for w in self.params.maintenance]

    def failover(self, ts: int, host: str) -> Failover | None:
        """The box of the origin's own answering ``host`` at ``ts`` (an unmarked outage)."""
        k = next((k for k, (lo, hi, _) in enumerate(self.outages) if lo <= ts < hi), None)
        fo = None if k is None else self.failovers.get(k)
        return fo if fo is not None and host in fo.hosts else None

    # -- physics -------------------------------------------------------------
    def direct_ms(self, p: Prefix, dst: Point, dst_name: str) -> float:
        """Propagation plus access latency from prefix ``p`` to ``dst`` (no jitter)."""
        return leg_ms(p.point, dst, self.inflation(p.cidr, dst_name)) + p.access_ms

    def inflation(self, a: str, b: str) -> float:
        """The path inflation between two named endpoints, in the world's range."""
        return inflation_for(self.seed, a, b, *self.params.inflation)

    def game_loop(self, rng: random.Random, server: str, samples: list[float]) -> list[float]:
        """Application ping samples as a server answers them: on its game loop.

        Each sample waits the server's fixed processing cost plus a uniform phase of
        its tick (no change where the server answers off the loop); with a loop overrun
        share (``--loop-overrun``), that share of the samples waits one more tick (a loop
        that overran its tick under load answers on the next).
        """
        ping = self.params.ping(server)
        if not ping.cost_ms and not ping.tick_ms:
            return samples
        tick = ping.tick_ms
        over = self.overrun if tick else 0.0
        return [round(v + ping.cost_ms + (rng.uniform(0.0, tick) if tick else 0.0)
                      + (tick if over and rng.random() < over else 0.0), 3)
                for v in samples]

    def full_ms(self, acct: Account, dst: Point, dst_name: str) -> float:
        """RTT from the real user to ``dst``, through the exit if there is one."""
        if acct.exit is None:
            return self.direct_ms(acct.home, dst, dst_name) + _SERVER_STACK_MS
        ex = acct.exit.prefix
        return (self.direct_ms(acct.home, ex.point, ex.cidr) + self.direct_ms(ex, dst, dst_name)
                + _SERVER_STACK_MS)

    def exit_ms(self, acct: Account, dst: Point, dst_name: str) -> float:
        """RTT from ``dst`` to the exit only (what a terminating relay shows)."""
        assert acct.exit is not None
        return self.direct_ms(acct.exit.prefix, dst, dst_name) + _SERVER_STACK_MS

    def ends_at_exit(self, acct: Account, method: str) -> bool:
        """Does a round trip of ``method`` end at the relay rather than at the user?"""
        if acct.exit is None:
            return False
        if method == "icmp":
            return True
        return method == "tcp" and acct.exit.mode in ("l4", "game_relay")

    def rtt(self, rng: random.Random, acct: Account, dst: Point, dst_name: str, method: str,
            n: int, extra: float = 0.0) -> list[float]:
        if self.ends_at_exit(acct, method):
            assert acct.exit is not None
            return sample_rtts(rng, self.exit_ms(acct, dst, dst_name) + extra,
                               acct.exit.prefix.access, n)
        return sample_rtts(rng, self.full_ms(acct, dst, dst_name) + extra, acct.home.access, n)

    # -- a session -----------------------------------------------------------
    def src_ip(self, acct: Account, rng: random.Random) -> str:
        if acct.exit is not None:
            return acct.exit.ip
        if acct.pool:
            return acct.home.ip(rng.randrange(acct.pool))
        return acct.home.ip(acct.host)

    def session(self, acct: Account, t: int, n: int, rng: random.Random) -> list[Triple]:
        server = self.plan.servers[acct.server]
        sid = f"s-{_eid(self.key, 'session', acct.index, n)}"
        src = self.src_ip(acct, rng)
        label = acct.label
        relayed = label != "benign" and acct.exit is not None
        base = {"src_ip": src, "session_id": sid, "account": acct.name}
        out: list[Triple] = []

        app = self.rtt(rng, acct, server.point, server.id, "app", rng.randint(*self.params.app_samples),
                       extra=rng.uniform(*self.params.app_extra_ms))
        login: dict[str, Any] = {
            "kind": "login", "event_id": _eid(self.key, acct.index, n, "login"),
            "ts": fmt_ts(t), **base, "server_id": server.id,
            "app_rtt_ms": self.game_loop(rng, server.id, app),
            "tcp_rtt_ms": self.rtt(rng, acct, server.point, server.id, "tcp", 1)[0],
            "outcome": "failure" if rng.random() < 0.02 else "success",
            "client": {"device_id": acct.device, "os": acct.os,
                       **({"local_ip": acct.local_ip} if acct.local_ip else {})},
        }
        if self.params.tcp_missing and stable_unit(self.key, "no-tcp", acct.index) < self.params.tcp_missing:
            del login["tcp_rtt_ms"]
        out.append((t, login, _truth(login, label, acct.klass, ["vpn_relay"] if relayed else [])))

        vantages = rng.sample(sorted(self.plan.servers), rng.randint(2, 4))
        for k, vid in enumerate(vantages):
            vs = self.plan.servers[vid]
            method = rng.choices(("app", "icmp", "tcp"), (60, 25, 15))[0]
            ts = t + rng.randint(800, 20_000)
            rtts = self.rtt(rng, acct, vs.point, vs.id, method, 3)
            probe = {"kind": "rtt_probe", "event_id": _eid(self.key, acct.index, n, "probe", k),
                     "ts": fmt_ts(ts), **base, "vantage_id": vid, "method": method,
                     "rtt_ms": self.game_loop(rng, vid, rtts) if method == "app" else rtts}
            out.append((ts, probe, _truth(probe, label, acct.klass, [])))

        if rng.random() < (0.6 if acct.group else 0.3):
            ts = t + rng.randint(5_000, 60_000)
            out.append(self.traceroute(acct, server, ts, n, rng, base))

        if acct.exit is None and rng.random() < (0.6 if acct.injected_line else 0.3):
            for k in range(rng.randint(2, 4)):
                ts = t + rng.randint(2_000, 120_000)
                ev, tr = self.http_probe(acct.home, src, ts, rng, "client", acct.klass,
                                         ("s", acct.index, n, k), base)
                out.append((ts, ev, tr))
        return out

    # -- traceroutes -----------------------------------------------------------
    def path(self, p: Prefix, srv: GameServer, variant: int) -> list[Router]:
        """Routers from prefix ``p`` to server ``srv`` (a direct path, no tunnel)."""
        a, c, net = p.asys, p.city, self.net
        squat = self.plan.squatted.get(p.cidr)
        hops = [net.router(a, c, 0), squat or net.router(a, c, 1, variant), net.router(a, c, 2)]
        if a.country == "KR":
            if srv.country != "KR":
                hops += [net.router(a, a.gateway, 3), net.router(NTT, "tokyo", 0, variant)]
            elif srv.city != c and srv.city in a.cities:
                hops.append(net.router(a, srv.city, 3))
        else:
            hops.append(net.router(a, a.gateway, 3, variant))
            if srv.country == "KR":
                hops += [net.router(KT, "busan", 4), net.router(KT, srv.city, 5)]
            else:
                hops.append(net.router(NTT, "tokyo", 0))
        hops.append(net.router(GAMEDC, srv.city, 0))
        return hops

    def traceroute(self, acct: Account, srv: GameServer, ts: int, n: int, rng: random.Random,
                   base: dict[str, Any]) -> Triple:
        tunnel = acct.exit is not None and acct.exit.mode == "l3"
        infl = self.inflation(acct.home.cidr, srv.id)
        access: AccessProfile = acct.home.access
        hops: list[dict[str, Any]] = []
        if tunnel:
            assert acct.exit is not None
            ex = acct.exit.prefix
            start_ms = self.direct_ms(acct.home, ex.point, ex.cidr) + ex.access_ms
            origin, infl = ex.point, self.inflation(ex.cidr, srv.id)
            hops.append({"ttl": 1, "ip": acct.exit.ip, "rtt_ms": sample_rtts(rng, start_ms, access, 3)})
            routers = [self.net.router(ex.asys, ex.city, 1), self.net.router(GAMEDC, srv.city, 0)]
        else:
            start_ms, origin = acct.home.access_ms, acct.home.point
            if acct.home.kind in ("residential", "business", "education"):
                gw = (acct.local_ip or "192.168.0.2").rsplit(".", 1)[0] + ".1"
                hops.append({"ttl": 1, "ip": gw, "rtt_ms": sample_rtts(rng, 0.2, ACCESS["ftth"], 3)})
            routers = self.path(acct.home, srv, 1 if rng.random() < 0.2 else 0)
        squat = self.plan.squatted.get(acct.home.cidr)
        cum_ms, proc, prev = 0.0, 0.0, origin
        points = [(r.ip, r.point, r is not squat) for r in routers]
        points.append((srv.ip, srv.point, False))
        for i, (ip, point, may_drop) in enumerate(points):
            cum_ms += leg_ms(prev, point, infl)
            prev = point
            proc += rng.uniform(0.02, 0.12)
            ttl = len(hops) + 1
            if may_drop and 0 < i < len(points) - 1 and rng.random() < 0.04:
                hops.append({"ttl": ttl, "ip": None, "rtt_ms": []})
                continue
            hops.append({"ttl": ttl, "ip": ip,
                         "rtt_ms": sample_rtts(rng, start_ms + cum_ms + proc, access, 3)})
        klass = acct.klass
        if squat is not None:
            klass = "squatted_hop"
        if len(hops) > 3 and rng.random() < 0.04:
            hop = hops[rng.randrange(1, len(hops) - 1)]
            if hop["rtt_ms"]:
                hop["rtt_ms"][rng.randrange(3)] = round(hop["rtt_ms"][0] + rng.uniform(150, 1200), 3)
                klass = "icmp_spike" if squat is None else klass
        first_public = routers[0] if not tunnel else self.net.router(GAMEDC, srv.city, 0)
        foreign = first_public.country not in self.home_countries
        ev = {"kind": "traceroute", "event_id": _eid(self.key, acct.index, n, "trace"),
              "ts": fmt_ts(ts), **base, "vantage_id": "client", "direction": "client_to_server",
              "server_id": srv.id, "hops": hops}
        expect = ["route_anomaly"] if foreign and acct.label != "benign" else []
        return ts, ev, _truth(ev, acct.label, klass, expect)

    # -- http probes ---------------------------------------------------------
    def http_probe(self, home: Prefix, src: str, ts: int, rng: random.Random, reporter: str,
                   klass: str, key: tuple[object, ...], base: dict[str, Any]) -> tuple[
                       dict[str, Any], dict[str, Any]]:
        scheme, host, port, request = rng.choice(self.targets)
        cell = self.plan.cell_of(home.cidr)
        encrypted = scheme in ("https", "wss")
        in_hours = cell is not None and kst_hour(ts) in cell.hours
        injected = (cell is not None and not encrypted and port in cell.ports and in_hours
                    and rng.random() < cell.rate)
        api = host == "api"
        fo = None if api else self.failover(ts, host)
        dst, dst_name = ((self.plan.servers["kr-sel-1"].point, "api-origin") if api
                         else (_EDGE, "cdn-edge-seoul") if fo is None
                         else (self.plan.servers[fo.site].point, f"fallback-{fo.site}"))
        connect = sample_rtts(rng, self.direct_ms(home, dst, dst_name), home.access, 1)[0]
        syn_ack = 64 - (6 + int(inflation_for(self.seed, home.cidr, "ttl") * 4) % 6) - (fo.hops if fo else 0)
        ev: dict[str, Any] = {
            "kind": "http_probe", "event_id": _eid(self.key, "http", *key), "ts": fmt_ts(ts),
            **base, "src_ip": src,
            "target": {"host": {"ws": self.ws_host, "www": self.www_host}.get(host, self.api_host),
                       "port": port, "scheme": scheme},
            "request": request, "reporter": reporter,
        }
        sees_payload = reporter == "client" or not encrypted
        origin_klass = None
        if injected:
            assert cell is not None
            status, headers, body, body_len = _FORGERIES[cell.answer]
            ev.update(status=status, header_names=list(headers), server_header=None,
                      body_sha256=body, body_len=body_len, connect_ms=connect,
                      ttfb_ms=round(connect * rng.uniform(0.15, 0.6), 3),
                      ttl={"syn_ack": syn_ack, "response": syn_ack + cell.ttl_delta})
        elif api:
            ev.update(status=200, header_names=list(_API_HEADERS), server_header="nginx",
                      body_sha256=API_BODY_SHA256, body_len=35, connect_ms=connect,
                      ttfb_ms=round(connect + rng.uniform(1.0, 8.0), 3),
                      ttl={"syn_ack": syn_ack, "response": syn_ack + self.params.api_ttl_delta})
            origin_klass = "api_origin"
        else:
            ws = request == "ws_upgrade"
            ev.update(status=101 if ws else 200,
                      header_names=list(_WS_HEADERS if ws else _WWW_HEADERS),
                      server_header="cloudflare",
                      body_sha256=None if ws else GENUINE_BODY_SHA256,
                      body_len=0 if ws else 18432, connect_ms=connect,
                      ttfb_ms=round(connect + rng.uniform(1.5, 12.0 if ws else 40.0), 3),
                      ttl={"syn_ack": syn_ack, "response": syn_ack})
            origin_klass = self.origin_answer(ev, ts, rng, encrypted, ws, fo)
        if not sees_payload:
            for f in ("status", "header_names", "server_header", "body_sha256", "body_len", "ttfb_ms"):
                ev[f] = None
        if reporter == "sensor":
            ev["retransmits"] = rng.randint(2, 9) if injected and rng.random() < 0.6 else (
                1 if rng.random() < 0.03 else 0)
            ev["seq_conflict"] = injected and rng.random() < 0.4
        elif rng.random() < 1.0 - (cell.ttl_visible if injected and cell is not None else 0.6):
            ev["ttl"] = None
        if injected:
            truth = _truth(ev, "injection", klass, ["path_injection"])
        elif origin_klass is not None and origin_klass != "api_origin":
            truth = _truth(ev, "benign", origin_klass, [])
        elif encrypted:
            truth = _truth(ev, "benign", "tls", [])
        elif cell is not None and not in_hours:
            truth = _truth(ev, "benign", "isp_off_hours", [])
        else:
            truth = _truth(ev, "benign", origin_klass or klass, [])
        return ev, truth

    def origin_answer(self, ev: dict[str, Any], ts: int, rng: random.Random, encrypted: bool,
                      ws: bool, fo: Failover | None = None) -> str | None:
        """The CDN origin's own failures: outages, maintenance, errors, redirects to https.

        Each is the origin's genuine answer: its own headers, its own TTL, a normal
        time to first byte; during an unmarked outage (``fo``) the answer of the box
        the origin failed over to, without the CDN's marks (``origin_failover``).
        Returns the hard-negative class, or None for a normal answer.
        """
        p = self.params
        down = next((status for lo, hi, status in self.outages if lo <= ts < hi), None)
        if down is not None and fo is not None:
            connect, syn_ack = ev["connect_ms"], ev["ttl"]["syn_ack"]
            ev.update(status=down, header_names=list(_FALLBACK_HEADERS[fo.server]), server_header=fo.server,
                      body_sha256=hashlib.sha256(f"{fo.server} {down}".encode()).hexdigest(),
                      body_len=150 + 3 * len(fo.server) + down % 7,
                      ttfb_ms=round(connect + (ev["ttfb_ms"] - connect) * fo.ttfb_scale, 3),
                      ttl={"syn_ack": syn_ack, "response": syn_ack + fo.ttl_delta})
            return "origin_failover"
        if down is not None:
            ev.update(status=down, header_names=list(_CDN_ERROR_HEADERS), server_header="cloudflare",
                      body_sha256=_CDN_ERROR_BODY[down], body_len=4_620)
            return "origin_outage"
        if any(lo <= ts < hi for lo, hi in self.maintenance):
            ev.update(status=503, header_names=[*_WWW_HEADERS, "retry-after"],
                      body_sha256=_MAINTENANCE_BODY, body_len=2_048)
            return "maintenance"
        if p.origin_error_rate and rng.random() < p.origin_error_rate:
            status = rng.choice((404, 500, 502))
            ev.update(status=status, header_names=list(_CDN_ERROR_HEADERS),
                      body_sha256=_CDN_ERROR_BODY[status], body_len=3_900)
            return "origin_error"
        if p.origin_redirect and not encrypted and not ws and rng.random() < p.origin_redirect:
            ev.update(status=301, header_names=list(_REDIRECT_HEADERS), body_sha256=None, body_len=0)
            return "origin_redirect"
        return None

    def line_check(self, prefix: Prefix, index: int, n: int, ts: int, rng: random.Random) -> Triple:
        """One periodic connectivity check of the launcher on a subscriber line."""
        src = prefix.ip(rng.randrange(prefix.hosts))
        reporter = "sensor" if rng.random() < 0.3 else "client"
        ev, tr = self.http_probe(prefix, src, ts, rng, reporter, "normal", ("line", index, n), {})
        return ts, ev, tr

