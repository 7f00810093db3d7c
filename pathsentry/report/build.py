"""The SOC report: sections read from the ClickHouse views, rendered to one HTML page.

A :class:`Source` wraps any read-only query function (direct ClickHouse/chDB, or
a worker's ``/query`` endpoint), so the report reads the same way from either.
Each section renders a plot with a stable ``id`` (``plot-…``) and an
``aria-label``, or says "no data yet" when its view is empty or missing.

>>> def empty(sql: str) -> tuple[list[str], list[list[object]]]:
...     return ["name"], []          # a database where nothing exists yet
>>> report = build_report(Source(empty, "pathsentry"), origin="test")
>>> report.html.count("no data yet") == len(SECTIONS), report.filled, "<script" in report.html
(True, 0, False)
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any

from pathsentry.report.svg import (
    PALETTE,
    Bar,
    HeatCell,
    Span,
    bar_chart,
    fmt_num,
    heatmap,
    nice_step,
    time_ticks,
    timeline,
)

__all__ = [
    "SECTIONS",
    "NoData",
    "QueryFn",
    "Report",
    "ReportQueryError",
    "Section",
    "Source",
    "build_report",
]

QueryFn = Callable[[str], tuple[Sequence[str], Sequence[Sequence[Any]]]]

#: Alert kinds in display order, with their colours.
KIND_COLORS = dict(zip(("vpn_relay", "route_anomaly", "farm_group", "injection_cell", "account_takeover"),
                       PALETTE, strict=False))

MAX_HOURS = 168
MAX_EXITS = 20
MAX_GROUPS = 40
MAX_ASNS = 25
HIST_BINS = 24


class ReportQueryError(RuntimeError):
    """A query of the report failed (ClickHouse unreachable, a view missing, …)."""


class NoData(Exception):
    """A section has nothing to show; the message says why."""


class Source:
    """Rows from ClickHouse as dicts, ``{db}`` replaced by the database name."""

    def __init__(self, query: QueryFn, db: str) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", db):
            raise ValueError(f"not a database name: {db!r}")
        self._query = query
        self.db = db

    def rows(self, sql: str) -> list[dict[str, Any]]:
        try:
            cols, rows = self._query(sql.replace("{db}", self.db))
        except ReportQueryError:
            raise
        except Exception as e:
            raise ReportQueryError(f"{type(e).__name__}: {e}") from e
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def relations(self) -> set[str]:
        """Names of the tables and views of the database (empty before the DDL ran). Asked
        with ``SHOW TABLES``: analyst queries may not read ``system.*``."""
        try:
            rows = self.rows("SHOW TABLES FROM {db}")
        except ReportQueryError as e:
            if "UNKNOWN_DATABASE" in str(e):
                return set()
            raise
        return {str(r["name"]) for r in rows}


def _num(v: Any) -> float | None:
    """A number from a driver value (int, float, numeric string) or None.

    >>> _num("12"), _num(None), _num(float("nan")), _num(2)
    (12.0, None, None, 2.0)
    """
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _int(v: Any) -> int:
    f = _num(v)
    return 0 if f is None else int(f)


def _utc(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True, slots=True)
class Section:
    """One part of the report: ``plot-<key>`` is the id of its plot."""

    key: str
    title: str
    about: str
    needs: tuple[str, ...]
    render: Callable[[Source, str], str]

    @property
    def plot_id(self) -> str:
        return f"plot-{self.key}"


# -- sections -------------------------------------------------------------------------


def _summary(src: Source, pid: str) -> str:
    flags = src.rows("SELECT kind, count() AS n, uniqExact(account) AS accounts, "
                     "toUnixTimestamp64Milli(min(ts)) AS first_ms, "
                     "toUnixTimestamp64Milli(max(ts)) AS last_ms "
                     "FROM {db}.flagged_events_latest GROUP BY kind ORDER BY kind")
    alerts = src.rows("SELECT kind, count() AS n, countIf(severity IN ('high', 'critical')) AS hi "
                      "FROM {db}.alerts_latest GROUP BY kind ORDER BY kind")
    if not flags and not alerts:
        raise NoData("no flagged events and no alerts")
    n_flags = sum(_int(r["n"]) for r in flags)
    n_alerts = sum(_int(r["n"]) for r in alerts)
    cards = [("flagged events", fmt_num(n_flags)), ("alerts", fmt_num(n_alerts)),
             ("high / critical alerts", fmt_num(sum(_int(r["hi"]) for r in alerts)))]
    if flags:
        first = min(_int(r["first_ms"]) for r in flags) / 1000
        last = max(_int(r["last_ms"]) for r in flags) / 1000
        cards.append(("flagged between", f"{_utc(first)} – {_utc(last)}"))
    body = "".join(f'<div class="card"><div class="v">{escape(v)}</div><div class="k">{escape(k)}</div></div>'
                   for k, v in cards)
    table = _table(
        ["", "flagged events", "accounts", "alerts", "high / critical"],
        [[k,
          fmt_num(_int(f["n"])) if (f := _by_kind(flags, k)) else "–",
          fmt_num(_int(f["accounts"])) if f else "–",
          fmt_num(_int(a["n"])) if (a := _by_kind(alerts, k)) else "–",
          fmt_num(_int(a["hi"])) if a else "–"]
         for k in sorted({str(r["kind"]) for r in flags + alerts})],
    )
    return f'<div id="{pid}" class="cards" aria-label="summary counts">{body}</div>{table}'


def _by_kind(rows: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["kind"] == kind), None)


def _alerts_per_hour(src: Source, pid: str) -> str:
    rows = src.rows("SELECT toUnixTimestamp(hour) AS h, kind, alerts FROM {db}.alerts_per_hour "
                    "ORDER BY h, kind")
    if not rows:
        raise NoData("no alerts")
    last = max(_int(r["h"]) for r in rows)
    first = max(min(_int(r["h"]) for r in rows), last - (MAX_HOURS - 1) * 3600)
    by_hour: dict[int, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if _int(r["h"]) >= first:
            by_hour[(_int(r["h"]) - first) // 3600][str(r["kind"])] = float(_int(r["alerts"]))
    slots = (last - first) // 3600 + 1
    bars = [Bar(slot, tuple((k, v[k]) for k in _kinds(v)),
                f"{_utc(first + slot * 3600)}: " + ", ".join(f"{v[k]:g} {k}" for k in _kinds(v)))
            for slot, v in sorted(by_hour.items())]
    ticks = [((t - first) / 3600, text) for t, text in time_ticks(first, first + slots * 3600, min_step=3600)]
    note = f"<p class=\"note\">Showing the last {MAX_HOURS} hours.</p>" if first > min(
        _int(r["h"]) for r in rows) else ""
    seen = {k for v in by_hour.values() for k in v}
    colors = {k: c for k, c in KIND_COLORS.items() if k in seen}
    return note + bar_chart(element_id=pid, label="alerts per hour, stacked by kind", slots=slots, bars=bars,
                            x_ticks=ticks, x_label="hour (UTC) the alert was first raised",
                            y_label="alerts", colors=colors)


def _kinds(v: dict[str, float]) -> list[str]:
    order = list(KIND_COLORS)
    return sorted(v, key=lambda k: (order.index(k) if k in order else len(order), k))


def _rtt_excess(src: Source, pid: str) -> str:
    st = src.rows(
        "SELECT count() AS flagged, countIf(excess_ms IS NOT NULL) AS n, min(excess_ms) AS lo, "
        "max(excess_ms) AS hi, quantile(0.5)(excess_ms) AS p50, quantile(0.9)(excess_ms) AS p90, "
        "quantile(0.99)(excess_ms) AS p99 FROM {db}.relay_flags WHERE kind = 'vpn_relay'"
    )[0]
    n, flagged = _int(st["n"]), _int(st["flagged"])
    lo, hi, p99 = _num(st["lo"]), _num(st["hi"]), _num(st["p99"])
    if n == 0 or lo is None or hi is None or p99 is None:
        raise NoData(f"{flagged} relayed login(s) flagged, none with an RTT excess in its evidence"
                     if flagged else "no relayed logins flagged")
    overflow = hi > 2 * p99 > lo
    cap = p99 if overflow else hi
    step = nice_step(cap - lo, HIST_BINS)
    start = math.floor(lo / step) * step
    nbins = max(1, math.ceil((cap - start) / step + 1e-9))
    counts = src.rows(
        f"SELECT least(toInt64(floor((excess_ms - {start!r}) / {step!r})), {nbins - 1}) AS b, "
        "count() AS n FROM {db}.relay_flags WHERE kind = 'vpn_relay' AND excess_ms IS NOT NULL "
        "GROUP BY b ORDER BY b"
    )

    def bar(b: int, count: int) -> Bar:
        a = start + b * step
        what = f"≥ {fmt_num(a)}" if overflow and b == nbins - 1 else f"{fmt_num(a)} to {fmt_num(a + step)}"
        return Bar(b, (("vpn_relay", float(count)),), f"{what} ms: {count} logins")

    bars = [bar(_int(r["b"]), _int(r["n"])) for r in counts]
    every = max(1, nbins // 12)
    ticks = [(float(k), fmt_num(start + k * step)) for k in range(0, nbins + 1, every)]
    p50, p90 = _num(st["p50"]) or 0.0, _num(st["p90"]) or 0.0
    caption = (f"{n} of {flagged} flagged relayed logins carry an RTT excess: "
               f"median {fmt_num(round(p50, 1))} ms, p90 {fmt_num(round(p90, 1))} ms "
               f"(≈ {fmt_num(round(p90 * 100))} km of detour at 100 km per ms of RTT)"
               + (f"; the last bar collects everything above {fmt_num(round(cap, 1))} ms" if overflow else "")
               + (f"; {flagged - n} without one" if flagged > n else "") + ".")
    return f'<p class="note">{escape(caption)}</p>' + bar_chart(
        element_id=pid, label="distribution of the RTT excess of relayed logins", slots=nbins, bars=bars,
        x_ticks=ticks, x_label="RTT excess over the expected RTT (ms)", y_label="relayed logins")


def _relay_exits(src: Source, pid: str) -> str:
    rows = src.rows(
        "SELECT prefix, country, asn, flagged, vpn_relay, route_anomaly, accounts, max_score, "
        "median_excess_ms, toUnixTimestamp64Milli(last_seen) AS last_ms FROM {db}.relay_exit_prefixes "
        f"ORDER BY flagged DESC, prefix LIMIT {MAX_EXITS}"
    )
    if not rows:
        raise NoData("no relay or route-anomaly flags")
    top = max(_int(r["flagged"]) for r in rows) or 1
    body = []
    for r in rows:
        n = _int(r["flagged"])
        med = _num(r["median_excess_ms"])
        # the bar fills a fixed-width track, so the cell widens to track + count
        bar = f'<span class="track"><span class="hbar" style="width:{100 * n / top:.0f}%"></span></span>'
        body.append([r["prefix"], r["country"] or "–", f"AS{_int(r['asn'])}" if _int(r["asn"]) else "–",
                     (bar, f"{n}"), str(_int(r["vpn_relay"])), str(_int(r["route_anomaly"])),
                     str(_int(r["accounts"])), "–" if med is None else fmt_num(med),
                     f"{_num(r['max_score']) or 0:.2f}", _utc(_int(r["last_ms"]) / 1000)])
    return _table(["exit prefix", "country", "ASN", "flagged", "vpn_relay", "route_anomaly", "accounts",
                   "median excess (ms)", "max score", "last seen"], body,
                  element_id=pid, label=f"top {len(rows)} relay exit prefixes by flagged sessions")


def _farm_timeline(src: Source, pid: str) -> str:
    rows = src.rows(
        "SELECT group_id, template, pattern, members, score, toUnixTimestamp64Milli(first_seen) AS first_ms, "
        "toUnixTimestamp64Milli(last_seen) AS last_ms FROM (SELECT * FROM {db}.farm_groups "
        f"WHERE room_id = '' ORDER BY members DESC, last_seen DESC LIMIT {MAX_GROUPS}) "
        "ORDER BY first_ms, group_id"
    )
    if not rows:
        raise NoData("no farm groups")
    spans = []
    for r in rows:
        name = str(r["template"] or r["pattern"] or r["group_id"])
        a, b = _int(r["first_ms"]) / 1000, _int(r["last_ms"]) / 1000
        spans.append(Span(
            f"{name[:24]} ({_int(r['members'])})", a, max(a, b),
            f"group {r['group_id']}: {_int(r['members'])} accounts, {name}, "
            f"score {_num(r['score']) or 0:.2f}, {_utc(a)} to {_utc(b)}",
        ))
    return timeline(element_id=pid, label=f"timeline of {len(spans)} farm groups, first to last login",
                    spans=spans, x_label="time (UTC); label: name template (members)")


def _injection_heatmap(src: Source, pid: str) -> str:
    rows = src.rows("SELECT asn, as_name, timezone, hour, alerts, cells, suspect, probes, rate_lower "
                    "FROM {db}.injection_cells_hourly")
    if not rows:
        raise NoData("no injection cells")
    weight: dict[int, float] = defaultdict(float)
    names: dict[int, str] = {}
    for r in rows:
        asn = _int(r["asn"])
        weight[asn] += (_num(r["rate_lower"]) or 0.0) + _int(r["alerts"]) * 1e-3
        names[asn] = (f"AS{asn}" if asn else "unknown AS") + (f" {r['as_name']}" if r["as_name"] else "")
    asns = sorted(weight, key=lambda k: (-weight[k], k))[:MAX_ASNS]

    def cell(r: dict[str, Any]) -> HeatCell:
        name, hour, rate = names[_int(r["asn"])], _int(r["hour"]), _num(r["rate_lower"])
        what = (f"forged-answer rate ≥ {rate:.0%} (lower bound); largest cell {_int(r['suspect'])}/"
                f"{_int(r['probes'])} probes suspect; {_int(r['cells'])} cell(s)"
                if rate is not None else "flagged hour, no rate in the evidence")
        when = f"{hour:02d}:00–{(hour + 1) % 24:02d}:00"
        return HeatCell(name, f"{hour:02d}", rate, f"{name}, {when}: {what}; {_int(r['alerts'])} alert(s)")

    zones = sorted({str(r["timezone"]) for r in rows if r["timezone"]})
    where = f" ({', '.join(zones)})" if zones else ""
    return heatmap(element_id=pid, label="injection cells by ASN and hour of day",
                   rows=[names[a] for a in asns], cols=[f"{h:02d}" for h in range(24)],
                   cells=[cell(r) for r in rows if _int(r["asn"]) in asns], vmax=1.0,
                   x_label=f"hour of day, local time of the cell{where}",
                   value_label="lower bound of the forged-answer rate")


def _feedback(src: Source, pid: str) -> str:
    rows = src.rows(
        "SELECT detector, kind, flagged_accounts, labelled_bad, cleared, judged, precision "
        "FROM {db}.detector_feedback ORDER BY detector, kind"
    )
    if not any(_int(r["judged"]) for r in rows):
        raise NoData("no flagged account has been labelled by the game or an analyst yet"
                     if rows else "no alerts")
    body = []
    for r in rows:
        p = _num(r["precision"])
        bar = "" if p is None else f'<span class="hbar" style="width:{100 * p:.0f}%"></span>'
        body.append([r["detector"], r["kind"], str(_int(r["flagged_accounts"])),
                     str(_int(r["labelled_bad"])), str(_int(r["cleared"])),
                     (bar, "–" if p is None else f"{p:.3f}")])
    return _table(["detector", "alert kind", "accounts flagged", "later labelled bad", "cleared",
                   "precision (bad / judged)"], body, element_id=pid,
                  label="share of flagged accounts later labelled bad or cleared, per detector")


SECTIONS: tuple[Section, ...] = (
    Section("summary", "Summary", "Flagged events and alerts in the database, latest version of each.",
            ("flagged_events_latest", "alerts_latest"), _summary),
    Section("alerts-per-hour", "Alerts per hour", "New alerts per hour and kind (view alerts_per_hour).",
            ("alerts_per_hour",), _alerts_per_hour),
    Section("rtt-excess", "RTT excess of relayed logins",
            "How much slower each flagged login answered than its claimed location allows "
            "(evidence excess_ms: physics floor or neighbourhood baseline; view relay_flags).",
            ("relay_flags",), _rtt_excess),
    Section("relay-exits", "Relay exits", "Exit prefixes of relayed connections and anomalous routes "
            "(view relay_exit_prefixes).", ("relay_exit_prefixes",), _relay_exits),
    Section("farm-timeline", "Farm groups", "Each farm group from its first to its last member login "
            "(view farm_groups, one row per room: its parts left out; the largest groups).",
            ("farm_groups",), _farm_timeline),
    Section("injection-heatmap", "On-path injection by ASN and hour",
            "Hours of day in which plaintext answers were forged, per ASN (view injection_cells_hourly).",
            ("injection_cells_hourly",), _injection_heatmap),
    Section("feedback", "How often each detector was right",
            "Accounts named by each detector's alerts and how many the game or an analyst later "
            "labelled bad or cleared (view detector_feedback): precision measured on this traffic.",
            ("detector_feedback",), _feedback),
)


def _table(
    head: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    element_id: str | None = None,
    label: str | None = None,
) -> str:
    """An HTML table; a ``(html, text)`` cell puts trusted markup before escaped text."""

    def cell(v: Any) -> str:
        if isinstance(v, tuple):
            return f'<td class="barcell">{v[0]}{escape(str(v[1]))}</td>'
        return f"<td>{escape(str(v))}</td>"

    attrs = (f' id="{escape(element_id)}"' if element_id else "") + (
        f' aria-label="{escape(label)}"' if label else "")
    thead = "".join(f"<th>{escape(h)}</th>" for h in head)
    tbody = "".join(f"<tr>{''.join(cell(v) for v in r)}</tr>" for r in rows)
    return f"<table{attrs}><thead><tr>{thead}</tr></thead><tbody>{tbody}</tbody></table>"


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;color:#222;margin:0;background:#fafafa}
header{background:#1d2b3a;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;color:#c9d3dd;font-size:12px}main{padding:8px 28px 40px;max-width:1000px}
section{background:#fff;border:1px solid #e2e2e2;border-radius:6px;margin:18px 0;padding:14px 18px}
section h2{margin:0 0 4px;font-size:17px}.about{margin:0 0 10px;color:#555;font-size:12px}
.empty{color:#888;font-style:italic;margin:6px 0}.note{color:#444;font-size:12px;margin:4px 0 8px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:12px}
.card{border:1px solid #e2e2e2;border-radius:6px;padding:8px 14px;min-width:120px}
.card .v{font-size:20px;font-weight:600}.card .k{color:#666;font-size:12px}
table{border-collapse:collapse;width:100%;font-size:12px}th,td{padding:4px 6px;text-align:left;
border-bottom:1px solid #eee}td{white-space:nowrap}th{background:#f3f5f7;vertical-align:bottom}
.track{display:inline-block;width:100px;margin-right:6px;vertical-align:middle}
.hbar{display:block;height:10px;background:#0072b2}svg{max-width:100%;height:auto}
"""


def _render_section(src: Source, section: Section, relations: set[str]) -> tuple[str, bool]:
    missing = [n for n in section.needs if n not in relations]
    try:
        if missing:
            raise NoData(f"view {', '.join(missing)} not created yet (a worker creates it at start)")
        body, has_data = section.render(src, section.plot_id), True
    except NoData as e:
        body, has_data = f'<p class="empty">no data yet — {escape(str(e))}</p>', False
    except ReportQueryError as e:
        body, has_data = f'<p class="empty">no data yet — query failed: {escape(str(e)[:300])}</p>', False
    return (
        f'<section id="section-{section.key}" aria-labelledby="h-{section.key}">'
        f'<h2 id="h-{section.key}">{escape(section.title)}</h2><p class="about">{escape(section.about)}</p>'
        f"{body}</section>",
        has_data,
    )


@dataclass(frozen=True, slots=True)
class Report:
    """The page and how many of its sections have data."""

    html: str
    filled: int
    sections: int


def build_report(
    src: Source,
    *,
    origin: str,
    title: str = "pathsentry SOC report",
    now: datetime | None = None,
    sections: Sequence[Section] = SECTIONS,
) -> Report:
    """The whole page. Raises :class:`ReportQueryError` when ClickHouse cannot be read at all."""
    relations = src.relations()
    now = now or datetime.now(UTC)
    parts = [_render_section(src, s, relations) for s in sections]
    filled = sum(1 for _, ok in parts if ok)
    html = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{escape(title)}</h1><p>generated {now.strftime('%Y-%m-%d %H:%M:%S UTC')} from "
        f"{escape(origin)} (database {escape(src.db)}); {filled} of {len(parts)} sections with data</p>"
        "</header><main>" + "".join(h for h, _ in parts) + "</main></body></html>\n"
    )
    return Report(html, filled, len(parts))
