"""What every detector checks in the state it is asked to load: the shared vocabulary.

A saved state that reached a detector has already passed the state topic's checks
(:mod:`pathsentry.streams.state`: its shape as a save, its size, its signature), but a
well-formed save can still be hostile inside a detector's own part: a session marked
allow-listed, a clock at 1e12, a negative count, an alert id that is another alert's.
Each detector therefore validates its part with typed models (its own module:
``latency/saved.py``, ``route_saved.py``, ``takeover_saved.py``, ``injection_saved.py``,
``farm/saved.py``) built from the types here, **before it changes anything**, and raises
:class:`StateInvalid` (the reason in its message) for a part it refuses. The worker
counts and logs the refusal like any other refused save and starts the partition empty.

The rules every detector shares:

- a time (epoch seconds, or an ISO 8601 text) lies between 0 and
  :data:`FUTURE_SLACK_S` past the loading worker's wall clock (:func:`clock_limit`):
  an event clock a day ahead of the wall clock is a producer's skew, a year ahead is
  someone's attempt to end every window;
- RTTs and distances are finite and between 0 and :data:`MAX_MS` / :data:`MAX_KM`,
  counts between 0 and :data:`MAX_COUNT`, scores between 0 and 1, names at most
  :data:`MAX_NAME` characters;
- enum-like fields come from their closed sets;
- nothing that grants trust is taken from the state: an allow-list mark is derived
  again from the loading worker's ``[[allow]]`` configuration (:class:`AllowList`), an
  alert id again from its detector, kind and subject (:func:`check_alert_rows`).

>>> check(AlertRow, {"key": "k", "alert_id": "x", "first_seen": "2026-01-01T00:00:00+00:00",
...                  "version": -1, "score": 0.5, "event_ids": [], "accounts": []}, "alerts")
Traceback (most recent call last):
...
pathsentry.detectors.saved.StateInvalid: alerts: version: Input should be greater than or equal to 0
>>> check_ts(1e12, "clock")
Traceback (most recent call last):
...
pathsentry.detectors.saved.StateInvalid: clock: 1000000000000.0 is past the wall clock
"""

from __future__ import annotations

import ipaddress
import time
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from pathsentry.config import AllowEntry, Config
from pathsentry.detectors.bounded import MAX_ALERT_EVENTS
from pathsentry.schemas import make_alert_id

__all__ = [
    "FUTURE_SLACK_S",
    "MAX_COUNT",
    "MAX_KM",
    "MAX_MS",
    "MAX_NAME",
    "AlertRow",
    "AllowList",
    "Count",
    "GeoSnap",
    "IsoTs",
    "Km",
    "Ms",
    "Name",
    "Record",
    "Saved",
    "Score",
    "StateInvalid",
    "Ts",
    "check",
    "check_alert_rows",
    "check_ts",
    "clock_limit",
]

#: How far past the loading worker's wall clock a saved time may lie (event producers'
#: clocks drift; a day is far more than any of them should).
FUTURE_SLACK_S = 86_400.0
#: Largest RTT (or RTT-derived figure) a state may hold, in ms: ten minutes.
MAX_MS = 600_000.0
#: Largest distance, in km (more than twice round the Earth).
MAX_KM = 100_000.0
#: Largest count (logins, samples, versions).
MAX_COUNT = 10**12
#: Longest name (account, session id, key) a state may hold.
MAX_NAME = 1024


class StateInvalid(ValueError):
    """A detector's saved part that it refuses; the message says where and why."""


def clock_limit() -> float:
    """The latest time a state loaded now may carry (epoch seconds)."""
    return time.time() + FUTURE_SLACK_S


def _not_future(v: float) -> float:
    if v > clock_limit():
        raise ValueError(f"{v} is past the wall clock")
    return v


def _iso_not_future(v: str) -> str:
    try:
        ts = datetime.fromisoformat(v)
    except ValueError:
        raise ValueError("not an ISO 8601 time") from None
    if ts.tzinfo is None:
        raise ValueError("an ISO 8601 time without a zone")
    _not_future(ts.timestamp())
    return v


#: An epoch time (s), from 0 to a day past the wall clock.
Ts = Annotated[float, Field(ge=0, allow_inf_nan=False), AfterValidator(_not_future)]
#: An ISO 8601 time with its zone, likewise.
IsoTs = Annotated[str, Field(max_length=64), AfterValidator(_iso_not_future)]
Ms = Annotated[float, Field(ge=0, le=MAX_MS, allow_inf_nan=False)]
Km = Annotated[float, Field(ge=0, le=MAX_KM, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
#: Scores are in [0, 1] (a little over 1 for float rounding).
Score = Annotated[float, Field(ge=0, le=1.000001, allow_inf_nan=False)]
Name = Annotated[str, Field(max_length=MAX_NAME)]


class Saved(BaseModel):
    """Base of the saved-state models of which a state holds few: no unknown field."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Record(TypedDict):
    """Base of the saved-state rows of which a state holds many (sessions, members,
    alerts): no unknown field, validated into plain dicts (several times cheaper than
    model instances, which matters at hundreds of thousands of sessions)."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]


T = TypeVar("T")


#: one validator per saved-state type (built once: building one costs milliseconds)
_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def check(tp: type[T], doc: Any, where: str) -> T:
    """``doc`` validated as ``tp`` (a model or a :class:`Record`); :class:`StateInvalid`
    naming the first problem."""
    try:
        adapter = _ADAPTERS.get(tp)
        if adapter is None:
            adapter = _ADAPTERS[tp] = TypeAdapter(tp)
        out: T = adapter.validate_python(doc)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise StateInvalid(f"{where}: {loc + ': ' if loc else ''}{err['msg']}") from None
    return out


def check_ts(v: Any, where: str) -> float:
    """A saved epoch time as a float; :class:`StateInvalid` unless it is a finite
    number from 0 to a day past the wall clock."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0 or v != v:
        raise StateInvalid(f"{where}: {v!r} is not a time")
    if v > clock_limit():
        raise StateInvalid(f"{where}: {float(v)} is past the wall clock")
    return float(v)


class GeoSnap(Record, total=False):
    """A saved :class:`~pathsentry.enrich.geo.GeoInfo`."""

    country: Name | None
    asn: Annotated[int, Field(ge=0, le=2**32 - 1)] | None
    as_name: Name | None
    lat: Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)] | None
    lon: Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)] | None
    kind: Name | None
    network: Name | None
    source: Name
    precision: Literal["city", "country", "none"]


class AlertRow(Record):
    """One record of an :class:`~pathsentry.detectors.bounded.AlertBook`."""

    key: Name
    alert_id: Annotated[str, Field(max_length=64)]
    first_seen: IsoTs
    version: Count
    score: Score
    event_ids: Annotated[list[Name], Field(max_length=MAX_ALERT_EVENTS)]
    accounts: Annotated[list[Name], Field(max_length=MAX_ALERT_EVENTS)]


def check_alert_rows(rows: Any, detector: str, kind: str, where: str) -> None:
    """Refuse alert records that are not typed as saved or whose id is not the one the
    detector gives their subject (a forged id would re-version another alert)."""
    for row in check(list[AlertRow], rows, where):
        if row["alert_id"] != make_alert_id(detector, kind, row["key"]):
            raise StateInvalid(f"{where}: alert {row['key'][:80]!r} carries an id its detector "
                               "does not give it")


class AllowList:
    """The ``[[allow]]`` ranges of the configuration: what enrichment marks an event with,
    and what an allow-list mark in a saved state is replaced by (the state's own mark is
    never trusted).

    >>> from pathsentry.config import load_config
    >>> cfg = load_config(text='[[allow]]\\ncidr = "203.0.113.0/24"\\nreason = "relay"\\n', env={})
    >>> allow = AllowList(cfg)
    >>> allow.entry("203.0.113.9").reason, allow.entry("198.51.100.1")
    ('relay', None)
    """

    def __init__(self, config: Config) -> None:
        #: (IP version, netmask, network address) of each range as integers, and its entry:
        #: ``ip in network`` on integers (``ipaddress`` answers it in Python, for every
        #: address enrichment meets)
        self._ranges = [(n.version, int(n.netmask), int(n.network_address), a)
                        for n, a in ((ipaddress.ip_network(a.cidr, strict=False), a)
                                     for a in config.allow)]

    def entry(self, ip: Any) -> AllowEntry | None:
        """The entry ``ip`` (an address or its text) falls in, ``None`` if none."""
        if isinstance(ip, str):
            ip = ipaddress.ip_address(ip)
        version, value = ip.version, int(ip)
        for v, mask, net, entry in self._ranges:
            if v == version and value & mask == net:
                return entry
        return None
