"""The injection detectors' saved state, as it must look to be loaded.

Typed models (rules of :mod:`pathsentry.detectors.saved`) of what the ``injection``
detector saves of its origins' learned profiles
(:meth:`~pathsentry.detectors.injection_profile.Profiles.to_json`: per source the marks
seen per HTTP status and the TTL deltas, each count within its total, statuses from 0
to 999 as the contract takes them, deltas whole numbers of hops, first-byte ratio bins
within the histogram; the learned SYN-ACKs, TTLs from 0 to 255 and connect RTTs
within the ms bound) and
of what ``injection_cells`` saves of its groups (cells of a prefix, port and hour with
``k`` suspect of ``n`` probes and the other networks' TLS rates at most one per probe
they were summed over, their times no later than a day past the wall clock, the
published alert's version, level and signature, the addresses' owning accounts, the
sensor witnesses, the confirmed cells among the bad ones).

>>> from pathsentry.detectors.saved import StateInvalid
>>> cell = {"n": 2, "k": 3, "clients": [], "suspect_clients": {}, "ref": 0.0, "first": 1.0,
...         "last": 2.0, "first_suspect": None, "last_suspect": 0.0, "examples": []}
>>> try:
...     check_cells_state({"groups": {"g": {"asn": 1, "as_name": None, "last": 2.0,
...         "tz_label": "", "accounts": [], "cells": [["*", 80, 3, cell]], "tls": [],
...         "bad": [], "published": None}}})
... except StateInvalid as e:
...     print(e)
injection_cells state: group 'g': a cell with more suspect probes than probes
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import Field

from pathsentry.detectors.saved import Count, Ms, Name, Record, Saved, StateInvalid, Ts, check
from pathsentry.schemas import FlaggedEvent

__all__ = ["check_cells_state", "check_handshakes", "check_held", "check_onsets", "check_profiles"]

#: an HTTP status as the contract takes it
Status = Annotated[int, Field(ge=0, le=999)]
Port = Annotated[int, Field(ge=-1, le=65535)]  # -1: every port
Hour = Annotated[int, Field(ge=-1, le=23)]  # -1: every hour
#: first-byte/handshake ratio bins (16 per octave over 16 octaves)
Bin = Annotated[int, Field(ge=0, le=255)]


class _Tally(Saved):
    n: Count
    seen: dict[Name, Count]


def _tally(raw: Any, where: str) -> _Tally:
    if not isinstance(raw, list) or len(raw) != 2:
        raise StateInvalid(f"{where}: a tally is [n, {{mark: count}}]")
    t = check(_Tally, {"n": raw[0], "seen": raw[1]}, where)
    if any(c > t.n for c in t.seen.values()):
        raise StateInvalid(f"{where}: a mark counted more often than its answers")
    return t


class _Source(Saved):
    statuses: dict[Status, list[Any]]
    deltas: list[Any]


class _Origin(Saved):
    tls: _Source
    nets: list[tuple[Name, _Source]]
    tls_nets: list[tuple[Name, _Source]] = Field(default_factory=list)
    ratios: dict[Bin, Count]
    n_ratios: Count


class _Profiles(Saved):
    version: Literal[1]
    origins: list[tuple[Name, _Origin]] = Field(default_factory=list)


def _check_source(src: _Source, where: str) -> None:
    for tally in src.statuses.values():
        _tally(tally, where)
    for delta in _tally(src.deltas, where).seen:
        if not delta.lstrip("-").isdigit() or abs(int(delta)) > 255:
            raise StateInvalid(f"{where}: TTL delta {delta[:20]!r} is not a number of hops")


def check_profiles(state: Any) -> None:
    """Refuse learned origin profiles not as saved."""
    for key, o in check(_Profiles, state, "injection profiles").origins:
        where = f"injection profiles: origin {key[:80]!r}"
        for src in [o.tls, *(s for _, s in o.nets), *(s for _, s in o.tls_nets)]:
            _check_source(src, where)
        if sum(o.ratios.values()) > o.n_ratios:
            raise StateInvalid(f"{where}: more timed answers in the bins than in all")


class _Onsets(Saved):
    #: origin, anomaly, onset, last origin-wide answer
    onsets: list[tuple[Name, Name, Ts, Ts]] = Field(default_factory=list, max_length=4096)


def check_onsets(rows: Any) -> None:
    """Refuse failure onsets not as saved (origin, anomaly, onset, last answer)."""
    check(_Onsets, {"onsets": rows}, "injection failure onsets")


#: a TTL delta, in hops
Delta = Annotated[int, Field(ge=-255, le=255)]


class _Held(Saved):
    """A flag held for a witness: the flag, time, origin key, network, signature (status,
    ``server`` value, header names), TTL delta, quiet, late."""

    rows: list[tuple[dict[str, Any], Ts, Name, Name,
                     tuple[Status | None, Name, list[Name]], Delta | None, bool, bool]] = Field(
        max_length=65536)


def check_held(rows: Any) -> None:
    """Refuse held flags not as saved (each flag a valid one, of ``path_injection``)."""
    for row in check(_Held, {"rows": rows}, "injection held flags").rows:
        try:
            flag = FlaggedEvent.model_validate(row[0])
        except ValueError as e:
            raise StateInvalid(f"injection held flags: {str(e)[:200]}") from None
        if flag.kind != "path_injection":
            raise StateInvalid("injection held flags: a flag of another kind")


#: a SYN-ACK TTL as a client sees it
Ttl = Annotated[int, Field(ge=0, le=255)]


class _Handshakes(Saved):
    """(origin host, prefix) and its last SYN-ACKs (TTL, connect ms)."""

    version: Literal[1]
    prefix: list[tuple[Name, list[tuple[Ttl | None, Ms | None]]]] = Field(max_length=1_000_000)


def check_handshakes(state: Any) -> None:
    """Refuse learned SYN-ACKs not as saved (TTLs 0-255, RTTs within the ms bound)."""
    check(_Handshakes, state, "injection handshakes")


class _Cell(Record):
    n: Count
    k: Count
    clients: list[Name]
    suspect_clients: dict[Name, Count]
    ref: NotRequired[Annotated[float, Field(ge=0, allow_inf_nan=False)]]
    #: the other networks' TLS path-anomaly rates summed over ``ref_tls_n`` probes
    ref_tls: NotRequired[Annotated[float, Field(ge=0, allow_inf_nan=False)]]
    ref_tls_n: NotRequired[Count]
    #: the other networks' plaintext and TLS baselines (rates, sizes), summed
    base: NotRequired[Annotated[float, Field(ge=0, allow_inf_nan=False)]]
    base_n: NotRequired[Annotated[float, Field(ge=0, allow_inf_nan=False)]]
    base_c: NotRequired[Count]
    tbase: NotRequired[Annotated[float, Field(ge=0, allow_inf_nan=False)]]
    tbase_n: NotRequired[Annotated[float, Field(ge=0, allow_inf_nan=False)]]
    tbase_c: NotRequired[Count]
    first: Ts | None
    last: Ts
    first_suspect: Ts | None
    last_suspect: Ts
    examples: list[Name]


class _Published(Saved):
    version: Count
    ts: Ts
    suspects: Count
    level: Literal["confirmed", "suspected"] = "confirmed"
    signature: tuple[list[Port], list[Hour], list[Name]]


class _Group(Saved):
    asn: Annotated[int, Field(ge=0, le=2**32 - 1)] | None
    as_name: Name | None
    last: Ts
    tz_label: Name
    accounts: list[Name]
    #: address source -> the account source that reported forged answers from it
    owners: dict[Name, Name] = Field(default_factory=dict)
    #: anonymous sources on which a sensor or an edge saw a forged answer
    witnesses: list[Name] = Field(default_factory=list)
    cells: list[tuple[Name, Port, Hour, _Cell]]
    tls: list[tuple[Name, Hour, _Cell]]
    bad: list[tuple[Name, Port, Hour]]
    #: the bad cells at the confirmed level (absent: all of them)
    sure: list[tuple[Name, Port, Hour]] | None = None
    #: cells awaiting judgement, with the time of their first suspect since the last
    pending: list[tuple[Name, Port, Hour, Ts]] = Field(default_factory=list)
    #: recent suspect probes: time, origin, anomaly, prefix, port, hour, source, event id
    suspects: list[tuple[Ts, Name, Name, Name, Port, Hour, Name, Name]] = Field(
        default_factory=list, max_length=65536)
    published: _Published | None


class _Cells(Saved):
    groups: dict[Name, _Group] = Field(default_factory=dict)


def check_cells_state(state: Any) -> None:
    """Refuse injection-cell groups not as saved."""
    for key, g in check(_Cells, state, "injection_cells state").groups.items():
        cells = [c for *_, c in g.cells] + [c for *_, c in g.tls]
        if any(c["k"] > c["n"] for c in cells):
            raise StateInvalid(f"injection_cells state: group {key[:80]!r}: a cell with more "
                               "suspect probes than probes")
        if g.sure is not None and not set(g.sure) <= set(g.bad):
            raise StateInvalid(f"injection_cells state: group {key[:80]!r}: a confirmed cell "
                               "that is not bad")
        if any(c.get("ref_tls", 0.0) > c.get("ref_tls_n", 0)
               or c.get("base", 0.0) > c.get("base_c", 0)
               or c.get("tbase", 0.0) > c.get("tbase_c", 0) for c in cells):
            raise StateInvalid(f"injection_cells state: group {key[:80]!r}: borrowed TLS rates "
                               "summing to more than one per probe")
