from __future__ import annotations

from pathlib import Path

import pytest

from pathsentry.config import load_config
from pathsentry.enrich.geo import BundledSource, CsvPrefixTable, GeoResolver, MmdbSource, build_resolver

CSV = """cidr,country,asn,as_name,lat,lon,kind
203.0.113.0/24,KR,64500,Example Telecom,36.35,127.38,residential
203.0.113.128/25,KR,64501,Example Hosting,37.56,126.97,hosting
2001:db8::/32,JP,64502,Example JP,,,mobile
"""


def test_csv_longest_prefix_wins_and_country_point_fallback(tmp_path: Path) -> None:
    f = tmp_path / "geo.csv"
    f.write_text(CSV)
    table = CsvPrefixTable.from_file(str(f))
    assert table.lookup(__import__("ipaddress").ip_address("203.0.113.200")).asn == 64501  # type: ignore[union-attr]
    r = GeoResolver([table])
    assert r.lookup("203.0.113.5").asn == 64500
    assert r.lookup("203.0.113.5").kind == "residential"
    jp = r.lookup("2001:db8::7")
    assert (jp.country, jp.kind, jp.precision) == ("JP", "mobile", "country")
    assert jp.lat == pytest.approx(35.6762)
    assert r.lookup("198.51.100.1").country is None
    assert r.lookup("10.1.2.3").kind == "private"


def test_mmdb_city_plus_asn(tmp_path: Path) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    city = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City")
    city.insert_network(IPSet(["198.51.100.0/24"]), {
        "country": {"iso_code": "KR"}, "location": {"latitude": 35.18, "longitude": 129.08}})
    city.to_db_file(str(tmp_path / "city.mmdb"))
    asn = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-ASN")
    asn.insert_network(IPSet(["198.51.100.0/22"]), {
        "autonomous_system_number": 4766, "autonomous_system_organization": "Korea Telecom"})
    asn.to_db_file(str(tmp_path / "asn.mmdb"))
    src = MmdbSource(str(tmp_path / "city.mmdb"), str(tmp_path / "asn.mmdb"))
    info = GeoResolver([src]).lookup("198.51.100.9")
    assert (info.country, info.asn, info.as_name, info.precision) == ("KR", 4766, "Korea Telecom", "city")
    assert info.lat == pytest.approx(35.18)
    resolver = build_resolver([f"mmdb:{tmp_path / 'city.mmdb'}+{tmp_path / 'asn.mmdb'}"])
    assert resolver.lookup("198.51.100.9").asn == 4766


def test_stacked_sources_first_answer_wins(tmp_path: Path) -> None:
    f = tmp_path / "geo.csv"
    f.write_text("cidr,country,asn,as_name,lat,lon,kind\n8.8.8.0/24,KR,1,Override,37.5,127.0,hosting\n")
    r = build_resolver([f"csv:{f}", "bundled"])
    assert r.lookup("8.8.8.8").as_name == "Override"
    us = r.lookup("8.8.4.4")
    assert us.country == "US" and us.source == "bundled" and us.precision == "country"


def test_bundled_default_knows_korean_isps() -> None:
    info = GeoResolver([BundledSource()]).lookup("211.234.10.7")
    assert info.country == "KR"
    assert info.as_name and "DACOM" in info.as_name.upper()


def test_config_file_env_overrides_and_geo_paths(tmp_path: Path) -> None:
    cfg_file = tmp_path / "pathsentry.toml"
    cfg_file.write_text(
        'home_countries = ["KR"]\ngeo = ["csv:geo.csv", "bundled"]\n'
        '[kafka]\nurl = "kafka://k1:9092"\n'
        '[[server]]\nid = "kr-sel-1"\nlat = 37.5665\nlon = 126.978\ncountry = "KR"\n'
        '[[origin]]\nhost = "ws.example.com"\nexpect_ws_status = 101\nexpect_headers = ["server", "cf-ray"]\n'
        '[[allow]]\ncidr = "198.51.100.0/24"\nreason = "game relay"\n'
        '[detectors.latency]\nmin_samples = 30\n'
    )
    env = {"PATHSENTRY_KAFKA_URL": "kafka://prod:9093", "PATHSENTRY_TOPIC_PREFIX": "ps.",
           "PATHSENTRY_CLICKHOUSE_URL": "clickhouse://u:p@ch:9000/soc"}
    cfg = load_config(cfg_file, env=env, geo=["extra.mmdb"])
    assert cfg.kafka.url == "kafka://prod:9093" and cfg.kafka.bootstrap == "prod:9093"
    assert cfg.kafka.topic("alerts") == "ps.alerts"
    assert cfg.clickhouse.url.endswith("/soc")
    assert cfg.geo == ["mmdb:extra.mmdb", "csv:geo.csv", "bundled"]
    assert cfg.resolve_path("geo.csv") == str(tmp_path / "geo.csv")
    assert cfg.origin("WS.example.com") is not None
    assert cfg.detector_settings("latency") == {"min_samples": 30}
    with pytest.raises(ValueError):
        load_config(text='[[allow]]\ncidr = "not-a-net"\nreason = "x"\n', env={})


def test_enrichment_answers_each_address_object_for_itself(tmp_path: Path) -> None:
    """The enricher's memo is keyed by address object: distinct objects of one address get
    the same answer, and an entry left under an object's id by another object is not
    taken for it."""
    import ipaddress

    from pathsentry.enrich.enricher import Enricher

    f = tmp_path / "geo.csv"
    f.write_text(CSV)
    cfg = load_config(text='[[allow]]\ncidr = "203.0.113.128/25"\nreason = "relay"\n', env={})
    enricher = Enricher(cfg, build_resolver([f"csv:{f}"]))
    for text, asn, prefix, allowed in [
        ("203.0.113.9", 64500, "203.0.113.0/24", False),
        ("203.0.113.200", 64501, "203.0.113.0/24", True),
        ("2001:db8:1:2::5", 64502, "2001:db8:1::/48", False),
        ("10.1.2.3", None, "10.1.2.0/24", False),
    ]:
        a, b = ipaddress.ip_address(text), ipaddress.ip_address(text)
        assert a is not b
        for ip in (a, b, a):
            geo, got_prefix, entry = enricher.source(ip)
            assert (geo.asn, got_prefix, entry is not None) == (asn, prefix, allowed)
            assert got_prefix == str(ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 48}",
                                                          strict=False))
    ip = ipaddress.ip_address("203.0.113.9")
    other = ipaddress.ip_address("203.0.113.200")
    enricher._by_id[id(ip)] = (other, enricher.source(other))
    assert enricher.source(ip)[0].asn == 64500


_V4 = ["0.0.0.0", "255.255.255.255", "203.0.113.77", "10.0.0.1"]
_V6 = ["::", "::1", "2001:db8:1:2::5", "fe80::1:2:3:4", "::ffff:203.0.113.7",
       "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]


@pytest.mark.parametrize(("text", "bits"), [(t, b) for t in _V4 for b in (1, 8, 24, 31, 32)]
                         + [(t, b) for t in _V6 for b in (1, 24, 48, 64, 127, 128)])
def test_network_text_is_the_parsed_networks_text(text: str, bits: int) -> None:
    import ipaddress

    from pathsentry.enrich.geo import network_text

    addr = ipaddress.ip_address(text)
    assert network_text(addr, bits) == str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))


def test_bundled_tables_packed_answer_as_the_lists_did() -> None:
    """The bundled data set's tables, packed into arrays, give every lookup the answer
    the library's own lists give (the tables reloaded from the file, unpacked)."""
    import ipaddress
    import random
    from array import array

    import geoip2fast.geoip2fast as tables

    from pathsentry.enrich.geopack import TABLES, pack_tables

    src = BundledSource()
    assert any(isinstance(c, array) for c in tables.mainListFirstIP)
    rng = random.Random(7)
    ips = [".".join(str(rng.randrange(256)) for _ in range(4)) for _ in range(3000)]
    ips += [f"2001:{rng.randrange(1 << 16):x}::{rng.randrange(1 << 16):x}" for _ in range(300)]
    ips += ["1.0.0.1", "223.255.255.254", "255.255.255.255", "0.0.0.0", "::1"]
    packed = [src.lookup(ipaddress.ip_address(ip)) for ip in ips]
    src._g.reload_data()  # the library's own lists again
    assert not any(isinstance(c, array) for name in TABLES for c in getattr(tables, name))
    try:
        assert [src.lookup(ipaddress.ip_address(ip)) for ip in ips] == packed
        assert sum(a is not None for a in packed) > 1000
    finally:
        assert pack_tables(tables) > 0
