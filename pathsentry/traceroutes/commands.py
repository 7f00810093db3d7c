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
from typing import Any

import orjson

from pathsentry.commands.events_out import add_output_args, send_events
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


def _target(text: str | None) -> Any:
    from pathsentry.traceroutes.check import Target

    if text is None:
        return None
    parts = text.split(",")
    try:
        lat, lon, country = float(parts[0]), float(parts[1]), parts[2].strip().upper()
    except (IndexError, ValueError):
        raise ValueError(f"--target {text!r}: expected LAT,LON,CC") from None
    if len(parts) != 3 or not -90 <= lat <= 90 or not -180 <= lon <= 180 or len(country) != 2:
        raise ValueError(f"--target {text!r}: expected LAT,LON,CC")
    return Target(lat, lon, country)


def _summary(label: str, verdicts: list[Any]) -> str:
    judged = [v for v in verdicts if not v.skipped]
    homes = Counter(v.home or "?" for v in judged)
    countries = ", ".join(f"{c} {n}" for c, n in sorted(homes.items(), key=lambda kv: (-kv[1], kv[0])))
    flagged = sum(v.flagged for v in judged)
    return (f"{label}: judged {len(judged)} traceroutes from {len(homes)} countries "
            f"({countries}); flagged route_anomaly: {flagged}")


def _check(args: argparse.Namespace, events: Iterator[dict[str, Any]]) -> None:
    from pathsentry.enrich.geo import build_resolver
    from pathsentry.traceroutes.check import check_routes, synthetic_relays

    cfg = load_config(args.config, geo=args.geo)
    geo = build_resolver(cfg.geo)
    target = _target(args.target)
    converted = list(events)
    out = sys.stdout.buffer
    verdicts = []
    for verdict in check_routes(converted, cfg, geo, target, args.silence):
        out.write(orjson.dumps(verdict.as_dict()) + b"\n")
        verdicts.append(verdict)
    print(_summary("as measured", [v for v in verdicts if not v.silenced]), file=sys.stderr)
    skipped = Counter(v.skipped.split(" (")[0] for v in verdicts if v.skipped)
    if skipped:
        print("skipped: " + ", ".join(f"{r} {n}" for r, n in skipped.most_common()),
              file=sys.stderr)
    for k in range(1, args.silence + 1):
        label = f"first {k} answering hop{'s' if k > 1 else ''} silent"
        print(_summary(label, [v for v in verdicts if v.silenced == k]), file=sys.stderr)
    if args.relays:
        relays = []
        for verdict in synthetic_relays(converted, cfg, geo, target):
            out.write(orjson.dumps({**verdict.as_dict(), "relay": True}) + b"\n")
            relays.append(verdict)
        print(f"synthetic relays: {sum(v.flagged for v in relays)} of {len(relays)} flagged",
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
        else:
            send_events(args, events, "traceroute")
    except (OSError, ValueError) as e:
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
    dest = add_output_args(p, "--to-kafka, --check")
    dest.add_argument("--check", action="store_true",
                      help="run the route detector over them, each with its source's "
                      "country as home and a server at its target, and print the verdicts")
    p.add_argument("--target", metavar="LAT,LON,CC",
                   help="--check: where the traceroutes' target really is (default: where "
                   "each target geolocates)")
    p.add_argument("--silence", type=int, default=0, metavar="K",
                   help="--check: judge each traceroute again with its first 1..K answering "
                   "public hops silent")
    p.add_argument("--relays", action="store_true",
                   help="--check: also judge synthetic relays made of the traceroutes' hops")
    p.add_argument("--server-id", help="the server the traceroutes' target is (added as server_id)")
    p.add_argument("--src-ip", help="mtr: the public address the reports were run from")
    p.add_argument("--ts", help="mtr: when the reports were run (ISO 8601; default: now)")
    p.add_argument("--geo", action="append", default=[],
                   help="--check: geo source stacked first (CSV prefix table or .mmdb)")
    p.set_defaults(func=cmd_traceroutes)
