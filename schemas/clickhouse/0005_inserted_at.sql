-- When ClickHouse received each row: measures event-to-visible latency
-- (inserted_at - window_end for windows closed by live traffic).
ALTER TABLE {db}.rollups ADD COLUMN inserted_at DateTime DEFAULT now()
