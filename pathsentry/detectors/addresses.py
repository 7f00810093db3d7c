"""Address text for detectors: ``str()`` of the contract's address objects, remembered.

The event parser hands out one object per distinct address and
``IPv4Address.__str__`` is slow pure Python, so every detector that keys state by
address text asks :func:`ip_text`.
"""

from __future__ import annotations

__all__ = ["ip_text"]

#: ``str()`` of recently seen address objects, by identity: the event parser hands out
#: one object per distinct address, and ``IPv4Address.__str__`` is slow pure Python.
#: ``_OBJECTS`` holds each object, so that its id is not reused meanwhile (two flat
#: dicts: no tuple per entry for the garbage collector to walk).
_TEXT: dict[int, str] = {}
_OBJECTS: dict[int, object] = {}
_MAX = 16_384


def ip_text(ip: object) -> str:
    """``str(ip)``, remembered for the last :data:`_MAX` address objects.

    >>> from ipaddress import ip_address
    >>> ip_text(ip_address("203.0.113.7"))
    '203.0.113.7'
    """
    key = id(ip)
    if _OBJECTS.get(key) is ip:
        return _TEXT[key]
    text = str(ip)
    if len(_TEXT) >= _MAX:
        _TEXT.clear()
        _OBJECTS.clear()
    _TEXT[key] = text
    _OBJECTS[key] = ip
    return text
