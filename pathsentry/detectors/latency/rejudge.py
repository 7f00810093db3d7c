"""Judging again what a cold server saw, as its bounds narrow.

A server heard from fewer than ``overhead_warmup`` exit prefixes judges a gap or an app
figure against the largest overhead its prior and its logins so far allow
(:mod:`.prior`): its cost at most the second-lowest gap of its wired exits, its tick
at most the largest its logins' spreads (before any, the app probes' it answered) do
not rule out. While one of those two gaps
is a relay's, the bound is loose and a relay leg hides under it; honest lines narrow
it later. Owns :class:`ColdServers` (mixed into the detector): which recent logins and
app-probed sessions each cold server saw (:meth:`ColdServers._keep_cold_probe`), and
judging them again whenever the server learns from a login
(:meth:`ColdServers._rejudge_cold`); a server's kept sessions are a
:class:`ColdSessions`. The index is not saved: the detector rebuilds it
from the sessions a restored state holds.
"""

from __future__ import annotations

from operator import itemgetter

from mypy_extensions import trait

from pathsentry.detectors.base import Findings
from pathsentry.detectors.bounded import BoundedLRU
from pathsentry.detectors.latency.scoring import GapVerdict, Scoring
from pathsentry.detectors.latency.state import Session

__all__ = ["COLD_SERVERS_KEPT", "COLD_SESSIONS_KEPT", "ColdServers", "ColdSessions"]

#: cold servers (or server and platform) whose sessions are kept for judging again
COLD_SERVERS_KEPT = 1024
#: logins, and as many app-probed sessions, kept per cold server
COLD_SESSIONS_KEPT = 64


def _joined(out: Findings | None, found: Findings | None) -> Findings | None:
    """``out`` with ``found`` added (either may be ``None``)."""
    if not found:
        return out
    if out is None:
        return found
    out.extend(found)
    return out


class ColdSessions:
    """One cold server's latest logins (``(session key, "")``) and sessions it answered an
    app probe of (``(session key, vantage)``), at most ``COLD_SESSIONS_KEPT`` of each,
    each kind by the order it was first kept: one look-up tells a session kept already.

    >>> kept = ColdSessions()
    >>> for e in [("s1", ""), ("s1", "v1"), ("s2", ""), ("s1", ""), ("s3", "v2")]:
    ...     kept.keep(e)
    >>> kept.entries(), len(kept)
    ([('s1', ''), ('s1', 'v1'), ('s2', ''), ('s3', 'v2')], 4)
    >>> for i in range(COLD_SESSIONS_KEPT):
    ...     kept.keep((f"p{i}", "v1"))
    >>> kept.entries()[:3], len(kept)  # the two oldest probed sessions gone, the logins kept
    ([('s1', ''), ('s2', ''), ('p0', 'v1')], 66)
    """

    __slots__ = ("_logins", "_probed", "_seq")

    def __init__(self) -> None:
        self._logins: dict[tuple[str, str], int] = {}
        self._probed: dict[tuple[str, str], int] = {}
        self._seq = 0

    def keep(self, entry: tuple[str, str]) -> None:
        """Keep ``entry`` unless kept already; the oldest of its kind goes past the cap."""
        kept = self._probed if entry[1] else self._logins
        if entry not in kept:
            self._seq += 1
            kept[entry] = self._seq
            if len(kept) > COLD_SESSIONS_KEPT:
                del kept[next(iter(kept))]

    def entries(self) -> list[tuple[str, str]]:
        """Every entry kept, in the order they were first kept."""
        both = sorted((*self._logins.items(), *self._probed.items()), key=itemgetter(1))
        return [entry for entry, _ in both]

    def __len__(self) -> int:
        return len(self._logins) + len(self._probed)


@trait  # a mixin: the compiled build takes it beside its one non-trait base
class ColdServers(Scoring):
    """The sessions each cold server saw, judged again as its bounds narrow."""

    #: cold server key -> the latest sessions it answered an app probe of, and its latest
    #: logins
    cold_probes: BoundedLRU[str, ColdSessions]
    sessions: BoundedLRU[str, Session]

    def _judge_physics(self, sess: Session) -> float | None:
        """The session's physics, judged again (the detector's)."""
        raise NotImplementedError

    def _judge_probe(self, sess: Session, vantage: str, app_min: float, k: int) -> float | None:
        """Physics on an app probe from ``vantage`` (the detector's)."""
        raise NotImplementedError

    def _reassess(self, sess: Session, verdict: GapVerdict | None = None) -> Findings | None:
        """The session's login assessed again (the detector's)."""
        raise NotImplementedError

    def _revisit_prefix(self, sess: Session, out: Findings | None) -> Findings | None:
        """The exit prefix's other sessions assessed again (the detector's)."""
        raise NotImplementedError

    def _keep_cold_probe(self, key: str, sess: Session, vantage: str) -> None:
        """Remember the session's login on its own server (``vantage`` ``""``), or that it
        was app-probed from ``vantage``, while that server is cold: its latest
        ``COLD_SESSIONS_KEPT`` logins and as many probed sessions."""
        server = self.vantage_key(sess, vantage) if vantage else sess.oh_key
        if self.overhead.warm_figures(server, self.overhead_warmup) is not None:
            return
        kept = self.cold_probes.get(server)
        if kept is None:
            kept = ColdSessions()
            self.cold_probes.put(server, kept)
        kept.keep((key, vantage))

    def _keep_cold_probes(self, key: str, sess: Session) -> None:
        """:meth:`_keep_cold_probe` for every vantage that app-probed the session so far."""
        probes = sess.probes
        if probes is not None:
            for i in range(0, len(probes), 4):
                if probes[i + 1] == "app":
                    self._keep_cold_probe(key, sess, probes[i])

    def _rejudge_cold(self, server: str, sess: Session, out: Findings | None) -> Findings | None:
        """A login taught cold server ``server`` (its bounds may have narrowed: a lower
        second-lowest wired gap, a tick ruled out, or the learned overhead once warm):
        judge again its recent logins' gaps and app figures and the app probes it answered
        for its recent sessions (a physics verdict is only replaced by a stronger one). The
        bound is the one a login or probe now would meet, so a relay leg that the first,
        looser bounds hid is flagged late, naming its own login. A probe that proves its
        session relayed marks the exit; a login judged again on its own server does not
        (its exit's gaps already voted on that server's overhead: marked, the exit's later
        logins would stop replacing its old votes). A warm server is judged once more,
        then no longer tracked."""
        kept = self.cold_probes.peek(server)
        if self.overhead.warm_figures(server, self.overhead_warmup) is not None:
            self.cold_probes._d.pop(server, None)
        if not kept:
            return out
        table = self.sessions._d
        for key, vantage in kept.entries():
            other = table.get(key)
            if other is None or other is sess or other.flagged or other.event_id is None \
                    or other.allowed is not None:
                continue
            if not vantage:  # the login itself: its gap and physics on the bounds now
                before = (other.phys_s, other.phys_feat, other.phys_net, other.phys_at)
                self._judge_physics(other)
                stronger = other.phys_s > before[0]
                if not stronger:
                    other.phys_s, other.phys_feat, other.phys_net, other.phys_at = before
                gv = self.gap_verdict(other)
                if not stronger and (gv is None or not gv.strength > 0):
                    continue
                out = _joined(out, self._reassess(other, gv))
                continue
            probes = other.probes
            if probes is None:
                continue
            stronger = False
            for i in range(0, len(probes), 4):
                if probes[i] == vantage and probes[i + 1] == "app" and \
                        self._judge_probe(other, vantage, probes[i + 2], probes[i + 3]) is not None:
                    stronger = True
            if not stronger:
                continue
            out = _joined(out, self._reassess(other))
            if self.proves(self._score(other, False)[0]) and self.prove_login(other):
                out = self._revisit_prefix(other, out)
        return out
