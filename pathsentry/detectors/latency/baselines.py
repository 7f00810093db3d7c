"""Learned expectations: each game server's application overhead.

:class:`Baseline` (:mod:`.prefix_baselines`, importable from here too) holds running
quantiles of the session minimum app RTT for one key (server and /24, ASN or country):
what "normal" looks like from one neighbourhood.

:class:`Overhead` is what the game server adds to a network round trip when it
answers the application ping on its game loop: a fixed processing cost plus a
uniform phase of its tick. A login carries ``k`` app samples and the kernel TCP RTT
of the same connection; for an honest client

    gap = min(app) - tcp = cost + tick * B_k + noise,   B_k ~ Beta(1, k)

(the minimum of ``k`` uniform phases; ``E[B_k] = 1 / (k + 1)``). An L4 relay adds
the whole client-relay leg to the gap. The estimators, all robust to a relayed
minority and windowed so that a patch day is absorbed:

``tick``
    median over multi-sample logins of ``spread / m_k`` (``spread`` = max - min of
    the app samples; ``spread / tick`` follows ``Beta(k - 1, 2)``, whose median is
    ``m_k``, so every vote's median is the tick whatever its ``k``: the mean-based
    ``(k + 1) / (k - 1)`` would put two-sample votes' median 12 % low). A relay does
    not change the server's tick, so the tick keeps one vote per login (not per
    exit prefix) and ``TICK_WINDOW`` times as many votes as the cost: one login's
    spread says little (a two-sample vote spreads
    from 0 to 3 ticks), and 40 such votes let the median wander by a tenth of the
    tick, which the cost (the gap less the tick's share) would inherit.
``cost``
    the ``COST_Q`` (0.25) quantile of the wired (not mobile) prefixes' phase-corrected
    gaps ``gap - tick * (1 - (1 - COST_Q) ** (1 / k))``, each gap less its phase's own
    quantile, with the tick as it is now: a vote keeps its gap and its phase's share,
    not a figure corrected once, so the votes cast before the tick was learned
    (uncorrected: on a 90 ms tick a third of a tick high) do not keep the cost high
    for as long as their prefixes stay in the window, which on a quiet server is
    hours. Relays only add to the gap: a low quantile stays on the honest lines until
    relays hold three quarters of the votes, where the median already gave way to a
    quarter (ten relayed votes of 40 lifted it by a quarter of their leg), and the
    minimum of a few phases is densest near zero, so it is tighter than the median
    too (a median of 40 two-sample votes on an 84 ms tick wandered by 7 ms). Mobile
    gaps are left out: a radio link's kernel TCP RTT spikes, which pulls its gaps'
    lower side far below the cost. With fewer than ``MIN_WIRED_COST`` wired votes,
    the middle of every vote instead (:meth:`Overhead.middle`). An exit prefix whose
    login carries relay evidence beside its gap withdraws the gap it voted with
    before (:meth:`Overhead.forget`). What a low quantile gives up: a patch day that
    raises the cost moves it once three quarters of the window voted again.
``noise``
    per access kind, the median magnitude of the residuals ``gap - middle`` at or
    below zero, as a normal-equivalent scale (``middle``: the median of every gap
    less its phase's median, :meth:`Overhead.middle`, so that the residuals are the
    lower half of the noise whatever quantile the cost is read at). The phase is
    never negative, so what lands below the middle is measurement noise (a
    phase-corrected residual would count the tick's spread as noise twice); and it is
    the side relays never reach. Each residual is taken against its server's middle
    as it is now
    (:mod:`.noise`), and a kind with too few of them borrows those of the kinds on
    its own medium only: a radio link's TCP RTT spikes, a wired line's does not.

``spike``
    per access kind, the 90th percentile of the app samples' spread beyond the
    tick's share: how far one sample of a radio link may spike. It is added to the
    bound of logins with one or two samples (the minimum of more filters spikes).

``reach``
    the 0.99 quantile of the wired logins' spreads (:meth:`Overhead.reach`): within the
    tick on a loop that keeps it, past it on one that answers some pings a loop late.
``ceiling``
    while fewer than ``CEILING_SPREADS`` (16) wired spreads are among the tick votes,
    the widest of them or the largest tick those narrower than it do not rule out at
    ``tick_alpha`` (:meth:`Overhead.ceiling`), whichever is larger: the median of five
    two-sample votes stands below 0.4 of the tick one time in thirteen (:mod:`.prior`),
    and the bounds of a just-warm server with a loop take the ceiling while its median
    may be that short.

The honest upper bound of a login's gap is then ``cost + tick * q_k + z * noise
(+ spike)``
with ``q_k = 1 - alpha ** (1 / k)`` the ``1 - alpha`` quantile of ``B_k`` (the reach or
the ceiling in the tick's place where they stand past it,
:meth:`.scoring.Scoring.loop_span`); what the
gap exceeds beyond it is the relay evidence (:mod:`.scoring`).

Every estimate is a quantile over *votes*, one per exit prefix (its latest login),
at most ``overhead_window`` prefixes per server and ``2 x`` that per access kind,
least recently heard from dropped: a gold farm logging 50 accounts into one server
through one /24 in a minute is one vote, not 50, so "robust to a relayed minority"
means a minority of prefixes, which relays rarely outnumber. A patch day moves each
prefix's vote at its next login: the median follows once half the window's
prefixes have logged in again. The figures are exact quantiles of the votes and a
JSON snapshot is the votes themselves.

A cold server's bounds (:mod:`.prior`) read the overhead's own votes. (About 700 lines:
a server's overhead -- cost, tick, reach, ceiling, noise, the cold bounds -- is one estimator
whose figures read each other's votes; the vote arithmetic is :mod:`.votes`'.)
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from typing import Any, ClassVar

from pathsentry.detectors.latency.noise import NoiseVotes
from pathsentry.detectors.latency.prefix_baselines import RAW_SAMPLES, Baseline
from pathsentry.detectors.latency.prior import cost_upper, tick_fit, tick_upper
from pathsentry.detectors.latency.votes import (
    COST_Q,
    MIN_WIRED_COST,
    _Votes,
    median_share,
    phase_quantile,
    phase_share,
    quantile_share,
    spread_median,
    tick_samples,
)
from pathsentry.detectors.physics import interpolated

__all__ = [
    "COST_Q", "MIN_WIRED_COST", "RAW_SAMPLES", "TICK_WINDOW", "Baseline", "Overhead", "OverheadBook",
    "median_share", "phase_quantile", "phase_share", "quantile_share", "spread_median",
]

#: the tick keeps this many times ``overhead_window`` votes (see the module docstring)
TICK_WINDOW = 4
#: the quantile of the wired logins' app sample spreads that says how far past one tick a
#: loop answers (:meth:`Overhead.reach`)
REACH_QUANTILE = 0.99
#: the tick ceiling's precision, a share of the tick (:meth:`Overhead.ceiling`)
CEILING_TOL = 0.002
#: wired spreads from which the median of the tick votes stands without a ceiling
CEILING_SPREADS = 16
#: access kinds on a radio link: one sample, the kernel TCP RTT included, can spike by
#: tens of ms, which no wired line shows (their noise is never pooled with a wired kind's)
RADIO_KINDS = frozenset({"mobile"})


def _spread_of(key: str, vote: float) -> tuple[int, float, bool]:
    """A tick vote's (samples, spread ms, wired) from its key ``#seq:k[:w]`` and its value
    (the spread over its median at ``k`` samples; spread 0 below two samples)."""
    k = tick_samples(key)
    return k, (vote * spread_median(k) if k >= 2 else 0.0), key.endswith(":w")


class Overhead:
    """The learned application overhead of one game server (or server and platform).

    >>> import random
    >>> rng = random.Random(1)
    >>> o = Overhead("srv", window=200)
    >>> for _ in range(200):  # cost 6 ms, tick 33 ms, 4 samples, no noise
    ...     phases = [rng.uniform(0, 33) for _ in range(4)]
    ...     o.update(f"p{_}", 6.0 + min(phases), 4, max(phases) - min(phases))
    >>> 28 < o.tick() < 38, 4 < o.cost() < 8
    (True, True)
    """

    __slots__ = (
        "_by_share",
        "_corrected",
        "_corrected_tick",
        "_cost",
        "_figures",
        "_middle",
        "_phase",
        "_prior_tick",
        "_probed",
        "_radio",
        "_reach",
        "_seq",
        "_spreads",
        "_tick",
        "_tick_hi",
        "_u",
        "_wired",
        "_wired_sorted",
        "key",
        "n",
    )

    #: multi-sample logins needed before the tick comes from the samples' spread
    MIN_TICK_LOGINS: ClassVar[int] = 5

    def __init__(self, key: str, window: int) -> None:
        self.key = key
        #: logins with a TCP RTT learned (the cost's evidence), over all time
        self.n = 0
        self._tick = _Votes(TICK_WINDOW * window)
        #: each tick vote's (samples, spread ms, wired), in the votes' order: read from
        #: its key once, not at every reading of the spreads (:meth:`_wired_spreads`,
        #: :meth:`prior_bounds`)
        self._spreads: dict[str, tuple[int, float, bool]] = {}
        #: the wired multi-sample ones' spreads, ascending (:meth:`reach` reads a quantile)
        self._wired_sorted: list[float] = []
        #: the tick's votes are one per login, not per exit prefix (see :meth:`update`)
        self._seq = 0
        #: the gaps (ms), one per exit prefix, and each one's phase share ``1 - 0.5 ** (1 /
        #: k)``: the tick's fraction its phase-corrected figure takes off
        self._cost = _Votes(window)
        self._phase: dict[str, float] = {}
        #: the same gaps by their phase share (0 for a vote saved corrected already): one
        #: product ``tick * share`` per share, not per vote, when :meth:`cost` corrects them
        self._by_share: dict[float, dict[str, float]] = {}
        #: standardised gap residuals (clipped to +-3), one per exit prefix
        self._u = _Votes(window)
        #: the gaps of wired (not mobile) logins, one per exit prefix: what bounds the
        #: cost from above while the server is cold (:mod:`.prior`)
        self._wired = _Votes(window)
        #: the exit prefixes whose latest gap came over a radio link: the cost is read
        #: from the wired ones' gaps (a radio link's TCP RTT spikes, which pulls its gaps'
        #: lower side far below the cost), from every gap while fewer than
        #: ``MIN_WIRED_COST`` are wired
        self._radio: set[str] = set()
        self._figures: tuple[float, float, float, float] | None = None
        #: :meth:`middle` until the votes change
        self._middle: float | None = None
        #: the phase-corrected gaps :meth:`cost` sorted at the tick ``_corrected_tick``,
        #: kept in step as gaps come and go (:meth:`_share`, :meth:`_unshare`) until the
        #: tick moves: a login that leaves the tick's median where it was costs a
        #: binary search, not a pass over every prefix's gap and a sort
        self._corrected: list[float] | None = None
        self._corrected_tick = 0.0
        #: (alpha, tick_max) -> the tick's upper bound while cold, until the votes change
        self._prior_tick: tuple[float, float, float] | None = None
        #: (samples, spread ms) of the latest ``window`` app probes this server answered
        #: while cold: what narrows its tick bound before (or without) logins
        self._probed: deque[tuple[int, float]] = deque(maxlen=window)
        #: :meth:`reach`, until the tick votes change
        self._reach: float | None = None
        #: :meth:`ceiling`: (alpha, tick_max, tick votes cast then, wired spreads, value)
        self._tick_hi: tuple[float, float, int, int, float] | None = None

    def figures(self) -> tuple[float, float, float, float]:
        """(cost, tick, centre, scale), read once per change of the votes: ``centre`` is
        the 10 %-trimmed mean of the prefixes' standardised gap residuals when it is
        positive (else 0), ``scale`` their normal-equivalent spread (IQR / 1.349, at
        least 1). With the model right they are 0 and 1 (the residuals' median is not:
        the minimum of k phases is skewed); where the model leans towards calling
        honest logins slow (a tick the spread underestimates, jitter the noise misses)
        they carry what the population shows instead. They never make the test more
        sensitive than the model."""
        f = self._figures
        if f is None:
            u = self._u
            if len(u) >= self.MIN_TICK_LOGINS:
                values = u.ordered()
                cut = len(values) // 10
                kept = values[cut:len(values) - cut]
                centre = sum(kept) / len(kept)
                centre = centre if centre > 0.0 else 0.0
                scale = (u.quantile(0.75) - u.quantile(0.25)) / 1.349
            else:
                centre, scale = 0.0, 1.0
            f = self._figures = (self.cost(), self.tick(), centre, scale if scale > 1.0 else 1.0)
        return f

    def tick(self) -> float:
        """The tick (ms): median spread-based estimate, or, before enough multi-sample
        logins, the width of the phase-corrected gaps' p10-p90 (an upper-leaning guess)."""
        if len(self._tick) >= self.MIN_TICK_LOGINS:
            return self._tick.quantile(0.5)
        if len(self._cost) >= 2:
            return (self._cost.quantile(0.9) - self._cost.quantile(0.1)) / 0.8
        return 0.0

    def reach(self) -> float:
        """How far (ms) the loop's answers reach past the fastest: the ``REACH_QUANTILE``
        quantile of the app sample spreads of the wired logins among the tick votes (0
        before ``MIN_TICK_LOGINS`` of them). A loop that answers within its tick keeps it
        below the tick (and the lines' jitter); one that overruns its tick under load,
        answering some pings a loop late, or that queues them, shows spreads past it --
        the bounds an honest login is held to take it then (:mod:`.scoring`). A relay
        leg is common to every sample of a login, so relays cannot teach it; radio lines'
        spikes are left out."""
        r = self._reach
        if r is None:
            spreads = self._wired_sorted
            r = self._reach = (interpolated(spreads, REACH_QUANTILE)
                               if len(spreads) >= self.MIN_TICK_LOGINS else 0.0)
        return r

    def _wired_spreads(self) -> list[tuple[int, float]]:
        """``(k, spread ms)`` of the wired multi-sample logins among the tick votes."""
        return [(k, spread) for k, spread, wired in self._spreads.values() if wired and k >= 2]

    def ceiling(self, alpha: float, tick_max: float) -> float:
        """While fewer than ``CEILING_SPREADS`` wired logins' app sample spreads are among
        the tick votes, the larger of the widest of them and the largest tick their
        spreads narrower than it do not rule out at level ``alpha``
        (:func:`~.prior.tick_fit`): what an honest phase may span while the median of a
        few spreads stands short (five two-sample votes put it below 0.4 of the tick one
        time in thirteen). 0 before ``MIN_TICK_LOGINS`` of them, and from ``CEILING_SPREADS``
        on, where the median holds. A spread past the tick (a loop overrunning it) is no
        evidence of a longer tick; the bounds take :meth:`reach` once the spreads reach
        past the median, and neither on a server answering off its loop
        (:meth:`.scoring.Scoring.loop_span`)."""
        memo = self._tick_hi
        seq = self._seq
        if memo is not None and (memo[3] >= CEILING_SPREADS or (
                memo[0] == alpha and memo[1] == tick_max and memo[2] == seq)):
            return memo[4]
        spreads = self._wired_spreads()
        n = len(spreads)
        value = 0.0
        if self.MIN_TICK_LOGINS <= n < CEILING_SPREADS:
            widest = max(s for _, s in spreads)
            fit = tick_fit(spreads, alpha, tick_max, CEILING_TOL)
            value = widest if widest > fit else fit
        self._tick_hi = (alpha, tick_max, seq, n, value)
        return value

    def sources(self) -> int:
        """Exit prefixes whose gap the cost is learned from (the warm-up measure)."""
        return len(self._cost)

    def cost(self) -> float:
        """The fixed cost (ms): the ``COST_Q`` quantile of the wired gaps less their
        phase's own ``COST_Q`` quantile at the tick as it is now (every gap's while
        fewer than ``MIN_WIRED_COST`` are wired; the median of the gaps as they are
        before ``MIN_TICK_LOGINS`` multi-sample logins taught a tick)."""
        t = self._tick.quantile(0.5) if len(self._tick) >= self.MIN_TICK_LOGINS else 0.0
        phase = self._phase
        if not t or not phase:
            return self._cost.quantile(0.5)
        radio = self._radio
        if len(self._cost.votes) - len(radio) < MIN_WIRED_COST:
            return self.middle()
        corrected = self._corrected
        if corrected is None or self._corrected_tick != t:
            corrected = []
            for share, gaps in self._by_share.items():
                ts = t * share
                corrected += [v - ts for source, v in gaps.items() if source not in radio]
            corrected.sort()
            self._corrected, self._corrected_tick = corrected, t
        return interpolated(corrected, COST_Q)

    def middle(self) -> float:
        """The median of every gap less its phase's median at the tick as it is now: the
        middle of the gaps, where an access kind's noise is measured from
        (:meth:`OverheadBook.noise_scale`: the residuals below it are the lower half of
        the noise, whatever quantile the cost is read at)."""
        m = self._middle
        if m is None:
            t = self._tick.quantile(0.5) if len(self._tick) >= self.MIN_TICK_LOGINS else 0.0
            if not t or not self._phase:
                m = self._cost.quantile(0.5)
            else:
                every: list[float] = []
                for share, gaps in self._by_share.items():
                    ts = t * median_share(share)
                    every += [v - ts for v in gaps.values()]
                every.sort()
                m = interpolated(every, 0.5)
            self._middle = m
        return m

    def prior_bounds(self, cost_max: float, tick_max: float, alpha: float,
                     noise: float) -> tuple[float, float]:
        """(cost, tick) upper bounds (ms) of a cold server: the prior's maxima narrowed
        by the wired gaps (plus ``noise`` ms) and the app samples' spreads so far
        (:func:`~.prior.cost_upper`, :func:`~.prior.tick_upper` over the latest
        ``window`` tick votes, or while no login has cast one the latest ``window`` app
        probes it answered: the bound is at least the widest spread, so the many probes
        of a server its logins have already bounded would only widen it with their
        jitter)."""
        memo = self._prior_tick
        if memo is None or memo[0] != alpha or memo[1] != tick_max:
            spreads: list[tuple[int, float]] = []
            skip = len(self._spreads) - self._cost.cap
            for k, spread, _ in self._spreads.values():
                skip -= 1
                if skip < 0 and k >= 2:
                    spreads.append((k, spread))
            if not spreads:  # no login's spread yet: the app probes it answered
                spreads = list(self._probed)
            memo = self._prior_tick = (alpha, tick_max, tick_upper(spreads, alpha, tick_max))
        return cost_upper(self._wired.ordered(), cost_max, noise), memo[2]

    def probed(self, k: int, spread: float) -> None:
        """Learn the spread of ``k >= 2`` app samples of a probe this server answered
        while cold (the tick bound's evidence until its first login's spread: the
        learned tick is its logins')."""
        self._probed.append((k, spread))
        self._prior_tick = None

    def expected(self, k: int) -> float:
        """Expected gap (ms) of a login with ``k`` app samples."""
        return self.cost() + self.tick() / (k + 1)

    def update(self, source: str, gap: float | None, k: int, spread: float,
               u: float | None = None, wired: bool = False) -> None:
        """Learn one login from exit prefix ``source`` (``u``: its standardised residual;
        ``wired``: not a mobile line, so its gap may bound a cold server's cost)."""
        self._figures = self._middle = None
        if u is not None:
            self._u.add(source, u)
        if k >= 2:
            # one vote per login: a relay or a farm does not change the game loop's
            # tick, so its logins' spreads are as good as anyone's, and a server whose
            # players share a few /24s would otherwise keep a few dozen votes (the key
            # keeps the sample count: the cold bound reads the spread back)
            self._seq += 1
            self._prior_tick = self._reach = None
            key = f"#{self._seq}:{k}{':w' if wired else ''}"
            vote = spread / spread_median(k)
            gone = self._tick.add(key, vote)
            self._spreads[key] = got = _spread_of(key, vote)
            if got[2] and got[0] >= 2:
                insort(self._wired_sorted, got[1])
            if gone is not None:
                old = self._spreads.pop(gone, None)
                if old is not None and old[2] and old[0] >= 2:
                    del self._wired_sorted[bisect_left(self._wired_sorted, old[1])]
        if gap is not None:
            if wired:
                self._wired.add(source, gap)
            self.n += 1
            # less the phase's median (not its mean: the minimum of k phases is skewed,
            # so the median of ``gap - tick / (k + 1)`` would sit below the cost), taken
            # at the tick :meth:`cost` reads
            votes = self._cost
            if source in votes.votes:
                self._unshare(source)
            if wired:
                self._radio.discard(source)
            else:
                self._radio.add(source)
            gone = votes.add(source, gap)
            phase = self._phase
            if gone is not None:  # the window dropped its oldest prefix
                self._unshare(gone)
                phase.pop(gone, None)
                self._radio.discard(gone)
            phase[source] = share = phase_share(k)
            self._share(source, share, gap)

    def forget(self, source: str) -> bool:
        """Withdraw exit prefix ``source``'s gap (and its residual): a login through it
        carried relay evidence beside its gap, so the gap it voted with before is not
        an honest line's either (the tick's votes stay: a relay does not change the
        loop). Returns whether there was a vote."""
        votes = self._cost
        had = source in votes.votes
        if had:
            self._unshare(source)
            votes.discard(source)
            self._phase.pop(source, None)
            self._radio.discard(source)
        had = self._u.discard(source) or had
        had = self._wired.discard(source) or had
        if had:
            self._figures = self._middle = None
        return had

    def _share(self, source: str, share: float, gap: float) -> None:
        """Put ``source``'s gap under its phase share (:attr:`_by_share`)."""
        gaps = self._by_share.get(share)
        if gaps is None:
            gaps = self._by_share[share] = {}
        gaps[source] = gap
        corrected = self._corrected
        if corrected is not None and source not in self._radio:  # (as :meth:`cost` does it)
            x = gap - self._corrected_tick * share
            if x == x:
                insort(corrected, x)
            else:  # (not a number: sorted as :meth:`cost` sorts it, from scratch)
                self._corrected = None

    def _unshare(self, source: str) -> None:
        """Take ``source``'s gap from under its phase share (before its share changes)."""
        share = self._phase.get(source, 0.0)
        gaps = self._by_share[share]
        gap = gaps.pop(source)
        corrected = self._corrected
        if corrected is not None and source not in self._radio:
            x = gap - self._corrected_tick * share
            i = bisect_left(corrected, x)
            if i < len(corrected) and corrected[i] == x:
                del corrected[i]
            else:
                self._corrected = None
        if not gaps:
            del self._by_share[share]

    def snapshot(self) -> dict[str, Any]:
        return {"n": self.n, "tick": self._tick.snapshot(), "cost": self._cost.snapshot(),
                "phase": [[k, median_share(v)] for k, v in self._phase.items()],
                "u": self._u.snapshot(),
                "wired": self._wired.snapshot(), "probed": [list(p) for p in self._probed],
                "radio": sorted(self._radio)}

    @classmethod
    def restore(cls, snap: dict[str, Any], key: str, window: int) -> Overhead:
        o = cls(key, window)
        o.n = int(snap["n"])
        o._tick = _Votes(TICK_WINDOW * window, snap["tick"])
        o._spreads = {key: _spread_of(key, v) for key, v in o._tick.votes.items()}
        o._wired_sorted = sorted(x for k, x, wired in o._spreads.values() if wired and k >= 2)
        seqs = (k[1:].partition(":")[0] for k in o._tick.votes if k.startswith("#"))
        o._seq = len(o._tick) + max((int(q) for q in seqs if q.isdigit()), default=0)
        o._cost = _Votes(window, snap["cost"])
        # a vote without its phase share was saved corrected already
        o._phase = {str(k): quantile_share(float(v)) for k, v in snap.get("phase", [])
                    if k in o._cost.votes}
        o._radio = {str(k) for k in snap.get("radio", []) if k in o._cost.votes}
        for source, gap in o._cost.votes.items():
            o._share(source, o._phase.get(source, 0.0), gap)
        o._u = _Votes(window, snap.get("u", []))
        o._wired = _Votes(window, snap.get("wired", []))
        o._probed.extend((int(k), float(v)) for k, v in snap.get("probed", []))
        return o


class OverheadBook:
    """Overheads per server (and ``server|platform`` when logins name a platform) and
    the residual noise per access kind; bounded by the number of servers, platforms
    and access kinds (``keys_max`` in all)."""

    #: lower-side residuals needed before an access kind has its own noise scale
    MIN_NOISE_VOTES: ClassVar[int] = 5

    def __init__(self, window: int, warm: int = 8, keys_max: int = 10_000) -> None:
        self.window = max(2, int(window))
        #: a server's noise residuals are only taken once its cost rests on this many votes
        self.warm = warm
        self.keys_max = keys_max
        self.overheads: dict[str, Overhead] = {}
        #: access kind -> its exit prefixes' gaps and their servers (the residuals ``gap -
        #: cost`` are taken against the costs as they are when asked)
        self.noise: dict[str, NoiseVotes] = {}
        #: access kind -> votes of the app samples' spread beyond what the tick explains
        self.jitter: dict[str, _Votes] = {}
        #: noise scales until a login is learned (it moves a cost or adds a gap): (kind,
        #: floor) -> (scale, residuals, whether the medium's kinds were pooled)
        self._noise_memo: dict[tuple[str, float], tuple[float, int, bool]] = {}

    @staticmethod
    def key(server_id: str, platform: str | None) -> str:
        return server_id if not platform else f"{server_id}|{platform}"

    def get(self, key: str) -> Overhead | None:
        return self.overheads.get(key)

    def warm_figures(self, key: str, warm: int) -> tuple[float, float, float, float] | None:
        """:meth:`Overhead.figures` of ``key`` once its cost rests on ``warm`` exit
        prefixes (``None`` before, or for an unknown key)."""
        o = self.overheads.get(key)
        if o is None or len(o._cost.votes) < warm:
            return None
        f = o._figures
        return o.figures() if f is None else f

    def noise_of(self, kind: str, floor: float) -> float:
        """:meth:`noise_scale` without the residuals' count."""
        hit = self._noise_memo.get((kind, floor))
        if hit is None:
            hit = self._noise_memo[(kind, floor)] = self._noise_scale(kind, floor)
        return hit[0]

    def noise_scale(self, kind: str, floor: float) -> tuple[float, int]:
        """(noise scale ms, residuals it rests on) of an access kind: the median
        magnitude of the kind's residuals ``gap - cost`` at or below zero, over 0.674 (a normal
        deviation's median magnitude), at least ``floor``. Only the lower side is used:
        relays add to the gap and never land there, and an access kind relays favour
        (hosting) would otherwise learn the relays' spread as noise. Fewer than
        ``MIN_NOISE_VOTES`` such residuals: every kind's, pooled."""
        key = (kind, floor)
        hit = self._noise_memo.get(key)
        if hit is None:
            hit = self._noise_memo[key] = self._noise_scale(kind, floor)
        return hit[0], hit[1]

    def _noise_scale(self, kind: str, floor: float) -> tuple[float, int, bool]:
        w = self.noise.get(kind)
        pooled = False
        cost_of = self._cost_of
        # the residuals at or below zero, ascending
        low = [] if w is None else w.lower(cost_of)
        m = len(low)
        if m < self.MIN_NOISE_VOTES:
            pooled = True
            # every kind's on the same medium
            radio = kind in RADIO_KINDS
            low = []
            for other, v in self.noise.items():
                if (other in RADIO_KINDS) is radio:
                    low += v.lower(cost_of)
            low.sort()
            m = len(low)
            if m < self.MIN_NOISE_VOTES:
                return floor, m, pooled
        # the median magnitude: ``sorted(-x for x <= 0)[m // 2]``
        median = -low[m - 1 - m // 2]
        scale = median / 0.674
        return (scale if scale > floor else floor), m, pooled

    def _cost_of(self, key: str) -> float | None:
        """The middle of server key ``key``'s gaps (:meth:`Overhead.middle`; ``None`` if
        it is not known): what its noise residuals are taken against."""
        o = self.overheads.get(key)
        if o is None:
            return None
        m = o._middle
        return o.middle() if m is None else m

    def spike(self, kind: str, q: float = 0.9) -> float:
        """How far (ms) one app sample of this access kind may spike: the ``q`` quantile
        (default the 90th percentile) of the samples' spread beyond the tick's share,
        ``spread - tick * (k - 1) / (k + 1)``, over multi-sample logins (0 before
        ``MIN_NOISE_VOTES``). A radio link spikes single samples by tens of ms; the
        minimum of several filters that out, a login with one or two samples cannot:
        the gap of such a login is allowed the largest spread seen (``q = 1``), as its
        only sample may carry the largest spike. Relays do not widen a login's spread,
        so this upper-side figure is learned from every login, relays' included."""
        w = self.jitter.get(kind)
        if w is None or len(w) < self.MIN_NOISE_VOTES:
            return 0.0
        x = w.quantile(q)
        return x if x > 0.0 else 0.0

    def spike_votes(self, kind: str) -> int:
        """Logins (exit prefixes) the access kind's spike allowance rests on."""
        w = self.jitter.get(kind)
        return 0 if w is None else len(w)

    def learn(self, key: str, source: str, kind: str, gap: float | None, k: int, spread: float,
              u: float | None = None) -> None:
        """Learn one login of server (and platform) ``key`` from exit prefix ``source``
        (``u``: its standardised gap residual, when the server was warm)."""
        o = self.overheads.get(key)
        if o is None:
            if len(self.overheads) >= self.keys_max:
                return
            o = self.overheads[key] = Overhead(key, self.window)
        if gap is not None and o.sources() >= self.warm:
            w = self.noise.get(kind)
            if w is None:
                if len(self.noise) >= self.keys_max:
                    w = None
                else:
                    w = self.noise[kind] = NoiseVotes(2 * self.window)
            if w is not None:
                w.add(source, key, gap)
        if k >= 2 and o.sources() >= self.warm:
            j = self.jitter.get(kind)
            if j is None and len(self.jitter) < self.keys_max:
                j = self.jitter[kind] = _Votes(2 * self.window)
            if j is not None:
                j.add(source, spread - o.figures()[1] * (k - 1) / (k + 1))
        o.update(source, gap, k, spread, u, kind not in RADIO_KINDS)
        if gap is not None or k >= 2:  # a cost moved (or the tick it is corrected with)
            self._noise_memo.clear()

    def forget(self, key: str, source: str, kind: str) -> None:
        """Withdraw exit prefix ``source``'s gap from server (and platform) ``key``'s
        overhead and from access ``kind``'s noise (:meth:`Overhead.forget`): relays do not
        teach the honest figures, and a vote cast before its exit was known to relay is
        no exception."""
        o = self.overheads.get(key)
        had = o is not None and o.forget(source)
        w = self.noise.get(kind)
        if (w is not None and w.discard(source)) or had:
            self._noise_memo.clear()

    def learn_probe(self, key: str, k: int, spread: float) -> None:
        """Learn the spread of an app probe's ``k >= 2`` samples answered by server (and
        platform) ``key`` while it is cold (:meth:`Overhead.probed`): a vantage heard
        from through app probes alone gets a tick bound, so its probes are judged
        against the cold prior instead of giving no verdict."""
        o = self.overheads.get(key)
        if o is None:
            if len(self.overheads) >= self.keys_max:
                return
            o = self.overheads[key] = Overhead(key, self.window)
        elif len(o._tick):
            return  # a login's spread bounds it already
        o.probed(k, spread)

    def snapshot(self) -> dict[str, Any]:
        return {"overheads": {k: o.snapshot() for k, o in self.overheads.items()},
                "noise_gaps": {k: w.snapshot() for k, w in self.noise.items()},
                "jitter": {k: w.snapshot() for k, w in self.jitter.items()}}

    def load(self, snap: dict[str, Any], only_new: bool = False) -> None:
        self._noise_memo.clear()
        if not only_new:
            self.overheads.clear()
            self.noise.clear()
            self.jitter.clear()
        for k, o in snap.get("overheads", {}).items():
            if k not in self.overheads:
                self.overheads[k] = Overhead.restore(o, k, self.window)
        # (an older format's ``noise`` held residuals against the costs of their time:
        # they are not read, and the kinds learn their noise again)
        for k, votes in snap.get("noise_gaps", {}).items():
            if k not in self.noise:
                self.noise[k] = NoiseVotes(2 * self.window, votes)
        for k, votes in snap.get("jitter", {}).items():
            if k not in self.jitter:
                self.jitter[k] = _Votes(2 * self.window, votes)
