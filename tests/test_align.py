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


def test_a_partition_fetched_to_its_log_end_holds_nothing_back_though_still_buffered() -> None:
    def fetched() -> PartitionAligner:
        a = PartitionAligner(max_wait_s=0.1, lag_wait_s=2.0)
        a.track(PARTS, now=0.0)
        a.add("logins-0", [R(10, 0)], now=0.0)
        a.add("telemetry-0", [R(5, 0), R(20, 1)], now=0.0)
        return a

    # logins-0 has more in Kafka: telemetry's record at 20 waits for what it may still deliver
    a = fetched()
    caught_up, lagging = a.progress({"logins-0": 3, "telemetry-0": 0}, batch=100)
    assert (caught_up, lagging) == ({"telemetry-0"}, set())
    assert _times(a.release(PARTS, caught_up, now=0.0, lagging=lagging)) == [5, 10]
    # everything of logins-0 is fetched: whatever it delivers next was produced later
    a = fetched()
    caught_up, lagging = a.progress({"logins-0": 0, "telemetry-0": 0}, batch=100)
    assert caught_up == PARTS and not lagging
    assert _times(a.release(PARTS, caught_up, now=0.0, lagging=lagging)) == [5, 10, 20]


def test_only_an_empty_partition_behind_by_a_batch_or_never_fetched_is_lagging() -> None:
    a = PartitionAligner()
    a.add("logins-0", [R(1, 0)], now=0.0)
    behind = {"logins-0": 500, "logins-1": 500, "logins-2": 99, "logins-3": None}
    assert a.progress(behind, batch=100) == (set(), {"logins-1", "logins-3"})


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
