"""Relay suspicion (:mod:`pathsentry.detectors.farm.suspicion`): a family's batch whose
logins each carry some relay score, none flagged, judged against the share of the
class's background logins that carry one -- and its hard negatives."""

from __future__ import annotations

import json
import random

import pytest

from pathsentry.detectors.base import Enriched
from pathsentry.detectors.farm.model import Member, Pool
from pathsentry.detectors.farm.suspicion import count, suspected, tail, uncount
from pathsentry.schemas import Alert
from tests.detectors.test_farm import detector, farm_alerts, run
from tests.detectors.test_farm_families import KT, SKB, login, samples

_CONS, _VOW = "bcdfghjklmnpqrstvwxz", "aeiou"


def _scored(ev: Enriched, score: float) -> Enriched:
    """``ev`` with the relay detector's score ``score`` (never flagged)."""
    ev.notes["relay"] = {**ev.notes["relay"], "score": score, "flagged": False}
    return ev


def _home(rng: random.Random, name: str, t: float, score: float) -> Enriched:
    ip = f"121.{rng.randint(128, 191)}.{rng.randint(0, 255)}.{rng.randint(1, 250)}"
    return _scored(login(name, t, ip, rng.choice((KT, SKB)), samples(rng, rng.uniform(2, 12), 2.0)),
                   score)


def _background(rng: random.Random, n: int, every: int) -> list[Enriched]:
    """``n`` players at home with names of a family each (a word and a number), over the
    two hours before the batch; one login in ``every`` carries a relay score."""
    out = []
    for i in range(n):
        word = "".join(rng.choice(_CONS) + rng.choice(_VOW) for _ in range(3))
        out.append(_home(rng, f"{word}{rng.randint(1, 9999)}", rng.uniform(0, 7000),
                         0.8 if i % every == 0 else 0.0))
    return out


def _batch(names: list[str], score: float, rng: random.Random) -> list[Enriched]:
    """A batch paced a minute apart through residential proxies of two ISPs, every
    account on its own machine and proxy address, none flagged, each login with the
    relay score ``score``."""
    return [_scored(login(n, 7200 + i * 60.0, f"{(14, 58)[i % 2]}.32.{i}.{40 + i}", (KT, SKB)[i % 2],
                          samples(rng, 40.0, 8.0)), score)
            for i, n in enumerate(names)]


NAMES = [f"gold{i:03d}" for i in range(11, 19)]


def _by_fifth(events: list[Enriched], batch: list[Enriched]) -> list[Alert]:
    return farm_alerts(run([e for e in events if e.ts <= batch[4].ts])[1])


def test_a_batch_each_with_a_relay_score_is_found_by_the_fifth_login() -> None:
    """No flag, no shared machine or address: the scores on all five, where one login
    in twenty of the background carries one, are the relay evidence."""
    rng = random.Random(71)
    batch = _batch(NAMES, 0.5, rng)
    events = _background(rng, 300, 20) + batch
    (alert,) = _by_fifth(events, batch)
    assert set(alert.accounts) == set(NAMES[:5])
    relay = alert.evidence["relay"]
    assert relay["flagged_accounts"] == 0 and relay["scored_accounts"] == 5
    assert relay["learned_scored_share"] < 0.1 and relay["scored_tail_p"] <= 1e-4
    flags, alerts = run(events)
    (alert,) = farm_alerts(alerts)
    assert set(alert.accounts) == set(NAMES) == {f.account for f in flags.values()}


def test_the_same_batch_without_relay_scores_is_no_group() -> None:
    """Friends who signed up together, each at home on a machine of their own: nothing
    but the names."""
    rng = random.Random(71)
    batch = _batch(NAMES, 0.0, rng)
    assert farm_alerts(run(_background(rng, 300, 20) + batch)[1]) == []


def test_a_batch_with_scores_where_the_background_often_has_them_is_not_suspected() -> None:
    """A population whose logins carry a relay score one time in three: five of five is
    no surprise there."""
    rng = random.Random(72)
    batch = _batch(NAMES, 0.5, rng)
    assert _by_fifth(_background(rng, 300, 3) + batch, batch) == []


def test_a_batch_with_scores_and_no_history_is_not_suspected() -> None:
    """The detector's first logins: the share is unknown, five of five proves nothing."""
    rng = random.Random(73)
    batch = _batch(NAMES, 0.5, rng)
    assert _by_fifth(batch, batch) == []


def test_popular_stem_players_each_with_a_relay_score_are_no_group() -> None:
    """``shadow`` players whose numbers do not run, each through a VPN at home now and
    then (a relay score, unflagged), within minutes of each other: no batch."""
    rng = random.Random(74)
    names = [f"shadow{n}" for n in rng.sample(range(1, 99999), 8)]
    events = _background(rng, 300, 20) + _batch(names, 0.6, rng)
    assert farm_alerts(run(events)[1]) == []


def test_a_grouped_batch_leaves_the_background_count() -> None:
    rng = random.Random(71)
    background = _background(rng, 300, 20)
    det = detector()
    run(background + _batch(NAMES, 0.5, rng), [det])
    pool = det.pools["tpl"]
    assert pool.rs_seen == len(background)
    assert pool.rs_scored == sum(1 for e in background if e.notes["relay"]["score"] > 0)


def test_counts_and_the_beta_binomial_tail() -> None:
    pool = Pool()
    ms = [Member(f"s{i}", f"a{i}", 0.0, None, None, "", "", relay_score=float(i % 10 == 0),
                 access="residential") for i in range(100)]
    for m in ms:
        count(pool, m)
    assert (pool.rs_seen, pool.rs_scored) == (100.0, 10.0)
    uncount(pool, ms[0])
    assert (pool.rs_seen, pool.rs_scored) == (99.0, 9.0)
    assert tail(5, 5, 0.0, 0.0) == pytest.approx(1 / 6)  # no history: 5 of 5 as likely as any count
    assert tail(5, 5, 9.0, 90.0) < 1e-4 < tail(3, 5, 9.0, 90.0)
    assert suspected(pool, ms[10:15], 1e-4)[:2] == (False, 1)
    natted = [Member(f"n{i}", f"n{i}", 0.0, None, None, "", "", relay_score=0.5,
                     access="business") for i in range(5)]
    assert suspected(pool, natted, 1e-4)[:2] == (False, 0)  # a NAT's scores do not count


def test_a_restored_member_is_not_taken_out_of_counts_that_never_held_it() -> None:
    """The class's counts are not saved: a restored login must not leave them when it
    joins a group later."""
    rng = random.Random(75)
    det = detector()
    run(_background(rng, 50, 20), [det])
    again = detector()
    again.load_state(json.loads(json.dumps(det.state())))
    members = [m for p in again.parts.values() for m in p.members.values()]
    assert members and not any(m.in_background for m in members)
    assert all(m.in_background for p in det.parts.values() for m in p.members.values()
               if p.kind == "tpl" and m.group is None)


def test_consecutive_default_names_at_a_pc_bang_each_with_a_relay_score_are_no_group() -> None:
    """A crowd that signed up together logging in behind a PC bang's NAT, whose
    latency the relay detector scores on every login: the scores are the address's,
    not a relay's (only home lines and hosting exits count them)."""
    rng = random.Random(76)
    crowd = [_scored(login(f"player{10231 + i}", 7200 + i * 30.0, "211.234.50.20", KT,
                           samples(rng, rng.uniform(3, 25), 4.0), kind="business"), 0.4)
             for i in range(12)]
    assert farm_alerts(run(_background(rng, 300, 20) + crowd)[1]) == []
