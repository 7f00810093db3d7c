"""The relay detector's saved state, as it must look to be loaded.

Typed models of what :meth:`~.detector.LatencyDetector.state`, its sessions shares and
:meth:`~.detector.LatencyDetector.learned_state` write (the shared rules are in
:mod:`pathsentry.detectors.saved`): baselines (a count and three P² sketches whose
quantiles must come out finite RTTs), the servers' learned overheads (votes in ms, the
standardised residuals within their clip), exit-prefix histories (rows of seven typed
fields), sessions (the login as the contract parses it, its time and RTT figures in
range, probes of a known method, at most :data:`~.state.MAX_VANTAGES`), account
histories (scores in [0, 1]) and the anomaly model (features from its closed set).

What the checks here cannot see is handled where the state is applied: an
allow-list mark is taken from the loading worker's configuration, never from the
state (:class:`~pathsentry.detectors.saved.AllowList`), and a session that says it was
flagged must have a login.

>>> check_latency_share({"version": 1, "sessions": [{"id": "s1", "login": None,
...     "score": 0.2, "flagged": True, "probes": []}]})
Traceback (most recent call last):
...
pathsentry.detectors.saved.StateInvalid: latency sessions: session 's1' is flagged without a login
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, NotRequired

from pydantic import Field

from pathsentry.detectors.latency.baselines import Baseline
from pathsentry.detectors.latency.prefixes import PREFIX_ROW
from pathsentry.detectors.latency.state import MAX_VANTAGES
from pathsentry.detectors.route_saved import RouteNote
from pathsentry.detectors.saved import (
    MAX_MS,
    Count,
    GeoSnap,
    Ms,
    Name,
    Record,
    Saved,
    Score,
    StateInvalid,
    check,
    check_alert_rows,
    check_ts,
)
from pathsentry.schemas import Login, parse_event

__all__ = ["check_latency_learned", "check_latency_share", "check_latency_state",
           "restored_baseline"]

#: A vote: a signed figure in ms (a cost or residual may be below zero) or a clipped
#: standardised residual.
Vote = Annotated[float, Field(ge=-MAX_MS, le=MAX_MS, allow_inf_nan=False)]
Votes = list[tuple[Name, Vote]]
#: a standardised gap residual, clipped to [-3, 3]
Residual = Annotated[float, Field(ge=-3.0, le=3.0, allow_inf_nan=False)]


class _Baseline(Saved):
    n: Count
    q: Annotated[list[Annotated[str, Field(max_length=4096)]], Field(min_length=3, max_length=3)]


class _Overhead(Saved):
    n: Count
    tick: Votes
    cost: Votes
    #: each cost vote's phase share ``1 - 0.5 ** (1 / k)`` (absent: saved corrected)
    phase: list[tuple[Name, Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]]] = \
        Field(default_factory=list)
    u: list[tuple[Name, Residual]] = Field(default_factory=list)
    #: the wired logins' gaps a cold server's cost bound reads (absent in an older format)
    wired: Votes = Field(default_factory=list)
    #: (samples, spread ms) of the app probes it answered while cold (absent: none)
    probed: list[tuple[Annotated[int, Field(ge=2, le=10**6)], Ms]] = Field(default_factory=list)
    #: the exit prefixes whose latest gap came over a radio link (absent: none)
    radio: list[Name] = Field(default_factory=list)


class _OverheadBook(Saved):
    overheads: dict[Name, _Overhead] = Field(default_factory=dict)
    #: an older format's residuals (not read: :meth:`~.baselines.OverheadBook.load`)
    noise: dict[Name, Votes] = Field(default_factory=dict)
    #: per access kind, each exit prefix's gap and the server it was measured on
    noise_gaps: dict[Name, list[tuple[Name, Name, Vote]]] = Field(default_factory=dict)
    jitter: dict[Name, Votes] = Field(default_factory=dict)


class _Probe(Record):
    vantage: Name
    method: Literal["icmp", "tcp", "app"]
    min_ms: Ms
    samples: Annotated[int, Field(ge=1, le=10**9)]


class _Notes(Record, total=False):
    route: RouteNote | None


class _Login(Record):
    event: dict[str, Any]
    #: (absent in an older format, which saved the whole login event)
    app_rtt_p10_ms: NotRequired[Ms | None]
    app_rtt_samples: NotRequired[Annotated[int, Field(ge=1, le=10**6)] | None]
    overhead_key: NotRequired[Name | None]
    geo: GeoSnap
    prefix: Name
    #: never used: the mark is derived again from the configuration
    allowed: NotRequired[dict[str, Any] | None]
    notes: NotRequired[_Notes]


class _Session(Record):
    id: Name
    login: _Login | None
    score: Score
    flagged: bool
    probes: Annotated[list[_Probe], Field(max_length=MAX_VANTAGES)]


class _Account(Record):
    recent: list[tuple[Name, Score]]
    flagged: Count


class _Model(Saved):
    features: list[Literal["gap_ratio", "gap", "baseline_z", "physics_excess", "vantage_violation"]]
    counter: Count
    first_window: bool
    mass: list[list[tuple[Annotated[float, Field(ge=0, allow_inf_nan=False)],
                          Annotated[float, Field(ge=0, allow_inf_nan=False)]]]]


class _Learned(Saved):
    version: Literal[1]
    baselines: list[tuple[Name, _Baseline]] = Field(default_factory=list)
    overhead: _OverheadBook = _OverheadBook()
    prefix_gaps: list[tuple[Name, list[Any]]] = Field(default_factory=list)
    accounts: list[tuple[Name, _Account]] = Field(default_factory=list)
    model: dict[str, Any] = Field(default_factory=dict)


class _Share(Saved):
    version: Literal[1]
    sessions: list[_Session] = Field(default_factory=list)


class _State(_Learned):
    sessions: list[_Session] = Field(default_factory=list)
    alerts: list[Any] = Field(default_factory=list)


def _check_prefix_rows(key: str, rows: list[Any]) -> None:
    """An exit prefix's history: rows of (session, overhead key, gap ms or None, samples,
    access kind, account, proven 0/1)."""
    if len(rows) % PREFIX_ROW:
        raise StateInvalid(f"latency prefix {key[:80]!r}: not rows of {PREFIX_ROW}")
    for i in range(0, len(rows), PREFIX_ROW):
        sid, oh, gap, k, kind, account, proven = rows[i:i + PREFIX_ROW]
        if not (isinstance(sid, str) and isinstance(oh, str) and isinstance(kind, str)
                and isinstance(account, str) and proven in (0, 1) and not isinstance(proven, float)
                and isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= 10**6
                and (gap is None or (isinstance(gap, int | float) and not isinstance(gap, bool)
                                     and math.isfinite(gap) and abs(gap) <= MAX_MS))):
            raise StateInvalid(f"latency prefix {key[:80]!r}: row {i // PREFIX_ROW} is not "
                               "(session, server, gap ms, samples, access kind, account, proven)")


def _check_sessions(sessions: list[_Session], where: str) -> dict[str, Login]:
    """Each session's login, parsed by the contract (by session id): its time no later than
    a day past the wall clock, its RTTs in range, filed under its own session."""
    logins: dict[str, Login] = {}
    for s in sessions:
        sid, login = s["id"], s["login"]
        if login is None:
            if s["flagged"]:
                raise StateInvalid(f"{where}: session {sid[:80]!r} is flagged without a login")
            continue
        try:
            event = parse_event(login["event"])
        except ValueError as e:
            raise StateInvalid(f"{where}: session {sid[:80]!r}: login {str(e)[:200]}") from None
        if not isinstance(event, Login):
            raise StateInvalid(f"{where}: session {sid[:80]!r}: its login is a {event.kind}")
        check_ts(event.ts.timestamp(), f"{where}: session {sid[:80]!r}: login ts")
        own = event.session_id if event.session_id is not None else f"event:{event.event_id}"
        if own != sid:
            raise StateInvalid(f"{where}: session {sid[:80]!r} holds the login of {own[:80]!r}")
        if max(event.app_rtt_ms) > MAX_MS or (event.tcp_rtt_ms or 0.0) > MAX_MS:
            raise StateInvalid(f"{where}: session {sid[:80]!r}: an RTT past {MAX_MS:.0f} ms")
        logins[sid] = event
    return logins


def _check_learned(doc: _Learned, where: str) -> None:
    for key, rows in doc.prefix_gaps:
        _check_prefix_rows(key, rows)
    if doc.model:  # (empty: a detector that never learned)
        check(_Model, doc.model, f"{where}: model")


def check_latency_share(state: Any) -> dict[str, Login]:
    """Refuse a sessions share not as saved; its sessions' logins, parsed."""
    return _check_sessions(check(_Share, state, "latency sessions").sessions, "latency sessions")


def check_latency_learned(state: Any) -> None:
    """Refuse learned state (baselines, overheads, prefix and account histories, model)
    not as saved."""
    _check_learned(check(_Learned, state, "latency learned state"), "latency learned state")


def check_latency_state(state: Any, detector: str) -> dict[str, Login]:
    """Refuse a whole relay-detector state not as saved (alert ids included); its
    sessions' logins, parsed."""
    doc = check(_State, state, "latency state")
    _check_learned(doc, "latency state")
    check_alert_rows(state.get("alerts", []), detector, "vpn_relay", "latency alerts")
    return _check_sessions(doc.sessions, "latency sessions")


def restored_baseline(snap: dict[str, Any], key: str) -> Baseline:
    """A saved (and checked) baseline restored, refused if its sketches give no RTT (not
    finite, out of range)."""
    b = Baseline.restore(snap, key)
    if not all(math.isfinite(q) and -MAX_MS <= q <= MAX_MS for q in b.quantiles()):
        raise StateInvalid(f"latency baseline {key[:80]!r}: its quantiles are not RTTs")
    return b
