"""The bench's save measure: how long the periodic session-stage save (snapshot file and
``l:0``) stalls the event loop, on the loop and in a forked child, on the state the
session stage holds after the bench's preloaded events::

    pathsentry bench --saves-only --events 100000 --accounts 10000

In this process: the events run through a worker's session stage (``Engine.session_stage``,
automatic collections off as in a worker), then a :class:`~pathsentry.streams.pipeline.Pipeline`
(chDB open, as in a worker, never written) runs
:meth:`~pathsentry.streams.persistence.StatePersistence.save_session_stage` ``rounds``
times each way, alternately, while a task on the same loop sleeps 1 ms at a time: the
longest gap between its wake-ups, less the 1 ms, is the loop's longest stall during the
save. Nothing is published (no broker): the ``l:0`` bytes are built, not sent.
"""

from __future__ import annotations

import asyncio
import gc
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SaveFigures", "format_saves", "measure_saves"]


@dataclass
class SaveFigures:
    events: int
    #: the worker process's RSS before the saves (MiB)
    rss_mib: float = 0.0
    #: per way ("loop", "child"), one dict per round: the loop's longest stall and the
    #: save's wall time (ms), and the save's own figures from /stats
    rounds: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _timed_save(pipe: Any, child: bool) -> dict[str, Any]:
    """One save, with the longest stall of the loop during it."""
    longest = 0.0
    done = False

    async def tick() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            longest = max(longest, now - last - 0.001)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    built = await pipe.save_session_stage()
    wall = time.perf_counter() - t0
    done = True
    await ticker
    stats = pipe.learned_save_stats()
    keys = ["snapshot_serialise_ms", "snapshot_bytes", "save_loop_ms"]
    if child:
        keys += ["save_fork_ms", "save_child_private_mib", "save_child_peak_rss_mib"]
    return {"ok": built is not None, "loop_stall_ms": round(longest * 1000, 1),
            "wall_ms": round(wall * 1000, 1), "learned_bytes": len(built.data or b"") if built else 0,
            **{k: stats[k] for k in keys}}


def measure_saves(payloads: list[bytes], config_path: Path, rounds: int = 2,
                  workdir: str | None = None) -> SaveFigures:
    from pathsentry.config import load_config
    from pathsentry.engine import Engine
    from pathsentry.infra.clickhouse import connect
    from pathsentry.schemas import parse_event
    from pathsentry.streams.forksave import ForkSaver, rss_mib
    from pathsentry.streams.pipeline import Pipeline

    root = Path(workdir or tempfile.mkdtemp(prefix="pathsentry-saves-"))
    config = load_config(config_path, env={"PATHSENTRY_DATA_DIR": str(root / "var")})
    engine = Engine(config)
    collecting = gc.isenabled()
    gc.disable()
    for raw in payloads:
        engine.session_stage(parse_event(raw))
    gc.freeze()
    ch = connect(f"chdb://{root / 'chdb'}")
    try:
        pipe = Pipeline(config, engine, ch, "bench-saves")
        out = SaveFigures(events=len(payloads), rss_mib=round(rss_mib(), 1))
        child, loop = pipe.fork_saver, ForkSaver(1.0, enabled=False)
        for _ in range(rounds):
            for way, saver in (("loop", loop), ("child", child)):
                pipe.fork_saver = saver
                out.rounds.setdefault(way, []).append(asyncio.run(_timed_save(pipe, way == "child")))
        return out
    finally:
        ch.close()
        gc.unfreeze()
        if collecting:
            gc.enable()


def format_saves(f: SaveFigures) -> str:
    lines = [f"session-stage state after {f.events:,} events; process RSS {f.rss_mib:,.0f} MiB"]
    for way, rs in f.rounds.items():
        for r in rs:
            child = (f"; fork {r['save_fork_ms']} ms, child private {r['save_child_private_mib']} MiB, "
                     f"peak RSS {r['save_child_peak_rss_mib']} MiB" if way == "child" else "")
            lines.append(f"  {way:5}: loop stalled {r['loop_stall_ms']:>7} ms (save took {r['wall_ms']} ms); "
                         f"snapshot {r['snapshot_bytes']:,} B built+serialised in "
                         f"{r['snapshot_serialise_ms']} ms; l:0 {r['learned_bytes']:,} B{child}")
    return "\n".join(lines)
