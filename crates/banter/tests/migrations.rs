//! `banter migrate`'s bookkeeping against the local ClickHouse (18.16): the lock, the
//! checksums of applied migrations, and retention on a server without TTL.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use banter_sink::config::RetentionConfig;
use banter_sink::migrate::{migrate_waiting, MigrateError};
use banter_testkit::*;

async fn exec(ch: &banter_sink::ClickHouse, sql: &str) {
    ch.client
        .query(sql)
        .execute()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_migrates_at_once_apply_and_record_every_migration_once() {
    let cfg = config();
    let db = fresh_database(&cfg).await;
    let (a, b) = tokio::join!(
        banter_sink::migrate(&db.ch, &db.name),
        banter_sink::migrate(&db.ch, &db.name)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    // One of them applied everything, the other found it applied.
    let applied = |o: &[banter_sink::Outcome]| o.iter().filter(|o| o.applied).count();
    let n = banter_sink::migrate::migrations().len();
    assert_eq!(applied(&a) + applied(&b), n, "{a:?}\n{b:?}");
    let recorded: Vec<(u32, u64)> = db
        .ch
        .client
        .query("SELECT version, count() FROM banter_migrations GROUP BY version ORDER BY version")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        recorded,
        (1..=u32::try_from(n).unwrap())
            .map(|v| (v, 1))
            .collect::<Vec<_>>()
    );
    let lock: u64 = db
        .ch
        .client
        .query(
            "SELECT count() FROM system.tables WHERE database = ? AND name = 'banter_migrate_lock'",
        )
        .bind(&db.name)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(lock, 0, "the lock is released");
    db.drop_now(&cfg).await;
}

/// Provisional rows (revision `i64::MIN + offset`, negative) and final rows (revision = an
/// offset) of the same window, inserted in separate parts in the wrong order: `rollups_final`
/// shows the final row, or the latest provisional one while there is no final row, and a
/// merge keeps just those. Also run on current ClickHouse (tests/chdb/modern.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_row_replaces_the_provisional_rows_of_its_window_in_any_order() {
    let cfg = config();
    let db = fresh_database(&cfg).await;
    banter_sink::migrate(&db.ch, &db.name).await.unwrap();
    let provisional = |offset: i64| i64::MIN + offset;
    let cols = "account_id, content_id, window_kind, window_start_ms, window_end_ms, revision, \
                interactions, emitted_at_ms";
    // Minute 1: final (offset 7, 3 interactions) first, then the provisional rows it replaces.
    // Minute 2: open, two provisional rows, the later one inserted first.
    for (start, revision, n) in [
        (60_000, 7, 3),
        (60_000, provisional(5), 2),
        (60_000, provisional(7), 3),
        (120_000, provisional(9), 4),
        (120_000, provisional(8), 1),
    ] {
        exec(
            &db.ch,
            &format!(
                "INSERT INTO {}.rollups ({cols}) VALUES ('a', 'p', 'MINUTE', {start}, {}, {revision}, {n}, 1)",
                db.name,
                start + 60_000
            ),
        )
        .await;
    }
    let read = |table: &'static str| {
        let ch = db.ch.clone();
        let name = db.name.clone();
        async move {
            ch.client
                .query(&format!(
                    "SELECT window_start_ms, revision, interactions FROM {name}.{table} \
                     ORDER BY window_start_ms, revision"
                ))
                .fetch_all::<(i64, i64, i64)>()
                .await
                .unwrap()
        }
    };
    let shown = vec![(60_000, 7, 3), (120_000, provisional(9), 4)];
    assert_eq!(read("rollups_final").await, shown);
    exec(&db.ch, &format!("OPTIMIZE TABLE {}.rollups FINAL", db.name)).await;
    assert_eq!(read("rollups").await, shown, "a merge keeps the same rows");
    db.drop_now(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_left_by_a_dead_migrate_is_named_and_unlock_removes_it() {
    let mut cfg = config();
    let db = fresh_database(&cfg).await;
    cfg.clickhouse.database = db.name.clone();
    exec(
        &db.ch,
        "CREATE TABLE banter_migrate_lock (owner String, since DateTime) ENGINE = Log",
    )
    .await;
    exec(
        &db.ch,
        "INSERT INTO banter_migrate_lock SELECT 'banter migrate on host-7, pid 42', now()",
    )
    .await;
    let err = migrate_waiting(&db.ch, &db.name, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(matches!(err, MigrateError::Locked { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("host-7, pid 42") && text.contains("banter migrate --unlock"),
        "{text}"
    );
    let out = banter_cmd(&cfg)
        .args(["migrate", "--unlock"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    migrate(&cfg);
    db.drop_now(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applied_migration_that_changed_is_an_error() {
    let cfg = config();
    let db = fresh_database(&cfg).await;
    banter_sink::migrate(&db.ch, &db.name).await.unwrap();
    // As if 0003's file had been edited after it was applied.
    exec(
        &db.ch,
        "INSERT INTO banter_migrations SELECT 3, '0003_dead_letters.sql', 'an-older-checksum', now()",
    )
    .await;
    let err = banter_sink::migrate(&db.ch, &db.name).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, MigrateError::Changed { .. })
            && text.contains("0003_dead_letters.sql")
            && text.contains("an-older-checksum"),
        "{text}"
    );
    db.drop_now(&cfg).await;
}

/// 2026-12-01T00:00:00Z.
const NOW_MS: i64 = 1_796_083_200_000;
const DAY_MS: i64 = 86_400_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_without_ttl_empties_old_payloads_and_drops_months_wholly_past_the_limit() {
    let cfg = config();
    let db = fresh_database(&cfg).await;
    banter_sink::migrate(&db.ch, &db.name).await.unwrap();
    assert!(
        !db.ch.version.has_ttl(),
        "this test is for servers without TTL"
    );
    let dl = |offset: i64, at_ms: i64| {
        format!(
            "('SINK', 'invalid', 'bad row', 'banter.rollups.v1', 0, {offset}, 'acct-1', 'user @alice wrote this', {at_ms})"
        )
    };
    // 1 day old, 61 days old (payload past 30 days), 2026-09-01 and 2026-08-31 (both past 90
    // days: September is not wholly past the limit, 2026-09-02, August is).
    let rows = [
        dl(1, NOW_MS - DAY_MS),
        dl(2, NOW_MS - 61 * DAY_MS),
        dl(3, 1_788_220_800_000),
        dl(4, 1_788_220_800_000 - 1),
    ];
    exec(
        &db.ch,
        &format!(
            "INSERT INTO dead_letters (stage, reason, detail, source, source_partition, source_offset, account_id, payload, failed_at_ms) VALUES {}",
            rows.join(", ")
        ),
    )
    .await;
    let r = RetentionConfig::default(); // payload 30 days, dead letters 90 days
    let done = banter_sink::retention::enforce(&db.ch, &r, NOW_MS)
        .await
        .unwrap();
    assert_eq!(done.statements.len(), 2, "{:?}", done.statements);
    let rows = wait_for(
        "the payload mutation",
        Duration::from_secs(30),
        || async {
            let rows: Vec<(i64, String, u64)> = db
                .ch
                .client
                .query("SELECT source_offset, payload, record_key FROM dead_letters FINAL ORDER BY source_offset")
                .fetch_all()
                .await
                .unwrap();
            rows.iter()
                .all(|(o, p, _)| (*o == 1) != p.is_empty())
                .then_some(rows)
        },
    )
    .await;
    let offsets: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(offsets, vec![1, 2, 3], "August dropped, September kept");
    // Nothing more is due: a second run does nothing.
    let again = banter_sink::retention::enforce(&db.ch, &r, NOW_MS)
        .await
        .unwrap();
    assert!(again.statements.is_empty(), "{:?}", again.statements);
    db.drop_now(&cfg).await;
}
