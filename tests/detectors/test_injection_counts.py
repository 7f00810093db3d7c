"""The counting shortcuts of the injection cells give what the full counts give."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pathsentry.detectors.injection_counts import (
    beta_binomial_sf,
    distinct_sources,
    rate_above,
    wilson_lower,
)

_NAMES = st.sampled_from([f"ip:{i}" for i in range(8)] + [f"acct:{i}" for i in range(4)])
_SETS = st.lists(st.frozensets(_NAMES, max_size=6), max_size=5)
_SAME = st.dictionaries(st.sampled_from([f"ip:{i}" for i in range(8)]),
                        st.sampled_from([f"acct:{i}" for i in range(4)]), max_size=6)


@settings(max_examples=300, deadline=None)
@given(_SETS, _SAME, st.integers(min_value=1, max_value=10))
def test_exact_sources_stop_at_the_cap_and_agree_below_it(
        sets: list[frozenset[str]], same: dict[str, str], cap: int) -> None:
    everyone = {same.get(w, w) for x in sets for w in x}
    exact = distinct_sources(sets, cap, same, exact=True)
    whole_sets = distinct_sources(sets, cap, same)
    assert exact <= everyone
    assert len(exact) == min(cap, len(everyone))
    # the test the cells make of either ("at least cap") has the same answer
    assert (len(exact) >= cap) == (len(whole_sets) >= cap)
    if len(everyone) < cap:  # fewer than the cap: all of them, as the full count
        assert exact == whole_sets == everyone


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=500), st.integers(min_value=0, max_value=500),
       st.floats(min_value=0.0, max_value=1.0), st.integers(min_value=0, max_value=500),
       st.sampled_from([1.64, 1.96, 2.58]))
def test_rate_above_with_the_lower_bound_given_is_the_same_number(
        k: int, extra: int, rate_ref: float, n_ref: int, z: float) -> None:
    n, k_ref = k + extra, rate_ref * n_ref  # (a reference count: a rate of its probes)
    given_lower = rate_above(k, n, k_ref, n_ref, z, wilson_lower(k, n, z))
    assert given_lower == rate_above(k, n, k_ref, n_ref, z)


def _exact_tail(k: int, n: int, a: int, b: int) -> Fraction:
    """``P(X >= k)``, beta-binomial with integer ``a, b``, in exact fractions:
    ``C(n, x) B(x + a, n - x + b) / B(a, b)`` with ``B(p, q) = (p-1)!(q-1)!/(p+q-1)!``."""
    def beta(p: int, q: int) -> Fraction:
        return Fraction(math.factorial(p - 1) * math.factorial(q - 1), math.factorial(p + q - 1))
    return sum((math.comb(n, x) * beta(x + a, n - x + b) / beta(a, b)
                for x in range(k, n + 1)), Fraction(0))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=40), st.integers(min_value=1, max_value=40),
       st.integers(min_value=1, max_value=6), st.integers(min_value=1, max_value=400))
def test_the_beta_binomial_tail_is_the_exact_sum(k: int, n: int, a: int, b: int) -> None:
    got = beta_binomial_sf(k, n, a, b)
    want = float(_exact_tail(k, n, a, b))
    assert got == pytest.approx(want, rel=1e-6, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=30), st.integers(min_value=30, max_value=200),
       st.floats(min_value=1e-4, max_value=0.5))
def test_a_stopped_tail_is_above_the_stop_only_when_the_tail_is(k: int, n: int,
                                                                stop: float) -> None:
    full = beta_binomial_sf(k, n, 1.5, 20.5)
    cut = beta_binomial_sf(k, n, 1.5, 20.5, stop)
    assert (cut > stop) == (full > stop)
    assert cut <= full + 1e-12


def test_a_larger_reference_makes_the_same_count_less_likely() -> None:
    """Three suspects in 13 probes against none in the reference: the more answers
    the reference's zero rests on, the smaller the tail."""
    tails = [beta_binomial_sf(3, 13, 0.5, m + 0.5) for m in (13, 50, 200, 1000)]
    assert tails == sorted(tails, reverse=True) and tails[0] > 0.01 > 1e-3 > tails[2]


@pytest.mark.parametrize("n", range(1, 200))
def test_no_suspect_has_a_lower_bound_of_exactly_zero(n: int) -> None:
    """0 of ``n`` is no evidence of any rate: a bound above 0 (floating-point residue,
    1e-17 for n = 11, 22, 27, ...) is "above" a reference rate of 0 and once refused a
    small TLS control its top-up with the other networks' TLS answers."""
    assert wilson_lower(0, n) == 0.0
    assert wilson_lower(1, n) > 0.0
