"""Relay detection from latency physics (flag and alert kind ``vpn_relay``).

A VPN, proxy or relay with a home-country exit address hides where the client
is, but not how long its packets take. Per login (and the ``rtt_probe`` events
of the same session) the detector weighs five kinds of evidence:

``gap``
    Cross-layer gap. An L4 relay (SOCKS, Shadowsocks, a VPS forwarder)
    terminates TCP, so the server-side kernel ``tcp_rtt_ms`` only covers the
    server-relay leg while ``app_rtt_ms`` covers the whole path: ``tcp << app``.
    An ICMP/TCP probe from the login server that is answered far faster than
    the application is the same signal one layer down (the VPN endpoint answers
    for the client); it is ignored for mobile access, where the carrier gateway
    answers pings.
``baseline``
    Online baselines of the session's minimum app RTT per (server, /24 or /48),
    falling back to (server, ASN) and (server, country, access kind): River
    running quantiles (P² estimator) and counts. A baseline with fewer than
    ``warmup_samples`` samples gives no verdict, and the evidence says so.
``physics``
    The claimed location (geolocation of ``src_ip``) and the server are a
    great-circle distance apart; light in fibre needs ``km / 100`` ms of RTT,
    routed paths about twice that, plus the access network's share. What the
    measurement exceeds beyond that (and a per-access-kind tolerance) is the
    detour, expressed in ms and in km (100 km per ms of RTT).
``vantage``
    Constraint-based geolocation: the responder lies inside a disk of radius
    ``RTT x 100 km`` around every probing vantage. A claimed point outside a
    disk is violated; the disks' intersection is the rough feasible region.
``route`` / ``model``
    A foreign-origin route found by the route detector for the same session,
    and a River :class:`~river.anomaly.HalfSpaceTrees` model over squashed
    residual features (gap, baseline z, physics excess, vantage violation).

The components are combined as a noisy-OR of weighted scores, then adjusted by
the account's bounded history: one noisy session on an otherwise clean account
is damped, repeated suspicious sessions raise the score. Allow-listed ranges
(config ``[[allow]]``) are never flagged; a suppressed flag keeps its reason in
``Enriched.notes["relay"]``. Baselines are only fed with unsuspicious,
non-allow-listed sessions, so relays do not teach the baseline that they are
normal.

Memory is bounded (least-recently-used keys are evicted): ``baseline_keys_max``
baselines of about 1 KiB each (three P² quantile sketches and a count),
``sessions_max`` sessions (a login reference and at most ``MAX_VANTAGES``
probes, about 1 KiB), ``accounts_max`` account histories (``history_len``
scores, about 0.4 KiB) and ``alerts_max`` alert records (at most
``MAX_ALERT_EVENTS`` event ids, about 2 KiB). The defaults cap the detector at
roughly 100k x 1 + 100k x 1 + 200k x 0.4 + 50k x 2 KiB, i.e. under 400 MiB.
The anomaly model is a fixed size. :meth:`LatencyDetector.state` is a JSON
snapshot of all of it, so baselines survive a worker restart.

Example: a KR client behind a Seoul L4 relay (TCP terminates 2 ms away, the
game answers in 62 ms):

>>> from pathsentry.config import load_config
>>> from pathsentry.detectors.base import DetectorContext, Enriched
>>> from pathsentry.enrich.geo import GeoInfo, GeoResolver
>>> from pathsentry.schemas import parse_event
>>> cfg = load_config(text='[[server]]\\nid = "kr-sel-1"\\nlat = 37.57\\nlon = 126.98\\n'
...                        'country = "KR"\\n', env={})
>>> det = LatencyDetector(DetectorContext(cfg, GeoResolver([])))
>>> login = parse_event({"kind": "login", "event_id": "l1", "ts": "2026-01-01T00:00:00Z",
...     "src_ip": "203.0.113.7", "session_id": "s1", "account": "xiaopai001",
...     "server_id": "kr-sel-1", "app_rtt_ms": [62.0, 64.5, 63.1], "tcp_rtt_ms": 2.1})
>>> geo = GeoInfo(country="KR", asn=64500, lat=37.5, lon=127.0, kind="hosting",
...               precision="city")
>>> ev = Enriched(login, geo, "203.0.113.0/24", server=cfg.server("kr-sel-1"))
>>> out = det.process(ev)
>>> [f.kind for f in out.flags], ev.notes["relay"]["flagged"], round(ev.notes["relay"]["gap_ms"])
(['vpn_relay'], True, 60)
>>> out.flags[0].reasons[0]
'tcp_rtt 2.1 ms vs app_rtt 62.0 ms: TCP terminates 60 ms·100 km ≈ 5990 km before the client'
"""

from __future__ import annotations

import base64
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from river import anomaly, stats

from pathsentry.config import AllowEntry
from pathsentry.detectors import register
from pathsentry.detectors.base import Detector, DetectorContext, Enriched, Findings
from pathsentry.detectors.physics import (
    ACCESS_FLOOR_MS,
    ACCESS_TYPICAL_MS,
    KM_PER_MS_RTT,
    PATH_INFLATION,
    destination_point,
    fibre_floor_ms,
    great_circle_km,
    quantile,
    ramp,
    squash,
)
from pathsentry.enrich.geo import GeoInfo
from pathsentry.schemas import (
    Alert,
    AlertKind,
    FlaggedEvent,
    Login,
    RttProbe,
    make_alert_id,
    parse_event,
    severity_for,
)

__all__ = [
    "MAX_ALERT_EVENTS",
    "MAX_VANTAGES",
    "AlertBook",
    "Baseline",
    "BoundedLRU",
    "LatencyDetector",
    "feasible_region",
]

K = TypeVar("K")
V = TypeVar("V")

#: Probing vantages remembered per session.
MAX_VANTAGES = 16
#: Event ids kept per alert (the most recent ones).
MAX_ALERT_EVENTS = 50

#: How far a geolocated point may be from the truth, by geo precision (km).
PRECISION_SLACK_KM: dict[str, float] = {"city": 50.0, "country": 500.0}
#: Extra RTT (ms) over the typical expectation tolerated per access kind before
#: physics counts as evidence: rural DSL and LTE are slow without any relay.
KIND_TOLERANCE_MS: dict[str, float] = {
    "hosting": 4.0,
    "relay": 4.0,
    "business": 12.0,
    "education": 12.0,
    "residential": 25.0,
    "mobile": 60.0,
}
DEFAULT_TOLERANCE_MS = 30.0
#: Smallest baseline spread (p90 - p10, ms) a z-score is measured against: a
#: radio link can spike every sample of a short session (LTE: 15-60 ms), a
#: wired line cannot.
MIN_SPREAD_MS: dict[str, float] = {"mobile": 8.0}
DEFAULT_MIN_SPREAD_MS = 2.0
#: How much a baseline verdict weighs by how specific the baseline is.
#: A fallback baseline (ASN, country) alone stays below the flag threshold: a new
#: rural DSL prefix is slower than its ISP's city prefixes without any relay.
LEVEL_WEIGHT: dict[str, float] = {"prefix": 1.0, "asn": 0.6, "country": 0.5}
#: Noisy-OR weight of each evidence component.
WEIGHTS: dict[str, float] = {
    "gap": 0.95,
    "vantage": 0.85,
    "baseline": 0.85,
    "physics": 0.7,
    "route": 0.5,
    "model": 0.25,
}

DEFAULTS: dict[str, Any] = {
    "warmup_samples": 20,
    "flag_threshold": 0.6,
    "alert_threshold": 0.85,
    "alert_repeat": 2,
    "history_len": 8,
    "baseline_keys_max": 100_000,
    "sessions_max": 100_000,
    "accounts_max": 200_000,
    "alerts_max": 50_000,
    "gap_min_ms": 5.0,
    "gap_full_ms": 15.0,
    "suspicious_history": 0.55,
    "hst_trees": 10,
    "hst_height": 6,
    "hst_window": 250,
    "seed": 7,
}


class BoundedLRU(Generic[K, V]):
    """A mapping that evicts its least-recently-used key beyond ``cap`` entries.

    >>> lru: BoundedLRU[str, int] = BoundedLRU(2)
    >>> lru.put("a", 1); lru.put("b", 2); _ = lru.get("a"); lru.put("c", 3)
    >>> list(lru.keys()), lru.evicted
    (['a', 'c'], 1)
    """

    def __init__(self, cap: int) -> None:
        self.cap = max(1, int(cap))
        self.evicted = 0
        self._d: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._d.get(key)
        if value is not None:
            self._d.move_to_end(key)
        return value

    def peek(self, key: K) -> V | None:
        """Look up without refreshing the key's recency."""
        return self._d.get(key)

    def put(self, key: K, value: V) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.cap:
            self._d.popitem(last=False)
            self.evicted += 1

    def get_or_create(self, key: K, factory: Callable[[], V]) -> V:
        value = self.get(key)
        if value is None:
            value = factory()
            self.put(key, value)
        return value

    def keys(self) -> Iterator[K]:
        return iter(self._d.keys())

    def items(self) -> Iterator[tuple[K, V]]:
        """Coldest first, so reloading the items restores the recency order."""
        return iter(self._d.items())

    def clear(self) -> None:
        self._d.clear()

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: object) -> bool:
        return key in self._d


@dataclass(slots=True)
class _AlertRecord:
    alert_id: str
    first_seen: str
    version: int = 0
    score: float = 0.0
    event_ids: list[str] = field(default_factory=list)
    accounts: list[str] = field(default_factory=list)


class AlertBook:
    """Alerts with deterministic ids, re-emitted with ``version + 1`` as they grow.

    >>> from datetime import datetime, timezone
    >>> book = AlertBook("latency", "vpn_relay", cap=10)
    >>> t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    >>> a1 = book.update("acc:x", {"account": "x"}, t, 0.9, "e1", ["x"], {}, "first")
    >>> a2 = book.update("acc:x", {"account": "x"}, t, 0.7, "e2", ["x"], {}, "second")
    >>> a1.alert_id == a2.alert_id, a2.version, a2.score, a2.event_ids
    (True, 2, 0.9, ['e1', 'e2'])
    """

    def __init__(self, detector: str, kind: AlertKind, cap: int) -> None:
        self.detector = detector
        self.kind: AlertKind = kind
        self._records: BoundedLRU[str, _AlertRecord] = BoundedLRU(cap)

    def alert_id(self, subject_key: str) -> str:
        return make_alert_id(self.detector, self.kind, subject_key)

    def known(self, subject_key: str) -> bool:
        return subject_key in self._records

    def update(
        self,
        subject_key: str,
        subject: dict[str, Any],
        ts: datetime,
        score: float,
        event_id: str,
        accounts: list[str],
        evidence: dict[str, Any],
        summary: str,
    ) -> Alert:
        rec = self._records.get_or_create(
            subject_key, lambda: _AlertRecord(self.alert_id(subject_key), ts.isoformat())
        )
        rec.version += 1
        rec.score = max(rec.score, score)
        if event_id not in rec.event_ids:
            rec.event_ids = [*rec.event_ids, event_id][-MAX_ALERT_EVENTS:]
        for acc in accounts:
            if acc not in rec.accounts:
                rec.accounts = [*rec.accounts, acc][-MAX_ALERT_EVENTS:]
        return Alert(
            alert_id=rec.alert_id,
            ts=ts,
            kind=self.kind,
            severity=severity_for(rec.score),
            score=round(rec.score, 4),
            subject=subject,
            accounts=list(rec.accounts),
            event_ids=list(rec.event_ids),
            evidence=evidence,
            summary=summary,
            detector=self.detector,
            first_seen=datetime.fromisoformat(rec.first_seen),
            last_seen=ts,
            version=rec.version,
        )

    def state(self) -> list[dict[str, Any]]:
        return [{"key": k, **asdict(r)} for k, r in self._records.items()]

    def load_state(self, rows: list[dict[str, Any]]) -> None:
        self._records.clear()
        for row in rows:
            key = row.pop("key")
            self._records.put(key, _AlertRecord(**row))


class Baseline:
    """Running low/median/high quantiles and a count of session min-RTTs for one key.

    >>> b = Baseline()
    >>> for x in range(1, 41):
    ...     b.update(float(x))
    >>> b.n, [round(v) for v in b.quantiles()]
    (40, [4, 20, 36])
    >>> Baseline.restore(b.snapshot()).quantiles() == b.quantiles()
    True
    """

    QS: ClassVar[tuple[float, float, float]] = (0.1, 0.5, 0.9)
    __slots__ = ("_count", "_q")

    def __init__(self) -> None:
        self._count = stats.Count()
        self._q = tuple(stats.Quantile(q) for q in self.QS)

    @property
    def n(self) -> int:
        return int(self._count.get())

    def update(self, x: float) -> None:
        self._count.update(x)
        for q in self._q:
            q.update(x)

    def quantiles(self) -> tuple[float, float, float]:
        lo, mid, hi = (float(q.get() or 0.0) for q in self._q)
        return lo, mid, hi

    def snapshot(self) -> dict[str, Any]:
        # The P² sketch lives in River's Rust core; its byte state is what it pickles.
        return {
            "n": self.n,
            "q": [base64.b64encode(q._quantile.__getstate__()).decode() for q in self._q],
        }

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> Baseline:
        b = cls()
        b._count.n = int(snap["n"])
        for q, raw in zip(b._q, snap["q"], strict=True):
            q._quantile.__setstate__(base64.b64decode(raw))
            q._is_updated = b.n > 0
        return b


@dataclass(slots=True)
class _Probe:
    vantage: str
    method: str
    min_ms: float
    samples: int


@dataclass(slots=True)
class _Session:
    login: Enriched | None = None
    probes: dict[str, _Probe] = field(default_factory=dict)
    score: float = 0.0
    flagged: bool = False


@dataclass(slots=True)
class _Account:
    recent: deque[tuple[str, float]]
    flagged_sessions: int = 0


@dataclass(slots=True)
class _Assessment:
    base: float
    components: dict[str, float]
    reasons: list[str]
    evidence: dict[str, Any]
    features: dict[str, float]
    gap_ms: float | None = None
    excess_ms: float | None = None
    #: vantage disks (lat, lon, radius km); the feasible region is only computed for flags
    disks: list[tuple[float, float, float]] = field(default_factory=list)


def feasible_region(
    disks: list[tuple[float, float, float]], rings: int = 4, bearings: int = 16
) -> dict[str, Any] | None:
    """Rough intersection of RTT disks ``(lat, lon, radius_km)``.

    Candidate points on a polar grid inside the tightest disk are kept if they lie
    in every disk; the answer is their centroid and spread (``None`` if no point
    survives, i.e. the disks do not intersect at this resolution).

    >>> r = feasible_region([(37.57, 126.98, 300.0), (35.18, 129.08, 300.0)])
    >>> r["anchor_radius_km"], 100 < r["centroid_distance_km"]["0"] < 300
    (300.0, True)
    """
    if not disks:
        return None
    anchor = min(range(len(disks)), key=lambda i: disks[i][2])
    alat, alon, arad = disks[anchor]
    points = [(alat, alon)]
    for ring in range(1, rings + 1):
        for b in range(bearings):
            points.append(destination_point(alat, alon, 360.0 * b / bearings, arad * ring / rings))
    inside = [
        p for p in points
        if all(great_circle_km(p[0], p[1], la, lo) <= rad for la, lo, rad in disks)
    ]
    if not inside:
        return None
    clat = sum(p[0] for p in inside) / len(inside)
    clon = sum(p[1] for p in inside) / len(inside)
    spread = max(great_circle_km(clat, clon, p[0], p[1]) for p in inside)
    return {
        "centroid": [round(clat, 3), round(clon, 3)],
        "radius_km": round(spread),
        "points_inside": len(inside),
        "anchor": anchor,
        "anchor_radius_km": round(arad, 1),
        "centroid_distance_km": {
            str(i): round(great_circle_km(clat, clon, la, lo))
            for i, (la, lo, _) in enumerate(disks)
        },
    }


def _noisy_or(components: dict[str, float]) -> float:
    p = 1.0
    for value in components.values():
        p *= 1.0 - max(0.0, min(1.0, value))
    return 1.0 - p


def _geo_dict(geo: GeoInfo) -> dict[str, Any]:
    return asdict(geo)


@register
class LatencyDetector(Detector):
    """Relayed connections from latency physics, baselines and multi-vantage RTTs."""

    name = "latency"
    consumes = frozenset({"login", "rtt_probe"})
    _model_features: ClassVar[tuple[str, ...]] = (
        "gap_ratio", "gap", "baseline_z", "physics_excess", "vantage_violation",
    )

    def __init__(self, ctx: DetectorContext) -> None:
        super().__init__(ctx)
        cfg = {**DEFAULTS, **ctx.settings(self.name)}
        self.cfg = cfg
        self.warmup = int(cfg["warmup_samples"])
        self.flag_threshold = float(cfg["flag_threshold"])
        self.alert_threshold = float(cfg["alert_threshold"])
        self.alert_repeat = int(cfg["alert_repeat"])
        self.history_len = int(cfg["history_len"])
        self.suspicious_history = float(cfg["suspicious_history"])
        self.baselines: BoundedLRU[str, Baseline] = BoundedLRU(cfg["baseline_keys_max"])
        self.sessions: BoundedLRU[str, _Session] = BoundedLRU(cfg["sessions_max"])
        self.accounts: BoundedLRU[str, _Account] = BoundedLRU(cfg["accounts_max"])
        self.alerts = AlertBook(self.name, "vpn_relay", cfg["alerts_max"])
        self.model = self._new_model()

    # -- the River anomaly model -------------------------------------------------

    def _new_model(self) -> anomaly.HalfSpaceTrees:
        return anomaly.HalfSpaceTrees(
            n_trees=int(self.cfg["hst_trees"]),
            height=int(self.cfg["hst_height"]),
            window_size=int(self.cfg["hst_window"]),
            seed=int(self.cfg["seed"]),
        )

    def _model_state(self) -> dict[str, Any]:
        m = self.model
        return {
            "features": sorted(self._model_features) if m.trees else [],
            "counter": m.counter,
            "first_window": m._first_window,
            "mass": [[[n.l_mass, n.r_mass] for n in nodes] for nodes in m._tree_nodes],
        }

    def _load_model(self, snap: dict[str, Any]) -> None:
        # Tree structure is a pure function of the seed and the feature names, so
        # rebuilding with the same seed and overwriting the node masses restores it.
        self.model = self._new_model()
        if not snap.get("features"):
            return
        self.model.learn_one({f: 0.5 for f in snap["features"]})  # type: ignore[no-untyped-call]
        for nodes, masses in zip(self.model._tree_nodes, snap["mass"], strict=True):
            for node, (lm, rm) in zip(nodes, masses, strict=True):
                node.l_mass, node.r_mass = lm, rm
        self.model.counter = int(snap["counter"])
        self.model._first_window = bool(snap["first_window"])

    # -- event handling ----------------------------------------------------------

    def process(self, ev: Enriched, key: str | None = None) -> Findings | None:
        event = ev.event
        if isinstance(event, Login):
            return self._on_login(ev, event)
        if isinstance(event, RttProbe):
            return self._on_probe(ev, event)
        return None

    def _session_key(self, ev: Enriched) -> str:
        return ev.event.session_id or f"event:{ev.event.event_id}"

    def _on_probe(self, ev: Enriched, probe: RttProbe) -> Findings | None:
        sess = self.sessions.get_or_create(self._session_key(ev), _Session)
        lo = min(probe.rtt_ms)
        old = sess.probes.get(probe.vantage_id)
        if old is None or lo < old.min_ms:
            if old is None and len(sess.probes) >= MAX_VANTAGES:
                return None
            sess.probes[probe.vantage_id] = _Probe(
                probe.vantage_id, probe.method, lo, len(probe.rtt_ms) + (old.samples if old else 0)
            )
        if sess.login is None:
            return None
        # A late probe can only add evidence to the session's login: re-assess it
        # (no baseline or model learning: the login already taught them).
        login_ev = sess.login
        assert isinstance(login_ev.event, Login)
        assessed = self._assess(login_ev, login_ev.event, sess)
        score, history_note = self._with_history(login_ev.event.account, sess, assessed.base)
        if login_ev.allowed is not None or score < self.flag_threshold:
            return None
        if sess.flagged and score < sess.score + 0.05:
            return None
        return self._emit(login_ev, login_ev.event, sess, assessed, score, history_note)

    def _on_login(self, ev: Enriched, login: Login) -> Findings | None:
        sess = self.sessions.get_or_create(self._session_key(ev), _Session)
        sess.login = ev
        assessed = self._assess(ev, login, sess)
        score, history_note = self._with_history(login.account, sess, assessed.base)
        would_flag = score >= self.flag_threshold
        flagged = would_flag and ev.allowed is None
        note: dict[str, Any] = {
            "score": round(score, 4),
            "flagged": flagged,
            "exit_prefix": ev.prefix,
            "gap_ms": None if assessed.gap_ms is None else round(assessed.gap_ms, 2),
            "excess_ms": None if assessed.excess_ms is None else round(assessed.excess_ms, 2),
        }
        if would_flag and ev.allowed is not None:
            note["suppressed"] = f"allow-listed {ev.allowed.cidr}: {ev.allowed.reason}"
        ev.notes["relay"] = note
        if ev.allowed is None and self._teaches(assessed):
            self._learn(ev, login, assessed)
        if not flagged:
            self._remember(login.account, sess, assessed.base if ev.allowed is None else 0.0)
            return None
        return self._emit(ev, login, sess, assessed, score, history_note)

    @staticmethod
    def _teaches(a: _Assessment) -> bool:
        """Whether a session may update the baselines and the model.

        Sessions with intrinsic relay evidence (gap, physics, vantages, route) or
        out of their own prefix's range must not teach the baseline that relays are
        normal; a verdict from a fallback (ASN, country) baseline does not block
        learning, or a new prefix that is slower than its ISP would never warm up.
        """
        comps = {k: v for k, v in a.components.items() if k != "model"}
        if a.evidence.get("baseline", {}).get("used") != "prefix":
            comps.pop("baseline", None)
        return _noisy_or(comps) < 0.5

    def _learn(self, ev: Enriched, login: Login, assessed: _Assessment) -> None:
        value = login.min_app_rtt
        for _, key in self._baseline_keys(ev, login):
            self.baselines.get_or_create(key, Baseline).update(value)
        self.model.learn_one(assessed.features)  # type: ignore[no-untyped-call]

    # -- per-account history -----------------------------------------------------

    def _account(self, account: str) -> _Account:
        return self.accounts.get_or_create(
            account, lambda: _Account(deque(maxlen=self.history_len))
        )

    def _remember(self, account: str, sess: _Session, base: float) -> None:
        acc = self._account(account)
        sid = self._session_of(sess)
        entries = [(s, v) for s, v in acc.recent if s != sid]
        acc.recent = deque([*entries, (sid, base)], maxlen=self.history_len)

    @staticmethod
    def _session_of(sess: _Session) -> str:
        if sess.login is None:
            return ""
        return sess.login.event.session_id or sess.login.event.event_id

    def _with_history(self, account: str, sess: _Session, base: float) -> tuple[float, str | None]:
        acc = self.accounts.peek(account)
        if acc is None:
            return base, None
        sid = self._session_of(sess)
        prior = [v for s, v in acc.recent if s != sid]
        suspicious = sum(1 for v in prior if v >= self.suspicious_history)
        if base >= 0.35 and suspicious:
            boosted = base + (1.0 - base) * min(0.6, 0.2 * suspicious)
            return boosted, (
                f"{suspicious} of the account's last {len(prior)} sessions were also "
                f"suspicious: score {base:.2f} -> {boosted:.2f}"
            )
        if base < 0.8 and len(prior) >= 3 and max(prior) < 0.3:
            damped = base * 0.85
            return damped, (
                f"the account's last {len(prior)} sessions were clean: one noisy session is "
                f"not enough (score {base:.2f} -> {damped:.2f})"
            )
        return base, None

    # -- assessment ------------------------------------------------------------

    def _baseline_keys(self, ev: Enriched, login: Login) -> list[tuple[str, str]]:
        sid = login.server_id
        keys = [("prefix", f"{sid}|p|{ev.prefix}")]
        if ev.geo.asn is not None:
            keys.append(("asn", f"{sid}|a|{ev.geo.asn}"))
        if ev.geo.country:
            keys.append(("country", f"{sid}|c|{ev.geo.country}|{ev.geo.kind or '?'}"))
        return keys

    def _assess(self, ev: Enriched, login: Login, sess: _Session) -> _Assessment:
        app_min = login.min_app_rtt
        a = _Assessment(
            base=0.0, components={}, reasons=[], features={},
            evidence={
                "measured": {
                    "app_rtt_min_ms": round(app_min, 2),
                    "app_rtt_p10_ms": round(quantile(list(login.app_rtt_ms), 0.1), 2),
                    "app_rtt_samples": len(login.app_rtt_ms),
                    "tcp_rtt_ms": login.tcp_rtt_ms,
                    "server": login.server_id,
                },
                "claimed": {
                    "country": ev.geo.country, "asn": ev.geo.asn, "kind": ev.geo.kind,
                    "lat": ev.geo.lat, "lon": ev.geo.lon, "precision": ev.geo.precision,
                    "prefix": ev.prefix,
                },
            },
        )
        self._gap(ev, login, sess, a)
        self._physics(ev, app_min, a)
        self._baseline(ev, login, app_min, a)
        self._vantages(ev, sess, a)
        route = ev.notes.get("route")
        if isinstance(route, dict) and route.get("foreign_origin"):
            a.components["route"] = WEIGHTS["route"]
            path = " → ".join(route.get("country_path", []))
            a.reasons.append(f"route of this session has a foreign origin: {path}")
            a.evidence["route"] = {"country_path": route.get("country_path"),
                                   "signature": route.get("signature")}
        self._model_score(a)
        a.base = _noisy_or(a.components)
        a.evidence["components"] = {k: round(v, 3) for k, v in a.components.items()}
        return a

    def _gap(self, ev: Enriched, login: Login, sess: _Session, a: _Assessment) -> None:
        app_min = login.min_app_rtt
        net: float | None = login.tcp_rtt_ms
        label = "tcp_rtt"
        if ev.geo.kind != "mobile":
            for p in sess.probes.values():
                if p.vantage == login.server_id and p.method in ("icmp", "tcp") and (
                    net is None or p.min_ms < net
                ):
                    net, label = p.min_ms, f"{p.method} probe"
        a.features["gap_ratio"] = 0.0
        a.features["gap"] = 0.0
        if net is None:
            a.evidence["gap"] = {"verdict": "no tcp_rtt or network-layer probe"}
            return
        gap = app_min - net
        ratio = net / app_min if app_min > 0 else 1.0
        a.gap_ms = gap
        s = ramp(gap, float(self.cfg["gap_min_ms"]), float(self.cfg["gap_full_ms"])) * ramp(
            1.0 - ratio, 0.5, 0.75
        )
        a.features["gap_ratio"] = max(0.0, 1.0 - ratio)
        a.features["gap"] = squash(gap, 20.0)
        a.evidence["gap"] = {
            "network_rtt_ms": round(net, 2), "source": label, "app_rtt_min_ms": round(app_min, 2),
            "gap_ms": round(gap, 2), "gap_km": round(gap * KM_PER_MS_RTT),
            "ratio": round(ratio, 3), "verdict": "relay" if s > 0.5 else "consistent",
        }
        if s > 0:
            a.components["gap"] = WEIGHTS["gap"] * s
            what = "TCP terminates" if label == "tcp_rtt" else "the network layer answers"
            a.reasons.append(
                f"{label} {net:.1f} ms vs app_rtt {app_min:.1f} ms: {what} "
                f"{gap:.0f} ms·100 km ≈ {gap * KM_PER_MS_RTT:.0f} km before the client"
            )

    def _physics(self, ev: Enriched, app_min: float, a: _Assessment) -> None:
        a.features["physics_excess"] = 0.0
        geo, server = ev.geo, ev.server
        if server is None or geo.lat is None or geo.lon is None:
            a.evidence["physics"] = {"verdict": "no located claim or unknown server"}
            return
        dist = great_circle_km(server.lat, server.lon, geo.lat, geo.lon)
        kind = geo.kind or "unknown"
        floor = fibre_floor_ms(dist) + ACCESS_FLOOR_MS.get(kind, 0.3)
        expected = fibre_floor_ms(dist) * PATH_INFLATION + ACCESS_TYPICAL_MS.get(kind, 6.0)
        slack_ms = PRECISION_SLACK_KM.get(geo.precision, 1000.0) * PATH_INFLATION / KM_PER_MS_RTT
        tol = KIND_TOLERANCE_MS.get(kind, DEFAULT_TOLERANCE_MS)
        excess = app_min - expected
        a.excess_ms = excess
        s = ramp(excess - tol - slack_ms, 0.0, max(8.0, tol))
        a.features["physics_excess"] = squash(excess - tol, 20.0)
        a.evidence["physics"] = {
            "distance_km": round(dist), "floor_ms": round(floor, 2),
            "expected_ms": round(expected, 2), "measured_ms": round(app_min, 2),
            "excess_ms": round(excess, 2), "excess_km": round(max(0.0, excess) * KM_PER_MS_RTT),
            "tolerance_ms": tol + round(slack_ms, 1), "access_kind": kind,
            "precision": geo.precision,
            "verdict": "detour" if s > 0 else ("faster than light" if app_min < floor - slack_ms
                                               else "consistent"),
        }
        if geo.precision == "country":
            a.evidence["physics"]["note"] = "claimed point is the country's reference point"
        if s > 0:
            a.components["physics"] = WEIGHTS["physics"] * s
            a.reasons.append(
                f"app_rtt {app_min:.1f} ms vs {expected:.1f} ms expected for a {kind} client "
                f"{dist:.0f} km from {server.id}: {excess:.0f} ms ≈ "
                f"{excess * KM_PER_MS_RTT:.0f} km of detour"
            )

    def _baseline(self, ev: Enriched, login: Login, app_min: float, a: _Assessment) -> None:
        a.features["baseline_z"] = 0.0
        levels: list[dict[str, Any]] = []
        chosen: dict[str, Any] | None = None
        for level, key in self._baseline_keys(ev, login):
            b = self.baselines.peek(key)
            n = b.n if b is not None else 0
            row: dict[str, Any] = {"level": level, "key": key, "samples": n}
            levels.append(row)
            if b is None or n < self.warmup:
                row["verdict"] = f"warm-up: {n} < {self.warmup} samples, no verdict"
                continue
            lo, mid, hi = b.quantiles()
            row.update(p10_ms=round(lo, 2), p50_ms=round(mid, 2), p90_ms=round(hi, 2))
            chosen = row
            break
        a.evidence["baseline"] = {"levels": levels, "used": chosen["level"] if chosen else None}
        if chosen is None:
            return
        lo, hi = chosen["p10_ms"], chosen["p90_ms"]
        excess = app_min - hi
        spread = max(hi - lo, MIN_SPREAD_MS.get(ev.geo.kind or "", DEFAULT_MIN_SPREAD_MS))
        z = excess / spread
        s = ramp(z, 2.0, 5.0) * ramp(excess, 5.0, 15.0) * LEVEL_WEIGHT[chosen["level"]]
        chosen.update(excess_ms=round(excess, 2), excess_km=round(max(0.0, excess) * KM_PER_MS_RTT),
                      z=round(z, 2), spread_ms=round(spread, 2))
        a.features["baseline_z"] = squash(z, 3.0)
        if a.excess_ms is None or excess > 0:
            a.excess_ms = excess if a.excess_ms is None else max(a.excess_ms, excess)
        if s > 0:
            a.components["baseline"] = WEIGHTS["baseline"] * s
            a.reasons.append(
                f"app_rtt {app_min:.1f} ms vs p90 {hi:.1f} ms of {chosen['samples']} sessions "
                f"from the same {chosen['level']}: +{excess:.0f} ms ≈ {excess * KM_PER_MS_RTT:.0f} "
                "km farther than its neighbours"
            )

    def _vantages(self, ev: Enriched, sess: _Session, a: _Assessment) -> None:
        a.features["vantage_violation"] = 0.0
        geo = ev.geo
        disks: list[tuple[float, float, float]] = []
        rows: list[dict[str, Any]] = []
        slack = PRECISION_SLACK_KM.get(geo.precision, 1000.0)
        worst = 0.0
        for p in sess.probes.values():
            v = self.ctx.config.server(p.vantage)
            if v is None:
                rows.append({"vantage": p.vantage, "verdict": "unknown vantage"})
                continue
            radius = p.min_ms * KM_PER_MS_RTT
            disks.append((v.lat, v.lon, radius))
            row: dict[str, Any] = {"vantage": p.vantage, "method": p.method,
                                   "rtt_ms": round(p.min_ms, 2), "radius_km": round(radius)}
            if geo.lat is not None and geo.lon is not None:
                d = great_circle_km(v.lat, v.lon, geo.lat, geo.lon)
                over = d - radius - slack
                row.update(distance_km=round(d), inside=over <= 0)
                if over > 0:
                    row["violation_km"] = round(over)
                    worst = max(worst, over)
            rows.append(row)
        if not rows:
            a.evidence["vantages"] = {"verdict": "no probes"}
            return
        violated = [r["vantage"] for r in rows if r.get("inside") is False]
        a.evidence["vantages"] = {
            "disks": rows,
            "verdict": "violated" if violated else "consistent",
            "violated": violated,
        }
        a.disks = disks
        a.features["vantage_violation"] = squash(worst, 500.0)
        s = ramp(worst, 100.0, 600.0)
        if s > 0:
            a.components["vantage"] = WEIGHTS["vantage"] * s
            a.reasons.append(
                f"claimed location lies {worst:.0f} km outside the RTT disk of "
                f"{', '.join(violated)}: the client cannot be where its address says"
            )

    def _model_score(self, a: _Assessment) -> None:
        if not self.model.trees or self.model._first_window:
            a.evidence["model"] = {"verdict": "warm-up"}
            return
        score = float(self.model.score_one(a.features))  # type: ignore[no-untyped-call]
        a.evidence["model"] = {"half_space_trees": round(score, 3)}
        s = ramp(score, 0.7, 0.95)
        if s > 0 and a.components:
            # The model sharpens physical evidence; it never flags on its own.
            a.components["model"] = WEIGHTS["model"] * s

    # -- output -------------------------------------------------------------------

    def _emit(
        self,
        ev: Enriched,
        login: Login,
        sess: _Session,
        assessed: _Assessment,
        score: float,
        history_note: str | None,
    ) -> Findings:
        first_flag = not sess.flagged
        sess.flagged, sess.score = True, score
        self._remember(login.account, sess, max(assessed.base, score))
        acc = self._account(login.account)
        if first_flag:
            acc.flagged_sessions += 1
        reasons = list(assessed.reasons)
        if assessed.disks and "vantages" in assessed.evidence:
            assessed.evidence["vantages"]["feasible_region"] = feasible_region(assessed.disks)
        if history_note:
            reasons.append(history_note)
        evidence = {**assessed.evidence, "score": {"session": round(assessed.base, 4),
                                                   "final": round(score, 4),
                                                   "flagged_sessions": acc.flagged_sessions}}
        subject_key = f"account:{login.account}"
        out = Findings()
        alert_id: str | None = None
        if score >= self.alert_threshold or acc.flagged_sessions >= self.alert_repeat \
                or self.alerts.known(subject_key):
            alert = self.alerts.update(
                subject_key, {"account": login.account}, login.ts, score, login.event_id,
                [login.account], evidence,
                f"{login.account}: relayed connection from {ev.prefix} — " + reasons[0]
                if reasons else f"{login.account}: relayed connection from {ev.prefix}",
            )
            out.alerts.append(alert)
            alert_id = alert.alert_id
        out.flags.append(FlaggedEvent(
            event_id=login.event_id, ts=login.ts, kind="vpn_relay", account=login.account,
            session_id=login.session_id, src_ip=str(login.src_ip), country=ev.geo.country,
            asn=ev.geo.asn, score=round(min(1.0, score), 4), reasons=reasons, evidence=evidence,
            alert_id=alert_id, detector=self.name,
        ))
        return out

    # -- snapshots ------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        sessions = []
        for sid, s in self.sessions.items():
            login = None
            if s.login is not None:
                login = {
                    "event": s.login.event.model_dump(mode="json"),
                    "geo": _geo_dict(s.login.geo), "prefix": s.login.prefix,
                    "allowed": s.login.allowed.model_dump() if s.login.allowed else None,
                    "notes": s.login.notes,
                }
            sessions.append({"id": sid, "login": login, "score": s.score, "flagged": s.flagged,
                             "probes": [asdict(p) for p in s.probes.values()]})
        return {
            "version": 1,
            "baselines": [[k, b.snapshot()] for k, b in self.baselines.items()],
            "sessions": sessions,
            "accounts": [[k, {"recent": list(a.recent), "flagged": a.flagged_sessions}]
                         for k, a in self.accounts.items()],
            "alerts": self.alerts.state(),
            "model": self._model_state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            return
        self.baselines.clear()
        for key, snap in state.get("baselines", []):
            self.baselines.put(key, Baseline.restore(snap))
        self.sessions.clear()
        for row in state.get("sessions", []):
            sess = _Session(score=row["score"], flagged=row["flagged"],
                            probes={p["vantage"]: _Probe(**p) for p in row["probes"]})
            if row["login"] is not None:
                sess.login = self._restore_login(row["login"])
            self.sessions.put(row["id"], sess)
        self.accounts.clear()
        for key, acc in state.get("accounts", []):
            self.accounts.put(key, _Account(
                deque(((s, float(v)) for s, v in acc["recent"]), maxlen=self.history_len),
                int(acc["flagged"]),
            ))
        self.alerts.load_state(state.get("alerts", []))
        self._load_model(state.get("model", {}))

    def _restore_login(self, snap: dict[str, Any]) -> Enriched:
        event = parse_event(snap["event"])
        server_id = event.server_id if isinstance(event, Login) else None
        return Enriched(
            event=event, geo=GeoInfo(**snap["geo"]), prefix=snap["prefix"],
            server=self.ctx.config.server(server_id) if server_id else None,
            allowed=AllowEntry(**snap["allowed"]) if snap["allowed"] else None,
            notes=dict(snap.get("notes") or {}),
        )
