"""Named analyst queries (``pathsentry query NAME``), valid on clickhouse-server and chDB.

``{db}`` is replaced by the database name. Every query reads the latest version
of each row (``FINAL``, directly or through the views of ``infra/ddl/002_views.sql``),
so retried or updated rows count once.
"""

from __future__ import annotations

from urllib.parse import urlparse

__all__ = ["QUERIES", "database_name", "render"]

QUERIES: dict[str, tuple[str, str]] = {
    "recent-alerts": (
        "the 20 newest alerts with their summary",
        "SELECT last_seen, kind, severity, round(score, 2) AS score, length(accounts) AS n_accounts, "
        "summary FROM {db}.alerts FINAL ORDER BY last_seen DESC LIMIT 20",
    ),
    "alerts-per-hour": (
        "alerts per kind per hour (view alerts_per_hour)",
        "SELECT hour, kind, alerts, high_or_critical, accounts, max_score "
        "FROM {db}.alerts_per_hour ORDER BY hour DESC, kind LIMIT 200",
    ),
    "flags-per-kind": (
        "flagged events per kind with mean score",
        "SELECT kind, count() AS flagged, round(avg(score), 3) AS mean_score, "
        "uniqExact(account) AS accounts FROM {db}.flagged_events FINAL GROUP BY kind ORDER BY kind",
    ),
    "repeat-relay-accounts": (
        "accounts with repeated relay evidence (view relay_repeat_accounts)",
        "SELECT account, sessions, vpn_relay, route_anomaly, exits, exit_prefixes, max_score, "
        "max_excess_ms, last_seen FROM {db}.relay_repeat_accounts "
        "ORDER BY sessions DESC, max_score DESC, account LIMIT 50",
    ),
    "top-relay-prefixes": (
        "relay exit prefixes by flagged sessions (view relay_exit_prefixes)",
        "SELECT prefix, country, asn, flagged, vpn_relay, route_anomaly, accounts, max_score, "
        "median_excess_ms, last_seen FROM {db}.relay_exit_prefixes "
        "ORDER BY flagged DESC, prefix LIMIT 20",
    ),
    "relay-excess": (
        "RTT excess of relayed logins: quantiles in ms (view relay_flags)",
        "SELECT count() AS flagged, countIf(excess_ms IS NOT NULL) AS with_excess, "
        "round(quantile(0.1)(excess_ms), 1) AS p10_ms, round(quantile(0.5)(excess_ms), 1) AS p50_ms, "
        "round(quantile(0.9)(excess_ms), 1) AS p90_ms, round(max(excess_ms), 1) AS max_ms "
        "FROM {db}.relay_flags WHERE kind = 'vpn_relay'",
    ),
    "farm-groups": (
        "farm groups with their members, one row per room (view farm_groups: a room's parts "
        "are left out, room_id names them)",
        "SELECT group_id, template, score, members, is_room, arraySlice(accounts, 1, 8) AS first_members, "
        "first_seen, last_seen, summary FROM {db}.farm_groups WHERE room_id = '' "
        "ORDER BY members DESC, group_id LIMIT 50",
    ),
    "farm-members": (
        "one row per farm-group member (view farm_groups)",
        "SELECT group_id, template, account, first_seen FROM {db}.farm_groups "
        "ARRAY JOIN accounts AS account ORDER BY group_id, account LIMIT 1000",
    ),
    "injection-cells": (
        "injection cells by ASN, ports and hours (view injection_cells)",
        "SELECT asn, as_name, ports, hours, timezone, length(prefixes) AS prefixes, score, "
        "first_seen, last_seen FROM {db}.injection_cells ORDER BY score DESC, asn LIMIT 50",
    ),
    "injection-hours": (
        "injection cells by ASN and hour of day (view injection_cells_hourly)",
        "SELECT asn, as_name, hour, timezone, alerts, cells, rate_lower, suspect, probes "
        "FROM {db}.injection_cells_hourly ORDER BY asn, hour LIMIT 500",
    ),
}


def render(name: str, db: str) -> str:
    """SQL of a named query.

    >>> "pathsentry.alerts" in render("recent-alerts", "pathsentry")
    True
    """
    if name not in QUERIES:
        raise KeyError(f"unknown query {name!r}; known: {', '.join(sorted(QUERIES))}")
    return QUERIES[name][1].replace("{db}", db)


def database_name(url: str) -> str:
    """The database a ClickHouse URL points at, without connecting.

    >>> database_name("clickhouse://u:p@ch:9000/soc"), database_name("chdb:///var/chdb")
    ('soc', 'pathsentry')
    >>> database_name("chdb://./data#soc")
    'soc'
    """
    if url.startswith("chdb://"):
        return url.partition("#")[2] or "pathsentry"
    return urlparse(url).path.lstrip("/") or "pathsentry"
