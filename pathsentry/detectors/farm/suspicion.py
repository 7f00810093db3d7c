"""Relay suspicion: more of a family's accounts than the learned rate explains carry
some relay score, or an RTT excess in the class's learned tail.

The relay detector flags a login once its score passes its threshold; a farm behind
residential proxies often stays below it, each login with a middling score (its
proxy's access and the room's latency blur together). What the flags miss, the scores
still say: a family's batch whose every account carries *some* relay score, where the
logins of the class's background mostly carry none.

The class's background (the name-family partitions a worker holds, their
:class:`~pathsentry.detectors.farm.model.Pool`) counts every login it takes
(:func:`count`), and of them those with a relay score above zero on a home line or a
hosting exit (:data:`SCORED_KINDS`: a NAT'ed crowd's address is scored for its own
latency, every login of it alike); a login that joins
a group leaves the count again (:func:`uncount`): a farm found is no background. A
candidate of ``n`` logins, ``k`` of them with a score, is *suspected* when the
probability of at least ``k`` such logins among ``n`` of the background (the
beta-binomial tail of :func:`tail`: the share learned from the counts, the candidate's
own logins taken out, its uncertainty included -- a class with little history
suspects nothing) stays below ``max_burst_p`` (:func:`suspected`). It stands for relay evidence
only beside serials that run consecutively (:mod:`.grouping`): honest players of a
popular stem through one VPN carry scores too, and their numbers do not run.

The same batch's latency says it too: a room abroad behind a proxy on a home line
shows more RTT than the exit's place and history explain (the relay detector's
``excess_ms``), on login after login. Every login on a home line that the worker's
exit partitions take (``net:``: each login reaches exactly one) is counted in a
histogram of excesses (1-ms bins, :func:`count_excess`, kept in the family class's
pool: the background is every home line the worker sees, not only names with a family;
a hosting exit's users are relayed by nature); :func:`rtt_suspected` takes the lowest
bin above which at most ``1 - excess_quantile`` of them lie (documented default: the
0.95 quantile), the candidate's own logins taken out, and judges the candidate's
logins at or above it by the same beta-binomial tail. It too stands for relay evidence
only beside serials that run. Friends who signed up together carry the class's own
excesses (a few in its tail by chance, never five of five), and a population whose
every line is slow (rural DSL) teaches a tail above them once its logins outweigh the
prior.

Before the class has taught its tail, a documented prior stands in for it
(:func:`excess_prior`): pseudo-counts of the histogram, ``excess_prior_logins`` logins
(default 100, the weight of the other priors) spread as a normal of deviation
``excess_prior_sd_ms`` around 0 -- the relay detector's expectation already holds a home
line's typical access latency (6 ms, :data:`~pathsentry.detectors.physics.ACCESS_TYPICAL_MS`)
and an honest line's access varies around it by about that much, so the prior's tail
at the 0.95 quantile starts near 10 ms. A batch far out of that (a room abroad, 15-60
ms over on every login) is judged from the detector's first minutes; the class's own
logins outgrow the prior (after a few hundred, the learned quantile is the class's).

The counts are halved once they pass :data:`MAX_SEEN`; they are learned per worker and
not saved (a restarted worker starts from the priors: the relay-score share's
uninformed one, which suspects nothing until the class has taught its share, and the
excess prior above).

>>> from pathsentry.detectors.farm.model import Member, Pool
>>> pool = Pool()
>>> for i in range(400):
...     count(pool, Member(f"s{i}", f"a{i}", 0.0, None, None, "", "", access="residential",
...                        relay_score=0.9 * (i % 20 == 0)))
>>> pool.rs_seen, pool.rs_scored
(400.0, 20.0)
>>> batch = [Member(f"b{i}", f"b{i}", 0.0, None, None, "", "", relay_score=0.5,
...                 access="residential") for i in range(5)]
>>> suspected(pool, batch, 1e-4)
(True, 5, 0.0522, 5.92e-07)
>>> plain = [Member(f"c{i}", f"c{i}", 0.0, None, None, "", "") for i in range(3)]
>>> suspected(pool, batch[:2] + plain, 1e-4)[:2]
(False, 2)
>>> suspected(Pool(), batch, 1e-4)[:2]
(False, 5)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from itertools import pairwise

from pathsentry.detectors.farm.exits import SHARED_EXIT_KINDS
from pathsentry.detectors.farm.lines import LINE_KINDS
from pathsentry.detectors.farm.model import Member, Pool
from pathsentry.detectors.injection_counts import beta_binomial_sf

__all__ = ["EXCESS_BINS", "EXCESS_LO_MS", "MAX_SEEN", "SCORED_KINDS", "count", "count_excess",
           "excess_bin", "excess_prior", "rtt_suspected", "suspected", "tail", "uncount"]

#: logins counted before both counts are halved
MAX_SEEN = 4096.0
#: the RTT excess histogram: 1-ms bins from ``EXCESS_LO_MS`` on, values beyond either end
#: counted in the end bins
EXCESS_LO_MS = -64
EXCESS_BINS = 320


#: the network kinds whose logins' relay scores count: a home line (one subscriber) and
#: a hosting or relay network (a rented host) -- behind a mobile CGNAT, a campus or a
#: PC bang's NAT (or an address of unknown kind) the latency the relay detector scores
#: is the crowd's address's, on every login of it
SCORED_KINDS = LINE_KINDS | SHARED_EXIT_KINDS


def _scored(m: Member) -> float:
    return 1.0 if m.relay_score > 0.0 and m.access in SCORED_KINDS else 0.0


def excess_bin(access: str | None, x: object) -> int | None:
    """The histogram bin of an RTT excess of ``x`` ms on a network of kind ``access``
    (none off a home line -- a hosting exit's users are relayed by nature, a NAT'ed
    crowd's address has its own latency -- or when the relay detector had no excess to
    give)."""
    if not isinstance(x, int | float) or not math.isfinite(x) or access not in LINE_KINDS:
        return None
    return min(EXCESS_BINS - 1, max(0, math.floor(x) - EXCESS_LO_MS))


def _excess_bin(m: Member) -> int | None:
    return excess_bin(m.access, m.relay_excess_ms)


def count_excess(pool: Pool, b: int | None) -> None:
    """Count one login's RTT excess (its bin ``b``) in the histogram of ``pool``."""
    if b is None:
        return
    h = pool.excess
    if not h:
        h.extend([0.0] * EXCESS_BINS)
    h[b] += 1.0
    pool.excess_seen += 1.0
    if pool.excess_seen > MAX_SEEN:
        pool.excess = [v / 2.0 for v in h]
        pool.excess_seen /= 2.0


def count(pool: Pool | None, m: Member) -> None:
    """Count the login of ``m`` (a family partition's new member) in its class."""
    if pool is None:
        return
    pool.rs_seen += 1.0
    pool.rs_scored += _scored(m)
    if pool.rs_seen > MAX_SEEN:
        pool.rs_seen /= 2.0
        pool.rs_scored /= 2.0


def uncount(pool: Pool | None, m: Member) -> None:
    """Undo :func:`count` (``m`` joined a group: a farm's login, no background)."""
    if pool is None or pool.rs_seen < 1.0:
        return
    pool.rs_seen -= 1.0
    pool.rs_scored = max(0.0, pool.rs_scored - _scored(m))


def tail(k: int, n: int, scored: float, unscored: float) -> float:
    """P(X >= k) of ``n`` logins with a relay score, their share unknown but learned from
    ``scored`` and ``unscored`` logins (the beta-binomial predictive tail, uniform prior):
    with no history, even ``n`` of ``n`` is no surprise (``1 / (n + 1)``).

    >>> tail(0, 5, 10.0, 90.0), round(tail(5, 5, 0.0, 0.0), 4), tail(6, 5, 1.0, 1.0)
    (1.0, 0.1667, 0.0)
    >>> round(tail(5, 5, 70.0, 930.0), 7)  # about 0.07 ** 5
    2e-06
    """
    return beta_binomial_sf(k, n, scored + 1.0, unscored + 1.0)


def suspected(pool: Pool | None, ms: Sequence[Member], max_p: float
              ) -> tuple[bool, int, float, float]:
    """Whether the logins ``ms`` carry a relay score more often than the class's
    background does: ``(suspected, k, learned share, tail probability)``."""
    n = len(ms)
    k = int(sum(_scored(x) for x in ms))
    seen = pool.rs_seen if pool is not None else 0.0
    scored = pool.rs_scored if pool is not None else 0.0
    # the candidate's own counted logins are in the counts (not grouped yet): out
    mine = [x for x in ms if x.in_background]
    seen = max(0.0, seen - len(mine))
    scored = min(seen, max(0.0, scored - sum(_scored(x) for x in mine)))
    p = tail(k, n, scored, seen - scored)
    return p <= max_p, k, round((scored + 1.0) / (seen + 2.0), 4), float(f"{p:.3g}")


@functools.lru_cache(maxsize=8)
def excess_prior(sd_ms: float, weight: float) -> tuple[float, ...]:
    """The documented prior of a class's RTT excesses, as pseudo-counts of the histogram:
    ``weight`` logins spread as a normal of mean 0 and deviation ``sd_ms`` (the relay
    detector's expectation already holds a home line's typical access latency, and an
    honest line's access varies around it by about as much as that latency: see
    ``excess_prior_sd_ms``). Empty when ``weight`` or ``sd_ms`` is not positive.

    >>> h = excess_prior(6.0, 50.0)
    >>> round(sum(h), 6), round(sum(h[excess_bin("residential", 10.0):]), 2)
    (50.0, 2.39)
    """
    if not (weight > 0.0 and sd_ms > 0.0):
        return ()
    root2 = math.sqrt(2.0) * sd_ms

    def below(x: float) -> float:  # P(excess < x) under the prior
        return 0.5 * (1.0 + math.erf(x / root2))

    edges = [below(float(b + 1 + EXCESS_LO_MS)) for b in range(EXCESS_BINS - 1)]
    cdf = [0.0, *edges, 1.0]
    return tuple(weight * (hi - lo) for lo, hi in pairwise(cdf))


def rtt_suspected(pool: Pool | None, ms: Sequence[Member], q: float, max_p: float,
                  prior: Sequence[float] = ()) -> tuple[bool, int, int | None, float, float]:
    """Whether more of the logins ``ms`` carry an RTT excess in the class's learned tail
    than the class's background does: ``(suspected, k, threshold ms, learned share at or
    above it, tail probability)``. The threshold is the lowest 1-ms bin above which at
    most ``1 - q`` of the class's excesses lie (the candidate's own counted logins taken
    out; the ``prior`` pseudo-counts of :func:`excess_prior` added, whose weight the
    class's own logins outgrow); ``k`` of the ``n`` logins at or above it are judged by
    the beta-binomial tail of :func:`tail` on the learned share -- a class with little
    history and no prior suspects nothing, and one whose excesses are all alike has no
    tail to be in."""
    if (pool is None or not pool.excess) and not prior:
        return False, 0, None, 0.0, 1.0
    h = list(pool.excess) if pool is not None and pool.excess else [0.0] * EXCESS_BINS
    bins = [b for b in map(_excess_bin, ms) if b is not None]
    for b in bins:  # the candidate's own logins, counted through their exits: out
        if h[b] >= 1.0:
            h[b] -= 1.0
    if prior:
        h = [a + b for a, b in zip(h, prior, strict=True)]
    total = sum(h)
    limit, above, t = (1.0 - q) * total, 0.0, EXCESS_BINS
    for b in range(EXCESS_BINS - 1, -1, -1):
        if above + h[b] > limit:
            break
        above += h[b]
        t = b
    k = sum(1 for b in bins if b >= t)
    p = tail(k, len(ms), above, total - above)
    threshold = t + EXCESS_LO_MS if t < EXCESS_BINS else None
    return p <= max_p, k, threshold, round((above + 1.0) / (total + 2.0), 4), float(f"{p:.3g}")
