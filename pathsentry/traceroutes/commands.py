"""``pathsentry traceroutes FILE... --format atlas|mtr [--out FILE | --to-kafka | --check]``.

Converts traceroute results measured by other tools into contract-v1
``traceroute`` events, JSONL on standard output unless ``--out`` or ``--to-kafka``.
A record that cannot be converted is reported on standard error with its file,
position and reason, and the others are still converted; the exit status is 1 when
any record was bad, 2 when a file could not be read. ``--check`` runs the route
detector over the converted traceroutes instead (:mod:`.check`) and prints one
verdict per traceroute as JSONL, then a summary on standard error.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from pathsentry.config import load_config
from pathsentry.traceroutes.records import RecordError, read_records

__all__ = ["register"]


def _convert(args: argparse.Namespace, errors: list[str]) -> Iterator[dict[str, Any]]:
    from pathsentry.traceroutes.atlas import atlas_event
    from pathsentry.traceroutes.mtr import mtr_event

    for path in args.files:
        with open(path, encoding="utf-8") as fh:
            rows = list(read_records(fh, path))
        for row in rows:
            if row.error is not None:
                errors.append(row.error)
                continue
            try:
                if args.format == "atlas":
                    yield atlas_event(row.record, args.server_id)
                else:
                    yield mtr_event(row.record, args.src_ip, args.ts, args.server_id)
            except RecordError as e:
                errors.append(f"{row.where}: {e}")


def _write(events: Iterator[dict[str, Any]], fh: IO[bytes]) -> int:
    n = 0
    for event in events:
        fh.write(orjson.dumps(event) + b"\n")
        n += 1
    return n


def _check(args: argparse.Namespace, events: Iterator[dict[str, Any]]) -> None:
    from pathsentry.enrich.geo import build_resolver
    from pathsentry.traceroutes.check import check_routes

    cfg = load_config(args.config, geo=args.geo)
    geo = build_resolver(cfg.geo)
    homes: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    flagged = judged = 0
    out = sys.stdout.buffer
    for verdict in check_routes(events, cfg, geo):
        out.write(orjson.dumps(verdict.as_dict()) + b"\n")
        if verdict.skipped:
            skipped[verdict.skipped] += 1
            continue
        judged += 1
        homes[verdict.home or "?"] += 1
        flagged += verdict.flagged
    countries = ", ".join(f"{c} {n}" for c, n in sorted(homes.items(), key=lambda kv: (-kv[1], kv[0])))
    print(f"judged {judged} traceroutes from {len(homes)} countries ({countries}); "
          f"flagged route_anomaly: {flagged}", file=sys.stderr)
    if skipped:
        print("skipped: " + ", ".join(f"{r} {n}" for r, n in skipped.most_common()),
              file=sys.stderr)


def cmd_traceroutes(args: argparse.Namespace) -> int:
    if args.format == "mtr" and not args.src_ip:
        print("pathsentry traceroutes: --format mtr needs --src-ip (mtr does not record "
              "the public source address)", file=sys.stderr)
        return 2
    if args.ts is None:
        args.ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    errors: list[str] = []
    events = _convert(args, errors)
    try:
        if args.check:
            _check(args, events)
        elif args.to_kafka:
            from pathsentry.streams.producer import produce_stream

            n = produce_stream(load_config(args.config), events, rate=None)
            print(f"sent {n} traceroute events", file=sys.stderr)
        elif args.out:
            with open(args.out, "wb") as fh:
                n = _write(events, fh)
            print(f"wrote {n} traceroute events to {args.out}", file=sys.stderr)
        else:
            _write(events, sys.stdout.buffer)
    except OSError as e:
        print(f"pathsentry traceroutes: {e}", file=sys.stderr)
        return 2
    for error in errors:
        print(f"bad record {error}", file=sys.stderr)
    if errors:
        print(f"{len(errors)} bad records", file=sys.stderr)
    return 1 if errors else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "traceroutes",
        help="traceroute results of other tools (RIPE Atlas, mtr --json) to traceroute events",
        description="Convert RIPE Atlas traceroute results (a JSON array, an API answer "
        "with a results array, or JSONL) or mtr --json reports into contract-v1 "
        "traceroute events (client_to_server, from the source's public address).",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="results files")
    p.add_argument("--format", choices=("atlas", "mtr"), default="atlas",
                   help="what the files hold (default: atlas)")
    dest = p.add_mutually_exclusive_group()
    dest.add_argument("--out", metavar="FILE", help="write the events as JSONL")
    dest.add_argument("--to-kafka", action="store_true",
                      help="send the events to the network-telemetry topic")
    dest.add_argument("--check", action="store_true",
                      help="run the route detector over them, each with its source's "
                      "country as home and a server at its target, and print the verdicts")
    p.add_argument("--server-id", help="the server the traceroutes' target is (added as server_id)")
    p.add_argument("--src-ip", help="mtr: the public address the reports were run from")
    p.add_argument("--ts", help="mtr: when the reports were run (ISO 8601; default: now)")
    p.add_argument("--config", help="pathsentry.toml (for --to-kafka, --check)")
    p.add_argument("--geo", action="append", default=[],
                   help="--check: geo source stacked first (CSV prefix table or .mmdb)")
    p.set_defaults(func=cmd_traceroutes)
