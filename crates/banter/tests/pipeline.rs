//! The whole pipeline as processes against the real broker and ClickHouse: generated
//! workload → `banter stream` → `banter sink` → ClickHouse, deduplicated rows equal to the
//! generator's expected aggregates; a row ClickHouse rejects goes to the dead-letter topic
//! with ClickHouse's error and does not block the others.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::time::Duration;

use banter_integration::*;
use banter_model::{AvroRecord, DeadLetter, Rollup, WindowKind};
use common::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_workload_lands_in_clickhouse_as_expected() {
    let mut cfg = fresh_pipeline_config("pipeline").await;
    let db = fresh_database(&cfg).await;
    cfg.clickhouse.database = db.name.clone();
    let dir = test_dir("banter-pipeline");
    migrate(&cfg);
    migrate(&cfg); // re-runnable
    finish(generate(&cfg, &dir, 0), "banter generate");
    let stream = start_role(&cfg, "stream", "stream", &dir);
    let sink = start_role(&cfg, "sink", "sink", &dir);
    let rows = clickhouse_matches(&db.ch, &dir, Duration::from_secs(120)).await;
    // Corrections are in ClickHouse as revisions; reading through FINAL shows the last.
    assert!(rows.values().any(|r| r.late_events > 0), "late corrections");
    assert!(rows
        .values()
        .all(|r| r.unique_engagers.is_some_and(|n| n >= 0)));
    stop(sink);
    stop(stream);
    db.drop_now(&cfg).await;
}

fn rollup(account: &str, start: i64, end: i64, revision: i64) -> Rollup {
    Rollup {
        account_id: account.into(),
        content_id: None,
        window: WindowKind::Minute,
        window_start: start,
        window_end: end,
        revision,
        interactions: 3,
        comments: 3,
        live_comments: 0,
        reactions: 0,
        shares: 0,
        story_replies: 0,
        dms_in: 0,
        mentions: 0,
        brand_replies: 0,
        velocity: None,
        early_accel: None,
        time_to_n_minutes: None,
        unique_engagers: Some(2),
        late_events: 0,
        emitted_at: end + 60_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_row_is_dead_lettered_and_the_others_land() {
    let mut cfg = fresh_pipeline_config("sink-reject").await;
    let db = fresh_database(&cfg).await;
    cfg.clickhouse.database = db.name.clone();
    let dir = test_dir("banter-sink-reject");
    migrate(&cfg);
    // 20 good rows and one whose window ends before it starts, which the table refuses.
    let t0 = 1_795_000_000_000i64;
    let producer: FutureProducer = banter_runtime::kafka::producer(&cfg.kafka, "test").unwrap();
    let mut rows: Vec<Rollup> = (0..20)
        .map(|i| rollup("acct-ok", t0 + i * 60_000, t0 + (i + 1) * 60_000, i))
        .collect();
    rows.insert(7, rollup("acct-bad", t0, t0 - 60_000, 1));
    for r in &rows {
        let bytes = Rollup::codec().encode(r).unwrap();
        producer
            .send(
                FutureRecord::to(&cfg.kafka.topics.rollups)
                    .key(&r.account_id)
                    .payload(&bytes),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let sink = start_role(&cfg, "sink", "sink", &dir);
    let dlq = consume(&cfg, &cfg.kafka.topics.dlq, 1, Duration::from_secs(60)).await;
    let dl = DeadLetter::codec()
        .decode(dlq[0].payload().unwrap())
        .unwrap();
    assert_eq!(dl.reason, "rejected");
    assert!(
        dl.detail.contains("Code: 395") || dl.detail.contains("Code: 469"),
        "ClickHouse's error text: {}",
        dl.detail
    );
    assert_eq!(dl.account_id.as_deref(), Some("acct-bad"));
    assert_eq!(Rollup::codec().decode(&dl.payload).unwrap(), rows[7]);
    let good = wait_for(
        "the 20 good rows in ClickHouse",
        Duration::from_secs(60),
        || async {
            let rows = clickhouse_rollups(&db.ch).await;
            (rows.len() == 20).then_some(rows)
        },
    )
    .await;
    assert!(good.keys().all(|k| k.0 == "acct-ok"));
    // The dead letter is mirrored into ClickHouse too.
    wait_for(
        "the dead letter in ClickHouse",
        Duration::from_secs(60),
        || async {
            let n: u64 = db
                .ch
                .client
                .query("SELECT count() FROM dead_letters WHERE reason = 'rejected'")
                .fetch_one()
                .await
                .unwrap();
            (n == 1).then_some(())
        },
    )
    .await;
    stop(sink);
    db.drop_now(&cfg).await;
}
