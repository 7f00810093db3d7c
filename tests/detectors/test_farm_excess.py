"""RTT excess in the class's learned tail (:func:`pathsentry.detectors.farm.suspicion.rtt_suspected`):
a family's batch on residential proxies whose logins each carry more latency than the
exit's place and history explain, where the class's background rarely does -- and its
hard negatives (friends who signed up together, a rural population, no history) -- and
the documented prior that judges a class before its own logins have taught the tail
(:func:`pathsentry.detectors.farm.suspicion.excess_prior`)."""

from __future__ import annotations

import random

from pathsentry.detectors.base import Enriched
from pathsentry.detectors.farm.model import Member, Pool
from pathsentry.detectors.farm.suspicion import (
    count_excess,
    excess_bin,
    excess_prior,
    rtt_suspected,
)
from tests.detectors.test_farm import detector, farm_alerts, random_names, run
from tests.detectors.test_farm_families import KT, SKB, login, samples

_CONS, _VOW = "bcdfghjklmnpqrstvwxz", "aeiou"
NAMES = [f"gold{i:03d}" for i in range(11, 19)]


def _excess(ev: Enriched, ms: float) -> Enriched:
    """``ev`` with the relay detector's RTT excess ``ms`` (score 0, never flagged)."""
    ev.notes["relay"] = {**ev.notes["relay"], "score": 0.0, "flagged": False, "excess_ms": ms}
    return ev


def _background(rng: random.Random, n: int, spread: float, centre: float = 0.0) -> list[Enriched]:
    """``n`` players at home with names of a family each, over the two hours before the
    batch; their excesses scattered around ``centre`` by ``spread`` ms."""
    out = []
    for _ in range(n):
        word = "".join(rng.choice(_CONS) + rng.choice(_VOW) for _ in range(3))
        ip = f"121.{rng.randint(128, 191)}.{rng.randint(0, 255)}.{rng.randint(1, 250)}"
        out.append(_excess(login(f"{word}{rng.randint(1, 9999)}", rng.uniform(0, 7000), ip,
                                 rng.choice((KT, SKB)), samples(rng, rng.uniform(2, 12), 2.0)),
                           rng.gauss(centre, spread)))
    return out


def _batch(names: list[str], excess: float, rng: random.Random) -> list[Enriched]:
    """A batch paced a minute apart through residential proxies of two ISPs, every
    account on its own machine and proxy address, no score, no flag; each login with
    about ``excess`` ms of RTT excess."""
    return [_excess(login(n, 7200 + i * 60.0, f"{(14, 58)[i % 2]}.32.{i}.{40 + i}",
                          (KT, SKB)[i % 2], samples(rng, 40.0, 8.0)),
                    excess + rng.uniform(-3.0, 3.0))
            for i, n in enumerate(names)]


def _by_fifth(events: list[Enriched], batch: list[Enriched], **settings: object) -> list:
    dets = [detector(**settings)] if settings else None
    return farm_alerts(run([e for e in events if e.ts <= batch[4].ts], dets)[1])


#: no prior: the class judges by its own logins alone
NO_PRIOR = {"excess_prior_logins": 0}


def test_a_batch_in_the_excess_tail_is_found_by_the_fifth_login() -> None:
    """No flag, no score, no shared machine or address: five logins 25 ms over what
    their exits explain, where the class's excesses scatter by 4 ms."""
    rng = random.Random(81)
    batch = _batch(NAMES, 25.0, rng)
    events = _background(rng, 300, 4.0) + batch
    (alert,) = _by_fifth(events, batch)
    assert set(alert.accounts) == set(NAMES[:5])
    relay = alert.evidence["relay"]
    assert relay["flagged_accounts"] == 0 and relay["scored_accounts"] == 0
    assert relay["excess_tail_accounts"] == 5
    assert 0 < relay["learned_excess_threshold_ms"] < 20
    assert relay["learned_excess_tail_share"] < 0.1 and relay["excess_tail_p"] <= 1e-4


def test_friends_who_signed_up_together_are_no_group() -> None:
    """Consecutive default names, each at home on a machine of their own: their
    excesses are the class's own."""
    rng = random.Random(82)
    batch = _batch(NAMES, 0.0, rng)
    for e in batch:
        e.notes["relay"]["excess_ms"] = rng.gauss(0.0, 4.0)
    assert farm_alerts(run(_background(rng, 300, 4.0) + batch)[1]) == []


def test_a_rural_population_whose_excesses_are_all_large_teaches_a_high_tail() -> None:
    """Friends on rural DSL, 25 ms over the physics on every line like their whole
    population: the learned tail sits above them."""
    rng = random.Random(83)
    batch = _batch(NAMES, 25.0, rng)
    assert _by_fifth(_background(rng, 300, 4.0, centre=25.0) + batch, batch) == []


def test_a_batch_in_the_excess_tail_with_no_history_is_judged_by_the_prior() -> None:
    """The detector's first logins: five of a family 25 ms over what their exits explain
    lie far in the prior's tail (an honest line's excess spread as its access latency
    varies, 6 ms), so the batch is one group by its fifth login; without the prior a class
    with no history suspects nothing."""
    rng = random.Random(84)
    batch = _batch(NAMES, 25.0, rng)
    (alert,) = _by_fifth(batch, batch)
    assert set(alert.accounts) == set(NAMES[:5])
    relay = alert.evidence["relay"]
    assert relay["flagged_accounts"] == 0 and relay["excess_tail_accounts"] == 5
    assert 5 <= relay["learned_excess_threshold_ms"] <= 15
    assert relay["excess_tail_p"] <= 1e-4
    assert _by_fifth(batch, batch, **NO_PRIOR) == []


def test_friends_with_no_history_are_inside_the_prior() -> None:
    """Friends who signed up together in the detector's first minutes: their excesses
    (a few ms either way) sit inside the prior, no group."""
    rng = random.Random(87)
    batch = _batch(NAMES, 0.0, rng)
    assert farm_alerts(run(batch)[1]) == []


def test_the_prior_fades_as_the_class_teaches_its_own_tail() -> None:
    """A rural population, every line 25 ms over the physics: a hundred of its logins
    outweigh the prior and the tail moves above them; the prior's own tail starts near
    10 ms, what an honest access's variation reaches one login in twenty."""
    rng = random.Random(88)
    batch = _batch(NAMES, 25.0, rng)
    assert _by_fifth(_background(rng, 100, 4.0, centre=25.0) + batch, batch) == []
    pool = Pool()
    high = [Member(f"h{i}", f"h{i}", 0.0, None, None, "", "", relay_excess_ms=12.0,
                   access="residential") for i in range(5)]
    ok, k, threshold, share, p = rtt_suspected(pool, high, 0.95, 1e-4, excess_prior(6.0, 100.0))
    assert ok and k == 5 and threshold == 10 and 0.04 < share < 0.06 and p < 1e-4
    assert rtt_suspected(pool, high, 0.95, 1e-4, excess_prior(6.0, 0.0))[:2] == (False, 0)


def test_the_histogram_counts_home_lines_and_the_threshold_is_a_learned_quantile() -> None:
    pool = Pool()
    ms = [Member(f"s{i}", f"a{i}", 0.0, None, None, "", "", relay_excess_ms=float(i % 100),
                 access="residential") for i in range(1000)]
    for m in ms:
        count_excess(pool, excess_bin(m.access, m.relay_excess_ms))
    count_excess(pool, excess_bin("hosting", 99.0))  # a hosting exit's users: relayed by nature
    count_excess(pool, excess_bin("residential", None))  # no excess given
    assert pool.excess_seen == 1000.0 and sum(pool.excess) == 1000.0
    high = [Member(f"h{i}", f"h{i}", 0.0, None, None, "", "", relay_excess_ms=99.0,
                   access="residential") for i in range(5)]
    ok, k, threshold, share, p = rtt_suspected(pool, high, 0.95, 1e-4)
    # the candidate's own five taken out: 45 of the 995 (at most 5 %) lie at or above 95 ms
    assert ok and k == 5 and threshold == 95 and 0.03 < share < 0.05 and p < 1e-4
    ok, k, _, _, _ = rtt_suspected(pool, high[:2] + ms[10:13], 0.95, 1e-4)
    assert not ok and k == 2
    natted = [Member(f"n{i}", f"n{i}", 0.0, None, None, "", "", relay_excess_ms=99.0,
                     access="business") for i in range(5)]
    assert rtt_suspected(pool, natted, 0.95, 1e-4)[:2] == (False, 0)  # a NAT's own latency
    assert rtt_suspected(Pool(), high, 0.95, 1e-4)[:2] == (False, 0)


def test_the_background_is_every_home_line_of_the_worker() -> None:
    """Players without a family name count too: their logins reach the exits."""
    rng = random.Random(85)
    det = detector()
    run(_background(rng, 40, 4.0) + [_excess(login(n, 100.0 * i, f"121.150.{i}.9", KT,
                                                    samples(rng, 5.0, 2.0)), 1.0)
                                     for i, n in enumerate(random_names(rng, 30))], [det])
    assert det.pools["tpl"].excess_seen == 70.0


def _quiet_batch() -> list[Enriched]:
    """Five letter-suffixed accounts 4-6 s apart on home lines of three ISPs (proxy
    addresses, one machine on two of them), three of them relay-flagged and the other
    two with a low relay score, each 30-60 ms over what its exit explains."""
    plan = [("a", "58.224.2.10", SKB, "dev-1", 0.60, 47.5), ("b", "14.32.7.42", KT, "dev-2", 0.7, 55.9),
            ("c", "106.240.5.46", 3786, "dev-3", 0.16, 31.7),
            ("d", "58.224.2.10", SKB, "dev-4", 0.7, 59.2), ("e", "14.32.7.42", KT, "dev-1", 0.24, 34.4)]
    out = []
    for i, (suffix, ip, asn, device, score, excess) in enumerate(plan):
        ev = login(f"zhanshi_{suffix}", 7200.0 + 5.0 * i, ip, asn, [66.0 + i, 70.0], device=device)
        ev.notes["relay"] = {**ev.notes["relay"], "score": score, "flagged": score >= 0.5,
                             "excess_ms": excess}
        out.append(ev)
    return out


def test_a_batch_in_a_quiet_worlds_first_minutes_is_judged_by_the_prior() -> None:
    """Three home-line logins before the batch (a quiet world's first hour): without the
    prior, five of five above them is a 1-in-56 chance whatever order they came in, no
    evidence at ``max_burst_p``, and the batch waits for fifteen quiet logins (the
    beta-binomial tail of 5 of 5 above 0 of 15 is 4.9e-05; thirteen are the fewest that
    pass); with it, the batch's 30-60 ms excesses lie in the prior's tail, one group by
    its fifth login either way."""
    rng = random.Random(86)
    batch = _quiet_batch()
    assert _by_fifth(_background(rng, 3, 2.0, centre=-4.0) + batch, batch, **NO_PRIOR) == []
    (alert,) = _by_fifth(_background(rng, 15, 2.0, centre=-4.0) + batch, batch, **NO_PRIOR)
    assert set(alert.accounts) == {f"zhanshi_{c}" for c in "abcde"}
    (alert,) = _by_fifth(_background(rng, 3, 2.0, centre=-4.0) + batch, batch)
    assert set(alert.accounts) == {f"zhanshi_{c}" for c in "abcde"}
