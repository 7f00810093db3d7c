"""World parameters: everything the real world does not fix, drawn per world.

A :class:`WorldParams` says how one simulated world behaves beyond its seed and size:
how the game servers answer their application ping, how slow and jittery the access
networks are, how much each benign population weighs, how the origins fail, which ISPs
inject and how their forgeries look, and how each farm is named, paced and wired.

``fixed_params()`` is the single world the simulator always produced (its events are
byte for byte those of earlier releases); ``draw_params(seed, hours)`` draws a new
world from the ranges below, so that a detector measured on many worlds is measured
on variety, not on one set of constants. Every field survives a JSON round trip
(``to_json`` / ``from_json``), which is what ``pathsentry simulate --params`` takes.

Ranges drawn by :func:`draw_params` (uniform unless stated):

==========================  ===========================================================
application ping            per server: fixed processing cost 0-10 ms; tick none (30 %)
                            or 8-100 ms, each sample waiting a uniform phase of it;
                            1-10 samples per login (lower bound 1-4); ``tcp_rtt_ms``
                            missing for 0-30 % of clients (none in 30 % of worlds)
access                      per world: access latency x0.8-1.3, jitter x0.6-2.0; per
                            access technology (FTTH, cable, DSL, LTE, …) on top: latency
                            x0.7-1.4, jitter x0.6-1.8; path inflation from [1.2-1.8]
                            to +0.5-1.5 above that
populations                 each benign class's count x0.5-2.0; 0-4 crowds of honest
                            players sharing a popular name stem; load curve peaking at
                            18-23 h KST with a night floor of 5-30 % of the peak
origins                     genuine 4xx/5xx answers 0-3 %; 0-2 outages of 5-40 min hitting
                            every network; 0-1 maintenance window of 10-60 min; 0-50 % of
                            plaintext requests redirected to https; an API origin off the
                            CDN (60 %) whose answers' TTL differs from its SYN-ACK's by
                            -2..+1 on every line (a TCP proxy in front of it)
unmarked failures           drawn from a stream of their own (every other draw of a
                            world is unchanged): each outage is unmarked with the
                            world's share, 0 % (30 % of worlds), 100 % (20 %) or 0-100 %:
                            DNS or anycast fails the origin over to a box of its own that
                            answers without the CDN's marks (no cf-ray, ``server`` nginx,
                            openresty or Apache, its own header set and page); it hits
                            ws, www or both (the other host keeps the CDN's error), sits
                            at kr-sel-1, kr-pus-1 or jp-tyo-1 (the connect RTT is its),
                            0-6 hops farther than the edge (its SYN-ACK's TTL), answers
                            TTL -2..+1 from its SYN-ACK's (0 in half: the box answers
                            both) and a first byte x0.3-3 the edge's after the connect
injectors                   1-3 ISPs (KT, SK Broadband, LG Uplus, SK Telecom mobile), each
                            on 1-4 lines, port 80 and/or 8080, a 3-10 h window that meets
                            the world's span, 30-100 % of matching flows, answering with
                            a 200 page, a 302 redirect or a block page, TTL delta 0-3,
                            the TTLs visible to 0-100 % of client reports
farms                       2-5 groups of 5-60 accounts; logins 3 s to 5 min apart; a burst
                            every 2-8 h; exits on 1-4 /24s of one hosting AS with 1-6
                            hosts, or residential exits at home; 1-4 machines with their
                            own access latency; relay L4, L3 or residential proxy; names:
                            serial at the end, middle or start, padded or not, rotating
                            letter suffixes or prefixes, separators, mixed case, short
                            stems, Hangul or CJK stems, or no shared name at all
start                       the world starts at a random hour of the day (0-23 KST)
==========================  ===========================================================

>>> p = draw_params(5, 6.0)
>>> WorldParams.from_json(p.to_json()) == p, p.name
(True, 'random')
>>> draw_params(5, 6.0) == p, draw_params(6, 6.0) == p
(True, False)
>>> fixed_params().name, fixed_params().injectors is None
('fixed', True)
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

__all__ = [
    "DIURNAL",
    "FARM_FAMILIES",
    "Failover",
    "FarmParams",
    "InjectorParams",
    "OriginWindow",
    "ServerPing",
    "WorldParams",
    "demo_params",
    "draw_params",
    "fixed_params",
    "loop_overrun",
    "parse_params",
    "server_ids",
    "with_overrun",
]

#: Relative login intensity per KST hour of the fixed world (evening peak, early-morning trough).
DIURNAL: tuple[float, ...] = (
    0.55, 0.35, 0.22, 0.14, 0.10, 0.10, 0.14, 0.22, 0.30, 0.35, 0.40, 0.45,
    0.55, 0.55, 0.55, 0.60, 0.70, 0.80, 0.90, 0.97, 1.00, 1.00, 0.92, 0.75,
)

#: How farm operators name their accounts (``none``: no shared name; the route carries the group).
FARM_FAMILIES: tuple[str, ...] = (
    "serial_end", "unpadded", "serial_start", "serial_middle", "letter_suffix",
    "letter_prefix", "separator", "mixed_case", "short_stem", "hangul", "cjk", "none",
)
#: Benign populations whose size a world scales.
BENIGN_CLASSES: tuple[str, ...] = (
    "pc_bang", "campus", "cgnat", "lte", "cloud_gaming", "rural_dsl", "game_relay",
    "family_names", "squatted_hop",
)
#: Access technologies whose latency and jitter a world scales (see :mod:`pathsentry.sim.physics`).
ACCESS_KINDS: tuple[str, ...] = ("ftth", "cable", "dsl", "rural_dsl", "lte", "campus", "business",
                                 "datacenter")
#: ISPs that may run an injecting box (sim network names).
INJECTOR_ISPS: tuple[str, ...] = ("KT", "SKB", "LGU", "SKT")
_SERVERS = ("kr-sel-1", "kr-pus-1", "kr-dje-1", "jp-tyo-1")


def server_ids() -> tuple[str, ...]:
    """The simulated game servers, in the order of :attr:`WorldParams.servers`."""
    return _SERVERS


@dataclass(frozen=True, slots=True)
class ServerPing:
    """How one game server answers the application ping: on its game loop.

    Each sample adds ``cost_ms`` plus a uniform phase of ``tick_ms`` (0: no tick).
    """

    cost_ms: float = 0.0
    tick_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class OriginWindow:
    """A time window of the origin's own failure: ``at`` is a fraction of the world's span."""

    at: float
    minutes: float
    status: int = 503


@dataclass(frozen=True, slots=True)
class Failover:
    """Outage ``outage`` (an index of :attr:`WorldParams.outages`) without the CDN's marks:
    the ``hosts`` (``ws``, ``www``) fail over to a box of the origin's own at ``site``
    (a game server's data centre), ``hops`` farther than the CDN's edge, answering
    with ``server`` and its own page, its answer's TTL ``ttl_delta`` from its SYN-ACK's
    and its time to first byte after the connect ``ttfb_scale`` times the edge's."""

    outage: int
    hosts: tuple[str, ...]
    server: str
    site: str
    hops: int
    ttl_delta: int
    ttfb_scale: float


@dataclass(frozen=True, slots=True)
class InjectorParams:
    """One ISP's on-path box: where, when and what it forges."""

    isp: str
    lines: int
    ports: tuple[int, ...]
    hours: tuple[int, ...]
    rate: float
    answer: str  # page | redirect | block
    ttl_delta: int
    ttl_visible: float


@dataclass(frozen=True, slots=True)
class FarmParams:
    """One farm group: size, naming, pacing and wiring."""

    label: str  # farm_serial (shared name family) | farm_route (no shared name)
    size: int
    family: str
    pace_s: tuple[float, float]
    burst_every_h: tuple[float, float]
    exit_nets: int
    exit_hosts: int
    machines: int
    relay: str  # l4 | l3 | resi


@dataclass(frozen=True, slots=True)
class WorldParams:
    """Every drawn parameter of one world (``name`` is ``fixed`` or ``random``)."""

    name: str = "fixed"
    start_hour: int | None = None
    servers: tuple[ServerPing, ...] = tuple(ServerPing() for _ in _SERVERS)
    app_extra_ms: tuple[float, float] = (0.2, 1.2)
    app_samples: tuple[int, int] = (3, 6)
    tcp_missing: float = 0.0
    access_scale: float = 1.0
    jitter_scale: float = 1.0
    access_kinds: tuple[tuple[str, float, float], ...] = ()  # (technology, latency x, jitter x)
    inflation: tuple[float, float] = (1.5, 2.5)
    class_scale: tuple[tuple[str, float], ...] = ()
    popular_stems: int = 0
    diurnal: tuple[float, ...] = DIURNAL
    origin_error_rate: float = 0.0
    origin_redirect: float = 0.0
    outages: tuple[OriginWindow, ...] = ()
    maintenance: tuple[OriginWindow, ...] = ()
    api_origin: bool = False
    api_ttl_delta: int = 0
    unmarked_share: float = 0.0
    failovers: tuple[Failover, ...] = ()
    injectors: tuple[InjectorParams, ...] | None = None
    farms: tuple[FarmParams, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def scale(self, klass: str) -> float:
        """The multiplier of benign class ``klass``'s count (1.0 when not drawn)."""
        return dict(self.class_scale).get(klass, 1.0)

    def ping(self, server: str) -> ServerPing:
        return self.servers[_SERVERS.index(server)]

    # -- JSON ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldParams:
        """Parameters from a (possibly partial) dict; unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown world parameter(s): {', '.join(unknown)}")
        kw: dict[str, Any] = {}
        for k, v in d.items():
            if k == "servers":
                kw[k] = tuple(ServerPing(**s) for s in v)
                if len(kw[k]) != len(_SERVERS):
                    raise ValueError(f"servers: {len(_SERVERS)} entries expected ({', '.join(_SERVERS)})")
            elif k in ("outages", "maintenance"):
                kw[k] = tuple(OriginWindow(**w) for w in v)
            elif k == "failovers":
                kw[k] = tuple(Failover(**{**f, "hosts": tuple(f["hosts"])}) for f in v)
            elif k == "injectors":
                kw[k] = None if v is None else tuple(
                    InjectorParams(**{**i, "ports": tuple(i["ports"]), "hours": tuple(i["hours"])})
                    for i in v)
            elif k == "farms":
                kw[k] = None if v is None else tuple(
                    FarmParams(**{**f, "pace_s": tuple(f["pace_s"]),
                                  "burst_every_h": tuple(f["burst_every_h"])}) for f in v)
            elif k == "access_kinds":
                kw[k] = tuple((str(a), float(b), float(c)) for a, b, c in v)
            elif k == "class_scale":
                kw[k] = tuple((str(a), float(b)) for a, b in (v.items() if isinstance(v, dict) else v))
            elif k in ("app_extra_ms", "app_samples", "inflation", "diurnal"):
                kw[k] = tuple(v)
            else:
                kw[k] = v
        p = cls(**kw)
        p.validate()
        return p

    @classmethod
    def from_json(cls, text: str) -> WorldParams:
        return cls.from_dict(json.loads(text))

    def validate(self) -> None:
        """Refuse parameters no world can be built from."""
        if len(self.diurnal) != 24 or min(self.diurnal) <= 0 or max(self.diurnal) > 1:
            raise ValueError("diurnal: 24 values in (0, 1] expected")
        lo, hi = self.app_samples
        if not 1 <= lo <= hi <= 20:
            raise ValueError("app_samples: 1 <= low <= high <= 20 expected")
        if not 1.0 <= self.inflation[0] <= self.inflation[1]:
            raise ValueError("inflation: 1 <= low <= high expected")
        for name in ("tcp_missing", "origin_error_rate", "origin_redirect", "unmarked_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: a share in [0, 1] expected")
        for fo in self.failovers:
            if not 0 <= fo.outage < len(self.outages) or not fo.hosts or not set(fo.hosts) <= {"ws", "www"}:
                raise ValueError("failover: the index of an outage and hosts from ws/www expected")
            if fo.site not in _SERVERS or fo.hops < 0 or fo.ttfb_scale <= 0:
                raise ValueError(f"failover: site in {_SERVERS}, hops >= 0, ttfb_scale > 0")
        for inj in self.injectors or ():
            if inj.isp not in INJECTOR_ISPS or inj.answer not in ("page", "redirect", "block"):
                raise ValueError(f"injector: isp in {INJECTOR_ISPS}, answer page|redirect|block")
            if not inj.ports or not set(inj.ports) <= {80, 8080} or not 1 <= inj.lines <= 8:
                raise ValueError("injector: ports from 80/8080, 1-8 lines")
        for f in self.farms or ():
            if f.family not in FARM_FAMILIES or f.relay not in ("l4", "l3", "resi"):
                raise ValueError(f"farm: family in {FARM_FAMILIES}, relay l4|l3|resi")
            if not 5 <= f.size <= 200 or f.pace_s[0] < 0 or f.pace_s[0] > f.pace_s[1]:
                raise ValueError("farm: size 5-200 and 0 <= pace low <= high expected")


def fixed_params() -> WorldParams:
    """The simulator's original single world."""
    return WorldParams()


def demo_params() -> WorldParams:
    """The fixed world with its injecting box on at every hour (a demo at any time shows it)."""
    return replace(fixed_params(), name="demo", injectors=(
        InjectorParams("KT", 3, (80, 8080), tuple(range(24)), 0.9, "page", 1, 0.6),))


def parse_params(value: str | None, seed: int, hours: float) -> WorldParams:
    """``--params``: ``fixed``, ``random`` (drawn from ``seed``), ``demo``, JSON text, or ``@file``."""
    if value is None or value == "fixed":
        return fixed_params()
    if value == "demo":
        return demo_params()
    if value == "random":
        return draw_params(seed, hours)
    text = value
    if value.startswith("@"):
        with open(value[1:], encoding="utf-8") as fh:
            text = fh.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--params: not fixed, random, @file or JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ValueError("--params: a JSON object expected")
    return WorldParams.from_dict(data)


def _diurnal(rng: random.Random) -> tuple[float, ...]:
    peak = rng.uniform(18.0, 23.0)
    floor = rng.uniform(0.05, 0.3)
    return tuple(round(floor + (1 - floor) * ((1 + math.cos(2 * math.pi * (h - peak) / 24)) / 2) ** 1.5,
                       3) for h in range(24))


def _window(rng: random.Random, start_hour: int, hours: float) -> tuple[int, ...]:
    """A 3-10 h window of KST hours that meets the world's span."""
    span = max(1, math.ceil(hours))
    length = rng.randint(3, 10)
    first = start_hour + rng.randint(-(length - 1), max(0, min(span, 24) - 1))
    return tuple(sorted({(first + k) % 24 for k in range(length)}))


def _injector(rng: random.Random, isp: str, start_hour: int, hours: float) -> InjectorParams:
    ports = rng.choice(((80,), (8080,), (80, 8080), (80, 8080)))
    return InjectorParams(
        isp=isp, lines=rng.randint(1, 4), ports=ports, hours=_window(rng, start_hour, hours),
        rate=round(rng.uniform(0.3, 1.0), 3), answer=rng.choice(("page", "redirect", "block")),
        ttl_delta=rng.randint(0, 3), ttl_visible=round(rng.uniform(0.0, 1.0), 3))


def _farm(rng: random.Random) -> FarmParams:
    family = rng.choice(FARM_FAMILIES)
    band = rng.choice(("seconds", "tens", "minutes"))
    pace = {"seconds": (2.0, 15.0), "tens": (15.0, 60.0), "minutes": (60.0, 300.0)}[band]
    lo = rng.uniform(*pace)
    return FarmParams(
        label="farm_route" if family == "none" else "farm_serial",
        size=rng.randint(5, 60), family=family, pace_s=(round(lo, 1), round(lo * rng.uniform(1.2, 2.5), 1)),
        burst_every_h=(round(rng.uniform(2.0, 4.0), 2), round(rng.uniform(4.0, 8.0), 2)),
        exit_nets=rng.randint(1, 4), exit_hosts=rng.randint(1, 6), machines=rng.randint(1, 4),
        relay=rng.choices(("l4", "l3", "resi"), (45, 35, 20))[0])


def _failovers(seed: int, outages: int) -> tuple[float, tuple[Failover, ...]]:
    """The share of a world's outages without the CDN's marks, and those outages' boxes.

    Drawn from a stream of their own, so that every other parameter of the world, and
    every event but the unmarked outages' answers, is what it was without them.
    """
    rng = random.Random(f"{seed}:unmarked")
    kind = rng.random()
    share = 0.0 if kind < 0.3 else 1.0 if kind < 0.5 else round(rng.uniform(0.0, 1.0), 3)
    out = []
    for k in range(outages):
        if rng.random() >= share:
            continue
        out.append(Failover(
            outage=k, hosts=rng.choice((("ws",), ("www",), ("ws", "www"), ("ws", "www"))),
            server=rng.choice(("nginx", "openresty", "Apache")),
            site=rng.choice(("kr-sel-1", "kr-pus-1", "jp-tyo-1")),
            hops=rng.randint(0, 6), ttl_delta=rng.choice((0, 0, 0, -2, -1, 1)),
            ttfb_scale=round(math.exp(rng.uniform(math.log(0.3), math.log(3.0))), 3)))
    return share, tuple(out)


def loop_overrun(extra: dict[str, Any]) -> float:
    """The share of app pings the servers answer one loop late (``extra["loop_overrun"]``;
    0: every answer within its tick, the phase uniform over it)."""
    v = extra.get("loop_overrun", 0.0)
    return float(v) if isinstance(v, (int, float)) else 0.0


def with_overrun(params: WorldParams, share: float) -> WorldParams:
    """``params`` whose game servers answer ``share`` of the app pings one tick late, as
    a loop that overran its tick under load does: the phase of such an answer is past
    one tick, up to two (``pathsentry evaluate --loop-overrun``). A world without it is
    the same, byte for byte."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"loop overrun share {share}: between 0 and 1 expected")
    if not share:
        return params
    return replace(params, extra={**params.extra, "loop_overrun": share})


def draw_params(seed: int, hours: float = 24.0) -> WorldParams:
    """Draw one world's parameters from the documented ranges (same seed, same world)."""
    rng = random.Random(f"{seed}:params")
    start_hour = rng.randrange(24)
    servers = tuple(ServerPing(round(rng.uniform(0.0, 10.0), 2),
                               0.0 if rng.random() < 0.3 else round(rng.uniform(8.0, 100.0), 1))
                    for _ in _SERVERS)
    s_lo = rng.randint(1, 4)
    infl_lo = rng.uniform(1.2, 1.8)
    isps = rng.sample(INJECTOR_ISPS, rng.randint(1, 3))

    def windows(lo: float, hi: float, k: int) -> tuple[OriginWindow, ...]:
        return tuple(OriginWindow(round(rng.uniform(0.05, 0.9), 3), round(rng.uniform(lo, hi), 1),
                                  rng.choice((502, 503, 504))) for _ in range(k))

    p = WorldParams(
        name="random", start_hour=start_hour, servers=servers,
        app_extra_ms=(0.05, round(rng.uniform(0.3, 1.5), 2)),
        app_samples=(s_lo, rng.randint(max(s_lo, 2), 10)),
        tcp_missing=0.0 if rng.random() < 0.3 else round(rng.uniform(0.0, 0.3), 3),
        access_scale=round(rng.uniform(0.8, 1.3), 3), jitter_scale=round(rng.uniform(0.6, 2.0), 3),
        access_kinds=tuple((kind, round(rng.uniform(0.7, 1.4), 3), round(rng.uniform(0.6, 1.8), 3))
                           for kind in ACCESS_KINDS),
        inflation=(round(infl_lo, 3), round(infl_lo + rng.uniform(0.5, 1.5), 3)),
        class_scale=tuple((k, round(rng.uniform(0.5, 2.0), 2)) for k in BENIGN_CLASSES),
        popular_stems=rng.randint(0, 4), diurnal=_diurnal(rng),
        origin_error_rate=round(rng.uniform(0.0, 0.03), 4),
        origin_redirect=0.0 if rng.random() < 0.5 else round(rng.uniform(0.05, 0.5), 3),
        outages=windows(5.0, 40.0, rng.randint(0, 2)),
        maintenance=windows(10.0, 60.0, rng.randint(0, 1)),
        api_origin=rng.random() < 0.6, api_ttl_delta=rng.choice((-2, -1, 0, 0, 1)),
        injectors=tuple(_injector(rng, isp, start_hour, hours) for isp in isps),
        farms=tuple(_farm(rng) for _ in range(rng.randint(2, 5))),
    )
    share, failovers = _failovers(seed, len(p.outages))
    return replace(p, unmarked_share=share, failovers=failovers)
