"""The background of a partition: how many arrivals its own history predicts.

Each partition (a family, a route, an exit) keeps exponentially decayed counts of
its arrivals (half-lives ``background_half_life_s`` and the faster
``background_fast_half_life_s``: traffic has a time of day). :func:`expected` turns it into
the number of accounts expected in a window of ``span`` seconds, and a candidate
group is a burst only when the Poisson probability of at least that many arrivals
(:func:`poisson_tail`) stays below ``max_burst_p``. The same judge covers every
pacing: logins seconds apart are judged over ``burst_s``, logins minutes apart over
``window_s`` -- a busy VPN exit or a popular route needs a real surge at either
scale, a quiet hosting range does not.

A cold partition (the detector's first hour, an exit met for the first time) does
not start from nothing: the partitions of its class (a hosting AS, a subscriber /24,
a route: :func:`~pathsentry.detectors.farm.model.pool_class`) share a
:class:`~pathsentry.detectors.farm.model.Pool` of their arrivals, and the slow
expectation is the partition's own rate shrunk toward the population's mean rate
per partition, the prior weighing as ``background_prior_s`` seconds of the
partition's own observation (a Gamma prior on the Poisson rate): a partition young
against that weight is judged as a typical one of its class, an old one by its own
history. The class's rate is itself an estimate from what its partitions have seen,
and a young or small world has seen little -- mostly the farms themselves: it is
shrunk toward the documented default ``background_prior_rate_h`` (logins per hour of
one partition, default 1) weighted as ``background_prior_s`` seconds of one
partition's observation (pseudo-observations of a Gamma prior), so a class that has
seen nothing expects the default, and one whose partitions stayed silent for hours
learns a lower rate. A farm found is no background: the logins that join a group,
and in a name-less partition those of a name family's batch (its family partition's),
leave the partition's counts and its class's again (:func:`depart`).

>>> from collections.abc import Iterable

from pathsentry.detectors.farm.model import FarmSettings, Member, Partition, Pool
>>> s, pool = FarmSettings(), Pool()
>>> busy, cold = Partition(key="net:AS1", pool=pool), Partition(key="net:AS2", pool=pool)
>>> pool.parts = 2
>>> for t in range(0, 3600, 60): arrive(busy, float(t), 21600.0, 3600.0)
>>> round(expected(busy, 0, 300.0, s), 1), round(expected(cold, 0, 300.0, s), 1)
(5.1, 1.6)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from pathsentry.detectors.farm.model import FarmSettings, Member, Partition, Pool

__all__ = ["arrive", "burst_p", "depart", "expected", "no_burst", "poisson_tail", "prior_rate",
           "unarrive"]

_LN2 = math.log(2)


def arrive(part: Partition, ts: float, half_life: float, fast_half_life: float) -> None:
    """Count one arrival at ``ts`` in ``part``'s two decayed arrival counts."""
    rate_ts = part.rate_ts
    # (conditionals for max(): the builtin costs far more than the arithmetic)
    dt = ts - rate_ts
    dt = dt if dt > 0.0 else 0.0
    part.rate_count = part.rate_count * 0.5 ** (dt / half_life) + 1.0
    part.rate_fast = part.rate_fast * 0.5 ** (dt / fast_half_life) + 1.0
    part.rate_ts = ts if ts > rate_ts else rate_ts
    pool = part.pool
    if pool is not None:
        dt = ts - pool.ts
        if dt > 0.0:
            pool.count = pool.count * 0.5 ** (dt / half_life) + 1.0
            pool.ts = ts
        else:
            pool.count += 1.0


def depart(part: Partition, ts: float, half_life: float, fast_half_life: float) -> None:
    """Undo :func:`arrive` of an arrival at ``ts`` (a farm's login, or a name family's
    batch, is no background): its decayed weight out of the partition's two counts and
    its class's pool."""
    age = max(0.0, part.rate_ts - ts)
    part.rate_count = max(0.0, part.rate_count - 0.5 ** (age / half_life))
    part.rate_fast = max(0.0, part.rate_fast - 0.5 ** (age / fast_half_life))
    pool = part.pool
    if pool is not None:
        pool.count = max(0.0, pool.count - 0.5 ** (max(0.0, pool.ts - ts) / half_life))


def unarrive(part: Partition, ms: Iterable[Member], s: FarmSettings) -> None:
    """Take the arrivals of ``ms`` (a farm's logins, or a name family's batch in a
    name-less partition) out of the partition's and its class's counts (:func:`depart`),
    each once: a farm found is no background, and in a small or young world the farms
    would otherwise be most of what the class's prior has seen."""
    for x in ms:
        if x.arrived:
            x.arrived = False
            depart(part, x.ts, s.background_half_life_s, s.background_fast_half_life_s)


def prior_rate(pool: Pool | None, n: int, span: float, half_life: float,
               rate0: float = 0.0, weight0: float = 0.0) -> float:
    """The population's mean arrival rate per partition (per second) at its latest
    arrival, over the pool's observed life (at least ``span``), the ``n`` arrivals under
    judgement taken out, shrunk toward the documented default ``rate0`` weighted as
    ``weight0`` seconds of one partition's observation (a Gamma prior: ``rate0 *
    weight0`` pseudo-arrivals over ``weight0`` pseudo-seconds). A class that has seen
    little (a young or small world) is judged by the default rather than by its few
    arrivals; ``rate0`` without a pool or partitions."""
    if pool is None or pool.parts <= 0:
        return rate0
    tau = half_life / _LN2
    life = max(span, pool.ts - pool.first_ts)
    count = max(0.0, pool.count - n)
    exposure = pool.parts * tau * -math.expm1(-life / tau)
    return float((count + rate0 * weight0) / (exposure + weight0))


def expected(part: Partition, n: int, span: float, s: FarmSettings) -> float:
    """Accounts the partition's background rate predicts in ``span`` seconds.

    The ``n`` arrivals under judgement are taken out of the decayed count, which
    is divided by the decayed length of the partition's observed life
    (``tau * (1 - exp(-life / tau))``, ``tau = half_life / ln 2``). Two counts, a
    slow one (``background_half_life_s``) and a fast one
    (``background_fast_half_life_s``), and the larger expectation wins: a campus's
    evening is busier than its day's average. The slow one is shrunk toward the
    population prior (:func:`prior_rate`, weight ``background_prior_s``), itself
    shrunk toward ``background_prior_rate_h`` with the same weight.
    """
    life = max(span, part.rate_ts - part.first_ts)
    weight = s.background_prior_s
    lam = 0.0
    for count, half_life, prior in ((part.rate_count, s.background_half_life_s, True),
                                    (part.rate_fast, s.background_fast_half_life_s, False)):
        tau = half_life / _LN2
        decayed_life = tau * -math.expm1(-life / tau)
        own = max(0.0, count - n)
        if prior and weight > 0.0:
            rate = prior_rate(part.pool, n, span, half_life,
                              s.background_prior_rate_h / 3600.0, weight)
            x = (own + rate * weight) * span / (decayed_life + weight)
        else:
            x = own * span / decayed_life
        lam = x if x > lam else lam
    return lam


def burst_p(n: int, lam: float) -> float:
    """:func:`poisson_tail` to three significant digits (as the evidence shows it)."""
    return float(f"{poisson_tail(n, lam):.3g}")


def no_burst(part: Partition, n: int, span: float, s: FarmSettings) -> bool:
    """Whether no candidate of at most ``n`` members within ``span`` can pass the burst
    gate (taking members out only shrinks a candidate).

    ``burst_p`` (the Poisson tail ``P(X >= n)``) only grows as the candidate
    shrinks: fewer arrivals to explain and a larger expected background. Two cheap
    lower bounds of ``P(X >= n)`` for ``n`` itself decide it with a margin far beyond
    rounding (twice the limit): ``1/2`` when ``n`` is at most the median of
    ``Poisson(lam)`` (``>= lam - ln 2``), and the probability of exactly ``n``.
    """
    limit = 2 * s.max_burst_p
    if not 0.0 < limit < 0.5:
        return False
    lam = expected(part, n, span, s)
    if lam <= 0.0:
        return False
    if n <= lam - _LN2:
        return True
    log_pmf = n * math.log(lam) - lam - math.lgamma(n + 1)
    return log_pmf > math.log(limit) + 0.01


def poisson_tail(n: int, lam: float) -> float:
    """P(X >= n) for X ~ Poisson(lam): how surprising ``n`` arrivals are.

    >>> poisson_tail(5, 0.0), round(poisson_tail(8, 2.0), 4), poisson_tail(0, 3.0)
    (0.0, 0.0011, 1.0)
    """
    if n <= 0:
        return 1.0
    if lam <= 0.0:
        return 0.0
    term = math.exp(-lam)
    cdf = term
    for k in range(1, n):
        term *= lam / k
        cdf += term
    return max(0.0, 1.0 - cdf)

