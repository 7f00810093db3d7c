"""What a farm group is worth and how it is told: features, score, alert, member flags.

The alert carries the members (account, login time, address, route, relay), the
name template (:func:`~pathsentry.detectors.farm.families.family`) and the names'
n-gram similarity, the exits (AS and the /24s used), the route, the RTT band (median,
range, robust spread, the noise of a login's minimum and the learned tolerance), the timing
(span, median gap, the background's expected count over the group's span and the
Poisson probability of the burst), and in a hosting range the exit hosts (addresses,
accounts on an address another account used, beside the learned share of the exit's
other accounts that did).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from pathsentry.detectors.farm.background import burst_p, expected
from pathsentry.detectors.farm.exits import address_share, band, min_noise, on_shared_addresses
from pathsentry.detectors.farm.families import family, serial_regularity
from pathsentry.detectors.farm.hops import hop_evidence, judge
from pathsentry.detectors.farm.lines import is_line, line_evidence
from pathsentry.detectors.farm.machines import cycling_share, room_machine
from pathsentry.detectors.farm.model import (
    _NET_,
    HOP,
    NET,
    ROUTE,
    TPL,
    FarmSettings,
    Group,
    Member,
    Partition,
    _iso,
    _median_gap,
    _top,
    _utc,
)
from pathsentry.detectors.farm.ranges import on_unused, others_of, unused_share
from pathsentry.detectors.farm.suspicion import excess_prior, rtt_suspected, suspected
from pathsentry.detectors.names import cohesion, consecutive_runs
from pathsentry.detectors.physics import MAD_SIGMA, mad
from pathsentry.schemas import Alert, FlaggedEvent, severity_for

__all__ = ["alert", "evidence_accounts", "features", "flag", "group_span", "machine_evidence",
           "origin", "score"]


def evidence_accounts(ms: Iterable[Member]) -> int:
    """Members with relay or foreign-route evidence."""
    return sum(x.evidence for x in ms)


def group_span(tss: list[float], s: FarmSettings) -> float:
    """The span a burst is judged over: the members' own time span, at least ``burst_s``
    and at most ``window_s``."""
    return min(s.window_s, max(s.burst_s, tss[-1] - tss[0])) if tss else s.burst_s


def features(part: Partition, members: Iterable[Member], s: FarmSettings) -> dict[str, Any]:
    """The numbers the score and the evidence are made of."""
    ms = list(members)
    n = len(ms)
    tss = sorted([x.ts for x in ms])
    clusters = Counter([x.cluster for x in ms])
    if part.kind == HOP:  # the machines that hop, against the learned share (:mod:`.hops`)
        j = judge(part, ms, s)
        k, lam, p = j.machines, j.expected, j.p
    else:
        lam = expected(part, n, group_span(tss, s), s)
        k, p = n, burst_p(n, lam)
    return {
        "size": n,
        "span_s": tss[-1] - tss[0],
        "median_gap_s": _median_gap(tss),
        "expected_in_window": round(lam, 2),
        "burst_ratio": round(k / max(1.0, lam), 2),
        "burst_p": p,
        "serial_regularity": serial_regularity([x.serial_no for x in ms]),
        "name_cohesion": round(cohesion([x.account for x in ms]), 3),
        "largest_name_cluster": clusters.most_common(1)[0][1] / n,
        "evidence_accounts": evidence_accounts(ms),
        "relay_share": sum(x.relay for x in ms) / n,
        "route_share": Counter([x.sig for x in ms if x.sig]).most_common(1)[0][1] / n
        if any(x.sig for x in ms)
        else 0.0,
        "exit_share": Counter([x.exit for x in ms]).most_common(1)[0][1] / n,
    }


def score(kind: str, f: Mapping[str, Any]) -> float:
    """0-1: size, name regularity, how far the burst stands out, shared relay/route/exit."""
    size = 1.0 - math.exp(-(f["size"] - 1) / 8.0)
    if kind == TPL:
        names = max(f["serial_regularity"], f["name_cohesion"])
    else:
        names = max(f["name_cohesion"], f["largest_name_cluster"])
    burst = min(1.0, -math.log10(max(f["burst_p"], 1e-12)) / 12.0)
    shared = max(f["route_share"], f["relay_share"], 0.5 * f["exit_share"])
    out = float(0.25 * size + 0.2 * names + 0.2 * burst + 0.35 * shared)
    return round(min(1.0, max(0.0, out)), 3)


def _exits(ms: list[Member], k: int) -> list[dict[str, Any]]:
    """The exits (AS) with the /24s each used and how many accounts came through it."""
    by_exit: dict[str, Counter[str]] = {}
    for x in ms:
        by_exit.setdefault(x.exit, Counter())[x.prefix] += 1
    rows = sorted(by_exit.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))[:k]
    return [{"exit": e, "accounts": sum(c.values()), "prefixes": sorted(c)[:k]} for e, c in rows]


def alert(part: Partition, g: Group, feats: dict[str, Any], s: FarmSettings,
          detector: str) -> Alert:
    """The ``farm_group`` alert of ``g`` at its current version."""
    k = s.max_evidence_items
    ms = sorted(g.members.values(), key=lambda x: (x.ts, x.account))
    templates = Counter([family(x.account)[2] for x in ms])
    serials = [x.serial_no for x in ms if x.serial_no is not None]
    paths = Counter([">".join(x.country_path) for x in ms if x.country_path])
    relays = [x for x in ms if x.relay]
    evidence: dict[str, Any] = {
        "partition": g.key,
        "pattern": g.pattern,
        "template": templates.most_common(1)[0][0],
        "templates": _top(templates, k),
        "similarity": feats["name_cohesion"],
        "serial_runs": [list(r) for r in consecutive_runs(serials, 3)][:k],
        "name_clusters": _top(Counter([x.cluster for x in ms]), k),
        "members": [
            {"account": x.account, "ts": _iso(x.ts), "src_ip": x.src_ip,
             "route": ">".join(x.country_path) or None, "relay": x.relay}
            for x in ms[: s.max_group_members]
        ],
        "first_seen": _iso(g.first_seen),
        "last_seen": _iso(g.last_seen),
        "exits": _exits(ms, k),
        "prefixes": _top(Counter([x.prefix for x in ms]), k),
        "route_signatures": _top(Counter([x.sig for x in ms if x.sig]), k),
        "country_paths": _top(paths, k),
        "relay": {
            "flagged_accounts": len(relays),
            "exits": _top(Counter([x.prefix for x in relays]), k),
            "max_gap_ms": max((x.relay_gap_ms for x in relays if x.relay_gap_ms), default=None),
            "max_excess_ms": max(
                (x.relay_excess_ms for x in relays if x.relay_excess_ms), default=None
            ),
        },
        "origin": origin(ms, s),
        "timing": {k2: feats[k2] for k2 in ("span_s", "median_gap_s", "expected_in_window",
                                            "burst_ratio", "burst_p")},
        "route": paths.most_common(1)[0][0] if paths else None,
        "names": {k2: feats[k2] for k2 in ("serial_regularity", "name_cohesion",
                                           "largest_name_cluster")},
    }
    if part.kind == TPL:  # relay scores beside the share the class's background shows
        _, scored, share, tail_p = suspected(part.pool, ms, s.max_burst_p)
        evidence["relay"].update({"scored_accounts": scored,
                                  "learned_scored_share": share, "scored_tail_p": tail_p})
        _, high, limit, share, tail_p = rtt_suspected(
            part.pool, ms, s.excess_quantile, s.max_burst_p,
            excess_prior(s.excess_prior_sd_ms, s.excess_prior_logins))
        evidence["relay"].update({"excess_tail_accounts": high,
                                  "learned_excess_threshold_ms": limit,
                                  "learned_excess_tail_share": share,
                                  "excess_tail_p": tail_p})
    if g.pattern.startswith(_NET_ + "AS"):  # a hosting range: its hosts beside its users'
        evidence["exit_hosts"] = {
            "addresses": len({x.src_ip for x in ms}),
            "accounts_on_shared_addresses": len(on_shared_addresses(ms)),
            "learned_shared_address_share": round(
                address_share(part, g.pattern, {x.sid for x in ms}), 3)}
        others = others_of(part, g.pattern, {x.sid for x in ms})
        evidence["exit_prefixes"] = {  # /24s the exit's other users did not use (:mod:`.ranges`)
            "accounts_on_unused_prefixes": len(on_unused(ms, others)),
            "other_accounts": len(others),
            "learned_unused_prefix_share": round(unused_share(others), 3)}
    if part.kind == ROUTE or (part.kind == NET and g.pattern.startswith(_NET_ + "AS")):
        # a name-less room's machines (:mod:`.machines`)
        evidence["machines"] = machine_evidence(part, ms, s)
    tpl = templates.most_common(1)[0][0] if part.kind == TPL else None
    what = f"template {tpl}" if tpl else f"shared {g.pattern.partition(':')[0]} pattern"
    if part.kind == HOP:
        hopping = evidence["machines_across_lines"] = hop_evidence(part, ms, s)
        what = (f"{hopping['machines']} machines each on home lines of up to "
                f"{hopping['prefixes_per_machine_max']} /24s (learned share of machines that "
                f"do {hopping['learned_hop_share']})")
    if is_line(g.pattern):
        lines = evidence["home_lines"] = line_evidence(part, ms, s)
        what = (f"up to {lines['accounts_per_address'][0][1]} accounts per home line "
                f"(learned limit {lines['learned_limit_accounts_per_address']})")
    where = paths.most_common(1)[0][0] if paths else g.pattern.partition(":")[2]
    summary = (
        f"{len(ms)} accounts with {what} logged in within {feats['span_s'] / 60:.0f} min "
        f"via {where}"
    )
    return Alert(
        alert_id=g.gid,
        ts=_utc(g.last_seen),
        kind="farm_group",
        severity=severity_for(g.score),
        score=g.score,
        subject={"group_id": g.gid, "key": g.key, "pattern": g.pattern, "template": tpl},
        accounts=sorted(x.account for x in ms),
        event_ids=[x.flag_event_id for x in ms],
        evidence=evidence,
        summary=summary,
        detector=detector,
        first_seen=_utc(g.first_seen),
        last_seen=_utc(g.last_seen),
        version=g.version,
    )


def machine_evidence(part: Partition, ms: list[Member], s: FarmSettings) -> dict[str, Any]:
    """A name-less room's machines: how many, the most accounts one carried in the group,
    those that carried three accounts or more in the group or in the partition beside
    the learned share of its other machines that did (:func:`~.machines.cycling_share`)."""
    per = Counter([x.device for x in ms if x.device])
    cycling = {x.device for x in ms if x.device and (per[x.device] >= 3 or room_machine(part, x))}
    return {"machines": len(per),
            "accounts_per_machine_max": max(per.values(), default=0),
            "machines_with_three_accounts": len(cycling),
            "learned_share_with_three_accounts": round(cycling_share(part, s, cycling), 4)}


def origin(ms: list[Member], s: FarmSettings) -> dict[str, Any]:
    """Same place, same relay: min app RTT spread, servers, devices shared by accounts."""
    rtts = sorted(x.rtt for x in ms if x.rtt is not None)
    devices = Counter([x.device for x in ms if x.device])
    noise = min_noise(ms)
    learned = band(ms, s)
    return {
        "median_app_rtt_ms": rtts[len(rtts) // 2] if rtts else None,
        "app_rtt_range_ms": [rtts[0], rtts[-1]] if rtts else None,
        "app_rtt_spread_ms": round(mad(rtts) * MAD_SIGMA, 2) if rtts else None,
        "min_rtt_noise_ms": round(noise, 2) if noise is not None else None,
        "band_tolerance_ms": round(learned.tolerance, 2),
        "servers": _top(Counter([x.server for x in ms if x.server]),
                        s.max_evidence_items),
        "devices_shared_by_accounts": sum(1 for c in devices.values() if c > 1),
    }


def flag(g: Group, m: Member, alert: Alert | None, tpl: str | None, detector: str
         ) -> FlaggedEvent:
    """The ``farm_member`` flag of ``m``; ``tpl`` is ``g.template`` (once per batch)."""
    reasons = [f"farm group of {len(g.members)} accounts ({g.pattern})"]
    if tpl:
        reasons.append(f"name template {tpl}")
    if m.sig:
        reasons.append(f"foreign-origin route {'>'.join(m.country_path) or m.sig}")
    if m.relay:
        reasons.append("relayed connection")
    return FlaggedEvent(
        event_id=m.flag_event_id,
        ts=_utc(m.ts if m.flag_ts is None else m.flag_ts),
        kind="farm_member",
        account=m.account,
        session_id=None if m.sid.startswith("acct:") else m.sid,
        src_ip=m.src_ip,
        country=m.country,
        asn=m.asn,
        score=g.score,
        reasons=reasons,
        evidence={"group_id": g.gid, "partition": g.key, "pattern": g.pattern,
                  "template": tpl, "group_size": len(g.members),
                  "alert_version": g.version if alert is None else alert.version},
        alert_id=g.gid,
        detector=detector,
    )

# ------------------------------------------------------------- housekeeping
