"""State-memory phase of ``pathsentry bench``: the detectors' memory with many distinct
accounts and prefixes in state. Run as a process (so its peak RSS is its own)::

    python -m pathsentry.bench.state --accounts 1000000 --prefixes 100000

Logins (and one rtt_probe per session) from ``accounts`` distinct accounts spread over
``prefixes`` distinct /24s go through the full detector engine in-process; the
script prints one JSON line with the events, the seconds, the process's RSS
before and at peak (``VmHWM``), the flags by kind and the accounts flagged.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson

from pathsentry.config import load_config
from pathsentry.engine import Engine
from pathsentry.schemas import parse_event
from pathsentry.sim import WorldSpec, write_world_files

__all__ = ["main", "synthetic_events"]

#: the synthetic accounts' names: this and the account's number
_ACCOUNT = "player"

def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def synthetic_events(
    accounts: int, prefixes: int, start: float, servers: tuple[str, str] = ("kr-sel-1", "kr-pus-1")
) -> Iterator[dict[str, Any]]:
    """Two events per account: a login on ``servers[0]`` and an ICMP probe from ``servers[1]``.

    >>> evs = list(synthetic_events(3, 2, 1.8e9))
    >>> [e["kind"] for e in evs], evs[0]["src_ip"], evs[2]["src_ip"]
    (['login', 'rtt_probe', 'login', 'rtt_probe', 'login', 'rtt_probe'], '1.0.0.1', '1.0.1.1')
    """
    base = int(ipaddress.IPv4Address("1.0.0.0"))
    for i in range(accounts):
        ip = str(ipaddress.IPv4Address(base + (i % prefixes) * 256 + 1 + (i // prefixes) % 250))
        ts = datetime.fromtimestamp(start + i * 0.01, UTC).isoformat()
        sid = f"s{i}"
        rtt = 3.0 + (i % 17) * 0.5
        yield {"kind": "login", "event_id": f"l{i}", "ts": ts, "src_ip": ip, "session_id": sid,
               "account": f"{_ACCOUNT}{i:07d}", "server_id": servers[0],
               "app_rtt_ms": [rtt, rtt + 0.4, rtt + 0.2], "tcp_rtt_ms": rtt - 0.1}
        yield {"kind": "rtt_probe", "event_id": f"p{i}", "ts": ts, "src_ip": ip, "session_id": sid,
               "vantage_id": servers[1], "method": "icmp", "rtt_ms": [rtt + 3.5, rtt + 3.9]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=1_000_000)
    ap.add_argument("--prefixes", type=int, default=100_000)
    args = ap.parse_args(argv)
    # the simulated world's servers and origins; addresses resolve with the bundled geo data
    with tempfile.TemporaryDirectory() as tmp:
        _, toml = write_world_files(WorldSpec(), tmp)
        cfg = load_config(toml, env={}).model_copy(update={"geo": ["bundled"]})
    engine = Engine(cfg)
    servers = (cfg.servers[0].id, cfg.servers[1].id)
    before = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    n = 0
    flags: dict[str, int] = {}
    # accounts flagged, one byte per account (a set of their names would add to the RSS)
    flagged = bytearray(args.accounts)
    for raw in synthetic_events(args.accounts, args.prefixes, time.time() - 86_400, servers):
        for f in engine.process(parse_event(raw)).flags:
            flags[f.kind] = flags.get(f.kind, 0) + 1
            flagged[int((f.account or "").removeprefix(_ACCOUNT))] = 1
        n += 1
    engine.flush()
    secs = time.perf_counter() - t0
    sys.stdout.write(orjson.dumps({
        "accounts": args.accounts, "prefixes": args.prefixes, "events": n, "seconds": secs,
        "rss_before_mb": before / 1024, "rss_peak_mb": _rss_kib("VmHWM") / 1024,
        "rss_end_mb": _rss_kib("VmRSS") / 1024, "flags": flags, "flagged_accounts": sum(flagged),
    }).decode() + "\n")


if __name__ == "__main__":
    main()
