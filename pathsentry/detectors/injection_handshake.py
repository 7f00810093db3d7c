"""Where the connection ended: each network's usual SYN-ACK from each origin.

An on-path box forges an *answer* into a connection whose handshake is the real
server's: the SYN-ACK (its IP TTL as the client sees it, and the connect RTT) is the one
this network always sees from that origin. A failover, or a DNS change, moves the
*whole connection* to another box: its SYN-ACK comes from farther (fewer TTL left, a
longer handshake) than this network learned. This module learns, per (origin host,
/24), the recent SYN-ACK TTLs and connect RTTs of the origin's normal answers and
tells whether a SYN-ACK came from farther than usual.

- **Learned** (:meth:`Handshakes.learn`) from answers the origin gave as usual (no
  anomaly, status and headers seen: a TLS answer whose content the reporter could not
  see may be a failover box's and teaches nothing), per /24 (the enrichment's
  prefix): an ASN's lines sit at different hop counts and distances from the same
  server, so an ASN's range says little of a line it has not heard from. Each keeps
  its last ``handshake_samples`` (24) pairs; at most ``handshake_keys`` (20,000) keys,
  the least recently heard dropped. Saved with the detector's state.
- **Judged** (:meth:`Handshakes.judge`) once the prefix has ``handshake_min`` (2)
  samples of what was measured, else not at all (a line seen for the first time: the
  caller does what it did without this module). The usual TTLs are the
  range of the learned values; a TTL is *farther* when it is below that range by more
  than the range's own width (a load-balanced origin whose edges' SYN-ACKs differ by
  one or two hops has learned that width), *nearer* when above it likewise. The usual
  connect RTT is the samples' median; an RTT is *farther* above ``median +
  handshake_rtt_z`` (4) ``* spread``, the spread the largest of the samples' scaled
  MAD, their mean excess over their least (a jitter's tail is longer than its middle
  shows) and ``handshake_rtt_share`` (0.1) of the median (the prior: a line's
  handshake is taken to vary by a tenth at least), and never less than ``floor_ms``
  above the median (the detector's ``min_connect_ms``, 2 ms: below it, timing jitter
  dominates and a few samples of a 1 ms line do not make a 2 ms handshake a move).
- **Borrowed from the origin** when the /24 has not learned ``handshake_min`` TTLs of
  its own (a line heard from for the first time, or only by reporters that see no
  TTLs): the SYN-ACK TTL is judged against the lowest of the lines of every network
  that reached the origin (each line's lowest learned TTL, at least
  ``handshake_lines`` (3) lines; the prior until then: not judged). A SYN-ACK below
  every one of them came from farther than the origin's server has ever been from any
  of its lines: the connection ended elsewhere. Only *farther* is borrowed: a line
  nearer than the others is a near line, not a proxy, and a line's own connect RTT
  (its distance and access) says nothing of another's, so the RTT is never borrowed.
- **Moved** when the TTL or the RTT says farther and the TTL does not say nearer (a box
  nearer than the server that terminated the handshake is a proxy on the path, not the
  origin moving). A reporter that sees no TTLs is judged on the RTT alone.

What it cannot tell: a failover box as far as the usual one (same hop count and
round trip; on a line not yet learned, one no farther than the origin's farthest
line), a forging box on a line farther than every line learned so far whose own
answers are not learned yet (its SYN-ACK is borrowed as a move: the caller keeps
every mark of a nearer box, and a TTL above the origin's relation on an untimed
handshake), and a proxy that terminates the handshake and delays its SYN-ACK and
lowers its TTL to look far (the caller keeps every mark of a nearer box: a first byte
sooner than the round trip, a race).

>>> h = Handshakes(HandshakeSettings())
>>> for ms in (10.0, 10.4, 10.2):
...     h.learn("www", "58.1.2.0/24", 55, ms)
>>> h.judge("www", "58.1.2.0/24", 55, 10.3).moved
False
>>> j = h.judge("www", "58.1.2.0/24", 53, 10.3)
>>> j.moved, j.ttl_farther, j.detail()["expected_syn_ack_ttl"]
(True, True, [55, 55])
>>> h.judge("www", "58.1.2.0/24", None, 19.0).moved  # no TTLs: the RTT alone
True
>>> h.judge("www", "58.1.2.0/24", 57, 19.0).moved  # nearer: a proxy, not a move
False
>>> h.judge("www", "58.1.3.0/24", 50, 40.0) is None  # never heard from, 1 line learned
True
>>> for k, ttl in enumerate((56, 57, 58)):  # the origin's other lines
...     h.learn("www", f"58.9.{k}.0/24", ttl, 5.0)
>>> j = h.judge("www", "58.1.3.0/24", 50, 40.0)  # below every line: borrowed, farther
>>> j.moved, j.level, j.detail()["expected_syn_ack_ttl"]
(True, 'origin', [55, 58])
>>> h.judge("www", "58.1.3.0/24", 56, 40.0).moved  # within the origin's lines
False
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pathsentry.detectors.bounded import count_in
from pathsentry.detectors.physics import MAD_SIGMA, mad, median

__all__ = ["HandshakeJudgement", "HandshakeSettings", "Handshakes"]

#: one learned SYN-ACK: its TTL as seen (``None``: not seen) and the connect RTT (ms)
Sample = tuple[int | None, float | None]


@dataclass(frozen=True, slots=True)
class HandshakeSettings:
    """``[detectors.injection]`` keys of the learned SYN-ACKs."""

    #: whether a suspect answer on a connection that ended farther than usual is taken
    #: for another server's (a failover box, a DNS change) rather than a forged one
    handshake_moves: bool = True
    #: SYN-ACKs kept per (origin host, network)
    handshake_samples: int = 24
    #: samples before a network's usual SYN-ACK is judged
    handshake_min: int = 2
    #: lines (/24s) of the origin with a learned SYN-ACK TTL before a line that has not
    #: learned its own is judged against the lowest of theirs (only "farther" is borrowed)
    handshake_lines: int = 3
    #: (origin host, network) keys kept per level, the least recently heard dropped
    handshake_keys: int = 20_000
    #: an RTT farther than the median by this many spreads is a handshake elsewhere
    handshake_rtt_z: float = 4.0
    #: the least spread of a network's connect RTT, a share of its median (the prior)
    handshake_rtt_share: float = 0.1


@dataclass(frozen=True, slots=True)
class HandshakeJudgement:
    """One SYN-ACK against what its /24 learned from ``n`` samples."""

    n: int
    ttl: int | None
    ttl_range: tuple[int, int] | None
    connect_ms: float | None
    usual_ms: float | None
    limit_ms: float | None
    ttl_farther: bool
    ttl_nearer: bool
    rtt_farther: bool
    #: whose SYN-ACK TTLs it was judged against: the line's own (``line``) or, the line's
    #: not learned yet, the lowest of the origin's lines (``origin``)
    level: str = "line"

    @property
    def moved(self) -> bool:
        """The connection ended farther than this network's usual server."""
        return (self.ttl_farther or self.rtt_farther) and not self.ttl_nearer

    def detail(self) -> dict[str, Any]:
        """Measured beside learned, for notes and evidence."""
        return {
            "syn_ack_ttl": self.ttl,
            "expected_syn_ack_ttl": None if self.ttl_range is None else list(self.ttl_range),
            "connect_ms": self.connect_ms,
            "expected_connect_ms": None if self.usual_ms is None else round(self.usual_ms, 3),
            "connect_limit_ms": None if self.limit_ms is None else round(self.limit_ms, 3),
            "ttl_farther": self.ttl_farther, "rtt_farther": self.rtt_farther,
            "samples": self.n, "level": self.level,
        }


class Handshakes:
    """Recent SYN-ACKs per (origin host, prefix)."""

    def __init__(self, settings: HandshakeSettings, floor_ms: float = 2.0) -> None:
        self.s = settings
        self.floor_ms = floor_ms
        self._table: OrderedDict[str, list[Sample]] = OrderedDict()
        #: origin host -> each line's (lowest, highest) learned TTL
        self._lines: dict[str, dict[str, tuple[int, int]]] = {}
        #: origin host -> lowest TTL of a line -> lines; the same for the highest
        self._lows: dict[str, dict[int, int]] = {}
        self._highs: dict[str, dict[int, int]] = {}
        #: key -> (lowest TTL, highest TTL, TTLs) of its samples, kept with them
        #: (:meth:`_line`): a judgement reads the line's range without a pass over them
        self._ttls: dict[str, tuple[int, int, int]] = {}

    def _line(self, key: str, samples: list[Sample] | None) -> None:
        """Keep the origin-wide table of lines' TTL bounds in step with ``key``'s
        samples (``None``: the key was dropped)."""
        host, prefix = key.split("|", 1)
        lines = self._lines.setdefault(host, {})
        old = lines.pop(prefix, None)
        if old is not None:
            count_in(self._lows, host, old[0], -1)
            count_in(self._highs, host, old[1], -1)
        ttls = [t for t, _ in samples or () if t is not None]
        if ttls:
            lo, hi = min(ttls), max(ttls)
            new = lines[prefix] = (lo, hi)
            count_in(self._lows, host, new[0], 1)
            count_in(self._highs, host, new[1], 1)
            self._ttls[key] = (lo, hi, len(ttls))
        else:
            self._ttls.pop(key, None)
        if not lines:
            del self._lines[host]

    def origin_range(self, host: str) -> tuple[int, int] | None:
        """(the lowest, the highest) SYN-ACK TTL of the origin's lines, each line's
        learned bounds (``None``: fewer than ``handshake_lines`` lines learned one)."""
        if len(self._lines.get(host, ())) < self.s.handshake_lines:
            return None
        return min(self._lows[host]), max(self._highs[host])

    def learn(self, host: str, prefix: str, ttl: int | None, connect_ms: float | None) -> None:
        """One SYN-ACK of the origin's usual answer, seen from ``prefix``."""
        if ttl is None and connect_ms is None:
            return
        key = f"{host}|{prefix}"
        samples = self._table.pop(key, [])
        samples.append((ttl, connect_ms))
        del samples[:-self.s.handshake_samples]
        self._table[key] = samples
        self._line(key, samples)
        while len(self._table) > self.s.handshake_keys:
            self._line(self._table.popitem(last=False)[0], None)

    def judge(self, host: str, prefix: str, ttl: int | None,
              connect_ms: float | None) -> HandshakeJudgement | None:
        """This SYN-ACK against the prefix's learned ones (``None``: fewer than
        ``handshake_min`` samples of what was measured)."""
        key = f"{host}|{prefix}"
        samples = self._table.get(key) or []
        s = self.s
        rtts = [r for _, r in samples if r is not None]
        bounds = self._ttls.get(key)  # (the samples' TTLs: :meth:`_line`)
        ttl_range = bounds[:2] if bounds is not None and bounds[2] >= s.handshake_min else None
        farther = nearer = False
        level = "line"
        if ttl_range is not None and ttl is not None:
            lo, hi = ttl_range
            farther, nearer = ttl < lo - (hi - lo), ttl > hi + (hi - lo)
        elif ttl is not None:  # the line's own not learned: the origin's lines
            ttl_range = self.origin_range(host)
            if ttl_range is not None:
                farther, level = ttl < ttl_range[0], "origin"
        usual = limit = None
        if len(rtts) >= s.handshake_min:
            usual = median(rtts)
            spread = max(MAD_SIGMA * mad(rtts),
                         sum(rtts) / len(rtts) - min(rtts), s.handshake_rtt_share * usual)
            limit = usual + max(s.handshake_rtt_z * spread, self.floor_ms)
        rtt_farther = limit is not None and connect_ms is not None and connect_ms > limit
        if (ttl_range is None or ttl is None) and (limit is None or connect_ms is None):
            return None
        return HandshakeJudgement(len(samples), ttl, ttl_range, connect_ms, usual, limit,
                                  farther, nearer, rtt_farther, level)

    # -- state -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "prefix": [[k, [list(x) for x in v]] for k, v in self._table.items()]}

    def load(self, state: dict[str, Any]) -> None:
        """Restore :meth:`to_json` (checked by the caller first)."""
        table: OrderedDict[str, list[Sample]] = OrderedDict()
        for key, samples in state.get("prefix", []):
            table[key] = [(t, r) for t, r in samples][-self.s.handshake_samples:]
        while len(table) > self.s.handshake_keys:
            table.popitem(last=False)
        self._table = table
        self._lines, self._lows, self._highs, self._ttls = {}, {}, {}, {}
        for key, samples in table.items():
            self._line(key, samples)
