//! `clickhouse.cluster` on the local stack's replicated cluster: ZooKeeper and two ClickHouse
//! servers, the two replicas of one shard of `banter_cluster` (`scripts/stack.sh up zookeeper
//! clickhouse-1 clickhouse-2`). `banter migrate` makes replicated tables with Distributed
//! tables over them `ON CLUSTER`; the pipeline writes through replica 1 while replica 2 is
//! stopped and started again; both replicas then read every metric equal to the generator's
//! truth. (Own test binary: it stops a replica.)

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use banter::Config;
use banter_sink::clickhouse::{connect, ClickHouse};
use banter_testkit::*;

/// Starts replica 2 again when dropped, so a failed test does not leave it down.
struct ReplicaBack;
impl Drop for ReplicaBack {
    fn drop(&mut self) {
        stack(&["up", "clickhouse-2"]);
    }
}

async fn on_replica(cfg: &Config, n: u8) -> ClickHouse {
    let mut c = cfg.clickhouse.clone();
    c.url = replica_url(n);
    connect(&c, Duration::from_secs(15)).await.unwrap_or_else(|e| {
        panic!("cluster replica {n} is not up: {e} (scripts/stack.sh up zookeeper clickhouse-1 clickhouse-2)")
    })
}

async fn count(ch: &ClickHouse, sql: &str) -> u64 {
    ch.client
        .query(sql)
        .fetch_one()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_while_the_pipeline_writes_catches_up_and_both_read_the_truth() {
    let mut cfg = fresh_pipeline_config("cluster").await;
    cfg.clickhouse.url = replica_url(1);
    cfg.clickhouse.cluster = CLUSTER.into();
    cfg.clickhouse.database = unique("cluster");
    let db = cfg.clickhouse.database.clone();
    let dir = test_dir("banter-cluster");
    migrate(&cfg);
    let (one, two) = (on_replica(&cfg, 1).await, on_replica(&cfg, 2).await);
    for ch in [&one, &two] {
        let engines: Vec<(String, String)> = ch
            .client
            .query("SELECT name, engine FROM system.tables WHERE database = ? AND name IN ('rollups', 'rollups_local', 'dead_letters_local', 'banter_migrations') ORDER BY name")
            .bind(&db)
            .fetch_all()
            .await
            .unwrap();
        assert_eq!(
            engines,
            [
                ("banter_migrations", "ReplicatedMergeTree"),
                ("dead_letters_local", "ReplicatedReplacingMergeTree"),
                ("rollups", "Distributed"),
                ("rollups_local", "ReplicatedReplacingMergeTree"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned())),
        );
    }

    // About 25 s of input: rows keep coming while replica 2 is down.
    let gen = generate(&cfg, &dir, 200);
    let stream = start_role(&cfg, "stream", "stream", &dir);
    let sink = start_role(&cfg, "sink", "sink", &dir);
    wait_for(
        "the first rows on both replicas",
        Duration::from_secs(90),
        || async {
            let a = count(&one, "SELECT count() FROM rollups_local").await;
            let b = count(&two, "SELECT count() FROM rollups_local").await;
            (a > 100 && b > 0).then_some(())
        },
    )
    .await;

    let back = ReplicaBack;
    tokio::task::spawn_blocking(|| stack(&["down", "clickhouse-2"]))
        .await
        .unwrap();
    let down_at = Instant::now();
    let before = count(&one, "SELECT count() FROM rollups_local").await;
    // The pipeline keeps writing through replica 1, and `banter migrate` of the up-to-date
    // database does not wait for the missing replica.
    migrate(&cfg);
    wait_for(
        "rows written while replica 2 is down",
        Duration::from_secs(60),
        || async {
            let now = count(&one, "SELECT count() FROM rollups_local").await;
            (now > before + 100).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(down_at.elapsed())).await;
    drop(back); // replica 2 up again
    finish(gen, "banter generate");

    // Both replicas read the truth: replica 2 fetched what it missed.
    clickhouse_match(&one, &dir, Duration::from_secs(180)).await;
    clickhouse_match(&two, &dir, Duration::from_secs(180)).await;
    for table in [
        "rollups",
        "funnels",
        "conversations",
        "alerts",
        "dead_letters",
    ] {
        let sql = format!("SELECT count() FROM {table}_local");
        wait_for(
            &format!("the same {table} rows on both replicas"),
            Duration::from_secs(60),
            || async { (count(&one, &sql).await == count(&two, &sql).await).then_some(()) },
        )
        .await;
    }
    // Rows retried by the sink are one row when read (every revision of a key on one shard).
    let doubled = count(
        &two,
        "SELECT count() FROM (SELECT account_id, content_id, window_kind, window_start_ms, count() AS n \
         FROM rollups FINAL GROUP BY account_id, content_id, window_kind, window_start_ms HAVING n > 1)",
    )
    .await;
    assert_eq!(doubled, 0, "a key read twice through FINAL");
    stop(sink);
    stop(stream);
    one.client
        .query(&format!(
            "DROP DATABASE IF EXISTS {db} ON CLUSTER {CLUSTER}"
        ))
        .execute()
        .await
        .unwrap();
}
