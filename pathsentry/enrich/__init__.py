"""Enrichment of events: geo/ASN, prefixes, server registry, allow-list."""

from pathsentry.enrich.enricher import Enricher
from pathsentry.enrich.geo import GeoInfo, GeoResolver, build_resolver, prefix_of

__all__ = ["Enricher", "GeoInfo", "GeoResolver", "build_resolver", "prefix_of"]
