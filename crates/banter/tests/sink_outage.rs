//! ClickHouse stopped for 30 s in the middle of a run: the sink retries with backoff, holds
//! its batch and commits nothing; after ClickHouse is back the deduplicated rows are the same
//! as without the outage — none lost, none doubled. (Own test binary: it stops ClickHouse.)

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use banter_testkit::*;

/// Starts ClickHouse again when dropped, so a failed test does not leave it down.
struct ClickHouseBack;
impl Drop for ClickHouseBack {
    fn drop(&mut self) {
        stack(&["up", "clickhouse"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_down_for_30_s_loses_and_doubles_nothing() {
    let mut cfg = fresh_pipeline_config("sink-outage").await;
    let db = fresh_database(&cfg).await;
    cfg.clickhouse.database = db.name.clone();
    let dir = test_dir("banter-sink-outage");
    migrate(&cfg);
    // Paced to about 33 s of input, so most of it arrives while ClickHouse is down.
    let mut gen = generate(&cfg, &dir, 150);
    let stream = start_role(&cfg, "stream", "stream", &dir);
    let sink = start_role(&cfg, "sink", "sink", &dir);
    wait_for(
        "the first rows in ClickHouse",
        Duration::from_secs(60),
        || async {
            let n = clickhouse_rollups(&db.ch).await.len();
            (n > 0).then_some(())
        },
    )
    .await;
    if let Some(status) = gen.exited_within(Duration::ZERO) {
        panic!(
            "the generator ended ({status}) before ClickHouse went down: the outage would meet \
             no input (its log: {})",
            dir.join("generate.log").display()
        );
    }

    let back = ClickHouseBack;
    tokio::task::spawn_blocking(|| stack(&["down", "clickhouse"]))
        .await
        .unwrap();
    let down_at = Instant::now();
    // Input keeps flowing and the stream keeps emitting while ClickHouse is away.
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(down_at.elapsed())).await;
    drop(back); // up again
    finish(gen, "banter generate");

    clickhouse_match(&db.ch, &dir, Duration::from_secs(180)).await;
    let log = std::fs::read_to_string(dir.join("sink.log")).unwrap();
    assert!(
        log.contains("insert failed; retrying"),
        "the sink saw no failure while ClickHouse was down:\n{log}"
    );
    // Batches retried after the outage may be in the table twice, always with identical
    // values for a key and revision: deduplicated reads are unaffected.
    let conflicting: u64 = db
        .ch
        .client
        .query(
            "SELECT count() FROM (SELECT account_id, content_id, window_kind, window_start_ms, \
             revision, uniqExact(interactions, late_events) AS n FROM rollups \
             GROUP BY account_id, content_id, window_kind, window_start_ms, revision HAVING n > 1)",
        )
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        conflicting, 0,
        "two different rows with the same key and revision"
    );
    stop(sink);
    stop(stream);
    db.drop_now(&cfg).await;
}
