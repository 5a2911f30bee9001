//! Kafka clients configured the way every banter role needs them, and topic management
//! (`banter topics`).
//!
//! Producers are idempotent with `acks=all`: a send that resolves means the broker has the
//! record. Consumers never auto-commit: offsets move only after the work is durable.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseProducer, FutureProducer, Producer, ProducerContext, ThreadedProducer,
};
use thiserror::Error;

use crate::config::{invalid, KafkaConfig, Problems, SaslMechanism};

/// A Kafka problem, with whether retrying can help.
#[derive(Debug, Error)]
pub enum KafkaSetupError {
    /// The broker did not answer within the deadline.
    #[error("kafka at {brokers} did not answer within {waited_secs} s: {detail} (is it running? `scripts/stack.sh up kafka` starts the local one)")]
    Unreachable {
        /// The bootstrap servers.
        brokers: String,
        /// How long we waited.
        waited_secs: u64,
        /// The last error.
        detail: String,
    },
    /// The brokers answered but refused this client's credentials or certificate; waiting
    /// does not help.
    #[error("kafka at {brokers} refused the connection: {detail} (check {keys})")]
    Refused {
        /// The bootstrap servers.
        brokers: String,
        /// The settings to look at.
        keys: String,
        /// librdkafka's message.
        detail: String,
    },
    /// librdkafka rejected the configuration or a request.
    #[error("kafka {what}: {source}")]
    Client {
        /// What was being done.
        what: &'static str,
        /// The client error.
        source: KafkaError,
    },
    /// A topic could not be created.
    #[error("cannot create topic {topic}: {detail}")]
    Topic {
        /// The topic.
        topic: String,
        /// The broker's reason.
        detail: String,
    },
}

impl KafkaSetupError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, KafkaSetupError::Unreachable { .. })
    }
}

/// Why a client can no longer be used after `e`, a fatal error (a static member fenced, an
/// idempotent producer's sequence lost): the error itself says only "fatal", the client
/// knows which.
pub fn fatal_reason<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    e: &KafkaError,
) -> String {
    client
        .fatal_error()
        .map_or_else(|| e.to_string(), |(code, why)| format!("{code:?}: {why}"))
}

/// The base client configuration: brokers, client id (`<client_id>-<role>`), security (TLS,
/// SASL), then the extra properties.
pub fn base_config(cfg: &KafkaConfig, role: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", format!("{}-{role}", cfg.client_id))
        .set("log_level", "4");
    for (k, v) in security_properties(cfg) {
        c.set(k, v);
    }
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

/// The librdkafka properties the named security settings (`kafka.security_protocol`,
/// `[kafka.ssl]`, `[kafka.sasl]`) stand for, with the named setting each comes from.
fn security_properties(cfg: &KafkaConfig) -> Vec<(&'static str, String)> {
    let proto = cfg.security_protocol;
    let mut out = vec![("security.protocol", proto.as_librdkafka().to_owned())];
    if proto.tls() {
        let ssl = &cfg.ssl;
        for (prop, v) in [
            ("ssl.ca.location", &ssl.ca_file),
            ("ssl.certificate.location", &ssl.cert_file),
            ("ssl.key.location", &ssl.key_file),
        ] {
            if !v.is_empty() {
                out.push((prop, v.clone()));
            }
        }
        if !ssl.key_password.is_empty() {
            out.push(("ssl.key.password", ssl.key_password.expose().to_owned()));
        }
        if !ssl.verify_hostname {
            out.push(("ssl.endpoint.identification.algorithm", "none".to_owned()));
        }
    }
    if proto.sasl() {
        let sasl = &cfg.sasl;
        out.push(("sasl.mechanisms", sasl.mechanism.as_librdkafka().to_owned()));
        match sasl.mechanism {
            SaslMechanism::OauthBearer => {
                out.push(("sasl.oauthbearer.method", "oidc".to_owned()));
                out.push((
                    "sasl.oauthbearer.token.endpoint.url",
                    sasl.oauth_token_endpoint.clone(),
                ));
                out.push(("sasl.oauthbearer.client.id", sasl.oauth_client_id.clone()));
                out.push((
                    "sasl.oauthbearer.client.secret",
                    sasl.oauth_client_secret.expose().to_owned(),
                ));
                if !sasl.oauth_scope.is_empty() {
                    out.push(("sasl.oauthbearer.scope", sasl.oauth_scope.clone()));
                }
                if !sasl.oauth_extensions.is_empty() {
                    out.push(("sasl.oauthbearer.extensions", sasl.oauth_extensions.clone()));
                }
            }
            // Tokens come from the client context (KafkaContext).
            SaslMechanism::AwsMskIam => {}
            _ => {
                out.push(("sasl.username", sasl.username.clone()));
                out.push(("sasl.password", sasl.password.expose().to_owned()));
            }
        }
    }
    out
}

/// The client context of every banter Kafka client: it makes the OAUTHBEARER tokens of
/// `AWS_MSK_IAM` (librdkafka asks for one when it connects and again at 80 % of a token's
/// life). With any other mechanism it is never asked: librdkafka's OIDC client refreshes
/// its own tokens.
///
/// rdkafka's `AdminClient` does not serve the queue token requests arrive on, so it cannot
/// authenticate with `AWS_MSK_IAM` ([`ensure_topics`] says so).
#[derive(Debug, Clone, Default)]
pub struct KafkaContext {
    /// The cluster's region when the mechanism is AWS_MSK_IAM.
    msk_region: Option<String>,
}

impl KafkaContext {
    /// The context for clients of `cfg`.
    pub fn new(cfg: &KafkaConfig) -> KafkaContext {
        KafkaContext {
            msk_region: (cfg.security_protocol.sasl()
                && cfg.sasl.mechanism == SaslMechanism::AwsMskIam)
                .then(|| cfg.sasl.aws_region.clone()),
        }
    }

    /// A token for the brokers, or why there is none.
    ///
    /// # Errors
    /// Not AWS_MSK_IAM, or no AWS credentials were found.
    pub fn token(&self) -> Result<rdkafka::client::OAuthToken, String> {
        let Some(region) = &self.msk_region else {
            return Err(
                "no OAUTHBEARER token source (kafka.sasl.mechanism is not AWS_MSK_IAM)".into(),
            );
        };
        let creds = crate::aws::Credentials::find(|k| std::env::var(k).ok())?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let t = crate::aws::msk_token(&creds, region, now);
        tracing::debug!(key = %creds.access_key_id, %region, "signed an MSK IAM token");
        Ok(rdkafka::client::OAuthToken {
            token: t.token,
            principal_name: "kafka-cluster".into(),
            lifetime_ms: t.expires_ms,
        })
    }
}

impl rdkafka::ClientContext for KafkaContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _config: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        self.token().map_err(Into::into)
    }
}

impl rdkafka::consumer::ConsumerContext for KafkaContext {}

impl rdkafka::producer::ProducerContext for KafkaContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, (): ()) {}
}

/// librdkafka's spelling of a property: `sasl.mechanism` is an alias of `sasl.mechanisms`.
fn canonical_property(name: &str) -> &str {
    match name {
        "sasl.mechanism" => "sasl.mechanisms",
        "compression.codec" => "compression.type",
        other => other,
    }
}

/// Properties banter sets itself, per role, the values it sets (harmless to repeat), and why:
/// another value in `kafka.properties` would be overridden (or, for `transactional.id`, given
/// to every client of every role).
const OWN_PROPERTIES: &[(&str, &[&str], &str)] = &[
    ("bootstrap.servers", &[], "set kafka.brokers"),
    ("metadata.broker.list", &[], "set kafka.brokers"),
    (
        "transactional.id",
        &[],
        "each role makes its own transactional ids from its settings",
    ),
    (
        "group.id",
        &[],
        "each role has its own consumer group setting",
    ),
    ("acks", &["all", "-1"], "exactly-once needs acks=all"),
    (
        "request.required.acks",
        &["all", "-1"],
        "exactly-once needs acks=all",
    ),
    (
        "enable.idempotence",
        &["true"],
        "exactly-once needs idempotent producers",
    ),
    (
        "isolation.level",
        &["read_committed"],
        "banter reads committed records only",
    ),
    (
        "enable.auto.commit",
        &["false"],
        "offsets are committed with the output they produced",
    ),
    (
        "delivery.report.only.error",
        &[],
        "each producer sets it: a transactional one needs reports of failures only (transactional_config), the stream's provisional rows count failures only, the others wait for every report",
    ),
];

/// Checks `kafka.properties` without connecting: each name is one librdkafka knows and each
/// value one it takes (librdkafka itself is asked), none contradicts a named setting and none
/// is one banter sets itself. A refused secret's value is not repeated.
pub fn check_properties(cfg: &KafkaConfig, p: &mut Problems) {
    let named: Vec<(&str, String)> = security_properties(cfg)
        .into_iter()
        .chain([(
            "compression.type",
            cfg.compression.as_librdkafka().to_owned(),
        )])
        .collect();
    for (k, v) in &cfg.properties {
        let key = format!("kafka.properties.\"{k}\"");
        if let Some((_, same, why)) = OWN_PROPERTIES.iter().find(|(n, _, _)| *n == k) {
            // The value banter sets anyway is harmless.
            if !same.iter().any(|s| s.eq_ignore_ascii_case(v)) {
                p.push(invalid(&key, format!("banter sets this itself ({why})")));
            }
            continue;
        }
        if let Some((_, mine)) = named.iter().find(|(n, _)| *n == canonical_property(k)) {
            // librdkafka reads these values case-insensitively (`SSL` is `ssl`).
            if !mine.eq_ignore_ascii_case(v) {
                p.push(invalid(
                    &key,
                    format!(
                        "contradicts a named setting ({}); set that one instead",
                        named_setting_for(canonical_property(k))
                    ),
                ));
            }
            continue;
        }
        let mut one = ClientConfig::new();
        one.set(k, v);
        if let Err(e) = one.create_native_config() {
            let mut e = e.to_string();
            if crate::config::is_secret_key(k) && !v.is_empty() {
                e = e.replace(v.as_str(), "<redacted>");
            }
            p.push(invalid(&key, format!("librdkafka refuses it: {e}")));
        }
    }
}

/// The named setting a librdkafka property comes from, for error messages.
fn named_setting_for(prop: &str) -> &'static str {
    match prop {
        "security.protocol" => "kafka.security_protocol",
        "compression.type" => "kafka.compression",
        "ssl.ca.location" => "kafka.ssl.ca_file",
        "ssl.certificate.location" => "kafka.ssl.cert_file",
        "ssl.key.location" => "kafka.ssl.key_file",
        "ssl.key.password" => "kafka.ssl.key_password",
        "ssl.endpoint.identification.algorithm" => "kafka.ssl.verify_hostname",
        "sasl.mechanisms" => "kafka.sasl.mechanism",
        "sasl.username" => "kafka.sasl.username",
        "sasl.password" => "kafka.sasl.password",
        "sasl.oauthbearer.token.endpoint.url" => "kafka.sasl.oauth_token_endpoint",
        "sasl.oauthbearer.client.id" => "kafka.sasl.oauth_client_id",
        "sasl.oauthbearer.client.secret" => "kafka.sasl.oauth_client_secret",
        "sasl.oauthbearer.scope" => "kafka.sasl.oauth_scope",
        "sasl.oauthbearer.extensions" => "kafka.sasl.oauth_extensions",
        _ => "kafka.sasl.mechanism",
    }
}

/// The durability settings every banter producer shares: `acks=all`,
/// `enable.idempotence=true`, `kafka.compression`. Roles add their own (transactions, linger).
pub fn producer_config(cfg: &KafkaConfig, role: &str) -> ClientConfig {
    let mut c = base_config(cfg, role);
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", cfg.compression.as_librdkafka());
    // `kafka.properties` came first (in base_config): they cannot weaken acks or idempotence,
    // and a compression property contradicting kafka.compression is a config error.
    c
}

/// A transactional producer's settings ([`producer_config`] with `transactional.id`), for the
/// roles that commit through [`commit_transaction`]. Reports of failed deliveries only: the
/// commit fails if any record of the transaction failed (librdkafka counts them whether or not
/// a report is asked for), and [`wait_delivered`] ends when every record is acknowledged, so a
/// report per delivered record would be served for nothing (about 6 % of a busy stream's CPU).
pub fn transactional_config(cfg: &KafkaConfig, role: &str, transactional_id: &str) -> ClientConfig {
    let mut c = producer_config(cfg, role);
    c.set("transactional.id", transactional_id)
        .set("delivery.report.only.error", "true");
    c
}

/// An idempotent producer ([`producer_config`]) with a short linger and a 30 s delivery
/// timeout.
///
/// # Errors
/// librdkafka rejects the configuration.
pub fn producer(
    cfg: &KafkaConfig,
    role: &str,
) -> Result<FutureProducer<KafkaContext>, KafkaSetupError> {
    producer_config(cfg, role)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        // Each send's future is completed by its delivery report.
        .set("delivery.report.only.error", "false")
        .create_with_context(KafkaContext::new(cfg))
        .map_err(|source| KafkaSetupError::Client {
            what: "producer config",
            source,
        })
}

/// How a producer's delivery reports get served while [`wait_delivered`] waits for them (with
/// `delivery.report.only.error`, only failures have one: a delivered record leaves the
/// in-flight count when the broker acknowledges it).
pub trait DeliveryReports {
    /// Serves a delivery report that is ready, if this caller is the one that serves them;
    /// true when it served one or the in-flight count fell meanwhile (something may be ready
    /// right after it).
    fn serve_ready(&self) -> bool;
}

/// A `ThreadedProducer`'s own thread serves its reports.
impl<C: ProducerContext + 'static> DeliveryReports for ThreadedProducer<C> {
    fn serve_ready(&self) -> bool {
        false
    }
}

/// A `BaseProducer`'s reports are served only by polling it.
impl<C: ProducerContext> DeliveryReports for BaseProducer<C> {
    fn serve_ready(&self) -> bool {
        let before = self.in_flight_count();
        // One event at most, without waiting.
        self.poll(Duration::ZERO);
        self.in_flight_count() < before
    }
}

/// Waits until every record given to a transactional producer has its delivery report served
/// (delivered or failed; with `delivery.report.only.error`, until each is acknowledged or its
/// failure served), up to `timeout`. Call it before `commit_transaction`.
///
/// rdkafka's `flush`, which its `commit_transaction` runs first, asks librdkafka for a flush
/// that does not wait and, while any record or report is still unserved, polls the event queue
/// for 100 ms; rdkafka's `poll` runs to its deadline, so that costs the whole 100 ms whenever
/// anything is unserved at the commit, with either kind of producer: every ingest transaction
/// cost about 100 ms although the broker had acknowledged its records within a few, and every
/// stream commit (whose `BaseProducer` is polled once a batch and when its queue is full) did too. This
/// serves what is ready (a `BaseProducer`) or lets the producer's own thread serve it (a
/// `ThreadedProducer`), checking every quarter millisecond when nothing was ready, since the
/// safe API offers no wait on the count; then rdkafka's flush finds nothing left and the commit
/// starts at once.
///
/// # Errors
/// Records are still undelivered when `timeout` runs out (`KafkaError::Flush`, timed out, what
/// rdkafka's flush gives).
pub fn wait_delivered<C: ProducerContext, P: Producer<C> + DeliveryReports>(
    producer: &P,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let started = Instant::now();
    while producer.in_flight_count() > 0 {
        // Checked on every pass: a steady flow of events (logs while a broker is down) could
        // otherwise keep it serving past its timeout.
        if started.elapsed() >= timeout {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        }
        if !producer.serve_ready() {
            std::thread::sleep(Duration::from_micros(250));
        }
    }
    Ok(())
}

/// Commits the open transaction once every record of it is acknowledged or has its delivery
/// report served ([`wait_delivered`], up to `wait`), then `commit_transaction` with `timeout`: every
/// transactional commit of banter goes through here, so none sleeps in rdkafka's flush.
///
/// # Errors
/// The wait's timeout (`KafkaError::Flush`) or the commit's error.
pub fn commit_transaction<C: ProducerContext, P: Producer<C> + DeliveryReports>(
    producer: &P,
    wait: Duration,
    timeout: Duration,
) -> Result<(), KafkaError> {
    wait_delivered(producer, wait)?;
    producer.commit_transaction(timeout)
}

/// A consumer in `group` that never commits or stores offsets by itself.
pub fn consumer_config(cfg: &KafkaConfig, role: &str, group: &str) -> ClientConfig {
    let mut c = base_config(cfg, role);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed");
    c
}

/// A client for metadata requests only.
fn probe(cfg: &KafkaConfig) -> Result<BaseConsumer<KafkaContext>, KafkaSetupError> {
    let c: BaseConsumer<KafkaContext> = base_config(cfg, "probe")
        .create_with_context(KafkaContext::new(cfg))
        .map_err(|source| KafkaSetupError::Client {
            what: "probe config",
            source,
        })?;
    // Serves a token request (AWS_MSK_IAM) before the first metadata request needs it.
    let _ = c.poll(Duration::ZERO);
    Ok(c)
}

/// Keeps the last connection error librdkafka reports, which a metadata request does not
/// return (it only times out): an authentication or TLS failure is then reported as such.
/// What the probe heard from librdkafka: the last problem, and the first refusal.
#[derive(Default)]
struct Heard {
    last: Option<(RDKafkaErrorCode, String)>,
    /// The first refusal (settings to look at, what librdkafka said): kept, so a later
    /// "connection refused" from another address of the same host cannot hide it.
    refusal: Option<(String, String)>,
    /// Signs that may also be a blip (a token endpoint that failed once, a handshake cut
    /// short by a restarting broker), counted per broker until one shows a pattern.
    soft: std::collections::HashMap<String, u32>,
}

/// How many soft signs make a refusal.
const SOFT_REFUSALS: u32 = 3;

struct ProbeContext {
    cfg: KafkaConfig,
    heard: std::sync::Mutex<Heard>,
    tokens: KafkaContext,
}

impl ProbeContext {
    fn hear(&self, code: RDKafkaErrorCode, message: &str) {
        let Ok(mut h) = self.heard.lock() else { return };
        h.last = Some((code, message.to_owned()));
        if h.refusal.is_some() {
            return;
        }
        if let Some(r) = refusal(&self.cfg, code, message) {
            // librdkafka's messages start with the broker (`sasl_ssl://host:port/id: …`).
            let broker = message.split(": ").next().unwrap_or_default().to_owned();
            let n = if r.definite {
                0
            } else {
                let n = h.soft.entry(broker).or_insert(0);
                *n += 1;
                *n
            };
            if r.definite || n >= SOFT_REFUSALS {
                h.refusal = Some((r.keys, message.to_owned()));
            }
        }
    }
}

impl rdkafka::ClientContext for ProbeContext {
    /// librdkafka reports a refused connection (`FAIL`) as a log line from its broker thread.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        if matches!(
            level,
            L::Emerg | L::Alert | L::Critical | L::Error | L::Warning
        ) {
            tracing::debug!(facility = fac, "librdkafka: {message}");
            self.hear(RDKafkaErrorCode::Fail, message);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.hear(
            error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail),
            reason,
        );
    }

    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _config: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        self.tokens.token().map_err(|e| {
            // Heard as a refusal: the credentials are the setting to look at.
            self.hear(
                RDKafkaErrorCode::Authentication,
                &format!("MSK IAM token: {e}"),
            );
            e.into()
        })
    }
}

impl rdkafka::consumer::ConsumerContext for ProbeContext {}

/// A refusal recognised in what librdkafka said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The settings to look at.
    pub keys: String,
    /// Whether one such message settles it (the broker answered "no"), or it could also be a
    /// blip (a token endpoint that failed once, a connection cut during the handshake).
    pub definite: bool,
}

/// When `detail` says the brokers refused the client (bad credentials, a certificate that is
/// not trusted, no client certificate), the settings to look at.
pub fn refused_keys(cfg: &KafkaConfig, code: RDKafkaErrorCode, detail: &str) -> Option<String> {
    refusal(cfg, code, detail).map(|r| r.keys)
}

/// [`refused_keys`], saying whether the message settles it.
pub fn refusal(cfg: &KafkaConfig, code: RDKafkaErrorCode, detail: &str) -> Option<Refusal> {
    let d = detail.to_ascii_lowercase();
    let sasl_keys = match cfg.sasl.mechanism {
        SaslMechanism::OauthBearer => {
            "kafka.sasl.oauth_token_endpoint, kafka.sasl.oauth_client_id, kafka.sasl.oauth_client_secret"
        }
        SaslMechanism::AwsMskIam => {
            "kafka.sasl.aws_region and the AWS credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, or AWS_PROFILE), which need kafka-cluster:Connect"
        }
        _ => "kafka.sasl.username, kafka.sasl.password, kafka.sasl.mechanism",
    };
    let definite = |keys: String| {
        Some(Refusal {
            keys,
            definite: true,
        })
    };
    let maybe = |keys: String| {
        Some(Refusal {
            keys,
            definite: false,
        })
    };
    if code == RDKafkaErrorCode::Authentication
        || d.contains("sasl authentication")
        || d.contains("authentication failed")
    {
        return definite(sasl_keys.to_owned());
    }
    // A token endpoint that refused once may be a blip; a broker that refused the token is not.
    if d.contains("oauthbearer") || d.contains("token retrieval") {
        return maybe(sasl_keys.to_owned());
    }
    if d.contains("certificate verify failed") || d.contains("could not be verified") {
        return definite(if cfg.ssl.ca_file.is_empty() {
            "kafka.ssl.ca_file (the system's CAs did not sign the broker's certificate)".into()
        } else {
            format!(
                "kafka.ssl.ca_file (`{}` did not sign the broker's certificate)",
                cfg.ssl.ca_file
            )
        });
    }
    if d.contains("certificate required")
        || d.contains("bad certificate")
        || d.contains("unknown ca")
        || d.contains("alert handshake failure")
    {
        return definite("kafka.ssl.cert_file, kafka.ssl.key_file (the broker wants a client certificate it trusts)".into());
    }
    if d.contains("ssl handshake failed") || d.contains("wrong version number") {
        return maybe("kafka.security_protocol (does the listener speak TLS?), kafka.ssl.*".into());
    }
    if d.contains("disconnected while requesting apiversion") && !cfg.security_protocol.tls() {
        return maybe("kafka.security_protocol (a TLS listener drops plaintext clients)".into());
    }
    None
}

/// Waits until the cluster answers a metadata request, polling until `timeout`.
///
/// # Errors
/// [`KafkaSetupError::Unreachable`] with the last error when the deadline passes.
pub async fn wait_for_broker(cfg: &KafkaConfig, timeout: Duration) -> Result<(), KafkaSetupError> {
    let probe: BaseConsumer<ProbeContext> = base_config(cfg, "probe")
        .create_with_context(ProbeContext {
            cfg: cfg.clone(),
            heard: std::sync::Mutex::default(),
            tokens: KafkaContext::new(cfg),
        })
        .map_err(|source| KafkaSetupError::Client {
            what: "probe config",
            source,
        })?;
    let deadline = Instant::now() + timeout;
    let brokers = cfg.brokers.clone();
    tokio::task::spawn_blocking(move || loop {
        let got = probe.fetch_metadata(None, Duration::from_secs(2));
        // Serves the client's event queue: connection errors reach the context only there.
        let _ = probe.poll(Duration::from_millis(50));
        let (last, refusal) = probe
            .context()
            .heard
            .lock()
            .map(|h| (h.last.clone(), h.refusal.clone()))
            .unwrap_or_default();
        // A refusal is final: report it at once, naming the settings.
        if let Some((keys, detail)) = refusal {
            if got.as_ref().map_or(true, |md| md.brokers().is_empty()) {
                return Err(KafkaSetupError::Refused {
                    brokers,
                    keys,
                    detail,
                });
            }
        }
        match got {
            Ok(md) if !md.brokers().is_empty() => return Ok(()),
            Ok(_) if Instant::now() < deadline => continue,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            other => {
                return Err(KafkaSetupError::Unreachable {
                    brokers,
                    waited_secs: timeout.as_secs(),
                    detail: match (other, last) {
                        (_, Some((_, reason))) => reason,
                        (Err(e), None) => e.to_string(),
                        (Ok(_), None) => "no brokers in metadata".into(),
                    },
                })
            }
        }
    })
    .await
    .unwrap_or_else(|e| {
        Err(KafkaSetupError::Unreachable {
            brokers: cfg.brokers.clone(),
            waited_secs: 0,
            detail: e.to_string(),
        })
    })
}

/// What `ensure_topics` did to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    /// Created now.
    Created,
    /// Already there, with this many partitions.
    Exists {
        /// Its partition count.
        partitions: i32,
    },
}

/// One topic to create.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    /// Its name.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Replication factor.
    pub replication_factor: i32,
    /// Topic-level configuration (`cleanup.policy`, `retention.ms`, …).
    pub config: Vec<(String, String)>,
}

/// The topics banter's pipeline uses, as configured.
pub fn pipeline_topics(cfg: &KafkaConfig) -> Vec<TopicSpec> {
    let t = &cfg.topics;
    let spec = |name: &str, config: Vec<(String, String)>| TopicSpec {
        name: name.to_owned(),
        partitions: t.partitions,
        replication_factor: t.replication_factor,
        config,
    };
    let dlq_ms = (u64::from(t.dlq_retention_days) * 86_400_000).to_string();
    let mut specs = vec![
        spec(&t.events, vec![]),
        spec(&t.rollups, vec![]),
        spec(&t.alerts, vec![]),
        spec(&t.dlq, vec![("retention.ms".into(), dlq_ms)]),
        // One record per input partition and transaction; only the latest matters.
        spec(
            &t.checkpoints,
            vec![
                ("cleanup.policy".into(), "compact".into()),
                ("segment.ms".into(), "600000".into()),
                ("min.cleanable.dirty.ratio".into(), "0.1".into()),
            ],
        ),
        // A few records per schema version, read whole by readers: one partition.
        TopicSpec {
            name: t.schemas.clone(),
            partitions: 1,
            replication_factor: t.replication_factor,
            config: vec![("cleanup.policy".into(), "compact".into())],
        },
    ];
    // Provisional rows matter until their window's final row replaces them (the
    // out-of-orderness after the window's end; a late event's correction is final): a day
    // covers a sink stopped for hours.
    if let Some(provisional) = t.separate_provisional_topic() {
        specs.push(spec(
            &provisional,
            vec![("retention.ms".into(), "86400000".into())],
        ));
    }
    specs
}

/// Creates the topics that do not exist yet; idempotent.
///
/// # Errors
/// The broker is unreachable, or refuses a topic (the reason is in the error).
pub async fn ensure_topics(
    cfg: &KafkaConfig,
    topics: &[TopicSpec],
) -> Result<Vec<(String, TopicOutcome)>, KafkaSetupError> {
    if cfg.security_protocol.sasl() && cfg.sasl.mechanism == SaslMechanism::AwsMskIam {
        // rdkafka's admin client cannot sign its own tokens: the topics are checked, not made.
        let (own, wanted): (KafkaConfig, Vec<(String, i32)>) = (
            cfg.clone(),
            topics
                .iter()
                .map(|t| (t.name.clone(), t.partitions))
                .collect(),
        );
        let found = tokio::task::spawn_blocking(move || {
            wanted
                .into_iter()
                .map(|(name, n)| partition_count(&own, &name).map(|c| (name, n, c)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| KafkaSetupError::Topic {
            topic: "(all)".into(),
            detail: e.to_string(),
        })??;
        let missing: Vec<String> = found
            .iter()
            .filter(|(_, _, c)| c.is_none())
            .map(|(name, n, _)| format!("{name} ({n} partitions)"))
            .collect();
        if !missing.is_empty() {
            return Err(KafkaSetupError::Topic {
                topic: missing.join(", "),
                detail: "topics cannot be created over AWS_MSK_IAM (rdkafka's admin client cannot sign its own tokens): create them with kafka-topics.sh or the AWS console, or run `banter topics` once with SCRAM credentials".into(),
            });
        }
        return Ok(found
            .into_iter()
            .map(|(name, _, c)| {
                let partitions = i32::try_from(c.unwrap_or(0)).unwrap_or(i32::MAX);
                (name, TopicOutcome::Exists { partitions })
            })
            .collect());
    }
    let admin: AdminClient<DefaultClientContext> =
        base_config(cfg, "admin")
            .create()
            .map_err(|source| KafkaSetupError::Client {
                what: "admin config",
                source,
            })?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            t.config.iter().fold(
                NewTopic::new(
                    &t.name,
                    t.partitions,
                    TopicReplication::Fixed(t.replication_factor),
                ),
                |nt, (k, v)| nt.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(new.iter(), &opts)
        .await
        .map_err(|source| KafkaSetupError::Client {
            what: "create topics",
            source,
        })?;
    let mut out = Vec::new();
    for r in results {
        match r {
            Ok(name) => out.push((name, TopicOutcome::Created)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                let md = admin
                    .inner()
                    .fetch_metadata(Some(&name), Duration::from_secs(10))
                    .map_err(|source| KafkaSetupError::Client {
                        what: "topic metadata",
                        source,
                    })?;
                let partitions = md
                    .topics()
                    .first()
                    .map(|t| t.partitions().len() as i32)
                    .unwrap_or(0);
                out.push((name, TopicOutcome::Exists { partitions }));
            }
            Err((name, code)) => {
                return Err(KafkaSetupError::Topic {
                    topic: name,
                    detail: code.to_string(),
                })
            }
        }
    }
    Ok(out)
}

/// Partition count of `topic`, or None when it does not exist.
///
/// # Errors
/// The broker did not answer.
pub fn partition_count(cfg: &KafkaConfig, topic: &str) -> Result<Option<usize>, KafkaSetupError> {
    let c = probe(cfg)?;
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|source| KafkaSetupError::Client {
            what: "topic metadata",
            source,
        })?;
    Ok(md.topics().first().and_then(|t| match t.error() {
        None => Some(t.partitions().len()),
        Some(_) => None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> ProbeContext {
        let mut cfg = KafkaConfig::default();
        cfg.sasl.mechanism = SaslMechanism::ScramSha512;
        ProbeContext {
            tokens: KafkaContext::new(&cfg),
            cfg,
            heard: std::sync::Mutex::default(),
        }
    }

    /// Transactional producers on librdkafka's mock cluster, a `ThreadedProducer` (ingest's)
    /// and a `BaseProducer` (the stream's): the wait ends with every record served, so the
    /// commit's own flush has nothing left; with the partition's broker down it gives up at its
    /// timeout with the error a flush gives, and waits again once the broker is back.
    #[test]
    fn wait_delivered_ends_when_every_record_is_served_and_times_out_while_the_broker_is_down() {
        use rdkafka::producer::{BaseRecord, DefaultProducerContext};
        let record = |i: u32| i.to_string();

        let mock = transactions_mock();
        let threaded: ThreadedProducer<DefaultProducerContext> =
            transactional(&mock).create().expect("producer");
        let send = |n: u32| {
            for i in 0..n {
                threaded
                    .send(BaseRecord::to("events").key("k").payload(&record(i)))
                    .map_err(|(e, _)| e)
                    .expect("send");
            }
        };
        check_wait_delivered(&mock, &threaded, &send);

        // With every report, and as the stream's producer is (reports of failures only: a
        // delivered record leaves the in-flight count when the broker acknowledges it, with
        // nothing to serve).
        for only_errors in ["false", "true"] {
            let mock = transactions_mock();
            let base: BaseProducer<DefaultProducerContext> = transactional(&mock)
                .set("delivery.report.only.error", only_errors)
                .create()
                .expect("producer");
            let send = |n: u32| {
                for i in 0..n {
                    base.send(BaseRecord::to("events").key("k").payload(&record(i)))
                        .map_err(|(e, _)| e)
                        .expect("send");
                }
            };
            check_wait_delivered(&mock, &base, &send);
        }
    }

    /// A record the broker refuses for good: the wait still ends (its report served), and the
    /// transaction cannot commit but aborts; also with reports of failures only (the stream's
    /// and the ingest's producers), where the transaction is what tells.
    #[test]
    fn a_failed_delivery_fails_the_commit_after_the_wait() {
        for only_errors in ["false", "true"] {
            a_failed_delivery_fails_the_commit(only_errors);
        }
    }

    fn a_failed_delivery_fails_the_commit(only_errors: &str) {
        use rdkafka::producer::{BaseRecord, DefaultProducerContext};
        use rdkafka::types::RDKafkaApiKey;
        use rdkafka::types::RDKafkaRespErr;
        let mock = transactions_mock();
        let producer: BaseProducer<DefaultProducerContext> = transactional(&mock)
            .set("delivery.report.only.error", only_errors)
            .create()
            .expect("producer");
        producer
            .init_transactions(Duration::from_secs(30))
            .expect("init_transactions");
        producer.begin_transaction().expect("begin_transaction");
        mock.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
        );
        producer
            .send(BaseRecord::to("events").key("k").payload("refused"))
            .map_err(|(e, _)| e)
            .expect("send");
        wait_delivered(&producer, Duration::from_secs(30)).expect("the failure served");
        assert_eq!(producer.in_flight_count(), 0);
        let err = producer
            .commit_transaction(Duration::from_secs(30))
            .expect_err("a transaction with a failed record must not commit");
        assert!(
            matches!(&err, KafkaError::Transaction(e) if e.txn_requires_abort()),
            "{err:?}"
        );
        producer
            .abort_transaction(Duration::from_secs(30))
            .expect("abort");
    }

    /// Two brokers: the transaction coordinator on 1, the one partition of `events` on 2.
    fn transactions_mock(
    ) -> rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
        use rdkafka::mocking::{MockCluster, MockCoordinator};
        let mock = MockCluster::new(2).expect("mock cluster");
        mock.create_topic("events", 1, 1).expect("topic");
        mock.coordinator(MockCoordinator::Transaction("txn".into()), 1)
            .expect("transaction coordinator");
        mock.partition_leader("events", 0, Some(2))
            .expect("partition leader");
        mock
    }

    fn transactional(
        mock: &rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    ) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", mock.bootstrap_servers())
            .set("transactional.id", "txn")
            .set("linger.ms", "2");
        c
    }

    fn check_wait_delivered<C: ProducerContext>(
        mock: &rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        producer: &(impl Producer<C> + DeliveryReports),
        send: &dyn Fn(u32),
    ) {
        producer
            .init_transactions(Duration::from_secs(30))
            .expect("init_transactions");

        producer.begin_transaction().expect("begin_transaction");
        send(100);
        wait_delivered(producer, Duration::from_secs(30)).expect("delivered");
        assert_eq!(producer.in_flight_count(), 0);
        producer
            .commit_transaction(Duration::from_secs(30))
            .expect("commit");

        mock.broker_down(2).expect("broker down");
        producer.begin_transaction().expect("begin_transaction");
        send(10);
        let err = wait_delivered(producer, Duration::from_millis(500)).expect_err("broker down");
        assert!(
            matches!(err, KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)),
            "{err:?}"
        );
        assert!(producer.in_flight_count() > 0);
        mock.broker_up(2).expect("broker up");
        wait_delivered(producer, Duration::from_secs(60)).expect("delivered once the broker is up");
        assert_eq!(producer.in_flight_count(), 0);
        producer
            .commit_transaction(Duration::from_secs(30))
            .expect("commit");
    }

    #[test]
    fn a_refusal_is_kept_when_another_address_then_refuses_the_connection() {
        let c = context();
        c.hear(
            RDKafkaErrorCode::Authentication,
            "sasl_ssl://localhost:9096/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512",
        );
        // localhost's ::1, where the broker does not listen.
        c.hear(
            RDKafkaErrorCode::Fail,
            "sasl_ssl://localhost:9096/bootstrap: Connect to ipv6#[::1]:9096 failed: Connection refused",
        );
        let h = c.heard.lock().unwrap();
        let (keys, detail) = h.refusal.clone().expect("the refusal is kept");
        assert!(keys.contains("kafka.sasl.password"), "{keys}");
        assert!(detail.contains("invalid credentials"), "{detail}");
        assert!(h.last.as_ref().unwrap().1.contains("Connection refused"));
    }

    #[test]
    fn a_token_endpoint_that_fails_once_is_not_yet_a_refusal() {
        let mut c = context();
        c.cfg.sasl.mechanism = SaslMechanism::OauthBearer;
        let blip = "Failed to acquire SASL OAUTHBEARER token: token retrieval failed: HTTP 503";
        c.hear(RDKafkaErrorCode::Fail, blip);
        assert!(c.heard.lock().unwrap().refusal.is_none());
        c.hear(RDKafkaErrorCode::Fail, blip);
        assert!(c.heard.lock().unwrap().refusal.is_none());
        c.hear(RDKafkaErrorCode::Fail, blip);
        let keys = c.heard.lock().unwrap().refusal.clone().unwrap().0;
        assert!(keys.contains("kafka.sasl.oauth_token_endpoint"), "{keys}");
    }

    #[test]
    fn soft_signs_count_per_broker() {
        let c = context();
        for b in ["b-1:9096", "b-2:9096", "b-3:9096"] {
            c.hear(
                RDKafkaErrorCode::Fail,
                &format!("sasl_ssl://{b}/bootstrap: SSL handshake failed: connection reset"),
            );
        }
        assert!(c.heard.lock().unwrap().refusal.is_none());
    }

    #[test]
    fn a_connection_refused_alone_is_no_refusal() {
        let c = context();
        for _ in 0..5 {
            c.hear(
                RDKafkaErrorCode::Fail,
                "localhost:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused",
            );
        }
        assert!(c.heard.lock().unwrap().refusal.is_none());
    }
}
