"""Analyst SQL against the real engine (chDB): every known way to write, read files, reach
the network or a process, change settings or exhaust the worker is refused, changes
nothing, and what is allowed runs read-only under the engine's limits on a session of its
own, beside the writer's inserts."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pathsentry.config import load_config
from pathsentry.infra.clickhouse import ALERT_COLUMNS, ChdbClickHouse, ChdbReader, ClickHouse, connect
from pathsentry.infra.querypolicy import (
    QueryLimits,
    QueryRefused,
    check_canonical_text,
    parse_explain,
)
from pathsentry.queries import QUERIES, render

pytestmark = pytest.mark.integration

COLS = ", ".join(ALERT_COLUMNS)
ROW = ("('a-real', now64(3), 'farm_group', 'high', 0.5, '{}', ['x'], [], '{}', 'real', 'farm', "
       "now64(3), now64(3), 3)")


def attacks(tmp: Path) -> list[str]:
    """Every bypass reported against the old text filter, and more."""
    out1, out2, out3 = tmp / "out1.txt", tmp / "out2.txt", tmp / "out3.txt"
    return [
        # writes, also behind WITH
        "WITH 1 AS x INSERT INTO pathsentry.alerts (alert_id, kind, version, first_seen, last_seen) "
        "SELECT 'a-real', 'farm_group', 999, now64(3), now64(3)",
        "INSERT INTO pathsentry.alerts (alert_id, version, last_seen) VALUES ('forged', 1, now64(3))",
        "SELECT 1; INSERT INTO pathsentry.alerts (alert_id, version) VALUES ('forged', 1)",
        "SELECT 1;\nDROP TABLE pathsentry.alerts",
        "ALTER TABLE pathsentry.alerts DELETE WHERE 1",
        "OPTIMIZE TABLE pathsentry.alerts FINAL",
        "TRUNCATE TABLE pathsentry.alerts",
        "SYSTEM STOP MERGES",
        "CREATE TABLE pathsentry.x (a Int8) ENGINE = Memory",
        # file writes
        f"SELECT 1 INTO/**/OUTFILE '{out1}'",
        f"SELECT 1 INTO --\nOUTFILE '{out2}'",
        f"SELECT * FROM pathsentry.alerts INTO OUTFILE '{out3}' FORMAT CSV",
        # file reads: table functions however spelled, scalar file(), DESCRIBE
        "SELECT * FROM file/**/('/etc/passwd', 'LineAsString')",
        "SELECT * FROM `file`('/etc/passwd', 'LineAsString')",
        "SELECT * FROM file --x\n('/etc/passwd', 'LineAsString')",
        "DESCRIBE TABLE file/**/('/etc/passwd', 'LineAsString')",
        "SELECT file('/etc/passwd')",
        "WITH file('/etc/passwd') AS f SELECT f",
        "SELECT 1 UNION ALL SELECT count() FROM file('/etc/passwd', 'LineAsString')",
        "SELECT * FROM (SELECT * FROM file('/etc/passwd', 'LineAsString'))",
        "SELECT * FROM pathsentry.alerts WHERE alert_id IN "
        "(SELECT line FROM file('/etc/passwd', 'LineAsString'))",
        "SELECT (SELECT any(line) FROM file('/etc/passwd', 'LineAsString')) AS x",
        # network and processes
        "SELECT * FROM url/**/('http://127.0.0.1:9/x', 'LineAsString')",
        "SELECT * FROM s3/**/('http://127.0.0.1:9/b/x', 'LineAsString')",
        "SELECT * FROM executable/**/('id', 'TSV', 'x String')",
        "SELECT * FROM pathsentry.alerts AS a JOIN url('http://127.0.0.1:9/x', 'CSV', 'alert_id String') "
        "AS b USING alert_id",
        "SELECT * FROM remote('127.0.0.1', system.one)",
        "SELECT hasColumnInTable('127.0.0.1', 'system', 'users', 'name')",
        # settings
        "SELECT 1 SETTINGS readonly=0",
        "SELECT * FROM pathsentry.alerts SETTINGS max_execution_time=0",
        "SELECT * FROM (SELECT 1 SETTINGS readonly = 0)",
        "SET readonly = 0",
        # denial of service
        "SELECT count() FROM numbers(1e12)",
        "SELECT count() FROM system.numbers",
        "SELECT sleepEachRow(3) FROM pathsentry.alerts",
        "SELECT * FROM generateRandom('a String') LIMIT 10",
        # other databases and the server's configuration
        "SELECT name FROM system.users",
        "SELECT 1 IN system.users",
        "SELECT count() FROM pathsentry.alerts AS a, system.one",
        "SELECT * FROM INFORMATION_SCHEMA.tables",
        "SELECT * FROM merge('system', '.*')",
        "SELECT * FROM view(SELECT * FROM system.users)",
        "SELECT getServerSetting('path')",
        "SELECT dictGet('x', 'y', 1)",
        "SELECT joinGet('pathsentry.alerts', 'x', 1)",
        "SHOW DATABASES",
        "SHOW TABLES FROM system",
        "SHOW CREATE TABLE pathsentry.alerts",
        "EXPLAIN SELECT 1",
        # spelling tricks
        "SELECT ＦＩＬＥ('/etc/passwd')",
        "SELECT * FROM `system.users`",
        "SELECT 1 AS `x\n Function file (children 1)`",
        "SELECT 1 FORMAT CSV",
        "sElEcT * FrOm FiLe('/etc/passwd', 'LineAsString')",
        "SELECT 1 \x00",
        "",
    ]


@pytest.fixture
def ch(chdb_dir: Path) -> Iterator[ChdbClickHouse]:
    c = connect(f"chdb://{chdb_dir}", QueryLimits(max_execution_time_s=5, max_result_rows=1000,
                                                  max_memory_bytes=256 << 20))
    assert isinstance(c, ChdbClickHouse)
    c.apply_ddl(30)
    c.query(f"INSERT INTO pathsentry.alerts ({COLS}) VALUES {ROW}", read_only=False)
    yield c
    c.close()


def _state(ch: ChdbClickHouse) -> list[tuple[object, ...]]:
    return ch.query("SELECT alert_id, version, kind FROM pathsentry.alerts ORDER BY alert_id, version",
                    read_only=False)[1]


def not_refused(ch: ClickHouse, tmp: Path) -> list[str]:
    """The attacks (:func:`attacks`) that ``ch`` ran as analyst SQL instead of refusing."""
    passed = []
    for sql in attacks(tmp):
        try:
            ch.query(sql)
        except QueryRefused:
            continue
        passed.append(sql)
    return passed


def test_every_attack_is_refused_and_changes_nothing(ch: ChdbClickHouse, tmp_path: Path) -> None:
    before = _state(ch)
    tables = ch.query("SHOW TABLES FROM pathsentry", read_only=False)[1]
    assert not_refused(ch, tmp_path) == []
    assert _state(ch) == before == [("a-real", 3, "farm_group")]
    assert ch.query("SHOW TABLES FROM pathsentry", read_only=False)[1] == tables
    assert not any(tmp_path.glob("out*.txt"))


def test_the_attacks_are_real(ch: ChdbClickHouse, tmp_path: Path) -> None:
    """Without the policy (the program's own, trusted path) the same text does harm: the
    corpus tests something."""
    attack = attacks(tmp_path)
    ch.query(attack[0], read_only=False)
    assert ("a-real", 999, "farm_group") in _state(ch)
    ch.query(attack[9], read_only=False)
    assert (tmp_path / "out1.txt").exists()
    _, rows = ch.query(attack[12], read_only=False)
    assert any("root" in r[0] for r in rows)


def test_analyst_reads_run(ch: ChdbClickHouse) -> None:
    for sql, want in [
        ("SELECT alert_id, version FROM pathsentry.alerts FINAL", [("a-real", 3)]),
        ("SELECT alert_id FROM alerts", [("a-real",)]),  # the session's database is the worker's
        ("WITH t AS (SELECT 1 AS a) SELECT a FROM t", [(1,)]),
        ("(SELECT count() FROM pathsentry.alerts)", [(1,)]),
        ("SELECT 'a;b -- c /* d */' AS s", [("a;b -- c /* d */",)]),
        ("SELECT count() FROM pathsentry.alerts WHERE alert_id IN (SELECT alert_id FROM alerts)", [(1,)]),
    ]:
        assert ch.query(sql)[1] == want, sql
    assert ("alerts",) in ch.query("SHOW TABLES")[1]
    assert ("alerts",) in ch.query("SHOW TABLES FROM pathsentry")[1]
    assert ch.query("DESCRIBE TABLE pathsentry.alerts")[1][0][:2] == ("alert_id", "String")
    assert ch.query("DESC alerts")[1][0][0] == "alert_id"


def test_named_queries_pass_the_policy(ch: ChdbClickHouse) -> None:
    for name in QUERIES:
        ch.query(render(name, "pathsentry"))


def test_the_engine_is_read_only_on_its_own(ch: ChdbClickHouse, chdb_dir: Path) -> None:
    """The analyst session refuses writes, table functions and setting changes even when the
    statement check is not asked (defence in depth)."""
    reader = ChdbReader(str(chdb_dir), "pathsentry", QueryLimits())
    try:
        for sql in [
            "INSERT INTO pathsentry.alerts (alert_id, version) VALUES ('forged', 1)",
            "SELECT count() FROM file('/etc/passwd', 'LineAsString')",
            "SELECT count() FROM url('http://127.0.0.1:9/x', 'LineAsString')",
            "SET readonly = 0",
            "SET max_execution_time = 0",
            "DROP TABLE pathsentry.alerts",
        ]:
            with pytest.raises(Exception, match=r"readonly|READONLY"):
                reader.run(sql, None)
    finally:
        reader.close()
    assert _state(ch) == [("a-real", 3, "farm_group")]


HEAVY = ("SELECT count() FROM (SELECT arrayJoin(range(100000)) AS a) AS l "
         "CROSS JOIN (SELECT arrayJoin(range(100000)) AS b) AS r WHERE cityHash64(a, b) = 1")


def test_engine_limits(chdb_dir: Path) -> None:
    c = ChdbClickHouse(str(chdb_dir), limits=QueryLimits(max_execution_time_s=0.5, max_result_rows=100,
                                                        max_memory_bytes=64 << 20))
    try:
        c.apply_ddl(30)
        with pytest.raises(Exception, match="Timeout exceeded"):
            c.query(HEAVY)
        with pytest.raises(Exception, match="Limit for result exceeded"):
            c.query("SELECT arrayJoin(range(1000)) AS x")
        with pytest.raises(Exception, match="memory limit exceeded"):
            c.query("SELECT length(groupArray(x)) FROM (SELECT arrayJoin(range(50000000)) AS x)")
        assert c.query("SELECT arrayJoin(range(100)) AS x")[1][-1] == (99,)
    finally:
        c.close()


def test_limits_come_from_config() -> None:
    cfg = load_config(text="[clickhouse]\nquery_max_execution_time_s = 3\nquery_max_result_rows = 50\n"
                           "query_max_memory_mib = 64\n", env={})
    assert QueryLimits.from_config(cfg.clickhouse) == QueryLimits(3.0, 50, 64 << 20)


def test_inserts_proceed_while_an_analyst_query_runs(ch: ChdbClickHouse) -> None:
    """The analyst session answers on its own: an insert through the writer completes while a
    heavy analyst query is still running (it ends only at its 5 s limit)."""
    outcome: list[str] = []

    def analyst() -> None:
        try:
            ch.query(HEAVY)
            outcome.append("finished")
        except Exception as e:
            outcome.append(type(e).__name__ + str(e)[:80])

    t = threading.Thread(target=analyst)
    t.start()
    try:
        for i in range(5):
            ch.query(f"INSERT INTO pathsentry.alerts ({COLS}) VALUES {ROW.replace('a-real', f'a-{i}')}",
                     read_only=False)
        assert t.is_alive(), outcome  # every insert done, the analyst query not yet
        assert ch.query("SELECT count() FROM pathsentry.alerts", read_only=False)[1] == [(6,)]
    finally:
        t.join()
    assert "Timeout exceeded" in outcome[0]


def test_parse_tree_is_strict() -> None:
    ok = parse_explain(["SelectWithUnionQuery (children 1)", " ExpressionList (children 1)",
                        "  SelectQuery (children 1)", "   ExpressionList (children 1)", "    Literal 'a'"])
    assert [n.kind for n in ok.walk()][-1] == "Literal"
    for lines in (
        ["A (children 1)", " B", "C"],  # two roots
        ["A (children 1)", "   B"],  # skipped a level
        ["A (children 1)", " B", " C"],  # more children than declared
        ["A (children 1)", " B (alias x", "y)"],  # a name broke the line
        ["A", "\tB"],
        [],
    ):
        with pytest.raises(QueryRefused):
            parse_explain(lines)


def test_quoted_names_cannot_forge_structure() -> None:
    check_canonical_text("SELECT 'it\\'s `x.y`' AS `p50 ms` FROM t")
    for text in ("SELECT 1 AS `a\\nb`", "SELECT * FROM `system.users`", "SELECT 1 AS \"a.b\"",
                 "SELECT 1 AS `a\x01`"):
        with pytest.raises(QueryRefused):
            check_canonical_text(text)
