"""testcontainers helpers, kept in one place: real Apache Kafka (KRaft) and
clickhouse-server where a Docker engine runs; a clear skip reason elsewhere."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
CLICKHOUSE_IMAGE = "clickhouse/clickhouse-server:25.8"


def docker_unavailable_reason() -> str | None:
    """None when a Docker engine answers, else why these tests cannot run here."""
    try:
        import docker

        docker.from_env().ping()
    except Exception as e:
        return f"no Docker engine reachable ({type(e).__name__}); testcontainers tests need one"
    return None


def require_docker() -> None:
    reason = docker_unavailable_reason()
    if reason:
        pytest.skip(reason)


@contextmanager
def kafka_container() -> Iterator[str]:
    """Yield a ``kafka://host:port`` URL of a KRaft-mode Kafka container."""
    from testcontainers.community.kafka import KafkaContainer

    with KafkaContainer(KAFKA_IMAGE).with_kraft() as kafka:
        yield "kafka://" + kafka.get_bootstrap_server()


@contextmanager
def clickhouse_container() -> Iterator[str]:
    """Yield a ``clickhouse://user:pass@host:port/pathsentry`` URL of a server container."""
    from testcontainers.community.clickhouse import ClickHouseContainer

    with ClickHouseContainer(CLICKHOUSE_IMAGE, username="pathsentry", password="s3cret-test") as ch:
        host = ch.get_container_host_ip()
        port = ch.get_exposed_port(9000)
        yield f"clickhouse://pathsentry:s3cret-test@{host}:{port}/pathsentry"
