"""The route detector over converted traceroutes, each judged on its own terms.

A public measurement platform's probes sit in many countries and trace towards
targets abroad. Each traceroute is judged as the route detector would judge a
client of a game whose home country is the probe's own (its source address
geolocated) and whose server stands at the target: a separate detector per
traceroute, so nothing one traceroute shows leaks into another's verdict.

The server stands where the target geolocates, unless the caller knows better
(``target``: one location for every traceroute, e.g. an anycast address or one
registered far from where it answers). A target location that the target's own
RTT rules out (farther from the probe's country than ``RTT x 100 km`` plus both
geolocations' slack) cannot stand for the server: that traceroute is skipped with
the reason, as is one whose source or target does not geolocate.

Two derived checks reuse the real hops:

- ``silence=K``: each traceroute again with the routers of its first 1..K answering
  public hops made silent wherever they answer, as routers that do not answer ICMP
  leave them: the shape that puts a transit router registered abroad first;
- :func:`synthetic_relays`: the first home-country hops of one probe (the relay's
  client, abroad) before another probe's public hops delayed by the leg between
  their countries, claimed from the second probe's address: each must be flagged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pathsentry.config import Config, Server
from pathsentry.detectors.base import DetectorContext
from pathsentry.detectors.physics import KM_PER_MS_RTT, great_circle_km, median
from pathsentry.detectors.route import HOP_SLACK_KM, RouteDetector
from pathsentry.enrich.enricher import Enricher
from pathsentry.enrich.geo import GeoInfo, GeoResolver
from pathsentry.schemas import parse_event
from pathsentry.schemas.events import MAX_HOPS

__all__ = ["RouteVerdict", "Target", "check_routes", "synthetic_relays"]

#: the server id the target is given in each traceroute's own configuration
TARGET_ID = "target"
#: home-country hops of the relay's client kept before the exit's path
RELAY_HEAD = 3


@dataclass(frozen=True, slots=True)
class Target:
    """Where the server stands when the caller knows it."""

    lat: float
    lon: float
    country: str


@dataclass(slots=True)
class RouteVerdict:
    """What the route detector made of one traceroute (``silenced``: how many of its
    first answering hops were made silent)."""

    event_id: str
    home: str | None = None
    target_country: str | None = None
    silenced: int = 0
    country_path: list[str] = field(default_factory=list)
    gated_hops: list[int] = field(default_factory=list)
    flagged: bool = False
    reasons: list[str] = field(default_factory=list)
    skipped: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event_id": self.event_id, "home": self.home,
                               "target_country": self.target_country}
        if self.silenced:
            out["silenced"] = self.silenced
        if self.skipped:
            out["skipped"] = self.skipped
            return out
        out.update(country_path=self.country_path, gated_hops=self.gated_hops,
                   flagged=self.flagged)
        if self.reasons:
            out["reasons"] = self.reasons
        return out


def _slack(info: GeoInfo) -> float:
    return HOP_SLACK_KM.get(info.precision, 1000.0)


def _dest_ms(event: dict[str, Any]) -> float | None:
    """The target's own median RTT, if the target answered."""
    for hop in event["hops"]:
        if hop["ip"] is not None and hop["ip"] == event.get("dst_addr") and hop["rtt_ms"]:
            return median(list(hop["rtt_ms"]))
    return None


def _place(event: dict[str, Any], src: GeoInfo, geo: GeoResolver,
           target: Target | None) -> tuple[Server | None, str | None, str | None]:
    """The server standing for the target, its country, or why there is none."""
    if target is not None:
        return Server(id=TARGET_ID, lat=target.lat, lon=target.lon,
                      country=target.country), target.country, None
    try:
        dst = geo.lookup(event["dst_addr"]) if event.get("dst_addr") else None
    except ValueError:
        dst = None
    if dst is None or dst.country is None or dst.lat is None or dst.lon is None:
        return None, None, "target not geolocated"
    dest_ms = _dest_ms(event)
    if dest_ms is not None and src.lat is not None and src.lon is not None:
        dist = great_circle_km(src.lat, src.lon, dst.lat, dst.lon)
        bound = dest_ms * KM_PER_MS_RTT + _slack(src) + _slack(dst)
        if dist > bound:
            return None, dst.country, (
                f"target geolocation breaks its RTT bound ({dst.country} {dist:.0f} km "
                f"from {src.country} > {bound:.0f} km at {dest_ms:.1f} ms)")
    return Server(id=TARGET_ID, lat=dst.lat, lon=dst.lon, country=dst.country), dst.country, None


def _judge(event: dict[str, Any], home: str, server: Server, base: Config,
           geo: GeoResolver, verdict: RouteVerdict) -> RouteVerdict:
    cfg = Config.model_validate({**base.model_dump(by_alias=True), "home_countries": [home],
                                 "server": [server.model_dump()]})
    detector = RouteDetector(DetectorContext(cfg, geo))
    ev = Enricher(cfg, geo).enrich(parse_event({**event, "server_id": TARGET_ID}))
    out = detector.process(ev)
    route = ev.notes.get("route") or {}
    verdict.country_path = list(route.get("country_path", []))
    verdict.gated_hops = list(route.get("gated_hops", []))
    if out is not None and out.flags:
        verdict.flagged = True
        verdict.reasons = list(out.flags[0].reasons)
    return verdict


def _silenced(event: dict[str, Any], k: int, geo: GeoResolver) -> dict[str, Any] | None:
    """``event`` with the routers of its first ``k`` answering public hops silent,
    wherever they answer again (``None``: it has fewer)."""
    quiet: set[str] = set()
    for hop in event["hops"]:
        if len(quiet) < k and hop["ip"] is not None and geo.lookup(hop["ip"]).kind != "private":
            quiet.add(hop["ip"])
    if len(quiet) < k:
        return None
    hops = [{"ttl": hop["ttl"], "ip": None, "rtt_ms": []} if hop["ip"] in quiet else hop
            for hop in event["hops"]]
    return {**event, "event_id": f"{event['event_id']}-s{k}", "hops": hops}


def check_routes(events: Iterable[dict[str, Any]], base: Config, geo: GeoResolver,
                 target: Target | None = None, silence: int = 0) -> Iterator[RouteVerdict]:
    """One verdict per converted traceroute, in order, each followed by the verdicts
    of its silenced variants (``silence`` > 0)."""
    for event in events:
        src = geo.lookup(event["src_ip"])
        verdict = RouteVerdict(str(event["event_id"]), home=src.country)
        server, verdict.target_country, why = _place(event, src, geo, target)
        if src.country is None:
            why = "source address not geolocated"
        if why is not None or server is None or src.country is None:
            verdict.skipped = why
            yield verdict
            continue
        yield _judge(event, src.country, server, base, geo, verdict)
        for k in range(1, silence + 1):
            variant = _silenced(event, k, geo)
            if variant is None:
                break
            yield _judge(variant, src.country, server, base, geo,
                         RouteVerdict(variant["event_id"], src.country, server.country, k))


def _answering(event: dict[str, Any], geo: GeoResolver, country: str) -> list[dict[str, Any]]:
    """The hops that answered with enough samples from public addresses of ``country``."""
    return [h for h in event["hops"] if h["ip"] is not None and len(h["rtt_ms"]) >= 3
            and geo.lookup(h["ip"]).country == country]


def synthetic_relays(events: Iterable[dict[str, Any]], base: Config, geo: GeoResolver,
                     target: Target | None = None) -> Iterator[RouteVerdict]:
    """A relay for each ordered pair of home countries: the first probe (of those whose
    first public hop is at home) of each country stands for it."""
    probes: dict[str, tuple[dict[str, Any], GeoInfo, Server]] = {}
    for event in events:
        src = geo.lookup(event["src_ip"])
        server, _, why = _place(event, src, geo, target)
        if src.country is None or server is None or why is not None or src.lat is None \
                or src.lon is None or src.country in probes:
            continue
        public = [h for h in event["hops"] if h["ip"] is not None and len(h["rtt_ms"]) >= 3
                  and geo.lookup(h["ip"]).kind != "private"]
        if len(public) >= 2 and geo.lookup(public[0]["ip"]).country == src.country:
            probes[src.country] = (event, src, server)
    for a, (ea, ga, _) in probes.items():
        head = _answering(ea, geo, a)[:RELAY_HEAD]
        for b, (eb, gb, server) in probes.items():
            if a == b or not head or ga.lat is None or ga.lon is None \
                    or gb.lat is None or gb.lon is None:
                continue
            leg_ms = great_circle_km(ga.lat, ga.lon, gb.lat, gb.lon) / KM_PER_MS_RTT
            shift = max(median(list(h["rtt_ms"])) for h in head) + leg_ms
            tail = [{**h, "rtt_ms": [round(r + shift, 3) for r in h["rtt_ms"]]}
                    for h in eb["hops"] if h["ip"] is not None
                    and geo.lookup(h["ip"]).kind != "private"]
            hops = [{**h, "ttl": i + 1} for i, h in enumerate((head + tail)[:MAX_HOPS])]
            relay = {**eb, "event_id": f"relay-{a}-{b}", "hops": hops}
            yield _judge(relay, b, server, base, geo,
                         RouteVerdict(relay["event_id"], b, server.country))
