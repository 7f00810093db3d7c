"""Latency model of the simulated world.

Every simulated round-trip time is built from non-negative parts, so no sample can
fall below the fibre floor of the path it really travels:

``rtt = great_circle_km * inflation / 100 + access + jitter`` with an inflation of
1.5-2.5 (paths are longer than the great circle), an access latency fixed per
prefix (so online baselines can learn it) and a per-sample jitter that depends on
the access technology.

>>> import random
>>> seoul, busan = Point(37.5665, 126.9780), Point(35.1796, 129.0756)
>>> leg = leg_ms(seoul, busan, 2.0)
>>> round(leg, 2), leg >= fibre_floor_ms(great_circle_km(*seoul, *busan))
(6.5, True)
>>> access = ACCESS["ftth"]
>>> samples = sample_rtts(random.Random(1), leg + 0.5, access, 3)
>>> len(samples), min(samples) >= leg + 0.5
(3, True)
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import NamedTuple

from pathsentry.detectors.physics import fibre_floor_ms, great_circle_km

__all__ = [
    "ACCESS",
    "AccessProfile",
    "Point",
    "fibre_floor_ms",
    "great_circle_km",
    "inflation_for",
    "leg_ms",
    "sample_rtts",
    "stable_unit",
]


class Point(NamedTuple):
    """A place on Earth (degrees)."""

    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class AccessProfile:
    """Access-network latency of one technology.

    ``low``/``high`` bound the per-prefix base latency (ms); ``jitter`` is the
    mean of the exponential per-sample jitter; ``spike_p`` is the chance that a
    sample carries a radio/queueing spike of up to ``spike_ms``.
    """

    name: str
    geo_kind: str
    low: float
    high: float
    jitter: float
    spike_p: float = 0.0
    spike_ms: float = 0.0


#: Access technologies (DESIGN.md: FTTH 0.3-2 ms, cable/DSL 3-15, LTE 15-45, DC 0.1-0.5).
ACCESS: dict[str, AccessProfile] = {
    "ftth": AccessProfile("ftth", "residential", 0.3, 2.0, 0.08),
    "cable": AccessProfile("cable", "residential", 3.0, 9.0, 0.6),
    "dsl": AccessProfile("dsl", "residential", 5.0, 15.0, 0.8),
    "rural_dsl": AccessProfile("rural_dsl", "residential", 11.0, 15.0, 1.0),
    "lte": AccessProfile("lte", "mobile", 15.0, 45.0, 4.0, 0.12, 60.0),
    "campus": AccessProfile("campus", "education", 0.4, 1.5, 0.15),
    "business": AccessProfile("business", "business", 0.4, 2.0, 0.1),
    "datacenter": AccessProfile("datacenter", "hosting", 0.1, 0.5, 0.03),
    "relay": AccessProfile("relay", "relay", 0.1, 0.4, 0.03),
}


def stable_unit(*parts: object) -> float:
    """A deterministic number in [0, 1) derived from ``parts`` (no global state).

    >>> stable_unit("a", 1) == stable_unit("a", 1), 0 <= stable_unit("b") < 1
    (True, True)
    """
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def inflation_for(seed: int, a: str, b: str, low: float = 1.5, high: float = 2.5) -> float:
    """Path inflation (``low``-``high``) of the route between two named endpoints, fixed per pair."""
    x, y = sorted((a, b))
    return low + (high - low) * stable_unit(seed, "inflation", x, y)


def leg_ms(a: Point, b: Point, inflation: float) -> float:
    """Propagation RTT (ms) of a fibre path ``inflation`` times the great circle."""
    return great_circle_km(a.lat, a.lon, b.lat, b.lon) * inflation / 100.0


def sample_rtts(rng: random.Random, base_ms: float, access: AccessProfile, n: int) -> list[float]:
    """``n`` RTT samples (ms, 3 decimals), each ``base_ms`` plus non-negative jitter."""
    out: list[float] = []
    for _ in range(n):
        extra = rng.expovariate(1.0 / access.jitter) if access.jitter > 0 else 0.0
        if access.spike_p and rng.random() < access.spike_p:
            extra += rng.uniform(0.2, 1.0) * access.spike_ms
        out.append(_round_up(base_ms + extra))
    return out


def _round_up(v: float) -> float:
    """Round to 3 decimals without ever going below ``v`` (keeps the floor invariant)."""
    r = round(v, 3)
    return r if r >= v else round(r + 0.001, 3)
