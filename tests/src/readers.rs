//! What the pipeline wrote, read back as a user would see it: the rollups and alerts topics
//! (`read_committed`, the latest revision per key, as ClickHouse's `ReplacingMergeTree` keeps)
//! and ClickHouse's deduplicated tables.

use std::collections::BTreeMap;
use std::time::Duration;

use banter::Config;
use banter_model::{AvroRecord, ConversationRollup, FunnelRollup, Rollup};
use banter_sink::ClickHouse;
pub use banter_workload::check::AlertSeen;
use banter_workload::check::Observed;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::stack::unique;

/// (account, post, window, start): a rollup's key.
pub use banter_workload::check::RollupKey;

/// The rollups topic read like a user would: the latest committed revision of every key
/// (read with `read_committed`, as ClickHouse's `ReplacingMergeTree` keeps it). Provisional
/// rows of open windows (negative revision), read from their own topic, are kept apart:
/// `observed` holds final rows.
pub struct Rollups {
    consumer: BaseConsumer,
    /// The provisional rows' topic when it is not the rollups topic: provisional window rows
    /// are there and nowhere else.
    apart: Option<String>,
    /// Window, funnel and conversation rows: the latest final row of each key.
    pub observed: Observed,
    /// Provisional window rows: the latest of each key.
    pub provisional: Observed,
    /// Final window rollup records read (every revision, provisional rows not counted).
    pub seen: usize,
}

impl Rollups {
    /// A reader of the rollups and provisional topics from their beginning.
    pub fn new(cfg: &Config) -> Self {
        let t = &cfg.kafka.topics;
        let apart = t.separate_provisional_topic();
        let consumer = match &apart {
            Some(provisional) => from_beginning_all(cfg, &[&t.rollups, provisional]),
            None => from_beginning(cfg, &t.rollups),
        };
        Rollups {
            consumer,
            apart,
            observed: Observed::default(),
            provisional: Observed::default(),
            seen: 0,
        }
    }

    /// Window rollups: the latest of each key.
    pub fn rows(&self) -> &BTreeMap<RollupKey, Rollup> {
        &self.observed.rollups
    }

    /// Reads what arrived since the last call.
    pub fn poll(&mut self) {
        while let Some(m) = self.consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap_or_else(|e| panic!("reading the rollups: {e}"));
            let payload = m.payload().unwrap_or_default();
            let fingerprint = banter_model::codec::Codec::<Rollup>::peek_fingerprint(payload);
            let conv = ConversationRollup::codec();
            let on_provisional = self.apart.as_deref() == Some(m.topic());
            assert!(
                !on_provisional
                    || fingerprint.is_none_or(
                        |f| f != conv.fingerprint() && f != FunnelRollup::codec().fingerprint()
                    ),
                "a funnel or conversation row on the provisional topic {}",
                m.topic()
            );
            if fingerprint == Some(conv.fingerprint()) {
                let c = conv.decode(payload).unwrap_or_else(|e| panic!("{e:?}"));
                self.observed.add_conversation(c);
                continue;
            }
            let funnel = FunnelRollup::codec();
            if fingerprint == Some(funnel.fingerprint()) {
                let f = funnel.decode(payload).unwrap_or_else(|e| panic!("{e:?}"));
                self.observed.add_funnel(f);
                continue;
            }
            let r = Rollup::codec()
                .decode(payload)
                .unwrap_or_else(|e| panic!("{e:?}"));
            // The provisional topic holds provisional window rows and nothing else.
            assert!(
                !on_provisional || r.revision < 0,
                "a final row on the provisional topic {}: {r:?}",
                m.topic()
            );
            if r.revision < 0 {
                assert!(
                    self.apart.is_none() || on_provisional,
                    "a provisional row on the rollups topic {}: {r:?}",
                    m.topic()
                );
                self.provisional.add_rollup(r);
                continue;
            }
            self.seen += 1;
            self.observed.add_rollup(r);
        }
    }
}

/// The deduplicated rollups in ClickHouse, keyed like [`Rollups::rows`].
pub async fn clickhouse_rollups(ch: &ClickHouse) -> BTreeMap<RollupKey, Rollup> {
    banter::verify::read_observed(ch)
        .await
        .unwrap_or_else(|e| panic!("reading ClickHouse: {e}"))
        .rollups
}

/// A consumer of every partition of `topic` from the beginning, `read_committed`.
pub fn from_beginning(cfg: &Config, topic: &str) -> BaseConsumer {
    from_beginning_all(cfg, &[topic])
}

/// A consumer of every partition of each of `topics` from the beginning, `read_committed`.
pub fn from_beginning_all(cfg: &Config, topics: &[&str]) -> BaseConsumer {
    let consumer: BaseConsumer =
        banter_runtime::kafka::consumer_config(&cfg.kafka, "test", &unique("reader"))
            .create()
            .unwrap_or_else(|e| panic!("{e:?}"));
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e:?}"));
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap_or_else(|e| panic!("{e:?}"));
        }
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
            self.records.push(AlertSeen::from(&a));
        }
    }
}
