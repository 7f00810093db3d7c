"""A farm group's life: formed from a candidate judged a farm, found again, joined.

Owns what happens once :class:`~pathsentry.detectors.farm.grouping.Grouping` judges a
candidate a farm (mixed into it, and so into
:class:`~pathsentry.detectors.farm.detector.FarmDetector`): the group is formed
(:meth:`GroupLife._form`), or is an earlier group of the partition again -- half of its
accounts, the same room's machines (:meth:`GroupLife._same_room`) or the same /24's home
lines within the window (:meth:`GroupLife._same_lines`); in a family partition it takes
the batch's members that came through other exits (:meth:`GroupLife._kin`, and
:meth:`GroupLife._late_kin` as they log in later); members join it, leaving the
partition's background (:meth:`GroupLife._join`); and its alert is emitted at its next
version with the flags of its new members (:meth:`GroupLife._emit`) -- at once when the
join grows the group by ``alert_regrow_share`` of its members at its last version,
else on the next tick (:attr:`GroupLife.dirty`; the flags go out at once): a farm of n
accounts costs O(n) of alert building, not O(n^2), and its SOC tens of versions.
"""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

from mypy_extensions import trait

from pathsentry.detectors.base import Findings
from pathsentry.detectors.farm import suspicion
from pathsentry.detectors.farm.background import unarrive
from pathsentry.detectors.farm.evidence import alert, features, flag, score
from pathsentry.detectors.farm.exits import patterns_of
from pathsentry.detectors.farm.lines import is_line
from pathsentry.detectors.farm.model import TPL, Assessment, FarmSettings, Group, Member, Partition, _utc
from pathsentry.schemas import make_alert_id

__all__ = ["GroupLife"]


@trait  # a mixin: the compiled build takes it beside its one non-trait base
class GroupLife:
    """Forming, finding again, joining and emitting a partition's groups."""

    name: ClassVar[str]
    settings: FarmSettings
    #: ``(partition key, group id)`` of groups whose alert is re-emitted on the next tick
    dirty: dict[tuple[str, str], None]

    def _form(self, part: Partition, pattern: str, a: Assessment) -> Findings:
        anchor = min(x.ts for x in a.members)
        counts = Counter([p for x in a.members for p in patterns_of(part, x)])
        # (a family's late members join by serial, not by the family pattern)
        family = part.key if part.kind == TPL else None
        pats = sorted(p for p, c in counts.items() if c >= max(2, len(a.members) / 2)
                      and p != family)
        stable = f"{part.key}|{pattern}|{_utc(anchor).strftime('%Y-%m-%dT%H:%M:%SZ')}"
        g = Group(
            gid=make_alert_id(self.name, "farm_group", stable),
            key=part.key,
            pattern=pattern,
            patterns=pats or ([pattern] if pattern != family else []),
            anchor=anchor,
            first_seen=anchor,
            last_seen=anchor,
        )
        accts = [x.account for x in a.members]
        seen = Counter([part.accounts[x] for x in accts if x in part.accounts])
        # the group's next session: half of the accounts, or in a name-less partition
        # two (the accounts a sampled route or a missed relay flag shows differ
        # between bursts; two members of one farm again in one burst are no chance)
        again = 2 if part.kind != TPL else (len(accts) + 1) // 2
        if seen and seen.most_common(1)[0][1] >= again:
            g = part.groups[seen.most_common(1)[0][0]]
        else:
            g = (self._same_room(part, a.members) or self._same_lines(part, pattern, anchor)
                 or part.groups.setdefault(g.gid, g))
        kin = self._kin(part, a.members) if part.kind == TPL else []
        return self._join(part, g, a.members + kin)

    def _same_room(self, part: Partition, ms: list[Member]) -> Group | None:
        """The group of ``part`` whose machines (client device ids) carry at least half
        of ``ms``: the same room on another burst, its accounts seen this time not the
        ones seen the last (a route's traceroutes are sampled, a relay flag missed), or
        in a family partition the rest of a batch whose serials broke off (logins that
        failed between them) -- one farm, one alert."""
        if not part.groups:
            return None
        best: tuple[int, Group | None] = (0, None)
        for g in part.groups.values():
            devices = {x.device for x in g.members.values() if x.device}
            k = sum(1 for x in ms if x.device in devices)
            if k > best[0]:
                best = (k, g)
        return best[1] if 2 * best[0] >= len(ms) else None

    def _same_lines(self, part: Partition, pattern: str, anchor: float) -> Group | None:
        """The home-line group of ``part`` seen within ``window_s`` of ``anchor``: a /24
        whose home lines carry more accounts than any household, on two addresses
        within the hour, is one farm's proxies (a room whose machines each keep to one
        proxy address shares no machine between them)."""
        if not is_line(pattern):
            return None
        w = self.settings.window_s
        for g in part.groups.values():
            if g.pattern == pattern and g.last_seen >= anchor - w:
                return g
        return None

    def _kin(self, part: Partition, ms: list[Member]) -> list[Member]:
        """Ungrouped members of a family partition, within ``window_s`` of the group
        ``ms`` being formed, whose serials continue its batch (at most two apart from
        one of its serials, transitively) -- the same batch through other exits (a farm
        on residential proxies of several ISPs)."""
        w = self.settings.window_s
        lo, hi = min(x.ts for x in ms) - w, max(x.ts for x in ms) + w
        taken = {x.sid for x in ms}
        rest = [x for x in part.members.values() if x.group is None and x.sid not in taken
                and x.serial_no is not None and lo <= x.ts <= hi]
        serials = {x.serial_no for x in ms if x.serial_no is not None}
        kin: list[Member] = []
        grown = True
        while grown and rest:
            grown = False
            left: list[Member] = []  # (one pass keeps the rest: no ``remove`` per member)
            for x in rest:
                n = x.serial_no
                if n is not None and any(n + d in serials for d in (-2, -1, 0, 1, 2)):
                    kin.append(x)
                    serials.add(n)
                    grown = True
                else:
                    left.append(x)
            rest = left
        return kin

    def _late_kin(self, part: Partition, g: Group, m: Member) -> list[Member]:
        """The family's ungrouped members whose serials ``m`` joins to the group's batch
        (:meth:`_kin` of the group with ``m``): a batch member that logged in before the
        serial between it and the group did (none in a name-less partition)."""
        if part.kind != TPL or m.serial_no is None:
            return []
        return self._kin(part, [m, *g.members.values()])

    def _join(self, part: Partition, g: Group, ms: list[Member]) -> Findings:
        added: list[Member] = []
        again: list[Member] = []
        for m in sorted(ms, key=lambda x: (x.ts, x.sid)):
            if m.account not in g.members and len(g.members) >= self.settings.max_group_members:
                continue
            m.group = g.gid
            if m.in_background:  # a farm's login, no background (:mod:`.suspicion`)
                suspicion.uncount(part.pool, m)
                m.in_background = False
            unarrive(part, (m,), self.settings)  # nor of the arrival rate (:mod:`.background`)
            (again if m.account in g.members else added).append(m)
            g.put(m)
            part.accounts[m.account] = g.gid
            if m.ts < g.first_seen:  # min(), max()
                g.first_seen = m.ts
            if m.ts > g.last_seen:
                g.last_seen = m.ts
        if not added or (g.version and len(g.members) < g.emitted * (
                1.0 + self.settings.alert_regrow_share)):
            # known members, or a few new ones: flag their logins, refresh the alert on a tick
            if again or added:
                self.dirty[(part.key, g.gid)] = None
            tpl = g.template
            return Findings(flags=[flag(g, m, None, tpl, self.name) for m in added + again])
        out = self._emit(part, g, added)
        tpl = g.template
        out.flags.extend(flag(g, m, out.alerts[0], tpl, self.name) for m in again)
        return out

    def _emit(self, part: Partition, g: Group, added: list[Member]) -> Findings:
        """The group's alert at ``version + 1`` and the flags of the ``added`` members."""
        self.dirty.pop((part.key, g.gid), None)
        g.version += 1
        g.emitted = len(g.members)
        feats = features(part, g.members.values(), self.settings)
        g.score = score(part.kind, feats)
        out = alert(part, g, feats, self.settings, self.name)
        tpl = g.template if added else None
        return Findings(flags=[flag(g, m, out, tpl, self.name) for m in added], alerts=[out])
