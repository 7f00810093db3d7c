"""Scoring of the relay detector: each evidence component's strength and the noisy-OR
that combines them.

Every latency rule compares like with like. The cross-layer gap (app minimum
against kernel TCP or a network-layer probe) is judged against the server's learned
application overhead (:class:`~.baselines.Overhead`): a login is only evidence when
its gap exceeds ``cost + tick * q_k + gap_z * noise`` (see :mod:`.baselines`), so a
game loop with a 100 ms tick does not look like a relay. Physics judges a network
RTT: the kernel TCP RTT, or the app minimum less the learned overhead (cost and the
``1 - phase_alpha`` quantile of the phase), or the slowest app sample less the cost,
one whole tick, ``gap_z`` noise scales and the spike allowance
(:meth:`Scoring.slowest_bound`), never a raw app figure; an app probe from another
vantage is judged the same way against that vantage's learned overhead
(:meth:`Scoring.probe_net`). The prefix
baselines hold app minima and are compared with app minima. A server not warmed up
(gaps from fewer than ``overhead_warmup`` distinct exit prefixes) is judged, gap and
app-derived physics alike, with the largest cost and tick its prior and its logins so
far allow (:mod:`.prior`); its residuals are neither learned nor counted toward an exit
prefix, and the evidence says which basis a verdict used.

Defaults (``[detectors.latency]``): ``overhead_window`` 40 exit prefixes per server (a
patch day is absorbed within about 20 logins from distinct prefixes; a relayed share
below about 40 % of the window's prefixes does not move the medians),
``overhead_warmup`` 8 prefixes, the cold prior ``overhead_prior_cost_ms`` 30 and
``overhead_prior_tick_ms`` 200 (the most a server's fixed cost and tick may be before
its logins narrow them: a server answering slower must raise them), ``spike_warmup`` 40
logins of an access kind before a login with one or two app samples of that kind has a
gap verdict of its own (its only sample may carry a radio spike larger than any of the
kind's few learned spreads; its residual still counts toward its exit prefix's),
``gap_z`` 3.0 noise scales above the phase bound, ``gap_alpha`` 0.001 (the phase
quantile a gap must exceed), ``phase_alpha`` 0.01 (the phase quantile subtracted where
an app figure meets physics), ``prefix_history`` 16 logins per exit prefix combined,
from ``prefix_min_logins`` 4, ramping between combined z-scores of 4.5 and 6.5
(``prefix_z``); a prefix whose recent logins were proven relays by their own physics
(``proven_min`` 0.5) from at least 2 accounts (``prefix_proven_accounts``) lends its
other logins evidence ramping over the proven share between 0.2 and 0.5
(``prefix_share``). Neither exit component is lent to a login at its claimed place
(:meth:`Scoring.at_claim`: its fastest answer less the learned cost within what an
honest client there typically shows -- no room for a leg behind the exit).

Every component's strength reads the same overhead figures (learned, or a cold
server's bounds), and they are kept here beside the one verdict that sets them. The
settings and the components' weights are :mod:`.defaults`'s; the account history's
boost or damping of a score is :mod:`.history`'s. (About 650 lines: the components read
one set of overhead figures and gate one another -- the claimed-place test withholds the
exit's two -- so splitting them would pass those figures across modules.)
"""

from __future__ import annotations

import math
from typing import ClassVar

from mypy_extensions import trait

from pathsentry.detectors.latency.baselines import (
    RADIO_KINDS,
    Baseline,
    Overhead,
    OverheadBook,
    phase_quantile,
)
from pathsentry.detectors.latency.defaults import (
    DEFAULT_MIN_SPREAD_MS,
    DEFAULTS,
    LEVEL_WEIGHT,
    MIN_SPREAD_MS,
    WEIGHTS,
)
from pathsentry.detectors.latency.geometry import Geometry
from pathsentry.detectors.latency.history import AccountHistory
from pathsentry.detectors.latency.model import FEATURES, QueuedHalfSpaceTrees, features
from pathsentry.detectors.latency.prefixes import PREFIX_ROW, ExitPrefixes
from pathsentry.detectors.latency.state import BoundedLRU, Session

__all__ = ["DEFAULTS", "LEVEL_WEIGHT", "MIN_SPREAD_MS", "PREFIX_ROW", "PRIOR_APP", "SECOND_SLOWEST",
           "SLOWEST", "WEIGHTS", "GapVerdict", "Scoring", "noisy_or"]


def noisy_or(components: dict[str, float]) -> float:
    p = 1.0
    for value in components.values():  # max(0, min(1, value)), as conditionals
        value = value if value < 1.0 else 1.0
        p *= 1.0 - (value if value > 0.0 else 0.0)
    return 1.0 - p


#: physics' sources for an app figure: on a cold server, and the slowest sample
PRIOR_APP = "app_rtt less the largest overhead the cold prior allows"
SLOWEST = "slowest app sample less cost and one tick"
#: ... and the second-slowest, while the access kind's spikes are not learned yet
SECOND_SLOWEST = "second-slowest app sample less cost and one tick"

#: Probe methods the network layer (or a VPN endpoint) answers.
NET_METHODS = frozenset({"icmp", "tcp"})
#: each of them -> the gap verdict's source label
_NET_LABELS: dict[str, str] = {m: f"{m} probe" for m in NET_METHODS}
_W_GAP = WEIGHTS["gap"]
_W_PREFIX = WEIGHTS["prefix_gap"]
_W_RELAYS = WEIGHTS["prefix_relays"]
_W_PHYSICS = WEIGHTS["physics"]
_W_BASELINE = WEIGHTS["baseline"]
_W_VANTAGE = WEIGHTS["vantage"]
_W_ROUTE = WEIGHTS["route"]
_W_MODEL = WEIGHTS["model"]


class GapVerdict:
    """The cross-layer gap of one login against the server's learned overhead."""

    __slots__ = ("bound", "cold", "cost", "excess", "expected", "gap", "k", "n", "net", "noise",
                 "noise_n", "noise_unlearned", "prior", "ratio", "residual", "source", "span",
                 "spike", "spike_n", "strength", "tick", "u", "u_raw", "variance")

    def __init__(self, net: float, source: str, gap: float) -> None:
        self.net, self.source, self.gap = net, source, gap
        self.strength = 0.0
        #: ``None`` while the server is cold (no verdict)
        self.bound: float | None = None
        self.excess: float | None = None
        self.expected = self.cost = self.tick = self.noise = self.ratio = self.spike = 0.0
        #: the phase span the bound took: the tick, or the loop's reach past it
        #: (:meth:`Scoring.loop_span`)
        self.span = 0.0
        #: app samples the verdict rests on (login and the login server's app probes)
        self.k = 0
        #: ``gap - expected`` and its variance for an honest login (ms, ms^2)
        self.residual = self.variance = 0.0
        #: the residual standardised, clipped, and set against the server's population
        self.u = self.u_raw = 0.0
        self.n = self.noise_n = 0
        #: a radio link whose medium's noise rests on too few residuals (no verdict)
        self.noise_unlearned = False
        #: logins the access kind's spike allowance rests on (-1: not needed, 3+ samples)
        self.spike_n = -1
        #: why the server's learned overhead is not used (``""``: it is)
        self.cold = ""
        #: the bound is the cold prior's (:mod:`.prior`), not the learned overhead's
        self.prior = False

    def learned(self) -> bool:
        """Whether the verdict rests on the server's learned overhead (its standardised
        residual may be learned and counted toward its exit prefix)."""
        return self.bound is not None and not self.prior


@trait  # a mixin: the compiled build takes it beside its one non-trait base
class Scoring(ExitPrefixes, AccountHistory):
    """Component strengths and the combined score (mixed into the detector)."""

    name: ClassVar[str]
    warmup: int
    flag_threshold: float
    gap_min_ms: float
    gap_full_ms: float
    gap_z: float
    gap_alpha: float
    tick_alpha: float
    phase_alpha: float
    overhead_warmup: int
    prior_cost: float
    prior_tick: float
    spike_warmup: int
    baselines: BoundedLRU[str, Baseline]
    overhead: OverheadBook
    hst: QueuedHalfSpaceTrees
    geometry: Geometry

    def noise_floor(self, kind: str) -> float:
        """Half the access kind's smallest baseline spread: the least noise scale (ms)."""
        return MIN_SPREAD_MS.get(kind, DEFAULT_MIN_SPREAD_MS) / 2.0

    @staticmethod
    def probe_figures(sess: Session) -> tuple[float | None, str, float, int]:
        """The lowest network-layer RTT of the connection and its source: kernel TCP or a
        probe from the login server (not for mobile access, where the carrier gateway
        answers pings); and (minimum, sample count) of the application round trips to the
        login server: the login's samples and the app probes the login server sent in
        the session. Each sample is one more phase of the same game loop, so together
        they bound the phase tighter than the login's alone."""
        net: float | None = sess.tcp
        label = "tcp_rtt"
        app_min, k = sess.app_min, sess.app_n
        probes = sess.probes
        if probes is not None:
            server_id = sess.server_id
            layer = sess.geo.kind != "mobile"
            for i in range(0, len(probes), 4):
                if probes[i] != server_id:
                    continue
                method = probes[i + 1]
                lo = probes[i + 2]
                if method == "app":
                    k += probes[i + 3]
                    if lo < app_min:
                        app_min = lo
                elif layer and method in _NET_LABELS and (net is None or lo < net):
                    net, label = lo, _NET_LABELS[method]
        return net, label, app_min, k

    def gap_verdict(self, sess: Session) -> GapVerdict | None:
        """The gap's verdict (``None`` without a network-layer RTT).

        Strength is ``ramp(excess, 0, width) * ramp(1 - ratio, 0.5, 0.75)``: ``excess`` is
        the gap beyond the honest bound ``cost + tick * q_k + gap_z * noise`` (+ the access
        kind's largest learned spike for one or two samples), with ``cost`` there the larger
        of the learned cost and the middle of the gaps (:meth:`~.baselines.Overhead.middle`):
        the cost is read at the gaps' lower quartile, where relays do not reach, and a
        quartile's phase share leaves more of a tick learned short (a few two-sample
        spreads) in one login's bound than the median's; the residual is the learned
        cost's. ``width`` ``max(gap_full_ms - gap_min_ms, 2 * noise)``, and ``ratio`` the network RTT over the
        app minimum less the expected overhead (TCP covering at most half of the path the
        game's packets travel); the gap must also exceed ``gap_min_ms`` (500 km). On a cold
        server (gaps from fewer than ``overhead_warmup`` exit prefixes) cost and tick are
        the largest the prior and the server's logins so far allow (:mod:`.prior`), and
        the residual is not standardised (``u`` 0: no prefix evidence, nothing learned).
        A login on a radio link whose medium's noise rests on fewer than
        ``MIN_NOISE_VOTES`` residuals has no verdict of its own either (its residual
        still counts toward its exit's): a radio link's kernel TCP RTT can sit tens of
        ms below the path its app samples took, and the floor is no radio link's noise.
        """
        net, source, app_min, k = self.probe_figures(sess)
        if net is None:
            return None
        v = GapVerdict(net, source, app_min - net)
        v.k = k
        book = self.overhead
        o = book.overheads.get(sess.oh_key)
        v.n = 0 if o is None else len(o._cost.votes)  # :meth:`~.baselines.Overhead.sources`
        if o is None:
            v.cold = (f"cold server: no gaps learned, below the prior's bound (cost at most "
                      f"{self.prior_cost:.0f} ms, tick at most {self.prior_tick:.0f} ms)")
            return v
        kind = sess.geo.kind
        noise, v.noise_n = book.noise_scale(kind or "?", self.noise_floor(kind or ""))
        if v.n < self.overhead_warmup:
            cost, tick = o.prior_bounds(self.prior_cost, self.prior_tick, self.gap_alpha,
                                        self.gap_z * noise)
            top = cost
            centre, scale = 0.0, 1.0
            v.prior = True
            v.cold = (f"cold server: gaps from {v.n} < {self.overhead_warmup} exit prefixes "
                      f"learned; judged against the largest overhead the prior and its logins "
                      f"allow (cost at most {cost:.1f} ms, tick at most {tick:.0f} ms)")
        else:
            cost, tick, centre, scale = o.figures()
            top = o.middle()
            top = cost if cost > top else top
        span = tick if v.prior else self.loop_span(o, tick, noise)
        if k <= 2:
            v.spike = spike = book.spike(kind or "?", 1.0)
            v.spike_n = spike_n = book.spike_votes(kind or "?")
        else:
            spike = 0.0
            spike_n = -1
        gap = v.gap
        share = tick / (k + 1)
        v.cost, v.tick, v.noise, v.span = cost, tick, noise, span
        v.expected = expected = cost + share
        v.bound = bound = top + span * phase_quantile(k, self.gap_alpha) + self.gap_z * noise + spike
        v.excess = excess = gap - bound
        # :meth:`residual`, inlined
        v.residual = residual = gap - cost - share
        v.variance = variance = tick * tick * k / ((k + 1) * (k + 1) * (k + 2)) + noise * noise
        if variance > 0.0 and not v.prior:
            u = residual / math.sqrt(variance)
            v.u_raw = u = -3.0 if u < -3.0 else 3.0 if u > 3.0 else u  # clip3
        else:
            u = 0.0
        v.u = (u - centre) / scale
        path = app_min - expected
        v.ratio = ratio = net / path if path > 0 else 1.0
        # one or two samples: a radio spike the kind's few learned spreads have not shown
        # yet can look like a leg, so the login has no verdict of its own until
        # ``spike_warmup`` logins of its access kind taught the allowance (its residual
        # still counts toward its exit prefix's)
        # nor, on a radio link, while its medium's noise rests on fewer than
        # ``MIN_NOISE_VOTES`` residuals: the floor it takes then is no radio link's
        v.noise_unlearned = quiet = v.noise_n < book.MIN_NOISE_VOTES and kind in RADIO_KINDS
        if excess > 0.0 and gap > self.gap_min_ms and (spike_n < 0 or spike_n >= self.spike_warmup) \
                and not quiet:
            width = self.gap_full_ms - self.gap_min_ms
            width = width if width > 2.0 * noise else 2.0 * noise
            x = 1.0 - ratio
            v.strength = ((1.0 if excess >= width else excess / width)
                          * (0.0 if x <= 0.5 else 1.0 if x >= 0.75 else (x - 0.5) / 0.25))
        return v

    def physics_net(self, sess: Session) -> tuple[float, str] | None:
        """The network RTT (ms) physics may judge, and its source: the larger of the
        kernel TCP RTT and the app minimum less the learned cost and the ``1 -
        phase_alpha`` quantile of the phase (an honest client's app figure rarely lands
        above its network RTT after that, and less the access kind's spike allowance
        when it rests on one or two samples), the TCP RTT never counted above the app
        minimum less the cost (the phase is never negative). On a cold server the app
        figures are corrected with the largest cost and tick the prior and the server's
        logins so far allow (:meth:`app_overhead`), and the TCP RTT is counted at most
        the app minimum itself (that cost is a bound, not an estimate to clamp the TCP
        RTT with; a radio link's one TCP RTT spiking past every app sample is no path);
        ``None`` without either (a raw app figure carries the game loop and is not
        comparable)."""
        tcp = sess.tcp
        figures = self.app_overhead(sess)
        if figures is None:
            return None if tcp is None else (tcp, "tcp_rtt")
        cost, tick, prior = figures
        app_lo = (sess.app_min - cost - tick * phase_quantile(sess.app_n, self.phase_alpha)
                  - self.spike_allowance(sess))
        label = PRIOR_APP if prior else "app_rtt less learned overhead"
        # one sample of k may spike: on a cold server only once the kind's spikes are learned
        learned = self.overhead.spike_votes(sess.geo.kind or "?") >= self.spike_warmup
        slowest = None if prior and not learned else self.slowest_bound(
            sess, cost, tick if prior else self.slowest_span(sess.oh_key, tick), learned)
        if slowest is not None and slowest[0] > app_lo:
            app_lo, label = slowest
        if tcp is not None:
            # the phase is never negative: the network RTT is at most the app minimum less
            # the cost (and the noise); a TCP RTT above that is a spike of that one figure.
            # A cold server's cost is a bound, not an estimate: the app minimum itself
            # (a cost of none) bounds its TCP RTT
            least = self.noise_floor(sess.geo.kind or "")
            app_hi = sess.app_min - (0.0 if prior else cost) + self.gap_z * self.overhead.noise_of(
                sess.geo.kind or "?", least)
            if tcp > app_hi:
                tcp = app_hi
            if tcp >= app_lo:
                return tcp, "tcp_rtt" if tcp < app_hi else (
                    "app_rtt" if prior else "app_rtt less learned cost")
        return app_lo, label

    def loop_span(self, o: Overhead, tick: float, noise: float) -> float:
        """The span (ms) of the phase the honest bounds take on a warm server: its learned
        tick, or the loop's reach (:meth:`~.baselines.Overhead.reach`, the wired logins'
        spreads' high quantile) where the reach stands past the tick by more than
        ``gap_z`` noise scales of each of a spread's two samples -- a loop that answers
        some pings a tick late (overrunning under load) or queues them. The expected
        gap and the residuals keep the tick: only how far an honest phase may reach
        changes. Else, on a server just warm whose median tick is a loop's (past
        ``gap_z`` noise scales of a spread's two samples, as the reach is judged), the
        span is at least its tick ceiling (:meth:`~.baselines.Overhead.ceiling`: the
        widest of its few wired spreads, or the largest tick those narrower do not rule
        out at ``tick_alpha``), where the median of a few spreads may stand short; a
        server answering off its loop has spreads of line jitter, no tick to widen."""
        r = o.reach()
        least = 2.0 * self.gap_z * noise
        if r > tick + least:
            return r
        if tick <= least:
            return tick
        hi = o.ceiling(self.tick_alpha, self.prior_tick)
        return hi if hi > tick else tick

    def app_overhead(self, sess: Session, key: str | None = None,
                     k: int = 0) -> tuple[float, float, bool] | None:
        """(cost, tick, whether from the cold prior) the app figures of ``k`` samples
        (default: the login's) to server key ``key`` (default: the login's) are corrected
        with: the server's learned overhead once warm (the tick as the bounds take it,
        :meth:`loop_span`); before, the largest cost and tick
        the prior and the server's logins so far allow (:mod:`.prior`), for one or two
        samples only once ``spike_warmup`` logins of the access kind taught its spikes;
        ``None`` otherwise (and before the server's first login or app probe)."""
        key = sess.oh_key if key is None else key
        figures = self.overhead.warm_figures(key, self.overhead_warmup)
        kind = sess.geo.kind or "?"
        if figures is not None:
            noise = self.overhead.noise_of(kind, self.noise_floor(sess.geo.kind or ""))
            return figures[0], self.loop_span(self.overhead.overheads[key], figures[1], noise), False
        o = self.overhead.overheads.get(key)
        if o is None or ((k or sess.app_n) <= 2 and self.overhead.spike_votes(kind) < self.spike_warmup):
            return None
        noise = self.overhead.noise_of(kind, self.noise_floor(sess.geo.kind or ""))
        cost, tick = o.prior_bounds(self.prior_cost, self.prior_tick, self.gap_alpha,
                                    self.gap_z * noise)
        return cost, tick, True

    def probe_net(self, sess: Session, vantage: str, app_min: float, k: int) -> float | None:
        """The network RTT (ms) from the client to ``vantage`` an app probe of the session
        shows: its minimum over ``k`` samples less the vantage's learned cost and the ``1 -
        phase_alpha`` quantile of its phase (and the access kind's spike allowance for one
        or two samples), the login's own figure arithmetic (:meth:`physics_net`). The
        vantage answers on its own game loop, learned from its own logins (with the
        login's platform where it names one), or while it is cold the largest overhead
        its prior and its logins so far allow (:meth:`app_overhead`; before its first
        login, the spreads of the app probes it answered bound its tick); ``None`` before
        the vantage's first login or app probe of two samples or more, and for one or two
        samples before ``spike_warmup`` logins of the access kind taught its spike
        allowance. An application round trip goes all
        the way to the client whatever the relay, so on a vantage with a short tick (or
        none) a client-relay leg the login server's long tick hides shows here."""
        figures = self.app_overhead(sess, self.vantage_key(sess, vantage), k)
        if figures is None or (k <= 2 and self.overhead.spike_votes(sess.geo.kind or "?")
                               < self.spike_warmup):
            return None
        return (app_min - figures[0] - figures[1] * phase_quantile(k, self.phase_alpha)
                - self.spike_allowance_of(sess.geo.kind, k))

    @staticmethod
    def vantage_key(sess: Session, vantage: str) -> str:
        """The overhead key of ``vantage`` for the session's platform (as its login's)."""
        oh_key, server_id = sess.oh_key, sess.server_id
        return vantage if oh_key == server_id else vantage + oh_key[len(server_id):]

    def slowest_span(self, key: str, span: float) -> float:
        """How far past the network round trip (less the cost) the slowest answer of
        warm server ``key`` may come, given the phase span its bounds take: the span
        itself on a loop that keeps its tick; on one whose spreads reach past it (the
        span is its reach: :meth:`loop_span`), the learned tick more, for a spread
        runs from the fastest answer, whose own phase may take up to a tick (a loop
        answering some pings a loop late puts its slowest up to two ticks out)."""
        o = self.overhead.overheads.get(key)
        if o is None or span != o.reach():
            return span
        figures = o.figures()
        return span + figures[1] if span > figures[1] else span

    def slowest_bound(self, sess: Session, cost: float, tick: float,
                      learned: bool = True) -> tuple[float, str] | None:
        """The network RTT (ms) the login's slowest app sample proves at least, and its
        source (:data:`SLOWEST` or :data:`SECOND_SLOWEST`): a game
        loop answers within ``cost + tick`` of the network round trip, so the slowest
        of ``k >= 2`` samples less the cost, one whole tick, ``gap_z`` noise scales and the
        access kind's spike allowance (one sample may spike however many there are) is
        a lower bound of the network RTT an honest client cannot exceed. On a long tick
        this bound is far tighter than the minimum's: a relay leg hidden in the phase
        of the fastest sample still shows in the slowest (``None`` with one sample).
        Until ``spike_warmup`` logins of the access kind taught its spikes (``learned``
        false), its allowance is not known and a radio link's one spike of 100 ms and
        more would pass for a detour: a slowest sample standing apart from the
        second-slowest by more than the loop's phases and the noise explain is taken for
        a spike, and the second-slowest sample, which one spike cannot lift, is judged
        instead. The gap between the two largest of ``k`` uniform phases is distributed
        as their minimum, so "more" is the tick times the ``1 - phase_alpha`` quantile
        of that minimum (:func:`.baselines.phase_quantile`) plus ``gap_z`` noise scales."""
        if sess.app_n < 2:
            return None
        kind = sess.geo.kind or "?"
        noise = self.overhead.noise_of(kind, self.noise_floor(sess.geo.kind or ""))
        top, label = sess.app_min + sess.app_spread, SLOWEST
        if not learned and top - sess.app_second > (
                tick * phase_quantile(sess.app_n, self.phase_alpha) + self.gap_z * noise):
            top, label = sess.app_second, SECOND_SLOWEST
        return top - cost - tick - self.gap_z * noise - self.overhead.spike(kind), label

    @staticmethod
    def residual(o: Overhead, gap: float, k: int, noise: float) -> tuple[float, float]:
        """(``gap - expected``, its variance for an honest login) against overhead ``o``."""
        cost, tick = o.figures()[:2]
        return (gap - cost - tick / (k + 1),
                tick * tick * k / ((k + 1) * (k + 1) * (k + 2)) + noise * noise)

    def best_baseline(self, sess: Session) -> tuple[str, Baseline | None]:
        """The most specific baseline out of warm-up, and its level (``""`` if none)."""
        known = self.baselines._d
        warmup = self.warmup
        b = known.get(sess.k_prefix)
        if b is not None and b.n >= warmup:
            return "prefix", b
        k = sess.k_asn
        b = None if k is None else known.get(k)
        if b is not None and b.n >= warmup:
            return "asn", b
        k = sess.k_country
        b = None if k is None else known.get(k)
        if b is not None and b.n >= warmup:
            return "country", b
        return "", None

    def spike_allowance(self, sess: Session) -> float:
        """What one or two app samples of the login's access kind may carry in spikes
        (:meth:`~.baselines.OverheadBook.spike`; 0 for three samples or more)."""
        return self.spike_allowance_of(sess.geo.kind, sess.app_n)

    def spike_allowance_of(self, kind: str | None, k: int) -> float:
        """What ``k`` app samples of access ``kind`` may carry in spikes (0 for ``k >= 3``)."""
        return self.overhead.spike(kind or "?") if k <= 2 else 0.0

    def tick_allowance(self, sess: Session) -> float:
        """How far (ms) an honest login's app minimum may sit above a baseline's p90 for
        the game loop alone: the server's learned tick times the distance between the
        ``1 - gap_alpha`` and the 0.9 quantiles of the phase of the login's ``k``
        samples (the baseline's p90 holds a p90 phase; a login with few samples on a long
        tick can draw a late phase in every sample). 0 on a server whose overhead is
        cold or which answers without a loop."""
        figures = self.overhead.warm_figures(sess.oh_key, self.overhead_warmup)
        if figures is None or not figures[1] > 0.0:
            return 0.0
        k = sess.app_n if sess.app_n > 1 else 1
        return figures[1] * (phase_quantile(k, self.gap_alpha) - phase_quantile(k, 0.1))

    def baseline_terms(self, sess: Session, b: Baseline) -> tuple[float, float, float, float]:
        """(excess ms of the app minimum over the baseline's p90, less the spike allowance
        of a login with one or two samples and the :meth:`tick_allowance`; the spread it
        is measured against: p10-p90, at least the access kind's ``MIN_SPREAD_MS``; the
        spike allowance; the tick allowance)."""
        lo, hi = b.bounds()
        spike = self.spike_allowance(sess)
        tick = self.tick_allowance(sess)
        least = MIN_SPREAD_MS.get(sess.geo.kind or "", DEFAULT_MIN_SPREAD_MS)
        return (sess.app_min - hi - spike - tick, least if least > hi - lo else hi - lo,
                spike, tick)

    def baseline_z(self, sess: Session, b: Baseline) -> tuple[float, float]:
        """(excess ms over the baseline's p90 (:meth:`baseline_terms`); z: that excess
        over the spread)."""
        excess, spread = self.baseline_terms(sess, b)[:2]
        return excess, excess / spread

    def at_claim(self, sess: Session) -> bool:
        """Whether the login's own fastest answer less the learned cost (:meth:`_claim`)
        is no slower than an honest client at the claimed place typically shows (the
        access kind's typical latency over the path's fibre): no room is left for a leg from
        a client behind the exit, so what the exit's other logins show -- a relay
        exit's gaps, the accounts proven relayed through it -- is not this login's (the
        household whose home line also carries a proxy, its own logins direct)."""
        claim = self._claim(sess)
        return claim is not None and sess.app_min - claim[0] <= claim[1]

    def _claim(self, sess: Session) -> tuple[float, float] | None:
        """(the learned cost -- none on a cold server, whose cost is only a bound; never
        below zero --, the RTT an honest client at the claimed place typically shows), or
        ``None`` without a located claim or a known server. The login's fastest answer
        less that cost bounds its network RTT from above: the loop's phase is never
        negative."""
        server, geo = sess.server, sess.geo
        if server is None or geo.lat is None or geo.lon is None:
            return None
        figures = self.app_overhead(sess)
        cost = 0.0 if figures is None or figures[2] else max(0.0, figures[0])
        return cost, self.geometry.expectation(server, geo, geo.lat, geo.lon)[0]

    def claim_figures(self, sess: Session) -> dict[str, float] | None:
        """What :meth:`at_claim` compares, for the evidence."""
        claim = self._claim(sess)
        if claim is None:
            return None
        cost, expected = claim
        return {"app_rtt_min_ms": round(sess.app_min, 2), "learned_cost_ms": round(cost, 2),
                "network_rtt_at_most_ms": round(sess.app_min - cost, 2),
                "expected_at_claim_ms": round(expected, 2)}

    def _score(self, sess: Session, ask_model: bool = True, verdict: GapVerdict | None = None) -> tuple[
        dict[str, float] | None, float | str | None, GapVerdict | None, float | None, str,
        tuple[float | None, float | None, float | None, float | None], tuple[float, ...] | None,
    ]:
        """The numbers of one assessment of a session's login, nothing put into words.

        Returns (components, ``None`` if there is no evidence at all; the model's
        verdict, ``None`` if it would be asked but ``ask_model`` is false; the gap
        verdict; the baseline excess ms; the level of the baseline used; what
        :func:`~.model.features` makes the model features of; the features if the model
        was asked). ``verdict``: the session's gap verdict, if the caller just took it.
        Ramps: ``ramp(x, lo, hi)`` is ``0 if x <= lo, 1 if x >= hi,
        (x - lo) / (hi - lo)``.
        """
        probes = sess.probes
        comps: dict[str, float] | None = None
        gv = self.gap_verdict(sess) if verdict is None else verdict
        gap_excess = x_gap = None
        if gv is not None and gv.excess is not None:
            gap_excess, x_gap = gv.excess, 1.0 - gv.ratio
            if gv.strength > 0:
                comps = {"gap": _W_GAP * gv.strength}
        s = self.prefix_evidence(sess, gv)[0]
        s_relays = self.prefix_relays(sess)[0]
        # (the exit's evidence is not lent to a login at its claimed place)
        at_claim = (s > 0 or s_relays > 0) and self.at_claim(sess)
        if s > 0 and not at_claim:
            if comps is None:
                comps = {"prefix_gap": _W_PREFIX * s}
            else:
                comps["prefix_gap"] = _W_PREFIX * s
        s = 0.0 if at_claim else s_relays
        if s > 0:
            if comps is None:
                comps = {"prefix_relays": _W_RELAYS * s}
            else:
                comps["prefix_relays"] = _W_RELAYS * s
        # physics (fixed at the login)
        s = sess.phys_s
        if s > 0:
            if comps is None:
                comps = {"physics": _W_PHYSICS * s}
            else:
                comps["physics"] = _W_PHYSICS * s
        level, b = self.best_baseline(sess)
        z: float | None = None
        excess: float | None = None
        if b is not None:
            excess, z = self.baseline_z(sess, b)
            s = ((0.0 if z <= 2.0 else 1.0 if z >= 5.0 else (z - 2.0) / (5.0 - 2.0))
                 * (0.0 if excess <= 5.0 else 1.0 if excess >= 15.0 else (excess - 5.0) / (15.0 - 5.0))
                 * LEVEL_WEIGHT[level])
            if s > 0:
                if comps is None:
                    comps = {"baseline": _W_BASELINE * s}
                else:
                    comps["baseline"] = _W_BASELINE * s
        # vantage disks
        worst = sess.worst_km if probes else None
        if worst is not None and worst > 100.0:
            s = 1.0 if worst >= 600.0 else (worst - 100.0) / (600.0 - 100.0)
            if comps is None:
                comps = {"vantage": _W_VANTAGE * s}
            else:
                comps["vantage"] = _W_VANTAGE * s
        if sess.route is not None:
            if comps is None:
                comps = {"route": _W_ROUTE}
            else:
                comps["route"] = _W_ROUTE
        # the anomaly model sharpens physical evidence; it never flags on its own, so
        # without other evidence it is not asked
        raw = (gap_excess, x_gap, z, worst)
        m = self.hst.model
        if not m.trees or m._first_window:
            return comps, "warm-up", gv, excess, level, raw, None
        if comps is None:
            return comps, "not scored: no other evidence", gv, excess, level, raw, None
        if level != "prefix" and len(comps) == 1 and "baseline" in comps:
            # a fallback (ASN, country) baseline alone stays below the flag threshold (a
            # rural line is slower than its ISP's city lines without any relay): the
            # model sharpens physical evidence, it must not tip this over
            return comps, "not scored: a fallback baseline alone", gv, excess, level, raw, None
        if not ask_model:
            return comps, None, gv, excess, level, raw, None
        feats = features(*raw, sess.phys_feat)
        return comps, self._model_score(comps, feats), gv, excess, level, raw, feats

    def _model_score(self, components: dict[str, float], feats: tuple[float, ...]) -> float:
        """Ask the anomaly model; adds its component."""
        model = self.hst.score_row(FEATURES, feats)
        s = 0.0 if model <= 0.7 else 1.0 if model >= 0.95 else (model - 0.7) / (0.95 - 0.7)
        if s > 0:
            components["model"] = _W_MODEL * s
        return model

    @staticmethod
    def _teaches(components: dict[str, float], level: str, skip: frozenset[str] = frozenset()) -> bool:
        """Whether a session may update the baselines and the model.

        Sessions with intrinsic relay evidence (gap, physics, vantages, route) or
        out of their own prefix's range must not teach the baseline that relays are
        normal; a verdict from a fallback (ASN, country) baseline does not block
        learning, or a new prefix that is slower than its ISP would never warm up.
        Components in ``skip`` are not counted (the overhead learns despite its own gap
        verdict: a patch day moves every login's gap).
        """
        keep = 1.0
        for k, v in components.items():
            if k == "model" or (k == "baseline" and level != "prefix") or k in skip:
                continue
            v = v if v < 1.0 else 1.0
            keep *= 1.0 - (v if v > 0.0 else 0.0)
        return 1.0 - keep < 0.5
