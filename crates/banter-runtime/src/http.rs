//! The ops HTTP server every role runs: `/metrics` (Prometheus), `/healthz` (the process is
//! alive) and `/readyz` (every dependency the role registered is ready).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::telemetry::Metrics;

/// Named readiness checks, set by the role as its dependencies come and go (e.g. `kafka`).
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<String, bool>>>,
}

impl Readiness {
    /// Declares a check, not ready yet.
    pub fn register(&self, name: &str) {
        self.set(name, false);
    }

    /// Sets a check's state.
    pub fn set(&self, name: &str, ready: bool) {
        if let Ok(mut c) = self.checks.lock() {
            c.insert(name.to_owned(), ready);
        }
    }

    /// The checks that are not ready; empty when the role is ready.
    pub fn not_ready(&self) -> Vec<String> {
        match self.checks.lock() {
            Ok(c) => c
                .iter()
                .filter(|(_, ok)| !**ok)
                .map(|(n, _)| n.clone())
                .collect(),
            Err(_) => vec!["readiness-lock-poisoned".to_owned()],
        }
    }
}

#[derive(Clone)]
struct OpsState {
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

/// The router, for embedding in a role's own server.
pub fn ops_router(metrics: Arc<Metrics>, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz_handler))
        .with_state(OpsState { metrics, readiness })
}

async fn metrics_handler(State(s): State<OpsState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn readyz_handler(State(s): State<OpsState>) -> impl IntoResponse {
    let not_ready = s.readiness.not_ready();
    if not_ready.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", not_ready.join(", ")),
        )
    }
}

/// A running ops server.
#[derive(Debug)]
pub struct OpsServer {
    /// The address it listens on (useful with port 0).
    pub local_addr: SocketAddr,
    /// Finishes when the server stopped.
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Binds `listen` and serves the ops routes until `shutdown` is cancelled.
///
/// # Errors
/// The bind error (address in use, permission) with the address.
pub async fn serve_ops(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<OpsServer> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {listen} for the ops server: {e}"),
        )
    })?;
    let local_addr = listener.local_addr()?;
    let app = ops_router(metrics, readiness);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    tracing::info!(%local_addr, "ops server listening");
    Ok(OpsServer { local_addr, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let metrics = Metrics::new("test").into_shared();
        let readiness = Readiness::default();
        readiness.register("kafka");
        let stop = CancellationToken::new();
        let srv = serve_ops(
            "127.0.0.1:0".parse().unwrap(),
            metrics,
            readiness.clone(),
            stop.clone(),
        )
        .await
        .unwrap();
        let base = format!("http://{}", srv.local_addr);
        let http = reqwest::Client::new();

        let r = http.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);

        let r = http.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(r.text().await.unwrap(), "not ready: kafka\n");
        readiness.set("kafka", true);
        let r = http.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 200);

        let r = http.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body = r.text().await.unwrap();
        assert!(body.contains("banter_up 1"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");

        stop.cancel();
        srv.task.await.unwrap().unwrap();
    }
}
