//! `banter`: one binary, one subcommand per role of the pipeline.
//!
//! Roles land as they are built (ingest, stream, sink, alert delivery, `run` for all of them);
//! what is here today: configuration checks, topic creation and the schema listing.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use banter_runtime::kafka::{ensure_topics, pipeline_topics, wait_for_broker, TopicOutcome};
use banter_runtime::telemetry::init_logging;
use banter_runtime::Config;
use clap::{Parser, Subcommand};

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
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Exit 0 when the configuration is valid, else print the error naming the key.
    Check,
    /// Print the effective configuration as TOML.
    Show,
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
            action: ConfigAction::Check,
        } => {
            println!("configuration is valid");
            Ok(())
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
        Command::Topics => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(topics(&config))
        }
    }
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
