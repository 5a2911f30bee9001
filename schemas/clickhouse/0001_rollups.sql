-- Rollups from banter.rollups.v1. A correction re-emits the same key with a higher revision;
-- ReplacingMergeTree(revision) keeps the highest one at merge time, and `FINAL` (or the
-- rollups_final view) reads deduplicated values before merges happen.
-- content_id is '' for account-level rows (sorting keys cannot be Nullable on 18.16).
CREATE TABLE IF NOT EXISTS {db}.rollups (
    account_id {lc_string},
    content_id String,
    window_kind {lc_string},
    window_start_ms Int64,
    window_end_ms Int64,
    revision Int64,
    interactions Int64,
    comments Int64,
    live_comments Int64,
    reactions Int64,
    shares Int64,
    story_replies Int64,
    dms_in Int64,
    mentions Int64,
    brand_replies Int64,
    velocity Nullable(Float64),
    early_accel Nullable(Float64),
    time_to_n_minutes Nullable(Float64),
    unique_engagers Nullable(Int64),
    late_events Int64,
    emitted_at_ms Int64,
    window_start {datetime} MATERIALIZED {to_datetime}(window_start_ms),
    window_end {datetime} MATERIALIZED {to_datetime}(window_end_ms),
    emitted_at {datetime} MATERIALIZED {to_datetime}(emitted_at_ms){check:window_end_ms >= window_start_ms:window ends before it starts}
) ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYYYYMM(toDateTime(intDiv(window_start_ms, 1000)))
ORDER BY (account_id, window_kind, content_id, window_start_ms)
