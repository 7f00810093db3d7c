"""Flags held until a later answer of another network could show them the origin's.

The witnesses of :mod:`pathsentry.detectors.injection_window` clear an answer when
another network got the same one first: the origin gave it over TLS (``TLS``), or no
sooner than the round trip with no mark of a nearer box (``QUIET``), or no sooner than
the round trip with the same TTL relation (``LATE``), within ``window_s`` before. The
first answers of a failover box's outage, before any other network got the same answer,
have no such witness yet; the answers after them have. A box on the path answers its
own ISP's subscribers and cannot answer inside another network's TLS, so a witness
that comes after an answer says as much about it as one that came before.

A suspect answer with no timed mark of a nearer box (no first byte sooner than the round
trip, no race, no retransmission storm: its TTLs and the origin's missing marks are all
that say so) is therefore held ``hold_s`` before it is flagged (:meth:`HeldFlags.hold`),
and dropped if, meanwhile, another network's answer witnesses it by the same rules in
the other direction of time (:meth:`HeldFlags.witnessed`). An answer with a timed mark
of a nearer box is flagged at once: only a TLS witness would clear it, and a forging
box's page is not one the origin gives over TLS. Held flags are released by the next
answers' event time (:meth:`HeldFlags.due`), by the idle ticks, and all of them at the
end of a bounded input (a replay), as event time moving ``hold_s`` past its last answer
would. What this costs: those flags come up to ``hold_s`` later, and a forging box that
answers no sooner than the round trip and whose page another network gets the same way
within ``hold_s`` after (an injector spanning ISPs) is missed, as it already is when the
other network's answer comes first.

>>> from pathsentry.schemas import FlaggedEvent
>>> from pathsentry.detectors.injection_window import signature
>>> held = HeldFlags(HoldSettings(hold_s=600.0))
>>> sig = signature(503, "nginx", ["server", "date"])
>>> def flag(i: str) -> FlaggedEvent:
...     return FlaggedEvent(event_id=i, ts="2026-03-02T10:00:00+09:00", kind="path_injection",
...                         src_ip="203.0.113.7", score=0.8, reasons=[], evidence={},
...                         detector="injection")
>>> held.hold(Held(flag("a"), 100.0, "www", "AS1", sig, 0, quiet=True, late=True))
[]
>>> held.hold(Held(flag("b"), 100.0, "www", "AS1", sig, 1, quiet=False, late=True))
[]
>>> held.witnessed("www", "AS1", 200.0, sig, 0, tls=True, quiet=False, late=False)  # its own
[]
>>> held.witnessed("www", "AS2", 200.0, sig, 0, tls=False, quiet=True, late=True)
['a']
>>> [f.event_id for f in held.due(650.0)], [f.event_id for f in held.due(700.0)]
([], ['b'])
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pathsentry.detectors.injection_window import Signature
from pathsentry.schemas import FlaggedEvent

__all__ = ["Held", "HeldFlags", "HoldSettings"]


@dataclass(frozen=True, slots=True)
class HoldSettings:
    """``[detectors.injection]`` keys of the held flags."""

    #: seconds a suspect answer with no timed mark of a nearer box (no first byte sooner
    #: than the round trip, no race, no storm) waits for another network's answer to
    #: witness it before it is flagged (0: flagged at once, witnessed only by answers
    #: that came before it); keep it the window's ``window_s``, the witnesses' reach
    hold_s: float = 600.0
    #: flags held at once (beyond it the oldest is flagged at once)
    max_held: int = 1024


@dataclass(frozen=True, slots=True)
class Held:
    """A flag held back, and what a later answer must show to witness it: the origin
    key its witnesses are kept under (``seen``), its network, signature and TTL delta,
    whether it showed no mark of a nearer box at all (``quiet``) and whether its first
    byte came no sooner than the round trip with no race or storm (``late``)."""

    flag: FlaggedEvent
    ts: float
    seen: str
    net: str
    sig: Signature
    delta: int | None
    quiet: bool
    late: bool

    def witnessed_by(self, net: str, ts: float, sig: Signature, delta: int | None, *,
                     tls: bool, quiet: bool, late: bool, reach: float) -> bool:
        """Whether an answer of ``net`` at ``ts`` witnesses this one, by the rules a
        witness that came first follows (:mod:`~pathsentry.detectors.injection_window`):
        the same signature from another network within ``reach``, given over TLS, or
        both quiet, or both late with the same TTL delta (or the witness without TTLs)."""
        if net == self.net or sig != self.sig or not 0.0 <= ts - self.ts <= reach:
            return False
        return tls or (quiet and self.quiet) or (
            late and self.late and (delta == self.delta or delta is None))

    def to_json(self) -> list[Any]:
        status, server, headers = self.sig
        return [self.flag.model_dump(mode="json"), self.ts, self.seen, self.net,
                [status, server, sorted(headers)], self.delta, self.quiet, self.late]

    @classmethod
    def from_json(cls, row: list[Any]) -> Held:
        status, server, headers = row[4]
        return cls(FlaggedEvent.model_validate(row[0]), float(row[1]), str(row[2]), str(row[3]),
                   (status, str(server), frozenset(str(h) for h in headers)),
                   None if row[5] is None else int(row[5]), bool(row[6]), bool(row[7]))


class HeldFlags:
    """The flags held, oldest first (bounded by ``max_held``), and by origin key and
    signature (what a witness is looked up by)."""

    def __init__(self, settings: HoldSettings) -> None:
        self.s = settings
        self.held: OrderedDict[str, Held] = OrderedDict()
        self._by_sig: dict[tuple[str, Signature], set[str]] = {}

    def hold(self, h: Held) -> list[FlaggedEvent]:
        """Hold ``h``'s flag; the flags pushed out by ``max_held``, to be flagged now."""
        self._drop(h.flag.event_id)
        self.held[h.flag.event_id] = h
        self._by_sig.setdefault((h.seen, h.sig), set()).add(h.flag.event_id)
        out = []
        while len(self.held) > self.s.max_held:
            out.append(self._oldest().flag)
        return out

    def _oldest(self) -> Held:
        gone = self._drop(next(iter(self.held)))
        assert gone is not None
        return gone

    def _drop(self, key: str) -> Held | None:
        h = self.held.pop(key, None)
        if h is None:
            return None
        keys = self._by_sig[(h.seen, h.sig)]
        keys.discard(key)
        if not keys:
            del self._by_sig[(h.seen, h.sig)]
        return h

    def witnessed(self, seen: str, net: str, ts: float, sig: Signature, delta: int | None, *,
                  tls: bool, quiet: bool, late: bool) -> list[str]:
        """Drop the flags that an answer of ``net`` to ``seen``'s origins witnesses
        (:meth:`Held.witnessed_by`); their event ids."""
        keys = self._by_sig.get((seen, sig))
        if not keys or not (tls or quiet or late):
            return []
        gone = sorted(k for k in keys if self.held[k].witnessed_by(
            net, ts, sig, delta, tls=tls, quiet=quiet, late=late, reach=self.s.hold_s))
        for k in gone:
            self._drop(k)
        return gone

    def due(self, now: float) -> list[FlaggedEvent]:
        """The flags held ``hold_s`` by event time ``now``, no longer held."""
        out = []
        while self.held and next(iter(self.held.values())).ts + self.s.hold_s <= now:
            out.append(self._oldest().flag)
        return out

    def to_json(self) -> list[list[Any]]:
        return [h.to_json() for h in self.held.values()]

    def load(self, rows: list[list[Any]]) -> None:
        self.held = OrderedDict()
        self._by_sig = {}
        for row in sorted(rows, key=lambda r: float(r[1])):
            self.hold(Held.from_json(row))
