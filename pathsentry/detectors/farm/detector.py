"""The farm detector: routing events to partitions, keeping members, housekeeping.

:class:`FarmDetector` names each event's partition keys (:meth:`~FarmDetector.group_keys`),
keeps each partition's members and indexes them by connection pattern
(:func:`~pathsentry.detectors.farm.exits.patterns_of`), hands new members to the
grouping (:class:`~pathsentry.detectors.farm.grouping.Grouping`), evicts idle
members, groups and partitions, and re-emits alerts whose evidence grew on a tick.
(About 600 lines: a member's life in its partition -- made, indexed, evicted -- is one
concern, and its per-event path stays inline.)
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from pathsentry.detectors import register
from pathsentry.detectors.addresses import ip_text
from pathsentry.detectors.base import Detector, DetectorContext, Enriched, Findings
from pathsentry.detectors.farm import hops, lines, machines, suspicion
from pathsentry.detectors.farm.background import arrive
from pathsentry.detectors.farm.exits import (
    NO_RELAY,
    dict_note,
    exit_of,
    foreign_sig,
    home_line,
    hosted_exit,
    jitter,
    network_of,
    patterns_of,
    relay_facts,
)
from pathsentry.detectors.farm.families import family
from pathsentry.detectors.farm.grouping import Grouping
from pathsentry.detectors.farm.model import (
    _NET_,
    _ROUTE_,
    _TPL_,
    BACKGROUND_RTTS,
    HOP,
    NET,
    ROUTE,
    TPL,
    Member,
    Partition,
    Pool,
    _add_to_index,
    _TimeIndex,
    part_kind,
    pool_class,
    settings_from,
)
from pathsentry.detectors.farm.saved import check_farm_state
from pathsentry.detectors.farm.state import restore, snapshot
from pathsentry.detectors.names import normalise
from pathsentry.schemas import Login, Traceroute

__all__ = ["FarmDetector"]


def _flagged(ev: Enriched) -> bool:
    """Whether the relay detector flagged the login (and no allow-list entry covers it)."""
    relay = ev.notes.get("relay")
    return isinstance(relay, dict) and relay.get("flagged") is True and ev.allowed is None


class FarmDetector(Detector, Grouping):
    """Farm groups (alert ``farm_group``) and their members (flag ``farm_member``)."""

    name = "farm"
    consumes = frozenset({"login", "traceroute"})
    stage = "group"

    def __init__(self, ctx: DetectorContext) -> None:
        super().__init__(ctx)
        self.settings = s = settings_from(ctx.settings(self.name))
        self.parts: OrderedDict[str, Partition] = OrderedDict()
        self.dirty: dict[tuple[str, str], None] = {}
        self.now = 0.0
        # ``parts`` is in least-recently-used order, and a partition's ``last_ts`` is set
        # to ``now`` when it is used, so ``last_ts`` grows along ``parts`` -- except for
        # the partitions listed here (kept by a flush, or restored ahead of the clock).
        # :meth:`flush` therefore finds the idle partitions without visiting the others.
        self._bumped: dict[str, None] = {}
        # What one event yields for every key it reaches (the stream and a replay call
        # :meth:`process` once per key with the same event): the facts of its route note.
        self._ev: object = None
        self._ev_route: object = None
        self._ev_route_facts: tuple[str | None, list[str] | None] = (None, None)
        # settings read on every event
        self._span = 2 * s.window_s
        self._horizon = machines.horizon(s)
        self._max_members = s.max_members
        self._half_life = s.background_half_life_s
        self._fast_half_life = s.background_fast_half_life_s
        self._minimum = {TPL: s.min_size, ROUTE: s.min_size_unnamed, NET: s.min_size_unnamed,
                         HOP: s.min_size_unnamed}
        self._seq = 0  # indexing order in name-less partitions (Partition.stamps)
        #: the first event's time: every partition's background is observed from here
        #: (a key met for the first time had no arrivals before)
        self.started: float | None = None
        #: the population prior of each partition class (:class:`Pool`), shared by its
        #: live partitions; rebuilt from them on a restore
        self.pools: dict[str, Pool] = {}

    # ------------------------------------------------------------------ routing

    def group_keys(self, ev: Enriched) -> Iterable[str]:
        event = ev.event
        if isinstance(event, Login):
            fields = event.__dict__  # (pydantic keeps the fields there; plain lookups are cheaper)
            if fields["outcome"] != "success":
                return []
            notes = ev.notes
            skel = family(fields["account"])[0]
            keys = [_TPL_ + skel] if skel else []
            route = notes.get("route")
            if isinstance(route, dict) and route.get("foreign_origin") is True:  # _foreign_sig
                sig = route.get("signature")
                if isinstance(sig, str) and sig:
                    keys.append(_ROUTE_ + sig)
            relay = notes.get("relay")
            if isinstance(relay, dict) and ev.allowed is None:
                # every login by exit: a hosting exit's are its members (the exit kind
                # stands for a relay flag the relay detector missed); of a /24 exit (a
                # subscriber network: a proxy's line, a campus or PC bang address) the
                # relay-flagged ones, the others count in its background, a crowd's
                # relay-flag noise is judged against
                keys.append(_NET_ + exit_of(ev.geo.asn, ev.prefix, ev.geo.kind))
            if ev.allowed is None:  # a machine on home lines of several /24s (:mod:`.hops`)
                client = fields["client"]
                hop = hops.hop_key(ev.geo.country, ev.geo.kind,
                                   client.device_id if client is not None else None)
                if hop:
                    keys.append(hop)
            return keys
        if isinstance(event, Traceroute):
            account = ev.account
            route = dict_note(ev, "route")
            if not account or not route:
                return []
            keys = []
            skel = family(account)[0]
            if skel:
                keys.append(f"{TPL}:{skel}")
            sig = foreign_sig(route)
            if sig:
                keys.append(f"{ROUTE}:{sig}")
            keys.append(_NET_ + exit_of(ev.geo.asn, ev.prefix, ev.geo.kind))
            return keys
        return []

    # --------------------------------------------------------------- processing

    def process(self, ev: Enriched, key: str | None = None) -> Findings | None:
        if key is None:
            total = Findings()
            for k in self.group_keys(ev):
                total.extend(self.process(ev, k))
            return total
        event = ev.event
        ts = ev.ts
        if event is not self._ev:
            self._ev = event
            self._ev_route = None
        if ts > self.now:
            self.now = ts
        if self.started is None:
            self.started = ts
        is_login = isinstance(event, Login)
        parts = self.parts
        part = parts.get(key)
        if part is not None:
            parts.move_to_end(key)
        elif is_login or part_kind(key) != NET or (
                hosted_exit(key) and self._route_facts(dict_note(ev, "route"))[0]):
            # a traceroute opens a hosting exit's partition when its route is foreign
            # (the exit takes its foreign-routed accounts from ``route:``)
            part = self._new_partition(key)
        else:
            return None
        if part.kind == HOP:
            return self._hop(part, ev, ts) if is_login else None
        if is_login and part.kind == NET:  # every login reaches one exit: the excesses
            relay = ev.notes.get("relay")
            if isinstance(relay, dict):
                suspicion.count_excess(self._family_pool(),
                                       suspicion.excess_bin(ev.geo.kind, relay.get("excess_ms")))
        if is_login and part.kind == NET and not _flagged(ev) and not hosted_exit(key):
            # background only
            arrive(part, ts, self._half_life, self._fast_half_life)
            assert isinstance(event, Login)
            part.bg_rtts.append(event.min_app_rtt)  # and the RTTs a band must stand out of
            if len(part.bg_rtts) > BACKGROUND_RTTS:
                del part.bg_rtts[0]
            if not home_line(key, ev.geo.kind):  # a home line's logins are members too
                if self.now > part.last_ts:
                    part.last_ts = self.now
                if self._bumped:
                    self._bumped.pop(key, None)
                return None
            counted = True
        else:
            counted = False
        m, new = self._upsert_login(part, ev, ts) if is_login else self._upsert_trace(part, ev, ts)
        out = None
        if m is not None:
            if new:  # the decayed arrival count (m.ts == ts)
                if not counted:
                    arrive(part, ts, self._half_life, self._fast_half_life)
                m.arrived = True
            if m.group is not None:  # evidence of a member grew: refresh on the next tick
                self.dirty[(part.key, m.group)] = None
            elif part.groups:
                out = self._consider(part, m)
            else:  # without groups, _consider needs a pattern with ``minimum`` members
                minimum = self._minimum[part.kind]
                index = part.index
                for p in m.indexed:
                    if len(index[p]) >= minimum:
                        out = self._consider(part, m)
                        break
        # _evict, its common case inline: the oldest member is recent, nothing to drop
        members = part.members
        now = self.now
        if now > part.last_ts:
            part.last_ts = now
        for oldest in members.values():
            if (oldest.ts < now - self._span or len(members) > self._max_members
                    or part.groups):
                self._evict(part)
            break
        else:
            self._evict(part)
        self._reorder(part)
        return out

    def _hop(self, part: Partition, ev: Enriched, ts: float) -> Findings | None:
        """A login on a home line in a ``hop:`` partition (:mod:`.hops`): a member when
        its machine hops (with the machine's logins in view), else a sighting."""
        s = self.settings
        m = self._upsert_login(part, ev, ts)[0]
        out = None
        if m is not None:
            hops.note(part, m, s)
            if not m.indexed:  # a machine not seen hopping: into the sightings
                if part.members.get(m.sid) is m:
                    del part.members[m.sid]
                live = hops.sight(part, m, s)
                for x in live:
                    if not x.cluster:
                        x.cluster = part.name_index().assign(x.account, normalise(x.account))
                    part.members[x.sid] = x
                    self._index(part, x)
            if m.indexed:
                if m.group is not None:
                    self.dirty[(part.key, m.group)] = None
                else:
                    out = self._consider(part, m)
        self._evict(part)
        self._reorder(part)
        return out

    def _reorder(self, part: Partition) -> None:
        """After a partition's event: most recently used, ``last_ts = now`` puts it in
        order again; a later ``last_ts`` is kept among the bumped ones."""
        if part.last_ts > self.now:
            self._bumped[part.key] = None
        elif self._bumped:
            self._bumped.pop(part.key, None)

    def _family_pool(self) -> Pool:
        """The family partitions' class pool (made before its first partition: the RTT
        excesses it judges by are counted from the exits, :mod:`.suspicion`)."""
        pool = self.pools.get(TPL)
        if pool is None:
            started = self.now if self.started is None else self.started
            pool = self.pools[TPL] = Pool(ts=self.now, first_ts=started)
        return pool

    def _new_partition(self, key: str) -> Partition:
        started = self.now if self.started is None else self.started
        pool = self.pools.get(pool_class(key))
        if pool is None:
            pool = self.pools[pool_class(key)] = Pool(ts=self.now, first_ts=started)
        part = Partition(key=key, first_ts=started, rate_ts=self.now, pool=pool)
        pool.parts += 1
        self.parts[key] = part
        while len(self.parts) > self.settings.max_keys:
            old, gone = self.parts.popitem(last=False)
            self._gone(gone)
            self._bumped.pop(old, None)
        return part

    @staticmethod
    def _gone(part: Partition) -> None:
        """A partition evicted: one fewer of its class (its arrivals stay in the pool)."""
        if part.pool is not None:
            part.pool.parts -= 1
            part.pool = None

    def _upsert_login(self, part: Partition, ev: Enriched, ts: float) -> tuple[Member | None, bool]:
        event = ev.event
        if not isinstance(event, Login):
            return None, False
        fields = event.__dict__  # (pydantic keeps the fields there; plain lookups are cheaper)
        account = fields["account"]
        sid = fields["session_id"] or f"acct:{account}"
        members = part.members
        m = members.get(sid)
        notes = ev.notes
        relay = notes.get("relay")
        if not (isinstance(relay, dict) and relay and ev.allowed is None):
            relay = None
        route = notes.get("route")
        if not (isinstance(route, dict) and route):
            route = None
        client = fields["client"]
        geo = ev.geo
        if m is not None:
            if m.indexed:  # (re)indexed below; out first, while ``ts`` is the indexed one
                self._unindex(part, m)
            old_ts = m.ts
            m.event_id, m.ts = event.event_id, ts
            if m.group is not None and ts != old_ts:
                g = part.groups.get(m.group)
                if g is not None:
                    g.retime(m, old_ts)
            m.country, m.asn = geo.country, geo.asn
            m.exit = exit_of(geo.asn, ev.prefix, geo.kind)
            m.access = geo.kind
            m.rtt, m.server = event.min_app_rtt, event.server_id
            m.tcp = event.tcp_rtt_ms
            m.jitter = jitter(event.app_rtt_ms)
            m.device = client.device_id if client is not None else None
            if relay is not None:
                m.relay, m.relay_score, m.relay_gap_ms, m.relay_excess_ms = relay_facts(relay)
            if route is not None:
                self._attach_route(m, route)
            self._index(part, m)
            return m, False
        # a new member: one constructor call, every field final (_index inline)
        sig, path = self._route_facts(route) if route is not None else (None, None)
        if relay is None:
            flagged, score, gap, excess = NO_RELAY
        else:
            flagged, score, gap, excess = relay_facts(relay)
        prefix = ev.prefix
        kind = part.kind
        pats: tuple[str, ...]  # patterns_of()
        if kind == TPL:
            net = _NET_ + network_of(geo.asn, prefix)
            pats = (net, _ROUTE_ + sig, part.key) if sig else (net, part.key)
        elif kind == ROUTE:
            pats = (part.key,) if sig and part.key == _ROUTE_ + sig else ()
        elif kind == HOP:  # a machine seen hopping (:mod:`.hops`): else in the sightings
            device = client.device_id if client is not None else None
            pats = (part.key,) if device in part.machines else ()
        else:
            pats = (part.key,) if flagged or hosted_exit(part.key) else ()
            pats += home_line(part.key, geo.kind)
        skel, serial_no, _ = family(account)
        m = Member(
            sid, account, ts, fields["event_id"], None, ip_text(fields["src_ip"]), prefix,
            geo.country, geo.asn, sig, () if path is None else path, route is not None,
            flagged, score, gap, excess, event.min_app_rtt, fields["server_id"],
            client.device_id if client is not None else None,
            # (a ``hop:`` sighting is named when its machine hops: :meth:`_hop`)
            part.name_index().assign(account, normalise(account)) if pats or kind != HOP else "",
            None, skel, serial_no, pats,
            jitter=jitter(event.app_rtt_ms), exit=exit_of(geo.asn, prefix, geo.kind),
            tcp=fields["tcp_rtt_ms"], access=geo.kind,
        )
        members[sid] = m
        if kind == TPL:  # the class's background share of logins with a relay score
            suspicion.count(part.pool, m)
            m.in_background = True
        if pats:
            _add_to_index(part.index, pats, m)
            if kind != TPL and pats[0] == part.key:
                self._stamp(part, m)
            if kind == NET and lines.is_line(pats[-1]):
                lines.record(part, m, self.settings)
        return m, True

    def _upsert_trace(self, part: Partition, ev: Enriched, ts: float) -> tuple[Member | None, bool]:
        event = ev.event
        account = ev.account
        route = dict_note(ev, "route")
        if account is None:
            return None, False
        sid = event.session_id or f"acct:{account}"
        m = part.members.get(sid)
        if m is None:
            sig, path = self._route_facts(route)
            if sig is None:
                return None, False
            login_id = ev.notes.get("login_event_id")
            geo = ev.geo
            skel, serial_no, _ = family(account)
            m = Member(
                sid, account, ts, login_id if isinstance(login_id, str) else None,
                event.event_id, ip_text(event.src_ip), ev.prefix, geo.country, geo.asn,
                sig, () if path is None else path, True, skel=skel, serial_no=serial_no,
                exit=exit_of(geo.asn, ev.prefix, geo.kind), access=geo.kind,
            )
            login_ts = ev.notes.get("login_ts")
            if m.event_id is not None and isinstance(login_ts, int | float):
                m.flag_ts = float(login_ts)
            self._add(part, m)
            return m, True
        had = (m.sig, m.route_known)
        m.trace_event_id = m.trace_event_id or event.event_id
        self._attach_route(m, route)
        if (m.sig, m.route_known) == had:
            return None, False
        self._reindex(part, m)
        return m, False

    def _route_facts(self, route: Mapping[str, Any]) -> tuple[str | None, list[str] | None]:
        """The foreign-origin signature and country path (at most 16) of a route note."""
        if route is self._ev_route:  # the same note, met again under another key
            return self._ev_route_facts
        raw = route.get("country_path")
        # one list per note, shared by the members made from it: never mutated in place
        facts = (foreign_sig(route), [str(c) for c in raw][:16] if isinstance(raw, list) else None)
        self._ev_route, self._ev_route_facts = route, facts
        return facts

    def _attach_route(self, m: Member, route: Mapping[str, Any]) -> None:
        sig, path = self._route_facts(route)
        m.route_known = True
        m.sig = sig
        if path is not None:
            m.country_path = path

    # ----------------------------------------------------------------- indexing

    def _add(self, part: Partition, m: Member) -> None:
        m.cluster = part.name_index().assign(m.account, normalise(m.account))
        part.members[m.sid] = m
        self._index(part, m)

    def _unindex(self, part: Partition, m: Member) -> None:
        index = part.index
        sid = m.sid
        lines.remove(part, m)
        for p in m.indexed:
            sids = index.get(p)
            if sids is not None:
                sids.pop(sid, None)
                if not sids:
                    del index[p]
        m.indexed = ()
        if part.stamps.pop(sid, None) is not None:
            machines.drop(part, m)
            if part.times is not None:
                part.times.remove(m.ts, m)  # m.ts has not moved since it was indexed

    def _reindex(self, part: Partition, m: Member) -> None:
        if m.indexed:
            self._unindex(part, m)
        self._index(part, m)

    def _index(self, part: Partition, m: Member) -> None:
        """Index an unindexed member under its ``_patterns``."""
        pats = m.indexed = patterns_of(part, m)
        _add_to_index(part.index, pats, m)
        lines.add(part, m)
        if pats and part.kind != TPL and pats[0] == part.key:  # the key (and a home line)
            self._stamp(part, m)

    def _stamp(self, part: Partition, m: Member) -> None:
        """A name-less partition's member indexed: its sequence number, its time."""
        self._seq += 1
        part.stamps[m.sid] = self._seq
        machines.put(part, m)
        if part.times is None:
            part.times = _TimeIndex()
        part.times.add(m.ts, m)

    def _evict(self, part: Partition) -> None:
        now = self.now
        if now > part.last_ts:
            part.last_ts = now
        members = part.members
        if members:
            cutoff = now - self._span
            cap = self.settings.max_members
            while members:
                for m in members.values():  # noqa: B007 - the oldest
                    break
                if m.ts >= cutoff and len(members) <= cap:
                    break
                members.popitem(last=False)
                if m.indexed and m.group is None and (part.kind != NET or part.key in m.indexed):
                    if m.rtt is not None:
                        part.bg_rtts.append(m.rtt)
                        if len(part.bg_rtts) > BACKGROUND_RTTS:
                            del part.bg_rtts[0]
                    if m.sid in part.stamps:
                        machines.leave(part, m)
                if m.group is None and m.indexed and lines.is_line(m.indexed[-1]):
                    lines.leave(part, m)  # a home-line login: the class's switch share
                stamped = m.sid in part.stamps
                self._unindex(part, m)
                if stamped:  # on its machine, in a hosting range or a route (a slow room)
                    machines.keep(part, m, cap, now - self._horizon)
        groups = part.groups
        if groups:
            ttl = self.settings.group_ttl_s
            for gid in [g.gid for g in groups.values() if g.last_seen + ttl < now]:
                for acct in groups.pop(gid).members:
                    if part.accounts.get(acct) == gid:
                        del part.accounts[acct]
        if part.hops is not None:
            hops.expire(part, now - self.settings.window_s)
        if not members and not groups and not (part.hops and (part.hops.devices
                                                                or part.hops.addresses)):
            if self.parts.pop(part.key, None) is not None:
                self._gone(part)
            self._bumped.pop(part.key, None)

    # ------------------------------------------------------------------ grouping

    # ------------------------------------------------------------- housekeeping

    def flush(self, now: float) -> Findings | None:
        self.now = max(self.now, now)
        out = Findings()
        if self.dirty:
            for key, gid in list(self.dirty):
                part = self.parts.get(key)
                g = part.groups.get(gid) if part is not None else None
                if part is not None and g is not None:
                    out.extend(self._emit(part, g, []))
            self.dirty.clear()
        for part in self._idle_parts():
            self._evict(part)
            if self.parts.get(part.key) is part:  # kept (it has groups), out of order now
                self._bumped[part.key] = None
        return out

    def _idle_parts(self) -> list[Partition]:
        """The partitions whose ``last_ts + 2 * window_s`` lies before ``now``.

        Apart from the ``_bumped`` ones, ``last_ts`` grows along ``parts``: the scan
        stops at the first partition in use.
        """
        span = 2 * self.settings.window_s
        now = self.now
        parts = self.parts
        bumped = self._bumped
        idle = []
        for key in list(bumped):
            part = parts.get(key)
            if part is None:
                del bumped[key]
            elif part.last_ts + span < now:
                idle.append(part)
        for key, part in parts.items():
            if key in bumped:
                continue
            if not part.last_ts + span < now:
                break
            idle.append(part)
        return idle

    def _sort_out_bumped(self) -> None:
        """After a restore: the partitions that break the ``last_ts`` order of ``parts``."""
        self._bumped = {}
        top = -math.inf
        for key, part in self.parts.items():
            if top <= part.last_ts <= self.now:
                top = part.last_ts
            else:
                self._bumped[key] = None


    def state(self) -> dict[str, Any]:
        return {**snapshot(self.now, self.parts), "started": self.started}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`; refused whole (:class:`~pathsentry.detectors.saved.StateInvalid`)
        before anything changes unless every field is as a save writes it."""
        check_farm_state(state)
        self.now, parts = restore(state, self._reindex)
        started = state.get("started")
        self.started = float(started) if isinstance(started, int | float) else min(
            (p.first_ts for p in parts.values()), default=None)
        self.parts.clear()
        self.parts.update(parts)
        # the pools: what the restored partitions hold (the evicted ones' arrivals are gone)
        self.pools = {}
        for p in parts.values():
            pool = self.pools.setdefault(pool_class(p.key), Pool(ts=self.now,
                                                                 first_ts=self.started or 0.0))
            pool.parts += 1
            pool.count += p.rate_count * 0.5 ** (max(0.0, self.now - p.rate_ts)
                                                 / self.settings.background_half_life_s)
            pool.seen += p.bg_seen
            pool.shared += p.bg_shared
            p.pool = pool
        self._ev = self._ev_route = None
        self._sort_out_bumped()


register(FarmDetector)
