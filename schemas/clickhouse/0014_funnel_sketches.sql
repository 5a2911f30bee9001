-- The quantile sketches of each funnel window's stage latencies (seconds), as in 0013:
-- trigger to private reply, private reply to click, click to conversion.
ALTER TABLE {db}.funnels ADD COLUMN trigger_to_reply_sketch_buckets Array(Int32), ADD COLUMN trigger_to_reply_sketch_counts Array(Int64), ADD COLUMN reply_to_click_sketch_buckets Array(Int32), ADD COLUMN reply_to_click_sketch_counts Array(Int64), ADD COLUMN click_to_conversion_sketch_buckets Array(Int32), ADD COLUMN click_to_conversion_sketch_counts Array(Int64)
