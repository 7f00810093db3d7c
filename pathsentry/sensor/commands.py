"""``pathsentry sensor PCAP... [--to-kafka | --out FILE]``.

Without ``--to-kafka`` or ``--out`` the events are written to standard output as
JSONL.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import IO, Any

import orjson

from pathsentry.config import load_config
from pathsentry.sensor.flows import IDLE_TIMEOUT_S, SensorSettings, capture_events

__all__ = ["register"]


def _write_jsonl(events: Iterable[dict[str, Any]], fh: IO[bytes]) -> int:
    n = 0
    for event in events:
        fh.write(orjson.dumps(event) + b"\n")
        n += 1
    return n


def cmd_sensor(args: argparse.Namespace) -> int:
    settings = SensorSettings(idle_timeout_s=args.idle_timeout)
    events = capture_events(args.pcaps, settings)
    if args.to_kafka:
        from pathsentry.streams.producer import produce_stream

        n = produce_stream(load_config(args.config), events, rate=None)
        print(f"sent {n} http_probe events", file=sys.stderr)
    elif args.out:
        with open(args.out, "wb") as fh:
            n = _write_jsonl(events, fh)
        print(f"wrote {n} http_probe events to {args.out}", file=sys.stderr)
    else:
        _write_jsonl(events, sys.stdout.buffer)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sensor",
        help="passive sensor: pcap/pcapng captures to http_probe events",
        description="Reassemble TCP per flow and report each HTTP / WebSocket / TLS "
        "exchange as a contract-v1 http_probe event.",
    )
    p.add_argument("pcaps", nargs="+", metavar="PCAP", help="pcap or pcapng capture files")
    dest = p.add_mutually_exclusive_group()
    dest.add_argument("--to-kafka", action="store_true",
                      help="send the events to the network-telemetry topic")
    dest.add_argument("--out", metavar="FILE", help="write the events as JSONL")
    p.add_argument("--config", help="pathsentry.toml (for --to-kafka)")
    p.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT_S,
                   help="seconds of capture time after which a silent flow is reported")
    p.set_defaults(func=cmd_sensor)
