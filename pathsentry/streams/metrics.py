"""The worker's counters: :class:`Stats` (served as JSON on ``/stats``) and their
Prometheus exposition (``/metrics``), built with ``prometheus_client`` in a registry of
the worker's own.

Owns the counters (which only grow), the latency samples with their quantiles, the
latency histograms and the exposition. Counters and gauges are read from the worker's
own numbers at scrape time (one source of truth for ``/stats`` and ``/metrics``). The
latency histograms count every observation into its bucket when the latency is measured
(a bisect and two additions: ``prometheus_client``'s ``Histogram.observe`` takes a lock
and walks the buckets in Python, several µs, and stage latencies are observed for one
event in four) and are exposed, cumulative, as ``prometheus_client`` histogram families.

May not read or change anything else of the pipeline: the pipeline registers the
callable that returns its live gauges (:meth:`Stats.watch`); nothing here imports Kafka,
Faust or ClickHouse code.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from pathsentry.schemas import Alert, FlaggedEvent

__all__ = ["LATENCY_BUCKETS_MS", "RECENT_KEYS", "STAGE_SAMPLE", "RecentKeys", "Stats", "prometheus_text"]

#: Stage latencies are recorded for one event in this many (a systematic sample).
STAGE_SAMPLE = 4

#: Upper bounds (ms) of the produce-to-X histograms: from a few ms (an event run as soon
#: as it arrives) to two minutes (input held behind a lagging partition's watermark, or
#: an outage's backlog); beyond that, +Inf.
LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 120_000)
#: Upper bounds (ms) of the session stage's batch run time (a batch is at most
#: ``[clickhouse] batch_size`` events).
BATCH_BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

#: How many recent flag keys and first alert versions are remembered to tell a flagged
#: event or an alert stored for the first time from the same one stored again (a batch
#: re-read after a restart or a rebalance, a detector flagging an event twice). Bounded
#: (about 8 MB each at most): a repeat older than this many newer distinct keys counts again.
RECENT_KEYS = 100_000


class RecentKeys:
    """The last ``size`` distinct keys added: tells a new key from a repeat among them.
    Keeps the keys' 64-bit hashes (two keys of 100,000 share one with odds near 1e-9).

    >>> r = RecentKeys(2)
    >>> [r.add(k) for k in ("a", "b", "a", "c", "a")]
    [True, True, False, True, True]
    """

    def __init__(self, size: int = RECENT_KEYS) -> None:
        self.size = size
        self._keys: set[int] = set()
        self._order: deque[int] = deque()

    def add(self, key: Hashable) -> bool:
        """Remember ``key``; whether it was not among the recent keys."""
        h = hash(key)
        if h in self._keys:
            return False
        self._keys.add(h)
        self._order.append(h)
        if len(self._order) > self.size:
            self._keys.discard(self._order.popleft())
        return True


#: Counters of :class:`Stats` exposed as ``pathsentry_<name>_total`` (a ``kind`` or
#: ``reason`` label where the counter is kept per kind or per reason).
_COUNTERS: dict[str, str] = {
    "events_in": "valid events read from the producers' topics",
    "events_detected": "events the session stage ran and whose outputs were stored",
    "flag_rows": "flagged-event rows written to ClickHouse, re-writes of a re-read batch included",
    "alert_versions": "alert versions stored (a new alert and each re-emission of it as it grows)",
    "alert_versions_published": "alert versions acknowledged by Kafka on the alerts topic (first send)",
    "group_messages": "items the session stage forwarded to the group stage",
    "group_events": "events the group stage ran and whose outputs were stored",
    "batches": "session-stage batches whose outputs were stored",
    "feedback_in": "labels and interactions from the game taken by the cross-check",
}
_COUNTERS_BY: dict[str, tuple[str, str, str]] = {  # name: (Stats field, label, help)
    "flagged": ("flagged_by_kind", "kind", "distinct flagged events stored (event id and kind)"),
    "alerts": ("alerts_by_kind", "kind", "distinct alerts stored (first versions)"),
    "dead_letter": ("dead_letter_reasons", "reason", "messages sent to the dead-letter topic"),
}

#: Keys of the pipeline's live gauges exposed as ``pathsentry_<key>`` (current values;
#: a list counts its items) ...
_GAUGES: dict[str, str] = {
    "clickhouse_healthy": "1 while ClickHouse writes succeed, 0 during an outage",
    "outbox_rows": "rows waiting in the outbox for ClickHouse",
    "outbox_batches": "batches waiting in the outbox",
    "in_flight": "events sent to this worker's own internal partitions, not yet received",
    "session_held": "items the session stage holds behind its watermark",
    "group_held": "items the group stage holds behind its watermark",
    "group_partitions": "group partitions this worker runs",
    "session_partitions": "session partitions whose sessions this worker holds",
    "learned_state_loaded": "1 when the learned state was loaded from the state topic",
    "learned_state_save_ms": "duration of the last learned-state save to the state topic (ms)",
    "learned_state_save_bytes": "size of the last learned-state save, compressed (bytes)",
    "snapshot_serialise_ms": "build and serialisation time of the last snapshot file (ms; in the "
                             "save's child process unless it ran on the event loop)",
    "snapshot_bytes": "size of the last snapshot file (bytes)",
    "save_loop_ms": "event-loop time of the last periodic session-stage save (ms: the fork, or "
                    "the whole build when it ran on the loop)",
    "save_fork_ms": "time the event loop spent forking the last save's child process (ms)",
    "save_child_private_mib": "private (copied or new) memory of the last save's child at its end (MiB)",
    "save_child_peak_rss_mib": "peak resident memory of the last save's child, shared pages included (MiB)",
}
#: ... and as ``pathsentry_<key>_total`` (counts that only grow).
_GAUGE_COUNTERS: dict[str, str] = {
    "clickhouse_inserts": "inserts into ClickHouse that succeeded (flags, alerts, labels)",
    "handoff_hits": "stage inputs found in the in-process hand-off",
    "handoff_misses": "stage inputs decoded from the topic",
    "group_state_saves": "group partition states saved to the state topic",
    "group_state_loads": "loads of group partition states from the state topic",
    "group_state_load_failures": "loads of group partition states that failed (started empty)",
    "session_state_saves": "session partition states saved to the state topic",
    "session_state_loads": "loads of session partition states from the state topic",
    "session_state_load_failures": "loads of session partition states that failed (started empty)",
    "learned_state_saves": "learned-state saves to the state topic",
    "save_child_saves": "periodic session-stage saves built in a child process",
    "save_child_failures": "save child processes that failed, were killed or timed out (nothing published)",
    "learned_state_load_failures": "loads of the learned state that failed",
    "group_state_refused": "saved group partition states refused (malformed or hostile; started empty)",
    "session_state_refused": "saved session partition states refused (malformed or hostile; started empty)",
    "learned_state_refused": "saved learned states refused (malformed or hostile; started cold)",
    "snapshot_state_refused": "snapshot files refused (malformed or hostile; started cold)",
    "rooms_state_refused": "saved room merger states refused (malformed or hostile; started empty)",
}


@dataclass
class Stats:
    """Counters of one worker, served on ``/stats`` and ``/metrics``.

    ``flagged`` and ``alerts`` are what a SOC counts: distinct flagged events (event id and
    kind) and distinct alerts (alert ids) stored in ClickHouse. ``flag_rows`` and
    ``alert_versions`` count every row written: an alert is re-emitted with a higher
    version as it grows, and a batch re-read after a restart is written again.
    """

    worker: str = ""
    events_in: int = 0
    #: labels and interactions taken by the cross-check
    feedback_in: int = 0
    events_detected: int = 0
    dead_letter: int = 0
    flagged: int = 0
    flag_rows: int = 0
    alerts: int = 0
    alert_versions: int = 0
    alert_versions_published: int = 0
    group_messages: int = 0
    batches: int = 0
    last_batch_ms: float = 0.0
    group_events: int = 0
    #: CPU time (s) of the worker's event-loop thread inside the engine (both stages'
    #: detection, the detectors' flushes) and inside the ingest's decoding: the rest of
    #: its CPU time is the pipeline's own
    detect_cpu_s: float = 0.0
    decode_cpu_s: float = 0.0
    first_ingest_at: float | None = None
    first_event_at: float | None = None
    last_event_at: float | None = None
    last_group_at: float | None = None
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    flagged_by_kind: dict[str, int] = field(default_factory=dict)
    alerts_by_kind: dict[str, int] = field(default_factory=dict)
    #: "detector/kind" -> accounts its alerts named, later labelled bad, cleared (the
    #: engine's live tally, see :class:`~pathsentry.detectors.crosscheck.FeedbackTally`)
    detector_feedback: dict[str, dict[str, int]] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    #: (produce time ms, produce-to-flag-stored ms, flag kind) of recent flags
    latencies_ms: deque[tuple[int, float, str]] = field(default_factory=lambda: deque(maxlen=500_000))
    #: (produce time ms, produce-to-alert-stored ms, alert kind) of new and updated alerts,
    #: timed from the event that raised them (for a farm group: the login that formed or
    #: grew it; a refresh on an idle tick has no such event and is not counted)
    alert_latencies_ms: deque[tuple[int, float, str]] = field(default_factory=lambda: deque(maxlen=100_000))
    #: (produce time ms, produce-to-acknowledged-by-Kafka ms, alert kind) of the same alerts
    published_latencies_ms: deque[tuple[int, float, str]] = field(
        default_factory=lambda: deque(maxlen=100_000))
    #: (produce time ms, produce-to-stage-run ms, stage) of every ``STAGE_SAMPLE``-th recent
    #: event of a batch: where time goes
    stage_latencies_ms: deque[tuple[int, float, str]] = field(default_factory=lambda: deque(maxlen=200_000))

    def __post_init__(self) -> None:
        self._flag_keys = RecentKeys()
        self._alert_keys = RecentKeys()
        self._gauges: Callable[[], Mapping[str, Any]] = dict
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StatsCollector(self))

        self._h_flag = _Histogram("pathsentry_produce_to_flag_ms",
                                  "ms from an event's produce to its flag stored in ClickHouse", "kind")
        self._h_alert = _Histogram(
            "pathsentry_produce_to_alert_ms",
            "ms from the event that raised or grew an alert to the alert stored", "kind")
        self._h_published = _Histogram(
            "pathsentry_produce_to_alert_published_ms",
            "ms from the event that raised or grew an alert to its Kafka ack", "kind")
        self._h_stage = _Histogram(
            "pathsentry_produce_to_stage_ms",
            f"ms from an event's produce to a stage running it (1 event in {STAGE_SAMPLE})", "stage")
        self._h_batch = _Histogram("pathsentry_session_batch_ms", "ms the session stage took to run a batch",
                                   None, BATCH_BUCKETS_MS)
        self._histograms = (self._h_flag, self._h_alert, self._h_published, self._h_stage, self._h_batch)

    def watch(self, gauges: Callable[[], Mapping[str, Any]]) -> None:
        """Expose the live gauges ``gauges()`` returns (read at every scrape)."""
        self._gauges = gauges

    # -- what the pipeline reports ----------------------------------------------------

    def ingested(self, valid: int) -> None:
        """``valid`` events read from the producers' topics were forwarded."""
        if valid and self.first_ingest_at is None:
            self.first_ingest_at = time.time()
        self.events_in += valid

    def dead_lettered(self, reason: str) -> None:
        self.dead_letter += 1
        self.dead_letter_reasons[reason] = self.dead_letter_reasons.get(reason, 0) + 1

    def forwarded(self, items: int) -> None:
        self.group_messages += items

    def batch_ran(self, ms: float) -> None:
        """The session stage ran a batch in ``ms``."""
        self.last_batch_ms = round(ms, 2)
        self._h_batch.observe("", ms)

    def mark_stage(self, stage: str, sampled_ms: Iterable[int]) -> None:
        """Record the time from produce to now of the events ``stage`` runs now, given the
        produce times of one event in ``STAGE_SAMPLE`` (the caller samples: going over every
        event of a batch here would cost as much as recording them)."""
        ran_ms = time.time() * 1000
        observe = self._h_stage.series(stage)
        for t in sampled_ms:
            self.stage_latencies_ms.append((t, ran_ms - t, stage))
            observe(ran_ms - t)

    def published(self, kind: str, produced_ms: int | None) -> None:
        """Kafka acknowledged (at the first send) an alert version, raised by an event
        produced at ``produced_ms`` (none: a refresh on an idle tick)."""
        self.alert_versions_published += 1
        if produced_ms is not None:
            lat = time.time() * 1000 - produced_ms
            self.published_latencies_ms.append((produced_ms, lat, kind))
            self._h_published.observe(kind, lat)

    def stored(self, flags: Sequence[FlaggedEvent], alerts: Sequence[Alert], produced_ms: Mapping[str, int],
               triggers: Iterable[tuple[str, int]], stored_ms: float, stage: str, events: int) -> None:
        """A batch's outputs are in ClickHouse: its ``flags``, its ``alerts`` (with the
        (kind, produce time) of the event that raised each), after ``stage`` ran ``events``."""
        self.flag_rows += len(flags)
        self.alert_versions += len(alerts)
        for f in flags:
            if self._flag_keys.add(f.dedup_key):
                self.flagged += 1
                self.flagged_by_kind[f.kind] = self.flagged_by_kind.get(f.kind, 0) + 1
            t = produced_ms.get(f.event_id)
            if t:
                self.latencies_ms.append((t, stored_ms - t, f.kind))
                self._h_flag.observe(f.kind, stored_ms - t)
        for a in alerts:
            if a.version == 1 and self._alert_keys.add(a.alert_id):
                self.alerts += 1
                self.alerts_by_kind[a.kind] = self.alerts_by_kind.get(a.kind, 0) + 1
        for kind, t in triggers:
            self.alert_latencies_ms.append((t, stored_ms - t, kind))
            self._h_alert.observe(kind, stored_ms - t)
        if stage == "session" and events:
            now = time.time()
            if self.first_event_at is None:
                self.first_event_at = now
            self.last_event_at = now
            self.events_detected += events
            self.batches += 1
        elif stage == "group":
            self.group_events += events
            self.last_group_at = time.time()

    # -- reading ----------------------------------------------------------------------

    def latency_quantiles(self, since_ms: int = 0, kind: str | None = None,
                          samples: Iterable[tuple[int, float, str]] | None = None,
                          ) -> dict[str, float | None]:
        """p50/p99 of ``samples`` (default: produce-to-flag) over events produced after
        ``since_ms``, of one ``kind`` or all."""
        if samples is None:
            samples = self.latencies_ms
        s = sorted(lat for t, lat, k in samples if t >= since_ms and kind in (None, k))
        if not s:
            return {"p50": None, "p99": None, "n": 0}
        return {
            "p50": round(s[len(s) // 2], 1),
            "p99": round(s[min(len(s) - 1, int(len(s) * 0.99))], 1),
            "n": len(s),
        }

    def as_dict(self, since_ms: int = 0, latency: bool = True) -> dict[str, Any]:
        """The counters, and with ``latency`` the latency quantiles (which sort up to a few
        hundred thousand samples: a poller that needs only the counters leaves them out)."""
        d = {k: v for k, v in self.__dict__.items()
             if not (k.startswith("_") or k.endswith("latencies_ms") or k in ("registry", "worker"))}
        d["uptime_s"] = round(time.time() - self.started_at, 1)
        if not latency:
            return d
        d["produce_to_flag_ms"] = self.latency_quantiles(since_ms)
        for name, samples in (("produce_to_flag_ms_by_kind", self.latencies_ms),
                              ("produce_to_alert_ms_by_kind", self.alert_latencies_ms),
                              ("produce_to_alert_published_ms_by_kind", self.published_latencies_ms),
                              ("produce_to_stage_ms", self.stage_latencies_ms)):
            kinds = sorted({k for _, _, k in samples})
            d[name] = {k: self.latency_quantiles(since_ms, k, samples=samples) for k in kinds}
        return d


class _Histogram:
    """One histogram (in ms), per value of its ``label`` (none: one series): the count of
    observations in each bucket, and their sum. A value below 0 (a producer's clock ahead
    of the worker's) counts as 0, so that the sum only grows.

    >>> h = _Histogram("x_ms", "x", "kind", (10, 100))
    >>> for v in (-3, 10, 50, 500):
    ...     h.observe("a", v)
    >>> [(s.name, s.labels.get("le"), s.value) for s in h.family("w").samples]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('x_ms_bucket', '10.0', 2), ('x_ms_bucket', '100.0', 3), ('x_ms_bucket', '+Inf', 4),
     ('x_ms_count', None, 4), ('x_ms_sum', None, 560.0)]
    """

    def __init__(self, name: str, doc: str, label: str | None,
                 bounds: Sequence[float] = LATENCY_BUCKETS_MS) -> None:
        self.name, self.doc, self.label = name, doc, label
        self.bounds = tuple(float(b) for b in bounds)
        self._le = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        #: label value -> [count per bucket (the last: above every bound)..., sum]
        self._series: dict[str, list[float]] = {}

    def series(self, value: str) -> Callable[[float], None]:
        """The observe function of one label value."""
        s = self._series.get(value)
        if s is None:
            s = self._series[value] = [0] * (len(self.bounds) + 2)
        bounds, n = self.bounds, len(self.bounds) + 1

        def observe(ms: float) -> None:
            ms = max(0.0, ms)
            s[bisect.bisect_left(bounds, ms)] += 1
            s[n] += ms
        return observe

    def observe(self, value: str, ms: float) -> None:
        self.series(value)(ms)

    def family(self, worker: str) -> HistogramMetricFamily:
        labels = ["worker"] + ([self.label] if self.label else [])
        fam = HistogramMetricFamily(self.name, self.doc, labels=labels)
        for value, s in sorted(self._series.items()):
            cumulative = itertools.accumulate(s[:-1])
            fam.add_metric([worker] + ([value] if self.label else []),
                           list(zip(self._le, cumulative, strict=False)), s[-1])
        return fam


class _StatsCollector(Collector):
    """The counters and gauges of a :class:`Stats` and of the pipeline's live gauges, read
    at scrape time."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def describe(self) -> list[Metric]:
        return []  # the series vary with the kinds and reasons seen: collected at each scrape

    def collect(self) -> Iterator[Metric]:
        s, w = self.stats, self.stats.worker
        for name, doc in _COUNTERS.items():
            c = CounterMetricFamily(f"pathsentry_{name}", doc, labels=["worker"])
            c.add_metric([w], getattr(s, name))
            yield c
        for name, (attr, label, doc) in _COUNTERS_BY.items():
            c = CounterMetricFamily(f"pathsentry_{name}", doc, labels=["worker", label])
            for value, n in sorted(getattr(s, attr).items()):
                c.add_metric([w, value], n)
            yield c
        g = GaugeMetricFamily("pathsentry_batch_latency_ms",
                              "ms the session stage took to run its last batch", labels=["worker"])
        g.add_metric([w], s.last_batch_ms)
        yield g
        live = s._gauges()
        for key, doc in _GAUGES.items():
            if key in live:
                v = live[key]
                g = GaugeMetricFamily(f"pathsentry_{key}", doc, labels=["worker"])
                g.add_metric([w], float(len(v) if isinstance(v, list | set | dict) else v))
                yield g
        for key, doc in _GAUGE_COUNTERS.items():
            if key in live:
                c = CounterMetricFamily(f"pathsentry_{key}", doc, labels=["worker"])
                c.add_metric([w], float(live[key]))
                yield c
        yield from _feedback_families(w, s.detector_feedback)
        for h in s._histograms:
            yield h.family(w)


#: the online precision gauges: name -> help
_FEEDBACK: dict[str, str] = {
    "flagged_accounts": "accounts named by this worker's alerts, per detector and alert kind",
    "labelled_bad": "of those, accounts whose latest label (made after the alert) is bad",
    "cleared": "of those, accounts an analyst cleared after the alert",
    "precision": "labelled_bad / (labelled_bad + cleared), once an account is judged",
}


def _feedback_families(w: str, tally: Mapping[str, Mapping[str, int]]) -> Iterator[Metric]:
    """Gauges ``pathsentry_feedback_<name>{detector, kind}``: the ``detector_feedback``
    view's figures for this worker's alerts."""
    for name, doc in _FEEDBACK.items():
        g = GaugeMetricFamily(f"pathsentry_feedback_{name}", doc, labels=["worker", "detector", "kind"])
        for key, c in sorted(tally.items()):
            det, _, kind = key.partition("/")
            judged = c["labelled_bad"] + c["cleared"]
            if name != "precision":
                g.add_metric([w, det, kind], float(c[name]))
            elif judged:
                g.add_metric([w, det, kind], round(c["labelled_bad"] / judged, 4))
        yield g


def prometheus_text(stats: Stats) -> bytes:
    """The Prometheus text exposition of ``stats``'s registry."""
    return generate_latest(stats.registry)
