"""The connection pattern of a login: its exit, its route, its relay facts, its origin.

- **Exit.** A farm leaves through addresses of one network, often several /24s of
  one hosting AS, so the exit of a hosting or relay network (the geo source's
  ``kind``) is the AS (``AS<asn>``); a residential or mobile exit (a proxy on a
  subscriber line) is its /24, as is any exit whose AS or kind is unknown; such a
  /24 is a farm's exit only when its accounts crowd onto few addresses (at least
  two accounts per address on average) -- a proxy is one address or a few,
  neighbours are one address each. Within a name family the exit is the AS
  whatever its kind (:func:`network_of`). The /24s actually used show in the
  alert's evidence.
- **Route.** The route detector's foreign-origin signature (``notes["route"]``).
- **Relay.** The relay detector's verdict (``notes["relay"]``).
- **Origin (RTT band).** Accounts in one farm room behind one relay see about the
  same minimum application RTT; several machines spread it by a few ms, and the
  access jitter and the game server's tick (its answer waits a random phase of it)
  add noise. The tolerance is learned from the candidate itself: ``k`` robust
  deviations (MAD x 1.4826) of its members' minimum RTTs, or ``k`` times the median
  noise of a login's minimum estimated from its own samples (:func:`jitter`),
  whichever is larger (``rtt_tolerance_ms`` is the floor). The TCP handshake RTT,
  where the server measured it, must fit a band of its own (``k`` robust
  deviations, and at least half the application band, which holds the machines'
  spread without the server tick's noise): through an L3 tunnel it is the path to
  the room, through an L4 relay the path to the relay -- a VPN user beside an L3
  farm differs by tens of ms. A band must
  also *stand out*: when the pattern carries at least as many other accounts as the
  candidate (or a background of at least :data:`MIN_BACKGROUND` accounts that left
  the window in no group), the candidate's spread must stay below
  ``rtt_background_ratio`` times theirs -- a relay service's unrelated users come
  from everywhere, a farm from one room.
- **Exit addresses.** A farm room leaves through a few hosts of its relay, several
  accounts per address; a relay service's unrelated users are spread over its
  address pool. How often the pattern's other accounts in the window share their
  exit address with another account (:func:`address_share`) is the chance that a
  background arrival does; the burst judge thins the background by it when it
  counts the candidate's accounts on shared addresses (:func:`on_shared_addresses`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pathsentry.detectors.base import Enriched
from pathsentry.detectors.farm.lines import LINE_KINDS, line_pattern
from pathsentry.detectors.farm.model import (
    _NET_,
    _ROUTE_,
    HOP,
    NET,
    ROUTE,
    TPL,
    FarmSettings,
    Member,
    Partition,
)
from pathsentry.detectors.physics import MAD_SIGMA, mad

__all__ = [
    "MIN_BACKGROUND",
    "SHARED_EXIT_KINDS",
    "Band",
    "address_share",
    "band",
    "dict_note",
    "exit_of",
    "foreign_sig",
    "hosted_exit",
    "jitter",
    "kindred",
    "machine_centred",
    "min_noise",
    "network_of",
    "on_shared_addresses",
    "patterns_of",
    "relay_facts",
    "stands_out",
]

#: Network kinds (``GeoInfo.kind``) whose exits are whole ASes (:func:`exit_of`).
SHARED_EXIT_KINDS = frozenset({"hosting", "datacenter", "relay"})
#: Background RTTs enough to judge a band against, whatever the candidate's size.
MIN_BACKGROUND = 8

NO_RELAY: tuple[bool, float, Any, Any] = (False, 0.0, None, None)


def exit_of(asn: int | None, prefix: str, kind: str | None) -> str:
    """The exit of a login: the AS of a hosting (or relay) network, whose /24s one
    operator rents side by side; the /24 of any other network (a residential ISP's AS
    holds millions of unrelated subscribers) or when the AS is unknown.

    >>> exit_of(64600, "45.76.1.0/24", "hosting"), exit_of(4766, "203.0.113.0/24", "residential")
    ('AS64600', '203.0.113.0/24')
    """
    return f"AS{asn}" if asn is not None and kind in SHARED_EXIT_KINDS else prefix


def dict_note(ev: Enriched, name: str) -> dict[str, Any]:
    """``ev.notes[name]`` when it is a dict, else ``{}``."""
    v = ev.notes.get(name)
    return v if isinstance(v, dict) else {}


def network_of(asn: int | None, prefix: str) -> str:
    """The network of a login within a name family: its AS whatever its kind (the
    names already tie the accounts together; a farm's residential proxies spread over
    /24s of one ISP), the /24 when the AS is unknown.

    >>> network_of(4766, "203.0.113.0/24"), network_of(None, "203.0.113.0/24")
    ('AS4766', '203.0.113.0/24')
    """
    return f"AS{asn}" if asn is not None else prefix


def relay_facts(relay: Mapping[str, Any]) -> tuple[bool, float, Any, Any]:
    """``Member.relay``, ``relay_score``, ``relay_gap_ms``, ``relay_excess_ms`` of a note."""
    return (relay.get("flagged") is True, float(relay.get("score") or 0.0),
            relay.get("gap_ms"), relay.get("excess_ms"))


def foreign_sig(route: Mapping[str, Any]) -> str | None:
    """The route signature of a foreign-origin route note (``None`` otherwise)."""
    sig = route.get("signature")
    if route.get("foreign_origin") is True and isinstance(sig, str) and sig:
        return sig
    return None


def jitter(samples: Sequence[float]) -> float | None:
    """How far the minimum of one login's ``n`` RTT samples may stray: the samples' own
    spread above their minimum (median minus minimum) times ``2 / (n - 1)`` -- for
    ``n`` draws of a uniform delay (a server tick's phase, access jitter) that is the
    standard deviation of the minimum. ``None`` below two samples.

    >>> jitter([41.0, 40.0, 47.0]), jitter([40.0])
    (1.0, None)
    >>> jitter([66.0, 118.0, 96.5, 123.5, 80.0])
    15.25
    """
    n = len(samples)
    if n < 2:
        return None
    xs = sorted(samples)
    return (xs[n // 2] - xs[0]) * 2 / (n - 1)


def patterns_of(part: Partition, m: Member) -> tuple[str, ...]:
    """The connection patterns ``m`` is indexed under in ``part``."""
    kind = part.kind
    if kind == TPL:  # the exit, the route, and the whole family (its batch, any exit)
        ex = _NET_ + network_of(m.asn, m.prefix)
        return (ex, _ROUTE_ + m.sig, part.key) if m.sig else (ex, part.key)
    if kind == ROUTE:
        return (part.key,) if m.sig and part.key == _ROUTE_ + m.sig else ()
    if kind == HOP:  # its members are the machines seen hopping (:mod:`.hops`)
        return (part.key,)
    assert kind == NET
    # a hosting exit's every account is its member (one farm's logins the relay
    # detector flagged only in part, or not at all, in one partition: :func:`hosted_exit`)
    pats: tuple[str, ...] = (part.key,) if m.relay or hosted_exit(part.key) else ()
    return pats + home_line(part.key, m.access)


def home_line(key: str, access: str | None) -> tuple[str, ...]:
    """The home-line pattern a login on a home line (:data:`.lines.LINE_KINDS`) is
    indexed under in a subscriber /24's partition ``key`` (:mod:`.lines`), if any."""
    if access not in LINE_KINDS:
        return ()
    line = line_pattern(key)
    return (line,) if line else ()


def hosted_exit(key: str) -> bool:
    """Whether a ``net:`` partition key is a hosting (or relay) network's AS: the
    partition that takes every login through its exit, relay-flagged or not (the
    foreign-routed ones too, which ``route:`` leaves to it).

    >>> hosted_exit("net:AS64600"), hosted_exit("net:203.0.113.0/24")
    (True, False)
    """
    return key.startswith(_NET_ + "AS")


@dataclass(frozen=True, slots=True)
class Band:
    """The origin of a candidate: median minimum RTT, tolerance, commonest server."""

    median: float | None
    tolerance: float
    server: str | None
    #: the same for the TCP handshake RTT (``None``: too few members measured it)
    tcp_median: float | None = None
    tcp_tolerance: float = 0.0

    def share(self, background: Sequence[float]) -> float:
        """The share of ``background`` RTTs inside the band (Laplace-smoothed; 1.0 with
        fewer than :data:`MIN_BACKGROUND` of them or without a median).

        >>> Band(40.0, 2.0, None).share([10.0, 41.0, 80.0, 120.0, 60.0, 70.0, 90.0, 39.0])
        0.3
        """
        if self.median is None or len(background) < MIN_BACKGROUND:
            return 1.0
        inside = sum(1 for x in background if abs(x - self.median) <= self.tolerance)
        return (inside + 1) / (len(background) + 2)

    def holds(self, m: Member) -> bool:
        if self.server is not None and m.server is not None and m.server != self.server:
            return False
        if self.tcp_median is not None and m.tcp is not None \
                and abs(m.tcp - self.tcp_median) > self.tcp_tolerance:
            return False
        if self.median is None or m.rtt is None:
            return True
        return abs(m.rtt - self.median) <= self.tolerance


def min_noise(ms: Iterable[Member]) -> float | None:
    """The (upper) median :func:`jitter` of the members' logins: how far a login's
    minimum RTT typically strays among them (``None`` when no login had two samples)."""
    jits = sorted(x.jitter for x in ms if x.jitter is not None)
    return jits[len(jits) // 2] if jits else None


def band(ms: Sequence[Member], s: FarmSettings) -> Band:
    """The :class:`Band` of ``ms`` (see the module docstring)."""
    rtts = sorted(x.rtt for x in ms if x.rtt is not None)
    servers = Counter([x.server for x in ms if x.server])
    med = rtts[len(rtts) // 2] if rtts else None
    tol = max(s.rtt_tolerance_ms, s.rtt_spread_k * MAD_SIGMA * mad(rtts),
              s.rtt_spread_k * (min_noise(ms) or 0.0))
    tcps = sorted(x.tcp for x in ms if x.tcp is not None)
    tcp_med = tcps[len(tcps) // 2] if 2 * len(tcps) >= len(ms) else None
    tcp_tol = max(s.rtt_tolerance_ms, s.rtt_spread_k * MAD_SIGMA * mad(tcps), tol / 2)
    return Band(med, tol, servers.most_common(1)[0][0] if servers else None, tcp_med, tcp_tol)


def machine_centred(ms: Sequence[Member]) -> list[float]:
    """The minimum RTTs of ``ms``, each machine's (client device id carrying two or more
    of them) moved to the median of all: a room's machines each have their own access
    latency, and the spread that tells a room from a crowd is within a machine.

    >>> a = Member("1", "a", 0.0, None, None, "", "", rtt=20.0, device="d1")
    >>> b = Member("2", "b", 0.0, None, None, "", "", rtt=22.0, device="d1")
    >>> c = Member("3", "c", 0.0, None, None, "", "", rtt=30.0, device="d2")
    >>> d = Member("4", "d", 0.0, None, None, "", "", rtt=31.0, device="d2")
    >>> e = Member("5", "e", 0.0, None, None, "", "", rtt=90.0)
    >>> machine_centred([a, b, c, d, e])
    [29.0, 31.0, 29.5, 30.5, 90.0]
    """
    rtts = sorted(x.rtt for x in ms if x.rtt is not None)
    if not rtts:
        return []
    med = rtts[len(rtts) // 2]
    by_dev: dict[str, list[float]] = {}
    for x in ms:
        if x.device and x.rtt is not None:
            by_dev.setdefault(x.device, []).append(x.rtt)
    centre = {d: sorted(v)[len(v) // 2] if len(v) % 2 else sum(sorted(v)[len(v) // 2 - 1:
              len(v) // 2 + 1]) / 2 for d, v in by_dev.items() if len(v) > 1}
    return [x.rtt - centre[x.device] + med if x.device in centre else x.rtt
            for x in ms if x.rtt is not None]


def stands_out(cand: Sequence[Member], others: Sequence[Member], background: Sequence[float],
               s: FarmSettings) -> bool:
    """Whether the candidate's RTT spread is tight beside the pattern's other accounts:
    the ``background`` (accounts that left the window in no group) and the ``others``
    in the window now that are neither in a group nor a name family's batch (the farms
    beside it on a small exit are not its users).

    Too few to judge (fewer than the candidate, and fewer than :data:`MIN_BACKGROUND`
    in the background): ``True``. The allowance beside the ratio is the tolerance floor
    and the candidate's own noise: the median :func:`jitter` of its logins' minima (on a
    long-tick server one machine's minima stray by the tick's phase, which no room can
    tighten: :func:`min_noise`).
    """
    theirs = [*background, *(x.rtt for x in others if x.rtt is not None)]
    ours = machine_centred(cand)
    if len(theirs) < max(2, min(len(ours), MIN_BACKGROUND)):
        return True
    return mad(ours) <= (s.rtt_background_ratio * mad(theirs)
                         + (s.rtt_tolerance_ms + (min_noise(cand) or 0.0)) / MAD_SIGMA)


def on_shared_addresses(ms: Sequence[Member]) -> list[Member]:
    """The members of ``ms`` whose exit address another account of ``ms`` also used."""
    accts: dict[str, set[str]] = {}
    for x in ms:
        accts.setdefault(x.src_ip, set()).add(x.account)
    return [x for x in ms if len(accts[x.src_ip]) > 1]


def address_share(part: Partition, pattern: str, live: Collection[str]) -> float:
    """The share of the pattern's ungrouped accounts in the partition now, those in
    ``live`` (the session ids under judgement) excepted, that shared their exit address
    with another of them, Laplace-smoothed (0.5 with none): the chance that an
    unrelated user of the exit lands on an address another one uses."""
    others = [x for x in part.index.get(pattern, {}).values()
              if x.sid not in live and x.group is None]
    shared = len(on_shared_addresses(others))
    return (shared + 1.0) / (len(others) + 2.0)


def kindred(ms: list[Member], pattern: str) -> list[Member]:
    """The members that share their machine (client device id), their exit address or
    their /24 with another member: a room's accounts share exits and machines, a VPN
    user passing by shares neither. In a hosting range (``net:AS…``) a /24 counts when
    two others share it, and only for an account whose machine is unknown (known from
    its traceroute alone): the range's many unrelated users meet in its few /24s by
    chance, each from a machine of its own, so an account seen on its own machine
    through its own address is a passer-by whatever /24 it shares (and does not count
    toward a /24's crowd); along a route they come from their own /24s."""
    addresses = Counter([x.src_ip for x in ms])
    devices = Counter([x.device for x in ms if x.device])

    def shares(x: Member) -> bool:
        return addresses[x.src_ip] > 1 or bool(x.device and devices[x.device] > 1)

    crowd = 1
    if pattern.startswith(_NET_ + "AS"):
        crowd = 2
        ms = [x for x in ms if not x.device or shares(x)]
    prefixes = Counter([x.prefix for x in ms])
    return [x for x in ms if prefixes[x.prefix] > crowd or shares(x)]
