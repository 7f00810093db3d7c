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
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

from pathsentry.detectors import register
from pathsentry.detectors.base import Detector, DetectorContext, Enriched, Findings
from pathsentry.detectors.names import (
    NameIndex,
    cohesion,
    consecutive_runs,
    regularity,
    serial,
    skeleton,
    template,
)
from pathsentry.schemas import Alert, FlaggedEvent, Login, Traceroute, make_alert_id, severity_for

__all__ = ["FarmDetector", "FarmSettings", "poisson_tail", "settings_from"]

TPL, ROUTE, NET = "tpl", "route", "net"


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
    country_path: list[str] = field(default_factory=list)
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
    skel: str | None = None
    serial_no: int | None = None
    indexed: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.skel = skeleton(self.account)
        self.serial_no = serial(self.account)

    @property
    def flag_event_id(self) -> str:
        return self.event_id or self.trace_event_id or self.sid

    @property
    def evidence(self) -> bool:
        return self.relay or self.sig is not None


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

    @property
    def template(self) -> str | None:
        """The commonest name template (template partitions only)."""
        if not self.key.startswith(f"{TPL}:") or not self.members:
            return None
        return Counter(template(a) for a in self.members).most_common(1)[0][0]


@dataclass(slots=True)
class Partition:
    key: str
    #: the partition family: ``tpl``, ``route`` or ``net``
    kind: str = field(init=False)
    members: OrderedDict[str, Member] = field(default_factory=OrderedDict)
    index: dict[str, dict[str, None]] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    accounts: dict[str, str] = field(default_factory=dict)
    last_ts: float = 0.0
    first_ts: float = 0.0
    rate_count: float = 0.0
    rate_ts: float = 0.0
    names: NameIndex = field(default_factory=lambda: NameIndex(max_clusters=256))

    def __post_init__(self) -> None:
        self.kind = part_kind(self.key)


@dataclass(slots=True)
class Assessment:
    members: list[Member]
    score: float
    features: dict[str, Any]


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def _dict_note(ev: Enriched, name: str) -> dict[str, Any]:
    v = ev.notes.get(name)
    return v if isinstance(v, dict) else {}


def _foreign_sig(route: Mapping[str, Any]) -> str | None:
    sig = route.get("signature")
    if route.get("foreign_origin") is True and isinstance(sig, str) and sig:
        return sig
    return None


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
        self.settings = settings_from(ctx.settings(self.name))
        self.parts: OrderedDict[str, Partition] = OrderedDict()
        self.dirty: dict[tuple[str, str], None] = {}
        self.now = 0.0

    # ------------------------------------------------------------------ routing

    def group_keys(self, ev: Enriched) -> Iterable[str]:
        event = ev.event
        if isinstance(event, Login):
            if event.outcome != "success":
                return []
            route = _dict_note(ev, "route")
            relay = _dict_note(ev, "relay")
            keys = []
            skel = skeleton(event.account)
            if skel:
                keys.append(f"{TPL}:{skel}")
            sig = _foreign_sig(route)
            if sig:
                keys.append(f"{ROUTE}:{sig}")
            if relay.get("flagged") is True and ev.allowed is None:
                keys.append(f"{NET}:{ev.prefix}")
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
            out = Findings()
            for k in self.group_keys(ev):
                out.extend(self.process(ev, k))
            return out
        ts = ev.event.ts.timestamp()
        self.now = max(self.now, ts)
        is_login = isinstance(ev.event, Login)
        part = self._partition(key, create=is_login or part_kind(key) != NET)
        if part is None:
            return None
        m, new = self._upsert_login(part, ev, ts) if is_login else self._upsert_trace(part, ev, ts)
        out = Findings()
        if m is not None:
            if new:
                self._arrival(part, m.ts)
            if m.group is not None:  # evidence of a member grew: refresh on the next tick
                self.dirty[(part.key, m.group)] = None
            out.extend(self._consider(part, m))
        self._evict(part)
        return out

    def _partition(self, key: str, create: bool) -> Partition | None:
        part = self.parts.get(key)
        if part is not None:
            self.parts.move_to_end(key)
            return part
        if not create:
            return None
        part = Partition(key=key, first_ts=self.now, rate_ts=self.now)
        self.parts[key] = part
        while len(self.parts) > self.settings.max_keys:
            self.parts.popitem(last=False)
        return part

    def _upsert_login(self, part: Partition, ev: Enriched, ts: float) -> tuple[Member | None, bool]:
        event = ev.event
        if not isinstance(event, Login):
            return None, False
        sid = event.session_id or f"acct:{event.account}"
        m = part.members.get(sid)
        new = m is None
        if m is None:
            m = Member(sid, event.account, ts, event.event_id, None, str(event.src_ip), ev.prefix)
        else:
            m.event_id, m.ts = event.event_id, ts
        m.country, m.asn = ev.geo.country, ev.geo.asn
        m.rtt, m.server = event.min_app_rtt, event.server_id
        m.device = event.client.device_id if event.client is not None else None
        relay = _dict_note(ev, "relay")
        if relay and ev.allowed is None:
            m.relay = relay.get("flagged") is True
            m.relay_score = float(relay.get("score") or 0.0)
            m.relay_gap_ms = relay.get("gap_ms")
            m.relay_excess_ms = relay.get("excess_ms")
        route = _dict_note(ev, "route")
        if route:
            self._attach_route(m, route)
        if new:
            self._add(part, m)
        else:
            self._reindex(part, m)
        return m, new

    def _upsert_trace(self, part: Partition, ev: Enriched, ts: float) -> tuple[Member | None, bool]:
        event = ev.event
        account = ev.account
        route = _dict_note(ev, "route")
        if account is None:
            return None, False
        sid = event.session_id or f"acct:{account}"
        m = part.members.get(sid)
        if m is None:
            if _foreign_sig(route) is None:
                return None, False
            login_id = ev.notes.get("login_event_id")
            m = Member(
                sid, account, ts, login_id if isinstance(login_id, str) else None,
                event.event_id, str(event.src_ip), ev.prefix, ev.geo.country, ev.geo.asn,
            )
            self._attach_route(m, route)
            self._add(part, m)
            return m, True
        had = (m.sig, m.route_known)
        m.trace_event_id = m.trace_event_id or event.event_id
        self._attach_route(m, route)
        if (m.sig, m.route_known) == had:
            return None, False
        self._reindex(part, m)
        return m, False

    @staticmethod
    def _attach_route(m: Member, route: Mapping[str, Any]) -> None:
        m.route_known = True
        m.sig = _foreign_sig(route)
        path = route.get("country_path")
        if isinstance(path, list):
            m.country_path = [str(c) for c in path][:16]

    # ----------------------------------------------------------------- indexing

    def _patterns(self, part: Partition, m: Member) -> list[str]:
        kind = part.kind
        if kind == TPL:
            pats = [f"net:{m.prefix}"]
            if m.sig:
                pats.append(f"route:{m.sig}")
            return pats
        if kind == ROUTE:
            return [part.key] if m.sig and part.key == f"route:{m.sig}" else []
        return [part.key] if m.relay or m.sig else []

    def _add(self, part: Partition, m: Member) -> None:
        m.cluster = part.names.assign(m.account)
        part.members[m.sid] = m
        self._reindex(part, m)

    def _unindex(self, part: Partition, m: Member) -> None:
        for p in m.indexed:
            sids = part.index.get(p)
            if sids is not None:
                sids.pop(m.sid, None)
                if not sids:
                    del part.index[p]
        m.indexed = []

    def _reindex(self, part: Partition, m: Member) -> None:
        self._unindex(part, m)
        m.indexed = self._patterns(part, m)
        for p in m.indexed:
            part.index.setdefault(p, {})[m.sid] = None

    def _arrival(self, part: Partition, ts: float) -> None:
        hl = self.settings.background_half_life_s
        dt = max(0.0, ts - part.rate_ts)
        part.rate_count = part.rate_count * 0.5 ** (dt / hl) + 1.0
        part.rate_ts = max(part.rate_ts, ts)

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
        s = self.settings
        part.last_ts = max(part.last_ts, self.now)
        cutoff = self.now - 2 * s.window_s
        while part.members:
            m = next(iter(part.members.values()))
            if m.ts >= cutoff and len(part.members) <= s.max_members:
                break
            part.members.popitem(last=False)
            self._unindex(part, m)
        for gid in [g.gid for g in part.groups.values() if g.last_seen + s.group_ttl_s < self.now]:
            for acct in part.groups.pop(gid).members:
                if part.accounts.get(acct) == gid:
                    del part.accounts[acct]
        if not part.members and not part.groups:
            self.parts.pop(part.key, None)

    # ------------------------------------------------------------------ grouping

    def _eligible(self, part: Partition, m: Member) -> bool:
        return not (part.kind == ROUTE and m.relay)

    def _covered(self, part: Partition, cand: list[Member]) -> set[str]:
        """Members another partition takes: a skeleton at ``min_size`` (``tpl:``; at 2
        in ``route:``) and, for ``route:``, an exit prefix at ``min_size_unnamed`` (``net:``)."""
        if part.kind == TPL:
            return set()
        s = self.settings
        skels = Counter(k for k in (x.skel for x in cand) if k)
        # traceroutes may be sampled: two serial names of one skeleton on one route
        # already mean the template partition, which sees every login, has the batch
        big = {k for k, c in skels.items() if c >= (2 if part.kind == ROUTE else s.min_size)}
        out = {x.sid for x in cand if x.skel in big}
        if part.kind == ROUTE:
            exits = Counter(x.prefix for x in cand if x.sid not in out)
            out |= {x.sid for x in cand if exits[x.prefix] >= s.min_size_unnamed}
        return out

    def _band(self, ms: list[Member]) -> tuple[float | None, str | None]:
        """The origin of a name-less candidate: median min RTT and commonest server."""
        rtts = sorted(x.rtt for x in ms if x.rtt is not None)
        servers = Counter(x.server for x in ms if x.server)
        med = rtts[len(rtts) // 2] if rtts else None
        return med, (servers.most_common(1)[0][0] if servers else None)

    def _in_band(self, m: Member, med: float | None, server: str | None) -> bool:
        s = self.settings
        if server is not None and m.server is not None and m.server != server:
            return False
        if med is None or m.rtt is None:
            return True
        return abs(m.rtt - med) <= max(s.rtt_tolerance_ms, s.rtt_tolerance * med)

    def _window(self, part: Partition, pattern: str, t: float) -> list[Member]:
        """Ungrouped eligible members sharing ``pattern`` around ``t``.

        The span is ``window_s`` for template partitions and the tighter ``burst_s``
        for name-less ones, whose only name-independent evidence is density.
        """
        w = self.settings.window_s if part.kind == TPL else self.settings.burst_s
        out = []
        for sid in part.index.get(pattern, {}):
            x = part.members[sid]
            if x.group is None and abs(x.ts - t) <= w and self._eligible(part, x):
                out.append(x)
        return out

    def _consider(self, part: Partition, m: Member) -> Findings:
        if m.group is not None or not self._eligible(part, m):
            return Findings()
        patterns = self._patterns(part, m)
        if not patterns:
            return Findings()
        known = part.groups.get(part.accounts.get(m.account, ""))
        if known is not None and (part.kind == TPL or self._may_join(part, known, m)):
            return self._join(part, known, [m])  # a known member's next session
        for g in part.groups.values():
            if set(g.patterns) & set(patterns) and self._may_join(part, g, m):
                cand = self._window(part, g.pattern, m.ts)
                if m.sid not in self._covered(part, cand):
                    return self._join(part, g, [m])
        for p in patterns:
            cand = self._window(part, p, m.ts)
            covered = self._covered(part, cand)
            cand = [x for x in cand if x.sid not in covered]
            if m.sid in covered:
                continue
            a = self._assess(part, p, cand)
            if a is not None:
                return self._form(part, p, a)
        return Findings()

    def _may_join(self, part: Partition, g: Group, m: Member) -> bool:
        """Template groups take late joiners for ``join_window_s``; a name-less group only
        while its burst lasts: ``min_size_unnamed - 1`` members within ``burst_s`` before."""
        s = self.settings
        if part.kind == TPL:
            return m.ts <= g.last_seen + s.join_window_s
        near = [x for x in g.members.values() if 0 <= m.ts - x.ts <= s.burst_s]
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
        f = self._features(part, cand)
        if kind == TPL:
            strong = pattern.startswith("route:") or f["evidence_accounts"] >= s.min_size
            if not strong and f["serial_regularity"] < s.min_regularity:
                return None
        elif f["burst_p"] > s.max_burst_p or f["median_gap_s"] > s.max_unnamed_gap_s:
            return None
        return Assessment(cand, self._score(kind, f), f)

    def _features(self, part: Partition, members: Iterable[Member]) -> dict[str, Any]:
        ms = list(members)
        n = len(ms)
        tss = sorted(x.ts for x in ms)
        serials = [x.serial_no for x in ms if x.serial_no is not None]
        clusters = Counter(x.cluster for x in ms)
        expected = self._expected(part, n)
        gaps = [b - a for a, b in pairwise(tss)]
        return {
            "size": n,
            "span_s": tss[-1] - tss[0],
            "median_gap_s": sorted(gaps)[len(gaps) // 2] if gaps else 0.0,
            "expected_in_window": round(expected, 2),
            "burst_ratio": round(n / max(1.0, expected), 2),
            "burst_p": float(f"{poisson_tail(n, expected):.3g}"),
            "serial_regularity": round(regularity(serials), 3) if len(serials) >= 2 else 0.0,
            "name_cohesion": round(cohesion([x.account for x in ms]), 3),
            "largest_name_cluster": clusters.most_common(1)[0][1] / n,
            "evidence_accounts": sum(x.evidence for x in ms),
            "relay_share": sum(x.relay for x in ms) / n,
            "route_share": Counter(x.sig for x in ms if x.sig).most_common(1)[0][1] / n
            if any(x.sig for x in ms)
            else 0.0,
            "prefix_share": Counter(x.prefix for x in ms).most_common(1)[0][1] / n,
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
        counts = Counter(p for x in a.members for p in self._patterns(part, x))
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
        seen = Counter(part.accounts[x] for x in accts if x in part.accounts)
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
            g.members[m.account] = m
            part.accounts[m.account] = g.gid
            g.first_seen = min(g.first_seen, m.ts)
            g.last_seen = max(g.last_seen, m.ts)
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
        templates = Counter(template(x.account) for x in ms)
        serials = [x.serial_no for x in ms if x.serial_no is not None]
        paths = Counter(">".join(x.country_path) for x in ms if x.country_path)
        relays = [x for x in ms if x.relay]
        evidence: dict[str, Any] = {
            "partition": g.key,
            "pattern": g.pattern,
            "templates": _top(templates, k),
            "serial_runs": [list(r) for r in consecutive_runs(serials, 3)][:k],
            "name_clusters": _top(Counter(x.cluster for x in ms), k),
            "members": [
                {"account": x.account, "ts": _utc(x.ts).isoformat(), "src_ip": x.src_ip,
                 "route": ">".join(x.country_path) or None, "relay": x.relay}
                for x in ms[: self.settings.max_group_members]
            ],
            "first_seen": _utc(g.first_seen).isoformat(),
            "last_seen": _utc(g.last_seen).isoformat(),
            "prefixes": _top(Counter(x.prefix for x in ms), k),
            "route_signatures": _top(Counter(x.sig for x in ms if x.sig), k),
            "country_paths": _top(paths, k),
            "relay": {
                "flagged_accounts": len(relays),
                "exits": _top(Counter(x.prefix for x in relays), k),
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
        devices = Counter(x.device for x in ms if x.device)
        return {
            "median_app_rtt_ms": rtts[len(rtts) // 2] if rtts else None,
            "app_rtt_range_ms": [rtts[0], rtts[-1]] if rtts else None,
            "servers": _top(Counter(x.server for x in ms if x.server), self.settings.max_evidence_items),
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
            ts=_utc(m.ts),
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
        for key, gid in list(self.dirty):
            part = self.parts.get(key)
            g = part.groups.get(gid) if part is not None else None
            if part is not None and g is not None:
                out.extend(self._emit(part, g, []))
        self.dirty.clear()
        for key in list(self.parts):
            part = self.parts.get(key)
            if part is not None and part.last_ts + 2 * self.settings.window_s < self.now:
                self._evict(part)
        return out

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
                m = Member(**md)
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
                    m = p.members.get(md["sid"]) or Member(**md)
                    g.members[m.account] = m
                    p.accounts[m.account] = g.gid
                p.groups[g.gid] = g
            self.parts[p.key] = p


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
