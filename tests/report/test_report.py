"""SOC views, named queries and the HTML report on chDB (the real engine), and the
report rendered by headless Chromium."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import shutil
import struct
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from pathsentry.commands.access import run_query
from pathsentry.config import Config, load_config
from pathsentry.infra.clickhouse import ChdbClickHouse, connect, is_read_only
from pathsentry.queries import QUERIES, render
from pathsentry.report import SECTIONS, Source, build_report
from pathsentry.streams.sinks import ClickHouseSink
from tests.prometheus import PROMETHEUS_UID
from tests.report.samples import EXCESS_MS, relay_flag, sample_alerts, sample_flags, sample_labels

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "infra" / "grafana" / "dashboards" / "pathsentry.json"


def _config(chdb_dir: Path) -> Config:
    return load_config(text="", env={"PATHSENTRY_CLICKHOUSE_URL": f"chdb://{chdb_dir}"})


def _fill(chdb_dir: Path) -> None:
    """Samples written twice (a retried batch) plus a grown farm group (version 2)."""
    ch = connect(f"chdb://{chdb_dir}")
    try:
        ch.apply_ddl(30)
        ch.apply_ddl(30)  # the views are replaced in place
        sink = ClickHouseSink(ch)
        alerts = sample_alerts()
        grown = alerts[0].model_copy(update={
            "version": 2, "accounts": [*alerts[0].accounts, "xiaopai021"],
            "last_seen": alerts[0].last_seen + timedelta(minutes=3),
        })

        async def write() -> None:
            await sink.write(sample_flags(), alerts)
            await sink.write(sample_flags(), alerts)
            await sink.write([], [grown])
            await sink.write_labels(sample_labels())

        asyncio.run(write())
        sink.close()
    finally:
        ch.close()


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("report") / "chdb"
    _fill(d)
    return d


@pytest.fixture(scope="module")
def html(filled: Path) -> str:
    report = build_report(Source(functools.partial(_direct, _config(filled)), "pathsentry"), origin="test")
    assert report.filled == report.sections == len(SECTIONS)
    return report.html


def _direct(cfg: Config, sql: str) -> tuple[list[str], list[Any]]:
    return run_query(cfg, sql, None)


def _query(chdb_dir: Path, sql: str) -> list[dict[str, Any]]:
    cols, rows = run_query(_config(chdb_dir), sql, None)
    return [dict(zip(cols, r, strict=True)) for r in rows]


def _element(page: str, element_id: str) -> str:
    """The markup of the element with ``element_id`` (an svg or a table)."""
    m = re.search(rf'<(svg|table|div)[^>]*\bid="{re.escape(element_id)}"', page)
    assert m, f"no element {element_id}"
    end = page.index(f"</{m.group(1)}>", m.start())
    return page[m.start():end]


# -- views and named queries ------------------------------------------------------------


def test_relay_views_count_each_flag_once(filled: Path) -> None:
    flags = sample_flags()
    exits = {r["prefix"]: r for r in _query(filled, "SELECT * FROM pathsentry.relay_exit_prefixes")}
    expected = Counter(
        f.evidence.get("exit_prefix") or (
            f.src_ip.rsplit(".", 1)[0] + ".0/24" if "." in f.src_ip else "2001:db8:1::/48")
        for f in flags
    )
    assert {p: int(r["flagged"]) for p, r in exits.items()} == dict(expected)
    assert exits["192.0.2.0/24"]["route_anomaly"] == 2
    repeat = {r["account"]: r for r in _query(filled, "SELECT * FROM pathsentry.relay_repeat_accounts")}
    per_account = Counter(f.account for f in flags)
    assert set(repeat) == {a for a, n in per_account.items() if n >= 2}
    assert int(repeat["acct0"]["sessions"]) == per_account["acct0"]
    excess = _query(filled, "SELECT excess_ms FROM pathsentry.relay_flags WHERE kind = 'vpn_relay' "
                            "ORDER BY excess_ms")
    assert [r["excess_ms"] for r in excess] == [*EXCESS_MS, None]


def test_farm_and_injection_views(filled: Path) -> None:
    groups = {r["template"]: r for r in _query(filled, "SELECT * FROM pathsentry.farm_groups")}
    assert {t: int(r["members"]) for t, r in groups.items()} == {"xiaopai{3}": 21, "goldbot{3}": 6}
    assert groups["xiaopai{3}"]["accounts"][-1] == "xiaopai021"  # the latest version only
    hourly = _query(filled, "SELECT asn, hour, suspect, probes, cells, rate_lower, prefixes "
                            "FROM pathsentry.injection_cells_hourly")
    by_asn: dict[int, dict[int, dict[str, Any]]] = {}
    for r in hourly:
        by_asn.setdefault(int(r["asn"]), {})[int(r["hour"])] = r
    assert sorted(by_asn[4766]) == list(range(9, 18))  # hourly cells only, not the all-day one
    ten = by_asn[4766][10]  # a prefix cell and the pooled '*' cell overlap: the largest, not a sum
    assert (int(ten["cells"]), int(ten["suspect"]), int(ten["probes"])) == (2, 9, 30)
    assert ten["rate_lower"] == pytest.approx(0.15) and ten["prefixes"] == ["211.234.10.0/24"]
    assert sorted(by_asn[9318]) == [0, 1, 22, 23]  # from the subject's "22–02", wrapping
    assert all(r["rate_lower"] is None for r in by_asn[9318].values())
    per_hour = _query(filled, "SELECT kind, sum(alerts) AS n FROM pathsentry.alerts_per_hour GROUP BY kind")
    assert {r["kind"]: int(r["n"]) for r in per_hour} == dict(Counter(a.kind for a in sample_alerts()))


def test_named_queries_run_on_chdb(filled: Path) -> None:
    empty = []
    for name in QUERIES:
        sql = render(name, "pathsentry")
        assert is_read_only(sql), name
        if not _query(filled, sql):
            empty.append(name)
    assert empty == []


# -- the report ---------------------------------------------------------------------------


def test_every_section_has_its_plot(html: str) -> None:
    for s in SECTIONS:
        el = _element(html, s.plot_id)
        assert "aria-label=" in el, s.plot_id
    assert "no data yet" not in html


def test_rtt_histogram_bars_match_the_data(html: str) -> None:
    svg = _element(html, "plot-rtt-excess")
    bars = re.findall(r'<rect class="bar"[^>]*data-value="([0-9.]+)"[^>]*>\s*<title>([^<]+)</title>', svg)
    assert bars, "no bars"
    total = 0
    for value, title in bars:
        m = re.match(r"(-?[0-9.]+) to (-?[0-9.]+) ms: (\d+) logins", title)
        assert m, title
        lo, hi, n = float(m[1]), float(m[2]), int(m[3])
        assert n == float(value) == sum(1 for x in EXCESS_MS if lo <= x < hi or x == hi == max(EXCESS_MS))
        total += n
    assert total == len(EXCESS_MS)  # one bar per bin with data, nothing lost
    assert "1 without one" in html  # the flag whose evidence has no excess


def test_other_plots_have_one_mark_per_row(html: str) -> None:
    assert _element(html, "plot-farm-timeline").count('class="span"') == 2
    heat = _element(html, "plot-injection-heatmap")
    assert heat.count('class="cell"') == 9 + 4
    assert heat.count('fill="#9e9e9e"') == 4  # hours known from the subject only
    table = _element(html, "plot-relay-exits")
    assert table.count("<tr>") == 1 + 4
    assert re.search(r"<td>203\.0\.113\.0/24</td>.*?</span>6</td>", table)
    assert _element(html, "plot-alerts-per-hour").count('class="bar"') == 3  # three kinds, one hour


def test_page_is_self_contained(html: str) -> None:
    assert "<script" not in html and "<link" not in html and " src=" not in html
    assert re.findall(r"https?://[^\"' ]+", html) == ["http://www.w3.org/2000/svg"] * len(
        re.findall(r"<svg ", html))


def test_empty_database_says_no_data_yet(tmp_path: Path) -> None:
    fresh, ddl_only = tmp_path / "fresh", tmp_path / "ddl"
    ch = ChdbClickHouse(str(ddl_only))
    ch.apply_ddl(30)
    ch.close()
    report = build_report(Source(functools.partial(_direct, _config(ddl_only)), "pathsentry"), origin="test")
    assert report.filled == 0
    assert report.html.count("no data yet") == len(SECTIONS)
    assert not any(f'id="{s.plot_id}"' in report.html for s in SECTIONS)
    # a directory that holds nothing is named, not created empty
    with pytest.raises(SystemExit, match="no pathsentry data at"):
        _direct(_config(fresh), "SELECT 1")
    assert not fresh.exists()


class _QueryEndpoint(BaseHTTPRequestHandler):
    """The worker's ``/query`` contract (JSON columns/rows, 400 with an error), on chDB."""

    ch: ChdbClickHouse

    def do_GET(self) -> None:
        u = urlparse(self.path)
        sql = parse_qs(u.query).get("sql", [""])[0]
        try:
            if u.path != "/query" or not is_read_only(sql):
                raise PermissionError("only one read-only statement is allowed")
            cols, rows = self.ch.query(sql)
            status, body = 200, {"columns": cols, "rows": [list(r) for r in rows]}
        except Exception as e:
            status, body = 400, {"error": str(e)[:500]}
        data = json.dumps(body, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint(filled: Path) -> Iterator[str]:
    ch = ChdbClickHouse(str(filled))
    handler = type("Handler", (_QueryEndpoint,), {"ch": ch})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        ch.close()


def test_report_through_a_query_endpoint_matches_direct(endpoint: str, html: str, filled: Path) -> None:
    cfg = _config(filled)
    report = build_report(Source(lambda sql: run_query(cfg, sql, endpoint), "pathsentry"), origin="test")
    assert report.filled == len(SECTIONS)
    for s in SECTIONS:
        assert _element(report.html, s.plot_id) == _element(html, s.plot_id)


def test_cli_writes_the_report(filled: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "report.html"
    env = {"PATH": "/usr/bin:/bin", "PATHSENTRY_CLICKHOUSE_URL": f"chdb://{filled}", "HOME": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "pathsentry", "report", "--out", str(out)], env=env,
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"{len(SECTIONS)} of {len(SECTIONS)} sections with data" in res.stdout
    assert 'id="plot-injection-heatmap"' in out.read_text()


def test_grafana_dashboard_sql_runs_on_the_views(filled: Path) -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    macros = {
        r"\$__timeFilter\((\w+)\)": r"\1 BETWEEN toDateTime('2000-01-01 00:00:00') "
                                    r"AND toDateTime('2100-01-01 00:00:00')",
        r"\$__fromTime": "toDateTime('2000-01-01 00:00:00')",
        r"\$__toTime": "toDateTime('2100-01-01 00:00:00')",
    }
    ran = 0
    for panel in panels:
        for target in panel.get("targets", []):
            if target["datasource"]["uid"] == PROMETHEUS_UID:
                continue  # PromQL on the workers' /metrics (tests/integration/test_worker_metrics)
            sql = target["rawSql"]
            for pattern, repl in macros.items():
                sql = re.sub(pattern, repl, sql)
            assert "$" not in sql, f"unknown macro in {panel['title']}: {sql}"
            assert _query(filled, sql), f"panel {panel['title']!r} returns no rows"
            ran += 1
    assert ran >= 4


# -- headless Chromium --------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000", *args],
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_chromium_renders_the_plots(html: str, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(html)
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    for s in SECTIONS:
        assert f'id="{s.plot_id}"' in dom.stdout, s.plot_id
    assert _element(dom.stdout, "plot-rtt-excess").count('class="bar"') == _element(
        html, "plot-rtt-excess").count('class="bar"')
    shot = tmp_path / "report.png"
    res = _chromium(tmp_path, f"--screenshot={shot}", page.as_uri())
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (1280, 2000)
    assert shot.stat().st_size > 30_000  # a blank page compresses to a few KiB


#: Measures, in the page Chromium loads, how far each bar cell's content reaches past its
#: cell (px), and writes the worst case on the body (a copy of the report: the report itself
#: has no script).
_MEASURE = """<script>window.onload = () => {
  let worst = -1e9;
  for (const td of document.querySelectorAll("td.barcell")) {
    const r = document.createRange(); r.selectNodeContents(td);
    worst = Math.max(worst, r.getBoundingClientRect().right - td.getBoundingClientRect().right);
  }
  document.body.setAttribute("data-overflow", String(worst));
};</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_chromium_keeps_the_relay_exit_counts_inside_their_column(tmp_path: Path) -> None:
    """Counts of several digits next to a full bar stay in the 'flagged' column."""
    chdb = tmp_path / "chdb"
    ch = connect(f"chdb://{chdb}")
    try:
        ch.apply_ddl(30)
        sink = ClickHouseSink(ch)
        flags = [relay_flag(i, account=f"acct{i % 40}", src_ip=f"203.0.113.{i % 250}", excess=9.0)
                 for i in range(1234)]
        flags += [relay_flag(5000 + i, account="acct1", src_ip="198.51.100.9", excess=9.0) for i in range(88)]
        asyncio.run(sink.write(flags, []))
        sink.close()
    finally:
        ch.close()
    report = build_report(Source(functools.partial(_direct, _config(chdb)), "pathsentry"), origin="test")
    table = _element(report.html, "plot-relay-exits")
    assert "1234</td>" in table and "88</td>" in table
    page = tmp_path / "report.html"
    page.write_text(report.html.replace("</body>", _MEASURE + "</body>"))
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r'data-overflow="(-?[0-9.e+-]+)"', dom.stdout)
    assert m, "the measurement did not run"
    assert float(m[1]) <= 0.5, f"a count runs {float(m[1]):.1f} px past the 'flagged' column"


def test_feedback_section_shows_each_detectors_measured_precision(html: str) -> None:
    table = _element(html, "plot-feedback")
    assert "later labelled bad" in table
    # both farms' 20 (+1 grown) and 6 members, 4 banned; the relay alert's account cleared
    assert "<td>farm_group</td><td>27</td><td>4</td><td>0</td>" in table
    assert "<td>vpn_relay</td><td>1</td><td>0</td><td>1</td>" in table
    assert "1.000" in table and "0.000" in table
