-- Deduplicated rollups: the highest revision of every key, whether or not ClickHouse has
-- merged the parts yet. Dashboards read this view.
CREATE VIEW IF NOT EXISTS {db}.rollups_final AS
SELECT
    account_id, content_id, window_kind, window_start_ms, window_end_ms, revision,
    interactions, comments, live_comments, reactions, shares, story_replies, dms_in, mentions,
    brand_replies, velocity, early_accel, time_to_n_minutes, unique_engagers, late_events,
    emitted_at_ms, window_start, window_end, emitted_at
FROM {db}.rollups FINAL
