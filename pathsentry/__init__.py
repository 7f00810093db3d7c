"""pathsentry: streaming detection of relayed connections, gold-farm groups and
on-path injection from game login and network telemetry."""

__version__ = "0.1.0"
