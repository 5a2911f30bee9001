//! The whole pipeline as processes against the real broker and ClickHouse: generated
//! workload → `banter stream` → `banter sink` → ClickHouse, deduplicated rows equal to the
//! generator's expected aggregates; a row ClickHouse rejects goes to the dead-letter topic
//! with ClickHouse's error and does not block the others.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use banter_model::{AlertState, AvroRecord, DeadLetter, Rollup, SpikeAlert, Stage, WindowKind};
use banter_testkit::*;
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_workload_lands_in_clickhouse_as_expected() {
    let mut cfg = fresh_pipeline_config("pipeline").await;
    let db = fresh_database(&cfg).await;
    cfg.clickhouse.database = db.name.clone();
    let dir = test_dir("banter-pipeline");
    migrate(&cfg);
    migrate(&cfg); // re-runnable
                   // A crash between applying a migration and recording it: the rerun finds it applied.
    let ch = &db.ch.client;
    for q in [
        format!("DROP TABLE {}.banter_migrations", db.name),
        format!(
            "CREATE TABLE {}.banter_migrations (version UInt32, name String, applied_at DateTime) ENGINE = TinyLog",
            db.name
        ),
        format!(
            "INSERT INTO {}.banter_migrations SELECT number + 1, 'before the crash', now() FROM system.numbers LIMIT 4",
            db.name
        ),
    ] {
        ch.query(&q).execute().await.unwrap_or_else(|e| panic!("{q}: {e}"));
    }
    migrate(&cfg);
    finish(generate(&cfg, &dir, 0), "banter generate");
    let stream = start_role(&cfg, "stream", "stream", &dir);
    let sink = start_role(&cfg, "sink", "sink", &dir);
    // Every metric (minutes, velocity, first hour, engagers, funnels, conversations, alerts,
    // too-late dead letters) equal to the generator's truth.
    let rows = clickhouse_match(&db.ch, &dir, Duration::from_secs(120))
        .await
        .rollups;
    // Corrections are in ClickHouse as revisions; reading through FINAL shows the last.
    assert!(rows.values().any(|r| r.late_events > 0), "late corrections");
    // Distinct engagers per minute and first hour; velocity windows carry none.
    assert!(rows
        .values()
        .all(|r| if r.window == WindowKind::Velocity5m {
            r.unique_engagers.is_none()
        } else {
            r.unique_engagers.is_some_and(|n| n >= 0)
        }));

    let t = rows.keys().map(|k| k.3).max().unwrap();
    dashboards_run_and_return_rows(&db, t).await;
    percentiles_over_a_range_are_those_of_every_item(&db, &dir).await;
    stop(stream);
    the_provisional_lane_took_every_provisional_row(&cfg).await;
    stop(sink);
    db.drop_now(&cfg).await;
}

/// Every record of `topic` (`read_committed`), read until each partition reports its end:
/// (partition, offset, payload).
fn read_all(cfg: &banter::Config, topic: &str) -> Vec<(i32, i64, Vec<u8>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    use std::time::Instant;
    let c: BaseConsumer =
        banter_runtime::kafka::consumer_config(&cfg.kafka, "test", &unique("reader"))
            .set("enable.partition.eof", "true")
            .create()
            .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut at_end = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while at_end.len() < parts.len() {
        assert!(
            Instant::now() < deadline,
            "{topic}: partitions {at_end:?} of {parts:?} read to their end within 60 s"
        );
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                out.push((m.partition(), m.offset(), m.payload().unwrap().to_vec()));
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// Provisional rows have a topic of their own (none is on the rollups topic, and nothing but
/// provisional window rows is on theirs), and the sink's second lane, a group of its own,
/// inserted and committed every one of them: its committed offset on each partition is past
/// the partition's last record. Call with the stream stopped.
async fn the_provisional_lane_took_every_provisional_row(cfg: &banter::Config) {
    use rdkafka::consumer::Consumer;
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    use std::collections::BTreeMap;
    use std::time::Instant;
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || {
        let rollups = &cfg.kafka.topics.rollups;
        let codec = Rollup::codec();
        let on_rollups = read_all(&cfg, rollups);
        let provisional_on_rollups = on_rollups
            .iter()
            .filter(|(_, _, v)| {
                banter_model::codec::Codec::<Rollup>::peek_fingerprint(v)
                    == Some(codec.fingerprint())
            })
            .filter(|(_, _, v)| codec.decode(v).unwrap().revision < 0)
            .count();
        assert_eq!(
            provisional_on_rollups, 0,
            "provisional rows on the rollups topic {rollups}"
        );
        let topic = cfg.kafka.topics.provisional_topic();
        let mut last: BTreeMap<i32, i64> = BTreeMap::new();
        let records = read_all(&cfg, &topic);
        for (p, offset, v) in &records {
            let r = codec.decode(v).unwrap();
            assert!(r.revision < 0, "a final row on {topic}: {r:?}");
            last.insert(*p, *offset);
        }
        assert!(!records.is_empty(), "no provisional rows on {topic}");
        let group = format!("{}-provisional", cfg.sink.group_id);
        let c = banter_sink::sink::lag_client(&cfg.kafka, &group).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut tpl = TopicPartitionList::new();
            for p in last.keys() {
                tpl.add_partition(&topic, *p);
            }
            let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
            let behind: Vec<(i32, Offset, i64)> = committed
                .elements()
                .iter()
                .filter(|e| !matches!(e.offset(), Offset::Offset(o) if o > last[&e.partition()]))
                .map(|e| (e.partition(), e.offset(), last[&e.partition()]))
                .collect();
            if behind.is_empty() {
                eprintln!(
                    "{} provisional rows on {topic} (none among the {} records on {rollups}), every one committed by {group}",
                    records.len(),
                    on_rollups.len()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{group} has not committed past the last provisional rows (partition, committed, last): {behind:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
}

/// The conversations dashboard's account table over the whole run: each account's median and
/// p90 response time, merged in SQL from the hours' sketches, are within 1 % (plus the
/// panel's rounding to 0.01 minute) of the generator's nearest-rank percentiles over every
/// raw response time of the account — not the average of its hourly medians.
async fn percentiles_over_a_range_are_those_of_every_item(
    db: &TestDatabase,
    dir: &std::path::Path,
) {
    let truth = read_expected(dir).expected;
    let hours: Vec<i64> = truth
        .conversations
        .values()
        .flat_map(|h| h.keys().copied())
        .collect();
    let (from, to) = (
        hours.iter().min().unwrap() / 1000,
        hours.iter().max().unwrap() / 1000 + 3600,
    );
    let (_, raw) = clickhouse_dashboard_queries()
        .into_iter()
        .find(|(name, _)| name == "conversations.json/Accounts: inbound, answered, response times")
        .expect("the accounts panel");
    let sql = expand_macros(&raw, from, to, "");
    let rows: Vec<(String, Option<f64>, Option<f64>)> = db
        .ch
        .client
        .query(&format!("SELECT account, median_min, p90_min FROM ({sql})"))
        .fetch_all()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{sql}"));
    let close = |got: Option<f64>, want_s: Option<f64>| match (got, want_s) {
        (Some(g), Some(w)) => (g - w / 60.0).abs() <= 0.01 * w / 60.0 + 0.005 + 1e-9,
        (None, None) => true,
        _ => false,
    };
    let mut compared = 0;
    let mut averages_differ = 0;
    for (account, median, p90) in &rows {
        let want = &truth.conversation_totals[account];
        assert!(
            close(*median, want.median_response_s) && close(*p90, want.p90_response_s),
            "{account}: the panel says median {median:?} min, p90 {p90:?} min; every response \
             of the run gives {want:?} s"
        );
        compared += 1;
        // What the panel showed before (the average of the hours' medians) is not it.
        let medians: Vec<f64> = truth.conversations[account]
            .values()
            .filter_map(|h| h.median_response_s)
            .collect();
        if let (Some(w), false) = (want.median_response_s, medians.is_empty()) {
            let avg = medians.iter().sum::<f64>() / medians.len() as f64;
            if (avg - w).abs() > 0.01 * w + 0.6 {
                averages_differ += 1;
            }
        }
    }
    eprintln!(
        "merged percentiles of {compared} accounts equal the truth; the average of hourly medians \
         would be off for {averages_differ}"
    );
    assert!(compared >= 3, "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_and_a_kill_9_in_the_middle_change_no_metric() {
    let mut cfg = fresh_pipeline_config("pipeline-faults").await;
    // Provisional rows apart from the transactions (not the default): the kill may cut
    // batches short after their provisional rows went out.
    cfg.stream.provisional_in_transaction = false;
    let db = fresh_database(&cfg).await;
    cfg.clickhouse.database = db.name.clone();
    let dir = test_dir("banter-pipeline-faults");
    migrate(&cfg);
    // Paced, so that the faults land while input is still arriving.
    let gen = generate(&cfg, &dir, 250);
    let mut a = start_stream(&cfg, "a", &dir);
    let sink = start_role(&cfg, "sink", "sink", &dir);
    let mut rollups = Rollups::new(&cfg);
    wait_for("the first rollups", Duration::from_secs(60), || {
        rollups.poll();
        std::future::ready((rollups.seen > 300).then_some(()))
    })
    .await;
    // A second instance joins: the partitions are rebalanced between a and b.
    let b = start_stream(&cfg, "b", &dir);
    wait_for(
        "instance b to be assigned partitions",
        Duration::from_secs(60),
        || {
            let log = std::fs::read_to_string(dir.join("b.log")).unwrap_or_default();
            std::future::ready(log.contains("partition assigned").then_some(()))
        },
    )
    .await;
    let seen = rollups.seen;
    wait_for(
        "more rollups after the rebalance",
        Duration::from_secs(60),
        || {
            rollups.poll();
            std::future::ready((rollups.seen > seen + 300).then_some(()))
        },
    )
    .await;
    // Then a dies without a word, and comes back while input keeps arriving.
    a.kill9();
    std::fs::rename(dir.join("a.log"), dir.join("a-killed.log")).unwrap();
    let a = start_stream(&cfg, "a", &dir);
    finish(gen, "banter generate");
    clickhouse_match(&db.ch, &dir, Duration::from_secs(180)).await;
    // Provisional rows went out before their batches committed, also from those the kill
    // cut short: every closed window they showed has its final row now, which replaced them
    // (the input's last minutes stay open until it has been quiet for a while).
    let closed = banter_workload::check::closed_by(&read_expected(&dir));
    let topic = cfg.kafka.topics.provisional_topic();
    let shown: Vec<Rollup> = tokio::task::block_in_place(|| read_all(&cfg, &topic))
        .iter()
        .map(|(_, _, v)| Rollup::codec().decode(v).unwrap())
        .filter(|r| r.window_end <= closed)
        .collect();
    assert!(
        !shown.is_empty(),
        "no provisional row of a closed window was sent"
    );
    // As sent, whether or not the sink's provisional lane has inserted them yet: each one's
    // window has a final row in ClickHouse.
    let finals = clickhouse_rollups(&db.ch).await;
    let without: Vec<&Rollup> = shown
        .iter()
        .filter(|r| {
            let key = (
                r.account_id.to_string(),
                r.content_id.as_ref().map(ToString::to_string),
                r.window,
                r.window_start,
            );
            !finals.contains_key(&key)
        })
        .take(10)
        .collect();
    assert!(
        without.is_empty(),
        "provisional rows of closed windows without a final row: {without:?}"
    );
    eprintln!(
        "{} provisional rows of windows closed by {closed} sent, each window's final row in ClickHouse",
        shown.len()
    );
    // And ClickHouse shows none of them in place of its final row.
    let unreplaced: Vec<String> = db
        .ch
        .client
        .query(
            "SELECT concat(account_id, ' ', content_id, ' ', window_kind, ' ', \
             toString(window_start_ms), ' ', toString(interactions)) \
             FROM rollups_final WHERE revision < 0 AND window_end_ms <= ? LIMIT 10",
        )
        .bind(closed)
        .fetch_all()
        .await
        .unwrap();
    assert!(
        unreplaced.is_empty(),
        "provisional rows of closed windows without a final row: {unreplaced:?}"
    );
    stop(a);
    stop(b);
    stop(sink);
    let logs = ["a.log", "b.log"].map(|f| std::fs::read_to_string(dir.join(f)).unwrap());
    assert!(
        logs.iter()
            .any(|l| l.contains("how=\"replayed\"") || l.contains("how=replayed")),
        "no partition was restored by replay after the kill"
    );
    db.drop_now(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banter_run_does_it_all_in_one_process() {
    let mut cfg = fresh_pipeline_config("run").await;
    let db = fresh_database(&cfg).await;
    cfg.clickhouse.database = db.name.clone();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    cfg.ingest.listen = format!("127.0.0.1:{port}");
    let dir = test_dir("banter-run");
    write_campaigns(&cfg, &dir);
    // No migrate, no topics: `banter run` does both.
    let run = {
        let log = std::fs::File::create(dir.join("run.log")).unwrap();
        let child = banter_cmd(&cfg)
            .arg("run")
            .env("BANTER_CTA__CAMPAIGNS_FILE", dir.join("campaigns.toml"))
            .env("BANTER_CTA__RELOAD_INTERVAL_MS", "500")
            .env("BANTER_INGEST__LISTEN", &cfg.ingest.listen)
            .env("BANTER_INGEST__ACTOR_SALT", "integration-test-salt")
            .env(
                "BANTER_ALERTING__ALERTMANAGER_URL",
                format!(
                    "http://127.0.0.1:{}",
                    std::env::var("BANTER_ALERTMANAGER_PORT").unwrap_or_else(|_| "9093".into())
                ),
            )
            .stderr(log)
            .spawn()
            .unwrap();
        Proc::from_child(child)
    };
    // Ready when ingest listens (topics and migrations come first; slow under a loaded suite).
    wait_for(
        "banter run's ingest to listen",
        Duration::from_secs(120),
        || {
            std::future::ready(
                std::net::TcpStream::connect(&cfg.ingest.listen)
                    .is_ok()
                    .then_some(()),
            )
        },
    )
    .await;
    // First-party events through the HTTP API (ms-precise times: the expected aggregates hold).
    finish(
        generate_to(&cfg, &dir, 0, "http"),
        "banter generate --to http",
    );
    // Every metric, spike alerts included (alert delivery ran in the same process).
    clickhouse_match(&db.ch, &dir, Duration::from_secs(120)).await;
    stop(run);
    let log = std::fs::read_to_string(dir.join("run.log")).unwrap();
    assert!(log.contains("alert delivery started"), "{log}");
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
    let producer = banter_runtime::kafka::producer(&cfg.kafka, "test").unwrap();
    let mut rows: Vec<Rollup> = (0..20)
        .map(|i| rollup("acct-ok", t0 + i * 60_000, t0 + (i + 1) * 60_000, i))
        .collect();
    rows.insert(7, rollup("acct-bad", t0, t0 - 60_000, 1));
    for r in &rows {
        let bytes = Rollup::codec().encode(r).unwrap();
        producer
            .send(
                FutureRecord::to(&cfg.kafka.topics.rollups)
                    .key(r.account_id.as_bytes())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_no_longer_matches_the_rows_stops_the_sink_instead_of_dead_lettering_them() {
    // Schema drift: a column changed its type behind banter's back. Every row would fail to
    // parse (RowBinary), and each used to be dead-lettered as 'rejected' and its offset
    // committed: the whole stream lost to the DLQ. Now the sink stops, naming the table.
    let mut cfg = fresh_pipeline_config("sink-drift").await;
    let db = fresh_database(&cfg).await;
    cfg.clickhouse.database = db.name.clone();
    let dir = test_dir("banter-sink-drift");
    migrate(&cfg);
    db.ch
        .client
        .query("ALTER TABLE rollups MODIFY COLUMN interactions String")
        .execute()
        .await
        .unwrap();
    let t0 = 1_795_000_000_000i64;
    let producer = banter_runtime::kafka::producer(&cfg.kafka, "test").unwrap();
    for i in 0..5 {
        let r = rollup("acct-1", t0 + i * 60_000, t0 + (i + 1) * 60_000, i);
        let bytes = Rollup::codec().encode(&r).unwrap();
        producer
            .send(
                FutureRecord::to(&cfg.kafka.topics.rollups)
                    .key(r.account_id.as_bytes())
                    .payload(&bytes),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let mut sink = start_role(&cfg, "sink", "sink", &dir);
    let status = sink
        .exited_within(Duration::from_secs(90))
        .expect("the sink should stop on a table that does not match its rows");
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.join("sink.log")).unwrap();
    assert!(log.contains("rollups"), "{log}");
    let rejected: u64 = db
        .ch
        .client
        .query("SELECT count() FROM dead_letters WHERE reason = 'rejected'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(rejected, 0, "rows dead-lettered for a schema problem");
    db.drop_now(&cfg).await;
}

/// The ClickHouse datasource plugin's macros, for the time range [from, to] in seconds, and
/// every dashboard variable set to `value` as Grafana's `percentencode` format writes it
/// (every byte but `A-Z a-z 0-9 - _ . ~` as `%XX`, so no quote or backslash reaches the SQL).
fn expand_macros(sql: &str, from: i64, to: i64, value: &str) -> String {
    let mut out = sql
        .replace("$__fromTime", &format!("toDateTime({from})"))
        .replace("$__toTime", &format!("toDateTime({to})"))
        .replace("$__interval_s", "120");
    // The panel's interval: 2 minutes here.
    while let Some(i) = out.find("$__timeInterval(") {
        let rest = &out[i + "$__timeInterval(".len()..];
        let j = rest.find(')').unwrap();
        let col = rest[..j].to_owned();
        out = format!(
            "{}toStartOfInterval(toDateTime({col}), INTERVAL 120 second){}",
            &out[..i],
            &rest[j + 1..]
        );
    }
    while let Some(i) = out.find("$__timeFilter(") {
        let rest = &out[i + "$__timeFilter(".len()..];
        let j = rest.find(')').unwrap();
        let col = rest[..j].to_owned();
        out = format!(
            "{}{col} >= toDateTime({from}) AND {col} <= toDateTime({to}){}",
            &out[..i],
            &rest[j + 1..]
        );
    }
    let encoded = banter_runtime::percent_encode(value);
    for var in ["account", "content", "campaign"] {
        out = out.replace(&format!("${{{var}:percentencode}}"), &encoded);
    }
    assert!(!out.contains("$__"), "unexpanded macro in {out}");
    assert!(!out.contains("${"), "unexpanded variable in {out}");
    out
}

/// Every dashboard in docker/grafana/dashboards is valid for provisioning; every ClickHouse
/// query (panels and annotations), macros expanded, runs against the real ClickHouse and
/// returns rows; every Prometheus expression is accepted by the real Prometheus.
async fn dashboards_run_and_return_rows(db: &TestDatabase, last_ms: i64) {
    let files = dashboard_files();
    assert!(files.len() >= 3, "{files:?}");
    let (from, to) = (last_ms / 1000 - 8 * 3600, last_ms / 1000 + 3600);
    let http = reqwest::Client::new();
    let prometheus = format!(
        "http://127.0.0.1:{}/api/v1/query",
        std::env::var("BANTER_PROMETHEUS_PORT").unwrap_or_else(|_| "9090".into())
    );
    // Dashboards read as Grafana's read-only ClickHouse user (the local stack's `grafana`).
    let mut ro = config().clickhouse;
    ro.database = db.name.clone();
    ro.user = "grafana".into();
    ro.password = banter_runtime::Secret::new("banter-grafana-secret");
    let grafana = banter_sink::connect(&ro, Duration::from_secs(10))
        .await
        .unwrap();
    let refused = grafana
        .client
        .query("INSERT INTO rollups (account_id) VALUES ('x')")
        .execute()
        .await
        .expect_err("the dashboards' user must not write");
    assert!(refused.to_string().contains("readonly"), "{refused}");
    let mut checked = 0;
    let mut pruned = 0;
    for f in files {
        let d: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        for key in ["uid", "title", "panels", "schemaVersion"] {
            assert!(d.get(key).is_some(), "{name}: no {key}");
        }
        let mut targets: Vec<(String, Value)> = Vec::new();
        // The datasource is a variable (its default, the provisioned uid); every panel reads
        // it and has a unit.
        let vars = d["templating"]["list"].as_array().unwrap();
        let ds = vars
            .iter()
            .find(|v| v["type"] == "datasource")
            .unwrap_or_else(|| panic!("{name}: no datasource variable"));
        let ds_uid = format!("${{{}}}", ds["name"].as_str().unwrap());
        assert!(
            ["banter-clickhouse", "banter-prometheus"]
                .contains(&ds["current"]["value"].as_str().unwrap()),
            "{name}: {ds}"
        );
        for v in vars.iter().filter(|v| v["type"] == "query") {
            assert_eq!(v["allValue"], "__all__", "{name}: {v}");
            targets.push((format!("variable {}", v["name"]), v["query"].clone()));
        }
        for p in d["panels"].as_array().unwrap() {
            let title = p["title"].as_str().unwrap().to_owned();
            assert!(
                p["gridPos"]["w"].as_i64().is_some(),
                "{name}/{title}: gridPos"
            );
            assert!(
                p["fieldConfig"]["defaults"]["unit"].is_string(),
                "{name}/{title}: no unit"
            );
            assert_eq!(p["datasource"]["uid"], ds_uid.as_str(), "{name}/{title}");
            for t in p["targets"].as_array().unwrap() {
                assert!(t["refId"].is_string(), "{name}/{title}: refId");
                targets.push((title.clone(), t.clone()));
            }
        }
        for a in d["annotations"]["list"].as_array().unwrap() {
            targets.push((format!("annotation {}", a["name"]), a["target"].clone()));
        }
        for (title, t) in targets {
            let uid = if title.starts_with("variable ") {
                "${ds}"
            } else {
                t["datasource"]["uid"].as_str().unwrap()
            };
            match uid {
                "${ds}" => {
                    let raw = t["rawSql"].as_str().unwrap();
                    // Variables at their defaults (textboxes, empty: everything).
                    let sql = expand_macros(raw, from, to, "");
                    let n: u64 = grafana
                        .client
                        .query(&format!("SELECT count() FROM ({sql})"))
                        .fetch_one()
                        .await
                        .unwrap_or_else(|e| panic!("{name}/{title}: {e}\n{sql}"));
                    assert!(n > 0, "{name}/{title} returned no rows:\n{sql}");
                    // The time range prunes: partitions by the partition key, granules by the
                    // sorting key (alerts are few and keyed by alert; not asked).
                    if !sql.contains("FROM alerts") {
                        db.ch
                            .client
                            .clone()
                            .with_setting("force_index_by_date", "1")
                            .with_setting("force_primary_key", "1")
                            .query(&format!("SELECT count() FROM ({sql})"))
                            .fetch_one::<u64>()
                            .await
                            .unwrap_or_else(|e| {
                                panic!("{name}/{title} does not prune: {e}\n{sql}")
                            });
                        pruned += 1;
                    }
                    // Values with quotes and backslashes are data, not SQL: the query runs and
                    // answers as for any value that matches nothing.
                    let mut answers = Vec::new();
                    for value in ["no-such-value", "O'Brien", "x\\' OR 1=1 OR '", "\\"] {
                        let sql = expand_macros(raw, from, to, value);
                        let n = db
                            .ch
                            .client
                            .query(&format!("SELECT count() FROM ({sql})"))
                            .fetch_one::<u64>()
                            .await
                            .unwrap_or_else(|e| {
                                panic!("{name}/{title} with {value:?}: {e}\n{sql}")
                            });
                        answers.push((value, n));
                    }
                    if raw.contains(":percentencode}") {
                        assert!(
                            answers.iter().all(|(_, n)| *n == answers[0].1),
                            "{name}/{title}: {answers:?}"
                        );
                        // The dropdowns' All is everything, as the empty value is.
                        let all = expand_macros(raw, from, to, "__all__");
                        let n_all: u64 = grafana
                            .client
                            .query(&format!("SELECT count() FROM ({all})"))
                            .fetch_one()
                            .await
                            .unwrap_or_else(|e| panic!("{name}/{title} with All: {e}\n{all}"));
                        assert_eq!(n_all, n, "{name}/{title}: All and empty differ");
                    }
                }
                "${prom}" => {
                    let expr = t["expr"].as_str().unwrap();
                    let r: Value = http
                        .get(&prometheus)
                        .query(&[("query", expr)])
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    assert_eq!(r["status"], "success", "{name}/{title}: {expr}: {r}");
                }
                other => panic!("{name}/{title}: unknown datasource {other}"),
            }
            checked += 1;
        }
    }
    eprintln!("{checked} dashboard queries checked, {pruned} of them pruning by time");
    assert!(pruned >= 17, "{pruned} queries prune");
}

/// The dashboards' JSON files, sorted.
fn dashboard_files() -> Vec<std::path::PathBuf> {
    let dir = repo_root().join("docker/grafana/dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

/// Every ClickHouse query of the dashboards (panels and annotations): (dashboard/title, SQL).
fn clickhouse_dashboard_queries() -> Vec<(String, String)> {
    let files = dashboard_files();
    let mut out = Vec::new();
    for f in files {
        let d: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let mut targets: Vec<(String, Value)> = Vec::new();
        for v in d["templating"]["list"].as_array().unwrap() {
            if v["type"] == "query" {
                let mut q = v["query"].clone();
                q["datasource"] = v["datasource"].clone();
                targets.push((format!("variable {}", v["name"]), q));
            }
        }
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                targets.push((p["title"].as_str().unwrap().to_owned(), t.clone()));
            }
        }
        for a in d["annotations"]["list"].as_array().unwrap() {
            targets.push((format!("annotation {}", a["name"]), a["target"].clone()));
        }
        for (title, t) in targets {
            if t["datasource"]["uid"] == "${ds}" {
                out.push((
                    format!("{name}/{title}"),
                    t["rawSql"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    out
}

/// A year of rows (3 M rollups, 1 M conversations, 1 M funnel rows, spread evenly), and
/// every dashboard query over six hours of it (alerts aside: few rows, keyed by alert) reads
/// at most a tenth of each table it scans (a month is a twelfth), as ClickHouse's query log
/// counts: the month its range touches, not the table. (`max_rows_to_read` cannot show it:
/// 18.16 does not apply it to `FINAL` reads.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_read_a_bounded_number_of_rows_of_a_large_table() {
    let mut cfg = config();
    let db = fresh_database(&cfg).await;
    cfg.clickhouse.database = db.name.clone();
    migrate(&cfg);
    const YEAR_START: i64 = 1_767_225_600_000; // 2026-01-01
    const YEAR_MS: i64 = 365 * 86_400_000;
    let exec = |sql: String| {
        let ch = db.ch.client.clone();
        async move {
            ch.query(&sql)
                .execute()
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        }
    };
    // Row n starts at YEAR_START + n·step (minute-aligned), so the rows cover the year evenly.
    let start = |n: u64| format!("{YEAR_START} + intDiv({n} * number, 60000) * 60000");
    let kinds = "['MINUTE', 'VELOCITY_5M', 'FIRST_15M', 'FIRST_60M', 'MINUTE']";
    exec(format!(
        "INSERT INTO rollups (account_id, content_id, window_kind, window_start_ms, window_end_ms, revision, interactions, emitted_at_ms) \
         SELECT concat('acct-', toString(number % 40)), if(number % 3 = 0, '', concat('post-', toString(number % 20000))), \
         {kinds}[number % 5 + 1], {s}, {s} + 60000, 1, 1, {s} + 60000 FROM system.numbers LIMIT 3000000",
        s = start(YEAR_MS as u64 / 3_000_000)
    ))
    .await;
    exec(format!(
        "INSERT INTO conversations (account_id, content_id, window_kind, window_start_ms, window_end_ms, revision, inbound, answered, response_sketch_buckets, response_sketch_counts, emitted_at_ms) \
         SELECT concat('acct-', toString(number % 40)), if(number % 2 = 0, '', concat('post-', toString(number % 20000))), \
         'HOUR', {s}, {s} + 3600000, 1, 3, 2, [270, 300], [1, 1], {s} + 3600000 FROM system.numbers LIMIT 1000000",
        s = start(YEAR_MS as u64 / 1_000_000)
    ))
    .await;
    exec(format!(
        "INSERT INTO funnels (account_id, campaign_id, window_kind, window_start_ms, window_end_ms, revision, triggered, emitted_at_ms) \
         SELECT concat('acct-', toString(number % 40)), concat('camp-', toString(number % 300)), \
         if(number % 24 = 0, 'DAY', 'HOUR'), {s}, {s} + 3600000, 1, 5, {s} + 3600000 FROM system.numbers LIMIT 1000000",
        s = start(YEAR_MS as u64 / 1_000_000)
    ))
    .await;
    // Six hours in June.
    let from = (YEAR_START + 160 * 86_400_000) / 1000 + 3 * 3600;
    let to = from + 6 * 3600;
    let tables = [
        ("rollups", 3_000_000u64),
        ("conversations", 1_000_000),
        ("funnels", 1_000_000),
    ];
    let mut checked = 0;
    let mut worst = 0.0f64;
    for (name, raw) in clickhouse_dashboard_queries() {
        if raw.contains("FROM alerts") {
            continue;
        }
        // Each scan of a table (a join scans twice) may read a month: a twelfth of it.
        let rows: u64 = tables
            .iter()
            .map(|(t, n)| raw.matches(&format!("FROM {t} ")).count() as u64 * n)
            .sum();
        assert!(rows > 0, "{name}: reads no known table");
        let sql = expand_macros(&raw, from, to, "");
        let read = rows_read(&db.ch, &format!("SELECT count() FROM ({sql})")).await;
        let share = read as f64 / rows as f64;
        assert!(
            share <= 0.1,
            "{name} read {read} rows of {rows} scanned table rows for six hours:\n{sql}"
        );
        worst = worst.max(share);
        checked += 1;
    }
    // The same kind of query without the time range reads the table: the measure can fail.
    let whole = rows_read(
        &db.ch,
        "SELECT count() FROM rollups FINAL WHERE window_kind = 'MINUTE' AND content_id != ''",
    )
    .await;
    assert!(whole > 300_000, "{whole}");
    eprintln!(
        "{checked} dashboard queries over six hours read at most {:.1} % of their table (the whole-table query: {whole} rows)",
        worst * 100.0
    );
    assert!(checked >= 19, "{checked}");
    db.drop_now(&cfg).await;
}

/// The rows ClickHouse read for `sql`, from its query log (the local stack's servers log the
/// queries that ask for it; `type` 2 is a finished query).
async fn rows_read(ch: &banter_sink::ClickHouse, sql: &str) -> u64 {
    let id = unique("q");
    ch.client
        .clone()
        .with_setting("log_queries", "1")
        .with_setting("query_id", id.as_str())
        .query(sql)
        .fetch_all::<u64>()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{sql}"));
    wait_for("the query in system.query_log", Duration::from_secs(20), || async {
        ch.client
            .query("SYSTEM FLUSH LOGS")
            .execute()
            .await
            .unwrap();
        ch.client
            .query("SELECT read_rows FROM system.query_log WHERE query_id = ? AND CAST(type, 'Int8') = 2")
            .bind(id.as_str())
            .fetch_optional::<u64>()
            .await
            .unwrap()
    })
    .await
}

/// Every migration (as `banter migrate --print-sql` renders it for the server) and every
/// dashboard query, with the variables empty and set to `O'Brien` (and, but for the alerts'
/// few rows, using the partition and sorting keys), also run on current ClickHouse: chdb (ClickHouse in-process, from PyPI; `scripts/install-deps.sh` installs
/// it), besides Debian's 18.16 server the other tests use.
#[test]
fn migrations_and_dashboard_queries_run_on_current_clickhouse() {
    let dir = test_dir("banter-chdb");
    let db = "banter_modern";
    let out = banter_cmd(&config())
        .args(["migrate", "--print-sql", "--server-version", "26.9"])
        .env("BANTER_CLICKHOUSE__DATABASE", db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "banter migrate --print-sql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.join("migrate.sql"), &out.stdout).unwrap();
    let mut queries = Vec::new();
    for (name, sql) in clickhouse_dashboard_queries() {
        for value in ["", "O'Brien", "x\\' OR 1=1 OR '"] {
            queries.push(serde_json::json!({
                "name": format!("{name} (variables {value:?})"),
                "sql": expand_macros(&sql, 1_764_000_000, 1_764_086_400, value),
                "prunes": !sql.contains("FROM alerts"),
            }));
        }
    }
    assert!(queries.len() >= 60, "{}", queries.len());
    std::fs::write(
        dir.join("panels.json"),
        serde_json::to_vec(&queries).unwrap(),
    )
    .unwrap();
    let stack = std::env::var("BANTER_STACK_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".stack"));
    let out = std::process::Command::new(stack.join("venv/bin/python"))
        .arg(repo_root().join("tests/chdb/modern.py"))
        .arg(dir.join("migrate.sql"))
        .arg(dir.join("panels.json"))
        .arg(db)
        .output()
        .unwrap_or_else(|e| panic!("cannot run chdb ({e}): scripts/install-deps.sh installs it"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ClickHouse 26."), "{text}");
    eprintln!("{text}");
}

/// A dead letter as a stage would send it.
fn dead_letter(
    stage: Stage,
    reason: &str,
    source: Option<(&str, i32, i64)>,
    at: i64,
) -> DeadLetter {
    DeadLetter {
        stage,
        reason: reason.into(),
        detail: format!("{reason} for the test"),
        source: source.map(|s| s.0.to_owned()),
        source_partition: source.map(|s| s.1),
        source_offset: source.map(|s| s.2),
        account_id: Some("acct-1".into()),
        payload: b"{\"kind\":\"COMMENT\"}".to_vec(),
        failed_at: at,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_insert_and_commit_doubles_no_alert_and_no_dead_letter() {
    // The sink inserts a batch, then dies (as kill -9 would) before committing its offsets:
    // the restarted sink inserts the same records again. Alerts and dead letters used to be
    // plain MergeTree tables and were doubled; read with FINAL they are each in once.
    let mut cfg = fresh_pipeline_config("sink-crash").await;
    let db = fresh_database(&cfg).await;
    cfg.clickhouse.database = db.name.clone();
    let dir = test_dir("banter-sink-crash");
    migrate(&cfg);
    let producer = banter_runtime::kafka::producer(&cfg.kafka, "test").unwrap();
    let send = |topic: String, bytes: Vec<u8>| {
        let producer = producer.clone();
        async move {
            producer
                .send(
                    FutureRecord::<(), _>::to(&topic).payload(&bytes),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
    };
    let t0 = 1_795_000_000_000i64;
    for spike in 0..3 {
        for (state, revision) in [(AlertState::Firing, 1), (AlertState::Resolved, 2)] {
            let a = SpikeAlert {
                alert_id: format!("acct-1/post-{spike}/{t0}"),
                state,
                account_id: "acct-1".into(),
                content_id: Some(format!("post-{spike}")),
                window_start: t0,
                window_end: t0 + 60_000,
                observed: 40,
                baseline_mean: 2.0,
                baseline_stddev: 1.0,
                z_score: 38.0,
                started_at: t0,
                ended_at: (state == AlertState::Resolved).then_some(t0 + 300_000),
                revision,
                emitted_at: t0 + 60_000,
            };
            send(
                cfg.kafka.topics.alerts.clone(),
                SpikeAlert::codec().encode(&a).unwrap(),
            )
            .await;
        }
    }
    let topic = cfg.kafka.topics.dlq.clone();
    let events = cfg.kafka.topics.events.clone();
    let rollups = cfg.kafka.topics.rollups.clone();
    for dl in [
        // Two requests with the same bad event: two dead letters (their own topic positions).
        dead_letter(Stage::Ingest, "invalid", None, t0),
        dead_letter(Stage::Ingest, "invalid", None, t0),
        dead_letter(Stage::Ingest, "malformed", None, t0 + 1),
        dead_letter(Stage::Stream, "late", Some((&events, 0, 17)), t0 + 2),
        // The sink rejecting one row, before and after a restart: one dead letter.
        dead_letter(Stage::Sink, "rejected", Some((&rollups, 1, 5)), t0 + 3),
        dead_letter(Stage::Sink, "rejected", Some((&rollups, 1, 5)), t0 + 9),
    ] {
        send(topic.clone(), DeadLetter::codec().encode(&dl).unwrap()).await;
    }
    let mut crashing = start_role_with(
        &cfg,
        "sink",
        "sink-crash",
        &dir,
        &[("BANTER_FAILPOINTS", "sink.before_commit")],
    );
    let status = crashing
        .exited_within(Duration::from_secs(90))
        .expect("the sink should die at its failpoint");
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.join("sink-crash.log")).unwrap();
    assert!(log.contains("failpoint sink.before_commit"), "{log}");
    let count = |sql: &'static str| {
        let ch = db.ch.client.clone();
        async move { ch.query(sql).fetch_one::<u64>().await.unwrap() }
    };
    let inserted =
        count("SELECT count() FROM alerts").await + count("SELECT count() FROM dead_letters").await;
    assert!(inserted > 0, "the crashed batch inserted nothing");

    let sink = start_role(&cfg, "sink", "sink", &dir);
    wait_for(
        "6 alerts and 5 dead letters, each once",
        Duration::from_secs(60),
        || async {
            let alerts = count("SELECT count() FROM alerts FINAL").await;
            let dls = count("SELECT count() FROM dead_letters FINAL").await;
            (alerts == 6 && dls == 5).then_some(())
        },
    )
    .await;
    // Whatever merges did meanwhile, the raw tables hold the re-inserted batch at most twice
    // and FINAL reads each record once.
    assert_eq!(
        count(
            "SELECT count() FROM (SELECT alert_id, revision FROM alerts FINAL \
             GROUP BY alert_id, revision HAVING count() > 1)"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            "SELECT count() FROM dead_letters FINAL WHERE stage = 'INGEST' AND reason = 'invalid'"
        )
        .await,
        2
    );
    stop(sink);
    db.drop_now(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_rebuilds_alerts_and_dead_letters_with_their_rows_also_after_a_crash_midway() {
    // A database as the plain-MergeTree version left it (an alert and a dead letter doubled by
    // an old crash), then `banter migrate` killed in the middle of both rebuilds: alerts
    // after copying into alerts__new, dead letters after the swap. The rerun finishes both and
    // keeps every row once.
    use banter_sink::migrate::{migrations, render};
    let mut cfg = config();
    let db = fresh_database(&cfg).await;
    cfg.clickhouse.database = db.name.clone();
    let ch = &db.ch.client;
    let d = &db.name;
    let v = db.ch.version;
    let exec = |sql: String| async move {
        ch.query(&sql)
            .execute()
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    };
    exec(format!(
        "CREATE TABLE {d}.banter_migrations (version UInt32, name String, applied_at DateTime) ENGINE = TinyLog"
    ))
    .await;
    exec(format!(
        "INSERT INTO {d}.banter_migrations SELECT number + 1, 'the old version', now() FROM system.numbers LIMIT 9"
    ))
    .await;
    let ms = migrations();
    for m in &ms[..9] {
        exec(render(m.sql, d, v)).await;
    }
    let alert = |id: &str, rev: i64| {
        format!(
            "('{id}', 'FIRING', 'acct-1', 'post-1', 1795000000000, 1795000060000, 40, 2, 1, 38, \
             1795000000000, NULL, {rev}, 1795000060000)"
        )
    };
    exec(format!(
        "INSERT INTO {d}.alerts VALUES {}, {}, {}",
        alert("a1", 1),
        alert("a1", 1),
        alert("a2", 1)
    ))
    .await;
    let dl = |reason: &str, offset: i64| {
        format!("('INGEST', '{reason}', 'bad', '/v1/events', -1, {offset}, 'acct-1', '{{}}', 1795000000000)")
    };
    exec(format!(
        "INSERT INTO {d}.dead_letters VALUES {}, {}, {}",
        dl("invalid", -1),
        dl("invalid", -1),
        dl("malformed", -1)
    ))
    .await;
    // The crash: alerts copied into alerts__new, not swapped; dead letters swapped, the old
    // table not yet copied back and dropped.
    let table =
        |m: &banter_sink::migrate::Migration, t: &str| render(&m.sql.replace("{table}", t), d, v);
    exec(table(&ms[9], "alerts__new")).await;
    exec(format!(
        "INSERT INTO {d}.alerts__new SELECT * FROM {d}.alerts LIMIT 1"
    ))
    .await;
    exec(format!(
        "RENAME TABLE {d}.dead_letters TO {d}.dead_letters__old"
    ))
    .await;
    exec(table(&ms[10], "dead_letters")).await;

    migrate(&cfg);
    migrate(&cfg); // and again: nothing changes
    let tables: Vec<(String, String)> = ch
        .query("SELECT name, engine FROM system.tables WHERE database = ? AND (name LIKE 'alerts%' OR name LIKE 'dead_letters%') ORDER BY name")
        .bind(d)
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        tables,
        vec![
            ("alerts".to_owned(), "ReplacingMergeTree".to_owned()),
            ("dead_letters".to_owned(), "ReplacingMergeTree".to_owned())
        ]
    );
    let alerts: Vec<(String, i64)> = ch
        .query("SELECT alert_id, revision FROM alerts FINAL ORDER BY alert_id")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(alerts, vec![("a1".to_owned(), 1), ("a2".to_owned(), 1)]);
    let dls: Vec<String> = ch
        .query("SELECT reason FROM dead_letters FINAL ORDER BY reason")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(dls, vec!["invalid".to_owned(), "malformed".to_owned()]);
    db.drop_now(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_a_newer_writer_schema_are_resolved_by_stream_and_sink() {
    // A rolling upgrade: version 2 of ingest (events) and of the stream (rollups) write a
    // field this version does not know, and published their schemas to the schema topic.
    // Their records used to be dead-lettered as "unknown writer schema"; now stream and sink
    // read them by Avro schema resolution.
    use banter_model::{Action, EngagementEvent, Kind, Platform};
    let mut cfg = fresh_pipeline_config("v2-writer").await;
    let db = fresh_database(&cfg).await;
    cfg.clickhouse.database = db.name.clone();
    let dir = test_dir("banter-v2-writer");
    migrate(&cfg);
    let schemas = [v2_schema::<EngagementEvent>(), v2_schema::<Rollup>()];
    let schemas: Vec<&str> = schemas.iter().map(String::as_str).collect();
    banter_runtime::schemas::publish(&cfg.kafka, Some(&schemas))
        .await
        .unwrap();
    let producer = banter_runtime::kafka::producer(&cfg.kafka, "test").unwrap();
    let t0 = 1_795_000_000_000i64 - 1_795_000_000_000i64 % 60_000;
    let mut events: Vec<EngagementEvent> = (0..30)
        .map(|i| {
            let mut e = EngagementEvent::new(
                format!("v2-{i}"),
                Platform::Instagram,
                Kind::Comment,
                Action::Add,
                "acct-v2",
                t0 + i * 1000,
            );
            e.content_id = Some("post-1".into());
            e.actor_id = Some(format!("actor-{i}"));
            e.received_at = t0 + i * 1000;
            e
        })
        .collect();
    // Later traffic moves event time on past the minute and its lateness.
    let mut later = events[0].clone();
    later.event_id = "v2-later".into();
    later.event_time = t0 + 10 * 60_000;
    later.received_at = later.event_time;
    events.push(later);
    for e in &events {
        producer
            .send(
                FutureRecord::to(&cfg.kafka.topics.events)
                    .key(e.account_id.as_str())
                    .payload(&write_v2(e)),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let direct = rollup("acct-v2-direct", t0, t0 + 60_000, 1);
    producer
        .send(
            FutureRecord::to(&cfg.kafka.topics.rollups)
                .key(direct.account_id.as_str())
                .payload(&write_v2(&direct)),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let stream = start_role(&cfg, "stream", "stream", &dir);
    let sink = start_role(&cfg, "sink", "sink", &dir);
    let minute = |account: &'static str| {
        let ch = db.ch.client.clone();
        async move {
            ch.query(
                "SELECT interactions FROM rollups FINAL WHERE account_id = ? \
                 AND window_kind = 'MINUTE' AND content_id = '' AND window_start_ms = ?",
            )
            .bind(account)
            .bind(t0)
            .fetch_all::<i64>()
            .await
            .unwrap()
        }
    };
    wait_for(
        "the version-2 events counted and the version-2 rollup written",
        Duration::from_secs(90),
        || async {
            let counted = minute("acct-v2").await;
            let direct = minute("acct-v2-direct").await;
            (counted == vec![30] && direct == vec![3]).then_some(())
        },
    )
    .await;
    let dead: u64 = db
        .ch
        .client
        .query("SELECT count() FROM dead_letters FINAL")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(dead, 0, "records of the newer version were dead-lettered");
    let log = std::fs::read_to_string(dir.join("stream.log")).unwrap();
    assert!(log.contains("unknown writer schema"), "{log}");
    stop(sink);
    stop(stream);
    db.drop_now(&cfg).await;
}

/// The sink's lag metric (`banter_sink_consumer_lag_records`) counts, per partition, the
/// records after what its group committed (all of them where it committed nothing), read
/// without joining the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_lag_is_what_its_group_has_not_committed() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let cfg = config();
    let topic = fresh_topic(&cfg, "sinklag", 2).await;
    let producer = banter_runtime::kafka::producer(&cfg.kafka, "test").unwrap();
    for (partition, n) in [(0, 5), (1, 3)] {
        for i in 0..n {
            let payload = format!("record {i}");
            producer
                .send(
                    FutureRecord::<(), _>::to(&topic)
                        .partition(partition)
                        .payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
    }
    // The group committed offset 2 on partition 0 and nothing on partition 1.
    let group = unique("sinklag.group");
    let committer: BaseConsumer = banter_runtime::kafka::base_config(&cfg.kafka, "test")
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(2))
        .unwrap();
    let t = topic.clone();
    let lag = tokio::task::spawn_blocking(move || {
        committer.commit(&tpl, CommitMode::Sync).unwrap();
        let c = banter_sink::sink::lag_client(&cfg.kafka, &group).unwrap();
        banter_sink::sink::group_lag(&c, &t, Duration::from_secs(10)).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(lag, vec![(0, 3), (1, 3)], "{topic}");
}

/// Two sinks under one instance id: the newer one fences the older one, whose consumer can no
/// longer be used. The older one exits with the reason (for its supervisor to restart it)
/// instead of holding partitions it cannot read, and ClickHouse ends equal to the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_fenced_by_its_namesake_exits_and_nothing_is_lost() {
    let mut cfg = fresh_pipeline_config("sink-fenced").await;
    let db = fresh_database(&cfg).await;
    cfg.clickhouse.database = db.name.clone();
    let dir = test_dir("banter-sink-fenced");
    migrate(&cfg);
    let gen = generate(&cfg, &dir, 2500);
    let stream = start_role(&cfg, "stream", "stream", &dir);
    let mut first = start_role(&cfg, "sink", "sink", &dir);
    wait_for(
        "the first rows in ClickHouse",
        Duration::from_secs(60),
        || async { (clickhouse_rollups(&db.ch).await.len() > 300).then_some(()) },
    )
    .await;
    let second = tokio::task::block_in_place(|| {
        fenced_by_namesake(&mut first, &dir, "sink", || {
            start_role(&cfg, "sink", "sink", &dir)
        })
    });
    finish(gen, "banter generate");
    clickhouse_match(&db.ch, &dir, Duration::from_secs(180)).await;
    stop(second);
    stop(stream);
    db.drop_now(&cfg).await;
}
