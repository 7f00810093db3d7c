"""The bench's CPU accounting and its report (the phases themselves run in `pathsentry bench`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from pathsentry.bench.run import BenchResult, _cpu_seconds, _runqueue_wait_s, format_result


def test_cpu_seconds_count_this_process_working_and_nothing_for_no_process() -> None:
    before = _cpu_seconds(os.getpid())
    deadline = time.monotonic() + 30.0
    x = 0
    while _cpu_seconds(os.getpid()) - before < 0.05:  # user time grows while we compute
        x += sum(range(10_000))
        assert time.monotonic() < deadline, "CPU time of this process never grew"
    assert x > 0
    assert _cpu_seconds(None) == 0.0
    assert _cpu_seconds(2**22 + 1) == 0.0  # beyond the kernel's pid range: no such process


def test_report_shows_the_cpu_of_worker_and_broker() -> None:
    r = BenchResult(events=1000, partitions=4, drain_cpu_us=(91.5, 20.25),
                    latency_cpu_cores=(0.55, 0.42))
    text = format_result(r)
    assert re.search(r"CPU per event while draining: worker / broker +91\.5 / 20\.25 µs", text)
    assert re.search(r"CPU during the latency phase: worker / broker +0\.55 / 0\.42 cores", text)


def test_runqueue_wait_is_the_time_the_main_thread_was_runnable_without_a_cpu() -> None:
    """Sharing its one CPU with a busy process, this process's main thread waits for it;
    the report prints the latency phase's share of such waiting."""
    assert _runqueue_wait_s(2**22 + 1) == 0.0  # no such process
    saved = os.sched_getaffinity(0)
    cpu = min(saved)
    os.sched_setaffinity(0, {cpu})
    busy = subprocess.Popen([sys.executable, "-c",
                             f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    try:
        time.sleep(0.3)  # the busy process is running
        waited = _runqueue_wait_s(os.getpid())
        start = time.monotonic()
        while time.monotonic() - start < 1.0:
            sum(range(10_000))
        assert _runqueue_wait_s(os.getpid()) - waited > 0.2
    finally:
        busy.kill()
        busy.wait()
        os.sched_setaffinity(0, saved)
    text = format_result(BenchResult(events=1, partitions=1, latency_loop_waited=0.45))
    assert re.search(r"share of it the worker's event loop waited for a CPU +0\.45", text)


def test_pipeline_cost_outside_detection_is_the_drain_cpu_less_detection_and_decoding() -> None:
    r = BenchResult(events=1000, partitions=4, drain_cpu_us=(130.0, 12.0),
                    drain_detect_us=90.25, drain_decode_us=4.5, drain_gc_us=20.5)
    assert r.pipeline_own_us == 35.2  # 130 - 90.25 - 4.5, rounded
    assert r.as_dict()["pipeline_own_us"] == 35.2
    text = format_result(r)
    assert re.search(r"of the worker's: detection / decoding +90\.25 / 4\.5 µs", text)
    assert re.search(r"pipeline µs per event outside detection +35\.2 µs", text)
    assert re.search(r"of which garbage collections +20\.5 µs", text)
    # not measured (no drain, or a worker that does not count its detection): no figure
    assert BenchResult(events=1, partitions=1, drain_detect_us=90.0).pipeline_own_us == 0.0
    assert BenchResult(events=1, partitions=1, drain_cpu_us=(130.0, 1.0)).pipeline_own_us == 0.0


def test_latency_phase_is_split_as_the_drain_with_clickhouse_threads_and_inserts() -> None:
    r = BenchResult(events=1000, partitions=4, latency_cpu_us=(300.0, 90.5), latency_detect_us=190.25,
                    latency_decode_us=14.5, latency_gc_us=3.0, clickhouse_cpu_us=(4.5, 40.25),
                    clickhouse_inserts_per_kevent=(0.33, 2.5))
    assert r.latency_pipeline_own_us == 95.2  # 300 - 190.25 - 14.5, rounded
    assert r.as_dict()["latency_pipeline_own_us"] == 95.2
    text = format_result(r)
    assert re.search(r"CPU per event in the latency phase: worker / broker +300\.0 / 90\.5 µs", text)
    assert re.search(r"of the worker's: detection / decoding +190\.25 / 14\.5 µs", text)
    assert re.search(r"outside detection / of which collections +95\.2 / 3\.0 µs", text)
    assert re.search(r"ClickHouse's threads in the worker: drain / latency +4\.5 / 40\.25 µs per event", text)
    assert re.search(r"ClickHouse inserts per 1,000 events: drain / latency +0\.33 / 2\.5", text)
    assert BenchResult(events=1, partitions=1, latency_cpu_us=(130.0, 1.0)).latency_pipeline_own_us == 0.0


def test_named_threads_are_told_from_the_process_own_threads() -> None:
    """ClickHouse's threads name themselves; Python's keep the process's name: a thread
    that renames itself and burns CPU is counted, this process's main thread is not."""
    import ctypes
    import threading

    from pathsentry.bench.run import _named_threads_cpu

    assert _named_threads_cpu(2**22 + 1) == 0.0  # no such process
    base, cpu0 = _named_threads_cpu(os.getpid()), _cpu_seconds(os.getpid())
    while _cpu_seconds(os.getpid()) - cpu0 < 0.3:  # this process's own (main) thread works
        sum(range(100_000))
    assert _named_threads_cpu(os.getpid()) - base < 0.1  # ... and is not counted
    base = _named_threads_cpu(os.getpid())
    stop = threading.Event()

    def named_spin() -> None:
        libc = ctypes.CDLL(None)
        libc.prctl(15, b"MergeMutate", 0, 0, 0)  # PR_SET_NAME, as ClickHouse names its threads
        while not stop.is_set():
            sum(range(10_000))
    t = threading.Thread(target=named_spin)
    t.start()
    try:
        deadline = time.monotonic() + 30.0
        while _named_threads_cpu(os.getpid()) - base < 0.3:
            time.sleep(0.01)
            assert time.monotonic() < deadline, "the named thread's CPU was never counted"
    finally:
        stop.set()
        t.join()


def test_decode_measure_times_both_decoders_on_the_same_messages() -> None:
    from pathsentry.bench.decode import format_decode, measure_decode
    from pathsentry.bench.run import world_payloads

    payloads = [*world_payloads(300, 100, 7), b'{"kind": "login"}', b"not json"]
    fig = measure_decode(payloads, batch=64, rounds=1)
    assert fig.events == 302 and fig.batch == 64
    assert fig.fallbacks == 2  # the two refusals, whose reasons come from parse_event
    assert fig.with_extras > 0  # the simulator's traceroutes
    assert set(fig.by_kind_us) == {"Login", "RttProbe", "Traceroute", "HttpProbe", "EventError"}
    assert fig.reference_us > 0 and fig.compiled_us > 0 and fig.structs_us > 0
    text = format_decode(fig)
    assert "parse_event (orjson + pydantic)" in text and "compiled (msgspec)" in text
    r = BenchResult(events=1000, partitions=4, decode_reference_us=7.5, decode_compiled_us=4.25)
    assert re.search(r"decode CPU: parse_event / compiled +7\.5 / 4\.25 µs per event", format_result(r))


def test_engine_measure_runs_the_engine_in_its_own_process(tmp_path: object) -> None:
    """In this (editable, pure) install the measure runs the pure engine only, says so,
    and finds something on the simulated events; the report shows both engines' line."""
    from pathlib import Path

    from pathsentry.bench.engine import format_engine, measure_engine
    from pathsentry.bench.run import bench_world, world_payloads
    from pathsentry.native import is_compiled

    config = bench_world(300, 7, str(tmp_path))
    assert isinstance(config, Path) and config.exists()
    fig = measure_engine(world_payloads(3000, 300, 7), config, rounds=1)
    assert fig.compiled_available == is_compiled()
    assert fig.events == 3000 and fig.flags > 0 and fig.same_findings
    assert fig.pure_us[0] > 0 and fig.validate_us[0] > 0
    assert "engine, pure Python" in format_engine(fig)
    r = BenchResult(events=1000, partitions=4, engine_pure_us=(40.0, 44.5), engine_compiled_us=(30.0, 30.0))
    assert re.search(r"engine pure / compiled \(best-worst\) +40\.0-44\.5 / 30\.0 µs per event, "
                     r"findings identical", format_result(r))


def test_save_measure_saves_the_same_state_on_the_loop_and_in_a_child(tmp_path: object) -> None:
    """Both ways save the same snapshot of the same state; the child's way reports its
    fork and its memory (what the loop's longest stall is, is the run's to say)."""
    from pathlib import Path

    from pathsentry.bench.run import bench_world, world_payloads
    from pathsentry.bench.saves import format_saves, measure_saves

    config = bench_world(300, 7, str(tmp_path))
    fig = measure_saves(world_payloads(3000, 300, 7), config, rounds=1, workdir=str(Path(str(tmp_path))))
    (on_loop,), (child,) = fig.rounds["loop"], fig.rounds["child"]
    assert on_loop["ok"] and child["ok"]
    assert on_loop["snapshot_bytes"] == child["snapshot_bytes"] > 0
    assert on_loop["learned_bytes"] > 0 and child["learned_bytes"] > 0
    assert child["save_fork_ms"] > 0 and child["save_child_private_mib"] > 0
    assert "save_fork_ms" not in on_loop
    assert re.search(r"child: loop stalled +[\d.]+ ms .*fork [\d.]+ ms, child private", format_saves(fig))


def test_in_process_world_is_the_same_for_every_run_of_a_day() -> None:
    """The in-process measurements replay a day-aligned world, so two runs of one UTC day
    (or the code before and after a change) see the same events and can compare digests."""
    from datetime import UTC, datetime

    from pathsentry.bench.run import world_start

    morning = datetime(2026, 3, 5, 0, 0, 1, tzinfo=UTC)
    evening = datetime(2026, 3, 5, 23, 59, 59, 999_000, tzinfo=UTC)
    assert world_start(morning) == world_start(evening) == datetime(2026, 3, 3, tzinfo=UTC)
    assert world_start(datetime(2026, 3, 6, 0, 0, 0, tzinfo=UTC)) == datetime(2026, 3, 4, tzinfo=UTC)
