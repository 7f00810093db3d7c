"""What pathsentry emits: flagged events (one per suspicious event) and alerts.

An alert's id is deterministic (derived from its detector, kind and subject), so
a replay or a retry yields the same id, and an alert that grows (a farm group
gaining members) is re-emitted under the same id with a higher ``version``.

>>> aid = make_alert_id("farm", "farm_group", "xiaopai{3}|203.0.113.0/24")
>>> aid == make_alert_id("farm", "farm_group", "xiaopai{3}|203.0.113.0/24"), len(aid)
(True, 20)
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = [
    "Alert",
    "AlertKind",
    "FlagKind",
    "FlaggedEvent",
    "Severity",
    "make_alert_id",
    "severity_for",
]

FlagKind = Literal["vpn_relay", "route_anomaly", "farm_member", "path_injection",
                   "account_takeover"]
AlertKind = Literal["vpn_relay", "route_anomaly", "farm_group", "injection_cell",
                    "account_takeover"]
Severity = Literal["low", "medium", "high", "critical"]


def make_alert_id(detector: str, kind: str, subject_key: str) -> str:
    """Deterministic alert id: same detector, kind and subject give the same id."""
    h = hashlib.blake2b(f"{detector}\x1f{kind}\x1f{subject_key}".encode(), digest_size=10)
    return h.hexdigest()


def severity_for(score: float) -> Severity:
    """Map a 0-1 score to a severity band.

    >>> severity_for(0.95), severity_for(0.5)
    ('critical', 'medium')
    """
    if score >= 0.9:
        return "critical"
    if score >= 0.75:
        return "high"
    if score >= 0.5:
        return "medium"
    return "low"


class FlaggedEvent(BaseModel):
    """One event a detector found suspicious, with its physical evidence."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    ts: AwareDatetime
    kind: FlagKind
    account: str | None = None
    session_id: str | None = None
    src_ip: str
    country: str | None = None
    asn: int | None = None
    score: float = Field(ge=0.0, le=1.0)
    reasons: list[str]
    evidence: dict[str, Any]
    alert_id: str | None = None
    detector: str

    @property
    def dedup_key(self) -> tuple[str, str]:
        return (self.event_id, self.kind)


class Alert(BaseModel):
    """An actionable finding for the SOC, updated in place as evidence grows."""

    model_config = ConfigDict(frozen=True)

    alert_id: str
    ts: AwareDatetime
    kind: AlertKind
    severity: Severity
    score: float = Field(ge=0.0, le=1.0)
    subject: dict[str, Any]
    accounts: list[str] = Field(default_factory=list)
    event_ids: list[str] = Field(default_factory=list)
    evidence: dict[str, Any]
    summary: str = ""
    detector: str
    first_seen: AwareDatetime
    last_seen: AwareDatetime
    version: int = 1
