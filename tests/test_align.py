"""Event-time alignment of the producers' partitions in the ingest loop."""

from __future__ import annotations

from collections import namedtuple

from pathsentry.streams.align import PartitionAligner

R = namedtuple("R", "timestamp offset")
PARTS = {"logins-0", "telemetry-0"}


def _times(records: list[R]) -> list[int]:
    return [r.timestamp for r in records]


def test_an_empty_partition_with_a_backlog_holds_the_others_for_the_lag_wait() -> None:
    a = PartitionAligner(max_wait_s=0.1, lag_wait_s=2.0)
    a.track(PARTS, now=0.0)
    a.add("telemetry-0", [R(10, 0), R(20, 1)], now=0.0)
    # logins-0 has records in Kafka that the fetcher has not delivered yet
    assert a.release(PARTS, caught_up=set(), now=1.0, lagging={"logins-0"}) == []
    a.add("logins-0", [R(5, 0), R(15, 1)], now=1.5)
    assert _times(a.release(PARTS, caught_up=set(), now=1.5, lagging=set())) == [5, 10, 15]


def test_an_empty_partition_of_unknown_state_holds_them_only_for_the_short_wait() -> None:
    a = PartitionAligner(max_wait_s=0.1, lag_wait_s=2.0)
    a.track(PARTS, now=0.0)
    a.add("telemetry-0", [R(10, 0)], now=0.0)
    assert a.release(PARTS, caught_up=set(), now=0.05) == []
    assert _times(a.release(PARTS, caught_up=set(), now=0.2)) == [10]
    # a lagging partition is waited for at most the lag wait, then the others go on
    a.add("telemetry-0", [R(30, 1)], now=0.2)
    assert a.release(PARTS, caught_up=set(), now=1.0, lagging={"logins-0"}) == []
    assert _times(a.release(PARTS, caught_up=set(), now=2.5, lagging={"logins-0"})) == [30]


def test_restarted_clocks_do_not_count_a_pause_as_silence() -> None:
    a = PartitionAligner(max_wait_s=0.1, lag_wait_s=2.0)
    a.track(PARTS, now=0.0)
    a.add("telemetry-0", [R(10, 0)], now=0.0)
    # the loop stopped fetching for 5 s (back-pressure): logins-0 was not silent
    a.restart_clocks(now=5.0)
    assert a.release(PARTS, caught_up=set(), now=5.05) == []
    assert a.release(PARTS, caught_up=set(), now=6.0, lagging={"logins-0"}) == []
    a.add("logins-0", [R(8, 0)], now=6.1)
    assert _times(a.release(PARTS, caught_up=set(), now=6.1)) == [8]
