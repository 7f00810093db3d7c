"""Bounded per-key state: distinct accounts, sessions, prefixes and ASNs driven
through every stateful detector (the engine's own detectors, default caps) must not
grow memory without bound.

Documented caps (detector docstrings and defaults):

- latency: ``baseline_keys_max`` 100k, ``sessions_max`` 100k, ``accounts_max`` 200k,
  ``alerts_max`` 50k -- "under 400 MiB";
- route: ``sessions_max`` 100k (~0.5 KiB), ``hops_max`` 100k, ``alerts_max`` 50k (~2 KiB);
- farm: ``max_keys`` 100k partitions (LRU);
- injection_cells: ``max_groups`` 20k ASNs;
- takeover: ``max_accounts`` 200k account histories (``max_devices`` 200k devices).

Enrichment is replaced by a stub giving every event its own /24 and ASN (the geo
lookup is not what is measured); the detectors and their pipeline order are real.
Limits: the RSS growth over the whole run stays under 1 GiB (the sum of the
documented caps, with headroom), and once the caps are full (second half of the
run) the RSS grows by less than 64 MiB.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from pathsentry.config import Config, load_config
from pathsentry.detectors.base import Enriched
from pathsentry.engine import Engine
from pathsentry.enrich.geo import GeoInfo
from pathsentry.schemas import AnyEvent, parse_event

TOTAL_GROWTH_LIMIT_MIB = 1024
#: allocator and model overhead that does not scale with the caps
BASE_GROWTH_MIB = 128
STEADY_GROWTH_LIMIT_MIB = 64

CONFIG = """
home_countries = ["KR"]
geo = []
[[server]]
id = "kr-sel-1"
lat = 37.5665
lon = 126.9780
country = "KR"
[[origin]]
host = "ws.example.com"
expect_ws_status = 101
expect_server = "cloudflare"
expect_headers = ["server", "cf-ray"]
"""

#: (detector, attribute, setting holding its cap, default cap)
CAPS = [
    ("latency", "baselines", "baseline_keys_max", 100_000),
    ("latency", "sessions", "sessions_max", 100_000),
    ("latency", "accounts", "accounts_max", 200_000),
    ("route", "sessions", "sessions_max", 100_000),
    ("route", "hops", "hops_max", 100_000),
    ("farm", "parts", "max_keys", 100_000),
    ("injection_cells", "groups", "max_groups", 20_000),
    ("takeover", "_accounts", "max_accounts", 200_000),
]


def rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    kib = next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS:"))
    return kib / 1024


class StubEnricher:
    """Every key its own network: /24 and ASN derived from the event's index."""

    def __init__(self, config: Config) -> None:
        self.server = config.server("kr-sel-1")

    def enrich(self, event: AnyEvent) -> Enriched:
        ip = str(event.src_ip)
        a, b, c, _ = (int(x) for x in ip.split("."))
        geo = GeoInfo(country="KR", asn=64512 + (a * 65536 + b * 256 + c) % 900_000, lat=37.5, lon=127.0,
                      kind="residential", source="test", precision="city")
        return Enriched(event, geo, f"{a}.{b}.{c}.0/24", server=self.server)


def _events(i: int) -> list[dict[str, Any]]:
    """A session of key ``i``: a login (relayed one time in ten), a traceroute, an http probe."""
    ip = f"{11 + (i >> 16) % 200}.{(i >> 8) & 255}.{i & 255}.7"
    ts = f"2026-11-22T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}+09:00"
    base = {"ts": ts, "src_ip": ip, "session_id": f"s{i}"}
    relayed = i % 10 == 0
    return [
        {**base, "kind": "login", "event_id": f"l{i}", "account": f"acct{i:07d}", "server_id": "kr-sel-1",
         "app_rtt_ms": [95.0, 96.0, 95.5] if relayed else [4.0, 4.2, 4.1],
         "tcp_rtt_ms": 1.4 if relayed else 3.9},
        {**base, "kind": "traceroute", "event_id": f"t{i}", "vantage_id": "kr-sel-1",
         "direction": "server_to_client", "server_id": "kr-sel-1",
         "hops": [{"ttl": 1, "ip": ip, "rtt_ms": [4.0, 4.1, 4.2]}]},
        {**base, "kind": "http_probe", "event_id": f"h{i}",
         "target": {"host": "ws.example.com", "port": 80, "scheme": "ws"}, "request": "ws_upgrade",
         "status": 200 if relayed else 101, "header_names": ["server", "cf-ray"],
         "server_header": "cloudflare", "connect_ms": 12.0, "ttfb_ms": 25.0,
         "ttl": {"syn_ack": 52, "response": 53 if relayed else 52}},
    ]


def scaled_caps(scale: int) -> str:
    """``[detectors.*]`` sections dividing every cap of :data:`CAPS` by ``scale``."""
    by_det: dict[str, list[str]] = {}
    for det, _, setting, default in CAPS:
        by_det.setdefault(det, []).append(f"{setting} = {default // scale}")
    return "".join(f"\n[detectors.{det}]\n" + "\n".join(lines) + "\n" for det, lines in by_det.items())


def drive(n_keys: int, scale: int = 1) -> dict[str, Any]:
    """Drive ``n_keys`` keys through the engine with every cap divided by ``scale``."""
    engine = Engine(load_config(text=CONFIG + (scaled_caps(scale) if scale > 1 else ""), env={}))
    engine.enricher = StubEnricher(engine.config)  # type: ignore[assignment]
    by_name = {d.name: d for d in engine.detectors}
    gc.collect()
    start = rss_mib()
    half = start
    for i in range(n_keys):
        for raw in _events(i):
            engine.process(parse_event(raw))
        if i == n_keys // 2:
            gc.collect()
            half = rss_mib()
    engine.flush()
    gc.collect()
    end = rss_mib()
    sizes = {f"{det}.{attr}": len(getattr(by_name[det], attr)) for det, attr, _, _ in CAPS}
    for det, attr, setting, default in CAPS:
        cap = engine.config.detector_settings(det).get(setting, default)
        assert sizes[f"{det}.{attr}"] <= cap, (det, attr, sizes[f"{det}.{attr}"], cap)
    result = {"keys": n_keys, "rss_start_mib": round(start), "rss_half_mib": round(half),
              "rss_end_mib": round(end), **sizes}
    print("bounded-state run:", result)
    assert end - start < TOTAL_GROWTH_LIMIT_MIB / scale + BASE_GROWTH_MIB, result
    assert end - half < STEADY_GROWTH_LIMIT_MIB, result
    return result


def test_detector_state_stays_bounded_caps_scaled_down() -> None:
    """25k keys against caps divided by 20: past every cap, eviction keeps memory flat."""
    res = drive(25_000, scale=20)
    assert res["latency.sessions"] == 5_000 and res["route.sessions"] == 5_000


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_detector_state_stays_bounded_1m_keys() -> None:
    res = drive(1_000_000)
    assert res["latency.accounts"] == 200_000
