//! What the pipeline wrote, read back as a user would see it: the rollups and alerts topics
//! (`read_committed`, the latest revision per key, as ClickHouse's `ReplacingMergeTree` keeps)
//! and ClickHouse's deduplicated tables.

use std::collections::BTreeMap;
use std::time::Duration;

use banter::Config;
use banter_model::{AvroRecord, ConversationRollup, FunnelRollup, Rollup, WindowKind};
use banter_sink::ClickHouse;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::stack::unique;

/// (account, post, window, start): a rollup's key.
pub type RollupKey = (String, Option<String>, WindowKind, i64);

/// Latest committed row per key, read with `read_committed` like the sink.
pub struct Rollups {
    consumer: BaseConsumer,
    /// Window rollups: latest per key.
    pub rows: BTreeMap<RollupKey, Rollup>,
    /// Funnel rows (the same topic): latest per (campaign, window, start).
    pub funnels: BTreeMap<(String, WindowKind, i64), FunnelRollup>,
    /// Conversation rows (the same topic): latest per (account, content, window, start).
    pub conversations: BTreeMap<(String, Option<String>, WindowKind, i64), ConversationRollup>,
    /// Window rollup records read (every revision).
    pub seen: usize,
}

impl Rollups {
    /// A reader of the rollups topic from its beginning.
    pub fn new(cfg: &Config) -> Self {
        let consumer = from_beginning(cfg, &cfg.kafka.topics.rollups);
        Rollups {
            consumer,
            rows: BTreeMap::new(),
            funnels: BTreeMap::new(),
            conversations: BTreeMap::new(),
            seen: 0,
        }
    }

    /// Reads what arrived since the last call.
    pub fn poll(&mut self) {
        while let Some(m) = self.consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap_or_else(|e| panic!("reading the rollups: {e}"));
            let payload = m.payload().unwrap_or_default();
            let conv = ConversationRollup::codec();
            if banter_model::codec::Codec::<Rollup>::peek_fingerprint(payload)
                == Some(conv.fingerprint())
            {
                let c = conv.decode(payload).unwrap_or_else(|e| panic!("{e:?}"));
                let key = (
                    c.account_id.clone(),
                    c.content_id.clone(),
                    c.window,
                    c.window_start,
                );
                keep_latest(&mut self.conversations, key, c, |c| c.revision);
                continue;
            }
            let funnel = FunnelRollup::codec();
            if banter_model::codec::Codec::<FunnelRollup>::peek_fingerprint(payload)
                == Some(funnel.fingerprint())
            {
                let f = funnel.decode(payload).unwrap_or_else(|e| panic!("{e:?}"));
                let key = (f.campaign_id.clone(), f.window, f.window_start);
                keep_latest(&mut self.funnels, key, f, |f| f.revision);
                continue;
            }
            let r = Rollup::codec()
                .decode(payload)
                .unwrap_or_else(|e| panic!("{e:?}"));
            self.seen += 1;
            let key = (
                r.account_id.to_string(),
                r.content_id.as_deref().map(str::to_owned),
                r.window,
                r.window_start,
            );
            keep_latest(&mut self.rows, key, r, |r| r.revision);
        }
    }
}

/// Keeps `v` under `k` unless a row with a higher revision is there (the last revision wins,
/// as in ClickHouse's `ReplacingMergeTree(revision)`).
fn keep_latest<K: Ord, V>(m: &mut BTreeMap<K, V>, k: K, v: V, revision: impl Fn(&V) -> i64) {
    if m.get(&k).is_none_or(|o| revision(o) <= revision(&v)) {
        m.insert(k, v);
    }
}

/// A `rollups_final` row.
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct FinalRow {
    account_id: String,
    content_id: String,
    window_kind: String,
    window_start_ms: i64,
    window_end_ms: i64,
    revision: i64,
    interactions: i64,
    time_to_n_minutes: Option<f64>,
    unique_engagers: Option<i64>,
    late_events: i64,
}

/// The deduplicated rollups in ClickHouse, keyed like [`Rollups::rows`].
pub async fn clickhouse_rollups(ch: &ClickHouse) -> BTreeMap<RollupKey, Rollup> {
    let rows: Vec<FinalRow> = ch
        .client
        .query(
            "SELECT account_id, content_id, window_kind, window_start_ms, window_end_ms, revision, \
             interactions, time_to_n_minutes, unique_engagers, late_events FROM rollups_final",
        )
        .fetch_all()
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let mut out = BTreeMap::new();
    for r in rows {
        let window = match r.window_kind.as_str() {
            "MINUTE" => WindowKind::Minute,
            "VELOCITY_5M" => WindowKind::Velocity5m,
            "FIRST_15M" => WindowKind::First15m,
            "FIRST_60M" => WindowKind::First60m,
            "HOUR" => WindowKind::Hour,
            other => panic!("unexpected window_kind {other}"),
        };
        let content = (!r.content_id.is_empty()).then_some(r.content_id);
        let key = (
            r.account_id.clone(),
            content.clone(),
            window,
            r.window_start_ms,
        );
        let prev = out.insert(
            key,
            Rollup {
                account_id: r.account_id.into(),
                content_id: content.map(Into::into),
                window,
                window_start: r.window_start_ms,
                window_end: r.window_end_ms,
                revision: r.revision,
                interactions: r.interactions,
                comments: 0,
                live_comments: 0,
                reactions: 0,
                shares: 0,
                story_replies: 0,
                dms_in: 0,
                mentions: 0,
                brand_replies: 0,
                velocity: None,
                early_accel: None,
                time_to_n_minutes: r.time_to_n_minutes,
                unique_engagers: r.unique_engagers,
                late_events: r.late_events,
                emitted_at: 0,
            },
        );
        assert!(prev.is_none(), "rollups_final returned a key twice");
    }
    out
}

/// A consumer of every partition of `topic` from the beginning, `read_committed`.
pub fn from_beginning(cfg: &Config, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer =
        banter_runtime::kafka::consumer_config(&cfg.kafka, "test", &unique("reader"))
            .create()
            .unwrap_or_else(|e| panic!("{e:?}"));
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:?}"));
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap_or_else(|e| panic!("{e:?}"));
    }
    consumer.assign(&tpl).unwrap_or_else(|e| panic!("{e:?}"));
    consumer
}

/// Every spike alert record on the alerts topic, read with `read_committed`.
pub struct Alerts {
    consumer: BaseConsumer,
    /// Every record read, in order.
    pub records: Vec<AlertSeen>,
}

/// What the alert checks look at, from the topic or from ClickHouse.
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
pub struct AlertSeen {
    /// The alert's id (`<account>/<post or ->/<onset>`).
    pub alert_id: String,
    /// FIRING or RESOLVED.
    pub state: String,
    /// The account.
    pub account_id: String,
    /// '' for account alerts.
    pub content_id: String,
    /// The spike's onset.
    pub started_at_ms: i64,
    /// The first minute back to normal (RESOLVED).
    pub ended_at_ms: Option<i64>,
}

impl Alerts {
    /// A reader of the alerts topic from its beginning.
    pub fn new(cfg: &Config) -> Self {
        Alerts {
            consumer: from_beginning(cfg, &cfg.kafka.topics.alerts),
            records: Vec::new(),
        }
    }

    /// Reads what arrived since the last call.
    pub fn poll(&mut self) {
        while let Some(m) = self.consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap_or_else(|e| panic!("reading the alerts: {e}"));
            let a = banter_model::SpikeAlert::codec()
                .decode(m.payload().unwrap_or_default())
                .unwrap_or_else(|e| panic!("{e:?}"));
            self.records.push(AlertSeen {
                alert_id: a.alert_id,
                state: a.state.as_str().to_owned(),
                account_id: a.account_id,
                content_id: a.content_id.unwrap_or_default(),
                started_at_ms: a.started_at,
                ended_at_ms: a.ended_at,
            });
        }
    }
}
