//! The fault-injection soak: generated traffic (signed webhooks and first-party events, paced
//! to last the run) into `banter ingest`, through `banter stream` (one to three instances) and
//! `banter sink` into ClickHouse and through `banter alert` into Alertmanager, on the local
//! stack's replicated Kafka (`kafka-1`..`kafka-3`: replication 3, `min.insync.replicas` 2),
//! while a seeded scheduler injects faults:
//!
//! * SIGKILL of a role (ingest, a stream instance, sink, alert), or of several together;
//! * SIGSTOP of a stream instance past its session timeout and `max.poll.interval.ms` (a
//!   zombie that resumes), SIGCONT;
//! * a stream instance's processing stalled mid-transaction past `max.poll.interval.ms`, its
//!   heartbeats going on (it leaves the group; its transaction times out), then resuming;
//! * a second and third stream instance joining and leaving;
//! * SIGKILL of a broker: the leader of a partition of the events topic, the active
//!   controller, or another;
//! * ClickHouse stopped, or frozen with SIGSTOP;
//! * Alertmanager stopped.
//!
//! A fault is injected every few seconds (at random moments) on what no active fault holds, so
//! faults overlap; each is healed after its own random outage. After each heal the soak
//! measures recovery: the time until the stream's and the sink's consumer lag are both under
//! one second's worth of input. It also measures how long after the input that closes a minute
//! was accepted that minute's row is seen in ClickHouse (event-to-visible). At the end every metric in ClickHouse must equal the
//! generator's truth, and Alertmanager must hold, for every alert of the run, exactly the state
//! ClickHouse has (firing alerts once, resolved ones not at all). The seed replays the same
//! schedule (`scripts/soak.sh --seed N`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use banter::Config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::{
    banter_cmd, clickhouse_match, fresh_database, repo_root, stack, unique, with_campaigns, Proc,
    TestDatabase, META_APP_SECRET,
};

/// How long and how hard.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seeds the fault schedule (the workload is seed 5's, which exercises every metric).
    pub seed: u64,
    /// Accounts of the generated workload.
    pub accounts: u32,
    /// Minutes of event time of the workload.
    pub minutes: u32,
    /// How long the traffic lasts: the workload is paced to it.
    pub traffic: Duration,
    /// Mean wait between faults.
    pub mean_gap: Duration,
    /// Longest outage of one fault.
    pub max_outage: Duration,
    /// No fault in the first this long: the fault-free event-to-visible baseline.
    pub calm: Duration,
    /// Where logs, the workload's truth and the report go.
    pub dir: PathBuf,
    /// The kinds of fault the schedule picks from.
    pub faults: Vec<Fault>,
}

impl Options {
    /// A few minutes, for CI.
    pub fn short(seed: u64, dir: PathBuf) -> Self {
        Options {
            seed,
            accounts: 24,
            minutes: 240,
            traffic: Duration::from_secs(200),
            mean_gap: Duration::from_secs(5),
            max_outage: Duration::from_secs(15),
            calm: Duration::from_secs(25),
            dir,
            faults: FAULTS.to_vec(),
        }
    }

    /// Half an hour or more, for the figures.
    pub fn long(seed: u64, minutes: u32, dir: PathBuf) -> Self {
        Options {
            seed,
            accounts: 60,
            minutes: 1440,
            traffic: Duration::from_secs(u64::from(minutes) * 60),
            mean_gap: Duration::from_secs(2),
            // ClickHouse stopped or frozen, a broker down: for up to two minutes.
            max_outage: Duration::from_secs(120),
            calm: Duration::from_secs(60),
            dir,
            faults: FAULTS.to_vec(),
        }
    }
}

/// A small seeded generator (SplitMix64): the schedule is the seed's.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(self.below(span + 1))
    }
}

/// A fault the scheduler injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL of one role.
    KillIngest,
    /// SIGKILL of a stream instance.
    KillStream,
    /// SIGKILL of the sink.
    KillSink,
    /// SIGKILL of alert delivery.
    KillAlert,
    /// SIGKILL of ingest, every stream instance and the sink together.
    KillSeveral,
    /// SIGSTOP of a stream instance past its session timeout and `max.poll.interval.ms`
    /// (10 s and 12 s in the soak), then SIGCONT.
    ZombieStream,
    /// The processing loop of a stream instance stalls with a transaction open, past
    /// `max.poll.interval.ms` (12 s) and the transaction timeout (10 s), while the process and
    /// its heartbeats go on; then it resumes (the `stream.before_commit` pause point).
    StalledStream,
    /// Another stream instance joins (and leaves at the heal).
    StreamJoins,
    /// SIGKILL of the broker leading partition 0 of the events topic.
    KillLeaderBroker,
    /// SIGKILL of the active KRaft controller.
    KillController,
    /// SIGKILL of another broker.
    KillBroker,
    /// ClickHouse stopped.
    ClickHouseDown,
    /// ClickHouse frozen (SIGSTOP), then SIGCONT.
    ClickHouseFrozen,
    /// Alertmanager stopped.
    AlertmanagerDown,
}

/// Every kind of fault.
pub const FAULTS: [Fault; 14] = [
    Fault::KillIngest,
    Fault::KillStream,
    Fault::KillSink,
    Fault::KillAlert,
    Fault::KillSeveral,
    Fault::ZombieStream,
    Fault::StalledStream,
    Fault::StreamJoins,
    Fault::KillLeaderBroker,
    Fault::KillController,
    Fault::KillBroker,
    Fault::ClickHouseDown,
    Fault::ClickHouseFrozen,
    Fault::AlertmanagerDown,
];

impl Fault {
    /// What the fault holds while it lasts: a fault is injected only on what no other active
    /// fault holds (never two brokers at once: two of three down stops acks=all by design).
    fn holds(self) -> &'static [&'static str] {
        match self {
            Fault::KillIngest => &["ingest"],
            Fault::KillStream | Fault::ZombieStream | Fault::StalledStream => &["streams"],
            Fault::KillSink => &["sink"],
            Fault::KillAlert => &["alert"],
            Fault::KillSeveral => &["ingest", "streams", "sink"],
            Fault::StreamJoins => &["join"],
            Fault::KillLeaderBroker | Fault::KillController | Fault::KillBroker => &["broker"],
            Fault::ClickHouseDown | Fault::ClickHouseFrozen => &["clickhouse"],
            Fault::AlertmanagerDown => &["alertmanager"],
        }
    }
}

/// A fault injected and not yet recovered from.
struct Active {
    fault: Fault,
    injected: Instant,
    due: Instant,
    heal: Option<Heal>,
    /// A service's heal under way.
    healing: Option<std::thread::JoinHandle<()>>,
    healed: Option<Instant>,
}

/// What the soak did and found.
#[derive(Debug, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Faults injected, by kind.
    pub injected: BTreeMap<String, u32>,
    /// Seconds from each fault to both lags under one second's worth of input, by kind.
    pub recovery_s: BTreeMap<String, Vec<f64>>,
    /// The same from each heal (the fault's own outage taken out), by kind.
    pub after_heal_s: BTreeMap<String, Vec<f64>>,
    /// Recoveries that took longer than a minute after the heal, by kind.
    pub slow: BTreeMap<String, u32>,
    /// Deliveries the generator sent.
    pub deliveries: u64,
    /// Cells compared with the truth, and how long the comparison waited.
    pub compared: String,
    /// Alerts of the run compared with Alertmanager.
    pub alerts_compared: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// Event-to-visible delays of MINUTE rows (see [`visible_delays`]).
    pub visible: Vec<Visible>,
    /// When the traffic started (ms since the epoch).
    pub started_ms: i64,
    /// Roles that exited by themselves (and were started again), with the last line of
    /// their log.
    pub exits: Vec<String>,
    /// The fault-free start (ms).
    pub calm_ms: i64,
}

/// How long after the input that closes its minute was accepted a MINUTE row was first seen
/// in ClickHouse.
#[derive(Debug, Clone, Copy)]
pub struct Visible {
    /// The delay, seconds.
    pub delay_s: f64,
    /// When the row was first seen (ms since the epoch).
    pub seen_ms: i64,
}

impl Report {
    /// A readable summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let total: u32 = self.injected.values().sum();
        let _ = writeln!(
            s,
            "soak seed {}: {total} faults in {:.0} s, {} deliveries",
            self.seed,
            self.elapsed.as_secs_f64(),
            self.deliveries
        );
        let _ = writeln!(
            s,
            "{:<18} {:>5} | from the fault: {:>7} {:>7} {:>7} | from the heal: {:>7} {:>7} {:>7} | >60 s",
            "fault", "count", "p50", "p90", "max", "p50", "p90", "max"
        );
        let q = |m: &BTreeMap<String, Vec<f64>>, kind: &str, p: f64| {
            let mut r = m.get(kind).cloned().unwrap_or_default();
            r.sort_by(f64::total_cmp);
            if r.is_empty() {
                "-".to_owned()
            } else {
                format!(
                    "{:.1}",
                    r[((p * r.len() as f64).ceil() as usize).max(1) - 1]
                )
            }
        };
        for (kind, n) in &self.injected {
            let (a, b) = (&self.recovery_s, &self.after_heal_s);
            let _ = writeln!(
                s,
                "{kind:<18} {n:>5} | {:>22} {:>7} {:>7} | {:>21} {:>7} {:>7} | {}",
                q(a, kind, 0.5),
                q(a, kind, 0.9),
                q(a, kind, 1.0),
                q(b, kind, 0.5),
                q(b, kind, 0.9),
                q(b, kind, 1.0),
                self.slow.get(kind).copied().unwrap_or(0)
            );
        }
        if !self.visible.is_empty() {
            let pick = |calm: bool| {
                let mut d: Vec<Visible> = self
                    .visible
                    .iter()
                    .filter(|v| (v.seen_ms < self.started_ms + self.calm_ms) == calm)
                    .copied()
                    .collect();
                d.sort_by(|a, b| a.delay_s.total_cmp(&b.delay_s));
                d
            };
            let at = |d: &[Visible], p: f64| {
                d.get(((p * d.len() as f64).ceil() as usize).clamp(1, d.len().max(1)) - 1)
                    .copied()
            };
            let (calm, faulty) = (pick(true), pick(false));
            let baseline = at(&calm, 0.5).map_or(0.0, |v| v.delay_s);
            let _ = writeln!(
                s,
                "event-to-visible of MINUTE rows (from the input that closes the minute accepted \
                 by ingest to the row seen in ClickHouse, sampled each second):"
            );
            let _ = writeln!(
                s,
                "  fault-free first {:.0} s: {} rows, p50 {baseline:.1} s",
                self.calm_ms as f64 / 1000.0,
                calm.len()
            );
            if let (Some(p50), Some(p99), Some(max)) =
                (at(&faulty, 0.5), at(&faulty, 0.99), at(&faulty, 1.0))
            {
                let _ = writeln!(
                    s,
                    "  under faults: {} rows, p50 {:.1} s, p99 {:.1} s, max {:.1} s ({:.0} s into \
                     the traffic): worst extra delay {:.1} s",
                    faulty.len(),
                    p50.delay_s,
                    p99.delay_s,
                    max.delay_s,
                    (max.seen_ms - self.started_ms) as f64 / 1000.0,
                    max.delay_s - baseline
                );
            }
        }
        let _ = writeln!(
            s,
            "roles that exited by themselves and were started again: {}",
            self.exits.len()
        );
        for e in &self.exits {
            let _ = writeln!(s, "  {e}");
        }
        let _ = writeln!(s, "compared: {}", self.compared);
        let _ = writeln!(
            s,
            "alerts compared with Alertmanager: {}",
            self.alerts_compared
        );
        s
    }
}

/// The replicated cluster's bootstrap servers.
pub fn cluster_brokers() -> String {
    let base: u16 = std::env::var("BANTER_KAFKA_CLUSTER_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(19092);
    (0..3)
        .map(|i| format!("127.0.0.1:{}", base + i))
        .collect::<Vec<_>>()
        .join(",")
}

fn stack_dir() -> PathBuf {
    std::env::var("BANTER_STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".stack"))
}

/// The pid `scripts/stack.sh` recorded for a service.
fn service_pid(service: &str) -> Option<i32> {
    std::fs::read_to_string(stack_dir().join("run").join(format!("{service}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Sends `signal` to a service's process group (and the process).
fn signal_service(service: &str, signal: &str) {
    if let Some(pid) = service_pid(service) {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// The active KRaft controller (the quorum leader in a node's `quorum-state`).
fn controller() -> Option<u32> {
    (1..=3).find_map(|n| {
        let text = std::fs::read_to_string(
            stack_dir().join(format!("kafka-{n}/data/__cluster_metadata-0/quorum-state")),
        )
        .ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["leaderId"]
            .as_i64()
            .and_then(|id| u32::try_from(id).ok())
            .filter(|id| *id >= 1)
    })
}

/// The broker leading partition 0 of `topic`.
fn leader_of(brokers: &str, topic: &str) -> Option<u32> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .ok()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(5)).ok()?;
    let t = md.topics().first()?;
    let p = t.partitions().iter().find(|p| p.id() == 0)?;
    u32::try_from(p.leader()).ok().filter(|id| *id >= 1)
}

/// The roles as processes by instance name (`ingest`, `sink`, `alert`, `stream-a`, …), with
/// fixed ops ports (so lag is read across restarts).
struct Roles {
    cfg: Config,
    dir: PathBuf,
    base_port: u16,
    procs: BTreeMap<String, Proc>,
    /// Each instance's current log.
    logs: BTreeMap<String, PathBuf>,
    starts: u32,
    /// Roles that exited by themselves (and were started again): why, by the last line of
    /// their log.
    exits: Vec<String>,
    supervised: Instant,
}

impl Roles {
    fn port(&self, what: &str) -> u16 {
        self.base_port
            + match what {
                "ingest" => 0,
                "sink" => 1,
                "alert" => 2,
                "stream-a" => 3,
                "stream-b" => 4,
                _ => 5,
            }
    }

    fn spawn(&mut self, instance: &str) -> Proc {
        let role = if instance.starts_with("stream-") {
            "stream"
        } else {
            instance
        };
        self.starts += 1;
        let path = self.dir.join(format!("{instance}.{}.log", self.starts));
        let log = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
        self.logs.insert(instance.to_owned(), path);
        let port = self.port(instance);
        with_campaigns(&mut banter_cmd(&self.cfg), &self.dir)
            .arg(role)
            .env("BANTER_STREAM__INSTANCE_ID", instance)
            .env("BANTER_SINK__INSTANCE_ID", instance)
            .env("BANTER_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("BANTER_INGEST__LISTEN", &self.cfg.ingest.listen)
            .env("BANTER_INGEST__META_APP_SECRET", META_APP_SECRET)
            .env("BANTER_KAFKA__TOPICS__REPLICATION_FACTOR", "3")
            // A zombie (stopped 16-25 s) is past both the session timeout (10 s) and this.
            .env("BANTER_STREAM__MAX_POLL_INTERVAL_MS", "12000")
            .env("BANTER_FAILPOINTS", "stream.before_commit")
            .env(
                "BANTER_PAUSE_FILE",
                self.dir.join(format!("pause-{instance}")),
            )
            .env(
                "BANTER_ALERTING__ALERTMANAGER_URL",
                format!(
                    "http://127.0.0.1:{}",
                    std::env::var("BANTER_ALERTMANAGER_PORT").unwrap_or_else(|_| "9093".into())
                ),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map(Proc::from_child)
            .unwrap_or_else(|e| panic!("cannot start banter {role}: {e}"))
    }

    /// Starts `instance` unless it runs.
    fn start(&mut self, instance: &str) {
        if !self.procs.contains_key(instance) {
            let p = self.spawn(instance);
            self.procs.insert(instance.to_owned(), p);
        }
    }

    /// SIGKILL of `instance`, when it runs.
    fn kill(&mut self, instance: &str) -> bool {
        self.procs.remove(instance).map(|mut p| p.kill9()).is_some()
    }

    /// The stream instances running.
    fn streams(&self) -> Vec<String> {
        self.procs
            .keys()
            .filter(|k| k.starts_with("stream-"))
            .cloned()
            .collect()
    }

    /// Starts again, as a supervisor would (at most once a second), the roles that exited by
    /// themselves; not those a fault holds down (they are not running).
    fn supervise(&mut self) {
        if self.supervised.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.supervised = Instant::now();
        let gone: Vec<(String, std::process::ExitStatus)> = self
            .procs
            .iter_mut()
            .filter_map(|(k, p)| p.exited_within(Duration::ZERO).map(|s| (k.clone(), s)))
            .collect();
        for (instance, status) in gone {
            let last = self
                .logs
                .get(&instance)
                .and_then(|l| std::fs::read_to_string(l).ok())
                .and_then(|l| {
                    l.lines()
                        .last()
                        .map(|l| l.chars().take(240).collect::<String>())
                })
                .unwrap_or_default();
            self.exits.push(format!("{instance} ({status}): {last}"));
            self.procs.remove(&instance);
            self.start(&instance);
        }
    }

    /// Starts what is not running.
    fn up(&mut self) {
        for instance in ["ingest", "stream-a", "sink", "alert"] {
            self.start(instance);
        }
    }
}

/// A consumer group's lag read from Kafka, not from the roles (whose gauges say nothing while
/// a role restarts or waits for its group): the records between each partition's high
/// watermark and what the group committed.
struct GroupLag {
    client: BaseConsumer,
    topic: String,
}

impl GroupLag {
    fn new(brokers: &str, group: &str, topic: &str) -> Self {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_uncommitted")
            .create()
            .unwrap_or_else(|e| panic!("{e}"));
        GroupLag {
            client,
            topic: topic.to_owned(),
        }
    }

    /// None while Kafka does not answer.
    fn records(&self) -> Option<i64> {
        let t = Duration::from_secs(1);
        let md = self.client.fetch_metadata(Some(&self.topic), t).ok()?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in md.topics().first()?.partitions() {
            tpl.add_partition(&self.topic, p.id());
        }
        let committed = self.client.committed_offsets(tpl, t).ok()?;
        let mut lag = 0;
        for e in committed.elements() {
            let (_, high) = self
                .client
                .fetch_watermarks(&self.topic, e.partition(), t)
                .ok()?;
            lag += (high - e.offset().to_raw().unwrap_or(0).max(0)).max(0);
        }
        Some(lag)
    }
}

/// Runs the soak; panics with the report so far at the first difference.
pub async fn run(opts: Options) -> Report {
    let started = Instant::now();
    let mut rng = Rng(opts.seed);
    let dir = opts.dir.clone();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    // A ClickHouse an interrupted soak left frozen goes on.
    signal_service("clickhouse", "CONT");
    // The three nodes in one call: a quorum needs two of them, each waits for the others.
    stack(&[
        "up",
        "kafka-1",
        "kafka-2",
        "kafka-3",
        "clickhouse",
        "alertmanager",
    ]);
    let brokers = cluster_brokers();
    let mut cfg = crate::config();
    cfg.kafka.brokers = brokers.clone();
    cfg.kafka.topics.replication_factor = 3;
    let run = unique("soak");
    let t = &mut cfg.kafka.topics;
    t.events = format!("{run}.events");
    t.rollups = format!("{run}.rollups");
    t.alerts = format!("{run}.alerts");
    t.dlq = format!("{run}.dlq");
    t.checkpoints = format!("{run}.checkpoints");
    t.schemas = format!("{run}.schemas");
    cfg.stream.group_id = format!("{run}.stream");
    cfg.sink.group_id = format!("{run}.sink");
    let base_port: u16 = std::env::var("BANTER_SOAK_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(19500);
    cfg.ingest.listen = format!("127.0.0.1:{}", base_port + 9);
    cfg.ingest.actor_salt = banter_runtime::Secret::new("integration-test-salt");
    cfg.ingest.meta_app_secret = banter_runtime::Secret::new(META_APP_SECRET);
    let db: TestDatabase = fresh_database(&cfg).await;
    cfg.clickhouse.database = db.name.clone();
    let out = banter_cmd(&cfg)
        .arg("topics")
        .env("BANTER_KAFKA__TOPICS__REPLICATION_FACTOR", "3")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "banter topics on the replicated cluster: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    crate::migrate(&cfg);
    let workload = [
        "--accounts".to_owned(),
        opts.accounts.to_string(),
        "--minutes".to_owned(),
        opts.minutes.to_string(),
        // The workload the other tests use (every metric exercised: spikes, funnels, too-late
        // deliveries); the soak's seed is the fault schedule's.
        "--seed".to_owned(),
        "5".to_owned(),
    ];
    // The workload's CTA campaigns, for the stream, before anything is sent, and its truth
    // (how many deliveries: the pace).
    let status = banter_cmd(&cfg)
        .arg("generate")
        .args(&workload)
        .arg("--campaigns")
        .arg(dir.join("campaigns.toml"))
        .arg("--expected")
        .arg(dir.join("expected.json"))
        .arg("--only-campaigns")
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "banter generate --only-campaigns failed");
    let deliveries = crate::read_expected(&dir).expected.deliveries;
    let rate = (deliveries as f64 / opts.traffic.as_secs_f64())
        .ceil()
        .max(1.0) as u64;
    let mut roles = Roles {
        cfg: cfg.clone(),
        dir: dir.clone(),
        base_port,
        procs: BTreeMap::new(),
        logs: BTreeMap::new(),
        starts: 0,
        exits: Vec::new(),
        supervised: Instant::now(),
    };
    roles.up();
    let http = reqwest::Client::new();
    wait_ready(&http, &roles).await;
    let mut gen = Proc::from_child(
        banter_cmd(&cfg)
            .args([
                "generate",
                "--to",
                "webhook",
                "--rate",
                &rate.to_string(),
                "--url",
            ])
            .arg(format!("http://{}", cfg.ingest.listen))
            .arg("--app-secret")
            .arg(META_APP_SECRET)
            .arg("--expected")
            .arg(dir.join("expected.json"))
            .arg("--progress")
            .arg(dir.join("progress.txt"))
            // Ingest may be down (killed, restarting while a broker is down) for a while.
            .args(["--retry-secs", "900"])
            .args(&workload)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("generate.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let traffic = opts.traffic;
    // Times in the faults log and the report count from here.
    let traffic_started = Instant::now();
    let traffic_started_ms = banter_runtime::now_ms();
    let mut report = Report {
        seed: opts.seed,
        ..Report::default()
    };
    let mut log = String::new();
    // One second's worth of input is the recovery threshold.
    let per_second = 50.0f64.max(rate as f64);
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn(sample_visible(
        http.clone(),
        cfg.clickhouse.clone(),
        sampling.clone(),
        Some(dir.join("sampler.log")),
    ));
    let gap = || (opts.mean_gap / 2, opts.mean_gap * 3 / 2);
    let stream_lag = GroupLag::new(&brokers, &cfg.stream.group_id, &cfg.kafka.topics.events);
    let sink_lag = GroupLag::new(&brokers, &cfg.sink.group_id, &cfg.kafka.topics.rollups);
    let mut next = Instant::now() + opts.calm;
    let mut active: Vec<Active> = Vec::new();
    loop {
        let injecting = traffic_started.elapsed() + opts.max_outage < traffic;
        if !injecting && active.is_empty() {
            break;
        }
        // Heals that are due; crashed roles start again (as a supervisor would).
        for a in &mut active {
            if a.healed.is_some() {
                continue;
            }
            if a.healing
                .as_ref()
                .is_some_and(std::thread::JoinHandle::is_finished)
            {
                if let Some(Err(e)) = a.healing.take().map(std::thread::JoinHandle::join) {
                    std::panic::resume_unwind(e);
                }
                a.healed = Some(Instant::now());
                continue;
            }
            if Instant::now() >= a.due {
                match a.heal.take() {
                    Some(Heal::Roles(heal)) => {
                        tokio::task::block_in_place(|| heal(&mut roles));
                        a.healed = Some(Instant::now());
                    }
                    Some(Heal::Service(heal)) => a.healing = Some(std::thread::spawn(heal)),
                    None => {}
                }
            }
        }
        // Recovery of what was healed: both lags under one second's worth of input (other
        // faults may still be active: they overlap).
        if active.iter().any(|a| a.healed.is_some()) {
            let caught_up = tokio::task::block_in_place(|| {
                stream_lag.records().is_some_and(|s| s as f64 <= per_second)
                    && sink_lag
                        .records()
                        .is_some_and(|k| k as f64 <= per_second * 1.5)
            });
            active.retain(|a| {
                let Some(h) = a.healed else { return true };
                let kind = format!("{:?}", a.fault);
                if caught_up {
                    let from_fault = a.injected.elapsed().as_secs_f64();
                    report
                        .recovery_s
                        .entry(kind.clone())
                        .or_default()
                        .push(from_fault);
                    let from_heal = h.elapsed().as_secs_f64();
                    report.after_heal_s.entry(kind).or_default().push(from_heal);
                    false
                } else if h.elapsed() > Duration::from_secs(60) {
                    *report.slow.entry(kind).or_default() += 1;
                    false
                } else {
                    true
                }
            });
        }
        tokio::task::block_in_place(|| roles.supervise());
        // The next fault, at a random moment, on what no active fault holds.
        if injecting && Instant::now() >= next {
            next = Instant::now() + rng.between(gap().0, gap().1);
            let f = opts.faults[rng.below(opts.faults.len() as u64) as usize];
            let free = active
                .iter()
                .all(|a| a.fault.holds().iter().all(|r| !f.holds().contains(r)));
            if free {
                // Each fault lasts its own time: a crashed role is restarted within seconds, a
                // zombie stays stopped past the session timeout (10 s), infrastructure stays
                // down up to the longest outage.
                let outage = match f {
                    Fault::KillIngest
                    | Fault::KillStream
                    | Fault::KillSink
                    | Fault::KillAlert
                    | Fault::KillSeveral => {
                        rng.between(Duration::from_secs(1), Duration::from_secs(5))
                    }
                    Fault::ZombieStream | Fault::StalledStream => {
                        rng.between(Duration::from_secs(16), Duration::from_secs(25))
                    }
                    _ => rng.between(Duration::from_secs(5), opts.max_outage),
                };
                *report.injected.entry(format!("{f:?}")).or_default() += 1;
                let _ = writeln!(
                    log,
                    "{:>7.1} s  {f:?} for {:.1} s ({} other faults active)",
                    traffic_started.elapsed().as_secs_f64(),
                    outage.as_secs_f64(),
                    active.iter().filter(|a| a.healed.is_none()).count()
                );
                std::fs::write(dir.join("faults.log"), &log).unwrap_or_else(|e| panic!("{e}"));
                let events = &cfg.kafka.topics.events;
                let heal = tokio::task::block_in_place(|| {
                    inject(f, &mut roles, &mut rng, &brokers, events)
                });
                let injected = Instant::now();
                active.push(Active {
                    fault: f,
                    injected,
                    due: injected + outage,
                    heal: Some(heal),
                    healing: None,
                    healed: None,
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    std::fs::write(dir.join("faults.log"), &log).unwrap_or_else(|e| panic!("{e}"));
    // Traffic ends; nothing is down any more. A role that exits by itself from here on (a
    // stream instance fenced after the last heal) is still started again, as a supervisor
    // would: CI once waited 600 s on an instance that had exited just after the last fault.
    let status = supervised(
        &mut roles,
        tokio::task::spawn_blocking(move || gen.exited_within(traffic + Duration::from_secs(600))),
    )
    .await
    .unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "banter generate failed: see {}",
        dir.join("generate.log").display()
    );
    let truth = crate::read_expected(&dir);
    report.deliveries = truth.expected.deliveries;
    let waited = Instant::now();
    // On its own task, so that a difference still leaves the run's figures in report.txt.
    let (ch, d) = (db.ch.clone(), dir.clone());
    let matched = supervised(
        &mut roles,
        tokio::spawn(async move { clickhouse_match(&ch, &d, Duration::from_secs(600)).await }),
    )
    .await;
    let differs = match matched {
        Ok(observed) => {
            report.compared = format!(
                "{} rollup rows, {} funnels, {} conversation rows and {} alerts equal the truth, {:.0} s after the traffic",
                observed.rollups.len(),
                observed.funnels.len(),
                observed.conversations.len(),
                observed.alerts.len(),
                waited.elapsed().as_secs_f64()
            );
            report.alerts_compared = alertmanager_agrees(&http, &db).await;
            None
        }
        Err(e) => {
            report.compared =
                "DIFFERENT from the truth (the differences: the test's failure message)".into();
            Some(e)
        }
    };
    sampling.store(false, Ordering::Relaxed);
    let seen = sampler.await.unwrap_or_default();
    let progress = std::fs::read_to_string(dir.join("progress.txt")).unwrap_or_default();
    report.visible = visible_delays(&progress, &seen, cfg.stream.out_of_orderness_ms);
    let mut rows = String::from("seen_ms\tdelay_s\n");
    for v in &report.visible {
        let _ = writeln!(rows, "{}\t{:.1}", v.seen_ms, v.delay_s);
    }
    std::fs::write(dir.join("visible.tsv"), rows).unwrap_or_else(|e| panic!("{e}"));
    report.started_ms = traffic_started_ms;
    report.exits = std::mem::take(&mut roles.exits);
    report.calm_ms = opts.calm.as_millis() as i64;
    report.elapsed = started.elapsed();
    let summary = report.summary();
    std::fs::write(dir.join("report.txt"), format!("{summary}\n{log}"))
        .unwrap_or_else(|e| panic!("{e}"));
    if let Some(e) = differs {
        eprintln!("{summary}");
        match e.try_into_panic() {
            Ok(p) => std::panic::resume_unwind(p),
            Err(e) => panic!("the comparison did not finish: {e}"),
        }
    }
    drop(roles);
    if std::env::var_os("BANTER_SOAK_KEEP").is_none() {
        db.drop_now(&cfg).await;
    }
    report
}

/// Awaits `task` while starting again, as a supervisor would, the roles that exit by
/// themselves meanwhile.
async fn supervised<T>(
    roles: &mut Roles,
    task: tokio::task::JoinHandle<T>,
) -> Result<T, tokio::task::JoinError> {
    while !task.is_finished() {
        tokio::task::block_in_place(|| roles.supervise());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    task.await
}

/// When each MINUTE row was first seen in ClickHouse (the soak's clock, ms) and its window's
/// end, by key: ClickHouse asked each second for the rows inserted lately, until `on` is false.
async fn sample_visible(
    http: reqwest::Client,
    ch: banter_sink::ClickHouseConfig,
    on: Arc<AtomicBool>,
    trace: Option<PathBuf>,
) -> HashMap<String, (i64, i64)> {
    let mut seen: HashMap<String, (i64, i64)> = HashMap::new();
    let query = format!(
        "SELECT concat(account_id, '/', content_id, '/', toString(window_start_ms)), \
         any(window_end_ms) FROM {}.rollups WHERE window_kind = 'MINUTE' \
         AND revision >= 0 AND inserted_at >= now() - 30 \
         GROUP BY account_id, content_id, window_start_ms \
         FORMAT TabSeparated",
        ch.database
    );
    let mut log = String::new();
    while on.load(Ordering::Relaxed) {
        let asked = banter_runtime::now_ms();
        let mut req = http
            .post(&ch.url)
            .body(query.clone())
            .timeout(Duration::from_secs(2));
        if !ch.user.is_empty() {
            req = req.basic_auth(&ch.user, Some(ch.password.expose()));
        }
        // ClickHouse down or frozen: nothing is visible.
        let (mut rows, mut new) = (0, 0);
        let outcome = match req.send().await {
            Ok(r) if r.status().is_success() => {
                for line in r.text().await.unwrap_or_default().lines() {
                    if let Some((key, end)) = line.rsplit_once('\t') {
                        if let Ok(end) = end.parse::<i64>() {
                            rows += 1;
                            if !seen.contains_key(key) {
                                seen.insert(key.to_owned(), (end, asked));
                                new += 1;
                            }
                        }
                    }
                }
                "ok".to_owned()
            }
            Ok(r) => r.status().to_string(),
            Err(e) => e.to_string(),
        };
        let _ = writeln!(log, "{asked} {outcome} {rows} recent, {new} new");
        if let Some(path) = &trace {
            let _ = std::fs::write(path, &log);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    seen
}

/// Event-to-visible delays of a paced run, whose event times are not the wall clock: a minute
/// can close once input `out_of_orderness_ms` past its end was accepted; `progress` (the
/// generator's `--progress`: wall clock and delivery time of each accepted request) says when
/// that was. Minutes the input never got that far past (the last ones, closed when idle) are
/// left out.
pub fn visible_delays(
    progress: &str,
    seen: &HashMap<String, (i64, i64)>,
    out_of_orderness_ms: i64,
) -> Vec<Visible> {
    let mut accepted: Vec<(i64, i64)> = progress
        .lines()
        .filter_map(|l| {
            let (wall, t) = l.split_once(' ')?;
            Some((wall.parse().ok()?, t.parse().ok()?))
        })
        .collect();
    accepted.sort_unstable();
    // The furthest delivery time accepted by each moment.
    let mut furthest = i64::MIN;
    for a in &mut accepted {
        furthest = furthest.max(a.1);
        a.1 = furthest;
    }
    seen.values()
        .filter_map(|&(end, seen_ms)| {
            let i = accepted.partition_point(|a| a.1 < end + out_of_orderness_ms);
            let ready = accepted.get(i)?.0;
            Some(Visible {
                delay_s: (seen_ms - ready).max(0) as f64 / 1000.0,
                seen_ms,
            })
        })
        .collect()
}

/// What heals a fault.
enum Heal {
    /// On the roles, in the loop.
    Roles(Box<dyn FnOnce(&mut Roles)>),
    /// On a service, on a thread of its own: a broker or ClickHouse takes seconds to start,
    /// and the schedule goes on meanwhile.
    Service(Box<dyn FnOnce() + Send>),
}

/// Injects `f`; returns what heals it.
fn inject(f: Fault, roles: &mut Roles, rng: &mut Rng, brokers: &str, events: &str) -> Heal {
    match f {
        Fault::KillIngest | Fault::KillSink | Fault::KillAlert => {
            let instance = match f {
                Fault::KillIngest => "ingest",
                Fault::KillSink => "sink",
                _ => "alert",
            };
            roles.kill(instance);
            return Heal::Roles(Box::new(move |r| r.start(instance)));
        }
        Fault::KillStream => {
            let ids = roles.streams();
            if !ids.is_empty() {
                let id = ids[rng.below(ids.len() as u64) as usize].clone();
                roles.kill(&id);
                return Heal::Roles(Box::new(move |r| r.start(&id)));
            }
        }
        Fault::KillSeveral => {
            let mut killed: Vec<String> = ["ingest", "sink"]
                .into_iter()
                .filter(|i| roles.kill(i))
                .map(str::to_owned)
                .collect();
            for s in roles.streams() {
                roles.kill(&s);
                killed.push(s);
            }
            return Heal::Roles(Box::new(move |r| {
                for i in &killed {
                    r.start(i);
                }
            }));
        }
        Fault::ZombieStream => {
            if let Some(p) = roles.procs.get("stream-a") {
                let pid = p.id().to_string();
                let _ = Command::new("kill").args(["-STOP", &pid]).status();
                return Heal::Roles(Box::new(move |_| {
                    let _ = Command::new("kill").args(["-CONT", &pid]).status();
                }));
            }
        }
        Fault::StalledStream => {
            if roles.procs.contains_key("stream-a") {
                let pause = roles.dir.join("pause-stream-a");
                std::fs::write(&pause, b"").unwrap_or_else(|e| panic!("{e}"));
                return Heal::Roles(Box::new(move |_| {
                    let _ = std::fs::remove_file(&pause);
                }));
            }
        }
        Fault::StreamJoins => {
            let id = if roles.procs.contains_key("stream-b") {
                "stream-c"
            } else {
                "stream-b"
            };
            roles.start(id);
            return Heal::Roles(Box::new(move |r: &mut Roles| {
                if let Some(mut p) = r.procs.remove(id) {
                    // Leaves cleanly (SIGTERM), or is killed after 30 s; the schedule goes on.
                    let _ = Command::new("kill")
                        .args(["-TERM", &p.id().to_string()])
                        .status();
                    std::thread::spawn(move || {
                        if p.exited_within(Duration::from_secs(30)).is_none() {
                            p.kill9();
                        }
                    });
                }
            }));
        }
        Fault::KillLeaderBroker | Fault::KillController | Fault::KillBroker => {
            let n = match f {
                Fault::KillLeaderBroker => leader_of(brokers, events),
                Fault::KillController => controller(),
                _ => None,
            }
            .unwrap_or_else(|| 1 + rng.below(3) as u32);
            let service = format!("kafka-{n}");
            signal_service(&service, "KILL");
            return Heal::Service(Box::new(move || stack(&["up", &service])));
        }
        Fault::ClickHouseDown => {
            stack(&["down", "clickhouse"]);
            return Heal::Service(Box::new(|| stack(&["up", "clickhouse"])));
        }
        Fault::ClickHouseFrozen => {
            signal_service("clickhouse", "STOP");
            return Heal::Service(Box::new(|| signal_service("clickhouse", "CONT")));
        }
        Fault::AlertmanagerDown => {
            stack(&["down", "alertmanager"]);
            return Heal::Service(Box::new(|| stack(&["up", "alertmanager"])));
        }
    }
    // Nothing was there to act on (no stream instance).
    Heal::Roles(Box::new(|_| {}))
}

async fn wait_ready(http: &reqwest::Client, roles: &Roles) {
    crate::wait_for("the roles to be ready", Duration::from_secs(90), || async {
        for port in [
            roles.port("ingest"),
            roles.port("sink"),
            roles.port("stream-a"),
        ] {
            let ok = http
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if !ok {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// Every alert of the run as Alertmanager holds it: each alert whose latest state in
/// ClickHouse is FIRING is active there once; a RESOLVED one is not active. Returns how many
/// alerts were compared.
async fn alertmanager_agrees(http: &reqwest::Client, db: &TestDatabase) -> usize {
    let latest: Vec<(String, String)> = db
        .ch
        .client
        .query(
            "SELECT alert_id, argMax(state, revision) FROM alerts FINAL GROUP BY alert_id ORDER BY alert_id",
        )
        .fetch_all()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = std::env::var("BANTER_ALERTMANAGER_PORT").unwrap_or_else(|_| "9093".into());
    let url =
        format!("http://127.0.0.1:{port}/api/v2/alerts?active=true&silenced=true&inhibited=true");
    crate::wait_for(
        "Alertmanager to hold every alert of the run as ClickHouse does",
        Duration::from_secs(120),
        || async {
            let active: Vec<serde_json::Value> =
                http.get(&url).send().await.ok()?.json().await.ok()?;
            let count = |id: &str| {
                active
                    .iter()
                    .filter(|a| {
                        a["annotations"]["alert_id"] == id && a["status"]["state"] == "active"
                    })
                    .count()
            };
            latest
                .iter()
                .all(|(id, state)| count(id) == usize::from(state == "FIRING"))
                .then_some(())
        },
    )
    .await;
    latest.len()
}

/// Where a soak run keeps its files.
pub fn soak_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(unique(name))
}

/// For `Path` users.
pub fn report_path(dir: &Path) -> PathBuf {
    dir.join("report.txt")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_is_visible_from_when_input_past_its_end_was_accepted() {
        // Accepted requests: wall clock, delivery time (out of order across requests).
        let progress = "3000 200000\n1000 100\n2000 61000\n2500 50000\n";
        let seen: HashMap<String, (i64, i64)> = [
            ("a".to_owned(), (1_000, 2_500)), // needs 61 000: accepted at 2 000
            ("b".to_owned(), (100_000, 4_000)), // needs 160 000: accepted at 3 000
            ("c".to_owned(), (500_000, 9_000)), // never got that far: left out
        ]
        .into_iter()
        .collect();
        let mut d: Vec<f64> = visible_delays(progress, &seen, 60_000)
            .iter()
            .map(|v| v.delay_s)
            .collect();
        d.sort_by(f64::total_cmp);
        assert_eq!(d, vec![0.5, 1.0]);
    }
}
