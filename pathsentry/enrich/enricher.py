"""Enrichment: geo/ASN of the source address, its aggregation prefix, the server
the event refers to, and the allow-list entry it falls in.

>>> from pathsentry.config import load_config
>>> from pathsentry.enrich.geo import GeoResolver
>>> from pathsentry.schemas import parse_event
>>> cfg = load_config(text='[[allow]]\\ncidr = "203.0.113.0/24"\\nreason = "game relay"\\n', env={})
>>> e = Enricher(cfg, GeoResolver([])).enrich(parse_event({"kind": "rtt_probe", "event_id": "p",
...     "ts": "2026-01-01T00:00:00Z", "src_ip": "203.0.113.5", "vantage_id": "x",
...     "method": "icmp", "rtt_ms": [3.0]}))
>>> e.prefix, e.allowed.reason
('203.0.113.0/24', 'game relay')
"""

from __future__ import annotations

import ipaddress
import sys

from pathsentry.config import AllowEntry, Config
from pathsentry.detectors.base import Enriched
from pathsentry.detectors.bounded import remember
from pathsentry.detectors.saved import AllowList
from pathsentry.enrich.geo import GeoInfo, GeoResolver, prefix_of
from pathsentry.schemas import AnyEvent

__all__ = ["Enricher"]

IpAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


Source = tuple[GeoInfo, str, AllowEntry | None]


class Enricher:
    #: Source addresses whose (geo, prefix, allow-list) answer is kept; cleared when full.
    #: An entry (with the address object it keeps alive) takes about 0.3 KiB; the memo
    #: is for the events of sessions in progress (a login, its probes, its traceroute),
    #: which this many addresses cover, not for every address ever seen.
    CACHE_SIZE = 65_536

    def __init__(self, config: Config, geo: GeoResolver) -> None:
        self.config = config
        self.geo = geo
        self._allow = AllowList(config)
        #: ``id()`` of a source address object -> (the object, its answer). The event
        #: parser hands out one object per distinct address, and hashing an address
        #: object is slow pure Python; the entry holds the object, so that its id is not
        #: reused while the entry lives (another object of the same address only costs
        #: a lookup again)
        self._by_id: dict[int, tuple[IpAddr, Source]] = {}

    def allowed(self, ip: IpAddr) -> AllowEntry | None:
        return self._allow.entry(ip)

    def source(self, ip: IpAddr) -> Source:
        """Geo, aggregation prefix and allow-list entry of a source address (cached)."""
        hit = self._by_id.get(id(ip))
        if hit is not None and hit[0] is ip:
            return hit[1]
        # (the prefix text is shared by the addresses of a prefix, and by the state
        # every detector keys by it)
        answer = (self.geo.lookup(ip), sys.intern(prefix_of(ip)), self.allowed(ip))
        remember(self._by_id, id(ip), (ip, answer), self.CACHE_SIZE)
        return answer

    def enrich(self, event: AnyEvent) -> Enriched:
        # The kind tag tells the models apart (``isinstance`` on a pydantic model class
        # runs pydantic's own check, in Python); a field the model lacks is not looked
        # up by name: a miss costs a pydantic exception.
        if event.kind == "login":
            server_id: str | None = event.server_id
        elif event.kind == "rtt_probe" or event.kind == "traceroute":
            server_id = event.vantage_id
        else:
            server_id = None
        geo, prefix, allowed = self.source(event.src_ip)
        server = self.config.server(server_id) if server_id else None
        return Enriched(event, geo, prefix, server, allowed)
