-- CTA funnels from banter.rollups.v1 (FunnelRollup records): distinct (actor, campaign) per
-- stage, per campaign and HOUR / DAY window. Corrections re-emit a window with a higher
-- revision; read through funnels_final (FINAL) or argMax(…, revision).
CREATE TABLE IF NOT EXISTS {db}.funnels (
    account_id {lc_string},
    campaign_id {lc_string},
    window_kind {lc_string},
    window_start_ms Int64,
    window_end_ms Int64,
    revision Int64,
    triggered Int64,
    private_reply_sent Int64,
    dm_read Int64,
    engaged Int64,
    link_clicked Int64,
    converted Int64,
    conversion_value Float64,
    currency Nullable(String),
    median_trigger_to_reply_s Nullable(Float64),
    median_reply_to_click_s Nullable(Float64),
    median_click_to_conversion_s Nullable(Float64),
    emitted_at_ms Int64,
    window_start {datetime} MATERIALIZED {to_datetime}(window_start_ms){check:window_end_ms >= window_start_ms:window ends before it starts}
) ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYYYYMM(toDateTime(intDiv(window_start_ms, 1000)))
ORDER BY (account_id, campaign_id, window_kind, window_start_ms)
