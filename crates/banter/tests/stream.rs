//! `banter stream` against the real broker: generated workload in, rollups out equal to the
//! generator's expected aggregates — also after a kill -9 in the middle, and when a second
//! instance joins and the first one leaves.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use banter_integration::*;
use banter_model::{AvroRecord, DeadLetter, EngagementEvent, Rollup, WindowKind};
use banter_runtime::Config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::Value;

const MINUTE: i64 = 60_000;

fn banter_cmd(cfg: &Config) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_banter"));
    let t = &cfg.kafka.topics;
    c.env("BANTER_KAFKA__BROKERS", &cfg.kafka.brokers)
        .env("BANTER_KAFKA__TOPICS__EVENTS", &t.events)
        .env("BANTER_KAFKA__TOPICS__ROLLUPS", &t.rollups)
        .env("BANTER_KAFKA__TOPICS__DLQ", &t.dlq)
        .env("BANTER_KAFKA__TOPICS__CHECKPOINTS", &t.checkpoints)
        .env("BANTER_STREAM__GROUP_ID", &cfg.stream.group_id)
        .env("BANTER_STREAM__IDLE_TIMEOUT_MS", "1000")
        .env("BANTER_STREAM__MAX_BATCH_EVENTS", "500")
        .env("BANTER_INGEST__ACTOR_SALT", "integration-test-salt")
        .env("BANTER_HTTP__LISTEN", "127.0.0.1:0")
        .env("BANTER_TELEMETRY__LOG_LEVEL", "info");
    c
}

/// Starts `banter stream` as instance `instance`; its log goes to a file in `dir`.
fn start_stream(cfg: &Config, instance: &str, dir: &Path) -> Child {
    let log = std::fs::File::create(dir.join(format!("{instance}.log"))).unwrap();
    banter_cmd(cfg)
        .arg("stream")
        .env("BANTER_STREAM__INSTANCE_ID", instance)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Runs `banter generate --to kafka` (paced at `rate` events/s when > 0) and returns the
/// path of its expected aggregates.
fn generate(cfg: &Config, dir: &Path, rate: u64) -> Child {
    let exp = dir.join("expected.json");
    banter_cmd(cfg)
        .args([
            "generate",
            "--to",
            "kafka",
            "--accounts",
            "24",
            "--minutes",
            "240",
            "--seed",
            "1",
            "--rate",
            &rate.to_string(),
            "--expected",
            exp.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn finish(mut child: Child, what: &str) {
    let status = child.wait().unwrap();
    assert!(status.success(), "{what} failed: {status}");
}

fn stop(mut child: Child) {
    // SIGTERM: a clean stop.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("banter stream did not stop within 30 s of SIGTERM");
}

/// Latest committed row per key, read with `read_committed` like the sink.
struct Rollups {
    consumer: BaseConsumer,
    rows: BTreeMap<(String, Option<String>, WindowKind, i64), Rollup>,
    seen: usize,
}

impl Rollups {
    fn new(cfg: &Config) -> Self {
        let consumer: BaseConsumer =
            banter_runtime::kafka::consumer_config(&cfg.kafka, "test", &unique("rollups"))
                .create()
                .unwrap();
        let md = consumer
            .fetch_metadata(Some(&cfg.kafka.topics.rollups), Duration::from_secs(10))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(&cfg.kafka.topics.rollups, p.id(), Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        Rollups {
            consumer,
            rows: BTreeMap::new(),
            seen: 0,
        }
    }

    fn poll(&mut self) {
        while let Some(m) = self.consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let r = Rollup::codec().decode(m.payload().unwrap()).unwrap();
            self.seen += 1;
            let key = (
                r.account_id.clone(),
                r.content_id.clone(),
                r.window,
                r.window_start,
            );
            match self.rows.get(&key) {
                Some(old) if old.revision > r.revision => {}
                _ => {
                    self.rows.insert(key, r);
                }
            }
        }
    }
}

fn read_expected(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap()
}

/// Differences between the rollups and the generator's expected aggregates (empty: equal).
/// Compared: the windows that event time closes (the watermark reaches the last event time
/// minus the out-of-orderness; the last minutes close only when the partitions go idle, which
/// follows the wall clock and is covered by the engine's golden tests): every MINUTE row of
/// accounts and posts (interactions), VELOCITY_5M rows, and the first-hour rows (first 15 /
/// 60 minutes, time-to-N at the engine's minute resolution).
fn differences(
    x: &Value,
    rows: &BTreeMap<(String, Option<String>, WindowKind, i64), Rollup>,
) -> Vec<String> {
    let e = &x["expected"];
    let last_minute = e["account_minutes"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|m| m.as_object().unwrap().keys())
        .map(|m| m.parse::<i64>().unwrap())
        .max()
        .unwrap();
    // Windows ending by here are closed by event time alone.
    let end = last_minute - MINUTE;
    let mut diffs = Vec::new();
    let minutes = |v: &Value| -> BTreeMap<i64, i64> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(m, n)| (m.parse().unwrap(), n.as_i64().unwrap()))
            .filter(|(m, n)| *n != 0 && m + MINUTE <= end)
            .collect()
    };
    let mut want: BTreeMap<(String, Option<String>), BTreeMap<i64, i64>> = BTreeMap::new();
    for (a, m) in e["account_minutes"].as_object().unwrap() {
        want.insert((a.clone(), None), minutes(m));
    }
    // content_minutes is keyed by post; the rows carry the account too.
    let post_account: BTreeMap<String, String> = x["posts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["content_id"].as_str().unwrap().to_owned(),
                p["account_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (c, m) in e["content_minutes"].as_object().unwrap() {
        let a = post_account.get(c).cloned().unwrap_or_default();
        want.insert((a, Some(c.clone())), minutes(m));
    }
    let mut got: BTreeMap<(String, Option<String>), BTreeMap<i64, i64>> = BTreeMap::new();
    for ((a, c, w, s), r) in rows {
        if *w == WindowKind::Minute && r.interactions != 0 && s + MINUTE <= end {
            got.entry((a.clone(), c.clone()))
                .or_default()
                .insert(*s, r.interactions);
        }
    }
    want.retain(|_, m| !m.is_empty());
    for k in want.keys().chain(got.keys()).collect::<BTreeSet<_>>() {
        let (w, g) = (want.get(k), got.get(k));
        if w != g {
            let empty = BTreeMap::new();
            let (w, g) = (w.unwrap_or(&empty), g.unwrap_or(&empty));
            let bad: Vec<_> = w
                .keys()
                .chain(g.keys())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|m| w.get(m) != g.get(m))
                .take(3)
                .map(|m| format!("minute {m}: expected {:?}, got {:?}", w.get(m), g.get(m)))
                .collect();
            diffs.push(format!("MINUTE {k:?}: {bad:?}"));
        }
    }
    // Velocity: the sum of the five minutes, for windows closed by event time.
    for ((a, c, w, s), r) in rows {
        if *w != WindowKind::Velocity5m || r.window_end > end {
            continue;
        }
        let m = want.get(&(a.clone(), c.clone()));
        let sum: i64 = (0..5)
            .map(|i| {
                m.and_then(|m| m.get(&(s + i * MINUTE)))
                    .copied()
                    .unwrap_or(0)
            })
            .sum();
        if sum != r.interactions {
            diffs.push(format!(
                "VELOCITY_5M {a}/{c:?}@{s}: expected {sum}, got {}",
                r.interactions
            ));
        }
    }
    // First hour.
    for (c, fh) in e["first_hour"].as_object().unwrap() {
        let a = post_account.get(c).cloned().unwrap_or_default();
        let find = |w: WindowKind| {
            rows.iter()
                .find(|((ra, rc, rw, _), _)| *ra == a && rc.as_deref() == Some(c) && *rw == w)
                .map(|(_, r)| r)
        };
        let (Some(r15), Some(r60)) = (find(WindowKind::First15m), find(WindowKind::First60m))
        else {
            let published = x["posts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["content_id"] == c.as_str())
                .and_then(|p| p["published_at"].as_i64())
                .unwrap_or(i64::MAX);
            if published + 60 * MINUTE <= end {
                diffs.push(format!("first-hour rows of {c} missing"));
            }
            continue;
        };
        let p = r60.window_start;
        if r15.interactions != fh["first_15m"].as_i64().unwrap() {
            diffs.push(format!(
                "FIRST_15M {c}: expected {}, got {}",
                fh["first_15m"], r15.interactions
            ));
        }
        if r60.interactions != fh["first_60m"].as_i64().unwrap() {
            diffs.push(format!(
                "FIRST_60M {c}: expected {}, got {}",
                fh["first_60m"], r60.interactions
            ));
        }
        // The generator is exact to the ms; the engine reports the end of the minute in
        // which the count reached N.
        let want_ttn = fh["time_to_n_minutes"].as_f64().map(|t| {
            let at = p + (t * MINUTE as f64).round() as i64;
            let minute = at - at.rem_euclid(MINUTE);
            (minute + MINUTE - p) as f64 / MINUTE as f64
        });
        let close = match (want_ttn, r60.time_to_n_minutes) {
            (Some(w), Some(g)) => (w - g).abs() < 1e-6,
            (None, None) => true,
            _ => false,
        };
        if !close {
            diffs.push(format!(
                "time to N of {c}: expected {want_ttn:?}, got {:?}",
                r60.time_to_n_minutes
            ));
        }
    }
    diffs
}

/// Polls the rollups until they equal the expected aggregates.
async fn rollups_match(cfg: &Config, dir: &Path, timeout: Duration) -> Rollups {
    let x = read_expected(dir);
    let mut rollups = Rollups::new(cfg);
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    loop {
        rollups.poll();
        let d = differences(&x, &rollups.rows);
        if d.is_empty() {
            eprintln!(
                "rollups equal the expected aggregates after {:?} ({} rows read)",
                t0.elapsed(),
                rollups.seen
            );
            return rollups;
        }
        if std::env::var_os("BANTER_TEST_TRACE").is_some() {
            eprintln!(
                "{:?}: {} rows, {} differences, e.g. {:?}",
                t0.elapsed(),
                rollups.seen,
                d.len(),
                d.first()
            );
        }
        if Instant::now() > deadline {
            panic!(
                "rollups ({} rows read, {} keys) differ from the expected aggregates after {timeout:?}; logs in {}:\n{}",
                rollups.seen,
                rollups.rows.len(),
                dir.display(),
                d.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_workload_gives_the_expected_rollups_and_dead_letters() {
    let cfg = fresh_pipeline_config("stream").await;
    let dir = test_dir("banter-stream");
    finish(generate(&cfg, &dir, 0), "banter generate");
    let stream = start_stream(&cfg, "a", &dir);
    rollups_match(&cfg, &dir, Duration::from_secs(120)).await;

    // Events later than the allowed lateness are dead-lettered as `late`, with the event.
    let x = read_expected(&dir);
    let too_late: BTreeSet<String> = x["expected"]["too_late"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(
        !too_late.is_empty(),
        "the workload should have too-late events"
    );
    let dlq = consume(
        &cfg,
        &cfg.kafka.topics.dlq,
        too_late.len(),
        Duration::from_secs(30),
    )
    .await;
    let mut ids = BTreeSet::new();
    for m in dlq {
        let dl = DeadLetter::codec().decode(m.payload().unwrap()).unwrap();
        assert_eq!(dl.reason, "late", "{dl:?}");
        assert!(dl.detail.contains("allowed lateness"), "{}", dl.detail);
        ids.insert(
            EngagementEvent::codec()
                .decode(&dl.payload)
                .unwrap()
                .event_id,
        );
    }
    assert_eq!(ids, too_late);
    stop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_changes_nothing() {
    let cfg = fresh_pipeline_config("stream-kill").await;
    let dir = test_dir("banter-stream-kill");
    let gen = generate(&cfg, &dir, 2500);
    let mut first = start_stream(&cfg, "a", &dir);
    // Kill it once it has committed some output and before the input is complete.
    let mut rollups = Rollups::new(&cfg);
    wait_for("the first rollups", Duration::from_secs(60), || {
        rollups.poll();
        std::future::ready((rollups.seen > 2500).then_some(()))
    })
    .await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let log = std::fs::read_to_string(dir.join("a.log")).unwrap();
    std::fs::rename(dir.join("a.log"), dir.join("a-killed.log")).unwrap();
    assert!(log.contains("stream started"), "{log}");
    // The same instance comes back (fencing its previous life) and restores from the
    // checkpoints while input keeps arriving.
    let second = start_stream(&cfg, "a", &dir);
    finish(gen, "banter generate");
    rollups_match(&cfg, &dir, Duration::from_secs(120)).await;
    stop(second);
    let log = std::fs::read_to_string(dir.join("a.log")).unwrap();
    assert!(
        log.contains("how=\"replayed\"") || log.contains("how=replayed"),
        "no partition was restored by replay:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_joining_and_the_first_leaving_change_nothing() {
    let cfg = fresh_pipeline_config("stream-join").await;
    let dir = test_dir("banter-stream-join");
    let gen = generate(&cfg, &dir, 2500);
    let a = start_stream(&cfg, "a", &dir);
    let mut rollups = Rollups::new(&cfg);
    wait_for("the first rollups", Duration::from_secs(60), || {
        rollups.poll();
        std::future::ready((rollups.seen > 100).then_some(()))
    })
    .await;
    let b = start_stream(&cfg, "b", &dir);
    // Wait until b owns partitions, then let a leave in the middle of the input.
    wait_for(
        "instance b to be assigned partitions",
        Duration::from_secs(60),
        || {
            let log = std::fs::read_to_string(dir.join("b.log")).unwrap_or_default();
            std::future::ready(log.contains("partition assigned").then_some(()))
        },
    )
    .await;
    stop(a);
    finish(gen, "banter generate");
    rollups_match(&cfg, &dir, Duration::from_secs(120)).await;
    stop(b);
}
