"""Gold-farm groups: accounts that share a name cluster and a connection pattern.

A farm (작업장) runs dozens of accounts from one place: they log in within minutes,
through the same relay exit or along the same foreign-origin route, and usually
carry serial names (``xiaopai001 … xiaopai020``). This group-stage detector puts
together what the seed clusters on -- time, account name, source address and the
hop-country pattern -- with O(1)-ish work per event and bounded state.

Partition keys (:meth:`FarmDetector.group_keys`) -- the stream repartitions each
event by each of its keys, so the accounts of one group meet on one worker:

``tpl:<skeleton>``
    logins (and their traceroutes) of serial-like names, e.g. ``tpl:xiaopai#``
    (see :func:`pathsentry.detectors.names.skeleton`). A group is at least
    ``min_size`` same-skeleton accounts within ``window_s`` sharing a *pattern*:
    a foreign-origin route signature, or a source prefix on which either
    ``min_size`` of them carry relay/route evidence or their serials run
    consecutively (:func:`~pathsentry.detectors.names.regularity`).
``route:<signature>``
    sessions whose route has a foreign origin (``notes["route"]``). A group is a
    burst of at least ``min_size_unnamed`` accounts along one signature, names
    not required.
``net:<prefix>``
    relay-flagged logins and the traceroutes from the same source prefix (the
    relay exit). A group is a burst of relay-flagged accounts behind one exit.

Responsibilities are split so that one farm yields one alert even though its
events reach up to three keys; each partition decides from its own events only:

- ``route:`` and ``net:`` leave out accounts whose skeleton alone reaches
  ``min_size`` in the candidate (2 in ``route:``, whose traceroutes may be
  sampled) -- the ``tpl:`` partition sees the same accounts with the same
  pattern and takes them;
- ``route:`` leaves out accounts it knows to be relay-flagged and accounts whose
  exit prefix alone reaches ``min_size_unnamed`` in the candidate: ``net:`` sees
  every relay-flagged login of that exit (traceroutes are often sampled, so it
  sees more of the group than ``route:``) and takes them.

Name-less groups are also held to one *origin*: accounts that come from the same
place through the same relay see the same round-trip time, so a candidate keeps
the members whose minimum application RTT lies within ``rtt_tolerance`` of the
candidate's median (and that use its most common game server); a relay user from
elsewhere who happens to log in during a farm's burst through a shared VPN exit
does not join. A group seen again (the farm's next session, members overlapping by
at least half) is the same group: its alert is re-emitted, not duplicated, and
known members' later logins are flagged under it.

A name-less burst must be dense (median gap between logins at most
``max_unnamed_gap_s``) and is judged against the partition's own background: an
exponentially decayed arrival rate (half-life ``background_half_life_s``) gives the
number of accounts expected in a window, so a busy VPN exit or a popular route
needs a real surge: the Poisson probability of at least that many arrivals in a
burst must stay below ``max_burst_p``. With no history yet (a partition's first
minutes) the expectation is zero and only density counts -- the known warm-up
weakness of the name-less families.

PC bangs, campus NAT and mobile CGNAT (many accounts, one address, unrelated
names, domestic route, no relay) therefore never form a group: they reach
no ``route:``/``net:`` key, and their names do not share a skeleton with
consecutive serials. Family names (``minsu_kim``/``minsu_park``) have no serial
template; popular stems (``dragon`` + digits) are spread over time and prefixes.

The alert id is ``make_alert_id("farm", "farm_group", key|pattern|anchor)``,
where the anchor is the first member's login second: deterministic for a replay
or a retry. Members that join later re-emit the same alert with ``version + 1`` (evidence that
arrives for existing members, e.g. a late traceroute, re-emits it on the next
:meth:`FarmDetector.flush` tick);
each member's login is flagged ``farm_member`` with the alert id (an account
known only from its traceroute -- its login reached no partition of the group --
is flagged on that traceroute, whose ``notes["login_event_id"]`` is used when an
upstream stage provides it).

Bounds: at most ``max_keys`` partitions (least recently used evicted), at most
``max_members`` members per partition (members older than ``2 * window_s`` are
dropped first), at most ``max_group_members`` per group; an idle group is kept
``group_ttl_s`` for late joiners. Per event: one dictionary lookup per key, a scan
of the members sharing one pattern in one window, and O(bands) for the name index.

River's DBSTREAM was considered for the (time, name, address, route) clustering;
its ``predict_one`` walks every micro-cluster, and here every dimension but time is
categorical, so exact keys plus a fuzzy n-gram index do the job in bounded time.

>>> from pathsentry.detectors.names import skeleton
>>> skeleton("xiaopai017")
'xiaopai#'
>>> settings_from({"window_s": "600", "unknown": 1}).window_s
600.0
"""

from __future__ import annotations

import dataclasses
import math
from bisect import bisect_left, bisect_right
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

from pathsentry.detectors import register
from pathsentry.detectors.base import Detector, DetectorContext, Enriched, Findings
from pathsentry.detectors.injection import ip_text
from pathsentry.detectors.names import (
    NameIndex,
    cohesion,
    consecutive_runs,
    name_facts,
    regularity,
    skeleton,
    template,
)
from pathsentry.schemas import Alert, FlaggedEvent, Login, Traceroute, make_alert_id, severity_for

__all__ = ["FarmDetector", "FarmSettings", "poisson_tail", "settings_from"]

TPL, ROUTE, NET = "tpl", "route", "net"
_TPL_, _ROUTE_, _NET_ = f"{TPL}:", f"{ROUTE}:", f"{NET}:"


@dataclass(frozen=True, slots=True)
class FarmSettings:
    """Thresholds and bounds (``[detectors.farm]`` in ``pathsentry.toml``)."""

    window_s: float = 900.0
    join_window_s: float = 1800.0
    min_size: int = 5
    min_size_unnamed: int = 5
    min_regularity: float = 0.6
    max_burst_p: float = 1e-4
    max_unnamed_gap_s: float = 60.0
    burst_s: float = 300.0
    rtt_tolerance: float = 0.04
    rtt_tolerance_ms: float = 1.0
    background_half_life_s: float = 6 * 3600.0
    group_ttl_s: float = 86400.0
    max_keys: int = 100_000
    max_members: int = 512
    max_group_members: int = 1000
    max_evidence_items: int = 10


def settings_from(raw: Mapping[str, Any]) -> FarmSettings:
    """Build :class:`FarmSettings` from a config table, ignoring unknown keys."""
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(FarmSettings):
        if f.name in raw:
            kw[f.name] = type(getattr(FarmSettings(), f.name))(raw[f.name])
    return FarmSettings(**kw)


@dataclass(slots=True)
class Member:
    """One account session as a partition knows it."""

    sid: str
    account: str
    ts: float
    event_id: str | None
    trace_event_id: str | None
    src_ip: str
    prefix: str
    country: str | None = None
    asn: int | None = None
    sig: str | None = None
    country_path: Sequence[str] = ()
    route_known: bool = False
    relay: bool = False
    relay_score: float = 0.0
    relay_gap_ms: float | None = None
    relay_excess_ms: float | None = None
    rtt: float | None = None
    server: str | None = None
    device: str | None = None
    cluster: str = ""
    group: str | None = None
    #: ``skeleton(account)`` and ``serial(account)``, filled in by the detector
    skel: str | None = None
    serial_no: int | None = None
    #: the patterns the member is indexed under (``_patterns`` when it was indexed)
    indexed: Sequence[str] = ()
    #: time of the login its flag names, when the member is known from its traceroute
    #: (a flag is keyed by event and hour: one event keeps one time wherever it is flagged)
    flag_ts: float | None = None

    @property
    def flag_event_id(self) -> str:
        return self.event_id or self.trace_event_id or self.sid

    @property
    def evidence(self) -> bool:
        return self.relay or self.sig is not None


class _TimeIndex:
    """Members by time (``ts`` when added), for the windows of a partition or a group.

    Two parallel lists rather than ``(ts, member)`` pairs: nothing per entry for the
    garbage collector to walk.
    """

    __slots__ = ("items", "ts")

    def __init__(self) -> None:
        self.ts: list[float] = []
        self.items: list[Member] = []

    def __len__(self) -> int:
        return len(self.items)

    def add(self, ts: float, m: Member) -> None:
        i = bisect_right(self.ts, ts)
        self.ts.insert(i, ts)
        self.items.insert(i, m)

    def remove(self, ts: float, m: Member) -> None:
        """Drop ``m``, added at ``ts``."""
        times, items = self.ts, self.items
        i = bisect_left(times, ts)
        n = len(items)
        while i < n and times[i] == ts:
            if items[i] is m:
                del times[i], items[i]
                return
            i += 1
        for i, x in enumerate(items):  # out of step (cannot happen): by identity
            if x is m:
                del times[i], items[i]
                return

    def between(self, lo: float, hi: float) -> list[Member]:
        """The members added with ``lo <= ts < hi``, by time."""
        times = self.ts
        start = bisect_left(times, lo)
        return self.items[start:bisect_left(times, hi, start)]


@dataclass(slots=True)
class Group:
    gid: str
    key: str
    pattern: str
    patterns: list[str]
    anchor: float
    members: dict[str, Member] = field(default_factory=dict)
    first_seen: float = 0.0
    last_seen: float = 0.0
    version: int = 0
    score: float = 0.0
    #: ``template`` as of ``len(members)`` (accounts are only ever added to a group)
    _template: tuple[int, str] | None = field(default=None, init=False, repr=False,
                                              compare=False)
    #: each account's position in ``members`` (accounts are never removed)
    _order: dict[str, int] = field(default_factory=dict, init=False, repr=False,
                                   compare=False)
    #: ``members`` by time (:meth:`near`)
    _times: _TimeIndex = field(default_factory=lambda: _TimeIndex(), init=False, repr=False,
                               compare=False)

    def put(self, m: Member) -> None:
        """``members[m.account] = m``, keeping ``_times`` in step."""
        acct = m.account
        old = self.members.get(acct)
        if old is None:
            self._order[acct] = len(self._order)
        else:
            self._times.remove(old.ts, old)
        self._times.add(m.ts, m)
        self.members[acct] = m

    def retime(self, m: Member, old_ts: float) -> None:
        """``m.ts`` changed from ``old_ts`` (a member's session logged in again)."""
        if self.members.get(m.account) is m:
            self._times.remove(old_ts, m)
            self._times.add(m.ts, m)

    def near(self, t: float, span: float) -> list[Member]:
        """Members with ``0 <= t - ts <= span``, in ``members`` order."""
        order = self._order
        found = [x for x in self._times.between(t - span - 1.0, t + 1.0)
                 if 0 <= t - x.ts <= span]
        found.sort(key=lambda x: order[x.account])
        return found

    @property
    def template(self) -> str | None:
        """The commonest name template (template partitions only)."""
        if not self.key.startswith(f"{TPL}:") or not self.members:
            return None
        n = len(self.members)
        known = self._template
        if known is not None and known[0] == n:
            return known[1]
        tpl = Counter([template(a) for a in self.members]).most_common(1)[0][0]
        self._template = (n, tpl)
        return tpl


@dataclass(slots=True)
class Partition:
    key: str
    #: the partition family: ``tpl``, ``route`` or ``net``
    kind: str = field(init=False)
    members: OrderedDict[str, Member] = field(default_factory=OrderedDict)
    #: pattern -> the members indexed under it (by session id, in indexing order)
    index: dict[str, dict[str, Member]] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    accounts: dict[str, str] = field(default_factory=dict)
    last_ts: float = 0.0
    first_ts: float = 0.0
    rate_count: float = 0.0
    rate_ts: float = 0.0
    names: NameIndex = field(default_factory=lambda: NameIndex(max_clusters=256))
    #: name-less partitions (one pattern, the key): the indexed members by time, and
    #: each one's indexing sequence number (the order of ``index[key]``)
    times: _TimeIndex | None = None
    stamps: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kind = part_kind(self.key)


@dataclass(slots=True)
class Assessment:
    members: list[Member]
    score: float
    features: dict[str, Any]


#: ``_utc(ts)`` and its ISO text of recent instants (alerts are re-emitted as groups grow,
#: naming the same members' logins again); bounded, cleared when full
_UTC: dict[float, tuple[datetime, str]] = {}
_UTC_MAX = 1 << 14


def _utc_iso(ts: float) -> tuple[datetime, str]:
    hit = _UTC.get(ts)
    if hit is None:
        dt = datetime.fromtimestamp(ts, tz=UTC)
        hit = (dt, dt.isoformat())
        if len(_UTC) >= _UTC_MAX:
            _UTC.clear()
        _UTC[ts] = hit
    return hit


def _utc(ts: float) -> datetime:
    return _utc_iso(ts)[0]


def _iso(ts: float) -> str:
    """``_utc(ts).isoformat()``"""
    return _utc_iso(ts)[1]


def _dict_note(ev: Enriched, name: str) -> dict[str, Any]:
    v = ev.notes.get(name)
    return v if isinstance(v, dict) else {}


def _relay_facts(relay: Mapping[str, Any]) -> tuple[bool, float, Any, Any]:
    """``Member.relay``, ``relay_score``, ``relay_gap_ms``, ``relay_excess_ms`` of a note."""
    return (relay.get("flagged") is True, float(relay.get("score") or 0.0),
            relay.get("gap_ms"), relay.get("excess_ms"))


_NO_RELAY: tuple[bool, float, Any, Any] = (False, 0.0, None, None)
_LN2 = math.log(2)


def _foreign_sig(route: Mapping[str, Any]) -> str | None:
    sig = route.get("signature")
    if route.get("foreign_origin") is True and isinstance(sig, str) and sig:
        return sig
    return None


def _median_gap(tss: list[float]) -> float:
    """The median gap between consecutive (sorted) instants (the upper one of two)."""
    gaps = [b - a for a, b in pairwise(tss)]
    return sorted(gaps)[len(gaps) // 2] if gaps else 0.0


def _burst_p(n: int, expected: float) -> float:
    return float(f"{poisson_tail(n, expected):.3g}")


def _serial_regularity(ms: list[Member]) -> float:
    serials = [x.serial_no for x in ms if x.serial_no is not None]
    return round(regularity(serials), 3) if len(serials) >= 2 else 0.0


def _evidence_accounts(ms: list[Member]) -> int:
    return sum(x.evidence for x in ms)


def _add_to_index(index: dict[str, dict[str, Member]], patterns: Iterable[str], m: Member) -> None:
    """File member ``m`` under each of ``patterns`` (by session id)."""
    sid = m.sid
    for p in patterns:
        sids = index.get(p)
        if sids is None:
            index[p] = {sid: m}
        else:
            sids[sid] = m


def _top(counter: Counter[str], k: int) -> list[list[Any]]:
    return [[v, c] for v, c in sorted(counter.items(), key=lambda x: (-x[1], x[0]))[:k]]


@register
class FarmDetector(Detector):
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
        self._max_members = s.max_members
        self._half_life = s.background_half_life_s
        self._minimum = {TPL: s.min_size, ROUTE: s.min_size_unnamed, NET: s.min_size_unnamed}
        self._seq = 0  # indexing order in name-less partitions (Partition.stamps)

    # ------------------------------------------------------------------ routing

    def group_keys(self, ev: Enriched) -> Iterable[str]:
        event = ev.event
        if isinstance(event, Login):
            fields = event.__dict__  # (pydantic keeps the fields there; plain lookups are cheaper)
            if fields["outcome"] != "success":
                return []
            notes = ev.notes
            skel = name_facts(fields["account"])[0]  # skeleton()
            keys = [_TPL_ + skel] if skel else []
            route = notes.get("route")
            if isinstance(route, dict) and route.get("foreign_origin") is True:  # _foreign_sig
                sig = route.get("signature")
                if isinstance(sig, str) and sig:
                    keys.append(_ROUTE_ + sig)
            relay = notes.get("relay")
            if isinstance(relay, dict) and relay.get("flagged") is True and ev.allowed is None:
                keys.append(_NET_ + ev.prefix)
            return keys
        if isinstance(event, Traceroute):
            account = ev.account
            route = _dict_note(ev, "route")
            if not account or not route:
                return []
            keys = []
            skel = skeleton(account)
            if skel:
                keys.append(f"{TPL}:{skel}")
            sig = _foreign_sig(route)
            if sig:
                keys.append(f"{ROUTE}:{sig}")
            keys.append(f"{NET}:{ev.prefix}")
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
        is_login = isinstance(event, Login)
        parts = self.parts
        part = parts.get(key)
        if part is not None:
            parts.move_to_end(key)
        elif is_login or part_kind(key) != NET:
            part = self._new_partition(key)
        else:
            return None
        m, new = self._upsert_login(part, ev, ts) if is_login else self._upsert_trace(part, ev, ts)
        out = None
        if m is not None:
            if new:  # _arrival: the decayed arrival count (m.ts == ts)
                rate_ts = part.rate_ts
                # (conditionals for max(): the builtin costs far more than the arithmetic;
                # ``b if b > a else a`` is exactly ``max(a, b)``)
                dt = ts - rate_ts
                dt = dt if dt > 0.0 else 0.0
                part.rate_count = part.rate_count * 0.5 ** (dt / self._half_life) + 1.0
                part.rate_ts = ts if ts > rate_ts else rate_ts
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
        # most recently used, ``last_ts = now``: in order again
        if part.last_ts > now:
            self._bumped[key] = None
        elif self._bumped:
            self._bumped.pop(key, None)
        return out

    def _new_partition(self, key: str) -> Partition:
        part = Partition(key=key, first_ts=self.now, rate_ts=self.now)
        self.parts[key] = part
        while len(self.parts) > self.settings.max_keys:
            old, _ = self.parts.popitem(last=False)
            self._bumped.pop(old, None)
        return part

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
            m.rtt, m.server = event.min_app_rtt, event.server_id
            m.device = client.device_id if client is not None else None
            if relay is not None:
                m.relay, m.relay_score, m.relay_gap_ms, m.relay_excess_ms = _relay_facts(relay)
            if route is not None:
                self._attach_route(m, route)
            self._index(part, m)
            return m, False
        # a new member: one constructor call, every field final (_index inline)
        sig, path = self._route_facts(route) if route is not None else (None, None)
        if relay is None:
            flagged, score, gap, excess = _NO_RELAY
        else:
            flagged, score, gap, excess = _relay_facts(relay)
        prefix = ev.prefix
        kind = part.kind
        pats: tuple[str, ...]  # _patterns()
        if kind == TPL:
            net = _NET_ + prefix
            pats = (net, _ROUTE_ + sig) if sig else (net,)
        elif kind == ROUTE:
            pats = (part.key,) if sig and part.key == _ROUTE_ + sig else ()
        else:
            pats = (part.key,) if flagged or sig else ()
        skel, serial_no, norm = name_facts(account)
        m = Member(
            sid, account, ts, fields["event_id"], None, ip_text(fields["src_ip"]), prefix,
            geo.country, geo.asn, sig, () if path is None else path, route is not None,
            flagged, score, gap, excess, event.min_app_rtt, fields["server_id"],
            client.device_id if client is not None else None,
            part.names.assign(account, norm), None, skel, serial_no, pats,
        )
        members[sid] = m
        if pats:
            _add_to_index(part.index, pats, m)
            if kind != TPL:
                self._stamp(part, m)
        return m, True

    def _upsert_trace(self, part: Partition, ev: Enriched, ts: float) -> tuple[Member | None, bool]:
        event = ev.event
        account = ev.account
        route = _dict_note(ev, "route")
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
            skel, serial_no, _ = name_facts(account)
            m = Member(
                sid, account, ts, login_id if isinstance(login_id, str) else None,
                event.event_id, ip_text(event.src_ip), ev.prefix, geo.country, geo.asn,
                sig, () if path is None else path, True, skel=skel, serial_no=serial_no,
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
        facts = (_foreign_sig(route), [str(c) for c in raw][:16] if isinstance(raw, list) else None)
        self._ev_route, self._ev_route_facts = route, facts
        return facts

    def _attach_route(self, m: Member, route: Mapping[str, Any]) -> None:
        sig, path = self._route_facts(route)
        m.route_known = True
        m.sig = sig
        if path is not None:
            m.country_path = path

    # ----------------------------------------------------------------- indexing

    def _patterns(self, part: Partition, m: Member) -> tuple[str, ...]:
        kind = part.kind
        if kind == TPL:
            sig = m.sig
            if sig:
                return (_NET_ + m.prefix, _ROUTE_ + sig)
            return (_NET_ + m.prefix,)
        if kind == ROUTE:
            return (part.key,) if m.sig and part.key == _ROUTE_ + m.sig else ()
        return (part.key,) if m.relay or m.sig else ()

    def _add(self, part: Partition, m: Member) -> None:
        m.cluster = part.names.assign(m.account, name_facts(m.account)[2])
        part.members[m.sid] = m
        self._index(part, m)

    def _unindex(self, part: Partition, m: Member) -> None:
        index = part.index
        sid = m.sid
        for p in m.indexed:
            sids = index.get(p)
            if sids is not None:
                sids.pop(sid, None)
                if not sids:
                    del index[p]
        m.indexed = ()
        if part.stamps.pop(sid, None) is not None and part.times is not None:
            part.times.remove(m.ts, m)  # m.ts has not moved since it was indexed

    def _reindex(self, part: Partition, m: Member) -> None:
        if m.indexed:
            self._unindex(part, m)
        self._index(part, m)

    def _index(self, part: Partition, m: Member) -> None:
        """Index an unindexed member under its ``_patterns``."""
        pats = m.indexed = self._patterns(part, m)
        _add_to_index(part.index, pats, m)
        if pats and part.kind != TPL:  # the one pattern is the key
            self._stamp(part, m)

    def _stamp(self, part: Partition, m: Member) -> None:
        """A name-less partition's member indexed: its sequence number, its time."""
        self._seq += 1
        part.stamps[m.sid] = self._seq
        if part.times is None:
            part.times = _TimeIndex()
        part.times.add(m.ts, m)

    def _expected(self, part: Partition, n: int) -> float:
        """Accounts the partition's background rate predicts in one window (burst).

        The ``n`` arrivals under judgement are taken out of the decayed count, which
        is divided by the decayed length of the partition's observed life
        (``tau * (1 - exp(-life / tau))``, ``tau = half_life / ln 2``).
        """
        s = self.settings
        span = s.window_s if part.kind == TPL else s.burst_s
        tau = s.background_half_life_s / math.log(2)
        life = max(span, part.rate_ts - part.first_ts)
        return max(0.0, part.rate_count - n) * span / (tau * -math.expm1(-life / tau))

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
                self._unindex(part, m)
        groups = part.groups
        if groups:
            ttl = self.settings.group_ttl_s
            for gid in [g.gid for g in groups.values() if g.last_seen + ttl < now]:
                for acct in groups.pop(gid).members:
                    if part.accounts.get(acct) == gid:
                        del part.accounts[acct]
        if not members and not groups:
            self.parts.pop(part.key, None)
            self._bumped.pop(part.key, None)

    # ------------------------------------------------------------------ grouping

    def _covered(self, part: Partition, cand: list[Member]) -> set[str]:
        """Members another partition takes: a skeleton at ``min_size`` (``tpl:``; at 2
        in ``route:``) and, for ``route:``, an exit prefix at ``min_size_unnamed`` (``net:``)."""
        kind = part.kind
        if kind == TPL:
            return set()
        s = self.settings
        skels: dict[str, int] = {}
        for x in cand:
            k = x.skel
            if k:
                skels[k] = skels.get(k, 0) + 1
        # traceroutes may be sampled: two serial names of one skeleton on one route
        # already mean the template partition, which sees every login, has the batch
        need = 2 if kind == ROUTE else s.min_size
        big = {k for k, c in skels.items() if c >= need}
        out = {x.sid for x in cand if x.skel in big} if big else set()
        if kind == ROUTE:
            exits: dict[str, int] = {}
            for x in cand:
                if x.sid not in out:
                    exits[x.prefix] = exits.get(x.prefix, 0) + 1
            need = s.min_size_unnamed
            out |= {x.sid for x in cand if exits.get(x.prefix, 0) >= need}
        return out

    def _band(self, ms: list[Member]) -> tuple[float | None, str | None]:
        """The origin of a name-less candidate: median min RTT and commonest server."""
        rtts = sorted(x.rtt for x in ms if x.rtt is not None)
        servers = Counter([x.server for x in ms if x.server])
        med = rtts[len(rtts) // 2] if rtts else None
        return med, (servers.most_common(1)[0][0] if servers else None)

    def _in_band(self, m: Member, med: float | None, server: str | None) -> bool:
        s = self.settings
        if server is not None and m.server is not None and m.server != server:
            return False
        if med is None or m.rtt is None:
            return True
        tol = s.rtt_tolerance * med
        return abs(m.rtt - med) <= (tol if tol > s.rtt_tolerance_ms else s.rtt_tolerance_ms)

    def _window(self, part: Partition, pattern: str, t: float) -> list[Member]:
        """Ungrouped eligible members sharing ``pattern`` around ``t``.

        The span is ``window_s`` for template partitions and the tighter ``burst_s``
        for name-less ones, whose only name-independent evidence is density.
        """
        sids = part.index.get(pattern)
        if not sids:
            return []
        kind = part.kind
        if kind == TPL:
            w = self.settings.window_s
            return [x for x in sids.values() if x.group is None and abs(x.ts - t) <= w]
        # name-less: by time (``part.times``), not in indexing order (``_seq_order``)
        w = self.settings.burst_s
        if pattern == part.key and part.times is not None:
            near = part.times.between(t - w - 1.0, t + w + 1.0)
        else:
            near = list(sids.values())
        if kind == ROUTE:  # relay-flagged members are the ``net:`` partition's (eligible)
            return [x for x in near if x.group is None and abs(x.ts - t) <= w and not x.relay]
        return [x for x in near if x.group is None and abs(x.ts - t) <= w]

    @staticmethod
    def _seq_order(part: Partition, ms: list[Member]) -> list[Member]:
        """Members of a name-less partition's window in indexing order (``index[key]``)."""
        stamps = part.stamps
        return sorted(ms, key=lambda x: stamps[x.sid])

    def _consider(self, part: Partition, m: Member) -> Findings | None:
        kind = part.kind
        if m.group is not None or (kind == ROUTE and m.relay):  # not eligible
            return None
        # ``_patterns(part, m)``: the member was (re)indexed just before
        patterns = m.indexed
        if not patterns:
            return None
        groups = part.groups
        if groups:
            known = groups.get(part.accounts.get(m.account, ""))
            if known is not None and (kind == TPL or self._may_join(part, known, m)):
                return self._join(part, known, [m])  # a known member's next session
            for g in groups.values():
                if any(p in patterns for p in g.patterns) and self._may_join(part, g, m):
                    cand = self._window(part, g.pattern, m.ts)
                    if m.sid not in self._covered(part, cand):
                        return self._join(part, g, [m])
        minimum = self.settings.min_size if kind == TPL else self.settings.min_size_unnamed
        index = part.index
        for p in patterns:
            # too few members under the pattern, or in its window: no candidate (taking
            # out covered members only shrinks it)
            if len(index[p]) < minimum:
                continue
            cand = self._window(part, p, m.ts)
            if len(cand) < minimum or (kind != TPL and self._no_burst(part, len(cand))):
                continue
            covered = self._covered(part, cand)
            if m.sid in covered:
                continue
            if covered:
                cand = [x for x in cand if x.sid not in covered]
            if kind != TPL and p == part.key:
                cand = self._seq_order(part, cand)
            a = self._assess(part, p, cand)
            if a is not None:
                return self._form(part, p, a)
        return None

    def _no_burst(self, part: Partition, n: int) -> bool:
        """Whether no name-less candidate of at most ``n`` members can pass the burst gate
        of :meth:`_assess` (taking out covered or out-of-band members only shrinks it).

        ``burst_p`` (the Poisson tail ``P(X >= n)``) only grows as the candidate
        shrinks: fewer arrivals to explain and a larger expected background. Two cheap
        lower bounds of ``P(X >= n)`` for ``n`` itself decide it with a margin far beyond
        rounding (twice the limit): ``1/2`` when ``n`` is at most the median of
        ``Poisson(lam)`` (``>= lam - ln 2``), and the probability of exactly ``n``.
        """
        limit = 2 * self.settings.max_burst_p
        if not 0.0 < limit < 0.5:
            return False
        lam = self._expected(part, n)
        if lam <= 0.0:
            return False
        if n <= lam - _LN2:
            return True
        log_pmf = n * math.log(lam) - lam - math.lgamma(n + 1)
        return log_pmf > math.log(limit) + 0.01
    def _may_join(self, part: Partition, g: Group, m: Member) -> bool:
        """Template groups take late joiners for ``join_window_s``; a name-less group only
        while its burst lasts: ``min_size_unnamed - 1`` members within ``burst_s`` before."""
        s = self.settings
        if part.kind == TPL:
            return m.ts <= g.last_seen + s.join_window_s
        near = g.near(m.ts, s.burst_s)
        return len(near) >= s.min_size_unnamed - 1 and self._in_band(m, *self._band(near))

    def _assess(self, part: Partition, pattern: str, cand: list[Member]) -> Assessment | None:
        s = self.settings
        kind = part.kind
        n = len(cand)
        minimum = s.min_size if kind == TPL else s.min_size_unnamed
        if kind != TPL and n >= minimum:
            band = self._band(cand)
            cand = [x for x in cand if self._in_band(x, *band)]
            n = len(cand)
        if n < minimum:
            return None
        # the gates first, with the same formulas as ``_features`` (most candidates fail)
        if kind == TPL:
            strong = pattern.startswith("route:") or _evidence_accounts(cand) >= s.min_size
            if not strong and _serial_regularity(cand) < s.min_regularity:
                return None
        elif (_burst_p(n, self._expected(part, n)) > s.max_burst_p
              or _median_gap(sorted([x.ts for x in cand])) > s.max_unnamed_gap_s):
            return None
        f = self._features(part, cand)
        return Assessment(cand, self._score(kind, f), f)

    def _features(self, part: Partition, members: Iterable[Member]) -> dict[str, Any]:
        ms = list(members)
        n = len(ms)
        tss = sorted([x.ts for x in ms])
        clusters = Counter([x.cluster for x in ms])
        expected = self._expected(part, n)
        return {
            "size": n,
            "span_s": tss[-1] - tss[0],
            "median_gap_s": _median_gap(tss),
            "expected_in_window": round(expected, 2),
            "burst_ratio": round(n / max(1.0, expected), 2),
            "burst_p": _burst_p(n, expected),
            "serial_regularity": _serial_regularity(ms),
            "name_cohesion": round(cohesion([x.account for x in ms]), 3),
            "largest_name_cluster": clusters.most_common(1)[0][1] / n,
            "evidence_accounts": _evidence_accounts(ms),
            "relay_share": sum(x.relay for x in ms) / n,
            "route_share": Counter([x.sig for x in ms if x.sig]).most_common(1)[0][1] / n
            if any(x.sig for x in ms)
            else 0.0,
            "prefix_share": Counter([x.prefix for x in ms]).most_common(1)[0][1] / n,
        }

    def _score(self, kind: str, f: Mapping[str, Any]) -> float:
        """0-1: size, name regularity, timing burstiness, shared relay/route evidence."""
        size = 1.0 - math.exp(-(f["size"] - 1) / 8.0)
        if kind == TPL:
            names = max(f["serial_regularity"], f["name_cohesion"])
        else:
            names = max(f["name_cohesion"], f["largest_name_cluster"])
        burst = math.exp(-f["median_gap_s"] / 120.0)
        shared = max(f["route_share"], f["relay_share"], 0.5 * f["prefix_share"])
        score = float(0.25 * size + 0.2 * names + 0.2 * burst + 0.35 * shared)
        return round(min(1.0, max(0.0, score)), 3)

    def _form(self, part: Partition, pattern: str, a: Assessment) -> Findings:
        anchor = min(x.ts for x in a.members)
        counts = Counter([p for x in a.members for p in self._patterns(part, x)])
        pats = sorted(p for p, c in counts.items() if c >= max(2, len(a.members) / 2))
        stable = f"{part.key}|{pattern}|{_utc(anchor).strftime('%Y-%m-%dT%H:%M:%SZ')}"
        g = Group(
            gid=make_alert_id(self.name, "farm_group", stable),
            key=part.key,
            pattern=pattern,
            patterns=pats or [pattern],
            anchor=anchor,
            first_seen=anchor,
            last_seen=anchor,
        )
        accts = [x.account for x in a.members]
        seen = Counter([part.accounts[x] for x in accts if x in part.accounts])
        if seen and seen.most_common(1)[0][1] * 2 >= len(accts):  # the group's next session
            g = part.groups[seen.most_common(1)[0][0]]
        else:
            g = part.groups.setdefault(g.gid, g)
        return self._join(part, g, a.members)

    def _join(self, part: Partition, g: Group, ms: list[Member]) -> Findings:
        added: list[Member] = []
        again: list[Member] = []
        for m in sorted(ms, key=lambda x: (x.ts, x.sid)):
            if m.account not in g.members and len(g.members) >= self.settings.max_group_members:
                continue
            m.group = g.gid
            (again if m.account in g.members else added).append(m)
            g.put(m)
            part.accounts[m.account] = g.gid
            if m.ts < g.first_seen:  # min(), max()
                g.first_seen = m.ts
            if m.ts > g.last_seen:
                g.last_seen = m.ts
        if not added:  # known members only: flag their logins, refresh the alert on a tick
            if again:
                self.dirty[(part.key, g.gid)] = None
            tpl = g.template
            return Findings(flags=[self._flag(g, m, None, tpl) for m in again])
        out = self._emit(part, g, added)
        tpl = g.template
        out.flags.extend(self._flag(g, m, out.alerts[0], tpl) for m in again)
        return out

    def _emit(self, part: Partition, g: Group, added: list[Member]) -> Findings:
        """The group's alert at ``version + 1`` and the flags of the ``added`` members."""
        self.dirty.pop((part.key, g.gid), None)
        g.version += 1
        feats = self._features(part, g.members.values())
        g.score = self._score(part.kind, feats)
        alert = self._alert(part, g, feats)
        tpl = g.template if added else None
        return Findings(flags=[self._flag(g, m, alert, tpl) for m in added], alerts=[alert])

    # ------------------------------------------------------------------ outputs

    def _alert(self, part: Partition, g: Group, feats: dict[str, Any]) -> Alert:
        k = self.settings.max_evidence_items
        ms = sorted(g.members.values(), key=lambda x: (x.ts, x.account))
        templates = Counter([template(x.account) for x in ms])
        serials = [x.serial_no for x in ms if x.serial_no is not None]
        paths = Counter([">".join(x.country_path) for x in ms if x.country_path])
        relays = [x for x in ms if x.relay]
        evidence: dict[str, Any] = {
            "partition": g.key,
            "pattern": g.pattern,
            "templates": _top(templates, k),
            "serial_runs": [list(r) for r in consecutive_runs(serials, 3)][:k],
            "name_clusters": _top(Counter([x.cluster for x in ms]), k),
            "members": [
                {"account": x.account, "ts": _iso(x.ts), "src_ip": x.src_ip,
                 "route": ">".join(x.country_path) or None, "relay": x.relay}
                for x in ms[: self.settings.max_group_members]
            ],
            "first_seen": _iso(g.first_seen),
            "last_seen": _iso(g.last_seen),
            "prefixes": _top(Counter([x.prefix for x in ms]), k),
            "route_signatures": _top(Counter([x.sig for x in ms if x.sig]), k),
            "country_paths": _top(paths, k),
            "relay": {
                "flagged_accounts": len(relays),
                "exits": _top(Counter([x.prefix for x in relays]), k),
                "max_gap_ms": max((x.relay_gap_ms for x in relays if x.relay_gap_ms), default=None),
                "max_excess_ms": max(
                    (x.relay_excess_ms for x in relays if x.relay_excess_ms), default=None
                ),
            },
            "origin": self._origin(ms),
            "timing": {k2: feats[k2] for k2 in ("span_s", "median_gap_s", "expected_in_window",
                                                "burst_ratio", "burst_p")},
            "names": {k2: feats[k2] for k2 in ("serial_regularity", "name_cohesion",
                                               "largest_name_cluster")},
        }
        tpl = templates.most_common(1)[0][0] if part.kind == TPL else None
        what = f"template {tpl}" if tpl else f"shared {g.pattern.partition(':')[0]} pattern"
        where = paths.most_common(1)[0][0] if paths else g.pattern.partition(":")[2]
        summary = (
            f"{len(ms)} accounts with {what} logged in within {feats['span_s'] / 60:.0f} min "
            f"via {where}"
        )
        return Alert(
            alert_id=g.gid,
            ts=_utc(g.last_seen),
            kind="farm_group",
            severity=severity_for(g.score),
            score=g.score,
            subject={"group_id": g.gid, "key": g.key, "pattern": g.pattern, "template": tpl},
            accounts=sorted(x.account for x in ms),
            event_ids=[x.flag_event_id for x in ms],
            evidence=evidence,
            summary=summary,
            detector=self.name,
            first_seen=_utc(g.first_seen),
            last_seen=_utc(g.last_seen),
            version=g.version,
        )

    def _origin(self, ms: list[Member]) -> dict[str, Any]:
        """Same place, same relay: min app RTT spread, servers, devices shared by accounts."""
        rtts = sorted(x.rtt for x in ms if x.rtt is not None)
        devices = Counter([x.device for x in ms if x.device])
        return {
            "median_app_rtt_ms": rtts[len(rtts) // 2] if rtts else None,
            "app_rtt_range_ms": [rtts[0], rtts[-1]] if rtts else None,
            "servers": _top(Counter([x.server for x in ms if x.server]),
                            self.settings.max_evidence_items),
            "devices_shared_by_accounts": sum(1 for c in devices.values() if c > 1),
        }

    def _flag(self, g: Group, m: Member, alert: Alert | None, tpl: str | None) -> FlaggedEvent:
        """The ``farm_member`` flag of ``m``; ``tpl`` is ``g.template`` (once per batch)."""
        reasons = [f"farm group of {len(g.members)} accounts ({g.pattern})"]
        if tpl:
            reasons.append(f"name template {tpl}")
        if m.sig:
            reasons.append(f"foreign-origin route {'>'.join(m.country_path) or m.sig}")
        if m.relay:
            reasons.append("relayed connection")
        return FlaggedEvent(
            event_id=m.flag_event_id,
            ts=_utc(m.ts if m.flag_ts is None else m.flag_ts),
            kind="farm_member",
            account=m.account,
            session_id=None if m.sid.startswith("acct:") else m.sid,
            src_ip=m.src_ip,
            country=m.country,
            asn=m.asn,
            score=g.score,
            reasons=reasons,
            evidence={"group_id": g.gid, "partition": g.key, "pattern": g.pattern,
                      "template": tpl, "group_size": len(g.members),
                      "alert_version": g.version if alert is None else alert.version},
            alert_id=g.gid,
            detector=self.name,
        )

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
        def mem(m: Member) -> dict[str, Any]:
            return dataclasses.asdict(m)

        return {
            "now": self.now,
            "partitions": [
                {
                    "key": p.key,
                    "last_ts": p.last_ts,
                    "first_ts": p.first_ts,
                    "rate_count": p.rate_count,
                    "rate_ts": p.rate_ts,
                    "members": [mem(m) for m in p.members.values()],
                    "groups": [
                        {
                            "gid": g.gid, "pattern": g.pattern, "patterns": g.patterns,
                            "anchor": g.anchor, "first_seen": g.first_seen,
                            "last_seen": g.last_seen, "version": g.version, "score": g.score,
                            "members": [mem(m) for m in g.members.values()],
                        }
                        for g in p.groups.values()
                    ],
                }
                for p in self.parts.values()
            ],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.parts.clear()
        self.now = float(state.get("now", 0.0))
        for raw in state.get("partitions", []):
            p = Partition(
                key=raw["key"], last_ts=raw["last_ts"], first_ts=raw["first_ts"],
                rate_count=raw["rate_count"], rate_ts=raw["rate_ts"],
            )
            for md in raw["members"]:
                m = _member(md)
                p.names.assign(m.account)
                p.members[m.sid] = m
                self._reindex(p, m)
            for gd in raw["groups"]:
                g = Group(
                    gid=gd["gid"], key=p.key, pattern=gd["pattern"], patterns=gd["patterns"],
                    anchor=gd["anchor"], first_seen=gd["first_seen"], last_seen=gd["last_seen"],
                    version=gd["version"], score=gd["score"],
                )
                for md in gd["members"]:
                    m = p.members.get(md["sid"]) or _member(md)
                    g.put(m)
                    p.accounts[m.account] = g.gid
                p.groups[g.gid] = g
            self.parts[p.key] = p
        self._ev = self._ev_route = None
        self._sort_out_bumped()


def _member(raw: Mapping[str, Any]) -> Member:
    """A member from its :meth:`FarmDetector.state` form (name facts recomputed)."""
    m = Member(**raw)
    m.skel, m.serial_no, _ = name_facts(m.account)
    return m


def poisson_tail(n: int, lam: float) -> float:
    """P(X >= n) for X ~ Poisson(lam): how surprising ``n`` arrivals are.

    >>> poisson_tail(5, 0.0), round(poisson_tail(8, 2.0), 4), poisson_tail(0, 3.0)
    (0.0, 0.0011, 1.0)
    """
    if n <= 0:
        return 1.0
    if lam <= 0.0:
        return 0.0
    term = math.exp(-lam)
    cdf = term
    for k in range(1, n):
        term *= lam / k
        cdf += term
    return max(0.0, 1.0 - cdf)


def part_kind(key: str) -> str:
    """The partition family of a key.

    >>> part_kind("tpl:xiaopai#"), part_kind("net:203.0.113.0/24")
    ('tpl', 'net')
    """
    return key.partition(":")[0]
