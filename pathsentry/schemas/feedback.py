"""Event contract v1.1: what the game already knows, published back to pathsentry.

Two kinds, each on its own topic, next to the four network kinds of v1 (which are
unchanged: v1.1 is backward compatible, a v1 producer needs no change):

- ``account_label`` on ``labels``, keyed by account: a verdict on an account from the
  ban system, an analyst or another tool. ``cleared`` is an analyst's verdict that an
  alert on the account was wrong.
- ``interaction`` on ``interactions``, keyed by the first account (``account``): a
  trade, a party, a mail, a gift… between two accounts. High volume: keyed so that
  one account's interactions meet on one partition.

Neither has a ``src_ip``: they are not network observations.

>>> ev = parse_feedback(b'{"kind": "account_label", "event_id": "lb-1", "ts": "2026-01-03T09:00:00Z",'
...                     b' "account": "xiaopai001", "label": "farm", "source": "ban-system"}')
>>> ev.kind, ev.account, ev.label, ev.is_bad, feedback_topic_for(ev)
('account_label', 'xiaopai001', 'farm', True, ('labels', 'xiaopai001'))
>>> it = parse_feedback({"kind": "interaction", "event_id": "i-1", "ts": "2026-01-03T09:00:00Z",
...                      "interaction": "trade", "account": "a", "peer": "b", "value": 120.0})
>>> it.interaction, it.account, it.peer, feedback_topic_for(it)
('trade', 'a', 'b', ('interactions', 'a'))
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from pathsentry.schemas.events import EventError, _describe, message_object

__all__ = [
    "BAD_LABELS",
    "FEEDBACK_KINDS",
    "AccountLabel",
    "Feedback",
    "Interaction",
    "LabelKind",
    "feedback_adapter",
    "feedback_topic_for",
    "parse_feedback",
]

LabelKind = Literal["bot", "farm", "fraud", "takeover", "cleared"]
#: labels that confirm an alert (``cleared`` refutes one)
BAD_LABELS: frozenset[str] = frozenset({"bot", "farm", "fraud", "takeover"})
FEEDBACK_KINDS: frozenset[str] = frozenset({"account_label", "interaction"})

Account = Annotated[str, Field(min_length=1, max_length=64)]
Ident = Annotated[str, Field(min_length=1, max_length=128)]


class _FeedbackBase(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    event_id: Ident
    ts: AwareDatetime
    account: Account


class AccountLabel(_FeedbackBase):
    """A verdict on one account (``ts``: when the verdict was made)."""

    kind: Literal["account_label"]
    label: LabelKind
    source: Annotated[str, Field(min_length=1, max_length=64)]
    #: what the verdict rests on (an alert id, a ticket, a ban record)
    evidence_ref: Annotated[str, Field(max_length=256)] | None = None

    @property
    def is_bad(self) -> bool:
        return self.label in BAD_LABELS


class Interaction(_FeedbackBase):
    """Two accounts dealt with each other (``account`` and ``peer``, unordered)."""

    kind: Literal["interaction"]
    #: ``trade`` | ``party`` | ``mail`` | ``gift`` | any other game-defined kind
    interaction: Annotated[str, Field(min_length=1, max_length=32)]
    peer: Account
    #: in the game's own unit (gold, item value); optional
    value: Annotated[float, Field(allow_inf_nan=False)] | None = None


Feedback = Annotated[AccountLabel | Interaction, Field(discriminator="kind")]
feedback_adapter: TypeAdapter[AccountLabel | Interaction] = TypeAdapter(Feedback)


def parse_feedback(raw: bytes | str | dict[str, Any]) -> AccountLabel | Interaction:
    """Decode and validate one ``labels`` / ``interactions`` message; raise
    :class:`~pathsentry.schemas.events.EventError` with a reason (as :func:`parse_event`)."""
    obj = message_object(raw)
    kind = obj.get("kind")
    if kind not in FEEDBACK_KINDS:
        raise EventError("unknown_kind", repr(kind)[:64])
    try:
        return feedback_adapter.validate_python(obj)
    except ValidationError as e:
        raise EventError("invalid", _describe(e)) from None


def feedback_topic_for(event: AccountLabel | Interaction) -> tuple[str, str]:
    """The (logical topic, key) a producer must use for ``event``."""
    if isinstance(event, AccountLabel):
        return "labels", event.account
    return "interactions", event.account
