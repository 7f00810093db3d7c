"""Streaming layer: the Faust app, its topics and agents, sinks and the producer.

No detection logic lives here: agents decode, route and persist; the
:class:`pathsentry.engine.Engine` decides.
"""
