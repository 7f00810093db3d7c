"""The counting shortcuts of the injection cells give what the full counts give."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pathsentry.detectors.injection_counts import distinct_sources, rate_above, wilson_lower

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
