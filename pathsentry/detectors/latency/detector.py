"""The relay detector itself: event handling, learning and alerts.

:class:`LatencyDetector` (registered as ``latency``) keeps one :class:`~.state.Session`
per game session, assesses a login once with :class:`~.scoring.Scoring` and
re-assesses it when a late probe or a late foreign-origin traceroute could add
evidence, when its exit prefix comes to carry evidence, or when a cold server that
app-probed it narrows its bounds; teaches the baselines, the
servers' application overheads and the anomaly model, and puts flags into words
with :class:`~.evidence.Evidence`; its snapshots are :class:`~.snapshots.Snapshots`.
See the package docstring for the evidence and the costs.
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar

from river import anomaly

from pathsentry.config import AllowEntry, Server
from pathsentry.detectors import register
from pathsentry.detectors.addresses import ip_text
from pathsentry.detectors.base import DetectorContext, Enriched, Findings
from pathsentry.detectors.latency.baselines import Baseline, OverheadBook
from pathsentry.detectors.latency.defaults import DEFAULTS, WEIGHTS
from pathsentry.detectors.latency.evidence import Assessment, Evidence
from pathsentry.detectors.latency.geometry import PRECISION_SLACK_KM, Geometry, feasible_region
from pathsentry.detectors.latency.model import FEATURES, QueuedHalfSpaceTrees, features
from pathsentry.detectors.latency.prefixes import PREFIX_VIEWS_MAX, PrefixView
from pathsentry.detectors.latency.rejudge import COLD_SERVERS_KEPT, ColdServers, ColdSessions
from pathsentry.detectors.latency.scoring import PREFIX_ROW, GapVerdict, noisy_or
from pathsentry.detectors.latency.snapshots import Snapshots
from pathsentry.detectors.latency.state import MAX_VANTAGES, AlertBook, BoundedLRU, Session
from pathsentry.detectors.physics import KM_PER_MS_RTT
from pathsentry.detectors.saved import AllowList
from pathsentry.detectors.settings import settings_dict
from pathsentry.enrich.geo import GeoInfo
from pathsentry.schemas import FlaggedEvent, Login, RttProbe, Traceroute

__all__ = ["LatencyDetector"]

_W_MODEL = WEIGHTS["model"]
_intern = sys.intern
#: components the overhead learns despite (see :meth:`LatencyDetector._on_login`)
_OVERHEAD_SKIPS = frozenset({"gap"})


class LatencyDetector(Snapshots, ColdServers, Evidence):
    """Relayed connections from latency physics, baselines and multi-vantage RTTs."""

    name = "latency"
    consumes = frozenset({"login", "rtt_probe", "traceroute"})
    _model_features: ClassVar[tuple[str, ...]] = (
        "gap_ratio", "gap", "baseline_z", "physics_excess", "vantage_violation",
    )
    #: Probes end early when no flag can come of them (a clean session, or a flag out
    #: of reach even with the model's full weight); the results are the same without.
    prune: ClassVar[bool] = True

    def __init__(self, ctx: DetectorContext) -> None:
        super().__init__(ctx)
        cfg = settings_dict(self.name, ctx.settings(self.name), DEFAULTS,
                            "pathsentry.detectors.latency.defaults")
        self.cfg = cfg
        self.warmup = int(cfg["warmup_samples"])
        self.flag_threshold = float(cfg["flag_threshold"])
        self.alert_threshold = float(cfg["alert_threshold"])
        self.alert_repeat = int(cfg["alert_repeat"])
        self.history_len = int(cfg["history_len"])
        self.suspicious_history = float(cfg["suspicious_history"])
        self.gap_min_ms = float(cfg["gap_min_ms"])
        self.gap_full_ms = float(cfg["gap_full_ms"])
        self.gap_z = float(cfg["gap_z"])
        self.gap_alpha = float(cfg["gap_alpha"])
        self.tick_alpha = float(cfg["tick_alpha"])
        self.phase_alpha = float(cfg["phase_alpha"])
        self.overhead_warmup = int(cfg["overhead_warmup"])
        self.spike_warmup = int(cfg["spike_warmup"])
        self.prior_cost = float(cfg["overhead_prior_cost_ms"])
        self.prior_tick = float(cfg["overhead_prior_tick_ms"])
        self.by_platform = bool(cfg["overhead_by_platform"])
        self.overhead = OverheadBook(int(cfg["overhead_window"]), self.overhead_warmup)
        self.prefix_history = int(cfg["prefix_history"])
        self.prefix_min_logins = int(cfg["prefix_min_logins"])
        lo, hi = cfg["prefix_z"]
        self.prefix_z = (float(lo), float(hi))
        lo, hi = cfg["prefix_share"]
        self.prefix_share = (float(lo), float(hi))
        self.prefix_proven_accounts = int(cfg["prefix_proven_accounts"])
        self.proven_min = float(cfg["proven_min"])
        self.prefix_gaps: BoundedLRU[str, tuple[Any, ...]] = BoundedLRU(cfg["prefixes_max"])
        self.prefix_views: BoundedLRU[str, PrefixView] = BoundedLRU(
            min(int(cfg["prefixes_max"]), PREFIX_VIEWS_MAX))
        self.baselines: BoundedLRU[str, Baseline] = BoundedLRU(cfg["baseline_keys_max"])
        self.sessions: BoundedLRU[str, Session] = BoundedLRU(cfg["sessions_max"])
        #: account -> (flagged sessions, session id, score, session id, score, ...): the
        #: last ``history_len`` sessions' scores, oldest first, in one flat tuple
        self.accounts: BoundedLRU[str, tuple[Any, ...]] = BoundedLRU(cfg["accounts_max"])
        self.alerts = AlertBook(self.name, "vpn_relay", cfg["alerts_max"])
        self.model = self._new_model()
        self.hst = QueuedHalfSpaceTrees(self.model)
        self._server = ctx.config.server
        self.geometry = Geometry(self._server, int(cfg["distances_max"]))
        #: where a loaded session's allow-list mark comes from
        self._allow = AllowList(ctx.config)
        #: cold server key -> (session key, vantage) of the latest sessions it answered an app
        #: probe of, and (session key, ``""``) of its latest logins: judged again as the
        #: server's cold bounds narrow (not saved: rebuilt from a restored state's sessions)
        self.cold_probes: BoundedLRU[str, ColdSessions] = BoundedLRU(COLD_SERVERS_KEPT)

    def server_of(self, server_id: str) -> Server | None:
        return self._server(server_id)

    # -- the River anomaly model -------------------------------------------------

    def _new_model(self) -> anomaly.HalfSpaceTrees:
        return anomaly.HalfSpaceTrees(
            n_trees=int(self.cfg["hst_trees"]),
            height=int(self.cfg["hst_height"]),
            window_size=int(self.cfg["hst_window"]),
            seed=int(self.cfg["seed"]),
        )

    # -- event handling ----------------------------------------------------------

    def process(self, ev: Enriched, key: str | None = None) -> Findings | None:
        event = ev.event
        if isinstance(event, RttProbe):
            return self._on_probe(event)
        if isinstance(event, Login):
            return self._on_login(ev, event)
        if isinstance(event, Traceroute):
            return self._on_route(ev, event)
        return None

    def _on_route(self, ev: Enriched, trace: Traceroute) -> Findings | None:
        """A traceroute the route detector (earlier in the pipeline) found to start
        abroad, arriving after its session's login: the login gets the route component
        it would have had, had the traceroute come first, and is re-assessed. (A login
        arriving after its traceroute gets the route from the route detector's notes.)"""
        route = ev.notes.get("route")
        if trace.session_id is None or not isinstance(route, dict) or not route.get("foreign_origin"):
            return None
        sess = self.sessions.peek(trace.session_id)
        if sess is None or sess.event_id is None or sess.route is not None:
            return None
        sess.route = route
        if sess.allowed is not None:
            return None
        return self._reassess(sess)

    def _session_of(self, event: RttProbe | Login) -> tuple[str, Session]:
        """The session an event belongs to (created, or refreshed in the LRU)."""
        key = event.session_id or f"event:{event.event_id}"
        table = self.sessions._d
        sess = table.get(key)
        if sess is None:
            sess = Session()
            self.sessions.put(key, sess)
        else:
            table.move_to_end(key)
        return key, sess

    def _on_probe(self, probe: RttProbe) -> Findings | None:
        key, sess = self._session_of(probe)
        rtt = probe.rtt_ms
        lo = min(rtt)
        vantage = probe.vantage_id
        probes = sess.probes
        changed = True
        at = 0  # where the probe's (vantage, method) entry is
        if probes is None:
            sess.probes = probes = [_intern(vantage), _intern(probe.method), lo, len(rtt)]
        else:
            method = probe.method
            for at in range(0, len(probes), 4):
                if probes[at] == vantage and probes[at + 1] == method:
                    probes[at + 3] += len(rtt)  # more samples: a tighter phase bound
                    if lo < probes[at + 2]:  # the disk shrinks
                        probes[at + 2] = lo
                    else:
                        changed = False
                    break
            else:
                if len(probes) >= 4 * MAX_VANTAGES:
                    return None
                at = len(probes)
                sess.probes = probes = [*probes, _intern(vantage), _intern(probe.method), lo, len(rtt)]
        if sess.event_id is None:
            return None  # the login will assess the probes
        if probe.method == "app":
            if len(rtt) >= 2 and sess.allowed is None:
                self._learn_probe_tick(sess, vantage, rtt)
            self._keep_cold_probe(key, sess, vantage)
        # physics on the app round trip from this vantage (its samples so far)
        stronger = probe.method == "app" and \
            self._judge_probe(sess, vantage, probes[at + 2], probes[at + 3]) is not None
        if changed:
            geo = sess.geo
            d = self.geometry.distances.get((vantage, geo.lat, geo.lon))
            if d is None:
                v = self.geometry.violation(geo, vantage, lo)  # and memoise the distance
            elif d < 0.0:
                v = -1.0
            else:  # :meth:`Geometry.violation`, inlined
                v = d - lo * KM_PER_MS_RTT - PRECISION_SLACK_KM.get(geo.precision, 1000.0)
            if v > sess.worst_km:
                sess.worst_km = v
        if sess.allowed is not None:
            return None  # allow-listed sessions are never flagged
        # A late probe can only add evidence to the session's login: re-assess it (no
        # baseline or model learning: the login already taught them). Most sessions
        # are clean: a look at what every component needs to be non-zero (the same
        # comparisons :meth:`_score` makes) ends their probes here.
        gv = None
        if self.prune and self.flag_threshold > 0.0 and not sess.phys_s > 0 \
                and sess.route is None and not sess.worst_km > 100.0:
            gv = self.gap_verdict(sess)
            if (gv is None or not gv.strength > 0) and not self.prefix_relays(sess)[0] > 0 \
                    and not self.prefix_evidence(sess, gv)[0] > 0:
                b = self.best_baseline(sess)[1]
                if b is None:
                    return None
                excess, z = self.baseline_z(sess, b)
                if not excess > 5.0 or not z > 2.0:
                    return None
        out = self._reassess(sess, gv)
        if stronger and self.proves(self._score(sess, False, gv)[0]) and self.prove_login(sess):
            # the login is proven relayed after the fact: its exit may now be a known one
            out = self._revisit_prefix(sess, out)
        return out

    def _learn_probe_tick(self, sess: Session, vantage: str, rtt: list[float]) -> None:
        """Teach a cold vantage's tick bound the spread of an app probe's samples: each
        one is a phase of the same game loop, as a login's are, and a relay does not
        change it. A vantage that answers app probes but hosts no login yet gets its
        tick bound from them (:func:`~.prior.tick_upper`), so its probes are judged
        against the cold prior (cost at most ``overhead_prior_cost_ms``) instead of
        giving no verdict until its logins come; once they do, the bound and the
        learned tick are their spreads' (:meth:`~.baselines.Overhead.prior_bounds`)."""
        vkey = self.vantage_key(sess, vantage)
        if self.overhead.warm_figures(vkey, self.overhead_warmup) is not None:
            return
        self.overhead.learn_probe(vkey, len(rtt), max(rtt) - min(rtt))

    def _reassess(self, sess: Session, verdict: GapVerdict | None = None) -> Findings | None:
        comps, model, _, _, _, raw, _ = self._score(sess, False, verdict)
        if comps is None:
            if self.flag_threshold > 0.0:
                return None  # no evidence at all: score 0
            base = 0.0
        else:
            if model is None:
                # The model would be asked. Its component is at most its weight and the
                # account history at most boosts: first see if a flag is within reach.
                if self.prune:
                    top = 1.0 - (1.0 - noisy_or(comps)) * (1.0 - _W_MODEL)
                    suspicious = self._suspicious_before(sess)
                    if suspicious:
                        top += (1.0 - top) * min(0.6, 0.2 * suspicious)
                    top += 1e-9  # float rounding
                    if top < self.flag_threshold or (sess.flagged and top < sess.score + 0.05):
                        return None
                model = self._model_score(comps, features(*raw, sess.phys_feat))
            base = noisy_or(comps)
        score, history_note = self._with_history(sess.account, sess, base)
        if score < self.flag_threshold:
            return None
        if sess.flagged and score < sess.score + 0.05:
            return None
        assert model is not None
        return self._emit(sess, self._assessment(sess, base, comps or {}, model), score, history_note)

    def _on_login(self, ev: Enriched, login: Login) -> Findings | None:
        key, sess = self._session_of(login)
        physics_excess = self._set_login(sess, key, login, ev.geo, ev.prefix, ev.server, ev.allowed,
                                         ev.notes.get("route"))
        comps, model, gv, baseline_excess, level, raw, feats = self._score(sess)
        if comps is None:
            base = score = 0.0
            history_note = None
        else:
            base = noisy_or(comps)
            score, history_note = self._with_history(login.account, sess, base)
        would_flag = score >= self.flag_threshold
        allowed = ev.allowed
        flagged = would_flag and allowed is None
        excess_ms = physics_excess
        if baseline_excess is not None and (excess_ms is None or baseline_excess > 0):
            excess_ms = baseline_excess if excess_ms is None or baseline_excess > excess_ms \
                else excess_ms  # max(excess_ms, baseline_excess)
        note: dict[str, Any] = {
            "score": round(score, 4) if score else 0.0,
            "flagged": flagged,
            "exit_prefix": ev.prefix,
            "gap_ms": None if gv is None else round(gv.gap, 2),
            "gap_excess_ms": None if gv is None or gv.excess is None else round(gv.excess, 2),
            "excess_ms": None if excess_ms is None else round(excess_ms, 2),
        }
        if would_flag and allowed is not None:
            note["suppressed"] = f"allow-listed {allowed.cidr}: {allowed.reason}"
        ev.notes["relay"] = note
        # a flag is explained with what was learned before this login taught anything
        assert model is not None
        assessed = self._assessment(sess, base, comps or {}, model) if flagged else None
        proven = False
        if allowed is None:
            proven = self.learn_prefix(sess, gv, comps, self.prefix_history)
            if comps is None or self._teaches(comps, level):
                self._learn(sess, feats or features(*raw, sess.phys_feat))
            # The overhead learns from every login without other relay evidence, its own
            # gap verdict included: a patch day moves every login's gap, and the medians
            # over one vote per exit prefix it keeps are not moved by a relayed minority.
            # The samples' spread (the tick, the spikes) is learned from every login: a
            # relay does not change it, and leaving out the logins whose slowest sample
            # stood out would teach a tick shorter than the server's.
            teaches = comps is None or self._teaches(comps, "", _OVERHEAD_SKIPS)
            if not teaches:
                # and the gap its exit voted with before it was known goes too
                self.overhead.forget(sess.oh_key, sess.prefix, sess.geo.kind or "?")
            self.overhead.learn(sess.oh_key, sess.prefix, sess.geo.kind or "?",
                                None if sess.tcp is None or not teaches else sess.app_min - sess.tcp,
                                sess.app_n, sess.app_spread,
                                None if gv is None or not gv.learned() or not teaches else gv.u_raw)
            self._keep_cold_probes(key, sess)  # app probes that came before the login
        if assessed is None:
            self._remember(login.account, sess, base if allowed is None else 0.0)
            out = None
        else:
            out = self._emit(sess, assessed, score, history_note)
        if proven or (comps is not None and ("prefix_gap" in comps or "prefix_relays" in comps)):
            out = self._revisit_prefix(sess, out)
        if allowed is None:
            if sess.oh_key in self.cold_probes:
                out = self._rejudge_cold(sess.oh_key, sess, out)
            self._keep_cold_probe(key, sess, "")
        return out

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`~.snapshots.Snapshots.state`, and which of the restored sessions
        cold servers answered app probes of (:meth:`_keep_cold_probe`)."""
        super().load_state(state)
        self.cold_probes.clear()
        for key, sess in self.sessions.items():
            if sess.event_id is None or sess.allowed is not None:
                continue
            self._keep_cold_probes(key, sess)
            self._keep_cold_probe(key, sess, "")

    def _revisit_prefix(self, sess: Session, out: Findings | None) -> Findings | None:
        """Re-assess the exit prefix's other recent, unflagged sessions once it carries
        evidence (or this login's own physics proved it relayed, which may be what makes
        the prefix a known exit): the first logins through a relay's exit came before the
        evidence did.
        Their flags are late, like those a late probe raises, and name their own login."""
        hist = self.prefix_gaps.peek(sess.exit)
        if hist is None:
            return out
        table = self.sessions._d
        for i in range(0, len(hist), PREFIX_ROW):
            sid = hist[i]
            other = table.get(sid) or table.get(f"event:{sid}")
            if other is None or other is sess or other.flagged or other.event_id is None \
                    or other.allowed is not None:
                continue
            found = self._reassess(other)
            if found:
                if out is None:
                    out = Findings()
                out.extend(found)
        return out

    def _set_login(
        self, sess: Session, key: str, login: Login, geo: GeoInfo, prefix: str,
        server: Server | None, allowed: AllowEntry | None, route: Any,
    ) -> float | None:
        """Keep what later probes need of a login; returns the physics excess (ms, ``None``
        without a located claim or a known server)."""
        app = login.app_rtt_ms
        n = len(app)
        server_id = _intern(login.server_id)
        sess.event_id = login.event_id
        sess.session_id = None if login.session_id is None else key
        sess.ts = login.ts
        sess.account = login.account
        sess.src_ip = login.src_ip
        sess.server_id = server_id
        sess.server = server
        sess.app_n = n
        if n == 1:
            sess.app_min = sess.app_p10 = sess.app_second = app[0]
            sess.app_spread = 0.0
        else:  # physics.quantile(app, 0.1), inlined
            ordered = sorted(app)
            sess.app_min = ordered[0]
            sess.app_spread = ordered[-1] - ordered[0]
            sess.app_second = ordered[-2] if n > 2 else ordered[0]
            pos = 0.1 * (n - 1)
            i = int(pos)
            j = min(i + 1, n - 1)
            sess.app_p10 = ordered[i] + (ordered[j] - ordered[i]) * (pos - i)
        client = login.client
        platform = None if client is None or not self.by_platform else client.platform
        sess.oh_key = server_id if platform is None else _intern(OverheadBook.key(server_id, platform))
        sess.tcp = login.tcp_rtt_ms
        sess.geo = geo
        sess.prefix = prefix
        sess.exit = self.exit_of(sess)
        sess.allowed = allowed
        sess.route = route if isinstance(route, dict) and route.get("foreign_origin") else None
        # the baseline keys, as the baselines' own strings where they exist
        known = self.baselines._d
        k = f"{server_id}|p|{prefix}"
        b = known.get(k)
        sess.k_prefix = k if b is None else b.key
        if geo.asn is None:
            sess.k_asn = None
        else:
            k = f"{server_id}|a|{geo.asn}"
            b = known.get(k)
            sess.k_asn = k if b is None else b.key
        if geo.country:
            k = f"{server_id}|c|{geo.country}|{geo.kind or '?'}"
            b = known.get(k)
            sess.k_country = k if b is None else b.key
        else:
            sess.k_country = None
        excess = self._judge_physics(sess)
        # the vantage disks of the probes so far
        worst = 0.0
        probes = sess.probes
        if probes is not None:
            for i in range(0, len(probes), 4):
                v = self.geometry.violation(geo, probes[i], probes[i + 2])
                if v > worst:
                    worst = v
        sess.worst_km = worst
        return excess

    def _judge_physics(self, sess: Session) -> float | None:
        """Physics, fixed for the session, on a network RTT (never a raw app figure): the
        login's, or an app probe's from another vantage where that one shows a larger
        excess (:meth:`_judge_probe`); returns the excess over the claim's expectation
        (ms, ``None`` without a located claim, a known server or a network RTT)."""
        geo, server = sess.geo, sess.server
        excess: float | None = None
        sess.phys_at = None
        phys = sess.phys_net = None if server is None else self.physics_net(sess)
        sess.phys_s = sess.phys_feat = 0.0
        if phys is not None and geo.lat is not None and geo.lon is not None:
            assert server is not None
            excess = self._physics_of(sess, server, phys[0])
        probes = sess.probes
        if probes is not None:
            for i in range(0, len(probes), 4):
                if probes[i + 1] == "app":
                    got = self._judge_probe(sess, probes[i], probes[i + 2], probes[i + 3])
                    if got is not None:
                        excess = got
        return excess

    def _physics_of(self, sess: Session, server: Server, net: float) -> float:
        """Set the session's physics strength and model feature from network RTT ``net``
        (ms) to ``server``; returns the excess over the claim's expectation (ms)."""
        geo = sess.geo
        assert geo.lat is not None and geo.lon is not None
        expected, tol, slack_ms, hi = self.geometry.expectation(server, geo, geo.lat, geo.lon)
        excess = net - expected
        x = excess - tol - slack_ms
        sess.phys_s = 0.0 if x <= 0.0 else 1.0 if x >= hi else x / (hi - 0.0)  # ramp(x, 0, hi)
        x = excess - tol
        x = x if x > 0.0 else 0.0
        sess.phys_feat = x / (x + 20.0) if x else 0.0  # squash(excess - tol, 20), one shared zero
        return excess

    def _judge_probe(self, sess: Session, vantage: str, app_min: float, k: int) -> float | None:
        """Physics on an app probe from ``vantage`` (:meth:`~.scoring.Scoring.probe_net`),
        taken as the session's physics when its excess beyond the access kind's tolerance
        is larger than what physics judged so far; returns that excess (ms), ``None`` when
        it is not larger (or there is no figure: a vantage never heard from, an unlocated
        claim)."""
        geo = sess.geo
        if geo.lat is None or geo.lon is None:
            return None
        server = self._server(vantage)
        net = None if server is None else self.probe_net(sess, vantage, app_min, k)
        if net is None:
            return None
        assert server is not None
        expected, tol = self.geometry.expectation(server, geo, geo.lat, geo.lon)[:2]
        x = net - expected - tol
        if not x > 0.0 or x / (x + 20.0) <= sess.phys_feat:
            return None
        sess.phys_at = vantage
        cold = self.overhead.warm_figures(self.vantage_key(sess, vantage), self.overhead_warmup) is None
        sess.phys_net = (net, f"app probe from {vantage} less "
                         + ("the largest overhead the cold prior allows" if cold else "learned overhead"))
        return self._physics_of(sess, server, net)

    def _learn(self, sess: Session, feats: tuple[float, ...]) -> None:
        value = sess.app_min
        baselines = self.baselines
        table = baselines._d
        for key in (sess.k_prefix, sess.k_asn, sess.k_country):
            if key is None:
                continue
            b = table.get(key)
            if b is None:
                b = Baseline(key)
                baselines.put(key, b)
            else:
                table.move_to_end(key)
            b.update(value)
        self.hst.learn_row(FEATURES, feats)

    # -- output -------------------------------------------------------------------

    def _emit(
        self, sess: Session, assessed: Assessment, score: float, history_note: str | None,
    ) -> Findings:
        first_flag = not sess.flagged
        sess.flagged, sess.score = True, score
        account = sess.account
        flagged_sessions = self._remember(account, sess, max(assessed.base, score), first_flag)
        reasons = list(assessed.reasons)
        disks = assessed.disks
        if disks:
            assessed.evidence["vantages"]["feasible_region"] = feasible_region(disks)
        if history_note:
            reasons.append(history_note)
        final = round(score, 4)
        evidence = {**assessed.evidence, "score": {"session": round(assessed.base, 4),
                                                   "final": final,
                                                   "flagged_sessions": flagged_sessions}}
        subject_key = f"account:{account}"
        out = Findings()
        alert_id: str | None = None
        assert sess.event_id is not None
        if score >= self.alert_threshold or flagged_sessions >= self.alert_repeat \
                or self.alerts.known(subject_key):
            alert = self.alerts.update(
                subject_key, {"account": account}, sess.ts, score, sess.event_id,
                [account], evidence,
                f"{account}: relayed connection from {sess.prefix} — " + reasons[0]
                if reasons else f"{account}: relayed connection from {sess.prefix}",
            )
            out.alerts.append(alert)
            alert_id = alert.alert_id
        out.flags.append(FlaggedEvent(
            event_id=sess.event_id, ts=sess.ts, kind="vpn_relay", account=account,
            session_id=sess.session_id, src_ip=ip_text(sess.src_ip), country=sess.geo.country,
            asn=sess.geo.asn, score=final if score <= 1.0 else 1.0, reasons=reasons, evidence=evidence,
            alert_id=alert_id, detector=self.name,
        ))
        return out


register(LatencyDetector)
