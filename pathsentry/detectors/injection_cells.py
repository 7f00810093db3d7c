"""Where injection happens: cells of (ASN, /24, port, hour of day).

One forged answer is a probe's problem; an ISP's DPI box is a pattern. This group
stage counts the verdicts the session stage left in ``notes["injection"]`` per cell
``(prefix, port, hour)`` of each ASN. Hourly cells of one /24 are often too sparse to
judge, so coarser views help, judged by the same rule:

- ``(prefix, port, all day)``: finds the *lines* (prefixes) with a forging box;
- ``("+", port, hour)``: the lines found so far pooled, which says *when*;
- ``("*", port, hour)``: the whole ASN, for boxes that sit in front of every line;
- ``("*", port, all day)``: the whole ASN all day, for boxes whose forgeries are too
  sparse for any of the above;
- ``("*", any port, all day)``: the whole ASN on every plaintext port all day, for a box
  whose few forgeries are spread over the ports it inspects, and ``("*", any port,
  hour)`` for one whose few forgeries fall in one hour over several ports. They name
  the ports on which ``min_hour_sources`` distinct sources got forged answers (every
  port with one when none has that many).

An all-day cell that is bad names the hours in which at least ``min_hour_sources``
distinct sources got forged answers on its port(s) (all the hours with a forged answer
when the box's forgeries are too thin for any hour to have that many: the cell was
judged on its ``min_suspect_clients`` sources already).

A bounded input (a replay) ends: :meth:`InjectionCellDetector.finish` then does what
each ISP's next answer and the clock would have done in a live stream -- the failures'
onsets the last answer carried retract their suspects, and the cells still waiting are
judged ``settle_s`` after the last event.

A suspect probe is kept, with its origin and anomaly, for twice ``settle_s``: when a
later probe of the ISP names the onset of that origin's failure with that anomaly
(``notes["injection"]["onsets"]``), it is the origin's and is taken out of its cells
(:mod:`pathsentry.detectors.injection_onset`).

A cell is *bad* -- suspected, or confirmed -- when its suspect probes come from enough
distinct sources and its rate of them stands above the other networks' at the same
times and above TLS on the same line; it is judged once it has settled. The rules, and
the argument against framing by colluding accounts, are set out in
:mod:`pathsentry.detectors.injection_cell_judge`, the code they govern. Cells are
re-judged whenever their plaintext or TLS counts move. A cell dropped from state (idle
longer than ``idle_ttl_s``, or beyond ``max_cells``) is no longer bad, and the pooled
cells it was summed into are judged again without it.

Events are partitioned by ASN (:meth:`InjectionCellDetector.group_keys`), so all the
cells of one ISP meet on one worker and the SOC gets one ``injection_cell`` alert per
ASN -- "AS4766, ports 80 and 8080, 09–18" -- whose id is derived from the ASN and
which is re-emitted with ``version + 1`` when its ports, hours or prefixes change
(and, on idle ticks, at most every ``refresh_s`` when its counts moved). Should
every cell clear again, the last version stands. The evidence contrasts the bad hours
with the other hours and with TLS, and each bad cell with the suspects the other ASNs'
rate predicts (``other_asns_expected``). The counts themselves, their bounded tables,
the Wilson bounds and the borrowed control are in
:mod:`pathsentry.detectors.injection_counts`.

The detector is split by concern: this module routes each probe into its cells and
keeps the groups (one per ASN) over time; the cells' keys, the settings and a group's
state and saved form are :mod:`pathsentry.detectors.injection_cell_state`, the
judgement and the settling of pending cells
:mod:`pathsentry.detectors.injection_cell_judge`, and the alert and its evidence
:mod:`pathsentry.detectors.injection_cell_alert`. The names other modules import from
here (:class:`CellSettings`, :func:`source_of`, the counts' helpers) are re-exported.

>>> round(wilson_lower(9, 10), 3), round(wilson_upper(0, 40), 3)
(0.596, 0.088)
>>> format_hours(range(9, 18)), format_hours([22, 23, 0, 1]), format_hours([3, 9, 10])
('09–18', '22–02', '03–04, 09–11')
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Set
from datetime import datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from pathsentry.detectors import register
from pathsentry.detectors.base import Detector, DetectorContext, Enriched, Findings
from pathsentry.detectors.injection import NOTES_KEY
from pathsentry.detectors.injection_cell_alert import CellAlerts
from pathsentry.detectors.injection_cell_judge import CellJudge
from pathsentry.detectors.injection_cell_state import (
    ALL,
    ANY_HOUR,
    ANY_PORT,
    LINES,
    NO_LINES,
    CellGroup,
    CellKey,
    CellSettings,
    anonymous_source,
    cell_at,
    cell_keys,
    lines_of,
    pool,
    source_of,
)
from pathsentry.detectors.injection_counts import (
    Cell,
    expire,
    format_hours,
    touch,
    wilson_lower,
    wilson_upper,
)
from pathsentry.detectors.injection_onset import Onsets, SuspectRecord, covered, onsets_of
from pathsentry.detectors.injection_saved import check_cells_state
from pathsentry.detectors.settings import load_settings
from pathsentry.schemas import HttpProbe

__all__ = [
    "CellSettings",
    "InjectionCellDetector",
    "anonymous_source",
    "format_hours",
    "source_of",
    "wilson_lower",
    "wilson_upper",
]


class InjectionCellDetector(Detector):
    """Group stage: alert ``injection_cell`` when an ISP's lines are confidently forged."""

    name = "injection_cells"
    consumes = frozenset({"http_probe"})
    stage = "group"

    def __init__(self, ctx: DetectorContext) -> None:
        super().__init__(ctx)
        (self.settings,) = load_settings(self.name, ctx.settings(self.name), CellSettings)
        if self.settings.anonymous_sources not in ("address", "line"):
            raise ValueError("[detectors.injection_cells] anonymous_sources: address or line")
        zone = self.settings.timezone
        self.tz: tzinfo | None = ZoneInfo(zone) if zone else None
        self.groups: OrderedDict[str, CellGroup] = OrderedDict()
        self._tz_labels: dict[timedelta | None, str] = {}
        self.judge = CellJudge(self.settings)
        self.alerting = CellAlerts(self.name, self.settings, self.judge)
        #: the failures' onsets the newest answer carried, and its time (for :meth:`finish`;
        #: not saved: a live stream's next answers carry their own)
        self._onsets: Onsets = {}
        self._onsets_ts = 0.0

    # -- partitioning -------------------------------------------------------------

    def group_keys(self, ev: Enriched) -> Iterable[str]:
        if NOTES_KEY not in ev.notes:
            return ()
        return (f"asn:{ev.geo.asn}" if ev.geo.asn is not None else f"net:{ev.prefix}",)

    # -- per event ------------------------------------------------------------------

    def process(self, ev: Enriched, key: str | None = None) -> Findings | None:
        probe = ev.event
        verdict = ev.notes.get(NOTES_KEY)
        if not isinstance(probe, HttpProbe) or verdict is None:
            return None
        key = key if key is not None else next(iter(self.group_keys(ev)))
        s = self.settings
        ts = ev.ts
        group = self._group(key, ev, ts)
        local = probe.ts.astimezone(self.tz) if self.tz is not None else probe.ts
        group.tz_label = s.timezone or self._tz_label(local)
        line = ev.prefix if s.anonymous_sources == "line" else None
        hour, client = local.hour, source_of(probe, ev.account, line)
        touched: list[CellKey] = []
        evicted: list[CellKey] = []
        onsets = onsets_of(verdict)
        if ts >= self._onsets_ts:
            self._onsets, self._onsets_ts = onsets, ts
        retracted = self._retract(group, onsets, touched) if onsets else set()
        host = probe.target.host.lower()
        anomaly = verdict.get("anomaly")
        anomaly = anomaly if isinstance(anomaly, str) else None
        if verdict["tls"]:
            # (a path anomaly of an origin failure named since is the origin's)
            anomalous = bool(verdict["path_anomaly"]) and not covered(onsets, host, anomaly, ts)
            for p, h in ((ev.prefix, hour), (ALL, hour), (ALL, ANY_HOUR), (ev.prefix, ANY_HOUR)):
                touch(group.tls, (p, h), s.max_cells).add(
                    client, anomalous, ts, probe.event_id, s)
                touched.extend([k for k in group.bad if k[0] == p and k[2] == h])
        else:
            suspect = (bool(verdict["suspect"]) and not verdict.get("origin_wide", False)
                       and not covered(onsets, host, anomaly, ts))
            ref = float(verdict.get("others") or 0.0)
            ref_tls = pool(verdict.get("others_tls"), 0.0)
            base = pool(verdict.get("baseline"), verdict.get("baseline_n"))
            tbase = pool(verdict.get("baseline_tls"), verdict.get("baseline_tls_n"))
            keys = cell_keys(ev.prefix, probe.target.port, hour)
            if suspect:
                self._vouch(group, probe, client, ev.account, line)
                self._keep(group, probe, verdict, ev.prefix, hour, client, ts)
                if s.settle_s > 0.0:  # (pending cells are held ones, or pooled over them)
                    for cell_key in keys:
                        group.pending.setdefault(cell_key, ts)
                    if ev.prefix in lines_of(group):
                        group.pending.setdefault((LINES, probe.target.port, hour), ts)
            for cell_key in keys:
                touch(group.cells, cell_key, s.max_cells, evicted).add(
                    client, suspect, ts, probe.event_id, s, ref,
                    None if ref_tls is None else ref_tls[0], base, tbase)
                touched.append(cell_key)
        if evicted:
            self.judge.drop(group, evicted, ts)
        due = self.judge.due(group, ts)
        # (no pooled cell among them)
        self.judge.judge_cells(group, touched + [k for k in due if k[0] != LINES], NO_LINES, ts)
        lines = lines_of(group)
        if lines != group.pooled:  # other lines: re-judge every pooled cell
            pooled = self.judge.repool(group, lines)
        elif not lines:
            pooled = set()
        elif verdict["tls"]:
            pooled = {(LINES, k[1], hour) for k in group.bad}
        else:
            pooled = {(LINES, probe.target.port, hour)}
        pooled.update(k for k in due if k[0] == LINES)
        if lines:
            pooled |= retracted
        self.judge.judge_cells(group, pooled, lines, ts)
        return self.alerting.emit(key, group, ts)

    def _vouch(self, group: CellGroup, probe: HttpProbe, client: str, account: str | None,
               line: str | None) -> None:
        """Note who vouches for a suspect probe: its account for the alert, and the
        address an account reported from, so that reports without an account (or a
        sensor's) from that address count as the same source, not another."""
        s = self.settings
        if account and account not in group.accounts and len(group.accounts) < s.max_alert_accounts:
            group.accounts.append(account)
        if client.startswith("acct:"):
            addr = anonymous_source(probe, line)
            if addr not in group.owners and len(group.owners) < s.max_clients:
                group.owners[addr] = client
        elif probe.reporter != "client" and len(group.witnesses) < s.max_clients:
            group.witnesses.add(client)

    def _keep(self, group: CellGroup, probe: HttpProbe, verdict: dict[str, Any], prefix: str,
              hour: int, client: str, ts: float) -> None:
        """Keep a suspect probe that an origin failure's onset may retract (one whose
        anomaly the session stage named; for twice ``settle_s``)."""
        anomaly = verdict.get("anomaly")
        keep_s = 2.0 * self.settings.settle_s
        if not isinstance(anomaly, str) or keep_s <= 0.0:
            return
        group.retractable.add(SuspectRecord(ts, probe.target.host.lower(), anomaly, prefix,
                                            probe.target.port, hour, client, probe.event_id),
                              keep_s, self.settings.max_retractable)

    @staticmethod
    def _retract(group: CellGroup, onsets: Onsets, touched: list[CellKey]) -> set[CellKey]:
        """Take the suspects that ``onsets`` cover out of their cells (see
        :mod:`~pathsentry.detectors.injection_onset`); the cells are appended to
        ``touched``, and the pooled cells they were summed into are returned."""
        taken = group.retractable.take(onsets)
        if not taken:
            return set()
        cells = group.cells
        for r in taken:
            for key in cell_keys(r.prefix, r.port, r.hour):
                cell = cells.get(key)
                if cell is not None:
                    cell.uncount(r.client, r.event_id)
                    touched.append(key)
        everything = cells.get((ALL, ANY_PORT, ANY_HOUR))
        gone = {r.client[5:] for r in taken if r.client.startswith("acct:")} - (
            {c[5:] for c in everything.suspect_clients} if everything is not None else set())
        if gone:
            group.accounts = [a for a in group.accounts if a not in gone]
        return {(LINES, r.port, r.hour) for r in taken}

    def _tz_label(self, local: datetime) -> str:
        off = local.utcoffset()
        label = self._tz_labels.get(off)
        if label is None:
            label = self._tz_labels[off] = local.strftime("UTC%z")
        return label

    def _group(self, key: str, ev: Enriched, ts: float) -> CellGroup:
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = CellGroup(asn=ev.geo.asn, as_name=ev.geo.as_name)
            while len(self.groups) > self.settings.max_groups:
                self.groups.popitem(last=False)
        else:
            self.groups.move_to_end(key)
        group.last = max(group.last, ts)
        return group

    def _settle(self, key: str, group: CellGroup, now: float) -> Findings | None:
        """Judge the cells that settled by ``now`` (a tick: no probe came to do it)."""
        if not self.judge.settle(group, now):
            return None
        return self.alerting.emit(key, group, now)

    @staticmethod
    def _cell_at(group: CellGroup, key: CellKey, lines: Set[str]) -> Cell:
        """:func:`~pathsentry.detectors.injection_cell_state.cell_at`."""
        return cell_at(group, key, lines)

    @staticmethod
    def _lines(group: CellGroup) -> frozenset[str]:
        """:func:`~pathsentry.detectors.injection_cell_state.lines_of`."""
        return lines_of(group)

    # -- time, state ------------------------------------------------------------------

    def flush(self, now: float) -> Findings | None:
        """Drop idle groups and cells; judge the cells that settled; refresh alerts
        whose counts moved."""
        s = self.settings
        out = Findings()
        horizon = now - s.idle_ttl_s
        for key in [k for k, g in self.groups.items() if g.last < horizon]:
            del self.groups[key]
        for key, group in self.groups.items():
            gone = expire(group.cells, horizon)
            expire(group.tls, horizon)
            if gone:
                self.judge.drop(group, gone, now)
            settled = self._settle(key, group, now)
            if settled is not None:
                out.alerts.extend(settled.alerts)
            refreshed = self.alerting.refresh(key, group, now)
            if refreshed is not None:
                out.alerts.append(refreshed)
        return out or None

    def finish(self, now: float) -> Findings | None:
        """The end of a bounded input at ``now``: what each ISP's next answer would have
        brought. The failures whose onsets the last answer carried (every answer carries
        those the session stage holds) take their suspects out of every ISP's cells, as
        its next answer would have, and the cells are judged ``settle_s`` later, when
        every one still waiting has settled (:meth:`flush` at that time)."""
        if self._onsets:
            for group in self.groups.values():
                touched: list[CellKey] = []
                pooled = self._retract(group, self._onsets, touched)
                if not lines_of(group):
                    pooled.clear()
                for key in [*touched, *pooled]:  # (judged with the cells that settle)
                    group.pending.setdefault(key, now)
        return self.flush(now + self.settings.settle_s)

    def state(self) -> dict[str, Any]:
        return {"groups": {k: g.to_json() for k, g in self.groups.items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`; refused whole (:class:`~.saved.StateInvalid`) unless
        every field is as a save writes it."""
        check_cells_state(state)
        self.groups = OrderedDict(
            (k, CellGroup.from_json(g)) for k, g in state.get("groups", {}).items()
        )
        for group in self.groups.values():
            # a bad cell the snapshot does not hold cannot be shown: drop it
            group.pending = {k: t for k, t in group.pending.items()
                             if k[0] == LINES or k in group.cells}
            self.judge.drop(group, [k for k in group.bad if k[0] != LINES and k not in group.cells],
                            group.last)


register(InjectionCellDetector)
