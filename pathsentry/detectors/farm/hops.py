"""Machines across home lines: a room behind residential proxies of several /24s.

A farm room on residential proxies leaves through home lines (``residential``,
``Cable/DSL`` addresses) of several /24s, often of several ISPs, with neither relay
flags nor a foreign route; each /24's home-line judge (:mod:`.lines`) sees only its
share of the room. What the room cannot avoid is its few machines: each runs several
accounts one after another, and the proxy in front of it hands them out through the
room's proxy addresses in turn, so one machine (the client-reported device id) carries
several accounts through home lines of two /24s within the hour. A home does not: its
machines stay behind its one line.

Every successful login on a home line reaches the partition ``hop:<country>`` (the
exit's country; the only key a room's logins on several ISPs share). Its cost per login
is bounded: the partition keeps each machine in view with its logins of the window
(:class:`~pathsentry.detectors.farm.model.Sightings`, at most ``hop_max_devices``
machines and addresses, least recently seen dropped first), and only a machine that
*hops* -- at least two accounts through home lines of at least two /24s within
``window_s`` -- becomes a member (with its logins in view), indexed and judged; a
machine that stays on one line never leaves the sightings.

The judge (:func:`room`): the candidate is the component of the hopping machines'
accounts in the window joined by a shared machine or a shared proxy address (its
family members excepted: a named batch is its family partition's), with at least
``min_size_unnamed`` accounts crowded onto few machines
(:func:`~pathsentry.detectors.farm.machines.on_few_machines`), and it must be
improbable that so many of the machines seen on its addresses hop by chance, and that
far: the Poisson tail of its ``h`` moves (each hopping machine's /24s beyond its first,
or, when more, its switches of /24 between consecutive logins sooner than
``hop_travel_s``, the shortest time to carry a machine to another home: one machine
through four /24s is three moves, and one handed two /24s' proxy addresses in turn
seconds apart by seven accounts four or more, each taken to be as rare as a first hop;
a laptop carried to a friend's and back within the hour is one)
against the machines seen on those addresses within the window times the learned share
of the class's machines that hop
(:func:`hop_share`: the machines counted as they come into view and those that hop,
the candidate's own taken out, smoothed toward ``hop_prior_share`` weighted as
``hop_prior_devices`` machines) stays
below ``max_burst_p``. The machines, the accounts per machine, the /24s and addresses,
the machines seen on them and the learned share go into the evidence.

Crowds that are not rooms, and why they form no group here:

- **a family at home** (several accounts on one PC): one line, one /24 -- the machine
  never hops;
- **friends who sign up together, friends on two ISPs**: each on a machine of their
  own; a laptop carried to a friend's with a sibling's account hops once, alone, and
  one or two moves of one or two machines are no tail event against the learned share;
- **a residential proxy service's unrelated users**: the service rotates their exits,
  but each user brings one account on a machine of their own -- no machine hops;
- **PC bangs, campus NAT, mobile CGNAT, cloud gaming, game relays, VPN ranges**: not
  home lines (``business``, ``education``, ``mobile``, ``hosting``…), never keyed here.

Known limits: the friends' case is cleared by the learned share -- in a population
whose machines never hop, three friends each carrying a main and an alt account on a
laptop between two homes within the hour (six accounts, three machines) are a tail
event, and so are a household's laptops carried through the home lines of three or
more /24s within the hour with five accounts among them (each further /24 a move as
rare as the first); a room whose every machine keeps to one proxy address (as many machines
as addresses, in step) never hops and is left to the /24s' home-line judges; a room
on several /24s found here also keeps its /24s' home-line alerts (partitions on other
workers), so it can show in more than one alert; the sightings are learned per worker
and not saved (a restarted worker sees hops again from its next logins); the key is
a country's, so one worker takes every home-line login of a country (a hot partition:
its cost per login is bounded, its share of the logins is not), and in a very busy
country the window of machines in view is bounded by ``hop_max_devices`` rather than
``window_s``.

>>> from pathsentry.detectors.farm.model import FarmSettings, Member, Partition
>>> s, p = FarmSettings(), Partition(key="hop:KR")
>>> def login(i, acct, ip, dev):
...     return Member(f"s{i}", acct, float(i), None, None, ip, ip.rsplit(".", 1)[0] + ".0/24",
...                   device=dev, access="residential")
>>> sight(p, login(1, "a", "203.0.113.7", "d1"), s)
[]
>>> [x.account for x in sight(p, login(2, "b", "198.51.100.9", "d1"), s)]
['a', 'b']
>>> sight(p, login(3, "c", "203.0.113.8", "d2"), s), sight(p, login(4, "d", "203.0.113.8", "d2"), s)
([], [])
>>> p.hops.seen, p.hops.hopped
(2.0, 1.0)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pathsentry.detectors.farm.background import burst_p
from pathsentry.detectors.farm.lines import LINE_KINDS
from pathsentry.detectors.farm.machines import on_few_machines
from pathsentry.detectors.farm.model import _HOP_, FarmSettings, Member, Partition, Sightings

__all__ = ["MAX_PER_ADDRESS", "MAX_PER_DEVICE", "HopJudgement", "expire", "hop_evidence",
           "hop_key", "hop_share", "judge", "note", "room", "sight"]

#: logins kept per machine in view, and machines per address (a home line carries a
#: household; more are a crowd's, counted as this many)
MAX_PER_DEVICE = 32
MAX_PER_ADDRESS = 64


def hop_key(country: str | None, kind: str | None, device: str | None) -> str | None:
    """The ``hop:`` partition of a login: its exit's country, on a home line, from a
    known machine.

    >>> hop_key("KR", "residential", "d1"), hop_key("KR", "mobile", "d1"), hop_key("KR", "residential", None)
    ('hop:KR', None, None)
    """
    if not country or not device or kind not in LINE_KINDS:
        return None
    return _HOP_ + country


def _view(part: Partition) -> Sightings:
    hops = part.hops
    if hops is None:
        hops = part.hops = Sightings()
    return hops


def note(part: Partition, m: Member, s: FarmSettings) -> None:
    """Note ``m``'s machine on its address (every login of the partition)."""
    if not m.device:
        return
    addresses = _view(part).addresses
    seen = addresses.get(m.src_ip)
    if seen is None:
        seen = addresses[m.src_ip] = {}
        while len(addresses) > s.hop_max_devices:
            addresses.popitem(last=False)
    else:
        addresses.move_to_end(m.src_ip)
    if m.device in seen or len(seen) < MAX_PER_ADDRESS:
        seen[m.device] = m.ts


def _hops(ms: Sequence[Member]) -> bool:
    """Whether one machine's logins carry two accounts through two /24s."""
    return len({x.account for x in ms}) >= 2 and len({x.prefix for x in ms}) >= 2


def sight(part: Partition, m: Member, s: FarmSettings) -> list[Member]:
    """Keep ``m`` (a login of a machine not yet hopping) in view; when its machine now
    hops (:func:`_hops` over its logins within ``window_s``), its logins, which then
    leave the sightings to become members (else ``[]``)."""
    dev = m.device
    if not dev:
        return []
    view = _view(part)
    devices = view.devices
    live = devices.get(dev)
    if live is None:
        live = devices[dev] = []
        view.seen += 1.0
        while len(devices) > s.hop_max_devices:
            devices.popitem(last=False)
    else:
        devices.move_to_end(dev)
    cutoff = m.ts - s.window_s
    live[:] = [x for x in live if x.ts >= cutoff and x.sid != m.sid][-(MAX_PER_DEVICE - 1):]
    live.append(m)
    if not _hops(live):
        return []
    view.hopped += 1.0
    del devices[dev]
    return live


def expire(part: Partition, cutoff: float) -> None:
    """Drop the machines and addresses last seen before ``cutoff`` (least recently seen
    first: the scan stops at the first one still in view)."""
    view = part.hops
    if view is None:
        return
    devices, addresses = view.devices, view.addresses
    while devices:
        for live in devices.values():  # noqa: B007 - the least recently seen
            break
        if live and live[-1].ts >= cutoff:
            break
        devices.popitem(last=False)
    while addresses:
        for seen in addresses.values():  # noqa: B007
            break
        if seen and max(seen.values()) >= cutoff:
            break
        addresses.popitem(last=False)


def hop_share(part: Partition, s: FarmSettings, own: int = 0) -> float:
    """The learned share of the class's machines in view that hop, ``own`` hopping
    machines under judgement taken out (a room is no background of itself), smoothed
    toward ``hop_prior_share`` weighted as ``hop_prior_devices`` machines."""
    view = part.hops
    seen, hopped = (view.seen, view.hopped) if view is not None else (0.0, 0.0)
    hopped, seen = max(0.0, hopped - own), max(0.0, seen - own)
    return (hopped + s.hop_prior_share * s.hop_prior_devices) / (seen + s.hop_prior_devices)


def _component(cand: Sequence[Member], m: Member) -> list[Member]:
    """The members of ``cand`` joined to ``m`` by a shared machine or address."""
    by_dev: dict[str, list[Member]] = {}
    by_ip: dict[str, list[Member]] = {}
    for x in cand:
        if x.device:
            by_dev.setdefault(x.device, []).append(x)
        by_ip.setdefault(x.src_ip, []).append(x)
    out: dict[str, Member] = {}
    todo = [m]
    while todo:
        x = todo.pop()
        if x.sid in out:
            continue
        out[x.sid] = x
        todo += by_dev.get(x.device or "", [])
        todo += by_ip.get(x.src_ip, [])
    return sorted(out.values(), key=lambda x: (x.ts, x.sid))


@dataclass(frozen=True, slots=True)
class HopJudgement:
    """The tail test of a room's hopping machines (:func:`judge`): ``moves`` is their
    /24s beyond each one's first (at least one per machine)."""

    machines: int
    moves: int
    in_view: int
    share: float
    expected: float
    p: float


def _moves(members: Sequence[Member], travel_s: float) -> tuple[dict[str, set[str]], int]:
    """Each machine's /24s, and the machines' moves: for each machine, its /24s beyond
    its first, or, when more, its switches from one /24 to another between consecutive
    logins sooner than ``travel_s`` (no machine is carried between homes that fast: a
    proxy handed it another exit); at least one per machine.

    >>> from pathsentry.detectors.farm.model import Member
    >>> def at(t, dev, prefix):
    ...     return Member(f"s{t}", f"a{t}", float(t), None, None, "", prefix, device=dev)
    >>> room = [at(0, "d1", "A"), at(20, "d1", "B"), at(40, "d1", "A"), at(60, "d1", "B")]
    >>> laptop = [at(0, "d2", "A"), at(900, "d2", "B"), at(1800, "d2", "A")]
    >>> _moves(room, 300.0)[1], _moves(laptop, 300.0)[1]
    (3, 1)
    """
    per: dict[str, set[str]] = {}
    last: dict[str, Member] = {}
    fast: dict[str, int] = {}
    for x in sorted(members, key=lambda x: (x.ts, x.sid)):
        dev = x.device
        if not dev:
            continue
        per.setdefault(dev, set()).add(x.prefix)
        before = last.get(dev)
        if before is not None and before.prefix != x.prefix and x.ts - before.ts < travel_s:
            fast[dev] = fast.get(dev, 0) + 1
        last[dev] = x
    return per, sum(max(1, len(v) - 1, fast.get(d, 0)) for d, v in per.items())


def judge(part: Partition, ms: Iterable[Member], s: FarmSettings) -> HopJudgement:
    """How improbable the hopping machines of ``ms`` are: their moves -- each machine's
    /24s beyond its first, or its switches of /24 faster than a machine can be carried
    between homes (:func:`_moves`) -- against the machines seen on their addresses
    within ``window_s`` of the latest login, times the learned share (:func:`hop_share`).
    Each further move of a machine is taken to be as rare as its first (as a home line's
    further accounts are as rare as its second: :mod:`.lines`): one machine carrying a
    room's accounts through the home lines of four /24s, or handed two /24s' proxy
    addresses in turn seconds apart, is a tail event on its own, where a laptop carried
    to a friend's and back (one /24 more, switches minutes apart) is not."""
    members = list(ms)
    per, moves = _moves(members, s.hop_travel_s)
    devices = set(per)
    t = max((x.ts for x in members), default=0.0)
    cutoff = t - s.window_s
    in_view = set(devices)
    view = part.hops
    if view is not None:
        for ip in {x.src_ip for x in members}:
            seen = view.addresses.get(ip)
            if seen:
                in_view.update(d for d, ts in seen.items() if ts >= cutoff)
    share = hop_share(part, s, len(devices))
    lam = len(in_view) * share
    return HopJudgement(len(devices), moves, len(in_view), round(share, 5), round(lam, 3),
                        burst_p(moves, lam))


def room(part: Partition, cand: Sequence[Member], m: Member, s: FarmSettings
         ) -> list[Member] | None:
    """The room around ``m`` among the hopping machines' accounts ``cand`` (see the
    module docstring), or ``None``."""
    ms = _component(cand, m)
    if len({x.account for x in ms}) < s.min_size_unnamed or not on_few_machines(ms):
        return None
    if judge(part, ms, s).p > s.max_burst_p:
        return None
    return ms


def hop_evidence(part: Partition, ms: Iterable[Member], s: FarmSettings) -> dict[str, Any]:
    """The machines across home lines beside the learned share of machines that hop."""
    members = list(ms)
    j = judge(part, members, s)
    per, _ = _moves(members, s.hop_travel_s)
    return {
        "machines": j.machines,
        "moves_across_24s": j.moves,
        "accounts_per_machine": round(len(members) / j.machines, 2) if j.machines else None,
        "prefixes_per_machine_max": max((len(v) for v in per.values()), default=0),
        "prefixes": len({x.prefix for x in members}),
        "addresses": len({x.src_ip for x in members}),
        "machines_seen_on_addresses": j.in_view,
        "learned_hop_share": j.share,
        "expected_hopping_machines": j.expected,
        "hop_tail_p": j.p,
    }
