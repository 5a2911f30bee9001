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
use rdkafka::producer::FutureProducer;
use thiserror::Error;

use crate::config::KafkaConfig;

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

/// The base client configuration: brokers, client id (`<client_id>-<role>`), extra properties.
pub fn base_config(cfg: &KafkaConfig, role: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", format!("{}-{role}", cfg.client_id))
        .set("log_level", "4");
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

/// The durability settings every banter producer shares: `acks=all`,
/// `enable.idempotence=true`, lz4. Roles add their own (transactions, linger).
pub fn producer_config(cfg: &KafkaConfig, role: &str) -> ClientConfig {
    let mut c = base_config(cfg, role);
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4");
    c
}

/// An idempotent producer ([`producer_config`]) with a short linger and a 30 s delivery
/// timeout.
///
/// # Errors
/// librdkafka rejects the configuration.
pub fn producer(cfg: &KafkaConfig, role: &str) -> Result<FutureProducer, KafkaSetupError> {
    producer_config(cfg, role)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .map_err(|source| KafkaSetupError::Client {
            what: "producer config",
            source,
        })
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
fn probe(cfg: &KafkaConfig) -> Result<BaseConsumer, KafkaSetupError> {
    base_config(cfg, "probe")
        .create()
        .map_err(|source| KafkaSetupError::Client {
            what: "probe config",
            source,
        })
}

/// Waits until the cluster answers a metadata request, polling until `timeout`.
///
/// # Errors
/// [`KafkaSetupError::Unreachable`] with the last error when the deadline passes.
pub async fn wait_for_broker(cfg: &KafkaConfig, timeout: Duration) -> Result<(), KafkaSetupError> {
    let probe = probe(cfg)?;
    let deadline = Instant::now() + timeout;
    let brokers = cfg.brokers.clone();
    tokio::task::spawn_blocking(move || loop {
        match probe.fetch_metadata(None, Duration::from_secs(2)) {
            Ok(md) if !md.brokers().is_empty() => return Ok(()),
            Ok(_) if Instant::now() < deadline => continue,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            other => {
                return Err(KafkaSetupError::Unreachable {
                    brokers,
                    waited_secs: timeout.as_secs(),
                    detail: match other {
                        Err(e) => e.to_string(),
                        Ok(_) => "no brokers in metadata".into(),
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
    vec![
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
    ]
}

/// Creates the topics that do not exist yet; idempotent.
///
/// # Errors
/// The broker is unreachable, or refuses a topic (the reason is in the error).
pub async fn ensure_topics(
    cfg: &KafkaConfig,
    topics: &[TopicSpec],
) -> Result<Vec<(String, TopicOutcome)>, KafkaSetupError> {
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
