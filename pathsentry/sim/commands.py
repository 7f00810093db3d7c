"""``pathsentry simulate`` and ``pathsentry evaluate``."""

from __future__ import annotations

import argparse
import time
from datetime import datetime

from pathsentry.sim.model import DEFAULT_START, KST, WorldSpec

__all__ = ["register"]


def _spec(args: argparse.Namespace) -> WorldSpec:
    if args.now:
        start = datetime.now(KST).replace(microsecond=0)
    elif args.start:
        start = datetime.fromisoformat(args.start)
        if start.tzinfo is None:
            start = start.replace(tzinfo=KST)
    else:
        start = DEFAULT_START
    return WorldSpec(seed=args.seed, accounts=args.accounts, hours=args.hours, start=start)


def cmd_simulate(args: argparse.Namespace) -> int:
    from pathsentry.sim.world import iter_world, write_world, write_world_files

    spec = _spec(args)
    t0 = time.perf_counter()
    if args.to_kafka:
        from pathsentry.config import load_config
        from pathsentry.streams.producer import produce_stream

        if args.out:
            write_world_files(spec, args.out)
            print(f"wrote {args.out}/geo.csv and {args.out}/pathsentry.toml")
        sent = produce_stream(load_config(args.config), iter_world(spec), args.rate)
        print(f"sent {sent} events in {time.perf_counter() - t0:.1f} s")
        return 0
    if not args.out:
        raise SystemExit("simulate: --out DIR is required (or use --to-kafka)")
    counts = write_world(spec, args.out)
    total = sum(counts.values())
    secs = time.perf_counter() - t0
    print(f"events: {total} in {secs:.1f} s ({total / secs:,.0f}/s)")
    print("by kind: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    print(f"wrote {args.out}/events.jsonl, truth.jsonl, geo.csv, pathsentry.toml")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pathsentry.sim.evaluate import evaluate_world, render_markdown

    out = args.out or args.world
    report = evaluate_world(args.world, out)
    print(render_markdown(report))
    print(f"wrote {out}/report.json and {out}/report.md")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("simulate", help="generate a game world with planted attacks and labels")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--accounts", type=int, default=1000)
    p.add_argument("--hours", type=float, default=24.0)
    p.add_argument("--out", help="directory for events.jsonl, truth.jsonl, geo.csv, pathsentry.toml")
    p.add_argument("--start", help="first instant, ISO 8601 (default 2026-03-02T00:00+09:00)")
    p.add_argument("--now", action="store_true", help="start the world now (live streaming)")
    p.add_argument("--to-kafka", action="store_true", help="stream the events to Kafka instead")
    p.add_argument("--rate", type=float, default=None, help="events per second (default: max)")
    p.add_argument("--config", help="pathsentry.toml with the Kafka settings (for --to-kafka)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("evaluate", help="replay a simulated world and score the detectors")
    p.add_argument("world", help="directory written by pathsentry simulate")
    p.add_argument("--out", help="directory for report.json / report.md (default: the world)")
    p.set_defaults(func=cmd_evaluate)
