"""CLI subcommand ``report``: write the SOC report as one HTML file.

>>> import argparse
>>> p = argparse.ArgumentParser(); sub = p.add_subparsers()
>>> register(sub)
>>> args = p.parse_args(["report", "--out", "r.html", "--worker", "http://127.0.0.1:6066"])
>>> args.out, args.worker
('r.html', 'http://127.0.0.1:6066')
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pathsentry.config import load_config

__all__ = ["describe_url", "register"]


def describe_url(url: str) -> str:
    """Where the data comes from, without credentials.

    >>> describe_url("clickhouse://soc:secret@ch.internal:9000/pathsentry")
    'clickhouse://ch.internal:9000/pathsentry'
    >>> describe_url("chdb:///var/lib/pathsentry/chdb")
    'chdb:///var/lib/pathsentry/chdb'
    """
    u = urlparse(url)
    host = u.hostname or ""
    port = f":{u.port}" if u.port else ""
    return f"{u.scheme}://{host}{port}{u.path}"


def cmd_report(args: argparse.Namespace) -> int:
    from pathsentry.commands.access import resolve_worker, run_query
    from pathsentry.queries import database_name
    from pathsentry.report.build import ReportQueryError, Source, build_report

    cfg = load_config(args.config)
    worker = resolve_worker(args.worker, cfg)

    def query(sql: str) -> tuple[Sequence[str], Sequence[Sequence[Any]]]:
        try:
            return run_query(cfg, sql, worker)
        except SystemExit as e:  # run_query reports every failure this way
            raise ReportQueryError(str(e.code)) from None

    origin = f"worker {worker}" if worker else describe_url(cfg.clickhouse.url)
    try:
        source = Source(query, database_name(cfg.clickhouse.url))
        report = build_report(source, origin=origin, title=args.title)
    except ReportQueryError as e:
        print(f"pathsentry report: {e}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.html, encoding="utf-8")
    print(f"wrote {out}: {report.filled} of {report.sections} sections with data, read from {origin}")
    if report.filled == 0:
        print("pathsentry report: no section has data yet: nothing flagged has been stored at "
              f"{origin}; let the demo or your workers run, then generate the report again", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("report", help="write a self-contained HTML report with plots read from ClickHouse")
    p.add_argument("--out", required=True, help="HTML file to write, e.g. report.html")
    p.add_argument("--config")
    p.add_argument("--worker", help="read through a worker's query endpoint, e.g. http://127.0.0.1:6066 "
                   "(needed for chDB while a worker holds the directory)")
    p.add_argument("--title", default="pathsentry SOC report")
    p.set_defaults(func=cmd_report)
