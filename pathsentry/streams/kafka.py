"""aiokafka connection settings from the configuration (TLS / SASL included), and the
metadata refresh every Kafka client of the worker uses."""

from __future__ import annotations

import ssl
from typing import Any

from pathsentry.config import Config
from pathsentry.infra.broker import resolve_kafka_url

__all__ = ["METADATA_MAX_AGE_MS", "bootstrap_servers", "client_kwargs", "faust_credentials"]

#: Topic metadata is refreshed at least this often, so topics that reappear (a broker
#: restarted with an empty log, topics recreated) are picked up within seconds.
METADATA_MAX_AGE_MS = 10_000


def bootstrap_servers(cfg: Config) -> str:
    """``host:port[,…]`` of the configured broker (``embedded`` resolved)."""
    url = resolve_kafka_url(cfg.kafka.url, cfg.data_dir)
    return url.split("://", 1)[-1]


def client_kwargs(cfg: Config) -> dict[str, Any]:
    """Security options for aiokafka clients; secrets come from config or env only."""
    k = cfg.kafka
    out: dict[str, Any] = {"security_protocol": k.security_protocol}
    if k.security_protocol in ("SSL", "SASL_SSL"):
        out["ssl_context"] = ssl.create_default_context(cafile=k.ssl_cafile)
    if k.security_protocol.startswith("SASL"):
        out["sasl_mechanism"] = k.sasl_mechanism or "PLAIN"
        out["sasl_plain_username"] = k.sasl_username
        out["sasl_plain_password"] = k.sasl_password
    return out


def faust_credentials(cfg: Config) -> Any:
    """The same TLS / SASL settings as Faust ``broker_credentials`` (None for PLAINTEXT)."""
    import faust

    k = cfg.kafka
    if k.security_protocol == "PLAINTEXT":
        return None
    ctx = ssl.create_default_context(cafile=k.ssl_cafile) if k.security_protocol.endswith("SSL") else None
    if k.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=k.sasl_username, password=k.sasl_password, ssl_context=ctx,
            mechanism=k.sasl_mechanism or "PLAIN",
        )
    return faust.SSLCredentials(ctx)
