"""Evidence an exit prefix gathers over its recent logins.

A relay's exit carries many clients, and every login through it shows the same
client-relay leg. One login's gap rarely convicts anyone on a server with a long
tick; the prefix's recent logins together do (:meth:`ExitPrefixes.prefix_evidence`),
and so do the logins its other clients' own physics proved relayed
(:meth:`ExitPrefixes.prefix_relays`). The history per prefix holds, per login, what
is needed to judge it again against the servers' overheads as they are now.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from mypy_extensions import trait

from pathsentry.detectors.latency.baselines import OverheadBook
from pathsentry.detectors.latency.state import BoundedLRU, Session

if TYPE_CHECKING:
    from pathsentry.detectors.latency.scoring import GapVerdict

__all__ = ["PREFIX_ROW", "ExitPrefixes", "clip3"]

#: fields per login in an exit prefix's history (see :meth:`ExitPrefixes.learn_prefix`)
PREFIX_ROW = _ROW = 7
def clip3(u: float) -> float:
    """A standardised residual limited to [-3, 3]."""
    return -3.0 if u < -3.0 else 3.0 if u > 3.0 else u


#: components that prove a relay from the login's own physics
_INTRINSIC = ("gap", "physics", "vantage")


@trait  # a mixin: the compiled build takes it beside its one non-trait base
class ExitPrefixes:
    """Exit-prefix histories and the two components they give (mixed into scoring)."""

    overhead: OverheadBook
    overhead_warmup: int
    #: exit prefix -> (session id, overhead key, gap ms, app samples, access kind, account,
    #: proven, ...) of its last ``prefix_history`` logins
    prefix_gaps: BoundedLRU[str, tuple[Any, ...]]
    prefix_min_logins: int
    prefix_z: tuple[float, float]
    prefix_share: tuple[float, float]
    prefix_proven_accounts: int
    proven_min: float

    def noise_floor(self, kind: str) -> float:
        """The smallest noise scale (ms) of an access kind (:mod:`.scoring`)."""
        raise NotImplementedError

    def prefix_evidence(self, sess: Session, gv: GapVerdict | None) -> tuple[float, int, float]:
        """(strength, logins, z) of the exit prefix's own gap evidence.

        On a server with a long tick one login's gap rarely convicts anyone: a
        30 ms client-relay leg hides in a 100 ms tick. But every login through a
        relay's exit shows the same leg, while an honest login's residual
        ``gap - cost - tick / (k + 1)`` has mean 0 and variance ``tick^2 k / ((k + 1)^2
        (k + 2)) + noise^2`` (the minimum of ``k`` uniform phases, and the noise). The
        prefix's recent logins (``prefix_history``, this one included, each session
        once) are standardised, clipped to +-3 (one spiking radio sample must not
        count as ten logins' worth), set against the server's population of prefixes
        (:meth:`~.baselines.Overhead.figures`: where the model leans towards calling
        every prefix slow, no prefix stands out for it), and summed into one z-score
        ``sum(u) / sqrt(n)``. The prefix keeps each login's gap, sample count, server and access kind, not its
        residual: the residuals are taken against the overheads as they are now, so a
        patch day does not leave old residuals behind.
        Strength ramps between ``prefix_z`` (default 4.5 and 6.5) from
        ``prefix_min_logins`` (4) logins on. The start sits well above a normal's
        tail because honest prefixes are not all alike: the lines behind one /24 can
        share an app-vs-TCP offset of a few ms (a home router, a line type), which a
        sum over many logins turns into a z-score of 5 or so.
        """
        hist = self.prefix_gaps.peek(sess.prefix)
        sid = sess.session_id or sess.event_id
        total = 0.0
        n = 0
        if hist is not None:
            book = self.overhead
            warm = self.overhead_warmup
            #: (overhead key, access kind) -> (cost, tick, noise^2), read once per call
            seen: dict[tuple[str, str], tuple[float, float, float, float, float] | None] = {}
            for i in range(0, len(hist), _ROW):
                gap = hist[i + 2]
                if gap is None or hist[i] == sid:
                    continue
                key = (hist[i + 1], hist[i + 4])
                if key in seen:
                    fig = seen[key]
                else:
                    o = book.get(key[0])
                    if o is None or o.sources() < warm:
                        fig = None
                    else:
                        least = self.noise_floor(key[1])
                        noise = book.noise_scale(key[1], least)[0]
                        fig = (*o.figures(), noise * noise)
                    seen[key] = fig
                if fig is None:
                    continue
                cost, tick, centre, scale, noise2 = fig  # :meth:`residual`, inlined
                k = hist[i + 3]
                v = tick * tick * k / ((k + 1) * (k + 1) * (k + 2)) + noise2
                u = clip3((gap - cost - tick / (k + 1)) / math.sqrt(v)) if v > 0.0 else 0.0
                total += (u - centre) / scale
                n += 1
        if gv is not None and gv.bound is not None:
            total += gv.u
            n += 1
        if n < self.prefix_min_logins:
            return 0.0, n, 0.0
        z = total / math.sqrt(n)
        lo, hi = self.prefix_z
        return (0.0 if z <= lo else 1.0 if z >= hi else (z - lo) / (hi - lo)), n, z

    def prefix_relays(self, sess: Session) -> tuple[float, int, int]:
        """(strength, accounts proven relayed, logins) of the exit prefix's recent logins.

        A login whose own physics proves a relay (gap, physics or vantage evidence
        at least ``proven_min``, default 0.5) marks its exit prefix: VPN and proxy
        exits carry many clients, and the ones on long-tick servers or without a TCP
        RTT show little on their own. Strength ramps over the share of the prefix's
        recent logins (other sessions) that were proven, between ``prefix_share``
        (default 0.2 and 0.5), once ``prefix_proven_accounts`` (2) distinct accounts
        were proven: a CGNAT or campus prefix with one odd session is not an exit (an
        honest login is proven relayed about once in 5,000, so two accounts of one /24's
        last 16 logins are next to never both honest).
        """
        hist = self.prefix_gaps.peek(sess.prefix)
        if hist is None:
            return 0.0, 0, 0
        sid = sess.session_id or sess.event_id
        proven: set[str] = set()
        n = hits = 0
        for i in range(0, len(hist), _ROW):
            if hist[i] == sid:
                continue
            n += 1
            if hist[i + 6]:
                hits += 1
                proven.add(hist[i + 5])
        if len(proven) < self.prefix_proven_accounts:
            return 0.0, len(proven), n
        x = hits / n
        lo, hi = self.prefix_share
        return (0.0 if x <= lo else 1.0 if x >= hi else (x - lo) / (hi - lo)), len(proven), n

    def learn_prefix(self, sess: Session, gv: GapVerdict | None, comps: dict[str, float] | None,
                     keep: int) -> bool:
        """Put this login into its exit prefix's history: its gap (with its server,
        sample count and access kind; ``None`` without a gap verdict), its account and
        whether its own physics proved a relay; returns the latter (a proven login may
        be what turns its prefix into a known exit, so the prefix's earlier sessions
        are worth re-assessing)."""
        if keep <= 0:
            return False
        sid = sess.session_id or sess.event_id
        hist = self.prefix_gaps.peek(sess.prefix) or ()
        rows: list[Any] = []
        for i in range(0, len(hist), _ROW):
            if hist[i] != sid:
                rows += hist[i:i + _ROW]
        gap = None if gv is None or gv.bound is None else round(gv.gap, 3)
        keep_p = 1.0
        for name in _INTRINSIC:
            v = 0.0 if comps is None else comps.get(name, 0.0)
            keep_p *= 1.0 - (v if v < 1.0 else 1.0)
        proven = 1 if 1.0 - keep_p >= self.proven_min else 0
        rows += (sid, sess.oh_key, gap, 0 if gv is None else gv.k, sess.geo.kind or "?",
                 sess.account, proven)
        self.prefix_gaps.put(sess.prefix, tuple(rows[-_ROW * keep:]))
        return bool(proven)

