"""``pathsentry simulate`` / ``evaluate`` through the real command line."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pathsentry.cli import main
from pathsentry.config import Config


def test_simulate_then_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world = tmp_path / "w"
    assert main(["simulate", "--seed", "3", "--accounts", "150", "--hours", "1",
                 "--start", "2026-03-02T17:30:00+09:00", "--out", str(world)]) == 0
    out = capsys.readouterr().out
    assert "by kind: http_probe=" in out
    assert main(["evaluate", str(world), "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert "## Recall per attack class" in printed and "| vpn_relay | login |" in printed
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    events = sum(1 for _ in (world / "events.jsonl").open())
    assert report["replay"]["events"] == events and report["replay"]["rejected"] == {}
    assert set(report["detectors"]) == {"vpn_relay", "route_anomaly", "path_injection",
                                        "farm_member", "injection_cell", "account_takeover"}
    assert (tmp_path / "r" / "report.md").read_text().startswith("# pathsentry detection quality")


def test_to_kafka_streams_the_same_world(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import pathsentry.streams.producer as producer

    seen: dict[str, Any] = {}

    def fake_produce(config: Config, events: Iterable[dict[str, Any]], rate: float | None) -> int:
        seen["events"] = list(events)
        seen["rate"] = rate
        return len(seen["events"])

    monkeypatch.setattr(producer, "produce_stream", fake_produce)
    args = ["simulate", "--seed", "4", "--accounts", "120", "--hours", "0.5"]
    assert main([*args, "--to-kafka", "--rate", "250"]) == 0
    assert main([*args, "--out", str(tmp_path)]) == 0
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert seen["rate"] == 250.0
    assert [e["event_id"] for e in seen["events"]] == [json.loads(x)["event_id"] for x in lines]


def test_now_rebases_the_world(monkeypatch: pytest.MonkeyPatch) -> None:
    import pathsentry.streams.producer as producer

    firsts: list[datetime] = []

    def first_only(config: Config, events: Iterable[dict[str, Any]], rate: float | None) -> int:
        firsts.append(datetime.fromisoformat(next(iter(events))["ts"]))
        return 1

    monkeypatch.setattr(producer, "produce_stream", first_only)
    before = datetime.now(UTC)
    assert main(["simulate", "--accounts", "100", "--hours", "0.2", "--to-kafka", "--now"]) == 0
    assert firsts and before - timedelta(seconds=1) <= firsts[0] <= before + timedelta(hours=0.2)
