"""What each origin's genuine answers look like, learned online from the traffic.

An answer forged on the path is told from the origin's own answer by the marks the
origin leaves on every answer it sends, whatever its status: its header set (``server``
value, ``cf-ray``, ...), and the relation between the TTL of its SYN-ACK and the TTL of
its response (0 for one IP stack; a load balancer whose SYN-ACK and answers come from
boxes at different distances shows one or two other deltas, consistently). This module
learns both per origin (``host`` and request kind), from two sources:

- **TLS answers** (``https``/``wss``): an on-path box cannot forge them, so they teach
  the origin's marks, per status; once ``min_networks`` networks have sent
  ``min_net_answers`` each, a mark must show in most networks (one ISP whose every
  connection passes a TTL-rewriting box does not teach the origin its delta);
- **plaintext answers, network by network** (one ASN, one vote): a mark is the
  origin's when most networks that reach it see it. A few injecting ISPs are a few
  votes, however many probes they forge.

Nothing is known at first: the configured ``[[origin]]`` (``expect_headers``,
``expect_server``) stands in for the header set and a delta of 0 for the TTL relation,
until ``min_answers`` TLS answers (or ``min_networks`` networks with
``min_net_answers`` answers each) have been seen.

It also learns the lowest ratio of first-byte time to handshake RTT of the origin's
TLS answers (its ``fast_quantile``): an answer faster than that came from nearer than
the origin.

>>> p = OriginProfiles(ProfileSettings(min_answers=3))
>>> for _ in range(3):
...     p.learn("ws.example.com|ws_upgrade", tls=True, net="AS1", status=101,
...             headers=["server", "cf-ray", "upgrade"], server="cloudflare",
...             delta=0, ratio=1.4)
>>> e = p.expect("ws.example.com|ws_upgrade", 200)
>>> sorted(e.features), e.source, e.deltas
(['h:cf-ray', 'h:server', 'h:upgrade', 's:cloudflare'], 'learned (all statuses)', (0,))
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Set
from dataclasses import dataclass, field
from typing import Any

from pathsentry.detectors.bounded import remember

__all__ = ["Expectation", "OriginProfiles", "ProfileSettings", "features_of"]


@dataclass(frozen=True, slots=True)
class ProfileSettings:
    """How much traffic makes a learned expectation (``[detectors.injection]``)."""

    #: TLS answers of one status (or with a TTL) before they define the origin's marks
    min_answers: int = 20
    #: a header is the origin's when at least this share of its answers carry it
    feature_share: float = 0.9
    #: a TTL delta is one of the origin's when at least this share of its answers show it
    delta_share: float = 0.05
    #: plaintext answers a network needs before it votes
    min_net_answers: int = 5
    #: voting networks needed before the plaintext votes count
    min_networks: int = 5
    #: share of the voting networks that must agree
    network_share: float = 0.5
    #: the low quantile of TLS first-byte/handshake ratios that bounds a genuine answer
    fast_quantile: float = 0.001
    #: TLS answers with both timings before the learned bound replaces ``fast_ratio``
    min_timings: int = 200
    #: origins whose marks are learned (least recently heard dropped)
    max_origins: int = 256
    #: networks per origin whose answers vote (least recently heard dropped)
    max_networks: int = 512
    #: statuses learned per origin and network
    max_statuses: int = 32


def features_of(headers: Iterable[str] | None, server: str | None) -> set[str]:
    """The marks of one answer: ``h:<header name>`` and ``s:<server value>``.

    >>> sorted(features_of(["Server", "CF-Ray"], "cloudflare"))
    ['h:cf-ray', 'h:server', 's:cloudflare']
    """
    out = {"h:" + h.lower() for h in headers or ()}
    if server:
        out.add("s:" + server.lower())
    return out


@dataclass(slots=True)
class _Tally:
    """How often each mark was seen in ``n`` answers."""

    n: int = 0
    seen: dict[str, int] = field(default_factory=dict)

    def add(self, marks: Iterable[str]) -> None:
        self.n += 1
        for m in marks:
            self.seen[m] = self.seen.get(m, 0) + 1

    def common(self, share: float) -> set[str]:
        return {m for m, c in self.seen.items() if c >= share * self.n}

    def to_json(self) -> list[Any]:
        return [self.n, self.seen]

    @classmethod
    def from_json(cls, d: list[Any]) -> _Tally:
        return cls(int(d[0]), {str(k): int(v) for k, v in d[1].items()})


@dataclass(slots=True)
class _Source:
    """The answers of one source (TLS, or one network's plaintext): marks per status,
    TTL deltas."""

    statuses: dict[int, _Tally] = field(default_factory=dict)
    deltas: _Tally = field(default_factory=_Tally)

    def add(self, status: int | None, marks: set[str] | None, delta: int | None,
            max_statuses: int) -> None:
        if status is not None and marks is not None:
            tally = self.statuses.get(status)
            if tally is None and len(self.statuses) < max_statuses:
                tally = self.statuses[status] = _Tally()
            if tally is not None:
                tally.add(marks)
        if delta is not None:
            self.deltas.add((str(delta),))

    def to_json(self) -> dict[str, Any]:
        return {"statuses": {str(s): t.to_json() for s, t in self.statuses.items()},
                "deltas": self.deltas.to_json()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> _Source:
        return cls({int(s): _Tally.from_json(t) for s, t in d["statuses"].items()},
                   _Tally.from_json(d["deltas"]))


#: answers learned of an origin between two computations of its expectations
_REFRESH = 16

#: log2 bins of the first-byte/handshake ratio, 1/16 of an octave wide, from 2^-8
_BINS_PER_OCTAVE = 16
_LOW_OCTAVE = -8
_N_BINS = 16 * _BINS_PER_OCTAVE


@dataclass(slots=True)
class _Origin:
    tls: _Source = field(default_factory=_Source)
    nets: OrderedDict[str, _Source] = field(default_factory=OrderedDict)
    tls_nets: OrderedDict[str, _Source] = field(default_factory=OrderedDict)
    ratios: list[int] = field(default_factory=lambda: [0] * _N_BINS)
    n_ratios: int = 0
    #: answers learned (not persisted: only dates the cached expectations)
    learned: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"tls": self.tls.to_json(), "nets": [[k, s.to_json()] for k, s in self.nets.items()],
                "tls_nets": [[k, s.to_json()] for k, s in self.tls_nets.items()],
                "ratios": {str(i): c for i, c in enumerate(self.ratios) if c},
                "n_ratios": self.n_ratios}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> _Origin:
        o = cls(_Source.from_json(d["tls"]),
                OrderedDict((k, _Source.from_json(s)) for k, s in d["nets"]),
                OrderedDict((k, _Source.from_json(s)) for k, s in d.get("tls_nets", [])))
        for i, c in d["ratios"].items():
            o.ratios[int(i)] = int(c)
        o.n_ratios = int(d["n_ratios"])
        return o


@dataclass(frozen=True, slots=True)
class Expectation:
    """The origin's marks an answer of a given status should carry.

    ``features`` is ``None`` when nothing is known (no learning, no configuration);
    ``exact`` whether they were learned for this very status (else: the marks common to
    every status the origin is known to answer with, or the configured ones);
    ``deltas`` the response-minus-SYN-ACK TTL deltas the origin's answers show;
    ``fast_ratio`` the learned lowest first-byte/handshake ratio (``None``: not yet).
    """

    features: frozenset[str] | None
    source: str
    exact: bool
    deltas: tuple[int, ...]
    delta_source: str
    fast_ratio: float | None


class OriginProfiles:
    """Learned marks of every origin, bounded: beyond ``max_origins`` the least recently
    seen goes, except the ``pinned`` hosts (the configured origins), which a flood of
    probes for made-up hosts cannot push out."""

    def __init__(self, settings: ProfileSettings, pinned: Iterable[str] = ()) -> None:
        self.s = settings
        self.pinned = frozenset(h.lower() for h in pinned)
        self.origins: OrderedDict[str, _Origin] = OrderedDict()
        self._cache: dict[tuple[str, int | None], tuple[int, Expectation]] = {}

    # -- learning -----------------------------------------------------------------------

    def learn(self, key: str, *, tls: bool, net: str, status: int | None,
              headers: list[str] | None, server: str | None, delta: int | None,
              ratio: float | None) -> None:
        """Add one answer: ``tls`` ones to the origin's TLS source, the others to the
        plaintext source of network ``net``. ``headers is None``: payload not seen."""
        s = self.s
        o = self.origins.get(key)
        if o is None:
            o = self.origins[key] = _Origin()
            self._evict()
        else:
            self.origins.move_to_end(key)
        o.learned += 1
        marks = features_of(headers, server) if headers is not None else None
        if tls:
            o.tls.add(status, marks, delta, s.max_statuses)
            if ratio is not None and ratio > 0:
                i = math.floor((math.log2(ratio) - _LOW_OCTAVE) * _BINS_PER_OCTAVE)
                o.ratios[min(max(i, 0), _N_BINS - 1)] += 1
                o.n_ratios += 1
        self._net(o.tls_nets if tls else o.nets, net).add(status, marks, delta, s.max_statuses)

    def _net(self, table: OrderedDict[str, _Source], net: str) -> _Source:
        got = table.get(net)
        if got is None:
            got = table[net] = _Source()
            while len(table) > self.s.max_networks:
                table.popitem(last=False)
        else:
            table.move_to_end(net)
        return got

    # -- expectations -------------------------------------------------------------------

    def _voters(self, table: OrderedDict[str, _Source], pick: Any) -> list[_Tally]:
        out = []
        for src in table.values():
            t = pick(src)
            if t is not None and t.n >= self.s.min_net_answers:
                out.append(t)
        return out if len(out) >= self.s.min_networks else []

    def _vote(self, tallies: list[_Tally], share: float) -> set[str]:
        """The marks at least ``share`` of whose answers carry in most of ``tallies``."""
        count: dict[str, int] = {}
        for t in tallies:
            for m in t.common(share):
                count[m] = count.get(m, 0) + 1
        return {m for m, c in count.items() if c >= self.s.network_share * len(tallies)}

    def _status_marks(self, o: _Origin, status: int) -> set[str] | None:
        """The marks of the origin's answers with ``status`` (``None``: too few seen)."""
        s = self.s
        out: set[str] | None = None
        tls_voters = self._voters(o.tls_nets, lambda src: src.statuses.get(status))
        tls = o.tls.statuses.get(status)
        if tls_voters:
            out = self._vote(tls_voters, s.feature_share)
        elif tls is not None and tls.n >= s.min_answers:
            out = tls.common(s.feature_share)
        voters = self._voters(o.nets, lambda src: src.statuses.get(status))
        if voters:
            # a network's answers of one status vote with a majority of them
            out = (out or set()) | self._vote(voters, 0.5)
        return out

    def expect(self, key: str, status: int | None, prior: Set[str] | None = None) -> Expectation:
        """What an answer of ``status`` from origin ``key`` should carry. ``prior``: the
        configured marks, used until enough is learned (the same for every call with
        ``key``). Recomputed after every ``_REFRESH`` answers learned of the origin."""
        o = self.origins.get(key)
        epoch = -1 if o is None else o.learned // _REFRESH
        hit = self._cache.get((key, status))
        if hit is not None and hit[0] == epoch:
            return hit[1]
        got = self._expect(key, status, prior)
        remember(self._cache, (key, status), (epoch, got), 4 * self.s.max_origins * self.s.max_statuses)
        return got

    def _expect(self, key: str, status: int | None, prior: Set[str] | None) -> Expectation:
        s = self.s
        o = self.origins.get(key)
        features: set[str] | None = None
        source = "configured" if prior else "unknown"
        deltas: set[int] = set()
        delta_source = "default"
        fast: float | None = None
        if o is not None:
            if status is not None:
                features = self._status_marks(o, status)
                if features is not None:
                    source = f"learned (status {status})"
            if features is None:
                # the marks common to every status the origin is known to answer with
                known = [m for m in (self._status_marks(o, st) for st in self._statuses(o))
                         if m is not None]
                if known:
                    features = set.intersection(*known)
                    source = "learned (all statuses)"
            tls_voters = self._voters(o.tls_nets, lambda src: src.deltas)
            if tls_voters:
                deltas |= {int(d) for d in self._vote(tls_voters, s.delta_share)}
                delta_source = "learned (TLS answers)"
            elif o.tls.deltas.n >= s.min_answers:
                deltas |= {int(d) for d in o.tls.deltas.common(s.delta_share)}
                delta_source = "learned (TLS answers)"
            voters = self._voters(o.nets, lambda src: src.deltas)
            if voters:
                deltas |= {int(d) for d in self._vote(voters, 0.2)}
                delta_source = ("learned (TLS answers and networks)" if
                                delta_source != "default" else "learned (networks)")
            fast = self._fast(o)
        if features is None and prior:
            features = set(prior)
        return Expectation(None if features is None else frozenset(features), source,
                           source.startswith("learned (status"),
                           tuple(sorted(deltas)) or (0,), delta_source, fast)

    @staticmethod
    def _statuses(o: _Origin) -> set[int]:
        out = set(o.tls.statuses)
        for src in [*o.nets.values(), *o.tls_nets.values()]:
            out.update(src.statuses)
        return out

    def _fast(self, o: _Origin) -> float | None:
        if o.n_ratios < self.s.min_timings:
            return None
        target = self.s.fast_quantile * o.n_ratios
        acc = 0
        for i, c in enumerate(o.ratios):
            acc += c
            if acc > target:
                return float(2.0 ** (i / _BINS_PER_OCTAVE + _LOW_OCTAVE))
        return None  # pragma: no cover - acc reaches n_ratios

    # -- state --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "origins": [[k, o.to_json()] for k, o in self.origins.items()]}

    def load(self, state: dict[str, Any], only_new: bool = False) -> None:
        if state.get("version") != 1:
            return
        for key, o in state.get("origins", []):
            if only_new and key in self.origins:
                continue
            self.origins[key] = _Origin.from_json(o)
        self._cache.clear()
        self._evict()

    def _evict(self) -> None:
        excess = len(self.origins) - self.s.max_origins
        if excess <= 0:
            return
        gone = [k for k in self.origins if k.split("|", 1)[0] not in self.pinned][:excess]
        for key in gone:
            del self.origins[key]
