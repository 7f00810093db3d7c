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
