"""Configuration: ``pathsentry.toml`` plus environment overrides.

Environment variables win over the file:

- ``PATHSENTRY_CONFIG``: path of the TOML file (default ``./pathsentry.toml`` if present)
- ``PATHSENTRY_KAFKA_URL``: ``kafka://host:port[,host:port]`` or ``embedded``
- ``PATHSENTRY_CLICKHOUSE_URL``: ``clickhouse://user:pass@host:9000/db`` or ``chdb:///dir``
- ``PATHSENTRY_TOPIC_PREFIX``: prefix for every topic name
- ``PATHSENTRY_GEO``: comma-separated geo sources (``csv:FILE``, ``mmdb:FILE``, ``bundled``)

>>> cfg = load_config(text='home_countries = ["KR"]\\n[[server]]\\nid = "kr-sel-1"\\n'
...                        'lat = 37.57\\nlon = 126.98\\ncountry = "KR"\\n', env={})
>>> cfg.server("kr-sel-1").country, cfg.kafka.url
('KR', 'embedded')
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pathsentry.infra.redact import redact_url

__all__ = [
    "AllowEntry",
    "ClickHouseConfig",
    "Config",
    "ConfigError",
    "KafkaConfig",
    "Origin",
    "Server",
    "load_config",
]


class ConfigError(ValueError):
    """A configuration that cannot be taken. The message names the file and the key
    and says why, never the value given (it may be a secret).

    >>> load_config(text="[kafka]\\nsasl_password = 12345\\n", env={})
    Traceback (most recent call last):
    ...
    pathsentry.config.ConfigError: kafka.sasl_password: Input should be a valid string
    """


def _refusal(e: ValidationError) -> str:
    """What a validation error refused, each key and reason, without the values given."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
                     for err in e.errors(include_input=False, include_url=False))


class _UrlRedacted(BaseModel):
    """A model whose ``url`` field shows in reprs without its password."""

    def __repr_args__(self) -> Any:
        for k, v in super().__repr_args__():
            yield k, (redact_url(v) if k == "url" and isinstance(v, str) else v)


class Server(BaseModel):
    """A game server; also a vantage point for ``rtt_probe`` and traceroutes."""

    model_config = ConfigDict(frozen=True)

    id: str
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    country: str = Field(min_length=2, max_length=2)
    city: str = ""


class Origin(BaseModel):
    """What a genuine answer from ``host`` looks like (connection integrity)."""

    model_config = ConfigDict(frozen=True)

    host: str
    expect_status: int | None = None
    expect_ws_status: int | None = 101
    expect_server: str | None = None
    expect_headers: list[str] = Field(default_factory=list)
    expect_body_sha256: str | None = None


class AllowEntry(BaseModel):
    """A legitimate relay or datacenter range whose latency signature is expected."""

    model_config = ConfigDict(frozen=True)

    cidr: str
    reason: str

    @field_validator("cidr")
    @classmethod
    def _valid_cidr(cls, v: str) -> str:
        ipaddress.ip_network(v, strict=False)
        return v


class KafkaConfig(_UrlRedacted):
    url: str = "embedded"
    topic_prefix: str = ""
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    session_timeout_s: float = 6.0
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = Field(default=None, repr=False)
    ssl_cafile: str | None = None
    #: how long a stage holds events for a silent upstream partition (its worker is being
    #: replaced) before it releases them out of order
    watermark_max_hold_s: float = Field(default=30.0, gt=0)
    #: longest a fetch waits at the broker for data. A broker answers as soon as data
    #: arrives, but some (the embedded one, with several partitions per fetch) only at
    #: the end of the wait: it is then a floor on every hop's latency.
    fetch_max_wait_ms: int = Field(default=50, ge=1, le=10_000)
    #: how long a stage's agent waits for more envelopes after each batch before it runs
    #: what it has (unless ``batch_size // 100`` envelopes arrived; at most
    #: ``[clickhouse] flush_interval_s``). Faust's take waits this long even with envelopes
    #: already buffered, so at a moderate rate it is added to each hop through an internal
    #: topic; 10 ms cut the stages' latency at 2,000 events/s (README, "One event's path").
    stage_take_wait_ms: int = Field(default=50, ge=1, le=10_000)
    #: how often consumed offsets are committed, by the ingest loop and the stages: a
    #: worker that dies re-reads at most about this much more (delivery is at-least-once
    #: either way), and each commit costs the broker and the loop a round trip
    commit_interval_s: float = Field(default=0.5, gt=0, le=60)
    #: events a worker may have sent to its own internal partitions that its stages have
    #: not received yet. Above it the ingest loop waits: memory and the queueing delay stay
    #: bounded when the producers are ahead.
    max_in_flight: int = Field(default=20_000, ge=1)

    @property
    def bootstrap(self) -> str:
        """``host:port[,host:port]`` for aiokafka (scheme stripped)."""
        return self.url.split("://", 1)[-1]

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"


class ClickHouseConfig(_UrlRedacted):
    url: str = "chdb://./var/chdb"
    batch_size: int = Field(default=5000, ge=1)
    flush_interval_s: float = Field(default=1.0, gt=0)
    ttl_days: int = Field(default=180, ge=1)
    #: rows (flags + alerts) a worker holds while ClickHouse is slow or down; the stages keep
    #: detecting and publishing alerts until this many wait, then pause (back-pressure)
    buffer_rows: int = Field(default=50_000, ge=1)
    #: least time between two inserts of a worker's outbox (s): rows queued meanwhile join the
    #: next insert. Each insert costs ClickHouse a new part and its background merges whatever
    #: its size, so small batches at a moderate rate cost far more per row than large ones;
    #: a flag or alert waits at most this long more to be stored (0: insert as soon as a
    #: stage batch is done)
    min_insert_interval_s: float = Field(default=0.25, ge=0, le=60)
    #: limits of one analyst query (``/query``, ``pathsentry query``), enforced by the engine
    #: on a read-only connection of its own: wall time, rows returned, memory
    query_max_execution_time_s: float = Field(default=10.0, gt=0, le=3600)
    query_max_result_rows: int = Field(default=100_000, ge=1)
    query_max_memory_mib: int = Field(default=1024, ge=16)


class WorkerConfig(BaseModel):
    #: every this many seconds the worker moves every live object out of the garbage
    #: collector's way (``gc.freeze``), and Python's automatic collections are off: no
    #: collection walks the detectors' state or the events held. Reference counting frees
    #: everything but cyclic garbage. 0 leaves Python's generational collector as is.
    gc_freeze_interval_s: float = Field(default=1.0, ge=0)
    #: every this many seconds one full collection over everything (frees the cyclic
    #: garbage); its pause grows with the state
    gc_full_interval_s: float = Field(default=3600.0, gt=0)
    #: ...or as soon as the resident memory has grown this much since the last one
    gc_full_growth_mib: float = Field(default=256.0, gt=0)
    #: ...or, when larger, this share of what it was at the last one (a full collection
    #: walks everything alive: growth proportional to the heap keeps its cost per byte
    #: allocated bounded, as Go's ``GOGC=100`` does)
    gc_full_growth_ratio: float = Field(default=1.0, ge=0)
    #: ...or at the first idle second (no event read since the last tick) once the memory
    #: has grown by this share of that valve: the pause falls where no event waits for it
    #: (0: only the valve and the interval)
    gc_idle_growth_share: float = Field(default=0.25, ge=0, le=1)
    #: the session stage's learned state (baselines, model, account histories) is saved to
    #: the snapshot file and to ``l:0`` of the state topic about this often while it
    #: changes: a worker killed with SIGKILL loses at most about this much learning
    learned_save_interval_s: float = Field(default=30.0, gt=0, le=3600)
    #: ...the first time as soon as the session stage has run this many events (warm-up)
    learned_warmup_events: int = Field(default=2000, ge=1)
    #: ...an interval's save is skipped while fewer events than this were run since the last
    learned_save_min_events: int = Field(default=100, ge=1)
    #: ...and a save comes sooner once this many events were run since the last one
    learned_save_burst_events: int = Field(default=100_000, ge=1)
    #: ...but never within this many seconds of the last one (bounds the cost on the loop)
    learned_save_min_gap_s: float = Field(default=5.0, ge=0)
    #: those periodic saves (snapshot file and ``l:0``) are built, serialised and
    #: compressed in a forked child process, a copy-on-write image of the worker at the
    #: save's instant, while the event loop goes on; false (or no ``os.fork``, or too
    #: little free memory for the child): on the event loop, which stalls every event
    save_in_child: bool = True
    #: ...a child still running after this many seconds is killed (the save is counted as
    #: failed; the next one forks again)
    save_child_timeout_s: float = Field(default=60.0, gt=0)


class Config(BaseModel):
    """The whole configuration; ``detectors`` holds per-detector threshold tables."""

    model_config = ConfigDict(frozen=True)

    home_countries: list[str] = Field(default_factory=lambda: ["KR"])
    servers: list[Server] = Field(default_factory=list, alias="server")
    origins: list[Origin] = Field(default_factory=list, alias="origin")
    allow: list[AllowEntry] = Field(default_factory=list)
    geo: list[str] = Field(default_factory=lambda: ["bundled"])
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    clickhouse: ClickHouseConfig = Field(default_factory=ClickHouseConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    detectors: dict[str, dict[str, Any]] = Field(default_factory=dict)
    data_dir: str = "./var"
    source_path: str | None = None

    @cached_property
    def _servers(self) -> dict[str, Server]:
        return {s.id: s for s in self.servers}

    @cached_property
    def _origins(self) -> dict[str, Origin]:
        return {o.host.lower(): o for o in self.origins}

    def server(self, server_id: str) -> Server | None:
        return self._servers.get(server_id)

    def origin(self, host: str) -> Origin | None:
        return self._origins.get(host.lower())

    def detector_settings(self, name: str) -> dict[str, Any]:
        return dict(self.detectors.get(name, {}))

    def resolve_path(self, p: str) -> str:
        """Resolve a path relative to the config file's directory."""
        if self.source_path is None or os.path.isabs(p):
            return p
        return str(Path(self.source_path).parent / p)


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    kafka = dict(data.get("kafka", {}))
    ch = dict(data.get("clickhouse", {}))
    if env.get("PATHSENTRY_KAFKA_URL"):
        kafka["url"] = env["PATHSENTRY_KAFKA_URL"]
    if "PATHSENTRY_TOPIC_PREFIX" in env:
        kafka["topic_prefix"] = env["PATHSENTRY_TOPIC_PREFIX"]
    for key in ("sasl_username", "sasl_password", "sasl_mechanism", "security_protocol"):
        envkey = f"PATHSENTRY_KAFKA_{key.upper()}"
        if env.get(envkey):
            kafka[key] = env[envkey]
    if env.get("PATHSENTRY_CLICKHOUSE_URL"):
        ch["url"] = env["PATHSENTRY_CLICKHOUSE_URL"]
    if env.get("PATHSENTRY_GEO"):
        data["geo"] = [s.strip() for s in env["PATHSENTRY_GEO"].split(",") if s.strip()]
    if env.get("PATHSENTRY_DATA_DIR"):
        data["data_dir"] = env["PATHSENTRY_DATA_DIR"]
    data["kafka"] = kafka
    data["clickhouse"] = ch
    return data


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    text: str | None = None,
    env: Mapping[str, str] | None = None,
    geo: list[str] | None = None,
) -> Config:
    """Load the config from ``path`` (or ``text``), then apply environment overrides.

    ``geo`` (e.g. from ``--geo FILE``) is stacked in front of the configured sources.
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    source: str | None = None
    if text is not None:
        data = tomllib.loads(text)
    else:
        candidate = path or env.get("PATHSENTRY_CONFIG")
        if candidate is None and Path("pathsentry.toml").exists():
            candidate = "pathsentry.toml"
        if candidate is not None:
            source = str(Path(candidate).resolve())
            try:
                with open(candidate, "rb") as fh:
                    data = tomllib.load(fh)
            except OSError as e:
                raise ConfigError(f"{candidate}: cannot be read ({e.strerror})") from None
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"{candidate}: not TOML ({e})") from None
    data = _apply_env(data, env)
    data["source_path"] = source
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError((f"{source}: " if source else "") + _refusal(e)) from None
    if geo:
        extra = [g if ":" in g or g == "bundled" else _guess_geo_kind(g) for g in geo]
        cfg = cfg.model_copy(update={"geo": extra + [g for g in cfg.geo if g not in extra]})
    return cfg


def _guess_geo_kind(p: str) -> str:
    return f"mmdb:{p}" if p.endswith(".mmdb") else f"csv:{p}"
