"""When an origin's failure began, found by the session stage and applied by the cell stage.

An origin failure (an outage whose fallback answers without the CDN's marks, a block
page of the origin's own) is seen by every network that reaches the origin, but not at
the same instant: with sparse probing, the subscribers of one ISP -- often the ISP
that has most of them -- may answer first, minutes before the other networks' answers
show the failure. The session stage reads the other networks' rate *before* each
probe, so those first answers carry none of it, and the cell stage, partitioned per
ASN, sees only its own ISP's answers: five such first answers can confirm an ISP for
the origin's outage.

The session stage sees every network. When an answer's anomaly is found
origin-wide (:meth:`~pathsentry.detectors.injection_window.NetworkWindow.origin_wide`),
:class:`FailureOnsets` records the failure of ``(origin, anomaly)`` and its **onset**:
the start of the earliest minute bucket of the window, in the run of buckets up to
this answer in which the anomaly was seen by some network
(:meth:`~pathsentry.detectors.injection_window.NetworkWindow.onset`; a bucket whose
answers to the origin showed none of it ends the run). The first answers of the ISP
that saw it first are in those buckets: they are counted in the window like every
answer. Every later answer, of any network, carries the failures seen origin-wide
within ``onset_hold_s`` (``notes["injection"]["onsets"]``: ``[origin, anomaly,
onset]``), while the failure lasts and for that long after its last origin-wide
answer. The hold is the time a cell waits before it is judged (the cell stage's
``settle_s``, itself the window): a suspect of the failure's last minutes is still
waiting that long after them.

The cell stage keeps its ISP's recent suspect answers, their origin and anomaly
(:class:`Retractable`). When one of the ISP's later answers names an onset, its
suspects to that origin with that anomaly at or after the onset are the origin's
failure, not the ISP's: they are taken out of the cells' suspect counts (the answers
stay counted, as the origin-wide ones are) before the cells are judged, and a suspect
answer whose own notes name such an onset is not counted as a suspect. An answer is
matched by its anomaly as the session stage's origin-wide test matches it, so an
injector that forges something else to the same origin, or anything to another one,
is not touched; one whose forged answers show the same anomaly as the failure loses
those of the failure's minutes (and the window's before them, at most, when its
forgeries fill every minute) and is named from its other cells and hours.

>>> f = FailureOnsets(hold_s=600.0, cap=4)
>>> f.seen("www", "status 502", 700.0, 600.0)
>>> f.seen("www", "status 502", 900.0, 660.0)  # (the earliest onset stands)
>>> f.carried(1000.0), f.carried(1600.0)
([['www', 'status 502', 600.0]], [])
>>> onsets_of({"onsets": [["www", "status 502", 600.0], ["x", 1, 2], "bad"]})
{('www', 'status 502'): 600.0}
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FailureOnsets", "Onsets", "Retractable", "SuspectRecord", "covered", "onsets_of"]

#: (origin host, anomaly) -> onset (epoch seconds)
Onsets = dict[tuple[str, str], float]


class FailureOnsets:
    """Session stage: the failures seen origin-wide lately, with their onsets (at most
    ``cap``, the most recently seen; each held ``hold_s`` after its last origin-wide
    answer)."""

    def __init__(self, hold_s: float, cap: int) -> None:
        self.hold_s = hold_s
        self.cap = cap
        #: (origin, anomaly) -> [onset, last origin-wide answer], least recent first
        self.table: OrderedDict[tuple[str, str], list[float]] = OrderedDict()

    def seen(self, origin: str, anomaly: str, ts: float, onset: float) -> None:
        """An answer at ``ts`` whose ``anomaly`` is origin-wide, the failure's run having
        begun at ``onset`` by the window; a failure seen again after its hold is a new one."""
        key = (origin, anomaly)
        row = self.table.pop(key, None)
        if row is None or ts > row[1] + self.hold_s:
            row = [onset, ts]
        else:
            row[0], row[1] = min(row[0], onset), max(row[1], ts)
        self.table[key] = row
        while len(self.table) > self.cap:
            self.table.popitem(last=False)

    def carried(self, ts: float) -> list[list[Any]]:
        """What an answer at ``ts`` carries: ``[origin, anomaly, onset]`` of each failure
        seen origin-wide within ``hold_s`` before it (expired ones are dropped)."""
        table = self.table
        if not table:
            return []
        while table:
            key, row = next(iter(table.items()))
            if row[1] + self.hold_s >= ts:
                break
            del table[key]
        return [[o, a, row[0]] for (o, a), row in table.items() if row[1] + self.hold_s >= ts]


    def to_json(self) -> list[list[Any]]:
        return [[o, a, row[0], row[1]] for (o, a), row in self.table.items()]

    def load(self, rows: Iterable[list[Any]]) -> None:
        """Restore :meth:`to_json` (checked by the caller)."""
        self.table = OrderedDict(((o, a), [float(t0), float(t1)]) for o, a, t0, t1 in rows)
        while len(self.table) > self.cap:
            self.table.popitem(last=False)


def onsets_of(verdict: dict[str, Any]) -> Onsets:
    """The onsets an answer's notes carry; entries not as the session stage writes them
    are ignored."""
    raw = verdict.get("onsets")
    out: Onsets = {}
    if not isinstance(raw, list):
        return out
    for item in raw:
        if (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                and isinstance(item[1], str) and isinstance(item[2], (int, float))
                and not isinstance(item[2], bool) and item[2] == item[2]):
            key = (item[0], item[1])
            out[key] = min(float(item[2]), out.get(key, float("inf")))
    return out


@dataclass(frozen=True, slots=True)
class SuspectRecord:
    """One suspect answer of an ISP as counted into its cells."""

    ts: float
    origin: str
    anomaly: str
    prefix: str
    port: int
    hour: int
    client: str
    event_id: str

    def to_json(self) -> list[Any]:
        return [self.ts, self.origin, self.anomaly, self.prefix, self.port, self.hour,
                self.client, self.event_id]

    @classmethod
    def from_json(cls, row: list[Any]) -> SuspectRecord:
        ts, origin, anomaly, prefix, port, hour, client, event_id = row
        return cls(float(ts), origin, anomaly, prefix, int(port), int(hour), client, event_id)


@dataclass(slots=True)
class Retractable:
    """Cell stage, one ISP: its suspect answers of the last ``keep_s`` (at most ``cap``,
    the oldest dropped first), that an onset named later may retract."""

    records: list[SuspectRecord] = field(default_factory=list)

    def add(self, record: SuspectRecord, keep_s: float, cap: int) -> None:
        self.prune(record.ts - keep_s)
        self.records.append(record)
        if len(self.records) > cap:
            del self.records[: len(self.records) - cap]

    def prune(self, horizon: float) -> None:
        """Forget the suspects older than ``horizon``."""
        recs = self.records
        if recs and recs[0].ts < horizon:
            self.records = [r for r in recs if r.ts >= horizon]

    def take(self, onsets: Onsets) -> list[SuspectRecord]:
        """Remove and return the suspects an onset of ``onsets`` covers: same origin and
        anomaly, at or after the onset."""
        if not self.records or not onsets:
            return []
        keep: list[SuspectRecord] = []
        taken: list[SuspectRecord] = []
        for r in self.records:
            onset = onsets.get((r.origin, r.anomaly))
            (taken if onset is not None and r.ts >= onset else keep).append(r)
        if taken:
            self.records = keep
        return taken

    def to_json(self) -> list[list[Any]]:
        return [r.to_json() for r in self.records]

    @classmethod
    def from_json(cls, rows: Iterable[list[Any]]) -> Retractable:
        return cls([SuspectRecord.from_json(r) for r in rows])


def covered(onsets: Onsets, origin: str, anomaly: str | None, ts: float) -> bool:
    """Whether an answer to ``origin`` showing ``anomaly`` at ``ts`` is within a failure
    that ``onsets`` name."""
    if anomaly is None or not onsets:
        return False
    onset = onsets.get((origin, anomaly))
    return onset is not None and ts >= onset
