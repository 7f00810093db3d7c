"""What a worker does with its session partitions' sessions once a rebalance settles."""

from __future__ import annotations

from pathsentry.streams.persistence import session_handover


def test_first_assignment_loads_every_partition() -> None:
    assert session_handover([0, 1, 2, 3], held=set(), revoked=set()) == (set(), set(), [0, 1, 2, 3])


def test_partitions_given_straight_back_keep_their_own_sessions() -> None:
    # all four were revoked (eager rebalance); two come back, one is new, two went to others
    assert session_handover([1, 2, 5], held=set(), revoked={0, 1, 2, 3}) == ({1, 2}, {0, 3}, [5])


def test_a_worker_given_nothing_forgets_every_revoked_partition() -> None:
    assert session_handover([], held=set(), revoked={0, 1}) == (set(), {0, 1}, [])


def test_partitions_already_held_are_neither_loaded_nor_dropped() -> None:
    assert session_handover([0, 1], held={0, 1}, revoked=set()) == (set(), set(), [])
