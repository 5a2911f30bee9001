-- Deduplicated conversation metrics: the highest revision of every key. Dashboards read this.
CREATE VIEW IF NOT EXISTS {db}.conversations_final AS
SELECT
    account_id, content_id, window_kind, window_start_ms, window_end_ms, revision,
    inbound, answered, inbound_comments, answered_comments, inbound_story_replies, inbound_dms,
    response_rate, median_response_s, p90_response_s, median_first_response_s,
    root_comments, reply_comments, thread_depth, reply_share, emitted_at_ms, window_start
FROM {db}.conversations FINAL
