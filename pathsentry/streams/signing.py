"""Optional signatures on what the workers write for each other: saved state and the
internal topics' envelopes.

Owns :class:`Signer`. When ``PATHSENTRY_STATE_KEY`` is set (the same secret on every
worker), every record of the state topic and every envelope of the internal topics
carries an HMAC-SHA256 in the Kafka header ``pathsentry-mac``, over a domain tag
(``state`` or ``envelope``, so one cannot be replayed as the other), the record's key,
its value and its other headers (the watermark claims ride in one). A record read back
without a valid signature is refused by its reader (the state store, the stages' input).
Without the variable nothing is signed and nothing is checked. The key itself is never
logged nor shown: ``repr`` says only whether one is set.

>>> s = Signer(b"k")
>>> h = s.sign(b"state", b"g:0", b"v")
>>> s.verify(b"state", b"g:0", b"v", h), s.verify(b"state", b"g:0", b"w", h)
('', 'wrong signature')
>>> s.verify(b"envelope", b"g:0", b"v", h), s.verify(b"state", b"g:0", b"v", None)
('wrong signature', 'not signed')
>>> Signer(None).verify(b"state", b"g:0", b"v", None), Signer(b"secret")
('', Signer(key set))
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

__all__ = ["ENV", "HEADER", "Signer"]

#: the Kafka header that carries a record's signature
HEADER = "pathsentry-mac"
#: the environment variable that holds the shared key
ENV = "PATHSENTRY_STATE_KEY"

Headers = Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None


def _pairs(headers: Headers) -> list[tuple[str, bytes]]:
    if not headers:
        return []
    return list(headers.items() if isinstance(headers, Mapping) else headers)


class Signer:
    """Signs and checks records with the shared key (or, without one, does nothing)."""

    def __init__(self, key: bytes | None) -> None:
        self._key = key or None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Signer:
        value = env.get(ENV, "")
        return cls(value.encode() if value else None)

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def __repr__(self) -> str:
        return f"Signer({'key set' if self._key else 'off'})"

    def _mac(self, domain: bytes, key: bytes | None, value: bytes | None,
             others: list[tuple[str, bytes]]) -> bytes:
        assert self._key is not None
        m = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (domain, key or b"", value or b""):
            m.update(len(part).to_bytes(8, "big") + part)
        for name, v in sorted((n, v) for n, v in others if n != HEADER):
            m.update(len(name).to_bytes(8, "big") + name.encode())
            m.update(len(v).to_bytes(8, "big") + v)
        return m.hexdigest().encode()

    def sign(self, domain: bytes, key: bytes | None, value: bytes | None,
             headers: Headers = None) -> list[tuple[str, bytes]] | None:
        """``headers`` plus this record's signature (``headers`` as they are without a key)."""
        others = _pairs(headers)
        if self._key is None:
            return others or None
        return [*others, (HEADER, self._mac(domain, key, value, others))]

    def verify(self, domain: bytes, key: bytes | None, value: bytes | None, headers: Headers) -> str:
        """Why the record's signature is refused ('' when it is good, or nothing is checked)."""
        if self._key is None:
            return ""
        pairs = _pairs(headers)
        got = [v for n, v in pairs if n == HEADER]
        if not got:
            return "not signed"
        if len(got) > 1 or not hmac.compare_digest(got[0], self._mac(domain, key, value, pairs)):
            return "wrong signature"
        return ""
