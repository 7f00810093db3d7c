"""``pathsentry evaluate``: replay a simulated world and score the detectors.

The world directory holds ``events.jsonl``, ``truth.jsonl``, ``pathsentry.toml`` and
``geo.csv`` (as written by ``pathsentry simulate``). The report is JSON plus a
Markdown rendering of three tables: per detector, recall per attack class, and
false-positive rate per hard-negative class.

>>> print(render_markdown({"world": {}, "replay": {}, "hours": 1.0, "detectors": {},
...                        "attack_recall": {}, "hard_negative_fpr": {}}).splitlines()[0])
# pathsentry detection quality
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from pathsentry.config import Config
from pathsentry.detectors import Findings
from pathsentry.detectors.injection_cells import CellSettings
from pathsentry.detectors.settings import load_settings
from pathsentry.engine import Engine
from pathsentry.schemas import AnyEvent, AnyFeedback
from pathsentry.sim.score import forged_sources, score_all
from pathsentry.sim.truth import Truth

__all__ = ["TimedEngine", "evaluate_world", "fmt_cell", "markdown_table", "render_markdown"]

_DETECTOR_ORDER = ("vpn_relay", "route_anomaly", "farm_member", "path_injection", "injection_cell")


def fmt_cell(v: Any) -> str:
    """A table cell: NA for nothing, three decimals for a ratio."""
    if v is None:
        return "NA"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """The lines of a Markdown table of ``rows`` under ``header``."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(fmt_cell(c) for c in r) + " |" for r in rows]
    return out


def render_markdown(report: dict[str, Any]) -> str:
    """The report's tables as Markdown (also what the command prints)."""
    world, rp = report.get("world", {}), report.get("replay", {})
    lines = ["# pathsentry detection quality", ""]
    if world:
        lines.append(f"World: seed {world.get('seed')}, {world.get('accounts')} accounts, "
                     f"{world.get('hours')} h from {world.get('start')}.")
    if rp:
        lines.append(f"Replay: {rp.get('events')} events in {rp.get('seconds', 0):.1f} s; "
                     f"detectors loaded: {', '.join(rp.get('detectors', [])) or 'none'}.")
    lines += ["", "## Per detector", ""]
    dets = report["detectors"]
    rows = []
    for name in _DETECTOR_ORDER:
        d = dets.get(name)
        if d is None:
            continue
        ttd = d.get("ttd", {}).get("median_s")
        if name == "farm_member":
            ttd = d["groups"]["median_ttd_from_fifth_login_s"]
        rows.append([name, d["unit"], d["positives"], d["flagged"], d["tp"], d["fp"], d["fn"],
                     d["precision"], d["recall"], d["alerts_per_hour"], ttd])
    lines += markdown_table(["detector", "unit", "positives", "flagged", "TP", "FP", "FN", "precision",
                     "recall", "alerts/h", "TTD median (s)"], rows)
    farm = dets.get("farm_member", {}).get("groups")
    if farm:
        lines += ["", f"Farm groups: {farm['found']}/{farm['planted']} found "
                      f"(one alert holds >= 80 % of the members), group alerts {farm['alerts']}, "
                      f"group precision {fmt_cell(farm['precision'])}.", ""]
        lines += markdown_table(["group", "label", "members", "best share", "found",
                         "TTD from 5th login (s)", "to 80 % of members (s)"],
                        [[g, i["label"], i["members"], i["best_share"], i["found"],
                          i["ttd_from_fifth_login_s"], i.get("to_80pct_s")]
                         for g, i in farm["detail"].items()])
    cells = dets.get("injection_cell", {})
    nm = cells.get("nameable", {})
    if nm.get("measured"):
        lines += ["", f"Injection cells: {cells['positives'] - cells['fn']}/{cells['positives']} "
                      f"injecting ASNs named; {nm['found']}/{nm['planted']} of those whose forged "
                      f"answers came from at least {nm['min_sources']} independent sources "
                      "(nameable: fewer could be as many colluding accounts)."]
    names = [n for n in _DETECTOR_ORDER if n in dets]
    lines += ["", "## Recall per attack class", ""]
    lines += markdown_table(["attack class", *names],
                    [[label, *(row.get(n) for n in names)]
                     for label, row in report["attack_recall"].items()])
    lines += ["", "## False-positive rate per hard-negative class", ""]
    lines += markdown_table(["class", *names],
                    [[k, *(row.get(n) for n in names)]
                     for k, row in report["hard_negative_fpr"].items()])
    lines += ["", "NA: no unit of that class reached the detector, or nothing was flagged."]
    return "\n".join(lines) + "\n"


class TimedEngine(Engine):
    """The engine, noting when (in event time) each alert version is emitted."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.timeline: dict[str, list[tuple[float, tuple[str, ...]]]] = {}

    def _note(self, out: Findings, ts: float) -> None:
        for a in out.alerts:
            versions = self.timeline.setdefault(a.alert_id, [])
            accounts = tuple(a.accounts)
            if not versions or versions[-1][1] != accounts:
                versions.append((ts, accounts))

    def process(self, event: AnyEvent | AnyFeedback) -> Findings:
        out = super().process(event)
        if out:
            self._note(out, event.ts.timestamp())
        return out

    def flush(self) -> Findings:
        out = super().flush()
        self._note(out, self.last_ts)
        return out

    def fire_pending(self) -> Findings:
        out = super().fire_pending()  # (each alert at its own time, past the input's end)
        for a in out.alerts:
            self._note(Findings(alerts=[a]), a.ts.timestamp())
        return out


def _http_probes(path: Path) -> Iterator[dict[str, Any]]:
    """The ``http_probe`` events of a world's events file, as JSON objects."""
    with path.open("rb") as fh:
        for line in fh:
            if b'"http_probe"' in line:
                ev = orjson.loads(line)
                if isinstance(ev, dict) and ev.get("kind") == "http_probe":
                    yield ev


def evaluate_world(world_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Replay ``world_dir``'s events with its config, score them, write the reports."""
    from pathsentry.config import load_config
    from pathsentry.replay import replay, write_outputs

    wd = Path(world_dir)
    out = Path(out_dir) if out_dir is not None else wd
    cfg = load_config(wd / "pathsentry.toml", env={})
    engine = TimedEngine(cfg)
    res = replay([wd / "events.jsonl"], cfg, engine)
    write_outputs(res, out)
    truth = Truth.load(wd / "truth.jsonl")
    cell_settings: CellSettings
    (cell_settings,) = load_settings("injection_cells", cfg.detector_settings("injection_cells"),
                                     CellSettings)
    report = score_all(truth, list(res.flags.values()), list(res.alerts.values()),
                       engine.timeline, forged_sources(truth, _http_probes(wd / "events.jsonl")),
                       cell_settings.min_suspect_clients)
    from pathsentry.detectors import registered

    report["world"] = truth.meta
    report["replay"] = {"events": res.events, "seconds": round(res.seconds, 2),
                        "rejected": dict(res.rejected), "detectors": sorted(registered())}
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n",
                                     encoding="utf-8")
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    return report
