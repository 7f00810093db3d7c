"""Counts of the probes in one injection cell, and how confident a rate over them is.

A :class:`Cell` counts ``k`` suspect probes of ``n`` (for TLS probes: path-anomalous),
the distinct sources (of all probes, of the suspect ones), the suspects the other ASNs'
rate at the same times predicts (``ref``), first and last times and a few example event
ids; bounded tables of cells are kept least recently used first. The Wilson score
bounds say how far a rate over few probes can be trusted. The judging and the alert
live in :mod:`pathsentry.detectors.injection_cells`.

>>> round(wilson_lower(9, 10), 3), round(wilson_upper(0, 40), 3)
(0.596, 0.088)
>>> format_hours(range(9, 18)), format_hours([22, 23, 0, 1]), format_hours([3, 9, 10])
('09–18', '22–02', '03–04, 09–11')
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Set
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Caps", "Cell", "distinct_at_least", "expire", "format_hours", "merge", "sum_cells",
           "touch", "wilson_lower", "wilson_upper"]


class Caps(Protocol):
    """The bounds a cell keeps to (``CellSettings`` has them)."""

    @property
    def max_clients(self) -> int: ...

    @property
    def max_examples(self) -> int: ...


def _wilson(k: int, n: int, z: float, sign: float) -> float:
    if n <= 0:
        return 0.0 if sign < 0 else 1.0
    p = k / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return min(1.0, max(0.0, (centre + sign * spread) / (1 + z2 / n)))


def wilson_lower(k: int, n: int, z: float = 1.96) -> float:
    """Lower Wilson score bound of the rate ``k / n`` (0 when ``n == 0``)."""
    return _wilson(k, n, z, -1.0)


def wilson_upper(k: int, n: int, z: float = 1.96) -> float:
    """Upper Wilson score bound of the rate ``k / n`` (1 when ``n == 0``)."""
    return _wilson(k, n, z, 1.0)


def format_hours(hours: Iterable[int]) -> str:
    """Hours of day as ranges, end exclusive, wrapping past midnight."""
    hs = sorted(set(hours))
    if not hs:
        return ""
    if len(hs) == 24:
        return "00–24"
    runs: list[list[int]] = []
    for h in hs:
        if runs and h == runs[-1][1] + 1:
            runs[-1][1] = h
        else:
            runs.append([h, h])
    if len(runs) > 1 and runs[0][0] == 0 and runs[-1][1] == 23:
        runs[0][0] = runs.pop()[0]
    return ", ".join(f"{a:02d}–{(b + 1) % 24 if a > b else b + 1:02d}" for a, b in runs)


def _finite(x: float) -> float | None:
    return None if math.isinf(x) else x


def _inf(x: float | None) -> float:
    return math.inf if x is None else x


@dataclass(slots=True)
class Cell:
    """Counts of one cell: ``k`` of ``n`` probes suspect (for TLS: path-anomalous)."""

    n: int = 0
    k: int = 0
    clients: set[str] = field(default_factory=set)
    #: suspect probes per source
    suspect_clients: dict[str, int] = field(default_factory=dict)
    #: suspect probes expected from the other networks' rate at the same times
    ref: float = 0.0
    first: float = math.inf
    last: float = 0.0
    first_suspect: float = math.inf
    last_suspect: float = 0.0
    examples: list[str] = field(default_factory=list)

    def add(self, client: str, bad: bool, ts: float, event_id: str, s: Caps,
            ref: float = 0.0) -> None:
        self.n += 1
        self.ref += ref
        self.first, self.last = min(self.first, ts), max(self.last, ts)
        if len(self.clients) < s.max_clients:
            self.clients.add(client)
        if not bad:
            return
        seen = self.suspect_clients.get(client, 0)
        self.k += 1
        self.first_suspect, self.last_suspect = min(self.first_suspect, ts), max(
            self.last_suspect, ts
        )
        if seen or len(self.suspect_clients) < s.max_clients:
            self.suspect_clients[client] = seen + 1
        if len(self.examples) < s.max_examples:
            self.examples.append(event_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n, "k": self.k, "clients": sorted(self.clients),
            "suspect_clients": dict(sorted(self.suspect_clients.items())), "ref": self.ref,
            "first": _finite(self.first),
            "last": self.last, "first_suspect": _finite(self.first_suspect),
            "last_suspect": self.last_suspect, "examples": list(self.examples),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Cell:
        by = d["suspect_clients"]
        return cls(
            n=d["n"], k=d["k"], clients=set(d["clients"]),
            suspect_clients=dict(by) if isinstance(by, dict) else dict.fromkeys(by, 1),
            ref=float(d.get("ref", 0.0)), first=_inf(d["first"]), last=d["last"],
            first_suspect=_inf(d["first_suspect"]), last_suspect=d["last_suspect"],
            examples=list(d["examples"]),
        )


def touch(
    table: OrderedDict[Any, Cell], key: Any, cap: int, evicted: list[Any] | None = None
) -> Cell:
    """The cell at ``key`` (created if new), most recently used; evict beyond ``cap``
    (the keys evicted are appended to ``evicted``)."""
    cell = table.get(key)
    if cell is None:
        cell = table[key] = Cell()
        while len(table) > cap:
            gone, _ = table.popitem(last=False)
            if evicted is not None:
                evicted.append(gone)
    else:
        table.move_to_end(key)
    return cell


def expire(table: OrderedDict[Any, Cell], horizon: float) -> list[Any]:
    """Drop the cells idle since before ``horizon``; return their keys."""
    gone = [k for k, c in table.items() if c.last < horizon]
    for key in gone:
        del table[key]
    return gone


def merge(cells: Iterable[Cell | None]) -> Cell:
    """One cell summing ``cells`` (the pooled view of several lines)."""
    out = Cell()
    for c in cells:
        if c is None:
            continue
        out.n, out.k, out.ref = out.n + c.n, out.k + c.k, out.ref + c.ref
        out.clients |= c.clients
        for who, count in c.suspect_clients.items():
            out.suspect_clients[who] = out.suspect_clients.get(who, 0) + count
        out.first, out.last = min(out.first, c.first), max(out.last, c.last)
        out.first_suspect = min(out.first_suspect, c.first_suspect)
        out.last_suspect = max(out.last_suspect, c.last_suspect)
        out.examples.extend(c.examples)
    return out


def sum_cells(cells: Iterable[Cell | None]) -> tuple[int, int]:
    n = k = 0
    for c in cells:
        if c is not None:
            n, k = n + c.n, k + c.k
    return n, k


def distinct_at_least(sets: Iterable[Set[str]], m: int) -> bool:
    """Whether the union of ``sets`` holds at least ``m`` items (stops once it does)."""
    if m <= 0:
        return True
    seen: set[str] = set()
    for x in sets:
        seen.update(x)
        if len(seen) >= m:
            return True
    return False
