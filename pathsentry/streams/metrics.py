"""The worker's counters: :class:`Stats` (served on ``/stats``) and its Prometheus text
(``/metrics``).

Owns the counters, the latency samples and their quantiles, and the exposition format.
May not read or change anything else of the pipeline: callers pass in the few live
gauges the Prometheus text shows; nothing here imports Kafka, Faust or ClickHouse code.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["STAGE_SAMPLE", "Stats", "prometheus_text"]

#: Stage latencies are recorded for one event in this many (a systematic sample).
STAGE_SAMPLE = 4


@dataclass
class Stats:
    """Counters of one worker, served on ``/stats`` and ``/metrics``."""

    events_in: int = 0
    #: labels and interactions taken by the cross-check
    feedback_in: int = 0
    events_detected: int = 0
    dead_letter: int = 0
    flagged: int = 0
    alerts: int = 0
    group_messages: int = 0
    batches: int = 0
    last_batch_ms: float = 0.0
    group_events: int = 0
    first_ingest_at: float | None = None
    first_event_at: float | None = None
    last_event_at: float | None = None
    last_group_at: float | None = None
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
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

    def mark_stage(self, stage: str, produced_ms: Iterable[int]) -> None:
        """Record, for one event in ``STAGE_SAMPLE``, the time from its produce to now,
        when ``stage`` runs it."""
        ran_ms = time.time() * 1000
        self.stage_latencies_ms.extend(
            (t, ran_ms - t, stage) for t in itertools.islice(produced_ms, 0, None, STAGE_SAMPLE))

    def mark_detected(self, n: int) -> None:
        now = time.time()
        if self.first_event_at is None:
            self.first_event_at = now
        self.last_event_at = now
        self.events_detected += n

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
        d = {k: v for k, v in self.__dict__.items() if not k.endswith("latencies_ms")}
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


_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


def _feedback_lines(w: str, tally: dict[str, dict[str, int]]) -> list[str]:
    """Gauges of the online precision per detector and alert kind (the ``detector_feedback``
    view's figures for this worker's alerts); precision only once an account is judged."""
    lines = []
    for metric in ("flagged_accounts", "labelled_bad", "cleared", "precision"):
        lines.append(f"# TYPE pathsentry_feedback_{metric} gauge")
        for key, c in sorted(tally.items()):
            det, _, kind = key.partition("/")
            value: float = c.get(metric, 0)
            if metric == "precision":
                judged = c["labelled_bad"] + c["cleared"]
                if not judged:
                    continue
                value = round(c["labelled_bad"] / judged, 4)
            lines.append(f'pathsentry_feedback_{metric}{{{w},detector="{det}",kind="{kind}"}} {value}')
    return lines


def prometheus_text(worker_id: str, s: Stats, *, clickhouse_healthy: bool, outbox_rows: int) -> str:
    """Prometheus exposition of the worker's counters, and of two live gauges: whether
    ClickHouse answers, and the rows waiting in the outbox."""
    w = f'worker="{worker_id}"'
    lines = [
        "# TYPE pathsentry_events_in_total counter",
        f"pathsentry_events_in_total{{{w}}} {s.events_in}",
        "# TYPE pathsentry_events_detected_total counter",
        f"pathsentry_events_detected_total{{{w}}} {s.events_detected}",
        "# TYPE pathsentry_feedback_in_total counter",
        f"pathsentry_feedback_in_total{{{w}}} {s.feedback_in}",
        "# TYPE pathsentry_dead_letter_total counter",
        f"pathsentry_dead_letter_total{{{w}}} {s.dead_letter}",
        "# TYPE pathsentry_flagged_total counter",
        f"pathsentry_flagged_total{{{w}}} {s.flagged}",
        "# TYPE pathsentry_alerts_total counter",
        f"pathsentry_alerts_total{{{w}}} {s.alerts}",
        "# TYPE pathsentry_batch_latency_ms gauge",
        f"pathsentry_batch_latency_ms{{{w}}} {s.last_batch_ms}",
        "# TYPE pathsentry_clickhouse_healthy gauge",
        f"pathsentry_clickhouse_healthy{{{w}}} {int(clickhouse_healthy)}",
        "# TYPE pathsentry_outbox_rows gauge",
        f"pathsentry_outbox_rows{{{w}}} {outbox_rows}",
        "# TYPE pathsentry_produce_to_flag_ms histogram",
    ]
    lines += _feedback_lines(w, s.detector_feedback)
    lat = sorted(v for _, v, _ in s.latencies_ms)
    for b in _BUCKETS_MS:
        lines.append(f'pathsentry_produce_to_flag_ms_bucket{{{w},le="{b}"}} {bisect.bisect_right(lat, b)}')
    lines.append(f'pathsentry_produce_to_flag_ms_bucket{{{w},le="+Inf"}} {len(lat)}')
    lines.append(f"pathsentry_produce_to_flag_ms_count{{{w}}} {len(lat)}")
    lines.append(f"pathsentry_produce_to_flag_ms_sum{{{w}}} {round(sum(lat), 1)}")
    return "\n".join(lines) + "\n"
