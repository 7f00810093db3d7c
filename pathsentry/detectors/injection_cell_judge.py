"""The judgement of the injection cells: whether a cell's forged answers stand above
the other networks and above TLS, and when a cell is judged.

:mod:`pathsentry.detectors.injection_cells` (the detector) counts each ASN's probes
into cells (:mod:`pathsentry.detectors.injection_cell_state`); :class:`CellJudge` says
how bad each cell is -- clean, *suspected* or *confirmed* -- by the rules below, holds a
cell back until it has settled, and judges the pooled cells again when the lines found
bad change or cells are dropped. The alert built from the bad cells is
:mod:`pathsentry.detectors.injection_cell_alert`.

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
  them, the plaintext suspect rate must be above their anomaly rate (a TLS answer is
  path-anomalous only with a mark besides the origin's headers missing: the origin's
  fallback page is the origin's, :func:`pathsentry.detectors.injection._path_anomaly`).
  A control smaller
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
carry the other networks' rate at those minutes into the same cells. Five or more
first answers outweigh the few that follow them, so the failure's onset, which the
session stage finds once the failure is origin-wide and carries in every later
answer's notes, takes the ISP's suspects of that origin and anomaly since the onset
out of its cells before they are judged (:mod:`pathsentry.detectors.injection_onset`).
An ISP that sent no answer in those minutes is judged on what it has (see the README's
limits).

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

"""

from __future__ import annotations

from collections.abc import Iterable, Set

from pathsentry.detectors.injection_cell_state import (
    ANY_HOUR,
    ANY_PORT,
    CLEAN,
    CONFIRMED,
    LINES,
    NO_LINES,
    SUSPECTED,
    CellGroup,
    CellKey,
    CellSettings,
    lines_of,
)
from pathsentry.detectors.injection_counts import (
    Cell,
    beta_binomial_sf,
    borrowed_control,
    distinct_sources,
    rate_above,
    sum_cells,
    wilson_lower,
)

__all__ = ["CellJudge"]


class CellJudge:
    """How bad an ASN's cells are, judged once they settled (see the module docstring)."""

    def __init__(self, settings: CellSettings) -> None:
        self.settings = settings
        self._suspected_from = settings.suspected_from

    def judge_cells(self, group: CellGroup, keys: Iterable[CellKey], lines: Set[str],
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
            group.mark_bad(cell_key, self.level(group, cell_key, lines))

    def due(self, group: CellGroup, now: float) -> list[CellKey]:
        """The pending cells whose first suspect since their last judgement has settled."""
        if not group.pending:
            return []
        settled = now - self.settings.settle_s
        return [k for k, since in group.pending.items() if since <= settled]

    def repool(self, group: CellGroup, lines: frozenset[str]) -> set[CellKey]:
        """Other lines are bad: every pooled cell is to be judged again."""
        group.pooled = lines
        pooled = {(LINES, p, h) for p_, p, h in group.cells
                  if p_ in lines and h != ANY_HOUR and p != ANY_PORT}
        pooled.update(k for k in group.bad if k[0] == LINES)  # also those of lines gone
        return pooled

    def settle(self, group: CellGroup, now: float) -> bool:
        """Judge the cells that settled by ``now`` (a tick: no probe came to do it);
        false: none had."""
        due = self.due(group, now)
        if not due:
            return False
        self.judge_cells(group, [k for k in due if k[0] != LINES], NO_LINES, now)
        lines = lines_of(group)
        pooled = {k for k in due if k[0] == LINES}
        if lines != group.pooled:
            pooled |= self.repool(group, lines)
        self.judge_cells(group, pooled, lines, now)
        return True

    def drop(self, group: CellGroup, gone: Iterable[CellKey], now: float) -> None:
        """Cells no longer held (evicted, expired) are no longer bad; the bad pooled
        cells, whose sums may have lost members or whole lines, are judged again."""
        pending = group.pending
        for key in gone:
            group.mark_bad(key, CLEAN)
            pending.pop(key, None)
        lines = lines_of(group)
        for key in [k for k in pending if k[0] == LINES and not any(
                (p, k[1], k[2]) in group.cells for p in lines)]:
            del pending[key]  # (no line's cell left to pool)
        self.judge_cells(group, [k for k in group.bad if k[0] == LINES], lines, now)

    def level(self, group: CellGroup, key: CellKey, lines: Set[str]) -> int:
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
        n_tls, k_tls = self.tls_of(group, key, lines)
        if not (rate_above(k, n, sum(c.ref for c in cells), n, s.z, lower) > 0.0
                and self._above_tls(k, n, cells, n_tls, k_tls, lower)):
            # (not above the other networks at the same times, or TLS, at ``z``: the
            # exact tails against their baselines may still tell)
            tails = self.tails(k, n, cells, n_tls, k_tls, s.alpha)
            if tails is None or max(tails) > s.alpha:
                return CLEAN
        if len(sources) >= s.min_suspect_clients:
            return CONFIRMED
        witnessed = sum(1 for w in sources if w in group.witnesses)
        return CONFIRMED if 0 < s.min_sensor_witnesses <= witnessed else SUSPECTED

    @staticmethod
    def tls_of(group: CellGroup, key: CellKey, lines: Set[str]) -> tuple[int, int]:
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

    def tails(self, k: int, n: int, cells: list[Cell], n_tls: int, k_tls: int,
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
