//! The Confluent Schema Registry wire format. No Confluent-compatible registry can be installed
//! on this machine (see `banter_testkit::schema_registry`), so the registry is a stand-in that
//! answers Confluent's documented REST API and keeps the requests; Kafka and ClickHouse are
//! the real ones:
//!
//! * every record topic framed `00` + registry id, the whole pipeline (generator → stream →
//!   sink → ClickHouse) equal to the generator's truth, the schemas registered under the
//!   subjects the strategy names, with basic auth;
//! * readers take both framings on one topic; an id the registry does not know is an error
//!   naming it; a wrong registry password fails naming the setting.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use banter_model::{AvroRecord, ConversationRollup, EngagementEvent, FunnelRollup, Rollup};
use banter_runtime::config::{SubjectStrategy, WireFormat};
use banter_runtime::registry::Registry;
use banter_runtime::Secret;
use banter_testkit::*;
use rdkafka::consumer::Consumer;
use rdkafka::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_on_confluent_framed_topics() {
    let registry = RegistryStandIn::start(Some(("sr-key", "sr-secret"))).await;
    let mut cfg = fresh_pipeline_config("confluent").await;
    cfg.kafka.wire_format = WireFormat::Confluent;
    cfg.kafka.schema_registry.url = registry.url.clone();
    cfg.kafka.schema_registry.username = "sr-key".into();
    cfg.kafka.schema_registry.password = Secret::new("sr-secret");
    cfg.kafka.schema_registry.subject_strategy = SubjectStrategy::TopicRecord;
    let db = fresh_database(&cfg).await;
    cfg.clickhouse.database = db.name.clone();
    let dir = test_dir("banter-confluent");
    migrate(&cfg);
    // banter_cmd passes the wire format and the registry to every process.
    finish(generate(&cfg, &dir, 0), "banter generate");
    let stream = start_role(&cfg, "stream", "stream", &dir);
    let sink = start_role(&cfg, "sink", "sink", &dir);
    // Every metric equal to the generator's truth, through framed topics.
    clickhouse_match(&db.ch, &dir, Duration::from_secs(120)).await;
    stop(sink);
    stop(stream);

    // On the wire: `00` and an id the registry has for the record's schema, registered under
    // `<topic>-<record full name>`.
    for (topic, schemas) in [
        (&cfg.kafka.topics.events, vec![EngagementEvent::SCHEMA]),
        (
            &cfg.kafka.topics.rollups,
            vec![
                Rollup::SCHEMA,
                FunnelRollup::SCHEMA,
                ConversationRollup::SCHEMA,
            ],
        ),
    ] {
        let c = from_beginning(&cfg, topic);
        let m = loop {
            if let Some(m) = c.poll(Duration::from_secs(5)) {
                break m.unwrap();
            }
        };
        let p = m.payload().unwrap();
        assert_eq!(p[0], 0, "{topic}: not confluent-framed");
        let id = u32::from_be_bytes([p[1], p[2], p[3], p[4]]);
        let schema = registry.schema(id).unwrap_or_default();
        assert!(
            schemas.contains(&schema.as_str()),
            "{topic}: id {id}: {schema}"
        );
        let record = banter_model::codec::record_full_name(&schema).unwrap();
        let subject = format!("{topic}-{record}");
        assert!(
            registry.subjects().contains(&subject),
            "{subject} not in {:?}",
            registry.subjects()
        );
        c.unsubscribe();
    }
    // What went over the wire has the API's shape: the registry's content type, basic auth.
    let posts: Vec<_> = registry
        .seen()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert!(!posts.is_empty());
    for r in &posts {
        assert_eq!(
            r.headers.get("content-type").map(String::as_str),
            Some("application/vnd.schemaregistry.v1+json"),
            "{r:?}"
        );
        assert!(r.headers.contains_key("authorization"), "{r:?}");
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert!(body["schema"].is_string(), "{r:?}");
    }
    db.drop_now(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_take_both_framings_and_the_strategy_names_subjects() {
    let registry = RegistryStandIn::start(None).await;
    let mut cfg = config();
    let topic = unique("t.framing");
    cfg.kafka.topics.events = topic.clone();
    cfg.kafka.wire_format = WireFormat::Confluent;
    cfg.kafka.schema_registry.url = registry.url.clone();
    let url = registry.url.clone();
    let t = topic.clone();
    tokio::task::spawn_blocking(move || {
        let r = Registry::for_config(&cfg.kafka).unwrap().unwrap();
        let e = EngagementEvent::empty();
        let single = EngagementEvent::codec().encode(&e).unwrap();
        let framed = r.frame(&t, &single).unwrap().into_owned();
        assert_eq!(framed[0], 0);
        assert_eq!(framed.len(), single.len() - 10 + 5);
        // Both framings read back to the same single-object bytes.
        assert_eq!(&r.unframe(&framed).unwrap()[..], &single[..]);
        assert_eq!(&r.unframe(&single).unwrap()[..], &single[..]);
        // A second client learns the id from the registry (nothing cached).
        let mut cfg2 = config();
        cfg2.kafka.wire_format = WireFormat::Confluent;
        cfg2.kafka.schema_registry.url = url.clone();
        let fresh = Registry::for_config(&cfg2.kafka).unwrap().unwrap();
        assert_eq!(&fresh.unframe(&framed).unwrap()[..], &single[..]);
        // An id the registry does not have is an error naming it, not a panic.
        let mut bogus = framed.clone();
        bogus[1..5].copy_from_slice(&999_999_u32.to_be_bytes());
        let err = fresh.unframe(&bogus).unwrap_err();
        assert!(err.contains("999999") && err.contains("404"), "{err}");
    })
    .await
    .unwrap();
    // TopicNameStrategy: `<topic>-value`.
    assert!(
        registry.subjects().contains(&format!("{topic}-value")),
        "{:?}",
        registry.subjects()
    );
    // Only the first client registered, and each new id was fetched once.
    let seen = registry.seen();
    assert_eq!(
        seen.iter().filter(|r| r.method == "POST").count(),
        1,
        "{seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|r| r.path == "/schemas/ids/1").count(),
        1,
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_registry_password_is_refused_naming_the_setting() {
    let registry = RegistryStandIn::start(Some(("sr-key", "sr-secret"))).await;
    let mut cfg = config();
    cfg.kafka.topics.events = unique("t.auth");
    cfg.kafka.wire_format = WireFormat::Confluent;
    cfg.kafka.schema_registry.url = registry.url.clone();
    cfg.kafka.schema_registry.username = "sr-key".into();
    cfg.kafka.schema_registry.password = Secret::new("wrong");
    let topic = cfg.kafka.topics.events.clone();
    let err = tokio::task::spawn_blocking(move || {
        let r = Registry::for_config(&cfg.kafka).unwrap().unwrap();
        r.prepare(&topic, &[EngagementEvent::NAME]).unwrap_err()
    })
    .await
    .unwrap();
    assert!(
        err.contains("401") && err.contains("kafka.schema_registry.username"),
        "{err}"
    );
    // `config check --connect` says so too.
    let mut c = config();
    c.kafka.schema_registry.url = registry.url.clone();
    c.kafka.schema_registry.username = "sr-key".into();
    c.kafka.schema_registry.password = Secret::new("wrong");
    let probe = banter_runtime::registry::probe(&c.kafka.schema_registry).await;
    assert!(probe.is_err_and(|e| e.contains("401")));
    c.kafka.schema_registry.password = Secret::new("sr-secret");
    let probe = banter_runtime::registry::probe(&c.kafka.schema_registry).await;
    assert!(probe.is_ok(), "{probe:?}");
}
