"""Pydantic models of the event contract v1 and of pathsentry's outputs."""

from pathsentry.schemas.events import (
    CONTRACT_VERSION,
    MAX_EVENT_BYTES,
    ClientInfo,
    Event,
    EventError,
    Hop,
    HttpProbe,
    HttpTarget,
    Login,
    ObservedTtl,
    RttProbe,
    Traceroute,
    event_adapter,
    parse_event,
    topic_for,
)
from pathsentry.schemas.outputs import (
    Alert,
    AlertKind,
    FlaggedEvent,
    FlagKind,
    Severity,
    make_alert_id,
    severity_for,
)

AnyEvent = Login | RttProbe | Traceroute | HttpProbe

__all__ = [
    "CONTRACT_VERSION",
    "MAX_EVENT_BYTES",
    "Alert",
    "AlertKind",
    "AnyEvent",
    "ClientInfo",
    "Event",
    "EventError",
    "FlagKind",
    "FlaggedEvent",
    "Hop",
    "HttpProbe",
    "HttpTarget",
    "Login",
    "ObservedTtl",
    "RttProbe",
    "Severity",
    "Traceroute",
    "event_adapter",
    "make_alert_id",
    "parse_event",
    "severity_for",
    "topic_for",
]
