"""The bench's engine measure: contract validation and the engine (enrichment and every
detector) on the same messages, once with the compiled engine and once with its pure
Python sources, each in a process of its own::

    python -m pathsentry.bench.engine --payloads FILE --config pathsentry.toml

A child process validates every message with ``parse_event``, runs the events through a
fresh :class:`~pathsentry.engine.Engine` (``process``, then ``flush``) with Python's
automatic collections off (as in a worker), and prints one JSON line: whether its engine
was compiled, µs of CPU per event (``time.process_time``) of validation and of the
engine, the flags and alerts, and a digest of every finding. :func:`measure_engine`
runs the child alternately with ``PATHSENTRY_PURE=1`` (the sources, see
:mod:`pathsentry.native`) and without, ``rounds`` times each, so that the machine's other
work weighs on neither more than on the other; an install built without the compiled
engine (an editable one) measures the pure engine only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

__all__ = ["EngineFigures", "format_engine", "main", "measure_engine", "run_engine"]


@dataclass
class EngineFigures:
    events: int
    #: whether this install has a compiled engine at all
    compiled_available: bool = False
    #: µs of CPU per event over the rounds (min, max): the engine pure / compiled, validation
    pure_us: tuple[float, float] = (0.0, 0.0)
    compiled_us: tuple[float, float] = (0.0, 0.0)
    validate_us: tuple[float, float] = (0.0, 0.0)
    flags: int = 0
    alerts: int = 0
    #: every run of either engine gave the same findings (the digest of all of them)
    same_findings: bool = True
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        """Pure over compiled, best run of each."""
        return self.pure_us[0] / self.compiled_us[0] if self.compiled_us[0] else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": round(self.speedup, 2)}


def run_engine(payloads: Sequence[bytes], config_path: str | Path) -> dict[str, Any]:
    """Validate ``payloads`` and run them through a fresh engine in this process."""
    import gc

    from pathsentry.config import load_config
    from pathsentry.detectors import Findings
    from pathsentry.engine import Engine
    from pathsentry.native import is_compiled
    from pathsentry.schemas import EventError, parse_event

    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        t0 = time.process_time()
        events = []
        for raw in payloads:
            try:
                events.append(parse_event(raw))
            except EventError:
                continue
        t1 = time.process_time()
        engine = Engine(load_config(config_path, env={}))
        out = Findings()
        t2 = time.process_time()
        for ev in events:
            out.extend(engine.process(ev))
        out.extend(engine.flush())
        t3 = time.process_time()
    finally:
        gc.enable()
        gc.unfreeze()
    digest = hashlib.sha256()
    for item in (*out.flags, *out.alerts):
        digest.update(item.model_dump_json().encode())
        digest.update(b"\n")
    n = max(1, len(payloads))
    return {"compiled": is_compiled(), "events": len(payloads),
            "validate_us": round((t1 - t0) / n * 1e6, 2), "engine_us": round((t3 - t2) / n * 1e6, 2),
            "flags": len(out.flags), "alerts": len(out.alerts), "digest": digest.hexdigest()}


def _child(payload_file: Path, config_path: str | Path, *, pure: bool) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "PATHSENTRY_PURE"}
    if pure:
        env["PATHSENTRY_PURE"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "pathsentry.bench.engine", "--payloads", str(payload_file),
         "--config", str(config_path)],
        env=env, capture_output=True, timeout=1800, check=True,
    )
    result: dict[str, Any] = orjson.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _span(values: list[float]) -> tuple[float, float]:
    return (min(values), max(values)) if values else (0.0, 0.0)


def measure_engine(payloads: Sequence[bytes], config_path: str | Path, *, rounds: int = 2) -> EngineFigures:
    """The engine pure and compiled (when this install has it) on ``payloads``, each in
    its own process, alternately, ``rounds`` times."""
    fig = EngineFigures(events=len(payloads))
    with tempfile.TemporaryDirectory(prefix="pathsentry-engine-") as tmp:
        path = Path(tmp) / "payloads.jsonl"
        path.write_bytes(b"\n".join(payloads) + b"\n")
        for _ in range(max(1, rounds)):
            for pure in (True, False):
                run = _child(path, config_path, pure=pure)
                fig.runs.append(run)
                if not pure and not run["compiled"]:
                    break  # nothing compiled to compare with
    pure_runs = [r for r in fig.runs if not r["compiled"]]
    compiled_runs = [r for r in fig.runs if r["compiled"]]
    fig.compiled_available = bool(compiled_runs)
    fig.pure_us = _span([r["engine_us"] for r in pure_runs])
    fig.compiled_us = _span([r["engine_us"] for r in compiled_runs])
    fig.validate_us = _span([r["validate_us"] for r in fig.runs])
    fig.flags, fig.alerts = fig.runs[0]["flags"], fig.runs[0]["alerts"]
    fig.same_findings = len({r["digest"] for r in fig.runs}) == 1
    return fig


def format_engine(f: EngineFigures) -> str:
    """The engine figures as lines of text."""
    def span(s: tuple[float, float]) -> str:
        return f"{s[0]:.1f}" if s[0] == s[1] else f"{s[0]:.1f}-{s[1]:.1f}"

    rounds = sum(1 for r in f.runs if not r["compiled"])
    lines = [f"engine, µs of CPU per event over {f.events:,} events ({rounds} run(s) of each, own process):",
             f"  validation (parse_event)         {span(f.validate_us):>11}",
             f"  engine, pure Python              {span(f.pure_us):>11}"]
    if f.compiled_available:
        lines.append(f"  engine, compiled (mypyc)         {span(f.compiled_us):>11}"
                     f"   ({f.speedup:.2f}x, best runs)")
    else:
        lines.append("  engine, compiled (mypyc)         not in this install"
                     " (PATHSENTRY_COMPILE=1 pip install --no-build-isolation . builds it)")
    lines.append(f"  findings: {f.flags:,} flags, {f.alerts:,} alerts, "
                 + ("identical in every run" if f.same_findings else "DIFFERENT between runs"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--payloads", required=True, help="one JSON message a line")
    ap.add_argument("--config", required=True)
    args = ap.parse_args(argv)
    payloads = [line for line in Path(args.payloads).read_bytes().split(b"\n") if line]
    print(orjson.dumps(run_engine(payloads, args.config)).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
