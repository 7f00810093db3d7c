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
- a family at home: three to five accounts, under the limit;
- friends on two ISPs, each on their own machine: one or two accounts per address;
- a residential proxy service with unrelated users: many accounts on one exit
  address, but each from its own machine.

Known limits: a farm on proxies of several /24s is one group per /24 (the partition
key; the /24s' groups are not joined across partitions); a farm whose proxy
addresses each carry no more than a household does is not found here; the
histogram is learned per worker and not saved (a restarted worker starts from the
prior).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

from pathsentry.detectors.farm.machines import on_few_machines
from pathsentry.detectors.farm.model import _NET_, FarmSettings, Member, Partition, Pool

__all__ = ["LINE_KINDS", "LINE_PRIOR_ADDRESSES", "LINE_PRIOR_SHARE", "crowd", "line_evidence",
           "line_limit", "line_pattern", "record"]

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


def _on_address(part: Partition, pattern: str, m: Member, w: float) -> set[str]:
    """The other accounts on ``m``'s address within ``w`` of it."""
    sids = part.index.get(pattern, {})
    return {x.account for x in sids.values()
            if x.src_ip == m.src_ip and x.sid != m.sid and abs(x.ts - m.ts) <= w}


def record(part: Partition, pattern: str, m: Member, w: float) -> None:
    """Count ``m``'s address reaching its k-th account in the class's histogram (once per
    account: a session of an account already on the address counts nothing)."""
    pool = part.pool
    if pool is None:
        return
    others = _on_address(part, pattern, m, w)
    if m.account in others:
        return
    k = min(len(others) + 1, _MAX_K)
    h = pool.lines
    if len(h) < k:
        h.extend([0.0] * (k - len(h)))
    h[k - 1] += 1.0
    if h[0] > _MAX_SEEN:
        pool.lines = [v / 2.0 for v in h]


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


def crowd(part: Partition, cand: list[Member], s: FarmSettings) -> list[Member] | None:
    """The farm among a /24's home-line accounts ``cand`` (see the module docstring),
    or ``None``."""
    limit = line_limit(part.pool, s)[0]
    hot = {ip for ip, accts in _per_address(cand).items() if len(accts) >= limit}
    if not hot:
        return None
    core = [x for x in cand if x.src_ip in hot]
    devices = {x.device for x in core if x.device}
    ms = core + [x for x in cand if x.src_ip not in hot and x.device in devices]
    if len({x.account for x in ms}) < s.min_size_unnamed or not on_few_machines(ms):
        return None
    return ms


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
    }
