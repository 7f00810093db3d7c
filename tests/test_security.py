"""Kafka and ClickHouse credentials come from config or the environment and are never
printed: TLS/SASL reach both aiokafka and Faust, secrets stay out of reprs."""

from __future__ import annotations

import logging
import os
import ssl
import subprocess
import sys
from pathlib import Path

import faust
import pytest
import yaml  # type: ignore[import-untyped]

from pathsentry.config import load_config
from pathsentry.infra.broker import EmbeddedBroker
from pathsentry.infra.clickhouse import connect
from pathsentry.infra.redact import redact_text
from pathsentry.report.commands import describe_url
from pathsentry.streams.kafka import client_kwargs, faust_credentials

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.integration
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_compose_worker_sasl_settings_reach_kafka_and_stay_out_of_the_log(
        tmp_path: Path, embedded_broker: EmbeddedBroker, mechanism: str) -> None:
    """The worker's environment from docker-compose.yml (its password variable filled in)
    makes the worker authenticate: the embedded broker, which takes no SASL, refuses the
    handshake and the worker stops with an error, its debug log full of Kafka client
    detail, and the password is nowhere in what it printed."""
    secret = "k-sasl-pw-91d2-never-logged"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = {k: str(v) for k, v in compose["services"]["worker"]["environment"].items()
           if k.startswith("PATHSENTRY_KAFKA_")}
    assert env["PATHSENTRY_KAFKA_SASL_PASSWORD"] == "${KAFKA_WORKER_PASSWORD}"
    env.update(PATHSENTRY_KAFKA_SASL_PASSWORD=secret, PATHSENTRY_KAFKA_URL=embedded_broker.url,
               PATHSENTRY_KAFKA_SASL_MECHANISM=mechanism)
    cfg = load_config(text="", env=env)
    kw = client_kwargs(cfg)
    assert (kw["security_protocol"], kw["sasl_mechanism"], kw["sasl_plain_username"],
            kw["sasl_plain_password"]) == ("SASL_PLAINTEXT", mechanism, "pathsentry", secret)
    creds = faust_credentials(cfg)
    assert isinstance(creds, faust.SASLCredentials) and creds.password == secret
    r = subprocess.run([sys.executable, "-m", "pathsentry", "worker", "--loglevel", "debug"],
                       env={**os.environ, **env, "PATHSENTRY_DATA_DIR": str(tmp_path)},
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "Sasl" in out, out[-2000:]
    assert secret not in out
