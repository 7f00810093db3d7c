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

A cell is *bad* when

- it holds at least ``min_probes`` plaintext probes, and suspect ones from at least
  ``min_suspected_sources`` distinct sources (the account of a client report, else the
  address; an address from which an account reported a forged answer counts as that
  account: the same subscriber, not another witness); it is *confirmed* from
  ``min_suspect_clients`` sources, or with ``min_sensor_witnesses`` among them, and
  *suspected* otherwise: see *Framing* below;
- the Wilson lower bound of its suspect rate reaches ``min_rate`` (an optional floor,
  0 by default: an ISP that forges one answer in a thousand is still forging, and the
  contrasts below, not a share, tell a forging box from noise);
- TLS probes on the same line and hour (the control: an on-path box cannot forge
  them) do not show the same path anomalies: once there are ``min_tls_probes`` of
  them, the plaintext suspect rate must be above their anomaly rate. A control smaller
  than the plaintext cell it is compared with borrows strength from the other ASNs
  (``tls_borrow``): it is topped up to the cell's ``n`` with the other networks' TLS
  path-anomaly rate (``notes["injection"]["others_tls"]``, averaged over the cell's
  probes), a prior worth the probes it lacks, unless the ISP's own TLS anomaly rate
  (its Wilson lower bound) is above the others': then its path is not like theirs and
  its own control stands alone. Five forged answers in 63 plaintext probes against
  0 of 53 TLS ones prove nothing (0/53 allows a TLS rate up to 7 %); against a
  control of 63 with the other ISPs' TLS rate (0 %) for the ten it lacks, they do; and
- the other ASNs at the same time do not show it either: each probe carries the
  median flagged rate of the other networks that reached the same origin in the same minutes
  (``notes["injection"]["others"]``, from :mod:`pathsentry.detectors.injection_window`);
  their sum over the cell is the number of suspects the cell would hold were its ISP
  like the others, and the cell's rate must be above that rate (the reference's
  uncertainty taken as that of ``n`` probes, though the others' rate rests on more).
  An origin failure is seen by every network at once: it raises no cell alert (and the
  probes the session stage found ``origin_wide`` are not suspect at all).

"Above" is one-sided at ``z``: the lower bound of the difference of the two rates
(Newcombe's hybrid score interval, :func:`~pathsentry.detectors.injection_counts.rate_above`)
is positive. Asking instead that the two Wilson intervals do not overlap tests at about
z·√2 and needs some eight suspects even when TLS and the other ASNs show none, so an
ISP whose box forged a few answers each for six or seven subscribers went unnamed.

**Exact tails.** Both intervals take the reference's uncertainty to be that of the
cell's own ``n`` probes, so three forged answers in a few dozen are never above
anything. A cell that fails them is judged again on the *baselines* its probes carry
(``notes["injection"]["baseline"]``, ``["baseline_tls"]``, from
:meth:`~pathsentry.detectors.injection_window.NetworkWindow.baseline`): the median
other network's flagged rate and its TLS path-anomaly rate over their answers to every
origin in the last hours, with the answers they rest on. It is above them when both
beta-binomial tails -- ``k`` suspects or more in ``n`` probes at a rate drawn from the
reference's Jeffreys posterior -- are at most ``alpha`` (0.001: z = 1.96's one-sided
0.025 shared among a day's 24 hours). The rate against the other networks is the
larger of their baseline and their rate in the same minutes (``ref``), so an origin
failure still raises it; the TLS reference is the ISP's own TLS control topped up
with the others' baselines unless its own rate is above theirs (``tls_borrow``): their
TLS answers and, with ``tls_borrow_plain``, their plaintext ones at their flagged rate
(which bounds their path-anomaly rate from above). "A path like the others'" is
measured on every answer they sent: 0 of some 75 TLS answers alone leaves a TLS rate
of a few percent possible, and three forged answers in 24 probes of one line then
prove nothing (tail 2e-3), while 0 of those 75 and of their 150 plaintext answers do
(2e-4). ``min_probes`` still applies: the first minutes of an outage, before the other
networks' answers show it, hold a few flagged answers and nothing to contrast them
with. Only the contrasts change; the sources needed do not (see *Framing*): the tails
name injectors of three or four sources at the suspected level, or confirmed with a
sensor witness, and ``alpha = 0`` turns them off.

**Settling.** The other networks' rate in the same minutes is read from the window
*before* each probe, so the first answers of an origin failure, before the other
networks' answers show it, carry none of it, and their baselines (hours of answers)
none either: judged at once, three or four subscribers of one ISP whose answers came
first would name it. A cell is therefore judged ``settle_s`` (600 s, the injection
stage's ``window_s``) after the first suspect it received since it was last judged,
at the ISP's next probe or the next tick; until then it keeps its level. By then a
failure that every network sees is marked origin-wide, and the ISP's answers since
carry the other networks' rate at those minutes into the same cells. An ISP that sent
no answer in those minutes is judged on what it has (see the README's limits).

**Framing.** The guard against framing is the count of distinct sources, not the rate
nor the path marks: a client report's TTLs, headers and timings are numbers its
sender writes, so a colluder can give them any box's signature, on any ports and in
any hours, as consistently as a box would. What colluders cannot multiply cheaply is
themselves: an account per colluder, and each account's addresses count as it (an
address becomes an account's once it reports a forged answer from it, so the same
subscriber's reports without an account, or a sensor's, are not more witnesses).
``min_suspect_clients`` is therefore the number of colluders an ISP is protected
against, plus one: the default 5 means up to four colluding accounts, each with any
number of its own addresses, confirm nothing, however many probes they send.

Fewer sources are told apart by what no account writes: a **sensor witness**, a forged
answer that the operator's passive sensor (or an edge), not a client, saw on an
address (with ``anonymous_sources = "line"``: a line) from which no account reported a
forged answer. The sensor saw the packets (their TTLs, a sequence race) itself, on a
line the colluders' accounts never reported from; a colluder's own lines are his
account's and witness nothing (to make one, he must run a forging box on the path of
another line, one his account never reports from: packets, not a report). A cell whose
``min_suspected_sources`` (3) or more sources hold ``min_sensor_witnesses`` (1) such
witnesses is confirmed. Without one it is only *suspected*: an alert of severity
``low``, ``evidence.level = "suspected"``, whose summary gives its count of sources
and says it could be collusion; it rises to confirmed (same alert, next version) when
a fifth source or a witness arrives, and a confirmed alert stays confirmed. So two
colluding accounts raise nothing, three or four at most a suspected alert (the tests
frame with two and three, with their own sensor reports). An injector whose forged
answers reached fewer than three sources cannot be told from two colluders:
``pathsentry evaluate`` reports injectors named, named at the confirmed level and
*nameable* (five sources or more) apart. Reports without an account from addresses no
account used are counted by address; where anyone can send them (a launcher's
anonymous line check), ``anonymous_sources = "line"`` makes each vouch for its /24
only, at the cost of the many genuine victims that share a line.

Cells are re-judged whenever their plaintext or TLS counts move. A cell dropped from
state (idle longer than ``idle_ttl_s``, or beyond ``max_cells``) is no longer bad, and
the pooled cells it was summed into are judged again without it.

Events are partitioned by ASN (:meth:`InjectionCellDetector.group_keys`), so all the
cells of one ISP meet on one worker and the SOC gets one ``injection_cell`` alert per
ASN -- "AS4766, ports 80 and 8080, 09–18" -- whose id is derived from the ASN and
which is re-emitted with ``version + 1`` when its ports, hours or prefixes change
(and, on idle ticks, at most every ``refresh_s`` when its counts moved). Should
every cell clear again, the last version stands. The evidence contrasts the bad hours
with the other hours and with TLS, and each bad cell with the suspects the other ASNs'
rate predicts (``other_asns_expected``). The counts themselves, their bounded tables,
the Wilson bounds and the borrowed control are in
:mod:`pathsentry.detectors.injection_counts`. (This module is past 600 lines for its
docstring: the rules and the framing argument belong beside the code they govern.)

>>> round(wilson_lower(9, 10), 3), round(wilson_upper(0, 40), 3)
(0.596, 0.088)
>>> format_hours(range(9, 18)), format_hours([22, 23, 0, 1]), format_hours([3, 9, 10])
('09–18', '22–02', '03–04, 09–11')
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from pathsentry.detectors import register
from pathsentry.detectors.addresses import ip_text
from pathsentry.detectors.base import Detector, DetectorContext, Enriched, Findings
from pathsentry.detectors.injection import NOTES_KEY
from pathsentry.detectors.injection_counts import (
    Cell,
    beta_binomial_sf,
    borrowed_control,
    distinct_sources,
    expire,
    format_hours,
    merge,
    rate_above,
    sum_cells,
    touch,
    wilson_lower,
    wilson_upper,
)
from pathsentry.detectors.injection_saved import check_cells_state
from pathsentry.detectors.settings import load_settings
from pathsentry.schemas import Alert, HttpProbe, make_alert_id, severity_for

__all__ = [
    "CellSettings",
    "InjectionCellDetector",
    "format_hours",
    "wilson_lower",
    "wilson_upper",
]

ALL = "*"
#: The pooled cell of the lines already found bad (prefixes with a bad cell).
LINES = "+"
#: The hour of a line's all-day cell ``(prefix, port, ANY_HOUR)``.
ANY_HOUR = -1
#: The port of the ASN's all-port all-day cell ``(ALL, ANY_PORT, ANY_HOUR)``.
ANY_PORT = -1
CellKey = tuple[str, int, int]  # (prefix or "*", port, hour)
TlsKey = tuple[str, int]  # (prefix or "*", hour)
Signature = tuple[tuple[int, ...], tuple[int, ...], tuple[str, ...]]  # ports, hours, prefixes
#: How bad a cell is: not, suspected (could be collusion), confirmed.
CLEAN, SUSPECTED, CONFIRMED = 0, 1, 2
LEVELS = {SUSPECTED: "suspected", CONFIRMED: "confirmed"}
_NO_LINES: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class CellSettings:
    """Thresholds and bounds (``[detectors.injection_cells]`` in ``pathsentry.toml``)."""

    min_probes: int = 10
    #: a cell is judged this long after the first suspect probe it received since it
    #: was last judged (0: at once). The other networks' rate in the same minutes is
    #: read from before each probe, so the first answers of an origin failure carry
    #: none of it; after the injection stage's ``window_s`` (600 s) a failure that
    #: every network sees is marked origin-wide, and the ISP's probes since then carry
    #: the other networks' rate at those minutes into the same cells (keep it at least
    #: ``window_s``)
    settle_s: float = 600.0
    #: distinct sources (accounts of client reports, else addresses) of suspect probes;
    #: the framing bound, see the module docstring
    min_suspect_clients: int = 5
    #: distinct sources from which a cell is *suspected* (a ``low`` alert saying it could
    #: be collusion); 0, or ``min_suspect_clients`` or more: no suspected level
    min_suspected_sources: int = 3
    #: sensor witnesses (forged answers the operator's sensor or edge saw on a line no
    #: reporting account used) that make a suspected cell confirmed (0: never)
    min_sensor_witnesses: int = 1
    #: what a report without an account (or a sensor's) vouches for: ``address`` or
    #: ``line`` (its /24), for operators who cannot trust such reports' addresses
    anonymous_sources: str = "address"
    #: floor on the Wilson lower bound of a cell's suspect rate (0: the contrasts decide)
    min_rate: float = 0.0
    #: sources with forged answers in an hour (a port) that name it, when only all-day
    #: (all-port) cells are bad
    min_hour_sources: int = 2
    #: TLS probes on a line from which the TLS contrast applies.
    min_tls_probes: int = 3
    #: top a TLS control smaller than its plaintext cell up with the other networks'
    #: TLS path-anomaly rate at the same times (see the module docstring)
    tls_borrow: bool = True
    #: the exact TLS tail's borrowed control also counts the other networks' plaintext
    #: answers at their flagged rate (a bound of their path-anomaly rate from above):
    #: "a path like the others'" is measured on all their answers, not TLS alone
    tls_borrow_plain: bool = True
    z: float = 1.96
    #: the exact tails' level: a cell whose probes carry the other networks' baseline is
    #: above it and above TLS when both tails are at most ``alpha`` (the default 0.001 is
    #: z = 1.96's one-sided 0.025 shared among a day's 24 hours); 0: Newcombe at ``z``
    alpha: float = 0.001

    @property
    def suspected_from(self) -> int:
        """The distinct sources a cell needs to be bad at all."""
        low = self.min_suspected_sources
        return min(low, self.min_suspect_clients) if low > 0 else self.min_suspect_clients
    #: IANA zone for "hour of day"; empty: the offset each event's ``ts`` carries.
    timezone: str = ""
    max_groups: int = 20_000
    max_cells: int = 4096
    max_clients: int = 512
    max_examples: int = 5
    max_alert_events: int = 20
    max_alert_accounts: int = 50
    max_prefixes: int = 32
    idle_ttl_s: float = 14 * 86400.0
    refresh_s: float = 3600.0


@dataclass(slots=True)
class _Published:
    """What was last emitted for a group's alert."""

    version: int
    ts: float
    signature: Signature
    suspects: int
    level: str = "confirmed"


@dataclass(slots=True)
class _Group:
    asn: int | None
    as_name: str | None
    cells: OrderedDict[CellKey, Cell] = field(default_factory=OrderedDict)
    tls: OrderedDict[TlsKey, Cell] = field(default_factory=OrderedDict)
    bad: set[CellKey] = field(default_factory=set)
    #: the bad cells at the confirmed level (the rest of ``bad`` are suspected)
    sure: set[CellKey] = field(default_factory=set)
    #: anonymous sources (addresses, or lines) on which a sensor or an edge, not a
    #: client, saw a forged answer
    witnesses: set[str] = field(default_factory=set)
    #: The lines the pooled cells were last judged over (not persisted: re-judged).
    pooled: frozenset[str] = frozenset()
    accounts: list[str] = field(default_factory=list)
    #: address source -> the account source that reported forged answers from it
    owners: dict[str, str] = field(default_factory=dict)
    published: _Published | None = None
    last: float = 0.0
    tz_label: str = ""
    #: ``_lines()`` of the current ``bad`` set (derived, not persisted)
    lines: frozenset[str] | None = None
    #: ``bad`` changed since the alert signature was last looked at (not persisted)
    moved: bool = True
    #: cells awaiting judgement -> the time of the first suspect probe each received
    #: since it was last judged (see ``CellSettings.settle_s``)
    pending: dict[CellKey, float] = field(default_factory=dict)

    def mark_bad(self, key: CellKey, level: int) -> None:
        was = CONFIRMED if key in self.sure else SUSPECTED if key in self.bad else CLEAN
        if level == was:
            return
        if level:
            self.bad.add(key)
        else:
            self.bad.discard(key)
        if level == CONFIRMED:
            self.sure.add(key)
        else:
            self.sure.discard(key)
        if not level or not was:
            self.lines = None
        self.moved = True

    @property
    def level(self) -> int:
        return CONFIRMED if self.sure else SUSPECTED if self.bad else CLEAN

    def to_json(self) -> dict[str, Any]:
        pub = self.published
        return {
            "asn": self.asn, "as_name": self.as_name, "last": self.last,
            "tz_label": self.tz_label, "accounts": list(self.accounts),
            "owners": dict(self.owners), "witnesses": sorted(self.witnesses),
            "cells": [[*k, c.to_json()] for k, c in self.cells.items()],
            "tls": [[*k, c.to_json()] for k, c in self.tls.items()],
            "bad": sorted([list(k) for k in self.bad]),
            "sure": sorted([list(k) for k in self.sure]),
            "pending": sorted([[*k, t] for k, t in self.pending.items()]),
            "published": None if pub is None else {
                "version": pub.version, "ts": pub.ts, "suspects": pub.suspects,
                "level": pub.level,
                "signature": [list(x) for x in pub.signature],
            },
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> _Group:
        g = cls(asn=d["asn"], as_name=d["as_name"], last=d["last"], tz_label=d["tz_label"],
                accounts=list(d["accounts"]), owners=dict(d.get("owners", {})),
                witnesses=set(d.get("witnesses", ())))
        for p, port, hour, c in d["cells"]:
            g.cells[(p, port, hour)] = Cell.from_json(c)
        for p, hour, c in d["tls"]:
            g.tls[(p, hour)] = Cell.from_json(c)
        g.bad = {(p, port, hour) for p, port, hour in d["bad"]}
        g.pending = {(p, port, hour): t for p, port, hour, t in d.get("pending", ())}
        # saves without levels held confirmed cells only
        g.sure = ({(p, port, hour) for p, port, hour in d["sure"]} if "sure" in d
                  else set(g.bad))
        pub = d["published"]
        if pub is not None:
            ports, hours, prefixes = pub["signature"]
            g.published = _Published(pub["version"], pub["ts"],
                                     (tuple(ports), tuple(hours), tuple(prefixes)),
                                     pub["suspects"], pub.get("level", "confirmed"))
        return g


def _union(a: Signature, b: Signature) -> Signature:
    """An alert's subject only grows: ports, hours and prefixes seen bad stay listed."""
    return (tuple(sorted({*a[0], *b[0]})), tuple(sorted({*a[1], *b[1]})),
            tuple(sorted({*a[2], *b[2]})))


def source_of(probe: HttpProbe, account: str | None, line: str | None = None) -> str:
    """Who vouches for a probe: the account of a client report, else its address (its
    ``line``, the /24, when given: see ``anonymous_sources``)."""
    if probe.reporter == "client" and account:
        return "acct:" + account
    return anonymous_source(probe, line)


def anonymous_source(probe: HttpProbe, line: str | None) -> str:
    """What a report without an account vouches for: its address, or its ``line``."""
    return "line:" + line if line is not None else "ip:" + ip_text(probe.src_ip)


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
        self.groups: OrderedDict[str, _Group] = OrderedDict()
        self._tz_labels: dict[timedelta | None, str] = {}
        self._suspected_from = self.settings.suspected_from

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
        if verdict["tls"]:
            for p, h in ((ev.prefix, hour), (ALL, hour), (ALL, ANY_HOUR), (ev.prefix, ANY_HOUR)):
                touch(group.tls, (p, h), s.max_cells).add(
                    client, bool(verdict["path_anomaly"]), ts, probe.event_id, s)
                touched.extend([k for k in group.bad if k[0] == p and k[2] == h])
        else:
            suspect = bool(verdict["suspect"]) and not verdict.get("origin_wide", False)
            ref = float(verdict.get("others") or 0.0)
            ref_tls = _pool(verdict.get("others_tls"), 0.0)
            base = _pool(verdict.get("baseline"), verdict.get("baseline_n"))
            tbase = _pool(verdict.get("baseline_tls"), verdict.get("baseline_tls_n"))
            keys = [(p, probe.target.port, h) for p, h in (
                (ev.prefix, hour), (ALL, hour), (ALL, ANY_HOUR), (ev.prefix, ANY_HOUR))]
            keys += [(ALL, ANY_PORT, ANY_HOUR), (ALL, ANY_PORT, hour)]
            if suspect:
                self._vouch(group, probe, client, ev.account, line)
                if s.settle_s > 0.0:  # (pending cells are held ones, or pooled over them)
                    for cell_key in keys:
                        group.pending.setdefault(cell_key, ts)
                    if ev.prefix in self._lines(group):
                        group.pending.setdefault((LINES, probe.target.port, hour), ts)
            for cell_key in keys:
                touch(group.cells, cell_key, s.max_cells, evicted).add(
                    client, suspect, ts, probe.event_id, s, ref,
                    None if ref_tls is None else ref_tls[0], base, tbase)
                touched.append(cell_key)
        if evicted:
            self._drop(group, evicted, ts)
        due = self._due(group, ts)
        # (no pooled cell among them)
        self._judge(group, touched + [k for k in due if k[0] != LINES], _NO_LINES, ts)
        lines = self._lines(group)
        if lines != group.pooled:  # other lines: re-judge every pooled cell
            pooled = self._repool(group, lines)
        elif not lines:
            pooled = set()
        elif verdict["tls"]:
            pooled = {(LINES, k[1], hour) for k in group.bad}
        else:
            pooled = {(LINES, probe.target.port, hour)}
        pooled.update(k for k in due if k[0] == LINES)
        self._judge(group, pooled, lines, ts)
        return self._emit(key, group, ts)

    def _emit(self, key: str, group: _Group, ts: float) -> Findings | None:
        """The alert's next version, when the bad cells moved its subject or level."""
        if not group.moved:
            # the bad cells are those of the last look: an alert already covers them
            return None
        group.moved = False
        signature = self._signature(group)
        if not signature[1]:  # no hour is bad yet
            return None
        if group.published is not None:
            signature = _union(group.published.signature, signature)
            if (group.published.signature == signature
                    and group.published.level == _alert_level(group)):
                return None
        return Findings(alerts=[self._publish(key, group, ts, signature)])

    def _vouch(self, group: _Group, probe: HttpProbe, client: str, account: str | None,
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

    def _tz_label(self, local: datetime) -> str:
        off = local.utcoffset()
        label = self._tz_labels.get(off)
        if label is None:
            label = self._tz_labels[off] = local.strftime("UTC%z")
        return label

    def _group(self, key: str, ev: Enriched, ts: float) -> _Group:
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = _Group(asn=ev.geo.asn, as_name=ev.geo.as_name)
            while len(self.groups) > self.settings.max_groups:
                self.groups.popitem(last=False)
        else:
            self.groups.move_to_end(key)
        group.last = max(group.last, ts)
        return group

    def _judge(self, group: _Group, keys: Iterable[CellKey], lines: Set[str],
               now: float) -> None:
        """Judge the cells at ``keys``, except those with a suspect probe younger than
        ``settle_s`` since they were last judged: they keep their level until then."""
        settle, pending = self.settings.settle_s, group.pending
        for cell_key in keys:
            since = pending.get(cell_key)
            if since is not None:
                if now < since + settle:
                    continue
                del pending[cell_key]
            group.mark_bad(cell_key, self._level(group, cell_key, lines))

    def _due(self, group: _Group, now: float) -> list[CellKey]:
        """The pending cells whose first suspect since their last judgement has settled."""
        if not group.pending:
            return []
        settled = now - self.settings.settle_s
        return [k for k, since in group.pending.items() if since <= settled]

    def _repool(self, group: _Group, lines: frozenset[str]) -> set[CellKey]:
        """Other lines are bad: every pooled cell is to be judged again."""
        group.pooled = lines
        pooled = {(LINES, p, h) for p_, p, h in group.cells
                  if p_ in lines and h != ANY_HOUR and p != ANY_PORT}
        pooled.update(k for k in group.bad if k[0] == LINES)  # also those of lines gone
        return pooled

    def _settle(self, key: str, group: _Group, now: float) -> Findings | None:
        """Judge the cells that settled by ``now`` (a tick: no probe came to do it)."""
        due = self._due(group, now)
        if not due:
            return None
        self._judge(group, [k for k in due if k[0] != LINES], _NO_LINES, now)
        lines = self._lines(group)
        pooled = {k for k in due if k[0] == LINES}
        if lines != group.pooled:
            pooled |= self._repool(group, lines)
        self._judge(group, pooled, lines, now)
        return self._emit(key, group, now)

    def _drop(self, group: _Group, gone: Iterable[CellKey], now: float) -> None:
        """Cells no longer held (evicted, expired) are no longer bad; the bad pooled
        cells, whose sums may have lost members or whole lines, are judged again."""
        pending = group.pending
        for key in gone:
            group.mark_bad(key, CLEAN)
            pending.pop(key, None)
        lines = self._lines(group)
        for key in [k for k in pending if k[0] == LINES and not any(
                (p, k[1], k[2]) in group.cells for p in lines)]:
            del pending[key]  # (no line's cell left to pool)
        self._judge(group, [k for k in group.bad if k[0] == LINES], lines, now)

    @staticmethod
    def _cell_at(group: _Group, key: CellKey, lines: Set[str]) -> Cell:
        prefix, port, hour = key
        if prefix == LINES:  # lines in order: the examples, hence event ids, are stable
            return merge(group.cells.get((p, port, hour)) for p in sorted(lines))
        return group.cells.get(key, Cell())

    @staticmethod
    def _contrast(group: _Group, ports: set[int], hours: set[int]) -> tuple[
            tuple[int, int], tuple[int, int], tuple[int, int]]:
        """(probes, suspect) in the bad hours, outside them, and TLS in them: on the
        lines found bad if any, else ASN-wide."""
        lines = InjectionCellDetector._lines(group) or frozenset({ALL})
        plain = [(k, c) for k, c in group.cells.items()
                 if k[0] in lines and k[1] in ports and k[2] != ANY_HOUR]
        return (
            sum_cells(c for k, c in plain if k[2] in hours),
            sum_cells(c for k, c in plain if k[2] not in hours),
            sum_cells(c for k, c in group.tls.items() if k[0] in lines and k[1] in hours),
        )

    @staticmethod
    def _lines(group: _Group) -> frozenset[str]:
        if group.lines is None:
            group.lines = frozenset(k[0] for k in group.bad if k[0] not in (ALL, LINES))
        return group.lines

    def _level(self, group: _Group, key: CellKey, lines: Set[str]) -> int:
        """How bad the cell at ``key`` is (``LINES``: pooled over ``lines``): ``CLEAN``,
        ``SUSPECTED`` or ``CONFIRMED`` (see *Framing* in the module docstring).

        Counts are summed (never merged into a new cell) and the cheapest test
        goes first: most cells fail on their probe count.
        """
        s = self.settings
        prefix, port, hour = key
        if prefix == LINES:
            cells = [c for c in (group.cells.get((p, port, hour)) for p in lines) if c is not None]
            n, k = sum_cells(cells)
            if n <= 0 or n < s.min_probes:
                return CLEAN
            held = sum(len(c.suspect_clients) for c in cells)
        else:
            one = group.cells.get(key)
            if one is None:
                return CLEAN  # no probe
            n, k = one.n, one.k
            if n <= 0 or n < s.min_probes:
                return CLEAN
            cells = [one]
            held = len(one.suspect_clients)
        # (the sources counted apart are at most the cells' own: the union needs no set
        # when they are fewer than ``suspected_from``)
        if held < self._suspected_from:
            return CLEAN
        # (collecting stops at ``min_suspect_clients``: more confirm nothing more, and
        # the witnesses are only counted among fewer, all of them then)
        sources = distinct_sources((c.suspect_clients.keys() for c in cells),
                                   s.min_suspect_clients, group.owners, exact=True)
        if len(sources) < self._suspected_from:
            return CLEAN
        lower = wilson_lower(k, n, s.z)
        if lower < s.min_rate:
            return CLEAN
        n_tls, k_tls = self._tls_of(group, key, lines)
        if not (rate_above(k, n, sum(c.ref for c in cells), n, s.z, lower) > 0.0
                and self._above_tls(k, n, cells, n_tls, k_tls, lower)):
            # (not above the other networks at the same times, or TLS, at ``z``: the
            # exact tails against their baselines may still tell)
            tails = self._tails(k, n, cells, n_tls, k_tls, s.alpha)
            if tails is None or max(tails) > s.alpha:
                return CLEAN
        if len(sources) >= s.min_suspect_clients:
            return CONFIRMED
        witnessed = sum(1 for w in sources if w in group.witnesses)
        return CONFIRMED if 0 < s.min_sensor_witnesses <= witnessed else SUSPECTED

    @staticmethod
    def _tls_of(group: _Group, key: CellKey, lines: Set[str]) -> tuple[int, int]:
        """(probes, path-anomalous) of the TLS control of the cell at ``key``."""
        prefix, _, hour = key
        if prefix == LINES:
            return sum_cells(group.tls.get((p, hour)) for p in lines)
        return sum_cells([group.tls.get((prefix, hour))])

    def _above_tls(self, k: int, n: int, cells: list[Cell], n_tls: int, k_tls: int,
                   lower: float) -> bool:
        """The cell's rate is above its TLS control's (Newcombe, the borrowed control
        when it applies): the rule for cells without a baseline."""
        s = self.settings
        borrowed = None if not s.tls_borrow else borrowed_control(
            n, n_tls, k_tls, sum(c.ref_tls for c in cells), sum(c.ref_tls_n for c in cells), s.z)
        if borrowed is not None:
            return rate_above(k, n, borrowed[1], borrowed[0], s.z, lower) > 0.0
        return n_tls < s.min_tls_probes or rate_above(k, n, k_tls, n_tls, s.z, lower) > 0.0

    def _tails(self, k: int, n: int, cells: list[Cell], n_tls: int, k_tls: int,
               stop: float = 1.0) -> tuple[float, float] | None:
        """The exact tails of ``k`` suspects in ``n`` probes against the other networks
        and against TLS (see *exact tails* in the module docstring); ``None``: no probe
        of the cells had a baseline (or ``alpha`` is 0), the Newcombe rules apply.
        ``stop``: a tail above it is only known to be (see ``beta_binomial_sf``)."""
        s = self.settings
        count = sum(c.base_c for c in cells)
        if count <= 0 or s.alpha <= 0.0:
            return None
        size = sum(c.base_n for c in cells) / count
        rate = min(1.0, max(sum(c.base for c in cells) / count, sum(c.ref for c in cells) / n))
        others = beta_binomial_sf(k, n, rate * size + 0.5, (1.0 - rate) * size + 0.5, stop)
        a, b = k_tls + 0.5, n_tls - k_tls + 0.5
        borrowed = sum(c.tbase_c for c in cells)
        rate_tls = size_tls = 0.0
        if borrowed:
            rate_tls, size_tls = sum(c.tbase for c in cells) / borrowed, sum(
                c.tbase_n for c in cells) / borrowed
        if s.tls_borrow_plain and borrowed:  # their plaintext answers: the same paths
            rate_tls = (rate_tls * size_tls + rate * size) / (size_tls + size or 1.0)
            size_tls += size
        if s.tls_borrow and borrowed and (
                not n_tls or wilson_lower(k_tls, n_tls, s.z) <= rate_tls):
            a, b = a + rate_tls * size_tls, b + (1.0 - rate_tls) * size_tls
        elif n_tls < s.min_tls_probes:
            return others, 0.0  # no control to speak of: the other networks decide
        return others, beta_binomial_sf(k, n, a, b, stop)

    # -- the alert --------------------------------------------------------------------

    def _baseline_evidence(self, group: _Group, key: CellKey, c: Cell,
                           lines: Set[str]) -> dict[str, Any]:
        """The other networks' baseline beside the cell's rate, and the exact tails."""
        if not c.base_c:
            return {}
        tails = self._tails(c.k, c.n, [c], *self._tls_of(group, key, lines))
        return {"baseline_rate": round(c.base / c.base_c, 6),
                "baseline_answers": round(c.base_n / c.base_c, 1),
                "tail_other_asns": None if tails is None else float(f"{tails[0]:.3g}"),
                "tail_tls": None if tails is None else float(f"{tails[1]:.3g}")}

    def _signature(self, group: _Group) -> Signature:
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
        prefixes = tuple(sorted(self._lines(group))[: self.settings.max_prefixes])
        return tuple(sorted(all_ports)), tuple(sorted(hours)), prefixes

    def _suspect_hours(self, group: _Group, ports: set[int],
                       asn_wide: list[tuple[int, int, Cell]] | None = None) -> tuple[int, ...]:
        """The hours in which ``min_hour_sources`` distinct sources got forged answers on
        ``ports`` (ASN-wide hourly cells; ``asn_wide``: :func:`_asn_wide` of ``group``,
        when already listed); see :meth:`_named`."""
        per: dict[int, set[str]] = {}
        for port, hour, c in (asn_wide if asn_wide is not None else _asn_wide(group)):
            if hour != ANY_HOUR and port in ports:
                per.setdefault(hour, set()).update(c.suspect_clients)
        return self._named(group, per)

    def _named(self, group: _Group, per: Mapping[int, Collection[str]]) -> tuple[int, ...]:
        """The hours (ports) with forged answers from ``min_hour_sources`` distinct
        sources; when none has that many, every one with a forgery (the bad cell they
        describe was judged on its own sources: a box's few forgeries spread over many
        hours or ports still need them named)."""
        same = group.owners
        named = tuple(sorted(h for h, who in per.items()
                             if len({same.get(w, w) for w in who})
                             >= self.settings.min_hour_sources))
        return named or tuple(sorted(per))

    def _prefixes(self, group: _Group, ports: set[int], hours: set[int]) -> list[str]:
        """Without a bad line (only ASN-wide roll-ups are bad): the prefixes with
        suspect probes on the bad ports and hours, most suspect first."""
        per: dict[str, int] = {}
        for (p, port, hour), c in group.cells.items():
            if p not in (ALL, LINES) and c.k and port in ports and hour in hours:
                per[p] = per.get(p, 0) + c.k
        return sorted(per, key=lambda p: (-per[p], p))[: self.settings.max_prefixes]

    def _publish(
        self,
        key: str,
        group: _Group,
        ts: float,
        signature: Signature,
    ) -> Alert:
        s = self.settings
        ports, hours = set(signature[0]), set(signature[1])
        lines = self._lines(group)
        bad_cells = [(k, self._cell_at(group, k, lines)) for k in sorted(group.bad)]
        (n_in, k_in), (n_out, k_out), (n_tls, k_tls) = self._contrast(group, ports, hours)
        where = "the alerted lines" if lines else "the whole AS"
        score = max((wilson_lower(c.k, c.n, s.z) for _, c in bad_cells), default=0.0)
        level = _alert_level(group)
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
        group.published = _Published(version, ts, signature, k_in, level)
        return Alert(
            alert_id=make_alert_id(self.name, "injection_cell", key),
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
            detector=self.name,
            first_seen=_dt(first),
            last_seen=_dt(last),
            version=version,
        )

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
                self._drop(group, gone, now)
            settled = self._settle(key, group, now)
            if settled is not None:
                out.alerts.extend(settled.alerts)
            pub = group.published
            if pub is None or now - pub.ts < s.refresh_s or not group.bad:
                continue  # no cell is bad any more: the last version stands
            signature = _union(pub.signature, self._signature(group))
            (_, k_in), _, _ = self._contrast(group, set(signature[0]), set(signature[1]))
            if (k_in != pub.suspects or signature != pub.signature
                    or pub.level != _alert_level(group)):
                out.alerts.append(self._publish(key, group, now, signature))
        return out or None

    def state(self) -> dict[str, Any]:
        return {"groups": {k: g.to_json() for k, g in self.groups.items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`; refused whole (:class:`~.saved.StateInvalid`) unless
        every field is as a save writes it."""
        check_cells_state(state)
        self.groups = OrderedDict(
            (k, _Group.from_json(g)) for k, g in state.get("groups", {}).items()
        )
        for group in self.groups.values():
            # a bad cell the snapshot does not hold cannot be shown: drop it
            group.pending = {k: t for k, t in group.pending.items()
                             if k[0] == LINES or k in group.cells}
            self._drop(group, [k for k in group.bad if k[0] != LINES and k not in group.cells],
                       group.last)


def _asn_wide(group: _Group) -> list[tuple[int, int, Cell]]:
    """``(port, hour, cell)`` of the ASN-wide cells with suspect probes (one pass over the
    table for both of :meth:`InjectionCellDetector._signature`'s uses, which do not
    depend on the order: the table is read as the plain dict it also is, several times
    faster than in its recency order, which looks every key up again)."""
    return [(port, hour, c) for (p, port, hour), c in dict.items(group.cells)
            if p == ALL and c.suspect_clients]


def _alert_level(group: _Group) -> str:
    """The alert's level: confirmed once any of its cells was (like its subject, it only
    rises), else suspected."""
    if group.level == CONFIRMED or (group.published and group.published.level == "confirmed"):
        return "confirmed"
    return "suspected"


def _pool(rate: Any, size: Any) -> tuple[float, float] | None:
    """(rate, size) from a note's rate in [0, 1] and the answers it rests on (a
    non-negative number; none: 0, the rate alone), else none."""
    if not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        return None
    ok = isinstance(size, (int, float)) and 0.0 <= size < float("inf")
    return float(rate), float(size) if ok else 0.0


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


register(InjectionCellDetector)
