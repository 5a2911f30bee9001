-- A mirror of banter.dlq.v1 so that analysts see rejected input next to the rollups.
CREATE TABLE IF NOT EXISTS {db}.dead_letters (
    stage {lc_string},
    reason {lc_string},
    detail String,
    source String,
    source_partition Int32,
    source_offset Int64,
    account_id String,
    payload String,
    failed_at_ms Int64,
    failed_at {datetime} MATERIALIZED {to_datetime}(failed_at_ms)
) ENGINE = MergeTree
PARTITION BY toYYYYMM(toDateTime(intDiv(failed_at_ms, 1000)))
ORDER BY (stage, reason, failed_at_ms)
