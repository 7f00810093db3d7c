"""The bundled geo data set's tables, packed into machine-integer arrays.

``geoip2fast`` loads its data set into module-level lists of 5,000-entry chunks of
Python ints (the first address, the country or AS index and the prefix length of
every network): about 2 million int objects, some 110 MiB of the worker's memory
before its first event. Its lookups only index the chunks and ``bisect`` them, which
an :class:`array.array` answers with the same ints, so :func:`pack_tables` swaps
every chunk whose values fit an unsigned machine integer for an array of the
narrowest type (about half that memory freed; IPv6 first addresses, wider than 64
bits, stay lists). The lookups return what they returned before
(``tests/test_geo_config.py`` compares them on reloaded, unpacked tables).
"""

from __future__ import annotations

from array import array
from types import ModuleType
from typing import Any

__all__ = ["TABLES", "pack_tables"]

#: the module-level chunked columns of ``geoip2fast.geoip2fast`` that are packed
TABLES = (
    "mainListFirstIP", "mainListFirstIPASN", "mainListIDCountryCodes", "mainListIDASN",
    "mainListNetlength", "mainListNetlengthASN",
)

#: array type codes, narrowest first, with the bound their values stay below
_CODES = (("B", 1 << 8), ("H", 1 << 16), ("L", 1 << 32), ("Q", 1 << 64))


def _packed(chunk: Any) -> Any:
    """``chunk`` as an array of the narrowest unsigned type its values fit (unchanged if
    it is not a list of non-negative ints, or they are too wide).

    >>> _packed([1, 300, 7]).typecode, _packed([1 << 70])
    ('H', [1180591620717411303424])
    """
    if not isinstance(chunk, list) or not all(type(v) is int for v in chunk):
        return chunk
    if not chunk:
        return chunk
    lo, hi = min(chunk), max(chunk)
    if lo < 0:
        return chunk
    for code, bound in _CODES:
        if hi < bound:
            return array(code, chunk)
    return chunk


def pack_tables(module: ModuleType) -> int:
    """Pack the loaded tables of ``module`` (``geoip2fast.geoip2fast``) in place; returns
    the chunks packed (0 when the module does not hold them as lists of chunks)."""
    packed = 0
    for name in TABLES:
        chunks = getattr(module, name, None)
        if not isinstance(chunks, list):
            continue
        out = [_packed(c) for c in chunks]
        packed += sum(1 for old, new in zip(chunks, out, strict=True) if new is not old)
        setattr(module, name, out)
    return packed
