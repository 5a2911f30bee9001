//! `banter alert`: spike alerts from `banter.alerts.v1` to Alertmanager.
//!
//! * **What is sent.** `POST /api/v2/alerts` with `alertname=EngagementSpike` and the labels
//!   `account`, `content` (posts only), `level` (`post` or `account`) and `severity`
//!   (`critical` from `alerting.critical_z`, else `warning`); annotations `summary`,
//!   `description`, `dashboard` and `alert_id`; `startsAt` the spike's onset.
//! * **Firing** alerts are sent again every `alerting.resend_interval_ms` with `endsAt` five
//!   intervals ahead (Alertmanager resolves an alert that stops being sent once `endsAt` passes,
//!   as it does for Prometheus). **Resolved** ones are sent once with `endsAt` = the end of the
//!   spike, then forgotten.
//! * **Alertmanager down**: the batch is kept and retried with exponential backoff up to
//!   `alerting.max_backoff_ms`; nothing is dropped; `banter_alert_alertmanager_up` is 0 and
//!   `banter_alert_posts_total{outcome="error"}` grows.
//! * **Restarts**: no offsets are committed. On start the alerts of the last
//!   `alerting.lookback_ms` are read again: firing ones are sent (Alertmanager deduplicates by
//!   labels), resolved ones once more. An alert is never lost to a restart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use banter_model::{AlertState, AvroRecord, SpikeAlert};
use banter_runtime::config::KafkaConfig;
use banter_runtime::kafka::{consumer_config, KafkaContext};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Serialize;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

pub mod config;

pub use config::AlertingConfig;

/// Why delivery stopped.
#[derive(Debug, Error)]
pub enum AlertError {
    /// Configuration that delivery cannot run with.
    #[error("config {key}: {message}")]
    Config {
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Kafka refused something we cannot go on without.
    #[error("kafka {what}: {detail}")]
    Kafka {
        /// What was being done.
        what: &'static str,
        /// The client error.
        detail: String,
    },
}

fn kafka(what: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> AlertError {
    move |e| AlertError::Kafka {
        what,
        detail: e.to_string(),
    }
}

/// The delivery role's metrics (`banter_alert_…`).
#[derive(Debug, Clone)]
pub struct AlertMetrics {
    records: Family<Vec<(String, String)>, Counter>,
    sent: Family<Vec<(String, String)>, Counter>,
    posts: Family<Vec<(String, String)>, Counter>,
    post_seconds: Histogram,
    firing: Gauge,
    pending: Gauge,
    up: Gauge,
}

impl AlertMetrics {
    /// Registers the metrics under `banter_alert_…`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = AlertMetrics {
            records: Family::default(),
            sent: Family::default(),
            posts: Family::default(),
            post_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            firing: Gauge::default(),
            pending: Gauge::default(),
            up: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("alert");
        r.register(
            "records",
            "Alert records read from the alerts topic, by state",
            m.records.clone(),
        );
        r.register(
            "sent",
            "Alerts accepted by an Alertmanager, by state (firing ones count every re-send; each Alertmanager's acceptance counts)",
            m.sent.clone(),
        );
        r.register(
            "posts",
            "POST /api/v2/alerts requests by outcome (ok, error)",
            m.posts.clone(),
        );
        r.register(
            "post_seconds",
            "Duration of a POST to Alertmanager",
            m.post_seconds.clone(),
        );
        r.register("firing", "Spike alerts firing", m.firing.clone());
        r.register(
            "pending",
            "Alerts due for sending that an Alertmanager has not accepted yet, summed over the Alertmanagers",
            m.pending.clone(),
        );
        r.register(
            "alertmanager_up",
            "1 when the last POST to every Alertmanager succeeded, 0 when any failed",
            m.up.clone(),
        );
        m
    }
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let (y, m, d, hh, mm, ss) = banter_runtime::civil(ms.div_euclid(1000));
    let milli = ms.rem_euclid(1000);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{milli:03}Z")
}

/// One alert in Alertmanager's v2 API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmAlert {
    /// Identifying labels.
    pub labels: BTreeMap<String, String>,
    /// Text for people.
    pub annotations: BTreeMap<String, String>,
    /// Onset.
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    /// When Alertmanager considers it resolved.
    #[serde(rename = "endsAt")]
    pub ends_at: String,
    /// Link back.
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
}

/// A spike alert as Alertmanager gets it. `severity` is decided when it fired; `ends_at` is
/// the spike's end for a resolved alert, else `firing_until`.
pub fn to_alertmanager(
    a: &SpikeAlert,
    severity: &str,
    cfg: &AlertingConfig,
    firing_until: i64,
) -> AmAlert {
    let content = a.content_id.as_deref().unwrap_or("");
    let mut labels = BTreeMap::new();
    labels.insert("alertname".to_owned(), "EngagementSpike".to_owned());
    labels.insert("account".to_owned(), a.account_id.clone());
    if !content.is_empty() {
        labels.insert("content".to_owned(), content.to_owned());
    }
    labels.insert(
        "level".to_owned(),
        if content.is_empty() {
            "account"
        } else {
            "post"
        }
        .to_owned(),
    );
    labels.insert("severity".to_owned(), severity.to_owned());
    let what = if content.is_empty() {
        format!("account {}", a.account_id)
    } else {
        format!("post {content} of account {}", a.account_id)
    };
    // Ids go into a query string: percent-encoded, so `&`, `#` or a space in an id cannot
    // change the link.
    let dashboard = cfg
        .dashboard_url
        .replace("{account}", &banter_runtime::percent_encode(&a.account_id))
        .replace("{content}", &banter_runtime::percent_encode(content));
    let mut annotations = BTreeMap::new();
    annotations.insert("summary".to_owned(), format!("Engagement spike on {what}"));
    annotations.insert(
        "description".to_owned(),
        format!(
            "{} interactions in the minute from {} against a baseline of {:.1} ± {:.1} (z = {:.1}); spike since {}",
            a.observed,
            rfc3339(a.window_start),
            a.baseline_mean,
            a.baseline_stddev,
            a.z_score,
            rfc3339(a.started_at)
        ),
    );
    annotations.insert("dashboard".to_owned(), dashboard.clone());
    annotations.insert("alert_id".to_owned(), a.alert_id.clone());
    let ends = match (a.state, a.ended_at) {
        (AlertState::Resolved, Some(end)) => end.min(firing_until),
        (AlertState::Resolved, None) => a.window_end.min(firing_until),
        (AlertState::Firing, _) => firing_until,
    };
    AmAlert {
        labels,
        annotations,
        starts_at: rfc3339(a.started_at),
        ends_at: rfc3339(ends.max(a.started_at)),
        generator_url: dashboard,
    }
}

/// An alert delivery keeps track of.
#[derive(Debug, Clone)]
struct Tracked {
    alert: SpikeAlert,
    severity: &'static str,
    /// Firing: next re-send; resolved: due at once.
    due: Instant,
}

/// What delivery holds: firing alerts and resolved ones not yet accepted.
#[derive(Debug, Default)]
pub struct Tracker {
    alerts: BTreeMap<String, Tracked>,
}

impl Tracker {
    /// Takes one record of the alerts topic.
    pub fn take(&mut self, a: SpikeAlert, critical_z: f64, now: Instant) {
        match a.state {
            AlertState::Firing => {
                // A RESOLVED may have come first (another partition is not involved: the key
                // is the account, so this is a re-read): keep the later state. An alert fired
                // early (revision 0, from an open minute's count so far) is replaced by its
                // confirmation (revision 1, the closed minute's numbers), sent at once with the
                // severity it fired with: severity is a label, and Alertmanager would take
                // another one for another alert.
                let severity = match self.alerts.get(&a.alert_id) {
                    Some(t)
                        if t.alert.state == AlertState::Firing && t.alert.revision < a.revision =>
                    {
                        t.severity
                    }
                    Some(_) => return,
                    None if a.z_score >= critical_z => "critical",
                    None => "warning",
                };
                let due = now;
                self.alerts.insert(
                    a.alert_id.clone(),
                    Tracked {
                        alert: a,
                        severity,
                        due,
                    },
                );
            }
            AlertState::Resolved => {
                let severity = self
                    .alerts
                    .get(&a.alert_id)
                    .map_or("warning", |t| t.severity);
                self.alerts.insert(
                    a.alert_id.clone(),
                    Tracked {
                        alert: a,
                        severity,
                        due: now,
                    },
                );
            }
        }
    }

    /// Alerts due at `now`, as Alertmanager gets them, with their ids.
    pub fn due(&self, now: Instant, now_ms: i64, cfg: &AlertingConfig) -> Vec<(String, AmAlert)> {
        let until = now_ms + 5 * i64::try_from(cfg.resend_interval_ms).unwrap_or(60_000);
        self.alerts
            .iter()
            .filter(|(_, t)| t.due <= now)
            .map(|(id, t)| {
                (
                    id.clone(),
                    to_alertmanager(&t.alert, t.severity, cfg, until.max(now_ms)),
                )
            })
            .collect()
    }

    /// Alertmanager accepted these: firing ones are due again after the resend interval,
    /// resolved ones are done.
    pub fn sent(&mut self, ids: &[String], next: Instant, metrics: Option<&AlertMetrics>) {
        for id in ids {
            let resolved = match self.alerts.get_mut(id) {
                Some(t) if t.alert.state == AlertState::Firing => {
                    t.due = next;
                    false
                }
                Some(_) => true,
                None => false,
            };
            if let Some(m) = metrics {
                let state = if resolved { "resolved" } else { "firing" };
                m.sent
                    .get_or_create(&vec![("state".to_owned(), state.to_owned())])
                    .inc();
            }
            if resolved {
                self.alerts.remove(id);
            }
        }
    }

    /// Firing alerts held.
    pub fn firing(&self) -> usize {
        self.alerts
            .values()
            .filter(|t| t.alert.state == AlertState::Firing)
            .count()
    }

    /// Alerts held.
    pub fn len(&self) -> usize {
        self.alerts.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
    }
}

/// How long, and how often, the alerts topic is asked about while brokers restart or its
/// partitions have no leader (each ask may itself take up to 10 s).
const LOOKBACK_RETRY: (Duration, Duration) = (Duration::from_secs(60), Duration::from_secs(1));

/// Reads the alerts topic from `lookback_ms` ago.
async fn consumer(
    k: &KafkaConfig,
    lookback_ms: i64,
) -> Result<StreamConsumer<KafkaContext>, AlertError> {
    let topic = &k.topics.alerts;
    let c: StreamConsumer<KafkaContext> = consumer_config(k, "alert", "banter-alert")
        .create_with_context(KafkaContext::new(k))
        .map_err(kafka("consumer config"))?;
    // Serves a token request (AWS_MSK_IAM) before the metadata request needs it: only
    // receiving polls a stream consumer (nothing is assigned yet, so nothing is received).
    let _ = tokio::time::timeout(Duration::from_millis(50), c.recv()).await;
    // Brokers restarting are waited for (up to a minute) rather than taken as an error.
    let md = asked_until_answered("alerts topic metadata", LOOKBACK_RETRY, || {
        c.fetch_metadata(Some(topic), Duration::from_secs(10))
    })
    .await?;
    let parts: Vec<i32> = md
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if parts.is_empty() {
        return Err(AlertError::Kafka {
            what: "alerts topic",
            detail: format!("{topic} does not exist (run `banter topics`)"),
        });
    }
    let since = banter_runtime::now_ms() - lookback_ms;
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Offset(since))
            .map_err(kafka("lookback"))?;
    }
    // A partition without a leader (a broker restarting) answers with an error, not an
    // offset: starting such a partition at its end would skip the alerts the lookback is
    // there to redo, so the lookup is asked again for up to a minute.
    let found = asked_until_answered("offsets for the lookback", LOOKBACK_RETRY, || {
        let found = c.offsets_for_times(tpl.clone(), Duration::from_secs(10))?;
        match found.elements().iter().find_map(|e| e.error().err()) {
            None => Ok(found),
            Some(e) => Err(e),
        }
    })
    .await?;
    let mut assign = TopicPartitionList::new();
    for e in found.elements() {
        // No record since then: start at the end.
        let offset = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::End,
        };
        assign
            .add_partition_offset(topic, e.partition(), offset)
            .map_err(kafka("assign"))?;
    }
    c.assign(&assign).map_err(kafka("assign"))?;
    Ok(c)
}

/// Asks `ask` every `every` until it answers, for up to `within`; then its last error is
/// the role's.
async fn asked_until_answered<T>(
    what: &'static str,
    (within, every): (Duration, Duration),
    mut ask: impl FnMut() -> Result<T, rdkafka::error::KafkaError>,
) -> Result<T, AlertError> {
    let deadline = Instant::now() + within;
    loop {
        match ask() {
            Ok(t) => return Ok(t),
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(error = %e, "{what}; asking again");
                tokio::time::sleep(every).await;
            }
            Err(e) => return Err(kafka(what)(e)),
        }
    }
}

/// What an alert record read as.
enum Read {
    Alert(SpikeAlert),
    /// Not a SpikeAlert (skipped).
    Bad(String),
    /// The schema registry could not be asked: try again later.
    Wait(String),
}

/// Decodes an alert record: Confluent-framed ones through the registry, a newer (or older)
/// writer's through the schema topic.
async fn read_alert(
    registry: Option<&std::sync::Arc<banter_runtime::registry::Registry>>,
    schemas: &banter_runtime::schemas::SchemaLookup,
    codec: &banter_model::codec::Codec<SpikeAlert>,
    payload: Option<&[u8]>,
) -> Read {
    let Some(p) = payload else {
        return Read::Bad("no payload".into());
    };
    let p = match registry {
        None => std::borrow::Cow::Borrowed(p),
        Some(r) => match r.unframe_async(p).await {
            Ok(p) => p,
            Err(e) if e.is_unavailable() => return Read::Wait(e.to_string()),
            Err(e) => return Read::Bad(e.to_string()),
        },
    };
    match codec.decode(&p).or_else(|e| {
        if schemas.resolve(&p) {
            codec.decode(&p)
        } else {
            Err(e)
        }
    }) {
        Ok(a) => Read::Alert(a),
        Err(e) => Read::Bad(e.to_string()),
    }
}

/// Hands an alert to every Alertmanager's tracker.
fn take(targets: &mut [Target], metrics: &AlertMetrics, cfg: &AlertingConfig, a: &SpikeAlert) {
    metrics
        .records
        .get_or_create(&vec![("state".to_owned(), a.state.as_str().to_owned())])
        .inc();
    let now = Instant::now();
    for t in targets {
        t.tracker.take(a.clone(), cfg.critical_z, now);
    }
}

/// One Alertmanager delivery posts to: its own copy of what is held, so each gets every alert
/// and one that is down is retried on its own while the others keep getting alerts.
struct Target {
    url: String,
    tracker: Tracker,
    backoff: Duration,
    retry_at: Instant,
}

/// The HTTP client delivery posts with: TLS trusting `alerting.ca_file` (or the system's CAs),
/// a 10 s timeout.
///
/// # Errors
/// `alerting.ca_file` cannot be read.
pub fn http_client(cfg: &AlertingConfig) -> Result<reqwest::Client, AlertError> {
    banter_runtime::tls::http_client("alerting.ca_file", &cfg.ca_file).map_err(|e| {
        AlertError::Config {
            key: "alerting.ca_file",
            message: e.to_string(),
        }
    })
}

/// `req` with the configured authentication: the bearer token, else basic auth, else none.
fn authenticated(req: reqwest::RequestBuilder, cfg: &AlertingConfig) -> reqwest::RequestBuilder {
    if !cfg.bearer_token.is_empty() {
        req.bearer_auth(cfg.bearer_token.expose())
    } else if !cfg.username.is_empty() {
        req.basic_auth(&cfg.username, Some(cfg.password.expose()))
    } else {
        req
    }
}

/// What to look at when Alertmanager answers 401 or 403.
const AUTH_HINT: &str = "check alerting.username / alerting.password or alerting.bearer_token";

/// A POST of `body` to `url` with the configured authentication; what went wrong, naming the
/// settings to look at.
async fn post(
    http: &reqwest::Client,
    cfg: &AlertingConfig,
    url: &str,
    body: &[AmAlert],
) -> Result<(), String> {
    match authenticated(http.post(url).json(body), cfg).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            let hint = match status.as_u16() {
                401 | 403 => format!(" ({AUTH_HINT})"),
                _ => String::new(),
            };
            Err(format!("{status}: {}{hint}", text.trim()))
        }
        Err(e) => Err(banter_runtime::tls::send_error(&e, "alerting.ca_file")),
    }
}

/// Asks the Alertmanager at `base` for its status with the configured authentication (what
/// `banter config check --connect` does): its version, or what went wrong.
///
/// # Errors
/// The request failed or was refused; the message names the settings to look at.
pub async fn probe(
    http: &reqwest::Client,
    cfg: &AlertingConfig,
    base: &str,
) -> Result<String, String> {
    match authenticated(http.get(format!("{base}/api/v2/status")), cfg)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => {
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            Ok(format!(
                "answers (version {})",
                v.pointer("/versionInfo/version")
                    .and_then(|v| v.as_str())
                    .unwrap_or("?")
            ))
        }
        Ok(r) => Err(match r.status().as_u16() {
            401 | 403 => format!("{}: {AUTH_HINT}", r.status()),
            _ => r.status().to_string(),
        }),
        Err(e) => Err(banter_runtime::tls::send_error(&e, "alerting.ca_file")),
    }
}

/// Runs delivery until `shutdown`.
///
/// # Errors
/// No Alertmanager URL is set, `alerting.ca_file` cannot be read, or Kafka clients cannot be
/// created.
pub async fn run(
    k: &KafkaConfig,
    cfg: &AlertingConfig,
    metrics: AlertMetrics,
    shutdown: CancellationToken,
) -> Result<(), AlertError> {
    let urls = cfg.urls();
    if urls.is_empty() {
        return Err(AlertError::Config {
            key: "alerting.alertmanager_url",
            message: "must be set for alert delivery (e.g. http://127.0.0.1:9093)".into(),
        });
    }
    let mut targets: Vec<Target> = urls
        .iter()
        .map(|base| Target {
            url: format!("{base}/api/v2/alerts"),
            tracker: Tracker::default(),
            backoff: Duration::ZERO,
            retry_at: Instant::now(),
        })
        .collect();
    let http = http_client(cfg)?;
    // Asked for again while brokers restart: a shutdown meanwhile ends it.
    let consumer = tokio::select! {
        c = consumer(k, cfg.lookback_ms) => c?,
        () = shutdown.cancelled() => return Ok(()),
    };
    let resend = Duration::from_millis(cfg.resend_interval_ms);
    let max_backoff = Duration::from_millis(cfg.max_backoff_ms);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let codec = SpikeAlert::codec();
    let schemas = banter_runtime::schemas::SchemaLookup::new(k);
    let registry = banter_runtime::registry::Registry::for_config(k).map_err(|message| {
        AlertError::Config {
            key: "kafka.schema_registry",
            message,
        }
    })?;
    tracing::info!(alertmanagers = ?urls, topic = %k.topics.alerts, "alert delivery started");
    // A record the registry could not yet be asked about, and when to ask again.
    let mut held: Option<(Vec<u8>, Instant)> = None;
    let mut held_wait = Duration::from_secs(1);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            m = consumer.recv(), if held.is_none() => {
                match m {
                    Ok(m) => {
                        let (partition, offset) = (m.partition(), m.offset());
                        match read_alert(registry.as_ref(), &schemas, codec, m.payload()).await {
                            Read::Alert(a) => take(&mut targets, &metrics, cfg, &a),
                            Read::Bad(e) => tracing::warn!(
                                partition, offset, error = %e,
                                "alert record that is not a SpikeAlert; skipped"
                            ),
                            // Held (nothing read after it) and asked about again at the ticks,
                            // while delivery of what is already held goes on.
                            Read::Wait(e) => {
                                tracing::warn!(partition, offset, error = %e, retry_in = ?held_wait, "schema registry unavailable; holding the alert record");
                                held = Some((m.payload().unwrap_or_default().to_vec(), Instant::now() + held_wait));
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "consumer"),
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        if let Some((payload, at)) = held.take() {
            if now < at {
                held = Some((payload, at));
            } else {
                match read_alert(registry.as_ref(), &schemas, codec, Some(&payload)).await {
                    Read::Alert(a) => {
                        take(&mut targets, &metrics, cfg, &a);
                        held_wait = Duration::from_secs(1);
                    }
                    Read::Bad(e) => {
                        tracing::warn!(error = %e, "alert record that is not a SpikeAlert; skipped");
                        held_wait = Duration::from_secs(1);
                    }
                    Read::Wait(e) => {
                        held_wait = (held_wait * 2).min(Duration::from_secs(30));
                        tracing::warn!(error = %e, retry_in = ?held_wait, "schema registry unavailable; holding the alert record");
                        held = Some((payload, now + held_wait));
                    }
                }
            }
        }
        metrics.firing.set(
            targets
                .iter()
                .map(|t| t.tracker.firing())
                .max()
                .unwrap_or(0) as i64,
        );
        let mut pending = 0;
        let mut posts = tokio::task::JoinSet::new();
        for (i, t) in targets.iter_mut().enumerate() {
            if now < t.retry_at {
                pending += t.tracker.len();
                continue;
            }
            let due = t.tracker.due(now, banter_runtime::now_ms(), cfg);
            if due.is_empty() {
                continue;
            }
            let (ids, body): (Vec<String>, Vec<AmAlert>) = due.into_iter().unzip();
            // Every Alertmanager at once: one that does not answer holds up no other.
            let (http, cfg, url) = (http.clone(), cfg.clone(), t.url.clone());
            posts.spawn(async move {
                let t0 = Instant::now();
                let outcome = post(&http, &cfg, &url, &body).await;
                (i, ids, t0.elapsed(), outcome)
            });
        }
        while let Some(done) = posts.join_next().await {
            let Ok((i, ids, took, outcome)) = done else {
                continue;
            };
            let t = &mut targets[i];
            metrics.post_seconds.observe(took.as_secs_f64());
            match outcome {
                Ok(()) => {
                    metrics
                        .posts
                        .get_or_create(&vec![("outcome".to_owned(), "ok".to_owned())])
                        .inc();
                    if !t.backoff.is_zero() {
                        tracing::info!(url = %t.url, "alertmanager accepts alerts again");
                    }
                    t.backoff = Duration::ZERO;
                    t.tracker
                        .sent(&ids, Instant::now() + resend, Some(&metrics));
                    tracing::debug!(url = %t.url, alerts = ids.len(), "sent to alertmanager");
                }
                Err(e) => {
                    metrics
                        .posts
                        .get_or_create(&vec![("outcome".to_owned(), "error".to_owned())])
                        .inc();
                    t.backoff = (t.backoff * 2).clamp(Duration::from_millis(500), max_backoff);
                    t.retry_at = Instant::now() + t.backoff;
                    pending += ids.len();
                    tracing::warn!(url = %t.url, error = %e, alerts = ids.len(), retry_in = ?t.backoff, "alertmanager did not take the alerts; retrying");
                }
            }
        }
        // Up: every Alertmanager takes alerts (one of an HA pair down is worth a warning).
        metrics
            .up
            .set(i64::from(targets.iter().all(|t| t.backoff.is_zero())));
        metrics.pending.set(pending as i64);
    }
    tracing::info!(
        held = targets.iter().map(|t| t.tracker.len()).max().unwrap_or(0),
        "alert delivery stopping"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(state: AlertState) -> SpikeAlert {
        SpikeAlert {
            alert_id: "acct-1/post-1/1764000000000".into(),
            state,
            account_id: "acct-1".into(),
            content_id: Some("post-1".into()),
            window_start: 1_764_000_060_000,
            window_end: 1_764_000_120_000,
            observed: 45,
            baseline_mean: 3.0,
            baseline_stddev: 1.5,
            z_score: 24.2,
            started_at: 1_764_000_000_000,
            ended_at: (state == AlertState::Resolved).then_some(1_764_000_600_000),
            revision: 1,
            emitted_at: 1_764_000_120_000,
        }
    }

    #[tokio::test]
    async fn a_lookup_is_asked_again_until_answered_then_gives_up() {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode::LeaderNotAvailable;
        const MS: Duration = Duration::from_millis(1);
        let mut asked = 0;
        let answer = asked_until_answered("lookup", (Duration::from_secs(60), MS), || {
            asked += 1;
            if asked < 4 {
                Err(KafkaError::OffsetFetch(LeaderNotAvailable))
            } else {
                Ok(asked)
            }
        })
        .await;
        assert_eq!(answer.ok(), Some(4), "answered at the fourth ask");

        let mut asked = 0;
        let answer: Result<(), _> = asked_until_answered("lookup", (50 * MS, MS), || {
            asked += 1;
            Err(KafkaError::OffsetFetch(LeaderNotAvailable))
        })
        .await;
        assert!(
            matches!(answer, Err(AlertError::Kafka { what: "lookup", .. })),
            "{answer:?}"
        );
        assert!(asked > 1 && asked <= 51, "asked {asked} times in 50 ms");
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_764_000_000_000), "2025-11-24T16:00:00.000Z");
        assert_eq!(rfc3339(951_868_799_123), "2000-02-29T23:59:59.123Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn alertmanager_payload_has_the_labels_and_annotations() {
        let cfg = AlertingConfig::default();
        let a = to_alertmanager(
            &alert(AlertState::Firing),
            "critical",
            &cfg,
            1_764_000_900_000,
        );
        let json = serde_json::to_value(&a).unwrap_or_default();
        assert_eq!(json["labels"]["alertname"], "EngagementSpike");
        assert_eq!(json["labels"]["account"], "acct-1");
        assert_eq!(json["labels"]["content"], "post-1");
        assert_eq!(json["labels"]["level"], "post");
        assert_eq!(json["labels"]["severity"], "critical");
        assert_eq!(json["startsAt"], "2025-11-24T16:00:00.000Z");
        assert_eq!(json["endsAt"], "2025-11-24T16:15:00.000Z");
        assert!(json["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("post-1")));
        assert!(json["annotations"]["dashboard"]
            .as_str()
            .is_some_and(|s| s.contains("var-account=acct-1") && s.contains("var-content=post-1")));
        let r = to_alertmanager(
            &alert(AlertState::Resolved),
            "critical",
            &cfg,
            1_764_009_999_000,
        );
        assert_eq!(r.ends_at, "2025-11-24T16:10:00.000Z");
        assert_eq!(r.labels, a.labels, "the same alert for Alertmanager");
    }

    #[test]
    fn tracker_resends_firing_and_forgets_resolved_once_sent() {
        let cfg = AlertingConfig::default();
        let mut t = Tracker::default();
        let now = Instant::now();
        t.take(alert(AlertState::Firing), 10.0, now);
        let due = t.due(now, 0, &cfg);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1.labels["severity"], "critical");
        // Not accepted: still due.
        assert_eq!(t.due(now, 0, &cfg).len(), 1);
        let later = now + Duration::from_secs(60);
        t.sent(&[due[0].0.clone()], later, None);
        assert!(t.due(now, 0, &cfg).is_empty());
        assert_eq!(t.due(later, 0, &cfg).len(), 1, "re-sent after the interval");
        // Resolved: due at once, keeps the severity it fired with, gone once accepted.
        let mut r = alert(AlertState::Resolved);
        r.z_score = 0.5;
        t.take(r, 10.0, now);
        let due = t.due(now, 0, &cfg);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1.labels["severity"], "critical");
        // A FIRING read again after its RESOLVED (a re-read) does not revive it.
        t.take(alert(AlertState::Firing), 10.0, now);
        t.sent(&[due[0].0.clone()], later, None);
        assert!(t.is_empty());
    }

    #[test]
    fn an_early_alert_is_replaced_by_its_confirmation_not_the_other_way() {
        let cfg = AlertingConfig::default();
        let mut t = Tracker::default();
        let now = Instant::now();
        let mut early = alert(AlertState::Firing);
        early.revision = 0;
        early.observed = 12;
        early.z_score = 4.0;
        t.take(early.clone(), 10.0, now);
        let due = t.due(now, 0, &cfg);
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].1.labels["severity"], "warning",
            "z 4 of the count so far"
        );
        let later = now + Duration::from_secs(60);
        t.sent(&[due[0].0.clone()], later, None);
        // The closed minute's FIRING: its numbers, sent at once, the same alert for
        // Alertmanager (the severity label it fired with, though its z is critical now).
        let mut fin = alert(AlertState::Firing);
        fin.observed = 40;
        t.take(fin, 10.0, now);
        let due = t.due(now, 0, &cfg);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1.labels["severity"], "warning");
        assert!(due[0].1.annotations["description"].starts_with("40 interactions"));
        t.sent(&[due[0].0.clone()], later, None);
        // The early one read again (a re-read) does not replace it.
        t.take(early, 10.0, now);
        let due = t.due(later, 0, &cfg);
        assert!(due[0].1.annotations["description"].starts_with("40 interactions"));
        assert_eq!(t.firing(), 1);
    }

    #[test]
    fn ids_in_the_dashboard_link_are_percent_encoded() {
        assert_eq!(banter_runtime::percent_encode("acct-1"), "acct-1");
        assert_eq!(
            banter_runtime::percent_encode("O'Brien & co#1"),
            "O%27Brien%20%26%20co%231"
        );
        assert_eq!(banter_runtime::percent_encode("ö"), "%C3%B6");
    }
}
