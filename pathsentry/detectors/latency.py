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

Cost per event: a login is assessed once, numerically (local floats, no
evidence objects); evidence dicts and human-readable reasons are only put into
words for a flag. A probe updates its session in O(1) (the vantage violation is
monotone: a probe only adds a disk or shrinks its own) and re-assesses the login
only if some component could be non-zero -- a clean session's probe ends after
the comparisons each component needs (and a look at its baseline). The anomaly
model is only asked about logins with other evidence (it sharpens physical
evidence and never flags on its own), and about a probe's session only if a flag
is within reach with the model's full weight. It scores on flattened trees
(memoised until its window pivots) and learns in queued, vectorised batches.

Memory is bounded (least-recently-used keys are evicted): ``baseline_keys_max``
baselines (three P² quantile sketches and a count), ``sessions_max`` sessions,
``accounts_max`` account histories (``history_len`` scores), ``alerts_max`` alert
records (at most ``MAX_ALERT_EVENTS`` event ids); ``distances_max`` memoised
distances and expectations per claimed location (cleared when full). A session
is one flat object: the login's identifiers, its RTT figures (minimum, 10th
percentile, sample count, TCP RTT), references to its geolocation, prefix and
route (shared with enrichment and the route detector), its baseline keys (the
baselines' own strings) and its probes (at most ``MAX_VANTAGES``, four fields
each); the parsed event, its enrichment and notes are not kept. Sizes of the
Python objects with their keys (``sys.getsizeof``, shared objects counted once):
a session with one probe about 0.85 KiB (1 KiB if it holds the only reference to
its geolocation), an account about 0.2 KiB, a baseline about 0.75 KiB. Measured with every table full at the
defaults (250k distinct keys driven like ``tests/hostile/test_bounded_state.py``,
each its own session, account, /24 and ASN, one probe per session): about +310
MiB of RSS for this detector, flat once the caps are reached (it was +820 MiB
with the parsed login kept per session). Lower ``sessions_max`` and
``baseline_keys_max`` in ``[detectors.latency]`` for a smaller footprint. The
anomaly model is a fixed size. :meth:`LatencyDetector.state` is a JSON snapshot
of all of it, so baselines survive a worker restart.

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
import math
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address
from operator import itemgetter
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import numpy.typing as npt
from river import anomaly
from river._river_rust.stats import RsQuantile
from river.tree.padded import PaddedBranch

from pathsentry.config import AllowEntry, Server
from pathsentry.detectors import register
from pathsentry.detectors.base import Detector, DetectorContext, Enriched, Findings, SessionTable
from pathsentry.detectors.physics import (
    ACCESS_FLOOR_MS,
    ACCESS_TYPICAL_MS,
    EARTH_RADIUS_KM,
    KM_PER_MS_RTT,
    PATH_INFLATION,
    fibre_floor_ms,
    great_circle_km,
    ramp,
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
    applied to all trees in one vectorised pass; scoring on flattened trees.

    HalfSpaceTrees scores with the masses of the previous window (``r_mass``);
    the current window's counts (``l_mass``) are only read when the window pivots,
    by a snapshot, or to route a point that lacks a feature. So learned points can
    wait in a queue (never longer than the window) and be walked down every tree
    at once with numpy right before one of those moments: the model ends up with
    exactly the masses one ``learn_one`` per point gives, for a fraction of the
    cost. Once the trees are flattened (node feature, threshold, children), the
    masses live in arrays here and are written back into River's nodes only when
    River itself needs them (:meth:`sync`): a snapshot, or a point that lacks a
    feature. A point with every feature is scored by the same walk as River's over
    the flat lists; as ``r_mass`` only changes when the window pivots, scores are
    memoised until then. Change the model only through this wrapper.

    >>> from river import anomaly
    >>> a = anomaly.HalfSpaceTrees(n_trees=3, height=4, window_size=5, seed=1)
    >>> b = anomaly.HalfSpaceTrees(n_trees=3, height=4, window_size=5, seed=1)
    >>> q = QueuedHalfSpaceTrees(b)
    >>> for i in range(12):
    ...     x = {"u": (i * 0.37) % 1.0, "v": (i * 0.61) % 1.0}
    ...     a.learn_one(x); q.learn(x)
    ...     assert a.score_one(x) == q.score(x)
    ...     assert a.score_one({"u": 0.3}) == q.score({"u": 0.3})
    >>> a.learn_one({"u": 0.5}); q.learn({"u": 0.5})
    >>> q.sync()
    >>> [[(n.l_mass, n.r_mass) for n in t] for t in a._tree_nodes] == [
    ...     [(n.l_mass, n.r_mass) for n in t] for t in b._tree_nodes]
    True
    """

    #: memoised scores kept per window at most
    MEMO_MAX = 4096

    def __init__(self, model: anomaly.HalfSpaceTrees) -> None:
        self.model = model
        #: the queued points' feature values, one row after the other
        self.queue: list[float] = []
        self.queued = 0
        self._features: tuple[str, ...] = ()
        self._row: Callable[[dict[str, float]], tuple[float, ...]] | None = None
        self._nodes: list[Any] = []
        self._layout: tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float64],
                            npt.NDArray[np.intp], npt.NDArray[np.intp]] | None = None
        self._flat: tuple[list[int], list[int], list[float], list[int], list[int]] | None = None
        #: the masses once the trees are flattened (River's nodes are stale until :meth:`sync`)
        self._l_mass: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._r_mass: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._stale = False
        self._r_list: list[int] | None = None
        self._memo: dict[tuple[float, ...], float] = {}
        #: feature names known to be :attr:`_features` (see :meth:`learn_row`)
        self._names: tuple[str, ...] | None = None

    def learn(self, x: dict[str, float]) -> None:
        m = self.model
        if not m.trees:
            m.learn_one(x)  # type: ignore[no-untyped-call]  # builds the trees
            return
        if self._row is None:
            self._build()
            assert self._row is not None
        try:
            row = self._row(x)
        except KeyError:  # routed by the current window's masses: learn it now
            self.sync()
            m.learn_one(x)  # type: ignore[no-untyped-call]
            self._pull()
            return
        self.queue += row
        self.queued += 1
        if m.counter + self.queued >= m.window_size:
            self.flush()

    def learn_row(self, names: tuple[str, ...], row: tuple[float, ...]) -> None:
        """:meth:`learn` for a point given as its feature names and values; no dict is
        built when ``names`` are the trees' features."""
        if names is not self._names:
            if self._row is None or names != self._features:
                self.learn(dict(zip(names, row, strict=True)))
                return
            self._names = names
        self.queue += row
        self.queued += 1
        m = self.model
        if m.counter + self.queued >= m.window_size:
            self.flush()

    def score_row(self, names: tuple[str, ...], row: tuple[float, ...]) -> float:
        """:meth:`score` for a point given as its feature names and values."""
        if names is not self._names:
            if self._row is None or names != self._features:
                return self.score(dict(zip(names, row, strict=True)))
            self._names = names
        if self.model._first_window:
            return 0.0
        return self._memo_score(row)

    def _memo_score(self, row: tuple[float, ...]) -> float:
        """The model's score of ``row``, memoised (rows repeat: features are rounded)."""
        memo = self._memo
        score = memo.get(row)
        if score is None:
            if len(memo) >= self.MEMO_MAX:
                memo.clear()
            score = memo[row] = self._score_row(row)
        return score

    def score(self, x: dict[str, float]) -> float:
        m = self.model
        if m._first_window:
            return float(m.score_one(x))  # type: ignore[no-untyped-call]  # 0
        if self._row is not None:
            try:
                row = self._row(x)
            except KeyError:
                pass
            else:
                return self._memo_score(row)
        if self.queued and not all(f in x for f in self._features):
            self.flush()
        self._push()
        return float(m.score_one(x))  # type: ignore[no-untyped-call]

    def _score_row(self, row: tuple[float, ...]) -> float:
        """River's ``score_one`` for a point with every feature (``row`` in
        :attr:`_features` order): the same walk and the same sums."""
        m = self.model
        assert self._flat is not None
        roots, feature, threshold, left, right = self._flat
        r_mass = self._r_list
        if r_mass is None:
            r_mass = self._r_list = self._r_mass.tolist()
        size_limit = 0.1 * m.window_size
        height = m.height
        score = 0.0
        for node in roots:
            walk = 0.0
            depth_pow = 1
            for _ in range(height):
                r = r_mass[node]
                walk += r * depth_pow
                if r < size_limit:
                    break
                node = left[node] if row[feature[node]] < threshold[node] else right[node]
                depth_pow <<= 1
            else:
                walk += r_mass[node] * depth_pow
            score += walk
        return float(1 - score / m._max_score)

    def flush(self) -> None:
        """Apply the queued points (and pivot the window if it is full), as River would."""
        k = self.queued
        if not k:
            return
        assert self._layout is not None
        roots, feature, threshold, left, right = self._layout
        m = self.model
        # feature-major values: point i's feature f at f * k + i
        x = np.array(self.queue, dtype=np.float64).reshape(k, len(self._features)).T.ravel()
        n = len(self._nodes)
        rows = np.tile(np.arange(k), len(roots))
        at = np.repeat(roots, k)
        path = [at]
        for _ in range(m.height):
            go_left = x.take(feature.take(at) * k + rows) < threshold.take(at)
            at = np.where(go_left, left.take(at), right.take(at))
            path.append(at)
        self._l_mass += np.bincount(np.concatenate(path), minlength=n)
        self._stale = True
        self.queue.clear()
        self.queued = 0
        m.counter += k
        if m.counter >= m.window_size:
            self._r_mass = self._l_mass
            self._l_mass = np.zeros(n, dtype=np.int64)
            m._first_window = False
            m.counter = 0
            self._r_list = None
            self._memo.clear()

    def sync(self) -> None:
        """Apply the queue and write the masses into River's nodes."""
        self.flush()
        self._push()

    def _push(self) -> None:
        if self._stale:
            for node, lm, rm in zip(self._nodes, self._l_mass.tolist(), self._r_mass.tolist(),
                                    strict=True):
                node.l_mass = lm
                node.r_mass = rm
            self._stale = False

    def _pull(self) -> None:
        """Take the masses from River's nodes (after River changed them)."""
        self._l_mass = np.array([node.l_mass for node in self._nodes], dtype=np.int64)
        self._r_mass = np.array([node.r_mass for node in self._nodes], dtype=np.int64)
        self._stale = False
        self._r_list = None
        self._memo.clear()

    def _build(self) -> None:
        """Flatten the trees into arrays: node feature, threshold and children."""
        m = self.model
        self._nodes = [node for nodes in m._tree_nodes for node in nodes]
        index = {id(node): i for i, node in enumerate(self._nodes)}
        self._features = tuple(sorted({n.feature for n in self._nodes if isinstance(n, PaddedBranch)}))
        if len(self._features) == 1:
            only = self._features[0]
            self._row = lambda x: (x[only],)
        else:
            self._row = itemgetter(*self._features)
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
        self._flat = (roots.tolist(), feature.tolist(), threshold.tolist(), left.tolist(), right.tolist())
        self._pull()


class Baseline:
    """Running low/median/high quantiles and a count of session min-RTTs for one key.

    The three P² sketches are River's Rust core (what :class:`river.stats.Quantile`
    wraps), held without the Python wrapper: the same numbers for less memory.

    >>> b = Baseline()
    >>> for x in range(1, 41):
    ...     b.update(float(x))
    >>> b.n, [round(v) for v in b.quantiles()]
    (40, [4, 20, 36])
    >>> Baseline.restore(b.snapshot()).quantiles() == b.quantiles()
    True
    """

    QS: ClassVar[tuple[float, float, float]] = (0.1, 0.5, 0.9)
    __slots__ = ("_hi", "_lo", "_q10", "_q50", "_q90", "key", "n")

    def __init__(self, key: str = "") -> None:
        #: the key it is stored under (sessions share this string instead of a copy)
        self.key = key
        self.n = 0
        self._q10 = RsQuantile(0.1)
        self._q50 = RsQuantile(0.5)
        self._q90 = RsQuantile(0.9)
        self._lo: float | None = None
        self._hi = 0.0

    def update(self, x: float) -> None:
        self.n += 1
        self._lo = None
        self._q10.update(x)
        self._q50.update(x)
        self._q90.update(x)

    def quantiles(self) -> tuple[float, float, float]:
        """(p10, p50, p90)."""
        if self.n == 0:
            return (0.0, 0.0, 0.0)
        return (float(self._q10.get()), float(self._q50.get()), float(self._q90.get()))

    def bounds(self) -> tuple[float, float]:
        """(p10, p90) to 0.01 ms, as the verdict and its evidence use them; read from the
        sketches once per update."""
        lo = self._lo
        if lo is None:
            if self.n == 0:
                lo, self._hi = 0.0, 0.0
            else:
                lo, self._hi = round(float(self._q10.get()), 2), round(float(self._q90.get()), 2)
            self._lo = lo
        return lo, self._hi

    def snapshot(self) -> dict[str, Any]:
        # The P² sketch lives in River's Rust core; its byte state is what it pickles.
        return {
            "n": self.n,
            "q": [base64.b64encode(q.__getstate__()).decode() for q in (self._q10, self._q50, self._q90)],
        }

    @classmethod
    def restore(cls, snap: dict[str, Any], key: str = "") -> Baseline:
        b = cls(key)
        b.n = int(snap["n"])
        for q, raw in zip((b._q10, b._q50, b._q90), snap["q"], strict=True):
            q.__setstate__(base64.b64decode(raw))
        return b


class _Session:
    """One session: its login, reduced to what re-assessing it needs, and its probes.

    One flat object per session and no per-session dicts: the parsed login event,
    its enrichment and notes are not kept. Login fields are only set once the login
    was seen (``event_id`` is not ``None``); until then a session only collects
    probes. ``probes`` is a flat list ``[vantage, method, min_ms, samples, ...]``
    (one group of four per vantage, in arrival order). Strings are shared, not
    copied: the session id with the session table's key, the baseline keys with the
    baselines' own keys, vantage and method names are interned; zero scores share
    one float.
    """

    __slots__ = (
        "account", "allowed", "app_min", "app_n", "app_p10", "event_id", "flagged", "geo",
        "k_asn", "k_country", "k_prefix", "phys_feat", "phys_s", "prefix", "probes", "route",
        "score", "server", "server_id", "session_id", "src_ip", "tcp", "ts", "worst_km",
    )

    account: str
    allowed: AllowEntry | None
    #: the login's minimum, 10th percentile and number of app RTT samples
    app_min: float
    app_n: int
    app_p10: float
    geo: GeoInfo
    #: baseline keys, most specific first (``None``: no ASN, no country)
    k_prefix: str
    k_asn: str | None
    k_country: str | None
    #: the physics component's strength (0-1) and model feature, fixed for the login
    phys_s: float
    phys_feat: float
    prefix: str
    #: the session's route notes, kept only when the route has a foreign origin
    route: dict[str, Any] | None
    server: Server | None
    server_id: str
    session_id: str | None
    src_ip: IPv4Address | IPv6Address
    tcp: float | None
    ts: datetime

    def __init__(self) -> None:
        self.event_id: str | None = None
        self.probes: list[Any] | None = None
        self.score = 0.0
        self.flagged = False
        #: how far (km, 0 if nowhere) the claimed point lies outside the probes' RTT
        #: disks. Monotone: a probe only adds a disk or shrinks its own, so each probe
        #: updates it in O(1) (:meth:`LatencyDetector._on_probe`).
        self.worst_km = 0.0


@dataclass(slots=True)
class _Assessment:
    """One verdict put into words: its components, evidence and reasons. Only built
    for a flag (or on request, :meth:`LatencyDetector._assess`)."""

    base: float
    components: dict[str, float]
    evidence: dict[str, Any]
    reasons: list[str]
    #: vantage disks (lat, lon, radius km); the feasible region is only computed for flags
    disks: list[tuple[float, float, float]]


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
    # physics.destination_point() and physics.great_circle_km(), the same arithmetic
    # with what repeats over the grid (anchor, ring, bearing, disk terms) computed once
    p1, l1 = math.radians(alat), math.radians(alon)
    sin_p1, cos_p1 = math.sin(p1), math.cos(p1)
    turns = [math.radians(360.0 * b / bearings) for b in range(bearings)]
    sin_b = [math.sin(t) for t in turns]
    cos_b = [math.cos(t) for t in turns]
    points = [(alat, alon)]
    for ring in range(1, rings + 1):
        d = arad * ring / rings / EARTH_RADIUS_KM
        sin_d, cos_d = math.sin(d), math.cos(d)
        for k in range(bearings):
            p2 = math.asin(sin_p1 * cos_d + cos_p1 * sin_d * cos_b[k])
            l2 = l1 + math.atan2(sin_b[k] * sin_d * cos_p1, cos_d - sin_p1 * math.sin(p2))
            points.append((math.degrees(p2), (math.degrees(l2) + 540.0) % 360.0 - 180.0))
    centres = [(math.radians(la), math.cos(math.radians(la)), lo, rad) for la, lo, rad in disks]
    diameter = 2 * EARTH_RADIUS_KM
    inside = []
    for plat, plon in points:
        q1 = math.radians(plat)
        cos_q1 = math.cos(q1)
        for q2, cos_q2, lo, rad in centres:
            a = (math.sin((q2 - q1) / 2) ** 2
                 + cos_q1 * cos_q2 * math.sin(math.radians(lo - plon) / 2) ** 2)
            root = math.sqrt(a)
            if not diameter * math.asin(root if root < 1.0 else 1.0) <= rad:
                break
        else:
            inside.append((plat, plon, q1, cos_q1))
    if not inside:
        return None
    clat = sum(p[0] for p in inside) / len(inside)
    clon = sum(p[1] for p in inside) / len(inside)
    c1 = math.radians(clat)
    cos_c1 = math.cos(c1)
    spread = []  # great_circle_km(clat, clon, *p) of each p inside
    for _, plon, q1, cos_q1 in inside:
        a = math.sin((q1 - c1) / 2) ** 2 + cos_c1 * cos_q1 * math.sin(math.radians(plon - clon) / 2) ** 2
        root = math.sqrt(a)
        spread.append(diameter * math.asin(root if root < 1.0 else 1.0))
    return {
        "centroid": [round(clat, 3), round(clon, 3)],
        "radius_km": round(max(spread)),
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
    for value in components.values():  # max(0, min(1, value)), as conditionals
        value = value if value < 1.0 else 1.0
        p *= 1.0 - (value if value > 0.0 else 0.0)
    return 1.0 - p


def _geo_dict(geo: GeoInfo) -> dict[str, Any]:
    return asdict(geo)


#: The anomaly model's features, in the order rows of them are given.
_FEATURES = ("baseline_z", "gap", "gap_ratio", "physics_excess", "vantage_violation")
#: Probe methods the network layer (or a VPN endpoint) answers.
_NET_METHODS = frozenset({"icmp", "tcp"})
_W_GAP = WEIGHTS["gap"]
_W_PHYSICS = WEIGHTS["physics"]
_W_BASELINE = WEIGHTS["baseline"]
_W_VANTAGE = WEIGHTS["vantage"]
_W_ROUTE = WEIGHTS["route"]
_W_MODEL = WEIGHTS["model"]
_intern = sys.intern


@register
class LatencyDetector(SessionTable, Detector):
    """Relayed connections from latency physics, baselines and multi-vantage RTTs."""

    name = "latency"
    consumes = frozenset({"login", "rtt_probe"})
    _model_features: ClassVar[tuple[str, ...]] = (
        "gap_ratio", "gap", "baseline_z", "physics_excess", "vantage_violation",
    )
    #: Probes end early when no flag can come of them (a clean session, or a flag out
    #: of reach even with the model's full weight); the results are the same without.
    prune: ClassVar[bool] = True

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
        #: account -> (flagged sessions, session id, score, session id, score, ...): the
        #: last ``history_len`` sessions' scores, oldest first, in one flat tuple
        self.accounts: BoundedLRU[str, tuple[Any, ...]] = BoundedLRU(cfg["accounts_max"])
        self.alerts = AlertBook(self.name, "vpn_relay", cfg["alerts_max"])
        self.model = self._new_model()
        self.hst = QueuedHalfSpaceTrees(self.model)
        #: (server id, lat, lon) -> great-circle km (-1: unknown server or unlocated
        #: point); cleared when full
        self._distances: dict[tuple[str, float | None, float | None], float] = {}
        self.distances_max = max(1, int(cfg["distances_max"]))
        #: (server id, lat, lon, access kind, precision) -> (expected RTT ms, tolerance ms,
        #: slack ms, ramp width ms) of a claimed location; cleared when full
        self._expectations: dict[tuple[str, float, float, str | None, str], tuple[float, ...]] = {}
        self._server = ctx.config.server

    # -- the River anomaly model -------------------------------------------------

    def _new_model(self) -> anomaly.HalfSpaceTrees:
        return anomaly.HalfSpaceTrees(
            n_trees=int(self.cfg["hst_trees"]),
            height=int(self.cfg["hst_height"]),
            window_size=int(self.cfg["hst_window"]),
            seed=int(self.cfg["seed"]),
        )

    def _model_state(self) -> dict[str, Any]:
        self.hst.sync()
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
        if isinstance(event, RttProbe):
            return self._on_probe(event)
        if isinstance(event, Login):
            return self._on_login(ev, event)
        return None

    def _session_of(self, event: RttProbe | Login) -> tuple[str, _Session]:
        """The session an event belongs to (created, or refreshed in the LRU)."""
        key = event.session_id or f"event:{event.event_id}"
        table = self.sessions._d
        sess = table.get(key)
        if sess is None:
            sess = _Session()
            self.sessions.put(key, sess)
        else:
            table.move_to_end(key)
        return key, sess

    def _on_probe(self, probe: RttProbe) -> Findings | None:
        _, sess = self._session_of(probe)
        rtt = probe.rtt_ms
        lo = min(rtt)
        vantage = probe.vantage_id
        probes = sess.probes
        changed = True
        if probes is None:
            sess.probes = probes = [_intern(vantage), _intern(probe.method), lo, len(rtt)]
        else:
            for i in range(0, len(probes), 4):
                if probes[i] == vantage:
                    if lo < probes[i + 2]:  # the disk shrinks
                        probes[i + 1] = _intern(probe.method)
                        probes[i + 2] = lo
                        probes[i + 3] += len(rtt)
                    else:
                        changed = False
                    break
            else:
                if len(probes) >= 4 * MAX_VANTAGES:
                    return None
                sess.probes = probes = [*probes, _intern(vantage), _intern(probe.method), lo, len(rtt)]
        if sess.event_id is None:
            return None  # the login will assess the probes
        if changed:
            geo = sess.geo
            d = self._distances.get((vantage, geo.lat, geo.lon))
            if d is None:
                v = self._violation(sess, vantage, lo)  # and memoise the distance
            elif d < 0.0:
                v = -1.0
            else:  # :meth:`_violation`, inlined
                v = d - lo * KM_PER_MS_RTT - PRECISION_SLACK_KM.get(geo.precision, 1000.0)
            if v > sess.worst_km:
                sess.worst_km = v
        if sess.allowed is not None:
            return None  # allow-listed sessions are never flagged
        # A late probe can only add evidence to the session's login: re-assess it (no
        # baseline or model learning: the login already taught them). Most sessions
        # are clean: a look at what every component needs to be non-zero (the same
        # comparisons :meth:`_score` makes) ends their probes here.
        if self.prune and self.flag_threshold > 0.0 and not sess.phys_s > 0 \
                and sess.route is None and not sess.worst_km > 100.0:
            app_min = sess.app_min
            net = sess.tcp
            if sess.geo.kind != "mobile":
                server_id = sess.server_id
                for i in range(0, len(probes), 4):
                    if probes[i] == server_id and probes[i + 1] in _NET_METHODS and (
                        net is None or probes[i + 2] < net
                    ):
                        net = probes[i + 2]
            if net is None or not app_min - net > self.gap_min_ms or not 1.0 - (
                net / app_min if app_min > 0 else 1.0
            ) > 0.5:
                # the most specific baseline out of warm-up
                known = self.baselines._d
                warmup = self.warmup
                b = known.get(sess.k_prefix)
                if b is None or b.n < warmup:
                    k = sess.k_asn
                    b = None if k is None else known.get(k)
                    if b is None or b.n < warmup:
                        k = sess.k_country
                        b = None if k is None else known.get(k)
                        if b is None or b.n < warmup:
                            return None
                lo_ms, hi_ms = b.bounds()  # cached until the baseline learns
                excess = app_min - hi_ms
                if not excess > 5.0:
                    return None
                spread = hi_ms - lo_ms
                least = MIN_SPREAD_MS.get(sess.geo.kind or "", DEFAULT_MIN_SPREAD_MS)
                if not excess / (least if least > spread else spread) > 2.0:
                    return None
        return self._reassess(sess)

    def _reassess(self, sess: _Session) -> Findings | None:
        comps, model, _, _, _, raw, _ = self._score(sess, False)
        if comps is None:
            if self.flag_threshold > 0.0:
                return None  # no evidence at all: score 0
            base = 0.0
        else:
            if model is None:
                # The model would be asked. Its component is at most its weight and the
                # account history at most boosts: first see if a flag is within reach.
                if self.prune:
                    top = 1.0 - (1.0 - _noisy_or(comps)) * (1.0 - _W_MODEL)
                    suspicious = self._suspicious_before(sess)
                    if suspicious:
                        top += (1.0 - top) * min(0.6, 0.2 * suspicious)
                    top += 1e-9  # float rounding
                    if top < self.flag_threshold or (sess.flagged and top < sess.score + 0.05):
                        return None
                model = self._model_score(comps, self._features(sess, *raw))
            base = _noisy_or(comps)
        score, history_note = self._with_history(sess.account, sess, base)
        if score < self.flag_threshold:
            return None
        if sess.flagged and score < sess.score + 0.05:
            return None
        assert model is not None
        return self._emit(sess, self._assessment(sess, base, comps or {}, model), score, history_note)

    def _on_login(self, ev: Enriched, login: Login) -> Findings | None:
        key, sess = self._session_of(login)
        physics_excess = self._set_login(sess, key, login, ev.geo, ev.prefix, ev.server, ev.allowed,
                                         ev.notes.get("route"))
        comps, model, gap_ms, baseline_excess, level, raw, features = self._score(sess)
        if comps is None:
            base = score = 0.0
            history_note = None
        else:
            base = _noisy_or(comps)
            score, history_note = self._with_history(login.account, sess, base)
        would_flag = score >= self.flag_threshold
        allowed = ev.allowed
        flagged = would_flag and allowed is None
        excess_ms = physics_excess
        if baseline_excess is not None and (excess_ms is None or baseline_excess > 0):
            excess_ms = baseline_excess if excess_ms is None or baseline_excess > excess_ms \
                else excess_ms  # max(excess_ms, baseline_excess)
        note: dict[str, Any] = {
            "score": round(score, 4) if score else 0.0,
            "flagged": flagged,
            "exit_prefix": ev.prefix,
            "gap_ms": None if gap_ms is None else round(gap_ms, 2),
            "excess_ms": None if excess_ms is None else round(excess_ms, 2),
        }
        if would_flag and allowed is not None:
            note["suppressed"] = f"allow-listed {allowed.cidr}: {allowed.reason}"
        ev.notes["relay"] = note
        # a flag is explained with the baselines as they were before this login taught them
        assert model is not None
        assessed = self._assessment(sess, base, comps or {}, model) if flagged else None
        if allowed is None and (comps is None or self._teaches(comps, level)):
            self._learn(sess, features or self._features(sess, *raw))
        if assessed is None:
            self._remember(login.account, sess, base if allowed is None else 0.0)
            return None
        return self._emit(sess, assessed, score, history_note)

    def _set_login(
        self, sess: _Session, key: str, login: Login, geo: GeoInfo, prefix: str,
        server: Server | None, allowed: AllowEntry | None, route: Any,
    ) -> float | None:
        """Keep what later probes need of a login; returns the physics excess (ms, ``None``
        without a located claim or a known server)."""
        app = login.app_rtt_ms
        n = len(app)
        server_id = _intern(login.server_id)
        sess.event_id = login.event_id
        sess.session_id = None if login.session_id is None else key
        sess.ts = login.ts
        sess.account = login.account
        sess.src_ip = login.src_ip
        sess.server_id = server_id
        sess.server = server
        sess.app_n = n
        if n == 1:
            sess.app_min = sess.app_p10 = app_min = app[0]
        else:  # physics.quantile(app, 0.1), inlined
            ordered = sorted(app)
            sess.app_min = app_min = ordered[0]
            pos = 0.1 * (n - 1)
            i = int(pos)
            j = min(i + 1, n - 1)
            sess.app_p10 = ordered[i] + (ordered[j] - ordered[i]) * (pos - i)
        sess.tcp = login.tcp_rtt_ms
        sess.geo = geo
        sess.prefix = prefix
        sess.allowed = allowed
        sess.route = route if isinstance(route, dict) and route.get("foreign_origin") else None
        # the baseline keys, as the baselines' own strings where they exist
        known = self.baselines._d
        k = f"{server_id}|p|{prefix}"
        b = known.get(k)
        sess.k_prefix = k if b is None else b.key
        if geo.asn is None:
            sess.k_asn = None
        else:
            k = f"{server_id}|a|{geo.asn}"
            b = known.get(k)
            sess.k_asn = k if b is None else b.key
        if geo.country:
            k = f"{server_id}|c|{geo.country}|{geo.kind or '?'}"
            b = known.get(k)
            sess.k_country = k if b is None else b.key
        else:
            sess.k_country = None
        # physics: fixed for the session (the arithmetic of :meth:`_physics`)
        lat, lon = geo.lat, geo.lon
        excess: float | None = None
        if server is None or lat is None or lon is None:
            sess.phys_s = sess.phys_feat = 0.0
        else:
            claim = (server.id, lat, lon, geo.kind, geo.precision)
            expectation = self._expectations.get(claim)
            if expectation is None:
                kind = geo.kind or "unknown"
                tol = KIND_TOLERANCE_MS.get(kind, DEFAULT_TOLERANCE_MS)
                expectation = (
                    self._km(server, lat, lon) / KM_PER_MS_RTT * PATH_INFLATION
                    + ACCESS_TYPICAL_MS.get(kind, 6.0),
                    tol,
                    PRECISION_SLACK_KM.get(geo.precision, 1000.0) * PATH_INFLATION / KM_PER_MS_RTT,
                    max(8.0, tol),
                )
                if len(self._expectations) >= self.distances_max:
                    self._expectations.clear()
                self._expectations[claim] = expectation
            expected, tol, slack_ms, hi = expectation
            excess = app_min - expected
            x = excess - tol - slack_ms
            sess.phys_s = 0.0 if x <= 0.0 else 1.0 if x >= hi else x / (hi - 0.0)  # ramp(x, 0, hi)
            x = excess - tol
            x = x if x > 0.0 else 0.0
            sess.phys_feat = x / (x + 20.0) if x else 0.0  # squash(excess - tol, 20), one shared zero
        # the vantage disks of the probes so far
        worst = 0.0
        probes = sess.probes
        if probes is not None:
            for i in range(0, len(probes), 4):
                v = self._violation(sess, probes[i], probes[i + 2])
                if v > worst:
                    worst = v
        sess.worst_km = worst
        return excess

    def _violation(self, sess: _Session, vantage: str, min_ms: float) -> float:
        """km by which the claimed point lies outside the RTT disk of a probe from
        ``vantage`` (<= 0: inside; -1 for an unknown vantage or an unlocated claim)."""
        geo = sess.geo
        key = (vantage, geo.lat, geo.lon)
        d = self._distances.get(key)
        if d is None:
            v = self._server(vantage)
            lat, lon = geo.lat, geo.lon
            if v is None or lat is None or lon is None:
                d = -1.0
                self._remember_distance(key, d)
            else:
                d = self._km(v, lat, lon)
        if d < 0.0:
            return -1.0
        return d - min_ms * KM_PER_MS_RTT - PRECISION_SLACK_KM.get(geo.precision, 1000.0)

    def _remember_distance(self, key: tuple[str, float | None, float | None], km: float) -> None:
        distances = self._distances
        if len(distances) >= self.distances_max:
            distances.clear()
        distances[key] = km

    def _km(self, server: Server, lat: float, lon: float) -> float:
        """Great-circle km from ``server`` to (lat, lon): claimed points repeat (one per
        prefix or city), so each (server, point) pair is computed once."""
        key = (server.id, lat, lon)
        km = self._distances.get(key)
        if km is None or km < 0.0:
            km = great_circle_km(server.lat, server.lon, lat, lon)
            self._remember_distance(key, km)
        return km

    @staticmethod
    def _teaches(components: dict[str, float], level: str) -> bool:
        """Whether a session may update the baselines and the model.

        Sessions with intrinsic relay evidence (gap, physics, vantages, route) or
        out of their own prefix's range must not teach the baseline that relays are
        normal; a verdict from a fallback (ASN, country) baseline does not block
        learning, or a new prefix that is slower than its ISP would never warm up.
        """
        keep = 1.0
        for k, v in components.items():
            if k == "model" or (k == "baseline" and level != "prefix"):
                continue
            v = v if v < 1.0 else 1.0
            keep *= 1.0 - (v if v > 0.0 else 0.0)
        return 1.0 - keep < 0.5

    def _learn(self, sess: _Session, features: tuple[float, ...]) -> None:
        value = sess.app_min
        baselines = self.baselines
        table = baselines._d
        for key in (sess.k_prefix, sess.k_asn, sess.k_country):
            if key is None:
                continue
            b = table.get(key)
            if b is None:
                b = Baseline(key)
                baselines.put(key, b)
            else:
                table.move_to_end(key)
            b.n += 1  # Baseline.update, inlined
            b._lo = None
            b._q10.update(value)
            b._q50.update(value)
            b._q90.update(value)
        self.hst.learn_row(_FEATURES, features)

    # -- per-account history -----------------------------------------------------

    def _remember(self, account: str, sess: _Session, base: float, first_flag: bool = False) -> int:
        """Put the session's score into the account's history (replacing an earlier score
        of the same session); returns the account's number of flagged sessions."""
        accounts = self.accounts
        table = accounts._d
        acc = table.get(account)
        sid = sess.session_id or sess.event_id
        if acc is None:
            flagged = 1 if first_flag else 0
            accounts.put(account, (flagged, sid, base) if self.history_len > 0 else (flagged,))
            return flagged
        table.move_to_end(account)
        flagged = int(acc[0]) + 1 if first_flag else int(acc[0])
        recent: list[Any] = [flagged]
        for i in range(1, len(acc), 2):
            if acc[i] != sid:
                recent += acc[i:i + 2]
        recent += (sid, base)
        keep = 2 * self.history_len
        if len(recent) > keep + 1:
            del recent[1:len(recent) - keep]
        table[account] = tuple(recent)
        return flagged

    def _suspicious_before(self, sess: _Session) -> int:
        """How many of the account's other recent sessions were suspicious."""
        acc = self.accounts.peek(sess.account)
        if acc is None:
            return 0
        sid = sess.session_id or sess.event_id
        threshold = self.suspicious_history
        suspicious = 0
        for i in range(1, len(acc), 2):
            if acc[i + 1] >= threshold and acc[i] != sid:
                suspicious += 1
        return suspicious

    def _with_history(self, account: str, sess: _Session, base: float) -> tuple[float, str | None]:
        if base <= 0.0:  # nothing to boost or damp
            return base, None
        acc = self.accounts.peek(account)
        if acc is None:
            return base, None
        sid = sess.session_id or sess.event_id
        threshold = self.suspicious_history
        prior = suspicious = 0
        top = 0.0
        for i in range(1, len(acc), 2):
            if acc[i] != sid:
                v = acc[i + 1]
                if not prior or v > top:
                    top = v
                prior += 1
                if v >= threshold:
                    suspicious += 1
        if base >= 0.35 and suspicious:
            boosted = base + (1.0 - base) * min(0.6, 0.2 * suspicious)
            return boosted, (
                f"{suspicious} of the account's last {prior} sessions were also "
                f"suspicious: score {base:.2f} -> {boosted:.2f}"
            )
        if base < 0.8 and prior >= 3 and top < 0.3:
            damped = base * 0.85
            return damped, (
                f"the account's last {prior} sessions were clean: one noisy session is "
                f"not enough (score {base:.2f} -> {damped:.2f})"
            )
        return base, None

    # -- assessment ------------------------------------------------------------

    def _score(self, sess: _Session, ask_model: bool = True) -> tuple[
        dict[str, float] | None, float | str | None, float | None, float | None, str,
        tuple[float | None, float | None, float | None, float | None], tuple[float, ...] | None,
    ]:
        """The numbers of one assessment of a session's login, nothing put into words.

        Returns (components, ``None`` if there is no evidence at all; the model's
        verdict, ``None`` if it would be asked but ``ask_model`` is false; the
        cross-layer gap ms; the baseline excess ms; the level of the baseline used;
        what :meth:`_features` makes the model features of; the features if the model
        was asked). Each component is the arithmetic of its explanation
        (:meth:`_assessment`), ramps inlined: ``ramp(x, lo, hi)`` is ``0 if x <= lo,
        1 if x >= hi, (x - lo) / (hi - lo)``.
        """
        app_min = sess.app_min
        kind = sess.geo.kind
        probes = sess.probes
        comps: dict[str, float] | None = None
        # cross-layer gap: the lowest network-layer RTT (kernel TCP, or an ICMP/TCP probe
        # from the login server unless the access is mobile) against the app RTT
        net = sess.tcp
        if probes is not None and kind != "mobile":
            server_id = sess.server_id
            for i in range(0, len(probes), 4):
                if probes[i] == server_id and probes[i + 1] in _NET_METHODS and (
                    net is None or probes[i + 2] < net
                ):
                    net = probes[i + 2]
        gap_ms = x_gap = None
        if net is not None:
            gap_ms = app_min - net
            x_gap = 1.0 - (net / app_min if app_min > 0 else 1.0)
            lo, hi = self.gap_min_ms, self.gap_full_ms
            s = ((0.0 if gap_ms <= lo else 1.0 if gap_ms >= hi else (gap_ms - lo) / (hi - lo))
                 * (0.0 if x_gap <= 0.5 else 1.0 if x_gap >= 0.75 else (x_gap - 0.5) / (0.75 - 0.5)))
            if s > 0:
                comps = {"gap": _W_GAP * s}
        # physics (fixed at the login)
        s = sess.phys_s
        if s > 0:
            if comps is None:
                comps = {"physics": _W_PHYSICS * s}
            else:
                comps["physics"] = _W_PHYSICS * s
        # the most specific baseline out of warm-up
        known = self.baselines._d
        warmup = self.warmup
        level = ""
        b = known.get(sess.k_prefix)
        if b is not None and b.n >= warmup:
            level = "prefix"
        else:
            k = sess.k_asn
            b = None if k is None else known.get(k)
            if b is not None and b.n >= warmup:
                level = "asn"
            else:
                k = sess.k_country
                b = None if k is None else known.get(k)
                if b is not None and b.n >= warmup:
                    level = "country"
        z: float | None = None
        excess: float | None = None
        if level:
            assert b is not None
            lo, hi = b.bounds()
            excess = app_min - hi
            least = MIN_SPREAD_MS.get(kind or "", DEFAULT_MIN_SPREAD_MS)
            z = excess / (least if least > hi - lo else hi - lo)  # max(hi - lo, least)
            s = ((0.0 if z <= 2.0 else 1.0 if z >= 5.0 else (z - 2.0) / (5.0 - 2.0))
                 * (0.0 if excess <= 5.0 else 1.0 if excess >= 15.0 else (excess - 5.0) / (15.0 - 5.0))
                 * LEVEL_WEIGHT[level])
            if s > 0:
                if comps is None:
                    comps = {"baseline": _W_BASELINE * s}
                else:
                    comps["baseline"] = _W_BASELINE * s
        # vantage disks
        worst = sess.worst_km if probes else None
        if worst is not None and worst > 100.0:
            s = 1.0 if worst >= 600.0 else (worst - 100.0) / (600.0 - 100.0)
            if comps is None:
                comps = {"vantage": _W_VANTAGE * s}
            else:
                comps["vantage"] = _W_VANTAGE * s
        if sess.route is not None:
            if comps is None:
                comps = {"route": _W_ROUTE}
            else:
                comps["route"] = _W_ROUTE
        # the anomaly model sharpens physical evidence; it never flags on its own, so
        # without other evidence it is not asked
        raw = (gap_ms, x_gap, z, worst)
        m = self.model
        if not m.trees or m._first_window:
            return comps, "warm-up", gap_ms, excess, level, raw, None
        if comps is None:
            return comps, "not scored: no other evidence", gap_ms, excess, level, raw, None
        if not ask_model:
            return comps, None, gap_ms, excess, level, raw, None
        features = self._features(sess, gap_ms, x_gap, z, worst)
        return comps, self._model_score(comps, features), gap_ms, excess, level, raw, features

    def _model_score(self, components: dict[str, float], features: tuple[float, ...]) -> float:
        """Ask the anomaly model; adds its component."""
        model = self.hst.score_row(_FEATURES, features)
        s = 0.0 if model <= 0.7 else 1.0 if model >= 0.95 else (model - 0.7) / (0.95 - 0.7)
        if s > 0:
            components["model"] = _W_MODEL * s
        return model

    @staticmethod
    def _features(
        sess: _Session, gap_ms: float | None, x_gap: float | None, z: float | None, worst: float | None
    ) -> tuple[float, ...]:
        """The anomaly model's features (squashed residuals: ``squash(x, scale)`` is
        ``x / (x + scale)`` for ``x >= 0``) of an assessment, in :data:`_FEATURES` order."""
        if gap_ms is None or x_gap is None:
            gap_ratio = gap = 0.0
        else:
            gap_ratio = x_gap if x_gap > 0.0 else 0.0
            gap = gap_ms if gap_ms > 0.0 else 0.0
            gap = gap / (gap + 20.0)
        if z is None:
            z = 0.0
        else:
            z = z if z > 0.0 else 0.0
            z = z / (z + 3.0)
        if worst is None:
            worst = 0.0
        else:
            worst = worst if worst > 0.0 else 0.0
            worst = worst / (worst + 500.0)
        return (z, gap, gap_ratio, sess.phys_feat, worst)

    def _assess(self, sess: _Session) -> _Assessment:
        """Assess a session's login as it stands, with its evidence put into words."""
        comps, model = self._score(sess)[:2]
        assert model is not None
        return self._assessment(sess, 0.0 if comps is None else _noisy_or(comps), comps or {}, model)

    def _assessment(
        self, sess: _Session, base: float, components: dict[str, float], model: float | str
    ) -> _Assessment:
        """The evidence and reasons behind :meth:`_score`'s numbers (the same arithmetic,
        with its details)."""
        geo, app_min = sess.geo, sess.app_min
        app_ms = round(app_min, 2)
        reasons: list[str] = []
        disks: list[tuple[float, float, float]] = []
        evidence: dict[str, Any] = {
            "measured": {
                "app_rtt_min_ms": app_ms,
                "app_rtt_p10_ms": round(sess.app_p10, 2),
                "app_rtt_samples": sess.app_n,
                "tcp_rtt_ms": sess.tcp,
                "server": sess.server_id,
            },
            "claimed": {
                "country": geo.country, "asn": geo.asn, "kind": geo.kind,
                "lat": geo.lat, "lon": geo.lon, "precision": geo.precision,
                "prefix": sess.prefix,
            },
            "gap": self._explain_gap(sess, app_ms, reasons),
            "physics": self._explain_physics(sess, app_ms, reasons),
            "baseline": self._explain_baseline(sess, components, reasons),
            "vantages": self._explain_vantages(sess, components, reasons, disks),
        }
        route = sess.route
        if route is not None:
            path = " → ".join(route.get("country_path", []))
            reasons.append(f"route of this session has a foreign origin: {path}")
            evidence["route"] = {"country_path": route.get("country_path"),
                                 "signature": route.get("signature")}
        evidence["model"] = (
            {"half_space_trees": round(model, 3)} if isinstance(model, float) else {"verdict": model}
        )
        evidence["components"] = {k: round(v, 3) for k, v in components.items()}
        return _Assessment(base, components, evidence, reasons, disks)

    @staticmethod
    def _network_rtt(sess: _Session) -> tuple[float | None, str]:
        """The lowest network-layer RTT of the connection: kernel TCP or a probe from the
        login server (not for mobile access, where the carrier gateway answers pings)."""
        net: float | None = sess.tcp
        label = "tcp_rtt"
        probes = sess.probes
        if probes is not None and sess.geo.kind != "mobile":
            for i in range(0, len(probes), 4):
                if probes[i] == sess.server_id and probes[i + 1] in _NET_METHODS and (
                    net is None or probes[i + 2] < net
                ):
                    net, label = probes[i + 2], f"{probes[i + 1]} probe"
        return net, label

    def _explain_gap(self, sess: _Session, app_ms: float, reasons: list[str]) -> dict[str, Any]:
        net, label = self._network_rtt(sess)
        if net is None:
            return {"verdict": "no tcp_rtt or network-layer probe"}
        app_min = sess.app_min
        gap = app_min - net
        ratio = net / app_min if app_min > 0 else 1.0
        s = ramp(gap, self.gap_min_ms, self.gap_full_ms) * ramp(1.0 - ratio, 0.5, 0.75)
        if s > 0:
            what = "TCP terminates" if label == "tcp_rtt" else "the network layer answers"
            reasons.append(
                f"{label} {net:.1f} ms vs app_rtt {app_min:.1f} ms: {what} "
                f"{gap:.0f} ms·100 km ≈ {gap * KM_PER_MS_RTT:.0f} km before the client"
            )
        return {
            "network_rtt_ms": round(net, 2), "source": label,
            "app_rtt_min_ms": app_ms, "gap_ms": round(gap, 2),
            "gap_km": round(gap * KM_PER_MS_RTT), "ratio": round(ratio, 3),
            "verdict": "relay" if s > 0.5 else "consistent",
        }

    def _explain_physics(self, sess: _Session, app_ms: float, reasons: list[str]) -> dict[str, Any]:
        geo, server, app_min = sess.geo, sess.server, sess.app_min
        if server is None or geo.lat is None or geo.lon is None:
            return {"verdict": "no located claim or unknown server"}
        dist = self._km(server, geo.lat, geo.lon)
        kind = geo.kind or "unknown"
        expected = fibre_floor_ms(dist) * PATH_INFLATION + ACCESS_TYPICAL_MS.get(kind, 6.0)
        slack_ms = PRECISION_SLACK_KM.get(geo.precision, 1000.0) * PATH_INFLATION / KM_PER_MS_RTT
        tol = KIND_TOLERANCE_MS.get(kind, DEFAULT_TOLERANCE_MS)
        excess = app_min - expected
        floor = fibre_floor_ms(dist) + ACCESS_FLOOR_MS.get(kind, 0.3)
        s = ramp(excess - tol - slack_ms, 0.0, max(8.0, tol))
        out: dict[str, Any] = {
            "distance_km": round(dist), "floor_ms": round(floor, 2),
            "expected_ms": round(expected, 2), "measured_ms": app_ms,
            "excess_ms": round(excess, 2),
            "excess_km": round(max(0.0, excess) * KM_PER_MS_RTT),
            "tolerance_ms": tol + round(slack_ms, 1), "access_kind": kind,
            "precision": geo.precision,
            "verdict": "detour" if s > 0 else (
                "faster than light" if app_min < floor - slack_ms else "consistent"),
        }
        if geo.precision == "country":
            out["note"] = "claimed point is the country's reference point"
        if s > 0:
            reasons.append(
                f"app_rtt {app_min:.1f} ms vs {expected:.1f} ms expected for a {kind} "
                f"client {dist:.0f} km from {server.id}: {excess:.0f} ms ≈ "
                f"{excess * KM_PER_MS_RTT:.0f} km of detour"
            )
        return out

    def _explain_baseline(
        self, sess: _Session, components: dict[str, float], reasons: list[str]
    ) -> dict[str, Any]:
        """The baselines looked at, most specific first, up to the first out of warm-up."""
        levels: list[dict[str, Any]] = []
        used = None
        warmup = self.warmup
        for level, key in (("prefix", sess.k_prefix), ("asn", sess.k_asn), ("country", sess.k_country)):
            if key is None:
                continue
            b = self.baselines.peek(key)
            n = 0 if b is None else b.n
            if b is None or n < warmup:
                levels.append({"level": level, "key": key, "samples": n,
                               "verdict": f"warm-up: {n} < {warmup} samples, no verdict"})
                continue
            lo, mid, hi = b.quantiles()
            # the verdict is taken on the 0.01 ms figures the evidence shows
            lo_ms, hi_ms = b.bounds()
            excess = sess.app_min - hi_ms
            spread = max(hi_ms - lo_ms, MIN_SPREAD_MS.get(sess.geo.kind or "", DEFAULT_MIN_SPREAD_MS))
            z = excess / spread
            levels.append({"level": level, "key": key, "samples": n,
                           "p10_ms": round(lo, 2), "p50_ms": round(mid, 2), "p90_ms": round(hi, 2),
                           "excess_ms": round(excess, 2),
                           "excess_km": round(max(0.0, excess) * KM_PER_MS_RTT),
                           "z": round(z, 2), "spread_ms": round(spread, 2)})
            if "baseline" in components:
                reasons.append(
                    f"app_rtt {sess.app_min:.1f} ms vs p90 {round(hi, 2):.1f} ms of {n} "
                    f"sessions from the same {level}: +{excess:.0f} ms ≈ "
                    f"{excess * KM_PER_MS_RTT:.0f} km farther than its neighbours"
                )
            used = level
            break
        return {"levels": levels, "used": used}

    def _explain_vantages(
        self, sess: _Session, components: dict[str, float], reasons: list[str],
        disks: list[tuple[float, float, float]],
    ) -> dict[str, Any]:
        """The probes' RTT disks (and ``disks`` filled for the feasible region)."""
        probes = sess.probes
        if not probes:
            return {"verdict": "no probes"}
        geo = sess.geo
        slack = PRECISION_SLACK_KM.get(geo.precision, 1000.0)
        rows: list[dict[str, Any]] = []
        for i in range(0, len(probes), 4):
            vantage, method, ms = probes[i], probes[i + 1], probes[i + 2]
            v = self._server(vantage)
            if v is None:
                rows.append({"vantage": vantage, "verdict": "unknown vantage"})
                continue
            radius = ms * KM_PER_MS_RTT
            disks.append((v.lat, v.lon, radius))
            row: dict[str, Any] = {"vantage": vantage, "method": method,
                                   "rtt_ms": round(ms, 2), "radius_km": round(radius)}
            if geo.lat is not None and geo.lon is not None:
                d = self._km(v, geo.lat, geo.lon)
                over = d - radius - slack
                row.update(distance_km=round(d), inside=over <= 0)
                if over > 0:
                    row["violation_km"] = round(over)
            rows.append(row)
        violated = [r["vantage"] for r in rows if r.get("inside") is False]
        if "vantage" in components:
            reasons.append(
                f"claimed location lies {sess.worst_km:.0f} km outside the RTT disk of "
                f"{', '.join(violated)}: the client cannot be where its address says"
            )
        return {"disks": rows, "verdict": "violated" if violated else "consistent",
                "violated": violated}

    # -- output -------------------------------------------------------------------

    def _emit(
        self, sess: _Session, assessed: _Assessment, score: float, history_note: str | None,
    ) -> Findings:
        first_flag = not sess.flagged
        sess.flagged, sess.score = True, score
        account = sess.account
        flagged_sessions = self._remember(account, sess, max(assessed.base, score), first_flag)
        reasons = list(assessed.reasons)
        disks = assessed.disks
        if disks:
            assessed.evidence["vantages"]["feasible_region"] = feasible_region(disks)
        if history_note:
            reasons.append(history_note)
        final = round(score, 4)
        evidence = {**assessed.evidence, "score": {"session": round(assessed.base, 4),
                                                   "final": final,
                                                   "flagged_sessions": flagged_sessions}}
        subject_key = f"account:{account}"
        out = Findings()
        alert_id: str | None = None
        assert sess.event_id is not None
        if score >= self.alert_threshold or flagged_sessions >= self.alert_repeat \
                or self.alerts.known(subject_key):
            alert = self.alerts.update(
                subject_key, {"account": account}, sess.ts, score, sess.event_id,
                [account], evidence,
                f"{account}: relayed connection from {sess.prefix} — " + reasons[0]
                if reasons else f"{account}: relayed connection from {sess.prefix}",
            )
            out.alerts.append(alert)
            alert_id = alert.alert_id
        out.flags.append(FlaggedEvent(
            event_id=sess.event_id, ts=sess.ts, kind="vpn_relay", account=account,
            session_id=sess.session_id, src_ip=str(sess.src_ip), country=sess.geo.country,
            asn=sess.geo.asn, score=final if score <= 1.0 else 1.0, reasons=reasons, evidence=evidence,
            alert_id=alert_id, detector=self.name,
        ))
        return out

    # -- snapshots ------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """A JSON snapshot. A session's login is kept as a minimal login event (its
        minimum app RTT as the only sample) plus the 10th percentile and sample count."""
        sessions = [self._session_row(sid, s) for sid, s in self.sessions.items()]
        return {
            "version": 1,
            "baselines": [[k, b.snapshot()] for k, b in self.baselines.items()],
            "sessions": sessions,
            "accounts": self._accounts_rows(),
            "alerts": self.alerts.state(),
            "model": self._model_state(),
        }

    def _session_table(self) -> OrderedDict[str, _Session]:
        return self.sessions._d

    def learned_state(self) -> dict[str, Any]:
        return {
            "version": 1,
            "baselines": [[k, b.snapshot()] for k, b in self.baselines.items()],
            "accounts": self._accounts_rows(),
            "model": self._model_state(),
        }

    def load_learned(self, state: dict[str, Any]) -> None:
        """Baselines and account histories this detector lacks (while it has room), and
        the model when its own has learned nothing yet."""
        if state.get("version") != 1:
            return
        for key, snap in state.get("baselines", []):
            if self.baselines.peek(key) is None and len(self.baselines) < self.baselines.cap:
                self.baselines.put(key, Baseline.restore(snap, key))
        self._load_accounts(state.get("accounts", []), only_new=True)
        if not self.model.trees:
            self._load_model(state.get("model", {}))

    def _accounts_rows(self) -> list[list[Any]]:
        return [[k, {"recent": [(a[i], a[i + 1]) for i in range(1, len(a), 2)], "flagged": a[0]}]
                for k, a in self.accounts.items()]

    def _load_accounts(self, rows: list[list[Any]], *, only_new: bool = False) -> None:
        keep = 2 * self.history_len
        for key, acc in rows:
            if only_new and (self.accounts.peek(key) is not None or len(self.accounts) >= self.accounts.cap):
                continue
            recent: list[Any] = []
            for s, v in acc["recent"]:
                recent += (s, float(v))
            if len(recent) > keep:
                recent = recent[len(recent) - keep:] if keep > 0 else []
            self.accounts.put(key, (int(acc["flagged"]), *recent))

    def _session_row(self, sid: str, s: _Session) -> dict[str, Any]:
        login = None
        if s.event_id is not None:
            login = {
                "event": {
                    "kind": "login", "event_id": s.event_id, "ts": s.ts.isoformat(),
                    "src_ip": str(s.src_ip), "session_id": s.session_id, "account": s.account,
                    "server_id": s.server_id, "app_rtt_ms": [s.app_min], "tcp_rtt_ms": s.tcp,
                },
                "app_rtt_p10_ms": s.app_p10, "app_rtt_samples": s.app_n,
                "geo": _geo_dict(s.geo), "prefix": s.prefix,
                "allowed": s.allowed.model_dump() if s.allowed else None,
                "notes": {} if s.route is None else {"route": s.route},
            }
        probes = s.probes or []
        return {"id": sid, "login": login, "score": s.score, "flagged": s.flagged,
                "probes": [{"vantage": probes[i], "method": probes[i + 1],
                            "min_ms": probes[i + 2], "samples": probes[i + 3]}
                           for i in range(0, len(probes), 4)]}

    def _load_session_row(self, row: dict[str, Any]) -> None:
        sess = _Session()
        sess.score, sess.flagged = row["score"], row["flagged"]
        probes: list[Any] = []
        for p in row["probes"]:
            probes += (_intern(p["vantage"]), _intern(p["method"]), p["min_ms"], p["samples"])
        sess.probes = probes or None
        key = row["id"]
        snap = row["login"]
        if snap is not None:
            event = parse_event(snap["event"])
            assert isinstance(event, Login)
            self._set_login(
                sess, key, event, GeoInfo(**snap["geo"]), snap["prefix"],
                self._server(event.server_id),
                AllowEntry(**snap["allowed"]) if snap["allowed"] else None,
                (snap.get("notes") or {}).get("route"),
            )
            if "app_rtt_p10_ms" in snap:  # a minimal event: the full samples' figures
                sess.app_p10, sess.app_n = snap["app_rtt_p10_ms"], int(snap["app_rtt_samples"])
        self.sessions.put(key, sess)

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            return
        self.baselines.clear()
        for key, snap in state.get("baselines", []):
            self.baselines.put(key, Baseline.restore(snap, key))
        self.sessions.clear()
        for row in state.get("sessions", []):
            self._load_session_row(row)
        self.accounts.clear()
        self._load_accounts(state.get("accounts", []))
        self.alerts.load_state(state.get("alerts", []))
        self._load_model(state.get("model", {}))
