"""Configuration snippets shared by the tests (TOML, as an operator writes it)."""

from __future__ import annotations

__all__ = ["CDN_ORIGINS", "SERVERS", "server_toml"]

#: id -> (lat, lon, country) of the game servers the tests use
SERVERS: dict[str, tuple[float, float, str]] = {
    "kr-sel-1": (37.5665, 126.9780, "KR"),
    "kr-pus-1": (35.1796, 129.0756, "KR"),
    "jp-tyo-1": (35.6762, 139.6503, "JP"),
    "cn-sha-1": (31.2304, 121.4737, "CN"),
}


def server_toml(*ids: str) -> str:
    """``[[server]]`` entries for the named servers.

    >>> print(server_toml("kr-sel-1"))
    [[server]]
    id = "kr-sel-1"
    lat = 37.5665
    lon = 126.978
    country = "KR"
    <BLANKLINE>
    """
    out = []
    for sid in ids:
        lat, lon, cc = SERVERS[sid]
        out.append(f'[[server]]\nid = "{sid}"\nlat = {lat}\nlon = {lon}\ncountry = "{cc}"\n')
    return "".join(out)


#: what genuine answers of the CDN-fronted hosts look like
CDN_ORIGINS = """
[[origin]]
host = "ws.example.com"
expect_ws_status = 101
expect_server = "cloudflare"
expect_headers = ["server", "cf-ray"]

[[origin]]
host = "www.example.com"
expect_status = 200
expect_server = "cloudflare"
expect_headers = ["server", "cf-ray"]
"""
