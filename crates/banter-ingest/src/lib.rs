//! `banter ingest`: accepts engagement events over HTTP (Meta webhooks, first-party events) and
//! from files (`banter replay`), normalizes them to [`banter_model::EngagementEvent`],
//! validates, and publishes them to `banter.events.v1` keyed by `account_id`. What cannot be
//! accepted goes to `banter.dlq.v1` with its reason and original payload.
//!
//! A 2xx answer means the broker acknowledged every accepted event and every dead letter of
//! the request, in one Kafka transaction: a request is published entirely or not at all (503).

pub mod config;
pub mod normalize;
pub mod publisher;
pub mod replay;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;

use banter_runtime::config::{ConfigError, KafkaConfig};
use banter_runtime::http::Readiness;
use prometheus_client::registry::Registry;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

pub use crate::config::IngestConfig;
use crate::normalize::Normalizer;
use crate::publisher::{Publisher, PublisherMetrics};
pub use crate::server::sign as webhook_signature;
use crate::server::{IngestMetrics, IngestState};

/// Why ingest could not start.
#[derive(Debug, Error)]
pub enum IngestError {
    /// Configuration (the key is named).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The Kafka client could not be created.
    #[error("kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A running ingest server.
#[derive(Debug)]
pub struct Ingest {
    /// Where the API listens.
    pub local_addr: SocketAddr,
    /// The HTTP server; finishes after shutdown once in-flight requests are answered.
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The publishing thread; finishes once the server and every publisher handle are gone.
    pub publisher_thread: std::thread::JoinHandle<()>,
}

/// Builds the shared state: normalizer, metrics (registered into `registry`) and publisher.
/// Readiness check `kafka` follows the publisher.
///
/// # Errors
/// Invalid configuration or Kafka client creation.
pub async fn build_state(
    kafka: &KafkaConfig,
    ingest: &IngestConfig,
    registry: &mut Registry,
    readiness: &Readiness,
    role: &str,
) -> Result<(IngestState, std::thread::JoinHandle<()>), IngestError> {
    ingest.validate_for_ingest()?;
    let normalizer = Normalizer::new(
        ingest.actor_salt.expose().as_bytes(),
        (ingest.max_future_skew_secs * 1000) as i64,
    );
    let publisher_metrics = PublisherMetrics::register(registry);
    let metrics = IngestMetrics::register(registry);
    readiness.register("kafka");
    let ready = readiness.clone();
    let schema_registry = Publisher::schema_registry(kafka).await?;
    let (publisher, thread) = Publisher::start(
        kafka,
        ingest,
        schema_registry,
        role,
        publisher_metrics,
        move |ok| ready.set("kafka", ok),
    )?;
    let state = IngestState {
        normalizer: Arc::new(normalizer),
        publisher,
        metrics,
        config: Arc::new(ingest.clone()),
        requests: Arc::new(tokio::sync::Semaphore::new(ingest.max_concurrent_requests)),
        events_topic: kafka.topics.events.as_str().into(),
        dlq_topic: kafka.topics.dlq.as_str().into(),
    };
    Ok((state, thread))
}

/// Starts the ingest API on `ingest.listen` until `shutdown` is cancelled.
///
/// # Errors
/// Invalid configuration, Kafka client creation, or the address cannot be bound.
pub async fn start(
    kafka: &KafkaConfig,
    ingest: &IngestConfig,
    registry: &mut Registry,
    readiness: &Readiness,
    shutdown: CancellationToken,
) -> Result<Ingest, IngestError> {
    let (state, publisher_thread) =
        build_state(kafka, ingest, registry, readiness, "ingest").await?;
    let addr = ingest.listen.clone();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| IngestError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| IngestError::Bind { addr, source })?;
    let app = server::router(state);
    let limits = server::ConnectionLimits {
        header_timeout: std::time::Duration::from_millis(ingest.header_timeout_ms),
        max_connections: ingest.max_connections,
    };
    let server = tokio::spawn(server::serve(listener, app, limits, shutdown));
    tracing::info!(%local_addr, "ingest listening");
    Ok(Ingest {
        local_addr,
        server,
        publisher_thread,
    })
}
