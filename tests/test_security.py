"""Kafka and ClickHouse credentials come from config or the environment and are never
printed: TLS/SASL reach both aiokafka and Faust, secrets stay out of reprs."""

from __future__ import annotations

import logging
import ssl

import faust
import pytest

from pathsentry.config import load_config
from pathsentry.infra.clickhouse import connect
from pathsentry.infra.redact import redact_text
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


def test_no_password_in_messages_or_reprs(caplog: pytest.LogCaptureFixture) -> None:
    secret = "pw-7f3a-not-logged"
    cfg = load_config(text="", env={"PATHSENTRY_CLICKHOUSE_URL": f"clickhouse://soc:{secret}@ch:9000/db",
                                    "PATHSENTRY_KAFKA_URL": f"kafka://svc:{secret}@b1:9093"})
    assert cfg.clickhouse.url.endswith("@ch:9000/db")  # the value itself is intact
    assert secret not in repr(cfg) and secret not in str(cfg)
    with pytest.raises(ValueError) as err:
        connect(f"http://soc:{secret}@ch:8123/db")
    assert secret not in str(err.value) and "soc:***@ch:8123" in str(err.value)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("pathsentry.test").warning("clickhouse: %s", redact_text(
            f"Code: 210. connect to clickhouse://soc:{secret}@ch:9000/db?password={secret} failed"))
    assert secret not in caplog.text and "clickhouse://soc:***@ch:9000" in caplog.text
