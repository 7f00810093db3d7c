"""One room, one alert: the ``farm_group`` alerts of different partitions that share accounts.

A room's accounts reach several partitions of the group stage -- each exit /24's
``net:``, its route's ``route:``, its hopping machines' ``hop:``, its name family's
``tpl:`` -- and the stream spreads those partitions over workers, so one room can be
found as several groups, each the share of it one partition saw (a room whose
machines each keep to one proxy address: one group per /24, and its route's group
holding accounts of several of them). Owns :class:`RoomMerger`, which sees every
``farm_group`` alert the group stage emits (in the stream, one place downstream of
every group partition) and raises one alert for the room they are parts of.

The rule: two alerts are parts of one room when they share at least
``room_min_shared`` accounts (3) and those are at least ``room_min_share`` (0.25) of
the smaller alert's accounts; parts join transitively. A room alert is raised only when
it holds accounts beyond its largest part (a part inside another adds nothing to read),
and once raised follows its parts. An alert's accounts are those
one partition judged members of one room, so three of them in a second partition's
group are that room again: a household's pair wrongly taken into a room, or two
friends in two rooms, share one or two; the share keeps a large alert from collecting
unrelated smaller ones through a few stray accounts. Parts that share nothing are not
joined, however close their timing: a tie by time alone would merge unrelated rooms
whose bursts meet.

The room alert (``farm_group``; ``subject.key`` ``room``): its id is derived from the
room's first part (``make_alert_id(detector, "farm_group", "room|<first part's id>")``),
``subject.parts`` lists its parts' alert ids (``subject.rooms_absorbed`` the rooms it took
in), and it is re-emitted with ``version + 1`` whenever a part joins or a part's accounts grow; its
accounts are the parts' union; its evidence lists each part (partition, pattern,
template, accounts, time span, median app RTT and range, route) and the accounts each
pair of parts shares, beside the rule's thresholds, the room's RTT range over every
part and its time span. Its score is the largest of its parts' detector scores (before
any cross-check: the engine cross-checks the room alert itself). The parts keep their
own alerts (each names the share of the room its partition saw); a room absorbed into
an older one keeps its last version, and the older lists its parts. Room alerts are
never parts (no loop).

Bounds: a part is forgotten ``group_ttl_s`` after its last login (event time), and at
most ``room_max_parts`` parts are kept (least recently updated dropped first); a room
keeps at most ``max_group_members`` accounts. Per alert: one look-up per account.

>>> from datetime import datetime, timezone
>>> from pathsentry.schemas import Alert
>>> t = datetime(2026, 1, 1, tzinfo=timezone.utc)
>>> def part(i, accts):
...     return Alert(alert_id=i, ts=t, kind="farm_group", severity="high", score=0.8,
...                  subject={"key": f"net:{i}", "pattern": "p"}, accounts=accts,
...                  evidence={}, detector="farm", first_seen=t, last_seen=t)
>>> rooms = RoomMerger(FarmSettings(), "farm")
>>> rooms.observe(part("a", ["m1", "m2", "m3", "m4", "m5"]))
[]
>>> [(r.subject["parts"], len(r.accounts)) for r in rooms.observe(part("b", ["m3", "m4", "m5", "m6", "m7"]))]
[(['a', 'b'], 7)]
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

from pathsentry.detectors.farm.model import FarmSettings, _utc
from pathsentry.detectors.farm.saved import check_room_state
from pathsentry.schemas import Alert, make_alert_id, severity_for

__all__ = ["ROOM", "RoomMerger"]

#: ``subject.key`` of a room alert
ROOM = "room"


@dataclass(slots=True)
class Part:
    """What a room keeps of one ``farm_group`` alert (its latest version)."""

    alert_id: str
    partition: str
    pattern: str
    template: str | None
    accounts: frozenset[str]
    event_ids: tuple[str, ...]
    first_seen: float
    last_seen: float
    score: float
    version: int
    median_rtt_ms: float | None
    rtt_range_ms: tuple[float, float] | None
    route: str | None
    #: anchor of the room it belongs to (None: alone)
    room: str | None = None


@dataclass(slots=True)
class Room:
    """Parts found to be one room; ``anchor`` is its first part's alert id."""

    anchor: str
    parts: list[str] = field(default_factory=list)
    version: int = 0
    #: anchors of the rooms it absorbed (their alerts keep their last version)
    absorbed: list[str] = field(default_factory=list)
    #: accounts and parts at the last emission (a room re-emits only when they change)
    emitted: frozenset[str] = frozenset()
    emitted_parts: int = 0


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _part(a: Alert) -> Part:
    ev = a.evidence
    got = ev.get("origin")
    origin: dict[str, Any] = got if isinstance(got, dict) else {}
    rng = origin.get("app_rtt_range_ms")
    lo, hi = (_num(rng[0]), _num(rng[1])) if isinstance(rng, list) and len(rng) == 2 else (None, None)
    cc = ev.get("crosscheck")
    score = a.score
    if isinstance(cc, dict) and isinstance(cc.get("score"), dict):
        detector = _num(cc["score"].get("detector"))
        score = a.score if detector is None else detector
    route = ev.get("route")
    return Part(
        alert_id=a.alert_id,
        partition=str(a.subject.get("key") or ""),
        pattern=str(a.subject.get("pattern") or ""),
        template=a.subject.get("template") if isinstance(a.subject.get("template"), str) else None,
        accounts=frozenset(a.accounts),
        event_ids=tuple(a.event_ids),
        first_seen=a.first_seen.timestamp(),
        last_seen=a.last_seen.timestamp(),
        score=min(1.0, max(0.0, score)),
        version=a.version,
        median_rtt_ms=_num(origin.get("median_app_rtt_ms")),
        rtt_range_ms=(lo, hi) if lo is not None and hi is not None else None,
        route=route if isinstance(route, str) else None,
    )


class RoomMerger:
    """Joins ``farm_group`` alerts that share accounts into one room alert each."""

    def __init__(self, settings: FarmSettings, detector: str) -> None:
        self.settings = settings
        self.detector = detector
        #: alert id -> part, least recently updated first
        self.parts: OrderedDict[str, Part] = OrderedDict()
        #: account -> ids of the parts holding it
        self.index: dict[str, set[str]] = {}
        #: anchor -> room
        self.rooms: dict[str, Room] = {}
        #: newest event time seen (a part's last login)
        self.now = 0.0
        #: parts taken so far (a save with none since the last one can be skipped)
        self.taken = 0

    # -- parts -------------------------------------------------------------------

    def observe(self, a: Alert) -> list[Alert]:
        """Take one alert (any kind; only a partition's ``farm_group`` counts); the room
        alerts it raises or re-versions."""
        if a.kind != "farm_group" or a.subject.get("key") == ROOM:
            return []
        p = _part(a)
        old = self.parts.pop(p.alert_id, None)
        if old is not None:
            if old.version > p.version:  # a late, older version: keep the newer
                self.parts[old.alert_id] = old
                return []
            p.room = old.room
            self._unindex(old)
        self.parts[p.alert_id] = p
        self.taken += 1
        for acct in p.accounts:
            self.index.setdefault(acct, set()).add(p.alert_id)
        self.now = max(self.now, p.last_seen)
        self._evict()
        linked = self._linked(p)
        if not linked and p.room is None:
            return []
        room = self._join([p, *linked])
        out = self._emit(room)
        return [out] if out is not None else []

    def _linked(self, p: Part) -> list[Part]:
        """The other parts sharing enough of ``p``'s accounts (the module's rule)."""
        shared: Counter[str] = Counter()
        for acct in p.accounts:
            for other in self.index.get(acct, ()):
                if other != p.alert_id:
                    shared[other] += 1
        s = self.settings
        out = []
        for other, n in shared.items():
            q = self.parts[other]
            if n >= s.room_min_shared and n >= s.room_min_share * min(len(p.accounts), len(q.accounts)):
                out.append(q)
        return out

    def _join(self, ps: list[Part]) -> Room:
        """The room of ``ps``: the oldest of their rooms takes the others' parts."""
        rooms = [self.rooms[a] for a in dict.fromkeys(x.room for x in ps if x.room is not None)
                 if a in self.rooms]
        if rooms:
            keep = min(rooms, key=lambda r: (self._first(r), r.anchor))
        else:
            first = min(ps, key=lambda x: (x.first_seen, x.alert_id))
            keep = self.rooms[first.alert_id] = Room(anchor=first.alert_id)
        for r in rooms:
            if r is keep:
                continue
            del self.rooms[r.anchor]
            keep.absorbed.extend(x for x in [r.anchor, *r.absorbed] if x not in keep.absorbed)
            for pid in r.parts:
                if pid in self.parts:
                    self._add(keep, self.parts[pid])
        for x in ps:
            self._add(keep, x)
        return keep

    def _add(self, room: Room, p: Part) -> None:
        p.room = room.anchor
        if p.alert_id not in room.parts:
            room.parts.append(p.alert_id)

    def _first(self, room: Room) -> float:
        return min((self.parts[x].first_seen for x in room.parts if x in self.parts), default=0.0)

    def _unindex(self, p: Part) -> None:
        for acct in p.accounts:
            ids = self.index.get(acct)
            if ids is not None:
                ids.discard(p.alert_id)
                if not ids:
                    del self.index[acct]

    def _evict(self) -> None:
        horizon = self.now - self.settings.group_ttl_s
        while self.parts:
            pid, p = next(iter(self.parts.items()))
            if p.last_seen >= horizon and len(self.parts) <= self.settings.room_max_parts:
                break
            del self.parts[pid]
            self._unindex(p)
            room = self.rooms.get(p.room) if p.room is not None else None
            if room is not None:
                room.parts = [x for x in room.parts if x != pid]
                if not room.parts:
                    del self.rooms[room.anchor]

    # -- the room alert ------------------------------------------------------------

    def room_id(self, anchor: str) -> str:
        """The alert id of the room whose first part is ``anchor``."""
        return make_alert_id(self.detector, "farm_group", f"{ROOM}|{anchor}")

    def _emit(self, room: Room) -> Alert | None:
        ps = sorted((self.parts[x] for x in room.parts if x in self.parts),
                    key=lambda x: (x.first_seen, x.alert_id))
        if len(ps) < 2:
            return None
        accts: set[str] = set()
        for x in ps:
            accts |= x.accounts
        if len(accts) > self.settings.max_group_members:
            accts = set(sorted(accts)[: self.settings.max_group_members])
        if frozenset(accts) == room.emitted and len(ps) == room.emitted_parts:
            return None
        if not room.version and max(len(x.accounts) for x in ps) >= len(accts):
            return None  # one part holds them all: its own alert says as much
        room.version += 1
        room.emitted, room.emitted_parts = frozenset(accts), len(ps)
        return self._alert(room, ps, sorted(accts))

    def _alert(self, room: Room, ps: list[Part], accts: list[str]) -> Alert:
        k = self.settings.max_evidence_items
        s = self.settings
        first, last = min(x.first_seen for x in ps), max(x.last_seen for x in ps)
        lows = [x.rtt_range_ms[0] for x in ps if x.rtt_range_ms]
        highs = [x.rtt_range_ms[1] for x in ps if x.rtt_range_ms]
        routes = Counter([x.route for x in ps if x.route])
        templates = Counter([x.template for x in ps if x.template])
        shared = [
            {"parts": [a.alert_id, b.alert_id], "accounts": len(a.accounts & b.accounts)}
            for i, a in enumerate(ps) for b in ps[i + 1:] if a.accounts & b.accounts
        ]
        score = max(x.score for x in ps)
        rid = self.room_id(room.anchor)
        evidence: dict[str, Any] = {
            "room": {
                "parts": [
                    {"alert_id": x.alert_id, "partition": x.partition, "pattern": x.pattern,
                     "template": x.template, "accounts": len(x.accounts), "version": x.version,
                     "first_seen": _utc(x.first_seen).isoformat(),
                     "last_seen": _utc(x.last_seen).isoformat(),
                     "median_app_rtt_ms": x.median_rtt_ms,
                     "app_rtt_range_ms": list(x.rtt_range_ms) if x.rtt_range_ms else None,
                     "route": x.route}
                    for x in ps[:k]
                ],
                "part_count": len(ps),
                "shared_accounts": shared[:k],
                "rule": {"min_shared_accounts": s.room_min_shared,
                         "min_shared_share_of_smaller": s.room_min_share},
            },
            "first_seen": _utc(first).isoformat(),
            "last_seen": _utc(last).isoformat(),
            "timing": {"span_s": round(last - first, 1)},
            "app_rtt_range_ms": [min(lows), max(highs)] if lows and highs else None,
            "route": routes.most_common(1)[0][0] if routes else None,
            "template": templates.most_common(1)[0][0] if templates else None,
        }
        kinds = sorted({x.partition.partition(":")[0] for x in ps})
        where = evidence["route"] or ", ".join(x.partition for x in ps[:3])
        summary = (f"{len(accts)} accounts of one room, found as {len(ps)} groups "
                   f"({'/'.join(kinds)} partitions) that share accounts, within "
                   f"{(last - first) / 60:.0f} min via {where}")
        event_ids: list[str] = []
        for x in ps:
            event_ids.extend(x.event_ids)
        return Alert(
            alert_id=rid,
            ts=_utc(last),
            kind="farm_group",
            severity=severity_for(score),
            score=score,
            subject={"group_id": rid, "key": ROOM, "pattern": ROOM,
                     "template": evidence["template"], "parts": [x.alert_id for x in ps],
                     "rooms_absorbed": [self.room_id(a) for a in room.absorbed]},
            accounts=accts,
            event_ids=list(dict.fromkeys(event_ids))[: s.max_group_members],
            evidence=evidence,
            summary=summary,
            detector=self.detector,
            first_seen=_utc(first),
            last_seen=_utc(last),
            version=room.version,
        )

    # -- state ---------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "now": self.now,
            "parts": [
                {"alert_id": p.alert_id, "partition": p.partition, "pattern": p.pattern,
                 "template": p.template, "accounts": sorted(p.accounts),
                 "event_ids": list(p.event_ids), "first_seen": p.first_seen,
                 "last_seen": p.last_seen, "score": p.score, "version": p.version,
                 "median_rtt_ms": p.median_rtt_ms,
                 "rtt_range_ms": list(p.rtt_range_ms) if p.rtt_range_ms else None,
                 "route": p.route, "room": p.room}
                for p in self.parts.values()
            ],
            "rooms": [
                {"anchor": r.anchor, "parts": list(r.parts), "version": r.version,
                 "absorbed": list(r.absorbed),
                 "emitted": sorted(r.emitted), "emitted_parts": r.emitted_parts}
                for r in self.rooms.values()
            ],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` (refused whole, before any change, when not as saved:
        :func:`~pathsentry.detectors.farm.saved.check_room_state`)."""
        check_room_state(state)
        parts: OrderedDict[str, Part] = OrderedDict()
        for d in state.get("parts", []):
            rng = d.get("rtt_range_ms")
            parts[d["alert_id"]] = Part(
                alert_id=d["alert_id"], partition=d["partition"], pattern=d["pattern"],
                template=d.get("template"), accounts=frozenset(d["accounts"]),
                event_ids=tuple(d["event_ids"]), first_seen=d["first_seen"],
                last_seen=d["last_seen"], score=d["score"], version=d["version"],
                median_rtt_ms=d.get("median_rtt_ms"),
                rtt_range_ms=(rng[0], rng[1]) if rng else None, route=d.get("route"),
                room=d.get("room"))
        rooms = {}
        for d in state.get("rooms", []):
            kept = [x for x in d["parts"] if x in parts]
            if kept:
                rooms[d["anchor"]] = Room(anchor=d["anchor"], parts=kept, version=d["version"],
                                          absorbed=list(d["absorbed"]),
                                          emitted=frozenset(d["emitted"]),
                                          emitted_parts=d["emitted_parts"])
        for p in parts.values():  # a part names a room that holds it, or none
            if p.room is not None and (p.room not in rooms or p.alert_id not in rooms[p.room].parts):
                p.room = None
        self.parts, self.rooms = parts, rooms
        self.index = {}
        for p in parts.values():
            for acct in p.accounts:
                self.index.setdefault(acct, set()).add(p.alert_id)
        self.now = max(self.now, float(state.get("now") or 0.0))
