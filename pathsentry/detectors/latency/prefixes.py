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

from pathsentry.detectors.addresses import ip_text
from pathsentry.detectors.latency.baselines import OverheadBook
from pathsentry.detectors.latency.state import BoundedLRU, Session

if TYPE_CHECKING:
    from pathsentry.detectors.latency.scoring import GapVerdict

__all__ = ["ADDRESS_EXITS", "PREFIX_ROW", "PREFIX_VIEWS_MAX", "ExitPrefixes", "PrefixView", "clip3"]

#: fields per login in an exit prefix's history (see :meth:`ExitPrefixes.learn_prefix`)
PREFIX_ROW = _ROW = 7
#: access kinds whose /24 holds unrelated subscribers: a relay's exit there is its address
ADDRESS_EXITS = frozenset({"residential"})
#: exit prefixes whose worked-out history (:class:`PrefixView`) is kept: the ones whose
#: sessions are live (a probe follows its login within the session)
PREFIX_VIEWS_MAX = 4096


def clip3(u: float) -> float:
    """A standardised residual limited to [-3, 3]."""
    return -3.0 if u < -3.0 else 3.0 if u > 3.0 else u


class PrefixView:
    """One exit prefix's history worked out: per login (session id) how many logins it
    has and the accounts of its proven ones, the proven accounts' login counts, and
    (once asked, against the overheads in ``figs``) each login's standardised gap
    residual. Built once per history tuple (a login replaces the tuple), so a probe of
    an unchanged prefix costs a look at the overheads, not a pass over its logins; the
    last session asked keeps its sum over the other sessions' residuals while the
    residuals stay, and its relay figures."""

    __slots__ = ("figs", "gapped", "hist", "hits", "keys", "logins", "own", "proven", "relays",
                 "relays_sid", "rows", "sum_n", "sum_sid", "sum_total", "terms")

    def __init__(self, hist: tuple[Any, ...]) -> None:
        if len(hist) % _ROW:
            raise ValueError(f"an exit prefix's history holds rows of {_ROW} fields")
        self.hist = hist
        #: session id -> its logins (one login per session, but a loaded history is
        #: taken as it comes)
        self.rows: dict[Any, int]
        #: session id -> the accounts of its proven logins (sessions with one only)
        self.own: dict[Any, list[str]] = {}
        #: proven account -> its proven logins
        self.proven: dict[str, int] = {}
        #: the (overhead key, access kind) groups of the logins with a gap, and those
        #: logins: (session id, group, gap ms, app samples,
        #: ``(k + 1) ** 2 * (k + 2)``: the denominator of their phase's variance)
        self.keys: list[tuple[str, str]] = []
        self.gapped: list[tuple[Any, int, float, int, int]] = []
        sids = hist[0::_ROW]
        rows = self.rows = dict.fromkeys(sids, 1)
        if len(rows) != len(sids):  # a session with more than one login
            for sid in rows:
                rows[sid] = 0
            for sid in sids:
                rows[sid] += 1
        self.hits = 0
        if any(hist[6::_ROW]):
            for sid, account, flag in zip(sids, hist[5::_ROW], hist[6::_ROW], strict=True):
                if flag:
                    self._proven_login(sid, account)
        keys = self.keys
        gapped = self.gapped
        groups: dict[tuple[str, str], int] = {}
        last_key: Any = None
        last_kind: Any = None
        g = 0
        for sid, oh_key, gap, k, kind in zip(sids, hist[1::_ROW], hist[2::_ROW], hist[3::_ROW],
                                             hist[4::_ROW], strict=True):
            if gap is None:
                continue
            if oh_key is not last_key or kind is not last_kind:  # mostly one group
                key = (oh_key, kind)
                got = groups.get(key)
                if got is None:
                    got = groups[key] = len(keys)
                    keys.append(key)
                last_key, last_kind, g = oh_key, kind, got
            gapped.append((sid, g, gap, k, (k + 1) * (k + 1) * (k + 2)))
        self.logins = len(hist) // _ROW
        #: the figures the terms were taken against, two per group (the overhead's
        #: figures and the noise scale, ``None`` for a cold server); the terms: each
        #: gapped login's standardised residual (``None`` on a cold server)
        self.figs: list[Any] | None = None
        self.terms: list[float | None] | None = None
        #: the session last asked and its (sum, count) over the other sessions' terms
        self.sum_sid: Any = None
        self.sum_total = 0.0
        self.sum_n = 0
        #: the session last asked and its :meth:`ExitPrefixes.prefix_relays`
        self.relays_sid: Any = None
        self.relays: tuple[float, int, int] = (0.0, 0, 0)

    def _proven_login(self, sid: Any, account: str) -> None:
        """Count a proven login of session ``sid`` by ``account``."""
        accounts = self.own.get(sid)
        if accounts is None:
            self.own[sid] = [account]
        else:
            accounts.append(account)
        self.hits += 1
        self.proven[account] = self.proven.get(account, 0) + 1

    def advance(self, hist: tuple[Any, ...]) -> bool:
        """Become the view of ``hist`` when it is this view's history less some first rows
        and plus one row (a login through the prefix, the oldest dropped), with every
        gap in one (overhead key, access kind) group: the rows dropped and added are
        counted in and out, not the whole history worked out again. Returns whether it
        did (else nothing changed: build a view of ``hist``)."""
        old = self.hist
        keep = len(hist) - _ROW  # the new history's rows before its last
        if keep < 0 or keep > len(old) or len(self.keys) > 1 or (
                keep and hist[:keep] != old[len(old) - keep:]):
            return False
        sid, oh_key, gap, k, kind, account, flag = hist[keep:]
        keys = self.keys
        if gap is not None and keys and keys[0] != (oh_key, kind):
            return False
        rows, own, proven, gapped = self.rows, self.own, self.proven, self.gapped
        for i in range(0, len(old) - keep, _ROW):  # the oldest rows, dropped
            gone, gone_gap, gone_account, gone_flag = old[i], old[i + 2], old[i + 5], old[i + 6]
            n = rows[gone] - 1
            if n:
                rows[gone] = n
            else:
                del rows[gone]
            if gone_flag:
                first = own[gone]
                del first[0]  # its first proven login is the history's first row
                if not first:
                    del own[gone]
                self.hits -= 1
                n = proven[gone_account] - 1
                if n:
                    proven[gone_account] = n
                else:
                    del proven[gone_account]
            if gone_gap is not None:
                del gapped[0]
        if not gapped:
            keys.clear()
        rows[sid] = rows.get(sid, 0) + 1
        if flag:
            self._proven_login(sid, account)
        if gap is not None:
            if not keys:
                keys.append((oh_key, kind))
            gapped.append((sid, 0, gap, k, (k + 1) * (k + 1) * (k + 2)))
        self.hist = hist
        self.logins = len(hist) // _ROW
        self.figs = self.terms = None
        self.sum_sid, self.sum_total, self.sum_n = None, 0.0, 0
        self.relays_sid, self.relays = None, (0.0, 0, 0)
        return True


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
    #: exit prefix -> its history worked out (:class:`PrefixView`), for the recent ones
    prefix_views: BoundedLRU[str, PrefixView]
    prefix_min_logins: int
    prefix_z: tuple[float, float]
    prefix_share: tuple[float, float]
    prefix_proven_accounts: int
    proven_min: float

    def noise_floor(self, kind: str) -> float:
        """The smallest noise scale (ms) of an access kind (:mod:`.scoring`)."""
        raise NotImplementedError

    @staticmethod
    def exit_of(sess: Session) -> str:
        """The exit a login's relay evidence is gathered under: its /24 (a VPN's or a
        hosting range, a CGNAT pool, a campus), or its address on residential access,
        where a /24 holds unrelated subscribers and a residential proxy is one of them
        (its neighbours' logins show nothing of its clients' leg). Worked out with the
        login (:attr:`Session.exit`)."""
        return ip_text(sess.src_ip) if sess.geo.kind in ADDRESS_EXITS else sess.prefix

    def prefix_view(self, prefix: str) -> PrefixView | None:
        """What the exit prefix's history gives, worked out once per history and
        overheads (``None`` without a history)."""
        hist = self.prefix_gaps._d.get(prefix)
        if hist is None:
            return None
        views = self.prefix_views
        view = views._d.get(prefix)
        if view is None or view.hist is not hist:
            if view is not None and view.advance(hist):  # a login more
                views._d.move_to_end(prefix)
            else:
                view = PrefixView(hist)
                views.put(prefix, view)
        return view

    def _group_figures(self, view: PrefixView) -> list[Any]:
        """Per (overhead key, access kind) of a prefix's history: the overhead figures
        and the noise scale, ``None`` and ``None`` while that server is cold."""
        book = self.overhead
        warm = self.overhead_warmup
        figs: list[Any] = []
        for oh_key, kind in view.keys:
            f = book.warm_figures(oh_key, warm)
            if f is None:
                figs += (None, None)
            else:
                figs += (f, book.noise_of(kind, self.noise_floor(kind)))
        return figs

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
        The standardised residuals are worked out once per history and overheads
        (:class:`PrefixView`): a probe re-asks this of an unchanged prefix.
        """
        view = self.prefix_view(sess.exit)
        total = 0.0
        n = 0
        if view is not None:
            sid = sess.session_id or sess.event_id
            figs = self._group_figures(view)
            if view.terms is None or figs != view.figs:
                self._terms(view, figs, sid)
            elif view.sum_sid != sid:
                for entry, u in zip(view.gapped, view.terms, strict=True):
                    if u is not None and entry[0] != sid:
                        total += u
                        n += 1
                view.sum_sid, view.sum_total, view.sum_n = sid, total, n
            total, n = view.sum_total, view.sum_n
        if gv is not None and gv.learned():
            total += gv.u
            n += 1
        if n < self.prefix_min_logins:
            return 0.0, n, 0.0
        z = total / math.sqrt(n)
        lo, hi = self.prefix_z
        return (0.0 if z <= lo else 1.0 if z >= hi else (z - lo) / (hi - lo)), n, z

    def _terms(self, view: PrefixView, figs: list[Any], sid: Any) -> None:
        """Standardise the history's gaps against the overheads as they are now (``figs``,
        kept in ``view`` with the terms), and sum those of the sessions other than
        ``sid``."""
        view.figs = figs
        terms: list[float | None] = []
        total = 0.0
        n = 0
        last = -1
        cold = True
        cost = tick = centre = scale = tick2 = noise2 = 0.0
        for other, g, gap, k, den in view.gapped:  # :meth:`residual`, inlined
            if g != last:
                last = g
                got = figs[2 * g]
                cold = got is None
                if got is not None:
                    cost, tick, centre, scale = got
                    noise = figs[2 * g + 1]
                    tick2, noise2 = tick * tick, noise * noise
            if cold:
                terms.append(None)
                continue
            v = tick2 * k / den + noise2
            sd = math.sqrt(v) if v > 0.0 else 0.0
            if sd > 0.0:
                u = (gap - cost - tick / (k + 1)) / sd
                u = -3.0 if u < -3.0 else 3.0 if u > 3.0 else u  # clip3
            else:
                u = 0.0
            u = (u - centre) / scale
            terms.append(u)
            if other != sid:
                total += u
                n += 1
        view.terms = terms
        view.sum_sid, view.sum_total, view.sum_n = sid, total, n

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
        view = self.prefix_view(sess.exit)
        if view is None:
            return 0.0, 0, 0
        sid = sess.session_id or sess.event_id
        if view.relays_sid == sid and view.relays_sid is not None:
            return view.relays
        view.relays_sid = sid
        view.relays = out = self._relays(view, sid)
        return out

    def _relays(self, view: PrefixView, sid: Any) -> tuple[float, int, int]:
        """:meth:`prefix_relays` worked out for session ``sid``."""
        n, hits = view.logins, view.hits
        proven = len(view.proven)
        own = view.rows.get(sid)
        if own is not None:  # the other sessions' logins only
            n -= own
            accounts = view.own.get(sid)
            if accounts is not None:
                hits -= len(accounts)
                for account in set(accounts):
                    if view.proven[account] == accounts.count(account):
                        proven -= 1
        if proven < self.prefix_proven_accounts:
            return 0.0, proven, n
        x = hits / n
        lo, hi = self.prefix_share
        return (0.0 if x <= lo else 1.0 if x >= hi else (x - lo) / (hi - lo)), proven, n

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
        exit_key = sess.exit
        hist: tuple[Any, ...] = self.prefix_gaps._d.get(exit_key) or ()
        if sid in hist[0::_ROW]:  # a session's login again: its earlier row goes
            rows: list[Any] = []
            for i in range(0, len(hist), _ROW):
                if hist[i] != sid:
                    rows += hist[i:i + _ROW]
            hist = tuple(rows)
        gap = None if gv is None or not gv.learned() else round(gv.gap, 3)
        proven = 1 if self.proves(comps) else 0
        hist += (sid, sess.oh_key, gap, 0 if gv is None else gv.k, sess.geo.kind or "?",
                 sess.account, proven)
        self.prefix_gaps.put(exit_key, hist[-_ROW * keep:])
        return bool(proven)

    def proves(self, comps: dict[str, float] | None) -> bool:
        """Whether a login's own physics (gap, physics, vantage components) proves it
        relayed: their noisy-OR is at least ``proven_min``."""
        if comps is None:
            return False
        keep_p = 1.0
        for name in _INTRINSIC:
            v = comps.get(name, 0.0)
            keep_p *= 1.0 - (v if v < 1.0 else 1.0)
        return 1.0 - keep_p >= self.proven_min

    def prove_login(self, sess: Session) -> bool:
        """Mark the session's login proven relayed in its exit prefix's history (evidence
        that came after the login: an app probe's physics); returns whether the mark is
        new (the prefix's other sessions are then worth re-assessing)."""
        exit_key = sess.exit
        hist = self.prefix_gaps._d.get(exit_key)
        if hist is None:
            return False
        sid = sess.session_id or sess.event_id
        for i in range(0, len(hist), _ROW):
            if hist[i] == sid and not hist[i + 6]:
                self.prefix_gaps._d[exit_key] = (*hist[:i + 6], 1, *hist[i + _ROW:])
                return True
        return False

