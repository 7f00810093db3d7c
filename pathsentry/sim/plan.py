"""Planning a world: who plays from where, through what, and which attacks are planted.

Planning is cheap (one object per account, no events); the events are generated
lazily afterwards by :mod:`pathsentry.sim.world`.

>>> from pathsentry.sim.model import WorldSpec
>>> plan = plan_world(WorldSpec(seed=1, accounts=300, hours=2))
>>> len(plan.accounts), sorted(plan.servers)
(300, ['jp-tyo-1', 'kr-dje-1', 'kr-pus-1', 'kr-sel-1'])
>>> sorted({a.label for a in plan.accounts})
['benign', 'farm_route', 'farm_serial', 'l3_vpn', 'l4_relay', 'resi_proxy']
"""

from __future__ import annotations

import random
from collections.abc import Callable

from pathsentry.sim.model import (
    Account,
    Exit,
    FarmGroup,
    GameServer,
    InjectionCell,
    LineMonitor,
    WorldPlan,
    WorldSpec,
)
from pathsentry.sim.names import (
    NameBook,
    family_names,
    farm_family_names,
    popular_stem_names,
    random_farm_name,
    serial_names,
)
from pathsentry.sim.network import (
    CHINANET,
    CLOUDPLAY,
    DOD,
    GAMEDC,
    KDDI,
    KREONET,
    KT,
    LGU,
    LGU_MOBILE,
    PLDT,
    RELAYNET,
    RURAL_KR,
    SKB,
    SKT,
    UNICOM,
    VNPT,
    VPS_HANBIT,
    VPS_SEOULCLOUD,
    AutonomousSystem,
    Network,
    Prefix,
)
from pathsentry.sim.params import FarmParams, WorldParams

__all__ = ["SERVER_CITIES", "plan_world"]

SERVER_CITIES: dict[str, str] = {
    "kr-sel-1": "seoul", "kr-pus-1": "busan", "kr-dje-1": "daejeon", "jp-tyo-1": "tokyo",
}
_HOME_SERVER = {"seoul": "kr-sel-1", "incheon": "kr-sel-1", "busan": "kr-pus-1",
                "daegu": "kr-pus-1", "daejeon": "kr-dje-1", "gwangju": "kr-dje-1",
                "jeongseon": "kr-sel-1", "haenam": "kr-dje-1", "ulleung": "kr-pus-1",
                "tokyo": "jp-tyo-1"}
_CITY_WEIGHTS = (("seoul", 45), ("busan", 14), ("incheon", 10), ("daegu", 10),
                 ("daejeon", 9), ("gwangju", 8))
_ABROAD: tuple[tuple[AutonomousSystem, str], ...] = (
    (CHINANET, "shanghai"), (CHINANET, "shenzhen"), (UNICOM, "beijing"),
    (VNPT, "hanoi"), (VNPT, "hochiminh"), (PLDT, "manila"),
)
_USERS_PER_PREFIX = 40


def _clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, v))


class _Planner:
    def __init__(self, spec: WorldSpec) -> None:
        self.spec = spec
        self.rng = random.Random(f"{spec.seed}:plan")
        self.params: WorldParams = spec.params
        self.net = Network(spec.seed, access_scale=spec.params.access_scale,
                           jitter_scale=spec.params.jitter_scale,
                           kind_scale={k: (a, j) for k, a, j in spec.params.access_kinds})
        self.names = NameBook(random.Random(f"{spec.key}:names"))
        self.accounts: list[Account] = []
        self.pools: dict[tuple[int, str, str], list[Prefix]] = {}
        self.pool_use: dict[str, int] = {}
        self.devices = 0

    # -- address pools ------------------------------------------------------
    def prefix(self, asys: AutonomousSystem, city: str, access: str, per: int = _USERS_PER_PREFIX
               ) -> Prefix:
        """A prefix of (asys, city, access) with room left (about ``per`` users each)."""
        key = (asys.asn, city, access)
        pool = self.pools.setdefault(key, [])
        if pool and self.pool_use[pool[-1].cidr] < per:
            p = pool[-1]
        else:
            p = self.net.new_prefix(asys, city, access)
            pool.append(p)
            self.pool_use[p.cidr] = 0
        self.pool_use[p.cidr] += 1
        return p

    def city(self) -> str:
        cities = [c for c, _ in _CITY_WEIGHTS]
        return self.rng.choices(cities, [w for _, w in _CITY_WEIGHTS])[0]

    def device(self) -> str:
        self.devices += 1
        return f"dev-{random.Random(f'{self.spec.key}:dev:{self.devices}').getrandbits(48):012x}"

    def add(self, name: str, label: str, klass: str, home: Prefix, *, server: str | None = None,
            daily: float = 1.5, exit: Exit | None = None, host: int = 0, pool: int = 0,
            local_ip: str | None = None, group: FarmGroup | None = None, rank: int = 0,
            forced_first: bool = False, injected_line: bool = False) -> Account:
        acct = Account(len(self.accounts), name, label, klass, home,
                       server or _HOME_SERVER.get(home.city, "kr-sel-1"), daily=daily, exit=exit,
                       host=host, pool=pool, device=self.device(), local_ip=local_ip, group=group,
                       rank=rank, forced_first=forced_first, injected_line=injected_line)
        if not acct.local_ip and home.kind in ("residential", "business", "education"):
            acct.local_ip = f"192.168.{self.rng.randint(0, 2)}.{self.rng.randint(2, 254)}"
        if not acct.host and not acct.pool:
            acct.host = self.rng.randrange(250)
        acct.os = self.rng.choices(("windows", "android", "ios", "macos"), (70, 15, 10, 5))[0]
        if home.kind == "mobile":
            acct.os = self.rng.choice(("android", "ios"))
        self.accounts.append(acct)
        return acct

    def daily(self) -> float:
        return min(6.0, self.rng.lognormvariate(0.2, 0.6))

    # -- populations ---------------------------------------------------------
    def normal(self, count: int, klass: str = "normal") -> None:
        for _ in range(count):
            isp = self.rng.choices((KT, SKB, LGU), (45, 30, 25))[0]
            access = self.rng.choices(("ftth", "cable", "dsl", "business"), (70, 15, 10, 5))[0]
            home = self.prefix(isp, self.city(), access)
            self.add(self.names.player(), "benign", klass, home, daily=self.daily())

    def shared_ip(self, klass: str, sites: int, size: int, asys: AutonomousSystem,
                  access: str) -> None:
        """PC bangs and campus NAT: dozens of unrelated accounts behind one address."""
        for _ in range(sites):
            home = self.net.new_prefix(asys, self.city(), access)
            host = self.rng.randrange(1, 250)
            seats = [self.device() for _ in range(max(4, size // 2))]
            for _ in range(size):
                acct = self.add(self.names.player(), "benign", klass, home, host=host,
                                daily=self.rng.uniform(1.0, 3.0),
                                local_ip=f"10.{self.rng.randint(0, 3)}.0.{self.rng.randint(2, 250)}")
                acct.device = self.rng.choice(seats)

    def mobile(self, klass: str, count: int, asys: AutonomousSystem, pool: int, per: int) -> None:
        for _ in range(count):
            home = self.prefix(asys, self.city(), "lte", per=per)
            self.add(self.names.player(), "benign", klass, home, pool=pool, daily=self.daily())

    def cloud_gaming(self, count: int) -> None:
        for _ in range(count):
            home = self.prefix(CLOUDPLAY, "seoul", "datacenter", per=120)
            self.add(self.names.player(), "benign", "cloud_gaming", home, pool=250,
                     daily=self.daily())

    def rural(self, count: int) -> None:
        for _ in range(count):
            isp = self.rng.choice((KT, SKB))
            home = self.prefix(isp, self.rng.choice(RURAL_KR), "rural_dsl", per=25)
            self.add(self.names.player(), "benign", "rural_dsl", home, daily=self.daily())

    def game_relay(self, count: int, relays: list[Prefix]) -> None:
        for _ in range(count):
            if self.rng.random() < 0.3:
                home = self.prefix(KDDI, "tokyo", "ftth")
            else:
                home = self.prefix(self.rng.choice((KT, SKB)), self.rng.choice((*RURAL_KR, "busan")),
                                   self.rng.choice(("dsl", "cable", "ftth")))
            ex = Exit("game_relay", self.rng.choice(relays), self.rng.randrange(250))
            self.add(self.names.player(), "benign", "game_relay", home, exit=ex, daily=self.daily())

    def families(self, count: int) -> None:
        for _ in range(count):
            for name in family_names(self.rng, self.rng.randint(4, 6)):
                if name in self.names.used:
                    continue
                isp = self.rng.choice((KT, SKB, LGU))
                # each member on its own line: a separate prefix, spread over days
                home = self.net.new_prefix(isp, self.city(), "ftth")
                self.add(self.names.claim(name), "benign", "family_names", home,
                         daily=self.rng.uniform(0.3, 0.8))

    def injected_subscribers(self, cell: InjectionCell, count: int) -> None:
        for i in range(count):
            home = cell.prefixes[i % len(cell.prefixes)]
            self.add(self.names.player(), "benign", "normal", home, daily=self.daily() + 1.0,
                     injected_line=True)

    def relayed(self, label: str, count: int, exits: list[Prefix]) -> None:
        for _ in range(count):
            if label == "resi_proxy":
                home = self.prefix(self.rng.choice((KT, SKB, LGU)),
                                   self.rng.choice(("busan", "daegu", "gwangju")), "ftth")
                mode = self.rng.choice(("l4", "l3"))
                exit_prefix = self.net.new_prefix(self.rng.choice((KT, LGU)), "seoul",
                                                  self.rng.choice(("ftth", "cable")))
            else:
                asys, city = self.rng.choice(_ABROAD)
                home = self.prefix(asys, city, self.rng.choice(("ftth", "cable")), per=10)
                mode = "l4" if label == "l4_relay" else "l3"
                exit_prefix = self.rng.choice(exits)
            ex = Exit(mode, exit_prefix, self.rng.randrange(250))
            variant = f"{label}/{mode}" if label == "resi_proxy" else "attack"
            self.add(self.names.player(), label, variant, home, exit=ex, forced_first=True,
                     daily=self.rng.uniform(1.5, 4.0))

    def bursts(self, grng: random.Random, first_low: float, every_h: tuple[float, float]) -> list[int]:
        """A farm's login bursts: the first within its first hours, then one every ``every_h``."""
        spec = self.spec
        span = spec.end_ms - spec.start_ms
        t = spec.start_ms + int(grng.uniform(first_low, 0.4) * min(span, 6 * 3_600_000))
        out = []
        while t < spec.end_ms:
            out.append(t)
            t += int(grng.uniform(*every_h) * 3_600_000)
        return out

    def farm(self, label: str, index: int, size: int, exits: list[Prefix]) -> FarmGroup:
        spec = self.spec
        grng = random.Random(f"{spec.seed}:farm:{label}:{index}")
        bursts = self.bursts(grng, 0.03, (3.0, 6.0))
        group = FarmGroup(f"{label}-{index + 1}", label, bursts,
                          family="serial_end" if label == "farm_serial" else "none")
        asys, city = grng.choice(_ABROAD[:3])  # the farm rooms are in CN
        room = self.net.new_prefix(asys, city, "ftth")
        # serial farms run L4 relays (their own route shows); route farms alternate with L3 tunnels
        mode = "l4" if label == "farm_serial" or index % 2 == 0 else "l3"
        exit_prefix = grng.choice(exits)
        exit_hosts = [grng.randrange(250) for _ in range(grng.randint(1, 3))]
        if label == "farm_serial":
            stem = self.names.farm_stem(index)
            width = grng.choice((2, 3, 3))
            names = serial_names(stem, width, size, grng.choice((1, 1, 21, 101)))
            group.template = f"{stem}{{{width}}}"
        else:
            names = [random_farm_name(grng) for _ in range(size)]
        server = grng.choice(("kr-sel-1", "kr-sel-1", "kr-pus-1"))
        machines = [self.device() for _ in range(max(2, size // 5))]
        for rank, name in enumerate(names):
            if name in self.names.used:
                name = f"{name}{rank}"
            ex = Exit(mode, exit_prefix, exit_hosts[rank % len(exit_hosts)])
            acct = self.add(self.names.claim(name), label, "attack", room, server=server, exit=ex,
                            group=group, rank=rank)
            acct.device = machines[rank % len(machines)]
            group.members.append(acct.name)
        return group


    def popular_stem(self, count: int) -> None:
        """Unrelated honest players who share a popular stem, each on their own line."""
        for name in popular_stem_names(self.rng, count):
            if name in self.names.used:
                continue
            home = self.prefix(self.rng.choice((KT, SKB, LGU)), self.city(), "ftth")
            self.add(self.names.claim(name), "benign", "popular_stem", home, daily=self.daily())

    def drawn_farm(self, fp: FarmParams, index: int) -> FarmGroup:
        """A farm group of a randomized world: its own naming, pacing, machines and exits."""
        spec = self.spec
        grng = random.Random(f"{spec.seed}:farm:{index}")
        bursts = self.bursts(grng, 0.02, fp.burst_every_h)
        group = FarmGroup(f"{fp.label}-{index + 1}", fp.label, bursts, family=fp.family,
                          pace_s=fp.pace_s)
        asys, city = grng.choice(_ABROAD)
        machines = [self.net.new_prefix(asys, city, grng.choice(("ftth", "cable")))
                    for _ in range(fp.machines)]
        if fp.relay == "resi":
            mode = grng.choice(("l4", "l3"))
            nets = [self.net.new_prefix(grng.choice((KT, SKB, LGU)), grng.choice(("seoul", "incheon")),
                                        "ftth") for _ in range(fp.exit_nets)]
        else:
            mode = fp.relay
            hosting = grng.choice((VPS_HANBIT, VPS_SEOULCLOUD))
            nets = [self.net.new_prefix(hosting, "seoul", "datacenter") for _ in range(fp.exit_nets)]
        exits = [Exit(mode, nets[k % len(nets)], grng.randrange(250))
                 for k in range(max(len(nets), fp.exit_hosts))]
        size = min(fp.size, max(5, spec.accounts // 20))
        names, group.template = farm_family_names(grng, fp.family, self.names.farm_stem(index), size)
        server = grng.choice(("kr-sel-1", "kr-sel-1", "kr-pus-1", "kr-dje-1"))
        devices = [self.device() for _ in range(max(fp.machines, size // 5))]
        for rank, name in enumerate(names):
            if name in self.names.used:
                name = f"{name}{rank}"
            acct = self.add(self.names.claim(name), fp.label, "attack", machines[rank % len(machines)],
                            server=server, exit=exits[rank % len(exits)], group=group, rank=rank)
            acct.device = devices[rank % len(devices)]
            group.members.append(acct.name)
        return group


_ISPS: dict[str, tuple[AutonomousSystem, str]] = {
    "KT": (KT, "ftth"), "SKB": (SKB, "ftth"), "LGU": (LGU, "ftth"), "SKT": (SKT, "lte"),
}


def _cells(net: Network, params: WorldParams) -> list[InjectionCell]:
    if params.injectors is None:
        return [InjectionCell(tuple(net.new_prefix(KT, "seoul", "ftth") for _ in range(3)))]
    cells = []
    for inj in params.injectors:
        asys, access = _ISPS[inj.isp]
        cells.append(InjectionCell(tuple(net.new_prefix(asys, "seoul", access) for _ in range(inj.lines)),
                                   inj.ports, inj.hours, inj.rate, inj.answer, inj.ttl_delta,
                                   inj.ttl_visible))
    return cells


def plan_world(spec: WorldSpec) -> WorldPlan:
    """Plan a world of ``spec.accounts`` accounts (attacks and hard negatives included)."""
    pl = _Planner(spec)
    net, rng, n = pl.net, pl.rng, spec.accounts
    servers = {}
    for sid, city in SERVER_CITIES.items():
        p = net.new_prefix(GAMEDC, city, "datacenter")
        servers[sid] = GameServer(sid, city, p, p.ip(9))
    vps = [net.new_prefix(asys, "seoul", "datacenter") for asys in (VPS_HANBIT, VPS_SEOULCLOUD)
           for _ in range(2)]
    relays = [net.new_prefix(RELAYNET, "seoul", "relay") for _ in range(2)]
    params = spec.params
    cells = _cells(net, params)
    squat_prefixes = [net.new_prefix(SKB, "seoul", "ftth", access_ms=rng.uniform(0.3, 0.5))
                      for _ in range(2)]

    groups: list[FarmGroup] = []
    if params.farms is None:
        serial_groups, route_groups = max(1, round(n / 1000)), max(1, round(n / 2000))
        for i in range(serial_groups):
            groups.append(pl.farm("farm_serial", i, _clamp(n // 150, 8, 20), vps))
        for i in range(route_groups):
            groups.append(pl.farm("farm_route", i, _clamp(n // 200, 6, 15), vps))
    else:
        # a small world holds fewer farms (at most one per 100 accounts), each at most n/20 strong
        groups = [pl.drawn_farm(fp, i) for i, fp in enumerate(params.farms[:max(1, n // 100)])]

    def sc(klass: str, count: int) -> int:
        return max(1, round(count * params.scale(klass)))

    per_cell = max(6, n // 25) if len(cells) == 1 else max(3, n // 25 // len(cells))
    plan_steps: list[tuple[int, Callable[[int], None]]] = [
        (max(2, round(n * 0.012)), lambda k: pl.relayed("l4_relay", k, vps)),
        (max(2, round(n * 0.012)), lambda k: pl.relayed("l3_vpn", k, vps)),
        (max(2, round(n * 0.008)), lambda k: pl.relayed("resi_proxy", k, vps)),
        (sc("pc_bang", max(1, n // 1000)), lambda k: pl.shared_ip("pc_bang", k, _clamp(n // 60, 12, 40),
                                                                 KT, "business")),
        (sc("campus", max(1, n // 2000)), lambda k: pl.shared_ip("campus", k, _clamp(n // 80, 10, 30),
                                                                KREONET, "campus")),
        (sc("cgnat", max(4, n // 10)), lambda k: pl.mobile("cgnat", k, SKT, 16, 400)),
        (sc("lte", max(3, n // 16)), lambda k: pl.mobile("lte", k, LGU_MOBILE, 0, 60)),
        (sc("cloud_gaming", max(3, n // 33)), pl.cloud_gaming),
        (sc("rural_dsl", max(3, n // 25)), pl.rural),
        (sc("game_relay", max(3, n // 33)), lambda k: pl.game_relay(k, relays)),
        (sc("family_names", max(1, n // 500)), pl.families),
        *((per_cell, lambda k, c=c: pl.injected_subscribers(c, k)) for c in cells),
    ]
    for count, step in plan_steps:
        step(count)
    for _ in range(params.popular_stems):
        pl.popular_stem(rng.randint(8, 20))
    for p in squat_prefixes:
        for _ in range(sc("squatted_hop", max(3, n // 150))):
            pl.add(pl.names.player(), "benign", "squatted_hop", p, daily=pl.daily())
    if len(pl.accounts) > n:
        raise ValueError(f"{n} accounts are too few for every planted population "
                         f"(needs {len(pl.accounts)})")
    pl.normal(n - len(pl.accounts))
    monitored = [*(p for c in cells for p in c.prefixes),
                 *(net.new_prefix(KT, "seoul", "ftth") for _ in range(3)),
                 net.new_prefix(SKB, "busan", "ftth"), net.new_prefix(LGU, "seoul", "ftth")]
    monitors = [LineMonitor(i, p) for i, p in enumerate(monitored)]
    allow = [(p.cidr, "game relay network") for p in relays]
    allow += [(p.cidr, "cloud gaming")
              for p in pl.pools.get((CLOUDPLAY.asn, "seoul", "datacenter"), [])]
    # squatted router blocks: claimed by China Telecom and the US DoD, used inside SK Broadband
    squat_routers = (net.squat(SKB, "seoul", 1, CHINANET), net.squat(SKB, "seoul", 1, DOD))
    squatted = {p.cidr: squat_routers[i % 2] for i, p in enumerate(squat_prefixes)}
    return WorldPlan(spec, net, servers, pl.accounts, groups, cells, monitors, allow, squatted)
