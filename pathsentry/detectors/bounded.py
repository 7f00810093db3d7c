"""Bounded state shared by the detectors: an LRU map, memo caches, nested counts and the
book of versioned alerts.

:class:`BoundedLRU` evicts its least-recently-used key beyond a cap (and counts what it
evicted); :func:`count_in` keeps counts per key per item that leave no empty entry
behind; :class:`AlertBook` gives every alert subject a deterministic id and re-emits
the alert with ``version + 1`` as it grows, its records in a :class:`BoundedLRU`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from pathsentry.schemas import Alert, AlertKind, make_alert_id, severity_for

__all__ = ["MAX_ALERT_EVENTS", "AlertBook", "BoundedLRU", "count_in", "remember"]

K = TypeVar("K")
V = TypeVar("V")
I = TypeVar("I")  # noqa: E741

#: Event ids kept per alert (the most recent ones).
MAX_ALERT_EVENTS = 50


def count_in(table: dict[K, dict[I, int]], key: K, item: I, step: int) -> None:
    """Add ``step`` to ``table[key][item]``; a count that falls to 0 goes, and a key left
    with no item.

    >>> t: dict[str, dict[int, int]] = {}
    >>> count_in(t, "a", 1, 1); count_in(t, "a", 1, 1); count_in(t, "a", 1, -2); t
    {}
    """
    per = table.setdefault(key, {})
    left = per.get(item, 0) + step
    if left > 0:
        per[item] = left
    else:
        per.pop(item, None)
        if not per:
            del table[key]


def remember(cache: dict[K, V], key: K, value: V, cap: int) -> V:
    """Store ``value`` under ``key`` in a memo of derived values that is emptied whenever it
    holds ``cap`` entries: the cheapest bound there is (no recency bookkeeping per hit),
    for caches whose entries are recomputed at will.

    >>> memo: dict[str, int] = {}
    >>> remember(memo, "a", 1, cap=2), remember(memo, "b", 2, cap=2), remember(memo, "c", 3, cap=2)
    (1, 2, 3)
    >>> memo
    {'c': 3}
    """
    if len(cache) >= cap:
        cache.clear()
    cache[key] = value
    return value


class BoundedLRU(Generic[K, V]):
    """A mapping that evicts its least-recently-used key beyond ``cap`` entries.

    >>> lru: BoundedLRU[str, int] = BoundedLRU(2)
    >>> lru.put("a", 1); lru.put("b", 2); _ = lru.get("a"); lru.put("c", 3)
    >>> list(lru.keys()), lru.evicted
    (['a', 'c'], 1)
    """

    def __init__(self, cap: int) -> None:
        self.cap = max(1, int(cap))
        self.evicted = 0
        self._d: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._d.get(key)
        if value is not None:
            self._d.move_to_end(key)
        return value

    def peek(self, key: K) -> V | None:
        """Look up without refreshing the key's recency."""
        return self._d.get(key)

    def put(self, key: K, value: V) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.cap:
            self._d.popitem(last=False)
            self.evicted += 1

    def get_or_create(self, key: K, factory: Callable[[], V]) -> V:
        value = self.get(key)
        if value is None:
            value = factory()
            self.put(key, value)
        return value

    def keys(self) -> Iterator[K]:
        return iter(self._d.keys())

    def items(self) -> Iterator[tuple[K, V]]:
        """Coldest first, so reloading the items restores the recency order."""
        return iter(self._d.items())

    def clear(self) -> None:
        self._d.clear()

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: object) -> bool:
        return key in self._d


@dataclass(slots=True)
class _AlertRecord:
    alert_id: str
    first_seen: str
    version: int = 0
    score: float = 0.0
    event_ids: list[str] = field(default_factory=list)
    accounts: list[str] = field(default_factory=list)


class AlertBook:
    """Alerts with deterministic ids, re-emitted with ``version + 1`` as they grow.

    >>> from datetime import datetime, timezone
    >>> book = AlertBook("latency", "vpn_relay", cap=10)
    >>> t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    >>> a1 = book.update("acc:x", {"account": "x"}, t, 0.9, "e1", ["x"], {}, "first")
    >>> a2 = book.update("acc:x", {"account": "x"}, t, 0.7, "e2", ["x"], {}, "second")
    >>> a1.alert_id == a2.alert_id, a2.version, a2.score, a2.event_ids
    (True, 2, 0.9, ['e1', 'e2'])
    """

    def __init__(self, detector: str, kind: AlertKind, cap: int) -> None:
        self.detector = detector
        self.kind: AlertKind = kind
        self._records: BoundedLRU[str, _AlertRecord] = BoundedLRU(cap)

    def alert_id(self, subject_key: str) -> str:
        return make_alert_id(self.detector, self.kind, subject_key)

    def known(self, subject_key: str) -> bool:
        return subject_key in self._records

    def update(
        self,
        subject_key: str,
        subject: dict[str, Any],
        ts: datetime,
        score: float,
        event_id: str,
        accounts: list[str],
        evidence: dict[str, Any],
        summary: str,
    ) -> Alert:
        rec = self._records.get_or_create(
            subject_key, lambda: _AlertRecord(self.alert_id(subject_key), ts.isoformat())
        )
        rec.version += 1
        rec.score = max(rec.score, score)
        if event_id not in rec.event_ids:
            rec.event_ids = [*rec.event_ids, event_id][-MAX_ALERT_EVENTS:]
        for acc in accounts:
            if acc not in rec.accounts:
                rec.accounts = [*rec.accounts, acc][-MAX_ALERT_EVENTS:]
        return Alert(
            alert_id=rec.alert_id,
            ts=ts,
            kind=self.kind,
            severity=severity_for(rec.score),
            score=round(rec.score, 4),
            subject=subject,
            accounts=list(rec.accounts),
            event_ids=list(rec.event_ids),
            evidence=evidence,
            summary=summary,
            detector=self.detector,
            first_seen=datetime.fromisoformat(rec.first_seen),
            last_seen=ts,
            version=rec.version,
        )

    def state(self) -> list[dict[str, Any]]:
        return [{"key": k, **asdict(r)} for k, r in self._records.items()]

    def load_state(self, rows: list[dict[str, Any]]) -> None:
        self._records.clear()
        for row in rows:  # the rows are not changed: a trial load may read them first
            self._records.put(row["key"], _AlertRecord(**{k: v for k, v in row.items() if k != "key"}))
