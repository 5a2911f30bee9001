-- Dead letters, re-keyed so that one is never mirrored twice (ReplacingMergeTree; read with
-- FINAL). A dead letter's identity:
-- * one naming its input record (stream and sink: `source`, `source_partition`,
--   `source_offset`) is that record's, per stage and reason: the sink dead-lettering a row
--   again after a restart makes a second record on the topic, and the same row here;
-- * one without (ingest's, from an HTTP request) is its own position on the dead-letter topic
--   (`dlq_partition`, `dlq_offset`), which the sink records.
-- Rows from before this migration have no topic position (-1): their content tells them apart.
-- `banter migrate` rebuilds the table from 0003's (copy, swap, copy what the sink wrote
-- meanwhile, drop), each step safe to repeat after a crash.
CREATE TABLE IF NOT EXISTS {db}.{table} (
    stage {lc_string},
    reason {lc_string},
    detail String,
    source String,
    source_partition Int32,
    source_offset Int64,
    account_id String,
    payload String,
    failed_at_ms Int64,
    dlq_partition Int32 DEFAULT -1,
    dlq_offset Int64 DEFAULT -1,
    failed_at {datetime} MATERIALIZED {to_datetime}(failed_at_ms),
    record_key UInt64 MATERIALIZED if(source_offset >= 0, 0, cityHash64(dlq_partition, dlq_offset, failed_at_ms, detail, payload))
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(toDateTime(intDiv(failed_at_ms, 1000)))
ORDER BY (stage, reason, source, source_partition, source_offset, record_key)
