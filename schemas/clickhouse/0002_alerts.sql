-- Spike alerts from banter.alerts.v1: one row per state change (FIRING, RESOLVED) and
-- revision. Read the latest state of an alert with `LIMIT 1 BY alert_id` after
-- `ORDER BY revision DESC`.
CREATE TABLE IF NOT EXISTS {db}.alerts (
    alert_id String,
    state {lc_string},
    account_id {lc_string},
    content_id String,
    window_start_ms Int64,
    window_end_ms Int64,
    observed Int64,
    baseline_mean Float64,
    baseline_stddev Float64,
    z_score Float64,
    started_at_ms Int64,
    ended_at_ms Nullable(Int64),
    revision Int64,
    emitted_at_ms Int64,
    window_start {datetime} MATERIALIZED {to_datetime}(window_start_ms),
    started_at {datetime} MATERIALIZED {to_datetime}(started_at_ms)
) ENGINE = MergeTree
PARTITION BY toYYYYMM(toDateTime(intDiv(window_start_ms, 1000)))
ORDER BY (account_id, alert_id, revision)
