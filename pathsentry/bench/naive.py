"""Baseline for ``pathsentry bench``: a naive Faust agent that handles one message at
a time with the same decoding as the pipeline (orjson + pydantic contract
validation) and nothing else. Run as a process::

    python -m pathsentry.bench.naive --bootstrap 127.0.0.1:9092 --prefix bench. --n 100000 \
        --datadir /tmp/naive

It prints one JSON line ``{"events": N, "seconds": S, "rate": R}`` and exits.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import orjson

from pathsentry.schemas import EventError, parse_event

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    import faust

    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--web-port", type=int, default=0)
    ap.add_argument("--datadir", required=True, help="Faust's data directory (its table state)")
    args = ap.parse_args(argv)

    app = faust.App(
        f"{args.prefix}naive",
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        datadir=args.datadir,
        value_serializer="raw",
        key_serializer="raw",
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        web_enabled=False,
        web_port=args.web_port or 6067,
    )
    topic = app.topic(f"{args.prefix}logins", f"{args.prefix}network-telemetry",
                      value_type=bytes, key_type=bytes)
    state: dict[str, Any] = {"n": 0, "bad": 0, "t0": None}

    @app.agent(topic, concurrency=1)
    async def naive(stream: Any) -> None:
        async for value in stream:
            if state["t0"] is None:
                state["t0"] = time.perf_counter()
            try:
                parse_event(value)
            except EventError:
                state["bad"] += 1
            state["n"] += 1
            if state["n"] >= args.n:
                secs = time.perf_counter() - state["t0"]
                sys.stdout.write(orjson.dumps(
                    {"events": state["n"], "seconds": secs, "rate": state["n"] / secs}).decode() + "\n")
                sys.stdout.flush()
                os._exit(0)

    worker = faust.Worker(app, loglevel="error", redirect_stdouts=False, quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
