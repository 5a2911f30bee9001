-- Alerts, re-keyed so that a batch the sink inserts again after a crash between its insert and
-- its offset commit is not doubled: ReplacingMergeTree on the record's identity (an alert's id
-- and revision; FIRING is revision 1, RESOLVED 2). Read with FINAL for exact counts before
-- merges happen. `banter migrate` rebuilds the table from 0002's (copy, swap, copy what the
-- sink wrote meanwhile, drop), each step safe to repeat after a crash.
CREATE TABLE IF NOT EXISTS {db}.{table} (
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
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(toDateTime(intDiv(window_start_ms, 1000)))
ORDER BY (account_id, alert_id, revision)
