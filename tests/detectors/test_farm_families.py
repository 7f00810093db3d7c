"""Farm groups across name families, pacings, exits and machines, and the crowds that
must not form groups (PC bang, campus NAT, mobile CGNAT, a relay service's users,
honest players sharing a popular stem)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import timedelta

import pytest

from pathsentry.detectors.base import Enriched
from pathsentry.detectors.farm.families import family, family_template, serial_regularity
from pathsentry.enrich.geo import GeoInfo, prefix_of
from pathsentry.schemas import parse_event
from tests.detectors.test_farm import PLAYERS, T0, detector, farm_alerts, random_names, run

HOSTING = 64600  # a hosting AS: the farm's exits, and a VPN service's
KT, SKB, SKT, KREONET = 4766, 9318, 9644, 17579


def login(account: str, t: float, ip: str, asn: int, rtts: list[float], *,
          relay: bool = False, route: str | None = None, server: str = "kr-sel-1",
          device: str | None = None, kind: str | None = None) -> Enriched:
    """A login ``t`` s after T0 from ``ip`` in ``asn`` with application RTT samples ``rtts``
    (from the client device ``device``; by default one of the account's own), the
    address of the network kind ``kind`` (by default the ASN's)."""
    sid = f"s-{account}-{t:.0f}"
    ev = parse_event({
        "kind": "login", "event_id": f"L-{sid}", "ts": (T0 + timedelta(seconds=t)).isoformat(),
        "src_ip": ip, "session_id": sid, "account": account, "server_id": server,
        "app_rtt_ms": rtts, "tcp_rtt_ms": max(0.5, min(rtts) - (30.0 if relay else 0.2)),
        "client": {"device_id": device or f"dev-{account}"}})
    kind = kind or {HOSTING: "hosting", SKT: "mobile", KREONET: "education"}.get(asn,
                                                                                "residential")
    e = Enriched(ev, GeoInfo(country="KR", asn=asn, kind=kind, precision="city"), prefix_of(ip))
    e.notes["relay"] = {"score": 0.9 if relay else 0.1, "flagged": relay,
                        "exit_prefix": e.prefix, "gap_ms": 30.0 if relay else 0.2,
                        "excess_ms": None}
    if route is not None:
        e.notes["route"] = {"signature": route, "country_path": ["CN", "KR"],
                            "asn_path": [4134, asn], "foreign_origin": True}
    else:
        e.notes["route"] = {"signature": "dom", "country_path": ["KR"], "asn_path": [asn],
                            "foreign_origin": False}
    return e


def samples(rng: random.Random, base: float, jitter: float, n: int = 4) -> list[float]:
    return [round(base + rng.uniform(0, jitter), 2) for _ in range(n)]


# ------------------------------------------------------------------ name families


def _letters(k: int) -> str:
    """``a`` .. ``z``, ``aa``, ``ab`` .. for ``k`` = 1, 2 .."""
    out = ""
    while k:
        k, r = divmod(k - 1, 26)
        out = chr(97 + r) + out
    return out


FAMILIES: dict[str, Callable[[int], str]] = {
    "serial_end_padded": lambda i: f"xiaopai{i:03d}",
    "serial_end_plain": lambda i: f"goldbot{i}",
    "serial_middle": lambda i: f"dal{i:02d}ian",
    "serial_start": lambda i: f"{i:02d}mofa",
    "letter_suffix": lambda i: f"tianlong_{_letters(i + 20)}",
    "letter_prefix": lambda i: f"{_letters(i)}.longwang",
    "separator_dash": lambda i: f"bao-fa-{i}",
    "separator_dot": lambda i: f"xiyou.{i:04d}",
    "mixed_case": lambda i: f"{'Hanbing' if i % 2 else 'HANBING'}{i}",
    "short_stem": lambda i: f"qz{i:02d}",
    "hangul_stem": lambda i: f"작업장{i}",
    "cjk_stem": lambda i: f"小白_{i:02d}",
}


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_a_family_shares_one_stem_and_runs_regularly(kind: str) -> None:
    names = [FAMILIES[kind](i) for i in range(1, 13)]
    stems = {family(n)[0] for n in names}
    assert len(stems) == 1 and None not in stems
    assert serial_regularity([family(n)[1] for n in names]) == 1.0
    assert family_template(names) is not None


def test_names_without_a_mark_have_no_family() -> None:
    assert {family(n)[0] for n in ("minsu_kim", "lazytiger", "shadow_wolf", "x7")} == {None}


def farm(names: list[str], t0: float, pacing: float, *, relay: bool = True, route: str | None = None,
         seed: int = 0) -> list[Enriched]:
    """A farm room behind several /24s of one hosting AS, three machines a few ms apart
    (each running every third account), logging in ``pacing`` s apart (+-30 % noise)."""
    rng = random.Random(seed)
    exits = ["45.76.1.", "45.76.9.", "45.77.3."]
    machines = [38.0, 40.5, 43.0]
    out = []
    t = t0
    for i, name in enumerate(names):
        ip = f"{exits[i % 3]}{10 + i % 7}"
        rtts = samples(rng, machines[i % 3], 1.5)
        out.append(login(name, t, ip, HOSTING, rtts, relay=relay, route=route,
                         device=f"room-{seed}-{i % 3}"))
        t += pacing * rng.uniform(0.7, 1.3)
    return out


def found(names: list[str], events: list[Enriched]) -> None:
    """One alert holds >= 80 % of the farm, and it exists by the 5th member's login."""
    flags, alerts = run(events)
    assert {f.account for f in flags.values()} <= set(names)
    groups = farm_alerts(alerts)
    assert len(groups) == 1, [g.subject for g in groups]
    (g,) = groups
    assert len(set(g.accounts) & set(names)) >= 0.8 * len(names)
    assert set(g.accounts) <= set(names)
    fifth = sorted(e.ts for e in events if e.account in names)[4]
    assert g.first_seen.timestamp() <= fifth
    ev = g.evidence
    assert ev["exits"][0]["exit"] == f"AS{HOSTING}" and len(ev["exits"][0]["prefixes"]) == 3
    assert ev["origin"]["app_rtt_range_ms"][1] - ev["origin"]["app_rtt_range_ms"][0] > 4.0
    assert ev["first_seen"] and ev["last_seen"] and "similarity" in ev and "template" in ev


@pytest.mark.parametrize("kind", sorted(FAMILIES))
@pytest.mark.parametrize("pacing", [4.0, 45.0, 150.0])
def test_each_family_is_found_once_at_each_pacing(kind: str, pacing: float) -> None:
    names = [FAMILIES[kind](i) for i in range(1, 16)]
    found(names, farm(names, 3600, pacing, seed=len(kind)))


@pytest.mark.parametrize("kind", ["letter_prefix", "serial_end_plain", "hangul_stem"])
def test_a_batch_whose_serials_broke_off_at_failed_logins_is_one_group(kind: str) -> None:
    """A batch of fifteen on residential proxies of three ISPs, three machines taking
    turns, 13 s apart: serials 6 and 7 failed to log in (a failed login opens no
    session, so it is nobody's member), so the batch's serials break off between 5 and
    8, farther apart than its kin reach. The rest, on the first five's machines a
    minute later, is the same farm: one alert, not two."""
    rng = random.Random(11)
    proxies = [("106.240.0.177", 3786), ("14.32.0.125", KT), ("58.224.5.51", SKB),
               ("58.224.6.211", SKB)]
    names = [FAMILIES[kind](i) for i in range(1, 16)]
    kept = [n for i, n in enumerate(names) if i not in (5, 6)]
    events = []
    for i, name in enumerate(names):
        ip, asn = proxies[i % 4]
        if name in kept:
            events.append(login(name, 3600 + 13.0 * i, ip, asn, samples(rng, 55.0 + 4 * (i % 4), 4.0),
                                relay=True, device=f"room-{i % 3}"))
    flags, alerts = run(events)
    groups = farm_alerts(alerts)
    assert len(groups) == 1, [sorted(g.accounts) for g in groups]
    assert set(groups[0].accounts) == set(kept)
    assert {f.account for f in flags.values()} == set(kept)


@pytest.mark.parametrize("pacing", [4.0, 45.0, 150.0])
def test_a_family_farm_without_relay_flags_is_found_by_its_regular_serials(pacing: float) -> None:
    names = [FAMILIES["serial_end_padded"](i) for i in range(1, 13)]
    found(names, farm(names, 3600, pacing, relay=False))


@pytest.mark.parametrize("pacing", [4.0, 45.0])
def test_random_names_are_carried_by_the_connection_pattern(pacing: float) -> None:
    names = random_names(random.Random(21), 14)
    found(names, farm(names, 3600, pacing))


def quiet_range(rng: random.Random, hours: float) -> list[Enriched]:
    """A hosting range's unrelated VPN users, one every ~40 min from ``hours`` before the
    farm's session at 4 h (the detector watches the range first)."""
    events = []
    t = 4 * 3600 - hours * 3600
    while t < 4 * 3600:
        t += rng.expovariate(1 / 2400)
        events.append(login(random_names(rng, 1)[0], t, f"45.76.5.{rng.randint(1, 250)}",
                            HOSTING, samples(rng, rng.uniform(20, 200), 3.0), relay=True))
    return events


def test_random_names_paced_minutes_apart_behind_an_exit_with_history() -> None:
    """Slow pacing needs the exit's background: a quiet hosting range that then bursts."""
    names = random_names(random.Random(23), 12)
    found(names, quiet_range(random.Random(22), 4) + farm(names, 4 * 3600, 150.0))


# ------------------------------------------------------------------ hard negatives


def test_pc_bang_and_campus_nat_with_shared_stems_are_never_groups() -> None:
    rng = random.Random(31)
    names = PLAYERS + [f"shadow{rng.randint(1, 99999)}" for _ in range(10)]
    events = [login(n, rng.uniform(0, 3 * 3600), ip, asn, samples(rng, 3.0, 1.0))
              for ip, asn in (("211.234.50.20", KT), ("143.248.1.1", 1781)) for n in names]
    assert run(events) == ({}, {})


def test_campus_nat_whose_relay_flag_noise_clumps_is_never_a_group() -> None:
    """Hundreds of logins from one campus address; six of them, minutes apart, carry a
    (wrong) relay flag and the campus's RTT: many accounts on one address, but the
    address's own background says a handful of flags is nothing."""
    rng = random.Random(38)
    events = [login(f"{PLAYERS[i % len(PLAYERS)]}{rng.randint(1, 9999)}", rng.uniform(0, 3 * 3600),
                    "134.75.0.9", KREONET, samples(rng, 6.0, 2.0)) for i in range(400)]
    events += [login(n, 2 * 3600 + i * 70, "134.75.0.9", KREONET, samples(rng, 6.0, 2.0),
                     relay=True) for i, n in enumerate(random_names(rng, 6))]
    assert run(events) == ({}, {})


def test_a_residential_proxy_farm_on_one_subscriber_address_is_found() -> None:
    """The same shape on a home line: its neighbours log in now and then, the farm's
    relay-flagged accounts crowd onto the proxy's one address."""
    rng = random.Random(39)
    events = [login(n, rng.uniform(0, 3 * 3600), f"121.130.9.{rng.randint(1, 250)}", KT,
                    samples(rng, 8.0, 2.0)) for n in random_names(rng, 30)]
    names = random_names(random.Random(40), 10)
    events += [login(n, 2 * 3600 + i * 20, "121.130.9.77", KT, samples(rng, 52.0, 2.0),
                     relay=True, device=f"room-{i % 2}") for i, n in enumerate(names)]
    _, alerts = run(events)
    (g,) = farm_alerts(alerts)
    assert sorted(g.accounts) == sorted(names) and g.subject["key"] == "net:121.130.9.0/24"


def test_default_names_of_players_who_signed_up_together_are_never_a_group() -> None:
    """``player10231``, ``player10232``…: consecutive default names handed out to a
    launch-day crowd, from homes all over the country, one in ten through a VPN."""
    rng = random.Random(41)
    events = [login(f"player{10000 + i}", i * 3.0, f"{rng.randint(1, 220)}.{rng.randint(0, 255)}."
                    f"{rng.randint(0, 255)}.9", rng.choice((KT, SKB)), samples(rng, rng.uniform(3, 15), 2.0),
                    relay=i % 10 == 0) for i in range(600)]
    assert run(events) == ({}, {})


def test_mobile_cgnat_busy_hour_is_never_a_group() -> None:
    rng = random.Random(32)
    events = []
    for i in range(400):
        name = (f"dragon{rng.randint(1, 99999)}" if i % 5 == 0
                else PLAYERS[i % len(PLAYERS)] + str(rng.randint(1, 99999)))
        events.append(login(name, rng.uniform(0, 1800), f"223.38.7.{rng.randint(1, 16)}", SKT,
                            samples(rng, 25.0, 12.0)))
    assert run(events) == ({}, {})


def test_relay_service_with_many_unrelated_users_is_never_a_group() -> None:
    """A VPN exit range: users from everywhere at a rate that doubles in the evening."""
    rng = random.Random(33)
    events = []
    t = 0.0
    while t < 12 * 3600:
        rate = 1 / 120 if 4 * 3600 < t < 8 * 3600 else 1 / 300
        t += rng.expovariate(rate)
        name = random_names(rng, 1)[0]
        events.append(login(name, t, f"45.76.{rng.choice((1, 9))}.{rng.randint(1, 250)}",
                            HOSTING, samples(rng, rng.uniform(15, 220), 4.0), relay=True))
    _, alerts = run(events)
    assert farm_alerts(alerts) == []


def test_a_quiet_vpn_range_whose_few_users_clump_within_an_hour_is_never_a_group() -> None:
    """One unrelated user every ~40 min, then six within an hour: each from its own
    machine and host -- a Poisson clump, not a room."""
    rng = random.Random(35)
    events = []
    t = 0.0
    for name in random_names(rng, 8):
        t += rng.uniform(2000, 3000)
        events.append(login(name, t, f"45.76.5.{rng.randint(1, 250)}", HOSTING,
                            samples(rng, rng.uniform(40, 80), 20.0), relay=True))
    for i, name in enumerate(random_names(rng, 6)):
        events.append(login(name, t + 600 + i * 550, f"45.76.{rng.choice((1, 5))}.{rng.randint(1, 250)}",
                            HOSTING, samples(rng, rng.uniform(50, 70), 20.0), relay=True))
    _, alerts = run(events)
    assert farm_alerts(alerts) == []


def test_a_vpn_user_of_the_same_range_does_not_join_a_slow_farm() -> None:
    """The farm uses one /24 and its own machines; a VPN user with a similar RTT comes
    through another /24 of the hosting range during the farm's session."""
    names = random_names(random.Random(36), 12)
    events = quiet_range(random.Random(37), 4) + farm(names, 4 * 3600, 150.0)
    for e in events[-len(names):]:  # the farm's exit is one /24 only
        e.event = e.event.model_copy(update={"src_ip": "45.76.1.10"})
        e.prefix = "45.76.1.0/24"
    events.append(login("quietmoon", 4 * 3600 + 700, "45.77.8.33", HOSTING, [40.2, 41.0],
                        relay=True))
    flags, alerts = run(events)
    (g,) = farm_alerts(alerts)
    assert "quietmoon" not in g.accounts and "quietmoon" not in {f.account for f in flags.values()}


def test_honest_players_of_a_popular_stem_in_one_isp_are_never_a_group() -> None:
    """Many unrelated ``shadowNNN`` on one ISP, some within minutes of each other."""
    rng = random.Random(34)
    events = [login(f"shadow{rng.randint(1, 99999)}", rng.uniform(0, 6 * 3600),
                    f"121.{rng.randint(128, 191)}.{rng.randint(0, 255)}.{rng.randint(1, 250)}",
                    rng.choice((KT, SKB)), samples(rng, rng.uniform(2, 12), 2.0))
              for _ in range(200)]
    events += [login(f"shadow_{rng.randint(1, 9999)}", 7200 + i * 40, f"121.130.4.{i}", KT,
                     samples(rng, 4.0, 1.0)) for i in range(8)]
    assert run(events) == ({}, {})


# ------------------------------------------- a family's batch on home lines of several ISPs


def proxied_batch(names: list[str], t0: float, pacing: float, rng: random.Random) -> list[Enriched]:
    """A farm room abroad behind residential proxies of three ISPs (one address each,
    taken in turn), a machine per account, no relay flag, no foreign route."""
    proxies = [("121.130.9.77", KT), ("175.223.4.12", SKB), ("118.235.2.40", KT)]
    out = []
    for i, name in enumerate(names):
        ip, asn = proxies[i % len(proxies)]
        out.append(login(name, t0 + i * pacing * rng.uniform(0.8, 1.2), ip, asn,
                         samples(rng, 48.0 + 3 * (i % 2), 6.0)))
    return out


def homes(rng: random.Random, n: int, hours: float) -> list[Enriched]:
    """Unrelated players at home, one address each, over ``hours``."""
    return [login(name, rng.uniform(0, hours * 3600),
                  f"121.{rng.randint(128, 191)}.{rng.randint(0, 255)}.{rng.randint(1, 250)}",
                  rng.choice((KT, SKB)), samples(rng, rng.uniform(2, 12), 2.0))
            for name in random_names(rng, n)]


def test_a_batch_member_ahead_of_its_neighbouring_serials_joins_with_them() -> None:
    """Home-line proxies of two ISPs: the KT accounts crowd onto two proxy addresses and
    form the group, the SK Broadband ones join by their serials -- ``작업장11`` logs in
    before ``작업장9`` and ``작업장10`` link it to the batch, and joins with them."""
    rng = random.Random(51)
    names = [f"작업장{i}" for i in range(1, 13)]
    events = homes(rng, 60, 3) + proxied_batch(names, 3600, 20.0, rng)
    order = [e.account for e in sorted(events, key=lambda e: e.ts) if e.account in names]
    assert order.index("작업장11") < order.index("작업장10")
    flags, alerts = run(events)
    (g,) = farm_alerts(alerts)
    assert sorted(g.accounts) == sorted(names)
    assert {f.account for f in flags.values()} == set(names)
    assert {e["exit"] for e in g.evidence["exits"]} == {
        "121.130.9.0/24", "175.223.4.0/24", "118.235.2.0/24"}


def test_a_members_network_kind_survives_a_snapshot() -> None:
    """The kind of each member's address (what tells a home line from a NAT) is saved
    and restored with it."""
    rng = random.Random(54)
    det = detector()
    run([login("goldbot1", 0.0, "223.38.7.1", SKT, samples(rng, 20.0, 2.0), relay=True),
         login("goldbot2", 9.0, "121.130.9.77", KT, samples(rng, 20.0, 2.0), relay=True)], [det])
    kinds = {m.sid: m.access for p in det.parts.values() for m in p.members.values()}
    assert set(kinds.values()) == {"mobile", "residential"}
    again = detector()
    again.load_state(json.loads(json.dumps(det.state())))
    assert {m.sid: m.access for p in again.parts.values() for m in p.members.values()} == kinds


@pytest.mark.parametrize("kind", ["residential", "cable/dsl"])
def test_a_batch_crowding_onto_two_home_line_addresses_of_one_isp_is_found(kind: str) -> None:
    """Consecutive serials through two proxy addresses on home lines of one ISP (the prefix
    table's kind, or MaxMind's connection type), each account on its own machine: the
    addresses carry the batch one account after another -- a group by the 5th login."""
    rng = random.Random(59)
    names = [f"小白_{i:02d}" for i in range(1, 9)]
    batch = [login(n, 3600 + i * 45.0, ("121.130.9.77", "121.130.9.78")[i % 2], KT,
                   samples(rng, 48.0, 6.0), kind=kind) for i, n in enumerate(names)]
    events = homes(rng, 60, 3) + batch
    _, by_fifth = run([e for e in events if e.ts <= batch[4].ts])
    (g,) = farm_alerts(by_fifth)
    assert set(g.accounts) == set(names[:5]) and g.subject["pattern"] == "net:AS4766"


@pytest.mark.parametrize(("where", "asn", "kind", "addresses"), [
    ("mobile CGNAT", SKT, "mobile", [f"223.38.7.{k}" for k in range(1, 17)]),
    ("PC bang", KT, "business", ["211.234.50.20"]),
    ("campus NAT", KREONET, "education", ["134.75.0.9", "134.75.0.10"]),
])
def test_consecutive_default_names_behind_a_shared_address_are_never_a_group(
        where: str, asn: int, kind: str, addresses: list[str]) -> None:
    """A crowd that signed up together (``player10231``, ``player10232``…) logging in
    through the addresses a crowd shares: many accounts per address is what a NAT does."""
    rng = random.Random(53)
    events = [login(f"player{10231 + i}", 600 + i * 30.0, rng.choice(addresses), asn,
                    samples(rng, rng.uniform(3, 25), 4.0), kind=kind) for i in range(40)]
    assert run(events) == ({}, {}), where
