"""``pathsentry bench``: throughput and latency of the pipeline against baselines
measured in the same run, on the embedded broker.

Phases (one broker, one simulated event mix):

1. preload ``n`` events of a simulated world into ``logins`` / ``network-telemetry``;
2. **raw**: aiokafka reads the same topics as fast as it can (the ceiling);
3. **naive**: a Faust agent handling one message at a time with the same
   decoding (``pathsentry.bench.naive``, its own process);
4. **pipeline**: a real ``pathsentry worker`` process (all detectors, chDB sink,
   alerts topic) consumes the preloaded events; events/s from its first ingest
   to the last detection;
5. **latency**: the bench then offers fresh events at a fixed rate and reads the
   worker's produce-to-flag latency (Kafka create time to flag stored in
   ClickHouse) for events produced during the phase, the worker's peak RSS, and the
   cost of its last periodic save (:data:`SAVE_STATS`).

Phases 4 and 5 also report the CPU time the worker and the broker used (all their
threads): the broker shares the machine with the worker here, not in production. Both
split the worker's CPU per event the same way: detection and decoding (the worker's own
counters), garbage collections, the threads ClickHouse (chDB) runs in the worker's
process (inserts, background merges), and the ClickHouse inserts made per 1,000 events.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from pathsentry.infra.broker import EmbeddedBroker, create_topics, free_port

__all__ = ["BenchResult", "bench_world", "format_result", "run_bench", "world_payloads"]

Record = tuple[str, bytes, bytes]

#: the worker's /stats keys on its last periodic session-stage save that the bench reports
SAVE_STATS = ("snapshot_serialise_ms", "snapshot_bytes", "learned_state_save_ms",
              "learned_state_save_bytes", "save_loop_ms", "save_fork_ms", "save_child_private_mib",
              "save_child_peak_rss_mib", "save_child_saves", "save_child_failures")


@dataclass
class BenchResult:
    events: int
    partitions: int
    raw_rate: float = 0.0
    #: on the preloaded events, each in a process of its own, µs of CPU per event (best run):
    #: contract validation, and the engine this install runs (compiled when it has it)
    validate_us: float = 0.0
    engine_us: float = 0.0
    #: the engine pure and compiled, (best, worst) over the rounds ((0, 0): not compiled)
    engine_pure_us: tuple[float, float] = (0.0, 0.0)
    engine_compiled_us: tuple[float, float] = (0.0, 0.0)
    #: both engines gave the same findings in every run
    engine_same_findings: bool = True
    naive_rate: float = 0.0
    pipeline_rate: float = 0.0
    offered_rate: float = 0.0
    achieved_offered_rate: float = 0.0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_samples: int = 0
    latency_p99_by_kind_ms: dict[str, float | None] = field(default_factory=dict)
    alert_latency_p99_by_kind_ms: dict[str, float | None] = field(default_factory=dict)
    alert_published_p99_by_kind_ms: dict[str, float | None] = field(default_factory=dict)
    #: (p50, p99) from produce to the moment each stage runs an event
    stage_latency_ms: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    worker_peak_rss_mb: float = 0.0
    #: CPU time per preloaded event while the worker drained them, µs: worker, broker
    drain_cpu_us: tuple[float, float] = (0.0, 0.0)
    #: of the worker's, µs per event: inside the engine (detection) and the ingest's decoding,
    #: as the worker's /stats counts them (``detect_cpu_s``, ``decode_cpu_s``)
    drain_detect_us: float = 0.0
    drain_decode_us: float = 0.0
    #: the worker's garbage collections over the drain (all generations), CPU µs per event
    drain_gc_us: float = 0.0
    #: CPU used during the latency phase, cores: worker, broker
    latency_cpu_cores: tuple[float, float] = (0.0, 0.0)
    #: share of the latency phase the worker's event loop waited, runnable, for a CPU
    latency_loop_waited: float = 0.0
    #: the same split as the drain's over the latency phase, per event offered: CPU µs of
    #: the worker and the broker; of the worker's, detection, decoding, garbage collections
    latency_cpu_us: tuple[float, float] = (0.0, 0.0)
    latency_detect_us: float = 0.0
    latency_decode_us: float = 0.0
    latency_gc_us: float = 0.0
    #: CPU µs per event of the threads chDB runs in the worker (inserts, merges): drain, latency
    clickhouse_cpu_us: tuple[float, float] = (0.0, 0.0)
    #: ClickHouse inserts per 1,000 events: drain, latency phase (/stats ``clickhouse_inserts``)
    clickhouse_inserts_per_kevent: tuple[float, float] = (0.0, 0.0)
    #: the worker's garbage-collector pauses during the latency phase, per generation
    gc_pauses: dict[str, dict[str, float]] = field(default_factory=dict)
    #: the worker's last periodic session-stage save, from its /stats (``SAVE_STATS``)
    saves: dict[str, float] = field(default_factory=dict)
    flagged: int = 0
    alerts: int = 0
    state_accounts: int = 0
    state_prefixes: int = 0
    state_peak_rss_mb: float = 0.0
    state_events_per_s: float = 0.0
    #: in-process on the preloaded events, µs of CPU per event: parse_event, the compiled decoder
    decode_reference_us: float = 0.0
    decode_compiled_us: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def pipeline_vs_raw(self) -> float:
        return self.pipeline_rate / self.raw_rate if self.raw_rate else 0.0

    @property
    def pipeline_vs_naive(self) -> float:
        return self.pipeline_rate / self.naive_rate if self.naive_rate else 0.0

    @property
    def pipeline_own_us(self) -> float:
        """The worker's CPU per drained event outside detection and decoding, µs: all of
        its threads' CPU less what its event-loop thread spent in the engine and in the
        ingest's decoder, in the same process over the same drain (0 when not measured)."""
        if not (self.drain_cpu_us[0] and self.drain_detect_us):
            return 0.0
        return round(self.drain_cpu_us[0] - self.drain_detect_us - self.drain_decode_us, 1)

    @property
    def latency_pipeline_own_us(self) -> float:
        """The same as :attr:`pipeline_own_us` over the latency phase (0 when not measured)."""
        if not (self.latency_cpu_us[0] and self.latency_detect_us):
            return 0.0
        return round(self.latency_cpu_us[0] - self.latency_detect_us - self.latency_decode_us, 1)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pipeline_vs_raw"] = round(self.pipeline_vs_raw, 3)
        d["pipeline_vs_naive"] = round(self.pipeline_vs_naive, 2)
        d["pipeline_own_us"] = self.pipeline_own_us
        d["latency_pipeline_own_us"] = self.latency_pipeline_own_us
        return d


def world_start(now: datetime | None = None) -> datetime:
    """Start of the world the in-process measurements replay: midnight UTC two days before
    ``now``. Day-aligned, so every run of one UTC day replays the same events and the
    findings digests of two runs (or of code before and after a change) can be compared."""
    now = now or datetime.now(UTC)
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)


def world_payloads(n: int, accounts: int, seed: int) -> list[bytes]:
    """The first ``n`` messages of the bench's simulated world (as the producers send them),
    starting at :func:`world_start`."""
    start = world_start()
    return [v for _, _, v in itertools.islice(_world_records(seed, accounts, "", start), n)]


def bench_world(accounts: int, seed: int, workdir: str | None = None) -> Path:
    """Write the bench world's files (geo tables, servers) under ``workdir`` (default: a
    temp dir) and return its ``pathsentry.toml``."""
    from pathsentry.sim.model import WorldSpec
    from pathsentry.sim.world import write_world_files

    root = Path(workdir or tempfile.mkdtemp(prefix="pathsentry-bench-")) / "world"
    start = world_start()
    write_world_files(WorldSpec(seed=seed, accounts=accounts, hours=24.0, start=start), root)
    return root / "pathsentry.toml"


def _world_records(seed: int, accounts: int, prefix: str, start: datetime) -> Iterator[Record]:
    from pathsentry.sim.model import WorldSpec
    from pathsentry.sim.world import iter_world

    for day in itertools.count():
        spec = WorldSpec(seed=seed + day, accounts=accounts, hours=24.0, start=start + timedelta(days=day))
        for ev in iter_world(spec):
            if ev["kind"] == "login":
                yield f"{prefix}logins", ev["account"].encode(), orjson.dumps(ev)
            else:
                key = ev.get("session_id") or ev["src_ip"]
                yield f"{prefix}network-telemetry", key.encode(), orjson.dumps(ev)


async def _produce(bootstrap: str, records: list[Record], rate: float | None = None) -> float:
    from aiokafka import AIOKafkaProducer

    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1 << 20)
    await prod.start()
    t0 = time.perf_counter()
    try:
        for i, (topic, key, value) in enumerate(records):
            await prod.send(topic, value, key=key)
            if rate:
                ahead = (i + 1) / rate - (time.perf_counter() - t0)
                if ahead > 0.002:
                    await asyncio.sleep(ahead)
        await prod.flush()
    finally:
        await prod.stop()
    return len(records) / (time.perf_counter() - t0)


async def _raw_consume(bootstrap: str, topics: list[str], n: int) -> float:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    cons = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                            max_poll_records=10_000, fetch_max_bytes=64 << 20)
    await cons.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in (cons.partitions_for_topic(t) or set())]
        if not tps:
            await cons._client.force_metadata_update()
            tps = [TopicPartition(t, p) for t in topics for p in (cons.partitions_for_topic(t) or set())]
        cons.assign(tps)
        await cons.seek_to_beginning(*tps)
        got = 0
        t0 = time.perf_counter()
        while got < n:
            batch = await cons.getmany(timeout_ms=1000, max_records=10_000)
            got += sum(len(v) for v in batch.values())
        return got / (time.perf_counter() - t0)
    finally:
        await cons.stop()


def _http_json(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:
        return orjson.loads(r.read())


def _peak_rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu_seconds(pid: int | None) -> float:
    """User and system CPU time a process (all its threads) has used, in s (0 without /proc)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _named_threads_cpu(pid: int) -> float:
    """CPU time (s) of a process's threads that named themselves: a thread inherits the
    process's name unless it sets its own, as ClickHouse's (chDB's) threads do and
    Python's do not (a thread that ends is no longer counted). 0 without /proc."""
    def stat(path: str) -> tuple[bytes, float]:
        with open(path, "rb") as fh:
            raw = fh.read()
        fields = raw.rsplit(b")", 1)[1].split()
        return raw[raw.index(b"(") + 1:raw.rindex(b")")], (int(fields[11]) + int(fields[12]))
    try:
        own, _ = stat(f"/proc/{pid}/stat")
        tids = os.listdir(f"/proc/{pid}/task")
    except (OSError, ValueError, IndexError):
        return 0.0
    ticks = 0.0
    for tid in tids:
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread may end meanwhile
            name, used = stat(f"/proc/{pid}/task/{tid}/stat")
            if name != own:
                ticks += used
    return ticks / os.sysconf("SC_CLK_TCK")


def _runqueue_wait_s(pid: int) -> float:
    """Time (s) the process's main thread (the worker's event loop) has spent runnable but
    waiting for a CPU (``/proc/<pid>/schedstat``, second field; 0 without it)."""
    try:
        with open(f"/proc/{pid}/schedstat") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


class _Cpu:
    """CPU time of the worker and the broker since the last :meth:`mark`, and the time the
    worker's event loop waited for a CPU."""

    def __init__(self, worker: int, broker: int | None) -> None:
        self.pids = (worker, broker)
        self.mark()

    def mark(self) -> None:
        self.at = time.monotonic()
        self.used = tuple(_cpu_seconds(p) for p in self.pids)
        self.named = _named_threads_cpu(self.pids[0])
        self.waited = _runqueue_wait_s(self.pids[0])

    def loop_waited(self) -> float:
        """Share of the wall time since the mark the worker's event loop was runnable but
        not running (other processes had the cores)."""
        wall = max(1e-9, time.monotonic() - self.at)
        return round((_runqueue_wait_s(self.pids[0]) - self.waited) / wall, 2)

    def seconds(self) -> tuple[float, float]:
        """CPU seconds of the worker and the broker since the mark."""
        return (_cpu_seconds(self.pids[0]) - self.used[0],
                _cpu_seconds(self.pids[1]) - self.used[1])

    def clickhouse_seconds(self) -> float:
        """CPU seconds of the worker's named (ClickHouse's) threads since the mark."""
        return _named_threads_cpu(self.pids[0]) - self.named

    def cores(self) -> tuple[float, float]:
        """The same, per second of wall time."""
        wall = max(1e-9, time.monotonic() - self.at)
        worker, broker = self.seconds()
        return round(worker / wall, 2), round(broker / wall, 2)


def _gc_ms(stats: dict[str, Any]) -> float:
    """The worker's garbage collections since its start, CPU ms (all generations)."""
    return float(sum(g.get("total_cpu_ms", 0.0) for g in stats.get("gc_pauses", {}).values()))


def _split(cpu: _Cpu, st0: dict[str, Any], st: dict[str, Any], n: int,
           ) -> tuple[tuple[float, float], float, float, float, float, float]:
    """The worker's CPU since ``cpu``'s mark, per event of ``n``, from its /stats before
    (``st0``) and after (``st``): (worker, broker) µs, detection µs, decoding µs, garbage
    collections µs, ClickHouse's threads µs, and ClickHouse inserts per 1,000 events."""
    n = max(1, n)
    worker_s, broker_s = cpu.seconds()

    def per_event(key: str) -> float:
        return round(float(st.get(key, 0.0) - st0.get(key, 0.0)) / n * 1e6, 1)
    return ((round(worker_s / n * 1e6, 1), round(broker_s / n * 1e6, 1)),
            per_event("detect_cpu_s"), per_event("decode_cpu_s"),
            round((_gc_ms(st) - _gc_ms(st0)) / n * 1e3, 1),
            round(cpu.clickhouse_seconds() / n * 1e6, 1),
            round(per_event("clickhouse_inserts") / 1e3, 2))


def _wait_for(pred: Any, timeout: float, proc: subprocess.Popen[bytes], what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError):
            got = pred()
            if got:
                return got
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def state_memory(accounts: int, prefixes: int) -> dict[str, Any]:
    """Run the state-memory phase in its own process and return its JSON result."""
    proc = subprocess.run(
        [sys.executable, "-m", "pathsentry.bench.state", "--accounts", str(accounts),
         "--prefixes", str(prefixes)],
        capture_output=True, timeout=7200, check=True,
    )
    result: dict[str, Any] = orjson.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run_bench(
    n: int = 200_000,
    *,
    state_accounts: int = 0,
    state_prefixes: int = 100_000,
    accounts: int = 20_000,
    seed: int = 7,
    partitions: int = 4,
    rate: float = 10_000.0,
    latency_seconds: float = 20.0,
    workdir: str | None = None,
    log: Any = print,
) -> BenchResult:
    from pathsentry.sim.model import WorldSpec
    from pathsentry.sim.world import write_world_files

    root = Path(workdir or tempfile.mkdtemp(prefix="pathsentry-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    prefix = f"bench{int(time.time())}."
    res = BenchResult(events=n, partitions=partitions, offered_rate=rate)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    write_world_files(WorldSpec(seed=seed, accounts=accounts, hours=24.0, start=start), root / "world")
    stream = _world_records(seed, accounts, prefix, start)
    preload = list(itertools.islice(stream, n))
    live = list(itertools.islice(stream, int(rate * latency_seconds)))

    with EmbeddedBroker(log_dir=root) as broker:
        bs = broker.bootstrap
        topics = [f"{prefix}logins", f"{prefix}network-telemetry"]
        asyncio.run(create_topics(bs, {**dict.fromkeys(topics, partitions),
                                       **{f"{prefix}{t}": partitions for t in (
                                           "alerts", "dead-letter", "pathsentry-sessions",
                                           "pathsentry-groups")}}))
        log(f"[bench] preloading {n:,} events ({accounts:,} accounts) into {partitions} partitions")
        asyncio.run(_produce(bs, preload))

        res.raw_rate = asyncio.run(_raw_consume(bs, topics, n))
        log(f"[bench] raw aiokafka consume: {res.raw_rate:,.0f} events/s")

        naive = subprocess.run(
            [sys.executable, "-m", "pathsentry.bench.naive", "--bootstrap", bs, "--prefix", prefix,
             "--n", str(n), "--web-port", str(free_port()), "--datadir", str(root / "naive")],
            capture_output=True, timeout=1800, check=False,
        )
        # the Faust worker writes terminal control codes before the result line
        found = re.findall(rb'\{"events".*?\}', naive.stdout)
        if found:
            res.naive_rate = orjson.loads(found[-1])["rate"]
            log(f"[bench] naive Faust per-event loop: {res.naive_rate:,.0f} events/s")
        else:
            res.notes.append("naive baseline failed: " + naive.stderr.decode()[-500:])

        port = free_port()
        env = dict(
            os.environ,
            PATHSENTRY_CONFIG=str(root / "world" / "pathsentry.toml"),
            PATHSENTRY_KAFKA_URL=broker.url,
            PATHSENTRY_CLICKHOUSE_URL=f"chdb://{root / 'chdb'}",
            PATHSENTRY_TOPIC_PREFIX=prefix,
            PATHSENTRY_DATA_DIR=str(root / "var"),
        )
        with open(root / "worker.log", "wb") as wlog:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pathsentry", "worker", "--web-port", str(port),
                 "--loglevel", "warning"],
                env=env, stdout=wlog, stderr=subprocess.STDOUT,
            )
            try:
                base = f"http://127.0.0.1:{port}/stats"
                counters = f"{base}?latency=0"  # polled: the quantiles would cost the worker CPU

                def drained() -> dict[str, Any] | None:
                    st = _http_json(counters)
                    done = st["events_detected"] >= n and st["group_events"] >= st["group_messages"]
                    return st if done else None

                # from the first event in (the worker's start-up is not counted)
                _wait_for(lambda: _http_json(counters)["events_in"] > 0, 600, proc, "the first event")
                cpu = _Cpu(proc.pid, broker.proc.pid if broker.proc else None)
                st0 = _http_json(counters)
                st = _wait_for(drained, 1800, proc, "the preloaded events")
                drain = _split(cpu, st0, st, n)
                res.drain_cpu_us, res.drain_detect_us, res.drain_decode_us, res.drain_gc_us = drain[:4]
                end = max(st["last_event_at"], st["last_group_at"] or 0)
                res.pipeline_rate = n / (end - st["first_ingest_at"])
                log(f"[bench] full pipeline: {res.pipeline_rate:,.0f} events/s per worker process")

                since = int(time.time() * 1000)
                log(f"[bench] offering {rate:,.0f} events/s for {latency_seconds:.0f} s")
                cpu.mark()
                st0 = _http_json(counters)
                res.achieved_offered_rate = asyncio.run(_produce(bs, live, rate))
                total = n + len(live)
                st = _wait_for(lambda: (s := _http_json(counters))["events_detected"] >= total and s,
                               600, proc, "the live events")
                res.latency_cpu_cores = cpu.cores()
                res.latency_loop_waited = cpu.loop_waited()
                lat_split = _split(cpu, st0, st, len(live))
                res.latency_cpu_us, res.latency_detect_us, res.latency_decode_us, res.latency_gc_us = (
                    lat_split[:4])
                res.clickhouse_cpu_us = (drain[4], lat_split[4])
                res.clickhouse_inserts_per_kevent = (drain[5], lat_split[5])
                time.sleep(3.0)
                st = _http_json(f"{base}?since_ms={since}")
                lat = st["produce_to_flag_ms"]
                res.latency_p50_ms, res.latency_p99_ms, res.latency_samples = lat["p50"], lat["p99"], lat["n"]
                res.latency_p99_by_kind_ms = {
                    k: v["p99"] for k, v in st.get("produce_to_flag_ms_by_kind", {}).items()}
                res.alert_latency_p99_by_kind_ms = {
                    k: v["p99"] for k, v in st.get("produce_to_alert_ms_by_kind", {}).items()}
                res.alert_published_p99_by_kind_ms = {
                    k: v["p99"] for k, v in st.get("produce_to_alert_published_ms_by_kind", {}).items()}
                res.stage_latency_ms = {
                    k: (v["p50"], v["p99"]) for k, v in st.get("produce_to_stage_ms", {}).items()}
                res.flagged, res.alerts = st["flagged"], st["alerts"]
                res.gc_pauses = st.get("gc_pauses", {})
                res.saves = {k: st[k] for k in SAVE_STATS if k in st}
                res.worker_peak_rss_mb = _peak_rss_mb(proc.pid)
                log(f"[bench] produce-to-flag p50 {lat['p50']} ms, p99 {lat['p99']} ms "
                    f"over {lat['n']} flags; worker peak RSS {res.worker_peak_rss_mb:.0f} MiB")
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    from pathsentry.bench.engine import format_engine, measure_engine

    eng = measure_engine([value for _, _, value in preload], root / "world" / "pathsentry.toml")
    res.validate_us = eng.validate_us[0]
    res.engine_pure_us, res.engine_compiled_us = eng.pure_us, eng.compiled_us
    res.engine_us = eng.compiled_us[0] if eng.compiled_available else eng.pure_us[0]
    res.engine_same_findings = eng.same_findings
    log("[bench] " + format_engine(eng))
    from pathsentry.bench.decode import format_decode, measure_decode

    dec = measure_decode([value for _, _, value in preload])
    res.decode_reference_us, res.decode_compiled_us = dec.reference_us, dec.compiled_us
    log("[bench] " + format_decode(dec))
    if state_accounts:
        log(f"[bench] state memory: {state_accounts:,} accounts over {state_prefixes:,} prefixes")
        st = state_memory(state_accounts, state_prefixes)
        res.state_accounts, res.state_prefixes = state_accounts, state_prefixes
        res.state_peak_rss_mb = st["rss_peak_mb"]
        res.state_events_per_s = st["events"] / st["seconds"]
        log(f"[bench] detector process peak RSS {st['rss_peak_mb']:,.0f} MiB")
    return res


def _span(s: tuple[float, float]) -> str:
    return f"{s[0]}" if s[0] == s[1] else f"{s[0]}-{s[1]}"


def format_result(r: BenchResult) -> str:
    """Human-readable table of a bench run."""
    def rate(v: float) -> str:
        return f"{v:>12,.0f} events/s"

    rows = [
        ("events preloaded", f"{r.events:>12,}"),
        ("partitions", f"{r.partitions:>12}"),
        ("raw aiokafka consume", rate(r.raw_rate)),
        ("in-process validation / engine", f"{r.validate_us:>5} / {r.engine_us} µs per event"),
        ("engine pure / compiled (best-worst)",
         f"{_span(r.engine_pure_us):>5} / {_span(r.engine_compiled_us) if r.engine_compiled_us[0] else '-'} "
         f"µs per event, findings {'identical' if r.engine_same_findings else 'DIFFERENT'}"),
        ("decode CPU: parse_event / compiled",
         f"{r.decode_reference_us:>5} / {r.decode_compiled_us} µs per event"),
        ("naive Faust per-event loop", rate(r.naive_rate)),
        ("full pipeline (1 worker process)", rate(r.pipeline_rate)),
        ("pipeline / raw", f"{r.pipeline_vs_raw:>12.2f}x"),
        ("pipeline / naive", f"{r.pipeline_vs_naive:>12.2f}x"),
        ("offered load (latency phase)", rate(r.achieved_offered_rate)),
        ("produce-to-flag p50", f"{r.latency_p50_ms!s:>12} ms"),
        ("produce-to-flag p99", f"{r.latency_p99_ms!s:>12} ms"),
        ("latency samples (flags)", f"{r.latency_samples:>12,}"),
        *((f"  p99 {k}", f"{v!s:>12} ms") for k, v in sorted(r.latency_p99_by_kind_ms.items())),
        ("produce to stage run: p50 / p99", ""),
        *((f"  {k} stage", f"{v[0]!s:>5} / {v[1]!s} ms") for k, v in sorted(r.stage_latency_ms.items())),
        ("raising event to alert on Kafka (acked)", ""),
        *((f"  p99 {k}", f"{v!s:>12} ms") for k, v in sorted(r.alert_published_p99_by_kind_ms.items())),
        ("raising event to alert stored", ""),
        *((f"  p99 {k}", f"{v!s:>12} ms") for k, v in sorted(r.alert_latency_p99_by_kind_ms.items())),
        ("worker GC pauses (latency phase): n / longest", ""),
        *((f"  {g}", f"{v['n_since']:>7,} / {v['max_ms']} ms") for g, v in sorted(r.gc_pauses.items())),
        ("CPU per event while draining: worker / broker",
         f"{r.drain_cpu_us[0]:>5} / {r.drain_cpu_us[1]} µs"),
        ("  of the worker's: detection / decoding",
         f"{r.drain_detect_us:>5} / {r.drain_decode_us} µs"),
        ("pipeline µs per event outside detection", f"{r.pipeline_own_us:>5} µs"),
        ("  of which garbage collections", f"{r.drain_gc_us:>5} µs"),
        ("CPU during the latency phase: worker / broker",
         f"{r.latency_cpu_cores[0]:>5} / {r.latency_cpu_cores[1]} cores"),
        ("  share of it the worker's event loop waited for a CPU",
         f"{r.latency_loop_waited:>5}"),
        ("CPU per event in the latency phase: worker / broker",
         f"{r.latency_cpu_us[0]:>5} / {r.latency_cpu_us[1]} µs"),
        ("  of the worker's: detection / decoding",
         f"{r.latency_detect_us:>5} / {r.latency_decode_us} µs"),
        ("  outside detection / of which collections",
         f"{r.latency_pipeline_own_us:>5} / {r.latency_gc_us} µs"),
        ("ClickHouse's threads in the worker: drain / latency",
         f"{r.clickhouse_cpu_us[0]:>5} / {r.clickhouse_cpu_us[1]} µs per event"),
        ("ClickHouse inserts per 1,000 events: drain / latency",
         f"{r.clickhouse_inserts_per_kevent[0]:>5} / {r.clickhouse_inserts_per_kevent[1]}"),
        ("worker peak RSS", f"{r.worker_peak_rss_mb:>12,.0f} MiB"),
        ("last session-stage save (/stats)", ""),
        *((f"  {k}", f"{v!s:>12}") for k, v in r.saves.items()),
        ("flagged / alerts", f"{r.flagged:>7,} / {r.alerts:,}"),
    ]
    if r.state_accounts:
        rows += [
            ("state: accounts / prefixes", f"{r.state_accounts:>7,} / {r.state_prefixes:,}"),
            ("state: detector process peak RSS", f"{r.state_peak_rss_mb:>12,.0f} MiB"),
            ("state: in-process engine rate", rate(r.state_events_per_s)),
        ]
    width = max(len(k) for k, _ in rows)
    out = [f"{k.ljust(width)}  {v}" for k, v in rows]
    out += [f"note: {n}" for n in r.notes]
    return "\n".join(out)
