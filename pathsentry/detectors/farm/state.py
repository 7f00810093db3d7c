"""The farm detector's snapshot: partitions, members and groups as JSON, and back.

A snapshot is what a worker hands over when a partition of the groups topic
moves (see :mod:`pathsentry.streams.state`): each partition's members, its
background arrival count, its members kept on their machines past the window
(:func:`.machines.keep`) and its groups with their members. Name facts (family,
serial) are recomputed on load, so a snapshot outlives a change of the family rules;
fields a member did not have when it was saved take their defaults.
"""

from __future__ import annotations

import dataclasses
import math
from array import array
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from pathsentry.detectors.farm.families import family
from pathsentry.detectors.farm.machines import keep
from pathsentry.detectors.farm.model import Group, Member, Partition

__all__ = ["restore", "snapshot"]

_FIELDS = frozenset(f.name for f in dataclasses.fields(Member))


def _dump(m: Member) -> dict[str, Any]:
    return dataclasses.asdict(m)


def snapshot(now: float, parts: Mapping[str, Partition]) -> dict[str, Any]:
    """The JSON-serialisable state of ``parts`` at ``now``."""
    return {
        "now": now,
        "partitions": [
            {
                "key": p.key,
                "last_ts": p.last_ts,
                "first_ts": p.first_ts,
                "rate_count": p.rate_count,
                "rate_fast": p.rate_fast,
                "rate_ts": p.rate_ts,
                "bg_rtts": list(p.bg_rtts),
                "bg_seen": p.bg_seen,
                "bg_shared": p.bg_shared,
                "members": [_dump(m) for m in p.members.values()],
                "past": [_dump(m) for m in p.past or ()],
                "groups": [
                    {
                        "gid": g.gid, "pattern": g.pattern, "patterns": g.patterns,
                        "anchor": g.anchor, "first_seen": g.first_seen,
                        "last_seen": g.last_seen, "version": g.version, "score": g.score,
                        "members": [_dump(m) for m in g.members.values()],
                    }
                    for g in p.groups.values()
                ],
            }
            for p in parts.values()
        ],
    }


def member(raw: Mapping[str, Any]) -> Member:
    """A member from its :func:`snapshot` form (name facts recomputed)."""
    m = Member(**{k: v for k, v in raw.items() if k in _FIELDS})
    m.skel, m.serial_no, _ = family(m.account)
    m.in_background = False  # the class's login counts are not saved (:mod:`.suspicion`)
    return m


def restore(state: Mapping[str, Any], index: Callable[[Partition, Member], None]
            ) -> tuple[float, OrderedDict[str, Partition]]:
    """``(now, parts)`` from a :func:`snapshot`; ``index`` files each member under its
    patterns in its partition."""
    parts: OrderedDict[str, Partition] = OrderedDict()
    for raw in state.get("partitions", []):
        p = Partition(
            key=raw["key"], last_ts=raw["last_ts"], first_ts=raw["first_ts"],
            rate_count=raw["rate_count"], rate_ts=raw["rate_ts"],
            rate_fast=float(raw.get("rate_fast", raw["rate_count"])),
            bg_rtts=array("d", [float(x) for x in raw.get("bg_rtts", [])]),
            bg_seen=float(raw.get("bg_seen", 0.0)), bg_shared=float(raw.get("bg_shared", 0.0)),
        )
        for md in raw["members"]:
            m = member(md)
            p.name_index().assign(m.account)
            p.members[m.sid] = m
            index(p, m)
        past = raw.get("past", [])
        for md in past:  # (as saved: at most ``max_members``, oldest first)
            keep(p, member(md), len(past), -math.inf)
        for gd in raw["groups"]:
            g = Group(
                gid=gd["gid"], key=p.key, pattern=gd["pattern"], patterns=gd["patterns"],
                anchor=gd["anchor"], first_seen=gd["first_seen"], last_seen=gd["last_seen"],
                version=gd["version"], score=gd["score"],
            )
            for md in gd["members"]:
                m = p.members.get(md["sid"]) or member(md)
                g.put(m)
                p.accounts[m.account] = g.gid
            p.groups[g.gid] = g
        parts[p.key] = p
    return float(state.get("now", 0.0)), parts
