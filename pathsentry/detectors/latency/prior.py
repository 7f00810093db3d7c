"""The prior of a cold server's application overhead, and what its first logins prove.

A server's overhead (:mod:`.baselines`) is learned from the gaps of ``overhead_warmup``
distinct exit prefixes before the gap verdict uses it: with fewer, a relayed minority
could move the median. Until then the verdict does not wait. It asks what an honest
login's gap can be for *any* overhead the prior allows and the server's logins so far
have not ruled out, and judges the gap against the largest such bound.

The prior (``[detectors.latency]``): a fixed processing cost between 0 and
``overhead_prior_cost_ms`` (30 ms) and a game-loop tick between 0 (no loop) and
``overhead_prior_tick_ms`` (200 ms, a 5 Hz loop). Real servers tick at 8-128 Hz; a
server slower than the prior allows must raise it, or its first honest logins can be
flagged. Two facts narrow the prior as logins come in, both one-sided, so relayed
logins only ever widen them:

``tick``
    The spread (max - min) of a login's ``k`` app samples is ``tick * R``,
    ``R ~ Beta(k - 1, 2)`` (the range of ``k`` uniform phases), plus jitter that only
    widens it. A tick ``T`` is ruled out when the spreads are too narrow for it:
    Fisher's combination ``-2 * sum(log F_k(spread / T))`` of the spreads' lower-tail
    probabilities (:func:`spread_cdf`) exceeds the ``1 - alpha`` quantile of
    chi-squared with ``2 n`` degrees of freedom (``alpha``: ``gap_alpha``, 0.001). The
    largest tick not ruled out is :func:`tick_upper`. A relay's spreads carry its
    client's jitter too, so they only raise the bound. The app probes a cold server
    answers are phases of the same loop: until a login's spread comes, theirs give
    the bound, so a vantage heard from through app probes alone has one.
``cost``
    An honest gap is ``cost + phase + noise`` with a phase that is never negative, and
    a relay only adds to a gap: every gap is at least the cost less its noise. The
    ``COST_RANK``-th lowest gap of the server's wired (not mobile) exit prefixes, plus
    ``gap_z`` noise scales, bounds the cost from above (:func:`cost_upper`); one
    outlier (a TCP RTT measured high, which lowers its gap) is tolerated. Mobile gaps
    are left out: a radio link's one kernel TCP RTT can sit tens of ms above the path
    its app samples took.

A warm server's tick is the median of its spreads' votes (:mod:`.baselines`), which a
few two-sample spreads can put far short (five of them below 0.4 of the tick one
time in thirteen: each vote falls there with :func:`spread_cdf`'s probability); until
16 wired spreads are in, its bounds take at least the widest of them or
:func:`tick_fit`, the largest tick the spreads narrower than it do not rule out at
``tick_alpha`` (0.5), a spread past it counting for nothing (a loop answering late
widens a few).

The honest bound of a cold server is then ``cost_up + tick_up * q_k + gap_z * noise``
(and the spike allowance for one or two samples), the warm bound's formula at the
upper ends of what is still possible; a gap beyond it is a relay leg whatever the
overhead turns out to be.

>>> round(spread_cdf(2, 0.5), 3), spread_cdf(4, 1.5)
(0.75, 1.0)
>>> round(chi2_half_quantile(1, 0.05), 3)  # one spread: -log(0.05)
2.996
>>> tight = tick_upper([(5, 1.0)] * 10, 0.001, 200.0)  # no loop: every spread about 1 ms
>>> 1.0 < tight < 5.0, tick_upper([], 0.001, 200.0)
(True, 200.0)
>>> from pathsentry.detectors.latency.votes import spread_median
>>> p = spread_cdf(2, 0.4 * spread_median(2))  # one two-sample vote under 0.4 of the tick
>>> round(sum(math.comb(5, j) * p ** j * (1 - p) ** (5 - j) for j in (3, 4, 5)), 3)
0.075
>>> late = [(4, 60.0)] * 9 + [(4, 150.0)]  # one spread a loop late
>>> tick_upper(late, 0.5, 300.0), 100.0 < tick_fit(late, 0.5, 300.0, 0.002) < 150.0
(150.0, True)
>>> cost_upper([9.0, 4.0, 30.0], 30.0, 1.0), cost_upper([4.0], 30.0, 1.0)
(10.0, 30.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["COST_RANK", "chi2_half_quantile", "cost_upper", "spread_cdf", "tick_fit", "tick_upper"]

#: which lowest wired gap (1-based) bounds a cold server's cost: the second, so that one
#: gap measured low (a TCP RTT spike) does not bound it
COST_RANK = 2

#: (n, alpha) -> :func:`chi2_half_quantile`, bounded
_QUANTILES: dict[tuple[int, float], float] = {}
_QUANTILES_MAX = 4096


def spread_cdf(k: int, x: float) -> float:
    """``P(R <= x)`` for the range ``R`` of ``k >= 2`` uniform(0, 1) phases, i.e. the
    ``Beta(k - 1, 2)`` CDF ``k x^(k-1) - (k-1) x^k``."""
    if x >= 1.0:
        return 1.0
    if x <= 0.0:
        return 0.0
    return k * x ** (k - 1) - (k - 1) * x ** k


def chi2_half_quantile(n: int, alpha: float) -> float:
    """The ``1 - alpha`` quantile of ``Gamma(n, 1)`` (half a chi-squared with ``2 n``
    degrees of freedom): the ``x`` with ``exp(-x) * sum(x^j / j!, j < n) = alpha``."""
    key = (n, alpha)
    hit = _QUANTILES.get(key)
    if hit is not None:
        return hit
    lo, hi = 0.0, 10.0 * n + 50.0
    for _ in range(80):
        mid = (lo + hi) / 2.0
        term = total = 1.0
        for j in range(1, n):
            term *= mid / j
            total += term
        if math.exp(-mid) * total > alpha:
            lo = mid
        else:
            hi = mid
    if len(_QUANTILES) < _QUANTILES_MAX:
        _QUANTILES[key] = hi
    return hi


def _rejection(spreads: list[tuple[int, float]], tick: float) -> float:
    """``-sum(log F_k(spread / tick))``: how far the spreads are too narrow for ``tick``."""
    total = 0.0
    for k, s in spreads:
        p = spread_cdf(k, s / tick)
        if p <= 0.0:
            return math.inf
        total -= math.log(p)
    return total


def tick_upper(spreads: Iterable[tuple[int, float]], alpha: float, tick_max: float) -> float:
    """The largest tick (ms, at most ``tick_max``) the logins' app-sample spreads
    (``(k, max - min)`` with ``k >= 2``) do not rule out at level ``alpha``; ``tick_max``
    without any."""
    data = [(k, s) for k, s in spreads if k >= 2]
    if not data:
        return tick_max
    limit = chi2_half_quantile(len(data), alpha)
    lo = max(max(s for _, s in data), 1e-3)
    if lo >= tick_max:
        return tick_max
    if _rejection(data, lo) > limit:
        return lo  # narrower than any tick at all allows: the widest spread is the tick
    return _largest(data, limit, lo, tick_max, 0.0)


def tick_fit(spreads: Iterable[tuple[int, float]], alpha: float, tick_max: float,
             rel_tol: float) -> float:
    """The largest tick (ms, at most ``tick_max``) the spreads narrower than it do not
    rule out at level ``alpha``: :func:`tick_upper` without its floor at the widest
    spread, a spread wider than the tick counting as no evidence either way (a loop
    answering some pings a tick late widens a few spreads past it, which says nothing
    of the tick); ``rel_tol``: the bracket's width it stops at, a share of the tick."""
    data = [(k, s) for k, s in spreads if k >= 2 and s > 0.0]
    if not data:
        return tick_max
    lo = min(s for _, s in data)  # every spread at least as wide: no evidence at all
    return _largest(data, chi2_half_quantile(len(data), alpha), lo, tick_max, rel_tol)


def _largest(data: list[tuple[int, float]], limit: float, lo: float, hi: float,
             rel_tol: float) -> float:
    """The largest tick in ``[lo, hi]`` whose :func:`_rejection` stays at most ``limit``
    (``lo`` within it), to ``rel_tol`` of the tick (0: 40 halvings)."""
    if lo >= hi or _rejection(data, hi) <= limit:
        return hi
    narrow = 1.0 + rel_tol
    for _ in range(40):  # geometric bisection: the rejection grows with the tick
        if hi <= lo * narrow:
            break
        mid = math.sqrt(lo * hi)
        if _rejection(data, mid) > limit:
            hi = mid
        else:
            lo = mid
    return hi


def cost_upper(wired_gaps: Iterable[float], cost_max: float, noise: float) -> float:
    """The largest cost (ms, at most ``cost_max``) the gaps of wired exit prefixes allow:
    the ``COST_RANK``-th lowest plus ``noise`` (``gap_z`` noise scales); ``cost_max``
    with fewer gaps."""
    ordered = sorted(wired_gaps)
    if len(ordered) < COST_RANK:
        return cost_max
    bound = ordered[COST_RANK - 1] + noise
    return bound if bound < cost_max else cost_max
