//! The `banter` roles as processes, as a user runs them: the binary with a test's
//! configuration, the generator, clean stops and kill -9.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use banter::Config;

use crate::stack::unique;

/// The `banter` binary of this build: `target/<profile>/banter`, beside the folder of the
/// running test executable (cargo builds it before the `banter` package's integration tests).
pub fn banter_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("no test executable path: {e}"));
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.ends_with("deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    };
    let bin = dir.join("banter");
    assert!(
        bin.exists(),
        "the banter binary is not at {}: build it (`cargo build -p banter`), or run the tests \
         of the `banter` package, which builds it",
        bin.display()
    );
    bin
}

/// `banter` with the configuration of `cfg` in its environment (topics, groups, ClickHouse),
/// short batches and idle timeouts for tests.
pub fn banter_cmd(cfg: &Config) -> Command {
    let mut c = Command::new(banter_bin());
    let t = &cfg.kafka.topics;
    c.env("BANTER_KAFKA__BROKERS", &cfg.kafka.brokers)
        .env("BANTER_KAFKA__TOPICS__EVENTS", &t.events)
        .env("BANTER_KAFKA__TOPICS__ROLLUPS", &t.rollups)
        .env("BANTER_KAFKA__TOPICS__PROVISIONAL", t.provisional_topic())
        .env("BANTER_KAFKA__TOPICS__DLQ", &t.dlq)
        .env("BANTER_KAFKA__TOPICS__ALERTS", &t.alerts)
        .env("BANTER_KAFKA__TOPICS__CHECKPOINTS", &t.checkpoints)
        .env("BANTER_KAFKA__TOPICS__SCHEMAS", &t.schemas)
        .env("BANTER_STREAM__GROUP_ID", &cfg.stream.group_id)
        .env(
            "BANTER_STREAM__PROVISIONAL_IN_TRANSACTION",
            cfg.stream.provisional_in_transaction.to_string(),
        )
        .env("BANTER_SINK__GROUP_ID", &cfg.sink.group_id)
        .env("BANTER_SINK__MAX_BATCH_MS", "300")
        .env("BANTER_SINK__MAX_BACKOFF_MS", "2000")
        .env("BANTER_CLICKHOUSE__URL", &cfg.clickhouse.url)
        .env("BANTER_CLICKHOUSE__DATABASE", &cfg.clickhouse.database)
        .env("BANTER_CLICKHOUSE__CLUSTER", &cfg.clickhouse.cluster)
        .env("BANTER_STREAM__IDLE_TIMEOUT_MS", "1000")
        .env("BANTER_STREAM__MAX_BATCH_EVENTS", "500")
        .env("BANTER_INGEST__ACTOR_SALT", "integration-test-salt")
        .env("BANTER_HTTP__LISTEN", "127.0.0.1:0")
        .env("BANTER_TELEMETRY__LOG_LEVEL", "info");
    // How to reach Kafka and ClickHouse (the secured listeners in `secured.rs`).
    let (k, ch) = (&cfg.kafka, &cfg.clickhouse);
    c.env(
        "BANTER_KAFKA__SECURITY_PROTOCOL",
        k.security_protocol.as_librdkafka(),
    )
    .env("BANTER_KAFKA__SSL__CA_FILE", &k.ssl.ca_file)
    .env("BANTER_KAFKA__SSL__CERT_FILE", &k.ssl.cert_file)
    .env("BANTER_KAFKA__SSL__KEY_FILE", &k.ssl.key_file)
    .env(
        "BANTER_KAFKA__SASL__MECHANISM",
        k.sasl.mechanism.as_setting(),
    )
    .env("BANTER_KAFKA__SASL__AWS_REGION", &k.sasl.aws_region)
    .env("BANTER_KAFKA__SASL__USERNAME", &k.sasl.username)
    .env("BANTER_KAFKA__SASL__PASSWORD", k.sasl.password.expose())
    .env("BANTER_CLICKHOUSE__USER", &ch.user)
    .env("BANTER_CLICKHOUSE__PASSWORD", ch.password.expose())
    .env("BANTER_CLICKHOUSE__CA_FILE", &ch.ca_file);
    // AWS_MSK_IAM signs with the credentials the local stack's IAM listener knows.
    if k.sasl.mechanism == banter_runtime::config::SaslMechanism::AwsMskIam {
        c.envs(crate::STACK_AWS_CREDENTIALS)
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE");
    }
    // The wire format and its registry.
    let reg = &k.schema_registry;
    let format = match k.wire_format {
        banter_runtime::config::WireFormat::SingleObject => "single-object",
        banter_runtime::config::WireFormat::Confluent => "confluent",
    };
    let strategy = match reg.subject_strategy {
        banter_runtime::config::SubjectStrategy::Topic => "topic",
        banter_runtime::config::SubjectStrategy::TopicRecord => "topic_record",
        banter_runtime::config::SubjectStrategy::Record => "record",
    };
    c.env("BANTER_KAFKA__WIRE_FORMAT", format)
        .env("BANTER_KAFKA__SCHEMA_REGISTRY__URL", &reg.url)
        .env("BANTER_KAFKA__SCHEMA_REGISTRY__SUBJECT_STRATEGY", strategy)
        .env("BANTER_KAFKA__SCHEMA_REGISTRY__USERNAME", &reg.username)
        .env(
            "BANTER_KAFKA__SCHEMA_REGISTRY__PASSWORD",
            reg.password.expose(),
        );
    c
}

/// Starts `banter stream` as instance `instance`; its log goes to a file in `dir`.
pub fn start_stream(cfg: &Config, instance: &str, dir: &Path) -> Proc {
    start_role(cfg, "stream", instance, dir)
}

/// Starts `banter <role>`; its log goes to `<dir>/<instance>.log`.
pub fn start_role(cfg: &Config, role: &str, instance: &str, dir: &Path) -> Proc {
    start_role_with(cfg, role, instance, dir, &[])
}

/// [`start_role`] with more environment variables (`BANTER_FAILPOINTS`, overrides).
pub fn start_role_with(
    cfg: &Config,
    role: &str,
    instance: &str,
    dir: &Path,
    env: &[(&str, &str)],
) -> Proc {
    let log = std::fs::File::create(dir.join(format!("{instance}.log")))
        .unwrap_or_else(|e| panic!("{e}"));
    with_campaigns(&mut banter_cmd(cfg), dir)
        .envs(env.iter().copied())
        .arg(role)
        .env("BANTER_STREAM__INSTANCE_ID", instance)
        .env("BANTER_SINK__INSTANCE_ID", instance)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(Proc::new)
        .unwrap()
}

/// Runs `banter generate --to kafka` (paced at `rate` events/s when > 0) and returns the
/// path of its expected aggregates.
pub fn generate(cfg: &Config, dir: &Path, rate: u64) -> Proc {
    generate_to(cfg, dir, rate, "kafka")
}

/// Points a command at the campaigns file of `dir` (written by [`generate`]), reloaded
/// every 500 ms.
pub fn with_campaigns<'a>(c: &'a mut Command, dir: &Path) -> &'a mut Command {
    let file = dir.join("campaigns.toml");
    if file.exists() {
        c.env("BANTER_CTA__CAMPAIGNS_FILE", file)
            .env("BANTER_CTA__RELOAD_INTERVAL_MS", "500");
    }
    c
}

/// Writes the campaigns of the workload's CTA posts to `dir/campaigns.toml` (what
/// [`generate_to`] will send), before anything is sent.
pub fn write_campaigns(cfg: &Config, dir: &Path) {
    let status = banter_cmd(cfg)
        .arg("generate")
        .args(WORKLOAD)
        .arg("--campaigns")
        .arg(dir.join("campaigns.toml"))
        .arg("--only-campaigns")
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "banter generate --only-campaigns failed");
}

/// The workload options every test uses (seed 5: 4,969 deliveries, 3 of them too late, 5
/// injected spikes, 8 CTA funnels; the same whatever the start).
pub const WORKLOAD: [&str; 6] = ["--accounts", "24", "--minutes", "240", "--seed", "5"];

/// [`generate`] to another output (`http` posts to `ingest.listen`). The campaigns of the
/// workload's CTA posts are written to `dir/campaigns.toml` first, before anything is sent.
pub fn generate_to(cfg: &Config, dir: &Path, rate: u64, to: &str) -> Proc {
    let exp = dir.join("expected.json");
    write_campaigns(cfg, dir);
    banter_cmd(cfg)
        .args([
            "generate",
            "--url",
            &format!("http://{}", cfg.ingest.listen),
            "--to",
            to,
            "--rate",
            &rate.to_string(),
            "--expected",
            exp.to_str().unwrap(),
        ])
        .args(WORKLOAD)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("generate.log")).unwrap())
        .spawn()
        .map(Proc::new)
        .unwrap()
}

/// A child process that is killed when dropped, so a failing test leaves nothing running.
pub struct Proc(Option<Child>);

impl Proc {
    fn new(c: Child) -> Self {
        Proc(Some(c))
    }

    /// Takes charge of a process started elsewhere.
    pub fn from_child(c: Child) -> Self {
        Proc(Some(c))
    }

    fn take(&mut self) -> Child {
        self.0
            .take()
            .unwrap_or_else(|| panic!("the process was taken already"))
    }

    /// Its exit status if it exits within `timeout` (polled), else None.
    pub fn exited_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let c = self.0.as_mut()?;
        loop {
            if let Some(status) = c.try_wait().unwrap_or_else(|e| panic!("{e}")) {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its pid (0 when it was taken).
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL, and wait for it.
    pub fn kill9(&mut self) {
        let mut c = self.take();
        c.kill().unwrap_or_else(|e| panic!("{e}"));
        c.wait().unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts a namesake of `first` (`start`, writing `dir/<name>.log`; `first`'s log is renamed
/// to `<name>-first.log` beforehand) and expects `first` to be fenced by it: to exit within
/// 90 s, failing, with "fenced" in its log. Returns the namesake. (Blocks: call it in
/// `block_in_place` from async tests.)
pub fn fenced_by_namesake(
    first: &mut Proc,
    dir: &Path,
    name: &str,
    start: impl FnOnce() -> Proc,
) -> Proc {
    let first_log = dir.join(format!("{name}-first.log"));
    // The first keeps writing its log under the new name.
    std::fs::rename(dir.join(format!("{name}.log")), &first_log).unwrap_or_else(|e| panic!("{e}"));
    let second = start();
    let status = first.exited_within(Duration::from_secs(90));
    let log = std::fs::read_to_string(&first_log).unwrap_or_else(|e| panic!("{e}"));
    let status = status.unwrap_or_else(|| panic!("the fenced {name} is still running:\n{log}"));
    assert!(!status.success(), "{log}");
    assert!(log.to_lowercase().contains("fenced"), "{log}");
    second
}

/// Waits for `p` to exit successfully.
pub fn finish(mut p: Proc, what: &str) {
    let status = p.take().wait().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        status.success(),
        "{what} failed: {status} (`banter generate` logs to generate.log in the test's directory)"
    );
}

/// Stops `p` with SIGTERM (a clean stop), waiting up to 30 s.
pub fn stop(mut p: Proc) {
    let mut child = p.take();
    // SIGTERM: a clean stop.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("banter did not stop within 30 s of SIGTERM");
}

/// A fresh folder for a test's logs and files.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    dir
}

/// Runs `banter migrate` for the configured database.
pub fn migrate(cfg: &Config) {
    let out = banter_cmd(cfg)
        .arg("migrate")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "banter migrate failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
