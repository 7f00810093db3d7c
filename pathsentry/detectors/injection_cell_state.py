"""The bookkeeping of the injection cells: their keys and levels, the settings, and the
state of one ASN's group.

:mod:`pathsentry.detectors.injection_cells` (the detector) keeps one :class:`CellGroup`
per ASN: its cells of ``(prefix, port, hour)`` and its TLS controls of ``(prefix,
hour)`` (the counts themselves are :class:`~pathsentry.detectors.injection_counts.Cell`),
the cells found bad and at which level, the cells awaiting judgement, who vouched for
its suspect probes, and what its alert last said. This module owns that state, its
saved form (:meth:`CellGroup.to_json`, checked on load by
:mod:`pathsentry.detectors.injection_saved`), the keys of the pooled and roll-up cells,
who counts as a probe's source (:func:`source_of`), and the reading of a probe's
rate notes (:func:`pool`). How a cell is judged is
:mod:`pathsentry.detectors.injection_cell_judge`; the alert,
:mod:`pathsentry.detectors.injection_cell_alert`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Set
from dataclasses import dataclass, field
from typing import Any

from pathsentry.detectors.addresses import ip_text
from pathsentry.detectors.injection_counts import Cell, merge
from pathsentry.detectors.injection_onset import Retractable
from pathsentry.schemas import HttpProbe

__all__ = [
    "ALL",
    "ANY_HOUR",
    "ANY_PORT",
    "CLEAN",
    "CONFIRMED",
    "LEVELS",
    "LINES",
    "NO_LINES",
    "SUSPECTED",
    "CellGroup",
    "CellKey",
    "CellSettings",
    "Published",
    "Signature",
    "TlsKey",
    "anonymous_source",
    "cell_at",
    "cell_keys",
    "lines_of",
    "pool",
    "source_of",
    "union",
]

#: The ASN-wide cells (every line of the ASN).
ALL = "*"
#: The pooled cell of the lines already found bad (prefixes with a bad cell).
LINES = "+"
#: The hour of a line's all-day cell ``(prefix, port, ANY_HOUR)``.
ANY_HOUR = -1
#: The port of the ASN's all-port all-day cell ``(ALL, ANY_PORT, ANY_HOUR)``.
ANY_PORT = -1
CellKey = tuple[str, int, int]  # (prefix or "*", port, hour)
TlsKey = tuple[str, int]  # (prefix or "*", hour)
Signature = tuple[tuple[int, ...], tuple[int, ...], tuple[str, ...]]  # ports, hours, prefixes
#: How bad a cell is: not, suspected (could be collusion), confirmed.
CLEAN, SUSPECTED, CONFIRMED = 0, 1, 2
LEVELS = {SUSPECTED: "suspected", CONFIRMED: "confirmed"}
#: No line is bad (cells other than the pooled ones are judged without lines).
NO_LINES: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class CellSettings:
    """Thresholds and bounds (``[detectors.injection_cells]`` in ``pathsentry.toml``)."""

    #: plaintext probes a cell needs before it is judged
    min_probes: int = 10
    #: a cell is judged this long after the first suspect probe it received since it
    #: was last judged (0: at once). The other networks' rate in the same minutes is
    #: read from before each probe, so the first answers of an origin failure carry
    #: none of it; after the injection stage's ``window_s`` (600 s) a failure that
    #: every network sees is marked origin-wide, and the ISP's probes since then carry
    #: the other networks' rate at those minutes into the same cells (keep it at least
    #: ``window_s``)
    settle_s: float = 600.0
    #: distinct sources (accounts of client reports, else addresses) of suspect probes;
    #: the framing bound, see *Framing* in :mod:`~pathsentry.detectors.injection_cell_judge`
    min_suspect_clients: int = 5
    #: distinct sources from which a cell is *suspected* (a ``low`` alert saying it could
    #: be collusion); 0, or ``min_suspect_clients`` or more: no suspected level
    min_suspected_sources: int = 3
    #: sensor witnesses (forged answers the operator's sensor or edge saw on a line no
    #: reporting account used) that make a suspected cell confirmed (0: never)
    min_sensor_witnesses: int = 1
    #: what a report without an account (or a sensor's) vouches for: ``address`` or
    #: ``line`` (its /24), for operators who cannot trust such reports' addresses
    anonymous_sources: str = "address"
    #: floor on the Wilson lower bound of a cell's suspect rate (0: the contrasts decide)
    min_rate: float = 0.0
    #: sources with forged answers in an hour (a port) that name it, when only all-day
    #: (all-port) cells are bad
    min_hour_sources: int = 2
    #: TLS probes on a line from which the TLS contrast applies.
    min_tls_probes: int = 3
    #: top a TLS control smaller than its plaintext cell up with the other networks'
    #: TLS path-anomaly rate at the same times (see :mod:`~pathsentry.detectors.injection_cell_judge`)
    tls_borrow: bool = True
    #: the exact TLS tail's borrowed control also counts the other networks' plaintext
    #: answers at their flagged rate (a bound of their path-anomaly rate from above):
    #: "a path like the others'" is measured on all their answers, not TLS alone
    tls_borrow_plain: bool = True
    #: the normal quantile of the Wilson bounds and Newcombe intervals (where alpha is 0)
    z: float = 1.96
    #: the exact tails' level: a cell whose probes carry the other networks' baseline is
    #: above it and above TLS when both tails are at most ``alpha`` (the default 0.001 is
    #: z = 1.96's one-sided 0.025 shared among a day's 24 hours); 0: Newcombe at ``z``
    alpha: float = 0.001

    @property
    def suspected_from(self) -> int:
        """The distinct sources a cell needs to be bad at all."""
        low = self.min_suspected_sources
        return min(low, self.min_suspect_clients) if low > 0 else self.min_suspect_clients
    #: IANA zone for "hour of day"; empty: the offset each event's ``ts`` carries.
    timezone: str = ""
    #: ASN groups kept (least recently used dropped)
    max_groups: int = 20_000
    #: cells an ASN group keeps (least recently used dropped)
    max_cells: int = 4096
    #: distinct sources remembered per group (accounts, report addresses, sensor witnesses)
    max_clients: int = 512
    #: example probes kept per cell for the evidence
    max_examples: int = 5
    #: suspect probes an ISP keeps with their origin and anomaly, for twice
    #: ``settle_s``, so that a failure's onset named later takes them out of its cells
    #: (:mod:`~pathsentry.detectors.injection_onset`); the oldest go first
    max_retractable: int = 512
    #: event ids an alert lists
    max_alert_events: int = 20
    #: accounts an alert lists
    max_alert_accounts: int = 50
    #: /24s an alert lists
    max_prefixes: int = 32
    #: a cell idle this long (s) is dropped, and is no longer bad
    idle_ttl_s: float = 14 * 86400.0
    #: an alert's next version on an idle tick comes at most this often (s), when its counts moved
    refresh_s: float = 3600.0


@dataclass(slots=True)
class Published:
    """What was last emitted for a group's alert."""

    version: int
    ts: float
    signature: Signature
    suspects: int
    level: str = "confirmed"


@dataclass(slots=True)
class CellGroup:
    asn: int | None
    as_name: str | None
    cells: OrderedDict[CellKey, Cell] = field(default_factory=OrderedDict)
    tls: OrderedDict[TlsKey, Cell] = field(default_factory=OrderedDict)
    bad: set[CellKey] = field(default_factory=set)
    #: the bad cells at the confirmed level (the rest of ``bad`` are suspected)
    sure: set[CellKey] = field(default_factory=set)
    #: anonymous sources (addresses, or lines) on which a sensor or an edge, not a
    #: client, saw a forged answer
    witnesses: set[str] = field(default_factory=set)
    #: The lines the pooled cells were last judged over (not persisted: re-judged).
    pooled: frozenset[str] = frozenset()
    accounts: list[str] = field(default_factory=list)
    #: address source -> the account source that reported forged answers from it
    owners: dict[str, str] = field(default_factory=dict)
    published: Published | None = None
    last: float = 0.0
    tz_label: str = ""
    #: ``_lines()`` of the current ``bad`` set (derived, not persisted)
    lines: frozenset[str] | None = None
    #: ``bad`` changed since the alert signature was last looked at (not persisted)
    moved: bool = True
    #: cells awaiting judgement -> the time of the first suspect probe each received
    #: since it was last judged (see ``CellSettings.settle_s``)
    pending: dict[CellKey, float] = field(default_factory=dict)
    #: its recent suspect probes, which an origin failure's onset may retract
    retractable: Retractable = field(default_factory=Retractable)

    def mark_bad(self, key: CellKey, level: int) -> None:
        was = CONFIRMED if key in self.sure else SUSPECTED if key in self.bad else CLEAN
        if level == was:
            return
        if level:
            self.bad.add(key)
        else:
            self.bad.discard(key)
        if level == CONFIRMED:
            self.sure.add(key)
        else:
            self.sure.discard(key)
        if not level or not was:
            self.lines = None
        self.moved = True

    @property
    def level(self) -> int:
        return CONFIRMED if self.sure else SUSPECTED if self.bad else CLEAN

    def to_json(self) -> dict[str, Any]:
        pub = self.published
        return {
            "asn": self.asn, "as_name": self.as_name, "last": self.last,
            "tz_label": self.tz_label, "accounts": list(self.accounts),
            "owners": dict(self.owners), "witnesses": sorted(self.witnesses),
            "cells": [[*k, c.to_json()] for k, c in self.cells.items()],
            "tls": [[*k, c.to_json()] for k, c in self.tls.items()],
            "bad": sorted([list(k) for k in self.bad]),
            "sure": sorted([list(k) for k in self.sure]),
            "pending": sorted([[*k, t] for k, t in self.pending.items()]),
            "suspects": self.retractable.to_json(),
            "published": None if pub is None else {
                "version": pub.version, "ts": pub.ts, "suspects": pub.suspects,
                "level": pub.level,
                "signature": [list(x) for x in pub.signature],
            },
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CellGroup:
        g = cls(asn=d["asn"], as_name=d["as_name"], last=d["last"], tz_label=d["tz_label"],
                accounts=list(d["accounts"]), owners=dict(d.get("owners", {})),
                witnesses=set(d.get("witnesses", ())))
        for p, port, hour, c in d["cells"]:
            g.cells[(p, port, hour)] = Cell.from_json(c)
        for p, hour, c in d["tls"]:
            g.tls[(p, hour)] = Cell.from_json(c)
        g.bad = {(p, port, hour) for p, port, hour in d["bad"]}
        g.pending = {(p, port, hour): t for p, port, hour, t in d.get("pending", ())}
        g.retractable = Retractable.from_json(d.get("suspects", ()))
        # saves without levels held confirmed cells only
        g.sure = ({(p, port, hour) for p, port, hour in d["sure"]} if "sure" in d
                  else set(g.bad))
        pub = d["published"]
        if pub is not None:
            ports, hours, prefixes = pub["signature"]
            g.published = Published(pub["version"], pub["ts"],
                                     (tuple(ports), tuple(hours), tuple(prefixes)),
                                     pub["suspects"], pub.get("level", "confirmed"))
        return g


def union(a: Signature, b: Signature) -> Signature:
    """An alert's subject only grows: ports, hours and prefixes seen bad stay listed."""
    return (tuple(sorted({*a[0], *b[0]})), tuple(sorted({*a[1], *b[1]})),
            tuple(sorted({*a[2], *b[2]})))


def source_of(probe: HttpProbe, account: str | None, line: str | None = None) -> str:
    """Who vouches for a probe: the account of a client report, else its address (its
    ``line``, the /24, when given: see ``anonymous_sources``)."""
    if probe.reporter == "client" and account:
        return "acct:" + account
    return anonymous_source(probe, line)


def anonymous_source(probe: HttpProbe, line: str | None) -> str:
    """What a report without an account vouches for: its address, or its ``line``."""
    return "line:" + line if line is not None else "ip:" + ip_text(probe.src_ip)


def cell_keys(prefix: str, port: int, hour: int) -> list[CellKey]:
    """The cells a plaintext probe of ``prefix``, ``port`` and ``hour`` is counted in: its
    line's hour and all day, the ASN's hour and all day on the port, the ASN's all-port
    all day and hour (not the pooled ones, which sum the lines')."""
    return [(prefix, port, hour), (ALL, port, hour), (ALL, port, ANY_HOUR),
            (prefix, port, ANY_HOUR), (ALL, ANY_PORT, ANY_HOUR), (ALL, ANY_PORT, hour)]


def lines_of(group: CellGroup) -> frozenset[str]:
    """The lines (prefixes) with a bad cell of their own, kept with the group until its
    bad cells change."""
    if group.lines is None:
        group.lines = frozenset(k[0] for k in group.bad if k[0] not in (ALL, LINES))
    return group.lines


def cell_at(group: CellGroup, key: CellKey, lines: Set[str]) -> Cell:
    """The counts of the cell at ``key`` (``LINES``: merged over ``lines``)."""
    prefix, port, hour = key
    if prefix == LINES:  # lines in order: the examples, hence event ids, are stable
        return merge(group.cells.get((p, port, hour)) for p in sorted(lines))
    return group.cells.get(key, Cell())


def pool(rate: Any, size: Any) -> tuple[float, float] | None:
    """(rate, size) from a note's rate in [0, 1] and the answers it rests on (a
    non-negative number; none: 0, the rate alone), else none."""
    if not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        return None
    ok = isinstance(size, (int, float)) and 0.0 <= size < float("inf")
    return float(rate), float(size) if ok else 0.0
