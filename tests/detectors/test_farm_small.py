"""Small and young worlds: the background a name-less farm is judged against while the
class has seen little -- the documented default rate, and the farms' own logins out
of it -- with the hard negatives such a world still holds."""

from __future__ import annotations

import random

from pathsentry.detectors.base import Enriched
from pathsentry.detectors.farm.background import arrive, depart, expected, prior_rate
from pathsentry.detectors.farm.machines import machine_share, put
from pathsentry.detectors.farm.model import FarmSettings, Member, Partition, Pool
from tests.detectors.test_farm import farm_alerts, random_names, run
from tests.detectors.test_farm_cold import _feed
from tests.detectors.test_farm_families import login, samples
from tests.detectors.test_farm_machines import _vpn_users

#: two hosting ASes of a small world: one carries a named farm, the other a room
NAMED_AS, ROOM_AS = 64630, 64631

# ------------------------------------------------------------------- the prior


def test_a_class_that_has_seen_nothing_expects_the_documented_default_rate() -> None:
    s = FarmSettings()
    rate0 = s.background_prior_rate_h / 3600.0
    assert prior_rate(None, 0, 3600.0, s.background_half_life_s, rate0, 3600.0) == rate0
    lam = expected(Partition(key="route:x"), 0, 3600.0, s)
    # one hour of its own (silent) observation beside the prior's hour: half the default
    assert abs(lam - 0.5 * s.background_prior_rate_h) < 0.05
    assert expected(Partition(key="route:x"), 0, 3600.0,
                    FarmSettings(background_prior_rate_h=0.0)) == 0.0


def test_a_class_that_stays_silent_learns_a_rate_below_the_default() -> None:
    """Four exits watched for three hours without an arrival: the class's pooled rate
    falls well below the default it started from (the default weighs as one hour of
    one partition)."""
    s = FarmSettings()
    pool = Pool(first_ts=0.0, ts=3 * 3600.0, parts=4)
    rate0 = s.background_prior_rate_h / 3600.0
    assert prior_rate(pool, 0, 3600.0, s.background_half_life_s, rate0,
                      s.background_prior_s) < 0.1 * rate0


def test_a_departed_arrival_leaves_the_partition_and_its_class() -> None:
    s = FarmSettings()
    pool = Pool()
    part = Partition(key="net:AS1", pool=pool)
    pool.parts = 1
    for t in (0.0, 600.0, 1200.0):
        arrive(part, t, s.background_half_life_s, s.background_fast_half_life_s)
    before = (part.rate_count, part.rate_fast, pool.count)
    arrive(part, 1500.0, s.background_half_life_s, s.background_fast_half_life_s)
    depart(part, 1500.0, s.background_half_life_s, s.background_fast_half_life_s)
    assert abs(part.rate_count - before[0] * 0.5 ** (300 / s.background_half_life_s)) < 1e-9
    assert abs(part.rate_fast - before[1] * 0.5 ** (300 / s.background_fast_half_life_s)) < 1e-9
    assert abs(pool.count - before[2] * 0.5 ** (300 / s.background_half_life_s)) < 1e-9
    for _ in range(5):  # never below nothing
        depart(part, 0.0, s.background_half_life_s, s.background_fast_half_life_s)
    assert part.rate_count == part.rate_fast == pool.count == 0.0


# ------------------------------------------------------------ a small world


def _named_farm(n: int, t0: float, pace: float) -> list[Enriched]:
    """A named batch (``longwang1``..) through three /24s of a hosting AS, one machine
    each, one relay flag in three: its family partition finds it."""
    rng = random.Random(n)
    return [login(f"longwang{i + 1}", t0 + i * pace, f"45.64.{2 + i % 3}.{10 + i % 3}",
                  NAMED_AS, samples(rng, 60.0 + i % 3, 0.5), relay=i % 3 == 0,
                  device=f"lw-{i % 3}", kind="hosting")
            for i in range(n)]


def _slow_room(names: list[str], t0: float, pace: float) -> list[Enriched]:
    """A name-less room through four /24s of another hosting AS: two machines, each
    account through its own rented host in turn, minutes apart, no relay flag."""
    rng = random.Random(len(names))
    return [login(name, t0 + i * pace, f"43.200.{2 + i % 4}.{30 + i % 4}", ROOM_AS,
                  samples(rng, (62.0, 70.0)[i % 2], 0.6), device=f"room-{i % 2}",
                  kind="hosting")
            for i, name in enumerate(names)]


def assert_room_found_by_its_fifth_login(before: list[Enriched], room: list[Enriched],
                                         names: list[str]) -> None:
    """An alert naming the room's accounts comes by its fifth login, after ``before``."""
    found = _feed(before + room)
    first_room = next((t for t, f in found if any(
        set(a.accounts) & set(names) for a in f.alerts)), None)
    assert first_room is not None and first_room <= room[4].ts


def test_a_slow_name_less_room_beside_a_named_farm_is_found_by_its_fifth_login() -> None:
    """A small world's hosting class has seen little but a named farm: its fifteen
    logins are no background for the room on the other exit, which is judged against
    the class's default rate and found by its fifth login."""
    named = _named_farm(15, 0.0, 60.0)
    names = random_names(random.Random(71), 10)
    room = _slow_room(names, 1800.0, 330.0)
    assert_room_found_by_its_fifth_login(named, room, names)
    _, alerts = run(named + room)
    groups = farm_alerts(alerts)
    assert len(groups) == 2
    (alert,) = [a for a in groups if set(a.accounts) & set(names)]
    assert set(alert.accounts) == set(names)


def test_a_small_worlds_vpn_households_beside_a_named_farm_are_no_group() -> None:
    """The same small world's VPN exit: forty users over two hours, every fifth
    machine with a second account (a household), beside the named farm whose logins
    leave the background: the default rate and the machine share keep the households'
    clumps no burst."""
    rng = random.Random(73)
    users = _vpn_users(rng, 40, 2 * 3600.0, pairs=True)
    named = _named_farm(15, 0.0, 60.0)
    _, alerts = run(users + named)
    groups = farm_alerts(alerts)
    assert len(groups) == 1 and all(a.startswith("longwang") for a in groups[0].accounts)


def test_a_quiet_ranges_unrelated_users_minutes_apart_in_a_small_world_are_no_group() -> None:
    """Eight users of the room's hosting AS, minutes apart through its four /24s, each
    on a machine and a host of its own: nothing shared, nothing to judge."""
    rng = random.Random(74)
    events = [login(name, 1800.0 + i * 330.0, f"43.200.{2 + i % 4}.{rng.randint(1, 250)}",
                    ROOM_AS, samples(rng, rng.uniform(20.0, 90.0), 2.0), kind="hosting")
              for i, name in enumerate(random_names(rng, 8))]
    _, alerts = run(events + _named_farm(15, 0.0, 60.0))
    assert all(a.startswith("longwang") for g in farm_alerts(alerts) for a in g.accounts)


# ------------------------------------------------- a room's machines, one /24 each


def _room_of_own_24s(names: list[str], t0: float, pace: float) -> list[Enriched]:
    """A name-less room on four machines, each through a rented host on a /24 of its
    own in one hosting AS, round-robin seconds to a minute apart; each machine has its
    own access latency (the fourth's far from the others')."""
    rng = random.Random(len(names) + 1)
    base = [64.0, 60.0, 55.0, 86.0]
    return [login(name, t0 + i * pace, f"43.200.{2 + i % 4}.{35 + i % 4}", ROOM_AS,
                  samples(rng, base[i % 4], 0.5), relay=True, device=f"room-{i % 4}",
                  kind="hosting")
            for i, name in enumerate(names)]


def test_a_rooms_machine_through_a_24_of_its_own_joins_the_room() -> None:
    """The room forms before its fourth machine carries a second account; that machine's
    accounts, through a /24 none of the others uses, join as it carries more: in a quiet
    range they are no background's."""
    names = random_names(random.Random(75), 15)
    room = _room_of_own_24s(names, 600.0, 45.0)
    _, alerts = run(room + _named_farm(15, 0.0, 60.0))
    (alert,) = [a for a in farm_alerts(alerts) if set(a.accounts) & set(names)]
    assert len(set(alert.accounts)) >= 14 and set(alert.accounts) <= set(names)
    assert {n for i, n in enumerate(names) if i % 4 == 3 and i > 3} <= set(alert.accounts)


def test_a_busy_exits_households_on_other_24s_do_not_join_a_room() -> None:
    """A busy VPN exit whose every fifth machine carries two accounts, and a room on
    its shared machines: the households' pairs, on /24s the room does not use, are as
    common as the exit has taught and stay out of its alert."""
    rng = random.Random(76)
    users = _vpn_users(rng, 160, 4 * 3600.0, pairs=True)
    names = random_names(random.Random(77), 15)
    room = _room_of_own_24s(names, 3 * 3600.0, 45.0)
    flags, alerts = run(users + room)
    groups = farm_alerts(alerts)
    assert groups and all(set(a.accounts) <= set(names) for a in groups)
    assert {f.account for f in flags.values()} <= set(names)


def test_a_found_rooms_accounts_teach_the_young_exit_no_machine_share() -> None:
    """In a partition younger than its window the accounts in it are its background --
    but not those of a room found there, which share their machines by nature."""
    part = Partition(key="net:AS1", pool=Pool())
    room = [Member(f"r{i}", f"r{i}", float(i), None, None, "10.0.0.1", "10.0.0.0/24",
                   device=f"m{i % 2}", group="g1") for i in range(10)]
    users = [Member(f"u{i}", f"u{i}", float(i), None, None, "10.0.1.1", "10.0.1.0/24",
                    device=f"own{i}") for i in range(10)]
    for x in room + users:
        put(part, x)
    assert machine_share(part, users[:1]) < 0.1


def test_a_found_rooms_logins_leave_the_background_of_the_next_room() -> None:
    """Two name-less rooms on two hosting ASes of a small world: the first, fast on
    shared machines, is found; its logins leave its class's background, so the second,
    minutes apart, is judged against the default rate and found by its fifth login."""
    fast_names = random_names(random.Random(78), 15)
    rng = random.Random(79)
    fast = [login(name, 60.0 + 20.0 * i, f"45.64.{2 + i % 3}.{10 + i % 3}", NAMED_AS,
                  samples(rng, 60.0 + i % 3, 0.5), device=f"fast-{i % 3}", kind="hosting")
            for i, name in enumerate(fast_names)]
    names = random_names(random.Random(80), 10)
    room = _slow_room(names, 1200.0, 330.0)
    assert_room_found_by_its_fifth_login(fast, room, names)
    groups = farm_alerts(run(fast + room)[1])
    assert sorted(len(set(a.accounts)) for a in groups) == [10, 15]
