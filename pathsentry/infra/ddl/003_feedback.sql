-- What the game published back (contract v1.1 labels) and how often each detector was
-- right about the accounts it flagged. Placeholders: {db}, {ttl_days}.

-- One row per account_label event (the worker stores every label it ingests).
CREATE TABLE IF NOT EXISTS {db}.account_labels
(
    event_id      String,
    ts            DateTime64(3, 'UTC'),
    account       String,
    label         LowCardinality(String),
    source        LowCardinality(String),
    evidence_ref  String,
    inserted_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(ts)
ORDER BY (account, event_id)
TTL toDateTime(ts) + INTERVAL {ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 10000;

-- The latest label of each account (the newest ts wins).
CREATE OR REPLACE VIEW {db}.account_labels_latest AS
SELECT
    account,
    argMax(label, t) AS label,
    argMax(source, t) AS source,
    max(t) AS ts
FROM (SELECT account, label, source, ts AS t FROM {db}.account_labels FINAL)
GROUP BY account;

-- Measured precision online: per detector and alert kind, the accounts its alerts named
-- (latest alert versions) and how many of them were labelled after the alert was first
-- raised: bad (bot, farm, fraud, takeover) or cleared (an analyst's "the alert was wrong").
-- precision = bad / (bad + cleared): the share of judged accounts the detector was right
-- about; NULL while none is judged. An account's latest label decides.
CREATE OR REPLACE VIEW {db}.detector_feedback AS
WITH flagged AS (
    SELECT detector, kind, account, min(first_seen) AS first_flagged
    FROM {db}.alerts FINAL
    ARRAY JOIN accounts AS account
    GROUP BY detector, kind, account
)
SELECT
    f.detector AS detector,
    f.kind AS kind,
    count() AS flagged_accounts,
    countIf(l.label IN ('bot', 'farm', 'fraud', 'takeover') AND l.ts >= f.first_flagged)
        AS labelled_bad,
    countIf(l.label = 'cleared' AND l.ts >= f.first_flagged) AS cleared,
    labelled_bad + cleared AS judged,
    if(judged = 0, NULL, round(labelled_bad / judged, 4)) AS precision,
    round(labelled_bad / flagged_accounts, 4) AS bad_share,
    round(cleared / flagged_accounts, 4) AS cleared_share
FROM flagged AS f
LEFT JOIN {db}.account_labels_latest AS l ON f.account = l.account
GROUP BY f.detector, f.kind;
