"""The farm detector's saved state, as it must look to be loaded.

A typed model (rules of :mod:`pathsentry.detectors.saved`) of what
:func:`~.state.snapshot` writes: the stage clock and start, and per partition its
times, arrival rates, background RTTs, members and groups. Every time is no later than
a day past the wall clock (a clock at 1e12 would close every window at once), RTTs and
gaps are finite and bounded, scores in [0, 1], counts non-negative.

>>> from pathsentry.detectors.saved import StateInvalid
>>> try:
...     check_farm_state({"now": 1e12, "partitions": []})
... except StateInvalid as e:
...     print(str(e).rsplit(", ", 1)[1])
1000000000000.0 is past the wall clock
"""

from __future__ import annotations

from typing import Annotated, Any, NotRequired

from pydantic import Field

from pathsentry.detectors.saved import MAX_MS, Count, Ms, Name, Record, Saved, Score, Ts, check

__all__ = ["check_farm_state", "check_room_state"]

#: a signed figure in ms (a gap or an excess may be below zero)
SignedMs = Annotated[float, Field(ge=-MAX_MS, le=MAX_MS, allow_inf_nan=False)]
Rate = Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)]
Names = Annotated[list[Name], Field(max_length=4096)]


class _Member(Record):
    sid: Name
    account: Name
    ts: Ts
    event_id: Name | None
    trace_event_id: Name | None
    src_ip: Name
    prefix: Name
    country: NotRequired[Name | None]
    asn: NotRequired[Annotated[int, Field(ge=0, le=2**32 - 1)] | None]
    sig: NotRequired[Name | None]
    country_path: NotRequired[Names]
    route_known: NotRequired[bool]
    relay: NotRequired[bool]
    relay_score: NotRequired[Score]
    relay_gap_ms: NotRequired[SignedMs | None]
    relay_excess_ms: NotRequired[SignedMs | None]
    rtt: NotRequired[Ms | None]
    server: NotRequired[Name | None]
    device: NotRequired[Name | None]
    cluster: NotRequired[Name]
    group: NotRequired[Name | None]
    #: recomputed from the account name on load
    skel: NotRequired[Name | None]
    serial_no: NotRequired[int | None]
    indexed: NotRequired[Names]
    flag_ts: NotRequired[Ts | None]
    exit: NotRequired[Name]
    tcp: NotRequired[Ms | None]
    jitter: NotRequired[Ms | None]
    on_shared: NotRequired[bool]
    access: NotRequired[Name | None]
    in_background: NotRequired[bool]
    arrived: NotRequired[bool]
    switched: NotRequired[bool]
    switch_gap: NotRequired[Rate | None]
    kept: NotRequired[bool]


class _Group(Saved):
    gid: Name
    pattern: Name
    patterns: Names
    anchor: Ts
    first_seen: Ts
    last_seen: Ts
    version: Count
    score: Score
    members: list[_Member]


class _Partition(Saved):
    key: Name
    last_ts: Ts
    first_ts: Ts
    rate_count: Rate
    rate_fast: Rate | None = None
    rate_ts: Ts
    bg_rtts: Annotated[list[Ms], Field(max_length=100_000)] = Field(default_factory=list)
    bg_seen: Rate = 0.0
    bg_shared: Rate = 0.0
    members: list[_Member]
    past: list[_Member] = Field(default_factory=list)
    groups: list[_Group]


class _State(Saved):
    now: Ts = 0.0
    started: Ts | None = None
    partitions: list[_Partition] = Field(default_factory=list)


def check_farm_state(state: Any) -> None:
    """Refuse a farm state not as saved."""
    check(_State, state, "farm state")


class _Part(Record):
    alert_id: Name
    partition: Name
    pattern: Name
    template: Name | None
    accounts: Names
    event_ids: Names
    first_seen: Ts
    last_seen: Ts
    score: Score
    version: Count
    median_rtt_ms: Ms | None
    rtt_range_ms: Annotated[list[Ms], Field(min_length=2, max_length=2)] | None
    route: Name | None
    room: Name | None


class _Room(Record):
    anchor: Name
    parts: Names
    version: Count
    absorbed: Names
    emitted: Names
    emitted_parts: Count


class _RoomState(Saved):
    now: Ts = 0.0
    parts: Annotated[list[_Part], Field(max_length=1_000_000)] = Field(default_factory=list)
    rooms: Annotated[list[_Room], Field(max_length=1_000_000)] = Field(default_factory=list)


def check_room_state(state: Any) -> None:
    """Refuse a room merger's state not as saved (:mod:`.rooms`)."""
    check(_RoomState, state, "farm room state")
