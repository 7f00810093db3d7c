"""Hop-country routes on the shapes public traceroutes have (RIPE Atlas probes).

The hops below are typed after real ones: a probe's own routers, then transit
routers whose addresses are registered in another country (a Swedish carrier's
routers answering a US probe within 2-3 ms, a router registered in Yemen between
two Russian ones), a network the geo data holds without a country, private and
CGNAT first hops, silent hops. Geolocation is at country precision, as the
bundled data set gives it: each address at its country's reference point.
"""

from __future__ import annotations

import io
from typing import Any

from pathsentry.config import load_config
from pathsentry.detectors.base import DetectorContext, Enriched, Findings
from pathsentry.detectors.physics import great_circle_km
from pathsentry.detectors.route import RouteDetector
from pathsentry.enrich.centroids import COUNTRY_POINTS
from pathsentry.enrich.enricher import Enricher
from pathsentry.enrich.geo import CsvPrefixTable, GeoResolver
from pathsentry.schemas import parse_event

#: country-precision prefixes (no coordinates: each is placed at its country's point)
GEO = """cidr,country,asn,as_name,lat,lon,kind
216.66.0.0/16,US,6939,Transit US,,,business
64.71.128.0/18,US,6939,Transit US,,,business
213.155.128.0/18,SE,1299,Carrier SE,,,business
80.91.240.0/20,SE,1299,Carrier SE,,,business
213.248.64.0/18,FR,1299,Carrier FR,,,business
95.84.0.0/16,RU,42610,Access RU,,,residential
195.239.0.0/16,RU,3216,Backbone RU,,,business
94.26.192.0/19,YE,30873,Registered YE,,,business
193.111.172.0/24,ZZ,,No point,,,business
121.244.0.0/16,IN,4755,Target IN,,,hosting
"""


def _detector(home: str, server_cc: str, *, with_server: bool = True,
              geo_csv: str = GEO) -> tuple[RouteDetector, Enricher]:
    lat, lon = COUNTRY_POINTS[server_cc]
    text = f'home_countries = ["{home}"]\n'
    if with_server:
        text += f'[[server]]\nid = "t"\nlat = {lat}\nlon = {lon}\ncountry = "{server_cc}"\n'
    cfg = load_config(text=text, env={})
    geo = GeoResolver([CsvPrefixTable.from_lines(io.StringIO(geo_csv))])
    return RouteDetector(DetectorContext(cfg, geo)), Enricher(cfg, geo)


def _run(home: str, server_cc: str, src: str, hops: list[tuple[str | None, float]],
         *, with_server: bool = True, geo: str = GEO) -> tuple[Enriched, Findings]:
    """A client-run traceroute from ``src``; each hop (address or ``None`` for ``*``)
    answers three probes around its RTT."""
    det, enricher = _detector(home, server_cc, with_server=with_server, geo_csv=geo)
    raw: dict[str, Any] = {
        "kind": "traceroute", "event_id": "t1", "ts": "2013-10-15T08:10:08Z",
        "src_ip": src, "session_id": "s1", "vantage_id": "client",
        "direction": "client_to_server", "server_id": "t",
        "hops": [{"ttl": i + 1, "ip": ip,
                  "rtt_ms": [] if ip is None else [ms, round(ms * 1.05, 3), round(ms * 0.97, 3)]}
                 for i, (ip, ms) in enumerate(hops)],
    }
    ev = enricher.enrich(parse_event(raw))
    return ev, det.process(ev) or Findings()


#: a US probe's traceroute towards India, its first two (US) hops silent: the
#: carrier's routers registered in France and Sweden answer at 2-3 ms, then a US
#: router at 3 ms, then the onward legs to the target
TRANSIT_FIRST = [
    (None, 0.0), (None, 0.0), ("213.248.79.129", 1.9), ("80.91.250.102", 2.3),
    ("213.155.135.79", 2.7), ("64.71.130.1", 3.1), ("64.71.131.9", 72.0),
    ("121.244.76.25", 199.0),
]


def test_transit_routers_registered_abroad_before_home_routers_at_the_same_ms_are_not_an_origin() -> None:
    ev, out = _run("US", "IN", "216.66.30.82", TRANSIT_FIRST)
    route = ev.notes["route"]
    assert out.flags == []
    assert route["foreign_origin"] is False
    # the three carrier hops are out of the US router's 3.1 ms reach: gated
    assert route["gated_hops"] == [3, 4, 5]
    assert route["country_path"] == ["US", "IN"]


def test_the_same_hops_after_a_real_leg_are_a_relay() -> None:
    # the US exit answers only after the ocean: the carrier hops are the origin
    leg_ms = great_circle_km(*COUNTRY_POINTS["SE"], *COUNTRY_POINTS["US"]) / 100.0
    hops = [(ip, ms + (leg_ms if ip and not ip.startswith(("213.", "80.")) else 0.0))
            for ip, ms in TRANSIT_FIRST]
    ev, out = _run("US", "IN", "216.66.30.82", hops)
    assert [f.kind for f in out.flags] == ["route_anomaly"]
    assert ev.notes["route"]["country_path"][:3] == ["FR", "SE", "US"]
    assert "FR → SE → US" in out.flags[0].reasons[0]


def test_a_router_registered_far_away_between_home_routers_is_not_an_origin() -> None:
    # a Russian probe: its first hop silent, then a router registered in Yemen and a
    # Russian backbone router, both at 2 ms
    hops = [(None, 0.0), ("94.26.199.37", 2.0), ("195.239.1.1", 2.1), ("195.239.8.1", 31.0)]
    ev, out = _run("RU", "NL", "95.84.1.7", hops)
    assert out.flags == []
    assert 2 in ev.notes["route"]["gated_hops"]


def test_the_leg_is_checked_without_a_server_too() -> None:
    hops = [(None, 0.0), ("94.26.199.37", 2.0), ("195.239.1.1", 2.1)]
    ev, out = _run("RU", "NL", "95.84.1.7", hops, with_server=False)
    assert out.flags == [] and ev.notes["route"]["gated_hops"] == [2]


def test_a_hop_whose_country_has_no_point_is_unverified_under_a_server() -> None:
    # a network held without a usable location (the first answering hop here)
    hops = [("10.0.0.1", 0.4), ("193.111.172.4", 4.2), ("195.239.1.1", 4.7)]
    ev, out = _run("RU", "RU", "95.84.1.7", hops)
    assert out.flags == []
    assert ev.notes["route"]["country_path"] == ["RU"]


def test_private_cgnat_and_silent_first_hops_leave_a_home_path_home() -> None:
    hops = [("192.168.1.1", 0.5), ("100.64.0.1", 3.0), (None, 0.0),
            ("195.239.1.1", 4.0), ("195.239.8.1", 5.0)]
    ev, out = _run("RU", "RU", "95.84.1.7", hops)
    assert out.flags == [] and ev.notes["route"]["country_path"] == ["RU"]


def test_a_relay_from_russia_into_the_us_is_flagged_with_its_leg() -> None:
    leg_ms = great_circle_km(*COUNTRY_POINTS["RU"], *COUNTRY_POINTS["US"]) / 100.0
    hops = [("192.168.1.1", 0.5), ("195.239.1.1", 3.0), ("195.239.8.1", 4.0),
            ("64.71.130.1", 4.0 + leg_ms), ("64.71.131.9", 5.0 + leg_ms)]
    ev, out = _run("US", "US", "216.66.30.82", hops)
    assert [f.kind for f in out.flags] == ["route_anomaly"]
    assert ev.notes["route"]["gated_hops"] == []


def test_a_hop_without_an_as_number_is_named_without_one() -> None:
    # geo data without AS numbers (the bundled set holds none for some networks)
    leg_ms = great_circle_km(*COUNTRY_POINTS["RU"], *COUNTRY_POINTS["US"]) / 100.0
    hops = [("195.239.1.1", 3.0), ("64.71.130.1", 4.0 + leg_ms)]
    _, out = _run("US", "US", "216.66.30.82", hops,
                  geo=GEO.replace("195.239.0.0/16,RU,3216,", "195.239.0.0/16,RU,,"))
    [flag] = out.flags
    hop = next(r for r in flag.reasons if r.startswith("hop 1 "))
    assert "in RU at 3.0 ms" in hop and "AS" not in hop
    _, out = _run("US", "US", "216.66.30.82", hops)
    assert any("in RU (AS3216) at 3.0 ms" in r for r in out.flags[0].reasons)
