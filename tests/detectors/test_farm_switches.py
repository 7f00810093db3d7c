"""A name-less room on one /24's home lines found by its machines switching accounts
within minutes -- or within the window, with the marks of a path that is no home's --
and the households whose machines take turns that must not form a group."""

from __future__ import annotations

import random

import pytest

from pathsentry.detectors.base import Enriched
from pathsentry.detectors.farm.lines import switch_share, switching
from pathsentry.detectors.farm.model import FarmSettings, Member, Partition, Pool
from tests.detectors.test_farm import farm_alerts, random_names, run
from tests.detectors.test_farm_families import KT, homes, login, samples
from tests.detectors.test_farm_lines import NET24, family_evenings, neighbours


def cycling_room(names: list[str], t0: float, rng: random.Random, *, machines: int = 3,
                 addresses: int = 5, own: bool = False) -> list[Enriched]:
    """A room whose ``machines`` each log in a new account every minute or so (12-23 s
    between the room's logins), each account through one of ``addresses`` home lines
    of the /24 in turn (``own``: each machine through two addresses of its own, which
    no other machine uses): three accounts an address or fewer, under any household's
    limit; each machine with its own access latency."""
    out, t = [], t0
    for i, n in enumerate(names):
        host = 2 * (i % machines) + (i // machines) % 2 if own else i % addresses
        out.append(login(n, t, f"{NET24}{10 + host}", KT,
                         samples(rng, 18.0 + 3 * (i % machines), 0.5),
                         device=f"room-{i % machines}"))
        t += rng.uniform(12, 23)
    return out


@pytest.mark.parametrize("own", [False, True])
def test_machines_cycling_accounts_on_a_quiet_24_are_one_room(own: bool) -> None:
    """A small world (a few dozen logins in four hours): the /24's background is near
    zero, no address carries more than a household, no relay flag, no foreign route, no
    shared name -- three machines each switching to a new account every minute are.
    With addresses of their own, no address ties the machines: the third joins when it
    switches to its third account."""
    rng = random.Random(91)
    names = random_names(random.Random(92), 15)
    room = cycling_room(names, 5400, rng, own=own)
    _, alerts = run(homes(rng, 25, 4) + neighbours(rng, 6, 4) + room)
    (g,) = farm_alerts(alerts)
    assert sorted(g.accounts) == sorted(names)
    lines = g.evidence["home_lines"]
    assert lines["machines"] == 3
    assert lines["account_switches"] >= 12
    assert max(n for _, n in lines["accounts_per_address"]) < lines[
        "learned_limit_accounts_per_address"]
    # found by the eighth login: more accounts than a household, switches in the tail
    early = [e for e in homes(random.Random(91), 25, 4) if e.ts <= room[7].ts] + room[:8]
    assert len(farm_alerts(run(early)[1])) == 1


def test_households_whose_machines_take_turns_are_never_a_group() -> None:
    """One /24's homes: family PCs whose two or three players take turns hours apart,
    siblings switching accounts within minutes on their own PC (a pair a home, four
    homes in the same hour: more accounts than a household, but no room ties them), and a
    family of five on two PCs logging in a minute apart every evening hour."""
    rng = random.Random(93)
    events = homes(rng, 40, 6) + neighbours(rng, 20, 6)
    for h in range(4):  # family PCs: turns at sessions of an hour or more
        family = random_names(random.Random(100 + h), 3)
        events += [login(n, 1800 * (k + 1) + rng.uniform(0, 300), f"{NET24}{60 + h}", KT,
                         samples(rng, 5.0, 2.0), device=f"pc-{h}") for k, n in enumerate(family)]
    for h in range(4):  # siblings, a pair a home, minutes apart, all in one hour
        pair = random_names(random.Random(200 + h), 2)
        t = 9000 + rng.uniform(0, 2400)
        events += [login(n, t + 90 * k, f"{NET24}{70 + h}", KT, samples(rng, 5.0, 2.0),
                         device=f"sib-{h}") for k, n in enumerate(pair)]
    events += family_evenings(rng, random_names(random.Random(300), 5))
    assert run(events) == ({}, {})


def test_the_switch_share_is_learned_from_the_class() -> None:
    """No history: the documented prior. A class whose machines often switch account
    (players sharing PCs) raises the share, and so the switches a room needs."""
    s = FarmSettings()
    assert switch_share(None, s) == s.switch_prior_share
    assert switch_share(Pool(sw_seen=1000.0, sw_switched=200.0), s) > 0.15
    assert switch_share(Pool(sw_seen=1000.0, sw_switched=0.0), s) < s.switch_prior_share


def slow_room(names: list[str], t0: float, rng: random.Random, *, machines: int = 6,
              marked: bool = True) -> list[Enriched]:
    """A room of ``machines`` machines, each on a home line of its own in the /24,
    logging in one account every three to six minutes in turn: each machine takes a new
    account every twenty to thirty minutes (two or three an hour, under any household's
    limit and far slower than ``switch_s``). ``marked``: half the logins relay-flagged and
    a third with a foreign-origin route, at random (the relay detector and the sampled
    traceroutes see some of them, not all)."""
    out, t = [], t0
    for i, n in enumerate(names):
        out.append(login(n, t, f"{NET24}{20 + i % machines}", KT,
                         samples(rng, 40.0 + 3 * (i % machines), 4.0),
                         relay=marked and rng.random() < 0.5,
                         route="cn-kr" if marked and rng.random() < 0.33 else None,
                         device=f"slow-{i % machines}"))
        t += rng.uniform(160, 370)
    return out


def test_machines_taking_a_new_account_every_half_hour_behind_a_relay_are_one_room() -> None:
    """Six machines, one address each, a new account on each every twenty-odd minutes,
    half the logins relay-flagged: no address crowded, no switch within ``switch_s``, no
    shared name -- their slow switches, against the class's learned share of those, and
    the marks of the path are. Each machine's later accounts join the group."""
    rng = random.Random(95)
    names = random_names(random.Random(96), 30)
    room = slow_room(names, 3600, rng)
    _, alerts = run(homes(rng, 40, 6) + neighbours(rng, 10, 6) + room)
    (g,) = farm_alerts(alerts)
    assert len(set(g.accounts) & set(names)) >= 0.8 * len(names)
    assert set(g.accounts) <= set(names)
    lines = g.evidence["home_lines"]
    assert lines["machines"] == 6
    assert lines["account_slow_switches"] > lines["account_switches"]
    assert 0 < lines["learned_slow_switch_share"] < 0.1


def test_the_same_pace_from_home_without_a_mark_of_the_path_is_no_group() -> None:
    """The same six machines and pace with no relay flag and a domestic route -- as
    households whose PCs take turns every twenty minutes look, two or three of them on
    one /24 -- form no group: a slow switch is common at home."""
    rng = random.Random(97)
    room = slow_room(random_names(random.Random(98), 30), 3600, rng, marked=False)
    assert run(homes(rng, 40, 6) + neighbours(rng, 10, 6) + room) == ({}, {})


def test_two_families_each_with_three_accounts_on_one_phone_are_no_group() -> None:
    """Two homes of one /24, each phone taking its three accounts in turn ten to twenty
    minutes apart and replaying them all evening: six accounts, slow switches, no mark of
    a relay or a foreign route."""
    rng = random.Random(99)
    events = homes(rng, 40, 6) + neighbours(rng, 10, 6)
    for h in range(2):
        family = random_names(random.Random(400 + h), 3)
        t = 1800.0 + 300 * h
        for k in range(12):
            events.append(login(family[k % 3], t, f"{NET24}{80 + h}", KT,
                                samples(rng, 6.0, 2.0), device=f"phone-{h}"))
            t += rng.uniform(600, 1200)
    assert run(events) == ({}, {})


def test_two_family_pcs_whose_three_players_switch_within_minutes_are_no_group() -> None:
    """Two homes of one /24 in the same hour, each PC's three players logging in two to
    four minutes apart on the evening's first turn (every account new on its machine: a
    switch within ``switch_s``), no relay flag, a domestic route -- seed 5404 of
    ``pathsentry evaluate --worlds 20 --seed 5401 --accounts 1500 --hours 6 --social``.
    Six accounts are more than a household's, and three fast switches among six logins
    are rare at the class's share, but they are two machines: a PC that switches once
    switches again, so the machines, not the switches, are the independent events, and
    two switching machines among six logins' chances are no tail event."""
    rng = random.Random(101)
    events = homes(rng, 40, 6) + neighbours(rng, 10, 6)
    for h in range(2):
        family = random_names(random.Random(500 + h), 3)
        t = 1800.0 + 900 * h
        for n in family:
            events.append(login(n, t, f"{NET24}{85 + h}", KT, samples(rng, 6.0, 2.0),
                                device=f"pc-{h}"))
            t += rng.uniform(120, 240)
    assert run(events) == ({}, {})


def test_the_slow_switch_share_is_learned_apart() -> None:
    """The slow switches' share has its own count in the class and the same prior."""
    s = FarmSettings()
    assert switch_share(None, s, slow=True) == s.switch_prior_share
    pool = Pool(sw_seen=1000.0, sw_switched=5.0, sw_slow=150.0)
    assert switch_share(pool, s, slow=True) > 0.1 > switch_share(pool, s)



def test_a_family_pc_on_the_rooms_24_does_not_ride_on_the_rooms_marks() -> None:
    """One window of a /24's home lines: a room of four machines, each taking a new
    account every 25 minutes, two logins in three relay-flagged, and a family PC on another
    line whose three players took turns minutes apart (their earlier evening out of
    view: each account new on the machine, a slow switch) with no relay flag or foreign
    route. The room is the group; the family's machine, unmarked, is not in it."""
    def member(account: str, ts: float, ip: str, device: str, gap: float | None,
               relay: bool = False) -> Member:
        return Member(f"s-{account}", account, ts, f"L-{account}", None, ip,
                      f"{NET24}0/24", relay=relay, device=device, switch_gap=gap)

    room = [member(f"r{m}{k}", 1500.0 * k + 60.0 * m, f"{NET24}{20 + m}", f"room-{m}",
                   None if k == 0 else 1500.0, relay=(m + k) % 3 != 0)
            for m in range(4) for k in range(3)]
    family = [member(f"f{k}", 600.0 + 400.0 * k, f"{NET24}90", "family-pc", 400.0)
              for k in range(3)]
    part = Partition(key=f"net:{NET24}0/24", pool=Pool())
    found = switching(part, room + family, FarmSettings())
    assert {x.account for x in found} == {x.account for x in room}

