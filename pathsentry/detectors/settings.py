"""How every detector reads its ``[detectors.NAME]`` table of ``pathsentry.toml``.

A detector declares its thresholds as frozen dataclasses whose defaults are the
documented values; :func:`load_settings` builds them from the table, coercing each
value to its default's type (``"600"`` for a float is 600.0; ``"yes"`` for a bool is
refused, not taken as true) and reports keys that no dataclass of the detector knows,
so a misspelt threshold does not silently keep its default. ``enabled`` is every
detector's own key. While :func:`recording` is active, every table loaded is recorded
with its defaults and the ``#:`` comments of its dataclass fields (what ``pathsentry
settings`` prints).

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
pathsentry.config.ConfigError: [detectors.demo] min_size: 'many' is not a int
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pathsentry.config import ConfigError

__all__ = ["COMMON_KEYS", "Setting", "dict_docs", "field_docs", "is_enabled", "load_settings",
           "recording", "settings_dict", "unknown_keys"]

log = logging.getLogger("pathsentry.detectors")

#: Keys every detector's table may hold besides its thresholds.
COMMON_KEYS = frozenset({"enabled"})


@dataclass(frozen=True, slots=True)
class Setting:
    """One loaded setting: its effective value, its documented default, its comment."""

    value: Any
    default: Any
    doc: str = ""


#: the tables loaded while :func:`recording` is active (``None``: not recording)
_record: dict[str, dict[str, Setting]] | None = None


@contextmanager
def recording() -> Iterator[dict[str, dict[str, Setting]]]:
    """Record every settings table loaded inside the block: section -> key -> setting.

    >>> from pathsentry.detectors.crosscheck import CrossCheckSettings
    >>> with recording() as seen:
    ...     _ = load_settings("crosscheck", {"max_fanout": 32}, CrossCheckSettings)
    ...     _ = settings_dict("other", {}, {"z": [1.0, 2.0]})
    >>> seen["crosscheck"]["max_fanout"]
    Setting(value=32, default=64, doc='peers kept per account (the most recent); older ones are forgotten')
    >>> seen["other"]["z"].value
    [1.0, 2.0]
    """
    global _record
    outer, _record = _record, {}
    try:
        yield _record
    finally:
        _record = outer


_FIELD = re.compile(r"^\s+(\w+)\s*:")
_KEY = re.compile(r"^\s+\"(\w+)\"\s*:")


def _comment_docs(lines: list[str], pattern: re.Pattern[str]) -> dict[str, str]:
    """The ``#:`` comment lines above each line ``pattern`` names a key in, joined."""
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in lines:
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
            continue
        m = pattern.match(line)
        if m and pending:
            docs[m.group(1)] = " ".join(pending)
        pending = []
    return docs


def field_docs(cls: type[Any]) -> dict[str, str]:
    """The ``#:`` comment lines written above each field of the class ``cls``, joined
    (``{}`` when its source cannot be read)."""
    try:
        return _comment_docs(inspect.getsource(cls).splitlines(), _FIELD)
    except (OSError, TypeError):
        return {}


def dict_docs(module: str, name: str = "DEFAULTS") -> dict[str, str]:
    """The ``#:`` comment lines written above each key of the dict literal ``name`` in
    the source of ``module`` (``{}`` when it cannot be read).

    >>> dict_docs("pathsentry.detectors.route")["min_samples"][:40]
    'RTT samples a hop needs for its country '
    """
    try:
        lines = inspect.getsource(importlib.import_module(module)).splitlines()
    except (ImportError, OSError, TypeError):
        return {}
    start = next((i for i, line in enumerate(lines) if line.startswith(f"{name}:")
                  or line.startswith(f"{name} =")), None)
    if start is None:
        return {}
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("}")), len(lines))
    return _comment_docs(lines[start:end], _KEY)


def _remember(section: str, values: Mapping[str, Any], defaults: Mapping[str, Any],
              docs: Mapping[str, str]) -> None:
    if _record is None:
        return
    table = _record.setdefault(section, {})
    for key, value in values.items():
        table[key] = Setting(value, defaults[key], docs.get(key, ""))


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    target = type(default)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"[detectors.{section}] {key}: {value!r} is not true or false")
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise ConfigError(f"[detectors.{section}] {key}: {value!r} is not a list of {len(default)}")
        return type(default)(_coerce(section, key, v, d) for v, d in zip(value, default, strict=True))
    if isinstance(value, target) and not isinstance(value, bool):
        return value
    try:
        return target(value)
    except (TypeError, ValueError):
        raise ConfigError(f"[detectors.{section}] {key}: {value!r} is not a {target.__name__}") from None


def is_enabled(section: str, raw: Mapping[str, Any]) -> bool:
    """The table's ``enabled`` key (true when absent); anything but a boolean is refused.

    >>> is_enabled("farm", {}), is_enabled("farm", {"enabled": False})
    (True, False)
    >>> is_enabled("farm", {"enabled": "no"})
    Traceback (most recent call last):
    ...
    pathsentry.config.ConfigError: [detectors.farm] enabled: 'no' is not true or false
    """
    return bool(_coerce(section, "enabled", raw.get("enabled", True), True))


def unknown_keys(raw: Mapping[str, Any], *classes: type[Any]) -> list[str]:
    """Keys of ``raw`` that none of ``classes`` (nor :data:`COMMON_KEYS`) declares."""
    known = set(COMMON_KEYS)
    for cls in classes:
        known.update(f.name for f in dataclasses.fields(cls))
    return sorted(k for k in raw if k not in known)


def settings_dict(section: str, raw: Mapping[str, Any], defaults: Mapping[str, Any],
                  docs_from: str | None = None) -> dict[str, Any]:
    """``defaults`` overlaid with the table ``raw``, each value coerced to its default's type.

    The same rules as :func:`load_settings`, for a detector that keeps its settings
    in a dict of documented defaults: the ``DEFAULTS`` literal of the module
    ``docs_from``, whose ``#:`` comments :func:`recording` takes.

    >>> settings_dict("x", {"gap_ms": "5", "z": [4, 6]}, {"gap_ms": 1.0, "z": [4.5, 6.5]})
    {'gap_ms': 5.0, 'z': [4.0, 6.0]}
    """
    unknown = sorted(k for k in raw if k not in defaults and k not in COMMON_KEYS)
    if unknown:
        log.warning("[detectors.%s]: unknown setting(s) %s ignored", section, ", ".join(unknown))
    out = {k: _coerce(section, k, raw[k], d) if k in raw else d for k, d in defaults.items()}
    if _record is not None:
        _remember(section, out, defaults, dict_docs(docs_from) if docs_from else {})
    return out


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
        if _record is not None:
            names = [f.name for f in dataclasses.fields(cls)]
            _remember(section, {n: getattr(out[-1], n) for n in names},
                      {n: getattr(defaults, n) for n in names}, field_docs(cls))
    return tuple(out)
