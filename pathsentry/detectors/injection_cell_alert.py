"""The ``injection_cell`` alert: one per ASN, built from its bad cells.

:class:`CellAlerts` turns the cells :class:`~pathsentry.detectors.injection_cell_judge.CellJudge`
found bad into the alert of their ASN -- "AS4766, ports 80 and 8080, 09–18": its subject
(the ports, the hours named by enough sources, the lines), its level (suspected or
confirmed; it only rises), and its evidence: the bad hours against the other hours and
TLS on the same lines, each bad cell beside the suspects the other ASNs' rate predicts
(``other_asns_expected``) and beside their baseline with the exact tails, and the count
of distinct sources and sensor witnesses. It owns when a new version is due: when the
subject or the level moves (an alert's subject only grows), and on idle ticks at most
every ``refresh_s`` when its counts moved.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Set
from datetime import UTC, datetime
from typing import Any

from pathsentry.detectors.base import Findings
from pathsentry.detectors.injection_cell_judge import CellJudge
from pathsentry.detectors.injection_cell_state import (
    ALL,
    ANY_HOUR,
    ANY_PORT,
    CONFIRMED,
    LINES,
    CellGroup,
    CellKey,
    CellSettings,
    Published,
    Signature,
    cell_at,
    lines_of,
    union,
)
from pathsentry.detectors.injection_counts import (
    Cell,
    distinct_sources,
    format_hours,
    sum_cells,
    wilson_lower,
)
from pathsentry.schemas import Alert, make_alert_id, severity_for

__all__ = ["CellAlerts", "alert_level", "contrast"]


class CellAlerts:
    """Publishes the ``injection_cell`` alert of an ASN's group (see the module docstring)."""

    def __init__(self, detector: str, settings: CellSettings, judge: CellJudge) -> None:
        #: the detector's name, the alerts' ``detector``
        self.detector = detector
        self.settings = settings
        self.judge = judge

    def emit(self, key: str, group: CellGroup, ts: float) -> Findings | None:
        """The alert's next version, when the bad cells moved its subject or level."""
        if not group.moved:
            # the bad cells are those of the last look: an alert already covers them
            return None
        group.moved = False
        signature = self.signature(group)
        if not signature[1]:  # no hour is bad yet
            return None
        if group.published is not None:
            signature = union(group.published.signature, signature)
            if (group.published.signature == signature
                    and group.published.level == alert_level(group)):
                return None
        return Findings(alerts=[self.publish(key, group, ts, signature)])

    def refresh(self, key: str, group: CellGroup, now: float) -> Alert | None:
        """The alert's next version on a tick, at most every ``refresh_s``, when its
        counts, subject or level moved since the last."""
        pub = group.published
        if pub is None or now - pub.ts < self.settings.refresh_s or not group.bad:
            return None  # no cell is bad any more: the last version stands
        signature = union(pub.signature, self.signature(group))
        (_, k_in), _, _ = contrast(group, set(signature[0]), set(signature[1]))
        if (k_in != pub.suspects or signature != pub.signature
                or pub.level != alert_level(group)):
            return self.publish(key, group, now, signature)
        return None

    def _baseline_evidence(self, group: CellGroup, key: CellKey, c: Cell,
                           lines: Set[str]) -> dict[str, Any]:
        """The other networks' baseline beside the cell's rate, and the exact tails."""
        if not c.base_c:
            return {}
        tails = self.judge.tails(c.k, c.n, [c], *self.judge.tls_of(group, key, lines))
        return {"baseline_rate": round(c.base / c.base_c, 6),
                "baseline_answers": round(c.base_n / c.base_c, 1),
                "tail_other_asns": None if tails is None else float(f"{tails[0]:.3g}"),
                "tail_tls": None if tails is None else float(f"{tails[1]:.3g}")}

    def signature(self, group: CellGroup) -> Signature:
        all_ports = {k[1] for k in group.bad}
        asn_wide = None
        if ANY_PORT in all_ports:  # the all-port cell: the ports forged answers came on
            asn_wide = _asn_wide(group)
            all_ports.discard(ANY_PORT)
            all_ports.update(self._named(group, {
                port: c.suspect_clients.keys() for port, hour, c in asn_wide
                if hour == ANY_HOUR and port != ANY_PORT}))
        hours = {k[2] for k in group.bad if k[2] != ANY_HOUR}
        all_day = {k[1] for k in group.bad if k[2] == ANY_HOUR}
        if ANY_PORT in all_day:
            all_day = all_ports
        if all_day:
            hours.update(self._suspect_hours(group, all_day, asn_wide))
        prefixes = tuple(sorted(lines_of(group))[: self.settings.max_prefixes])
        return tuple(sorted(all_ports)), tuple(sorted(hours)), prefixes

    def _suspect_hours(self, group: CellGroup, ports: set[int],
                       asn_wide: list[tuple[int, int, Cell]] | None = None) -> tuple[int, ...]:
        """The hours in which ``min_hour_sources`` distinct sources got forged answers on
        ``ports`` (ASN-wide hourly cells; ``asn_wide``: :func:`_asn_wide` of ``group``,
        when already listed); see :meth:`_named`."""
        per: dict[int, set[str]] = {}
        for port, hour, c in (asn_wide if asn_wide is not None else _asn_wide(group)):
            if hour != ANY_HOUR and port in ports:
                per.setdefault(hour, set()).update(c.suspect_clients)
        return self._named(group, per)

    def _named(self, group: CellGroup, per: Mapping[int, Collection[str]]) -> tuple[int, ...]:
        """The hours (ports) with forged answers from ``min_hour_sources`` distinct
        sources; when none has that many, every one with a forgery (the bad cell they
        describe was judged on its own sources: a box's few forgeries spread over many
        hours or ports still need them named)."""
        same = group.owners
        named = tuple(sorted(h for h, who in per.items()
                             if len({same.get(w, w) for w in who})
                             >= self.settings.min_hour_sources))
        return named or tuple(sorted(per))

    def _prefixes(self, group: CellGroup, ports: set[int], hours: set[int]) -> list[str]:
        """Without a bad line (only ASN-wide roll-ups are bad): the prefixes with
        suspect probes on the bad ports and hours, most suspect first."""
        per: dict[str, int] = {}
        for (p, port, hour), c in group.cells.items():
            if p not in (ALL, LINES) and c.k and port in ports and hour in hours:
                per[p] = per.get(p, 0) + c.k
        return sorted(per, key=lambda p: (-per[p], p))[: self.settings.max_prefixes]

    def publish(
        self,
        key: str,
        group: CellGroup,
        ts: float,
        signature: Signature,
    ) -> Alert:
        s = self.settings
        ports, hours = set(signature[0]), set(signature[1])
        lines = lines_of(group)
        bad_cells = [(k, cell_at(group, k, lines)) for k in sorted(group.bad)]
        (n_in, k_in), (n_out, k_out), (n_tls, k_tls) = contrast(group, ports, hours)
        where = "the alerted lines" if lines else "the whole AS"
        score = max((wilson_lower(c.k, c.n, s.z) for _, c in bad_cells), default=0.0)
        level = alert_level(group)
        sources = distinct_sources((c.suspect_clients.keys() for _, c in bad_cells),
                                   s.max_clients, group.owners)
        witnessed = sum(1 for w in sources if w in group.witnesses)
        events: list[str] = []
        for _, c in bad_cells:
            events.extend(e for e in c.examples if e not in events)
        first = min((c.first_suspect for _, c in bad_cells), default=ts)
        last = max((c.last_suspect for _, c in bad_cells), default=ts)
        hours_txt = format_hours(hours)
        asn_txt = f"AS{group.asn}" if group.asn is not None else key
        prefixes = list(signature[2]) or self._prefixes(group, ports, hours)
        port_txt = ", ".join(str(p) for p in sorted(ports))
        witness_txt = (f", or with {s.min_sensor_witnesses} seen by a sensor"
                       if s.min_sensor_witnesses else "")
        doubt = "" if level == "confirmed" else (
            f"suspected, {len(sources)} sources (confirmed from {s.min_suspect_clients}"
            f"{witness_txt}), could be collusion: ")
        summary = (
            f"{doubt}{asn_txt} ({group.as_name or 'unknown AS'}): plaintext answers forged on the "
            f"path, port {port_txt}, {hours_txt} ({group.tz_label}); on {where} "
            f"{k_in}/{n_in} plaintext probes suspect in those hours vs {k_out}/{n_out} "
            f"outside, TLS {k_tls}/{n_tls} anomalous; {len(prefixes)} prefix(es)"
        )
        version = 1 if group.published is None else group.published.version + 1
        group.published = Published(version, ts, signature, k_in, level)
        return Alert(
            alert_id=make_alert_id(self.detector, "injection_cell", key),
            ts=_dt(ts),
            kind="injection_cell",
            severity=severity_for(score) if level == "confirmed" else "low",
            score=round(score, 4),
            subject={
                "asn": group.asn, "as_name": group.as_name, "prefixes": prefixes,
                "ports": sorted(ports), "hours": hours_txt, "timezone": group.tz_label,
            },
            accounts=list(group.accounts),
            event_ids=events[: s.max_alert_events],
            evidence={
                "cells": [
                    {"prefix": p, "port": None if port == ANY_PORT else port,
                     "hour": None if h == ANY_HOUR else h,
                     "probes": c.n, "suspect": c.k, "clients": len(c.clients),
                     "other_asns_expected": round(c.ref, 2),
                     "suspect_clients": len(c.suspect_clients),
                     "rate": round(c.k / c.n, 4),
                     "rate_lower": round(wilson_lower(c.k, c.n, s.z), 4),
                     **self._baseline_evidence(group, (p, port, h), c, lines)}
                    for (p, port, h), c in bad_cells
                ],
                "level": level,
                "sources": {"distinct": len(sources), "sensor_witnesses": witnessed,
                            "confirmed_from": s.min_suspect_clients,
                            "suspected_from": s.suspected_from,
                            "witnesses_to_confirm": s.min_sensor_witnesses},
                "contrast_on": where,
                "in_hours": {"probes": n_in, "suspect": k_in},
                "off_hours": {"probes": n_out, "suspect": k_out},
                "tls_same_hours": {"probes": n_tls, "path_anomalous": k_tls},
                "confidence": f"Wilson lower bound at z={s.z}",
            },
            summary=summary,
            detector=self.detector,
            first_seen=_dt(first),
            last_seen=_dt(last),
            version=version,
        )


def contrast(group: CellGroup, ports: set[int], hours: set[int]) -> tuple[
        tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(probes, suspect) in the bad hours, outside them, and TLS in them: on the
    lines found bad if any, else ASN-wide."""
    lines = lines_of(group) or frozenset({ALL})
    plain = [(k, c) for k, c in group.cells.items()
             if k[0] in lines and k[1] in ports and k[2] != ANY_HOUR]
    return (
        sum_cells(c for k, c in plain if k[2] in hours),
        sum_cells(c for k, c in plain if k[2] not in hours),
        sum_cells(c for k, c in group.tls.items() if k[0] in lines and k[1] in hours),
    )


def _asn_wide(group: CellGroup) -> list[tuple[int, int, Cell]]:
    """``(port, hour, cell)`` of the ASN-wide cells with suspect probes (one pass over the
    table for both of :meth:`CellAlerts.signature`'s uses, which do not depend on
    the order: the table is read as the plain dict it also is, several times
    faster than in its recency order, which looks every key up again)."""
    return [(port, hour, c) for (p, port, hour), c in dict.items(group.cells)
            if p == ALL and c.suspect_clients]


def alert_level(group: CellGroup) -> str:
    """The alert's level: confirmed once any of its cells was (like its subject, it only
    rises), else suspected."""
    if group.level == CONFIRMED or (group.published and group.published.level == "confirmed"):
        return "confirmed"
    return "suspected"


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)
