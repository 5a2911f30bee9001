//! The foundation works end to end with the real services: Avro events through a real Kafka
//! broker, a table in a real ClickHouse, topic creation.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use banter_model::{AvroRecord, EngagementEvent};
use banter_runtime::kafka::{
    ensure_topics, partition_count, pipeline_topics, producer, TopicOutcome,
};
use banter_testkit::*;
use banter_workload::sample::sample_events;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_events_round_trip_through_real_kafka() {
    let cfg = config();
    let topic = fresh_topic(&cfg, "events", 3).await;
    let events = sample_events(17, 300, 12, 1_764_000_000_000);
    let codec = EngagementEvent::codec();

    let p = producer(&cfg.kafka, "test").unwrap();
    for e in &events {
        let payload = codec.encode(e).unwrap();
        p.send(
            FutureRecord::to(&topic)
                .key(e.account_id.as_bytes())
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|(err, _)| panic!("broker did not acknowledge: {err}"));
    }

    let mut got = BTreeMap::new();
    let mut partition_of_account: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for m in consume(&cfg, &topic, events.len(), Duration::from_secs(60)).await {
        let e = codec.decode(m.payload().unwrap()).unwrap();
        assert_eq!(
            m.key().unwrap(),
            e.account_id.as_bytes(),
            "keyed by account_id"
        );
        partition_of_account
            .entry(e.account_id.clone())
            .or_default()
            .insert(m.partition());
        got.insert(e.event_id.clone(), e);
    }
    assert_eq!(got.len(), events.len(), "no duplicates, none missing");

    for e in &events {
        assert_eq!(
            got.get(&e.event_id),
            Some(e),
            "event {} decoded as sent",
            e.event_id
        );
    }
    for (account, partitions) in &partition_of_account {
        assert_eq!(partitions.len(), 1, "{account} spread over {partitions:?}");
    }
    assert_eq!(partition_count(&cfg.kafka, &topic).unwrap(), Some(3));
}

#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
struct EventRow {
    event_id: String,
    account_id: String,
    kind: String,
    event_time: u32,
    value: Option<f64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_table_round_trip() {
    let cfg = config();
    let db = fresh_database(&cfg).await;
    let client = &db.ch.client;
    client
        .query(
            "CREATE TABLE events (event_id String, account_id String, kind String, \
             event_time DateTime, value Nullable(Float64)) \
             ENGINE = MergeTree() PARTITION BY toYYYYMM(event_time) ORDER BY (account_id, event_time)",
        )
        .execute()
        .await
        .unwrap();

    let rows: Vec<EventRow> = sample_events(5, 50, 4, 1_764_000_000_000)
        .into_iter()
        .map(|e| EventRow {
            event_id: e.event_id,
            account_id: e.account_id,
            kind: e.kind.to_string(),
            event_time: (e.event_time / 1000) as u32,
            value: e.text.map(|t| t.len() as f64),
        })
        .collect();
    let mut insert = client.insert::<EventRow>("events").await.unwrap();
    for r in &rows {
        insert.write(r).await.unwrap();
    }
    insert.end().await.unwrap();

    let mut back: Vec<EventRow> = client
        .query("SELECT ?fields FROM events ORDER BY event_id")
        .fetch_all()
        .await
        .unwrap();
    let mut expected = rows.clone();
    expected.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    back.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    assert_eq!(back, expected);

    let version: String = client.query("SELECT version()").fetch_one().await.unwrap();
    assert_eq!(
        banter_sink::clickhouse::ServerVersion::parse(&version).unwrap(),
        db.ch.version
    );
    db.drop_now(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_topics_are_created_once() {
    let mut cfg = config();
    require_kafka(&cfg).await;
    let prefix = unique("test.topics");
    cfg.kafka.topics.events = format!("{prefix}.events");
    cfg.kafka.topics.rollups = format!("{prefix}.rollups");
    cfg.kafka.topics.provisional = format!("{prefix}.provisional");
    cfg.kafka.topics.alerts = format!("{prefix}.alerts");
    cfg.kafka.topics.dlq = format!("{prefix}.dlq");
    cfg.kafka.topics.checkpoints = format!("{prefix}.checkpoints");
    cfg.kafka.topics.schemas = format!("{prefix}.schemas");
    cfg.kafka.topics.partitions = 4;
    let specs = pipeline_topics(&cfg.kafka);
    let checkpoints = specs
        .iter()
        .find(|s| s.name == cfg.kafka.topics.checkpoints)
        .unwrap();
    assert!(checkpoints
        .config
        .contains(&("cleanup.policy".into(), "compact".into())));
    // The writer schemas: compacted, one partition (read whole by a reader meeting a new one).
    let schemas = specs
        .iter()
        .find(|s| s.name == cfg.kafka.topics.schemas)
        .unwrap();
    assert!(schemas
        .config
        .contains(&("cleanup.policy".into(), "compact".into())));
    assert_eq!(schemas.partitions, 1);
    // Provisional rows: kept a day, not forever (the final rows replace them).
    let provisional = specs
        .iter()
        .find(|s| s.name == cfg.kafka.topics.provisional_topic())
        .unwrap();
    assert!(provisional
        .config
        .contains(&("retention.ms".into(), "86400000".into())));

    let first = ensure_topics(&cfg.kafka, &specs).await.unwrap();
    assert_eq!(first.len(), 7);
    assert!(
        first.iter().all(|(_, o)| *o == TopicOutcome::Created),
        "{first:?}"
    );
    let second = ensure_topics(&cfg.kafka, &specs).await.unwrap();
    assert!(
        second.iter().all(|(name, o)| *o
            == TopicOutcome::Exists {
                partitions: if *name == cfg.kafka.topics.schemas {
                    1
                } else {
                    4
                }
            }),
        "{second:?}"
    );
    assert_eq!(
        partition_count(&cfg.kafka, &cfg.kafka.topics.dlq).unwrap(),
        Some(4)
    );
    assert_eq!(
        partition_count(&cfg.kafka, &format!("{prefix}.missing")).unwrap(),
        None
    );
}
