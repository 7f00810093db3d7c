"""A passive sensor: pcap / pcapng captures in, ``http_probe`` events out.

It reads several captures as one, in time order (:mod:`.reader`; pcapng by
:mod:`.pcapng`, frames decoded by :mod:`.decode`), reassembles TCP per direction
(:mod:`.stream`), frames HTTP/1.x (:mod:`.http`) and reports (:mod:`.flows`) each
plaintext HTTP or WebSocket exchange: what the client was answered (status, header
names, server header, body hash) and how (IP TTL of the SYN-ACK and of the answer,
handshake RTT vs time to first byte, retransmissions, sequence conflicts). TLS
connections are reported without content, as the control, on any port; other
connections only when they hold a sequence conflict.
"""

from pathsentry.sensor.decode import CaptureError, Segment
from pathsentry.sensor.flows import FlowTable, SensorSettings, capture_events
from pathsentry.sensor.reader import iter_segments, merged_segments
from pathsentry.sensor.stream import Stream

__all__ = [
    "CaptureError",
    "FlowTable",
    "Segment",
    "SensorSettings",
    "Stream",
    "capture_events",
    "iter_segments",
    "merged_segments",
]
