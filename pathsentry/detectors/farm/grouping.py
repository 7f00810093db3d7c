"""Grouping: when the members of one partition that share a pattern are a farm.

A candidate is the ungrouped members sharing one pattern (an exit or a route)
around the new member's login, in a window. In a family partition (``tpl:``) the
window is ``window_s`` and the candidate needs ``min_size`` members sharing a
foreign route, or relay/route evidence on ``min_size`` and half of them (or, with
serials that run, relay scores on more of them than the class's background explains:
:mod:`~pathsentry.detectors.farm.suspicion`), or serials
that run consecutively (``min_regularity``) on accounts crowded onto few machines
(:func:`on_few_machines`) or home-line addresses (:func:`_on_few_lines`: a CGNAT,
campus or PC-bang address is a crowd's) or all through one hosting network
(:func:`_hosted`);
the whole family in the window is a candidate too (a batch spread over several
exits) with regular serials and either that evidence or accounts crowded onto few
machines (:func:`on_few_machines`: residential proxies
of several ISPs, no exit with ``min_size`` of the batch, no relay flag).
Consecutive default names handed to a crowd that signed up together
(``player10231``, ``player10232``…) come from homes all over an ISP, each on its
own machine, and carry little relay evidence. In a
name-less partition (``route:``, ``net:``) the window is tried at two scales,
``burst_s`` (logins seconds apart) and ``window_s`` (minutes apart, where the
accounts must also crowd onto few machines or exit addresses: :func:`.machines.crowded`);
the candidate keeps the members inside its RTT band
(:mod:`~pathsentry.detectors.farm.exits`) that share a machine or an address with
another of them, or a /24 (with two others in a hosting range, and there only when
their machine is unknown: :func:`~pathsentry.detectors.farm.exits.kindred`),
must stand out of the pattern's other accounts by that band, and must be a burst
against the partition's own background
(:mod:`~pathsentry.detectors.farm.background`) thinned to the band: the expected
count is the background's times the share of its RTTs that fall inside the band
(a busy VPN exit is busy with users from everywhere; few of them share one room's
RTT).
Where every login of the pattern is a member (``route:``, ``net:AS…``), a
candidate with ``min_size_unnamed`` accounts on shared machines is judged as a room
(:meth:`Grouping._room`, :meth:`Grouping._machine_burst`): its accounts on shared
machines against the background thinned by the share of its accounts that shared
a machine (:mod:`~pathsentry.detectors.farm.machines`); in a hosting range, its
accounts on shared exit addresses against the background thinned by the share of the
exit's other accounts that shared one (:meth:`Grouping._address_burst`); its machines that
each carried three accounts or more in the partition (a room cycling each machine slower
than the window) against the share of the partition's other machines that did
(:meth:`Grouping._cycles`), the earlier accounts of the room's machines joining the
group. A subscriber /24's home-line
pattern (``line:``) is judged by :func:`~.lines.crowd` instead: accounts per
address against the learned limit (:mod:`~pathsentry.detectors.farm.lines`).

In a family partition a group also takes the members of its batch that came
through other exits: ungrouped members whose serials continue the group's
(:meth:`Grouping._kin`), when it forms and as they log in later. Members that
another partition takes are left out (:meth:`Grouping._covered`), so one farm
makes one group; a group's next session (members overlapping by half)
re-emits its alert instead of a new one. What becomes of a candidate judged a farm
(the group formed or found again, its members joined, its alert emitted) is
:mod:`~pathsentry.detectors.farm.groups`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import pairwise

from mypy_extensions import trait

from pathsentry.detectors.base import Findings
from pathsentry.detectors.farm import hops, suspicion
from pathsentry.detectors.farm.background import burst_p, expected, no_burst, unarrive
from pathsentry.detectors.farm.evidence import evidence_accounts, features, score
from pathsentry.detectors.farm.exits import (
    MIN_BACKGROUND,
    address_share,
    band,
    kindred,
    on_shared_addresses,
    stands_out,
)
from pathsentry.detectors.farm.families import serial_regularity
from pathsentry.detectors.farm.groups import GroupLife
from pathsentry.detectors.farm.lines import LINE_KINDS, crowd, is_line, switch_joins
from pathsentry.detectors.farm.machines import (
    carried,
    crowded,
    cycling_burst,
    machine_joins,
    machine_share,
    on_few_machines,
    on_shared_machines,
    one_room,
    room_accounts,
    room_machine,
)
from pathsentry.detectors.farm.model import (
    _NET_,
    HOP,
    NET,
    ROUTE,
    TPL,
    Assessment,
    Group,
    Member,
    Partition,
)
from pathsentry.detectors.farm.ranges import private_burst, private_judged

__all__ = ["Grouping"]


_NET_AS = _NET_ + "AS"


def _exits_elsewhere(x: Member) -> bool:
    """Whether a ``route:`` partition leaves ``x`` to its exit's ``net:`` partition: a
    relay-flagged account, or one through a hosting network (whose ``net:AS…``
    partition takes every account through it: a farm whose logins the relay detector
    flags only in part is one candidate there, not two)."""
    return x.relay or x.exit.startswith("AS")


def _machine_pattern(part: Partition, pattern: str) -> bool:
    """Whether every login of ``pattern`` is a member (a route, a hosting exit
    ``net:AS…``): where the machine judge may take a candidate."""
    return part.kind == ROUTE or pattern.startswith(_NET_AS)


def _on_few_lines(ms: list[Member]) -> bool:
    """Whether the accounts on home lines (:data:`LINE_KINDS`) crowd onto few of their
    addresses: at least three such accounts, three per two addresses. A CGNAT, campus
    or PC-bang address is shared by a crowd (a launch-day crowd handed consecutive
    default names among it) and does not count; a residential proxy's address carries
    the batch's accounts one after another."""
    lines = [x.src_ip for x in ms if x.access in LINE_KINDS]
    return len(lines) >= 3 and 2 * len(lines) >= 3 * len(set(lines))


def _hosted(ms: list[Member]) -> bool:
    """Whether every account came through a hosting (or relay) network, an exit that is
    a whole AS (:func:`~pathsentry.detectors.farm.exits.exit_of`): a batch of
    consecutive serials rented out of one data centre, its relay flags missed. Players
    handed consecutive default names log in from homes; the few through a VPN spread
    over many services."""
    return bool(ms) and all(x.exit.startswith("AS") for x in ms)


def _adjacent(serial: int, ms: Iterable[Member]) -> bool:
    """Whether ``serial`` is at most two apart from a serial of ``ms``."""
    return any(x.serial_no is not None and abs(x.serial_no - serial) <= 2 for x in ms)


@trait  # a mixin: the compiled build takes it beside its one non-trait base
class Grouping(GroupLife):
    """The grouping half of :class:`~pathsentry.detectors.farm.detector.FarmDetector`."""

    def _spans(self, part: Partition, t: float) -> tuple[float, ...]:
        """The windows a candidate around ``t`` is looked for in: ``window_s`` in a family
        partition, ``burst_s`` and ``window_s`` in a name-less one -- from the detector's
        first minutes, a cold partition's background starting from its class's prior
        (:mod:`~pathsentry.detectors.farm.background`)."""
        s = self.settings
        if part.kind == TPL:
            return (s.window_s,)
        return (s.burst_s, s.window_s)

    def _covered(self, part: Partition, cand: list[Member]) -> set[str]:
        """Members the family partition takes: two of one family in the candidate (the
        family partition sees every login of the family and takes the batch when it is
        one). Relay-flagged members, and those through a hosting network, are
        ``net:``'s and never ``route:``'s (:func:`_exits_elsewhere`)."""
        kind = part.kind
        if kind == TPL:
            return set()
        skels: dict[str, int] = {}
        for x in cand:
            k = x.skel
            if k:
                skels[k] = skels.get(k, 0) + 1
        need = 2
        big = {k for k, c in skels.items() if c >= need}
        out = {x.sid for x in cand if x.skel in big} if big else set()
        return out

    def _window(self, part: Partition, pattern: str, t: float, w: float, *,
                free: bool = True) -> list[Member]:
        """Ungrouped (``free``; else all) eligible members sharing ``pattern`` within
        ``w`` of ``t``."""
        sids = part.index.get(pattern)
        if not sids:
            return []
        kind = part.kind
        if not free:
            return [x for x in sids.values() if abs(x.ts - t) <= w
                    and not (kind == ROUTE and _exits_elsewhere(x))]
        if kind == TPL:
            return [x for x in sids.values() if x.group is None and abs(x.ts - t) <= w]
        # name-less: by time (``part.times``), not in indexing order (``_seq_order``)
        if pattern == part.key and part.times is not None:
            near = part.times.between(t - w - 1.0, t + w + 1.0)
        else:
            near = list(sids.values())
        if kind == ROUTE:  # relay-flagged members are the ``net:`` partition's (eligible)
            return [x for x in near if x.group is None and abs(x.ts - t) <= w
                    and not _exits_elsewhere(x)]
        return [x for x in near if x.group is None and abs(x.ts - t) <= w]

    @staticmethod
    def _seq_order(part: Partition, ms: list[Member]) -> list[Member]:
        """Members of a name-less partition's window in indexing order (``index[key]``)."""
        stamps = part.stamps
        return sorted(ms, key=lambda x: stamps[x.sid])

    def _consider(self, part: Partition, m: Member) -> Findings | None:
        kind = part.kind
        if m.group is not None or (kind == ROUTE and _exits_elsewhere(m)):  # not eligible
            return None
        # ``patterns_of(part, m)``: the member was (re)indexed just before
        patterns = m.indexed
        if not patterns:
            return None
        groups = part.groups
        if groups:
            known = groups.get(part.accounts.get(m.account, ""))
            if known is not None and (kind == TPL or (
                    (kind != NET or any(p in patterns for p in known.patterns))
                    and self._may_join(part, known, m))):
                return self._join(part, known, [m])  # a known member's next session
            for g in groups.values():
                if any(p in patterns for p in g.patterns) and self._may_join(part, g, m):
                    # its family counted with the members grouped already
                    cand = self._window(part, g.pattern, m.ts, self.settings.window_s,
                                        free=False)
                    if m.sid not in self._covered(part, cand):
                        ms = [m, *self._mates(part, g, m), *self._host_mates(part, g, m),
                              *self._late_kin(part, g, m)]
                        if kind != TPL:  # a room's machine: its accounts before the window
                            sids = {x.sid for x in ms}
                            ms += [y for y in carried(part, [x for x in ms if room_machine(part, x)])
                                   if y.sid not in sids]
                        return self._join(part, g, ms)
            if kind == TPL and m.serial_no is not None:  # the batch on another exit
                for g in groups.values():
                    if self._may_join(part, g, m) and _adjacent(m.serial_no, g.members.values()):
                        return self._join(part, g, [m, *self._late_kin(part, g, m)])
        s = self.settings
        minimum = s.min_size if kind == TPL else s.min_size_unnamed
        index = part.index
        for p in patterns:
            # too few members under the pattern, or in its window: no candidate (taking
            # out covered members only shrinks it)
            if len(index[p]) < minimum:
                continue
            if is_line(p):  # a subscriber /24's home lines (:mod:`.lines`)
                a = self._judged(part, p, m, lambda c: crowd(part, c, s))
                if a is not None:
                    return self._form(part, p, a)
                continue
            if kind == HOP:  # machines on home lines of several /24s (:mod:`.hops`)
                a = self._judged(part, p, m, lambda c: hops.room(part, c, m, s))
                if a is not None:
                    return self._form(part, p, a)
                continue
            for span in self._spans(part, m.ts):
                cand = self._window(part, p, m.ts, span)
                # (the cheap bound holds only without the RTT thinning of ``_assess``)
                if len(cand) < minimum or (kind != TPL and len(part.bg_rtts) < MIN_BACKGROUND
                                           and no_burst(part, len(cand), span, s)
                                           and not self._machine_judged(part, p, cand)
                                           and not self._address_judged(p, cand)
                                           and not private_judged(part, p, cand, s)):
                    continue
                covered = self._covered(part, cand)
                if covered:  # a name family's batch: its family partition's, no background
                    unarrive(part, [x for x in cand if x.sid in covered], self.settings)
                if m.sid in covered:
                    break
                if covered:
                    cand = [x for x in cand if x.sid not in covered]
                if kind != TPL and p == part.key:
                    cand = self._seq_order(part, cand)
                a = self._assess(part, p, cand, span)
                if a is not None:
                    return self._form(part, p, a)
        return None

    def _judged(self, part: Partition, pattern: str, m: Member,
                judge: Callable[[list[Member]], list[Member] | None]) -> Assessment | None:
        """The farm ``judge`` finds among the ungrouped members of ``pattern`` in the
        ``window_s`` around ``m``: a subscriber /24's home lines (:func:`~.lines.crowd`)
        or machines hopping over home lines (:func:`.hops.room`)."""
        s = self.settings
        cand = self._window(part, pattern, m.ts, s.window_s)
        covered = self._covered(part, cand)
        if m.sid in covered:
            return None
        ms = judge([x for x in cand if x.sid not in covered])
        if ms is None:
            return None
        f = features(part, ms, s)
        return Assessment(ms, score(part.kind, f), f)

    def _may_join(self, part: Partition, g: Group, m: Member) -> bool:
        """Family groups take late joiners for ``join_window_s``; a name-less group only
        while its burst lasts (within three of its own median gaps, at least ``burst_s``,
        of its latest member), from one of the machines (client device ids) it already
        uses, or inside its RTT band through one of its /24s -- a VPN user of the same
        hosting range comes through another /24 and from its own machine (a group
        whose recent members crowd onto shared machines takes no new machine). In a
        hosting range an account on a machine of its own must come through one of the
        group's exit addresses, or through one of its /24s on a host or a machine that
        carried another ungrouped account (both join; a machine has its own access
        latency, so the band does not tie it), or through a /24 of its own when its
        accounts are improbable as the range's background (:func:`.machines.machine_joins`),
        or on a machine carrying its third account (:func:`.machines.room_machine`):
        the range's users meet its few /24s by chance, each on a machine and a host of
        its own."""
        s = self.settings
        if part.kind == TPL:
            return m.ts <= g.last_seen + s.join_window_s
        if is_line(g.pattern) or part.kind == HOP:  # home lines: its machines, addresses
            ms = g.members.values()
            return m.ts <= g.last_seen + s.join_window_s and m.access in LINE_KINDS and (any(
                x.src_ip == m.src_ip or (m.device and x.device == m.device) for x in ms) or (
                is_line(g.pattern) and m.ts <= g.last_seen + s.window_s
                and switch_joins(m, self._mates(part, g, m), m.ts <= g.last_seen + s.switch_s)))
        near = g.near(m.ts, s.window_s)
        if len(near) < s.min_size_unnamed - 1:
            return False
        tss = sorted(x.ts for x in near)
        gaps = sorted(b - a for a, b in pairwise(tss))
        pace = gaps[len(gaps) // 2] if gaps else 0.0
        if m.ts - tss[-1] > max(s.burst_s, 3 * pace):
            return False
        ms = g.members.values()
        if m.device and any(x.device == m.device for x in ms):  # one of its machines
            return True
        if m.device and len(on_shared_machines(near)) >= s.min_size_unnamed \
                and not self._mates(part, g, m):
            return False  # a machine of its own beside a room of shared machines
        if m.device and g.pattern.startswith(_NET_AS):  # a hosting range: its hosts
            mates = self._mates(part, g, m)  # a new machine of the room, its second account:
            if mates and (any(x.prefix == m.prefix for x in ms)  # through one of its /24s,
                          or machine_joins(part, [m, *mates], s)  # or no background's,
                          or room_machine(part, m)):  # or its third account: a room's
                return True
            return band(near, s).holds(m) and (any(x.src_ip == m.src_ip for x in ms) or (
                any(x.prefix == m.prefix for x in ms) and bool(self._host_mates(part, g, m))))
        return band(near, s).holds(m) and any(x.prefix == m.prefix for x in ms)

    def _mates(self, part: Partition, g: Group, m: Member) -> list[Member]:
        """Ungrouped members of a name-less partition within ``window_s`` of ``m`` on
        ``m``'s machine under other accounts (none in a family partition): a new
        machine joins a room of shared machines with its second account, and its
        first comes along."""
        if part.kind == TPL or not m.device:
            return []
        w = self.settings.window_s
        return [x for x in self._window(part, g.pattern, m.ts, w)
                if x.device == m.device and x.account != m.account and x.sid != m.sid]

    def _host_mates(self, part: Partition, g: Group, m: Member) -> list[Member]:
        """Ungrouped members of a hosting range's partition within ``window_s`` of ``m``
        on ``m``'s exit address under other accounts: a new host of a room joins with
        its second account, and its first comes along (none elsewhere)."""
        if not g.pattern.startswith(_NET_AS):
            return []
        w = self.settings.window_s
        return [x for x in self._window(part, g.pattern, m.ts, w)
                if x.src_ip == m.src_ip and x.account != m.account and x.sid != m.sid]

    def _assess(self, part: Partition, pattern: str, cand: list[Member], span: float
                ) -> Assessment | None:
        s = self.settings
        kind = part.kind
        n = len(cand)
        minimum = s.min_size if kind == TPL else s.min_size_unnamed
        share = 1.0
        if kind != TPL and n >= minimum:
            b = band(cand, s)
            inside = kindred([x for x in cand if b.holds(x)], pattern)
            # a machine of the room with another access latency: its device is the link
            devices = {x.device for x in inside if x.device}
            inside += [x for x in cand if x.device in devices and x not in inside]
            inside = self._room(part, pattern, cand, inside)
            if len(inside) >= minimum and not one_room(inside, part.machines, part.hosts):
                return None  # players each with an alt on a machine of their own
            if len(inside) >= minimum:
                ids = {x.sid for x in inside}
                # (the exit's other users: not the farms found there, nor a name
                # family's batch, its family partition's)
                others = [x for x in part.index.get(pattern, {}).values()
                          if x.sid not in ids and x.group is None]
                covered = self._covered(part, others)
                if covered:
                    others = [x for x in others if x.sid not in covered]
                if not stands_out(inside, others, part.bg_rtts, s):
                    return None
                share = b.share(part.bg_rtts)
            elif pattern.startswith(_NET_AS):  # a room through /24s of its own
                pb = private_burst(part, pattern, [x for x in cand if b.holds(x)], b, span, s)
                if pb is not None:
                    f = features(part, pb.members, s)
                    return Assessment(pb.members, score(kind, f), f)
            cand = inside
            n = len(cand)
        if n < minimum:
            return None
        # the gates first, with the same formulas as ``features`` (most candidates fail)
        if kind == TPL:
            # relay or foreign-route evidence on ``min_size`` and half of the members (a
            # game's default names, ``player10231``, ``player10232``…, run consecutively
            # for a crowd that signed up together, a few of them through a VPN)
            with_evidence = evidence_accounts(cand)
            evidence = with_evidence >= s.min_size and 2 * with_evidence >= n
            regular = serial_regularity([x.serial_no for x in cand]) >= s.min_regularity
            # beside serials that run: relay scores on more of them than the class's
            # background explains stand for the flags (:mod:`.suspicion`)
            evidence = evidence or (regular and (
                suspicion.suspected(part.pool, cand, s.max_burst_p)[0]
                or suspicion.rtt_suspected(part.pool, cand, s.excess_quantile, s.max_burst_p,
                                           suspicion.excess_prior(s.excess_prior_sd_ms,
                                                                  s.excess_prior_logins))[0]))
            if pattern == part.key:
                # the whole family, no shared exit: serials that run, and relay/route
                # evidence or few machines (a batch on residential proxies of several
                # ISPs, each exit below ``min_size``; a crowd handed consecutive default
                # names brings one machine each -- friends who signed up together share
                # their homes' addresses, two or three to a home)
                if not (regular and (evidence or on_few_machines(cand))):
                    return None
            elif not (pattern.startswith("route:") or evidence
                      or (regular and (on_few_machines(cand) or _on_few_lines(cand)
                                       or _hosted(cand)))):
                return None
        else:  # (the room, worked out once where the machine judge may ask for it)
            room = room_accounts(part, cand) if _machine_pattern(part, pattern) else None
            if not self._burst(part, pattern, cand, span, share, room):
                return None
            # the room's machines' accounts before the window (:func:`.machines.carried`)
            cand = [*cand, *carried(part, room_accounts(part, cand) if room is None else room)]
        f = features(part, cand, s)
        return Assessment(cand, score(kind, f), f)

    def _burst(self, part: Partition, pattern: str, cand: list[Member], span: float,
               share: float, room: list[Member] | None) -> bool:
        """Whether a name-less candidate (``share``: its RTT band's share of the
        background) is a farm's burst: surprising against the background; on a /24
        exit (a residential proxy), crowded onto few addresses; paced minutes apart,
        crowded onto few machines or addresses (:func:`.machines.crowded`) -- or, where
        the machine judge may take it, machines that each carried three accounts or
        more, more of them than the partition's machines explain
        (:func:`.machines.cycling_burst`: a room cycling each machine through a new
        account every half hour or more is no burst of logins). ``room``: the
        candidate's :func:`~.machines.room_accounts` where the machine judge may take it
        (:meth:`_machine_judged`, asked at most once)."""
        s = self.settings
        n = len(cand)
        lam = share * expected(part, n, span, s)
        cycles: bool | None = None
        judged: bool | None = None
        if burst_p(n, lam) > s.max_burst_p:
            judged = self._machine_judged(part, pattern, cand, room)
            if not (judged and self._machine_burst(part, cand, lam)) \
                    and not self._address_burst(part, pattern, cand, lam):
                cycles = judged and self._cycles(part, cand)
                if not cycles:
                    return False
        if part.kind == NET and not pattern.startswith(_NET_AS) \
                and len({x.src_ip for x in cand}) * 2 > n:
            return False
        if span <= s.burst_s or crowded(cand):
            return True
        if cycles is not None:
            return cycles
        if judged is None:
            judged = self._machine_judged(part, pattern, cand, room)
        return judged and self._cycles(part, cand)

    def _cycles(self, part: Partition, cand: list[Member]) -> bool:
        """Whether the candidate's cycling machines are a tail event
        (:func:`.machines.cycling_burst`), where the machine judge may take it
        (:meth:`_machine_judged`, the caller's)."""
        return cycling_burst(part, cand, self.settings) is not None

    def _machine_burst(self, part: Partition, cand: list[Member], lam: float) -> bool:
        """Whether the candidate's accounts on shared machines are a burst on their own:
        at least ``min_size_unnamed`` of them against the background's expected count
        ``lam`` thinned by the share of its accounts that shared a machine
        (:func:`~pathsentry.detectors.farm.machines.machine_share`). Only where every
        login of the pattern is a member (a hosting exit ``net:AS…``, a route), so that
        the share is learned from the whole background (:meth:`_machine_judged`, the
        caller's)."""
        k = len(on_shared_machines(cand))
        share = machine_share(part, cand)
        return burst_p(k, lam * share) <= self.settings.max_burst_p

    def _address_burst(self, part: Partition, pattern: str, cand: list[Member],
                       lam: float) -> bool:
        """Whether the candidate's accounts on shared exit addresses are a burst on their
        own: at least ``min_size_unnamed`` of them against the background's expected
        count ``lam`` thinned by the share of the exit's other accounts that shared an
        address (:func:`~pathsentry.detectors.farm.exits.address_share`). Only in a
        hosting range (``net:AS…``), whose every login is a member: a relay service's
        users spread over its address pool, a room's accounts crowd onto a few hosts."""
        if not self._address_judged(pattern, cand):
            return False
        k = len(on_shared_addresses(cand))
        share = address_share(part, pattern, {x.sid for x in cand})
        return burst_p(k, lam * share) <= self.settings.max_burst_p

    def _address_judged(self, pattern: str, cand: list[Member]) -> bool:
        """Whether :meth:`_address_burst` may take ``cand``: a hosting range and
        ``min_size_unnamed`` accounts of ``cand`` on shared exit addresses that are one
        room's (:func:`.machines.one_room`)."""
        if not pattern.startswith(_NET_AS):
            return False
        shared = on_shared_addresses(cand)
        return len(shared) >= self.settings.min_size_unnamed and one_room(shared)

    def _room(self, part: Partition, pattern: str, cand: list[Member], inside: list[Member]
              ) -> list[Member]:
        """The candidate's room where the machine judge may take it
        (:meth:`_machine_judged`): every account on a machine that carries another
        account of ``cand`` (each machine has its own access latency: the RTT band
        does not tie them), and of the band's members only those whose machine is
        unknown -- an account from a machine of its own beside a room of shared
        machines is a passer-by (a VPN user of the same /24). Else ``inside``."""
        if not _machine_pattern(part, pattern):
            return inside
        room = room_accounts(part, cand)
        if not self._machine_judged(part, pattern, cand, room):
            return inside
        ids = {x.sid for x in room}
        return [x for x in cand if x.sid in ids or (not x.device and x in inside)]

    def _machine_judged(self, part: Partition, pattern: str, cand: list[Member],
                        room: list[Member] | None = None) -> bool:
        """Whether the machine judge (:meth:`_machine_burst`) may take ``cand``: a
        pattern whose every login is a member, and ``min_size_unnamed`` accounts of
        ``cand`` on shared machines that are one room's (:func:`.machines.one_room`: not
        players each with an alt on a machine of their own; else :func:`no_burst`'s bound
        holds for it too). ``room``: ``cand``'s :func:`~.machines.room_accounts`, when
        the caller has them."""
        if not _machine_pattern(part, pattern):
            return False
        shared = room_accounts(part, cand) if room is None else room
        return len(shared) >= self.settings.min_size_unnamed and one_room(shared, part.machines, part.hosts)
