"""``pathsentry bench`` end to end on the embedded broker, at a small size: every phase
reports a figure, and the run leaves nothing behind in the directory it was started from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_bench_reports_every_phase_and_writes_only_to_its_workdir(tmp_path: Path) -> None:
    cwd, work = tmp_path / "cwd", tmp_path / "work"
    cwd.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "pathsentry", "bench", "--events", "3000", "--accounts", "500",
         "--latency-seconds", "5", "--rate", "500", "--json", "--workdir", str(work)],
        cwd=cwd, capture_output=True, timeout=600, check=False,
    )
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    r = json.loads(run.stdout)
    assert r["notes"] == []
    assert r["raw_rate"] > r["pipeline_rate"] > 0
    assert r["naive_rate"] > 0
    assert r["pipeline_vs_naive"] == round(r["pipeline_rate"] / r["naive_rate"], 2)
    assert r["validate_us"] > 0 and r["engine_us"] > 0
    assert r["achieved_offered_rate"] > 250
    assert r["latency_samples"] > 0
    assert 0 < r["latency_p50_ms"] <= r["latency_p99_ms"]
    assert set(r["stage_latency_ms"]) == {"ingest", "session", "group"}
    assert r["flagged"] > 0 and r["alerts"] > 0
    assert all(v > 0 for v in r["drain_cpu_us"])
    # the worker counts its detection and decoding CPU: both a part of its own CPU (the
    # drain is timed from the first event forwarded: at this size the ingest may have
    # decoded every event by then)
    assert 0 < r["drain_detect_us"] < r["drain_cpu_us"][0]
    assert 0 <= r["drain_decode_us"] < r["drain_cpu_us"][0]
    assert r["drain_gc_us"] >= 0
    assert r["pipeline_own_us"] == round(
        r["drain_cpu_us"][0] - r["drain_detect_us"] - r["drain_decode_us"], 1)
    assert r["worker_peak_rss_mb"] > 0
    # Faust's data directory of the naive baseline, logs and chDB: all under --workdir
    assert list(cwd.iterdir()) == []
    assert (work / "naive").is_dir()
