"""Home lines: many accounts on one subscriber address, judged against the learned rate.

A home line (a ``residential`` or ``Cable/DSL`` address: one subscriber) carries one
household -- one account in an hour mostly, a family's three to five at most. A
residential proxy's exit address serving a farm room carries a dozen, one after
another, from a few machines abroad, with no relay flag and no foreign route left
to find it by. In a subscriber /24's partition (``net:<a.b.c.0/24>``) every login on
a home line is indexed under the pattern ``line:<a.b.c.0/24>``; a candidate is the
accounts of that /24's home lines within ``window_s``:

- an address is *crowded* when it carried at least :func:`line_limit` accounts in
  the window;
- the group is the accounts on crowded addresses and, through their machines
  (client device ids), the accounts on the /24's other addresses that share one
  of those machines (a room's machines use each of its proxy addresses in turn);
- at least ``min_size_unnamed`` accounts, crowded onto few machines
  (:func:`~pathsentry.detectors.farm.machines.on_few_machines`);
- a second crowded address of the /24 within ``window_s`` of the group joins it (a
  room whose machines each keep to one proxy address shares no machine across them);
  later logins join from the group's addresses and machines for ``join_window_s``.

Machines that switch accounts. A room whose proxy hands its accounts out over several
addresses of the /24 may leave no address above the limit (fifteen accounts over five
addresses: three each); what it cannot hide is its machines, each logging in a *new*
account a minute or so after the last (:func:`record` marks such a login ``switched``:
its machine's previous login on the /24's home lines was another account's, less than
``switch_s`` before, and the account had not used the machine before). The accounts on
machines that switched are a group (:func:`switching`) when

- they are tied into rooms of three or more by the machines and addresses they share
  (:func:`~pathsentry.detectors.farm.machines.in_rooms`) and number more than a
  household's ``home_accounts`` -- in one room, or among at least :data:`HOMES_APART`
  machines that switched (a room whose machines each keep to proxy addresses of their own;
  two family PCs of two homes, each carrying its three players' accounts a few minutes
  apart on the evening's first turn, are two homes: their switches cluster per machine,
  so two machines' switches are not the independent events the tail below counts), and
- their switches are a tail event (Poisson, below ``max_burst_p``) against the /24's
  logins on known machines in the window times the learned share of the class's
  home-line logins that are switches (:func:`switch_share`: the logins that left their
  window in no group, smoothed toward ``switch_prior_share`` weighted as
  ``switch_prior_logins`` logins).

A machine of the room whose first two accounts were a pair when the group formed joins
it, with them, when it switches to its third within ``switch_s`` of the group's latest
member (:func:`switch_joins`).

Machines that switch slowly. A room whose machines each take a new account every twenty
minutes or so switches no faster than a family PC whose players take turns: a new
account on a machine within ``window_s`` of its last login under another is a *slow
switch* (``Member.switch_gap``), judged as above against the class's learned share of
slow switches (``Pool.sw_slow``, the same prior), and a group only when the accounts
carry the marks of a path that is no home's -- a relay flag or a foreign-origin route on
``min_size_unnamed`` of them and half. A machine joins such a group later with a slow
switch to its third account when one of its accounts carries such a mark.

A family PC carries two to five accounts, taking turns at sessions of an hour or more,
and replays the same accounts each evening (a replayed account is no switch); siblings
who switch within minutes do so a pair on a PC of their own, which no room ties; a PC
bang's seat keeps one player an hour or more and is no home line anyway; a CGNAT's
subscribers bring a machine each.

The learned rate. Every home-line address of the class (the subscriber /24s a
worker holds, :class:`~pathsentry.detectors.farm.model.Pool`) counts each time it
reaches its k-th account within ``window_s`` (``Pool.lines[k - 1]``, decayed by
halving when full). The body of that distribution -- the share ``r`` of addresses
that took a second account -- is robust to a farm's few crowded addresses in its
tail, and a household's k-th account is taken to be as rare as ``r ** (k - 1)``
(each further account as rare as the second): the limit is the smallest k with
``r ** (k - 1) <= max_burst_p``, and never below ``home_accounts + 1`` (the
households of the population: three to five players on one line, documented default
5). ``r`` starts from a prior of ``LINE_PRIOR_SHARE`` (0.1) weighted as
``LINE_PRIOR_ADDRESSES`` (100) addresses. A population where homes often carry two
or three accounts (``r`` near 0.3) raises the limit to 9.

Crowds that are not homes, and why they form no group here:

- a PC bang, a campus NAT, a mobile CGNAT address is not a home line (its kind is
  ``business``, ``education``, ``mobile``): not indexed; one mislabelled as
  residential brings one machine per player, never a few machines carrying a dozen;
- a family at home: three to five accounts, under the limit, and its PC's players take
  turns at long sessions, replaying the same accounts (no tail of switches); two homes
  whose phones take their three accounts in turn every quarter hour switch slowly, but
  log in from home: no relay flag, a domestic route;
- friends on two ISPs, each on their own machine: one or two accounts per address;
- a residential proxy service with unrelated users: many accounts on one exit
  address, but each from its own machine.

Known limits: a farm on proxies of several /24s is one group per /24 (the partition
key; the /24s' groups are joined downstream only through a group of another partition
that shares their accounts, :mod:`.rooms`), and a room whose machines each
carry no more accounts than a household, on addresses under the limit, is not found
here; a /24's switches are judged by the /24's own logins (a machine's previous login
through another /24 is not seen); the histogram and the switch share are learned per
worker and not saved (a restarted worker starts from the priors).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

from pathsentry.detectors.farm.background import burst_p
from pathsentry.detectors.farm.machines import on_few_machines, room_sizes
from pathsentry.detectors.farm.model import _NET_, FarmSettings, LineLogins, Member, Partition, Pool

__all__ = ["LINE_KINDS", "LINE_PRIOR_ADDRESSES", "LINE_PRIOR_SHARE", "add", "crowd", "leave",
           "line_evidence", "line_limit", "line_pattern", "record", "remove", "switch_joins",
           "switch_share", "switching"]

#: the geo kinds of an address that carries one subscriber line (a home): several
#: accounts on one such address are one household or a proxy, never a crowd sharing a
#: NAT (mobile CGNAT, a campus, a PC bang, a satellite ISP -- other kinds). The prefix
#: table's ``residential``, and MaxMind's connection type ``Cable/DSL`` (lower-cased
#: by :mod:`pathsentry.enrich.geo`)
LINE_KINDS = frozenset({"residential", "cable/dsl"})
#: the prior share of home-line addresses that take a second account in a window, and
#: its weight in addresses
LINE_PRIOR_SHARE = 0.1
LINE_PRIOR_ADDRESSES = 100.0
#: accounts per address counted apart (more are counted as this many)
_MAX_K = 64
#: the first bin's count beyond which the histogram is halved
_MAX_SEEN = 1e6

_LINE_ = "line:"
#: switching machines that share neither a machine nor an address with each other (each
#: no more accounts than a household's) that make a room: two are two homes' family PCs
#: on the evening's first turn, whose players take it a few minutes apart
HOMES_APART = 3


def line_pattern(key: str) -> str | None:
    """The home-line pattern of a subscriber /24's partition (none for a hosting AS).

    >>> line_pattern("net:203.0.113.0/24"), line_pattern("net:AS64500")
    ('line:203.0.113.0/24', None)
    """
    if not key.startswith(_NET_) or key.startswith(_NET_ + "AS"):
        return None
    return _LINE_ + key[len(_NET_):]


def is_line(pattern: str) -> bool:
    return pattern.startswith(_LINE_)


def add(part: Partition, m: Member) -> None:
    """``m`` just indexed: filed by machine and address if under its /24's home-line
    pattern (the last of ``m.indexed``)."""
    if not m.indexed or not is_line(m.indexed[-1]):
        return
    logins = part.lines
    if logins is None:
        logins = part.lines = LineLogins()
    _file(logins.by_address, m.src_ip, m)
    if m.device:
        _file(logins.by_device, m.device, m)


def remove(part: Partition, m: Member) -> None:
    """``m`` about to be unindexed: out of the files :func:`add` put it in."""
    logins = part.lines
    if logins is not None and m.indexed and is_line(m.indexed[-1]):
        _unfile(logins.by_address, m.src_ip, m.sid)
        if m.device:
            _unfile(logins.by_device, m.device, m.sid)


def _file(table: dict[str, dict[str, Member]], key: str, m: Member) -> None:
    sids = table.get(key)
    if sids is None:
        table[key] = {m.sid: m}
    else:
        sids[m.sid] = m


def _unfile(table: dict[str, dict[str, Member]], key: str, sid: str) -> None:
    sids = table.get(key)
    if sids is not None:
        sids.pop(sid, None)
        if not sids:
            del table[key]


def _filed(table: dict[str, dict[str, Member]] | None, key: str) -> Iterable[Member]:
    sids = table.get(key) if table is not None else None
    return sids.values() if sids is not None else ()


def _on_address(part: Partition, m: Member, w: float) -> set[str]:
    """The other accounts on ``m``'s address within ``w`` of it."""
    logins = part.lines
    return {x.account for x in _filed(logins.by_address if logins else None, m.src_ip)
            if x.sid != m.sid and abs(x.ts - m.ts) <= w}


def record(part: Partition, m: Member, s: FarmSettings) -> None:
    """Count ``m``'s address reaching its k-th account in the class's histogram (once per
    account: a session of an account already on the address counts nothing), and mark
    ``m`` ``switched`` when its machine switched to it, a new account, within ``switch_s``
    (:func:`_switch_gap`), and its ``switch_gap`` when within ``window_s``.
    ``m`` is filed first (:func:`add`)."""
    add(part, m)
    gap = _switch_gap(part, m)
    m.switched = gap is not None and gap < s.switch_s
    m.switch_gap = gap if gap is not None and gap < s.window_s else None
    pool = part.pool
    if pool is None:
        return
    others = _on_address(part, m, s.window_s)
    if m.account in others:
        return
    k = min(len(others) + 1, _MAX_K)
    h = pool.lines
    if len(h) < k:
        h.extend([0.0] * (k - len(h)))
    h[k - 1] += 1.0
    if h[0] > _MAX_SEEN:
        pool.lines = [v / 2.0 for v in h]


def _switch_gap(part: Partition, m: Member) -> float | None:
    """How long before ``m`` its machine's previous login on the /24's home lines was,
    under another account, when ``m``'s account had not logged in on the machine in the
    partition's view (a family replaying its few accounts every evening switches among
    the same ones); ``None`` when it is no switch."""
    if not m.device:
        return None
    prev: Member | None = None
    logins = part.lines
    for x in _filed(logins.by_device if logins else None, m.device):
        if x.sid == m.sid or x.ts > m.ts:
            continue
        if x.account == m.account:
            return None
        if prev is None or x.ts > prev.ts:
            prev = x
    return None if prev is None else m.ts - prev.ts


def line_limit(pool: Pool | None, s: FarmSettings) -> tuple[int, float]:
    """The accounts on one home line that no household reaches (see the module
    docstring), and the learned share ``r`` of addresses with a second account."""
    h = pool.lines if pool is not None else []
    one = h[0] if h else 0.0
    two = h[1] if len(h) > 1 else 0.0
    r = (two + LINE_PRIOR_SHARE * LINE_PRIOR_ADDRESSES) / (one + LINE_PRIOR_ADDRESSES)
    r = min(max(r, 1e-6), 0.99)
    k = 1 + math.ceil(math.log(s.max_burst_p) / math.log(r))
    return max(k, s.home_accounts + 1), r


def _per_address(ms: Iterable[Member]) -> dict[str, set[str]]:
    per: dict[str, set[str]] = {}
    for x in ms:
        per.setdefault(x.src_ip, set()).add(x.account)
    return per


def switch_share(pool: Pool | None, s: FarmSettings, slow: bool = False) -> float:
    """The share of the class's home-line logins on a known machine that switched account
    on it (:func:`record`; with ``slow``, within ``window_s``), smoothed toward
    ``switch_prior_share`` weighted as ``switch_prior_logins`` logins."""
    seen, switched = (0.0, 0.0) if pool is None else (
        pool.sw_seen, pool.sw_slow if slow else pool.sw_switched)
    return ((switched + s.switch_prior_share * s.switch_prior_logins)
            / (seen + s.switch_prior_logins))


def leave(part: Partition, m: Member) -> None:
    """Count a home-line login on a known machine, leaving its window in no group, in
    its class's switch share."""
    pool = part.pool
    if pool is None or not m.device:
        return
    pool.sw_seen += 1.0
    pool.sw_switched += float(m.switched)
    pool.sw_slow += float(m.switch_gap is not None)
    if pool.sw_seen > _MAX_SEEN:
        pool.sw_seen /= 2.0
        pool.sw_switched /= 2.0
        pool.sw_slow /= 2.0


def switching(part: Partition, cand: list[Member], s: FarmSettings) -> list[Member]:
    """The accounts of ``cand`` on machines that switched to new accounts within
    ``switch_s`` (:func:`record`), tied into rooms of three or more
    (:func:`~pathsentry.detectors.farm.machines.in_rooms`: not households each with a
    pair of accounts on their own PC), when they are more than a household's
    (``home_accounts``) and their switches are a tail event against the class's learned
    share among ``cand``'s logins on known machines -- or, the same with the slow switches
    (within ``window_s``: a room's machine each taking a new account every twenty
    minutes or so) judged against the learned share of those, when the accounts carry
    the marks of a path that is no home's, a relay flag or a foreign-origin route, on
    ``min_size_unnamed`` of them and half, and each machine that switched slowly on one
    of its own accounts (families switching at that pace are common, and log in from
    home); else none."""
    ms = _switches(part, cand, s, [x for x in cand if x.switched], slow=False)
    if ms:
        return ms
    # a machine switching slowly counts with a mark among its own accounts (a household's
    # PC on the room's /24 carries none, and is not to ride on the room's marks)
    marked_machines = {x.device for x in cand if x.evidence and x.device}
    ms = _switches(part, cand, s, [x for x in cand if x.switch_gap is not None
                                   and x.device in marked_machines], slow=True)
    marked = sum(1 for x in ms if x.evidence)
    return ms if marked >= s.min_size_unnamed and 2 * marked >= len(ms) else []


def _switches(part: Partition, cand: list[Member], s: FarmSettings, switched: list[Member],
              slow: bool) -> list[Member]:
    """The accounts of ``cand`` on the machines of ``switched``, tied into rooms, more than
    a household's, their switches a tail event against the class's (slow) switch share."""
    devices = {x.device for x in switched}
    if not devices:
        return []
    on = [x for x in cand if x.device in devices]
    size = room_sizes(on)  # (what :func:`in_rooms` keeps: ties of three accounts or more)
    ms = [x for x in on if size[x.account] >= 3]
    if len({x.account for x in ms}) <= s.home_accounts:
        return []
    if len(devices) < HOMES_APART and max(size[x.account] for x in ms) <= s.home_accounts:
        return []  # two homes' PCs, each switching among its own few accounts
    known = sum(1 for x in cand if x.device)
    ids = {x.sid for x in switched}
    switches = sum(1 for x in ms if x.sid in ids)
    if burst_p(switches, known * switch_share(part.pool, s, slow)) > s.max_burst_p:
        return []
    return ms


def switch_joins(m: Member, mates: list[Member], fast: bool) -> bool:
    """Whether ``m``, on a machine new to a home-line group, joins it with its machine's
    ungrouped accounts ``mates``: the machine carried three accounts or more and ``m``
    switched to a new one (:func:`record`) -- a room's next machine, whose first two
    accounts looked like a household's pair when the group formed. ``fast``: within
    ``switch_s`` of the group's latest member, a switch within ``switch_s``; else (within
    ``window_s``) a slow switch, with one of those accounts marked by a relay flag or a
    foreign-origin route (the group's own marks are what :func:`switching` asked of a
    room of slow switches; the machine's tie it to that path: the relay detector and the
    sampled traceroutes see some of a room's logins, not all)."""
    if len({m.account, *(x.account for x in mates)}) < 3:
        return False
    if fast and m.switched:
        return True
    return m.switch_gap is not None and (m.evidence or any(x.evidence for x in mates))


def crowd(part: Partition, cand: list[Member], s: FarmSettings) -> list[Member] | None:
    """The farm among a /24's home-line accounts ``cand`` (see the module docstring),
    or ``None``."""
    limit = line_limit(part.pool, s)[0]
    hot = {ip for ip, accts in _per_address(cand).items() if len(accts) >= limit}
    core = [x for x in cand if x.src_ip in hot]
    ids = {x.sid for x in core}
    core += [x for x in switching(part, cand, s) if x.sid not in ids]
    if not core:
        return None
    ids = {x.sid for x in core}
    devices = {x.device for x in core if x.device}
    ms = core + [x for x in cand if x.sid not in ids and x.device in devices]
    if len({x.account for x in ms}) < s.min_size_unnamed or not on_few_machines(ms):
        return None
    return ms


def _median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    return round(xs[len(xs) // 2], 1) if xs else None


def line_evidence(part: Partition, ms: Iterable[Member], s: FarmSettings) -> dict[str, Any]:
    """Accounts per address beside the learned limit, the addresses and machines."""
    members = list(ms)
    limit, r = line_limit(part.pool, s)
    per = _per_address(members)
    devices = Counter([x.device for x in members if x.device])
    tss = sorted(x.ts for x in members)
    return {
        "accounts_per_address": [[ip, n] for n, ip in sorted(
            ((len(a), ip) for ip, a in per.items()), key=lambda row: (-row[0], row[1])
        )[:s.max_evidence_items]],
        "learned_limit_accounts_per_address": limit,
        "learned_second_account_share": round(r, 4),
        "household_accounts": s.home_accounts,
        "machines": len(devices),
        "accounts_per_machine": round(sum(devices.values()) / len(devices), 2) if devices else None,
        "span_s": round(tss[-1] - tss[0], 1) if tss else 0.0,
        "account_switches": sum(1 for x in members if x.switched),
        "learned_switch_share": round(switch_share(part.pool, s), 4),
        "account_slow_switches": sum(1 for x in members if x.switch_gap is not None),
        "learned_slow_switch_share": round(switch_share(part.pool, s, slow=True), 4),
        "median_switch_gap_s": _median([x.switch_gap for x in members
                                        if x.switch_gap is not None]),
    }
