"""A cold partition judged against its class's prior (the population's pooled arrival
rate and machine share), and a name family's batch spread over residential exits of
several ISPs, each with its hard negatives."""

from __future__ import annotations

import random
from datetime import timedelta

from pathsentry.detectors.base import Enriched, Findings
from pathsentry.detectors.farm.background import arrive, expected, prior_rate
from pathsentry.detectors.farm.machines import leave, machine_share, put
from pathsentry.detectors.farm.model import FarmSettings, Member, Partition, Pool, pool_class
from tests.detectors.test_farm import T0, detector, farm_alerts, random_names, run
from tests.detectors.test_farm_families import HOSTING, KT, SKB, login, samples
from tests.detectors.test_farm_machines import _room, _vpn_users

# ------------------------------------------------------------------- the prior


def test_a_cold_partition_expects_its_classs_mean_rate_and_an_old_one_its_own() -> None:
    s = FarmSettings()
    pool = Pool()
    busy = Partition(key="net:AS1", pool=pool)
    quiet = Partition(key="net:AS2", pool=pool)
    pool.parts = 2
    for t in range(0, 6 * 3600, 30):  # 120 an hour
        arrive(busy, float(t), s.background_half_life_s, s.background_fast_half_life_s)
    quiet.rate_ts = busy.rate_ts  # watched as long, never an arrival
    cold = Partition(key="net:AS3", pool=pool, first_ts=busy.rate_ts, rate_ts=busy.rate_ts)
    per_hour = prior_rate(pool, 0, 3600.0, s.background_half_life_s) * 3600
    assert 55 < per_hour < 65  # the mean of 120 and 0 an hour
    lam_cold = expected(cold, 0, 300.0, s)
    assert 0.8 * 5 < lam_cold < 1.1 * 5  # a newcomer is judged as a typical partition
    assert expected(busy, 0, 3600.0, s) > 100  # six hours of its own history dominate
    assert expected(quiet, 0, 300.0, s) < 0.25 * lam_cold


def test_without_a_pool_or_a_default_rate_a_cold_partition_expects_nothing() -> None:
    s = FarmSettings(background_prior_rate_h=0.0)
    assert expected(Partition(key="route:x"), 0, 300.0, s) == 0.0


def test_a_cold_partition_starts_from_its_classs_machine_share() -> None:
    pool = Pool()
    old, cold = Partition(key="net:AS1", pool=pool), Partition(key="net:AS2", pool=pool)
    ms = [Member(f"s{i}", f"a{i}", float(i), None, None, "10.0.0.1", "10.0.0.0/24",
                 device=f"d{i}") for i in range(40)]
    for m in ms:  # 40 VPN users, each on its own machine
        put(old, m)
        leave(old, m)
    assert machine_share(cold) < 0.1  # not the uninformed 0.5
    assert machine_share(Partition(key="net:AS3")) == 0.5


# ------------------------------------------------------------ the first hour


def _first(findings: list[tuple[float, Findings]]) -> float | None:
    return next((t for t, f in findings if f.alerts), None)


def _feed(events: list[Enriched]) -> list[tuple[float, Findings]]:
    det = detector()
    out = []
    for ev in sorted(events, key=lambda e: e.ts):
        for key in det.group_keys(ev):
            f = det.process(ev, key)
            if f:
                out.append((ev.ts, f))
    return out


def test_a_slow_name_less_farm_in_the_detectors_first_hour_is_found_in_that_burst() -> None:
    """Twelve accounts 100 s apart round-robin over three machines from the detector's
    tenth minute: no 300 s window shows a shared machine, the hour's does -- judged
    against the VPN exit's prior, not waited out until the exit has a history."""
    rng = random.Random(51)
    background = _vpn_users(rng, 40, 2 * 3600.0)
    names = random_names(random.Random(52), 12)
    farm = _room(rng, 600.0, names, 100.0)
    found = _feed(background + farm)
    first = _first(found)
    assert first is not None and first <= farm[7].ts  # within its first burst
    flags, alerts = run(background + farm)
    (alert,) = farm_alerts(alerts)
    assert set(alert.accounts) <= set(names) and len(alert.accounts) >= 10
    assert {f.account for f in flags.values()} <= set(names)
    ev = alert.evidence  # members, similarity, exits, RTT spread, span, learned expectation
    assert len(ev["members"]) == len(alert.accounts) and "similarity" in ev
    assert ev["exits"][0]["exit"] == "AS64600" and ev["origin"]["app_rtt_spread_ms"] > 0
    assert ev["origin"]["devices_shared_by_accounts"] == 3
    assert ev["timing"]["span_s"] > 0 and ev["timing"]["expected_in_window"] >= 0


def test_a_busy_vpn_exit_with_households_in_the_first_hour_is_never_a_group() -> None:
    """The same exit's unrelated users from the first minute, every fifth machine with a
    second account: the class's prior and the machine share keep the clumps no burst."""
    rng = random.Random(53)
    _, alerts = run(_vpn_users(rng, 160, 2 * 3600.0, pairs=True))
    assert farm_alerts(alerts) == []


def test_a_quiet_vpn_range_in_the_first_hour_is_never_a_group() -> None:
    """Six unrelated users within the detector's first hour, each on its own machine and
    host, similar RTTs: a clump with nothing shared."""
    rng = random.Random(54)
    events = [login(name, 300 + i * 500, f"45.76.5.{rng.randint(1, 250)}", HOSTING,
                    samples(rng, rng.uniform(50, 55), 3.0), relay=True)
              for i, name in enumerate(random_names(rng, 6))]
    _, alerts = run(events)
    assert farm_alerts(alerts) == []


# ----------------------------------------------- a batch on several residential ISPs


def _batch(stem: str, n: int, pace: float, *, machines: int | None) -> list[Enriched]:
    """``n`` consecutive serials ``pace`` s apart, alternating between a KT and an SK
    Broadband subscriber address (a residential proxy each), no relay flag; on
    ``machines`` machines round-robin, or each account on its own."""
    rng = random.Random(hash(stem) & 0xFFFF)
    exits = [("14.32.0.186", KT), ("58.224.2.234", SKB)]
    out = []
    for i in range(n):
        ip, asn = exits[i % 2]
        dev = f"room-{i % machines}" if machines else None
        out.append(login(f"{21 + i}{stem}", 3600 + i * pace, ip, asn,
                         samples(rng, rng.uniform(30, 50), 2.0), device=dev))
    return out


def test_a_family_batch_on_residential_proxies_of_two_isps_is_one_group() -> None:
    """Seven serials (``21jinbi`` .. ``27jinbi``) on four machines, three and four per
    exit: no exit holds ``min_size``, no relay flag -- the serials and the machines do."""
    events = _batch("jinbi", 7, 35.0, machines=4)
    flags, alerts = run(events)
    (alert,) = farm_alerts(alerts)
    assert sorted(alert.accounts) == sorted(e.account or "" for e in events)
    assert alert.subject["key"] == "tpl:jinbi"
    assert alert.evidence["serial_runs"] == [[21, 27]]
    assert alert.first_seen <= T0 + timedelta(seconds=3600 + 4 * 35.0)
    assert {f.account for f in flags.values()} == set(alert.accounts)


def test_consecutive_default_names_on_two_isps_each_on_its_own_machine_are_no_group() -> None:
    """Friends who signed up together (``21jinbi`` ..) from two homes behind two ISPs,
    each on a machine of their own: serials run, nothing is shared but two addresses."""
    _, alerts = run(_batch("jinbi", 7, 35.0, machines=None))
    assert farm_alerts(alerts) == []


def test_a_popular_stems_players_on_shared_pc_bang_machines_are_no_group() -> None:
    """A PC bang's machines carry several players of a popular stem over an evening; their
    numbers do not run consecutively."""
    rng = random.Random(55)
    numbers = rng.sample(range(1, 9999), 10)
    events = [login(f"shadow{n}", 3600 + i * 40, f"121.130.{i % 2}.77", (KT, SKB)[i % 2],
                    samples(rng, 6.0, 1.0), device=f"pc-{i % 4}")
              for i, n in enumerate(numbers)]
    _, alerts = run(events)
    assert farm_alerts(alerts) == []


# ------------------------------------------- a batch rented out of one data centre


def _hosted_batch(names: list[str], pace: float, *, flagged_every: int = 5) -> list[Enriched]:
    """Accounts ``pace`` s apart through three /24s of one hosting AS, each from its own
    machine and address, the relay detector flagging one login in ``flagged_every``."""
    rng = random.Random(len(names))
    return [login(name, 1800 + i * pace, f"45.64.{6 + i % 3}.{20 + i}", HOSTING,
                  samples(rng, (80.0, 48.7, 57.5)[i % 3], 0.4), relay=i % flagged_every == 3)
            for i, name in enumerate(names)]


def test_consecutive_serials_through_one_hosting_as_are_found_by_the_fifth_login() -> None:
    """``ZHaNshI101`` .. paced minutes apart through a data centre's /24s, each on its own
    machine and address, one relay flag in five: the hosting exit stands for the flags
    the relay detector missed."""
    names = ["ZHaNshI101", "zHAnshi102", "ZHanshi103", "ZhanShi104", "zhANShi105",
             "ZHANshI106", "zhansHI107", "zHANShI108"]
    events = _hosted_batch(names, 280.0)
    found = _feed(events)
    assert _first(found) == events[4].ts
    flags, alerts = run(events)
    (alert,) = farm_alerts(alerts)
    assert sorted(alert.accounts) == sorted(names)
    assert {f.account for f in flags.values()} == set(names)
    assert alert.evidence["exits"][0]["exit"] == "AS64600"


def test_a_popular_stems_players_through_one_vpn_service_are_no_group() -> None:
    """Five ``shadow`` players whose numbers do not run, through one VPN's hosting AS
    within the hour, each from its own machine: one family, one exit, no batch."""
    rng = random.Random(56)
    names = [f"shadow{n}" for n in rng.sample(range(1, 99999), 6)]
    _, alerts = run(_hosted_batch(names, 500.0, flagged_every=100))
    assert farm_alerts(alerts) == []


def test_consecutive_default_names_with_one_through_a_vpn_are_no_group() -> None:
    """A launch-day crowd's consecutive default names from homes of one ISP, one of them
    through a VPN's hosting AS: the family's network is mostly residential."""
    rng = random.Random(57)
    events = []
    for i in range(8):
        hosted = i == 4
        events.append(login(f"player{10230 + i}", 600 + i * 200.0,
                            "45.64.6.9" if hosted else f"14.{rng.randint(32, 63)}.{rng.randint(0, 255)}.9",
                            HOSTING if hosted else KT, samples(rng, rng.uniform(5, 30), 2.0),
                            relay=hosted))
    _, alerts = run(events)
    assert farm_alerts(alerts) == []


# ------------------------------------- two VPN users of the range meet in one /24


def test_two_vpn_users_meeting_in_one_24_of_the_range_do_not_join_a_name_less_farm() -> None:
    """A name-less farm through one /24 of a hosting range, its hosts each used twice,
    paced four minutes apart; two unrelated VPN users of the range come through another
    /24 (the same one, by chance), each from its own machine and host, RTTs inside the
    farm's band. A /24 shared by a pair is chance; the farm's /24 carries a dozen."""
    rng = random.Random(58)
    names = random_names(random.Random(59), 12)
    farm = [login(name, 3600 + i * 240.0, f"43.200.2.{100 + i % 6}", HOSTING,
                  samples(rng, 55.0, 2.0), relay=True, device=f"box-{i % 10}")
            for i, name in enumerate(names)]
    passers = [login("ghost_tofu", 3600 + 1.5 * 240, "43.200.0.195", HOSTING,
                     samples(rng, 55.0, 2.0), relay=True),
               login("tinydragon", 3600 + 2.5 * 240, "43.200.0.241", HOSTING,
                     samples(rng, 55.0, 2.0), relay=True)]
    flags, alerts = run(farm + passers)
    (alert,) = farm_alerts(alerts)
    assert set(alert.accounts) == set(names)
    assert not {"ghost_tofu", "tinydragon"} & {f.account for f in flags.values()}


# ------------------------- a hosting exit's flagged and foreign-routed accounts


def test_a_farm_the_relay_detector_flags_in_part_is_one_alert_on_its_hosting_exit() -> None:
    """A name-less farm through a hosting range whose logins the relay detector flags
    one in three; every login's traceroute shows the same foreign route. The flagged
    ones and the others meet in the exit's partition: one alert, not one per
    partition."""
    rng = random.Random(60)
    names = random_names(random.Random(61), 15)
    events = [login(name, 3600 + i * 45.0, f"43.200.{3 + i % 2}.{60 + i % 4}", HOSTING,
                    samples(rng, (33.0, 41.5)[i % 2], 0.5), relay=i % 3 == 0, route="sigCN7",
                    device=f"rig-{i % 4}")
              for i, name in enumerate(names)]
    flags, alerts = run(events)
    (alert,) = farm_alerts(alerts)
    assert alert.subject["key"] == "net:AS64600"
    assert set(alert.accounts) == set(names) == {f.account for f in flags.values()}
    assert alert.evidence["route"] == "CN>KR"


def test_a_vpn_ranges_users_abroad_are_never_a_group() -> None:
    """Unrelated users of a hosting range's VPN whose routes come from abroad (one
    signature), relay-flagged or not, each from its own machine and host, RTTs from
    everywhere, arriving all day."""
    rng = random.Random(62)
    events = []
    t = 0.0
    while t < 8 * 3600:
        t += rng.expovariate(1 / 150)
        name = random_names(rng, 1)[0]
        events.append(login(name, t, f"43.200.{rng.randint(0, 9)}.{rng.randint(1, 250)}",
                            HOSTING, samples(rng, rng.uniform(20, 200), 4.0),
                            relay=rng.random() < 0.4, route="sigCN7"))
    _, alerts = run(events)
    assert farm_alerts(alerts) == []


def test_a_restored_detector_rebuilds_each_classs_prior_from_its_partitions() -> None:
    rng = random.Random(63)
    det = detector()
    events = sorted(_vpn_users(rng, 120, 4 * 3600.0, pairs=True) + _vpn_users(rng, 30, 3600.0),
                    key=lambda e: e.ts)
    for ev in events:
        for key in det.group_keys(ev):
            det.process(ev, key)
    det.flush(events[-1].ts + 1.0)
    again = detector()
    again.load_state(det.state())
    assert again.pools.keys() == det.pools.keys()
    for cls, pool in det.pools.items():
        restored = again.pools[cls]
        assert restored.parts == pool.parts
        assert (restored.seen, restored.shared) == (pool.seen, pool.shared)
        # the arrivals of the live partitions (an evicted one's arrivals are not saved)
        decayed = pool.count * 0.5 ** ((restored.ts - pool.ts) / FarmSettings().background_half_life_s)
        assert restored.count <= decayed * (1 + 1e-9)
        if cls == "net:AS":  # one exit, never evicted: all of them
            assert abs(restored.count - decayed) < 1e-6 * decayed
    assert again.pools["net:AS"].parts == 1 and again.pools["net:AS"].seen > 0
    assert all(p.pool is again.pools[pool_class(p.key)] for p in again.parts.values())
