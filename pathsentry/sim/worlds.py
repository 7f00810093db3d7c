"""``pathsentry evaluate --worlds N``: the detectors measured on many randomized worlds.

Each world ``seed, seed + 1, …`` draws its parameters with
:func:`pathsentry.sim.params.draw_params`, is simulated into a scratch directory,
replayed through the engine and scored (:func:`pathsentry.sim.evaluate.evaluate_world`).
Worlds run in parallel processes (``--jobs``, default one per core).

Every world gives the same compact metrics: per detector TP/FP/FN with precision and
recall, recall per attack class, false-positive rate per hard-negative class, farm
groups found per name family and pacing band, injection cells found and wrong. The
**pooled** block adds the counts of every world and recomputes the ratios; the
**worst** block holds, for every ratio, the worst world's value and seed (lowest
precision or recall, highest false-positive rate), so a failure can be replayed with
``pathsentry simulate --seed S --params random`` (the same seed draws the same world).

>>> a = {"detectors": {"x": {"tp": 9, "fp": 1, "fn": 0}}}
>>> b = {"detectors": {"x": {"tp": 1, "fp": 0, "fn": 1}}}
>>> pooled = pool([a, b])
>>> pooled["detectors"]["x"]["precision"], pooled["detectors"]["x"]["recall"]
(0.9091, 0.9091)
>>> worst([(1, with_ratios(a)), (2, with_ratios(b))])["detectors"]["x"]["recall"]
{'value': 0.5, 'seed': 2}
"""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pathsentry.sim.evaluate import fmt_cell, markdown_table
from pathsentry.sim.model import DEFAULT_START, WorldSpec
from pathsentry.sim.params import WorldParams, draw_params, with_overrun
from pathsentry.sim.truth import Truth

__all__ = [
    "evaluate_worlds",
    "exit_kind",
    "fit_params",
    "metrics_of",
    "pace_band",
    "pool",
    "render_worlds_markdown",
    "ttd_table",
    "with_ratios",
    "world_spec",
    "worst",
]

#: count pairs whose ratio is reported: numerator, denominator terms, ratio name, worse is…
_RATIOS: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("tp", ("tp", "fp"), "precision", "low"),
    ("tp", ("tp", "fn"), "recall", "low"),
    ("found", ("positives",), "recall", "low"),
    ("flagged", ("negatives",), "fpr", "high"),
    ("found", ("groups",), "recall", "low"),
    ("pure", ("alerts",), "precision", "low"),
    ("right", ("alerts",), "precision", "low"),
    ("found", ("planted",), "recall", "low"),
)


def world_spec(seed: int, accounts: int, hours: float, params: WorldParams,
               start: datetime | None = None) -> WorldSpec:
    """The spec of a world; a drawn world without ``start`` begins at its drawn hour.

    A drawn world too populous for ``accounts`` is fitted (:func:`fit_params`), so the
    spec's parameters are always those of the world that is built.
    """
    if start is None:
        start = DEFAULT_START + timedelta(hours=params.start_hour or 0)
    spec = WorldSpec(seed=seed, accounts=accounts, hours=hours, start=start, params=params)
    if params.name != "random":
        return spec
    from pathsentry.sim.plan import plan_world

    for fitted in fit_params(params):
        spec = replace(spec, params=fitted)
        try:
            plan_world(spec)
        except ValueError:
            continue
        return spec
    return spec


def fit_params(params: WorldParams) -> Iterable[WorldParams]:
    """``params`` and then ever smaller versions of it, for worlds of few accounts.

    Steps: as drawn; benign classes at most at their usual size and no crowds of
    popular stems; then a single injector and a single farm.
    """
    yield params
    params = replace(params, class_scale=tuple((k, min(v, 1.0)) for k, v in params.class_scale),
                     popular_stems=0)
    yield params
    yield replace(params, injectors=(params.injectors or ())[:1] or None,
                  farms=(params.farms or ())[:1] or None)


def pace_band(pace_s: Sequence[float] | None) -> str:
    """The pacing band of a farm from its seconds between member logins.

    >>> pace_band((3.0, 8.0)), pace_band(None), pace_band((90.0, 200.0))
    ('<15 s', '15-60 s', '>=60 s')
    """
    mean = 22.0 if not pace_s else (pace_s[0] + pace_s[1]) / 2
    return "<15 s" if mean < 15 else ("15-60 s" if mean < 60 else ">=60 s")


def _r(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def with_ratios(block: dict[str, Any]) -> dict[str, Any]:
    """``block`` with every ratio recomputed from its counts (recursively)."""
    out: dict[str, Any] = {k: with_ratios(v) if isinstance(v, dict) else v for k, v in block.items()}
    for num, dens, name, _ in _RATIOS:
        if num in out and all(d in out for d in dens) and all(isinstance(out[k], int) for k in (num, *dens)):
            out[name] = _r(out[num], sum(out[d] for d in dens))
    return out


def exit_kind(params: WorldParams | None, group_id: str) -> str | None:
    """Where a drawn world's farm ``group_id`` (``farm_serial-2``: the second drawn farm)
    leaves: ``residential`` proxies or a ``hosting`` range (``None``: not a drawn farm).

    >>> p = draw_params(5, 6.0)
    >>> exit_kind(p, "farm_serial-1") in ("residential", "hosting"), exit_kind(p, "x-99")
    (True, None)
    """
    farms = params.farms if params is not None else None
    number = group_id.rpartition("-")[2]
    if not farms or not number.isdigit() or not 0 < int(number) <= len(farms):
        return None
    return "residential" if farms[int(number) - 1].relay == "resi" else "hosting"


def metrics_of(report: dict[str, Any], truth: Truth,
               params: WorldParams | None = None) -> dict[str, Any]:
    """The compact, count-based metrics of one world's evaluation report (``params``: the
    drawn world's, for the farms' exit kinds)."""
    dets = report["detectors"]
    detectors = {name: {"tp": d["tp"], "fp": d["fp"], "fn": d["fn"]} for name, d in dets.items()}
    recall: dict[str, dict[str, Any]] = {}
    fpr: dict[str, dict[str, Any]] = {}
    for name, d in dets.items():
        for label, c in d["by_class"].items():
            recall.setdefault(label, {})[name] = {"positives": c["positives"], "found": c["found"]}
        for klass, c in d["fp_rate"].items():
            fpr.setdefault(klass, {})[name] = {"negatives": c["negatives"], "flagged": c["flagged"]}
    benign = {name: {"negatives": sum(c["negatives"] for c in d["fp_rate"].values()),
                     "flagged": sum(c["flagged"] for c in d["fp_rate"].values())}
              for name, d in dets.items() if d["fp_rate"]}
    farm = dets["farm_member"]["groups"]
    fam: dict[str, dict[str, int]] = {}
    pace: dict[str, dict[str, int]] = {}
    ttds: list[float] = []
    ttd_by: dict[str, dict[str, list[float]]] = {"family": {}, "pacing": {}, "exit": {}}
    for gid, info in farm["detail"].items():
        g = truth.groups.get(gid)
        ttd = info["ttd_from_fifth_login_s"]
        for by, key, table in (("family", g.family if g and g.family else "serial_end", fam),
                               ("pacing", pace_band(g.pace_s if g else None), pace)):
            row = table.setdefault(key, {"groups": 0, "found": 0})
            row["groups"] += 1
            row["found"] += int(info["found"])
            if ttd is not None:
                ttd_by[by].setdefault(key, []).append(float(ttd))
        where = exit_kind(params, gid)
        if where is not None and ttd is not None:
            ttd_by["exit"].setdefault(where, []).append(float(ttd))
        if ttd is not None:
            ttds.append(float(ttd))
    cells = dets["injection_cell"]
    return with_ratios({
        "detectors": detectors,
        "recall": recall,
        "fpr": fpr,
        "benign": benign,
        "farm_groups": {"planted": farm["planted"], "found": farm["found"], "alerts": farm["alerts"],
                        "pure": farm["pure_alerts"], "by_family": fam, "by_pacing": pace,
                        "ttd_from_fifth_login_s": sorted(ttds),
                        "ttd_by": {by: {k: sorted(v) for k, v in t.items()}
                                   for by, t in ttd_by.items()}},
        "cells": {"planted": cells["positives"], "found": cells["positives"] - cells["fn"],
                  "alerts": cells["flagged"], "right": cells["tp"],
                  "nameable": {**{k: cells["nameable"][k] for k in ("planted", "found")},
                               "min_sources": [cells["nameable"]["min_sources"]]},
                  "confirmed": dict(cells.get("confirmed", {"planted": 0, "found": 0})),
                  # seed, ASN and independent sources of each injector not named
                  "missed": [f"seed {truth.meta.get('seed')} AS{m['asn']}: {m['sources']}"
                             for m in cells.get("missed", [])]},
        "crosscheck": report.get("crosscheck", {}),
    })


def _add(into: dict[str, Any], block: dict[str, Any]) -> None:
    for k, v in block.items():
        if isinstance(v, dict):
            _add(into.setdefault(k, {}), v)
        elif isinstance(v, bool):
            continue
        elif isinstance(v, int):
            into[k] = into.get(k, 0) + v
        elif isinstance(v, list):
            into[k] = sorted([*into.get(k, []), *v])


def pool(metrics: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Every world's counts added up, ratios recomputed."""
    total: dict[str, Any] = {}
    for m in metrics:
        _add(total, m)
    return with_ratios(total)


def worst(per_world: Sequence[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """For every ratio, the worst world's value and its seed."""
    out: dict[str, Any] = {}

    def walk(block: dict[str, Any], seed: int, into: dict[str, Any]) -> None:
        for k, v in block.items():
            if isinstance(v, dict):
                walk(v, seed, into.setdefault(k, {}))
            elif k in ("precision", "recall", "fpr") and v is not None:
                high = k == "fpr"
                cur = into.get(k)
                if cur is None or (v > cur["value"] if high else v < cur["value"]):
                    into[k] = {"value": v, "seed": seed}

    for seed, m in per_world:
        walk(m, seed, out)
    return _prune(out)


def _prune(block: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in block.items():
        if isinstance(v, dict) and "value" not in v:
            v = _prune(v)
            if not v:
                continue
        out[k] = v
    return out


def _one(job: tuple[int, int, float, str | None, str | None, bool, float]) -> dict[str, Any]:
    """Simulate, replay and score one world (runs in a worker process)."""
    from pathsentry.sim.evaluate import evaluate_world
    from pathsentry.sim.social import with_social
    from pathsentry.sim.world import write_world

    seed, accounts, hours, start, keep, social, overrun = job
    drawn = with_overrun(draw_params(seed, hours), overrun)
    spec = world_spec(seed, accounts, hours, with_social(drawn) if social else drawn,
                      datetime.fromisoformat(start) if start else None)
    params = spec.params
    with tempfile.TemporaryDirectory(prefix=f"pathsentry-world-{seed}-") as tmp:
        wd = Path(keep) / f"world-{seed}" if keep else Path(tmp)
        write_world(spec, wd)
        report = evaluate_world(wd, wd)
        truth = Truth.load(wd / "truth.jsonl")
    return {"seed": seed, "params": params.to_dict(), "metrics": metrics_of(report, truth, params),
            "events": report["replay"]["events"]}


def evaluate_worlds(n: int, seed: int, accounts: int, hours: float, *, jobs: int | None = None,
                    start: datetime | None = None, keep_dir: str | Path | None = None,
                    social: bool = False, overrun: float = 0.0) -> dict[str, Any]:
    """Evaluate ``n`` randomized worlds (``social``: with the social layer; ``overrun``:
    the share of app pings answered one tick late, :func:`.params.with_overrun`); returns
    ``{"worlds", "pooled", "worst"}``."""
    if n < 1:
        raise ValueError("--worlds: at least one world")
    jobs = max(1, min(n, jobs or os.cpu_count() or 1))
    plan = [(seed + i, accounts, hours, start.isoformat() if start else None,
             str(keep_dir) if keep_dir else None, social, overrun) for i in range(n)]
    if jobs == 1:
        worlds = [_one(j) for j in plan]
    else:
        with ProcessPoolExecutor(max_workers=jobs) as ex:
            worlds = list(ex.map(_one, plan))
    pooled = pool(w["metrics"] for w in worlds)
    ttd = pooled["farm_groups"].get("ttd_from_fifth_login_s", [])
    pooled["farm_groups"]["ttd_median_s"] = statistics.median(ttd) if ttd else None
    pooled["farm_groups"]["ttd_max_s"] = max(ttd) if ttd else None
    pooled["farm_groups"]["ttd_table"] = ttd_table(pooled["farm_groups"].get("ttd_by", {}))
    return {"accounts": accounts, "hours": hours, "worlds": worlds, "pooled": pooled,
            "worst": worst([(w["seed"], w["metrics"]) for w in worlds])}


def ttd_table(ttd_by: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, Any]]:
    """Per name family, pacing band and exit kind, the found groups' times from the 5th
    member's login to the alert: count, median, max, and how many came after that login.

    >>> ttd_table({"pacing": {"<15 s": [0.0, 0.0, 12.5]}})["pacing <15 s"]
    {'groups': 3, 'median_s': 0.0, 'max_s': 12.5, 'late': 1}
    """
    return {f"{by} {k}": {"groups": len(v), "median_s": statistics.median(v) if v else None,
                          "max_s": max(v) if v else None, "late": sum(1 for x in v if x > 0)}
            for by in ("family", "pacing", "exit") for k, v in sorted(ttd_by.get(by, {}).items())}


def _secs(v: float | None) -> str:
    return "NA" if v is None else f"{v:,.0f}"


def _w(block: dict[str, Any] | None, key: str) -> str:
    if not block or key not in block:
        return "NA"
    return f"{fmt_cell(block[key]['value'])} (seed {block[key]['seed']})"


def _unmarked(params: dict[str, Any]) -> str:
    """The outages without the CDN's marks: the hosts the box answers, where and how.

    >>> _unmarked({"unmarked_share": 0.5, "failovers": [{"outage": 1, "hosts": ["www"],
    ...     "server": "nginx", "site": "jp-tyo-1", "hops": 3, "ttl_delta": 0, "ttfb_scale": 1.5}]})
    ' (unmarked 50%: #2 www nginx at jp-tyo-1 +3 hops TTL+0 TTFB x1.50)'
    """
    fos = params.get("failovers") or []
    if not fos:
        return ""
    return (f" (unmarked {params.get('unmarked_share', 0.0):.0%}: " + "; ".join(
        f"#{f['outage'] + 1} {'/'.join(f['hosts'])} {f['server']} at {f['site']} +{f['hops']} hops "
        f"TTL{f['ttl_delta']:+d} TTFB x{f['ttfb_scale']:.2f}" for f in fos) + ")")


def _summary(params: dict[str, Any]) -> str:
    """One line on the parameters that most often decide a world's difficulty."""
    ticks = ", ".join(f"{s['cost_ms']:.1f}+{s['tick_ms']:.0f}" for s in params["servers"])
    inj = "; ".join(f"{i['isp']} {i['answer']} ports {'/'.join(map(str, i['ports']))} "
                    f"TTL+{i['ttl_delta']} seen {i['ttl_visible']:.0%}" for i in params["injectors"] or [])
    farms = "; ".join(f"{f['family']} x{f['size']} {f['relay']} {f['pace_s'][0]:.0f}-{f['pace_s'][1]:.0f} s "
                      f"{f['exit_nets']} nets" for f in params["farms"] or [])
    return (f"start {params['start_hour']}h; app ping cost+tick ms per server: {ticks}; "
            f"samples {params['app_samples'][0]}-{params['app_samples'][1]}, TCP RTT missing "
            f"{params['tcp_missing']:.0%}; access x{params['access_scale']:.2f}, jitter "
            f"x{params['jitter_scale']:.2f}; "
            f"outages {len(params['outages'])}{_unmarked(params)}, "
            f"errors {params['origin_error_rate']:.1%}, redirects "
            f"{params['origin_redirect']:.0%}; injectors: {inj}; farms: {farms}")


def render_worlds_markdown(result: dict[str, Any]) -> str:
    """The pooled and worst-world tables of :func:`evaluate_worlds`."""
    worlds, pooled, bad = result["worlds"], result["pooled"], result["worst"]
    seeds = [w["seed"] for w in worlds]
    lines = ["# pathsentry detection quality on randomized worlds", "",
             f"{len(worlds)} worlds (seeds {seeds[0]}-{seeds[-1]}), "
             f"{sum(w['events'] for w in worlds):,} events. Pooled: counts of every world added up; "
             "worst: the worst world's value and seed.", "", "## Per detector", ""]
    rows = []
    for name, d in pooled["detectors"].items():
        w = bad.get("detectors", {}).get(name, {})
        rows.append([name, d["tp"], d["fp"], d["fn"], d["precision"], _w(w, "precision"),
                     d["recall"], _w(w, "recall")])
    lines += markdown_table(["detector", "TP", "FP", "FN", "precision", "worst precision", "recall",
                    "worst recall"], rows)
    fg, wfg = pooled["farm_groups"], bad.get("farm_groups", {})
    lines += ["", f"Farm groups: {fg['found']}/{fg['planted']} found (recall {fmt_cell(fg.get('recall'))}, "
                  f"worst {_w(wfg, 'recall')}); {fg['alerts']} group alerts, precision "
                  f"{fmt_cell(fg.get('precision'))} (worst {_w(wfg, 'precision')}); time from the 5th "
                  f"member's login to the alert: median {fmt_cell(fg.get('ttd_median_s'))} s, max "
                  f"{fmt_cell(fg.get('ttd_max_s'))} s.", ""]
    rows = [[f"{by} {k}", v["groups"], v["found"], v["recall"], _w(wfg.get(f"by_{by}", {}).get(k), "recall")]
            for by in ("family", "pacing") for k, v in sorted(fg[f"by_{by}"].items())]
    lines += markdown_table(["farm groups by", "planted", "found", "recall", "worst recall"], rows)
    table = fg.get("ttd_table") or ttd_table(fg.get("ttd_by", {}))
    if table:
        lines += ["", "Time from the 5th member's login to the alert (found groups; late: after "
                      "that login):", ""]
        lines += markdown_table(["farm groups by", "found", "median (s)", "max (s)", "late"],
                                [[k, v["groups"], _secs(v["median_s"]), _secs(v["max_s"]),
                                  v["late"]] for k, v in table.items()])
    c, wc = pooled["cells"], bad.get("cells", {})
    nm, wnm = c.get("nameable", {}), wc.get("nameable", {})
    least = "/".join(str(m) for m in sorted(set(nm.get("min_sources", [])))) or "?"
    lines += ["", f"Injection cells: {c['found']}/{c['planted']} injecting ASNs named (worst "
                  f"{_w(wc, 'recall')}); of the {nm.get('planted')} nameable ones (forged "
                  f"answers from at least {least} independent sources: fewer could be as many "
                  f"colluding accounts), "
                  f"{nm.get('found')} named (worst {_w(wnm, 'recall')}); "
                  f"{c.get('confirmed', {}).get('found')} named at the confirmed level, the "
                  f"rest suspected (worst {_w(wc.get('confirmed', {}), 'recall')}); "
                  f"{c['alerts']} cell "
                  f"alerts, {c['alerts'] - c['right']} on "
                  f"a clean ASN or outside the cell's ports and hours (precision "
                  f"{fmt_cell(c.get('precision'))}, "
                  f"worst {_w(wc, 'precision')}).",
              f"Injectors not named (seed, ASN: independent sources of their forged answers): "
              f"{', '.join(c.get('missed', [])) or 'none'}.", "", "## Recall per attack class", ""]
    rows = [[label, det, v["positives"], v["recall"],
             _w(bad.get("recall", {}).get(label, {}).get(det), "recall")]
            for label, dets in pooled["recall"].items() for det, v in dets.items() if v["positives"]]
    lines += markdown_table(["attack class", "detector", "positives", "recall", "worst recall"], rows)
    lines += ["", "## False-positive rate per hard-negative class", ""]
    rows = [[klass, det, v["negatives"], v["flagged"], v["fpr"],
             _w(bad.get("fpr", {}).get(klass, {}).get(det), "fpr")]
            for klass, dets in sorted(pooled["fpr"].items()) for det, v in dets.items() if v["negatives"]]
    rows += [["all benign", det, v["negatives"], v["flagged"], v["fpr"],
              _w(bad.get("benign", {}).get(det), "fpr")] for det, v in pooled["benign"].items()]
    lines += markdown_table(["class", "detector", "negatives", "flagged", "FPR", "worst FPR"], rows)
    lines += _crosscheck_lines(pooled.get("crosscheck") or {})
    worst_seeds = sorted({v["seed"] for v in _leaves(bad)})
    lines += ["", "## Worlds that hold a worst value", ""]
    by_seed = {w["seed"]: w for w in worlds}
    for s in worst_seeds:
        lines.append(f"- seed {s} (`pathsentry simulate --seed {s} --params random --accounts "
                     f"{result['accounts']} --hours {result['hours']:g} --out DIR`): "
                     f"{_summary(by_seed[s]['params'])}")
    return "\n".join(lines) + "\n"


def _crosscheck_lines(cc: dict[str, Any]) -> list[str]:
    """What the cross-checks added (worlds with the social layer): alerts carrying them,
    and the precision of high-severity alerts on the detector's score and after."""
    rows = [[kind, c["alerts"], c["with_crosscheck"], c["with_labelled"], c["with_traded"],
             fmt_cell(c["high_before"].get("precision")), fmt_cell(c["high_after"].get("precision")),
             c["high_before"]["tp"] + c["high_before"]["fp"], c["high_after"]["tp"] + c["high_after"]["fp"]]
            for kind, c in sorted(cc.items()) if c.get("alerts")]
    if not rows:
        return []
    header = ["alert kind", "alerts", "cross-checked", "with labelled members",
              "with members that dealt with labelled accounts", "high-severity precision (detector)",
              "high-severity precision (cross-checked)", "high (detector)", "high (cross-checked)"]
    return ["", "## Cross-checks with the game's labels and interactions", "", *markdown_table(header, rows)]


def _leaves(block: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for v in block.values():
        if isinstance(v, dict):
            if "value" in v and "seed" in v:
                yield v
            else:
                yield from _leaves(v)
