-- Deduplicated funnels: the highest revision of every (campaign, window). Dashboards read this.
CREATE VIEW IF NOT EXISTS {db}.funnels_final AS
SELECT
    account_id, campaign_id, window_kind, window_start_ms, window_end_ms, revision,
    triggered, private_reply_sent, dm_read, engaged, link_clicked, converted,
    conversion_value, currency, median_trigger_to_reply_s, median_reply_to_click_s,
    median_click_to_conversion_s, emitted_at_ms, window_start
FROM {db}.funnels FINAL
