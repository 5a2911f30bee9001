//! `banter generate` and `banter replay` as a user runs them, against the real broker: what
//! arrives matches what the generator says it generated.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use banter::Config;
use banter_model::{AvroRecord, EngagementEvent};
use banter_testkit::*;
use banter_workload::Generated;
use rdkafka::Message;

fn banter(cfg: &Config, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_banter"))
        .args(args)
        .env("BANTER_KAFKA__BROKERS", &cfg.kafka.brokers)
        .env("BANTER_KAFKA__TOPICS__EVENTS", &cfg.kafka.topics.events)
        .env("BANTER_KAFKA__TOPICS__DLQ", &cfg.kafka.topics.dlq)
        .env("BANTER_INGEST__ACTOR_SALT", "integration-test-salt")
        .env("BANTER_TELEMETRY__LOG_LEVEL", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "banter {args:?} failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned() + &stderr
}

fn expected(path: &Path) -> Generated {
    Generated::read(path).unwrap()
}

/// Decodes `n` messages; returns interactions per account after de-duplication, and the
/// distinct event ids.
async fn arrived(
    cfg: &Config,
    n: usize,
    too_late: &BTreeSet<String>,
) -> (BTreeMap<String, i64>, BTreeSet<String>) {
    let mut per_account = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for m in consume(cfg, &cfg.kafka.topics.events, n, Duration::from_secs(120)).await {
        let e = EngagementEvent::codec()
            .decode(m.payload().unwrap())
            .unwrap();
        if ids.insert(e.event_id.clone()) && !too_late.contains(&e.event_id) {
            *per_account.entry(e.account_id.clone()).or_insert(0) += e.interaction_delta();
        }
    }
    (per_account, ids)
}

fn expected_per_account(x: &Generated) -> BTreeMap<String, i64> {
    x.expected
        .account_minutes
        .iter()
        .map(|(a, minutes)| (a.clone(), minutes.values().sum()))
        .filter(|(_, n)| *n != 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_workload_arrives_as_the_generator_expects() {
    let cfg = fresh_pipeline_config("generate-kafka").await;
    let dir = std::env::temp_dir().join(unique("banter-generate"));
    std::fs::create_dir_all(&dir).unwrap();
    let exp_path = dir.join("expected.json");
    banter(
        &cfg,
        &[
            "generate",
            "--to",
            "kafka",
            "--accounts",
            "12",
            "--minutes",
            "150",
            "--seed",
            "7",
            "--expected",
            exp_path.to_str().unwrap(),
        ],
    );
    let x = expected(&exp_path);
    let deliveries = x.expected.deliveries as usize;
    let unique_events = x.expected.unique_events as usize;
    assert!(x.expected.duplicates > 0);
    let too_late: BTreeSet<String> = x.expected.too_late.iter().cloned().collect();

    let (per_account, ids) = arrived(&cfg, deliveries, &too_late).await;
    assert_eq!(ids.len(), unique_events, "distinct events");
    let got: BTreeMap<String, i64> = per_account.into_iter().filter(|(_, n)| *n != 0).collect();
    assert_eq!(got, expected_per_account(&x));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_file_replays_once_and_resumes() {
    let cfg = fresh_pipeline_config("generate-replay").await;
    let dir = std::env::temp_dir().join(unique("banter-replay"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("events.ndjson");
    let exp_path = dir.join("expected.json");
    banter(
        &cfg,
        &[
            "generate",
            "--to",
            "file",
            "--out",
            file.to_str().unwrap(),
            "--accounts",
            "8",
            "--minutes",
            "90",
            "--expected",
            exp_path.to_str().unwrap(),
        ],
    );
    let x = expected(&exp_path);
    let deliveries = x.expected.deliveries;
    // A bad line among good ones is dead-lettered, not fatal.
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("{\"kind\": \n");
    std::fs::write(&file, text).unwrap();

    let out = banter(&cfg, &["replay", file.to_str().unwrap()]);
    assert!(
        out.contains(&format!(
            "replayed {} lines: {deliveries} events, 1 dead letters",
            deliveries + 1
        )),
        "{out}"
    );
    // Done: a second run resumes at the end and publishes nothing.
    let again = banter(&cfg, &["replay", file.to_str().unwrap()]);
    assert!(again.contains("replayed 0 lines"), "{again}");

    let (_, ids) = arrived(&cfg, deliveries as usize, &BTreeSet::new()).await;
    assert_eq!(ids.len() as u64, x.expected.unique_events);
    let dlq = consume(&cfg, &cfg.kafka.topics.dlq, 1, Duration::from_secs(30)).await;
    let letter = banter_model::DeadLetter::codec()
        .decode(dlq[0].payload().unwrap())
        .unwrap();
    assert_eq!(letter.reason, "malformed");
    assert!(
        letter
            .detail
            .starts_with(&format!("line {}:", deliveries + 1)),
        "{}",
        letter.detail
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_webhooks_go_through_ingest() {
    let cfg = fresh_pipeline_config("generate-webhook").await;
    let ingest = start_ingest(&cfg).await;
    let dir = std::env::temp_dir().join(unique("banter-webhook"));
    std::fs::create_dir_all(&dir).unwrap();
    let exp_path = dir.join("expected.json");
    banter(
        &cfg,
        &[
            "generate",
            "--to",
            "webhook",
            "--url",
            &ingest.base,
            "--app-secret",
            META_APP_SECRET,
            "--accounts",
            "6",
            "--minutes",
            "60",
            "--expected",
            exp_path.to_str().unwrap(),
        ],
    );
    let x = expected(&exp_path);
    let deliveries = x.expected.deliveries as usize;
    let too_late: BTreeSet<String> = BTreeSet::new();
    let (per_account, ids) = arrived(&cfg, deliveries, &too_late).await;
    // Webhook deliveries get Meta-style event ids; duplicates still collapse.
    assert_eq!(ids.len() as u64, x.expected.unique_events);
    // A 60-minute span has no delivery beyond the allowed lateness.
    assert!(x.expected.too_late.is_empty());
    let got: BTreeMap<String, i64> = per_account.into_iter().filter(|(_, n)| *n != 0).collect();
    assert_eq!(got, expected_per_account(&x));
}
