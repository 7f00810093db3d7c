"""The worker's counters and their Prometheus exposition, through :class:`Stats` (the
object a worker's pipeline reports to, and ``/metrics`` serves): counters never decrease,
histograms are cumulative, and the SOC's counts are distinct flagged events and alerts."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from pathsentry.schemas import Alert, FlaggedEvent
from pathsentry.streams.metrics import LATENCY_BUCKETS_MS, Stats, prometheus_text
from tests.prometheus import check_histograms, check_not_decreasing, parse

TS = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def _flag(i: int, kind: str = "vpn_relay") -> FlaggedEvent:
    return FlaggedEvent(event_id=f"e{i}", ts=TS, kind=kind, src_ip="198.51.100.23", score=0.9,
                        reasons=["gap"], evidence={"gap_ms": 90.0}, detector="latency")


def _alert(i: int, version: int = 1, kind: str = "vpn_relay") -> Alert:
    return Alert(alert_id=f"a{i}", ts=TS, kind=kind, severity="critical", score=0.9,
                 subject={"account": f"acct{i}"}, evidence={"gap_ms": 90.0}, detector="latency",
                 first_seen=TS, last_seen=TS, version=version)


def _batch(stats: Stats, flags: list[FlaggedEvent], alerts: list[Alert], now_ms: float,
           lag_ms: float) -> None:
    produced = {f.event_id: int(now_ms - lag_ms) for f in flags}
    stats.ingested(len(flags))
    stats.mark_stage("session", produced.values())
    stats.stored(flags, alerts, produced, [(a.kind, int(now_ms - lag_ms)) for a in alerts], now_ms,
                 "session", len(flags))


def _scrape(stats: Stats) -> dict[Any, float]:
    return parse(prometheus_text(stats).decode())


def test_counters_grow_and_histograms_are_cumulative_across_traffic() -> None:
    s = Stats(worker="w1")
    live = {"clickhouse_healthy": True, "outbox_rows": 40, "group_partitions": [0, 3], "handoff_hits": 7}
    s.watch(lambda: live)
    now = time.time() * 1000  # a timestamp, not a timing: mark_stage measures from the clock
    # latencies across the buckets, more than the old 500-sample window would keep
    lags = [1.0 * 2 ** (i % 17) for i in range(900)]
    for i, lag in enumerate(lags):
        _batch(s, [_flag(i)], [_alert(i)] if i % 3 == 0 else [], now, lag)
    s.dead_lettered("invalid_json")
    s.batch_ran(12.5)
    first = _scrape(s)
    assert check_histograms(first) >= 3
    flag_count = first[("histogram", "pathsentry_produce_to_flag_ms_count",
                        (("kind", "vpn_relay"), ("worker", "w1")))]
    assert flag_count == 900
    le_100 = first[("histogram", "pathsentry_produce_to_flag_ms_bucket",
                    (("kind", "vpn_relay"), ("le", "100.0"), ("worker", "w1")))]
    assert le_100 == sum(1 for lag in lags if lag <= 100)
    assert first[("gauge", "pathsentry_outbox_rows", (("worker", "w1"),))] == 40
    assert first[("gauge", "pathsentry_group_partitions", (("worker", "w1"),))] == 2

    # more traffic, with repeats (a batch re-read and stored again, an alert growing) and
    # gauges that fall: counters must not
    for i in range(900, 1000):
        _batch(s, [_flag(i, "route_anomaly")], [_alert(i, kind="route_anomaly")], now, 30.0)
    _batch(s, [_flag(5), _flag(6)], [_alert(3), _alert(6, version=2)], now, 8.0)
    s.dead_lettered("invalid_json")
    s.dead_lettered("schema")
    live.update(outbox_rows=0, handoff_hits=9)
    second = _scrape(s)
    assert check_not_decreasing(first, second) > 50
    check_histograms(second)
    assert second[("gauge", "pathsentry_outbox_rows", (("worker", "w1"),))] == 0
    assert second[("counter", "pathsentry_dead_letter_total",
                   (("reason", "invalid_json"), ("worker", "w1")))] == 2


def test_soc_counts_are_distinct_and_versions_are_named_as_such() -> None:
    s = Stats(worker="w")
    _batch(s, [_flag(1), _flag(2), _flag(2, "route_anomaly")], [_alert(1)], 1e12, 5)
    # the same batch re-read after a restart, and the alert growing twice
    _batch(s, [_flag(1), _flag(2)], [_alert(1)], 1e12, 5)
    _batch(s, [], [_alert(1, version=2), _alert(1, version=3)], 1e12, 5)
    d = s.as_dict(latency=False)
    assert (d["flagged"], d["flag_rows"]) == (3, 5)
    assert (d["alerts"], d["alert_versions"]) == (1, 4)
    assert d["flagged_by_kind"] == {"vpn_relay": 2, "route_anomaly": 1}
    m = _scrape(s)
    assert m[("counter", "pathsentry_alerts_total", (("kind", "vpn_relay"), ("worker", "w")))] == 1
    assert m[("counter", "pathsentry_alert_versions_total", (("worker", "w"),))] == 4
    assert m[("counter", "pathsentry_flag_rows_total", (("worker", "w"),))] == 5


def test_the_checks_catch_a_decreasing_counter_and_a_broken_histogram() -> None:
    """The sliding-window histogram the worker used to serve: rebuilt from the last samples,
    its buckets and count fall once old samples leave the window."""
    def text(count: int, le10: int) -> str:
        return ("# TYPE x_ms histogram\n"
                f'x_ms_bucket{{le="10"}} {le10}\nx_ms_bucket{{le="+Inf"}} {count}\n'
                f"x_ms_count {count}\nx_ms_sum 1.0\n"
                "# TYPE y_total counter\ny_total 3\n")
    with pytest.raises(AssertionError, match="went down"):
        check_not_decreasing(parse(text(500, 400)), parse(text(500, 380)))
    with pytest.raises(AssertionError, match="not cumulative"):
        check_histograms(parse(text(5, 9)))
    assert check_not_decreasing(parse(text(500, 400)), parse(text(600, 450))) == 5


def test_latency_buckets_span_milliseconds_to_minutes() -> None:
    assert LATENCY_BUCKETS_MS[0] <= 5 and LATENCY_BUCKETS_MS[-1] >= 60_000
    assert list(LATENCY_BUCKETS_MS) == sorted(set(LATENCY_BUCKETS_MS))
