"""How every detector reads its ``[detectors.NAME]`` table of ``pathsentry.toml``.

A detector declares its thresholds as frozen dataclasses whose defaults are the
documented values; :func:`load_settings` builds them from the table, coercing each
value to its default's type (``"600"`` for a float is 600.0; ``"yes"`` for a bool is
refused, not taken as true) and reports keys that no dataclass of the detector knows,
so a misspelt threshold does not silently keep its default. ``enabled`` is every
detector's own key.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class A:
...     window_s: float = 900.0
...     min_size: int = 5
>>> @dataclass(frozen=True)
... class B:
...     strict: bool = False
>>> a, b = load_settings("demo", {"window_s": "600", "strict": True, "enabled": True}, A, B)
>>> a.window_s, a.min_size, b.strict
(600.0, 5, True)
>>> unknown_keys({"windw_s": 1, "enabled": False}, A, B)
['windw_s']
>>> load_settings("demo", {"min_size": "many"}, A)
Traceback (most recent call last):
...
ValueError: [detectors.demo] min_size: 'many' is not a int
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

__all__ = ["COMMON_KEYS", "load_settings", "settings_dict", "unknown_keys"]

log = logging.getLogger("pathsentry.detectors")

#: Keys every detector's table may hold besides its thresholds.
COMMON_KEYS = frozenset({"enabled"})


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    target = type(default)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ValueError(f"[detectors.{section}] {key}: {value!r} is not true or false")
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise ValueError(f"[detectors.{section}] {key}: {value!r} is not a list of {len(default)}")
        return type(default)(_coerce(section, key, v, d) for v, d in zip(value, default, strict=True))
    if isinstance(value, target) and not isinstance(value, bool):
        return value
    try:
        return target(value)
    except (TypeError, ValueError):
        raise ValueError(f"[detectors.{section}] {key}: {value!r} is not a {target.__name__}") from None


def unknown_keys(raw: Mapping[str, Any], *classes: type[Any]) -> list[str]:
    """Keys of ``raw`` that none of ``classes`` (nor :data:`COMMON_KEYS`) declares."""
    known = set(COMMON_KEYS)
    for cls in classes:
        known.update(f.name for f in dataclasses.fields(cls))
    return sorted(k for k in raw if k not in known)


def settings_dict(section: str, raw: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` overlaid with the table ``raw``, each value coerced to its default's type.

    The same rules as :func:`load_settings`, for a detector that keeps its settings
    in a dict of documented defaults.

    >>> settings_dict("x", {"gap_ms": "5", "z": [4, 6]}, {"gap_ms": 1.0, "z": [4.5, 6.5]})
    {'gap_ms': 5.0, 'z': [4.0, 6.0]}
    """
    unknown = sorted(k for k in raw if k not in defaults and k not in COMMON_KEYS)
    if unknown:
        log.warning("[detectors.%s]: unknown setting(s) %s ignored", section, ", ".join(unknown))
    return {k: _coerce(section, k, raw[k], d) if k in raw else d for k, d in defaults.items()}


def load_settings(section: str, raw: Mapping[str, Any], *classes: type[Any]) -> tuple[Any, ...]:
    """One instance of each of ``classes`` from the ``[detectors.<section>]`` table ``raw``.

    Values are coerced to their default's type (a value that cannot be is refused with
    the key named); keys that no class declares are logged once per load.
    """
    unknown = unknown_keys(raw, *classes)
    if unknown:
        log.warning("[detectors.%s]: unknown setting(s) %s ignored", section, ", ".join(unknown))
    out = []
    for cls in classes:
        defaults = cls()
        kw = {f.name: _coerce(section, f.name, raw[f.name], getattr(defaults, f.name))
              for f in dataclasses.fields(cls) if f.name in raw}
        out.append(cls(**kw))
    return tuple(out)
