"""The same minutes seen from many networks: is an anomaly the origin's or the path's?

An injecting box sits in one ISP; an origin failure (an outage, a maintenance page, an
error burst) is seen by every network that reaches the origin at that time. This
module keeps, per origin, short time buckets of what each network (ASN) saw: how many
answers, how many flagged, and how many showed each kind of anomaly (a status the origin
does not normally answer with, a missing mark, ...). For one answer it tells

- whether its anomaly is **origin-wide**: at least ``min_networks`` networks, and at
  least ``outage_share`` of the networks that reached the origin in the last
  ``window_s``, saw the same anomaly;
- the typical flagged rate of the **other** networks at the same time: the median of
  their rates, so that other injecting ISPs (a few networks) do not raise it while an
  origin failure (every network) does. The cell stage weighs each ISP's cells against it;
- the **other** networks' TLS path-anomaly rate (their TLS answers pooled, counts
  decayed with a half-life of ``tls_half_life_s``: TLS answers are a small share of a
  network's probes, too few in ``window_s`` to say anything, and a path's anomalies
  change slowly): what an ISP's TLS control would show were its path like the
  others'. The cell stage borrows it when an ISP's own TLS control is smaller than the
  plaintext cell it is compared with.

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
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["NetworkWindow", "WindowSettings"]


@dataclass(frozen=True, slots=True)
class WindowSettings:
    """``[detectors.injection]`` keys of the cross-network contrast."""

    #: how far back "the same minutes" reach
    window_s: float = 600.0
    bucket_s: float = 60.0
    #: networks that must see the same anomaly before it is the origin's
    min_networks: int = 4
    #: ...and the share of the networks reaching the origin they must make up
    outage_share: float = 0.5
    #: half-life of the TLS path-anomaly counts per network (``others_tls``)
    tls_half_life_s: float = 6 * 3600.0
    max_entries: int = 8192


@dataclass(slots=True)
class _Net:
    n: int = 0
    flagged: int = 0
    anomalies: dict[str, int] = field(default_factory=dict)

    def count(self, flagged: bool, anomaly: str | None) -> None:
        """One more answer (``flagged`` or not, showing ``anomaly`` or none)."""
        self.n += 1
        self.flagged += flagged
        if anomaly is not None:
            self.anomalies[anomaly] = self.anomalies.get(anomaly, 0) + 1

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
        self.tls_entries = 0

    def _bucket(self, ts: float) -> int:
        return int(ts // self.s.bucket_s)

    def add(self, origin: str, net: str, ts: float, anomaly: str | None, flagged: bool,
            tls: bool = False, tls_anomaly: bool = False) -> None:
        """Count one answer (``tls``: a TLS one, also counted apart with whether it
        showed path anomalies)."""
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
            self._add_tls(origin, net, ts, tls_anomaly)
        c.count(flagged, anomaly)
        per_net = self.totals.get(origin)
        if per_net is None:
            per_net = self.totals[origin] = {}
        total = per_net.get(net)
        if total is None:
            total = per_net[net] = _Net()
        total.count(flagged, anomaly)

    def _decayed(self, row: list[float], ts: float) -> tuple[float, float]:
        keep = 0.5 ** (max(0.0, ts - row[2]) / self.s.tls_half_life_s)
        return row[0] * keep, row[1] * keep

    def _add_tls(self, origin: str, net: str, ts: float, anomalous: bool) -> None:
        per = self.tls.get(origin)
        if per is None:
            per = self.tls[origin] = {}
        row = per.get(net)
        if row is None:
            if self.tls_entries >= self.s.max_entries:
                return
            row = per[net] = [0.0, 0.0, ts]
            self.tls_entries += 1
        n, k = self._decayed(row, ts)
        row[:] = [n + 1.0, k + anomalous, max(ts, row[2])]

    def _span(self) -> int:
        return max(1, int(self.s.window_s // self.s.bucket_s))

    def _expire(self) -> None:
        horizon = self.newest - self._span()
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

    def origin_wide(self, origin: str, anomaly: str, ts: float) -> bool:
        seen, total = self.spread(origin, anomaly, ts)
        return seen >= self.s.min_networks and seen >= self.s.outage_share * total

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
        n = k = 0.0
        nets = 0
        half_life = self.s.tls_half_life_s
        for other, row in self.tls.get(origin, {}).items():
            if other != net:  # (``_decayed``, inline: once per network per answer)
                age = ts - row[2]
                keep = 0.5 ** ((age if age > 0.0 else 0.0) / half_life)
                n, k, nets = n + row[0] * keep, k + row[1] * keep, nets + 1
        return round(k / n, 4) if nets >= self.s.min_networks and n > 0 else None
