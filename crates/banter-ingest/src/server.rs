//! The ingest HTTP API (axum).
//!
//! | route | does |
//! |---|---|
//! | `GET /webhooks/meta` | subscription handshake: echoes `hub.challenge` when `hub.verify_token` matches (else 403) |
//! | `POST /webhooks/meta` | Meta updates, signed (`X-Hub-Signature-256`, else 401) |
//! | `POST /v1/events` | first-party events, a JSON array (or one object) or NDJSON; per-event results |
//!
//! Statuses: 200 all accepted; 207 some rejected (they are in the dead-letter topic); 422 all
//! rejected; 400 malformed JSON (with line and column) or not a webhook envelope; 401 bad
//! signature; 403 bad verify token; 413 body or event count over the limit; 415 content type;
//! 503 with `Retry-After` when Kafka did not acknowledge in time (nothing was published).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use banter_model::{AvroRecord, DeadLetter, Stage};
use banter_runtime::Secret;
use hmac::{Hmac, Mac};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::config::IngestConfig;
use crate::normalize::{first_party, meta, Item, Normalizer};
use crate::publisher::{PublishError, Publisher, Record};

/// Ingest metrics (`banter_ingest_*`). Labels are bounded: routes, statuses, reasons.
#[derive(Debug, Clone)]
pub struct IngestMetrics {
    requests: Family<Vec<(String, String)>, Counter>,
    accepted: Family<Vec<(String, String)>, Counter>,
    rejected: Family<Vec<(String, String)>, Counter>,
    ignored: Family<Vec<(String, String)>, Counter>,
    publish_seconds: Histogram,
    in_flight: Gauge,
}

impl IngestMetrics {
    /// Registers the ingest metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let m = IngestMetrics {
            requests: Family::default(),
            accepted: Family::default(),
            rejected: Family::default(),
            ignored: Family::default(),
            publish_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            in_flight: Gauge::default(),
        };
        registry.register(
            "ingest_requests",
            "HTTP requests by route and status",
            m.requests.clone(),
        );
        registry.register(
            "ingest_events_accepted",
            "Events accepted and published, by source",
            m.accepted.clone(),
        );
        registry.register(
            "ingest_events_rejected",
            "Events and updates dead-lettered, by reason (invalid, malformed, unknown_change, unknown_field)",
            m.rejected.clone(),
        );
        registry.register(
            "ingest_updates_ignored",
            "Legitimate deliveries that are not engagement (delivery receipts, handovers, test payloads, reactions on comments…), by reason",
            m.ignored.clone(),
        );
        registry.register(
            "ingest_publish_duration_seconds",
            "Time from handing a request's records to the publisher to the broker's acknowledgement",
            m.publish_seconds.clone(),
        );
        registry.register(
            "ingest_in_flight_requests",
            "Requests being handled",
            m.in_flight.clone(),
        );
        m
    }

    fn label(k: &str, v: &str) -> Vec<(String, String)> {
        vec![(k.to_owned(), v.to_owned())]
    }

    /// Counts accepted events from `source`.
    pub fn accepted(&self, source: &str, n: u64) {
        if n > 0 {
            self.accepted
                .get_or_create(&Self::label("source", source))
                .inc_by(n);
        }
    }

    /// Counts one delivery ignored as not engagement.
    pub fn ignored(&self, reason: &str) {
        self.ignored
            .get_or_create(&Self::label("reason", reason))
            .inc();
    }

    /// Counts one rejection.
    pub fn rejected(&self, reason: &str) {
        self.rejected
            .get_or_create(&Self::label("reason", reason))
            .inc();
    }

    /// Observes a publish.
    pub fn published(&self, started: Instant) {
        self.publish_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    fn request(&self, route: &str, status: StatusCode) {
        self.requests
            .get_or_create(&vec![
                ("route".to_owned(), route.to_owned()),
                ("status".to_owned(), status.as_u16().to_string()),
            ])
            .inc();
    }
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct IngestState {
    /// Normalization settings.
    pub normalizer: Arc<Normalizer>,
    /// The publisher.
    pub publisher: Publisher,
    /// Metrics.
    pub metrics: IngestMetrics,
    /// Limits and secrets.
    pub config: Arc<IngestConfig>,
    /// Permits of the requests handled at once (`ingest.max_concurrent_requests`).
    pub requests: Arc<tokio::sync::Semaphore>,
    /// `banter.events.v1`.
    pub events_topic: Arc<str>,
    /// `banter.dlq.v1`.
    pub dlq_topic: Arc<str>,
}

/// Milliseconds since the epoch, now.
pub use banter_runtime::now_ms;

/// What one request's (or replay batch's) items became.
#[derive(Debug, Default)]
pub struct Records {
    /// Events to the events topic, dead letters to the dead-letter topic.
    pub records: Vec<Record>,
    /// Events accepted.
    pub accepted: usize,
    /// The reason of each dead letter.
    pub rejected: Vec<&'static str>,
    /// The reason of each delivery ignored as not engagement.
    pub ignored: Vec<&'static str>,
}

impl Records {
    /// Counts the items in `metrics` once they are published.
    pub fn count(&self, metrics: &IngestMetrics, source: &str) {
        metrics.accepted(source, self.accepted as u64);
        for r in &self.rejected {
            metrics.rejected(r);
        }
        for r in &self.ignored {
            metrics.ignored(r);
        }
    }
}

/// The most of a rejected item's bytes a dead letter keeps ([`DeadLetter::MAX_PAYLOAD`]).
pub const MAX_DEAD_LETTER_PAYLOAD: usize = DeadLetter::MAX_PAYLOAD;

/// A record that could not be encoded: a bug, reported rather than published without it.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode a {what}: {message}")]
pub struct EncodeError {
    what: &'static str,
    message: String,
}

/// Turns normalized items into Kafka records: events keyed by account to the events topic,
/// rejections as [`DeadLetter`]s to the dead-letter topic; ignored deliveries are only counted.
///
/// # Errors
/// An event or dead letter that cannot be encoded: nothing of the request is published.
pub fn to_records(
    state: &IngestState,
    items: &[Item],
    source: &str,
    now: i64,
) -> Result<Records, EncodeError> {
    let mut out = Records {
        records: Vec::with_capacity(items.len()),
        ..Records::default()
    };
    let mut enc = banter_model::EngagementEvent::codec().encoder();
    for item in items {
        match item {
            Item::Event(e) => {
                let mut payload = Vec::with_capacity(160);
                enc.encode_into(e, &mut payload)
                    .map_err(|err| EncodeError {
                        what: "event",
                        message: err.to_string(),
                    })?;
                out.records.push(Record {
                    topic: state.events_topic.clone(),
                    key: Some(e.account_id.as_bytes().to_vec()),
                    payload,
                });
                out.accepted += 1;
            }
            Item::Rejected(r) => {
                let (payload, detail) = DeadLetter::bounded_payload(&r.payload, &r.detail);
                let dl = DeadLetter {
                    stage: Stage::Ingest,
                    reason: r.reason.to_owned(),
                    detail,
                    source: Some(source.to_owned()),
                    source_partition: None,
                    source_offset: None,
                    account_id: r.account_id.clone(),
                    payload,
                    failed_at: now,
                };
                let payload = DeadLetter::codec().encode(&dl).map_err(|err| EncodeError {
                    what: "dead letter",
                    message: err.to_string(),
                })?;
                out.records.push(Record {
                    topic: state.dlq_topic.clone(),
                    key: r.account_id.as_ref().map(|a| a.as_bytes().to_vec()),
                    payload,
                });
                out.rejected.push(r.reason);
            }
            Item::Ignored(reason) => out.ignored.push(reason),
        }
    }
    Ok(out)
}

/// Limits of the ingest server's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// How long a connection may take to send a request's headers (then it is closed).
    pub header_timeout: Duration,
    /// Most connections open at once (more wait in the listen backlog).
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown`: HTTP/1.1 with a header-read timeout (a client
/// that sends its headers a byte at a time is cut off) and at most `max_connections` open at
/// once; on shutdown, idle connections close at once and busy ones after their request, so open
/// connections cannot hold the process up past the header timeout.
///
/// # Errors
/// Never for a single connection (logged); the listener's own failure.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        conns.spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
        while conns.try_join_next().is_some() {}
    }
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// The router of the ingest API.
pub fn router(state: IngestState) -> Router {
    Router::new()
        .route("/webhooks/meta", get(handshake).post(meta_webhook))
        .route("/v1/events", post(events))
        .with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn unavailable(e: &PublishError) -> Response {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{e}; nothing was published, retry later"),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize)]
struct HandshakeQuery {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    verify_token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

async fn handshake(State(s): State<IngestState>, q: Query<HandshakeQuery>) -> Response {
    let r = handshake_inner(&s.config.meta_verify_token, &q);
    s.metrics.request("webhooks_meta_handshake", r.status());
    r
}

fn handshake_inner(token: &Secret, q: &HandshakeQuery) -> Response {
    let (Some(mode), Some(given), Some(challenge)) = (&q.mode, &q.verify_token, &q.challenge)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected hub.mode, hub.verify_token and hub.challenge",
        );
    };
    if mode != "subscribe" {
        return error(
            StatusCode::BAD_REQUEST,
            format!("unsupported hub.mode `{mode}`"),
        );
    }
    if token.is_empty() || !constant_time_eq(token.expose().as_bytes(), given.as_bytes()) {
        return error(StatusCode::FORBIDDEN, "hub.verify_token does not match");
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain")],
        challenge.clone(),
    )
        .into_response()
}

/// Reads the body within the size limit; 413 otherwise.
/// Reads a body of at most `limit` bytes within `timeout`: 413 over the limit (at once when
/// `Content-Length` says so), 408 when it does not arrive in time, 400 when its framing is
/// broken (a truncated chunk, a connection reset).
#[allow(clippy::result_large_err)]
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, Response> {
    read_body_within(headers, body, limit, timeout)
        .await
        .map_err(|mut r| {
            // The rest of the body is not read: the connection cannot carry another request.
            // Saying so keeps a client from sending its next request on a connection the
            // server is closing (hyper's IncompleteMessage in a client's pool).
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        })
}

#[allow(clippy::result_large_err)]
async fn read_body_within(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, Response> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            // The limit's error is http-body-util's LengthLimitError, somewhere in the chain.
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(c) = cause {
                if c.to_string().contains("length limit exceeded") {
                    return Err(too_large());
                }
                cause = c.source();
            }
            Err(error(
                StatusCode::BAD_REQUEST,
                format!("the request body could not be read: {e}"),
            ))
        }
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} ms",
                timeout.as_millis()
            ),
        )),
    }
}

/// A request being handled: counted in the in-flight gauge until dropped (also when the client
/// goes away and the handler is cancelled), holding one of `ingest.max_concurrent_requests`.
struct InFlight {
    gauge: Gauge,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl InFlight {
    /// A permit, or the 503 answer when every one is taken.
    #[allow(clippy::result_large_err)]
    fn enter(s: &IngestState) -> Result<InFlight, Response> {
        let permit = Arc::clone(&s.requests).try_acquire_owned().map_err(|_| {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "more than {} requests at once (ingest.max_concurrent_requests); retry",
                    s.config.max_concurrent_requests
                ),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        })?;
        s.metrics.in_flight.inc();
        Ok(InFlight {
            gauge: s.metrics.in_flight.clone(),
            _permit: permit,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

fn media_type(headers: &HeaderMap) -> Option<String> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

fn malformed(e: &serde_json::Error, line_offset: usize) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!(
            "malformed JSON at line {} column {}: {}",
            e.line() + line_offset,
            e.column(),
            e.to_string().split(" at line ").next().unwrap_or_default()
        ),
    )
}

async fn meta_webhook(State(s): State<IngestState>, headers: HeaderMap, body: Body) -> Response {
    let r = match InFlight::enter(&s) {
        Ok(_in_flight) => meta_webhook_inner(&s, &headers, body).await,
        Err(r) => r,
    };
    s.metrics.request("webhooks_meta", r.status());
    r
}

async fn meta_webhook_inner(s: &IngestState, headers: &HeaderMap, body: Body) -> Response {
    if s.config.meta_app_secret.is_empty() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhook app secret is not configured (ingest.meta_app_secret)",
        );
    }
    if media_type(headers).as_deref() != Some("application/json") {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "webhooks must be application/json",
        );
    }
    let bytes = match read_body(
        headers,
        body,
        s.config.max_body_bytes,
        Duration::from_millis(s.config.body_timeout_ms),
    )
    .await
    {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(sig) = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
    else {
        return error(StatusCode::UNAUTHORIZED, "missing X-Hub-Signature-256");
    };
    if !signature_ok(s.config.meta_app_secret.expose().as_bytes(), &bytes, sig) {
        return error(
            StatusCode::UNAUTHORIZED,
            "X-Hub-Signature-256 does not match the body",
        );
    }
    // Counted before anything is built: a body of a million tiny items is refused without
    // holding them.
    match webhook::updates_within(&bytes, s.config.max_events_per_request) {
        Ok(()) => {}
        Err(e) if e.to_string().starts_with(webhook::TOO_MANY) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "more than {} updates in one request, the limit",
                    s.config.max_events_per_request
                ),
            )
        }
        Err(e) => return malformed(&e, 0),
    }
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return malformed(&e, 0),
    };
    let now = now_ms();
    let items = match meta::normalize(&s.normalizer, &value, now) {
        Ok(items) => items,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let mut out = match to_records(s, &items, "/webhooks/meta", now) {
        Ok(out) => out,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let started = Instant::now();
    if let Err(e) = s.publisher.publish(std::mem::take(&mut out.records)).await {
        return unavailable(&e);
    }
    s.metrics.published(started);
    out.count(&s.metrics, "webhook");
    // Meta retries anything but 200: dead-lettered updates are kept, not retried.
    (
        StatusCode::OK,
        axum::Json(json!({
            "accepted": out.accepted,
            "dead_lettered": out.rejected.len(),
            "ignored": out.ignored.len(),
        })),
    )
        .into_response()
}

/// Checks `sha256=<hex>` against HMAC-SHA256(secret, body), in constant time.
pub fn signature_ok(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    if hex.len() != 64 {
        return false;
    }
    let mut expected = [0u8; 32];
    for (i, b) in expected.iter_mut().enumerate() {
        match u8::from_str_radix(&hex[2 * i..2 * i + 2], 16) {
            Ok(v) => *b = v,
            Err(_) => return false,
        }
    }
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// `sha256=<hex>` of `body`, as Meta signs it (for tests, the generator and replays).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    #[allow(clippy::expect_used)]
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("hmac takes any key length");
    mac.update(body);
    let d = mac.finalize().into_bytes();
    let mut out = String::from("sha256=");
    for b in d {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Splits a first-party body into raw events: a JSON array, one JSON object, or NDJSON, at most
/// `max` of them: the count is checked while parsing, so a body of a million tiny elements is
/// refused before it is held as a million values.
///
/// # Errors
/// A 400 response naming the line and column of the first syntax error; 413 over `max`.
#[allow(clippy::result_large_err)]
pub fn split_events(
    bytes: &[u8],
    ndjson: bool,
    max: usize,
) -> Result<Vec<Box<RawValue>>, Response> {
    let too_many = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("more than {max} events in one request, the limit"),
        )
    };
    if ndjson {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("body is not UTF-8: {e}")))?;
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            if out.len() == max {
                return Err(too_many());
            }
            out.push(serde_json::from_str::<Box<RawValue>>(line).map_err(|e| malformed(&e, i))?);
        }
        return Ok(out);
    }
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        return serde_json::from_slice::<Box<RawValue>>(bytes)
            .map(|v| vec![v])
            .map_err(|e| malformed(&e, 0));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde::de::DeserializeSeed::deserialize(AtMost(max), &mut de).and_then(|v| {
        de.end()?;
        Ok(v)
    });
    match parsed {
        Ok(v) => Ok(v),
        Err(e) if e.to_string().starts_with(TOO_MANY) => Err(too_many()),
        Err(e) => Err(malformed(&e, 0)),
    }
}

const TOO_MANY: &str = "too many events";

/// A JSON array of at most `.0` raw values.
struct AtMost(usize);

impl<'de> serde::de::DeserializeSeed<'de> for AtMost {
    type Value = Vec<Box<RawValue>>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for AtMost {
    type Value = Vec<Box<RawValue>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON array of events, or one event object")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element::<Box<RawValue>>()? {
            if out.len() == self.0 {
                return Err(serde::de::Error::custom(TOO_MANY));
            }
            out.push(v);
        }
        Ok(out)
    }
}

async fn events(State(s): State<IngestState>, headers: HeaderMap, body: Body) -> Response {
    let r = match InFlight::enter(&s) {
        Ok(_in_flight) => events_inner(&s, &headers, body).await,
        Err(r) => r,
    };
    s.metrics.request("v1_events", r.status());
    r
}

/// Who posts to `/v1/events`: the source of the API key in `Authorization: Bearer <key>` or
/// `X-Api-Key: <key>`, compared by SHA-256 in constant time; `first_party` when the endpoint
/// is open without keys.
#[allow(clippy::result_large_err)]
fn authenticate(
    config: &crate::config::IngestConfig,
    headers: &HeaderMap,
) -> Result<String, Response> {
    use sha2::{Digest, Sha256};
    if config.open_without_keys() {
        return Ok("first_party".to_owned());
    }
    let unauthorized = |why: &str| {
        let mut r = error(StatusCode::UNAUTHORIZED, why.to_owned());
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"banter\""),
        );
        r
    };
    if config.api_keys.is_empty() {
        return Err(unauthorized(
            "first-party events need an API key, and none is configured (ingest.api_keys); \
             a non-loopback listener is not open without one",
        ));
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            unauthorized("missing API key (Authorization: Bearer <key>, or X-Api-Key)")
        })?;
    let digest = Sha256::digest(presented.as_bytes());
    // Every configured key is compared, each in constant time.
    let mut found: Option<&str> = None;
    for k in &config.api_keys {
        let mut diff = 0u8;
        for (i, d) in digest.iter().enumerate() {
            let want = u8::from_str_radix(k.sha256.get(2 * i..2 * i + 2).unwrap_or("zz"), 16);
            diff |= d ^ want.unwrap_or(!d);
        }
        if diff == 0 && found.is_none() {
            found = Some(&k.source);
        }
    }
    found
        .map(str::to_owned)
        .ok_or_else(|| unauthorized("unknown API key"))
}

async fn events_inner(s: &IngestState, headers: &HeaderMap, body: Body) -> Response {
    let source = match authenticate(&s.config, headers) {
        Ok(source) => source,
        Err(r) => return r,
    };
    let ndjson = match media_type(headers).as_deref() {
        Some("application/json") => false,
        Some("application/x-ndjson") | Some("application/jsonl") => true,
        other => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "content type {} is not application/json or application/x-ndjson",
                    other.map_or("(none)".to_owned(), |o| format!("`{o}`"))
                ),
            )
        }
    };
    let bytes = match read_body(
        headers,
        body,
        s.config.max_body_bytes,
        Duration::from_millis(s.config.body_timeout_ms),
    )
    .await
    {
        Ok(b) => b,
        Err(r) => return r,
    };
    let raws = match split_events(&bytes, ndjson, s.config.max_events_per_request) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if raws.len() > s.config.max_events_per_request {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} events in one request, more than the limit of {}",
                raws.len(),
                s.config.max_events_per_request
            ),
        );
    }
    if raws.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no events in the body");
    }
    let now = now_ms();
    let items: Vec<Item> = raws
        .iter()
        .map(|r| first_party::normalize(&s.normalizer, r, now))
        .collect();
    let mut out = match to_records(s, &items, "/v1/events", now) {
        Ok(out) => out,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let started = Instant::now();
    if let Err(e) = s.publisher.publish(std::mem::take(&mut out.records)).await {
        return unavailable(&e);
    }
    s.metrics.published(started);
    out.count(&s.metrics, &source);
    let (accepted, reasons) = (out.accepted, &out.rejected);
    let results: Vec<Value> = items
        .iter()
        .map(|i| match i {
            Item::Event(e) => json!({ "status": "accepted", "event_id": e.event_id }),
            Item::Rejected(r) => {
                json!({ "status": "rejected", "reason": r.reason, "error": r.detail })
            }
            Item::Ignored(reason) => json!({ "status": "ignored", "reason": reason }),
        })
        .collect();
    let status = match (accepted, reasons.len()) {
        (_, 0) => StatusCode::OK,
        (0, _) => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::MULTI_STATUS,
    };
    (
        status,
        axum::Json(json!({ "accepted": accepted, "rejected": reasons.len(), "results": results })),
    )
        .into_response()
}

/// Counting a webhook body's updates without building it.
pub mod webhook {
    use std::cell::Cell;
    use std::fmt;

    use serde::de::{
        DeserializeSeed, Deserializer, Error, IgnoredAny, MapAccess, SeqAccess, Visitor,
    };

    /// The start of the error past the limit.
    pub const TOO_MANY: &str = "too many updates";

    /// Ok when `bytes` is JSON with at most `max` updates: the items of every entry's `changes`,
    /// `messaging` and `standby` (an entry with none counts one, as it becomes a dead letter).
    pub fn updates_within(bytes: &[u8], max: usize) -> Result<(), serde_json::Error> {
        let count = Cell::new(0usize);
        let mut de = serde_json::Deserializer::from_slice(bytes);
        Any {
            count: &count,
            max,
            depth: Depth::Body,
        }
        .deserialize(&mut de)?;
        de.end()
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Depth {
        /// The envelope: its `entry` holds the entries.
        Body,
        /// The `entry` array.
        Entries,
        /// One entry: its update arrays.
        Entry,
        /// An update array.
        Updates,
        /// Anything else: skipped.
        Skip,
    }

    struct Any<'a> {
        count: &'a Cell<usize>,
        max: usize,
        depth: Depth,
    }

    impl Any<'_> {
        fn add<E: Error>(&self, n: usize) -> Result<(), E> {
            self.count.set(self.count.get() + n);
            if self.count.get() > self.max {
                return Err(E::custom(TOO_MANY));
            }
            Ok(())
        }

        fn at(&self, depth: Depth) -> Self {
            Any {
                count: self.count,
                max: self.max,
                depth,
            }
        }

        /// A scalar where an entry was expected still counts (it becomes a dead letter).
        fn scalar<E: Error>(&self) -> Result<(), E> {
            if self.depth == Depth::Entry {
                self.add(1)?;
            }
            Ok(())
        }
    }

    impl<'de> DeserializeSeed<'de> for Any<'_> {
        type Value = ();

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            if self.depth == Depth::Skip {
                d.deserialize_ignored_any(IgnoredAny)?;
                return Ok(());
            }
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Any<'_> {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a Meta webhook body")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut updates = 0usize;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                let next = match (self.depth, key.as_ref()) {
                    (Depth::Body, "entry") => Depth::Entries,
                    (Depth::Entry, "changes" | "messaging" | "standby") => Depth::Updates,
                    _ => Depth::Skip,
                };
                let before = self.count.get();
                map.next_value_seed(self.at(next))?;
                updates += self.count.get() - before;
            }
            // An entry without updates becomes one dead letter.
            if self.depth == Depth::Entry && updates == 0 {
                self.add(1)?;
            }
            Ok(())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            match self.depth {
                Depth::Entries => while seq.next_element_seed(self.at(Depth::Entry))?.is_some() {},
                Depth::Updates => {
                    while seq.next_element::<IgnoredAny>()?.is_some() {
                        self.add(1)?;
                    }
                }
                Depth::Entry => {
                    self.add(1)?;
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                }
                _ => while seq.next_element::<IgnoredAny>()?.is_some() {},
            }
            Ok(())
        }

        fn visit_bool<E: Error>(self, _: bool) -> Result<(), E> {
            self.scalar()
        }
        fn visit_i64<E: Error>(self, _: i64) -> Result<(), E> {
            self.scalar()
        }
        fn visit_u64<E: Error>(self, _: u64) -> Result<(), E> {
            self.scalar()
        }
        fn visit_f64<E: Error>(self, _: f64) -> Result<(), E> {
            self.scalar()
        }
        fn visit_str<E: Error>(self, _: &str) -> Result<(), E> {
            self.scalar()
        }
        fn visit_unit<E: Error>(self) -> Result<(), E> {
            self.scalar()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn counts_updates_without_building_the_body() {
            let ok = br#"{"object":"page","entry":[{"id":"1","changes":[{"a":1},{"b":2}]},{"id":"2","messaging":[{}],"standby":[{}]},{"id":"3"}]}"#;
            assert!(updates_within(ok, 5).is_ok());
            let err = updates_within(ok, 4).unwrap_err().to_string();
            assert!(err.starts_with(TOO_MANY), "{err}");
            // A million items in one array stop at the limit.
            let flood = format!(
                r#"{{"object":"page","entry":[{{"changes":[{}1]}}]}}"#,
                "1,".repeat(1_000_000)
            );
            assert!(updates_within(flood.as_bytes(), 1000)
                .unwrap_err()
                .to_string()
                .starts_with(TOO_MANY));
            let entries = format!(r#"{{"object":"page","entry":[{}1]}}"#, "1,".repeat(5000));
            assert!(updates_within(entries.as_bytes(), 1000)
                .unwrap_err()
                .to_string()
                .starts_with(TOO_MANY));
            // Nested arrays elsewhere are not updates.
            let nested =
                br#"{"object":"page","entry":[{"changes":[{"value":{"x":[1,2,3,4,5,6]}}]}]}"#;
            assert!(updates_within(nested, 1).is_ok());
            // Syntax errors are syntax errors.
            assert!(!updates_within(b"{\"entry\": [", 10)
                .unwrap_err()
                .to_string()
                .starts_with(TOO_MANY));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let body = br#"{"object":"page","entry":[]}"#;
        let sig = sign(b"app-secret", body);
        assert!(signature_ok(b"app-secret", body, &sig));
        assert!(!signature_ok(b"other-secret", body, &sig));
        assert!(!signature_ok(b"app-secret", b"{}", &sig));
        assert!(!signature_ok(b"app-secret", body, "sha1=abc"));
        assert!(!signature_ok(b"app-secret", body, "sha256=zz"));
        assert!(!signature_ok(
            b"app-secret",
            body,
            &sig.replace("sha256=", "sha256=0")
        ));
    }

    #[test]
    fn split_reports_positions() {
        assert_eq!(
            split_events(b"[{\"a\":1},{\"b\":2}]", false, 10)
                .map(|v| v.len())
                .ok(),
            Some(2)
        );
        assert_eq!(
            split_events(b" {\"a\":1}", false, 10).map(|v| v.len()).ok(),
            Some(1)
        );
        assert_eq!(
            split_events(b"{\"a\":1}\n\n{\"b\":2}\n", true, 10)
                .map(|v| v.len())
                .ok(),
            Some(2)
        );
        assert!(split_events(b"[{\"a\":1},]", false, 10).is_err());
        assert!(split_events(b"{\"a\":1}\n{\"b\":", true, 10).is_err());
        // At most `max`, counted while parsing.
        assert_eq!(
            split_events(b"[1,1,1]", false, 2).unwrap_err().status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            split_events(b"{}\n{}\n{}\n", true, 2).unwrap_err().status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            split_events(b"[1,1]", false, 2).map(|v| v.len()).ok(),
            Some(2)
        );
    }

    #[test]
    fn first_party_events_need_a_known_key_unless_local() {
        use crate::config::{ApiKey, IngestConfig};
        use banter_runtime::config::Validate;
        use sha2::{Digest, Sha256};
        let hex = |k: &str| {
            Sha256::digest(k.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let with = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(
                    header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            h
        };
        let status = |r: Result<String, Response>| r.map_err(|r| r.status().as_u16());
        // Local and keyless: open.
        let local = IngestConfig::default();
        assert_eq!(
            status(authenticate(&local, &with(&[]))),
            Ok("first_party".into())
        );
        // Reachable from outside and keyless: closed, saying why.
        let public = IngestConfig {
            listen: "0.0.0.0:8080".into(),
            ..IngestConfig::default()
        };
        assert_eq!(status(authenticate(&public, &with(&[]))), Err(401));
        // Keys: the old and the new one of a rotation both work, anything else is refused.
        let keyed = IngestConfig {
            listen: "0.0.0.0:8080".into(),
            api_keys: vec![
                ApiKey {
                    source: "shop".into(),
                    sha256: hex("old-key-0123456789"),
                },
                ApiKey {
                    source: "shop".into(),
                    sha256: hex("new-key-0123456789"),
                },
                ApiKey {
                    source: "crm".into(),
                    sha256: hex("crm-key-0123456789"),
                },
            ],
            ..IngestConfig::default()
        };
        for (h, want) in [
            (
                with(&[("authorization", "Bearer old-key-0123456789")]),
                Ok("shop".to_owned()),
            ),
            (
                with(&[("authorization", "Bearer new-key-0123456789")]),
                Ok("shop".to_owned()),
            ),
            (
                with(&[("x-api-key", "crm-key-0123456789")]),
                Ok("crm".to_owned()),
            ),
            (with(&[("authorization", "Bearer wrong-key")]), Err(401)),
            (with(&[("authorization", "Basic b2xkLWtleQ==")]), Err(401)),
            (with(&[]), Err(401)),
        ] {
            assert_eq!(status(authenticate(&keyed, &h)), want);
        }
        // The configuration holds hashes, never keys.
        let mut bad = keyed.clone();
        bad.api_keys[0].sha256 = "old-key-0123456789".into();
        let err = bad.validate().unwrap_err().to_string();
        assert!(
            err.contains("ingest.api_keys") && err.contains("not the key"),
            "{err}"
        );
    }
}
