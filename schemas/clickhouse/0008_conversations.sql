-- Conversation metrics from banter.rollups.v1 (ConversationRollup records), per account
-- (content_id '') and per post, per HOUR / DAY window of the inbound items. Updates re-emit a
-- window with a higher revision; read through conversations_final (FINAL) or argMax(…, revision).
CREATE TABLE IF NOT EXISTS {db}.conversations (
    account_id {lc_string},
    content_id String,
    window_kind {lc_string},
    window_start_ms Int64,
    window_end_ms Int64,
    revision Int64,
    inbound Int64,
    answered Int64,
    inbound_comments Int64,
    answered_comments Int64,
    inbound_story_replies Int64,
    inbound_dms Int64,
    response_rate Nullable(Float64),
    median_response_s Nullable(Float64),
    p90_response_s Nullable(Float64),
    median_first_response_s Nullable(Float64),
    root_comments Int64,
    reply_comments Int64,
    thread_depth Nullable(Float64),
    reply_share Nullable(Float64),
    emitted_at_ms Int64,
    window_start {datetime} MATERIALIZED {to_datetime}(window_start_ms){check:window_end_ms >= window_start_ms:window ends before it starts}
) ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYYYYMM(toDateTime(intDiv(window_start_ms, 1000)))
ORDER BY (account_id, window_kind, content_id, window_start_ms)
