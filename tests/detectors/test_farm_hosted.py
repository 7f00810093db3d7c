"""A hosting exit's every login is a member of its ``net:AS…`` partition, relay-flagged
or not: a name-less farm whose logins the relay detector missed is found there by its
machines and hosts, while a datacenter's unrelated users (unflagged, not allow-listed)
and allow-listed services form no group."""

from __future__ import annotations

import random

from pathsentry.config import AllowEntry
from pathsentry.detectors.base import Enriched
from pathsentry.detectors.farm.exits import band
from pathsentry.detectors.farm.model import FarmSettings, Member, Partition, Pool
from pathsentry.detectors.farm.ranges import private_burst
from tests.detectors.test_farm import detector, farm_alerts, random_names, run
from tests.detectors.test_farm_families import HOSTING, login, samples


def _missed_room(rng: random.Random, t0: float, names: list[str], pace: float) -> list[Enriched]:
    """A name-less farm through one host of a hosting range, its accounts alternating
    between two machines, none of its logins relay-flagged, no traceroute."""
    return [login(name, t0 + i * pace, "43.200.2.26", HOSTING,
                  samples(rng, (31.0, 42.0)[i % 2], 0.5), device=f"rig-{i % 2}")
            for i, name in enumerate(names)]


def _datacenter_users(rng: random.Random, n: int, t_end: float, *, households: bool
                      ) -> list[Enriched]:
    """``n`` unrelated users of a datacenter service in Seoul that is on no allow list
    (a cloud-gaming or remote-desktop provider): unflagged, each on a machine and an
    address of its own from a pool of two /24s (with ``households``, every fifth
    machine carries a second account), all a few ms away, arriving all day."""
    out = []
    for i, name in enumerate(random_names(rng, n)):
        dev = f"vm-{i - 1 if households and i % 5 == 1 else i}"
        out.append(login(name, rng.uniform(0.0, t_end),
                         f"45.76.{rng.choice((1, 2))}.{rng.randint(1, 250)}", HOSTING,
                         samples(rng, rng.uniform(4.0, 9.0), 1.0), device=dev))
    return out


def test_an_unflagged_login_through_a_hosting_exit_is_keyed_by_its_as() -> None:
    rng = random.Random(70)
    (ev,) = _missed_room(rng, 0.0, ["kusipuda"], 10.0)
    assert not ev.notes["relay"]["flagged"] and not ev.notes["route"]["foreign_origin"]
    assert "net:AS64600" in list(detector().group_keys(ev))


def test_an_allow_listed_login_is_keyed_by_no_exit() -> None:
    rng = random.Random(71)
    (ev,) = _missed_room(rng, 0.0, ["kusipuda"], 10.0)
    ev.allowed = AllowEntry(cidr="43.200.2.0/24", reason="cloud gaming")
    assert not [k for k in detector().group_keys(ev) if k.startswith("net:")]


def test_a_name_less_farm_the_relay_detector_missed_is_found_by_the_fifth_login() -> None:
    """Eight accounts 15 s apart on one exit host, two machines: no relay flag, no route,
    no name family -- the hosting exit stands for the flag, the shared machines and host
    are the room; the datacenter's other users go on around it. (Households sharing a
    machine in the same window would join the room: a known limit of the machine
    judge, relay-flagged or not.)"""
    rng = random.Random(72)
    names = random_names(random.Random(73), 8)
    background = _datacenter_users(rng, 60, 3 * 3600.0, households=False)
    room = _missed_room(rng, 5400.0, names, 15.0)
    _, by_fifth = run([e for e in background + room if e.ts <= room[4].ts])
    (alert,) = farm_alerts(by_fifth)
    assert set(alert.accounts) == set(names[:5])
    assert alert.subject["key"] == "net:AS64600"
    flags, alerts = run(background + room)
    (alert,) = farm_alerts(alerts)
    assert set(alert.accounts) == set(names) == {f.account for f in flags.values()}


def test_a_datacenters_unrelated_unflagged_users_are_never_a_group() -> None:
    """A busy datacenter service that is on no allow list: its users are members of the
    exit's partition now, a few ms apart (one tight RTT band), every fifth machine
    carrying a household's second account -- arriving at the exit's own rate, each on a
    machine and an address of its own."""
    rng = random.Random(74)
    _, alerts = run(_datacenter_users(rng, 400, 8 * 3600.0, households=True))
    assert farm_alerts(alerts) == []


# ---------------------------------------- a room through /24s of its own (:mod:`.ranges`)


def _service_users(rng: random.Random, t_end: float, every: float, subnets: list[int]
                   ) -> list[Enriched]:
    """A VPN service's users in a hosting range, relay-flagged, one every ``every`` s on
    average, each on a machine and an exit host of its own in one of ``subnets``
    (``45.76.<k>.0/24``), RTTs from all over."""
    out, t = [], 0.0
    while True:
        t += rng.expovariate(1 / every)
        if t >= t_end:
            return out
        out.append(login(random_names(rng, 1)[0], t,
                         f"45.76.{rng.choice(subnets)}.{rng.randint(1, 250)}", HOSTING,
                         samples(rng, rng.uniform(20.0, 200.0), 2.0), relay=True))


def _own_hosts_room(rng: random.Random, t0: float, names: list[str], pace: float
                    ) -> list[Enriched]:
    """A name-less farm renting six hosts in /24s of its own in the same range
    (``45.76.70-72.0/24``), its accounts round-robin over five machines -- its first
    five each on a machine and a host of its own -- relay-flagged, a few ms apart."""
    return [login(name, t0 + i * pace, f"45.76.{70 + i % 3}.{10 + i % 6}", HOSTING,
                  samples(rng, 30.0 + 0.4 * (i % 3), 0.5), relay=True, device=f"rig-{i % 5}")
            for i, name in enumerate(names)]


def test_a_room_through_24s_the_services_users_never_use_is_found_by_the_fifth_login() -> None:
    """Eight accounts 30 s apart, the first five each on its own machine and host --
    nothing shared yet -- but through three /24s none of the service's users came
    through in two hours; the later ones join on the room's machines."""
    rng = random.Random(75)
    names = random_names(random.Random(76), 8)
    service = _service_users(rng, 3 * 3600.0, 180.0, [1, 2])
    room = _own_hosts_room(rng, 7200.0, names, 30.0)
    _, by_fifth = run([e for e in service + room if e.ts <= room[4].ts])
    (alert,) = farm_alerts(by_fifth)
    assert set(alert.accounts) == set(names[:5])
    unused = alert.evidence["exit_prefixes"]
    assert unused["accounts_on_unused_prefixes"] == 5 and unused["other_accounts"] >= 20
    assert unused["learned_unused_prefix_share"] < 0.1
    flags, alerts = run(service + room)
    (alert,) = farm_alerts(alerts)
    assert set(alert.accounts) == set(names) == {f.account for f in flags.values()}


def test_the_same_room_in_the_exits_first_minutes_is_no_evidence_of_its_24s() -> None:
    """The room's first logins meet three of the service's users: a handful of others'
    /24s teaches nothing about the range (the beta-binomial tail), and nothing else ties
    the room's accounts yet."""
    rng = random.Random(77)
    names = random_names(random.Random(78), 5)
    service = _service_users(rng, 600.0, 100.0, [1, 2])[:3]
    room = _own_hosts_room(rng, 600.0, names, 30.0)
    assert len(service) == 3
    _, alerts = run(service + room)
    assert farm_alerts(alerts) == []


def test_a_service_spread_over_many_24s_is_never_a_group() -> None:
    """A VPN service whose users come through sixty /24s of the range, one every 40 s on
    average for six hours: many of their /24s are seen once, so an arrival through an
    unused /24 is no surprise, however they clump."""
    rng = random.Random(79)
    _, alerts = run(_service_users(rng, 6 * 3600.0, 40.0, list(range(1, 61))))
    assert farm_alerts(alerts) == []


def _moved_users(rng: random.Random, t0: float, n: int, every: float, subnet: int
                 ) -> list[Enriched]:
    """``n`` of a VPN service's users arriving one every ``every`` s on average from
    ``t0`` through ``45.76.<subnet>.0/24``, a /24 none of its users came through before
    (the service moved them onto a new exit host), each on a machine and an exit address
    of its own, RTTs from all over."""
    out, t = [], t0
    for i, name in enumerate(random_names(rng, n)):
        t += rng.expovariate(1 / every)
        out.append(login(name, t, f"45.76.{subnet}.{10 + i}", HOSTING,
                         samples(rng, rng.uniform(20.0, 200.0), 2.0), relay=True))
    return out


def test_a_services_users_moved_onto_a_new_24_at_once_are_never_a_group() -> None:
    """A failover: after two hours through two /24s, the service's users come through a
    /24 of the range none of them used, eight within about four minutes -- as unused a /24
    as a room's, and as sudden; but they come from everywhere (their RTTs spread as the
    exit's other users' do), where a room's machines sit together."""
    rng = random.Random(80)
    service = _service_users(rng, 7200.0, 180.0, [1, 2])
    moved = _moved_users(rng, 7200.0, 8, 25.0, 9)
    assert moved[-1].ts - moved[0].ts < 300.0
    _, alerts = run(service + moved)
    assert farm_alerts(alerts) == []


def test_a_busy_service_adding_a_24_to_its_rotation_is_never_a_group() -> None:
    """A busy service (one user every 40 s) that starts sending its new users through a
    /24 none of them used before: every arrival after the switch is through an unused
    /24, at the exit's own rate, from everywhere."""
    rng = random.Random(81)
    service = _service_users(rng, 7200.0, 40.0, [1, 2])
    moved = _moved_users(rng, 7200.0, 60, 40.0, 9)
    _, alerts = run(service + moved)
    assert farm_alerts(alerts) == []


def test_a_room_beside_farms_found_on_its_exit_is_judged_against_the_exits_users() -> None:
    """A small hosting exit whose logins in the hour are two family farms' batches (tight
    RTTs, found by their families) and a name-less room: three machines, each handing
    its accounts through four hosts of the farms' two /24s, 30-70 ms away by machine,
    20 s apart, on a server whose game loop moves each login's lowest sample by up to
    25 ms.
    The exit's other users it must stand out of are not the farms beside it: judged
    against their tight RTTs the room's spread looked like a service's users', and it
    went unfound."""
    rng = random.Random(75)
    batches = [login(f"goldbot{i:02d}", 600.0 + 15 * i, f"43.200.1.{10 + i % 2}", HOSTING,
                     samples(rng, 25.0, 1.0), relay=True, device=f"gb-{i % 2}")
               for i in range(1, 9)]
    batches += [login(f"miner_{c}", 900.0 + 20 * k, "43.200.5.7", HOSTING,
                      samples(rng, 22.0, 1.0), relay=True, device=f"mn-{k % 2}")
                for k, c in enumerate("abcdefgh")]
    names = random_names(random.Random(76), 12)
    room = [login(name, 1800.0 + 20 * i, f"43.200.{(1, 5)[i % 2]}.{60 + i % 4}", HOSTING,
                  samples(rng, (34.0, 52.0, 68.0)[i % 3] + rng.uniform(0, 25), 2.0), relay=True,
                  device=f"rig-{i % 3}")
            for i, name in enumerate(names)]
    _, alerts = run(batches + room)
    rooms = [a for a in farm_alerts(alerts) if set(a.accounts) & set(names)]
    assert len(rooms) == 1 and set(rooms[0].accounts) == set(names)
    assert len(farm_alerts(alerts)) == 3


def test_a_vpn_user_through_another_unused_24_from_farther_away_is_no_member_of_the_room() -> None:
    """A room of three machines 13 ms apart through /24s of its own, five accounts in
    all, and a VPN user through another unused /24 of the range, 15 ms nearer than the
    room's nearest machine: the window's band holds it, but the room's machines tied by
    a machine or a host they share show where the room sits."""
    s = FarmSettings()
    part = Partition(key="net:AS64600", pool=Pool())
    others = [Member(f"o{i}", f"o{i}", 100.0 * i, None, None, f"45.76.{1 + i % 2}.{i}",
                     f"45.76.{1 + i % 2}.0/24", rtt=20.0 + 7.0 * i, device=f"own-{i}")
              for i in range(16)]

    def at(i, dev, ip, rtt, t):
        return Member(f"r{i}", f"r{i}", 7200.0 + t, None, None, ip, ip.rsplit(".", 1)[0] + ".0/24",
                      rtt=rtt, device=dev, jitter=0.5)
    room = [at(0, "rig-0", "45.76.70.51", 94.5, 0), at(1, "rig-1", "45.76.71.30", 82.5, 236),
            at(2, "rig-2", "45.76.72.197", 87.0, 410), at(3, "rig-0", "45.76.70.83", 95.0, 684),
            at(4, "rig-1", "45.76.70.51", 82.0, 961)]
    passer = at(5, "own-p", "45.76.80.226", 67.5, 1270)
    far = at(6, "own-q", "45.76.81.9", 26.0, 3062)
    part.index[part.key] = {x.sid: x for x in others + room + [passer, far]}
    inside = [*room, passer, far]
    b = band(inside, s)
    assert b.holds(passer)  # the window's band is wide: the room's machines sit 13 ms apart
    found = private_burst(part, part.key, [x for x in inside if b.holds(x)], b, 3600.0, s)
    assert found is None or passer not in found.members
