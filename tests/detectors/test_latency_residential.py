"""Residential exits and honest lines that look like them.

A residential proxy relays a client through a home line of the home country. What
the physics leaves of it depends on the client-exit leg: a foreign client's leg is tens
of ms, which the exit /24's own baseline (learned from its honest users) or the gap
shows at once; a domestic client 300 km away adds 5-10 ms, which one login hides in
the game loop's tick and only the exit's logins together show. The hard negatives
are honest lines that are slow for reasons of their own: a DSL line on a /24 of
fibre lines, a player travelling between cities, a mobile line's jitter on a long
tick.
"""

from __future__ import annotations

from tests.detectors.test_latency import BUSAN, GANGWON, SEOUL, SHANGHAI, World, leg_ms, make_world
from tests.detectors.test_latency_calibration import GameLoop, honest, warm

#: a 33 ms tick, 4 ms cost: the leg of a domestic proxy (5-10 ms) hides in one login's phase
LOOP = GameLoop(cost=4.0, tick=33.0)


def _resi_l4(w: World, ip: str, account: str, leg: float, k: int = 5) -> tuple[bool, dict]:
    """A login through a residential L4 proxy at ``ip`` (Seoul): TCP ends at the exit's
    line (2-3 ms), the game's samples travel the client's ``leg`` too."""
    tcp = round(w.rng.uniform(2.0, 3.0), 3)
    ev, out = w.login(account, ip, LOOP.samples(w, tcp + leg, k), tcp)
    return bool(out.flags), ev.notes["relay"]


def _honest_line(w: World, ip: str, account: str, access: float, k: int = 5) -> tuple[bool, dict]:
    """An honest Seoul line with ``access`` ms of its own: every layer sees it."""
    rtt = leg_ms(SEOUL, SEOUL) + access
    tcp = round(rtt + w.rng.expovariate(1.0 / 0.3), 3)
    ev, out = w.login(account, ip, LOOP.samples(w, rtt, k), tcp)
    return bool(out.flags), ev.notes["relay"]


def test_foreign_client_through_a_residential_l4_exit_shows_in_its_gap() -> None:
    """A Shanghai client through a Seoul home line: the 18 ms leg and more clears the
    learned bound of a 33 ms tick with five samples."""
    w = make_world(seed=31)
    assert warm(w, LOOP, n=120) == 0
    flagged, note = _resi_l4(w, "58.120.77.20", "far_client", leg_ms(SEOUL, SHANGHAI) + 3.0 + 30.0)
    assert flagged, note
    assert note["gap_excess_ms"] > 0


def test_domestic_residential_proxy_is_caught_by_its_exits_logins_together() -> None:
    """A Busan client through a Seoul home line (an L4 proxy): each login's 8 ms leg hides
    in the tick's phase, but the exit's logins together stand out of the server's learned
    overhead, and the flags state the prefix's combined z-score."""
    w = make_world(seed=32)
    assert warm(w, LOOP, n=120) == 0
    leg = leg_ms(SEOUL, BUSAN, inflation=1.5) + 2.0
    first, _ = _resi_l4(w, "58.120.88.20", "proxied", leg)
    assert not first  # one login is not enough
    flags = [_resi_l4(w, "58.120.88.20", "proxied", leg)[0] for _ in range(24)]
    assert any(flags)
    sess = w.det.sessions.peek(f"s{w.n}")
    assert sess is not None
    strength, logins, z = w.det.prefix_evidence(sess, w.det.gap_verdict(sess))
    assert strength > 0 and logins >= 4 and z > w.det.prefix_z[0]


def test_honest_lines_logging_in_as_often_from_one_home_prefix_are_not_flagged() -> None:
    """The same number of logins from honest Seoul lines of one /24 (fibre and cable, a
    few ms of access each): the combined z-score stays below the prefix threshold."""
    w = make_world(seed=33)
    assert warm(w, LOOP, n=120) == 0
    flagged = [_honest_line(w, f"58.120.99.{20 + i % 5}", f"home{i % 5}", w.rng.uniform(0.5, 9.0))
               for i in range(25)]
    assert not any(f for f, _ in flagged), [n for f, n in flagged if f]


def test_a_dsl_line_on_a_prefix_of_fibre_lines_is_not_a_relay() -> None:
    """The /24's baseline is learned from fibre lines (1-4 ms); a DSL line on it adds 12-15
    ms of its own on every layer: slower than its prefix, but no gap, no detour."""
    w = make_world(seed=34)
    w.warm("211.234.2", SEOUL, (1.0, 4.0))
    flagged = []
    for _ in range(40):
        _, out = w.direct("dsl_player", "211.234.2.250", SEOUL, w.rng.uniform(12.0, 15.0), jitter=0.8)
        if out.flags:
            flagged.append(out.flags[0].reasons)
    assert flagged == []


def test_a_player_travelling_between_cities_is_not_a_relay() -> None:
    """An account plays from its Seoul fibre line, then from a Busan office and a line in
    Gangwon: each login's path is direct from where its address says it is."""
    w = make_world(seed=35)
    w.warm("211.234.1", SEOUL, (1.0, 4.0))
    flagged = []
    for i in range(30):
        where, ip, access = ((SEOUL, "211.234.1.40", 2.0), (BUSAN, "175.200.1.40", 3.0),
                             (GANGWON, "121.180.5.40", 8.0))[i % 3]
        _, out = w.direct("traveller", ip, where, access + w.rng.uniform(0.0, 1.0))
        if out.flags:
            flagged.append(out.flags[0].reasons)
    assert flagged == []


def test_mobile_lines_on_a_long_tick_with_few_samples_are_not_relays() -> None:
    """LTE: 15-40 ms of access, spikes on a fifth of the samples, one to three samples
    per login, a 33 ms tick: the radio's spread is learned as the kind's spike allowance."""
    w = make_world(seed=36)
    assert warm(w, LOOP, n=80) == 0
    flagged = [honest(w, LOOP, 400 + i, k=1 + i % 3, mobile=True, jitter=3.0, spike_p=0.2)
               for i in range(200)]
    assert sum(f for f, _ in flagged) == 0


def test_a_one_sample_radio_spike_before_the_kind_learned_its_spikes_is_not_a_relay() -> None:
    """LTE logins with one sample, each spiked by 10-60 ms, before the mobile kind has
    ``spike_warmup`` learned spreads: the gap clears the bound (no spike allowance yet),
    but a single sample on a kind whose spikes are unknown gives no verdict of its own."""
    w = make_world(seed=37)
    assert warm(w, LOOP, n=120) == 0
    notes = [honest(w, LOOP, 600 + i, k=1, mobile=True, jitter=3.0, spike_p=1.0) for i in range(20)]
    assert not any(f for f, _ in notes)
    assert any((n["gap_excess_ms"] or 0.0) > 0 for _, n in notes)


def test_a_one_sample_relay_is_judged_once_its_exits_kind_learned_its_spikes() -> None:
    """The same foreign leg with one sample: through a home line (the residential kind's
    spreads were learned from the 120 honest logins) the gap flags it; through a hosting
    exit no honest login taught, the gap gives no verdict of its own and says why, and
    the physics of the hosting claim carries the flag."""
    w = make_world(seed=38)
    assert warm(w, LOOP, n=120) == 0
    leg = leg_ms(SEOUL, SHANGHAI) + 3.0 + 60.0
    home, _ = _resi_l4(w, "58.120.66.20", "far_home", leg, k=1)
    assert home
    tcp = 0.5
    ev, out = w.login("far_vps", "45.65.9.20", LOOP.samples(w, tcp + leg, 1), tcp)
    assert out.flags, ev.notes["relay"]
    evidence = out.flags[0].evidence
    assert "gap" not in evidence["components"] and evidence["components"]["physics"] > 0
    assert evidence["gap"]["excess_ms"] > 0
    assert evidence["gap"]["overhead"]["spike_logins"] < w.det.spike_warmup
    assert "no verdict of its own" in evidence["gap"]["verdict"]


def _neighbours_of_a_proxy(exit_net: str) -> tuple[World, list[bool], bool]:
    """Foreign clients through one proxy address of ``exit_net`` (each proven by its own
    gap), then honest households at other addresses of the same /24. Returns the
    world, the proxied logins' flags and whether any household login was flagged."""
    w = make_world(seed=34)
    assert warm(w, LOOP, n=120) == 0
    leg = leg_ms(SEOUL, SHANGHAI) + 3.0 + 30.0
    proxied = [_resi_l4(w, f"{exit_net}.174", f"rented{i}", leg)[0] for i in range(8)]
    homes = [_honest_line(w, f"{exit_net}.{20 + i % 3}", f"family{i % 3}", w.rng.uniform(0.5, 4.0))[0]
             for i in range(12)]
    return w, proxied, any(homes)


def test_a_residential_proxy_does_not_taint_its_neighbours_on_the_same_24() -> None:
    """A home line rented out as a proxy sits among unrelated subscribers of its /24:
    its clients' logins prove the address a relay exit, and lend their evidence to the
    later logins through that address only. Households at the /24's other addresses,
    whose own gap and physics are clean, are not flagged."""
    w, proxied, homes_flagged = _neighbours_of_a_proxy("58.120.66")
    assert all(proxied)
    assert not homes_flagged
    # the address, not the /24, holds the exit's history
    assert w.det.prefix_gaps.peek("58.120.66.174") is not None
    assert w.det.prefix_gaps.peek("58.120.66.0/24") is None
    # a hosting /24 is a relay service's range: its other addresses are lent the evidence
    w, proxied, hosted_flagged = _neighbours_of_a_proxy("45.65.66")
    assert all(proxied) and hosted_flagged
    assert w.det.prefix_gaps.peek("45.65.66.0/24") is not None
