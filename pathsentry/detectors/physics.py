"""Latency physics shared by the detectors.

Light in fibre covers about 200 km per ms one way, so a round trip of ``r`` ms
bounds the distance at ``r * 100`` km; real paths are 1.5-2.5x longer than the
great circle.

>>> round(great_circle_km(37.5665, 126.9780, 35.1796, 129.0756))  # Seoul-Busan
325
>>> fibre_floor_ms(325.0)
3.25
>>> max_distance_km(3.25)
325.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "ACCESS_FLOOR_MS",
    "ACCESS_TYPICAL_MS",
    "EARTH_RADIUS_KM",
    "KM_PER_MS_RTT",
    "PATH_INFLATION",
    "destination_point",
    "fibre_floor_ms",
    "great_circle_km",
    "max_distance_km",
    "median",
    "quantile",
    "ramp",
    "squash",
]

#: Round-trip km per ms: 200 km/ms one way in fibre, halved for the round trip.
KM_PER_MS_RTT = 100.0
EARTH_RADIUS_KM = 6371.0088

#: Lowest plausible access-network RTT contribution per access kind (ms).
ACCESS_FLOOR_MS: dict[str, float] = {
    "hosting": 0.1,
    "business": 0.3,
    "education": 0.3,
    "residential": 0.3,
    "mobile": 12.0,
    "relay": 0.1,
}

#: Typical (not worst-case) extra RTT of the access network per access kind (ms).
ACCESS_TYPICAL_MS: dict[str, float] = {
    "hosting": 0.5,
    "business": 2.0,
    "education": 2.0,
    "residential": 6.0,
    "mobile": 30.0,
    "relay": 0.5,
}

#: Typical ratio of routed path length to the great circle (1.5-2.5x).
PATH_INFLATION = 2.0


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in km."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def fibre_floor_ms(distance_km: float) -> float:
    """Minimum RTT (ms) light in fibre needs for ``distance_km`` each way."""
    return distance_km / KM_PER_MS_RTT


def max_distance_km(rtt_ms: float) -> float:
    """Farthest a responder can be given a round-trip time."""
    return rtt_ms * KM_PER_MS_RTT


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile of a non-empty list.

    >>> quantile([1.0, 2.0, 3.0, 4.0], 0.5)
    2.5
    """
    return interpolated(sorted(values), q)


def interpolated(s: list[float], q: float) -> float:
    """Linear-interpolated ``q`` quantile of the ascending list ``s`` (0.0 when empty).

    >>> interpolated([1.0, 2.0, 3.0, 4.0], 0.25), interpolated([], 0.5)
    (1.75, 0.0)
    """
    if not s:
        return 0.0
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def median(values: list[float]) -> float:
    return quantile(values, 0.5)


#: a normal distribution's standard deviation per median absolute deviation
MAD_SIGMA = 1.4826


def mad(xs: Sequence[float]) -> float:
    """Median absolute deviation from the median (0 when empty).

    >>> mad([40.0, 41.0, 43.0, 90.0])
    1.5
    """
    if not xs:
        return 0.0
    s = sorted(xs)
    med = (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2
    d = sorted(abs(x - med) for x in s)
    return (d[(len(d) - 1) // 2] + d[len(d) // 2]) / 2


def destination_point(
    lat: float, lon: float, bearing_deg: float, dist_km: float
) -> tuple[float, float]:
    """The point ``dist_km`` from (lat, lon) along an initial bearing (great circle).

    >>> lat, lon = destination_point(37.5665, 126.9780, 90.0, 100.0)
    >>> round(great_circle_km(37.5665, 126.9780, lat, lon), 1)
    100.0
    """
    d = dist_km / EARTH_RADIUS_KM
    b, p1, l1 = math.radians(bearing_deg), math.radians(lat), math.radians(lon)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = l1 + math.atan2(math.sin(b) * math.sin(d) * math.cos(p1),
                         math.cos(d) - math.sin(p1) * math.sin(p2))
    return math.degrees(p2), (math.degrees(l2) + 540.0) % 360.0 - 180.0


def ramp(x: float, lo: float, hi: float) -> float:
    """0 below ``lo``, 1 above ``hi``, linear in between: a soft threshold.

    >>> ramp(5.0, 0.0, 10.0), ramp(-1.0, 0.0, 10.0), ramp(20.0, 0.0, 10.0)
    (0.5, 0.0, 1.0)
    """
    if x <= lo:
        return 0.0
    if x >= hi:
        return 1.0
    return (x - lo) / (hi - lo)


def squash(x: float, scale: float) -> float:
    """Map a non-negative magnitude to [0, 1) with half-saturation at ``scale``.

    >>> squash(10.0, 10.0), squash(0.0, 10.0), squash(-3.0, 10.0)
    (0.5, 0.0, 0.0)
    """
    x = max(0.0, x)
    return x / (x + scale)
