"""Plain data of a planned world: servers, accounts, their exits, farm groups, the injecting cells."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from pathsentry.sim.network import Network, Prefix, Router
from pathsentry.sim.params import WorldParams, fixed_params
from pathsentry.sim.physics import Point

__all__ = [
    "ATTACK_LABELS",
    "DEFAULT_START",
    "FARM_LABELS",
    "KST",
    "RELAY_LABELS",
    "Account",
    "Exit",
    "FarmGroup",
    "GameServer",
    "InjectionCell",
    "LineMonitor",
    "WorldPlan",
    "WorldSpec",
]

KST = timezone(timedelta(hours=9), "KST")
#: Monday 00:00 KST.
DEFAULT_START = datetime(2026, 3, 2, 0, 0, tzinfo=KST)

RELAY_LABELS = ("l4_relay", "l3_vpn", "resi_proxy")
FARM_LABELS = ("farm_serial", "farm_route")
ATTACK_LABELS = (*RELAY_LABELS, *FARM_LABELS, "injection")


@dataclass(frozen=True, slots=True)
class WorldSpec:
    """What to simulate. The same spec always yields the same world, byte for byte.

    ``start`` is the (timezone-aware) time of the first instant; pass the current
    time to stream a world live ("rebased to now"). ``segment`` numbers consecutive
    stretches of one live world: the network, servers, farms' rooms and exits stay
    those of the seed, while names, devices and sessions are drawn anew per segment.
    """

    seed: int = 7
    accounts: int = 1000
    hours: float = 24.0
    start: datetime = DEFAULT_START
    domain: str = "game.example"
    params: WorldParams = field(default_factory=fixed_params)
    segment: int = 0  # >0: the same network and farms, other players and sessions (live play)

    def __post_init__(self) -> None:
        if self.accounts < 100:
            raise ValueError("a world needs at least 100 accounts")
        if self.hours <= 0:
            raise ValueError("hours must be positive")
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware")

    @property
    def key(self) -> str:
        """What names, devices, sessions and event ids are drawn from (the seed, per segment)."""
        return str(self.seed) if self.segment == 0 else f"{self.seed}~{self.segment}"

    @property
    def start_ms(self) -> int:
        return int(self.start.timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        return self.start_ms + int(self.hours * 3_600_000)


@dataclass(frozen=True, slots=True)
class GameServer:
    id: str
    city: str
    prefix: Prefix
    ip: str

    @property
    def point(self) -> Point:
        return self.prefix.point

    @property
    def country(self) -> str:
        return self.prefix.country


@dataclass(frozen=True, slots=True)
class Exit:
    """Where a relayed account's traffic leaves: ``l4`` (TCP ends at the relay),
    ``l3`` (a tunnel: TCP ends at the user) or ``game_relay`` (the legit network)."""

    mode: str
    prefix: Prefix
    host: int

    @property
    def ip(self) -> str:
        return self.prefix.ip(self.host)


@dataclass(slots=True)
class FarmGroup:
    group_id: str
    label: str
    bursts: list[int]  # login burst times (epoch ms)
    members: list[str] = field(default_factory=list)
    template: str | None = None
    family: str = "serial_end"
    pace_s: tuple[float, float] | None = None  # seconds between member logins (None: the fixed world's)


@dataclass(slots=True)
class Account:
    """A player (or a farm/attack account) and how it reaches the game."""

    index: int
    name: str
    label: str
    klass: str
    home: Prefix
    server: str
    daily: float = 1.5  # mean sessions per day
    exit: Exit | None = None
    host: int = 0
    pool: int = 0  # >0: the source address changes per session among ``pool`` hosts (CGNAT)
    device: str = ""
    os: str = "windows"
    local_ip: str | None = None
    group: FarmGroup | None = None
    rank: int = 0  # position inside the farm group
    forced_first: bool = False
    injected_line: bool = False


@dataclass(frozen=True, slots=True)
class InjectionCell:
    prefixes: tuple[Prefix, ...]
    ports: tuple[int, ...] = (80, 8080)
    hours: tuple[int, ...] = tuple(range(9, 18))  # KST hours 09:00-17:59
    rate: float = 0.9  # share of matching plaintext flows answered by the box
    answer: str = "page"  # page (200 script), redirect (302), block (a block page)
    ttl_delta: int = 1  # forged TTL minus the SYN-ACK's
    ttl_visible: float = 0.6  # share of client reports that carry the TTLs

    @property
    def asn(self) -> int:
        return self.prefixes[0].asys.asn

    @property
    def as_name(self) -> str:
        return self.prefixes[0].asys.name

    def covers(self, cidr: str) -> bool:
        return any(p.cidr == cidr for p in self.prefixes)


@dataclass(frozen=True, slots=True)
class LineMonitor:
    """The game launcher's periodic connectivity check on one subscriber /24."""

    index: int
    prefix: Prefix


@dataclass(slots=True)
class WorldPlan:
    spec: WorldSpec
    net: Network
    servers: dict[str, GameServer]
    accounts: list[Account]
    groups: list[FarmGroup]
    cells: list[InjectionCell]
    monitors: list[LineMonitor]
    allow: list[tuple[str, str]]
    squatted: dict[str, Router]  # subscriber prefix -> the squatted router on its path

    @property
    def cell(self) -> InjectionCell:
        """The first injecting cell (the only one of the fixed world)."""
        return self.cells[0]

    def cell_of(self, cidr: str) -> InjectionCell | None:
        """The injecting cell whose lines include ``cidr``, if any."""
        return next((c for c in self.cells if c.covers(cidr)), None)
