"""Scoring detector output against a world's truth (pure functions, no I/O).

Units per detector: ``vpn_relay`` scores login events, ``route_anomaly`` traceroute
events, ``path_injection`` http_probe events (a flag's ``event_id`` names the event),
``farm_member`` accounts (flagged accounts plus the accounts of ``farm_group``
alerts), ``injection_cell`` alerts (right when the subject's ASN, ports and hours lie
inside a planted cell). An event is a positive when its truth ``expect`` lists the
flag kind, a negative when it is benign; attack events a detector is not meant to
see are neutral (counted neither way). A farm group is found when one
``farm_group`` alert holds at least 80 % of its members.

>>> from datetime import datetime, timezone
>>> from pathsentry.sim.truth import EventTruth, Truth
>>> t = Truth(hours=1.0)
>>> t.events = {"a": EventTruth("a", "login", "l4_relay", "l4_relay", ("vpn_relay",), "x"),
...             "b": EventTruth("b", "login", "benign", "pc_bang", (), "y")}
>>> ts = datetime(2026, 3, 2, tzinfo=timezone.utc)
>>> s = score_events(t, [flag("a", "vpn_relay", ts), flag("b", "vpn_relay", ts)], "vpn_relay")
>>> s["tp"], s["fp"], s["precision"], s["recall"], s["fp_rate"]["pc_bang"]["rate"]
(1, 1, 0.5, 1.0, 1.0)
"""

from __future__ import annotations

import ipaddress
import math
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pathsentry.schemas import Alert, FlaggedEvent
from pathsentry.sim.model import ATTACK_LABELS, FARM_LABELS, RELAY_LABELS
from pathsentry.sim.truth import CellTruth, Truth

__all__ = [
    "EVENT_DETECTORS",
    "GROUP_FOUND_SHARE",
    "Timeline",
    "cell_matches",
    "flag",
    "forged_sources",
    "parse_hours",
    "score_all",
    "score_cells",
    "score_crosscheck",
    "score_events",
    "score_farms",
]

#: flag kind -> the event kind it is scored on.
EVENT_DETECTORS: dict[str, str] = {
    "vpn_relay": "login", "route_anomaly": "traceroute", "path_injection": "http_probe",
    "account_takeover": "login",
}
#: flag kind -> alert kind counted for "alerts per hour".
ALERT_KIND = {"vpn_relay": "vpn_relay", "route_anomaly": "route_anomaly",
              "farm_member": "farm_group", "injection_cell": "injection_cell",
              "account_takeover": "account_takeover"}
GROUP_FOUND_SHARE = 0.8

#: alert id -> its versions as emitted: (event time of the emission, accounts).
Timeline = Mapping[str, Sequence[tuple[float, Sequence[str]]]]


def _versions(alert: Alert, timeline: Timeline | None) -> Sequence[tuple[float, Sequence[str]]]:
    """When each version of ``alert`` was emitted; without a timeline, its last version."""
    if timeline and alert.alert_id in timeline:
        return timeline[alert.alert_id]
    return [(alert.ts.timestamp(), alert.accounts)]


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _ttd(first_pos: dict[str, float], first_hit: dict[str, float]) -> dict[str, Any]:
    delays = sorted(max(0.0, first_hit[k] - first_pos[k]) for k in first_hit if k in first_pos)
    return {"entities": len(first_pos), "detected": len(delays),
            "median_s": round(statistics.median(delays), 1) if delays else None,
            "max_s": round(delays[-1], 1) if delays else None}


def flag(event_id: str, kind: str, ts: datetime, account: str | None = None) -> FlaggedEvent:
    """A minimal flagged event (for hand-built cases and tests)."""
    return FlaggedEvent(event_id=event_id, ts=ts, kind=kind, account=account,
                        src_ip="192.0.2.1", score=1.0, reasons=["test"],
                        evidence={}, detector="test")


def _alerts_per_hour(alerts: Sequence[Alert], kind: str | None, hours: float) -> float | None:
    if kind is None or hours <= 0:
        return None
    return round(sum(1 for a in alerts if a.kind == kind) / hours, 3)


def score_events(truth: Truth, flags: Iterable[FlaggedEvent], flag_kind: str,
                 alerts: Sequence[Alert] = ()) -> dict[str, Any]:
    """Precision, recall, recall per attack class, FP rate per hard-negative class, TTD."""
    unit = EVENT_DETECTORS[flag_kind]
    flagged: dict[str, float] = {}
    off_unit = 0
    for f in flags:
        if f.kind != flag_kind:
            continue
        ev = truth.events.get(f.event_id)
        if ev is None or ev.kind != unit:
            off_unit += 1
            continue
        flagged.setdefault(f.event_id, ev.ts)
    tp = fp = fn = neutral = 0
    by_class: dict[str, Counter[str]] = defaultdict(Counter)
    negatives: dict[str, Counter[str]] = defaultdict(Counter)
    first_pos: dict[str, float] = {}
    first_hit: dict[str, float] = {}
    for ev in truth.events.values():
        if ev.kind != unit:
            continue
        hit = ev.event_id in flagged
        if flag_kind in ev.expect:
            entity = ev.account if flag_kind != "path_injection" and ev.account else ev.label
            first_pos[entity] = min(first_pos.get(entity, ev.ts), ev.ts)
            for key in {ev.label, ev.klass}:  # the attack class, and its variant if it has one
                by_class[key]["positives"] += 1
                by_class[key]["found"] += int(hit)
            if hit:
                tp += 1
                first_hit[entity] = min(first_hit.get(entity, ev.ts), ev.ts)
            else:
                fn += 1
        elif ev.label == "benign":
            negatives[ev.klass]["negatives"] += 1
            negatives[ev.klass]["flagged"] += int(hit)
            fp += int(hit)
        elif hit:
            neutral += 1
    return {
        "detector": flag_kind, "unit": unit, "positives": tp + fn, "flagged": len(flagged),
        "tp": tp, "fp": fp, "fn": fn, "neutral_flags": neutral, "off_unit_flags": off_unit,
        "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
        "by_class": {k: {**v, "recall": _ratio(v["found"], v["positives"])}
                     for k, v in sorted(by_class.items())},
        "fp_rate": {k: {"negatives": v["negatives"], "flagged": v["flagged"],
                        "rate": _ratio(v["flagged"], v["negatives"])}
                    for k, v in sorted(negatives.items())},
        "alerts_per_hour": _alerts_per_hour(alerts, ALERT_KIND.get(flag_kind), truth.hours),
        "ttd": _ttd(first_pos, first_hit),
    }


def score_farms(truth: Truth, flags: Iterable[FlaggedEvent], alerts: Sequence[Alert],
                timeline: Timeline | None = None) -> dict[str, Any]:
    """Per-account farm membership and per-group discovery.

    A group's time to detect runs from its fifth member's (successful) login to the
    first emitted alert version holding at least five of its members (80 % of a smaller
    group); ``to_80pct_s`` runs to the first version holding >= 80 % of them,
    which also waits for the members to log in.

    Only accounts that tried to log in during the world are scored (an account the world
    never showed can be neither found nor wrongly flagged), and a group counts as
    planted once at least five of its members logged in successfully (a failed login
    opens no session, so it makes nobody a member: a world's truth without a fifth
    successful login, ``fifth_login_ts``, plants no group).
    """
    seen = {e.account for e in truth.events.values() if e.kind == "login" and e.account}
    if not seen:  # a truth without the world's logins (hand-built): every account counts
        seen = set(truth.accounts)
    groups_alerts = [a for a in alerts if a.kind == "farm_group"]
    predicted = {f.account for f in flags if f.kind == "farm_member" and f.account}
    for a in groups_alerts:
        predicted.update(a.accounts)
    tp = fp = fn = 0
    by_class: dict[str, Counter[str]] = defaultdict(Counter)
    negatives: dict[str, Counter[str]] = defaultdict(Counter)
    for acct in truth.accounts.values():
        hit = acct.account in predicted
        if acct.account not in seen and not hit:
            continue
        if acct.label in FARM_LABELS:
            by_class[acct.label]["positives"] += 1
            by_class[acct.label]["found"] += int(hit)
            tp, fn = tp + int(hit), fn + int(not hit)
        else:
            negatives[acct.klass]["negatives"] += 1
            negatives[acct.klass]["flagged"] += int(hit)
            fp += int(hit)
    unknown = len(predicted - truth.accounts.keys())
    found: dict[str, dict[str, Any]] = {}
    delays: list[float] = []
    for g in truth.groups.values():
        members = set(g.members) & seen
        if len(members) < 5 or (g.first_login_ts is not None and g.fifth_login_ts is None):
            continue
        best, best_share = None, 0.0
        for a in groups_alerts:
            share = len(members & set(a.accounts)) / len(members) if members else 0.0
            if share > best_share or (share == best_share and best is not None
                                      and a.first_seen < best.first_seen):
                best, best_share = a, share
        is_found = best is not None and best_share >= GROUP_FOUND_SHARE
        ttd = to_80 = None
        if is_found and g.fifth_login_ts is not None:
            versions = [(ts, len(members & set(accts))) for a in groups_alerts
                        for ts, accts in _versions(a, timeline)]
            when = min(ts for ts, n in versions
                       if n >= min(5, math.ceil(GROUP_FOUND_SHARE * len(members))))
            ttd = round(when - g.fifth_login_ts, 1)
            to_80 = round(min(ts for ts, n in versions if n >= GROUP_FOUND_SHARE * len(members))
                          - g.fifth_login_ts, 1)
            delays.append(ttd)
        found[g.group_id] = {"label": g.label, "members": len(members),
                             "best_share": round(best_share, 3), "found": is_found,
                             "alert_id": best.alert_id if best else None,
                             "ttd_from_fifth_login_s": ttd, "to_80pct_s": to_80}
    group_of = {m: g.group_id for g in truth.groups.values() for m in g.members}
    pure = 0
    for a in groups_alerts:
        counts = Counter(group_of.get(m) for m in a.accounts)
        top, n = counts.most_common(1)[0] if counts else (None, 0)
        pure += int(top is not None and n * 2 > len(a.accounts))
    per_label: dict[str, Counter[str]] = defaultdict(Counter)
    for info in found.values():
        per_label[info["label"]]["groups"] += 1
        per_label[info["label"]]["found"] += int(info["found"])
    n_found = sum(int(i["found"]) for i in found.values())
    return {
        "detector": "farm_member", "unit": "account", "positives": tp + fn,
        "flagged": len(predicted), "tp": tp, "fp": fp, "fn": fn, "unknown_accounts": unknown,
        "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
        "by_class": {k: {**v, "recall": _ratio(v["found"], v["positives"])}
                     for k, v in sorted(by_class.items())},
        "fp_rate": {k: {"negatives": v["negatives"], "flagged": v["flagged"],
                        "rate": _ratio(v["flagged"], v["negatives"])}
                    for k, v in sorted(negatives.items())},
        "alerts_per_hour": _alerts_per_hour(alerts, "farm_group", truth.hours),
        "groups": {
            "planted": len(found), "found": n_found, "recall": _ratio(n_found, len(found)),
            "alerts": len(groups_alerts), "pure_alerts": pure,
            "precision": _ratio(pure, len(groups_alerts)),
            "by_label": {k: {**v, "recall": _ratio(v["found"], v["groups"])}
                         for k, v in sorted(per_label.items())},
            "median_ttd_from_fifth_login_s": round(statistics.median(delays), 1) if delays else None,
            "detail": found,
        },
    }


_HOURS_RANGE = re.compile(r"^\s*(\d{1,2})\s*[-–~]\s*(\d{1,2})\s*$")


def parse_hours(value: Any) -> set[int] | None:
    """Hours of day from a list, a single hour, or ``"09-18"`` (end exclusive).

    >>> sorted(parse_hours("09-18")) == list(range(9, 18)), parse_hours([9, 10]), parse_hours(None)
    (True, {9, 10}, None)
    """
    if value is None:
        return None
    if isinstance(value, int):
        return {value}
    if isinstance(value, str):
        m = _HOURS_RANGE.match(value)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            return set(range(lo, hi)) if lo < hi else set(range(lo, 24)) | set(range(hi))
        return {int(value)} if value.strip().isdigit() else None
    if isinstance(value, dict):
        return parse_hours(f"{value.get('start', value.get('from'))}-{value.get('end', value.get('to'))}")
    if isinstance(value, (list, tuple)):
        out: set[int] = set()
        for v in value:
            sub = parse_hours(v)
            if sub is None:
                return None
            out |= sub
        return out
    return None


def _as_int(v: Any) -> int | None:
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.upper().removeprefix("AS").isdigit():
        return int(v.upper().removeprefix("AS"))
    return None


def _as_list(v: Any) -> list[Any]:
    if v is None:
        return []
    return list(v) if isinstance(v, (list, tuple, set)) else [v]


def cell_matches(subject: dict[str, Any], cell: CellTruth) -> bool:
    """Does an ``injection_cell`` alert subject describe (part of) the planted cell?

    >>> c = CellTruth(4766, ("14.32.0.0/24",), (80, 8080), tuple(range(9, 18)))
    >>> cell_matches({"asn": 4766, "ports": [80], "hours": "09-18"}, c)
    True
    >>> cell_matches({"asn": 4766, "ports": [443]}, c), cell_matches({"asn": 9318, "port": 80}, c)
    (False, False)
    """
    if _as_int(subject.get("asn")) != cell.asn:
        return False
    ports = {int(p) for p in _as_list(subject.get("ports")) + _as_list(subject.get("port"))}
    if not ports or not ports <= set(cell.ports):
        return False
    hours = parse_hours(subject.get("hours", subject.get("hour")))
    if hours is not None and not (hours and hours <= set(cell.hours)):
        return False
    prefixes = _as_list(subject.get("prefixes")) + _as_list(subject.get("prefix"))
    return not prefixes or any(p in cell.prefixes for p in prefixes)


def forged_sources(truth: Truth, probes: Iterable[Mapping[str, Any]]) -> dict[int, int]:
    """Per planted cell's ASN, how many independent sources its forged answers came from,
    counted as the cell detector counts them: the account of a client report, else the
    address; an address from which an account reported a forged answer counts as that
    account (the same subscriber line, not another witness). ``probes`` are the world's
    ``http_probe`` events (those the truth labels ``injection`` are counted).

    >>> from pathsentry.sim.truth import EventTruth
    >>> t = Truth(cells=[CellTruth(4766, ("14.32.0.0/24",), (80,), (9,))])
    >>> t.events = {e: EventTruth(e, "http_probe", "injection", "injection", (), a)
    ...             for e, a in (("1", "kim"), ("2", None), ("3", None))}
    >>> forged_sources(t, [{"event_id": "1", "src_ip": "14.32.0.7", "reporter": "client"},
    ...                    {"event_id": "2", "src_ip": "14.32.0.7", "reporter": "sensor"},
    ...                    {"event_id": "3", "src_ip": "14.32.0.8"}])
    {4766: 2}
    """
    nets = [(ipaddress.ip_network(p, strict=False), c.asn) for c in truth.cells for p in c.prefixes]
    who: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for ev in probes:
        t = truth.events.get(str(ev.get("event_id")))
        if t is None or t.label != "injection":
            continue
        ip = ipaddress.ip_address(str(ev["src_ip"]))
        asn = next((a for net, a in nets if ip in net), None)
        if asn is None:
            continue
        client = ev.get("reporter", "client") == "client" and t.account
        who[asn].append(("ip:" + str(ip), "acct:" + t.account if client and t.account else ""))
    out: dict[int, int] = {}
    for asn, pairs in who.items():
        owner = {addr: acct for addr, acct in pairs if acct}
        out[asn] = len({acct or owner.get(addr, addr) for addr, acct in pairs})
    return out


def score_cells(truth: Truth, alerts: Sequence[Alert], timeline: Timeline | None = None,
                sources: Mapping[int, int] | None = None, min_sources: int = 0
                ) -> dict[str, Any]:
    """Injection-cell alerts: right when they match a planted cell; TTD from the first
    forgery. With ``sources`` (:func:`forged_sources`), a planted cell is *nameable* when
    its forged answers came from at least ``min_sources`` independent sources (the cell
    detector's ``min_suspect_clients``): fewer could be as many colluding accounts framing
    an ISP, and no detector that resists framing names them. ``confirmed``: the planted
    cells named by an alert at the confirmed level (not ``suspected``, see
    :mod:`pathsentry.detectors.injection_cells`)."""
    cells = [a for a in alerts if a.kind == "injection_cell"]
    first_injected = min((e.ts for e in truth.events.values() if e.label == "injection"),
                         default=None)
    right = [a for a in cells if any(cell_matches(a.subject, c) for c in truth.cells)]
    named = [c for c in truth.cells if any(cell_matches(a.subject, c) for a in cells)]
    found = len(named)
    sure = [c for c in truth.cells if any(cell_matches(a.subject, c) for a in cells
                                          if a.evidence.get("level") != "suspected")]
    nameable = [c for c in truth.cells
                if sources is not None and sources.get(c.asn, 0) >= min_sources]
    ttd = None
    if right and first_injected is not None:
        ttd = round(min(_versions(a, timeline)[0][0] for a in right) - first_injected, 1)
    return {
        "detector": "injection_cell", "unit": "alert", "positives": len(truth.cells),
        "flagged": len(cells), "tp": len(right), "fp": len(cells) - len(right),
        "fn": len(truth.cells) - found, "precision": _ratio(len(right), len(cells)),
        "recall": _ratio(found, len(truth.cells)),
        "by_class": {"injection": {"positives": len(truth.cells), "found": found,
                                   "recall": _ratio(found, len(truth.cells))}},
        "nameable": {"planted": len(nameable), "found": sum(c in named for c in nameable),
                     "min_sources": min_sources, "measured": sources is not None},
        "confirmed": {"planted": len(truth.cells), "found": len(sure)},
        "missed": [{"asn": c.asn, "sources": (sources or {}).get(c.asn, 0)}
                   for c in truth.cells if c not in named],
        "fp_rate": {},
        "alerts_per_hour": _alerts_per_hour(alerts, "injection_cell", truth.hours),
        "ttd": {"entities": len(truth.cells), "detected": found, "median_s": ttd, "max_s": ttd},
        "subjects": [a.subject for a in cells][:20],
    }


#: the score from which an alert counts as high severity
HIGH_SCORE = 0.75


def score_crosscheck(truth: Truth, alerts: Sequence[Alert]) -> dict[str, Any]:
    """What the cross-checks added to ``farm_group`` and ``vpn_relay`` alerts (last
    versions): how many carry the cross-check, with labelled members, with members that
    dealt with labelled accounts, and the precision of the high-severity alerts (score
    >= 0.75) on the detector's own score (``high_before``) and after the cross-check
    (``high_after``). A farm alert is right when most of its accounts are farm members,
    a relay alert when its account's logins are meant to be flagged ``vpn_relay`` (relay
    users, farms behind relays).

    >>> from datetime import datetime, timezone
    >>> from pathsentry.sim.truth import AccountTruth
    >>> t = Truth(hours=1.0)
    >>> t.accounts = {"f1": AccountTruth("f1", "l4_relay", "l4_relay"),
    ...               "b1": AccountTruth("b1", "benign", "pc_bang")}
    >>> ts = datetime(2026, 3, 2, tzinfo=timezone.utc)
    >>> def al(acc, s0, s1):
    ...     return Alert(alert_id=acc, ts=ts, kind="vpn_relay", severity="low", score=s1,
    ...                  subject={}, accounts=[acc], detector="latency", first_seen=ts, last_seen=ts,
    ...                  evidence={"crosscheck": {"score": {"detector": s0, "final": s1},
    ...                            "labelled_members": int(s1 > s0), "traded_with_labelled": 0}})
    >>> c = score_crosscheck(t, [al("f1", 0.7, 0.8), al("b1", 0.8, 0.4)])["vpn_relay"]
    >>> c["high_before"], c["high_after"]
    ({'tp': 0, 'fp': 1}, {'tp': 1, 'fp': 0})
    """
    relayed = {e.account for e in truth.events.values() if "vpn_relay" in e.expect and e.account}
    farm = {a.account for a in truth.accounts.values() if a.label in FARM_LABELS}
    bad = {"farm_group": farm, "vpn_relay": relayed or {
        a.account for a in truth.accounts.values() if a.label in RELAY_LABELS}}
    out: dict[str, Any] = {}
    for kind, members in bad.items():
        n: Counter[str] = Counter()
        high = {"high_before": Counter[str](), "high_after": Counter[str]()}
        for a in alerts:
            if a.kind != kind:
                continue
            n["alerts"] += 1
            x = a.evidence.get("crosscheck")
            if not isinstance(x, dict):
                continue
            n["with_crosscheck"] += 1
            n["with_labelled"] += int(x.get("labelled_members", 0) > 0)
            n["with_traded"] += int(x.get("traded_with_labelled", 0) > 0)
            right = sum(1 for acc in a.accounts if acc in members)
            key = "tp" if right * 2 > len(a.accounts) else "fp"
            if float(x.get("score", {}).get("detector", a.score)) >= HIGH_SCORE:
                high["high_before"][key] += 1
            if a.score >= HIGH_SCORE:
                high["high_after"][key] += 1
        out[kind] = {**{k: n[k] for k in ("alerts", "with_crosscheck", "with_labelled",
                                          "with_traded")},
                     **{k: {"tp": c["tp"], "fp": c["fp"]} for k, c in high.items()}}
    return out


def score_all(truth: Truth, flags: Sequence[FlaggedEvent], alerts: Sequence[Alert],
              timeline: Timeline | None = None, sources: Mapping[int, int] | None = None,
              min_sources: int = 0) -> dict[str, Any]:
    """Every detector's score plus the attack-class recall and hard-negative FP tables
    (``sources``, ``min_sources``: see :func:`score_cells`)."""
    detectors: dict[str, dict[str, Any]] = {
        kind: score_events(truth, flags, kind, alerts) for kind in EVENT_DETECTORS
    }
    detectors["farm_member"] = score_farms(truth, flags, alerts, timeline)
    detectors["injection_cell"] = score_cells(truth, alerts, timeline, sources, min_sources)
    attack: dict[str, dict[str, float | None]] = {}
    for label in ATTACK_LABELS:
        row = {name: d["by_class"][label]["recall"] for name, d in detectors.items()
               if label in d["by_class"]}
        if row:
            attack[label] = row
    hard: dict[str, dict[str, float | None]] = defaultdict(dict)
    for name, d in detectors.items():
        for klass, v in d["fp_rate"].items():
            if klass not in ATTACK_LABELS:
                hard[klass][name] = v["rate"]
    return {"hours": truth.hours, "detectors": detectors, "attack_recall": attack,
            "hard_negative_fpr": dict(sorted(hard.items())),
            "crosscheck": score_crosscheck(truth, alerts)}
