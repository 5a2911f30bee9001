-- Dead-letter payloads are emptied when they are older than
-- clickhouse.retention.dead_letter_payload_days (a column TTL, or on servers without TTL an
-- `ALTER … UPDATE payload = ''`). ClickHouse refuses to change a column that a MATERIALIZED
-- sorting-key column is computed from, so record_key becomes a DEFAULT: computed the same way
-- when a row is inserted, and kept when the payload is emptied later (a dead letter mirrored
-- again from the topic still has the same key).
ALTER TABLE {db}.dead_letters MODIFY COLUMN record_key UInt64 DEFAULT if(source_offset >= 0, 0, cityHash64(dlq_partition, dlq_offset, failed_at_ms, detail, payload))
