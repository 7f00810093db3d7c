"""The relay detector's per-session record.

Everything the detector keeps lives in :class:`~pathsentry.detectors.bounded.BoundedLRU`
tables (baselines, sessions, account histories, alert records) that evict their coldest
key beyond a cap, its :class:`~pathsentry.detectors.bounded.AlertBook` of deterministic,
versioned alerts, and :class:`Session`, one flat object per game session (its login
reduced to the figures re-assessment needs, and its probes).
"""

from __future__ import annotations

from datetime import datetime
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from pathsentry.config import AllowEntry, Server
from pathsentry.detectors.bounded import MAX_ALERT_EVENTS, AlertBook, BoundedLRU
from pathsentry.enrich.geo import GeoInfo

__all__ = ["MAX_ALERT_EVENTS", "MAX_VANTAGES", "AlertBook", "BoundedLRU", "Session"]

#: Probing (vantage, method) pairs remembered per session.
MAX_VANTAGES = 16


class Session:
    """One session: its login, reduced to what re-assessing it needs, and its probes.

    One flat object per session and no per-session dicts: the parsed login event,
    its enrichment and notes are not kept. Login fields are only set once the login
    was seen (``event_id`` is not ``None``); until then a session only collects
    probes. ``probes`` is a flat list ``[vantage, method, min_ms, samples, ...]``
    (one group of four per vantage and method, in arrival order; ``samples`` counts
    every sample of that pair, ``min_ms`` is their minimum). Strings are shared, not
    copied: the session id with the session table's key, the baseline keys with the
    baselines' own keys, vantage and method names are interned; zero scores share
    one float.
    """

    __slots__ = (
        "account", "allowed", "app_min", "app_n", "app_p10", "app_second", "app_spread", "event_id", "exit",
        "flagged", "geo", "k_asn", "k_country", "k_prefix", "oh_key", "phys_at", "phys_feat", "phys_net",
        "phys_s", "prefix", "probes", "route", "score", "server", "server_id", "session_id", "src_ip", "tcp",
        "ts", "worst_km",
    )

    account: str
    allowed: AllowEntry | None
    #: the login's minimum, 10th percentile, spread (max - min) and number of app RTT
    #: samples, and its second-largest sample (the minimum with fewer than three)
    app_min: float
    app_n: int
    app_p10: float
    app_second: float
    app_spread: float
    #: the key of the server's learned application overhead (server, or server|platform)
    oh_key: str
    geo: GeoInfo
    #: baseline keys, most specific first (``None``: no ASN, no country)
    k_prefix: str
    k_asn: str | None
    k_country: str | None
    #: the physics component's strength (0-1) and model feature, fixed for the login
    phys_s: float
    phys_feat: float
    #: the network RTT estimate physics judged (ms) and where it came from
    phys_net: tuple[float, str] | None
    #: the vantage whose app probe that estimate came from (``None``: the login itself)
    phys_at: str | None
    prefix: str
    #: the exit its relay evidence is gathered under (``ExitPrefixes.exit_of``, set with
    #: the login: every probe's and re-assessment's prefix evidence reads it)
    exit: str
    #: the session's route notes, kept only when the route has a foreign origin
    route: dict[str, Any] | None
    server: Server | None
    server_id: str
    session_id: str | None
    src_ip: IPv4Address | IPv6Address
    tcp: float | None
    ts: datetime

    def __init__(self) -> None:
        self.event_id: str | None = None
        self.probes: list[Any] | None = None
        self.score = 0.0
        self.flagged = False
        #: how far (km, 0 if nowhere) the claimed point lies outside the probes' RTT
        #: disks. Monotone: a probe only adds a disk or shrinks its own, so each probe
        #: updates it in O(1) (``LatencyDetector._on_probe``).
        self.worst_km = 0.0

