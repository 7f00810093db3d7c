"""One RIPE Atlas traceroute result to one contract-v1 ``traceroute`` event.

A probe's traceroute towards a target is a client-run traceroute: ``direction`` is
``client_to_server``, ``vantage_id`` is ``client`` and ``src_ip`` is the probe's
public address (the result's ``from``; its ``src_addr`` is often a private address
behind the probe's NAT, used only when it is public). Each hop keeps its TTL, the
address that answered most of its packets and that address's RTT samples; a hop
where nothing answered (``{"x": "*"}`` only) is a hop with no address and no
samples, as the contract writes a ``*``. Packets that arrived late (``late``) carry
no RTT and are left out; an ICMP error (``err``: unreachable, prohibited) still
measured the router and is kept. Other addresses that answered the same TTL (load
balancing) are listed in the hop's ``other_ips``. The event's ``dst_addr`` and
``probe_id`` extra fields name the target and the probe; ``server_id`` is added
when the caller names the server the target is.

>>> ev = atlas_event({"type": "traceroute", "af": 4, "prb_id": 7, "msm_id": 9,
...     "timestamp": 1450178299, "from": "212.66.97.165", "src_addr": "192.168.1.2",
...     "dst_addr": "66.220.156.68", "result": [
...         {"hop": 1, "result": [{"from": "192.168.1.1", "rtt": 1.6},
...                               {"from": "192.168.1.1", "rtt": 1.7}, {"x": "*"}]},
...         {"hop": 2, "result": [{"x": "*"}, {"x": "*"}, {"x": "*"}]},
...         {"hop": 3, "result": [{"from": "151.6.84.152", "rtt": 4.2, "err": "N"}]}]})
>>> ev["src_ip"], ev["direction"], ev["ts"]
('212.66.97.165', 'client_to_server', '2015-12-15T11:18:19Z')
>>> [(h["ttl"], h["ip"], h["rtt_ms"]) for h in ev["hops"]]
[(1, '192.168.1.1', [1.6, 1.7]), (2, None, []), (3, '151.6.84.152', [4.2])]
>>> atlas_event({"type": "traceroute", "prb_id": 7, "msm_id": 9, "timestamp": 1,
...     "from": "212.66.97.165", "result": [{"error": "name resolution failed"}]})
Traceback (most recent call last):
    ...
pathsentry.traceroutes.records.RecordError: no hops: name resolution failed
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from pathsentry.schemas.events import MAX_HOPS, MAX_RTT_SAMPLES
from pathsentry.traceroutes.records import RecordError

__all__ = ["atlas_event"]

#: the longest RTT the contract carries (ms)
_MAX_RTT_MS = 60_000.0


def _public(text: Any) -> str | None:
    """``text`` as a normalised address if it is a public (globally routed) one."""
    if not isinstance(text, str):
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    return str(addr) if addr.is_global else None


def _address(text: Any) -> str | None:
    """``text`` as a normalised address, or ``None`` if it is not one."""
    if not isinstance(text, str):
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _rtt(packet: dict[str, Any]) -> float | None:
    rtt = packet.get("rtt")
    if isinstance(rtt, bool) or not isinstance(rtt, (int, float)):
        return None
    rtt = float(rtt)
    if not math.isfinite(rtt) or rtt < 0.0 or rtt > _MAX_RTT_MS:
        return None
    return round(rtt, 3)


def _hop(raw: Any) -> dict[str, Any] | None:
    """One hop of the contract from one Atlas hop (``None``: not a hop, e.g. an error)."""
    if not isinstance(raw, dict):
        return None
    ttl = raw.get("hop")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= 255:
        return None
    packets = raw.get("result")
    if not isinstance(packets, list):
        return None
    samples: dict[str, list[float]] = {}
    answers: Counter[str] = Counter()
    for packet in packets:
        if not isinstance(packet, dict) or "late" in packet:
            continue
        ip = _address(packet.get("from"))
        if ip is None:
            continue  # ``{"x": "*"}``: no answer
        answers[ip] += 1
        rtt = _rtt(packet)
        if rtt is not None:
            samples.setdefault(ip, []).append(rtt)
    hop: dict[str, Any] = {"ttl": ttl, "ip": None, "rtt_ms": []}
    if answers:
        ip = answers.most_common(1)[0][0]
        hop["ip"] = ip
        hop["rtt_ms"] = samples.get(ip, [])[:MAX_RTT_SAMPLES]
        others = sorted(a for a in answers if a != ip)
        if others:
            hop["other_ips"] = others
    return hop


def atlas_event(record: Any, server_id: str | None = None) -> dict[str, Any]:
    """The ``traceroute`` event of one Atlas traceroute result (:class:`RecordError`
    with the reason if it cannot be one)."""
    if not isinstance(record, dict):
        raise RecordError(f"not a JSON object but {type(record).__name__}")
    kind = record.get("type")
    if kind is not None and kind != "traceroute":
        raise RecordError(f"a {kind!r} result, not a traceroute")
    src = _public(record.get("from")) or _public(record.get("src_addr"))
    if src is None:
        raise RecordError(
            f"no public source address (from={record.get('from')!r}, "
            f"src_addr={record.get('src_addr')!r})")
    ts = record.get("timestamp", record.get("endtime"))
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not 0 < ts < 1e11:
        raise RecordError(f"no timestamp ({ts!r})")
    raw_hops = record.get("result")
    if not isinstance(raw_hops, list):
        raise RecordError("no result array")
    hops = [h for h in map(_hop, raw_hops) if h is not None]
    if not hops:
        errors = [str(h["error"]) for h in raw_hops if isinstance(h, dict) and "error" in h]
        raise RecordError("no hops" + (f": {errors[0][:120]}" if errors else ""))
    if len(hops) > MAX_HOPS:
        raise RecordError(f"{len(hops)} hops, more than the contract's {MAX_HOPS}")
    prb, msm = record.get("prb_id"), record.get("msm_id")
    when = datetime.fromtimestamp(ts, UTC)
    event_id = f"atlas-{msm}-{prb}-{int(ts)}"
    event: dict[str, Any] = {
        "kind": "traceroute",
        "event_id": event_id,
        "ts": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "src_ip": src,
        "session_id": event_id,
        "vantage_id": "client",
        "direction": "client_to_server",
        "hops": hops,
        "probe_id": prb,
        "dst_addr": _address(record.get("dst_addr")),
    }
    if server_id:
        event["server_id"] = server_id
    return event
