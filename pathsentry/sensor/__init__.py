"""A passive sensor: pcap / pcapng captures in, ``http_probe`` events out.

It reassembles TCP per flow and reports, for each plaintext HTTP or WebSocket
exchange, what the client was answered (status, header names, server header,
body hash) and how (IP TTL of the SYN-ACK and of the answer, handshake RTT vs time
to first byte, retransmissions, sequence conflicts). TLS flows are reported
without content, as the control.
"""

from pathsentry.sensor.flows import FlowTable, SensorSettings, Stream, capture_events
from pathsentry.sensor.reader import Segment, iter_segments

__all__ = [
    "FlowTable",
    "Segment",
    "SensorSettings",
    "Stream",
    "capture_events",
    "iter_segments",
]
