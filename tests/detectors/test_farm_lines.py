"""A name-less farm on residential proxies, found by its accounts per home line against
the learned rate, and the crowds and households that must not form a group there."""

from __future__ import annotations

import random

from pathsentry.detectors.base import Enriched
from pathsentry.detectors.farm.lines import line_limit
from pathsentry.detectors.farm.model import FarmSettings, Pool
from tests.detectors.test_farm import farm_alerts, random_names, run
from tests.detectors.test_farm_families import KT, SKB, homes, login, samples

NET24 = "121.130.9."


def proxied_room(names: list[str], t0: float, pacing: float, rng: random.Random, *,
                 addresses: tuple[str, ...] = (f"{NET24}77", f"{NET24}78"),
                 machines: int = 3) -> list[Enriched]:
    """A room abroad whose ``machines`` run the accounts in turn, each account through
    one of a /24's home-line ``addresses`` (a residential proxy's exits): no relay flag,
    no foreign route, no shared name."""
    return [login(n, t0 + i * pacing * rng.uniform(0.8, 1.2), addresses[i % len(addresses)], KT,
                  samples(rng, 48.0 + 4 * (i % machines), 6.0), device=f"room-{i % machines}")
            for i, n in enumerate(names)]


def neighbours(rng: random.Random, n: int, hours: float) -> list[Enriched]:
    """Subscribers of the proxy's /24, one account and one machine each."""
    return [login(name, rng.uniform(0, hours * 3600), f"{NET24}{rng.randint(100, 250)}", KT,
                  samples(rng, rng.uniform(2, 12), 2.0)) for name in random_names(rng, n)]


def test_a_name_less_room_on_two_home_lines_of_one_24_is_one_group() -> None:
    rng = random.Random(71)
    names = random_names(random.Random(72), 16)
    events = homes(rng, 60, 3) + neighbours(rng, 20, 3) + proxied_room(names, 3600, 40.0, rng)
    flags, alerts = run(events)
    (g,) = farm_alerts(alerts)
    assert sorted(g.accounts) == sorted(names)
    assert {f.account for f in flags.values()} == set(names)
    lines = g.evidence["home_lines"]
    limit = lines["learned_limit_accounts_per_address"]
    assert limit > FarmSettings().home_accounts
    assert {ip for ip, _ in lines["accounts_per_address"]} == {f"{NET24}77", f"{NET24}78"}
    assert all(n >= limit for _, n in lines["accounts_per_address"])
    assert lines["machines"] == 3 and lines["span_s"] > 0
    assert g.subject["pattern"] == f"line:{NET24}0/24"


def test_a_room_address_under_the_limit_joins_by_its_machines() -> None:
    """Three proxy addresses, one of them carrying only a few accounts: its accounts run
    on the room's machines and join the group."""
    rng = random.Random(73)
    names = random_names(random.Random(74), 18)
    room = proxied_room(names[:15], 3600, 30.0, rng)
    few = [login(n, 3600 + 200 + 60 * i, f"{NET24}79", KT, samples(rng, 48.0, 6.0),
                 device=f"room-{i}") for i, n in enumerate(names[15:])]
    _, alerts = run(homes(rng, 40, 3) + room + few)
    (g,) = farm_alerts(alerts)
    assert sorted(g.accounts) == sorted(names)


def family_evenings(rng: random.Random, family: list[str], hours: int = 6) -> list[Enriched]:
    """A household's accounts on one home line (``.50`` of the /24), on two machines,
    logging in one after another every hour."""
    return [login(n, hour * 3600 + 60 * i + rng.uniform(0, 30), f"{NET24}50", KT,
                  samples(rng, 5.0, 2.0), device=f"home-{i % 2}")
            for hour in range(hours) for i, n in enumerate(family)]


def test_a_family_at_home_is_never_a_group() -> None:
    """Five accounts of one household on one line, on two machines, every evening hour."""
    rng = random.Random(75)
    family = random_names(random.Random(76), 5)
    events = homes(rng, 60, 6) + neighbours(rng, 20, 6) + family_evenings(rng, family)
    assert run(events) == ({}, {})


def test_friends_on_two_isps_each_on_their_own_machine_are_never_a_group() -> None:
    rng = random.Random(77)
    friends = random_names(random.Random(78), 8)
    events = homes(rng, 40, 3)
    events += [login(n, 3600 + 20 * i, (f"{NET24}{30 + i}", f"175.223.4.{30 + i}")[i % 2],
                     (KT, SKB)[i % 2], samples(rng, 6.0, 2.0)) for i, n in enumerate(friends)]
    assert run(events) == ({}, {})


def test_a_residential_proxy_service_with_unrelated_users_is_never_a_group() -> None:
    """Thirty unrelated users through one home-line exit of a proxy service within the
    hour: many accounts on one address, each from its own machine."""
    rng = random.Random(79)
    users = random_names(random.Random(80), 30)
    events = homes(rng, 40, 3) + [
        login(n, 3600 + rng.uniform(0, 3000), f"{NET24}77", KT, samples(rng, rng.uniform(20, 200), 4.0))
        for n in users]
    assert run(events) == ({}, {})


def test_a_pc_bang_labelled_as_a_home_line_is_never_a_group() -> None:
    """A PC bang the geo source calls residential: forty players, one seat each."""
    rng = random.Random(81)
    events = [login(n, rng.uniform(0, 3 * 3600), "211.234.50.20", KT, samples(rng, 3.0, 1.0),
                    device=f"seat-{i}") for i, n in enumerate(random_names(rng, 40))]
    assert run(events) == ({}, {})


def test_the_limit_is_learned_from_the_lines_second_accounts() -> None:
    """No history: the households' floor. Lines that often carry a second account raise
    it; a farm's few crowded addresses in the tail do not lower it."""
    s = FarmSettings()
    assert line_limit(None, s)[0] == s.home_accounts + 1
    busy, r = line_limit(Pool(lines=[10_000.0, 3_000.0, 900.0]), s)
    assert busy >= 9 and 0.25 < r < 0.35
    quiet = line_limit(Pool(lines=[10_000.0, 50.0]), s)[0]
    assert line_limit(Pool(lines=[10_000.0, 50.0, 40.0, 40.0, 40.0, 40.0, 40.0]), s)[0] == quiet


def test_a_room_whose_machines_each_keep_to_one_proxy_address_is_one_group() -> None:
    """Four machines over two proxy addresses, each machine always on the same one: no
    machine links the addresses, the /24's two crowded home lines in one hour do."""
    rng = random.Random(83)
    names = random_names(random.Random(84), 16)
    _, alerts = run(homes(rng, 40, 3) + proxied_room(names, 3600, 30.0, rng, machines=4))
    (g,) = farm_alerts(alerts)
    assert sorted(g.accounts) == sorted(names)
    assert g.evidence["home_lines"]["machines"] == 4
