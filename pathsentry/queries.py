"""Named analyst queries (``pathsentry query NAME``), valid on clickhouse-server and chDB.

``{db}`` is replaced by the database name. Every query reads the latest version
of each row (``FINAL``), so retried or updated rows count once.
"""

from __future__ import annotations

__all__ = ["QUERIES", "render"]

QUERIES: dict[str, tuple[str, str]] = {
    "recent-alerts": (
        "the 20 newest alerts with their summary",
        "SELECT last_seen, kind, severity, round(score, 2) AS score, length(accounts) AS n_accounts, "
        "summary FROM {db}.alerts FINAL ORDER BY last_seen DESC LIMIT 20",
    ),
    "alerts-per-hour": (
        "alerts per kind per hour",
        "SELECT toStartOfHour(first_seen) AS hour, kind, count() AS alerts "
        "FROM {db}.alerts FINAL GROUP BY hour, kind ORDER BY hour DESC, kind LIMIT 200",
    ),
    "flags-per-kind": (
        "flagged events per kind with mean score",
        "SELECT kind, count() AS flagged, round(avg(score), 3) AS mean_score, "
        "uniqExact(account) AS accounts FROM {db}.flagged_events FINAL GROUP BY kind ORDER BY kind",
    ),
    "repeat-relay-accounts": (
        "accounts with repeated relay evidence",
        "SELECT account, count() AS sessions, round(max(score), 2) AS max_score, "
        "groupUniqArray(5)(src_ip) AS exits FROM {db}.flagged_events FINAL "
        "WHERE kind = 'vpn_relay' AND account != '' GROUP BY account HAVING sessions >= 2 "
        "ORDER BY sessions DESC LIMIT 50",
    ),
    "top-relay-prefixes": (
        "relay exit prefixes by flagged sessions",
        "SELECT IPv4CIDRToRange(toIPv4OrZero(src_ip), 24).1 AS prefix, any(country) AS country, "
        "any(asn) AS asn, count() AS flagged, uniqExact(account) AS accounts "
        "FROM {db}.flagged_events FINAL WHERE kind IN ('vpn_relay', 'route_anomaly') "
        "GROUP BY prefix ORDER BY flagged DESC LIMIT 20",
    ),
    "farm-groups": (
        "farm groups with their members",
        "SELECT alert_id, round(score, 2) AS score, length(accounts) AS members, "
        "arraySlice(arraySort(accounts), 1, 8) AS first_members, first_seen, last_seen, summary "
        "FROM {db}.alerts FINAL WHERE kind = 'farm_group' ORDER BY members DESC LIMIT 50",
    ),
    "injection-cells": (
        "injection cells by ASN, ports and hours",
        "SELECT JSONExtractString(subject, 'asn') AS asn, JSONExtractString(subject, 'as_name') AS as_name, "
        "JSONExtractRaw(subject, 'ports') AS ports, JSONExtractRaw(subject, 'hours') AS hours, "
        "round(score, 2) AS score, first_seen, last_seen FROM {db}.alerts FINAL "
        "WHERE kind = 'injection_cell' ORDER BY score DESC LIMIT 50",
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
