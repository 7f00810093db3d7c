"""A name-less room on residential proxies of several /24s (and ISPs), found by its
machines hopping across home lines, and the homes, friends and proxy users that must
not form a group there."""

from __future__ import annotations

import json
import random

from pathsentry.detectors.base import Enriched
from pathsentry.detectors.farm.hops import hop_share
from pathsentry.detectors.farm.model import FarmSettings, Partition, Sightings
from tests.detectors.test_farm import detector, farm_alerts, random_names, run
from tests.detectors.test_farm_families import KT, SKB, homes, login, samples

#: a room's proxy exits: one home line on each of two /24s of two ISPs
PROXIES = (("121.130.9.77", KT), ("175.223.4.21", SKB))


def hopping_room(names: list[str], t0: float, pacing: float, rng: random.Random, *,
                 machines: int = 3, proxies: tuple[tuple[str, int], ...] = PROXIES
                 ) -> list[Enriched]:
    """A room abroad whose ``machines`` run the accounts in turn, the proxy in front of
    them handing out its exits in turn (one more exit than machines would line them
    up: here the machines and the exits are out of step, so each machine hops): no
    relay flag, no foreign route, no shared name, each exit under a household's
    accounts per line."""
    return [login(n, t0 + i * pacing * rng.uniform(0.8, 1.2), proxies[i % len(proxies)][0],
                  proxies[i % len(proxies)][1], samples(rng, 48.0 + 4 * (i % machines), 6.0),
                  device=f"room-{i % machines}")
            for i, n in enumerate(names)]


def hop_alerts(alerts: dict) -> list:
    return [a for a in farm_alerts(alerts) if a.subject["key"].startswith("hop:")]


def test_a_room_on_proxies_of_two_isps_is_one_group_across_them() -> None:
    """Ten accounts on three machines through one home line of KT and one of SK
    Broadband: four and five accounts per line at most, under the household limit,
    so no /24 alone finds it; the machines carry it."""
    rng = random.Random(91)
    names = random_names(random.Random(92), 10)
    flags, alerts = run(homes(rng, 80, 3) + hopping_room(names, 3600, 90.0, rng))
    (g,) = farm_alerts(alerts)
    assert g.subject["key"] == "hop:KR"
    assert sorted(g.accounts) == sorted(names)
    assert {f.account for f in flags.values()} == set(names)
    ev = g.evidence["machines_across_lines"]
    assert ev["machines"] == 3 and ev["prefixes"] == 2 and ev["addresses"] == 2
    assert ev["prefixes_per_machine_max"] == 2
    assert ev["hop_tail_p"] <= FarmSettings().max_burst_p
    assert 0 < ev["learned_hop_share"] < 0.05
    assert ev["expected_hopping_machines"] < 1.0


def test_a_large_room_found_across_its_lines_keeps_growing_in_one_alert() -> None:
    """Forty accounts on eight machines over four /24s: one alert across the /24s
    holds them all (each /24's home-line judge sees a quarter of the room)."""
    rng = random.Random(93)
    names = random_names(random.Random(94), 40)
    proxies = (("121.130.9.77", KT), ("175.223.4.21", SKB), ("121.130.12.5", KT),
               ("175.223.8.40", SKB), ("121.130.9.78", KT))
    _, alerts = run(homes(rng, 80, 3) + hopping_room(names, 3600, 60.0, rng, machines=8,
                                                      proxies=proxies))
    (g,) = hop_alerts(alerts)
    assert sorted(g.accounts) == sorted(names)
    assert g.evidence["machines_across_lines"]["prefixes"] == 4


def test_a_family_at_home_never_hops() -> None:
    """Five accounts on one family PC behind one line, every hour: the PC never leaves
    the line."""
    rng = random.Random(95)
    family = random_names(random.Random(96), 5)
    events = homes(rng, 60, 6)
    for hour in range(6):
        events += [login(n, hour * 3600 + 60 * i, "121.130.9.50", KT, samples(rng, 5.0, 2.0),
                         device="family-pc") for i, n in enumerate(family)]
    assert run(events) == ({}, {})


def test_friends_who_share_laptops_between_two_homes_are_never_a_group() -> None:
    """Three friends, each with a main and an alt account on one laptop, play at each
    other's homes on two ISPs within the hour: three machines hop, carrying six
    accounts -- few, and no tail event against the learned share of machines that hop
    (the friends' and the crowd's own laptops hop now and then)."""
    rng = random.Random(97)
    names = iter(random_names(random.Random(98), 30))
    events = homes(rng, 80, 3)
    # the crowd: a few laptops each carried between two homes with two accounts
    for i in range(12):
        t = rng.uniform(0, 3 * 3600)
        events += [login(next(names), t, f"121.140.{i}.9", KT, samples(rng, 6.0, 2.0),
                         device=f"lap-{i}"),
                   login(next(names), t + 900, f"175.224.{i}.9", SKB, samples(rng, 6.0, 2.0),
                         device=f"lap-{i}")]
    homes_of = ("121.130.9.30", "175.223.4.31")
    for i in range(3):
        for k, acct in enumerate((next(names), next(names))):
            ip = homes_of[(i + k) % 2]
            events.append(login(acct, 3600 + 600 * k + 30 * i, ip, (KT, SKB)[(i + k) % 2],
                                samples(rng, 6.0, 2.0), device=f"pal-{i}"))
    assert run(events) == ({}, {})


def test_a_residential_proxy_service_rotating_exits_is_never_a_group() -> None:
    """Thirty unrelated users of a proxy service whose exits rotate over home lines of
    two ISPs: each user brings one account on a machine of their own, several sessions
    through several exits -- no machine carries a second account."""
    rng = random.Random(99)
    users = random_names(random.Random(100), 30)
    exits = [("121.130.9.77", KT), ("175.223.4.21", SKB), ("121.130.12.5", KT)]
    events = homes(rng, 40, 3)
    for u in users:
        for k in range(3):
            ip, asn = rng.choice(exits)
            events.append(login(u, 3600 + rng.uniform(0, 3000) + k, ip, asn,
                                samples(rng, rng.uniform(20, 200), 4.0)))
    assert run(events) == ({}, {})


def test_a_pc_bang_and_a_cgnat_are_not_home_lines() -> None:
    """Seats of a PC bang (business) and phones behind a CGNAT (mobile) shared by many
    accounts, the same seats used on two of the operator's /24s: never keyed here."""
    rng = random.Random(101)
    events = []
    for i, n in enumerate(random_names(rng, 40)):
        events.append(login(n, rng.uniform(0, 3 * 3600), ("211.234.50.20", "211.234.51.20")[i % 2],
                            KT, samples(rng, 3.0, 1.0), device=f"seat-{i % 6}", kind="business"))
    for i, n in enumerate(random_names(rng, 40)):
        events.append(login(n, rng.uniform(0, 3 * 3600), ("223.38.1.5", "223.38.2.5")[i % 2],
                            KT, samples(rng, 30.0, 20.0), device=f"phone-{i % 6}", kind="mobile"))
    assert not [a for a in farm_alerts(run(events)[1]) if a.subject["key"].startswith("hop:")]


def test_a_named_batch_hopping_across_lines_is_its_family_partitions() -> None:
    """A family's consecutive serials on the same hopping machines: one alert, the
    family partition's (the machines' partition leaves named batches to it)."""
    rng = random.Random(103)
    names = [f"goldbot{i:02d}" for i in range(1, 13)]
    _, alerts = run(homes(rng, 80, 3) + hopping_room(names, 3600, 40.0, rng))
    (g,) = farm_alerts(alerts)
    assert g.subject["key"] == "tpl:goldbot"


def test_the_share_of_machines_that_hop_is_learned_and_leaves_the_room_out() -> None:
    s = FarmSettings()
    p = Partition(key="hop:KR")
    assert hop_share(p, s) == s.hop_prior_share
    p.hops = Sightings(seen=10_000.0, hopped=500.0)
    assert 0.045 < hop_share(p, s) < 0.055
    # a room's own twelve hopping machines are no background of itself
    p.hops = Sightings(seen=1_000.0, hopped=12.0)
    assert hop_share(p, s, 12) < hop_share(p, s)


def test_a_room_found_keeps_its_alert_across_a_restore() -> None:
    """A worker hands the partition over mid-burst: the sightings are not saved, but
    the room's members and group are, and its machines' next logins join the same
    alert."""
    rng = random.Random(105)
    names = random_names(random.Random(106), 20)
    room = hopping_room(names, 3600, 60.0, rng)
    det = detector()
    _, first = run(homes(rng, 60, 1) + room[:12], [det])  # the homes before the room
    (g,) = hop_alerts(first)
    again = detector()
    again.load_state(json.loads(json.dumps(det.state())))
    _, later = run(room[12:], [again])
    (g2,) = hop_alerts(later)
    assert g2.alert_id == g.alert_id and g2.version > g.version
    assert set(g.accounts) < set(g2.accounts) == set(names)


def test_sightings_stay_bounded() -> None:
    """A machine count over ``hop_max_devices``: the least recently seen leave first."""
    det = detector(hop_max_devices=50)
    rng = random.Random(107)
    events = [login(n, 60.0 * i, f"121.131.{i // 200}.{1 + i % 200}", KT, samples(rng, 5.0, 2.0))
              for i, n in enumerate(random_names(random.Random(108), 300))]
    run(events, [det])
    view = det.parts["hop:KR"].hops
    assert view is not None and len(view.devices) <= 50 and len(view.addresses) <= 50
    assert view.seen == 300.0 and view.hopped == 0.0


def test_a_room_across_workers_is_one_alert() -> None:
    """Three workers, each owning the partitions its keys hash to: the room's logins of
    both ISPs meet in the country's partition, wherever their /24s' partitions live."""
    rng = random.Random(109)
    names = random_names(random.Random(110), 10)
    dets = [detector(), detector(), detector()]
    flags, alerts = run(homes(rng, 80, 3) + hopping_room(names, 3600, 75.0, rng), dets)
    (g,) = farm_alerts(alerts)
    assert g.subject["key"] == "hop:KR" and sorted(g.accounts) == sorted(names)
    assert {f.account for f in flags.values()} == set(names)


def test_a_room_crowding_its_lines_keeps_their_alerts_beside_its_own() -> None:
    """The known limit: seven accounts per proxy line pass the household limit, so each
    /24's home-line judge finds its half too (other partitions, other workers); the
    machines' alert holds the whole room."""
    rng = random.Random(109)
    names = random_names(random.Random(110), 14)
    _, alerts = run(homes(rng, 80, 3) + hopping_room(names, 3600, 75.0, rng),
                    [detector(), detector(), detector()])
    by_key = {a.subject["key"]: set(a.accounts) for a in farm_alerts(alerts)}
    assert by_key.pop("hop:KR") == set(names)
    assert sorted(len(v) for v in by_key.values()) == [7, 7]
    assert set().union(*by_key.values()) == set(names)


#: a room's proxy exits on the home lines of four /24s of two ISPs
FOUR = (("121.130.9.77", KT), ("175.223.4.21", SKB), ("121.130.12.5", KT),
        ("175.223.8.40", SKB))


def test_one_machine_through_the_home_lines_of_four_24s_is_a_room() -> None:
    """One machine runs nine accounts seconds apart through residential proxies of four
    /24s (two or three accounts a line, far under a household's): one hopping machine,
    but eight moves (a switch of /24 at every login, seconds apart: faster than a machine
    is carried between homes), each as rare as a laptop's one -- found by its fifth
    login."""
    rng = random.Random(99)
    names = random_names(random.Random(100), 9)
    room = hopping_room(names, 3600, 9.0, rng, machines=1, proxies=FOUR)
    events = homes(rng, 80, 3) + room
    det = detector()
    first = None
    for ev in sorted(events, key=lambda e: e.ts):
        for key in det.group_keys(ev):
            out = det.process(ev, key)
            if out and out.alerts and first is None:
                first = ev.ts
    assert first is not None and first <= sorted(e.ts for e in room)[4]
    _, alerts = run(events)
    (g,) = hop_alerts(alerts)
    assert sorted(g.accounts) == sorted(names)
    ev = g.evidence["machines_across_lines"]
    assert ev["machines"] == 1 and ev["moves_across_24s"] == 8
    assert ev["hop_tail_p"] <= FarmSettings().max_burst_p


def test_a_laptop_back_and_forth_between_two_homes_is_one_move() -> None:
    """A household's laptop carried between its home and a friend's and back, twice
    within the hour, with five accounts: four changes of line, but two /24s -- one move,
    no tail event."""
    rng = random.Random(101)
    names = random_names(random.Random(102), 5)
    homes_of = (("121.130.9.30", KT), ("175.223.4.31", SKB))
    laptop = [login(n, 3600 + 700 * i, homes_of[i % 2][0], homes_of[i % 2][1],
                    samples(rng, 6.0, 2.0), device="laptop") for i, n in enumerate(names)]
    assert run(homes(rng, 80, 3) + laptop) == ({}, {})


#: a room's proxy exits: three home lines of one ISP, on two /24s
TWO_24S = (("14.32.1.30", KT), ("14.32.1.220", KT), ("14.32.2.166", KT))


def test_two_machines_handed_two_24s_in_turn_seconds_apart_are_a_room() -> None:
    """Two machines run thirteen accounts six seconds apart through three proxy
    addresses of two /24s of one ISP (at most five accounts an address, a household's
    limit): each machine's /24s beyond its first are one move, two for the room, no tail
    event; but each switches /24 three or four times within a minute, which no laptop
    carried between homes does."""
    rng = random.Random(103)
    names = random_names(random.Random(104), 13)
    room = hopping_room(names, 3600, 6.0, rng, machines=2, proxies=TWO_24S)
    _, alerts = run(homes(rng, 80, 3) + room)
    (g,) = hop_alerts(alerts)
    assert sorted(g.accounts) == sorted(names)
    ev = g.evidence["machines_across_lines"]
    assert ev["machines"] == 2 and ev["prefixes"] == 2 and ev["moves_across_24s"] >= 6
    assert ev["hop_tail_p"] <= FarmSettings().max_burst_p

