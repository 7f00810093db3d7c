"""``pathsentry simulate`` and ``pathsentry evaluate``."""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timedelta

from pathsentry.sim.model import DEFAULT_START, KST, WorldSpec
from pathsentry.sim.params import WorldParams

__all__ = ["register"]


def _start(args: argparse.Namespace) -> datetime | None:
    if getattr(args, "now", False):
        return datetime.now(KST).replace(microsecond=0)
    if args.start:
        start = datetime.fromisoformat(args.start)
        return start if start.tzinfo is not None else start.replace(tzinfo=KST)
    return None


def _spec(args: argparse.Namespace) -> WorldSpec:
    from pathsentry.sim.params import parse_params
    from pathsentry.sim.social import with_social
    from pathsentry.sim.worlds import world_spec

    try:
        params = parse_params(args.params, args.seed, args.hours)
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise SystemExit(f"simulate: --params: {e}") from None
    start = _start(args)
    if getattr(args, "live", False):
        start = datetime.now(KST).replace(microsecond=0) - timedelta(hours=args.backlog_hours)
    if start is None and params.name != "random":
        start = DEFAULT_START
    if getattr(args, "social", False):
        params = with_social(params)
    params = _overrun(params, args)
    return world_spec(args.seed, args.accounts, args.hours, params, start)


def _overrun(params: WorldParams, args: argparse.Namespace) -> WorldParams:
    from pathsentry.sim.params import with_overrun

    try:
        return with_overrun(params, args.loop_overrun)
    except ValueError as e:
        raise SystemExit(f"--loop-overrun: {e}") from None


def cmd_simulate(args: argparse.Namespace) -> int:
    from pathsentry.sim.world import iter_live, iter_world, write_world, write_world_files

    spec = _spec(args)
    t0 = time.perf_counter()
    if args.live and not args.to_kafka:
        raise SystemExit("simulate: --live streams to Kafka; add --to-kafka")
    if args.live:
        from pathsentry.config import load_config
        from pathsentry.streams.producer import produce_stream

        if args.out:
            write_world_files(spec, args.out)
        print(f"playing the world live from {spec.start.isoformat()} (backlog {args.backlog_hours:g} h at "
              f"up to {args.rate or 'max'} events/s, then in real time), one {spec.hours:g} h segment "
              "after another until stopped", flush=True)
        sent = produce_stream(load_config(args.config), iter_live(spec), args.rate, not_before_ts=True)
        print(f"sent {sent} events in {time.perf_counter() - t0:.1f} s")
        return 0
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

    if args.worlds is not None:
        return _evaluate_worlds(args)
    if not args.world:
        raise SystemExit("evaluate: give a world directory, or --worlds N")
    out = args.out or args.world
    report = evaluate_world(args.world, out)
    print(render_markdown(report))
    print(f"wrote {out}/report.json and {out}/report.md")
    return 0


def _evaluate_worlds(args: argparse.Namespace) -> int:
    import json

    from pathsentry.sim.worlds import evaluate_worlds, render_worlds_markdown

    if args.world:
        raise SystemExit("evaluate: --worlds draws its own worlds; give no world directory")
    t0 = time.perf_counter()
    result = evaluate_worlds(args.worlds, args.seed, args.accounts, args.hours, jobs=args.jobs,
                             start=_start(args), keep_dir=args.out, social=args.social,
                             overrun=args.loop_overrun)
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(render_worlds_markdown(result))
        print(f"{args.worlds} worlds in {time.perf_counter() - t0:.0f} s")
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
    p.add_argument("--live", action="store_true",
                   help="with --to-kafka: play the world without end, never ahead of the wall clock "
                        "(a backlog first, then in real time; one --hours segment after another)")
    p.add_argument("--backlog-hours", type=float, default=2.0,
                   help="with --live: how far back the world starts (sent at --rate)")
    p.add_argument("--params", default="random",
                   help="world parameters: random (drawn from --seed; default), fixed (the original "
                        "single world), demo (fixed, its injecting box on all day), a JSON object, "
                        "or @file.json")
    p.add_argument("--social", action="store_true",
                   help="add the social layer: labels, interactions, planted account takeovers and "
                        "their hard negatives (new phone, travel, family PC)")
    _overrun_arg(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("evaluate", help="replay a simulated world and score the detectors")
    p.add_argument("world", nargs="?", help="directory written by pathsentry simulate")
    p.add_argument("--out", help="directory for report.json / report.md (default: the world); "
                                 "with --worlds, keep each world's files under it")
    p.add_argument("--worlds", type=int, help="evaluate N randomized worlds (seeds --seed..--seed+N-1)")
    p.add_argument("--seed", type=int, default=1, help="first world's seed (with --worlds)")
    p.add_argument("--accounts", type=int, default=1500, help="accounts per world (with --worlds)")
    p.add_argument("--hours", type=float, default=6.0, help="hours per world (with --worlds)")
    p.add_argument("--start", help="start every world here (default: each world's drawn hour)")
    p.add_argument("--jobs", type=int, default=None, help="worlds evaluated in parallel (default: cores)")
    p.add_argument("--json", action="store_true",
                   help='print {"worlds": [{"seed", "params", "metrics"}...], "pooled", "worst"}')
    p.add_argument("--social", action="store_true",
                   help="add the social layer: labels, interactions, planted account takeovers and "
                        "their hard negatives (new phone, travel, family PC)")
    _overrun_arg(p)
    p.set_defaults(func=cmd_evaluate)


def _overrun_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loop-overrun", type=float, default=0.0, metavar="SHARE",
                   help="the share of app pings the game servers answer one tick late, as a "
                        "loop overrunning its tick under load (default 0: every answer within "
                        "its tick)")
