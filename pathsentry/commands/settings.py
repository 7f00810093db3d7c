"""``pathsentry settings``: every detector's thresholds as a configuration sets them.

Each detector reads its ``[detectors.NAME]`` table of ``pathsentry.toml`` into
documented defaults (:mod:`pathsentry.detectors.settings`). This command builds every
registered detector, and the cross-check, from the configuration while those loads
are recorded, without connecting to anything or loading geo data, and prints the
tables as TOML: each key's effective value, its default where the configuration
changes it, and the comment its declaration carries. The output is itself a valid
configuration fragment: copy a table into ``pathsentry.toml`` to change it.

>>> from pathsentry.config import load_config
>>> text = settings_toml(load_config(text="[detectors.takeover]\\nmin_history = 5\\n", env={}))
>>> "min_history = 5  # default 3; logins an account needs" in text
True
>>> import tomllib
>>> tomllib.loads(text)["detectors"]["takeover"]["min_history"]
5
"""

from __future__ import annotations

import argparse
import json
import math
import re
from typing import Any

from pathsentry.config import Config, load_config

__all__ = ["register", "settings_toml"]


def _toml_value(value: Any) -> str:
    """``value`` (a bool, number, string or list of them) as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if math.isnan(value):
            return "nan"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


_ROLE = re.compile(r":\w+:`~?\.?([^`]+)`")


def _plain(doc: str) -> str:
    """A declaration's comment without its reStructuredText markup.

    >>> _plain("the floor of :func:`.lines.line_limit` within ``window_s``")
    'the floor of lines.line_limit within window_s'
    """
    return _ROLE.sub(r"\1", doc).replace("``", "")


def settings_toml(cfg: Config) -> str:
    """Every detector's settings table under ``cfg``, as TOML with comments."""
    from pathsentry.detectors import DetectorContext, registered
    from pathsentry.detectors.crosscheck import CrossCheckSettings
    from pathsentry.detectors.settings import is_enabled, recording
    from pathsentry.enrich.geo import GeoResolver

    ctx = DetectorContext(cfg, GeoResolver([]))
    with recording() as seen:
        detectors = registered()
        for cls in detectors.values():
            cls(ctx)
        CrossCheckSettings.from_settings(ctx.settings("crosscheck"))
    lines = ["# Every detector's settings as this configuration sets them: the value, its",
             "# default where the configuration changes it, and what it is. Each module's",
             "# docstring (pathsentry/detectors/) says how the detector uses them."]
    for section, table in seen.items():
        lines += ["", f"[detectors.{section}]"]
        if section in detectors:
            enabled = is_enabled(section, ctx.settings(section))
            lines.append(f"enabled = {_toml_value(enabled)}" + ("" if enabled else "  # default true"))
        for key, s in table.items():
            notes = [] if s.value == s.default else [f"default {_toml_value(s.default)}"]
            if s.doc:
                notes.append(_plain(s.doc))
            lines.append(f"{key} = {_toml_value(s.value)}" + (f"  # {'; '.join(notes)}" if notes else ""))
    return "\n".join(lines) + "\n"


def cmd_settings(args: argparse.Namespace) -> int:
    print(settings_toml(load_config(args.config)), end="")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("settings",
                       help="print every detector's settings (effective, default, meaning) as TOML")
    p.add_argument("--config", help="pathsentry.toml (default: $PATHSENTRY_CONFIG or ./pathsentry.toml)")
    p.set_defaults(func=cmd_settings)
