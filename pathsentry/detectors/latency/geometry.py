"""Geometry and physics of the relay detector: what a claimed location allows.

Light in fibre needs ``km / 100`` ms of RTT, routed paths about
:data:`~pathsentry.detectors.physics.PATH_INFLATION` times that, plus the access
network's share. :class:`Geometry` memoises great-circle distances and expectations
per (server, claimed point) and gives the km by which a claim lies outside a probe's
RTT disk; :func:`feasible_region` intersects the disks.
"""

from __future__ import annotations

import math
from typing import Any

from pathsentry.config import Server
from pathsentry.detectors.bounded import remember
from pathsentry.detectors.physics import (
    ACCESS_TYPICAL_MS,
    EARTH_RADIUS_KM,
    KM_PER_MS_RTT,
    PATH_INFLATION,
    great_circle_km,
)
from pathsentry.enrich.geo import GeoInfo

__all__ = [
    "DEFAULT_TOLERANCE_MS",
    "KIND_TOLERANCE_MS",
    "PRECISION_SLACK_KM",
    "Geometry",
    "feasible_region",
]

#: How far a geolocated point may be from the truth, by geo precision (km).
PRECISION_SLACK_KM: dict[str, float] = {"city": 50.0, "country": 500.0}
#: Extra RTT (ms) over the typical expectation tolerated per access kind before
#: physics counts as evidence: rural DSL and LTE are slow without any relay.
KIND_TOLERANCE_MS: dict[str, float] = {
    "hosting": 4.0,
    "relay": 4.0,
    "business": 12.0,
    "education": 12.0,
    "residential": 25.0,
    "mobile": 60.0,
}
DEFAULT_TOLERANCE_MS = 30.0

def feasible_region(
    disks: list[tuple[float, float, float]], rings: int = 4, bearings: int = 16
) -> dict[str, Any] | None:
    """Rough intersection of RTT disks ``(lat, lon, radius_km)``.

    Candidate points on a polar grid inside the tightest disk are kept if they lie
    in every disk; the answer is their centroid and spread (``None`` if no point
    survives, i.e. the disks do not intersect at this resolution).

    >>> r = feasible_region([(37.57, 126.98, 300.0), (35.18, 129.08, 300.0)])
    >>> r["anchor_radius_km"], 100 < r["centroid_distance_km"]["0"] < 300
    (300.0, True)
    """
    if not disks:
        return None
    anchor = min(range(len(disks)), key=lambda i: disks[i][2])
    alat, alon, arad = disks[anchor]
    # physics.destination_point() and physics.great_circle_km(), the same arithmetic
    # with what repeats over the grid (anchor, ring, bearing, disk terms) computed once
    p1, l1 = math.radians(alat), math.radians(alon)
    sin_p1, cos_p1 = math.sin(p1), math.cos(p1)
    turns = [math.radians(360.0 * b / bearings) for b in range(bearings)]
    sin_b = [math.sin(t) for t in turns]
    cos_b = [math.cos(t) for t in turns]
    points = [(alat, alon)]
    for ring in range(1, rings + 1):
        d = arad * ring / rings / EARTH_RADIUS_KM
        sin_d, cos_d = math.sin(d), math.cos(d)
        for k in range(bearings):
            p2 = math.asin(sin_p1 * cos_d + cos_p1 * sin_d * cos_b[k])
            l2 = l1 + math.atan2(sin_b[k] * sin_d * cos_p1, cos_d - sin_p1 * math.sin(p2))
            points.append((math.degrees(p2), (math.degrees(l2) + 540.0) % 360.0 - 180.0))
    centres = [(math.radians(la), math.cos(math.radians(la)), lo, rad) for la, lo, rad in disks]
    diameter = 2 * EARTH_RADIUS_KM
    inside = []
    for plat, plon in points:
        q1 = math.radians(plat)
        cos_q1 = math.cos(q1)
        for q2, cos_q2, lo, rad in centres:
            a = (math.sin((q2 - q1) / 2) ** 2
                 + cos_q1 * cos_q2 * math.sin(math.radians(lo - plon) / 2) ** 2)
            root = math.sqrt(a)
            if not diameter * math.asin(root if root < 1.0 else 1.0) <= rad:
                break
        else:
            inside.append((plat, plon, q1, cos_q1))
    if not inside:
        return None
    clat = sum(p[0] for p in inside) / len(inside)
    clon = sum(p[1] for p in inside) / len(inside)
    c1 = math.radians(clat)
    cos_c1 = math.cos(c1)
    spread = []  # great_circle_km(clat, clon, *p) of each p inside
    for _, plon, q1, cos_q1 in inside:
        a = math.sin((q1 - c1) / 2) ** 2 + cos_c1 * cos_q1 * math.sin(math.radians(plon - clon) / 2) ** 2
        root = math.sqrt(a)
        spread.append(diameter * math.asin(root if root < 1.0 else 1.0))
    return {
        "centroid": [round(clat, 3), round(clon, 3)],
        "radius_km": round(max(spread)),
        "points_inside": len(inside),
        "anchor": anchor,
        "anchor_radius_km": round(arad, 1),
        "centroid_distance_km": {
            str(i): round(great_circle_km(clat, clon, la, lo))
            for i, (la, lo, _) in enumerate(disks)
        },
    }


class Geometry:
    """Distances and expectations of claimed locations, memoised (cleared when full)."""

    def __init__(self, server: Any, cap: int) -> None:
        #: the server registry's lookup (id -> :class:`~pathsentry.config.Server` or None)
        self._server = server
        self.cap = max(1, int(cap))
        #: (server id, lat, lon) -> great-circle km (-1: unknown server or unlocated point)
        self.distances: dict[tuple[str, float | None, float | None], float] = {}
        #: (server id, lat, lon, access kind, precision) -> (expected RTT ms, tolerance ms,
        #: slack ms, ramp width ms) of a claimed location
        self.expectations: dict[tuple[str, float, float, str | None, str], tuple[float, ...]] = {}

    def km(self, server: Server, lat: float, lon: float) -> float:
        """Great-circle km from ``server`` to (lat, lon): claimed points repeat (one per
        prefix or city), so each (server, point) pair is computed once."""
        key = (server.id, lat, lon)
        km = self.distances.get(key)
        if km is None or km < 0.0:
            km = great_circle_km(server.lat, server.lon, lat, lon)
            self._remember(key, km)
        return km

    def _remember(self, key: tuple[str, float | None, float | None], km: float) -> None:
        remember(self.distances, key, km, self.cap)

    def violation(self, geo: GeoInfo, vantage: str, min_ms: float) -> float:
        """km by which the claimed point lies outside the RTT disk of a probe from
        ``vantage`` (<= 0: inside; -1 for an unknown vantage or an unlocated claim)."""
        key = (vantage, geo.lat, geo.lon)
        d = self.distances.get(key)
        if d is None:
            v = self._server(vantage)
            lat, lon = geo.lat, geo.lon
            if v is None or lat is None or lon is None:
                d = -1.0
                self._remember(key, d)
            else:
                d = self.km(v, lat, lon)
        if d < 0.0:
            return -1.0
        return d - min_ms * KM_PER_MS_RTT - PRECISION_SLACK_KM.get(geo.precision, 1000.0)

    def expectation(self, server: Server, geo: GeoInfo, lat: float, lon: float) -> tuple[float, ...]:
        """(expected network RTT ms, tolerance ms, slack ms, ramp width ms) of a claim."""
        claim = (server.id, lat, lon, geo.kind, geo.precision)
        expectation = self.expectations.get(claim)
        if expectation is None:
            kind = geo.kind or "unknown"
            tol = KIND_TOLERANCE_MS.get(kind, DEFAULT_TOLERANCE_MS)
            expectation = (
                self.km(server, lat, lon) / KM_PER_MS_RTT * PATH_INFLATION
                + ACCESS_TYPICAL_MS.get(kind, 6.0),
                tol,
                PRECISION_SLACK_KM.get(geo.precision, 1000.0) * PATH_INFLATION / KM_PER_MS_RTT,
                max(8.0, tol),
            )
            remember(self.expectations, claim, expectation, self.cap)
        return expectation
