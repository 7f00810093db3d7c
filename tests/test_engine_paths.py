"""A replay's :meth:`Engine.process` finds what the stream's split of the same engine finds.

The stream runs :meth:`Engine.session_stage`, routes the enriched event with
:meth:`Engine.group_routes` and hands each route to :meth:`GroupStage.process`; a replay
calls :meth:`Engine.process`, which does both in one call without the empty findings of
the routes that found nothing. Both must give the same flags and alerts, in the same
order, every alert cross-checked."""

from __future__ import annotations

from pathlib import Path

from pathsentry.config import load_config
from pathsentry.detectors import Findings
from pathsentry.engine import Engine
from pathsentry.schemas import parse_event
from tests.faults.support import recent_world, sim_events, write_world


def _dump(found: Findings) -> list[str]:
    return [x.model_dump_json() for x in (*found.flags, *found.alerts)]


def test_process_finds_what_the_split_stages_find(tmp_path: Path) -> None:
    spec = recent_world(seed=11, accounts=400, hours=12.0)
    config = write_world(tmp_path, spec)
    events = [parse_event(raw) for raw in sim_events(spec, limit=20_000)]
    whole, split = Engine(load_config(config, env={})), Engine(load_config(config, env={}))
    got, want = Findings(), Findings()
    group_alerts = 0
    for event in events:
        got.extend(whole.process(event))
        if event.kind in ("account_label", "interaction"):
            want.extend(split.feedback(event))
            continue
        ev, out = split.session_stage(event)
        want.extend(out)
        for name, key in split.group_routes(ev):
            found = split.groups.process(ev, name, key)
            group_alerts += len(found.alerts)
            want.extend(found)
    got.extend(whole.flush())
    want.extend(split.flush())
    assert want.flags and group_alerts, "the world must raise flags and group-stage alerts"
    assert any("crosscheck" in a.evidence for a in want.alerts)
    assert _dump(got) == _dump(want)


def test_a_batch_run_into_shared_findings_finds_what_one_event_at_a_time_finds(tmp_path: Path) -> None:
    """The stream's stages run a batch of events into one :class:`Findings`
    (:meth:`Engine.session_into`, :meth:`GroupStage.process_into`): the same flags and
    alerts, in the same order, as each event's own findings appended one after the other."""
    spec = recent_world(seed=12, accounts=400, hours=12.0)
    config = write_world(tmp_path, spec)
    events = [e for e in (parse_event(raw) for raw in sim_events(spec, limit=12_000))
              if e.kind not in ("account_label", "interaction")]
    one, batch = Engine(load_config(config, env={})), Engine(load_config(config, env={}))
    want, got = Findings(), Findings()
    for start in range(0, len(events), 500):
        routed = []
        for event in events[start:start + 500]:
            ev, out = one.session_stage(event)
            want.extend(out)
            for name, key in one.group_routes(ev):
                want.extend(one.groups.process(ev, name, key))
            enriched = batch.session_into(event, got)
            routed += [(enriched, name, key) for name, key in batch.group_routes(enriched)]
        for enriched, name, key in routed:
            batch.groups.process_into(enriched, name, key, got)
    assert want.flags and want.alerts
    # (the batch runs its group routes after its session stage: the same findings, each
    # stage's in its own order)
    assert sorted(_dump(got)) == sorted(_dump(want))


def test_the_pipeline_order_does_not_depend_on_which_detector_module_was_imported_first() -> None:
    """A detector module imported early (by a tool, a test, an analyst's notebook)
    registers first; the pipeline still runs the detectors in ``DETECTOR_MODULES``
    order, on which the findings depend."""
    import pathsentry.detectors as dets

    expected = list(dets.registered())
    saved = dict(dets._REGISTRY)
    try:
        dets._REGISTRY.clear()
        dets._REGISTRY.update(reversed(list(saved.items())))  # as if imported last-first
        assert list(dets.registered()) == expected == [
            "route", "latency", "injection", "injection_cells", "takeover", "farm"]
    finally:
        dets._REGISTRY.clear()
        dets._REGISTRY.update(saved)
