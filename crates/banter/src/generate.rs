//! `banter generate`: publishes the seeded workload of [`banter_workload`] and writes the exact
//! aggregates of what it generated.
//!
//! Outputs: straight to Kafka (`--to kafka`), to the ingest API as first-party events
//! (`--to http`), as signed Meta webhooks where Meta would deliver the kind (comments, DMs,
//! reactions, shares) and first-party events for the rest (`--to webhook`), or to an NDJSON
//! file for `banter replay` (`--to file`). Event time is compressed history ending now (the
//! default) or live (`--live`: each event is sent when its time comes). `--rate` caps events
//! per second; 0 sends as fast as the output takes them.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use banter::Config;
use banter_model::{AvroRecord, EngagementEvent, Kind};
use banter_workload::{Workload, WorkloadConfig, MINUTE};
use clap::{Args, ValueEnum};
use rdkafka::producer::FutureRecord;
use serde_json::{json, Value};

/// Where generated events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Straight to the events topic (Avro, keyed by account).
    Kafka,
    /// POST /v1/events in batches.
    Http,
    /// Signed Meta webhooks (and /v1/events for first-party kinds).
    Webhook,
    /// An NDJSON file for `banter replay`.
    File,
}

/// `banter generate` options.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Seed: the same seed and options give the same events.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Number of accounts.
    #[arg(long, default_value_t = 50)]
    accounts: u32,
    /// Event-time span, in minutes.
    #[arg(long, default_value_t = 360)]
    minutes: i64,
    /// Posts per account per day.
    #[arg(long, default_value_t = 4.0)]
    posts_per_day: f64,
    /// Event time of the first event, ms (default: the span ends now, or starts now with --live).
    #[arg(long)]
    start_ms: Option<i64>,
    /// Live event time: send each event when its time comes (the span starts now).
    #[arg(long)]
    live: bool,
    /// Most events per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Where to send events.
    #[arg(long, value_enum, default_value_t = Output::Kafka)]
    to: Output,
    /// Ingest base URL for --to http and --to webhook.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Meta app secret to sign webhooks with (default: ingest.meta_app_secret).
    #[arg(long)]
    app_secret: Option<String>,
    /// Output file for --to file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the expected aggregates (JSON) here.
    #[arg(long)]
    expected: Option<PathBuf>,
    /// Write the CTA campaigns of the generated CTA posts here (TOML for
    /// `cta.campaigns_file`).
    #[arg(long)]
    campaigns: Option<PathBuf>,
    /// Only write --campaigns (and --expected), send nothing.
    #[arg(long)]
    only_campaigns: bool,
    /// Events per HTTP request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// HTTP outputs: most delivery time (ms) between the oldest and newest event in flight.
    /// Concurrent requests commit in any order; compressed history sent faster than real time
    /// would otherwise arrive hours out of order. Keep it under the stream's out-of-orderness.
    #[arg(long, default_value_t = 20_000)]
    max_disorder_ms: i64,
    /// HTTP outputs: append `<wall clock ms> <delivery time ms>` here as each request is
    /// accepted (2xx): how far the accepted input had got, and when (for event-to-visible
    /// measurements of paced runs, whose event times are not the wall clock).
    #[arg(long)]
    progress: Option<PathBuf>,
    /// HTTP outputs: how long a request is retried while ingest is unreachable or answers
    /// 503, in seconds, before the generator gives up (webhook senders retry for hours).
    #[arg(long, default_value_t = 30)]
    retry_secs: u64,
}

/// The first-party JSON form of an event (what /v1/events and `banter replay` take).
pub fn first_party_json(e: &EngagementEvent) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.remove("received_at");
        m.retain(|_, v| !v.is_null());
    }
    v
}

/// A Meta webhook body delivering `e`, or None when Meta does not deliver its kind.
pub fn webhook_json(e: &EngagementEvent) -> Option<Value> {
    let actor = e.actor_id.clone().unwrap_or_default();
    let time = e.event_time;
    match e.kind {
        Kind::Comment | Kind::BrandReply if e.action == banter_model::Action::Add => {
            let from = if e.is_brand_actor {
                e.account_id.clone()
            } else {
                actor
            };
            let mut value = json!({
                "from": {"id": from, "username": "generated"},
                "media": {"id": e.content_id, "media_product_type": e.content_type.map(|c| c.as_str())},
                "id": e.object_id,
                "text": e.text,
            });
            if let Some(p) = &e.parent_id {
                value["parent_id"] = json!(p);
            }
            Some(
                json!({"object": "instagram", "entry": [{"id": e.account_id, "time": time, "changes": [{"field": "comments", "value": value}]}]}),
            )
        }
        Kind::PostReaction | Kind::Share => {
            let verb = match e.action {
                banter_model::Action::Remove => "remove",
                _ => "add",
            };
            let item = if e.kind == Kind::Share {
                "share"
            } else {
                "reaction"
            };
            Some(
                json!({"object": "page", "entry": [{"id": e.account_id, "time": time, "changes": [{"field": "feed", "value": {
                    "item": item, "verb": verb, "post_id": e.content_id, "from": {"id": actor},
                    "reaction_type": e.reaction.as_deref().map(str::to_lowercase), "created_time": time / 1000,
                }}]}]}),
            )
        }
        Kind::DmIn | Kind::DmOut | Kind::StoryReply => {
            let (sender, recipient) = if e.kind == Kind::DmOut {
                (e.account_id.clone(), actor)
            } else {
                (actor, e.account_id.clone())
            };
            let mut message = json!({"mid": e.object_id, "text": e.text});
            if e.kind == Kind::DmOut {
                message["is_echo"] = json!(true);
            }
            if e.kind == Kind::StoryReply {
                message["reply_to"] =
                    json!({"story": {"id": e.content_id, "url": "https://example.invalid/story"}});
            }
            Some(
                json!({"object": "instagram", "entry": [{"id": e.account_id, "time": time, "messaging": [{
                    "sender": {"id": sender}, "recipient": {"id": recipient}, "timestamp": time, "message": message,
                }]}]}),
            )
        }
        _ => None,
    }
}

/// The instant at which the wall clock reads `epoch_ms` (now, for a time too far past).
fn instant_at(epoch_ms: i64) -> Instant {
    let (now, wall) = (Instant::now(), banter_runtime::now_ms());
    let ahead = Duration::from_millis(epoch_ms.abs_diff(wall));
    if epoch_ms >= wall {
        now + ahead
    } else {
        now.checked_sub(ahead).unwrap_or(now)
    }
}

/// Paces sending: `--rate` events per second, or live event time.
struct Pacer {
    started: Instant,
    sent: u64,
    rate: u64,
    live_origin: Option<(i64, Instant)>,
}

impl Pacer {
    async fn before(&mut self, w: &Workload, i: usize) {
        if let Some((t0, wall0)) = self.live_origin {
            let due = wall0 + Duration::from_millis((w.deliver_at(i) - t0).max(0) as u64);
            tokio::time::sleep_until(due.into()).await;
        }
        if self.rate > 0 {
            let due = self.started + Duration::from_secs_f64(self.sent as f64 / self.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        self.sent += 1;
    }
}

/// The generated CTA posts as campaigns (one post each), written atomically.
fn write_campaigns(w: &Workload, path: &std::path::Path) -> anyhow::Result<()> {
    use banter_stream::cta::{campaigns_toml, Campaign};
    let campaigns: Vec<Campaign> = w
        .posts
        .iter()
        .filter_map(|p| {
            p.cta
                .as_ref()
                .map(|(id, kw)| Campaign::on_post(id, &p.account_id, &p.content_id, kw))
        })
        .collect();
    let text = format!(
        "# CTA campaigns of the generated workload (banter generate --seed {} --accounts {})\n{}",
        w.config.seed,
        w.config.accounts,
        campaigns_toml(&campaigns).context("campaigns as TOML")?
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Runs `banter generate`.
pub async fn run(config: &Config, args: GenerateArgs) -> anyhow::Result<()> {
    if args.minutes <= 0 {
        bail!("--minutes must be positive");
    }
    let duration_ms = args.minutes * MINUTE;
    let now = banter_runtime::now_ms();
    // The workload starts on a minute boundary (the generator aligns it): live, on the next
    // one, so that event time is the wall clock (aligned down, every delivery went out up to
    // a minute after its time, which added that much to every latency measured live).
    let start_ms = args.start_ms.unwrap_or(if args.live {
        now - now.rem_euclid(MINUTE) + MINUTE
    } else {
        now - duration_ms - MINUTE
    });
    let wc = WorkloadConfig {
        seed: args.seed,
        accounts: args.accounts,
        posts_per_account_per_day: args.posts_per_day,
        start_ms,
        duration_ms,
        ..Default::default()
    };
    let generated = Instant::now();
    let w = Workload::generate(wc);
    eprintln!(
        "generate: {} posts, {} deliveries ({} duplicates, {} too late), {} spikes, {} campaigns in {:.1} s",
        w.posts.len(),
        w.len(),
        w.expected.duplicates,
        w.expected.too_late.len(),
        w.expected.spikes.len(),
        w.expected.funnels.len(),
        generated.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.expected {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        serde_json::to_writer(
            std::io::BufWriter::new(file),
            &banter_workload::Generated::of(&w),
        )?;
    }
    if let Some(path) = &args.campaigns {
        write_campaigns(&w, path)?;
    }
    if args.only_campaigns {
        return Ok(());
    }
    let mut pacer = Pacer {
        started: Instant::now(),
        sent: 0,
        rate: args.rate,
        // Live: each delivery is sent when the wall clock reaches its time.
        live_origin: args
            .live
            .then(|| (w.config.start_ms, instant_at(w.config.start_ms))),
    };
    if args.live {
        eprintln!(
            "generate: live, the first deliveries are due in {:.1} s",
            (w.config.start_ms - banter_runtime::now_ms()).max(0) as f64 / 1000.0
        );
    }
    let began = Instant::now();
    match args.to {
        Output::Kafka => to_kafka(config, &w, &mut pacer).await?,
        Output::File => {
            let path = args.out.as_ref().context("--to file needs --out PATH")?;
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("cannot write {}", path.display()))?,
            );
            for i in 0..w.len() {
                pacer.before(&w, i).await;
                serde_json::to_writer(&mut f, &first_party_json(&w.event(i)))?;
                f.write_all(b"\n")?;
            }
            f.flush()?;
        }
        Output::Http | Output::Webhook => to_http(config, &args, &w, &mut pacer).await?,
    }
    let secs = began.elapsed().as_secs_f64();
    eprintln!(
        "generate: sent {} deliveries in {:.1} s ({:.0} events/s)",
        w.len(),
        secs,
        w.len() as f64 / secs.max(1e-9)
    );
    Ok(())
}

async fn to_kafka(config: &Config, w: &Workload, pacer: &mut Pacer) -> anyhow::Result<()> {
    banter_runtime::kafka::wait_for_broker(
        &config.kafka,
        Duration::from_secs(config.kafka.connect_timeout_secs),
    )
    .await?;
    let producer = banter_runtime::kafka::producer(&config.kafka, "generate")?;
    let topic = &config.kafka.topics.events;
    let codec = EngagementEvent::codec();
    // In the Confluent wire format when the topic is configured so (the schema registered
    // first, on a blocking thread).
    let registry = banter_runtime::registry::Registry::for_config(&config.kafka)
        .map_err(|e| anyhow::anyhow!("kafka.schema_registry: {e}"))?;
    if let Some(r) = registry.clone() {
        let topic = topic.clone();
        tokio::task::spawn_blocking(move || r.prepare(&topic, &[EngagementEvent::NAME]))
            .await?
            .map_err(|e| anyhow::anyhow!("kafka.schema_registry: {e}"))?;
    }
    let mut pending = Vec::with_capacity(10_000);
    for i in 0..w.len() {
        pacer.before(w, i).await;
        let e = w.event(i);
        let payload = codec.encode(&e)?;
        let payload = match &registry {
            Some(r) => r
                .frame(topic, &payload)
                .map_err(|e| anyhow::anyhow!("kafka.schema_registry: {e}"))?
                .into_owned(),
            None => payload,
        };
        let record = FutureRecord::to(topic)
            .key(e.account_id.as_bytes())
            .payload(&payload);
        pending.push(producer.send_result(record).map_err(|(err, _)| err)?);
        if pending.len() >= 10_000 {
            for d in pending.drain(..) {
                d.await
                    .context("producer dropped")?
                    .map_err(|(err, _)| err)?;
            }
        }
    }
    for d in pending {
        d.await
            .context("producer dropped")?
            .map_err(|(err, _)| err)?;
    }
    Ok(())
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    signature: Option<String>,
    retry_for: Duration,
) -> anyhow::Result<()> {
    let give_up = Instant::now() + retry_for;
    loop {
        let retry = Instant::now() < give_up;
        let mut req = http
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(s) = &signature {
            req = req.header("x-hub-signature-256", s);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() || r.status().as_u16() == 207 => return Ok(()),
            Ok(r) if r.status().as_u16() == 503 && retry => {
                tokio::time::sleep(Duration::from_secs(1)).await
            }
            Ok(r) => {
                let status = r.status();
                bail!(
                    "{url} answered {status}: {}",
                    r.text().await.unwrap_or_default()
                )
            }
            Err(e) if retry => {
                tracing::warn!(error = %e, "ingest not reachable, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => bail!("cannot reach {url}: {e}"),
        }
    }
}

async fn to_http(
    config: &Config,
    args: &GenerateArgs,
    w: &Workload,
    pacer: &mut Pacer,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let events_url = format!("{}/v1/events", args.url.trim_end_matches('/'));
    let hook_url = format!("{}/webhooks/meta", args.url.trim_end_matches('/'));
    let secret = args
        .app_secret
        .clone()
        .unwrap_or_else(|| config.ingest.meta_app_secret.expose().to_owned());
    if args.to == Output::Webhook && secret.is_empty() {
        bail!("--to webhook needs --app-secret or ingest.meta_app_secret");
    }
    // (first delivery time, body) buffers: first-party events, and entries per webhook object
    // (Meta batches updates too, up to 1000 per request).
    let mut batch: (i64, Vec<Value>) = (i64::MAX, Vec::with_capacity(args.batch));
    let mut hooks: std::collections::BTreeMap<String, (i64, Vec<Value>)> = Default::default();
    // In flight, oldest first: (first delivery time, request).
    let mut inflight: std::collections::VecDeque<(
        i64,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )> = Default::default();
    // A buffer is sent when full, or when it holds events older than half the disorder bound.
    let hold = (args.max_disorder_ms / 2).max(1);
    let progress = match &args.progress {
        Some(p) => Some(std::sync::Arc::new(std::sync::Mutex::new(
            std::fs::File::create(p).with_context(|| format!("--progress {}", p.display()))?,
        ))),
        None => None,
    };
    for i in 0..w.len() {
        pacer.before(w, i).await;
        let e = w.event(i);
        let t = w.deliver_at(i);
        let hook = if args.to == Output::Webhook {
            webhook_json(&e)
        } else {
            None
        };
        match hook {
            Some(mut body) => {
                let object = body["object"].as_str().unwrap_or("page").to_owned();
                let (first, entries) = hooks.entry(object).or_insert((i64::MAX, Vec::new()));
                *first = (*first).min(t);
                if let Some(Value::Array(es)) = body.get_mut("entry").map(Value::take) {
                    entries.extend(es);
                }
            }
            None => {
                batch.0 = batch.0.min(t);
                batch.1.push(first_party_json(&e));
            }
        }
        let last = i + 1 == w.len();
        let due =
            |first: i64, len: usize| len > 0 && (len >= args.batch || last || t - first >= hold);
        let mut requests: Vec<(i64, String, Vec<u8>, Option<String>)> = Vec::new();
        for (object, (first, entries)) in hooks.iter_mut() {
            if due(*first, entries.len()) {
                let body = serde_json::to_vec(
                    &json!({"object": object, "entry": std::mem::take(entries)}),
                )?;
                let sig = banter_ingest::webhook_signature(secret.as_bytes(), &body);
                requests.push((*first, hook_url.clone(), body, Some(sig)));
                *first = i64::MAX;
            }
        }
        if due(batch.0, batch.1.len()) {
            let body = serde_json::to_vec(&Value::Array(std::mem::take(&mut batch.1)))?;
            requests.push((batch.0, events_url.clone(), body, None));
            batch.0 = i64::MAX;
        }
        for (first, url, body, sig) in requests {
            // Bounded concurrency and bounded disorder: wait for the oldest requests first.
            while let Some((oldest, _)) = inflight.front() {
                if inflight.len() < 32 && first - oldest < args.max_disorder_ms {
                    break;
                }
                if let Some((_, h)) = inflight.pop_front() {
                    h.await??;
                }
            }
            let http = http.clone();
            let progress = progress.clone();
            let retry_for = Duration::from_secs(args.retry_secs);
            inflight.push_back((
                first,
                tokio::spawn(async move {
                    post(&http, &url, body, sig, retry_for).await?;
                    // The request holds events delivered up to `t` (the newest so far).
                    if let Some(f) = progress {
                        let mut f = f.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        writeln!(f, "{} {t}", banter_runtime::now_ms())?;
                    }
                    Ok(())
                }),
            ));
        }
    }
    for (_, h) in inflight {
        h.await??;
    }
    Ok(())
}
