//! `banter`: one binary, one subcommand per role of the pipeline.
//!
//! Roles: ingest (and replay), stream, sink, alert delivery, and `run` for all of them in one
//! process; tools: configuration checks, topic creation, migrations, the schema listing and
//! the workload generator.

mod generate;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use banter::Config;
use banter_runtime::http::{serve_ops, Readiness};
use banter_runtime::kafka::{ensure_topics, pipeline_topics, wait_for_broker, TopicOutcome};
use banter_runtime::telemetry::{init_logging, Metrics};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// The system allocator, with large blocks (the stream processor's state tables) on
/// transparent huge pages: fewer TLB misses on state read at random.
#[global_allocator]
static ALLOC: banter_alloc::HugePages = banter_alloc::HugePages;

/// banter: social-media micro-conversation analytics on Kafka and ClickHouse.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (default: $BANTER_CONFIG, else built-in defaults).
    /// `BANTER_<SECTION>__<KEY>` environment variables override it.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration, or print the effective one (secrets redacted).
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Create the pipeline's Kafka topics with the configured partitions (idempotent).
    Topics,
    /// Print the Avro schemas with their single-object fingerprints.
    Schemas,
    /// Run the ingest API: Meta webhooks and first-party events to Kafka.
    Ingest,
    /// Run the stream processor: events to rollups in event-time windows, exactly once.
    Stream,
    /// Create or upgrade banter's ClickHouse database and tables (re-runnable).
    Migrate {
        /// Print the statements a new database gets, for review, instead of running them.
        #[arg(long)]
        print_sql: bool,
        /// With --print-sql: the server version to render for (e.g. 18.16, 26.9); default: ask
        /// the configured ClickHouse.
        #[arg(long, value_name = "VERSION", requires = "print_sql")]
        server_version: Option<String>,
        /// Remove the migration lock left by a `banter migrate` that died holding it.
        #[arg(long, conflicts_with = "print_sql")]
        unlock: bool,
    },
    /// Run the ClickHouse sink: rollups, alerts and dead letters into ClickHouse.
    Sink,
    /// Run alert delivery: spike alerts to Alertmanager (`alerting.alertmanager_url`).
    Alert,
    /// Everything in one process: topics, migrations, ingest, stream, sink and, when
    /// `alerting.alertmanager_url` is set, alert delivery (the simplest way to try banter; in
    /// production run the roles separately and scale them).
    Run,
    /// Generate the seeded workload, publish it and write its expected aggregates.
    Generate(generate::GenerateArgs),
    /// Compare ClickHouse after a run of the generated workload with the generator's truth,
    /// every metric; exit 1 when any differs (the first differing rows are printed).
    Verify {
        /// The generator's `--expected` file.
        #[arg(long)]
        expected: PathBuf,
        /// Seconds to wait for the last corrections to reach ClickHouse.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Publish an NDJSON file of events or captured webhook bodies (resumable backfill).
    Replay {
        /// The file.
        file: PathBuf,
        /// Ignore the checkpoint and start from the first line.
        #[arg(long)]
        restart: bool,
        /// Attempts per batch while Kafka is unavailable.
        #[arg(long, default_value_t = 20)]
        retries: u32,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Exit 0 when the configuration is valid, else print every problem, naming its key.
    /// Nothing is contacted unless `--connect` is given.
    Check {
        /// Also what this role needs (e.g. `ingest` needs `ingest.actor_salt`).
        #[arg(long, value_enum)]
        role: Option<Role>,
        /// Also connect to every endpoint the configuration names (Kafka, ClickHouse,
        /// Alertmanager) with its credentials, and say which failed.
        #[arg(long)]
        connect: bool,
    },
    /// Print the effective configuration as TOML.
    Show,
}

/// A role `config check` checks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Role {
    Ingest,
    Stream,
    Sink,
    Alert,
    Run,
}

/// What a role needs beyond what every configuration must be.
fn role_check(config: &Config, role: Option<Role>) -> anyhow::Result<()> {
    let mut p = banter_runtime::config::Problems::default();
    if matches!(role, Some(Role::Ingest | Role::Run)) {
        p.take(config.ingest.validate_for_ingest());
    }
    if role == Some(Role::Alert) && config.alerting.urls().is_empty() {
        p.push(banter_runtime::config::invalid(
            "alerting.alertmanager_url",
            "must be set for `banter alert` (or alerting.alertmanager_urls)",
        ));
    }
    Ok(p.into_result()?)
}

/// `config check --connect`: every endpoint the role uses (all of them without a role),
/// contacted with the configured credentials; one line each; an error when any failed.
async fn connect_check(config: &Config, role: Option<Role>) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(config.kafka.connect_timeout_secs.min(15));
    let mut failed = Vec::new();
    let mut report = |what: String, r: Result<String, String>| match r {
        Ok(detail) => println!("ok      {what}: {detail}"),
        Err(e) => {
            println!("FAILED  {what}: {e}");
            failed.push(what);
        }
    };
    report(
        format!("kafka {}", config.kafka.brokers),
        wait_for_broker(&config.kafka, timeout)
            .await
            .map(|()| {
                format!(
                    "answers ({})",
                    config.kafka.security_protocol.as_librdkafka()
                )
            })
            .map_err(|e| e.to_string()),
    );
    if !config.kafka.schema_registry.url.is_empty() {
        report(
            format!("schema registry {}", config.kafka.schema_registry.url),
            banter_runtime::registry::probe(&config.kafka.schema_registry).await,
        );
    }
    if matches!(role, None | Some(Role::Sink | Role::Run)) {
        report(
            format!("clickhouse {}", config.clickhouse.url),
            banter_sink::clickhouse::connect(&config.clickhouse, timeout)
                .await
                .map(|ch| {
                    format!(
                        "answers (version {}.{})",
                        ch.version.major, ch.version.minor
                    )
                })
                .map_err(|e| e.to_string()),
        );
    }
    if matches!(role, None | Some(Role::Alert | Role::Run)) {
        let http = banter_alert::http_client(&config.alerting)?;
        for url in config.alerting.urls() {
            let r = banter_alert::probe(&http, &config.alerting, &url).await;
            report(format!("alertmanager {url}"), r);
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("cannot connect to: {}", failed.join(", "))
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    let config = Config::from_env(cli.config.as_deref())?;
    init_logging(&config.telemetry);
    match cli.command {
        Command::Config {
            action: ConfigAction::Check { role, connect },
        } => {
            role_check(&config, role)?;
            println!("configuration is valid");
            if connect {
                runtime()?.block_on(connect_check(&config, role))
            } else {
                Ok(())
            }
        }
        Command::Config {
            action: ConfigAction::Show,
        } => {
            print!("{}", config.to_redacted_toml());
            Ok(())
        }
        Command::Schemas => {
            schemas();
            Ok(())
        }
        Command::Topics => runtime()?.block_on(topics(&config)),
        Command::Ingest => runtime()?.block_on(ingest(&config)),
        Command::Stream => runtime()?.block_on(stream(&config)),
        Command::Migrate {
            print_sql,
            server_version,
            unlock,
        } => runtime()?.block_on(migrate(
            &config,
            print_sql,
            server_version.as_deref(),
            unlock,
        )),
        Command::Sink => runtime()?.block_on(sink(&config)),
        Command::Alert => runtime()?.block_on(alert(&config)),
        Command::Run => runtime()?.block_on(run_all(&config)),
        Command::Generate(args) => runtime()?.block_on(generate::run(&config, args)),
        Command::Replay {
            file,
            restart,
            retries,
        } => runtime()?.block_on(replay(&config, &file, restart, retries)),
        Command::Verify { expected, wait } => {
            let same = runtime()?.block_on(verify(&config, &expected, wait))?;
            if !same {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// `banter verify`: prints the comparison; false when a metric differs.
async fn verify(config: &Config, expected: &std::path::Path, wait: u64) -> anyhow::Result<bool> {
    let x = banter_workload::Generated::read(expected).map_err(anyhow::Error::msg)?;
    let ch = banter_sink::connect(&config.clickhouse, Duration::from_secs(30)).await?;
    let report = banter::verify::verify(&ch, &x, Duration::from_secs(wait))
        .await
        .context("reading ClickHouse")?;
    print!("{report}");
    let failed = report.metrics.iter().filter(|m| !m.ok).count();
    if failed == 0 {
        println!("every metric equals the generator's truth");
    } else {
        println!("{failed} metrics differ from the generator's truth");
    }
    Ok(failed == 0)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Cancels `token` on SIGINT or SIGTERM.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        token.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        token.cancel();
    });
}

async fn ingest(config: &Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let mut metrics = Metrics::new("ingest");
    let readiness = Readiness::default();
    publish_schemas(config).await;
    let ingest = start_ingest(config, &mut metrics, &readiness, &shutdown).await?;
    let ops = serve(config, metrics, &readiness, &shutdown).await?;
    ingest.server.await.context("ingest server task")??;
    ops.task.await.context("ops server task")??;
    tokio::task::spawn_blocking(move || ingest.publisher_thread.join())
        .await
        .context("publisher thread")?
        .map_err(|_| anyhow::anyhow!("publisher thread panicked"))?;
    tracing::info!("ingest stopped");
    Ok(())
}

/// The ingest API, its metrics registered into `metrics`.
async fn start_ingest(
    config: &Config,
    metrics: &mut Metrics,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> anyhow::Result<banter_ingest::Ingest> {
    Ok(banter_ingest::start(
        &config.kafka,
        &config.ingest,
        metrics.registry_mut(),
        readiness,
        shutdown.clone(),
    )
    .await?)
}

/// The ops server on `http.listen` (the registry is frozen now).
async fn serve(
    config: &Config,
    metrics: Metrics,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> anyhow::Result<banter_runtime::http::OpsServer> {
    let listen = config.http.listen.parse().context("http.listen")?;
    Ok(serve_ops(
        listen,
        metrics.into_shared(),
        readiness.clone(),
        shutdown.clone(),
    )
    .await?)
}

/// What a long-running role starts with: its ops server and a broker that answers.
async fn serve_role(
    config: &Config,
    metrics: Metrics,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> anyhow::Result<banter_runtime::http::OpsServer> {
    let ops = serve(config, metrics, readiness, shutdown).await?;
    wait_for_broker(
        &config.kafka,
        Duration::from_secs(config.kafka.connect_timeout_secs),
    )
    .await?;
    publish_schemas(config).await;
    Ok(ops)
}

/// Publishes this build's writer schemas to the schema topic before the role writes any
/// record: readers of other banter versions resolve its records with them. Without the topic
/// the role still runs (same-version readers need nothing), with a warning.
async fn publish_schemas(config: &Config) {
    match banter_runtime::schemas::publish(&config.kafka, None).await {
        Ok(n) => tracing::info!(
            schemas = n,
            topic = %config.kafka.topics.schemas,
            "writer schemas published"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "writer schemas not published: readers of another banter version cannot resolve this one's records"
        ),
    }
}

async fn stream(config: &Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let mut metrics = Metrics::new("stream");
    let stream_metrics = banter_stream::StreamMetrics::register(metrics.registry_mut());
    let readiness = Readiness::default();
    readiness.register("stream");
    let ops = serve_role(config, metrics, &readiness, &shutdown).await?;
    let (kafka, settings) = (config.kafka.clone(), config.stream_settings());
    let stop = shutdown.clone();
    let result = tokio::task::spawn_blocking(move || {
        banter_stream::run(
            &kafka,
            &settings,
            &stream_metrics,
            &|ok| readiness.set("stream", ok),
            &|| stop.is_cancelled(),
        )
    })
    .await
    .context("stream thread")?;
    shutdown.cancel();
    ops.task.await.context("ops server task")??;
    result?;
    tracing::info!("stream stopped");
    Ok(())
}

async fn clickhouse(config: &Config) -> anyhow::Result<banter_sink::ClickHouse> {
    Ok(banter_sink::connect(
        &config.clickhouse,
        Duration::from_secs(config.kafka.connect_timeout_secs),
    )
    .await?)
}

async fn migrate(
    config: &Config,
    print_sql: bool,
    server_version: Option<&str>,
    unlock: bool,
) -> anyhow::Result<()> {
    let db = &config.clickhouse.database;
    if unlock {
        let ch = clickhouse(config).await?;
        banter_sink::migrate::unlock(&ch.client.clone().with_database("system"), db).await?;
        println!("migration lock of {db} removed");
        return Ok(());
    }
    if print_sql {
        let v = match server_version {
            Some(v) => banter_sink::clickhouse::ServerVersion::parse(v)?,
            None => clickhouse(config).await?.version,
        };
        let cluster = &config.clickhouse.cluster;
        println!(
            "-- banter migrate on a new database {db}, ClickHouse {}.{}{}",
            v.major,
            v.minor,
            if cluster.is_empty() {
                String::new()
            } else {
                format!(", cluster {cluster}")
            }
        );
        let target = banter_sink::Target {
            db,
            version: v,
            cluster: (!cluster.is_empty()).then_some(cluster.as_str()),
        };
        let mut last = String::new();
        for (name, sql) in banter_sink::plan(target, &config.clickhouse.retention) {
            if name != last {
                println!("\n-- {name}");
                last = name;
            }
            println!("{};", sql.trim_end());
        }
        return Ok(());
    }
    let ch = clickhouse(config).await?;
    for o in banter_sink::migrate(&ch, db).await? {
        println!(
            "{:04} {:<24} {}",
            o.version,
            o.name,
            if o.applied {
                "applied"
            } else {
                "already applied"
            }
        );
    }
    for sql in retention(config, &ch).await?.statements {
        println!("retention: {sql}");
    }
    println!(
        "database {db} is up to date (ClickHouse {}.{})",
        ch.version.major, ch.version.minor
    );
    Ok(())
}

/// Applies `clickhouse.retention` now (TTLs, or on servers without them the due deletions).
async fn retention(
    config: &Config,
    ch: &banter_sink::ClickHouse,
) -> anyhow::Result<banter_sink::retention::Enforced> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Ok(banter_sink::retention::enforce(ch, &config.clickhouse.retention, now_ms).await?)
}

async fn sink(config: &Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let mut metrics = Metrics::new("sink");
    let sink_metrics = banter_sink::SinkMetrics::register(metrics.registry_mut());
    let readiness = Readiness::default();
    readiness.register("clickhouse");
    let ops = serve_role(config, metrics, &readiness, &shutdown).await?;
    let ch = clickhouse(config).await?;
    readiness.set("clickhouse", true);
    tokio::spawn(banter_sink::retention::every_hour(
        ch.clone(),
        config.clickhouse.retention,
        shutdown.clone(),
    ));
    let result = banter_sink::run(
        &config.kafka,
        &config.sink,
        ch,
        sink_metrics,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    ops.task.await.context("ops server task")??;
    result?;
    Ok(())
}

async fn alert(config: &Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let mut metrics = Metrics::new("alert");
    let alert_metrics = banter_alert::AlertMetrics::register(metrics.registry_mut());
    let readiness = Readiness::default();
    let ops = serve_role(config, metrics, &readiness, &shutdown).await?;
    let result = banter_alert::run(
        &config.kafka,
        &config.alerting,
        alert_metrics,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    ops.task.await.context("ops server task")??;
    result?;
    Ok(())
}

async fn run_all(config: &Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let connect = Duration::from_secs(config.kafka.connect_timeout_secs);
    wait_for_broker(&config.kafka, connect).await?;
    for (topic, outcome) in ensure_topics(&config.kafka, &pipeline_topics(&config.kafka)).await? {
        match outcome {
            TopicOutcome::Exists { partitions } if partitions != config.kafka.topics.partitions => {
                tracing::warn!(%topic, partitions, "topic exists with another partition count");
            }
            _ => {}
        }
    }
    publish_schemas(config).await;
    let ch = clickhouse(config).await?;
    banter_sink::migrate(&ch, &config.clickhouse.database).await?;
    retention(config, &ch).await?;

    let mut metrics = Metrics::new("run");
    let stream_metrics = banter_stream::StreamMetrics::register(metrics.registry_mut());
    let sink_metrics = banter_sink::SinkMetrics::register(metrics.registry_mut());
    let alert_metrics = banter_alert::AlertMetrics::register(metrics.registry_mut());
    let readiness = Readiness::default();
    readiness.register("stream");
    let ingest = start_ingest(config, &mut metrics, &readiness, &shutdown).await?;
    let ops = serve(config, metrics, &readiness, &shutdown).await?;
    let (kafka, settings) = (config.kafka.clone(), config.stream_settings());
    let (stop, ready) = (shutdown.clone(), readiness.clone());
    let mut stream = tokio::task::spawn_blocking(move || {
        banter_stream::run(
            &kafka,
            &settings,
            &stream_metrics,
            &|ok| ready.set("stream", ok),
            &|| stop.is_cancelled(),
        )
    });
    tokio::spawn(banter_sink::retention::every_hour(
        ch.clone(),
        config.clickhouse.retention,
        shutdown.clone(),
    ));
    let mut sink = tokio::spawn({
        let (cfg, stop) = (config.clone(), shutdown.clone());
        async move { banter_sink::run(&cfg.kafka, &cfg.sink, ch, sink_metrics, stop).await }
    });
    let deliver = !config.alerting.urls().is_empty();
    if !deliver {
        tracing::info!(
            "alerting.alertmanager_url is empty: spike alerts reach ClickHouse, not Alertmanager"
        );
    }
    let mut alerts = tokio::spawn({
        let (cfg, stop) = (config.clone(), shutdown.clone());
        async move {
            if deliver {
                banter_alert::run(&cfg.kafka, &cfg.alerting, alert_metrics, stop).await
            } else {
                stop.cancelled().await;
                Ok(())
            }
        }
    });
    tracing::info!(ingest = %ingest.local_addr, alert_delivery = deliver, "banter run: ingest, stream, sink and alert delivery running");
    let mut server = ingest.server;
    // The first role to stop (an error, or the signal) stops the others.
    let first: anyhow::Result<()> = tokio::select! {
        r = &mut server => r.context("ingest server task")?.context("ingest server"),
        r = &mut stream => r.context("stream thread")?.context("stream"),
        r = &mut sink => r.context("sink task")?.context("sink"),
        r = &mut alerts => r.context("alert task")?.context("alert delivery"),
    };
    shutdown.cancel();
    let _ = server.await;
    let _ = stream.await;
    let _ = sink.await;
    let _ = alerts.await;
    let _ = ops.task.await;
    let _ = tokio::task::spawn_blocking(move || ingest.publisher_thread.join()).await;
    first?;
    tracing::info!("banter run stopped");
    Ok(())
}

async fn replay(
    config: &Config,
    file: &std::path::Path,
    restart: bool,
    retries: u32,
) -> anyhow::Result<()> {
    let mut metrics = Metrics::new("replay");
    let readiness = Readiness::default();
    let (state, thread) = banter_ingest::build_state(
        &config.kafka,
        &config.ingest,
        metrics.registry_mut(),
        &readiness,
        "replay",
    )
    .await?;
    let summary = banter_ingest::replay::replay(&state, file, restart, retries).await;
    drop(state);
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    let s = summary?;
    println!(
        "replayed {} lines: {} events, {} dead letters",
        s.lines, s.events, s.dead_letters
    );
    Ok(())
}

fn schemas() {
    use banter_model::*;
    fn line<T: AvroRecord>(file: &str) {
        println!("{:<26} {:<16} {}", file, T::NAME, T::codec().fingerprint());
    }
    println!(
        "{:<26} {:<16} fingerprint (CRC-64-AVRO, wire order)",
        "file", "record"
    );
    line::<EngagementEvent>("engagement_event.v1.avsc");
    line::<Rollup>("rollup.v1.avsc");
    line::<FunnelRollup>("funnel_rollup.v1.avsc");
    line::<ConversationRollup>("conversation_rollup.v1.avsc");
    line::<SpikeAlert>("spike_alert.v1.avsc");
    line::<DeadLetter>("dead_letter.v1.avsc");
}

async fn topics(config: &Config) -> anyhow::Result<()> {
    let k = &config.kafka;
    wait_for_broker(k, Duration::from_secs(k.connect_timeout_secs)).await?;
    let specs = pipeline_topics(k);
    for (name, outcome) in ensure_topics(k, &specs).await? {
        match outcome {
            TopicOutcome::Created => println!("created {name}"),
            TopicOutcome::Exists { partitions } if partitions != k.topics.partitions => println!(
                "exists  {name} with {partitions} partitions (configured {}: Kafka can add partitions but \
                 that moves keys; recreate it to change)",
                k.topics.partitions
            ),
            TopicOutcome::Exists { .. } => println!("exists  {name}"),
        }
    }
    Ok(())
}
