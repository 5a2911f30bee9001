//! The broker stops mid-test: ingest answers 503 with Retry-After instead of hanging or
//! losing events, and once the broker is back every event that got a 2xx is in the topic.
//!
//! This stops the shared local broker, so it lives alone in its own test binary (cargo runs
//! test binaries one after another); a guard restarts the broker even if the test fails.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banter_model::{AvroRecord, EngagementEvent};
use banter_testkit::*;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use serde_json::json;

/// Restarts Kafka when dropped, so a failed test does not leave the broker down.
struct KafkaBack;
impl Drop for KafkaBack {
    fn drop(&mut self) {
        stack(&["up", "kafka"]);
    }
}

#[derive(Default)]
struct Log {
    ok: BTreeSet<String>,
    unavailable: usize,
    retry_after: usize,
    other: Vec<u16>,
    last_status: u16,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_gives_503_and_loses_no_acknowledged_event() {
    banter_runtime::telemetry::init_logging(&banter_runtime::config::TelemetryConfig {
        log_format: banter_runtime::config::LogFormat::Human,
        log_level: std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,banter_ingest=info".into()),
    });
    let mut cfg = fresh_pipeline_config("ingest-outage").await;
    cfg.ingest.publish_timeout_ms = 2000;
    let ingest = start_ingest(&cfg).await;
    let url = format!("{}/v1/events", ingest.base);
    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let sender = {
        let (log, stop) = (log.clone(), stop.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64;
                let ids: Vec<String> = (0..5).map(|j| format!("outage-{i}-{j}")).collect();
                let body: Vec<_> = ids
                    .iter()
                    .map(|id| json!({"event_id": id, "kind": "LINK_CLICK", "account_id": format!("acct-{}", i % 7), "click_id": id, "event_time": now}))
                    .collect();
                let status = match http.post(&url).json(&body).send().await {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let has_retry_after = r.headers().contains_key("retry-after");
                        let mut l = log.lock().unwrap();
                        match s {
                            200 => l.ok.extend(ids),
                            503 => {
                                l.unavailable += 1;
                                l.retry_after += usize::from(has_retry_after);
                            }
                            other => l.other.push(other),
                        }
                        s
                    }
                    Err(_) => 0,
                };
                log.lock().unwrap().last_status = status;
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    wait_for(
        "some acknowledged requests",
        Duration::from_secs(30),
        || {
            let log = log.clone();
            async move { (log.lock().unwrap().ok.len() >= 50).then_some(()) }
        },
    )
    .await;
    let guard = KafkaBack;
    tokio::task::spawn_blocking(|| stack(&["down", "kafka"]))
        .await
        .unwrap();
    wait_for(
        "503 answers while the broker is down",
        Duration::from_secs(60),
        || {
            let log = log.clone();
            async move { (log.lock().unwrap().unavailable >= 3).then_some(()) }
        },
    )
    .await;
    let ok_before_restart = log.lock().unwrap().ok.len();
    tokio::task::spawn_blocking(|| stack(&["up", "kafka"]))
        .await
        .unwrap();
    std::mem::forget(guard);
    wait_for(
        "acknowledged requests after the broker is back",
        Duration::from_secs(120),
        || {
            let log = log.clone();
            async move {
                let l = log.lock().unwrap();
                (l.ok.len() >= ok_before_restart + 50 && l.last_status == 200).then_some(())
            }
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.await.unwrap();

    let (ok, unavailable, retry_after, other) = {
        let l = log.lock().unwrap();
        (l.ok.clone(), l.unavailable, l.retry_after, l.other.clone())
    };
    assert!(other.is_empty(), "unexpected statuses {other:?}");
    assert_eq!(unavailable, retry_after, "every 503 carries Retry-After");

    // Every acknowledged event is in the topic (read committed); extra ones may be there too
    // when a commit succeeded after its request had timed out.
    let consumer: StreamConsumer =
        banter_runtime::kafka::consumer_config(&cfg.kafka, "test", &unique("outage"))
            .create()
            .unwrap();
    consumer.subscribe(&[&cfg.kafka.topics.events]).unwrap();
    let mut missing = ok.clone();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !missing.is_empty() && Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            let e = EngagementEvent::codec()
                .decode(m.payload().unwrap())
                .unwrap();
            missing.remove(&e.event_id);
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events missing, e.g. {:?}",
        missing.len(),
        ok.len(),
        missing.iter().next()
    );
    eprintln!(
        "{} events acknowledged, {unavailable} requests answered 503 during the outage",
        ok.len()
    );
}
