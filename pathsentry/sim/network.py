"""The simulated Internet: places, autonomous systems, prefixes and routers.

Addresses are handed out deterministically: every autonomous system owns one base
block and gives out consecutive /24s. Routers live in one infrastructure /24 per
(AS, city); their host numbers encode the router's role, so the full geo table is
known before a single event is generated.

>>> net = Network(seed=1)
>>> p = net.new_prefix(KT, "seoul", "ftth")
>>> p.cidr, p.country, p.kind
('14.32.0.0/24', 'KR', 'residential')
>>> r = net.router(KT, "seoul", 2)
>>> r.ip, r.country
('14.47.255.17', 'KR')
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from pathsentry.sim.physics import ACCESS, AccessProfile, Point

__all__ = [
    "CHINANET",
    "CLOUDPLAY",
    "DOD",
    "GAMEDC",
    "KDDI",
    "KREONET",
    "KT",
    "LGU",
    "LGU_MOBILE",
    "NTT",
    "PLACES",
    "PLDT",
    "RELAYNET",
    "SKB",
    "SKT",
    "UNICOM",
    "VNPT",
    "VPS_HANBIT",
    "VPS_SEOULCLOUD",
    "AutonomousSystem",
    "GeoRow",
    "Network",
    "Place",
    "Prefix",
    "Router",
]


@dataclass(frozen=True, slots=True)
class Place:
    name: str
    country: str
    lat: float
    lon: float

    @property
    def point(self) -> Point:
        return Point(self.lat, self.lon)


PLACES: dict[str, Place] = {
    p.name.lower(): p
    for p in (
        Place("Seoul", "KR", 37.5665, 126.9780),
        Place("Busan", "KR", 35.1796, 129.0756),
        Place("Daejeon", "KR", 36.3504, 127.3845),
        Place("Incheon", "KR", 37.4563, 126.7052),
        Place("Daegu", "KR", 35.8714, 128.6014),
        Place("Gwangju", "KR", 35.1595, 126.8526),
        Place("Jeongseon", "KR", 37.3807, 128.6608),
        Place("Haenam", "KR", 34.5733, 126.5990),
        Place("Ulleung", "KR", 37.4844, 130.9057),
        Place("Tokyo", "JP", 35.6762, 139.6503),
        Place("Shanghai", "CN", 31.2304, 121.4737),
        Place("Beijing", "CN", 39.9042, 116.4074),
        Place("Shenzhen", "CN", 22.5431, 114.0579),
        Place("Qingdao", "CN", 36.0671, 120.3826),
        Place("Hanoi", "VN", 21.0278, 105.8342),
        Place("Hochiminh", "VN", 10.8231, 106.6297),
        Place("Manila", "PH", 14.5995, 120.9842),
        Place("Columbus", "US", 39.9612, -82.9988),
    )
}

KR_CITIES = ("seoul", "busan", "daejeon", "incheon", "daegu", "gwangju")
RURAL_KR = ("jeongseon", "haenam", "ulleung")


@dataclass(frozen=True, slots=True)
class AutonomousSystem:
    asn: int
    name: str
    country: str
    base: str  # the block its /24s are carved from
    cities: tuple[str, ...]
    gateway: str  # city where its international traffic leaves

    def __str__(self) -> str:
        return f"AS{self.asn}"


def _kr(asn: int, name: str, base: str, cities: tuple[str, ...] = KR_CITIES + RURAL_KR) -> (
    AutonomousSystem
):
    return AutonomousSystem(asn, name, "KR", base, cities, "busan")


KT = _kr(4766, "Korea Telecom", "14.32.0.0/12")
SKB = _kr(9318, "SK Broadband", "58.224.0.0/12")
LGU = _kr(3786, "LG Uplus", "106.240.0.0/12")
SKT = _kr(9644, "SK Telecom", "223.32.0.0/12", KR_CITIES)
LGU_MOBILE = _kr(17858, "LG Uplus Mobile", "117.110.0.0/15", KR_CITIES)
KREONET = _kr(17579, "KREONET", "134.75.0.0/16", KR_CITIES)
GAMEDC = AutonomousSystem(64600, "Game Operator Datacenter", "KR", "211.249.0.0/16",
                          ("seoul", "busan", "daejeon", "tokyo"), "seoul")
CLOUDPLAY = _kr(64610, "CloudPlay Gaming", "27.96.128.0/17", ("seoul",))
RELAYNET = AutonomousSystem(64620, "GameRelay Network", "KR", "103.60.0.0/16",
                            ("seoul", "busan", "tokyo"), "seoul")
VPS_HANBIT = _kr(64630, "Hanbit VPS Hosting", "45.64.0.0/16", ("seoul",))
VPS_SEOULCLOUD = _kr(64631, "Seoul Cloud Servers", "43.200.0.0/16", ("seoul",))
KDDI = AutonomousSystem(2516, "KDDI", "JP", "106.128.0.0/12", ("tokyo",), "tokyo")
NTT = AutonomousSystem(2914, "NTT Communications", "JP", "129.250.0.0/16", ("tokyo",), "tokyo")
CHINANET = AutonomousSystem(4134, "CHINANET", "CN", "58.32.0.0/12",
                            ("shanghai", "beijing", "shenzhen", "qingdao"), "qingdao")
UNICOM = AutonomousSystem(4837, "China Unicom", "CN", "123.112.0.0/12",
                          ("beijing", "qingdao", "shanghai"), "qingdao")
VNPT = AutonomousSystem(45899, "VNPT", "VN", "113.160.0.0/12", ("hanoi", "hochiminh"), "hanoi")
PLDT = AutonomousSystem(9299, "PLDT", "PH", "112.198.0.0/16", ("manila",), "manila")
DOD = AutonomousSystem(749, "DoD Network Information Center", "US", "30.64.0.0/16",
                       ("columbus",), "columbus")

ALL_AS: tuple[AutonomousSystem, ...] = (
    KT, SKB, LGU, SKT, LGU_MOBILE, KREONET, GAMEDC, CLOUDPLAY, RELAYNET, VPS_HANBIT,
    VPS_SEOULCLOUD, KDDI, NTT, CHINANET, UNICOM, VNPT, PLDT, DOD,
)


@dataclass(frozen=True, slots=True)
class GeoRow:
    """One line of ``geo.csv``."""

    cidr: str
    country: str
    asn: int
    as_name: str
    lat: float
    lon: float
    kind: str

    def csv(self) -> str:
        return (f"{self.cidr},{self.country},{self.asn},{self.as_name},"
                f"{self.lat:.4f},{self.lon:.4f},{self.kind}")


@dataclass(slots=True)
class Prefix:
    """A subscriber or server /24 with its real location and access technology."""

    cidr: str
    asys: AutonomousSystem
    city: str
    point: Point
    access: AccessProfile
    access_ms: float  # per-prefix base access latency, learnable by baselines
    hosts: int = 250

    @property
    def country(self) -> str:
        return PLACES[self.city].country

    @property
    def kind(self) -> str:
        return self.access.geo_kind

    @property
    def name(self) -> str:
        return self.cidr

    def ip(self, host: int) -> str:
        base = int(ipaddress.IPv4Network(self.cidr).network_address)
        return str(ipaddress.IPv4Address(base + 1 + host % self.hosts))

    def geo_row(self) -> GeoRow:
        return GeoRow(self.cidr, self.country, self.asys.asn, self.asys.name,
                      self.point.lat, self.point.lon, self.kind)


@dataclass(frozen=True, slots=True)
class Router:
    ip: str
    asys: AutonomousSystem
    city: str
    country: str  # where it really is
    point: Point


def _squat_index(asys: AutonomousSystem) -> int:
    """Index of the /24 below the router blocks (the last one prefixes may not use)."""
    return ipaddress.IPv4Network(asys.base).num_addresses // 256 - len(asys.cities) - 1


@dataclass(slots=True)
class Network:
    """Address plan of the world: prefixes and router blocks, all deterministic."""

    seed: int
    access_scale: float = 1.0  # multiplies every prefix's base access latency
    jitter_scale: float = 1.0  # multiplies every access technology's per-sample jitter
    kind_scale: dict[str, tuple[float, float]] = field(default_factory=dict)  # per technology, on top
    prefixes: list[Prefix] = field(default_factory=list)
    _next: dict[int, int] = field(default_factory=dict)
    _infra: dict[tuple[int, str], str] = field(default_factory=dict)
    squatted: dict[str, GeoRow] = field(default_factory=dict)

    def _alloc24(self, asys: AutonomousSystem) -> str:
        block = ipaddress.IPv4Network(asys.base)
        n = self._next.get(asys.asn, 0)
        # the top of every block is reserved: router blocks, then one squatted block
        limit = _squat_index(asys)
        if n >= limit:
            raise ValueError(f"address block of {asys} exhausted; use fewer accounts")
        self._next[asys.asn] = n + 1
        return str(ipaddress.IPv4Network((int(block.network_address) + n * 256, 24)))

    def new_prefix(self, asys: AutonomousSystem, city: str, access: str,
                   access_ms: float | None = None) -> Prefix:
        prof = ACCESS[access]
        lat_x, jit_x = self.kind_scale.get(access, (1.0, 1.0))
        lat_x, jit_x = lat_x * self.access_scale, jit_x * self.jitter_scale
        if jit_x != 1.0:
            prof = replace(prof, jitter=prof.jitter * jit_x)
        rng = random.Random(f"{self.seed}:prefix:{asys.asn}:{self._next.get(asys.asn, 0)}")
        place = PLACES[city]
        spread = 0.02 if access in ("datacenter", "relay") else 0.08
        point = Point(place.lat + rng.uniform(-spread, spread), place.lon + rng.uniform(-spread, spread))
        base = access_ms if access_ms is not None else rng.uniform(prof.low, prof.high) * lat_x
        p = Prefix(self._alloc24(asys), asys, city, point, prof, round(base, 3))
        self.prefixes.append(p)
        return p

    def infra_block(self, asys: AutonomousSystem, city: str) -> str:
        key = (asys.asn, city)
        cidr = self._infra.get(key)
        if cidr is None:
            if city not in asys.cities:
                raise ValueError(f"{asys} has no routers in {city}")
            block = ipaddress.IPv4Network(asys.base)
            idx = asys.cities.index(city)
            top = int(block.broadcast_address) + 1 - (idx + 1) * 256
            cidr = str(ipaddress.IPv4Network((top, 24)))
            self._infra[key] = cidr
        return cidr

    def router(self, asys: AutonomousSystem, city: str, role: int, variant: int = 0) -> Router:
        """The ``role``-th router of ``asys`` in ``city`` (``variant`` for parallel links)."""
        base = int(ipaddress.IPv4Network(self.infra_block(asys, city)).network_address)
        ip = str(ipaddress.IPv4Address(base + 1 + (role * 8 + variant) % 254))
        place = PLACES[city]
        return Router(ip, asys, city, place.country, place.point)

    def squat(self, asys: AutonomousSystem, city: str, role: int, claim: AutonomousSystem) -> (
        Router
    ):
        """A router of ``asys`` in ``city`` numbered from ``claim``'s address space."""
        block = ipaddress.IPv4Network(claim.base)
        first = int(block.network_address) + _squat_index(claim) * 256
        cidr = str(ipaddress.IPv4Network((first, 24)))
        claim_place = PLACES[claim.cities[0]]
        self.squatted[cidr] = GeoRow(cidr, claim.country, claim.asn, claim.name,
                                     claim_place.lat, claim_place.lon, "business")
        ip = str(ipaddress.IPv4Address(first + 1 + role))
        place = PLACES[city]
        return Router(ip, asys, city, place.country, place.point)

    def geo_rows(self) -> Iterator[GeoRow]:
        """Every prefix, every router block (for every AS city) and every squatted block."""
        for p in self.prefixes:
            yield p.geo_row()
        for asys in ALL_AS:
            for city in asys.cities:
                place = PLACES[city]
                yield GeoRow(self.infra_block(asys, city), place.country, asys.asn, asys.name,
                             place.lat, place.lon, "business")
        yield from self.squatted.values()
