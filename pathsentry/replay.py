"""``pathsentry replay``: the detector pipeline over JSONL files, in ``ts`` order.

Each file is streamed; a file that is already in ``ts`` order (as producers and the
simulator write them) is never held in memory, several files are merged lazily.
Lines that are not valid contract-v1 events are counted with their reason and
skipped, exactly as the stream sends them to the dead-letter topic. Labels and
interactions (contract v1.1) may be mixed in: they reach the engine in ``ts`` order.

The input ends, where a live stream does not: after its last event the engine is
finished (:meth:`~pathsentry.engine.Engine.finish`), event time moved past the end as
a bounded source's final watermark does, so that the judgements that wait for a later
clock (an injection cell's ``settle_s``) fall due by the same rules as in the stream.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pathsentry.config import Config
from pathsentry.engine import Engine, tune_gc
from pathsentry.schemas import (
    Alert,
    AnyEvent,
    AnyFeedback,
    EventError,
    FlaggedEvent,
    parse_event,
    parse_feedback,
)
from pathsentry.schemas.feedback import FEEDBACK_KINDS

#: anything a replay reads: a network event or a label / interaction
AnyInput = AnyEvent | AnyFeedback

__all__ = ["ReplayResult", "iter_events", "replay", "write_outputs"]


@dataclass
class ReplayResult:
    events: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    flags: dict[tuple[str, str], FlaggedEvent] = field(default_factory=dict)
    alerts: dict[str, Alert] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        by_flag = Counter(f.kind for f in self.flags.values())
        by_alert = Counter(a.kind for a in self.alerts.values())
        rate = self.events / self.seconds if self.seconds else 0.0
        lines = [
            f"events: {self.events} in {self.seconds:.1f} s ({rate:,.0f}/s)",
            "rejected: " + (", ".join(f"{k}={v}" for k, v in sorted(self.rejected.items())) or "0"),
            "flagged: " + (", ".join(f"{k}={v}" for k, v in sorted(by_flag.items())) or "0"),
            "alerts: " + (", ".join(f"{k}={v}" for k, v in sorted(by_alert.items())) or "0"),
        ]
        return "\n".join(lines)


def _parse(line: bytes) -> AnyInput:
    """A network event, else (a feedback kind named in the line) a label or interaction."""
    try:
        return parse_event(line)
    except EventError as e:
        if e.reason == "unknown_kind" and any(k.encode() in line for k in FEEDBACK_KINDS):
            return parse_feedback(line)
        raise


def _iter_file(path: Path, rejected: Counter[str]) -> Iterator[AnyInput]:
    with open(path, "rb") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                yield _parse(line)
            except EventError as e:
                rejected[e.reason] += 1


#: Events held back to put slightly out-of-order input back in ``ts`` order.
REORDER_WINDOW = 10_000


def _sorted_file(path: Path, rejected: Counter[str]) -> Iterator[AnyInput]:
    """Events of one file in ``ts`` order, streamed through a bounded reorder buffer.

    An event older than one already handed on (disorder wider than the buffer)
    is handed on late, as a stream would deliver it.
    """
    heap: list[tuple[float, int, AnyInput]] = []
    for i, ev in enumerate(_iter_file(path, rejected)):
        heapq.heappush(heap, (ev.ts.timestamp(), i, ev))
        if len(heap) > REORDER_WINDOW:
            yield heapq.heappop(heap)[2]
    while heap:
        yield heapq.heappop(heap)[2]


def iter_events(paths: Sequence[str | Path], rejected: Counter[str] | None = None) -> Iterator[AnyInput]:
    """All valid events of ``paths`` merged in ``ts`` order."""
    rej: Counter[str] = rejected if rejected is not None else Counter()
    streams = [_sorted_file(Path(p), rej) for p in paths]
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams, key=lambda e: e.ts.timestamp())


def replay(paths: Sequence[str | Path], config: Config, engine: Engine | None = None) -> ReplayResult:
    engine = engine or Engine(config)
    tune_gc()
    res = ReplayResult()
    t0 = time.perf_counter()

    def absorb(flags: list[FlaggedEvent], alerts: list[Alert]) -> None:
        for f in flags:
            res.flags[f.dedup_key] = f
        for a in alerts:
            res.alerts[a.alert_id] = a

    for ev in iter_events(paths, res.rejected):
        res.events += 1
        out = engine.process(ev)
        if out:
            absorb(out.flags, out.alerts)
    tail = engine.finish()  # (the end of the input: what waits for a later clock falls due)
    absorb(tail.flags, tail.alerts)
    res.seconds = time.perf_counter() - t0
    return res


def write_outputs(res: ReplayResult, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fpath, apath = out / "flagged.jsonl", out / "alerts.jsonl"
    with open(fpath, "w", encoding="utf-8") as fh:
        for f in sorted(res.flags.values(), key=lambda f: (f.ts, f.event_id, f.kind)):
            fh.write(f.model_dump_json() + "\n")
    with open(apath, "w", encoding="utf-8") as fh:
        for a in sorted(res.alerts.values(), key=lambda a: (a.first_seen, a.alert_id)):
            fh.write(a.model_dump_json() + "\n")
    return fpath, apath
