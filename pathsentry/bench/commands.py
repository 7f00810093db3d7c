"""``pathsentry bench``."""

from __future__ import annotations

import argparse
import json

__all__ = ["register"]


def cmd_bench(args: argparse.Namespace) -> int:
    from pathsentry.bench.run import format_result, run_bench

    if args.decode_only:
        from pathsentry.bench.decode import format_decode, measure_decode
        from pathsentry.bench.run import world_payloads

        dec = measure_decode(world_payloads(args.events, args.accounts, args.seed))
        print(json.dumps(dec.as_dict(), indent=2) if args.json else format_decode(dec))
        return 0

    if args.engine_only:
        from pathsentry.bench.engine import format_engine, measure_engine
        from pathsentry.bench.run import bench_world, world_payloads

        config = bench_world(args.accounts, args.seed, args.workdir)
        eng = measure_engine(world_payloads(args.events, args.accounts, args.seed), config,
                             rounds=args.rounds)
        print(json.dumps(eng.as_dict(), indent=2) if args.json else format_engine(eng))
        return 0 if eng.same_findings else 1

    if args.saves_only:
        from pathsentry.bench.run import bench_world, world_payloads
        from pathsentry.bench.saves import format_saves, measure_saves

        config = bench_world(args.accounts, args.seed, args.workdir)
        sav = measure_saves(world_payloads(args.events, args.accounts, args.seed), config,
                            rounds=args.rounds, workdir=args.workdir)
        print(json.dumps(sav.as_dict(), indent=2) if args.json else format_saves(sav))
        return 0 if all(r["ok"] for rs in sav.rounds.values() for r in rs) else 1

    res = run_bench(
        args.events, accounts=args.accounts, seed=args.seed, partitions=args.partitions,
        rate=args.rate, latency_seconds=args.latency_seconds, workdir=args.workdir,
        state_accounts=args.state_accounts, state_prefixes=args.state_prefixes,
        log=(lambda s: None) if args.json else print,
    )
    if args.json:
        print(json.dumps(res.as_dict(), indent=2))
    else:
        print(format_result(res))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="throughput/latency of the pipeline vs raw aiokafka and naive Faust")
    p.add_argument("--events", type=int, default=200_000, help="events preloaded for the throughput phases")
    p.add_argument("--accounts", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--rate", type=float, default=10_000.0, help="offered events/s in the latency phase")
    p.add_argument("--latency-seconds", type=float, default=20.0)
    p.add_argument("--state-accounts", type=int, default=0,
                   help="also measure detector memory with this many distinct accounts (e.g. 1000000)")
    p.add_argument("--state-prefixes", type=int, default=100_000)
    p.add_argument("--workdir", help="directory for logs and chDB (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--decode-only", action="store_true",
                   help="only time decoding (parse_event and the compiled decoder) in this process")
    p.add_argument("--engine-only", action="store_true",
                   help="only time validation and the engine, pure and compiled, each in its own process")
    p.add_argument("--saves-only", action="store_true",
                   help="only time the periodic session-stage save, on the event loop and in a "
                        "forked child, and the loop's longest stall during each")
    p.add_argument("--rounds", type=int, default=2,
                   help="--engine-only: runs of each engine; --saves-only: saves of each way")
    p.set_defaults(func=cmd_bench)
