"""Name-less farms told by their machines: the machine-sharing share a partition learns
from its background, the burst judged against it, a room of several machines with
their own access latencies, and a farm's next burst joining its group."""

from __future__ import annotations

import json
import random
from datetime import timedelta

from pathsentry.detectors.base import Enriched
from pathsentry.detectors.farm.exits import (
    address_share,
    machine_centred,
    on_shared_addresses,
    stands_out,
)
from pathsentry.detectors.farm.machines import (
    drop,
    forget,
    keep,
    leave,
    machine_share,
    on_shared_machines,
    one_room,
    put,
    room_machine,
)
from pathsentry.detectors.farm.model import FarmSettings, Member, Partition
from pathsentry.detectors.physics import mad
from tests.detectors.test_farm import T0, detector, farm_alerts, random_names, run, summary, trace
from tests.detectors.test_farm import login as plain_login
from tests.detectors.test_farm_families import HOSTING, login, samples


def _member(i: int, account: str, device: str | None, skel: str | None = None) -> Member:
    return Member(f"s{i}", account, float(i), None, None, "10.0.0.1", "10.0.0.0/24",
                  device=device, skel=skel)


def test_machine_share_counts_background_accounts_that_shared_a_machine() -> None:
    p = Partition(key="net:AS64600")
    ms = [_member(0, "a", "d1"), _member(1, "b", "d1"), _member(2, "c", "d2"),
          _member(3, "d", "d3"), _member(4, "e", None)]
    for m in ms:
        put(p, m)
    for m in ms:  # oldest first: the last account on d1 still shared it
        leave(p, m)
        drop(p, m)
    assert (p.bg_seen, p.bg_shared) == (4.0, 2.0)  # no device: not counted
    assert machine_share(p) == 3.0 / 6.0
    assert p.machines == {}


def test_a_name_familys_batch_on_one_machine_is_not_background_sharing() -> None:
    p = Partition(key="net:AS64600")
    ms = [_member(i, f"mofa{i:03d}", "d1", skel="mofa#") for i in range(4)]
    for m in ms:
        put(p, m)
    assert on_shared_machines(ms) == ms  # a candidate still sees the shared machine
    for m in ms:
        leave(p, m)
        drop(p, m)
    assert (p.bg_seen, p.bg_shared) == (4.0, 0.0)


def test_rtt_spread_is_measured_within_each_machine() -> None:
    ms = [Member(f"s{i}", f"a{i}", 0.0, None, None, "", "", rtt=base + 0.3 * (i % 2),
                 device=f"m{i % 3}") for i, base in enumerate([20.0, 21.0, 29.0] * 4)]
    raw = [x.rtt for x in ms if x.rtt is not None]
    assert mad(raw) > 0.9
    assert mad(machine_centred(ms)) < 0.3


def _vpn_users(rng: random.Random, n: int, t_end: float, *, pairs: bool = False
               ) -> list[Enriched]:
    """``n`` relay-flagged users of one hosting exit, arriving at random for ``t_end`` s,
    each from its own machine (with ``pairs``, every fifth user's machine carries a
    second account too: a household), with RTTs from all over."""
    out = []
    for i, name in enumerate(random_names(rng, n)):
        t = rng.uniform(0.0, t_end)
        dev = f"vpn-{i - 1 if pairs and i % 5 == 1 else i}"
        out.append(login(name, t, f"45.76.{rng.randint(1, 40)}.{rng.randint(1, 250)}",
                         HOSTING, samples(rng, rng.uniform(8.0, 60.0), 2.0), relay=True,
                         device=dev))
    return out


def _room(rng: random.Random, t0: float, names: list[str], pace: float) -> list[Enriched]:
    """A name-less farm behind the same hosting exit: accounts round-robin over three
    machines whose access latencies differ (20, 21 and 29 ms), over two /24s."""
    base = [20.0, 21.0, 29.0]
    return [login(name, t0 + i * pace, f"45.76.{50 + i % 2}.{10 + i % 3}", HOSTING,
                  samples(rng, base[i % 3], 0.6), relay=True, device=f"room-{i % 3}")
            for i, name in enumerate(names)]


def test_farm_on_a_busy_vpn_exit_is_found_by_its_shared_machines() -> None:
    rng = random.Random(21)
    background = _vpn_users(rng, 160, 4 * 3600.0)
    farm = random_names(random.Random(22), 12)
    flags, alerts = run(background + _room(rng, 3 * 3600.0, farm, 90.0))
    (alert,) = farm_alerts(alerts)
    assert set(alert.accounts) <= set(farm) and len(alert.accounts) >= 10
    assert alert.subject["key"] == "net:AS64600"
    assert {f.account for f in flags.values()} <= set(farm)


def test_busy_vpn_exit_with_households_is_never_a_group() -> None:
    """Every fifth machine carries two accounts: the share the exit learns says so, and
    its clumps are no burst (only the partition's first minutes, with no background
    yet, are the documented warm-up weakness)."""
    rng = random.Random(23)
    _, alerts = run(_vpn_users(rng, 240, 6 * 3600.0, pairs=True))
    assert all(a.first_seen < T0 + timedelta(minutes=30) for a in farm_alerts(alerts))


def test_a_name_less_farms_next_burst_joins_its_alert() -> None:
    rng = random.Random(31)
    names = random_names(rng, 14)
    exits = ["198.51.100.7", "198.51.101.8", "198.51.102.9"]
    events: list[Enriched] = []
    # a sampled route shows a different subset of the farm on each burst: two return
    for t0, subset in ((3600.0, names[:8]), (6 * 3600.0, names[6:])):
        for i, name in enumerate(subset):
            lg = plain_login(name, t0 + i * 15, exits[i % 3])
            events += [lg, trace(lg, 4.0, "sigCN9")]
    _, alerts = run(events)
    (alert,) = farm_alerts(alerts)
    assert sorted(alert.accounts) == sorted(names)


def test_two_name_less_farms_on_one_route_sharing_no_account_stay_two() -> None:
    rng = random.Random(32)
    names = random_names(rng, 16)
    exits = ["198.51.100.7", "198.51.101.8", "198.51.102.9"]
    events: list[Enriched] = []
    for t0, subset in ((3600.0, names[:8]), (6 * 3600.0, names[8:])):
        for i, name in enumerate(subset):
            lg = plain_login(name, t0 + i * 15, exits[i % 3])
            events += [lg, trace(lg, 4.0, "sigCN9")]
    _, alerts = run(events)
    assert sorted(len(a.accounts) for a in farm_alerts(alerts)) == [8, 8]


# ------------------------------- a relay exit's unrelated users beside a farm


def test_a_busy_relay_exits_users_do_not_join_a_name_less_farm_on_its_hosts() -> None:
    """A hosting range of four /24s whose VPN users (one every few minutes, each from
    its own machine and address, RTTs spread over the range's) keep logging in while a
    name-less farm leaves through three of its hosts, several accounts per address,
    each account from a fresh machine id, paced minutes apart. Users meeting the
    farm's /24s by chance are no members: they share neither a machine nor an address;
    the farm's crowding onto three hosts stands out of how seldom the range's users
    share one."""
    rng = random.Random(71)
    users: list[Enriched] = []
    t = 0.0
    for name in random_names(random.Random(72), 60):
        t += rng.expovariate(1 / 240.0)
        users.append(login(name, t, f"43.200.{rng.randint(0, 3)}.{rng.randint(1, 250)}",
                           HOSTING, samples(rng, rng.uniform(25.0, 60.0), 2.0), relay=True))
    names = random_names(random.Random(73), 10)
    hosts = ["43.200.3.178", "43.200.3.65", "43.200.2.174"]
    farm = [login(name, 2 * 3600.0 + i * 110.0, hosts[i % 3], HOSTING,
                  samples(rng, (32.0, 34.0, 36.5)[i % 3], 2.0), relay=True)
            for i, name in enumerate(names)]
    flags, alerts = run(users + farm)
    (alert,) = farm_alerts(alerts)
    assert set(alert.accounts) == set(names)
    assert {f.account for f in flags.values()} == set(names)
    hosts = alert.evidence["exit_hosts"]  # three hosts, where the range's users share few
    assert hosts["addresses"] == 3 and hosts["accounts_on_shared_addresses"] == 10
    assert hosts["learned_shared_address_share"] < 0.2


def test_the_share_of_an_exits_users_on_a_shared_address_is_learned_from_its_others() -> None:
    part = Partition(key="net:AS64600")
    ms = [Member(f"s{i}", f"a{i}", float(i), None, None, f"43.200.0.{i if i < 6 else 6}",
                 "43.200.0.0/24") for i in range(8)]  # six own hosts, one host for two
    room = [Member(f"r{i}", f"r{i}", 100.0 + i, None, None, "43.200.3.7", "43.200.3.0/24")
            for i in range(5)]
    part.index["net:AS64600"] = {x.sid: x for x in ms + room}
    assert [x.account for x in on_shared_addresses(ms)] == ["a6", "a7"]
    live = {x.sid for x in room}  # the candidate under judgement is not its background
    assert address_share(part, "net:AS64600", live) == (2 + 1) / (8 + 2)
    ms[6].group = "g"  # a grouped account is a farm's, not the background's
    assert address_share(part, "net:AS64600", live) == (0 + 1) / (7 + 2)
    assert address_share(Partition(key="net:AS1"), "net:AS1", set()) == 0.5


def test_a_quiet_vpn_exits_players_each_with_an_alt_are_never_a_group() -> None:
    """A quiet VPN exit of a hosting range: six users in six hours on machines of their
    own, and, for two hours, a player every 15 min with a second account on the same
    machine 5-20 s after the first, each from an address and an RTT of their own. Each
    pair shares its machine and its address, but no pair shares anything with another:
    not a room, however quiet the exit."""
    rng = random.Random(5)
    names = iter(random_names(random.Random(6), 40))
    events = [login(next(names), rng.uniform(0, 6 * 3600), f"43.200.1.{rng.randint(1, 250)}",
                    HOSTING, samples(rng, rng.uniform(5, 40), 2.0), relay=True,
                    device=f"solo-{i}") for i in range(6)]
    for k in range(8):
        t, base, ip = 3600 + 900 * k, rng.uniform(5, 40), f"43.200.1.{10 + 20 * k}"
        events += [login(next(names), t + j * rng.uniform(5, 20), ip, HOSTING,
                         samples(rng, base, 2.0), relay=True, device=f"pair-{k}")
                   for j in range(2)]
    assert farm_alerts(run(events)[1]) == []


# ---------------------------------- a room cycling its machines slower than the window


def _quiet_vpn(rng: random.Random, n: int, t_end: float) -> list[Enriched]:
    """``n`` relay-flagged users of the same range, each on a machine and host of its own."""
    return [login(name, rng.uniform(0.0, t_end), f"45.64.{rng.randint(2, 9)}.{rng.randint(1, 250)}",
                  HOSTING, samples(rng, rng.uniform(8.0, 60.0), 2.0), relay=True,
                  device=f"user-{i}")
            for i, name in enumerate(random_names(rng, n))]


def test_a_room_cycling_its_machines_slower_than_the_window_is_found() -> None:
    """The machines' earlier accounts tie them: a machine carrying a third account in the
    partition is a room's, and the room's earlier accounts join its alert."""
    rng = random.Random(81)
    names = random_names(random.Random(82), 30)
    room = _cycling_room(rng, names, 6, 3600.0, (70.0, 110.0), 17)
    flags, alerts = run(_quiet_vpn(rng, 20, 6 * 3600.0) + room)
    (alert,) = farm_alerts(alerts)
    assert set(alert.accounts) <= set(names) and len(alert.accounts) >= 0.8 * len(names)
    assert {f.account for f in flags.values()} <= set(names)
    machines = alert.evidence["machines"]  # six machines, each carrying its third and more
    assert machines["machines"] == 6 and machines["machines_with_three_accounts"] == 6
    assert machines["accounts_per_machine_max"] >= 4
    assert machines["learned_share_with_three_accounts"] < 0.05


def test_a_quiet_exits_players_alternating_two_accounts_for_hours_are_never_a_group() -> None:
    """Eight players of a quiet hosting range, each switching between a main and an alt on
    a machine and host of their own every 20-50 minutes for five hours: each machine
    carries two accounts however long it is watched -- a player's, not a room's."""
    rng = random.Random(83)
    names = iter(random_names(random.Random(84), 16))
    events = _quiet_vpn(rng, 10, 6 * 3600.0)
    for k in range(8):
        pair, t, ip = [next(names), next(names)], rng.uniform(0, 1800), f"45.64.5.{30 + k}"
        base = rng.uniform(8.0, 60.0)
        j = 0
        while t < 5 * 3600.0:
            events.append(login(pair[j % 2], t, ip, HOSTING, samples(rng, base, 2.0),
                                relay=True, device=f"player-{k}"))
            t += rng.uniform(1200.0, 3000.0)
            j += 1
    assert farm_alerts(run(events)[1]) == []



def _cycling_room(rng: random.Random, names: list[str], machines: int, t: float,
                  rtt: tuple[float, float], step: int) -> list[Enriched]:
    """``names`` logging in one every 270-590 s from ``t`` on, in turn on ``machines``
    machines and on six hosts (``step`` apart in the last octet) of a hosting range."""
    room = []
    for i, name in enumerate(names):
        room.append(login(name, t, f"45.64.{2 + i % 6 % 4}.{20 + step * (i % 6)}", HOSTING,
                          samples(rng, rng.uniform(*rtt), 4.0), relay=True,
                          device=f"slow-{i % machines}"))
        t += rng.uniform(270.0, 590.0)
    return room


def _slow_room() -> tuple[list[str], list[Enriched]]:
    """Eleven machines taking turns on six hosts of a quiet range, each machine a new
    account every 50-110 minutes, beside the range's other users."""
    rng = random.Random(85)
    names = random_names(random.Random(86), 45)
    room = _cycling_room(rng, names, 11, 1800.0, (60.0, 110.0), 13)
    return names, _quiet_vpn(rng, 25, 7 * 3600.0) + room


def test_a_room_cycling_each_machine_over_hours_is_found() -> None:
    """No machine of :func:`_slow_room` carries a third account within two hours: the
    partition keeps each machine's accounts for ``cycle_horizon_s``, so the machines'
    third accounts, on hosts they share, tie the room, and the room's earlier accounts,
    on every machine that joins, join its alert."""
    names, events = _slow_room()
    flags, alerts = run(events)
    (alert,) = farm_alerts(alerts)
    assert set(alert.accounts) <= set(names) and len(alert.accounts) >= 0.8 * len(names)
    assert {f.account for f in flags.values()} <= set(names)
    machines = alert.evidence["machines"]
    assert machines["machines"] == 11 and machines["machines_with_three_accounts"] >= 10


def test_a_slow_rooms_kept_accounts_survive_a_snapshot() -> None:
    """The accounts kept on their machines past the window are saved and restored: a
    worker restarting mid-room finds what one that never stopped finds."""
    _, events = _slow_room()
    events.sort(key=lambda e: e.ts)
    cut = next(i for i, e in enumerate(events) if e.ts >= events[0].ts + 3.2 * 3600)
    det = detector()
    first = run(events[:cut], [det])
    assert any(p.past for p in det.parts.values())
    restored = detector()
    restored.load_state(json.loads(json.dumps(det.state())))
    assert sum(len(p.past or ()) for p in restored.parts.values()) == sum(
        len(p.past or ()) for p in det.parts.values())
    second = run(events[cut:], [restored])
    merged = ({**first[0], **second[0]}, {**first[1], **second[1]})
    assert summary(merged) == summary(run(events))


def test_a_busy_exits_players_each_cycling_three_accounts_are_never_a_group() -> None:
    """A busy hosting range: 80 users on machines of their own over six hours, and twelve
    players each playing three accounts in turn on their machine, one every 40-120
    minutes, from an address and an RTT of their own. Machines carrying three accounts
    in six hours, each on an address of its own, are players', not a room's machines
    taking turns on its hosts (:func:`~pathsentry.detectors.farm.machines.room_machine`)."""
    rng = random.Random(87)
    names = iter(random_names(random.Random(88), 36))
    events = _quiet_vpn(rng, 80, 6 * 3600.0)
    for k in range(12):
        accounts, t = [next(names) for _ in range(3)], rng.uniform(0, 3600)
        ip, base = f"45.64.{rng.randint(2, 9)}.{100 + k}", rng.uniform(8.0, 60.0)
        for j in range(4):
            if t > 6 * 3600.0:
                break
            events.append(login(accounts[j % 3], t, ip, HOSTING, samples(rng, base, 2.0),
                                relay=True, device=f"alts-{k}"))
            t += rng.uniform(2400.0, 7200.0)
    assert farm_alerts(run(events)[1]) == []


def _left_the_window(p: Partition, ms: list[Member]) -> None:
    """Index ``ms`` on their machines, then let them leave the window, kept for the
    horizon (:func:`keep`, at most 8)."""
    for m in ms:
        put(p, m)
    for m in ms:
        leave(p, m)
        drop(p, m)
        keep(p, m, 8, 0.0)


def test_members_leaving_the_window_stay_on_their_machines_for_the_horizon() -> None:
    """:func:`keep` and :func:`forget`: a kept member ties machines (and addresses) only,
    marks no account ``on_shared``, is no background of :func:`machine_share`, and is
    forgotten, oldest first, past the horizon or the cap."""
    p = Partition(key="net:AS64600")
    _left_the_window(p, [_member(i, f"a{i}", "d1") for i in range(2)])
    new = _member(10, "c", "d1")
    put(p, new)
    assert not new.on_shared and [x.account for x in p.machines["d1"]] == ["a0", "a1", "c"]
    assert p.hosts == {"10.0.0.1": {"d1": 3}}
    assert machine_share(p, [new]) == machine_share(p)  # the kept ones counted when they left
    forget(p, 1.0)  # a0 logged in at 0
    assert [x.account for x in p.machines["d1"]] == ["a1", "c"] and p.hosts["10.0.0.1"] == {"d1": 2}
    keep(p, _member(11, "e", "d2"), 1, 0.0)  # the cap: a1 goes
    assert [x.account for x in p.machines["d1"]] == ["c"] and list(p.machines["d2"]) and p.past


def test_a_machines_kept_accounts_tie_a_room_only_through_an_address_it_shared() -> None:
    """The "one room" gate counts a machine's accounts as a room's machine test does
    (:func:`~pathsentry.detectors.farm.machines.counted`): two accounts that left the
    window and a third now, on an address the machine has to itself, are a player's
    accounts in turn; once another machine used that address, they are a room's."""
    def on(i: int, account: str, device: str, ip: str) -> Member:
        return Member(f"s{i}", account, float(i), None, None, ip, "10.0.0.0/24",
                      device=device)

    p = Partition(key="net:AS64600")
    _left_the_window(p, [on(0, "a0", "d1", "10.0.0.1"), on(1, "a1", "d1", "10.0.0.1")])
    live = [on(10, "c", "d1", "10.0.0.1"), on(11, "e", "d9", "10.0.0.9")]
    for m in live:
        put(p, m)
    assert not room_machine(p, live[0])
    assert not one_room(live, p.machines, p.hosts)
    put(p, on(12, "f", "d2", "10.0.0.1"))
    assert room_machine(p, live[0])
    assert one_room(live, p.machines, p.hosts)


def test_one_machines_minima_straying_by_a_long_ticks_phase_still_stand_out() -> None:
    """Eight accounts on one machine through a hosting range, on a server whose ~80 ms
    tick puts each login's minimum anywhere within 40 ms (each login's own samples say
    so: a noise of 15-30 ms), beside the range's nine other users at 28-80 ms: the
    room's spread is its own noise, which no room can tighten, and it stands out; the
    same spread from logins whose samples were tight (no such noise) does not."""
    rtts = [84.9, 90.6, 92.5, 96.6, 127.9, 120.8, 104.9, 100.4]
    others = [Member(f"o{i}", f"user{i}", float(i), None, None, f"45.64.1.{i}", "45.64.1.0/24",
                     rtt=r, device=f"own{i}")
              for i, r in enumerate([29.9, 78.6, 34.1, 30.9, 28.7, 79.5, 35.1, 80.2, 30.8])]

    def room(noise: float | None) -> list[Member]:
        return [Member(f"r{i}", f"acct{i}", float(i), None, None, "45.64.2.218",
                       "45.64.2.0/24", rtt=r, device="one-pc", jitter=noise)
                for i, r in enumerate(rtts)]

    s = FarmSettings()
    assert stands_out(room(22.0), others, [], s)
    assert not stands_out(room(1.0), others, [], s)
    assert not stands_out(room(None), others, [], s)
