-- SOC views: the common analyst questions, identical on clickhouse-server and chDB.
-- Placeholders: {db}.
-- Plain views over the tables read with FINAL, so a retried batch or an alert
-- re-emitted with a higher version counts once. (A materialized view would see
-- every inserted block, duplicates and superseded alert versions included, and
-- would double count.) CREATE OR REPLACE keeps an existing deployment up to date.
-- JSON text is read defensively: a missing key yields NULL, '' or 0, never an error.

-- One row per flagged event / alert: the latest version.
CREATE OR REPLACE VIEW {db}.flagged_events_latest AS
SELECT * FROM {db}.flagged_events FINAL;

CREATE OR REPLACE VIEW {db}.alerts_latest AS
SELECT * FROM {db}.alerts FINAL;

-- Alerts per kind per hour (by the hour the alert was first raised).
CREATE OR REPLACE VIEW {db}.alerts_per_hour AS
SELECT
    toStartOfHour(first_seen) AS hour,
    kind,
    count() AS alerts,
    countIf(severity IN ('high', 'critical')) AS high_or_critical,
    sum(length(accounts)) AS accounts,
    round(max(score), 3) AS max_score
FROM {db}.alerts FINAL
GROUP BY hour, kind;

-- Relay evidence (vpn_relay and route_anomaly flags) with the exit prefix and the
-- RTT excess pulled out of the evidence. exit_prefix: the evidence's own value,
-- else the source address's /24 (IPv4) or /48 (IPv6). excess_ms: the evidence's
-- top-level value, else the larger of the physics and the baseline excess.
CREATE OR REPLACE VIEW {db}.relay_flags AS
WITH
    arrayFilter(
        x -> isNotNull(x),
        arrayConcat(
            [JSONExtract(evidence, 'physics', 'excess_ms', 'Nullable(Float64)')],
            arrayMap(
                lvl -> JSONExtract(lvl, 'excess_ms', 'Nullable(Float64)'),
                JSONExtractArrayRaw(evidence, 'baseline', 'levels')
            )
        )
    ) AS excess_candidates
SELECT
    event_id, ts, kind, account, session_id, src_ip, country, asn, score, alert_id, detector,
    coalesce(
        nullIf(JSONExtractString(evidence, 'exit_prefix'), ''),
        multiIf(
            isIPv4String(src_ip),
            concat(toString(tupleElement(IPv4CIDRToRange(toIPv4OrZero(src_ip), 24), 1)), '/24'),
            isIPv6String(src_ip),
            concat(toString(tupleElement(IPv6CIDRToRange(toIPv6OrZero(src_ip), 48), 1)), '/48'),
            src_ip
        )
    ) AS exit_prefix,
    coalesce(
        JSONExtract(evidence, 'excess_ms', 'Nullable(Float64)'),
        if(empty(excess_candidates), NULL, arrayMax(excess_candidates))
    ) AS excess_ms
FROM {db}.flagged_events FINAL
WHERE kind IN ('vpn_relay', 'route_anomaly');

-- Accounts with repeated relay evidence (two or more sessions).
CREATE OR REPLACE VIEW {db}.relay_repeat_accounts AS
SELECT
    account,
    uniqExact(if(session_id != '', session_id, event_id)) AS sessions,
    countIf(kind = 'vpn_relay') AS vpn_relay,
    countIf(kind = 'route_anomaly') AS route_anomaly,
    uniqExact(exit_prefix) AS exits,
    arraySort(groupUniqArray(8)(exit_prefix)) AS exit_prefixes,
    round(max(score), 3) AS max_score,
    round(max(excess_ms), 1) AS max_excess_ms,
    min(ts) AS first_seen,
    max(ts) AS last_seen
FROM {db}.relay_flags
WHERE account != ''
GROUP BY account
HAVING sessions >= 2;

-- Top relay exit prefixes.
CREATE OR REPLACE VIEW {db}.relay_exit_prefixes AS
SELECT
    exit_prefix AS prefix,
    anyHeavy(country) AS country,
    anyHeavy(asn) AS asn,
    count() AS flagged,
    countIf(kind = 'vpn_relay') AS vpn_relay,
    countIf(kind = 'route_anomaly') AS route_anomaly,
    uniqExact(account) AS accounts,
    round(max(score), 3) AS max_score,
    round(quantile(0.5)(excess_ms), 1) AS median_excess_ms,
    min(ts) AS first_seen,
    max(ts) AS last_seen
FROM {db}.relay_flags
GROUP BY prefix;

-- Farm groups with their members.
CREATE OR REPLACE VIEW {db}.farm_groups AS
SELECT
    g.alert_id AS group_id,
    JSONExtractString(g.subject, 'template') AS template,
    JSONExtractString(g.subject, 'pattern') AS pattern,
    length(g.accounts) AS members,
    arraySort(g.accounts) AS accounts,
    g.severity AS severity,
    round(g.score, 3) AS score,
    g.first_seen AS first_seen,
    g.last_seen AS last_seen,
    dateDiff('second', g.first_seen, g.last_seen) AS span_s,
    g.version AS version,
    g.summary AS summary,
    -- a room alert (groups of several partitions that share accounts) lists its parts;
    -- each part names the room it is in ('' for a room, and for a group in no room)
    JSONExtractString(g.subject, 'key') = 'room' AS is_room,
    r.room_id AS room_id
FROM (SELECT * FROM {db}.alerts FINAL WHERE kind = 'farm_group') AS g
LEFT JOIN (
    SELECT part, argMin(alert_id, first_seen) AS room_id
    FROM (
        SELECT alert_id, first_seen,
               arrayJoin(arrayConcat(JSONExtract(subject, 'parts', 'Array(String)'),
                                     JSONExtract(subject, 'rooms_absorbed', 'Array(String)'))) AS part
        FROM {db}.alerts FINAL
        WHERE kind = 'farm_group' AND JSONExtractString(subject, 'key') = 'room'
    )
    GROUP BY part
) AS r ON g.alert_id = r.part;

-- Injection cells, one row per alert, the subject unpacked.
CREATE OR REPLACE VIEW {db}.injection_cells AS
SELECT
    alert_id,
    JSONExtractUInt(subject, 'asn') AS asn,
    JSONExtractString(subject, 'as_name') AS as_name,
    JSONExtract(subject, 'ports', 'Array(UInt16)') AS ports,
    JSONExtract(subject, 'prefixes', 'Array(String)') AS prefixes,
    JSONExtractString(subject, 'hours') AS hours,
    JSONExtractString(subject, 'timezone') AS timezone,
    severity,
    round(score, 3) AS score,
    length(accounts) AS accounts,
    first_seen,
    last_seen,
    summary
FROM {db}.alerts FINAL
WHERE kind = 'injection_cell';

-- Injection cells by ASN and hour of day (the cell's local hour). The hours come
-- from the evidence's cells that have an hour (per prefix, or pooled: prefix '*'
-- for all lines, '+' for the lines found bad; all-day cells have no hour) or,
-- when an alert carries none, from the subject's hours: a list of hours, or ranges
-- such as '09–18, 20–02' (end exclusive, wrapping past midnight). Pooled and
-- per-prefix cells overlap, so per hour the view keeps the largest cell and the
-- highest lower confidence bound of the forged-answer rate, never a sum of cells.
CREATE OR REPLACE VIEW {db}.injection_cells_hourly AS
WITH
    arrayFilter(c -> JSONExtract(c, 'hour', 'Nullable(Int64)') BETWEEN 0 AND 23,
                JSONExtractArrayRaw(evidence, 'cells')) AS hour_cells,
    extractAll(JSONExtractString(subject, 'hours'), '[0-9]+') AS bounds,
    arrayMap(i -> (toUInt8(bounds[2 * i - 1]), toUInt8(bounds[2 * i])),
             range(1, intDiv(length(bounds), 2) + 1)) AS spans,
    arrayFlatten(arrayMap(
        s -> if(s.2 > s.1,
                arrayMap(h -> toUInt8(h), range(s.1, s.2)),
                arrayMap(h -> toUInt8(h), arrayConcat(range(s.1, 24), range(0, s.2)))),
        spans)) AS hours_from_ranges,
    JSONExtract(subject, 'hours', 'Array(UInt8)') AS hours_from_list,
    if(notEmpty(hour_cells),
       arrayMap(c -> (toUInt8(JSONExtractUInt(c, 'hour')), toUInt8(1), JSONExtractUInt(c, 'suspect'),
                      JSONExtractUInt(c, 'probes'), JSONExtractString(c, 'prefix'),
                      JSONExtract(c, 'rate_lower', 'Nullable(Float64)')), hour_cells),
       arrayMap(h -> (h, toUInt8(0), toUInt64(0), toUInt64(0), '', CAST(NULL, 'Nullable(Float64)')),
                if(notEmpty(hours_from_list), hours_from_list, hours_from_ranges))) AS entries
SELECT
    JSONExtractUInt(subject, 'asn') AS asn,
    anyHeavy(JSONExtractString(subject, 'as_name')) AS as_name,
    anyHeavy(JSONExtractString(subject, 'timezone')) AS timezone,
    entry.1 AS hour,
    uniqExact(alert_id) AS alerts,
    countIf(entry.2 = 1) AS cells,
    max(entry.3) AS suspect,
    argMax(entry.4, entry.3) AS probes,
    round(max(entry.6), 4) AS rate_lower,
    arraySort(groupUniqArrayIf(8)(entry.5, position(entry.5, '/') > 0)) AS prefixes,
    min(first_seen) AS first_seen,
    max(last_seen) AS last_seen
FROM {db}.alerts FINAL
ARRAY JOIN entries AS entry
WHERE kind = 'injection_cell'
GROUP BY asn, hour;
