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
   ignored. Hops with fewer samples, and hops whose country has no location to
   check (no reference point), are ``unverified`` and ignored as well;
4. checks the relay leg: a foreign hop before the first home-country hop (the
   exit) lies on the exit's path, so within the later one's RTT radius of it; a
   foreign hop out of that reach (a transit router registered abroad answering in
   the same milliseconds as the home routers after it) is ``gated`` too;
5. compresses the surviving hops to a country path and an ASN path and flags a
   foreign origin before a home-country exit when ``src_ip`` geolocates to a
   home country (allow-listed ranges are never flagged);
6. emits a route signature, a hash of the compressed country and ASN paths and
   the /24 of the last foreign hop, which the farm detector groups on.

``Enriched.notes["route"]`` carries ``signature``, ``country_path``,
``asn_path``, ``foreign_origin`` and ``gated_hops``. A bounded per-session
memory joins traceroutes and logins in either order: a login arriving after its
session's traceroute gets ``notes["route"]``, a traceroute arriving after its
session's login gets ``notes["account"]``, ``notes["login_event_id"]`` and
``notes["login_ts"]`` (epoch seconds).
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
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import Any

from pathsentry.config import Server
from pathsentry.detectors import register
from pathsentry.detectors.addresses import ip_text
from pathsentry.detectors.base import DetectorContext, Enriched, Findings, SessionTable
from pathsentry.detectors.bounded import AlertBook, remember
from pathsentry.detectors.physics import KM_PER_MS_RTT, great_circle_km, median
from pathsentry.detectors.route_saved import check_route_share, check_route_state
from pathsentry.detectors.settings import settings_dict
from pathsentry.enrich.geo import GeoInfo, prefix_of
from pathsentry.schemas import FlaggedEvent, Login, Traceroute

__all__ = ["HopVerdict", "RouteDetector", "compress"]

#: How far a hop's geolocated point may be from the truth, by precision (km).
HOP_SLACK_KM: dict[str, float] = {"city": 100.0, "country": 600.0}

DEFAULTS: dict[str, Any] = {
    #: RTT samples a hop needs for its country to count (the median of three ignores one rate-limit
    #: spike); fewer: unverified
    "min_samples": 3,
    #: sessions remembered to join a traceroute and its login in either order (least recently used
    #: dropped)
    "sessions_max": 100_000,
    #: alert records kept (least recently used dropped)
    "alerts_max": 50_000,
    #: geolocated hop addresses remembered, each looked up and measured once (least recently used
    #: dropped)
    "hops_max": 100_000,
}


#: A hop verdict as a tuple: the fields of :class:`HopVerdict`, in order.
_Verdict = tuple[int, str | None, str | None, int | None, float | None, int, str,
                 float | None, float | None]
_ttl_of = attrgetter("ttl")


@dataclass(slots=True)
class _Walk:
    """The hops of one traceroute, gated (:meth:`RouteDetector._gate`)."""

    verdicts: list[_Verdict] = field(default_factory=list)
    trusted: list[_Verdict] = field(default_factory=list)
    country_path: list[str] = field(default_factory=list)
    asn_path: list[int] = field(default_factory=list)
    gated: list[int] = field(default_factory=list)
    #: index in ``trusted`` of the first home-country hop
    first_home: int | None = None


#: route signatures of recent (country path | ASN path | last foreign /24) texts, and the
#: prefixes of recent hop addresses (bounded: cleared when full)
_SIGNATURES: dict[str, str] = {}
_PREFIXES: dict[str, str] = {}
_SIGNATURES_MAX = 1 << 14


def _prefix(ip: str) -> str:
    """``prefix_of(ip)``, remembered."""
    prefix = _PREFIXES.get(ip)
    if prefix is None:
        prefix = remember(_PREFIXES, ip, prefix_of(ip), _SIGNATURES_MAX)
    return prefix


def _signature(text: str) -> str:
    sig = _SIGNATURES.get(text)
    if sig is None:
        sig = remember(_SIGNATURES, text, hashlib.blake2b(text.encode(), digest_size=8).hexdigest(),
                       _SIGNATURES_MAX)
    return sig


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

    @classmethod
    def _make(cls, fields: _Verdict) -> HopVerdict:
        return cls(*fields)

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


class _Session:
    """One session's memory: its account, route note, flag, and what its login said
    (fields, not a dict per session; ``joined``: the login was seen)."""

    __slots__ = ("account", "flag", "joined", "login_event_id", "login_ts", "route", "server_id")

    def __init__(self, account: str | None = None, route: dict[str, Any] | None = None,
                 flag: dict[str, Any] | None = None) -> None:
        self.account = account
        self.route = route
        #: the emitted flag, re-emitted once the account is known
        self.flag = flag
        self.joined = False
        self.server_id: str | None = None
        self.login_event_id: str | None = None
        self.login_ts: float | None = None

    def extra(self) -> dict[str, Any]:
        """What the login said, as saved: every field once the login was seen, before
        that the ones a loaded state set."""
        if self.joined:
            return {"server_id": self.server_id, "login_event_id": self.login_event_id,
                    "login_ts": self.login_ts}
        out: dict[str, Any] = {}
        if self.server_id is not None:
            out["server_id"] = self.server_id
        if self.login_ts is not None:
            out["login_ts"] = self.login_ts
        return out

    def load_extra(self, extra: dict[str, Any]) -> None:
        self.joined = "login_event_id" in extra
        self.server_id = extra.get("server_id")
        self.login_event_id = extra.get("login_event_id")
        self.login_ts = extra.get("login_ts")


class RouteDetector(SessionTable):
    """Foreign-origin routes behind home-country addresses, with RTT-gated hops."""

    name = "route"
    consumes = frozenset({"login", "traceroute"})

    def __init__(self, ctx: DetectorContext) -> None:
        super().__init__(ctx)
        cfg = settings_dict(self.name, ctx.settings(self.name), DEFAULTS, __name__)
        self.min_samples = max(1, int(cfg["min_samples"]))
        self.home = {c.upper() for c in ctx.config.home_countries}
        # session memory, least recently used first (bounded by ``sessions_max``)
        self.sessions: OrderedDict[str, _Session] = OrderedDict()
        self.sessions_max = max(1, int(cfg["sessions_max"]))
        self.alerts = AlertBook(self.name, "route_anomaly", cfg["alerts_max"])
        # geolocated hop addresses, least recently used first (a cache: its bound only
        # costs lookups again)
        self.hops: OrderedDict[str, _Hop] = OrderedDict()
        self.hops_max = max(1, int(cfg["hops_max"]))

    def process(self, ev: Enriched, key: str | None = None) -> Findings | None:
        event = ev.event
        if isinstance(event, Login):
            fields = event.__dict__  # (pydantic keeps the fields there; plain lookups are cheaper)
            sid = fields["session_id"]
            if sid is None:
                return None
            sess = self._session(sid)
            sess.account = account = fields["account"]
            sess.joined = True
            sess.server_id = fields["server_id"]
            sess.login_event_id = fields["event_id"]
            sess.login_ts = ev.ts
            if sess.route is not None:
                ev.notes["route"] = sess.route
            if sess.flag is not None and sess.flag.get("account") is None:
                return self._emit_flag(sess, sess.flag, account)
            return None
        if not isinstance(event, Traceroute):
            return None
        sid = event.session_id
        sess = self._session(sid) if sid else _Session()
        if sess.account is not None:
            ev.notes["account"] = sess.account
        if sess.joined:
            ev.notes["login_event_id"] = sess.login_event_id
            ev.notes["login_ts"] = sess.login_ts
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
            "session_id": sid, "src_ip": ip_text(event.src_ip), "country": ev.geo.country,
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

    def _session(self, sid: str) -> _Session:
        """The session's memory, created if new; most recently used; the least recently
        used evicted beyond ``sessions_max``."""
        sess = self.sessions.get(sid)
        if sess is None:
            sess = _Session()
            self._put(sid, sess)
        else:
            self.sessions.move_to_end(sid)
        return sess

    def _put(self, sid: str, sess: _Session) -> None:
        sessions = self.sessions
        sessions[sid] = sess
        sessions.move_to_end(sid)
        while len(sessions) > self.sessions_max:
            sessions.popitem(last=False)

    # -- analysis -----------------------------------------------------------------

    def _anchor(self, ev: Enriched, tr: Traceroute, sess: _Session) -> tuple[Server | None, str]:
        """The known point hop RTTs are bounded against, and how."""
        # a client-run traceroute names its destination in an extra ``server_id``
        # field, or the session's login does
        extra = tr.model_extra or {}
        dest = extra.get("server_id") or sess.server_id or ""
        server = ev.server or self.ctx.config.server(str(dest))
        if server is None:
            return None, "none"
        if tr.direction == "server_to_client" and ev.server is not None:
            return server, "vantage"
        return server, "destination"

    def _analyse(
        self, ev: Enriched, tr: Traceroute, sess: _Session
    ) -> tuple[dict[str, Any], list[HopVerdict], tuple[float, list[str]] | None]:
        """The route note, and for a flagged route its hop verdicts and (score, reasons)."""
        hops = sorted(tr.hops, key=_ttl_of)
        if tr.direction == "server_to_client":
            hops.reverse()  # origin (client end) first
        anchor, mode = self._anchor(ev, tr, sess)
        # client-run traceroutes: the destination's own RTT widens every bound
        dest_ms = 0.0
        if mode == "destination":
            for h in reversed(hops):  # the last hop with enough samples
                if len(h.rtt_ms) >= self.min_samples:
                    dest_ms = median(list(h.rtt_ms))
                    break
        walk = self._gate(hops, anchor, dest_ms)
        if walk.first_home:
            self._check_leg(walk)
        verdicts, trusted, first_home = walk.verdicts, walk.trusted, walk.first_home
        country_path, asn_path = walk.country_path, walk.asn_path
        foreign = trusted[:first_home] if first_home is not None else []
        last_ip = foreign[-1][1] if foreign else None
        last_foreign = _prefix(last_ip) if last_ip else None
        claimed_home = (ev.geo.country or "").upper() in self.home
        foreign_origin = bool(foreign) and claimed_home
        sig_src = f"{'>'.join(country_path)}|{'>'.join(map(str, asn_path))}|{last_foreign or ''}"
        route: dict[str, Any] = {
            "signature": _signature(sig_src),
            "country_path": country_path,
            "asn_path": asn_path,
            "foreign_origin": foreign_origin,
            "gated_hops": walk.gated,
            "last_foreign_prefix": last_foreign,
            "gate": mode,
        }
        if not foreign_origin:
            return route, [], None
        path = " → ".join(country_path)
        reasons = [f"foreign origin before a home-country exit: {path}"]
        for v in map(HopVerdict._make, foreign):
            network = f" (AS{v.asn})" if v.asn is not None else ""
            reasons.append(
                f"hop {v.ttl} {v.ip} in {v.country}{network} at {v.median_ms:.1f} ms "
                f"median: within its {v.bound_km:.0f} km RTT bound"
                if v.median_ms is not None and v.bound_km is not None else
                f"hop {v.ttl} {v.ip} in {v.country}{network}"
            )
        hop_verdicts = [HopVerdict._make(v) for v in verdicts]
        gated = [v for v in hop_verdicts if v.status == "gated"]
        if gated:
            reasons.append("ignored as squatted/mis-geolocated: " + ", ".join(
                f"hop {v.ttl} ({v.country}, {v.distance_km:.0f} km > {v.bound_km:.0f} km bound)"
                for v in gated if v.distance_km is not None and v.bound_km is not None
            ))
        n_foreign = len(foreign)
        score = min(0.97, 0.8 + 0.06 * (n_foreign - 1) + (0.05 if mode != "none" else 0.0))
        return route, hop_verdicts, (round(score, 4), reasons)

    def _gate(self, hops: list[Any], anchor: Server | None, dest_ms: float) -> _Walk:
        """Each hop's verdict, as the fields of a :class:`HopVerdict` (one is only made
        for the hops of a flagged route), and the trusted hops' compressed paths."""
        cache = self.hops
        lookup = self.ctx.geo.lookup
        min_samples = self.min_samples
        home = self.home
        walk = _Walk()
        out, trusted, gated = walk.verdicts, walk.trusted, walk.gated
        cpath, apath = walk.country_path, walk.asn_path
        for h in hops:
            ttl, ip, samples = h.ttl, h.ip, h.rtt_ms
            n = len(samples)
            if ip is None:
                out.append((ttl, None, None, None, None, n, "silent", None, None))
                continue
            text = ip_text(ip)
            hop = cache.get(text)
            if hop is None:
                hop = cache[text] = _Hop(lookup(ip))
                if len(cache) > self.hops_max:
                    cache.popitem(last=False)
            else:
                cache.move_to_end(text)
            geo = hop.geo
            if geo.kind == "private":
                out.append((ttl, text, None, None, None, n, "private", None, None))
                continue
            country, asn = geo.country, geo.asn
            if country is None:
                out.append((ttl, text, None, asn, None, n, "unknown", None, None))
                continue
            if n < min_samples:
                out.append((ttl, text, country, asn, None, n, "unverified", None, None))
                continue
            # median(samples), inline (physics.quantile at 0.5; n >= min_samples >= 1)
            srt = sorted(samples)
            if n == 1:
                median_ms = srt[0]
            else:
                pos = 0.5 * (n - 1)
                lo = int(pos)
                hi = lo + 1 if lo + 1 < n - 1 else n - 1  # min(lo + 1, n - 1)
                median_ms = srt[lo] + (srt[hi] - srt[lo]) * (pos - lo)
            v: _Verdict
            if anchor is None:
                v = (ttl, text, country, asn, median_ms, n, "ok", None, None)
            elif geo.lat is None or geo.lon is None:
                # a country the RTT cannot be checked against: as unverified as a hop
                # without enough samples
                out.append((ttl, text, country, asn, median_ms, n, "unverified", None, None))
                continue
            else:
                bound_km = (median_ms + dest_ms) * KM_PER_MS_RTT + HOP_SLACK_KM.get(
                    geo.precision, 1000.0
                )
                dist = hop.distance_km.get(anchor.id)
                if dist is None:
                    dist = hop.distance_km[anchor.id] = great_circle_km(
                        anchor.lat, anchor.lon, geo.lat, geo.lon)
                if dist > bound_km:
                    out.append((ttl, text, country, asn, median_ms, n, "gated", bound_km, dist))
                    gated.append(ttl)
                    continue
                v = (ttl, text, country, asn, median_ms, n, "ok", bound_km, dist)
            out.append(v)
            # a trusted hop (ok, with a country): the paths as compress() makes them
            if walk.first_home is None and country in home:
                walk.first_home = len(trusted)
            trusted.append(v)
            if not cpath or cpath[-1] != country:
                cpath.append(country)
            if asn is not None and (not apath or apath[-1] != asn):
                apath.append(asn)
        return walk

    def _check_leg(self, walk: _Walk) -> None:
        """Gate the foreign hops the home-country exit is out of reach of.

        Of a foreign hop and the exit (the first trusted home-country hop), the one
        probed first (the lower TTL) is on the other's forward path, so the two lie
        within the RTT radius of the later one: at most ``median x 100 km`` plus both
        geolocations' slack (the exit's median in a client-run traceroute, the
        foreign hop's in one from a vantage). A foreign hop farther than that (a
        transit router registered abroad, answering in the same milliseconds as the
        home routers after it) is mis-geolocated, not the origin of a relay leg: it
        is gated and the paths are made again without it. A relay's international
        leg passes: the later hop answers only after the leg.
        """
        lookup = self.ctx.geo.lookup
        exit_hop = walk.trusted[walk.first_home or 0]
        exit_geo = lookup(exit_hop[1] or "")
        if exit_geo.lat is None or exit_geo.lon is None:
            return
        slack = HOP_SLACK_KM.get(exit_geo.precision, 1000.0)
        dropped: dict[int, tuple[float, float]] = {}
        for v in walk.trusted[:walk.first_home]:
            geo = lookup(v[1] or "")
            later_ms = v[4] if v[0] > exit_hop[0] else exit_hop[4]
            if geo.lat is None or geo.lon is None or later_ms is None:
                continue
            bound = later_ms * KM_PER_MS_RTT + slack + HOP_SLACK_KM.get(geo.precision, 1000.0)
            dist = great_circle_km(exit_geo.lat, exit_geo.lon, geo.lat, geo.lon)
            if dist > bound:
                dropped[v[0]] = (bound, dist)
        if not dropped:
            return
        kept = [v for v in walk.trusted if v[0] not in dropped]
        walk.verdicts = [
            v[:6] + ("gated",) + dropped[v[0]] if v[0] in dropped and v[6] == "ok" else v
            for v in walk.verdicts
        ]
        walk.gated = sorted(walk.gated + list(dropped))
        walk.trusted = kept
        walk.first_home = next((i for i, v in enumerate(kept) if v[2] in self.home), None)
        walk.country_path = compress([v[2] for v in kept])
        walk.asn_path = compress([v[3] for v in kept if v[3] is not None])

    # -- output -------------------------------------------------------------------

    def _emit_flag(self, sess: _Session, flag: dict[str, Any], account: str | None) -> Findings:
        """Emit (or re-emit, once the login names the account) a flag and its alert.

        The alert is about the exit the foreign route enters the home country through:
        its subject is the source prefix whatever arrives first (the traceroute or its
        login), so the stream and a replay of the same events give the same alert id;
        the accounts seen through it are listed in the alert as the logins name them.
        """
        flag["account"] = account
        subject_key = f"prefix:{flag['prefix']}"
        subject = {"prefix": flag["prefix"]}
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
            "sessions": [self._session_row(k, s) for k, s in self.sessions.items()],
            "alerts": self.alerts.state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` (refused whole, :class:`~.saved.StateInvalid`, before
        anything changes unless every field is as a save writes it)."""
        if state.get("version") != 1:
            return
        check_route_state(state, self.name)
        self.sessions.clear()
        self._load_rows(state)
        self.alerts.load_state(state.get("alerts", []))

    def load_sessions(self, state: Any) -> None:
        if isinstance(state, dict) and state.get("version") == 1:
            check_route_share(state)
            self._load_rows(state)

    def _load_rows(self, state: dict[str, Any]) -> None:
        for row in state.get("sessions", []):
            self._load_session_row(row)

    def _session_table(self) -> OrderedDict[str, _Session]:
        return self.sessions

    def _session_row(self, sid: str, s: _Session) -> list[Any]:
        return [sid, {"account": s.account, "route": s.route, "flag": s.flag, "extra": s.extra()}]

    def _load_session_row(self, row: list[Any]) -> None:
        key, r = row
        sess = _Session(r["account"], r["route"], r["flag"])
        sess.load_extra(r.get("extra") or {})
        self._put(key, sess)


register(RouteDetector)
