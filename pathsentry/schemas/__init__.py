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
from pathsentry.schemas.feedback import (
    BAD_LABELS,
    AccountLabel,
    Interaction,
    feedback_topic_for,
    parse_feedback,
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
#: what the game publishes back (contract v1.1): verdicts on accounts, interactions
AnyFeedback = AccountLabel | Interaction

__all__ = [
    "BAD_LABELS",
    "CONTRACT_VERSION",
    "MAX_EVENT_BYTES",
    "AccountLabel",
    "Alert",
    "AlertKind",
    "AnyEvent",
    "AnyFeedback",
    "ClientInfo",
    "Event",
    "EventError",
    "FlagKind",
    "FlaggedEvent",
    "Hop",
    "HttpProbe",
    "HttpTarget",
    "Interaction",
    "Login",
    "ObservedTtl",
    "RttProbe",
    "Severity",
    "Traceroute",
    "event_adapter",
    "feedback_topic_for",
    "make_alert_id",
    "parse_event",
    "parse_feedback",
    "severity_for",
    "topic_for",
]
