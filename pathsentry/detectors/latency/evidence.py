"""Evidence of the relay detector: an assessment put into words, in physical terms
(ms, km) with the learned expectation beside every measured figure.

Only built for a flag (or on request, ``LatencyDetector._assess``): the gap against
the server's learned overhead (cost, tick, noise, sample count and spread, expected
and measured, excess in ms and km, or why there is no verdict), physics (expected
vs measured network RTT and where the measured figure came from), the baselines
looked at, the probes' RTT disks, the route and the anomaly model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mypy_extensions import trait

from pathsentry.config import Server
from pathsentry.detectors.latency.geometry import DEFAULT_TOLERANCE_MS, KIND_TOLERANCE_MS, PRECISION_SLACK_KM
from pathsentry.detectors.latency.scoring import PRIOR_APP, SECOND_SLOWEST, SLOWEST, Scoring, noisy_or
from pathsentry.detectors.latency.state import Session
from pathsentry.detectors.physics import (
    ACCESS_FLOOR_MS,
    ACCESS_TYPICAL_MS,
    KM_PER_MS_RTT,
    PATH_INFLATION,
    fibre_floor_ms,
    ramp,
)

__all__ = ["Assessment", "Evidence"]


@dataclass(slots=True)
class Assessment:
    """One verdict put into words: its components, evidence and reasons."""

    base: float
    components: dict[str, float]
    evidence: dict[str, Any]
    reasons: list[str]
    #: vantage disks (lat, lon, radius km); the feasible region is only computed for flags
    disks: list[tuple[float, float, float]]


@trait  # a mixin: the compiled build takes it beside its one non-trait base
class Evidence(Scoring):
    """Explanations of :class:`~.scoring.Scoring`'s numbers (mixed into the detector)."""

    def server_of(self, server_id: str) -> Server | None:
        raise NotImplementedError

    def _assess(self, sess: Session) -> Assessment:
        """Assess a session's login as it stands, with its evidence put into words."""
        comps, model = self._score(sess)[:2]
        assert model is not None
        return self._assessment(sess, 0.0 if comps is None else noisy_or(comps), comps or {}, model)

    def _assessment(
        self, sess: Session, base: float, components: dict[str, float], model: float | str
    ) -> Assessment:
        """The evidence and reasons behind :meth:`_score`'s numbers (the same arithmetic,
        with its details)."""
        geo, app_min = sess.geo, sess.app_min
        app_ms = round(app_min, 2)
        reasons: list[str] = []
        disks: list[tuple[float, float, float]] = []
        evidence: dict[str, Any] = {
            "measured": {
                "app_rtt_min_ms": app_ms,
                "app_rtt_p10_ms": round(sess.app_p10, 2),
                "app_rtt_spread_ms": round(sess.app_spread, 2),
                "app_rtt_samples": sess.app_n,
                "tcp_rtt_ms": sess.tcp,
                "server": sess.server_id,
            },
            "claimed": {
                "country": geo.country, "asn": geo.asn, "kind": geo.kind,
                "lat": geo.lat, "lon": geo.lon, "precision": geo.precision,
                "prefix": sess.prefix,
            },
            "gap": self._explain_gap(sess, reasons),
            "exit_prefix": self._explain_prefix(sess, components, reasons),
            "physics": self._explain_physics(sess, reasons),
            "baseline": self._explain_baseline(sess, components, reasons),
            "vantages": self._explain_vantages(sess, components, reasons, disks),
        }
        route = sess.route
        if route is not None:
            path = " → ".join(route.get("country_path", []))
            reasons.append(f"route of this session has a foreign origin: {path}")
            evidence["route"] = {"country_path": route.get("country_path"),
                                 "signature": route.get("signature")}
        evidence["model"] = (
            {"half_space_trees": round(model, 3)} if isinstance(model, float) else {"verdict": model}
        )
        evidence["components"] = {k: round(v, 3) for k, v in components.items()}
        return Assessment(base, components, evidence, reasons, disks)

    def _explain_gap(self, sess: Session, reasons: list[str]) -> dict[str, Any]:
        v = self.gap_verdict(sess)
        if v is None:
            return {"verdict": "no tcp_rtt or network-layer probe: the other components decide"}
        out: dict[str, Any] = {
            "network_rtt_ms": round(v.net, 2), "source": v.source,
            "app_rtt_min_ms": round(v.net + v.gap, 2), "app_rtt_samples": v.k,
            "login_app_rtt_spread_ms": round(sess.app_spread, 2),
            "gap_ms": round(v.gap, 2), "gap_km": round(v.gap * KM_PER_MS_RTT),
            "overhead": {"server": sess.oh_key, "prefixes": v.n},
        }
        if v.bound is None or v.excess is None:
            out["verdict"] = v.cold
            return out
        out["overhead"].update(
            cost_ms=round(v.cost, 2), tick_ms=round(v.tick, 2),
            expected_gap_ms=round(v.expected, 2), noise_ms=round(v.noise, 2),
            noise_logins=v.noise_n, spike_allowance_ms=round(v.spike, 2),
            honest_bound_ms=round(v.bound, 2),
        )
        if v.span > v.tick:  # the bound took the loop's reach or the spreads' tick ceiling
            out["overhead"][self._span_name(sess.oh_key, v.span)] = round(v.span, 2)
        if v.prior:  # cost and tick are the largest the prior and the logins so far allow
            out["overhead"].update(basis="prior", cold=v.cold)
        cold_kind = 0 <= v.spike_n < self.spike_warmup
        if v.spike_n >= 0:
            out["overhead"]["spike_logins"] = v.spike_n
        least = self.overhead.MIN_NOISE_VOTES
        out.update(excess_ms=round(v.excess, 2),
                   excess_km=round(max(0.0, v.excess) * KM_PER_MS_RTT),
                   ratio=round(v.ratio, 3),
                   verdict="relay" if v.strength > 0.5 else
                   "consistent" if v.excess <= 0 else
                   (f"{v.k} sample(s) on {sess.geo.kind or '?'} access whose spikes are learned "
                    f"from {v.spike_n} < {self.spike_warmup} logins: no verdict of its own"
                    if cold_kind else
                    f"noise of {sess.geo.kind or '?'} access learned from {v.noise_n} < {least} "
                    f"residuals: no verdict of its own" if v.noise_unlearned else "consistent"))
        if v.strength > 0:
            what = "TCP terminates" if v.source == "tcp_rtt" else "the network layer answers"
            reasons.append(
                f"{v.source} {v.net:.1f} ms vs app_rtt {v.net + v.gap:.1f} ms "
                f"(min of {v.k} samples): gap {v.gap:.0f} ms, {v.excess:.0f} ms above the "
                f"{v.bound:.0f} ms an honest client of {sess.oh_key} shows ("
                + (f"cold server, any overhead still possible: cost at most {v.cost:.1f} ms, "
                   f"tick at most {v.tick:.0f} ms" if v.prior else
                   f"learned cost {v.cost:.1f} ms, tick {v.tick:.0f} ms")
                + f"): {what} "
                f"≈ {v.excess * KM_PER_MS_RTT:.0f} km before the client"
            )
        return out

    def _explain_prefix(
        self, sess: Session, components: dict[str, float], reasons: list[str]
    ) -> dict[str, Any]:
        """The exit prefix's own evidence: its recent logins' gaps against the learned
        game loops, and the accounts its logins proved relayed."""
        s_gap, n, z = self.prefix_evidence(sess, self.gap_verdict(sess))
        s_relays, proven, logins = self.prefix_relays(sess)
        lo, hi = self.prefix_z
        exit_key = sess.exit
        out: dict[str, Any] = {
            "prefix": sess.prefix, "exit": exit_key,
            "gap_logins": n, "gap_z": round(z, 2), "gap_z_ramp": [lo, hi],
            "recent_logins": logins, "proven_relay_accounts": proven,
        }
        if "prefix_gap" in components:
            reasons.append(
                f"{n} recent logins through {exit_key} answer the game {z:.1f} standard "
                f"errors slower than the servers' learned overhead allows: the same "
                f"client-relay leg in every login through this exit"
            )
        if "prefix_relays" in components:
            reasons.append(
                f"{proven} accounts' recent logins through {exit_key} were proven relayed "
                f"by their own latency physics ({logins} logins): a relay exit"
            )
        out["verdict"] = ("relay exit" if "prefix_gap" in components or "prefix_relays" in components
                          else "consistent" if n >= self.prefix_min_logins else
                          f"too few logins ({n} < {self.prefix_min_logins}) with a gap verdict")
        if (s_gap > 0 or s_relays > 0) and self.at_claim(sess):
            out["verdict"] = ("a relay exit's other logins, not this one: its fastest answer "
                              "less the learned cost leaves no room for a leg behind the exit")
            out["login_at_claim"] = self.claim_figures(sess)
        return out

    def _explain_physics(self, sess: Session, reasons: list[str]) -> dict[str, Any]:
        geo = sess.geo
        server = sess.server if sess.phys_at is None else self.server_of(sess.phys_at)
        if server is None or geo.lat is None or geo.lon is None:
            return {"verdict": "no located claim or unknown server"}
        phys = sess.phys_net
        if phys is None:
            return {"verdict": "no tcp_rtt, and no overhead to correct the app figure with "
                               "(not learned, or one or two samples of an access kind whose "
                               "spikes are not): a raw app figure is not compared with physics"}
        measured, source = phys
        dist = self.geometry.km(server, geo.lat, geo.lon)
        kind = geo.kind or "unknown"
        expected = fibre_floor_ms(dist) * PATH_INFLATION + ACCESS_TYPICAL_MS.get(kind, 6.0)
        slack_ms = PRECISION_SLACK_KM.get(geo.precision, 1000.0) * PATH_INFLATION / KM_PER_MS_RTT
        tol = KIND_TOLERANCE_MS.get(kind, DEFAULT_TOLERANCE_MS)
        excess = measured - expected
        floor = fibre_floor_ms(dist) + ACCESS_FLOOR_MS.get(kind, 0.3)
        s = ramp(excess - tol - slack_ms, 0.0, max(8.0, tol))
        out: dict[str, Any] = {
            "distance_km": round(dist), "floor_ms": round(floor, 2),
            "expected_ms": round(expected, 2), "measured_ms": round(measured, 2),
            "measured_source": source,
            "excess_ms": round(excess, 2),
            "excess_km": round(max(0.0, excess) * KM_PER_MS_RTT),
            "tolerance_ms": tol + round(slack_ms, 1), "access_kind": kind,
            "precision": geo.precision,
            "verdict": "detour" if s > 0 else (
                "faster than light" if measured < floor - slack_ms else "consistent"),
        }
        if geo.precision == "country":
            out["note"] = "claimed point is the country's reference point"
        if sess.phys_at is not None:
            out["app_probe"] = self._probe_figures(sess, sess.phys_at)
        figures = self.app_overhead(sess) if source in (SLOWEST, SECOND_SLOWEST, PRIOR_APP) else None
        if figures is not None and figures[2]:
            out["cold_overhead"] = {"cost_at_most_ms": round(figures[0], 2),
                                    "tick_at_most_ms": round(figures[1], 2),
                                    "samples": sess.app_n}
        if figures is not None and source in (SLOWEST, SECOND_SLOWEST):
            cost, tick = figures[0], figures[1]
            kind_key = geo.kind or "?"
            out["slowest_sample"] = {
                "app_rtt_max_ms": round(sess.app_min + sess.app_spread, 2),
                "app_rtt_judged_ms": round(sess.app_min + sess.app_spread if source == SLOWEST
                                           else sess.app_second, 2),
                "spike_logins": self.overhead.spike_votes(kind_key),
                "samples": sess.app_n, "learned_cost_ms": round(cost, 2),
                "learned_tick_ms": round(tick, 2),
                **self._reach_of(sess.oh_key, tick),
                "slowest_span_ms": round(tick if figures[2] else self.slowest_span(
                    sess.oh_key, tick), 2),
                "noise_ms": round(self.overhead.noise_scale(
                    kind_key, self.noise_floor(geo.kind or ""))[0], 2),
                "noise_scales": self.gap_z,
                "spike_allowance_ms": round(self.overhead.spike(kind_key), 2),
            }
        if s > 0:
            reasons.append(
                f"network RTT {measured:.1f} ms ({source}) vs {expected:.1f} ms expected for a "
                f"{kind} client {dist:.0f} km from {server.id}: {excess:.0f} ms ≈ "
                f"{excess * KM_PER_MS_RTT:.0f} km of detour"
            )
        return out

    def _reach_of(self, key: str, span: float) -> dict[str, Any]:
        """The learned tick of server ``key`` and the span the bounds took in its place
        (``span``: the loop's reach or the tick ceiling), when they differ
        (:meth:`~.scoring.Scoring.loop_span`)."""
        figures = self.overhead.warm_figures(key, self.overhead_warmup)
        if figures is None or span <= figures[1]:
            return {}
        return {"learned_tick_ms": round(figures[1], 2), self._span_name(key, span): round(span, 2)}

    def _span_name(self, key: str, span: float) -> str:
        """What made the phase span of server ``key`` longer than its learned tick: the
        loop's reach, or the tick ceiling of a server just warm
        (:meth:`~.scoring.Scoring.loop_span`)."""
        o = self.overhead.overheads.get(key)
        return "loop_reach_ms" if o is not None and span == o.reach() else "tick_ceiling_ms"

    def _probe_figures(self, sess: Session, vantage: str) -> dict[str, Any]:
        """What physics took from the session's app probe of ``vantage``: its minimum and
        sample count beside the vantage's learned overhead."""
        probes = sess.probes or []
        out: dict[str, Any] = {"vantage": vantage}
        for i in range(0, len(probes), 4):
            if probes[i] == vantage and probes[i + 1] == "app":
                out.update(app_rtt_min_ms=round(probes[i + 2], 2), samples=probes[i + 3])
        figures = self.app_overhead(sess, self.vantage_key(sess, vantage), out.get("samples", 0))
        if figures is not None:
            if figures[2]:  # a cold vantage: the largest cost and tick still possible
                out["basis"] = "prior"
            out.update(learned_cost_ms=round(figures[0], 2), learned_tick_ms=round(figures[1], 2),
                       phase_quantile=1.0 - self.phase_alpha,
                       spike_allowance_ms=round(
                           self.spike_allowance_of(sess.geo.kind, out.get("samples", 0)), 2))
            out.update(self._reach_of(self.vantage_key(sess, vantage), figures[1]))
        return out

    def _explain_baseline(
        self, sess: Session, components: dict[str, float], reasons: list[str]
    ) -> dict[str, Any]:
        """The baselines looked at, most specific first, up to the first out of warm-up."""
        levels: list[dict[str, Any]] = []
        used = None
        warmup = self.warmup
        for level, key in (("prefix", sess.k_prefix), ("asn", sess.k_asn), ("country", sess.k_country)):
            if key is None:
                continue
            b = self.baselines.peek(key)
            n = 0 if b is None else b.n
            if b is None or n < warmup:
                levels.append({"level": level, "key": key, "samples": n,
                               "verdict": f"warm-up: {n} < {warmup} samples, no verdict"})
                continue
            lo, mid, hi = b.quantiles()
            # the verdict is taken on the 0.01 ms figures the evidence shows
            excess, spread, spike, tick = self.baseline_terms(sess, b)
            z = excess / spread
            levels.append({"level": level, "key": key, "samples": n,
                           "p10_ms": round(lo, 2), "p50_ms": round(mid, 2), "p90_ms": round(hi, 2),
                           "excess_ms": round(excess, 2),
                           "excess_km": round(max(0.0, excess) * KM_PER_MS_RTT),
                           "spike_allowance_ms": round(spike, 2),
                           "tick_allowance_ms": round(tick, 2),
                           "z": round(z, 2), "spread_ms": round(spread, 2)})
            if "baseline" in components:
                reasons.append(
                    f"app_rtt {sess.app_min:.1f} ms vs p90 {round(hi, 2):.1f} ms of {n} "
                    f"sessions from the same {level}: +{excess:.0f} ms ≈ "
                    f"{excess * KM_PER_MS_RTT:.0f} km farther than its neighbours"
                )
            used = level
            break
        return {"levels": levels, "used": used}

    def _explain_vantages(
        self, sess: Session, components: dict[str, float], reasons: list[str],
        disks: list[tuple[float, float, float]],
    ) -> dict[str, Any]:
        """The probes' RTT disks (and ``disks`` filled for the feasible region)."""
        probes = sess.probes
        if not probes:
            return {"verdict": "no probes"}
        geo = sess.geo
        slack = PRECISION_SLACK_KM.get(geo.precision, 1000.0)
        rows: list[dict[str, Any]] = []
        for i in range(0, len(probes), 4):
            vantage, method, ms = probes[i], probes[i + 1], probes[i + 2]
            v = self.server_of(vantage)
            if v is None:
                rows.append({"vantage": vantage, "verdict": "unknown vantage"})
                continue
            radius = ms * KM_PER_MS_RTT
            disks.append((v.lat, v.lon, radius))
            row: dict[str, Any] = {"vantage": vantage, "method": method,
                                   "rtt_ms": round(ms, 2), "radius_km": round(radius)}
            if geo.lat is not None and geo.lon is not None:
                d = self.geometry.km(v, geo.lat, geo.lon)
                over = d - radius - slack
                row.update(distance_km=round(d), inside=over <= 0)
                if over > 0:
                    row["violation_km"] = round(over)
            rows.append(row)
        violated = [r["vantage"] for r in rows if r.get("inside") is False]
        if "vantage" in components:
            reasons.append(
                f"claimed location lies {sess.worst_km:.0f} km outside the RTT disk of "
                f"{', '.join(violated)}: the client cannot be where its address says"
            )
        return {"disks": rows, "verdict": "violated" if violated else "consistent",
                "violated": violated}
