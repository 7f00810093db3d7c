"""Sample flagged events and alerts shaped like the detectors' output."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pathsentry.schemas import AccountLabel, Alert, FlaggedEvent, make_alert_id, severity_for

__all__ = ["BASE", "EXCESS_MS", "relay_flag", "sample_alerts", "sample_flags", "sample_labels"]

BASE = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)

#: physics excess of the vpn_relay flags that carry one (ms).
EXCESS_MS = (3.0, 4.5, 12.0, 18.0, 19.5, 41.0, 44.0, 95.0)


def relay_flag(i: int, *, account: str, src_ip: str, excess: float | None,
               kind: str = "vpn_relay", evidence: dict[str, Any] | None = None) -> FlaggedEvent:
    ev: dict[str, Any] = dict(evidence or {})
    if excess is not None:
        ev.setdefault("physics", {"excess_ms": excess, "expected_ms": 6.0})
    return FlaggedEvent(
        event_id=f"e-{kind}-{i}", ts=BASE + timedelta(minutes=7 * i), kind=kind,
        account=account, session_id=f"s-{i}", src_ip=src_ip, country="KR", asn=4766,
        score=0.8, reasons=["relay"], evidence=ev, detector="latency",
    )


def sample_flags() -> list[FlaggedEvent]:
    """Eight vpn_relay flags with an excess, one without, two route anomalies."""
    ips = ["203.0.113.5", "203.0.113.77", "198.51.100.9"]
    flags = [
        relay_flag(i, account=f"acct{i % 3}", src_ip=ips[i % 3], excess=x)
        for i, x in enumerate(EXCESS_MS)
    ]
    flags.append(relay_flag(50, account="acct9", src_ip="2001:db8:1:2::7", excess=None))
    flags.append(relay_flag(60, account="acct0", src_ip="192.0.2.1", excess=None,
                            kind="route_anomaly", evidence={"exit_prefix": "192.0.2.0/24"}))
    flags.append(relay_flag(61, account="acct1", src_ip="192.0.2.200", excess=None,
                            kind="route_anomaly"))
    return flags


def _alert(kind: str, key: str, subject: dict[str, Any], accounts: list[str],
           first: datetime, last: datetime, evidence: dict[str, Any], version: int = 1) -> Alert:
    return Alert(
        alert_id=make_alert_id("test", kind, key), ts=last, kind=kind,
        severity=severity_for(0.92), score=0.92, subject=subject, accounts=accounts,
        event_ids=[], evidence=evidence, summary=f"{kind} {key}", detector="test",
        first_seen=first, last_seen=last, version=version,
    )


def sample_alerts() -> list[Alert]:
    """Two farm groups, two injection cells (one with per-cell evidence), a relay alert."""
    farm = [
        _alert("farm_group", f"g{g}", {"group_id": f"g{g}", "template": tpl, "pattern": "tpl"},
               [f"{tpl[:-3]}{n:03d}" for n in range(1, size + 1)],
               BASE + timedelta(minutes=30 * g), BASE + timedelta(minutes=30 * g + 12), {})
        for g, (tpl, size) in enumerate((("xiaopai{3}", 20), ("goldbot{3}", 6)))
    ]
    cells: list[dict[str, Any]] = [
        {"prefix": "211.234.10.0/24", "port": 80, "hour": h, "probes": 10, "suspect": 4 + h % 3,
         "rate_lower": round(0.1 + 0.05 * (h - 9), 2)}
        for h in range(9, 18)
    ]
    cells.append({"prefix": "*", "port": 80, "hour": 10, "probes": 30, "suspect": 9, "rate_lower": 0.15})
    cells.append({"prefix": "211.234.10.0/24", "port": 80, "hour": None, "probes": 90, "suspect": 45,
                  "rate_lower": 0.4})  # the all-day cell: no hour
    inj = [
        _alert("injection_cell", "as4766", {"asn": 4766, "as_name": "KT", "ports": [80, 8080],
               "prefixes": ["211.234.10.0/24"], "hours": "09–18", "timezone": "Asia/Seoul"},
               ["u1", "u2"], BASE, BASE + timedelta(hours=9), {"cells": cells}),
        _alert("injection_cell", "as9318", {"asn": 9318, "as_name": None, "ports": [80],
               "prefixes": [], "hours": "22–02", "timezone": "Asia/Seoul"},
               ["u3"], BASE, BASE + timedelta(hours=4), {}),
    ]
    relay = _alert("vpn_relay", "acct0", {"account": "acct0"}, ["acct0"], BASE,
                   BASE + timedelta(hours=1), {})
    return [*farm, *inj, relay]


def sample_labels() -> list[AccountLabel]:
    """Bans of four members of the first farm a day later, an analyst clearing the relay
    alert's account."""
    later = BASE + timedelta(days=1)
    return [AccountLabel(kind="account_label", event_id=f"lb{i}", ts=later, account=acc,
                         label=label, source="ban-system")  # type: ignore[arg-type]
            for i, (acc, label) in enumerate([*((f"xiaopai{n:03d}", "farm") for n in range(1, 5)),
                                              ("acct0", "cleared")])]
