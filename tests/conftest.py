"""Shared fixtures: event factories and the real embedded engines."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_ids = itertools.count()

EventFactory = Callable[..., dict[str, Any]]


def _base(kind: str, **kw: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "kind": kind,
        "event_id": f"{kind}-{next(_ids)}",
        "ts": "2026-11-22T21:00:00+09:00",
        "src_ip": "211.234.10.7",
        "session_id": "s-1",
    }
    ev.update(kw)
    return ev


@pytest.fixture
def make_login() -> EventFactory:
    def f(**kw: Any) -> dict[str, Any]:
        base = {"account": "hero01", "server_id": "kr-sel-1", "app_rtt_ms": [4.2, 3.9, 4.0],
                "tcp_rtt_ms": 3.8}
        base.update(kw)
        return _base("login", **base)
    return f


@pytest.fixture
def make_probe() -> EventFactory:
    def f(**kw: Any) -> dict[str, Any]:
        base = {"vantage_id": "kr-sel-1", "method": "icmp", "rtt_ms": [3.0, 3.2, 3.1]}
        base.update(kw)
        return _base("rtt_probe", **base)
    return f


@pytest.fixture
def make_traceroute() -> EventFactory:
    def f(**kw: Any) -> dict[str, Any]:
        base = {"vantage_id": "kr-sel-1", "direction": "client_to_server",
                "hops": [{"ttl": 1, "ip": "192.168.0.1", "rtt_ms": [0.5, 0.6, 0.5]},
                         {"ttl": 2, "ip": None, "rtt_ms": []}]}
        base.update(kw)
        return _base("traceroute", **base)
    return f


@pytest.fixture
def make_http_probe() -> EventFactory:
    def f(**kw: Any) -> dict[str, Any]:
        base = {"target": {"host": "ws.example.com", "port": 80, "scheme": "ws"},
                "request": "ws_upgrade", "status": 101, "header_names": ["server", "cf-ray"],
                "server_header": "cloudflare", "connect_ms": 12.0, "ttfb_ms": 25.0,
                "ttl": {"syn_ack": 52, "response": 52}, "reporter": "client"}
        base.update(kw)
        return _base("http_probe", **base)
    return f


@pytest.fixture(scope="session")
def embedded_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from pathsentry.infra.broker import EmbeddedBroker

    broker = EmbeddedBroker(log_dir=tmp_path_factory.mktemp("broker"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def chdb_dir(tmp_path: Path) -> Path:
    return tmp_path / "chdb"
