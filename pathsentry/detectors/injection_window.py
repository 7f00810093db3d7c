"""The same minutes seen from many networks: is an anomaly the origin's or the path's?

An injecting box sits in one ISP; an origin failure (an outage, a maintenance page, an
error burst) is seen by every network that reaches the origin at that time. This
module keeps, per origin, short time buckets of what each network (ASN) saw: how many
answers, how many flagged, and how many showed each kind of anomaly (a status the origin
does not normally answer with, a missing mark, ...). For one answer it tells

- whether its anomaly is **origin-wide**: at least ``min_networks`` networks, and at
  least ``outage_share`` of the networks that reached the origin in the last
  ``window_s``, saw the same anomaly;
- whether the answer's own signature (status, ``server`` value, header set) was
  answered **over TLS** by the origin to another network in the window
  (:meth:`NetworkWindow.tls_witness`): a box on one network's path cannot answer
  inside another network's TLS session, so an answer that the origin's side gave
  over TLS is the origin's, however few networks reached it in those minutes (a
  failover box of the origin's own, which lacks the CDN's marks);
- whether the answer's signature was given to another network in the window by a box
  that showed **no mark of a nearer one** there either (:meth:`NetworkWindow.witness`
  with ``QUIET``: a first byte timed and no sooner than the round trip, no race, no TTL
  nearer than the origin's relation; the caller records and asks only for such
  answers): a forging box on one ISP's path answers its own subscribers, sooner than
  the origin could; the same page, answered no sooner than the round trip on two
  networks' handshakes, is the origin side's (what an injector spanning two ISPs
  that delays its answers past the round trip would also show: documented, not told);
- whether the answer's signature and TTL relation were given to another network in the
  window no sooner than the round trip, whatever that relation (``LATE``: a first byte
  timed and no sooner than the round trip, no race, no storm; keyed by the signature
  and the answer's TTL delta, ``None`` without TTLs): a box one hop in front of the
  server whose answers show a TTL one above their SYN-ACK's on every network is the
  origin side's front, on every network's path, not a box on one ISP's; a forging box
  in one ISP answers its own subscribers only (the same limit as ``QUIET``);
- the TTL deltas the far box of a failover answered with in the window (``FAILED``,
  per host, :meth:`NetworkWindow.keys`): its own relation on every network's path,
  which an answer on a connection moved to it must show to be its answer;
- whether the networks that saw the anomaly, each in answers that show where they
  came from and no box nearer than the origin (TTLs seen, none nearer than the
  origin's relation; a first byte timed and no sooner than the round trip allows; no
  race), are too many for their own paths: each network's
  chance of showing a forged answer by its path is its own rate of answers flagged
  with a mark of a nearer box (the marks a box on its path leaves; decayed plaintext
  counts, the window's answers taken out, Jeffreys' prior ``(k + 0.5) / (n + 1)``),
  and when the product of those chances over at least two
  networks is below ``paths_alpha`` the anomaly is the origin's
  (:meth:`NetworkWindow.unlikely_paths`): a fallback box of the origin's own, seen by
  the few networks that reached it in those minutes;
- the typical flagged rate of the **other** networks at the same time: the median of
  their rates, so that other injecting ISPs (a few networks) do not raise it while an
  origin failure (every network) does. The cell stage weighs each ISP's cells against it;
- the **other** networks' TLS path-anomaly rate (their TLS answers pooled, counts
  decayed with a half-life of ``tls_half_life_s``: TLS answers are a small share of a
  network's probes, too few in ``window_s`` to say anything, and a path's anomalies
  change slowly): what an ISP's TLS control would show were its path like the
  others'. The cell stage borrows it when an ISP's own TLS control is smaller than the
  plaintext cell it is compared with;
- the **baseline** of the other networks (the ``baseline_networks`` heard from most
  recently, so a probe reads a bounded number of rows however many networks were
  seen): their plaintext answers and flagged ones to every origin, counts decayed
  with a half-life of ``plain_half_life_s``, as the
  median network's flagged rate and the pooled answers it is measured over
  (:meth:`NetworkWindow.baseline`), and their TLS answers and path-anomalous ones the
  same way (:meth:`NetworkWindow.tls_baseline`). The window's minutes hold too few
  networks and answers to be a reference for a few forged answers, and one origin's
  answers too few; how often a network's answers look forged is its path's, not the
  origin's (whose own failures the same minutes tell). The cell stage tests each
  cell's count against them exactly (a beta-binomial tail, see
  :func:`~pathsentry.detectors.injection_counts.beta_binomial_sf`).

Time is event time; buckets older than the window behind the newest event are dropped.
The buckets held are summed per origin and network as they come and go, so the
window that ends at the newest bucket (every in-order answer's) is read, not summed.

>>> w = NetworkWindow(WindowSettings(min_networks=3))
>>> for asn in ("AS1", "AS2", "AS3", "AS4"):
...     w.add("www", asn, 100.0, "status:503", flagged=False)
>>> w.add("www", "AS5", 100.0, None, flagged=True)
>>> w.origin_wide("www", "status:503", 100.0), w.origin_wide("www", "status:302", 100.0)
(True, False)
>>> w.others("www", "AS1", 100.0), w.others("www", "AS1", 100.0 + 3600)
(0.0, None)
>>> for asn in ("AS1", "AS2", "AS3", "AS4"):
...     w.add("www", asn, 100.0, None, flagged=False, tls=True, tls_anomaly=asn == "AS4")
>>> w.others_tls("www", "AS1", 100.0), w.others_tls("www", "AS4", 100.0)
(0.3333, 0.0)
>>> w.baseline("AS1", 100.0), w.baseline("AS5", 100.0), w.tls_baseline("AS1", 100.0)
((0.0, 4.0), (0.0, 4.0), (0.3333, 3.0))
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

__all__ = ["ANY", "FAILED", "FAR", "LATE", "QUIET", "TLS", "NetworkWindow", "Signature",
           "WindowSettings", "signature"]

#: What an answer looks like whatever path it took: status, ``server`` value, header set.
Signature = tuple[int | None, str, frozenset[str]]


def signature(status: int | None, server: str | None,
              headers: Iterable[str] | None) -> Signature | None:
    """An answer's signature (``None``: its headers were not seen).

    >>> signature(502, "Openresty", ["Server", "date"]) == (502, "openresty", frozenset({"server", "date"}))
    True
    """
    if headers is None:
        return None
    return status, (server or "").lower(), frozenset(h.lower() for h in headers)

#: The origin key of the tables summed over every origin.
ANY = "*"
#: The prefix of an anomaly's count among answers with no mark of a nearer box.
FAR = "far "
#: Channels of the answers' signatures: TLS answers with an anomaly, plaintext ones
#: timed with no mark of a nearer box (:meth:`NetworkWindow.witness`), and plaintext
#: ones timed no sooner than the round trip whatever their TTLs, keyed by the signature
#: and the TTL delta.
TLS = "tls"
QUIET = "quiet"
LATE = "late"
#: The channel of the TTL deltas of a failure's answers seen origin-wide (keyed by host).
FAILED = "failed"


@dataclass(frozen=True, slots=True)
class WindowSettings:
    """``[detectors.injection]`` keys of the cross-network contrast."""

    #: how far back "the same minutes" reach
    window_s: float = 600.0
    #: the width (s) of one time bucket of the cross-network counts
    bucket_s: float = 60.0
    #: networks that must see the same anomaly before it is the origin's
    min_networks: int = 4
    #: ...and the share of the networks reaching the origin they must make up
    outage_share: float = 0.5
    #: whether an answer the origin gave another network over TLS with the same
    #: signature makes an anomaly the origin's (:meth:`NetworkWindow.tls_witness`; off
    #: where the TLS probes' headers are not the origin's own, behind a TLS proxy)
    tls_witness: bool = True
    #: whether a plaintext answer timed with no mark of a nearer box whose signature
    #: another network got the same way in the window is the origin's
    #: (:meth:`NetworkWindow.witness` with ``QUIET``)
    quiet_witness: bool = True
    #: whether a plaintext answer whose first byte came no sooner than the round trip
    #: (no race, no storm), whatever its TTL relation, is the origin's when another
    #: network got the same signature the same way in the window, with the same TTL
    #: delta or without TTLs (:meth:`NetworkWindow.witness` with ``LATE``)
    late_witness: bool = True
    #: whether the witnesses (TLS, quiet, late) of a configured ``[[origin]]``'s answer
    #: are every configured origin's answers: the operator's hosts, whose failover box
    #: answers them alike (an unconfigured host's answers witness only its own)
    witness_origins: bool = True
    #: the chance, below which an anomaly seen "far" (no mark of a nearer box) by
    #: several networks is the origin's: the product of each network's own chance of
    #: a forged answer (:meth:`NetworkWindow.unlikely_paths`)
    paths_alpha: float = 0.001
    #: half-life of the TLS path-anomaly counts per network (``others_tls``)
    tls_half_life_s: float = 6 * 3600.0
    #: half-life of the answer counts per network over every origin (``baseline``,
    #: ``tls_baseline``)
    plain_half_life_s: float = 6 * 3600.0
    #: the networks heard from most recently that a baseline is taken over: reading
    #: it costs this many rows per probe, not one per network ever seen
    baseline_networks: int = 256
    #: rows of the cross-network counts kept (per table)
    max_entries: int = 8192
    #: how long after its last origin-wide answer a failure's onset is carried in the
    #: notes of every answer (:mod:`~pathsentry.detectors.injection_onset`; keep it at
    #: least the cell stage's ``settle_s``: a suspect of the failure's last minutes
    #: waits that long before it is judged)
    onset_hold_s: float = 600.0
    #: failures whose onsets are held and carried at once (the most recently seen)
    max_failures: int = 32


@dataclass(slots=True)
class _Net:
    n: int = 0
    flagged: int = 0
    anomalies: dict[str, int] = field(default_factory=dict)

    def count(self, flagged: bool, anomaly: str | None, far: bool = False) -> None:
        """One more answer (``flagged`` or not, showing ``anomaly`` or none; ``far``:
        with no mark of a box nearer than the origin, also counted under
        ``FAR + anomaly``)."""
        self.n += 1
        self.flagged += flagged
        if anomaly is not None:
            self.anomalies[anomaly] = self.anomalies.get(anomaly, 0) + 1
            if far:
                key = FAR + anomaly
                self.anomalies[key] = self.anomalies.get(key, 0) + 1

    def merge(self, other: _Net, sign: int = 1) -> None:
        """Add (``sign = -1``: take away) ``other``'s counts; an anomaly whose count
        falls to zero goes."""
        self.n += sign * other.n
        self.flagged += sign * other.flagged
        anomalies = self.anomalies
        for a, k in other.anomalies.items():
            left = anomalies.get(a, 0) + sign * k
            if left:
                anomalies[a] = left
            else:
                del anomalies[a]


class NetworkWindow:
    """Per origin, per time bucket, per network: answers, flags, anomalies."""

    def __init__(self, settings: WindowSettings) -> None:
        self.s = settings
        #: bucket -> origin -> network -> counts
        self.buckets: dict[int, dict[str, dict[str, _Net]]] = {}
        self.newest = -(2**62)
        self.entries = 0
        #: origin -> network -> counts summed over every bucket held: the window that
        #: ends at the newest bucket (a network is listed while it has answers in it)
        self.totals: dict[str, dict[str, _Net]] = {}
        #: origin -> network -> [TLS answers, anomalous ones, time], decayed
        self.tls: dict[str, dict[str, list[float]]] = {}
        #: network -> [plaintext answers to every origin, flagged ones, time], decayed
        #: (one table, under the origin ``ANY``), and the same for TLS in ``tls[ANY]``
        self.plain: dict[str, dict[str, list[float]]] = {}
        #: rows of the decayed tables (``tls`` and ``plain``: at most ``2 * max_entries``)
        self.decayed_entries = 0
        #: channel -> bucket -> origin -> signature of an answer -> the networks that got
        #: it (a signature is kept only with an anomaly: at most ``max_entries`` in all)
        self.sigs: dict[str, dict[int, dict[str, dict[Hashable, set[str]]]]] = {}
        self.sig_entries = 0

    def _bucket(self, ts: float) -> int:
        return int(ts // self.s.bucket_s)

    def add(self, origin: str, net: str, ts: float, anomaly: str | None, flagged: bool,
            tls: bool = False, tls_anomaly: bool = False, far: bool = False) -> None:
        """Count one answer (``tls``: a TLS one, also counted apart with whether it
        showed path anomalies; ``far``: its anomaly shows no mark of a nearer box)."""
        b = self._bucket(ts)
        if b > self.newest:
            self.newest = b
            self._expire()
        if b < self.newest - self._span():
            return
        # (looked up before made: ``setdefault(key, {})`` makes a dict every answer)
        per_bucket = self.buckets.get(b)
        if per_bucket is None:
            per_bucket = self.buckets[b] = {}
        per_origin = per_bucket.get(origin)
        if per_origin is None:
            per_origin = per_bucket[origin] = {}
        c = per_origin.get(net)
        if c is None:
            if self.entries >= self.s.max_entries:
                return
            c = per_origin[net] = _Net()
            self.entries += 1
        if tls:
            self._add_decayed(self.tls, origin, net, ts, tls_anomaly, self.s.tls_half_life_s)
            self._add_decayed(self.tls, ANY, net, ts, tls_anomaly, self.s.plain_half_life_s)
        else:
            self._add_decayed(self.plain, ANY, net, ts, flagged, self.s.plain_half_life_s,
                              near=flagged and not far)
        c.count(flagged, anomaly, far)
        per_net = self.totals.get(origin)
        if per_net is None:
            per_net = self.totals[origin] = {}
        total = per_net.get(net)
        if total is None:
            total = per_net[net] = _Net()
        total.count(flagged, anomaly, far)

    def _add_decayed(self, table: dict[str, dict[str, list[float]]], origin: str, net: str,
                     ts: float, hit: bool, half_life: float, near: bool = False) -> None:
        """One more answer (``hit``: anomalous, flagged; ``near``: flagged with a mark
        of a nearer box) in a decayed table: ``[answers, hits, time, near hits]``."""
        per = table.get(origin)
        if per is None:
            per = table[origin] = {}
        row = per.pop(net, None)  # re-inserted: the table runs from least to most recent
        if row is None:
            if self.decayed_entries >= 2 * self.s.max_entries:
                return
            row = [0.0, 0.0, ts, 0.0]
            self.decayed_entries += 1
        per[net] = row
        keep = 0.5 ** (max(0.0, ts - row[2]) / half_life)
        row[:] = [row[0] * keep + 1.0, row[1] * keep + hit, max(ts, row[2]), row[3] * keep + near]

    def add_tls_signature(self, origin: str, net: str, ts: float, sig: Signature) -> None:
        """A TLS answer of ``net`` to ``origin`` with signature ``sig`` (one that showed
        an anomaly: the origin's normal answers need no witness)."""
        self.add_signature(TLS, origin, net, ts, sig)

    def add_signature(self, channel: str, origin: str, net: str, ts: float,
                      sig: Hashable) -> None:
        """An answer of ``net`` to ``origin`` with signature ``sig``, on ``channel``."""
        b = self._bucket(ts)
        if b < self.newest - self._span() or self.sig_entries >= self.s.max_entries:
            return
        per = self.sigs.setdefault(channel, {}).setdefault(b, {}).setdefault(origin, {})
        nets = per.setdefault(sig, set())
        if net not in nets:
            nets.add(net)
            self.sig_entries += 1

    def tls_witness(self, origin: str, net: str, ts: float, sig: Signature | None) -> str | None:
        """A network other than ``net`` whose TLS answers from ``origin`` in the window
        ending at ``ts`` had signature ``sig`` (``None``: none)."""
        if not self.s.tls_witness:
            return None
        return self.witness(TLS, origin, net, ts, sig)

    def late_witness(self, origin: str, net: str, ts: float, sig: Signature | None,
                     delta: int | None) -> str | None:
        """A network other than ``net`` that got ``sig`` from ``origin`` no sooner than
        the round trip in the window ending at ``ts`` (``LATE``), with the TTL delta
        ``delta`` or without TTLs (``None``: none, or ``late_witness`` off).

        >>> w = NetworkWindow(WindowSettings())
        >>> sig = signature(503, "nginx", ["server"])
        >>> w.add_signature(LATE, "www", "AS1", 100.0, (sig, 1))
        >>> w.late_witness("www", "AS2", 160.0, sig, 1), w.late_witness("www", "AS2", 160.0, sig, 2)
        ('AS1', None)
        >>> w.add_signature(LATE, "www", "AS3", 100.0, (sig, None))  # no TTLs seen there
        >>> w.late_witness("www", "AS2", 160.0, sig, 2), w.late_witness("www", "AS1", 160.0, sig, 1)
        ('AS3', 'AS3')
        """
        if not self.s.late_witness or sig is None:
            return None
        return (self.witness(LATE, origin, net, ts, (sig, delta))
                or (None if delta is None else self.witness(LATE, origin, net, ts, (sig, None))))

    def witness(self, channel: str, origin: str, net: str, ts: float,
                sig: Hashable | None) -> str | None:
        """A network other than ``net`` that got ``sig`` from ``origin`` on ``channel``
        in the window ending at ``ts`` (``None``: none).

        >>> w = NetworkWindow(WindowSettings())
        >>> sig = signature(502, "nginx", ["server"])
        >>> w.add_signature(QUIET, "www", "AS1", 100.0, sig)
        >>> w.witness(QUIET, "www", "AS2", 160.0, sig), w.witness(QUIET, "www", "AS1", 160.0, sig)
        ('AS1', None)
        >>> w.witness(TLS, "www", "AS2", 160.0, sig), w.witness(QUIET, "www", "AS2", 900.0, sig)
        (None, None)
        """
        table = self.sigs.get(channel)
        if sig is None or not table:
            return None
        end = self._bucket(ts)
        for b in range(end, end - self._span() - 1, -1):
            nets = table.get(b, {}).get(origin, {}).get(sig)
            for other in sorted(nets or ()):
                if other != net:
                    return other
        return None

    def keys(self, channel: str, origin: str, ts: float) -> frozenset[Hashable]:
        """What any network got from ``origin`` on ``channel`` in the window ending at
        ``ts`` (the signatures, or what the channel keeps).

        >>> w = NetworkWindow(WindowSettings())
        >>> w.add_signature(FAILED, "www", "AS1", 100.0, -1)
        >>> sorted(w.keys(FAILED, "www", 160.0)), sorted(w.keys(FAILED, "www", 900.0))
        ([-1], [])
        """
        table = self.sigs.get(channel)
        if not table:
            return frozenset()
        end = self._bucket(ts)
        out: set[Hashable] = set()
        for b in range(end, end - self._span() - 1, -1):
            out.update(table.get(b, {}).get(origin, {}))
        return frozenset(out)

    def unmark_tls(self, origin: str, net: str) -> None:
        """The TLS answer just counted as path-anomalous showed the origin's failure
        (origin-wide), not its path's: it counts as a plain answer."""
        for table in (self.tls.get(origin), self.tls.get(ANY)):
            row = None if table is None else table.get(net)
            if row is not None:
                row[1] = max(0.0, row[1] - 1.0)

    def _span(self) -> int:
        return max(1, int(self.s.window_s // self.s.bucket_s))

    def _expire(self) -> None:
        horizon = self.newest - self._span()
        for table in self.sigs.values():
            for b in [b for b in table if b < horizon]:
                self.sig_entries -= sum(len(v) for sigs in table.pop(b).values()
                                        for v in sigs.values())
        for b in [b for b in self.buckets if b < horizon]:
            gone = self.buckets.pop(b)
            self.entries -= sum(len(v) for v in gone.values())
            for origin, nets in gone.items():
                per_net = self.totals[origin]
                for net, c in nets.items():
                    total = per_net[net]
                    total.merge(c, -1)
                    if not total.n:
                        del per_net[net]
                if not per_net:
                    del self.totals[origin]

    def _nets(self, origin: str, ts: float) -> dict[str, _Net]:
        """The networks that reached ``origin`` in the window ending at ``ts``, summed
        (read only: the window ending at the newest bucket is :attr:`totals`' own)."""
        end = self._bucket(ts)
        if end == self.newest:  # the buckets held are the window
            return self.totals.get(origin) or {}
        out: dict[str, _Net] = {}
        for b in range(end - self._span(), end + 1):
            for net, c in self.buckets.get(b, {}).get(origin, {}).items():
                acc = out.get(net)
                if acc is None:
                    acc = out[net] = _Net()
                acc.merge(c)
        return out

    def spread(self, origin: str, anomaly: str, ts: float) -> tuple[int, int]:
        """(networks that saw ``anomaly``, networks that reached ``origin``) in the window."""
        nets = self._nets(origin, ts)
        return sum(1 for c in nets.values() if anomaly in c.anomalies), len(nets)

    def onset(self, origin: str, anomaly: str, ts: float) -> float:
        """The start of the earliest bucket of the run up to ``ts`` in which some network
        saw ``anomaly`` in its answers to ``origin`` (within the window; a bucket whose
        answers to it showed none of it ends the run, one without answers does not)."""
        end = self._bucket(ts)
        first = end
        for b in range(end, end - self._span() - 1, -1):
            nets = self.buckets.get(b, {}).get(origin)
            if not nets:
                continue
            if not any(anomaly in c.anomalies for c in nets.values()):
                break
            first = b
        return first * self.s.bucket_s

    def origin_wide(self, origin: str, anomaly: str, ts: float) -> bool:
        seen, total = self.spread(origin, anomaly, ts)
        if seen >= self.s.min_networks and seen >= self.s.outage_share * total:
            return True
        p = self.unlikely_paths(origin, anomaly, ts)
        return p is not None and p < self.s.paths_alpha

    def unlikely_paths(self, origin: str, anomaly: str, ts: float) -> float | None:
        """The chance that the networks which saw ``anomaly`` "far" in the window each
        got it from a box on their own path: the product over them of ``1 - (1 -
        r)^m``, ``m`` their far answers showing it, ``r`` their own rate of answers
        flagged with a mark of a nearer box (``None``: fewer than two networks saw it far, or fewer than
        ``outage_share`` of those reaching the origin).

        >>> w = NetworkWindow(WindowSettings())
        >>> for k in range(200):  # two networks' clean answers, then a failure both see
        ...     for net in ("AS1", "AS2"):
        ...         w.add("www", net, float(k), None, flagged=False)
        >>> for net in ("AS1", "AS2"):
        ...     w.add("www", net, 900.0, "status 502", flagged=True, far=True)
        >>> round(w.unlikely_paths("www", "status 502", 900.0), 6)
        7e-06
        >>> w.add("www", "AS3", 900.0, None, flagged=False)
        >>> w.add("www", "AS4", 900.0, None, flagged=False)
        >>> w.add("www", "AS5", 900.0, None, flagged=False)
        >>> w.unlikely_paths("www", "status 502", 900.0) is None  # 2 of 5 networks
        True
        """
        nets = self._nets(origin, ts)
        key = FAR + anomaly
        far = [(net, c) for net, c in nets.items() if c.anomalies.get(key)]
        if len(far) < 2 or len(far) < self.s.outage_share * len(nets):
            return None
        plain = self.plain.get(ANY) or {}
        p = 1.0
        for net, c in far:
            row = plain.get(net)
            n = max(0.0, (row[0] if row else 0.0) - c.n)
            r = ((row[3] if row else 0.0) + 0.5) / (n + 1.0)
            p *= 1.0 - (1.0 - r) ** c.anomalies[key]
        return p

    def others(self, origin: str, net: str, ts: float) -> float | None:
        """The median flagged rate of the networks other than ``net`` that reached
        ``origin`` in the window (``None``: fewer than ``min_networks`` of them)."""
        rates = sorted(c.flagged / c.n for other, c in self._nets(origin, ts).items()
                       if other != net and c.n)
        if len(rates) < self.s.min_networks:
            return None
        mid = len(rates) // 2
        return rates[mid] if len(rates) % 2 else (rates[mid - 1] + rates[mid]) / 2

    def others_tls(self, origin: str, net: str, ts: float) -> float | None:
        """The TLS path-anomaly rate of the networks other than ``net`` that reached
        ``origin`` over TLS, their decayed counts pooled (``None``: fewer than
        ``min_networks`` of them)."""
        pool = self._pooled(origin, net, ts, self.s.tls_half_life_s)
        return None if pool is None else pool[0]

    def _pooled(self, origin: str, net: str, ts: float,
                half_life: float) -> tuple[float, float] | None:
        """(rate, decayed answers) of the TLS rows of ``origin`` but ``net``, pooled."""
        n = k = 0.0
        nets = 0
        for other, row in self._recent(self.tls.get(origin)):
            if other != net:  # (the decay, inline: once per network per answer)
                age = ts - row[2]
                keep = 0.5 ** ((age if age > 0.0 else 0.0) / half_life)
                n, k, nets = n + row[0] * keep, k + row[1] * keep, nets + 1
        if nets < self.s.min_networks or n <= 0:
            return None
        return round(k / n, 4), round(n, 3)

    def _recent(self, per: dict[str, list[float]] | None) -> Iterator[tuple[str, list[float]]]:
        """The rows of the ``baseline_networks`` networks heard from most recently."""
        return islice(reversed(per.items()), self.s.baseline_networks) if per else iter(())

    def baseline(self, net: str, ts: float) -> tuple[float, float] | None:
        """(the median flagged rate, the answers pooled) of the networks other than
        ``net``, over their plaintext answers to every origin, counts decayed with
        ``plain_half_life_s`` (``None``: fewer than ``min_networks`` of them)."""
        half_life = self.s.plain_half_life_s
        rates: list[float] = []
        n = 0.0
        for other, row in self._recent(self.plain.get(ANY)):
            if other != net and row[0] > 0.0:
                age = ts - row[2]
                keep = 0.5 ** ((age if age > 0.0 else 0.0) / half_life)
                rates.append(row[1] / row[0])
                n += row[0] * keep
        if len(rates) < self.s.min_networks:
            return None
        rates.sort()
        mid = len(rates) // 2
        rate = rates[mid] if len(rates) % 2 else (rates[mid - 1] + rates[mid]) / 2
        return round(rate, 6), round(n, 3)

    def tls_baseline(self, net: str, ts: float) -> tuple[float, float] | None:
        """(the path-anomaly rate, the answers pooled) of the networks other than
        ``net``, over their TLS answers to every origin, decayed with
        ``plain_half_life_s`` (``None``: fewer than ``min_networks`` of them)."""
        return self._pooled(ANY, net, ts, self.s.plain_half_life_s)
