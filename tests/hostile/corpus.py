"""Hostile values and messages shared by the fuzz test and the worker test.

Each :class:`Nasty` message says what the worker must do with it: dead-letter it
with a given reason, or (valid but nasty, e.g. an SQL-looking account name) process
it and store the hostile text verbatim.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONFUSABLE_NAMES",
    "KNOWN_REASONS",
    "ODD_IPS",
    "SQL_NAMES",
    "Nasty",
    "deep_json",
    "nasty_messages",
]

KNOWN_REASONS = frozenset({"bad_json", "oversized", "not_an_object", "unknown_kind", "invalid"})

#: Addresses in every odd spelling: short forms, hex/octal, mapped, zone ids, unicode digits.
ODD_IPS: tuple[Any, ...] = (
    "1.2.3", "1.2.3.4.5", "0x7f.1", "0x7f000001", "017700000001", "127.1", "010.001.002.003",
    "01.2.3.4", "1.2.3.04", "256.1.1.1", "-1.2.3.4", " 1.2.3.4", "1.2.3.4 ", "1.2.3.4\x00",
    "::ffff:1.2.3.4", "::ffff:7f00:1", "::1.2.3.4", "fe80::1%eth0", "fe80::1%25eth0", "[::1]",
    "::", "0.0.0.0", "255.255.255.255", "2001:db8::/32", "1.2.3.4/24", "١٢٧.٠.٠.١", "１.２.３.４",
    "1.2.3.4:80", "localhost", "", 2130706433, -1, 2**128, 1.5, True, None, ["1.2.3.4"],
    {"ip": "1.2.3.4"},
)

SQL_NAMES: tuple[str, ...] = (
    "x'); DROP TABLE pathsentry.flagged_events; --",
    "' OR 1=1 --",
    "admin'--",
    "\\'; SELECT * FROM system.users; --",
    "{db}.alerts",
    "a\\nFORMAT JSONEachRow",
    "\"}],\"kind\":\"x",
)

#: Look-alike names: Cyrillic/Greek letters, fullwidth, zero-width joiners, RTL override.
CONFUSABLE_NAMES: tuple[str, ...] = (
    "xiаopai001",            # Cyrillic а
    "xiaopaі002",            # Ukrainian і
    "ｘｉａｏｐａｉ００３",   # fullwidth
    "xiao\u200bpai004",      # zero-width space
    "xiaopai\u202e500",      # right-to-left override
    "ΧΙΑΟΡΑΙ006",            # Greek capitals
    "xiaopai\u0000007",      # NUL
)


def deep_json(depth: int) -> bytes:
    """``depth`` nested arrays inside a login-looking object."""
    return b'{"kind":"login","x":' + b"[" * depth + b"]" * depth + b"}"


@dataclass(frozen=True)
class Nasty:
    """One hostile message and what must become of it."""

    name: str
    value: bytes
    reason: str | None  # dead-letter reason; None: valid, processed and stored verbatim
    account: str | None = None  # for valid ones: the account name that must be stored as is


def _dump(ev: dict[str, Any]) -> bytes:
    # json (not orjson) so NaN / Infinity can be spelled as producers in other languages do
    return json.dumps(ev, ensure_ascii=False).encode("utf-8", "surrogatepass")


def nasty_messages(login: dict[str, Any], traceroute: dict[str, Any]) -> list[Nasty]:
    """The corpus, built around one valid ``login`` and one valid ``traceroute``."""

    def variant(base: dict[str, Any], tag: str, **changes: Any) -> dict[str, Any]:
        return {**base, "event_id": f"hostile-{tag}", **changes}

    out = [
        Nasty("invalid utf-8", b'{"kind":"login","account":"\xff\xfe\xc3\x28"}', "bad_json"),
        Nasty("lone surrogate", b'{"kind":"login","account":"\\ud800"}', "bad_json"),
        Nasty("deep json", deep_json(100_000), "bad_json"),
        Nasty("moderately deep json", deep_json(500), "invalid"),
        Nasty("10 MB payload", b'{"kind":"login","pad":"' + b"a" * (10 << 20) + b'"}', "oversized"),
        Nasty("empty", b"", "bad_json"),
        Nasty("json array", b"[1,2,3]", "not_an_object"),
        Nasty("json null", b"null", "not_an_object"),
        Nasty("kind is a list", b'{"kind":["login"]}', "unknown_kind"),
        Nasty("NaN rtt", _dump(variant(login, "nan", app_rtt_ms=[float("nan")])), "bad_json"),
        Nasty("Infinity rtt", _dump(variant(login, "inf", tcp_rtt_ms=float("inf"))), "bad_json"),
        Nasty("negative rtt", _dump(variant(login, "neg", app_rtt_ms=[-1.0])), "invalid"),
        Nasty("huge rtt", _dump(variant(login, "huge", app_rtt_ms=[1e308])), "invalid"),
        Nasty("huge int rtt", _dump(variant(login, "bigint", app_rtt_ms=[2**80])), "invalid"),
        Nasty("no rtt samples", _dump(variant(login, "nosamples", app_rtt_ms=[])), "invalid"),
        Nasty("10k hops", _dump(variant(traceroute, "10khops", hops=[
            {"ttl": 1 + i % 255} for i in range(10_000)
        ])), "invalid"),
        Nasty("10k full hops", _dump(variant(traceroute, "10kfull", hops=[
            {"ttl": 1 + i % 255, "ip": "10.0.0.1", "rtt_ms": [1.0, 1.1]} for i in range(10_000)
        ])), "oversized"),
        Nasty("ts without offset", _dump(variant(login, "naive", ts="2026-01-01T00:00:00")), "invalid"),
        Nasty("event_id too long", _dump(variant(login, "x" * 200)), "invalid"),
    ]
    for i, ip in enumerate(("1.2.3", "0x7f.1", "010.001.002.003", "١٢٧.٠.٠.١", "1.2.3.4/24", "")):
        out.append(Nasty(f"odd ip {ip!r}", _dump(variant(login, f"ip{i}", src_ip=ip)), "invalid"))
    for i, name in enumerate(SQL_NAMES + CONFUSABLE_NAMES):
        ev = variant(login, f"name{i}", account=name, session_id=f"hostile-name-{i}")
        out.append(Nasty(f"account {name!r}", _dump(ev), None, account=name))
    return out
