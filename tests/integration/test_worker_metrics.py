"""``/metrics`` of a running ``pathsentry worker`` (embedded broker, chDB), scraped twice
across traffic: counters never decrease, histogram buckets are cumulative and agree with
their counts; and ``/stats`` counts what ClickHouse holds: distinct flagged events and
distinct alerts, beside every alert version."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from pathsentry.infra.broker import EmbeddedBroker
from tests.faults.support import produce, recent_world, route_events, sim_events, worker_process, write_world
from tests.prometheus import Scrape, check_histograms, check_not_decreasing, dashboard_metrics, parse

DASHBOARDS = Path(__file__).resolve().parents[2] / "infra" / "grafana" / "dashboards"


def _scrape(base: str) -> Scrape:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        return parse(r.read().decode())


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_metrics_of_a_running_worker(tmp_path: Path, embedded_broker: EmbeddedBroker) -> None:
    spec = recent_world(seed=5, accounts=400)
    config = write_world(tmp_path, spec)
    events = sim_events(spec)
    half = len(events) // 2
    with worker_process(config, embedded_broker.url, tmp_path / "chdb") as worker:
        worker.start()
        produce(worker.bootstrap, route_events(events[:half], worker.topics))
        worker.wait_drained(timeout=120)
        first = _scrape(worker.base)
        # the rest, and one message that is not an event (a dead letter)
        produce(worker.bootstrap, [*route_events(events[half:], worker.topics),
                                   (worker.topics.logins, b"k", b"not an event")])
        worker.wait_drained(timeout=120)
        second = _scrape(worker.base)
        with urllib.request.urlopen(worker.base + "/stats", timeout=30) as r:
            st = json.loads(r.read())  # with the latency samples
        (flagged, alerts), = worker.query(
            "SELECT (SELECT uniqExact(event_id, kind) FROM pathsentry.flagged_events), "
            "(SELECT uniqExact(alert_id) FROM pathsentry.alerts)")
        assert worker.stop() == 0, worker.log_tail()

    w = (("worker", st["worker"]),)
    events_in = [m[("counter", "pathsentry_events_in_total", w)] for m in (first, second)]
    assert 0 < events_in[0] < events_in[1] == len(events)
    assert check_not_decreasing(first, second) > 20
    assert check_histograms(first) >= 3 and check_histograms(second) >= 3
    flag_count = sum(v for (kind, name, _), v in second.items()
                     if kind == "histogram" and name == "pathsentry_produce_to_flag_ms_count")
    # every flag whose event's produce time is known is observed (not one of the last N samples)
    assert flag_count == st["produce_to_flag_ms"]["n"] > 0 and flag_count <= st["flag_rows"]
    assert (st["flagged"], st["alerts"]) == (int(flagged), int(alerts))
    assert st["alert_versions"] >= st["alerts"] > 0
    assert sum(v for (_, name, _), v in second.items() if name == "pathsentry_dead_letter_total") == 1
    by_kind = {dict(labels)["kind"]: v for (kind, name, labels), v in second.items()
               if name == "pathsentry_alerts_total"}
    assert sum(by_kind.values()) == st["alerts"]
    # every series the Grafana dashboard's Prometheus panels read is one the worker serves
    served = {name for _, name, _ in second}
    panels = dashboard_metrics(DASHBOARDS)
    assert panels
    for title, names in panels.items():
        assert names and names <= served, f"{title}: the worker serves no {sorted(names - served)}"
    print("worker metrics:", {k: st[k] for k in ("events_in", "flagged", "flag_rows", "alerts",
                                                  "alert_versions", "alert_versions_published")})
