"""The background of a partition: how many arrivals its own history predicts.

Each partition (a family, a route, an exit) keeps exponentially decayed counts of
its arrivals (half-lives ``background_half_life_s`` and the faster
``background_fast_half_life_s``: traffic has a time of day). :func:`expected` turns it into
the number of accounts expected in a window of ``span`` seconds, and a candidate
group is a burst only when the Poisson probability of at least that many arrivals
(:func:`poisson_tail`) stays below ``max_burst_p``. The same judge covers every
pacing: logins seconds apart are judged over ``burst_s``, logins minutes apart over
``window_s`` -- a busy VPN exit or a popular route needs a real surge at either
scale, a quiet hosting range does not. With no history yet (a partition's first
minutes) the expectation is zero and the other signals (RTT band, names) decide.
"""

from __future__ import annotations

import math

from pathsentry.detectors.farm.model import FarmSettings, Partition

__all__ = ["arrive", "burst_p", "expected", "no_burst", "poisson_tail"]

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


def expected(part: Partition, n: int, span: float, s: FarmSettings) -> float:
    """Accounts the partition's background rate predicts in ``span`` seconds.

    The ``n`` arrivals under judgement are taken out of the decayed count, which
    is divided by the decayed length of the partition's observed life
    (``tau * (1 - exp(-life / tau))``, ``tau = half_life / ln 2``). Two counts, a
    slow one (``background_half_life_s``) and a fast one
    (``background_fast_half_life_s``), and the larger expectation wins: a campus's
    evening is busier than its day's average.
    """
    life = max(span, part.rate_ts - part.first_ts)
    lam = 0.0
    for count, half_life in ((part.rate_count, s.background_half_life_s),
                             (part.rate_fast, s.background_fast_half_life_s)):
        tau = half_life / _LN2
        x = max(0.0, count - n) * span / (tau * -math.expm1(-life / tau))
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

