"""``truth.jsonl``: what every simulated event, account, farm group and cell really is.

One JSON object per line, each with a ``"type"``:

``world`` (first line)
    ``{seed, accounts, hours, start, end, params}`` — the spec of the world
    (``params``: ``fixed`` or ``random``).
``cell`` (one per planted injection cell)
    ``{asn, as_name, prefixes: [cidr…], ports: [80, 8080], hours: [9…17], answer,
    ttl_delta}`` — an ISP box forging plaintext answers (a ``page``, a ``redirect`` or
    a ``block`` page, TTL ``ttl_delta`` above the SYN-ACK's) on those ports during those
    KST hours only.
``account`` (one per account)
    ``{account, label, klass, group_id}`` — ``label`` is ``benign`` or an attack class
    (``l4_relay``, ``l3_vpn``, ``resi_proxy``, ``farm_serial``, ``farm_route``);
    ``klass`` names the population (``normal``, ``pc_bang``, ``campus``, ``cgnat``,
    ``lte``, ``cloud_gaming``, ``rural_dsl``, ``game_relay``, ``family_names``,
    ``squatted_hop``, ``popular_stem``) or repeats the attack label.
``event`` (one per event, in the order of ``events.jsonl``)
    ``{event_id, ts, kind, account, label, klass, expect: [flag kind…]}`` — ``label`` is
    ``benign`` or the attack class (``injection`` for a forged http answer); for benign
    events ``klass`` is the hard-negative class (the account's population, or a
    per-event one: ``icmp_spike``, ``squatted_hop``, ``tls``, ``isp_off_hours``, the
    origin's own answers ``origin_outage``, ``origin_error``, ``origin_redirect``,
    ``maintenance``, ``origin_failover`` (an outage answered by a box of the origin's
    own, without the CDN's marks), and ``api_origin`` for the origin off the CDN);
    ``expect`` lists the flag kinds a perfect detector raises on it.
``group`` (one per farm group, after the events)
    ``{group_id, label: farm_serial|farm_route, members: [...], template, relay,
    first_login_ts, fifth_login_ts}``.

>>> t = Truth.from_lines([
...     '{"type": "world", "seed": 1, "accounts": 2, "hours": 1.0,'
...     ' "start": "2026-03-02T00:00:00+09:00", "end": "2026-03-02T01:00:00+09:00"}',
...     '{"type": "account", "account": "a", "label": "benign", "klass": "normal", "group_id": null}',
...     '{"type": "event", "event_id": "e1", "ts": "2026-03-02T00:00:01.000+09:00",'
...     ' "kind": "login", "account": "a", "label": "benign", "klass": "normal", "expect": []}'])
>>> t.hours, t.events["e1"].kind, t.accounts["a"].klass
(1.0, 'login', 'normal')
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

__all__ = ["AccountTruth", "CellTruth", "EventTruth", "GroupTruth", "Truth", "parse_ts"]


def parse_ts(ts: str) -> float:
    """Epoch seconds of an RFC 3339 timestamp."""
    return datetime.fromisoformat(ts).timestamp()


@dataclass(frozen=True, slots=True)
class EventTruth:
    event_id: str
    kind: str
    label: str
    klass: str
    expect: tuple[str, ...] = ()
    account: str | None = None
    ts: float = 0.0


@dataclass(frozen=True, slots=True)
class AccountTruth:
    account: str
    label: str
    klass: str
    group_id: str | None = None


@dataclass(frozen=True, slots=True)
class GroupTruth:
    group_id: str
    label: str
    members: tuple[str, ...]
    first_login_ts: float | None = None
    fifth_login_ts: float | None = None
    template: str | None = None
    family: str | None = None
    pace_s: tuple[float, float] | None = None


@dataclass(frozen=True, slots=True)
class CellTruth:
    asn: int
    prefixes: tuple[str, ...]
    ports: tuple[int, ...]
    hours: tuple[int, ...]
    as_name: str = ""


@dataclass(slots=True)
class Truth:
    """The labels of one world, indexed for the scorer."""

    events: dict[str, EventTruth] = field(default_factory=dict)
    accounts: dict[str, AccountTruth] = field(default_factory=dict)
    groups: dict[str, GroupTruth] = field(default_factory=dict)
    cells: list[CellTruth] = field(default_factory=list)
    hours: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def add(self, rec: dict[str, Any]) -> None:
        kind = rec.get("type")
        if kind == "event":
            ts = rec.get("ts")
            self.events[rec["event_id"]] = EventTruth(
                rec["event_id"], rec["kind"], rec["label"], rec["klass"],
                tuple(rec.get("expect") or ()), rec.get("account"),
                parse_ts(ts) if isinstance(ts, str) else float(ts or 0.0))
        elif kind == "account":
            self.accounts[rec["account"]] = AccountTruth(
                rec["account"], rec["label"], rec["klass"], rec.get("group_id"))
        elif kind == "group":
            def opt_ts(key: str) -> float | None:
                v = rec.get(key)
                return parse_ts(v) if isinstance(v, str) else None

            self.groups[rec["group_id"]] = GroupTruth(
                rec["group_id"], rec["label"], tuple(rec["members"]), opt_ts("first_login_ts"),
                opt_ts("fifth_login_ts"), rec.get("template"), rec.get("family"),
                tuple(rec["pace_s"]) if rec.get("pace_s") else None)
        elif kind == "cell":
            self.cells.append(CellTruth(int(rec["asn"]), tuple(rec["prefixes"]),
                                        tuple(int(p) for p in rec["ports"]),
                                        tuple(int(h) for h in rec["hours"]),
                                        rec.get("as_name", "")))
        elif kind == "world":
            self.meta = dict(rec)
            self.hours = float(rec.get("hours", 0.0))

    @classmethod
    def from_lines(cls, lines: Iterable[str | bytes]) -> Truth:
        t = cls()
        for line in lines:
            if line.strip():
                t.add(orjson.loads(line))
        return t

    @classmethod
    def load(cls, path: str | Path) -> Truth:
        with open(path, "rb") as fh:
            return cls.from_lines(fh)
