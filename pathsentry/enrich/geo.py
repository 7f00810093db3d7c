"""Geo/ASN resolution from stacked sources: the first source that answers wins.

Sources:

- ``csv:FILE``: a prefix table ``cidr,country,asn,as_name,lat,lon,kind``
  (kind: residential|mobile|hosting|education|business|relay); longest prefix wins.
- ``mmdb:FILE``: a MaxMind-format database (City, Country or ASN edition).
  ``mmdb:CITY.mmdb+ASN.mmdb`` joins a location and an ASN database.
- ``bundled``: the offline default, the ``geoip2fast`` data set (GeoLite2
  Country + ASN, 2024-06, CC BY-SA 4.0 by MaxMind; MIT code). It has no city
  coordinates and no AS numbers, so the location is the country's reference
  point (``precision="country"``) and evidence says so.

>>> import io
>>> table = CsvPrefixTable.from_lines(io.StringIO(
...     "cidr,country,asn,as_name,lat,lon,kind\\n"
...     "203.0.113.0/24,KR,64500,Example Telecom,37.5,127.0,residential\\n"))
>>> r = GeoResolver([table]).lookup("203.0.113.9")
>>> r.country, r.asn, r.kind, r.precision
('KR', 64500, 'residential', 'city')
>>> GeoResolver([table]).lookup("198.51.100.1").country is None
True
"""

from __future__ import annotations

import csv
import ipaddress
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol

from pathsentry.enrich.centroids import COUNTRY_POINTS

__all__ = [
    "BundledSource",
    "CsvPrefixTable",
    "GeoInfo",
    "GeoResolver",
    "GeoSource",
    "MmdbSource",
    "build_resolver",
    "network_text",
    "prefix_of",
]

IpLike = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class GeoInfo:
    """What is known about an address. ``precision``: city | country | none."""

    country: str | None = None
    asn: int | None = None
    as_name: str | None = None
    lat: float | None = None
    lon: float | None = None
    kind: str | None = None
    network: str | None = None
    source: str = "none"
    precision: str = "none"

    @property
    def located(self) -> bool:
        return self.lat is not None and self.lon is not None


UNKNOWN = GeoInfo()


def network_text(addr: IpLike, bits: int) -> str:
    """The network of ``addr`` that is ``bits`` long, as text: what
    ``str(ip_network(f"{addr}/{bits}", strict=False))`` gives, from the address's
    integer instead of its text parsed again.

    >>> network_text(ipaddress.ip_address("203.0.113.77"), 24)
    '203.0.113.0/24'
    >>> network_text(ipaddress.ip_address("2001:db8:1:2::5"), 64)
    '2001:db8:1:2::/64'
    """
    width = 32 if addr.version == 4 else 128
    net = int(addr) >> (width - bits) << (width - bits)
    if width == 32:
        return f"{net >> 24}.{(net >> 16) & 255}.{(net >> 8) & 255}.{net & 255}/{bits}"
    return str(ipaddress.IPv6Network((net, bits)))


def prefix_of(ip: str | IpLike) -> str:
    """The aggregation prefix of an address: /24 for IPv4, /48 for IPv6.

    >>> prefix_of("203.0.113.77"), prefix_of("2001:db8:1:2::5")
    ('203.0.113.0/24', '2001:db8:1::/48')
    """
    addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    return network_text(addr, 24 if addr.version == 4 else 48)


class GeoSource(Protocol):
    name: str

    def lookup(self, ip: IpLike) -> GeoInfo | None: ...


def _with_point(info: GeoInfo) -> GeoInfo:
    if info.located or not info.country:
        return info
    point = COUNTRY_POINTS.get(info.country)
    if point is None:
        return info
    return GeoInfo(
        country=info.country, asn=info.asn, as_name=info.as_name, lat=point[0], lon=point[1],
        kind=info.kind, network=info.network, source=info.source, precision="country",
    )


def _num(row: dict[str, str], key: str) -> float | None:
    v = (row.get(key) or "").strip()
    return float(v) if v else None


class CsvPrefixTable:
    """Longest-prefix-match table loaded from CSV (both IP versions)."""

    def __init__(self, rows: Iterable[tuple[str, GeoInfo]], name: str = "csv") -> None:
        self.name = name
        by_len: dict[tuple[int, int], dict[int, GeoInfo]] = {}
        for cidr, info in rows:
            net = ipaddress.ip_network(cidr, strict=False)
            by_len.setdefault((net.version, net.prefixlen), {})[int(net.network_address)] = info
        # most specific first
        self._tables = sorted(by_len.items(), key=lambda kv: -kv[0][1])

    @classmethod
    def from_lines(cls, fh: IO[str], name: str = "csv") -> CsvPrefixTable:
        reader = csv.DictReader(fh)
        rows = []
        for row in reader:
            if not row.get("cidr"):
                continue

            lat, lon = _num(row, "lat"), _num(row, "lon")

            asn_txt = (row.get("asn") or "").strip().upper().removeprefix("AS")
            info = GeoInfo(
                country=(row.get("country") or "").strip().upper() or None,
                asn=int(asn_txt) if asn_txt else None,
                as_name=(row.get("as_name") or "").strip() or None,
                lat=lat,
                lon=lon,
                kind=(row.get("kind") or "").strip() or None,
                network=str(ipaddress.ip_network(row["cidr"].strip(), strict=False)),
                source=name,
                precision="city" if lat is not None else "country",
            )
            rows.append((row["cidr"].strip(), info))
        return cls(rows, name=name)

    @classmethod
    def from_file(cls, path: str) -> CsvPrefixTable:
        with open(path, newline="", encoding="utf-8") as fh:
            return cls.from_lines(fh, name=f"csv:{path}")

    def lookup(self, ip: IpLike) -> GeoInfo | None:
        value = int(ip)
        for (version, plen), table in self._tables:
            if version != ip.version:
                continue
            width = 32 if version == 4 else 128
            key = (value >> (width - plen)) << (width - plen)
            hit = table.get(key)
            if hit is not None:
                return _with_point(hit)
        return None


class MmdbSource:
    """A MaxMind-format database (City/Country), optionally joined with an ASN one."""

    def __init__(self, location_path: str | None, asn_path: str | None = None) -> None:
        import maxminddb

        self.name = f"mmdb:{location_path or asn_path}"
        self._loc = maxminddb.open_database(location_path) if location_path else None
        self._asn = maxminddb.open_database(asn_path) if asn_path else None

    @staticmethod
    def _merge(rec: dict[str, Any], out: dict[str, Any]) -> None:
        country = (rec.get("country") or rec.get("registered_country") or {}).get("iso_code")
        if country:
            out["country"] = country
        loc = rec.get("location") or {}
        if "latitude" in loc and "longitude" in loc:
            out["lat"], out["lon"] = float(loc["latitude"]), float(loc["longitude"])
        if "autonomous_system_number" in rec:
            out["asn"] = int(rec["autonomous_system_number"])
        if "autonomous_system_organization" in rec:
            out["as_name"] = str(rec["autonomous_system_organization"])
        traits = rec.get("traits") or {}
        if traits.get("connection_type"):
            out["kind"] = str(traits["connection_type"]).lower()

    def lookup(self, ip: IpLike) -> GeoInfo | None:
        out: dict[str, Any] = {}
        network = None
        for db in (self._loc, self._asn):
            if db is None:
                continue
            rec, plen = db.get_with_prefix_len(str(ip))
            if isinstance(rec, dict):
                self._merge(rec, out)
                if network is None:
                    network = str(ipaddress.ip_network(f"{ip}/{plen}", strict=False))
        if not out:
            return None
        precision = "city" if "lat" in out else "country"
        return _with_point(GeoInfo(network=network, source=self.name, precision=precision, **out))


class BundledSource:
    """Offline default from ``geoip2fast`` (country + AS name; no coordinates)."""

    name = "bundled"

    def __init__(self) -> None:
        import geoip2fast.geoip2fast as tables
        from geoip2fast import GeoIP2Fast

        from pathsentry.enrich.geopack import pack_tables

        self._g = GeoIP2Fast(geoip2fast_data_file="geoip2fast-asn-ipv6.dat.gz", verbose=False)
        # its tables as arrays: the same answers for about half the memory (see geopack)
        pack_tables(tables)

    def lookup(self, ip: IpLike) -> GeoInfo | None:
        r = self._g.lookup(str(ip))
        cc = getattr(r, "country_code", "") or ""
        # (``--``: a network the data set holds without a country)
        if getattr(r, "is_private", False) or len(cc) != 2 or not cc.isalpha():
            return None
        as_name = getattr(r, "asn_name", "") or None
        network = getattr(r, "asn_cidr", "") or getattr(r, "cidr", "") or None
        return _with_point(
            GeoInfo(country=cc, as_name=as_name, network=network, source=self.name,
                    precision="country")
        )


#: (IP version, netmask, network address) of the internal ranges, as integers
_INTERNAL: tuple[tuple[int, int, int], ...] = tuple(
    (n.version, int(n.netmask), int(n.network_address))
    for n in map(ipaddress.ip_network, (
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8",
        "169.254.0.0/16", "0.0.0.0/8", "224.0.0.0/4", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8",
    ))
)


def _is_internal(addr: IpLike) -> bool:
    """Private, shared (CGNAT), loopback, link-local or multicast: never geolocated.

    Documentation ranges (TEST-NET, 2001:db8::/32) are *not* internal here, so
    simulations and examples can use them as public space.

    >>> _is_internal(ipaddress.ip_address("100.64.1.2")), _is_internal(ipaddress.ip_address("fe80::1"))
    (True, True)
    >>> _is_internal(ipaddress.ip_address("203.0.113.9")), _is_internal(ipaddress.ip_address("2001:db8::1"))
    (False, False)
    """
    version, value = addr.version, int(addr)
    # (a loop, not ``any`` over a generator: half the time, on every lookup)
    for v, mask, net in _INTERNAL:  # noqa: SIM110
        if v == version and value & mask == net:
            return True
    return False


#: Addresses whose answer a :class:`GeoResolver` keeps (about 0.2 KiB each with the key):
#: the enricher's own memo answers most repeats before this cache is asked. (A module
#: constant, not a class attribute: the compiled build cannot read a class attribute in
#: a default argument of its own class.)
GEO_CACHE_SIZE = 65_536


class GeoResolver:
    """Stacked sources with a bounded LRU cache and a private-range guard."""

    def __init__(self, sources: Sequence[GeoSource], cache_size: int = GEO_CACHE_SIZE) -> None:
        self.sources = list(sources)
        self._cache: OrderedDict[tuple[int, int], GeoInfo] = OrderedDict()
        self._cache_size = cache_size
        #: one shared instance per distinct answer: the addresses of a network get equal
        #: answers, and the cache and the detectors' per-session state hold one each
        #: (emptied when it holds ``cache_size`` answers)
        self._shared: dict[GeoInfo, GeoInfo] = {}

    def lookup(self, ip: str | IpLike) -> GeoInfo:
        addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        if _is_internal(addr):
            return GeoInfo(kind="private", source="rfc1918", precision="none")
        key = (addr.version, int(addr))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        info = UNKNOWN
        for src in self.sources:
            found = src.lookup(addr)
            if found is not None:
                shared = self._shared.get(found)
                if shared is None:
                    if len(self._shared) >= self._cache_size:
                        self._shared.clear()
                    shared = self._shared[found] = found
                info = shared
                break
        self._cache[key] = info
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return info


def build_resolver(specs: Sequence[str]) -> GeoResolver:
    """Build a resolver from specs such as ``csv:geo.csv``, ``mmdb:a.mmdb+b.mmdb``, ``bundled``."""
    sources: list[GeoSource] = []
    for spec in specs:
        kind, _, arg = spec.partition(":")
        if kind == "bundled":
            sources.append(BundledSource())
        elif kind == "csv":
            sources.append(CsvPrefixTable.from_file(arg))
        elif kind == "mmdb":
            loc, _, asn = arg.partition("+")
            sources.append(MmdbSource(loc or None, asn or None))
        else:
            raise ValueError(f"unknown geo source {spec!r} (use csv:FILE, mmdb:FILE or bundled)")
    return GeoResolver(sources)
