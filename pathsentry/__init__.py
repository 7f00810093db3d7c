"""pathsentry: streaming detection of relayed connections, gold-farm groups and
on-path injection from game login and network telemetry."""

__version__ = "0.1.0"

# before any engine module loads: PATHSENTRY_PURE=1 loads the sources of a compiled
# install; otherwise a compiled module that no longer matches its source stops the import
from pathsentry import native as _native

_native.install()
