"""Dead-letter records: the reason a message was refused and where it came from.

>>> rec = dead_letter_record(b"{oops", "bad_json", "unexpected character",
...                          topic="logins", partition=2, offset=41, key=b"acc")
>>> rec["reason"], rec["origin"], rec["payload"]
('bad_json', {'topic': 'logins', 'partition': 2, 'offset': 41, 'key': 'acc'}, '{oops')
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

__all__ = ["MAX_DLQ_PAYLOAD", "dead_letter_record"]

#: Payload bytes kept in the dead-letter record (the rest is cut, and said so).
MAX_DLQ_PAYLOAD = 64 * 1024


def _text(b: bytes | None) -> tuple[str | None, bool]:
    if b is None:
        return None, False
    try:
        return b.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(b).decode(), True


def dead_letter_record(
    payload: bytes | None,
    reason: str,
    detail: str,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None = None,
) -> dict[str, Any]:
    size = len(payload) if payload is not None else 0
    body = payload[:MAX_DLQ_PAYLOAD] if payload is not None else None
    text, b64 = _text(body)
    key_text, key_b64 = _text(key)
    rec: dict[str, Any] = {
        "reason": reason,
        "detail": detail,
        "origin": {"topic": topic, "partition": partition, "offset": offset, "key": key_text},
        "received_at": datetime.now(UTC).isoformat(),
        "payload": text,
    }
    if b64:
        rec["payload_encoding"] = "base64"
    if key_b64:
        rec["origin"]["key_encoding"] = "base64"
    if size > MAX_DLQ_PAYLOAD:
        rec["payload_truncated"] = True
        rec["payload_size"] = size
    return rec
