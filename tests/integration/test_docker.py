"""The same end-to-end scenario on real Apache Kafka and clickhouse-server
(testcontainers). Skipped, with the reason, where no Docker engine runs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.containers import clickhouse_container, kafka_container, require_docker
from tests.integration.harness import run_scenario, running_worker

pytestmark = [pytest.mark.docker, pytest.mark.integration]


def test_native_clickhouse_dedup_and_ddl() -> None:
    require_docker()
    from pathsentry.infra.clickhouse import NativeClickHouse, connect, flag_row
    from pathsentry.schemas import FlaggedEvent

    with clickhouse_container() as url:
        ch = connect(url)
        assert isinstance(ch, NativeClickHouse)
        ch.apply_ddl(30)
        row = flag_row(FlaggedEvent(
            event_id="e1", ts=datetime(2026, 11, 22, tzinfo=UTC), kind="vpn_relay", src_ip="203.0.113.1",
            score=0.9, reasons=["x"], evidence={"gap_ms": 90.0}, detector="latency",
            account="x'); DROP TABLE pathsentry.alerts; --",
        ))
        cols = tuple(row)
        ch.insert("flagged_events", cols, [row], "tok-1")
        ch.insert("flagged_events", cols, [row], "tok-1")
        _, rows = ch.query("SELECT count(), any(account) FROM pathsentry.flagged_events")
        assert rows[0][0] == 1 and rows[0][1].startswith("x');")


def test_pipeline_on_kafka_and_clickhouse_server(tmp_path: Path) -> None:
    require_docker()
    with kafka_container() as kafka_url, clickhouse_container() as ch_url, \
            running_worker(tmp_path, kafka_url, ch_url) as worker:
        run_scenario(worker)


def test_analyst_sql_on_clickhouse_server_is_read_only(tmp_path: Path) -> None:
    """The same attack corpus as on chDB (``tests/test_query_policy.py``) against
    clickhouse-server: every statement refused, nothing changed, nothing written; and the
    analyst connection refuses writes and table functions on its own (``readonly=1``)."""
    require_docker()
    from pathsentry.infra.clickhouse import ALERT_COLUMNS, NativeClickHouse, connect
    from pathsentry.infra.querypolicy import QueryLimits
    from tests.test_query_policy import ROW, not_refused

    with clickhouse_container() as url:
        ch = connect(url, QueryLimits(max_execution_time_s=5, max_result_rows=1000))
        assert isinstance(ch, NativeClickHouse)
        ch.apply_ddl(30)
        ch.query(f"INSERT INTO pathsentry.alerts ({', '.join(ALERT_COLUMNS)}) VALUES {ROW}", read_only=False)

        def state() -> list[tuple[object, ...]]:
            sql = "SELECT alert_id, version, kind FROM pathsentry.alerts ORDER BY alert_id, version"
            return ch.query(sql, read_only=False)[1]

        before = state()
        assert not_refused(ch, tmp_path) == []
        assert state() == before == [("a-real", 3, "farm_group")]
        assert ch.query("SELECT alert_id FROM alerts")[1] == [("a-real",)]
        for sql in ["INSERT INTO pathsentry.alerts (alert_id, version) VALUES ('forged', 1)",
                    "SELECT count() FROM url('http://127.0.0.1:9/x', 'LineAsString')",
                    "DROP TABLE pathsentry.alerts"]:
            with pytest.raises(Exception, match=r"readonly|READONLY"):
                ch._analyst().execute(sql)
        assert state() == before
        ch.close()
