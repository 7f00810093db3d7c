"""The detection engine: enrichment followed by the detectors, in two stages.

The same engine runs inside the stream workers and in ``pathsentry replay``; the
stream splits :meth:`Engine.session_stage` and the group stage (a :class:`GroupStage`
per partition) across a repartition, a replay calls :meth:`Engine.process` which does both in-process.
A replay's input ends: :meth:`Engine.finish` then moves event time past its end so that
what the detectors still hold back is judged, where a live stream's later events would.

Every alert of either stage leaves through the engine's
:class:`~pathsentry.detectors.crosscheck.CrossCheck` (``farm_group`` and ``vpn_relay``
alerts gain the labels and interactions the game published); :meth:`Engine.feedback`
takes those labels and interactions and returns the alerts a late label re-versions.
Every ``farm_group`` alert of the group stage also passes through the engine's
:class:`~pathsentry.detectors.farm.rooms.RoomMerger` (:meth:`Engine.rooms_of`), which
raises one alert for the room that alerts of several partitions are parts of: a replay
does so in :meth:`Engine.process`, the stream in one place downstream of every group
partition.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from pathsentry.config import Config
from pathsentry.detectors import Detector, DetectorContext, Enriched, Findings, build_detectors
from pathsentry.detectors.crosscheck import CrossCheck, CrossCheckSettings
from pathsentry.detectors.farm import FarmDetector
from pathsentry.detectors.farm.rooms import RoomMerger
from pathsentry.detectors.saved import check_ts
from pathsentry.enrich import GeoResolver, build_resolver
from pathsentry.enrich.enricher import Enricher
from pathsentry.schemas import Alert, AnyEvent, AnyFeedback

__all__ = ["Engine", "GroupStage", "tune_gc"]


def tune_gc() -> None:
    """Move start-up objects (models, geo tables) out of the collector's way and collect
    the young generation less often: the detectors keep large, long-lived state, and
    full collections over it otherwise dominate the per-event cost."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _checked(crosscheck: CrossCheck | None, found: Findings | None) -> Findings:
    """``found`` with its alerts cross-checked (an empty :class:`Findings` for ``None``)."""
    if found is None:
        return Findings()
    if crosscheck is not None and found.alerts:
        found.alerts = crosscheck.enrich_all(found.alerts)
    return found


def _append_checked(crosscheck: CrossCheck | None, found: Findings, out: Findings) -> None:
    """Append ``found`` to ``out``, its alerts cross-checked."""
    if found.flags:
        out.flags.extend(found.flags)
    if found.alerts:
        out.alerts.extend(crosscheck.enrich_all(found.alerts) if crosscheck is not None else found.alerts)


def _flush(detectors: list[Detector], ts: float) -> Findings:
    """What ``detectors`` close at event time ``ts`` (nothing before the first event)."""
    out = Findings()
    if ts:
        for det in detectors:
            out.extend(det.flush(ts))
    return out


def _fire(detectors: list[Detector], ts: float) -> Findings:
    """The final watermark at event time ``ts``: what ``detectors`` hold back for a later
    clock (:meth:`~Detector.finish`)."""
    out = Findings()
    if ts:
        for det in detectors:
            out.extend(det.finish(ts))
    return out


class GroupStage:
    """The group-stage detectors of one group partition (a replay runs a single one).

    In the stream each partition of the groups topic has its own, so that its state can
    be saved and handed to the partition's next owner on its own.
    """

    def __init__(self, detectors: list[Detector], crosscheck: CrossCheck | None = None) -> None:
        self.detectors = detectors
        #: what every alert of this stage goes through on its way out (the engine's)
        self.crosscheck = crosscheck
        self._by_name = {d.name: d for d in detectors}
        #: newest event time seen: windows close on the stage's own clock
        self.ts = 0.0

    def process(self, ev: Enriched, detector: str, key: str) -> Findings:
        return _checked(self.crosscheck, self.found(ev, detector, key))

    def process_into(self, ev: Enriched, detector: str, key: str, out: Findings) -> None:
        """:meth:`process`, its flags and alerts appended to ``out`` (no findings made per call)."""
        found = self.found(ev, detector, key)
        if found is not None:
            _append_checked(self.crosscheck, found, out)

    def found(self, ev: Enriched, detector: str, key: str) -> Findings | None:
        """What :meth:`process` returns, unchecked, and ``None`` for nothing found (no
        empty :class:`Findings` made per event)."""
        if ev.ts > self.ts:
            self.ts = ev.ts
        det = self._by_name.get(detector)
        return det.process(ev, key) if det is not None else None

    def flush(self) -> Findings:
        return _checked(self.crosscheck, _flush(self.detectors, self.ts))

    def fire_pending(self) -> Findings:
        """The final watermark of a bounded input (see :meth:`Engine.finish`)."""
        return _checked(self.crosscheck, _fire(self.detectors, self.ts))

    def state(self) -> dict[str, Any]:
        return {"ts": self.ts, "detectors": {d.name: d.state() for d in self.detectors}}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`: the clock no later than a day past the wall clock
        (:class:`~pathsentry.detectors.saved.StateInvalid` otherwise), each detector's
        part as that detector checks it."""
        self.ts = max(self.ts, check_ts(state.get("ts") or 0.0, "group stage clock"))
        dets = state.get("detectors", {})
        for d in self.detectors:
            if d.name in dets:
                d.load_state(dets[d.name])


class Engine:
    def __init__(
        self,
        config: Config,
        geo: GeoResolver | None = None,
        detectors: list[Detector] | None = None,
    ) -> None:
        self.config = config
        self.geo = geo if geo is not None else build_resolver(
            [_resolve_geo_spec(config, s) for s in config.geo]
        )
        self.ctx = DetectorContext(config, self.geo)
        self.enricher = Enricher(config, self.geo)
        self.detectors = detectors if detectors is not None else build_detectors(self.ctx)
        #: labels and interactions from the game, applied to alerts at emission
        self.crosscheck = CrossCheck(CrossCheckSettings.from_settings(self.ctx.settings("crosscheck")))
        self.session_detectors = [d for d in self.detectors if d.stage == "session"]
        self.group_detectors = [d for d in self.detectors if d.stage == "group"]
        # Event time seen by each stage. In the stream the group stage runs behind the
        # session stage (a repartition apart), so each stage's detectors are flushed
        # with their own clock: a group window must not expire before its events arrive.
        self.session_ts = 0.0
        #: the group stage of a replay (the stream keeps one per group partition)
        self.groups = GroupStage(self.group_detectors, self.crosscheck)
        farm = next((d for d in self.group_detectors if isinstance(d, FarmDetector)), None)
        #: one alert per room found by several group partitions (None: no farm detector)
        self._farm = farm
        self.rooms = self.new_rooms()
        # who consumes each event kind, in detector order (``wants`` is fixed per class)
        kinds = {k for d in self.detectors for k in d.consumes}
        self._session_for = {k: [d for d in self.session_detectors if d.wants(k)] for k in kinds}
        self._group_for = {k: [(d.name, d) for d in self.group_detectors if d.wants(k)] for k in kinds}

    @property
    def last_ts(self) -> float:
        return max(self.session_ts, self.groups.ts)

    def new_rooms(self) -> RoomMerger | None:
        """An empty room merger for this engine's farm detector (None: none runs)."""
        farm = self._farm
        return RoomMerger(farm.settings, farm.name) if farm is not None else None

    def new_group_stage(self) -> GroupStage:
        """Fresh group-stage detectors of the same kinds and settings as this engine's."""
        return GroupStage([type(d)(self.ctx) for d in self.group_detectors], self.crosscheck)

    def session_stage(self, event: AnyEvent) -> tuple[Enriched, Findings]:
        out = Findings()
        return self.session_into(event, out), out

    def session_into(self, event: AnyEvent, out: Findings) -> Enriched:
        """:meth:`session_stage`, its flags and alerts (cross-checked) appended to ``out``:
        the stream runs a batch of events into one :class:`Findings`, none made per event."""
        ev = self.enricher.enrich(event)
        ts = ev.ts
        if ts > self.session_ts:
            self.session_ts = ts
        flags, alerts = out.flags, out.alerts
        first = len(alerts)
        for det in self._session_for.get(event.kind, ()):
            found = det.process(ev)
            if found is not None:
                if found.flags:
                    flags.extend(found.flags)
                if found.alerts:
                    alerts.extend(found.alerts)
        if len(alerts) > first and self.crosscheck is not None:
            alerts[first:] = self.crosscheck.enrich_all(alerts[first:])
        return ev

    def group_routes(self, ev: Enriched) -> list[tuple[str, str]]:
        """(detector name, key) pairs this event must be delivered to in the group stage."""
        routes: list[tuple[str, str]] = []
        for name, det in self._group_for.get(ev.event.kind, ()):
            for k in det.group_keys(ev):
                routes.append((name, k))
        return routes

    def rooms_of(self, alerts: list[Alert]) -> list[Alert]:
        """The room alerts (cross-checked) that the group stage's ``alerts`` raise or
        re-version (:mod:`~pathsentry.detectors.farm.rooms`)."""
        rooms = self.rooms
        if rooms is None:
            return []
        out: list[Alert] = []
        for a in alerts:
            if a.kind == "farm_group":
                out.extend(rooms.observe(a))
        return self.crosscheck.enrich_all(out) if out else out

    def _with_rooms(self, found: Findings, first: int = 0) -> Findings:
        """``found`` with the room alerts its group-stage alerts from ``first`` on raise."""
        if len(found.alerts) > first:
            found.alerts.extend(self.rooms_of(found.alerts[first:]))
        return found

    def feedback(self, event: AnyFeedback) -> Findings:
        """Take a label or an interaction; the alerts a label re-versions."""
        return Findings(alerts=self.crosscheck.observe(event))

    def process(self, event: AnyEvent | AnyFeedback) -> Findings:
        """One event through both stages (a label or an interaction: :meth:`feedback`)."""
        # (by the kind tag: ``isinstance`` on a pydantic model class runs Python code)
        if event.kind == "account_label" or event.kind == "interaction":
            return self.feedback(event)
        out = Findings()
        ev = self.session_into(event, out)
        groups = self.groups
        first = len(out.alerts)
        for name, key in self.group_routes(ev):
            groups.process_into(ev, name, key, out)
        return self._with_rooms(out, first)

    def flush_sessions(self) -> Findings:
        """Let the session-stage detectors close what their event time has passed."""
        return _checked(self.crosscheck, _flush(self.session_detectors, self.session_ts))

    def flush(self) -> Findings:
        """Let every detector close what its own stage's event time has passed."""
        out = self.flush_sessions()
        out.extend(self._with_rooms(self.groups.flush()))
        return out

    def finish(self) -> Findings:
        """The end of a bounded input (a replay, ``pathsentry evaluate``): :meth:`flush`,
        then :meth:`fire_pending`."""
        out = self.flush()
        out.extend(self.fire_pending())
        return out

    def fire_pending(self) -> Findings:
        """The final watermark: event time moves past the end of the input, as a bounded
        source's last watermark does, so that the judgements still held back fall due
        by the same rules as in a live stream (each detector's
        :meth:`~pathsentry.detectors.base.Detector.finish`, at its stage's last event
        time). The stream never calls it: a live stream does not end, and its later
        events move the clock."""
        out = _checked(self.crosscheck, _fire(self.session_detectors, self.session_ts))
        out.extend(self._with_rooms(self.groups.fire_pending()))
        return out

    def state(self, *, groups: bool = True) -> dict[str, Any]:
        """Every detector's state (``groups=False``: the session stage's only)."""
        dets = self.detectors if groups else self.session_detectors
        return {d.name: d.state() for d in dets}

    def load_state(self, state: dict[str, Any]) -> None:
        for d in self.detectors:
            if d.name in state:
                d.load_state(state[d.name])

    def sessions_state(self, part_of: Callable[[str], int],
                       parts: Collection[int]) -> dict[int, dict[str, Any]]:
        """The sessions in progress of the session stage, per partition of ``parts``
        (``part_of`` maps a session id to its partition): ``{partition: {detector: share}}``."""
        out: dict[int, dict[str, Any]] = {p: {} for p in parts}
        for d in self.session_detectors:
            for p, share in d.session_state(part_of, parts).items():
                out[p][d.name] = share
        return out

    def load_sessions(self, state: dict[str, Any]) -> None:
        """Add one partition's sessions (a :meth:`sessions_state` value)."""
        for d in self.session_detectors:
            if d.name in state:
                d.load_sessions(state[d.name])

    def drop_sessions(self, part_of: Callable[[str], int], parts: Collection[int]) -> int:
        """Forget the sessions of ``parts``; how many entries went."""
        return sum(d.drop_sessions(part_of, parts) for d in self.session_detectors)

    def learned_state(self) -> dict[str, Any]:
        """What the session stage learned from all its traffic, per detector that learns."""
        return {d.name: st for d in self.session_detectors if (st := d.learned_state())}

    def load_learned(self, state: dict[str, Any]) -> None:
        """Fill in what the session stage has not learned itself (a :meth:`learned_state`)."""
        for d in self.session_detectors:
            if d.name in state:
                d.load_learned(state[d.name])


def _resolve_geo_spec(config: Config, spec: str) -> str:
    kind, sep, arg = spec.partition(":")
    if not sep:
        return spec
    paths = "+".join(config.resolve_path(p) if p else p for p in arg.split("+"))
    return f"{kind}:{paths}"
