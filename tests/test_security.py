"""Kafka and ClickHouse credentials come from config or the environment and are never
printed: TLS/SASL reach both aiokafka and Faust, secrets stay out of reprs."""

from __future__ import annotations

import ssl

import faust

from pathsentry.config import load_config
from pathsentry.report.commands import describe_url
from pathsentry.streams.kafka import client_kwargs, faust_credentials


def test_sasl_ssl_from_environment_reaches_both_clients() -> None:
    env = {
        "PATHSENTRY_KAFKA_URL": "kafka://b1:9093,b2:9093",
        "PATHSENTRY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "PATHSENTRY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "PATHSENTRY_KAFKA_SASL_USERNAME": "pathsentry",
        "PATHSENTRY_KAFKA_SASL_PASSWORD": "hunter2-not-logged",
    }
    cfg = load_config(text="", env=env)
    kw = client_kwargs(cfg)
    assert kw["security_protocol"] == "SASL_SSL"
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "pathsentry"
    assert isinstance(kw["ssl_context"], ssl.SSLContext)
    creds = faust_credentials(cfg)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.username == "pathsentry" and creds.ssl_context is not None
    assert "hunter2" not in repr(cfg) and "hunter2" not in repr(cfg.kafka)


def test_plaintext_and_tls_only() -> None:
    assert faust_credentials(load_config(text="", env={})) is None
    cfg = load_config(text='[kafka]\nsecurity_protocol = "SSL"\n', env={})
    assert isinstance(faust_credentials(cfg), faust.SSLCredentials)
    assert "sasl_mechanism" not in client_kwargs(cfg)


def test_clickhouse_password_is_not_shown() -> None:
    shown = describe_url("clickhouse://soc:s3cr3t@ch.internal:9440/pathsentry?secure=1")
    assert "s3cr3t" not in shown and "ch.internal:9440" in shown
