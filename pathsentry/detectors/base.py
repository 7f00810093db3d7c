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
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pathsentry.config import AllowEntry, Config, Server
from pathsentry.enrich.geo import GeoInfo, GeoResolver
from pathsentry.schemas import Alert, AnyEvent, FlaggedEvent

__all__ = ["Detector", "DetectorContext", "Enriched", "Findings", "Stage"]

Stage = Literal["session", "group"]


@dataclass(slots=True)
class DetectorContext:
    """What every detector is built with: the configuration and the geo resolver."""

    config: Config
    geo: GeoResolver

    def settings(self, name: str) -> dict[str, Any]:
        return self.config.detector_settings(name)


@dataclass(slots=True)
class Enriched:
    """An event plus what enrichment and earlier detectors learned about it."""

    event: AnyEvent
    geo: GeoInfo
    prefix: str
    server: Server | None = None
    allowed: AllowEntry | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    #: event time as epoch seconds (computed once: every detector reads it)
    ts: float = field(init=False)

    def __post_init__(self) -> None:
        self.ts = self.event.ts.timestamp()

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

    def state(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot of the detector's state (for restarts)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore :meth:`state` output (stateless detectors keep this no-op)."""
