"""CLI subcommands of the streaming side: ``worker``, ``demo``, ``broker``,
``topics`` and ``query``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from pathsentry.commands.access import (
    QUERY_TOKEN_FILE,
    WORKER_URL_FILE,
    resolve_worker,
    run_query,
    utc_text,
    write_query_token,
    write_worker_url,
)
from pathsentry.commands.core import add_config_args
from pathsentry.config import Config, load_config

__all__ = ["format_table", "register"]

log = logging.getLogger("pathsentry")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


def cmd_topics(args: argparse.Namespace) -> int:
    from pathsentry.infra.broker import create_topics
    from pathsentry.streams.kafka import bootstrap_servers, client_kwargs
    from pathsentry.streams.topics import Topics

    cfg = load_config(args.config)
    topics = Topics(cfg.kafka)
    wanted = topics.all()
    if args.partitions:  # the rooms topic keeps its one partition (one merger sees every alert)
        wanted = {t: n if t == topics.rooms else args.partitions for t, n in wanted.items()}
    created = asyncio.run(create_topics(bootstrap_servers(cfg), wanted, cfg.kafka.replication_factor,
                                        client_kwargs(cfg), topics.configs()))
    for name, n in wanted.items():
        print(f"{name:40s} partitions={n} {'created' if name in created else 'exists'}")
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from pathsentry.infra.broker import EmbeddedBroker, broker_url_file

    cfg = load_config(args.config)
    broker = EmbeddedBroker(port=args.port, log_dir=cfg.data_dir, url_file=broker_url_file(cfg.data_dir))
    broker.start()
    print(f"embedded broker at {broker.url} (log {broker.log_path}); Ctrl-C to stop", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0


def ensure_topics(cfg: Config) -> None:
    from pathsentry.infra.broker import create_topics
    from pathsentry.streams.kafka import bootstrap_servers, client_kwargs
    from pathsentry.streams.topics import Topics

    topics = Topics(cfg.kafka)
    asyncio.run(create_topics(bootstrap_servers(cfg), topics.all(), cfg.kafka.replication_factor,
                              client_kwargs(cfg), topics.configs()))


def cmd_worker(args: argparse.Namespace) -> int:
    import faust

    from pathsentry.engine import tune_gc
    from pathsentry.streams.app import create_app
    from pathsentry.streams.web import WebAccess

    _setup_logging(args.loglevel)
    cfg = load_config(args.config, geo=args.geo)
    ensure_topics(cfg)
    app, pipe = create_app(cfg, worker_id=args.worker_id, web_port=args.web_port)
    tune_gc()
    extra: dict[str, Any] = {}
    if args.log_format == "json":
        from pathsentry.streams.logs import logging_config

        extra["logging_config"] = logging_config(args.loglevel)
    worker = faust.Worker(app, loglevel=args.loglevel, redirect_stdouts=False, **extra)
    # Faust's start-up spinner, kept at --loglevel warning and above, sets the root logger
    # to DEBUG to spin on every record: each debug call of aiokafka, Faust and mode would
    # then build a record that the handler drops, thousands a second under load
    worker.spinner = None
    access = WebAccess.from_env()
    log.info("worker %s: stats/metrics on http://%s:%d%s", args.worker_id, access.host, args.web_port,
             ", /query with a bearer token" if access.token else "; /query off (no PATHSENTRY_QUERY_TOKEN)")
    try:
        worker.execute_from_commandline()
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        pipe.save_snapshot()
        pipe.sink.close()
        pipe.ch.close()
    return 0


def _http_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def format_table(columns: list[str], rows: list[list[Any]] | list[tuple[Any, ...]], width: int = 60) -> str:
    """Plain-text table.

    >>> print(format_table(["a", "b"], [[1, "x"]]))
    a | b
    --+--
    1 | x
    """
    def cell(v: Any) -> str:
        s = v if isinstance(v, str) else json.dumps(v, default=str)
        return s if len(s) <= width else s[: width - 1] + "…"

    body = [[cell(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in body]) for i, c in enumerate(columns)]
    line = " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()
    sep = "-+-".join("-" * w for w in widths)
    out = [line, sep] + [
        " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in body
    ]
    return "\n".join(out)


def cmd_query(args: argparse.Namespace) -> int:
    from pathsentry.queries import QUERIES, database_name, render

    if args.list or not (args.name or args.sql):
        for name, (desc, _) in QUERIES.items():
            print(f"{name:24s} {desc}")
        return 0
    if args.name and args.name not in QUERIES:
        raise SystemExit(f"query: no query named {args.name!r}; `pathsentry query --list` lists them")
    cfg = load_config(args.config)
    worker = resolve_worker(args.worker, cfg)
    db = database_name(cfg.clickhouse.url)
    sql = args.sql or render(args.name, db)
    cols, rows = run_query(cfg, sql, worker)
    if args.json:
        print(json.dumps([dict(zip(cols, r, strict=True)) for r in rows], default=str, indent=1))
    else:
        print(format_table(cols, [[utc_text(v) for v in r] for r in rows]))
        print(f"({len(rows)} rows{', read through the worker at ' + worker if worker else ''})")
    return 0


def _stats_line(st: dict[str, Any], sent: int | None) -> str:
    """The demo's live counts: what a SOC counts (distinct flagged events and alerts stored),
    then the alert versions stored (an alert is re-emitted each time it grows).

    >>> _stats_line({"events_in": 9, "flagged": 4, "alerts": 2, "alert_versions": 5,
    ...              "dead_letter": 0, "last_batch_ms": 1.5}, None)
    'events=9  flagged=4  alerts=2  alert-versions=5  dead-letter=0  batch=1.5ms'
    """
    parts = [f"events={st['events_in']}", f"flagged={st['flagged']}", f"alerts={st['alerts']}",
             f"alert-versions={st['alert_versions']}",
             f"dead-letter={st['dead_letter']}", f"batch={st['last_batch_ms']}ms"]
    if sent is not None:
        parts.insert(0, f"backend sent≈{sent}")
    return "  ".join(parts)


def _print_analyst_commands(root: Path, base: str) -> None:
    """The analyst commands to paste into another terminal while the demo runs."""
    exe = Path(sys.executable).parent / "pathsentry"
    cli = str(exe) if exe.exists() else f"{sys.executable} -m pathsentry"
    print("[demo] in another terminal (the demo's worker is found by itself):", flush=True)
    for cmd in ("query --list", "query top-relay-prefixes", "query farm-groups",
                "report --out report.html"):
        print(f"[demo]   {cli} {cmd}", flush=True)
    print(f"[demo]   curl -s {base}/metrics | head", flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    """Embedded broker + chDB + a worker + a simulated game backend, with live counts."""
    from pathsentry.infra.broker import EmbeddedBroker, broker_url_file, free_port, parent_death_signal

    _setup_logging("WARNING")
    # Ctrl-C and a TERM both stop the demo in order (also when started where SIGINT is ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    root = Path(args.dir).resolve()
    if root.exists() and not args.keep:
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    world = root / "world"
    py = sys.executable

    from pathsentry.sim import WorldSpec, write_world_files
    from pathsentry.sim.params import demo_params

    print(f"[demo] simulated game world (seed {args.seed}, {args.accounts} accounts): {world}", flush=True)
    write_world_files(WorldSpec(seed=args.seed, accounts=args.accounts, hours=args.hours,
                                params=demo_params()), world)
    broker = EmbeddedBroker(log_dir=root, url_file=broker_url_file(root), own_session=True)
    broker.start()
    print(f"[demo] broker (tansu, embedded) at {broker.url}", flush=True)
    env = dict(os.environ)
    env.update({
        "PATHSENTRY_CONFIG": str(world / "pathsentry.toml"),
        "PATHSENTRY_KAFKA_URL": broker.url,
        "PATHSENTRY_CLICKHOUSE_URL": f"chdb://{root / 'chdb'}",
        "PATHSENTRY_DATA_DIR": str(root),
    })
    token = secrets.token_urlsafe(24)  # the demo's worker answers /query to this token only
    env["PATHSENTRY_QUERY_TOKEN"] = token
    write_query_token(root, token)
    web_port = args.web_port or free_port()
    procs: list[subprocess.Popen[bytes]] = []
    worker_log = open(root / "worker.log", "ab")  # noqa: SIM115 - closed in finally
    backend_log = open(root / "backend.log", "ab")  # noqa: SIM115 - closed in finally
    try:
        # every child in its own session: Ctrl-C reaches the demo alone, which stops them in order
        procs.append(subprocess.Popen(
            [py, "-m", "pathsentry", "worker", "--web-port", str(web_port)],
            env=env, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=parent_death_signal(signal.SIGTERM),
        ))
        base = f"http://127.0.0.1:{web_port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                _http_json(base + "/stats")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if procs[0].poll() is not None or time.monotonic() > deadline:
                    print(f"[demo] worker failed to start; see {root / 'worker.log'}", flush=True)
                    return 1
                time.sleep(0.5)
        write_worker_url(root, base)
        print(f"[demo] worker up (stats/metrics/query on {base}); the game backend plays the last "
              f"{args.backlog_hours:g} h at up to {args.rate:g} events/s, then live, without end", flush=True)
        _print_analyst_commands(root, base)
        procs.append(subprocess.Popen(
            [py, "-m", "pathsentry", "simulate", "--seed", str(args.seed), "--accounts",
             str(args.accounts), "--hours", str(args.hours), "--params", "demo", "--live",
             "--backlog-hours", str(args.backlog_hours), "--to-kafka", "--rate", str(args.rate)],
            env=env, stdout=backend_log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=parent_death_signal(signal.SIGTERM),
        ))
        started = time.monotonic()
        shown: set[str] = set()
        while args.duration <= 0 or time.monotonic() - started < args.duration:
            time.sleep(args.interval)
            try:
                st = _http_json(base + "/stats")
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                print("[demo] worker not answering", flush=True)
                if procs[0].poll() is not None:
                    return 1
                continue
            print(f"[demo] {_stats_line(st, None)}", flush=True)
            try:
                _, rows = run_query(
                    load_config(env["PATHSENTRY_CONFIG"], env={}),
                    # the newest of every kind: a rare kind is not crowded out by a frequent one
                    "SELECT alert_id, kind, severity, summary FROM pathsentry.alerts FINAL "
                    "ORDER BY last_seen DESC LIMIT 2 BY kind", base, token,
                )
            except SystemExit:
                continue
            for r in rows:
                if r[0] not in shown:
                    shown.add(r[0])
                    print(f"[demo]   ALERT {r[1]:15s} {r[2]:8s} {r[3]}", flush=True)
        return 0
    except KeyboardInterrupt:
        print("\n[demo] stopping", flush=True)
        return 0
    finally:
        # the backend first, then the worker (it saves its state through the broker), then the broker
        t0 = time.monotonic()
        for p, grace in zip(reversed(procs), (5.0, 30.0), strict=False):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        (root / WORKER_URL_FILE).unlink(missing_ok=True)
        (root / QUERY_TOKEN_FILE).unlink(missing_ok=True)
        broker.stop()
        worker_log.close()
        backend_log.close()
        print(f"[demo] stopped in {time.monotonic() - t0:.1f} s; logs and chDB data in {root}", flush=True)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("worker", help="run a stream worker (one consumer-group member)")
    add_config_args(p)
    p.add_argument("--worker-id", default=os.environ.get("PATHSENTRY_WORKER_ID", "worker-1"))
    p.add_argument("--web-port", type=int, default=int(os.environ.get("PATHSENTRY_WEB_PORT", "6066")),
                   help="port of /stats, /metrics and /query (each worker needs its own)")
    p.add_argument("--loglevel", default="info")
    p.add_argument("--log-format", choices=("text", "json"),
                   default=os.environ.get("PATHSENTRY_LOG_FORMAT", "text"),
                   help="json: one JSON object per log line (for log shippers)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("demo", help="live demo: embedded broker, chDB, a worker and a simulated game backend")
    p.add_argument("--dir", default="./var/demo", help="working directory (wiped unless --keep)")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--accounts", type=int, default=4000)
    p.add_argument("--hours", type=float, default=1.0,
                   help="length of one segment of the live world (a new one follows, without end)")
    p.add_argument("--backlog-hours", type=float, default=2.0,
                   help="the world starts this long ago; the backlog is sent at --rate, then live")
    p.add_argument("--rate", type=float, default=400.0, help="events/s at most sent by the game backend")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until Ctrl-C)")
    p.add_argument("--interval", type=float, default=3.0)
    p.add_argument("--web-port", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (Tansu)")
    p.add_argument("--config")
    p.add_argument("--port", type=int, default=None)
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("topics", help="create the topics (partitions from config or --partitions)")
    p.add_argument("--config")
    p.add_argument("--partitions", type=int, default=None)
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("query", help="run a named analyst query (or --sql) and print a table")
    p.add_argument("name", nargs="?", help="query name (see --list)")
    p.add_argument("--sql", help="a read-only SQL statement instead of a named query")
    p.add_argument("--worker", help="query through a worker's endpoint, e.g. http://127.0.0.1:6066 "
                   "(needed for chDB while a worker holds the directory)")
    p.add_argument("--config")
    p.add_argument("--list", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_query)
