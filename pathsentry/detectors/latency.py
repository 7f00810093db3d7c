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

Cost per event: a login is assessed once, numerically; evidence dicts and
human-readable reasons are only put into words for a flag. A probe updates its
session in O(1) (the vantage violation is monotone: a probe only adds a disk or
shrinks its own) and re-assesses the login only if some component could be
non-zero -- a clean session's probe ends after a look at its baseline. The
anomaly model is only asked about logins with other evidence (it sharpens
physical evidence and never flags on its own).

Memory is bounded (least-recently-used keys are evicted): ``baseline_keys_max``
baselines (three P² quantile sketches and a count), ``sessions_max`` sessions (a
login reference with its parsed event, enrichment and notes, what later probes
cannot change about its assessment, and at most ``MAX_VANTAGES`` probes),
``accounts_max`` account histories (``history_len`` scores), ``alerts_max`` alert
records (at most ``MAX_ALERT_EVENTS`` event ids) and ``distances_max`` memoised
server-to-point distances. Measured with every table full at the defaults
(``tests/hostile/test_bounded_state.py``, 250k distinct keys): about +780 MiB of
RSS for this detector, flat once the caps are reached; sessions are the largest
share (about 3 KiB each with their login). Lower ``sessions_max`` and
``baseline_keys_max`` in ``[detectors.latency]`` for a smaller footprint.
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

import numpy as np
import numpy.typing as npt
from river import anomaly, stats
from river.tree.padded import PaddedBranch

from pathsentry.config import AllowEntry, Server
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
    "QueuedHalfSpaceTrees",
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
    "distances_max": 100_000,
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


class QueuedHalfSpaceTrees:
    """Learning for a River :class:`~river.anomaly.HalfSpaceTrees`, queued and
    applied to all trees in one vectorised pass.

    HalfSpaceTrees scores with the masses of the previous window (``r_mass``);
    the current window's counts (``l_mass``) are only read when the window pivots,
    by a snapshot, or to route a point that lacks a feature. So learned points can
    wait in a queue (never longer than the window) and be walked down every tree
    at once with numpy right before one of those moments: the model ends up with
    exactly the masses one ``learn_one`` per point gives, for a fraction of the
    cost.

    >>> from river import anomaly
    >>> a = anomaly.HalfSpaceTrees(n_trees=3, height=4, window_size=5, seed=1)
    >>> b = anomaly.HalfSpaceTrees(n_trees=3, height=4, window_size=5, seed=1)
    >>> q = QueuedHalfSpaceTrees(b)
    >>> for i in range(12):
    ...     x = {"u": (i * 0.37) % 1.0, "v": (i * 0.61) % 1.0}
    ...     a.learn_one(x); q.learn(x)
    ...     assert a.score_one(x) == q.score(x)
    >>> q.flush()
    >>> [[n.l_mass for n in t] for t in a._tree_nodes] == [[n.l_mass for n in t] for t in b._tree_nodes]
    True
    """

    def __init__(self, model: anomaly.HalfSpaceTrees) -> None:
        self.model = model
        self.queue: list[list[float]] = []
        self._features: tuple[str, ...] = ()
        self._nodes: list[Any] = []
        self._layout: tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float64],
                            npt.NDArray[np.intp], npt.NDArray[np.intp]] | None = None

    def learn(self, x: dict[str, float]) -> None:
        m = self.model
        if not m.trees:
            m.learn_one(x)  # type: ignore[no-untyped-call]  # builds the trees
            return
        if self._layout is None:
            self._build()
        try:
            row = [x[f] for f in self._features]
        except KeyError:  # routed by the current window's masses: learn it now
            self.flush()
            m.learn_one(x)  # type: ignore[no-untyped-call]
            return
        self.queue.append(row)
        if m.counter + len(self.queue) >= m.window_size:
            self.flush()

    def score(self, x: dict[str, float]) -> float:
        if self.queue and not all(f in x for f in self._features):
            self.flush()
        return float(self.model.score_one(x))  # type: ignore[no-untyped-call]

    def flush(self) -> None:
        """Apply the queued points (and pivot the window if it is full), as River would."""
        if not self.queue:
            return
        assert self._layout is not None
        roots, feature, threshold, left, right = self._layout
        m, k = self.model, len(self.queue)
        x = np.asarray(self.queue, dtype=np.float64)
        n = len(self._nodes)
        rows = np.tile(np.arange(k), len(roots))
        at = np.repeat(roots, k)
        counts = np.zeros(n, dtype=np.int64)
        for _ in range(m.height):
            counts += np.bincount(at, minlength=n)
            go_left = x[rows, feature[at]] < threshold[at]
            at = np.where(go_left, left[at], right[at])
        counts += np.bincount(at, minlength=n)
        for i in np.flatnonzero(counts).tolist():
            self._nodes[i].l_mass += int(counts[i])
        self.queue.clear()
        m.counter += k
        if m.counter >= m.window_size:
            for nodes in m._tree_nodes:
                for node in nodes:
                    node.r_mass = node.l_mass
                    node.l_mass = 0
            m._first_window = False
            m.counter = 0

    def _build(self) -> None:
        """Flatten the trees into arrays: node feature, threshold and children."""
        m = self.model
        self._nodes = [node for nodes in m._tree_nodes for node in nodes]
        index = {id(node): i for i, node in enumerate(self._nodes)}
        self._features = tuple(sorted({n.feature for n in self._nodes if isinstance(n, PaddedBranch)}))
        column = {f: j for j, f in enumerate(self._features)}
        n = len(self._nodes)
        feature = np.zeros(n, dtype=np.intp)
        threshold = np.full(n, np.inf)
        left = np.arange(n, dtype=np.intp)
        right = np.arange(n, dtype=np.intp)
        for i, node in enumerate(self._nodes):
            if isinstance(node, PaddedBranch):
                feature[i] = column[node.feature]
                threshold[i] = node.threshold
                left[i], right[i] = (index[id(c)] for c in node.children)
        roots = np.array([index[id(t)] for t in m.trees], dtype=np.intp)
        self._layout = (roots, feature, threshold, left, right)


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
    __slots__ = ("_cached", "_n", "_q")

    def __init__(self) -> None:
        self._n = 0
        self._q = tuple(stats.Quantile(q) for q in self.QS)
        self._cached: tuple[float, float, float] | None = None

    @property
    def n(self) -> int:
        return self._n

    def update(self, x: float) -> None:
        self._n += 1
        self._cached = None
        for q in self._q:
            q.update(x)

    def quantiles(self) -> tuple[float, float, float]:
        """(p10, p50, p90); read from the sketches once per update."""
        if self._cached is None:
            lo, mid, hi = (float(q.get() or 0.0) for q in self._q)
            self._cached = (lo, mid, hi)
        return self._cached

    def snapshot(self) -> dict[str, Any]:
        # The P² sketch lives in River's Rust core; its byte state is what it pickles.
        return {
            "n": self.n,
            "q": [base64.b64encode(q._quantile.__getstate__()).decode() for q in self._q],
        }

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> Baseline:
        b = cls()
        b._n = int(snap["n"])
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
class _Physics:
    """The physics verdict of a login: fixed for the session, computed once."""

    dist: float
    kind: str
    floor: float
    expected: float
    slack_ms: float
    tol: float
    excess: float
    s: float
    feature: float
    server_id: str


@dataclass(slots=True)
class _LoginFacts:
    """What every assessment of one session's login shares, computed at the login.

    Probes re-assess the login; only the probes, the baselines, the model and the
    account history can have moved since, so the rest is kept here.
    """

    app_min: float
    baseline_keys: tuple[tuple[str, str], ...]
    physics: _Physics | None
    min_spread: float
    #: how far the claimed point may be from the truth (km), for the vantage disks
    slack_km: float
    #: the claimed point (lat, lon), if located
    point: tuple[float, float] | None
    #: the server registry (``Config.server``)
    servers: Callable[[str], Server | None]
    #: great-circle km from a server to a point (memoised by the detector)
    km: Callable[[Server, float, float], float]
    #: vantage id -> (server, great-circle km to the claimed point); filled on demand
    vantages: dict[str, tuple[Server | None, float | None]] = field(default_factory=dict)
    #: how far (km, 0 if nowhere) the claimed point lies outside the probes' RTT
    #: disks. Monotone: a probe only adds a disk or shrinks its own, so each probe
    #: updates it in O(1) (:meth:`LatencyDetector._on_probe`).
    worst_km: float = 0.0

    def vantage(self, vantage: str) -> tuple[Server | None, float | None]:
        """The vantage server and its distance to the claimed point, once per session."""
        known = self.vantages.get(vantage)
        if known is None:
            v = self.servers(vantage)
            d = None
            if v is not None and self.point is not None:
                d = self.km(v, *self.point)
            known = self.vantages[vantage] = (v, d)
        return known

    def violation(self, p: _Probe) -> float:
        """km by which the claimed point lies outside the disk of probe ``p`` (<= 0: inside)."""
        d = self.vantage(p.vantage)[1]
        return -1.0 if d is None else d - p.min_ms * KM_PER_MS_RTT - self.slack_km


@dataclass(slots=True)
class _Session:
    login: Enriched | None = None
    probes: dict[str, _Probe] = field(default_factory=dict)
    score: float = 0.0
    flagged: bool = False
    facts: _LoginFacts | None = None


@dataclass(slots=True)
class _Account:
    recent: deque[tuple[str, float]]
    flagged_sessions: int = 0


@dataclass(slots=True)
class _Gap:
    net: float
    label: str
    gap: float
    ratio: float
    s: float


@dataclass(slots=True)
class _BaselineVerdict:
    #: (level, key, samples, (p10, p50, p90) once out of warm-up) of the levels looked at
    levels: list[tuple[str, str, int, tuple[float, float, float] | None]]
    excess: float = 0.0
    spread: float = 0.0
    z: float = 0.0
    #: the component's strength before its weight (0-1)
    s: float = 0.0

    @property
    def used(self) -> str | None:
        last = self.levels[-1] if self.levels else None
        return last[0] if last is not None and last[3] is not None else None


@dataclass(slots=True)
class _Assessment:
    """The numbers behind one verdict; evidence and reasons are only put into words
    (:attr:`evidence`, :attr:`reasons`) when they are needed, i.e. for a flag."""

    ev: Enriched
    login: Login
    facts: _LoginFacts
    warmup: int
    base: float = 0.0
    components: dict[str, float] = field(default_factory=dict)
    features: dict[str, float] = field(default_factory=dict)
    gap_ms: float | None = None
    excess_ms: float | None = None
    gap: _Gap | None = None
    baseline: _BaselineVerdict | None = None
    #: the session's probes when assessed
    probes: list[_Probe] = field(default_factory=list)
    worst_km: float = 0.0
    route: dict[str, Any] | None = None
    #: the anomaly score, or why there is none
    model: float | str = "warm-up"
    _evidence: dict[str, Any] | None = None
    _reasons: list[str] | None = None

    @property
    def disks(self) -> list[tuple[float, float, float]]:
        """Vantage disks (lat, lon, radius km); the feasible region is only computed for flags."""
        out = []
        for p in self.probes:
            v = self.facts.vantage(p.vantage)[0]
            if v is not None:
                out.append((v.lat, v.lon, p.min_ms * KM_PER_MS_RTT))
        return out

    @property
    def evidence(self) -> dict[str, Any]:
        if self._evidence is None:
            self._explain()
        assert self._evidence is not None
        return self._evidence

    @property
    def reasons(self) -> list[str]:
        if self._reasons is None:
            self._explain()
        assert self._reasons is not None
        return self._reasons

    def _explain(self) -> None:
        ev, login, app_min = self.ev, self.login, self.facts.app_min
        geo = ev.geo
        reasons: list[str] = []
        evidence: dict[str, Any] = {
            "measured": {
                "app_rtt_min_ms": round(app_min, 2),
                "app_rtt_p10_ms": round(quantile(list(login.app_rtt_ms), 0.1), 2),
                "app_rtt_samples": len(login.app_rtt_ms),
                "tcp_rtt_ms": login.tcp_rtt_ms,
                "server": login.server_id,
            },
            "claimed": {
                "country": geo.country, "asn": geo.asn, "kind": geo.kind,
                "lat": geo.lat, "lon": geo.lon, "precision": geo.precision,
                "prefix": ev.prefix,
            },
        }
        evidence["gap"] = self._explain_gap(reasons)
        evidence["physics"] = self._explain_physics(reasons)
        evidence["baseline"] = self._explain_baseline(reasons)
        evidence["vantages"] = self._explain_vantages(reasons)
        route = self.route
        if route is not None:
            path = " → ".join(route.get("country_path", []))
            reasons.append(f"route of this session has a foreign origin: {path}")
            evidence["route"] = {"country_path": route.get("country_path"),
                                 "signature": route.get("signature")}
        evidence["model"] = (
            {"half_space_trees": round(self.model, 3)} if isinstance(self.model, float)
            else {"verdict": self.model}
        )
        evidence["components"] = {k: round(v, 3) for k, v in self.components.items()}
        self._evidence, self._reasons = evidence, reasons

    def _explain_gap(self, reasons: list[str]) -> dict[str, Any]:
        g, app_min = self.gap, self.facts.app_min
        if g is None:
            return {"verdict": "no tcp_rtt or network-layer probe"}
        if g.s > 0:
            what = "TCP terminates" if g.label == "tcp_rtt" else "the network layer answers"
            reasons.append(
                f"{g.label} {g.net:.1f} ms vs app_rtt {app_min:.1f} ms: {what} "
                f"{g.gap:.0f} ms·100 km ≈ {g.gap * KM_PER_MS_RTT:.0f} km before the client"
            )
        return {
            "network_rtt_ms": round(g.net, 2), "source": g.label,
            "app_rtt_min_ms": round(app_min, 2), "gap_ms": round(g.gap, 2),
            "gap_km": round(g.gap * KM_PER_MS_RTT), "ratio": round(g.ratio, 3),
            "verdict": "relay" if g.s > 0.5 else "consistent",
        }

    def _explain_physics(self, reasons: list[str]) -> dict[str, Any]:
        ph, app_min, geo = self.facts.physics, self.facts.app_min, self.ev.geo
        if ph is None:
            return {"verdict": "no located claim or unknown server"}
        out: dict[str, Any] = {
            "distance_km": round(ph.dist), "floor_ms": round(ph.floor, 2),
            "expected_ms": round(ph.expected, 2), "measured_ms": round(app_min, 2),
            "excess_ms": round(ph.excess, 2),
            "excess_km": round(max(0.0, ph.excess) * KM_PER_MS_RTT),
            "tolerance_ms": ph.tol + round(ph.slack_ms, 1), "access_kind": ph.kind,
            "precision": geo.precision,
            "verdict": "detour" if ph.s > 0 else (
                "faster than light" if app_min < ph.floor - ph.slack_ms else "consistent"),
        }
        if geo.precision == "country":
            out["note"] = "claimed point is the country's reference point"
        if ph.s > 0:
            reasons.append(
                f"app_rtt {app_min:.1f} ms vs {ph.expected:.1f} ms expected for a {ph.kind} "
                f"client {ph.dist:.0f} km from {ph.server_id}: {ph.excess:.0f} ms ≈ "
                f"{ph.excess * KM_PER_MS_RTT:.0f} km of detour"
            )
        return out

    def _explain_baseline(self, reasons: list[str]) -> dict[str, Any]:
        b = self.baseline
        assert b is not None
        levels: list[dict[str, Any]] = []
        for level, key, n, qs in b.levels:
            row: dict[str, Any] = {"level": level, "key": key, "samples": n}
            levels.append(row)
            if qs is None:
                row["verdict"] = f"warm-up: {n} < {self.warmup} samples, no verdict"
                continue
            lo, mid, hi = qs
            row.update(p10_ms=round(lo, 2), p50_ms=round(mid, 2), p90_ms=round(hi, 2))
            row.update(excess_ms=round(b.excess, 2),
                       excess_km=round(max(0.0, b.excess) * KM_PER_MS_RTT),
                       z=round(b.z, 2), spread_ms=round(b.spread, 2))
            if "baseline" in self.components:
                reasons.append(
                    f"app_rtt {self.facts.app_min:.1f} ms vs p90 {round(hi, 2):.1f} ms of {n} "
                    f"sessions from the same {level}: +{b.excess:.0f} ms ≈ "
                    f"{b.excess * KM_PER_MS_RTT:.0f} km farther than its neighbours"
                )
        return {"levels": levels, "used": b.used}

    def _explain_vantages(self, reasons: list[str]) -> dict[str, Any]:
        if not self.probes:
            return {"verdict": "no probes"}
        slack = self.facts.slack_km
        rows: list[dict[str, Any]] = []
        for p in self.probes:
            v, d = self.facts.vantage(p.vantage)
            if v is None:
                rows.append({"vantage": p.vantage, "verdict": "unknown vantage"})
                continue
            radius = p.min_ms * KM_PER_MS_RTT
            row: dict[str, Any] = {"vantage": p.vantage, "method": p.method,
                                   "rtt_ms": round(p.min_ms, 2), "radius_km": round(radius)}
            if d is not None:
                over = d - radius - slack
                row.update(distance_km=round(d), inside=over <= 0)
                if over > 0:
                    row["violation_km"] = round(over)
            rows.append(row)
        violated = [r["vantage"] for r in rows if r.get("inside") is False]
        if "vantage" in self.components:
            reasons.append(
                f"claimed location lies {self.worst_km:.0f} km outside the RTT disk of "
                f"{', '.join(violated)}: the client cannot be where its address says"
            )
        return {"disks": rows, "verdict": "violated" if violated else "consistent",
                "violated": violated}


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
        self.gap_min_ms = float(cfg["gap_min_ms"])
        self.gap_full_ms = float(cfg["gap_full_ms"])
        self.baselines: BoundedLRU[str, Baseline] = BoundedLRU(cfg["baseline_keys_max"])
        self.sessions: BoundedLRU[str, _Session] = BoundedLRU(cfg["sessions_max"])
        self.accounts: BoundedLRU[str, _Account] = BoundedLRU(cfg["accounts_max"])
        self.alerts = AlertBook(self.name, "vpn_relay", cfg["alerts_max"])
        self.model = self._new_model()
        self.hst = QueuedHalfSpaceTrees(self.model)
        self._distances: BoundedLRU[tuple[str, float, float], float] = BoundedLRU(
            cfg["distances_max"])

    # -- the River anomaly model -------------------------------------------------

    def _new_model(self) -> anomaly.HalfSpaceTrees:
        return anomaly.HalfSpaceTrees(
            n_trees=int(self.cfg["hst_trees"]),
            height=int(self.cfg["hst_height"]),
            window_size=int(self.cfg["hst_window"]),
            seed=int(self.cfg["seed"]),
        )

    def _model_state(self) -> dict[str, Any]:
        self.hst.flush()
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
        self.hst = QueuedHalfSpaceTrees(self.model)
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
            new = sess.probes[probe.vantage_id] = _Probe(
                probe.vantage_id, probe.method, lo, len(probe.rtt_ms) + (old.samples if old else 0)
            )
            if sess.facts is not None:
                sess.facts.worst_km = max(sess.facts.worst_km, sess.facts.violation(new))
        login_ev = sess.login
        if login_ev is None or login_ev.allowed is not None:
            return None  # allow-listed sessions are never flagged
        # A late probe can only add evidence to the session's login: re-assess it
        # (no baseline or model learning: the login already taught them). The
        # numbers are cheap; words are only put to a flag.
        login = login_ev.event
        assert isinstance(login, Login)
        if self._no_evidence(login_ev, login, sess):
            return None
        assessed = self._assess(login_ev, login, sess)
        score, history_note = self._with_history(login.account, sess, assessed.base)
        if score < self.flag_threshold:
            return None
        if sess.flagged and score < sess.score + 0.05:
            return None
        return self._emit(login_ev, login, sess, assessed, score, history_note)

    def _on_login(self, ev: Enriched, login: Login) -> Findings | None:
        sess = self.sessions.get_or_create(self._session_key(ev), _Session)
        sess.login = ev
        sess.facts = self._facts(ev, login, sess)
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
            self._learn(assessed)
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
        keep = 1.0
        for k, v in a.components.items():
            if k == "model" or (k == "baseline" and (a.baseline is None or a.baseline.used != "prefix")):
                continue
            keep *= 1.0 - max(0.0, min(1.0, v))
        return 1.0 - keep < 0.5

    def _learn(self, a: _Assessment) -> None:
        value = a.facts.app_min
        for _, key in a.facts.baseline_keys:
            self.baselines.get_or_create(key, Baseline).update(value)
        self.hst.learn(a.features)

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
        if acc is None or base <= 0.0:  # nothing to boost or damp
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

    def _facts(self, ev: Enriched, login: Login, sess: _Session) -> _LoginFacts:
        """The parts of a login's assessment that later probes cannot change (and the
        vantage violation so far, which they update)."""
        geo, sid = ev.geo, login.server_id
        keys = [("prefix", f"{sid}|p|{ev.prefix}")]
        if geo.asn is not None:
            keys.append(("asn", f"{sid}|a|{geo.asn}"))
        if geo.country:
            keys.append(("country", f"{sid}|c|{geo.country}|{geo.kind or '?'}"))
        app_min = login.min_app_rtt
        facts = _LoginFacts(
            app_min=app_min,
            baseline_keys=tuple(keys),
            physics=self._physics(ev, app_min),
            min_spread=MIN_SPREAD_MS.get(geo.kind or "", DEFAULT_MIN_SPREAD_MS),
            slack_km=PRECISION_SLACK_KM.get(geo.precision, 1000.0),
            point=(geo.lat, geo.lon) if geo.lat is not None and geo.lon is not None else None,
            servers=self.ctx.config.server,
            km=self._km,
        )
        for p in sess.probes.values():
            facts.worst_km = max(facts.worst_km, facts.violation(p))
        return facts

    def _assess(self, ev: Enriched, login: Login, sess: _Session) -> _Assessment:
        facts = (sess.facts if sess.facts is not None and sess.login is ev
                 else self._facts(ev, login, sess))
        a = _Assessment(ev=ev, login=login, facts=facts, warmup=self.warmup)
        comps, feats = a.components, a.features
        self._gap(ev, login, sess, a)
        ph = facts.physics
        if ph is None:
            feats["physics_excess"] = 0.0
        else:
            a.excess_ms = ph.excess
            feats["physics_excess"] = ph.feature
            if ph.s > 0:
                comps["physics"] = WEIGHTS["physics"] * ph.s
        self._baseline(a)
        self._vantages(ev, sess, a)
        route = ev.notes.get("route")
        if isinstance(route, dict) and route.get("foreign_origin"):
            comps["route"] = WEIGHTS["route"]
            a.route = route
        self._model_score(a)
        a.base = _noisy_or(comps)
        return a

    # Each component is computed by one helper that both the full assessment and
    # the probe fast path (:meth:`_no_evidence`) use.

    def _no_evidence(self, ev: Enriched, login: Login, sess: _Session) -> bool:
        """Exactly when an assessment would find no component at all.

        Then the model is not asked and the score is 0, so most probes of clean
        sessions end here, without building an assessment.
        """
        facts = sess.facts
        if facts is None or self.flag_threshold <= 0.0:
            return False
        if facts.physics is not None and facts.physics.s > 0:
            return False
        route = ev.notes.get("route")
        if isinstance(route, dict) and route.get("foreign_origin"):
            return False
        net, _ = self._network_rtt(ev, login, sess)
        if net is not None and self._gap_score(facts.app_min, net)[0] > 0:
            return False
        if ramp(facts.worst_km, 100.0, 600.0) > 0:
            return False
        i, b = self._warm_baseline(facts)
        return b is None or self._baseline_excess(facts, facts.baseline_keys[i][0], b.quantiles())[0] <= 0

    @staticmethod
    def _network_rtt(ev: Enriched, login: Login, sess: _Session) -> tuple[float | None, str]:
        """The lowest network-layer RTT of the connection: kernel TCP or a probe from the
        login server (not for mobile access, where the carrier gateway answers pings)."""
        net: float | None = login.tcp_rtt_ms
        label = "tcp_rtt"
        if ev.geo.kind != "mobile":
            for p in sess.probes.values():
                if p.vantage == login.server_id and p.method in ("icmp", "tcp") and (
                    net is None or p.min_ms < net
                ):
                    net, label = p.min_ms, f"{p.method} probe"
        return net, label

    def _gap_score(self, app_min: float, net: float) -> tuple[float, float, float]:
        """(score 0-1, gap ms, ratio) of the cross-layer gap."""
        gap = app_min - net
        ratio = net / app_min if app_min > 0 else 1.0
        return ramp(gap, self.gap_min_ms, self.gap_full_ms) * ramp(1.0 - ratio, 0.5, 0.75), gap, ratio

    def _gap(self, ev: Enriched, login: Login, sess: _Session, a: _Assessment) -> None:
        net, label = self._network_rtt(ev, login, sess)
        if net is None:
            a.features["gap_ratio"] = 0.0
            a.features["gap"] = 0.0
            return
        s, gap, ratio = self._gap_score(a.facts.app_min, net)
        a.gap_ms = gap
        a.features["gap_ratio"] = max(0.0, 1.0 - ratio)
        a.features["gap"] = squash(gap, 20.0)
        a.gap = _Gap(net, label, gap, ratio, s)
        if s > 0:
            a.components["gap"] = WEIGHTS["gap"] * s

    def _km(self, server: Server, lat: float, lon: float) -> float:
        """Great-circle km from ``server`` to (lat, lon): claimed points repeat (one per
        prefix or city), so each (server, point) pair is computed once."""
        key = (server.id, lat, lon)
        km = self._distances.get(key)
        if km is None:
            km = great_circle_km(server.lat, server.lon, lat, lon)
            self._distances.put(key, km)
        return km

    def _physics(self, ev: Enriched, app_min: float) -> _Physics | None:
        geo, server = ev.geo, ev.server
        if server is None or geo.lat is None or geo.lon is None:
            return None
        dist = self._km(server, geo.lat, geo.lon)
        kind = geo.kind or "unknown"
        expected = fibre_floor_ms(dist) * PATH_INFLATION + ACCESS_TYPICAL_MS.get(kind, 6.0)
        slack_ms = PRECISION_SLACK_KM.get(geo.precision, 1000.0) * PATH_INFLATION / KM_PER_MS_RTT
        tol = KIND_TOLERANCE_MS.get(kind, DEFAULT_TOLERANCE_MS)
        excess = app_min - expected
        return _Physics(
            dist=dist, kind=kind, floor=fibre_floor_ms(dist) + ACCESS_FLOOR_MS.get(kind, 0.3),
            expected=expected, slack_ms=slack_ms, tol=tol, excess=excess,
            s=ramp(excess - tol - slack_ms, 0.0, max(8.0, tol)),
            feature=squash(excess - tol, 20.0), server_id=server.id,
        )

    def _warm_baseline(self, facts: _LoginFacts) -> tuple[int, Baseline | None]:
        """The most specific baseline out of warm-up: (index in ``baseline_keys``, it),
        or (number of keys, ``None``)."""
        peek = self.baselines.peek
        for i, (_, key) in enumerate(facts.baseline_keys):
            b = peek(key)
            if b is not None and b.n >= self.warmup:
                return i, b
        return len(facts.baseline_keys), None

    @staticmethod
    def _baseline_excess(
        facts: _LoginFacts, level: str, qs: tuple[float, float, float]
    ) -> tuple[float, float, float, float]:
        """(strength 0-1, excess ms, spread ms, z) of the login over a baseline's quantiles."""
        # the verdict is taken on the 0.01 ms figures the evidence shows
        lo, hi = round(qs[0], 2), round(qs[2], 2)
        excess = facts.app_min - hi
        spread = max(hi - lo, facts.min_spread)
        z = excess / spread
        return ramp(z, 2.0, 5.0) * ramp(excess, 5.0, 15.0) * LEVEL_WEIGHT[level], excess, spread, z

    def _baseline_verdict(self, facts: _LoginFacts) -> _BaselineVerdict:
        """The most specific baseline out of warm-up, and how far the login is above it."""
        i, b = self._warm_baseline(facts)
        v = _BaselineVerdict(levels=[])
        for level, key in facts.baseline_keys[:i]:
            cold = self.baselines.peek(key)
            v.levels.append((level, key, cold.n if cold is not None else 0, None))
        if b is not None:
            level, key = facts.baseline_keys[i]
            qs = b.quantiles()
            v.levels.append((level, key, b.n, qs))
            v.s, v.excess, v.spread, v.z = self._baseline_excess(facts, level, qs)
        return v

    def _baseline(self, a: _Assessment) -> None:
        v = a.baseline = self._baseline_verdict(a.facts)
        if v.used is None:
            a.features["baseline_z"] = 0.0
            return
        a.features["baseline_z"] = squash(v.z, 3.0)
        if a.excess_ms is None or v.excess > 0:
            a.excess_ms = v.excess if a.excess_ms is None else max(a.excess_ms, v.excess)
        if v.s > 0:
            a.components["baseline"] = WEIGHTS["baseline"] * v.s

    def _vantages(self, ev: Enriched, sess: _Session, a: _Assessment) -> None:
        a.features["vantage_violation"] = 0.0
        if not sess.probes:
            return
        a.probes = list(sess.probes.values())
        a.worst_km = worst = a.facts.worst_km
        a.features["vantage_violation"] = squash(worst, 500.0)
        s = ramp(worst, 100.0, 600.0)
        if s > 0:
            a.components["vantage"] = WEIGHTS["vantage"] * s

    def _model_score(self, a: _Assessment) -> None:
        if not self.model.trees or self.model._first_window:
            a.model = "warm-up"
            return
        if not a.components:
            # The model sharpens physical evidence; it never flags on its own, so
            # without other evidence it is not asked.
            a.model = "not scored: no other evidence"
            return
        score = self.hst.score(a.features)
        a.model = score
        s = ramp(score, 0.7, 0.95)
        if s > 0:
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
        disks = assessed.disks
        if disks:
            assessed.evidence["vantages"]["feasible_region"] = feasible_region(disks)
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
                assert isinstance(sess.login.event, Login)
                sess.facts = self._facts(sess.login, sess.login.event, sess)
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
