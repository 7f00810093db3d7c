"""Machines: which accounts of a name-less partition share a client machine, and how
often the partition's background does.

A farm room runs many accounts per machine (the client-reported device id); the
unrelated users of a VPN exit or a foreign route each bring their own. Each
name-less partition (``route:``, ``net:``) keeps the members it indexes by device
(:func:`put`, :func:`drop`; a member another account met on its machine is marked
``on_shared``), and counts the members
that left its window in no group (:func:`leave`): how many of them shared their
machine with another account. That learned share (:func:`machine_share`) is the
probability that a background arrival is on a shared machine; a cold partition
starts from its class's pooled share (the
:class:`~pathsentry.detectors.farm.model.Pool`, worth :data:`PRIOR_SEEN` members;
0.5 before the class has any history). The burst judge thins the background's
expected count by it when it counts only the candidate's accounts on shared machines
(:func:`on_shared_machines`). A busy exit whose users arrive as fast as a farm logs
in is still told apart: its users do not crowd onto machines.

A room may cycle each machine slower than the window: six machines each logging in a
new account every 40 minutes show two accounts per machine in any hour, what a VPN
exit's players who each bring an alt show; eleven machines each taking a new account
every 80 minutes show one or two in any two hours. A hosting range's or a route's
partition keeps each device's accounts for ``cycle_horizon_s`` (six hours; the members
that left the window stay on their machines, :func:`keep`, at most ``max_members`` of
them, oldest dropped first, :func:`forget`), and a machine that carried three accounts
or more there is a room's (:func:`room_machine`; a player brings one, or a main and an
alt, however long they play): it ties the room (:func:`one_room`), its accounts join
the candidate (:func:`room_accounts`) and its earlier ones the group (:func:`carried`),
and the number of such machines is judged against the background's expected accounts
over the horizon times the share of the partition's other machines in view that carry
three (:func:`cycling_burst`, smoothed toward ``cycle_prior_share`` worth
``cycle_prior_machines`` machines). A member kept past the window ties machines only:
it marks no account ``on_shared`` and is no background of :func:`machine_share` (it was
counted when it left, :func:`leave`). A machine whose third account is older than twice
the window counts only when an exit address it used carried another machine too
(:func:`room_machine`): over six hours a busy exit's players may each play three
accounts in turn, each on an address of its own, while a room's machines take turns
on its few hosts.

Known limits: on an exit that gives all its users one address, that tie is
everyone's, and such players are judged by the count alone; a cloud-gaming range
whose virtual machines each report one device id for the users they serve in turn
puts every account of the exit on a machine that cycles, leaving no background to
judge it against: such a range is a room here (as it is to the shared-machine judge),
and belongs on the allow list.

The counts are halved once they pass :data:`MAX_SEEN` (the share follows the
traffic; memory is two numbers and one list per live device, and per exit address
the machines it carried).

>>> from pathsentry.detectors.farm.model import Member, Partition
>>> p = Partition(key="net:AS64500")
>>> ms = [Member(f"s{i}", f"a{i}", float(i), None, None, "10.0.0.1", "10.0.0.0/24",
...              device="d1" if i < 3 else f"own{i}") for i in range(5)]
>>> for m in ms: put(p, m)
>>> [m.account for m in on_shared_machines(ms)]
['a0', 'a1', 'a2']
>>> for m in ms: leave(p, m); drop(p, m)
>>> p.bg_seen, p.bg_shared, round(machine_share(p), 3), p.machines
(5.0, 3.0, 0.571, {})
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from pathsentry.detectors.bounded import count_in
from pathsentry.detectors.farm.background import burst_p, expected
from pathsentry.detectors.farm.model import _NET_, ROUTE, FarmSettings, Member, Partition

_NET_AS = _NET_ + "AS"

__all__ = ["MAX_SEEN", "PRIOR_SEEN", "CycleJudgement", "carried", "counted", "crowded",
           "cycling_burst", "cycling_share", "drop", "forget", "horizon", "in_rooms", "keep",
           "leave", "machine_joins", "machine_share", "on_few_machines", "on_shared_machines",
           "one_room", "put", "room_accounts", "room_machine"]

#: background members counted before both counts are halved
MAX_SEEN = 1024.0
#: the weight, in background members, of the class's pooled share in a partition's
PRIOR_SEEN = 2.0


def _apart(a: Member, b: Member) -> bool:
    """Two accounts, not of one name family (a named farm's batch is its family
    partition's)."""
    return a.account != b.account and (a.skel is None or a.skel != b.skel)


def put(part: Partition, m: Member) -> None:
    """Note ``m`` on its device (a member indexed in a name-less partition); ``m`` and
    the members on that device under other accounts are marked ``on_shared``."""
    dev = m.device
    if not dev:
        return
    live = part.machines.setdefault(dev, [])
    for x in live:
        if not x.kept and _apart(x, m):  # (one kept past the window ties machines only)
            x.on_shared = m.on_shared = True
    live.append(m)
    _host(part, m, dev, 1)


def _host(part: Partition, m: Member, dev: str, step: int) -> None:
    """Count ``m`` (``step`` 1) or take it out (-1) of its exit address's machines."""
    count_in(part.hosts, m.src_ip, dev, step)


def horizon(s: FarmSettings) -> float:
    """How long a machine's accounts are kept in view: ``cycle_horizon_s``, at least the
    twice ``window_s`` its members are indexed for."""
    return max(s.cycle_horizon_s, 2.0 * s.window_s)


def keep(part: Partition, m: Member, cap: int, before: float) -> None:
    """Keep ``m``, just unindexed as it left the window (:func:`drop` done), on its
    machine in a hosting range's or a route's partition: a room's machine's earlier
    accounts, for :func:`room_machine` and :func:`carried`. At most ``cap`` kept per
    partition, the oldest dropped first, and none that logged in before ``before``
    (:func:`forget`)."""
    dev = m.device
    if not dev or not (part.kind == ROUTE or part.key.startswith(_NET_AS)):
        return
    forget(part, before)
    past = part.past
    if past is None:
        past = part.past = deque()
    m.kept = True
    part.machines.setdefault(dev, []).append(m)
    _host(part, m, dev, 1)
    past.append(m)
    while len(past) > cap:
        drop(part, past.popleft())


def forget(part: Partition, before: float) -> None:
    """Drop the members kept past the window that logged in before ``before``."""
    past = part.past
    while past and past[0].ts < before:
        drop(part, past.popleft())


def drop(part: Partition, m: Member) -> None:
    """Undo :func:`put` (the member unindexed)."""
    dev = m.device
    live = part.machines.get(dev) if dev else None
    if live is None:
        return
    for i, x in enumerate(live):
        if x is m:
            del live[i]
            _host(part, m, dev, -1)  # type: ignore[arg-type]
            break
    if not live:
        del part.machines[dev]  # type: ignore[arg-type]


def leave(part: Partition, m: Member) -> None:
    """Count ``m``, leaving the window in no group, in the background: whether another
    account used its machine while it was in the window. Accounts of one name family
    sharing a machine are a named farm's batch, which its family partition takes:
    not the name-less background's sharing."""
    if not m.device:
        return
    part.bg_seen += 1.0
    if m.on_shared:
        part.bg_shared += 1.0
    if part.bg_seen > MAX_SEEN:
        part.bg_seen /= 2.0
        part.bg_shared /= 2.0
    pool = part.pool
    if pool is not None:
        pool.seen += 1.0
        pool.shared += float(m.on_shared)
        if pool.seen > MAX_SEEN:
            pool.seen /= 2.0
            pool.shared /= 2.0


def machine_share(part: Partition, judged: Sequence[Member] | None = None) -> float:
    """The share of the background's accounts on a machine shared with another account,
    smoothed toward the class's pooled share (itself Laplace-smoothed: 0.5 with no
    history at all). With ``judged`` (the members under judgement), the members in
    the window now count too: a partition younger than its window has no member that
    left it yet, and its current users are its background -- but not the judged
    members, nor any on their machines (the room's own earlier accounts are the room,
    not a background that shares machines), nor those of a group found (a farm is no
    background, and a small world's room would otherwise teach that most accounts
    share a machine)."""
    pool = part.pool
    prior = 0.5 if pool is None else (pool.shared + 1.0) / (pool.seen + 2.0)
    seen, shared = part.bg_seen, part.bg_shared
    if judged is not None:
        devices = {x.device for x in judged if x.device}
        live = {x.sid for x in judged}
        for dev, ms in part.machines.items():
            if dev in devices:
                continue
            for x in ms:
                if not x.kept and x.sid not in live and x.group is None:
                    seen += 1.0
                    shared += float(x.on_shared)
    return (shared + PRIOR_SEEN * prior) / (seen + PRIOR_SEEN)


def machine_joins(part: Partition, ms: Sequence[Member], s: FarmSettings) -> bool:
    """Whether the accounts ``ms`` of one machine new to a name-less room, logged in while
    the room's burst lasts, are improbable as the partition's background: their number
    against the background's expected count over their span (at least ``burst_s``)
    thinned by the learned share of its accounts on a shared machine
    (:func:`machine_share`). A room's next machine through a /24 of its own joins with
    its second or third account in a quiet range; in a busy exit a household's two
    accounts on one machine are as common as the exit has taught, and do not."""
    k = len({x.account for x in ms})
    if k < 2:
        return False
    tss = [x.ts for x in ms]
    span = max(max(tss) - min(tss), s.burst_s)
    lam = expected(part, k, span, s) * machine_share(part, ms)
    return burst_p(k, lam) <= s.max_burst_p


def on_shared_machines(ms: Sequence[Member]) -> list[Member]:
    """The members of ``ms`` whose device another account of ``ms`` also uses."""
    accts: dict[str, set[str]] = {}
    for x in ms:
        if x.device:
            accts.setdefault(x.device, set()).add(x.account)
    shared = Counter({d: len(a) for d, a in accts.items()})
    return [x for x in ms if x.device and shared[x.device] > 1]


def one_room(ms: Sequence[Member],
             machines: Mapping[str, Sequence[Member]] | None = None,
             hosts: Mapping[str, Mapping[str, int]] | None = None) -> bool:
    """Whether accounts on shared machines or exit addresses ``ms`` are a room's, not
    players' who each bring a second account on their own machine: three accounts or
    more tied together by a machine or an exit address they share (a machine carrying a
    third account, two machines meeting on one address; an account whose machine is
    unknown, by its /24). Pairs that share nothing with each other are what a VPN
    exit's players with an alt bring, one pair at a time. With ``machines`` (the
    partition's accounts on each device, kept for ``cycle_horizon_s``: :func:`keep`), a
    machine counts the accounts it carried there that :func:`counted` counts (``hosts``,
    the partition's machines on each exit address): a room that cycles each machine
    through a new account every half hour or more shows two per machine in one window,
    and a third one earlier (a player's alt is a second account, not a third).

    >>> from pathsentry.detectors.farm.model import Member
    >>> def on(i, dev, ip):
    ...     return Member(f"s{i}", f"a{i}", float(i), None, None, ip, "", device=dev)
    >>> pairs = [on(i, f"d{i // 2}", f"10.0.0.{i // 2}") for i in range(6)]
    >>> one_room(pairs), one_room([*pairs, on(6, "d0", "10.0.0.7")])
    (False, True)
    >>> one_room([*pairs[:4], on(4, "d2", "10.0.0.1"), on(5, "d3", "10.0.0.9")])
    True
    >>> one_room(pairs, {"d1": [on(9, "d1", "10.0.0.1"), *pairs[2:4]]})
    True
    """
    return bool(in_rooms(ms, machines, hosts))


def in_rooms(ms: Sequence[Member],
             machines: Mapping[str, Sequence[Member]] | None = None,
             hosts: Mapping[str, Mapping[str, int]] | None = None) -> list[Member]:
    """The members of ``ms`` that :func:`one_room` ties, three accounts or more together
    by a machine or an exit address they share (an account whose machine is unknown, by
    its /24; with ``machines``, the accounts the machine carried in the partition that
    :func:`counted` counts, ``hosts`` being the partition's machines per address); the
    pairs that share nothing with each other left out."""
    size = room_sizes(ms, machines, hosts)
    return [x for x in ms if size[x.account] >= 3]


def room_sizes(ms: Sequence[Member],
               machines: Mapping[str, Sequence[Member]] | None = None,
               hosts: Mapping[str, Mapping[str, int]] | None = None) -> dict[str, int]:
    """Account -> the accounts tied with it (itself included) by the machines and exit
    addresses they share, as :func:`in_rooms` ties them."""
    parent: dict[str, str] = {}

    def root(k: str) -> str:
        while parent.setdefault(k, k) != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    accounts = {x.account for x in ms}
    for x in ms:  # an account, its machine and its address (unknown machine: its /24)
        a = root("a:" + x.account)
        parent[root("i:" + x.src_ip)] = a
        dev = x.device
        parent[root("d:" + dev if dev else "p:" + x.prefix)] = a
        if dev and machines is not None:  # the machine's other accounts in the partition
            for y in counted(hosts or {}, machines.get(dev, ())):
                if _apart(x, y):
                    accounts.add(y.account)
                    parent[root("a:" + y.account)] = root("a:" + x.account)
    sizes: dict[str, int] = {}
    for acct in accounts:
        r = root("a:" + acct)
        sizes[r] = sizes.get(r, 0) + 1
    return {acct: sizes[root("a:" + acct)] for acct in accounts}


def carried(part: Partition, ms: Sequence[Member]) -> list[Member]:
    """The partition's ungrouped members on the machines of ``ms`` under other accounts
    (:func:`keep` keeps them for ``cycle_horizon_s``): a room's machine's earlier
    accounts, logged in before the window its burst was judged in."""
    devices = {x.device for x in ms if x.device}
    seen = {x.sid for x in ms}
    out: list[Member] = []
    for dev in devices:
        for y in part.machines.get(dev, ()):
            if y.group is None and y.sid not in seen and all(_apart(x, y) for x in ms
                                                           if x.device == dev):
                seen.add(y.sid)
                out.append(y)
    return out


def _carries_three(m: Member, live: Sequence[Member]) -> bool:
    accounts = {m.account}
    for y in live:
        if _apart(m, y):
            accounts.add(y.account)
            if len(accounts) >= 3:
                return True
    return False


def room_machine(part: Partition, m: Member) -> bool:
    """Whether ``m``'s machine carried three accounts or more in the partition (kept for
    ``cycle_horizon_s``, :func:`keep`), ``m``'s among them: a room's machine cycling through
    its accounts, not a player's with an alt (:func:`one_room`)."""
    dev = m.device
    if not dev:
        return False
    return _cycles(part, m, part.machines.get(dev, ()))


def counted(hosts: Mapping[str, Mapping[str, int]], live: Sequence[Member]
            ) -> Sequence[Member]:
    """The accounts a machine carried (``live``, its members in the partition) that count
    toward a room: those within twice the window (members still indexed), and those kept
    for ``cycle_horizon_s`` (:func:`keep`) only when an exit address the machine used
    carried another machine too (``hosts``: each address's machines) -- over hours, a
    player of a busy exit may play three accounts in turn on a machine and an address of
    its own; a room's machines take turns on its few hosts."""
    if any(len(hosts.get(x.src_ip, ())) > 1 for x in live):
        return live
    return [x for x in live if not x.kept]


def _cycles(part: Partition, m: Member, live: Sequence[Member]) -> bool:
    """Whether ``m``'s machine, carrying the members ``live``, is a room's: three accounts
    that :func:`counted` counts."""
    return _carries_three(m, counted(part.hosts, live))


def room_accounts(part: Partition, ms: Sequence[Member]) -> list[Member]:
    """The members of ``ms`` on a machine another account of ``ms`` uses
    (:func:`on_shared_machines`), or on a machine that carried three accounts or more in
    the partition (:func:`room_machine`: a room cycling each machine slower than the
    window shows one or two of its accounts in it)."""
    shared = {x.sid for x in on_shared_machines(ms)}
    return [x for x in ms if x.sid in shared or room_machine(part, x)]


def cycling_share(part: Partition, s: FarmSettings, judged: Collection[str]) -> float:
    """The share of the partition's machines in view (``cycle_horizon_s``) that carry three
    accounts or more, the ``judged`` devices and those of groups found taken out (a room
    is no background of itself, nor of the next room), smoothed toward
    ``cycle_prior_share`` weighted as ``cycle_prior_machines`` machines: a busy exit
    teaches its own share; a quiet one is judged by the prior."""
    seen = cycled = 0
    for dev, live in part.machines.items():
        if dev in judged or not live or any(x.group is not None for x in live):
            continue  # (a found room's machine is no background either)
        seen += 1
        cycled += _cycles(part, live[0], live)
    return (cycled + s.cycle_prior_share * s.cycle_prior_machines) / (
        seen + s.cycle_prior_machines)


@dataclass(frozen=True, slots=True)
class CycleJudgement:
    """The tail test of a candidate's cycling machines (:func:`cycling_burst`)."""

    machines: int
    share: float
    expected: float
    p: float


def cycling_burst(part: Partition, cand: Sequence[Member], s: FarmSettings
                  ) -> CycleJudgement | None:
    """Whether the candidate's machines that each carried three accounts or more in the
    partition (:func:`room_machine`) are improbable as its background: their number
    against the background's expected accounts over the span machines are kept in view
    (``cycle_horizon_s``; each background account brings a machine) times the learned
    share of the partition's machines that carry three (:func:`cycling_share`). A room
    whose machines each log in a new account every half hour or more shows two per
    machine in one window, and no burst of logins; its machines' third accounts are the
    tie. ``None`` when fewer than two of its machines cycle."""
    devices = {x.device for x in cand if x.device and room_machine(part, x)}
    k = len(devices)
    if k < 2:
        return None
    n = sum(1 for x in cand if x.device in devices)
    share = cycling_share(part, s, devices)
    lam = expected(part, n, horizon(s), s) * share
    p = burst_p(k, lam)
    return CycleJudgement(k, share, lam, p) if p <= s.max_burst_p else None


def on_few_machines(ms: Sequence[Member]) -> bool:
    """Whether the accounts crowd onto few machines: at least three accounts per two
    client-reported devices (a household's two players do not; a room's dozen accounts
    on four machines do)."""
    devices = [x.device for x in ms if x.device]
    return len(devices) >= 3 and 2 * len(devices) >= 3 * len(set(devices))


def crowded(ms: Sequence[Member]) -> bool:
    """Whether the accounts crowd onto few machines (:func:`on_few_machines`) or
    addresses: at least three accounts per two addresses.

    A burst paced minutes apart is a weak coincidence on its own (a quiet exit's few
    unrelated users clump by chance); a farm room runs many accounts per machine
    behind few exit hosts.
    """
    return on_few_machines(ms) or 2 * len(ms) >= 3 * len({x.src_ip for x in ms})
