"""Hop-country routes (flag and alert kind ``route_anomaly``).

A client whose address geolocates to a home country but whose traceroute starts
abroad (``CN → CN → KR → KR → server``) is relayed through a home-country exit:
the classic gold-farm pattern. The detector:

1. orders the hops from the client end to the server end (``server_to_client``
   traceroutes are reversed: the origin is always the client end);
2. geolocates each hop with the stacked geo sources (``ctx.geo``);
3. gates each hop by its RTT. The hop's RTT is the median of its samples (at
   least ``min_samples``: an ICMP rate-limit spike inflates one sample, the
   median ignores it). A hop probed from a vantage server V cannot be farther
   from V than ``median x 100 km``; a hop of a client-run traceroute cannot be
   farther from the destination server D than ``(median + median(D)) x 100 km``
   (both lie within their RTT radius of the client). A hop that breaks the bound
   is squatted or mis-geolocated: it is marked ``gated`` and its country is
   ignored. Hops with fewer samples are ``unverified`` and ignored as well;
4. compresses the surviving hops to a country path and an ASN path and flags a
   foreign origin before a home-country exit when ``src_ip`` geolocates to a
   home country (allow-listed ranges are never flagged);
5. emits a route signature, a hash of the compressed country and ASN paths and
   the /24 of the last foreign hop, which the farm detector groups on.

``Enriched.notes["route"]`` carries ``signature``, ``country_path``,
``asn_path``, ``foreign_origin`` and ``gated_hops``. A bounded per-session
memory joins traceroutes and logins in either order: a login arriving after its
session's traceroute gets ``notes["route"]``, a traceroute arriving after its
session's login gets ``notes["account"]`` and ``notes["login_event_id"]``.
Memory: ``sessions_max`` sessions of about 0.5 KiB (route notes and an account
name), ``alerts_max`` alert records of about 2 KiB, ``hops_max`` geolocated hop
addresses of about 0.3 KiB (routers recur in every traceroute through them, so
each is looked up and measured against each anchor once); least-recently-used
entries are evicted.

>>> import io
>>> from pathsentry.schemas import parse_event
>>> from pathsentry.config import load_config
>>> from pathsentry.detectors.base import DetectorContext, Enriched
>>> from pathsentry.enrich.geo import CsvPrefixTable, GeoInfo, GeoResolver
>>> table = CsvPrefixTable.from_lines(io.StringIO(
...     "cidr,country,asn,as_name,lat,lon,kind\\n"
...     "202.97.1.0/24,CN,4134,Chinanet,31.23,121.47,business\\n"
...     "211.234.1.0/24,KR,4766,Korea Telecom,37.57,126.98,business\\n"))
>>> cfg = load_config(text='home_countries = ["KR"]\\n[[server]]\\nid = "kr-sel-1"\\n'
...                        'lat = 37.57\\nlon = 126.98\\ncountry = "KR"\\n', env={})
>>> det = RouteDetector(DetectorContext(cfg, GeoResolver([table])))
>>> tr = parse_event({"kind": "traceroute", "event_id": "t1", "ts": "2026-01-01T00:00:00Z",
...     "src_ip": "211.234.1.50", "session_id": "s1", "vantage_id": "kr-sel-1",
...     "direction": "server_to_client", "hops": [
...         {"ttl": 1, "ip": "211.234.1.1", "rtt_ms": [0.9, 1.0, 1.1]},
...         {"ttl": 2, "ip": "211.234.1.2", "rtt_ms": [1.4, 1.5, 1.6]},
...         {"ttl": 3, "ip": "202.97.1.1", "rtt_ms": [31.0, 30.5, 30.9]},
...         {"ttl": 4, "ip": "202.97.1.9", "rtt_ms": [33.0, 32.1, 32.5]}]})
>>> ev = Enriched(tr, GeoInfo(country="KR", lat=37.5, lon=127.0, precision="city"),
...               "211.234.1.0/24", server=cfg.server("kr-sel-1"))
>>> out = det.process(ev)
>>> ev.notes["route"]["country_path"], ev.notes["route"]["foreign_origin"]
(['CN', 'KR'], True)
>>> out.flags[0].kind, out.flags[0].reasons[0]
('route_anomaly', 'foreign origin before a home-country exit: CN → KR')
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pathsentry.config import Server
from pathsentry.detectors import register
from pathsentry.detectors.base import Detector, DetectorContext, Enriched, Findings
from pathsentry.detectors.latency import AlertBook, BoundedLRU
from pathsentry.detectors.physics import KM_PER_MS_RTT, great_circle_km, median
from pathsentry.enrich.geo import GeoInfo, prefix_of
from pathsentry.schemas import FlaggedEvent, Login, Traceroute

__all__ = ["HopVerdict", "RouteDetector", "compress"]

#: How far a hop's geolocated point may be from the truth, by precision (km).
HOP_SLACK_KM: dict[str, float] = {"city": 100.0, "country": 600.0}

DEFAULTS: dict[str, Any] = {
    "min_samples": 3,
    "sessions_max": 100_000,
    "alerts_max": 50_000,
    "hops_max": 100_000,
}


@dataclass(slots=True)
class HopVerdict:
    """One hop after geolocation and RTT gating."""

    ttl: int
    ip: str | None
    country: str | None = None
    asn: int | None = None
    median_ms: float | None = None
    samples: int = 0
    status: str = "ok"  # ok | gated | unverified | private | unknown | silent
    bound_km: float | None = None
    distance_km: float | None = None

    @property
    def trusted(self) -> bool:
        return self.status == "ok" and self.country is not None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ttl": self.ttl, "ip": self.ip, "country": self.country,
                               "asn": self.asn, "status": self.status}
        if self.median_ms is not None:
            out["median_ms"] = round(self.median_ms, 2)
        out["samples"] = self.samples
        if self.bound_km is not None:
            out["bound_km"] = round(self.bound_km)
        if self.distance_km is not None:
            out["distance_km"] = round(self.distance_km)
        return out


def compress(values: list[Any]) -> list[Any]:
    """Merge consecutive repeats: ``CN CN KR KR`` → ``CN KR``.

    >>> compress(["CN", "CN", "KR", "KR", "KR"])
    ['CN', 'KR']
    """
    out: list[Any] = []
    for v in values:
        if not out or out[-1] != v:
            out.append(v)
    return out


@dataclass(slots=True)
class _Hop:
    """A hop address as geolocated, and its great-circle km to each anchor asked about."""

    geo: GeoInfo
    distance_km: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class _Session:
    account: str | None = None
    route: dict[str, Any] | None = None
    flag: dict[str, Any] | None = None  # the emitted flag, re-emitted once the account is known
    extra: dict[str, Any] = field(default_factory=dict)


@register
class RouteDetector(Detector):
    """Foreign-origin routes behind home-country addresses, with RTT-gated hops."""

    name = "route"
    consumes = frozenset({"login", "traceroute"})

    def __init__(self, ctx: DetectorContext) -> None:
        super().__init__(ctx)
        cfg = {**DEFAULTS, **ctx.settings(self.name)}
        self.min_samples = max(1, int(cfg["min_samples"]))
        self.home = {c.upper() for c in ctx.config.home_countries}
        self.sessions: BoundedLRU[str, _Session] = BoundedLRU(cfg["sessions_max"])
        self.alerts = AlertBook(self.name, "route_anomaly", cfg["alerts_max"])
        self.hops: BoundedLRU[str, _Hop] = BoundedLRU(cfg["hops_max"])

    def process(self, ev: Enriched, key: str | None = None) -> Findings | None:
        event = ev.event
        sid = event.session_id
        if isinstance(event, Login):
            if sid is None:
                return None
            sess = self.sessions.get_or_create(sid, _Session)
            sess.account = event.account
            sess.extra["server_id"] = event.server_id
            sess.extra["login_event_id"] = event.event_id
            if sess.route is not None:
                ev.notes["route"] = sess.route
            if sess.flag is not None and sess.flag.get("account") is None:
                return self._emit_flag(sess, sess.flag, event.account)
            return None
        if not isinstance(event, Traceroute):
            return None
        sess = self.sessions.get_or_create(sid, _Session) if sid else _Session()
        if sess.account is not None:
            ev.notes["account"] = sess.account
        if "login_event_id" in sess.extra:
            ev.notes["login_event_id"] = sess.extra["login_event_id"]
        account = event.account or sess.account
        route, hops, flagged_as = self._analyse(ev, event, sess)
        ev.notes["route"] = route
        sess.route = route
        if flagged_as is None:
            return None
        if ev.allowed is not None:
            route["suppressed"] = f"allow-listed {ev.allowed.cidr}: {ev.allowed.reason}"
            return None
        score, reasons = flagged_as
        flag = {
            "event_id": event.event_id, "ts": event.ts.isoformat(), "account": account,
            "session_id": sid, "src_ip": str(event.src_ip), "country": ev.geo.country,
            "asn": ev.geo.asn, "score": score, "reasons": reasons, "prefix": ev.prefix,
            "evidence": {
                "country_path": route["country_path"], "asn_path": route["asn_path"],
                "signature": route["signature"], "direction": event.direction,
                "vantage": event.vantage_id, "gated_hops": route["gated_hops"],
                "claimed_country": ev.geo.country, "hops": [h.as_dict() for h in hops],
                "last_foreign_prefix": route["last_foreign_prefix"],
            },
        }
        sess.flag = flag
        return self._emit_flag(sess, flag, account)

    # -- analysis -----------------------------------------------------------------

    def _anchor(self, ev: Enriched, tr: Traceroute, sess: _Session) -> tuple[Server | None, str]:
        """The known point hop RTTs are bounded against, and how."""
        # a client-run traceroute names its destination in an extra ``server_id``
        # field, or the session's login does
        extra = tr.model_extra or {}
        dest = extra.get("server_id") or sess.extra.get("server_id") or ""
        server = ev.server or self.ctx.config.server(str(dest))
        if server is None:
            return None, "none"
        if tr.direction == "server_to_client" and ev.server is not None:
            return server, "vantage"
        return server, "destination"

    def _analyse(
        self, ev: Enriched, tr: Traceroute, sess: _Session
    ) -> tuple[dict[str, Any], list[HopVerdict], tuple[float, list[str]] | None]:
        hops = sorted(tr.hops, key=lambda h: h.ttl)
        if tr.direction == "server_to_client":
            hops.reverse()  # origin (client end) first
        anchor, mode = self._anchor(ev, tr, sess)
        # client-run traceroutes: the destination's own RTT widens every bound
        dest_ms = 0.0
        if mode == "destination":
            tail = [h for h in hops if len(h.rtt_ms) >= self.min_samples]
            dest_ms = median(list(tail[-1].rtt_ms)) if tail else 0.0
        verdicts = [self._gate(h.ttl, h.ip, list(h.rtt_ms), anchor, dest_ms) for h in hops]
        trusted = [v for v in verdicts if v.trusted]
        country_path = compress([v.country for v in trusted])
        asn_path = compress([v.asn for v in trusted if v.asn is not None])
        first_home = next((i for i, v in enumerate(trusted) if v.country in self.home), None)
        foreign = trusted[:first_home] if first_home is not None else []
        last_foreign = prefix_of(foreign[-1].ip) if foreign and foreign[-1].ip else None
        claimed_home = (ev.geo.country or "").upper() in self.home
        foreign_origin = bool(foreign) and claimed_home
        sig_src = f"{'>'.join(country_path)}|{'>'.join(map(str, asn_path))}|{last_foreign or ''}"
        route: dict[str, Any] = {
            "signature": hashlib.blake2b(sig_src.encode(), digest_size=8).hexdigest(),
            "country_path": country_path,
            "asn_path": asn_path,
            "foreign_origin": foreign_origin,
            "gated_hops": [v.ttl for v in verdicts if v.status == "gated"],
            "last_foreign_prefix": last_foreign,
            "gate": mode,
        }
        if not foreign_origin:
            return route, verdicts, None
        path = " → ".join(country_path)
        reasons = [f"foreign origin before a home-country exit: {path}"]
        for v in foreign:
            reasons.append(
                f"hop {v.ttl} {v.ip} in {v.country} (AS{v.asn}) at {v.median_ms:.1f} ms "
                f"median: within its {v.bound_km:.0f} km RTT bound"
                if v.median_ms is not None and v.bound_km is not None else
                f"hop {v.ttl} {v.ip} in {v.country} (AS{v.asn})"
            )
        gated = [v for v in verdicts if v.status == "gated"]
        if gated:
            reasons.append("ignored as squatted/mis-geolocated: " + ", ".join(
                f"hop {v.ttl} ({v.country}, {v.distance_km:.0f} km > {v.bound_km:.0f} km bound)"
                for v in gated if v.distance_km is not None and v.bound_km is not None
            ))
        n_foreign = len(foreign)
        score = min(0.97, 0.8 + 0.06 * (n_foreign - 1) + (0.05 if mode != "none" else 0.0))
        return route, verdicts, (round(score, 4), reasons)

    def _gate(
        self, ttl: int, ip: Any, samples: list[float], anchor: Server | None, dest_ms: float
    ) -> HopVerdict:
        v = HopVerdict(ttl=ttl, ip=str(ip) if ip is not None else None, samples=len(samples))
        if v.ip is None:
            v.status = "silent"
            return v
        hop = self.hops.get(v.ip)
        if hop is None:
            hop = _Hop(self.ctx.geo.lookup(ip))
            self.hops.put(v.ip, hop)
        geo = hop.geo
        if geo.kind == "private":
            v.status = "private"
            return v
        v.country, v.asn = geo.country, geo.asn
        if geo.country is None:
            v.status = "unknown"
            return v
        if len(samples) < self.min_samples:
            v.status = "unverified"
            return v
        v.median_ms = median(samples)
        if anchor is None or geo.lat is None or geo.lon is None:
            return v
        v.bound_km = (v.median_ms + dest_ms) * KM_PER_MS_RTT + HOP_SLACK_KM.get(
            geo.precision, 1000.0
        )
        dist = hop.distance_km.get(anchor.id)
        if dist is None:
            dist = hop.distance_km[anchor.id] = great_circle_km(anchor.lat, anchor.lon, geo.lat, geo.lon)
        v.distance_km = dist
        if v.distance_km > v.bound_km:
            v.status = "gated"
        return v

    # -- output -------------------------------------------------------------------

    def _emit_flag(self, sess: _Session, flag: dict[str, Any], account: str | None) -> Findings:
        """Emit (or re-emit, once the login names the account) a flag and its alert.

        The alert subject is fixed at the first emission: the account when known,
        else the source prefix; a later login only adds the account to it.
        """
        flag["account"] = account
        if "subject_key" not in flag:
            flag["subject_key"] = f"account:{account}" if account else f"prefix:{flag['prefix']}"
        subject_key = flag["subject_key"]
        kind, _, value = subject_key.partition(":")
        subject = {kind: value}
        ts = datetime.fromisoformat(flag["ts"])
        alert = self.alerts.update(
            subject_key, subject, ts, flag["score"], flag["event_id"],
            [account] if account else [], flag["evidence"],
            f"{account or flag['prefix']}: {flag['reasons'][0]}",
        )
        fe = FlaggedEvent(
            event_id=flag["event_id"], ts=ts, kind="route_anomaly", account=account,
            session_id=flag["session_id"], src_ip=flag["src_ip"], country=flag["country"],
            asn=flag["asn"], score=flag["score"], reasons=flag["reasons"],
            evidence=flag["evidence"], alert_id=alert.alert_id, detector=self.name,
        )
        return Findings(flags=[fe], alerts=[alert])

    # -- snapshots ----------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "version": 1,
            "sessions": [[k, {"account": s.account, "route": s.route, "flag": s.flag,
                              "extra": s.extra}] for k, s in self.sessions.items()],
            "alerts": self.alerts.state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            return
        self.sessions.clear()
        for key, row in state.get("sessions", []):
            self.sessions.put(key, _Session(row["account"], row["route"], row["flag"],
                                            dict(row.get("extra") or {})))
        self.alerts.load_state(state.get("alerts", []))
