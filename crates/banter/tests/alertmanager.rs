//! Alert delivery against a real Alertmanager (the stack's, and one this test starts late):
//! a FIRING spike alert on the alerts topic shows in Alertmanager's API with its labels and
//! annotations, and is gone once its RESOLVED follows; with Alertmanager down, delivery
//! retries, reports it in its metrics, and delivers once Alertmanager is up.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use banter::Config;
use banter_model::{AlertState, AvroRecord, SpikeAlert};
use banter_testkit::*;
use rdkafka::producer::FutureRecord;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn am_port() -> u16 {
    std::env::var("BANTER_ALERTMANAGER_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(9093)
}

/// A spike alert of `account`'s post-1 that started five minutes before the minute `now` is in.
/// The FIRING and RESOLVED records of one spike must be built from the same `now`: a minute
/// boundary between them would make them two spikes.
fn spike(account: &str, state: AlertState, now: i64) -> SpikeAlert {
    let onset = now - now % 60_000 - 5 * 60_000;
    SpikeAlert {
        alert_id: format!("{account}/post-1/{onset}"),
        state,
        account_id: account.into(),
        content_id: Some("post-1".into()),
        window_start: onset + 60_000,
        window_end: onset + 120_000,
        observed: 48,
        baseline_mean: 3.2,
        baseline_stddev: 1.1,
        z_score: 25.1,
        started_at: onset,
        ended_at: (state == AlertState::Resolved).then_some(onset + 240_000),
        revision: if state == AlertState::Firing { 1 } else { 2 },
        emitted_at: onset + 120_000,
    }
}

async fn publish(cfg: &Config, a: &SpikeAlert) {
    let producer = banter_runtime::kafka::producer(&cfg.kafka, "test").unwrap();
    producer
        .send(
            FutureRecord::to(&cfg.kafka.topics.alerts)
                .key(&a.account_id)
                .payload(&SpikeAlert::codec().encode(a).unwrap()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}

/// Alerts Alertmanager lists for `account` (active, suppressed or not yet processed).
async fn listed(port: u16, account: &str) -> Option<Vec<Value>> {
    let url = format!("http://127.0.0.1:{port}/api/v2/alerts");
    let r = reqwest::Client::new()
        .get(url)
        .query(&[("filter", format!("account=\"{account}\""))])
        .send()
        .await
        .ok()?;
    r.json::<Vec<Value>>().await.ok()
}

/// Starts delivery in this process; returns its stopper and metrics registry.
fn deliver(
    cfg: &Config,
) -> (
    CancellationToken,
    std::sync::Arc<std::sync::Mutex<prometheus_client::registry::Registry>>,
    tokio::task::JoinHandle<Result<(), banter_alert::AlertError>>,
) {
    let mut registry = prometheus_client::registry::Registry::with_prefix("banter");
    let metrics = banter_alert::AlertMetrics::register(&mut registry);
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (cfg, stop) = (cfg.clone(), stop.clone());
        async move { banter_alert::run(&cfg.kafka, &cfg.alerting, metrics, stop).await }
    });
    (
        stop,
        std::sync::Arc::new(std::sync::Mutex::new(registry)),
        task,
    )
}

fn metrics_text(r: &std::sync::Mutex<prometheus_client::registry::Registry>) -> String {
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, &r.lock().unwrap()).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_alert_shows_in_alertmanager_until_it_resolves() {
    let mut cfg = fresh_pipeline_config("alert").await;
    let port = am_port();
    assert!(
        listed(port, "x").await.is_some(),
        "Alertmanager does not answer on 127.0.0.1:{port}: start the local stack with `scripts/stack.sh up`"
    );
    cfg.alerting.alertmanager_url = format!("http://127.0.0.1:{port}");
    cfg.alerting.resend_interval_ms = 2_000;
    let account = unique("acct");
    let now = banter_runtime::now_ms();
    publish(&cfg, &spike(&account, AlertState::Firing, now)).await;
    let (stop, registry, task) = deliver(&cfg);
    let shown = wait_for(
        "the alert in Alertmanager",
        Duration::from_secs(30),
        || async { listed(port, &account).await.filter(|v| !v.is_empty()) },
    )
    .await;
    assert_eq!(shown.len(), 1, "{shown:#?}");
    let a = &shown[0];
    assert_eq!(a["labels"]["alertname"], "EngagementSpike");
    assert_eq!(a["labels"]["content"], "post-1");
    assert_eq!(a["labels"]["level"], "post");
    assert_eq!(a["labels"]["severity"], "critical");
    assert!(a["annotations"]["summary"]
        .as_str()
        .unwrap()
        .contains(&account));
    assert!(a["annotations"]["dashboard"]
        .as_str()
        .unwrap()
        .contains(&format!("var-account={account}")));
    // Still there after several re-sends.
    wait_for("re-sends", Duration::from_secs(20), || {
        let text = metrics_text(&registry);
        std::future::ready(
            text.lines()
                .any(|l| {
                    l.starts_with("banter_alert_sent_total{state=\"firing\"}")
                        && l.split_whitespace()
                            .last()
                            .and_then(|v| v.parse::<f64>().ok())
                            >= Some(3.0)
                })
                .then_some(()),
        )
    })
    .await;
    assert_eq!(listed(port, &account).await.unwrap().len(), 1);

    publish(&cfg, &spike(&account, AlertState::Resolved, now)).await;
    wait_for(
        "the alert to leave Alertmanager's list",
        Duration::from_secs(30),
        || async { listed(port, &account).await.filter(Vec::is_empty) },
    )
    .await;
    let text = metrics_text(&registry);
    assert!(
        text.contains("banter_alert_sent_total{state=\"resolved\"} 1"),
        "{text}"
    );
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_written_by_a_newer_version_reaches_alertmanager() {
    // Version 2 of the stream adds a field to SpikeAlert and published its schema: the alert
    // used to be skipped as "not a SpikeAlert"; it is resolved and delivered.
    let mut cfg = fresh_pipeline_config("alert-v2").await;
    let port = am_port();
    assert!(
        listed(port, "x").await.is_some(),
        "Alertmanager does not answer on 127.0.0.1:{port}: start the local stack with `scripts/stack.sh up`"
    );
    cfg.alerting.alertmanager_url = format!("http://127.0.0.1:{port}");
    let account = unique("acct");
    let a = spike(&account, AlertState::Firing, banter_runtime::now_ms());
    let schema = v2_schema::<SpikeAlert>();
    banter_runtime::schemas::publish(&cfg.kafka, Some(&[schema.as_str()]))
        .await
        .unwrap();
    let producer = banter_runtime::kafka::producer(&cfg.kafka, "test").unwrap();
    producer
        .send(
            FutureRecord::to(&cfg.kafka.topics.alerts)
                .key(&a.account_id)
                .payload(&write_v2(&a)),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let (stop, _registry, task) = deliver(&cfg);
    let shown = wait_for(
        "the version-2 alert in Alertmanager",
        Duration::from_secs(30),
        || async { listed(port, &account).await.filter(|v| !v.is_empty()) },
    )
    .await;
    assert_eq!(shown[0]["labels"]["content"], "post-1");
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Alertmanager as a child process (killed when dropped).
struct Am(std::process::Child);

impl Drop for Am {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_alertmanager(port: u16) -> Am {
    let dir = std::env::temp_dir().join(unique("banter-am"));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(
        dir.join("alertmanager.yml"),
        "route:\n  receiver: log\n  group_wait: 1s\nreceivers:\n  - name: log\n",
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("am.log")).unwrap();
    let child = std::process::Command::new("prometheus-alertmanager")
        .arg(format!(
            "--config.file={}",
            dir.join("alertmanager.yml").display()
        ))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start prometheus-alertmanager (scripts/install-deps.sh installs it): {e}"
            )
        });
    Am(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_down_is_retried_and_nothing_is_lost() {
    let mut cfg = fresh_pipeline_config("alert-down").await;
    let port = free_port();
    cfg.alerting.alertmanager_url = format!("http://127.0.0.1:{port}");
    cfg.alerting.max_backoff_ms = 1_000;
    let account = unique("acct");
    let now = banter_runtime::now_ms();
    publish(&cfg, &spike(&account, AlertState::Firing, now)).await;
    let (stop, registry, task) = deliver(&cfg);
    // Nothing listens: failures are counted, delivery keeps going.
    wait_for(
        "failed posts in the metrics",
        Duration::from_secs(30),
        || {
            let text = metrics_text(&registry);
            std::future::ready(
                (text.contains("banter_alert_posts_total{outcome=\"error\"}")
                    && text.contains("banter_alert_alertmanager_up 0"))
                .then_some(()),
            )
        },
    )
    .await;
    assert!(
        !task.is_finished(),
        "delivery stopped while Alertmanager was down"
    );
    // A second alert arrives while it is down; then Alertmanager comes up.
    let other = unique("acct");
    publish(&cfg, &spike(&other, AlertState::Firing, now)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _am = start_alertmanager(port);
    for acct in [&account, &other] {
        wait_for(
            "the alerts held during the outage in Alertmanager",
            Duration::from_secs(60),
            || async { listed(port, acct).await.filter(|v| v.len() == 1) },
        )
        .await;
    }
    let text = metrics_text(&registry);
    assert!(text.contains("banter_alert_alertmanager_up 1"), "{text}");
    stop.cancel();
    task.await.unwrap().unwrap();
}
