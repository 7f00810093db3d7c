"""The detector interface: pure Python, no Kafka, no ClickHouse.

A detector gets enriched events and returns :class:`Findings` (flagged events and
alerts). Detectors run in two stages so that the same code scales out:

- ``stage = "session"``: state keyed by session / account / prefix. In the stream,
  events reach it partitioned by session id.
- ``stage = "group"``: state shared by many accounts (a farm group, an injection
  cell). :meth:`Detector.group_keys` names the partition keys an event must reach;
  the stream repartitions by each key and calls :meth:`Detector.process` once per
  key, and a replay does exactly the same in-process.

Earlier detectors annotate ``Enriched.notes`` (e.g. the route detector stores the
route signature), which later detectors read; notes travel with the event when the
stream repartitions it, so they must stay JSON-serialisable.

>>> from pathsentry.config import load_config
>>> from pathsentry.enrich.geo import GeoResolver
>>> class Echo(Detector):
...     name = "echo"
...     consumes = frozenset({"login"})
...     def process(self, ev, key=None):
...         return Findings()
>>> det = Echo(DetectorContext(load_config(text="", env={}), GeoResolver([])))
>>> det.wants("login"), det.wants("traceroute")
(True, False)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from pathsentry.config import AllowEntry, Config, Server
from pathsentry.enrich.geo import GeoInfo, GeoResolver
from pathsentry.schemas import Alert, AnyEvent, FlaggedEvent

__all__ = ["Detector", "DetectorContext", "Enriched", "Findings", "SessionTable", "Stage", "drop_parts",
           "split_by_part"]

Stage = Literal["session", "group"]


@dataclass(slots=True)
class DetectorContext:
    """What every detector is built with: the configuration and the geo resolver."""

    config: Config
    geo: GeoResolver

    def settings(self, name: str) -> dict[str, Any]:
        return self.config.detector_settings(name)


@dataclass(slots=True, init=False)
class Enriched:
    """An event plus what enrichment and earlier detectors learned about it.

    One is built per event: its ``__init__`` is written out (no default factory, no
    ``__post_init__`` call), about a tenth less than the generated one."""

    event: AnyEvent
    geo: GeoInfo
    prefix: str
    server: Server | None
    allowed: AllowEntry | None
    notes: dict[str, Any]
    #: event time as epoch seconds (computed once: every detector reads it)
    ts: float

    def __init__(self, event: AnyEvent, geo: GeoInfo, prefix: str, server: Server | None = None,
                 allowed: AllowEntry | None = None, notes: dict[str, Any] | None = None) -> None:
        self.event = event
        self.geo = geo
        self.prefix = prefix
        self.server = server
        self.allowed = allowed
        self.notes = {} if notes is None else notes
        self.ts = event.ts.timestamp()

    @property
    def kind(self) -> str:
        return self.event.kind

    @property
    def account(self) -> str | None:
        acc = getattr(self.event, "account", None)
        return acc if acc is not None else self.notes.get("account")


@dataclass(slots=True)
class Findings:
    """Output of one detector call."""

    flags: list[FlaggedEvent] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)

    def extend(self, other: Findings | None) -> None:
        if other is not None:
            self.flags.extend(other.flags)
            self.alerts.extend(other.alerts)

    def __bool__(self) -> bool:
        return bool(self.flags or self.alerts)


class Detector(ABC):
    """Base class: one subclass per detector module."""

    name: ClassVar[str]
    consumes: ClassVar[frozenset[str]]
    stage: ClassVar[Stage] = "session"
    #: detectors of the same stage whose notes this one reads: it runs after them
    after: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: DetectorContext) -> None:
        self.ctx = ctx

    def wants(self, kind: str) -> bool:
        return kind in self.consumes

    def group_keys(self, ev: Enriched) -> Iterable[str]:
        """Partition keys for a group-stage detector (ignored for session stage)."""
        return ()

    @abstractmethod
    def process(self, ev: Enriched, key: str | None = None) -> Findings | None:
        """Handle one event (for group detectors: once per group key)."""

    def flush(self, now: float) -> Findings | None:
        """Called at end of input / on idle ticks with the latest event time."""
        return None

    def finish(self, now: float) -> Findings | None:
        """The end of a bounded input whose last event time is ``now`` (a replay): fire
        what only a later event's time would, by the same rules as in a live stream,
        whose later events move the clock (:meth:`~pathsentry.engine.Engine.finish`,
        the final watermark). Called after :meth:`flush` at ``now``; detectors that
        hold no judgement back keep this no-op."""
        return None

    def state(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot of the detector's state (for restarts)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore :meth:`state` output (stateless detectors keep this no-op)."""

    def session_state(self, part_of: Callable[[str], int], parts: Collection[int]) -> dict[int, Any]:
        """The state of the sessions in progress, split by the partition ``part_of`` gives
        each session id, for the partitions ``parts`` (each one's share moves with its
        partition of the sessions topic). What is not per session (baselines, a model,
        account history) stays out. Detectors that keep no sessions return ``{}``."""
        return {}

    def load_sessions(self, state: Any) -> None:  # noqa: B027 - optional hook
        """Add the sessions of one partition's :meth:`session_state` share."""

    def drop_sessions(self, part_of: Callable[[str], int], parts: Collection[int]) -> int:
        """Forget the sessions of ``parts`` (their partition moved away); how many."""
        return 0

    def learned_state(self) -> dict[str, Any]:
        """What the detector learned from all the traffic it saw that is not per session
        (baselines, a model, account history): another worker's warm start. ``{}`` when
        it learns nothing."""
        return {}

    def load_learned(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Fill in, from another worker's :meth:`learned_state`, what this detector has
        not learned itself (nothing it knows is overwritten)."""


V = TypeVar("V")


class SessionTable(Detector):
    """A :class:`Detector` whose sessions in progress live in one table keyed by session
    id: the session-partition hooks, given the table and how one session is written
    (:meth:`_session_row`) and read back (:meth:`_load_session_row`). It derives from
    :class:`Detector` (not a mixin beside it) so that the compiled build, whose classes
    take a single chain of non-trait bases, and the pure one resolve the same methods."""

    def _session_table(self) -> MutableMapping[str, Any]:
        raise NotImplementedError

    def _session_row(self, sid: str, sess: Any) -> Any:
        raise NotImplementedError

    def _load_session_row(self, row: Any) -> None:
        raise NotImplementedError

    def session_state(self, part_of: Callable[[str], int], parts: Collection[int]) -> dict[int, Any]:
        return {p: {"version": 1, "sessions": [self._session_row(sid, sess) for sid, sess in rows]}
                for p, rows in split_by_part(self._session_table().items(), part_of, parts).items()}

    def load_sessions(self, state: Any) -> None:
        if isinstance(state, dict) and state.get("version") == 1:
            for row in state.get("sessions", []):
                self._load_session_row(row)

    def drop_sessions(self, part_of: Callable[[str], int], parts: Collection[int]) -> int:
        return drop_parts(self._session_table(), part_of, parts)


def split_by_part(items: Iterable[tuple[str, V]], part_of: Callable[[str], int],
                  parts: Collection[int]) -> dict[int, list[tuple[str, V]]]:
    """The ``(key, value)`` items whose key ``part_of`` puts in one of ``parts``, by part
    (every one of ``parts`` is present, if only empty).

    >>> split_by_part([("a", 1), ("bb", 2), ("c", 3)], len, [1, 3])
    {1: [('a', 1), ('c', 3)], 3: []}
    """
    out: dict[int, list[tuple[str, V]]] = {p: [] for p in parts}
    for key, value in items:
        rows = out.get(part_of(key))
        if rows is not None:
            rows.append((key, value))
    return out


def drop_parts(table: MutableMapping[str, Any], part_of: Callable[[str], int],
               parts: Collection[int]) -> int:
    """Delete the keys of ``table`` that ``part_of`` puts in one of ``parts``; how many.

    >>> t = {"a": 1, "bb": 2, "c": 3}
    >>> drop_parts(t, len, {1}), t
    (2, {'bb': 2})
    """
    gone = [k for k in table if part_of(k) in parts]
    for k in gone:
        del table[k]
    return len(gone)
