"""Enrichment of events: geo/ASN, prefixes, server registry, allow-list.

The :class:`~pathsentry.enrich.enricher.Enricher` lives in its own module
(it builds :class:`pathsentry.detectors.Enriched` records).
"""

from pathsentry.enrich.geo import GeoInfo, GeoResolver, build_resolver, prefix_of

__all__ = ["GeoInfo", "GeoResolver", "build_resolver", "prefix_of"]
