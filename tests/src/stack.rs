//! The real local stack for tests: service checks with a clear message when something is
//! down, a fresh topic and ClickHouse database per test, ingest in-process, and waiting by
//! polling with a deadline.
//!
//! The stack comes from `scripts/stack.sh up` (which `scripts/test.sh` runs first). Addresses
//! follow the usual configuration, so `BANTER_KAFKA__BROKERS` and `BANTER_CLICKHOUSE__URL`
//! point the tests elsewhere.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use banter::Config;
use banter_runtime::kafka::{ensure_topics, wait_for_broker, TopicSpec};
use banter_sink::clickhouse::{connect, server_client, ClickHouse};

const HINT: &str = "start the local stack with `scripts/stack.sh up`, or run the whole suite with `scripts/test.sh`";

/// The repository's root folder (scripts, schemas, fixtures).
pub fn repo_root() -> std::path::PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| here.to_path_buf())
}

/// The configuration tests use: defaults plus `BANTER_*` overrides from the environment.
pub fn config() -> Config {
    Config::load(None, std::env::vars())
        .unwrap_or_else(|e| panic!("test configuration from the environment is invalid: {e}"))
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000_000)
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{nanos}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Fails the test with a clear message unless Kafka answers within 15 s.
pub async fn require_kafka(cfg: &Config) {
    if let Err(e) = wait_for_broker(&cfg.kafka, Duration::from_secs(15)).await {
        panic!("Kafka is not up: {e}\n{HINT}");
    }
}

/// The local stack's Schema Registry (Apicurio Registry, Confluent's API under
/// `/apis/ccompat/v7`; `BANTER_SCHEMA_REGISTRY_PORT`, default 8081), checked to answer.
pub async fn real_schema_registry() -> String {
    let port = std::env::var("BANTER_SCHEMA_REGISTRY_PORT").unwrap_or_else(|_| "8081".into());
    let url = format!("http://127.0.0.1:{port}/apis/ccompat/v7");
    match reqwest::get(format!("{url}/subjects")).await {
        Ok(r) if r.status().is_success() => url,
        other => panic!(
            "the Schema Registry at {url} does not answer ({other:?}): `scripts/stack.sh up schema-registry`\n{HINT}"
        ),
    }
}

/// A GET on the real registry: its JSON answer.
pub async fn registry_get(url: &str, path: &str) -> serde_json::Value {
    let r = reqwest::get(format!("{url}{path}"))
        .await
        .unwrap_or_else(|e| panic!("schema registry {path}: {e}"));
    assert!(
        r.status().is_success(),
        "schema registry {path}: {}",
        r.status()
    );
    r.json()
        .await
        .unwrap_or_else(|e| panic!("schema registry {path}: {e}"))
}

/// Creates a fresh topic with `partitions` partitions; returns its name.
pub async fn fresh_topic(cfg: &Config, name: &str, partitions: i32) -> String {
    require_kafka(cfg).await;
    let topic = unique(&format!("test.{name}"));
    let spec = TopicSpec {
        name: topic.clone(),
        partitions,
        replication_factor: 1,
        config: vec![],
    };
    ensure_topics(&cfg.kafka, &[spec])
        .await
        .unwrap_or_else(|e| panic!("cannot create {topic}: {e}"));
    topic
}

/// A fresh ClickHouse database; dropped by [`TestDatabase::drop_now`].
pub struct TestDatabase {
    /// Its name.
    pub name: String,
    /// A connection for it, set up for the server's version.
    pub ch: ClickHouse,
}

impl TestDatabase {
    /// Drops the database (tests call it at the end; a failed test leaves it for inspection).
    pub async fn drop_now(self, cfg: &Config) {
        let _ = server_client(&cfg.clickhouse)
            .expect("clickhouse client")
            .query(&format!("DROP DATABASE IF EXISTS {}", self.name))
            .execute()
            .await;
    }
}

/// Creates a fresh database; fails the test with a clear message when ClickHouse is down.
pub async fn fresh_database(cfg: &Config) -> TestDatabase {
    let name = unique("test");
    let mut ch_cfg = cfg.clickhouse.clone();
    ch_cfg.database = name.clone();
    let ch = match connect(&ch_cfg, Duration::from_secs(15)).await {
        Ok(ch) => ch,
        Err(e) => panic!("ClickHouse is not up: {e}\n{HINT}"),
    };
    server_client(&ch_cfg)
        .expect("clickhouse client")
        .query(&format!("CREATE DATABASE {name}"))
        .execute()
        .await
        .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
    TestDatabase { name, ch }
}

/// Polls `check` until it returns Some or `timeout` passes; panics with `what` on timeout.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads `n` messages of `topic` from the beginning, in a fresh consumer group, polling until
/// `timeout`; panics with how many arrived when it passes.
pub async fn consume(
    cfg: &Config,
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let consumer: StreamConsumer =
        banter_runtime::kafka::consumer_config(&cfg.kafka, "test", &unique("group"))
            .create()
            .unwrap_or_else(|e| panic!("cannot create consumer: {e}"));
    consumer
        .subscribe(&[topic])
        .unwrap_or_else(|e| panic!("cannot subscribe to {topic}: {e}"));
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            panic!(
                "timed out after {timeout:?} with {} of {n} messages from {topic}",
                out.len()
            );
        }
        match tokio::time::timeout(left.min(Duration::from_secs(1)), consumer.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(e)) => panic!("consuming {topic}: {e}"),
            Err(_) => {}
        }
    }
    out
}

/// A configuration whose pipeline topics are fresh (created now) and whose ingest listens on a
/// free port with test secrets.
pub async fn fresh_pipeline_config(name: &str) -> Config {
    let mut cfg = config();
    cfg.kafka.topics.events = fresh_topic(&cfg, &format!("{name}.events"), 3).await;
    cfg.kafka.topics.dlq = fresh_topic(&cfg, &format!("{name}.dlq"), 1).await;
    cfg.kafka.topics.rollups = fresh_topic(&cfg, &format!("{name}.rollups"), 3).await;
    cfg.kafka.topics.provisional = fresh_topic(&cfg, &format!("{name}.provisional"), 3).await;
    cfg.kafka.topics.alerts = fresh_topic(&cfg, &format!("{name}.alerts"), 1).await;
    cfg.kafka.topics.checkpoints = fresh_topic(&cfg, &format!("{name}.checkpoints"), 3).await;
    cfg.kafka.topics.schemas = fresh_topic(&cfg, &format!("{name}.schemas"), 1).await;
    cfg.stream.group_id = unique(&format!("{name}.stream"));
    cfg.sink.group_id = unique(&format!("{name}.sink"));
    cfg.ingest.listen = "127.0.0.1:0".into();
    cfg.ingest.actor_salt = banter_runtime::Secret::new("integration-test-salt");
    cfg.ingest.meta_app_secret = banter_runtime::Secret::new(META_APP_SECRET);
    cfg.ingest.meta_verify_token = banter_runtime::Secret::new(META_VERIFY_TOKEN);
    cfg
}

/// The local stack's replicated cluster (`scripts/stack.sh up zookeeper clickhouse-1
/// clickhouse-2`): its name, and the HTTP URL of replica 1 or 2.
pub const CLUSTER: &str = "banter_cluster";

/// The HTTP URL of the cluster's replica `n` (1 or 2).
pub fn replica_url(n: u8) -> String {
    let (var, default) = match n {
        1 => ("BANTER_CLICKHOUSE_1_HTTP_PORT", 8124),
        _ => ("BANTER_CLICKHOUSE_2_HTTP_PORT", 8125),
    };
    format!("http://127.0.0.1:{}", port(var, default))
}

/// The local stack's TLS material (`scripts/stack.sh` makes it): `ca.pem`, `rogue-ca.pem`,
/// `client.pem`, `client.key`, …
pub fn tls_file(name: &str) -> String {
    let stack = std::env::var("BANTER_STACK_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".stack"));
    let p = stack.join("tls").join(name);
    assert!(p.exists(), "{} is missing: {HINT}", p.display());
    p.to_string_lossy().into_owned()
}

fn port(var: &str, default: u16) -> u16 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Points `cfg` at the local stack's SASL_SSL listener (SCRAM-SHA-512, user `banter`, the
/// local CA) and its HTTPS ClickHouse with user `banter`, as `scripts/stack.sh` sets them up.
pub fn secured_sasl(cfg: &mut Config) {
    use banter_runtime::config::{SaslMechanism, SecurityProtocol};
    cfg.kafka.brokers = format!("localhost:{}", port("BANTER_KAFKA_SASL_PORT", 9096));
    cfg.kafka.security_protocol = SecurityProtocol::SaslSsl;
    cfg.kafka.ssl.ca_file = tls_file("ca.pem");
    cfg.kafka.sasl.mechanism = SaslMechanism::ScramSha512;
    cfg.kafka.sasl.username = "banter".into();
    cfg.kafka.sasl.password = banter_runtime::Secret::new("banter-kafka-secret");
    secured_clickhouse(cfg);
}

/// The AWS credentials the local stack's MSK-style IAM listener accepts (for child processes'
/// environment).
pub const STACK_AWS_CREDENTIALS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "AKIABANTERSTACK0001"),
    ("AWS_SECRET_ACCESS_KEY", "banter-aws-secret"),
];

/// Points `cfg` at the local stack's MSK-style IAM listener (SASL_SSL OAUTHBEARER validated as
/// MSK does, region us-east-1; the processes need [`STACK_AWS_CREDENTIALS`] in their
/// environment) and its HTTPS ClickHouse.
pub fn secured_msk_iam(cfg: &mut Config) {
    use banter_runtime::config::{SaslMechanism, SecurityProtocol};
    cfg.kafka.brokers = format!("localhost:{}", port("BANTER_KAFKA_IAM_PORT", 9098));
    cfg.kafka.security_protocol = SecurityProtocol::SaslSsl;
    cfg.kafka.ssl.ca_file = tls_file("ca.pem");
    cfg.kafka.sasl.mechanism = SaslMechanism::AwsMskIam;
    cfg.kafka.sasl.aws_region = "us-east-1".into();
    secured_clickhouse(cfg);
}

/// Points `cfg` at the local stack's SSL listener with this client's certificate (the broker
/// requires one) and its HTTPS ClickHouse.
pub fn secured_mtls(cfg: &mut Config) {
    use banter_runtime::config::SecurityProtocol;
    cfg.kafka.brokers = format!("localhost:{}", port("BANTER_KAFKA_SSL_PORT", 9094));
    cfg.kafka.security_protocol = SecurityProtocol::Ssl;
    cfg.kafka.ssl.ca_file = tls_file("ca.pem");
    cfg.kafka.ssl.cert_file = tls_file("client.pem");
    cfg.kafka.ssl.key_file = tls_file("client.key");
    secured_clickhouse(cfg);
}

/// The local stack's ClickHouse over HTTPS, as user `banter` with its password.
pub fn secured_clickhouse(cfg: &mut Config) {
    cfg.clickhouse.url = format!(
        "https://localhost:{}",
        port("BANTER_CLICKHOUSE_HTTPS_PORT", 8443)
    );
    cfg.clickhouse.user = "banter".into();
    cfg.clickhouse.password = banter_runtime::Secret::new("banter-ch-secret");
    cfg.clickhouse.ca_file = tls_file("ca.pem");
}

/// The Meta app secret tests sign webhooks with.
pub const META_APP_SECRET: &str = "test-app-secret";
/// The Meta verify token tests use.
pub const META_VERIFY_TOKEN: &str = "test-verify-token";

/// An ingest server running in this process; stops when dropped.
pub struct TestIngest {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Drop for TestIngest {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts ingest with `cfg` and waits until its publisher is ready.
pub async fn start_ingest(cfg: &Config) -> TestIngest {
    let mut registry = prometheus_client::registry::Registry::default();
    let readiness = banter_runtime::http::Readiness::default();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let ingest = banter_ingest::start(
        &cfg.kafka,
        &cfg.ingest,
        &mut registry,
        &readiness,
        shutdown.clone(),
    )
    .await
    .unwrap_or_else(|e| panic!("cannot start ingest: {e}"));
    wait_for(
        "the ingest publisher to be ready",
        Duration::from_secs(30),
        || {
            let r = readiness.clone();
            async move { r.not_ready().is_empty().then_some(()) }
        },
    )
    .await;
    TestIngest {
        base: format!("http://{}", ingest.local_addr),
        shutdown,
    }
}

/// Runs `scripts/stack.sh ARGS` (e.g. `["down", "clickhouse"]`); panics with its output on
/// failure. Tests that stop a service live in their own test binary.
pub fn stack(args: &[&str]) {
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("scripts/stack.sh"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/stack.sh: {e}"));
    assert!(
        out.status.success(),
        "stack.sh {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
