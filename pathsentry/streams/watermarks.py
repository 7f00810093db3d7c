"""Watermarks across the repartition topics: event order that does not depend on
which worker is ahead.

Each internal topic partition is written by several upstream workers, each at its
own pace: after a rebalance, a restart or a backlog, one worker's output can be
minutes (of event time) ahead of another's. A stage that simply processed
messages as they arrive would see a farm's logins from one worker, then its
other members' logins after the window had closed.

So every upstream writer *claims*, with each message it writes (a Kafka header),
how far each of its sources has been forwarded: "from source S, everything with a
produce time up to T has been sent". Sources are stable names -- the producers'
topic partitions (``logins:0`` …) for the ingest loop, the session partitions
(``s:0`` …) for the session stage -- so a claim keeps its meaning when a source
moves to another worker. A stage holds what it receives in a :class:`Gate` and
releases it in produce-time order once every source has claimed past it, on every
input partition it owns. A source that is silent (its owner is being replaced)
holds the stage back for at most ``max_hold_s``; past that, or past ``max_items``
held, the oldest items are released anyway and the stall is logged.

Claims are sent on every message, and as empty envelopes to partitions a batch did
not otherwise write to. A writer with nothing to send (its sources caught up)
marks them *idle* instead of claiming the passing time: an idle source does not
hold anything back until it claims again, so a quiet producer partition costs no
latency. Idle marks are repeated every few seconds, so a stage that has just
taken over a partition learns them.

>>> g: Gate[str] = Gate(max_hold_s=30)
>>> g.expect({"a", "b"})
>>> g.add(0, [(10, "x@10"), (30, "x@30")], {"a": 30}, now=0.0)
>>> g.add(0, [(20, "y@20")], {"b": 20}, now=0.0)
>>> g.release([0], now=0.0)  # both sources are past 20, only "a" is past 30
['x@10', 'y@20']
>>> g.add(0, [], {"b": 40}, now=0.1)
>>> g.release([0], now=0.1), g.released_to
(['x@30'], 30)
>>> g.add(0, [(50, "x@50")], {"a": 50}, now=0.2)
>>> g.release([0], now=0.2)  # "b" has claimed only 40
[]
>>> g.add(0, [], {"b": 40}, now=0.3, idle={"b"})  # "b" has nothing more to send
>>> g.release([0], now=0.3), g.idle([0])
(['x@50'], False)
>>> g.add(0, [], {"a": 50}, now=0.4, idle={"a"})
>>> g.idle([0])
True
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import operator
from collections.abc import Hashable, Iterable, Mapping
from typing import Generic, TypeVar

import orjson

__all__ = ["HEADER", "Gate", "decode_claims", "encode_claims"]

log = logging.getLogger(__name__)

#: Kafka header carrying a writer's claims (JSON object: source -> produce time in ms).
HEADER = "pathsentry-wm"

T = TypeVar("T")


#: sort keys of a held entry: its produce time, then (produce time, arrival seq). Entries
#: are also sorted as plain tuples: the arrival seq is unique, so the item is never compared.
_time = operator.itemgetter(0)
_order = operator.itemgetter(0, 1)


def encode_claims(claims: Mapping[str, int], idle: Iterable[str] = ()) -> list[tuple[str, bytes]]:
    """Kafka headers for ``claims`` (and the sources among them that are idle)."""
    body: dict[str, object] = {"c": dict(claims)}
    idle = sorted(idle)
    if idle:
        body["i"] = idle
    return [(HEADER, orjson.dumps(body))]


def decode_claims(
    headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None,
) -> tuple[dict[str, int], set[str]]:
    """(claims, idle sources) from a message's headers (empty if none or unreadable).

    >>> decode_claims(encode_claims({"logins:0": 1700000000000}, idle=["logins:0"]))
    ({'logins:0': 1700000000000}, {'logins:0'})
    >>> decode_claims([("pathsentry-wm", b"not json")]), decode_claims(None)
    (({}, set()), ({}, set()))
    """
    if not headers:
        return {}, set()
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for k, v in pairs:
        if k != HEADER:
            continue
        try:
            got = orjson.loads(v)
        except orjson.JSONDecodeError:
            return {}, set()
        if not isinstance(got, dict) or not isinstance(got.get("c"), dict):
            return {}, set()
        claims = {str(s): int(t) for s, t in got["c"].items() if isinstance(t, int | float)}
        idle = got.get("i")
        return claims, {str(x) for x in idle} & claims.keys() if isinstance(idle, list) else set()
    return {}, set()


class Gate(Generic[T]):
    """Items of a stage's input partitions, released in order behind the watermark."""

    def __init__(self, max_hold_s: float = 30.0, max_items: int = 500_000) -> None:
        self.max_hold_s = max_hold_s
        self.max_items = max_items
        self.sources: frozenset[str] = frozenset()
        self._claims: dict[Hashable, dict[str, int]] = {}
        self._idle: dict[Hashable, set[str]] = {}
        # per input partition: (produce time, arrival seq, arrival wall time, item), sorted
        # lazily (a batch that starts before what is held marks the partition for a sort at
        # the next release; batches mostly arrive in order, and then none is needed)
        self._held: dict[Hashable, list[tuple[int, int, float, T]]] = {}
        self._unsorted: set[Hashable] = set()
        self._seq = itertools.count()
        self._n = 0
        #: everything up to this produce time has been released (what this stage may claim)
        self.released_to = -1
        self.forced = 0
        self._stalled_since: float | None = None

    def expect(self, sources: Iterable[str]) -> None:
        """The sources every input partition must hear from (all upstream partitions)."""
        self.sources = frozenset(sources)

    def add(self, partition: Hashable, items: Iterable[tuple[int, T]], claims: Mapping[str, int],
            now: float, idle: Iterable[str] = ()) -> None:
        """Hold ``items`` (produce time, item) received on ``partition`` with ``claims``;
        sources in ``idle`` have nothing more to send until they claim again."""
        seen = self._claims.setdefault(partition, {})
        quiet = self._idle.setdefault(partition, set())
        for source, t in claims.items():
            if t > seen.get(source, -1):
                seen[source] = t
        quiet.difference_update(claims)
        quiet.update(idle)
        seq = self._seq
        entries = [(t, next(seq), now, item) for t, item in items]
        if not entries:
            return
        entries.sort()
        held = self._held.setdefault(partition, [])
        if held and entries[0][0] < held[-1][0]:
            self._unsorted.add(partition)  # sorted at the next release
        held += entries
        self._n += len(entries)

    def watermark(self, partition: Hashable) -> int:
        """Produce time up to which every active source has claimed on ``partition``
        (-1: none yet); with every source idle, the newest claim."""
        seen = self._claims.get(partition)
        if not seen:
            return -1
        quiet = self._idle.get(partition, set())
        sources = self.sources or seen.keys()
        active = [seen.get(s, -1) for s in sources if s not in quiet]
        return min(active) if active else max(seen.values())

    def idle(self, partitions: Iterable[Hashable]) -> bool:
        """Nothing held and every source idle on every one of ``partitions``."""
        if self._n:
            return False
        for p in partitions:
            seen, quiet = self._claims.get(p), self._idle.get(p, set())
            if not seen or any(s not in quiet for s in (self.sources or seen.keys())):
                return False
        return True

    def _sorted(self, partition: Hashable) -> list[tuple[int, int, float, T]]:
        held = self._held.get(partition)
        if held is None:
            return []
        if partition in self._unsorted:
            held.sort()
            self._unsorted.discard(partition)
        return held

    def release(self, partitions: Iterable[Hashable], now: float, limit: int | None = None) -> list[T]:
        """Items safe to process, in produce-time order across ``partitions`` (the input
        partitions this worker owns); at most ``limit`` of them (call again for more)."""
        owned = [p for p in partitions]
        if not owned:
            return []
        bound = min(self.watermark(p) for p in owned)
        # everything up to the watermark, in order across the partitions
        ready: dict[Hashable, int] = {}
        merged: list[tuple[int, int, float, T]] = []
        for p in owned:
            held = self._sorted(p)
            cut = bisect.bisect_right(held, bound, key=_time) if held else 0
            if limit is not None:
                cut = min(cut, limit + 1)  # enough to find the first ``limit`` and the next
            if cut:
                ready[p] = cut
                merged += held[:cut]
        if len(ready) > 1:
            merged.sort()
        if limit is not None and len(merged) > limit:
            # stopped short: only what is strictly older than the next item is complete
            last, following = merged[limit - 1], merged[limit][0]
            for p, cut in ready.items():
                self._take(p, bisect.bisect_right(self._held[p], _order(last), hi=cut, key=_order))
            self.released_to = max(self.released_to, min(bound, following - 1))
            self._note_stall(bound, -1, now)
            return [e[3] for e in merged[:limit]]
        for p, cut in ready.items():
            self._take(p, cut)
        out = [e[3] for e in merged]
        forced_to = self._force(owned, bound, now, out, limit)
        self._note_stall(bound, forced_to, now)
        return out

    def _take(self, partition: Hashable, n: int) -> None:
        if n:
            del self._held[partition][:n]
            self._n -= n

    def _force(self, owned: list[Hashable], bound: int, now: float, out: list[T],
               limit: int | None) -> int:
        """Release, in order, items past the watermark that waited ``max_hold_s`` (or all
        the oldest while more than ``max_items`` are held); returns the newest forced time."""
        heads = [(h[0][0], h[0][1], p) for p in owned if (h := self._held.get(p))]
        heapq.heapify(heads)
        taken: dict[Hashable, int] = {}
        held_n = self._n
        forced_to = -1
        released_to = None
        while heads:
            t, _, p = heads[0]
            held, i = self._held[p], taken.get(p, 0)
            if limit is not None and len(out) >= limit:
                released_to = max(self.released_to, min(bound, t - 1))
                break
            if now - held[i][2] < self.max_hold_s and held_n <= self.max_items:
                break
            forced_to = max(forced_to, t)
            self.forced += 1
            out.append(held[i][3])
            held_n -= 1
            taken[p] = i = i + 1
            if i < len(held):
                heapq.heapreplace(heads, (held[i][0], held[i][1], p))
            else:
                heapq.heappop(heads)
        for p, n in taken.items():  # one cut per partition, not one per item
            self._take(p, n)
        self.released_to = (max(self.released_to, bound, forced_to) if released_to is None
                            else released_to)
        return forced_to

    def _note_stall(self, bound: int, forced_to: int, now: float) -> None:
        if forced_to > bound:
            if self._stalled_since is None:
                self._stalled_since = now
                silent = sorted(s for s in self.sources if all(
                    c.get(s, -1) < forced_to for c in self._claims.values()))[:8]
                log.warning(
                    "watermark stalled (sources not heard from: %s); releasing items held "
                    "over %.0f s or beyond %d, out of order", ", ".join(silent) or "?",
                    self.max_hold_s, self.max_items,
                )
        elif self._stalled_since is not None:
            log.warning("watermark moves again after %.1f s", now - self._stalled_since)
            self._stalled_since = None

    def drop(self) -> int:
        """Forget everything held (a rebalance: the input is re-read from the committed
        offsets, which never cover held items). Returns how many items were dropped."""
        n = self._n
        self._held.clear()
        self._unsorted.clear()
        self._claims.clear()
        self._idle.clear()
        self._n = 0
        self.released_to = -1
        return n

    def __len__(self) -> int:
        return self._n
