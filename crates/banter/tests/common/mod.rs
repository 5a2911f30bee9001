//! Helpers shared by the tests that run `banter` roles as processes: starting them, the
//! generated workload, and comparing rollups with the generator's expected aggregates.

#![allow(dead_code)] // each test binary uses a part

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use banter_integration::*;
use banter_model::{AvroRecord, Rollup, WindowKind};
use banter_runtime::Config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::Value;

pub const MINUTE: i64 = 60_000;

pub fn banter_cmd(cfg: &Config) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_banter"));
    let t = &cfg.kafka.topics;
    c.env("BANTER_KAFKA__BROKERS", &cfg.kafka.brokers)
        .env("BANTER_KAFKA__TOPICS__EVENTS", &t.events)
        .env("BANTER_KAFKA__TOPICS__ROLLUPS", &t.rollups)
        .env("BANTER_KAFKA__TOPICS__DLQ", &t.dlq)
        .env("BANTER_KAFKA__TOPICS__ALERTS", &t.alerts)
        .env("BANTER_KAFKA__TOPICS__CHECKPOINTS", &t.checkpoints)
        .env("BANTER_STREAM__GROUP_ID", &cfg.stream.group_id)
        .env("BANTER_SINK__GROUP_ID", &cfg.sink.group_id)
        .env("BANTER_SINK__MAX_BATCH_MS", "300")
        .env("BANTER_SINK__MAX_BACKOFF_MS", "2000")
        .env("BANTER_CLICKHOUSE__URL", &cfg.clickhouse.url)
        .env("BANTER_CLICKHOUSE__DATABASE", &cfg.clickhouse.database)
        .env("BANTER_STREAM__IDLE_TIMEOUT_MS", "1000")
        .env("BANTER_STREAM__MAX_BATCH_EVENTS", "500")
        .env("BANTER_INGEST__ACTOR_SALT", "integration-test-salt")
        .env("BANTER_HTTP__LISTEN", "127.0.0.1:0")
        .env("BANTER_TELEMETRY__LOG_LEVEL", "info");
    c
}

/// Starts `banter stream` as instance `instance`; its log goes to a file in `dir`.
pub fn start_stream(cfg: &Config, instance: &str, dir: &Path) -> Proc {
    start_role(cfg, "stream", instance, dir)
}

/// Starts `banter <role>`; its log goes to `<dir>/<instance>.log`.
pub fn start_role(cfg: &Config, role: &str, instance: &str, dir: &Path) -> Proc {
    let log = std::fs::File::create(dir.join(format!("{instance}.log"))).unwrap();
    with_campaigns(&mut banter_cmd(cfg), dir)
        .arg(role)
        .env("BANTER_STREAM__INSTANCE_ID", instance)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(Proc::new)
        .unwrap()
}

/// Runs `banter generate --to kafka` (paced at `rate` events/s when > 0) and returns the
/// path of its expected aggregates.
pub fn generate(cfg: &Config, dir: &Path, rate: u64) -> Proc {
    generate_to(cfg, dir, rate, "kafka")
}

/// Points a command at the campaigns file of `dir` (written by [`generate`]), reloaded
/// every 500 ms.
pub fn with_campaigns<'a>(c: &'a mut Command, dir: &Path) -> &'a mut Command {
    let file = dir.join("campaigns.toml");
    if file.exists() {
        c.env("BANTER_CTA__CAMPAIGNS_FILE", file)
            .env("BANTER_CTA__RELOAD_INTERVAL_MS", "500");
    }
    c
}

/// Writes the campaigns of the workload's CTA posts to `dir/campaigns.toml` (what
/// [`generate_to`] will send), before anything is sent.
pub fn write_campaigns(cfg: &Config, dir: &Path) {
    let status = banter_cmd(cfg)
        .arg("generate")
        .args(WORKLOAD)
        .arg("--campaigns")
        .arg(dir.join("campaigns.toml"))
        .arg("--only-campaigns")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "banter generate --only-campaigns failed");
}

/// The workload options every test uses.
const WORKLOAD: [&str; 6] = ["--accounts", "24", "--minutes", "240", "--seed", "1"];

/// [`generate`] to another output (`http` posts to `ingest.listen`). The campaigns of the
/// workload's CTA posts are written to `dir/campaigns.toml` first, before anything is sent.
pub fn generate_to(cfg: &Config, dir: &Path, rate: u64, to: &str) -> Proc {
    let exp = dir.join("expected.json");
    write_campaigns(cfg, dir);
    banter_cmd(cfg)
        .args([
            "generate",
            "--url",
            &format!("http://{}", cfg.ingest.listen),
            "--to",
            to,
            "--rate",
            &rate.to_string(),
            "--expected",
            exp.to_str().unwrap(),
        ])
        .args(WORKLOAD)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("generate.log")).unwrap())
        .spawn()
        .map(Proc::new)
        .unwrap()
}

/// A child process that is killed when dropped, so a failing test leaves nothing running.
pub struct Proc(Option<Child>);

impl Proc {
    fn new(c: Child) -> Self {
        Proc(Some(c))
    }

    /// Takes charge of a process started elsewhere.
    pub fn from_child(c: Child) -> Self {
        Proc(Some(c))
    }

    fn take(&mut self) -> Child {
        self.0.take().unwrap()
    }

    /// SIGKILL, and wait for it.
    pub fn kill9(&mut self) {
        let mut c = self.take();
        c.kill().unwrap();
        c.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn finish(mut p: Proc, what: &str) {
    let status = p.take().wait().unwrap();
    assert!(
        status.success(),
        "{what} failed: {status} (`banter generate` logs to generate.log in the test's directory)"
    );
}

pub fn stop(mut p: Proc) {
    let mut child = p.take();
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
    let _ = child.wait();
    panic!("banter did not stop within 30 s of SIGTERM");
}

/// Latest committed row per key, read with `read_committed` like the sink.
pub struct Rollups {
    consumer: BaseConsumer,
    pub rows: BTreeMap<(String, Option<String>, WindowKind, i64), Rollup>,
    /// Funnel rows (the same topic): latest per (campaign, window, start).
    pub funnels: BTreeMap<(String, WindowKind, i64), banter_model::FunnelRollup>,
    /// Conversation rows (the same topic): latest per (account, content, window, start).
    pub conversations:
        BTreeMap<(String, Option<String>, WindowKind, i64), banter_model::ConversationRollup>,
    pub seen: usize,
}

impl Rollups {
    pub fn new(cfg: &Config) -> Self {
        let consumer = from_beginning(cfg, &cfg.kafka.topics.rollups);
        Rollups {
            consumer,
            rows: BTreeMap::new(),
            funnels: BTreeMap::new(),
            conversations: BTreeMap::new(),
            seen: 0,
        }
    }

    pub fn poll(&mut self) {
        while let Some(m) = self.consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let payload = m.payload().unwrap();
            let conv = banter_model::ConversationRollup::codec();
            if banter_model::codec::Codec::<Rollup>::peek_fingerprint(payload)
                == Some(conv.fingerprint())
            {
                let c = conv.decode(payload).unwrap();
                let key = (
                    c.account_id.clone(),
                    c.content_id.clone(),
                    c.window,
                    c.window_start,
                );
                keep_latest(&mut self.conversations, key, c, |c| c.revision);
                continue;
            }
            let funnel = banter_model::FunnelRollup::codec();
            if banter_model::codec::Codec::<banter_model::FunnelRollup>::peek_fingerprint(payload)
                == Some(funnel.fingerprint())
            {
                let f = funnel.decode(payload).unwrap();
                let key = (f.campaign_id.clone(), f.window, f.window_start);
                keep_latest(&mut self.funnels, key, f, |f| f.revision);
                continue;
            }
            let r = Rollup::codec().decode(payload).unwrap();
            self.seen += 1;
            let key = (
                r.account_id.to_string(),
                r.content_id.as_deref().map(str::to_owned),
                r.window,
                r.window_start,
            );
            keep_latest(&mut self.rows, key, r, |r| r.revision);
        }
    }
}

/// Keeps `v` under `k` unless a row with a higher revision is there (the last revision wins,
/// as in ClickHouse's `ReplacingMergeTree(revision)`).
fn keep_latest<K: Ord, V>(m: &mut BTreeMap<K, V>, k: K, v: V, revision: impl Fn(&V) -> i64) {
    if m.get(&k).is_none_or(|o| revision(o) <= revision(&v)) {
        m.insert(k, v);
    }
}

pub fn read_expected(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap()
}

/// Differences between the rollups and the generator's expected aggregates (empty: equal).
/// Compared: the windows that event time closes (the watermark reaches the last event time
/// minus the out-of-orderness; the last minutes close only when the partitions go idle, which
/// follows the wall clock and is covered by the engine's golden tests): every MINUTE row of
/// accounts and posts (interactions), VELOCITY_5M rows, and the first-hour rows (first 15 /
/// 60 minutes, time-to-N at the engine's minute resolution).
pub fn differences(
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
pub async fn rollups_match(cfg: &Config, dir: &Path, timeout: Duration) -> Rollups {
    let x = read_expected(dir);
    let mut rollups = Rollups::new(cfg);
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    loop {
        rollups.poll();
        let mut d = differences(&x, &rollups.rows);
        d.extend(funnel_differences(
            &x,
            rollups
                .funnels
                .values()
                .map(|f| (f.campaign_id.as_str(), f.window, funnel_counts(f))),
        ));
        d.extend(conversation_differences(
            &x,
            rollups
                .conversations
                .values()
                .filter(|r| r.content_id.is_none())
                .map(|r| {
                    (
                        r.account_id.as_str(),
                        r.window,
                        r.inbound_comments,
                        r.answered_comments,
                    )
                }),
        ));
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

pub fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `banter migrate` for the configured database.
pub fn migrate(cfg: &Config) {
    let out = banter_cmd(cfg).arg("migrate").output().unwrap();
    assert!(
        out.status.success(),
        "banter migrate failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `rollups_final` row.
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
pub struct FinalRow {
    pub account_id: String,
    pub content_id: String,
    pub window_kind: String,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub revision: i64,
    pub interactions: i64,
    pub time_to_n_minutes: Option<f64>,
    pub unique_engagers: Option<i64>,
    pub late_events: i64,
}

/// The deduplicated rollups in ClickHouse, keyed like [`Rollups::rows`].
pub async fn clickhouse_rollups(
    ch: &banter_runtime::clickhouse::ClickHouse,
) -> BTreeMap<(String, Option<String>, WindowKind, i64), Rollup> {
    let rows: Vec<FinalRow> = ch
        .client
        .query(
            "SELECT account_id, content_id, window_kind, window_start_ms, window_end_ms, revision, \
             interactions, time_to_n_minutes, unique_engagers, late_events FROM rollups_final",
        )
        .fetch_all()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for r in rows {
        let window = match r.window_kind.as_str() {
            "MINUTE" => WindowKind::Minute,
            "VELOCITY_5M" => WindowKind::Velocity5m,
            "FIRST_15M" => WindowKind::First15m,
            "FIRST_60M" => WindowKind::First60m,
            "HOUR" => WindowKind::Hour,
            other => panic!("unexpected window_kind {other}"),
        };
        let content = (!r.content_id.is_empty()).then_some(r.content_id);
        let key = (
            r.account_id.clone(),
            content.clone(),
            window,
            r.window_start_ms,
        );
        let prev = out.insert(
            key,
            Rollup {
                account_id: r.account_id.into(),
                content_id: content.map(Into::into),
                window,
                window_start: r.window_start_ms,
                window_end: r.window_end_ms,
                revision: r.revision,
                interactions: r.interactions,
                comments: 0,
                live_comments: 0,
                reactions: 0,
                shares: 0,
                story_replies: 0,
                dms_in: 0,
                mentions: 0,
                brand_replies: 0,
                velocity: None,
                early_accel: None,
                time_to_n_minutes: r.time_to_n_minutes,
                unique_engagers: r.unique_engagers,
                late_events: r.late_events,
                emitted_at: 0,
            },
        );
        assert!(prev.is_none(), "rollups_final returned a key twice");
    }
    out
}

/// Polls ClickHouse until its deduplicated rollups equal the expected aggregates.
pub async fn clickhouse_matches(
    ch: &banter_runtime::clickhouse::ClickHouse,
    dir: &Path,
    timeout: Duration,
) -> BTreeMap<(String, Option<String>, WindowKind, i64), Rollup> {
    let x = read_expected(dir);
    let t0 = Instant::now();
    loop {
        let rows = clickhouse_rollups(ch).await;
        let d = differences(&x, &rows);
        if d.is_empty() {
            eprintln!(
                "ClickHouse equals the expected aggregates after {:?} ({} keys)",
                t0.elapsed(),
                rows.len()
            );
            return rows;
        }
        if t0.elapsed() > timeout {
            panic!(
                "ClickHouse rollups ({} keys) differ from the expected aggregates after {timeout:?}; logs in {}:\n{}",
                rows.len(),
                dir.display(),
                d.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A consumer of every partition of `topic` from the beginning, `read_committed`.
fn from_beginning(cfg: &Config, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer =
        banter_runtime::kafka::consumer_config(&cfg.kafka, "test", &unique("reader"))
            .create()
            .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    consumer
}

/// Polls `check` until it finds no differences; after `timeout` fails with the last ones.
pub async fn until_no_differences<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let diffs = check().await;
        if diffs.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} after {timeout:?}:\n{diffs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every spike alert record on the alerts topic, read with `read_committed`.
pub struct Alerts {
    consumer: BaseConsumer,
    pub records: Vec<AlertSeen>,
}

/// What the alert checks look at, from the topic or from ClickHouse.
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
pub struct AlertSeen {
    pub alert_id: String,
    /// FIRING or RESOLVED.
    pub state: String,
    pub account_id: String,
    /// '' for account alerts.
    pub content_id: String,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
}

impl Alerts {
    pub fn new(cfg: &Config) -> Self {
        Alerts {
            consumer: from_beginning(cfg, &cfg.kafka.topics.alerts),
            records: Vec::new(),
        }
    }

    pub fn poll(&mut self) {
        while let Some(m) = self.consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let a = banter_model::SpikeAlert::codec()
                .decode(m.payload().unwrap())
                .unwrap();
            self.records.push(AlertSeen {
                alert_id: a.alert_id,
                state: a.state.as_str().to_owned(),
                account_id: a.account_id,
                content_id: a.content_id.unwrap_or_default(),
                started_at_ms: a.started_at,
                ended_at_ms: a.ended_at,
            });
        }
    }
}

/// What is wrong with the alerts against the generator's injected spikes (empty: nothing):
/// every spike has exactly one FIRING post alert starting within 2 minutes of its onset, and
/// one RESOLVED of it after the spike; every post alert belongs to a spike; no record is
/// written twice (exactly once across restarts and rebalances).
pub fn alert_differences(x: &Value, records: &[AlertSeen]) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut seen = BTreeSet::new();
    for a in records {
        if !seen.insert((a.alert_id.as_str(), a.state.as_str())) {
            diffs.push(format!("written twice: {} {}", a.alert_id, a.state));
        }
    }
    let spikes = x["expected"]["spikes"].as_array().unwrap();
    let belongs = |a: &AlertSeen, s: &Value| {
        Some(a.content_id.as_str()) == s["content_id"].as_str()
            && a.account_id == s["account_id"].as_str().unwrap()
            && a.started_at_ms >= s["start_ms"].as_i64().unwrap() - 2 * MINUTE
            && a.started_at_ms < s["end_ms"].as_i64().unwrap()
    };
    for s in spikes {
        let firing: Vec<_> = records
            .iter()
            .filter(|a| a.state == "FIRING" && belongs(a, s))
            .collect();
        if firing.len() != 1 {
            diffs.push(format!("{} FIRING alerts for spike {s}", firing.len()));
            continue;
        }
        let resolved = records
            .iter()
            .find(|a| a.state == "RESOLVED" && a.alert_id == firing[0].alert_id);
        match resolved.and_then(|r| r.ended_at_ms) {
            Some(end) if end >= s["end_ms"].as_i64().unwrap() - MINUTE => {}
            other => diffs.push(format!(
                "spike {s} not resolved after its end (ended_at {other:?})"
            )),
        }
    }
    for a in records.iter().filter(|a| !a.content_id.is_empty()) {
        if !spikes.iter().any(|s| belongs(a, s)) {
            diffs.push(format!("post alert without an injected spike: {a:?}"));
        }
    }
    diffs
}

/// Waits until the alerts topic holds what the injected spikes call for.
pub async fn alerts_match(cfg: &Config, dir: &Path, timeout: Duration) {
    let x = read_expected(dir);
    assert!(
        !x["expected"]["spikes"].as_array().unwrap().is_empty(),
        "the workload should inject spikes"
    );
    let mut alerts = Alerts::new(cfg);
    until_no_differences("alerts do not match the injected spikes", timeout, || {
        alerts.poll();
        std::future::ready(alert_differences(&x, &alerts.records))
    })
    .await;
    // Anything written twice would follow its first copy closely.
    std::thread::sleep(Duration::from_secs(1));
    alerts.poll();
    let diffs = alert_differences(&x, &alerts.records);
    assert!(diffs.is_empty(), "{diffs:#?}");
}

/// Waits until ClickHouse's `alerts` table holds one FIRING and one RESOLVED post alert per
/// injected spike, each belonging to its spike.
pub async fn clickhouse_alerts_match(
    ch: &banter_runtime::clickhouse::ClickHouse,
    dir: &Path,
    timeout: Duration,
) {
    let x = &read_expected(dir);
    until_no_differences(
        "alerts in ClickHouse do not match the injected spikes",
        timeout,
        move || async move {
            let rows: Vec<AlertSeen> = ch
                .client
                .query(
                    "SELECT alert_id, state, account_id, content_id, started_at_ms, ended_at_ms \
                     FROM alerts WHERE content_id != ''",
                )
                .fetch_all()
                .await
                .unwrap();
            alert_differences(x, &rows)
        },
    )
    .await;
}

/// A funnel row's stage counts and conversion value in cents, as the checks compare them.
pub fn funnel_counts(f: &banter_model::FunnelRollup) -> [i64; 7] {
    let s = f.stages();
    [
        s[0],
        s[1],
        s[2],
        s[3],
        s[4],
        s[5],
        (f.conversion_value * 100.0).round() as i64,
    ]
}

/// Differences between funnel rows — (campaign, window kind, [`funnel_counts`]) — and the
/// generator's expected funnels (empty: equal): per campaign, each stage summed over its DAY
/// windows, and over its HOUR windows, equals the distinct actors the generator sent through
/// that stage; the conversion value too.
pub fn funnel_differences<'a>(
    x: &Value,
    rows: impl Iterator<Item = (&'a str, WindowKind, [i64; 7])> + Clone,
) -> Vec<String> {
    let mut diffs = Vec::new();
    let expected = x["expected"]["funnels"].as_object().unwrap();
    for kind in [WindowKind::Day, WindowKind::Hour] {
        let mut got: BTreeMap<&str, [i64; 7]> = BTreeMap::new();
        for (campaign, _, counts) in rows.clone().filter(|r| r.1 == kind) {
            let t = got.entry(campaign).or_default();
            for (sum, v) in t.iter_mut().zip(counts) {
                *sum += v;
            }
        }
        for (campaign, e) in expected {
            let want = [
                "triggered",
                "private_reply_sent",
                "dm_read",
                "engaged",
                "link_clicked",
                "converted",
                "conversion_value_cents",
            ]
            .map(|k| e[k].as_i64().unwrap());
            let have = got.remove(campaign.as_str()).unwrap_or_default();
            if have != want {
                diffs.push(format!(
                    "funnel {campaign} ({kind:?} windows): {have:?}, expected {want:?}"
                ));
            }
        }
        for (campaign, have) in got {
            diffs.push(format!("funnel {campaign} not generated: {have:?}"));
        }
    }
    diffs
}

fn window_kind(s: &str) -> WindowKind {
    if s == "HOUR" {
        WindowKind::Hour
    } else {
        WindowKind::Day
    }
}

/// Waits until ClickHouse's `funnels_final` holds the generator's expected funnels.
pub async fn clickhouse_funnels_match(
    ch: &banter_runtime::clickhouse::ClickHouse,
    dir: &Path,
    timeout: Duration,
) {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Row {
        campaign_id: String,
        window_kind: String,
        counts: Vec<i64>,
    }
    let x = &read_expected(dir);
    until_no_differences(
        "funnels in ClickHouse differ from the expected ones",
        timeout,
        move || async move {
            let rows: Vec<Row> = ch
                .client
                .query(
                    "SELECT campaign_id, window_kind, [triggered, private_reply_sent, dm_read, \
                     engaged, link_clicked, converted, toInt64(round(conversion_value * 100))] \
                     FROM funnels_final",
                )
                .fetch_all()
                .await
                .unwrap();
            funnel_differences(
                x,
                rows.iter().map(|r| {
                    let counts: [i64; 7] = r.counts.as_slice().try_into().unwrap();
                    (r.campaign_id.as_str(), window_kind(&r.window_kind), counts)
                }),
            )
        },
    )
    .await;
}

/// Differences between account-level conversation rows — (account, window kind, inbound
/// comments, answered comments) — and the generator's (empty: equal): per account, summed over
/// the account's HOUR windows and over its DAY windows.
pub fn conversation_differences<'a>(
    x: &Value,
    rows: impl Iterator<Item = (&'a str, WindowKind, i64, i64)> + Clone,
) -> Vec<String> {
    let mut diffs = Vec::new();
    let want: BTreeMap<String, (i64, i64)> = x["expected"]["comments_answered"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(a, v)| (a.clone(), (v[0].as_i64().unwrap(), v[1].as_i64().unwrap())))
        .collect();
    for kind in [WindowKind::Hour, WindowKind::Day] {
        let mut got: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for (account, _, inbound, answered) in rows.clone().filter(|r| r.1 == kind) {
            let g = got.entry(account.to_owned()).or_default();
            g.0 += inbound;
            g.1 += answered;
        }
        got.retain(|_, v| v.0 != 0);
        if got != want {
            let wrong: Vec<String> = want
                .iter()
                .filter(|(a, v)| got.get(*a) != Some(v))
                .take(5)
                .map(|(a, v)| format!("{a}: {:?}, expected {v:?}", got.get(a)))
                .collect();
            diffs.push(format!(
                "answered comments ({kind:?} windows) differ: {}",
                wrong.join("; ")
            ));
        }
    }
    diffs
}

/// Waits until ClickHouse's `conversations_final` holds the generator's answered comments.
pub async fn clickhouse_conversations_match(
    ch: &banter_runtime::clickhouse::ClickHouse,
    dir: &Path,
    timeout: Duration,
) {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Row {
        account_id: String,
        window_kind: String,
        inbound_comments: i64,
        answered_comments: i64,
    }
    let x = &read_expected(dir);
    until_no_differences(
        "conversations in ClickHouse differ from the generator's",
        timeout,
        move || async move {
            let rows: Vec<Row> = ch
                .client
                .query(
                    "SELECT account_id, window_kind, inbound_comments, answered_comments \
                     FROM conversations_final WHERE content_id = ''",
                )
                .fetch_all()
                .await
                .unwrap();
            conversation_differences(
                x,
                rows.iter().map(|r| {
                    (
                        r.account_id.as_str(),
                        window_kind(&r.window_kind),
                        r.inbound_comments,
                        r.answered_comments,
                    )
                }),
            )
        },
    )
    .await;
}
