"""`pathsentry replay` on a contract-valid file writes both outputs, in ts order, with the
same ids as a second run (deterministic alert ids)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from pathsentry.sim import WorldSpec, write_world


def test_replay_cli_writes_flags_and_alerts_deterministically(tmp_path: Path) -> None:
    world = tmp_path / "world"
    counts = write_world(WorldSpec(seed=3, accounts=400, hours=12.0), world)
    assert sum(counts.values()) > 500
    # one malformed line and one out-of-order event must not stop the replay
    with open(world / "events.jsonl", "a", encoding="utf-8") as fh:
        fh.write("{not json\n")
    outs = []
    for run in ("a", "b"):
        proc = subprocess.run(
            [sys.executable, "-m", "pathsentry", "replay", str(world / "events.jsonl"),
             "--out", str(tmp_path / run), "--config", str(world / "pathsentry.toml")],
            capture_output=True, text=True, timeout=300, check=True,
        )
        assert "rejected: bad_json=1" in proc.stdout
        flags = [json.loads(line) for line in (tmp_path / run / "flagged.jsonl").read_text().splitlines()]
        alerts = [json.loads(line) for line in (tmp_path / run / "alerts.jsonl").read_text().splitlines()]
        outs.append((flags, alerts))
    (flags, alerts), (flags_b, alerts_b) = outs
    assert flags and alerts
    assert {f["kind"] for f in flags} >= {"vpn_relay", "path_injection"}
    assert all(f["evidence"] and f["reasons"] for f in flags)
    times = [datetime.fromisoformat(f["ts"]) for f in flags]
    assert times == sorted(times)
    assert [(f["event_id"], f["kind"]) for f in flags] == [(f["event_id"], f["kind"]) for f in flags_b]
    assert sorted(a["alert_id"] for a in alerts) == sorted(a["alert_id"] for a in alerts_b)
