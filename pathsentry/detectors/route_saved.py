"""The route detector's saved state, as it must look to be loaded.

Typed models of what :meth:`~pathsentry.detectors.route.RouteDetector.state` and its
sessions share write (see :mod:`pathsentry.detectors.saved` for the shared rules): a
session's route note (also what the relay detector keeps of a session's route), the
flag it emitted, the login fields it joined, and the alert records (ids derived again).

>>> share = {"version": 1, "sessions": [["s1", {"account": "a", "route": None,
...     "flag": None, "extra": {"login_ts": 1e12}}]]}
>>> try:
...     check_route_share(share)
... except StateInvalid as e:
...     print(str(e).split(": ", 2)[1], "|", str(e).rsplit(", ", 1)[1])
sessions.0.1.extra.login_ts | 1000000000000.0 is past the wall clock
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import Field

from pathsentry.detectors.saved import (
    MAX_NAME,
    IsoTs,
    Name,
    Record,
    Saved,
    Score,
    StateInvalid,
    Ts,
    check,
    check_alert_rows,
)

__all__ = ["RouteNote", "check_route_share", "check_route_state"]

#: Longest country or ASN path a route note may hold (a traceroute has at most 255 hops).
MAX_PATH = 256

Country = Name
Asn = Annotated[int, Field(ge=0, le=2**32 - 1)]


class RouteNote(Record):
    """``Enriched.notes["route"]`` as the route detector writes it."""

    signature: Annotated[str, Field(max_length=128)]
    country_path: Annotated[list[Country], Field(max_length=MAX_PATH)]
    asn_path: Annotated[list[Asn], Field(max_length=MAX_PATH)]
    foreign_origin: bool
    gated_hops: Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(max_length=MAX_PATH)]
    last_foreign_prefix: Name | None
    gate: Literal["vantage", "destination", "none"]
    suppressed: NotRequired[Name | None]


class _Flag(Record):
    """A route flag as emitted (re-emitted once the login names the account)."""

    event_id: Name
    ts: IsoTs
    account: Name | None
    session_id: Name | None
    src_ip: Name
    country: Country | None
    asn: Asn | None
    score: Score
    reasons: Annotated[list[Annotated[str, Field(max_length=4 * MAX_NAME)]], Field(max_length=MAX_PATH)]
    prefix: Name
    evidence: dict[str, Any]


class _Extra(Record, total=False):
    """What the session's login told the route detector."""

    server_id: Name | None
    login_event_id: Name | None
    login_ts: Ts | None


class _Session(Record):
    account: Name | None
    route: RouteNote | None
    flag: _Flag | None
    extra: NotRequired[_Extra]


class _Share(Saved):
    version: Literal[1]
    sessions: list[tuple[Name, _Session]]


class _State(_Share):
    alerts: list[Any]


def check_route_share(state: Any) -> None:
    """Refuse a sessions share (``{"version": 1, "sessions": [...]}``) not as saved, or
    holding a flag the detector could not have raised (one needs the session's own
    foreign-origin route)."""
    for key, sess in check(_Share, state, "route sessions").sessions:
        flag, route = sess["flag"], sess["route"]
        if flag is None:
            continue
        if route is None or not route["foreign_origin"] or flag["session_id"] != key \
                or flag["evidence"].get("signature") != route["signature"]:
            raise StateInvalid(f"route sessions: session {key[:80]!r} holds a flag its route "
                               "does not raise")


def check_route_state(state: Any, detector: str) -> None:
    """Refuse a whole route state not as saved (alert ids included)."""
    check(_State, state, "route state")
    check_route_share({"version": 1, "sessions": state["sessions"]})
    check_alert_rows(state["alerts"], detector, "route_anomaly", "route alerts")

