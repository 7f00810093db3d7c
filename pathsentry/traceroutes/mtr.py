"""One ``mtr --json`` report to one contract-v1 ``traceroute`` event.

mtr reports per hop (``hubs``) the packets sent (``Snt``), the loss and four RTT
figures, three of which are single packets: ``Best``, ``Last`` and ``Wrst``. They
are the hop's samples: all three when at least three packets came back (their
median is ``Last``, a real packet, between the extremes), ``Best`` and ``Wrst``
when two did, ``Last`` when one did; ``Avg`` and ``StDev`` are not samples and
are left out. A hop with ``???`` (no answer) is a hop without address. The report
names neither the source's public address nor the time: the caller gives both
(``src_ip``, ``ts``). Host names instead of addresses (mtr run without ``-n``) make
the record an error: the hops could not be geolocated.

>>> ev = mtr_event({"report": {"mtr": {"src": "pc", "dst": "8.8.8.8"}, "hubs": [
...     {"count": 1, "host": "192.168.1.1", "Loss%": 0.0, "Snt": 10,
...      "Last": 1.3, "Avg": 1.4, "Best": 1.2, "Wrst": 3.2},
...     {"count": 2, "host": "???", "Loss%": 100.0, "Snt": 10,
...      "Last": 0.0, "Avg": 0.0, "Best": 0.0, "Wrst": 0.0}]}},
...     src_ip="203.0.113.7", ts="2026-01-01T00:00:00Z")
>>> [(h["ttl"], h["ip"], h["rtt_ms"]) for h in ev["hops"]]
[(1, '192.168.1.1', [1.2, 1.3, 3.2]), (2, None, [])]
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

from pathsentry.schemas.events import MAX_HOPS
from pathsentry.traceroutes.records import RecordError

__all__ = ["mtr_event"]


def _num(hub: dict[str, Any], key: str) -> float:
    value = hub.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise RecordError(f"hop {hub.get('count')}: {key} is {value!r}, not a number")
    return float(value)


def _hop(hub: Any) -> dict[str, Any]:
    if not isinstance(hub, dict):
        raise RecordError(f"a hop that is not an object: {hub!r}"[:120])
    ttl = hub.get("count")
    if isinstance(ttl, str) and ttl.isdigit():
        ttl = int(ttl)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= 255:
        raise RecordError(f"a hop without a TTL (count={ttl!r})")
    host = hub.get("host")
    if host in (None, "???"):
        return {"ttl": ttl, "ip": None, "rtt_ms": []}
    try:
        ip = str(ipaddress.ip_address(str(host)))
    except ValueError:
        raise RecordError(f"hop {ttl}: {host!r} is a name, not an address "
                          "(run mtr with -n)") from None
    sent, loss = _num(hub, "Snt"), _num(hub, "Loss%")
    received = round(sent * (1.0 - min(loss, 100.0) / 100.0))
    if received >= 3:
        rtts = [_num(hub, "Best"), _num(hub, "Last"), _num(hub, "Wrst")]
    elif received == 2:
        rtts = [_num(hub, "Best"), _num(hub, "Wrst")]
    elif received == 1:
        rtts = [_num(hub, "Last")]
    else:
        rtts = []
    return {"ttl": ttl, "ip": ip, "rtt_ms": rtts}


def mtr_event(record: Any, src_ip: str, ts: str, server_id: str | None = None) -> dict[str, Any]:
    """The ``traceroute`` event of one mtr JSON report (:class:`RecordError` with the
    reason if it cannot be one)."""
    report = record.get("report") if isinstance(record, dict) else None
    if not isinstance(report, dict) or not isinstance(report.get("hubs"), list):
        raise RecordError("not an mtr --json report (no report.hubs)")
    hubs = report["hubs"]
    if not hubs:
        raise RecordError("no hops")
    if len(hubs) > MAX_HOPS:
        raise RecordError(f"{len(hubs)} hops, more than the contract's {MAX_HOPS}")
    hops = [_hop(h) for h in hubs]
    meta: dict[str, Any] = report["mtr"] if isinstance(report.get("mtr"), dict) else {}
    digest = hashlib.blake2b(repr((src_ip, ts, meta.get("dst"), hops)).encode(),
                             digest_size=6).hexdigest()
    event: dict[str, Any] = {
        "kind": "traceroute", "event_id": f"mtr-{digest}", "ts": ts, "src_ip": src_ip,
        "session_id": f"mtr-{digest}", "vantage_id": "client",
        "direction": "client_to_server", "hops": hops, "dst_addr": meta.get("dst"),
    }
    if server_id:
        event["server_id"] = server_id
    return event
