"""The farm detector's data: settings, members, groups, partitions, and small helpers.

A :class:`Partition` is what one group key holds (its members in a window, the
members indexed under each connection pattern, its groups and its background
arrival count); a :class:`Group` is one farm as alerted; a :class:`Member` one
account session as a partition knows it. Nothing here decides anything.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Mapping, MutableSequence, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

from pathsentry.detectors.bounded import remember
from pathsentry.detectors.farm.families import family_template
from pathsentry.detectors.names import NameIndex
from pathsentry.detectors.settings import load_settings

#: RTTs of a partition's background kept (:attr:`Partition.bg_rtts`)
BACKGROUND_RTTS = 64

__all__ = ["BACKGROUND_RTTS", "HOP", "NET", "ROUTE", "TPL", "Assessment", "FarmSettings", "Group",
           "LineLogins", "Member", "Partition", "Pool", "Sightings", "part_kind", "pool_class",
           "settings_from"]

TPL, ROUTE, NET, HOP = "tpl", "route", "net", "hop"
_TPL_, _ROUTE_, _NET_, _HOP_ = f"{TPL}:", f"{ROUTE}:", f"{NET}:", f"{HOP}:"


@dataclass(frozen=True, slots=True)
class FarmSettings:
    """Thresholds and bounds (``[detectors.farm]`` in ``pathsentry.toml``)."""

    #: the window (s) a family's members, or a name-less burst paced minutes apart, are gathered in
    window_s: float = 3600.0
    #: a found family group takes late joiners this long (s) after its last member
    join_window_s: float = 1800.0
    #: accounts of one family a group needs
    min_size: int = 5
    #: accounts a group without a shared name needs
    min_size_unnamed: int = 5
    #: share of a family's serials that must run consecutively when regularity is its evidence
    min_regularity: float = 0.6
    #: the most a burst's Poisson probability against the background may be
    max_burst_p: float = 1e-4
    #: the shortest span (s) a burst is judged over (logins seconds apart)
    burst_s: float = 300.0
    #: the floor of the RTT band one farm room's machines share (ms)
    rtt_tolerance_ms: float = 1.0
    #: robust deviations (MAD x 1.4826) of its members' RTTs, or of a login's own noise, the band
    #: spans
    rtt_spread_k: float = 3.0
    #: the most a candidate's RTT spread may be, as a share of the pattern's other accounts'
    rtt_background_ratio: float = 0.5
    #: half-life (s) of a partition's slow arrival-rate estimate
    background_half_life_s: float = 6 * 3600.0
    #: half-life (s) of its fast one (the larger expectation wins: traffic has a time of day)
    background_fast_half_life_s: float = 3600.0
    #: the weight of the population prior in a partition's background rate, in seconds
    #: of the partition's own observation (:func:`.background.expected`), and of the
    #: default rate in the population's (:func:`.background.prior_rate`)
    background_prior_s: float = 3600.0
    #: the documented default arrival rate of one partition (logins per hour) that the
    #: class's pooled rate is shrunk toward, weighted as ``background_prior_s`` seconds
    #: of one partition's observation: what a cold class (a young or small world, whose
    #: few arrivals are mostly the farms themselves) expects (:func:`.background.prior_rate`)
    background_prior_rate_h: float = 1.0
    #: an idle group is kept this long (s) for late joiners
    group_ttl_s: float = 86400.0
    #: partitions kept (least recently used dropped)
    max_keys: int = 100_000
    #: members per partition (those older than 2 x window_s first dropped)
    max_members: int = 512
    #: a found group's alert is re-emitted with a join that grows it by this share of its
    #: members at its last version; a smaller join waits for the next flush (its members'
    #: flags go out at once): a farm of n accounts costs O(n) of alert building, not O(n^2)
    alert_regrow_share: float = 0.1
    #: members per group
    max_group_members: int = 1000
    #: two ``farm_group`` alerts are parts of one room when they share at least this
    #: many accounts (:mod:`.rooms`)...
    room_min_shared: int = 3
    #: ...and those are at least this share of the smaller alert's accounts
    room_min_share: float = 0.25
    #: alerts the room merger keeps (least recently updated dropped first)
    room_max_parts: int = 20_000
    #: items of each list in an alert's evidence (the counts say how many in all)
    max_evidence_items: int = 10
    #: the most accounts an honest household logs in on one home line within
    #: ``window_s`` (the floor of the learned limit, :func:`.lines.line_limit`)
    home_accounts: int = 5
    #: a machine's login of a new account this soon (s) after its previous login, under
    #: another account, on the /24's home lines is an account switch (:mod:`.lines`): a
    #: room's machine cycles through its accounts a minute or so apart, a household's
    #: players and a PC bang's seat take turns at sessions of an hour or more
    switch_s: float = 300.0
    #: the prior share of a class's home-line logins that are such a switch, before its
    #: own logins teach it (:func:`.lines.switch_share`)
    switch_prior_share: float = 0.01
    #: the weight of that prior share, in logins
    switch_prior_logins: float = 100.0
    #: machines (client device ids) and home-line addresses a ``hop:`` partition keeps
    #: in view (least recently seen dropped first; :mod:`.hops`)
    hop_max_devices: int = 65_536
    #: the prior share of a class's machines that carry two accounts through home lines
    #: of two /24s within ``window_s`` (:mod:`.hops`)
    hop_prior_share: float = 0.01
    #: the weight of that prior share, in machines
    hop_prior_devices: float = 100.0
    #: how long a hosting range's or a route's partition remembers which accounts each
    #: machine carried (at least twice ``window_s``): a room cycling each machine through
    #: a new account every three hours shows three on it within six (:mod:`.machines`)
    cycle_horizon_s: float = 21600.0
    #: the prior share of a hosting range's or a route's machines that carry three
    #: accounts or more within ``cycle_horizon_s`` (a room's machine cycling through its
    #: accounts; a player brings one, or a main and an alt: :func:`.machines.cycling_burst`)
    cycle_prior_share: float = 0.01
    #: the weight of that prior share, in machines
    cycle_prior_machines: float = 100.0
    #: the shortest time to carry a machine from one home to another and log in again:
    #: a machine's switch of /24 between consecutive logins sooner than this is a move
    #: of its own (a proxy handed it another exit), a slower one only a /24 more
    hop_travel_s: float = 300.0
    #: a login's RTT excess is in its class's tail above this learned quantile of the
    #: class's excesses (:func:`.suspicion.rtt_suspected`)
    excess_quantile: float = 0.95
    #: the deviation (ms) of an honest home line's RTT excess the class's prior assumes
    #: before its own logins teach the tail: the relay detector's expectation holds a
    #: home line's typical access latency, and a line's access varies around it by about
    #: that much (:data:`pathsentry.detectors.physics.ACCESS_TYPICAL_MS`, residential:
    #: 6 ms; the prior's tail at ``excess_quantile`` then starts near 10 ms)
    excess_prior_sd_ms: float = 6.0
    #: the weight of that prior, in logins of the class (0: no prior, a class with
    #: little history suspects nothing; :func:`.suspicion.excess_prior`)
    excess_prior_logins: float = 100.0


def settings_from(raw: Mapping[str, Any]) -> FarmSettings:
    """Build :class:`FarmSettings` from the ``[detectors.farm]`` table (the shared loader:
    values coerced to their defaults' types, unknown keys reported)."""
    settings: FarmSettings = load_settings("farm", raw, FarmSettings)[0]
    return settings


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
    #: the exit (:func:`.exits.exit_of`): an AS of a hosting network, else the /24
    exit: str = ""
    #: the TCP handshake RTT of the login (to the client through an L3 tunnel, to the
    #: relay through an L4 one), when the server measured it
    tcp: float | None = None
    #: noise of ``rtt``, from the login's own samples (:func:`.exits.jitter`)
    jitter: float | None = None
    #: another account (not of its name family) used its machine while it was indexed
    #: in a name-less partition (:mod:`.machines`)
    on_shared: bool = False
    #: the geo source's kind of network of its address (``residential``, ``mobile``,
    #: ``business``, ``hosting``…): a residential address is one subscriber line
    access: str | None = None
    #: its login is counted in its class's background (:mod:`.suspicion`)
    in_background: bool = False
    #: its login is counted in its partition's arrivals (:func:`.background.arrive`)
    arrived: bool = False
    #: on a home line, its machine's previous login on the /24's home lines was another
    #: account's, less than ``switch_s`` before (:func:`.lines.record`)
    switched: bool = False
    #: on a home line, the seconds since its machine's previous login on the /24's home
    #: lines under another account, when that was less than ``window_s`` before and its
    #: account was new to the machine (a slow switch: :func:`.lines.record`)
    switch_gap: float | None = None
    #: left the window and kept on its machine (:func:`.machines.keep`): it ties machines
    #: only
    kept: bool = False

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
    #: members at the last version emitted
    emitted: int = 0
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
        """The commonest generalised name template (family partitions only)."""
        if not self.key.startswith(_TPL_) or not self.members:
            return None
        n = len(self.members)
        known = self._template
        if known is not None and known[0] == n:
            return known[1]
        tpl = family_template(self.members) or ""
        self._template = (n, tpl)
        return tpl


@dataclass(slots=True)
class Pool:
    """What the partitions of one class (:func:`pool_class`) have taught together: the
    population prior of a cold partition (:mod:`.background`, :mod:`.machines`,
    :mod:`.suspicion`).

    ``count``: their arrivals since ``first_ts``, decayed with ``background_half_life_s``
    (at ``ts``); ``parts``: the live partitions of the class; ``seen``/``shared``: their
    background members counted, and of them those on a shared machine; ``lines``:
    the accounts per home-line address, ``sw_seen``/``sw_switched`` the home-line logins
    that switched account on their machine (:mod:`.lines`)."""

    count: float = 0.0
    ts: float = 0.0
    first_ts: float = 0.0
    parts: int = 0
    seen: float = 0.0
    shared: float = 0.0
    #: home-line addresses that reached their k-th account in a window, at ``k - 1``
    #: (:mod:`.lines`)
    lines: list[float] = field(default_factory=list)
    #: home-line logins on a known machine that left their window in no group, and of
    #: them those that switched account on their machine (:mod:`.lines`)
    sw_seen: float = 0.0
    sw_switched: float = 0.0
    #: and of them those that switched within ``window_s`` (a slow switch)
    sw_slow: float = 0.0
    #: the logins of its family partitions counted (those that joined a group taken
    #: out again), and of them those with a relay score above zero (:mod:`.suspicion`)
    rs_seen: float = 0.0
    rs_scored: float = 0.0
    #: of those logins on home lines and hosting exits, the relay detector's RTT excess
    #: (ms over what the exit's place and history explain), 1-ms bins (:mod:`.suspicion`)
    excess: list[float] = field(default_factory=list)
    excess_seen: float = 0.0


@dataclass(slots=True)
class LineLogins:
    """A subscriber /24's home-line members (those indexed under its ``line:`` pattern)
    by machine (client device id) and by address, each by session id (:mod:`.lines`):
    a login's machine and address are looked up, not found by a scan of the /24."""

    by_device: dict[str, dict[str, Member]] = field(default_factory=dict)
    by_address: dict[str, dict[str, Member]] = field(default_factory=dict)


@dataclass(slots=True)
class Sightings:
    """A ``hop:`` partition's view of the machines on home lines (:mod:`.hops`).

    ``devices``: each machine not yet seen on two /24s, its logins within the window
    (least recently seen first); ``addresses``: each home-line address, the machines
    seen on it and when; ``seen``/``hopped``: machines counted as they came into view,
    and of them those that carried two accounts through two /24s."""

    devices: OrderedDict[str, list[Member]] = field(default_factory=OrderedDict)
    addresses: OrderedDict[str, dict[str, float]] = field(default_factory=OrderedDict)
    seen: float = 0.0
    hopped: float = 0.0


@dataclass(slots=True)
class Partition:
    key: str
    #: the partition family: ``tpl``, ``route``, ``net`` or ``hop``
    kind: str = field(init=False)
    members: OrderedDict[str, Member] = field(default_factory=OrderedDict)
    #: pattern -> the members indexed under it (by session id, in indexing order)
    index: dict[str, dict[str, Member]] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    accounts: dict[str, str] = field(default_factory=dict)
    last_ts: float = 0.0
    first_ts: float = 0.0
    rate_count: float = 0.0
    rate_fast: float = 0.0
    rate_ts: float = 0.0
    #: the members' name clusters, made with the first member named (:meth:`name_index`):
    #: most partitions of a busy worker are exits and routes whose members come and go,
    #: and an empty index costs about 0.4 KiB
    names: NameIndex | None = None
    #: name-less partitions (one pattern, the key): the indexed members by time, and
    #: each one's indexing sequence number (the order of ``index[key]``)
    times: _TimeIndex | None = None
    stamps: dict[str, int] = field(default_factory=dict)
    #: minimum RTTs of the pattern's members that left the window in no group: the
    #: background an RTT band must stand out of (the latest ``BACKGROUND_RTTS``)
    #: (packed doubles: every exit partition keeps up to ``BACKGROUND_RTTS``, which as
    #: float objects in a list would take about four times the memory)
    bg_rtts: MutableSequence[float] = field(default_factory=lambda: array("d"))
    #: name-less partitions: the accounts on each device of the indexed members, and
    #: the background members (left the window in no group) counted, and of them those
    #: on a machine shared with another account (:mod:`.machines`)
    machines: dict[str, list[Member]] = field(default_factory=dict)
    #: hosting ranges and routes: the members that left the window, oldest first, kept
    #: on their machines for ``cycle_horizon_s`` (:func:`.machines.keep`)
    past: deque[Member] | None = None
    #: name-less partitions: the machines each exit address carried (members on
    #: :attr:`machines`, kept ones included), how many accounts each
    hosts: dict[str, dict[str, int]] = field(default_factory=dict)
    bg_seen: float = 0.0
    bg_shared: float = 0.0
    #: the population prior shared by the partitions of its class (set by the detector)
    pool: Pool | None = None
    #: a ``hop:`` partition's machines and addresses in view (:mod:`.hops`)
    hops: Sightings | None = None
    #: a subscriber /24's home-line members by machine and address (:mod:`.lines`),
    #: made with the first one
    lines: LineLogins | None = None

    def __post_init__(self) -> None:
        self.kind = part_kind(self.key)

    def name_index(self) -> NameIndex:
        """:attr:`names`, made if there is none yet."""
        names = self.names
        if names is None:
            names = self.names = NameIndex(max_clusters=256)
        return names


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
        hit = remember(_UTC, ts, (dt, dt.isoformat()), _UTC_MAX)
    return hit


def _utc(ts: float) -> datetime:
    return _utc_iso(ts)[0]


def _iso(ts: float) -> str:
    """``_utc(ts).isoformat()``"""
    return _utc_iso(ts)[1]


def _median_gap(tss: list[float]) -> float:
    """The median gap between consecutive (sorted) instants (the upper one of two)."""
    gaps = [b - a for a, b in pairwise(tss)]
    return sorted(gaps)[len(gaps) // 2] if gaps else 0.0



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



def pool_class(key: str) -> str:
    """The class whose partitions share a :class:`Pool`: the kind, and for ``net:`` a
    hosting AS apart from a subscriber /24.

    >>> pool_class("net:AS64500"), pool_class("net:203.0.113.0/24"), pool_class("route:ab")
    ('net:AS', 'net:/24', 'route')
    """
    kind = part_kind(key)
    if kind != NET:
        return kind
    return "net:AS" if key.startswith("net:AS") else "net:/24"


def part_kind(key: str) -> str:
    """The partition family of a key.

    >>> part_kind("tpl:xiaopai#"), part_kind("net:203.0.113.0/24")
    ('tpl', 'net')
    """
    return key.partition(":")[0]
