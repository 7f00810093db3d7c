"""The worker's web endpoints under attack, on a running worker (embedded Kafka, chDB):
``/query`` needs the bearer token, every page checks the ``Host`` header, the attack corpus
of analyst SQL is refused through HTTP and changes nothing, and no secret (the token, a
Kafka password, a ClickHouse password) shows in a page or in the worker's log."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pathsentry.infra.broker import EmbeddedBroker
from pathsentry.streams.web import WebAccess
from tests.integration.harness import running_worker
from tests.test_query_policy import attacks

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SASL_SECRET = "sasl-pw-5e1f-never-shown"


def _status(req: urllib.request.Request) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_query_endpoint_under_attack(tmp_path: Path, embedded_broker: EmbeddedBroker) -> None:
    with running_worker(tmp_path, embedded_broker.url, f"chdb://{tmp_path / 'chdb'}") as worker:
        count = "SELECT count() FROM pathsentry.alerts"
        assert worker.query(count) == [[0]]
        # authentication
        assert _status(worker.query_request(count, token=None))[0] == 401
        assert _status(worker.query_request(count, token="guess"))[0] == 401
        assert _status(worker.query_request(count, token=worker.query_token + "x"))[0] == 401
        # the Host header: a rebinding page's name is refused on every page, the token or not
        evil = f"attacker.example:{worker.port}"
        assert _status(worker.query_request(count, host=evil))[0] == 403
        for page in ("/stats", "/metrics"):
            req = urllib.request.Request(worker.base + page, headers={"Host": evil})
            assert _status(req)[0] == 403
            assert _status(urllib.request.Request(worker.base + page))[0] == 200
        assert _status(worker.query_request(count, host=f"localhost:{worker.port}"))[0] == 200
        for page in ("/router/", "/table/"):  # Faust's own pages, which check no Host, are off
            assert _status(urllib.request.Request(worker.base + page))[0] == 404
        # the corpus, through HTTP
        passed = []
        for sql in attacks(tmp_path):
            code, body = _status(worker.query_request(sql))
            if code != 400 or "error" not in json.loads(body):
                passed.append((sql, code, body[:200]))
        assert passed == []
        assert worker.query(count) == [[0]]
        assert worker.query("SELECT count() FROM pathsentry.flagged_events") == [[0]]
        assert not any(tmp_path.glob("out*.txt"))
        assert worker.alive


def test_no_secret_in_pages_or_log(tmp_path: Path, embedded_broker: EmbeddedBroker) -> None:
    from tests.faults.support import worker_process
    from tests.integration.harness import CONFIG, GEO

    (tmp_path / "pathsentry.toml").write_text(CONFIG)
    (tmp_path / "geo.csv").write_text(GEO)
    with worker_process(tmp_path / "pathsentry.toml", embedded_broker.url, tmp_path / "chdb",
                        loglevel="info", extra_env={"PATHSENTRY_KAFKA_SASL_PASSWORD": SASL_SECRET,
                                                    "PATHSENTRY_KAFKA_SASL_USERNAME": "svc"}) as worker:
        worker.start(timeout=60)
        assert _status(worker.query_request("SELECT 1"))[0] == 200
        assert _status(worker.query_request("SELECT * FROM file('/etc/passwd')"))[0] == 400
        pages = [_status(urllib.request.Request(worker.base + p))[1] for p in ("/stats", "/metrics")]
        assert worker.stop(timeout=60) == 0
        log = worker.log_path.read_text(errors="replace")
        for text in (*pages, log):
            assert worker.query_token not in text and SASL_SECRET not in text
        assert "/query with a bearer token" in log
        # without a token configured, /query is off
        worker.query_token = ""
        worker.start(timeout=60)
        code, body = _status(worker.query_request("SELECT 1", token="anything"))
        assert code == 404 and "PATHSENTRY_QUERY_TOKEN" in body


def test_access_from_environment() -> None:
    a = WebAccess.from_env({"PATHSENTRY_WEB_HOST": "0.0.0.0", "PATHSENTRY_QUERY_TOKEN": "t",
                            "PATHSENTRY_WEB_ALLOWED_HOSTS": "worker, pathsentry-worker-1"})
    assert a.host == "0.0.0.0" and a.token == "t"
    assert a.host_allowed("pathsentry-worker-1:6066") and a.host_allowed("10.0.3.7:6066")
    assert not a.host_allowed("rebind.attacker.example:6066") and not a.host_allowed(None)
    off = WebAccess.from_env({})
    assert off.host == "127.0.0.1" and off.token is None and not off.authorized("Bearer ")
