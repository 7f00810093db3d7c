-- pathsentry ClickHouse schema. The same DDL runs on clickhouse-server and on chDB.
-- Placeholders: {db} (database), {ttl_days} (retention).
-- Idempotency: ReplacingMergeTree keyed on the natural id, plus block-level
-- deduplication of retried batches (insert_deduplication_token) kept for the last
-- 10000 blocks; query with FINAL (or the *_latest views) to see one row per id.

CREATE DATABASE IF NOT EXISTS {db};

CREATE TABLE IF NOT EXISTS {db}.flagged_events
(
    event_id     String,
    ts           DateTime64(3, 'UTC'),
    kind         LowCardinality(String),
    account      String,
    session_id   String,
    src_ip       String,
    country      LowCardinality(String),
    asn          UInt32,
    score        Float32,
    reasons      Array(String),
    evidence     String CODEC(ZSTD(3)),
    alert_id     String,
    detector     LowCardinality(String),
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(ts)
ORDER BY (kind, toStartOfHour(ts), event_id)
TTL toDateTime(ts) + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS {db}.alerts
(
    alert_id     String,
    ts           DateTime64(3, 'UTC'),
    kind         LowCardinality(String),
    severity     LowCardinality(String),
    score        Float32,
    subject      String,
    accounts     Array(String),
    event_ids    Array(String),
    evidence     String CODEC(ZSTD(3)),
    summary      String,
    detector     LowCardinality(String),
    first_seen   DateTime64(3, 'UTC'),
    last_seen    DateTime64(3, 'UTC'),
    version      UInt32,
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(first_seen)
ORDER BY (kind, alert_id)
TTL toDateTime(last_seen) + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;
