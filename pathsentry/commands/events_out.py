"""Where a converting command's contract events go: the Kafka topics (``--to-kafka``),
a JSONL file (``--out FILE``) or standard output; shared by ``pathsentry sensor`` and
``pathsentry traceroutes``.

>>> import io
>>> buf = io.BytesIO()
>>> write_jsonl(iter([{"kind": "traceroute"}, {"kind": "traceroute"}]), buf), buf.getvalue()
(2, b'{"kind":"traceroute"}\\n{"kind":"traceroute"}\\n')
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import IO, Any

import orjson

from pathsentry.config import load_config

__all__ = ["add_output_args", "send_events", "write_jsonl"]


def add_output_args(p: argparse.ArgumentParser, config_for: str = "--to-kafka") -> Any:
    """``--out FILE`` | ``--to-kafka`` (exclusive: the group is returned for more) and
    ``--config`` (read for ``config_for``)."""
    dest = p.add_mutually_exclusive_group()
    dest.add_argument("--out", metavar="FILE", help="write the events as JSONL")
    dest.add_argument("--to-kafka", action="store_true",
                      help="send the events to the network-telemetry topic")
    p.add_argument("--config", help=f"pathsentry.toml (for {config_for})")
    return dest


def write_jsonl(events: Iterable[dict[str, Any]], fh: IO[bytes]) -> int:
    """Write ``events`` one JSON object a line; returns how many."""
    n = 0
    for event in events:
        fh.write(orjson.dumps(event) + b"\n")
        n += 1
    return n


def send_events(args: argparse.Namespace, events: Iterable[dict[str, Any]], kind: str) -> None:
    """``events`` (of ``kind``, for the summary on standard error) to the producers'
    topics of ``args.config`` (``args.to_kafka``), to the file ``args.out``, or to
    standard output."""
    if args.to_kafka:
        from pathsentry.streams.producer import produce_stream

        n = produce_stream(load_config(args.config), events, rate=None)
        print(f"sent {n} {kind} events", file=sys.stderr)
    elif args.out:
        with open(args.out, "wb") as fh:
            n = write_jsonl(events, fh)
        print(f"wrote {n} {kind} events to {args.out}", file=sys.stderr)
    else:
        write_jsonl(events, sys.stdout.buffer)
