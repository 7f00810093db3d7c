"""The route detector over converted traceroutes, each judged on its own terms.

A public measurement platform's probes sit in many countries and trace towards
targets abroad. Each traceroute is judged as the route detector would judge a
client of a game whose home country is the probe's own (its source address
geolocated) and whose server stands where the target geolocates: a separate
detector per traceroute, so nothing one probe's traceroute shows leaks into
another's verdict. A probe whose address or target does not geolocate is
skipped, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pathsentry.config import Config, Server
from pathsentry.detectors.base import DetectorContext
from pathsentry.detectors.route import RouteDetector
from pathsentry.enrich.enricher import Enricher
from pathsentry.enrich.geo import GeoResolver
from pathsentry.schemas import parse_event

__all__ = ["RouteVerdict", "check_routes"]

#: the server id the target is given in each traceroute's own configuration
TARGET_ID = "target"


@dataclass(slots=True)
class RouteVerdict:
    """What the route detector made of one traceroute."""

    event_id: str
    home: str | None = None
    target_country: str | None = None
    country_path: list[str] = field(default_factory=list)
    gated_hops: list[int] = field(default_factory=list)
    flagged: bool = False
    reasons: list[str] = field(default_factory=list)
    skipped: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event_id": self.event_id, "home": self.home,
                               "target_country": self.target_country}
        if self.skipped:
            out["skipped"] = self.skipped
            return out
        out.update(country_path=self.country_path, gated_hops=self.gated_hops,
                   flagged=self.flagged)
        if self.reasons:
            out["reasons"] = self.reasons
        return out


def _verdict(event: dict[str, Any], base: Config, geo: GeoResolver) -> RouteVerdict:
    verdict = RouteVerdict(str(event["event_id"]))
    src = geo.lookup(event["src_ip"])
    verdict.home = src.country
    dst_text = event.get("dst_addr")
    try:
        dst = geo.lookup(dst_text) if dst_text else None
    except ValueError:
        dst = None
    if dst is not None:
        verdict.target_country = dst.country
    if src.country is None:
        verdict.skipped = "source address not geolocated"
        return verdict
    if dst is None or dst.country is None or dst.lat is None or dst.lon is None:
        verdict.skipped = "target not geolocated"
        return verdict
    server = Server(id=TARGET_ID, lat=dst.lat, lon=dst.lon, country=dst.country)
    cfg = Config.model_validate({**base.model_dump(by_alias=True),
                                 "home_countries": [src.country], "server": [server.model_dump()]})
    detector = RouteDetector(DetectorContext(cfg, geo))
    tr = parse_event({**event, "server_id": TARGET_ID})
    ev = Enricher(cfg, geo).enrich(tr)
    out = detector.process(ev)
    route = ev.notes.get("route") or {}
    verdict.country_path = list(route.get("country_path", []))
    verdict.gated_hops = list(route.get("gated_hops", []))
    if out is not None and out.flags:
        verdict.flagged = True
        verdict.reasons = list(out.flags[0].reasons)
    return verdict


def check_routes(events: Iterable[dict[str, Any]], base: Config,
                 geo: GeoResolver) -> Iterator[RouteVerdict]:
    """One verdict per converted traceroute, in order."""
    for event in events:
        yield _verdict(event, base, geo)
