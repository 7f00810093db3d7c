"""``pathsentry sensor PCAP... [--to-kafka | --out FILE]``.

Without ``--to-kafka`` or ``--out`` the events are written to standard output as
JSONL. Several captures are read as one, in time order, whatever order they are
given in. A capture that cannot be read (not pcap/pcapng, a link type not decoded)
stops the run before any event, with the reason; frames skipped (not TCP,
fragments, encapsulations not decoded) and flows the contract cannot carry are
counted on standard error.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from pathsentry.commands.events_out import add_output_args, send_events
from pathsentry.sensor.decode import CaptureError
from pathsentry.sensor.flows import IDLE_TIMEOUT_S, SensorSettings, capture_events
from pathsentry.sensor.reader import check_captures

__all__ = ["register"]


def cmd_sensor(args: argparse.Namespace) -> int:
    settings = SensorSettings(idle_timeout_s=args.idle_timeout)
    skipped: Counter[str] = Counter()
    try:
        check_captures(args.pcaps)  # before any output is opened
        send_events(args, capture_events(args.pcaps, settings, skipped), "http_probe")
    except CaptureError as e:
        print(f"pathsentry sensor: {e}", file=sys.stderr)
        return 2
    if skipped:
        counts = ", ".join(f"{reason} {n}" for reason, n in skipped.most_common())
        print(f"skipped: {counts}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sensor",
        help="passive sensor: pcap/pcapng captures to http_probe events",
        description="Read the captures as one, in time order; reassemble TCP per flow and "
        "report each HTTP / WebSocket exchange, each TLS connection and any other "
        "connection holding a sequence conflict as a contract-v1 http_probe event.",
    )
    p.add_argument("pcaps", nargs="+", metavar="PCAP", help="pcap or pcapng capture files")
    add_output_args(p)
    p.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT_S,
                   help="seconds of capture time after which a silent flow is reported")
    p.set_defaults(func=cmd_sensor)
