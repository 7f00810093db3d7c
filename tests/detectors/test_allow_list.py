"""The allow-list's ranges, matched on integers, give the entry ``ipaddress`` membership
gives: the first configured range an address falls in, IPv4 and IPv6 apart."""

from __future__ import annotations

import ipaddress
import random

from pathsentry.config import load_config
from pathsentry.detectors.saved import AllowList
from pathsentry.enrich.geo import _is_internal

_RANGES = ("203.0.113.0/24", "203.0.0.0/16", "10.9.8.7/32", "2001:db8:5::/48", "0.0.0.0/1", "::/2")


def _config_text() -> str:
    return "".join(f'[[allow]]\ncidr = "{c}"\nreason = "r{i}"\n' for i, c in enumerate(_RANGES))


def test_allow_list_entry_is_the_first_range_holding_the_address() -> None:
    allow = AllowList(load_config(text=_config_text(), env={}))
    nets = [ipaddress.ip_network(c) for c in _RANGES]
    rng = random.Random(2)
    addrs = [ipaddress.ip_address(rng.getrandbits(32)) for _ in range(3000)]
    addrs += [ipaddress.ip_address(rng.getrandbits(128)) for _ in range(3000)]
    addrs += [n.network_address + 1 for n in nets] + [n.broadcast_address for n in nets]
    hits = 0
    for addr in addrs:
        want = next((f"r{i}" for i, n in enumerate(nets) if addr.version == n.version and addr in n),
                    None)
        got = allow.entry(addr)
        assert (None if got is None else got.reason) == want, addr
        assert allow.entry(str(addr)) == got
        hits += want is not None
    assert 1000 < hits < len(addrs)


def test_internal_ranges() -> None:
    inside = ("10.1.2.3", "172.16.0.1", "192.168.9.9", "100.64.0.1", "127.0.0.1", "169.254.1.1",
              "0.1.2.3", "224.0.0.5", "::1", "fc00::1", "fe80::1", "ff02::1")
    outside = ("203.0.113.9", "8.8.8.8", "100.128.0.1", "172.32.0.1", "2001:db8::1", "::2")
    assert all(_is_internal(ipaddress.ip_address(a)) for a in inside)
    assert not any(_is_internal(ipaddress.ip_address(a)) for a in outside)
