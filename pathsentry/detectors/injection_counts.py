"""Counts of the probes in one injection cell, and how confident a rate over them is.

A :class:`Cell` counts ``k`` suspect probes of ``n`` (for TLS probes: path-anomalous),
the distinct sources (of all probes, of the suspect ones), the suspects the other ASNs'
rate at the same times predicts (``ref``), first and last times and a few example event
ids; bounded tables of cells are kept least recently used first. The Wilson score
bounds say how far a rate over few probes can be trusted; :func:`borrowed_control`
tops a small TLS control up with the other networks' TLS rate. The judging and the
alert live in :mod:`pathsentry.detectors.injection_cells`.

Whether one rate exceeds another is judged on the interval of their *difference*
(Newcombe's hybrid score interval, built from the two Wilson intervals), not on whether
the two intervals overlap: two 95 % intervals that just touch already differ at about
z·√2 (p ≈ 0.006), so the overlap rule asks for roughly eight suspects even when the
reference saw none, whatever the sample sizes.

That interval takes the reference's uncertainty to be that of the cell's own ``n``
probes. When the reference's real size is known (the other networks' answers over
the last hour or so, pooled: hundreds or thousands), the exact tail
:func:`beta_binomial_sf` is used instead: the chance that ``n`` probes at a rate drawn
from the reference's Jeffreys posterior ``Beta(k_ref + ½, n_ref - k_ref + ½)`` hold
``k`` suspects or more. Three forged answers in 13 probes are nothing to a Wilson
interval against 0 of 13, and a tail of 4e-6 against 0 of 500.

>>> round(wilson_lower(9, 10), 3), round(wilson_upper(0, 40), 3), wilson_lower(0, 22)
(0.596, 0.088, 0.0)
>>> round(rate_above(6, 54, 0, 39), 4), round(rate_above(2, 54, 0, 39), 4)
(0.0037, -0.0566)
>>> f"{beta_binomial_sf(3, 13, 0.5, 500.5):.1e}", round(beta_binomial_sf(1, 13, 0.5, 500.5), 4)
('4.0e-06', 0.0127)
>>> format_hours(range(9, 18)), format_hours([22, 23, 0, 1]), format_hours([3, 9, 10])
('09–18', '22–02', '03–04, 09–11')
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Caps", "Cell", "beta_binomial_sf", "borrowed_control", "distinct_sources", "expire",
           "format_hours", "merge", "rate_above", "sum_cells", "touch", "wilson_lower", "wilson_upper"]


class Caps(Protocol):
    """The bounds a cell keeps to (``CellSettings`` has them)."""

    @property
    def max_clients(self) -> int: ...

    @property
    def max_examples(self) -> int: ...


def _wilson(k: int, n: int, z: float, sign: float) -> float:
    if n <= 0:
        return 0.0 if sign < 0 else 1.0
    # at the ends the bound is exact: ``centre - spread`` of 0 of ``n`` is 0 in exact
    # arithmetic, and 1e-17 in floating point for some ``n``, which is "above" a
    # reference rate of exactly 0
    if k <= 0 and sign < 0:
        return 0.0
    if k >= n and sign > 0:
        return 1.0
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


def rate_above(k: int, n: int, k_ref: float, n_ref: int, z: float = 1.96,
               lower: float | None = None) -> float:
    """Lower bound of ``k / n - k_ref / n_ref`` (Newcombe's hybrid score interval, method
    10 of Newcombe 1998): positive when the first rate is above the reference at ``z``.

    ``k_ref`` may be fractional (an expected count); its Wilson bound uses it rounded.
    ``lower``: ``wilson_lower(k, n, z)``, when the caller has it already.
    """
    if n <= 0:
        return -1.0
    p = k / n
    p_ref = k_ref / n_ref if n_ref > 0 else 0.0
    below = p - (wilson_lower(k, n, z) if lower is None else lower)
    above = wilson_upper(round(k_ref), n_ref, z) - min(p_ref, 1.0)
    return p - p_ref - math.sqrt(below * below + max(above, 0.0) ** 2)


def beta_binomial_sf(k: int, n: int, a: float, b: float, stop: float = 1.0) -> float:
    """``P(X >= k)`` for ``X`` beta-binomial: ``n`` trials at a rate drawn from
    ``Beta(a, b)`` (``a, b > 0``). Summed upward from ``k``; the sum stops once it
    passes ``stop`` (then it is a lower bound of the tail, above ``stop``: enough to
    tell a tail from a threshold) or its terms no longer count.

    >>> round(beta_binomial_sf(0, 5, 1.0, 1.0), 6), round(beta_binomial_sf(5, 5, 1.0, 1.0), 6)
    (1.0, 0.166667)
    """
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    lg = math.lgamma
    # the terms' logarithms, by the ratio of neighbours: a first term below the smallest
    # double (far below the mode) must not make every later one zero
    log_term = (lg(n + 1) - lg(k + 1) - lg(n - k + 1) + lg(k + a) + lg(n - k + b)
                - lg(n + a + b) + lg(a + b) - lg(a) - lg(b))
    total = 0.0
    mean = n * a / (a + b)
    x = k
    while True:
        term = math.exp(log_term)
        total += term
        if total > stop or x >= n or (x > mean and term < 1e-12 * total):
            return min(total, 1.0)
        log_term += math.log((n - x) / (x + 1) * (x + a) / (n - x - 1 + b))
        x += 1


def borrowed_control(n: int, n_tls: int, k_tls: int, ref_sum: float, ref_n: int,
                     z: float = 1.96) -> tuple[int, float] | None:
    """A TLS control of ``k_tls`` anomalous in ``n_tls`` topped up to the ``n`` plaintext
    probes it is compared with: for each probe it lacks, the other networks' TLS
    path-anomaly rate (``ref_sum / ref_n``, their rates at the times of ``ref_n``
    probes). ``None`` (the own control stands): nothing to borrow, the control is as
    large as the cell, or its own rate's Wilson lower bound is above the others' rate.

    >>> borrowed_control(63, 53, 0, 0.0, 63), borrowed_control(63, 20, 6, 0.0, 63)
    ((63, 0.0), None)
    """
    if n_tls >= n or ref_n <= 0:
        return None
    rate = ref_sum / ref_n
    if n_tls and wilson_lower(k_tls, n_tls, z) > rate:
        return None
    return n, k_tls + rate * (n - n_tls)


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
    #: the other networks' TLS path-anomaly rates at the times of ``ref_tls_n`` probes,
    #: summed (the control borrowed when the ISP's own TLS control is small)
    ref_tls: float = 0.0
    ref_tls_n: int = 0
    #: the other networks' baselines (median flagged rate, answers pooled; see
    #: :meth:`~pathsentry.detectors.injection_window.NetworkWindow.baseline`) at the
    #: times of ``base_c`` probes, summed; and their TLS baselines (``tls_baseline``)
    #: at the times of ``tbase_c`` probes
    base: float = 0.0
    base_n: float = 0.0
    base_c: int = 0
    tbase: float = 0.0
    tbase_n: float = 0.0
    tbase_c: int = 0
    first: float = math.inf
    last: float = 0.0
    first_suspect: float = math.inf
    last_suspect: float = 0.0
    examples: list[str] = field(default_factory=list)

    def add(self, client: str, bad: bool, ts: float, event_id: str, s: Caps,
            ref: float = 0.0, ref_tls: float | None = None,
            base: tuple[float, float] | None = None,
            tbase: tuple[float, float] | None = None) -> None:
        self.n += 1
        self.ref += ref
        if ref_tls is not None:
            self.ref_tls += ref_tls
            self.ref_tls_n += 1
        if base is not None:
            self.base += base[0]
            self.base_n += base[1]
            self.base_c += 1
        if tbase is not None:
            self.tbase += tbase[0]
            self.tbase_n += tbase[1]
            self.tbase_c += 1
        # (``min``/``max`` as comparisons: an equal time keeps the held one, as they do)
        if ts < self.first:
            self.first = ts
        if ts > self.last:
            self.last = ts
        if len(self.clients) < s.max_clients:
            self.clients.add(client)
        if not bad:
            return
        seen = self.suspect_clients.get(client, 0)
        self.k += 1
        if ts < self.first_suspect:
            self.first_suspect = ts
        if ts > self.last_suspect:
            self.last_suspect = ts
        if seen or len(self.suspect_clients) < s.max_clients:
            self.suspect_clients[client] = seen + 1
        if len(self.examples) < s.max_examples:
            self.examples.append(event_id)

    def uncount(self, client: str, event_id: str) -> None:
        """One of the suspect probes counted was not (the answer stays counted); the
        times of the first and last suspect stay those of the suspects counted."""
        if self.k <= 0:
            return
        self.k -= 1
        seen = self.suspect_clients.get(client, 0)
        if seen > 1:
            self.suspect_clients[client] = seen - 1
        elif seen:
            del self.suspect_clients[client]
        if event_id in self.examples:
            self.examples.remove(event_id)
        if not self.k:
            self.first_suspect, self.last_suspect = math.inf, 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n, "k": self.k, "clients": sorted(self.clients),
            "suspect_clients": dict(sorted(self.suspect_clients.items())), "ref": self.ref,
            "ref_tls": self.ref_tls, "ref_tls_n": self.ref_tls_n,
            "base": self.base, "base_n": self.base_n, "base_c": self.base_c,
            "tbase": self.tbase, "tbase_n": self.tbase_n, "tbase_c": self.tbase_c,
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
            ref=float(d.get("ref", 0.0)), ref_tls=float(d.get("ref_tls", 0.0)),
            ref_tls_n=int(d.get("ref_tls_n", 0)),
            base=float(d.get("base", 0.0)), base_n=float(d.get("base_n", 0.0)),
            base_c=int(d.get("base_c", 0)), tbase=float(d.get("tbase", 0.0)),
            tbase_n=float(d.get("tbase_n", 0.0)), tbase_c=int(d.get("tbase_c", 0)),
            first=_inf(d["first"]), last=d["last"],
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
        out.ref_tls, out.ref_tls_n = out.ref_tls + c.ref_tls, out.ref_tls_n + c.ref_tls_n
        out.base, out.base_n, out.base_c = out.base + c.base, out.base_n + c.base_n, out.base_c + c.base_c
        out.tbase, out.tbase_n = out.tbase + c.tbase, out.tbase_n + c.tbase_n
        out.tbase_c += c.tbase_c
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


def distinct_sources(sets: Iterable[Set[str]], cap: int,
                     same: Mapping[str, str] | None = None, *, exact: bool = False) -> set[str]:
    """The distinct items of the union of ``sets``, each counted as what ``same`` maps it
    to (an address as the account that reported from it); collecting stops once ``cap``
    are found, after the set that reached it (all of them are returned when fewer).
    ``exact``: stops at the item that reaches ``cap``, so exactly ``cap`` are returned
    then (a test of "at least ``cap``" needs no more; the same when fewer).

    >>> sorted(distinct_sources([{"ip:a", "acct:x"}, {"ip:b"}], 5, {"ip:a": "acct:x"}))
    ['acct:x', 'ip:b']
    >>> len(distinct_sources([{"ip:a", "ip:b"}, {"ip:c"}], 1)), len(distinct_sources(
    ...     [{"ip:a", "ip:b"}, {"ip:c"}], 1, exact=True))
    (2, 1)
    """
    same = same or {}
    seen: set[str] = set()
    if exact:
        get, add = same.get, seen.add
        for x in sets:
            for who in x:
                add(get(who, who))
                if len(seen) >= cap:
                    return seen
        return seen
    for x in sets:
        seen.update(same.get(who, who) for who in x)
        if len(seen) >= cap:
            break
    return seen
