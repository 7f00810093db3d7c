"""A hosting range's /24s: which of them the exit's other users come through, and a
burst through the ones they do not.

A VPN service's users leave a hosting network through the few /24s its exit hosts sit
in, so they meet there: a /24 shared by a range's users ties nothing
(:func:`~pathsentry.detectors.farm.exits.kindred`). A farm renting hosts of its own in
the same network comes through /24s the service's users do not use, from its first
logins, before any of its machines or hosts carries a second account.

How often an arrival comes through a /24 the exit's other users did not use is
learned from them (the pattern's ungrouped accounts in the partition now, the
candidate's excepted): the Good-Turing estimate of an unseen kind, the /24s used by
exactly one of the ``N`` others plus one, over ``N + 1`` (:func:`unused_share`; 1
with no other account -- nothing is thinned -- and at least ``1 / (N + 1)``). A
service spread over many /24s shows many /24s used once, and its share stays high; one
whose users crowd a few /24s teaches a small one.

The judge (:func:`private_burst`): the candidate's members inside its RTT band that
came through unused /24s (:func:`on_unused`), at least ``min_size_unnamed`` of them,
must be that many against the others' /24s -- the beta-binomial tail
(:func:`~pathsentry.detectors.farm.suspicion.tail`) of so many of the band's members
through unused /24s, the share learned from the others' /24s seen once, its
uncertainty included (a handful of others teaches nothing), below ``max_burst_p`` --
and are a burst when the Poisson probability of that many arrivals against the exit's
expected count (:func:`~pathsentry.detectors.farm.background.expected`, thinned by the
band's share of the others' RTTs and by the unused share) stays below
``max_burst_p``; paced minutes apart (``window_s``) they must also crowd onto few
machines or addresses, as every name-less candidate must; and their RTTs (each shared
machine's centred, :func:`~pathsentry.detectors.farm.exits.machine_centred`) must stand
out of the exit's other users' (:func:`~pathsentry.detectors.farm.exits.stands_out`: a
spread at most ``rtt_background_ratio`` of theirs). An unused /24 is what a room rents,
but also what a service's own users come through when it moves them onto a new exit host
(a failover: a burst of its users, their sessions dropped at once) or adds a /24 to its
rotation (every new user through it at the exit's own rate): the learned unused share,
taught by the weeks before the move, then says nothing about the users after it, and
only where they come from tells them apart -- from everywhere, spread as the exit's
other users are, where a room's machines sit together. A room whose machines each have
an access of their own as far apart as the service's users (tens of ms) is not taken by
this judge; its machines or hosts repeating is (the machine and address judges). A
partition whose background
predicts no arrival at all (no history, no class prior) gives no verdict: a first
hour's few users are no evidence of a rate.

>>> from pathsentry.detectors.farm.model import Member
>>> def m(i, prefix): return Member(f"s{i}", f"a{i}", 0.0, None, None, "", prefix)
>>> others = [m(1, "45.76.1.0/24"), m(2, "45.76.1.0/24"), m(3, "45.76.2.0/24")]
>>> unused_share(others), unused_share([]), unused_share(others[:2])
(0.5, 1.0, 0.3333333333333333)
>>> [x.account for x in on_unused([m(4, "43.200.7.0/24"), m(5, "45.76.2.0/24")], others)]
['a4']
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from pathsentry.detectors.farm.background import burst_p, expected
from pathsentry.detectors.farm.exits import Band, min_noise, on_shared_addresses, stands_out
from pathsentry.detectors.farm.machines import crowded, on_shared_machines
from pathsentry.detectors.farm.model import FarmSettings, Member, Partition
from pathsentry.detectors.farm.suspicion import tail

__all__ = ["PrivateBurst", "on_unused", "others_of", "private_burst", "private_judged",
           "unused_share", "within_tied"]

_NET_AS = "net:AS"


def others_of(part: Partition, pattern: str, live: Collection[str]) -> list[Member]:
    """The pattern's ungrouped accounts in the partition now, those in ``live`` (the
    session ids under judgement) excepted: the exit's other users."""
    return [x for x in part.index.get(pattern, {}).values()
            if x.sid not in live and x.group is None]


def _once(others: Sequence[Member]) -> int:
    """How many /24s exactly one of ``others`` used."""
    return sum(1 for c in Counter([x.prefix for x in others]).values() if c == 1)


def unused_share(others: Sequence[Member], once: int | None = None) -> float:
    """The learned chance that an arrival comes through a /24 none of ``others`` used
    (see the module docstring; ``once``: :func:`_once` of ``others``, when known)."""
    n = len(others)
    if not n:
        return 1.0
    return min(1.0, ((_once(others) if once is None else once) + 1.0) / (n + 1.0))


def on_unused(ms: Sequence[Member], others: Sequence[Member]) -> list[Member]:
    """The members of ``ms`` that came through a /24 none of ``others`` used."""
    used = {x.prefix for x in others}
    return [x for x in ms if x.prefix not in used]


def within_tied(inside: Sequence[Member], ms: Sequence[Member], s: FarmSettings
                ) -> list[Member]:
    """``inside`` without the accounts tied to no other that fall outside the RTT range
    of the members of ``ms`` (those through unused /24s) tied by a machine or an exit
    address they share, widened by the logins' own noise (``rtt_spread_k`` times the
    median noise, at least ``rtt_tolerance_ms``): a room's machines sit together, and
    once two of its machines show where, a VPN user passing through the range from
    farther away (the candidate's band, learned from everything in the window, may be
    wide) is no member. With fewer than two tied machines: ``inside``.

    >>> def m(i, dev, ip, rtt):
    ...     return Member(f"s{i}", f"a{i}", 0.0, None, None, ip, "", rtt=rtt, device=dev,
    ...                   jitter=0.5)
    >>> room = [m(0, "d0", "1", 94.0), m(1, "d0", "2", 95.0), m(2, "d1", "3", 83.0),
    ...         m(3, "d1", "3", 82.0), m(4, "d2", "4", 87.0), m(5, "d3", "5", 67.5)]
    >>> [x.account for x in within_tied(room, room, FarmSettings())]
    ['a0', 'a1', 'a2', 'a3', 'a4']
    >>> len(within_tied(room, room[2:], FarmSettings()))  # one tied machine: no range
    6
    """
    tied = [x for x in ms if x in on_shared_machines(ms) or x in on_shared_addresses(ms)]
    rtts = [x.rtt for x in tied if x.rtt is not None]
    if len({x.device for x in tied if x.device}) < 2 or not rtts:
        return list(inside)
    tol = max(s.rtt_tolerance_ms, s.rtt_spread_k * (min_noise(ms) or 0.0))
    lo, hi = min(rtts) - tol, max(rtts) + tol
    ids = {x.sid for x in tied}
    return [x for x in inside if x.sid in ids or x.rtt is None or lo <= x.rtt <= hi]


def private_judged(part: Partition, pattern: str, cand: Sequence[Member], s: FarmSettings
                   ) -> bool:
    """Whether :func:`private_burst` may take ``cand``: a hosting range, and
    ``min_size_unnamed`` of its members through /24s the exit's other users did not use
    (else the burst bound without thinning holds for it too)."""
    if not pattern.startswith(_NET_AS):
        return False
    others = others_of(part, pattern, {x.sid for x in cand})
    return len(on_unused(cand, others)) >= s.min_size_unnamed


@dataclass(frozen=True, slots=True)
class PrivateBurst:
    """What :func:`private_burst` found: the members, the learned unused share, the
    expected count it was judged against and the tail probability."""

    members: list[Member]
    share: float
    expected: float
    p: float


def private_burst(part: Partition, pattern: str, inside: Sequence[Member], b: Band,
                  span: float, s: FarmSettings) -> PrivateBurst | None:
    """The band's members ``inside`` that came through /24s the exit's other users did
    not use, when they are a burst (see the module docstring); else ``None``."""
    live = {x.sid for x in inside}
    others = others_of(part, pattern, live)
    inside = within_tied(inside, on_unused(inside, others), s)
    ms = on_unused(inside, others)
    n = len(ms)
    if n < s.min_size_unnamed:
        return None
    # the /24s first: this many of the band's members through unused /24s, against the
    # others' /24s seen once among them (the beta-binomial tail: its uncertainty
    # included, a handful of others is no evidence)
    once = _once(others)
    if tail(n, len(inside), float(once), float(len(others) - once)) > s.max_burst_p:
        return None
    share = unused_share(others, once)
    lam = expected(part, n, span, s)
    if lam <= 0.0:
        return None
    lam *= share * b.share([*part.bg_rtts, *(x.rtt for x in others if x.rtt is not None)])
    p = burst_p(n, lam)
    if p > s.max_burst_p:
        return None
    if span > s.burst_s and not crowded(ms):
        return None
    # a room's machines sit a few ms apart; a service's users moved onto a new /24 of the
    # range at once (a failover, a new exit host) come from everywhere
    if not stands_out(ms, others, part.bg_rtts, s):
        return None
    return PrivateBurst(ms, round(share, 4), round(lam, 4), p)
