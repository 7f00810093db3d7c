"""Checks of a worker's ``/metrics`` text, parsed with ``prometheus_client.parser``:
histogram buckets cumulative and consistent with their count, and counters that never
decrease between two scrapes."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["PROMETHEUS_UID", "Scrape", "check_histograms", "check_not_decreasing", "dashboard_metrics",
           "parse"]

#: The Prometheus datasource of the shipped Grafana dashboards.
PROMETHEUS_UID = "pathsentry-prometheus"

#: (metric family type, sample name, sorted labels) -> value
Scrape = dict[tuple[str, str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Scrape:
    """Every sample of an exposition, keyed by its family's type, its name and labels."""
    out: Scrape = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (fam.type, s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"sample exposed twice: {key}"
            out[key] = s.value
    return out


def _monotonic(kind: str, name: str) -> bool:
    """Whether a sample only grows: a counter's value, a histogram's buckets, count and sum
    (every latency observed is positive)."""
    if kind == "counter":
        return name.endswith("_total")
    return kind == "histogram" and name.endswith(("_bucket", "_count", "_sum"))


def check_not_decreasing(before: Scrape, after: Scrape) -> int:
    """Every counter and histogram sample of ``before`` is in ``after`` with a value at least
    as high; returns how many were compared."""
    n = 0
    for key, v in before.items():
        kind, name, labels = key
        if not _monotonic(kind, name):
            continue
        assert key in after, f"{name}{dict(labels)} disappeared between two scrapes"
        assert after[key] >= v, f"{name}{dict(labels)} went down: {v} -> {after[key]}"
        n += 1
    return n


def check_histograms(scrape: Scrape) -> int:
    """Every histogram series has buckets that grow with ``le``, end with ``+Inf`` equal to its
    ``_count``, and a ``_sum``; returns the number of series checked."""
    series: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[float, float]]] = {}
    for (kind, name, labels), v in scrape.items():
        if kind == "histogram" and name.endswith("_bucket"):
            le = dict(labels)["le"]
            rest = tuple(kv for kv in labels if kv[0] != "le")
            series.setdefault((name.removesuffix("_bucket"), rest), []).append((float(le), v))
    for (base, labels), buckets in series.items():
        buckets.sort()
        counts = [c for _, c in buckets]
        assert counts == sorted(counts), f"{base}{dict(labels)}: buckets not cumulative: {buckets}"
        assert math.isinf(buckets[-1][0]), f"{base}{dict(labels)}: no +Inf bucket"
        count = scrape.get(("histogram", base + "_count", labels))
        assert count == counts[-1], f"{base}{dict(labels)}: +Inf bucket {counts[-1]} != count {count}"
        assert ("histogram", base + "_sum", labels) in scrape, f"{base}{dict(labels)}: no _sum"
    return len(series)


def dashboard_metrics(dashboards: Path) -> dict[str, set[str]]:
    """Panel title -> the ``pathsentry_*`` series its Prometheus queries read, over the
    dashboards (``*.json``) in ``dashboards``."""
    out: dict[str, set[str]] = {}
    for path in sorted(dashboards.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                if target["datasource"]["uid"] == PROMETHEUS_UID:
                    used = re.findall(r"pathsentry_\w+", target["expr"])
                    out.setdefault(panel["title"], set()).update(used)
    return out
