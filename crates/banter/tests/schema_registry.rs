//! The Confluent Schema Registry wire format, against a real registry: Apicurio Registry from
//! the local stack (`scripts/stack.sh up schema-registry`, Confluent's API), with the real
//! Kafka and ClickHouse:
//!
//! * every record topic framed `00` + registry id, the whole pipeline (generator → stream →
//!   sink → ClickHouse) equal to the generator's truth, the schemas registered under the
//!   subjects the strategy names.
//!
//! What Apicurio cannot show here (basic auth needs its OpenID Connect server; an outage on
//! demand; the requests as sent) runs against `banter_testkit::RegistryStandIn`:
//!
//! * readers take both framings on one topic; the requests have the API's shape, with basic
//!   auth; an id the registry does not know is an error naming it; a wrong registry password
//!   fails naming the setting;
//! * while schema lookups fail, the stream and the sink wait and then count everything:
//!   nothing dead-lettered for an outage.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use banter_model::{AvroRecord, ConversationRollup, EngagementEvent, FunnelRollup, Rollup};
use banter_runtime::config::{SubjectStrategy, WireFormat};
use banter_runtime::registry::Registry;
use banter_runtime::Secret;
use banter_testkit::*;
use rdkafka::consumer::Consumer;
use rdkafka::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_on_confluent_framed_topics() {
    let registry = real_schema_registry().await;
    let mut cfg = fresh_pipeline_config("confluent").await;
    cfg.kafka.wire_format = WireFormat::Confluent;
    cfg.kafka.schema_registry.url = registry.clone();
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
    let subjects = registry_get(&registry, "/subjects").await;
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
        let deadline = Instant::now() + Duration::from_secs(30);
        let m = loop {
            assert!(Instant::now() < deadline, "{topic}: no record within 30 s");
            if let Some(m) = c.poll(Duration::from_secs(1)) {
                break m.unwrap();
            }
        };
        let p = m.payload().unwrap();
        assert_eq!(p[0], 0, "{topic}: not confluent-framed");
        let id = u32::from_be_bytes([p[1], p[2], p[3], p[4]]);
        let answer = registry_get(&registry, &format!("/schemas/ids/{id}")).await;
        let schema: serde_json::Value =
            serde_json::from_str(answer["schema"].as_str().unwrap()).unwrap();
        let known: Vec<serde_json::Value> = schemas
            .iter()
            .map(|s| serde_json::from_str(s).unwrap())
            .collect();
        assert!(known.contains(&schema), "{topic}: id {id}: {schema}");
        let record = banter_model::codec::record_full_name(&schema.to_string()).unwrap();
        let subject = format!("{topic}-{record}");
        assert!(
            subjects
                .as_array()
                .unwrap()
                .contains(&serde_json::Value::String(subject.clone())),
            "{subject} not in {subjects}"
        );
        c.unsubscribe();
    }
    db.drop_now(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_schema_lookups_fail_the_pipeline_waits_and_dead_letters_nothing() {
    let registry = RegistryStandIn::start(None).await;
    let mut cfg = fresh_pipeline_config("confluent-outage").await;
    cfg.kafka.wire_format = WireFormat::Confluent;
    cfg.kafka.schema_registry.url = registry.url.clone();
    cfg.kafka.schema_registry.subject_strategy = SubjectStrategy::TopicRecord;
    let db = fresh_database(&cfg).await;
    cfg.clickhouse.database = db.name.clone();
    let dir = test_dir("banter-confluent-outage");
    migrate(&cfg);
    finish(generate(&cfg, &dir, 0), "banter generate");
    // The registry goes down for readers before the stream has read anything.
    registry.set_unavailable(true);
    let stream = start_role(&cfg, "stream", "stream", &dir);
    let sink = start_role(&cfg, "sink", "sink", &dir);
    let failed = || {
        registry
            .seen()
            .iter()
            .filter(|r| r.path.starts_with("/schemas/ids/") && r.status == 503)
            .count()
    };
    wait_for(
        "the stream to meet the outage three times",
        Duration::from_secs(60),
        || async { (failed() >= 3).then_some(()) },
    )
    .await;
    // (Only the stream asks by id while it produces nothing.) Nothing dead-lettered for it.
    let dlq = from_beginning(&cfg, &cfg.kafka.topics.dlq);
    let (_, high) = dlq
        .fetch_watermarks(&cfg.kafka.topics.dlq, 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!(high, 0, "dead letters during the outage");
    registry.set_unavailable(false);
    // Every metric equal to the generator's truth: nothing was lost to the outage.
    clickhouse_match(&db.ch, &dir, Duration::from_secs(120)).await;
    let dead: u64 = db
        .ch
        .client
        .query("SELECT count() FROM dead_letters FINAL WHERE reason != 'late'")
        .fetch_one()
        .await
        .unwrap();
    // (The workload's too-late events are dead-lettered `late`, as clickhouse_match checks.)
    assert_eq!(dead, 0, "records dead-lettered for a registry outage");
    stop(sink);
    stop(stream);
    let log = std::fs::read_to_string(dir.join("stream.log")).unwrap();
    assert!(
        log.contains("503"),
        "the stream did not say why it waited:\n{log}"
    );
    db.drop_now(&cfg).await;
}

/// A reader of a Confluent-framed record waits out a registry that answers 503, and gives up
/// only when told to stop (what the sink and the alert role do).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_reader_waits_for_the_registry_and_stops_when_told() {
    let registry = RegistryStandIn::start(None).await;
    let mut cfg = config();
    cfg.kafka.topics.events = unique("t.wait");
    cfg.kafka.wire_format = WireFormat::Confluent;
    cfg.kafka.schema_registry.url = registry.url.clone();
    let (writer, reader) = tokio::task::spawn_blocking({
        let k = cfg.kafka.clone();
        move || {
            (
                Registry::for_config(&k).unwrap().unwrap(),
                Registry::for_config(&k).unwrap().unwrap(),
            )
        }
    })
    .await
    .unwrap();
    let single = EngagementEvent::codec()
        .encode(&EngagementEvent::empty())
        .unwrap();
    let t = cfg.kafka.topics.events.clone();
    let framed = tokio::task::spawn_blocking({
        let single = single.clone();
        move || writer.frame(&t, &single).unwrap().into_owned()
    })
    .await
    .unwrap();
    registry.set_unavailable(true);
    // Unavailable is not the record's fault.
    let err = reader.unframe_async(&framed).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    // Told to stop while waiting: None, nothing decided about the record.
    let stop = tokio_util::sync::CancellationToken::new();
    let waiting = {
        let (reader, framed, stop) = (reader.clone(), framed.clone(), stop.clone());
        tokio::spawn(async move { reader.unframe_waiting(&framed, &stop).await.is_none() })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    assert!(waiting.await.unwrap(), "gave up without being told to stop");
    // Back after a while: the record reads.
    let back = {
        let registry = registry.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            registry.set_unavailable(false);
        })
    };
    let never = tokio_util::sync::CancellationToken::new();
    let got = reader
        .unframe_waiting(&framed, &never)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..], &single[..]);
    back.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_take_both_framings_and_the_strategy_names_subjects() {
    let registry = RegistryStandIn::start(Some(("sr-key", "sr-secret"))).await;
    let mut cfg = config();
    let topic = unique("t.framing");
    cfg.kafka.topics.events = topic.clone();
    cfg.kafka.wire_format = WireFormat::Confluent;
    cfg.kafka.schema_registry.url = registry.url.clone();
    cfg.kafka.schema_registry.username = "sr-key".into();
    cfg.kafka.schema_registry.password = Secret::new("sr-secret");
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
        cfg2.kafka.schema_registry.username = "sr-key".into();
        cfg2.kafka.schema_registry.password = Secret::new("sr-secret");
        let fresh = Registry::for_config(&cfg2.kafka).unwrap().unwrap();
        assert_eq!(&fresh.unframe(&framed).unwrap()[..], &single[..]);
        // An id the registry does not have is an error naming it, not a panic.
        let mut bogus = framed.clone();
        bogus[1..5].copy_from_slice(&999_999_u32.to_be_bytes());
        let err = fresh.unframe(&bogus).unwrap_err();
        assert!(!err.is_unavailable(), "{err:?}");
        let err = err.to_string();
        // A 404 that is not the registry's "no such schema" (a wrong URL, a proxy) says
        // nothing about the record.
        let mut wrong = cfg2.clone();
        wrong.kafka.schema_registry.url = format!("{url}/wrong-root");
        let lost = Registry::for_config(&wrong.kafka).unwrap().unwrap();
        let e = lost.unframe(&bogus).unwrap_err();
        assert!(e.is_unavailable(), "{e:?}");
        assert!(e.to_string().contains("API root"), "{e}");
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
    // What went over the wire has the API's shape: the registry's content type, basic auth.
    for r in seen.iter().filter(|r| r.method == "POST") {
        assert_eq!(
            r.headers.get("content-type").map(String::as_str),
            Some("application/vnd.schemaregistry.v1+json"),
            "{r:?}"
        );
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert!(body["schema"].is_string(), "{r:?}");
    }
    assert!(
        seen.iter()
            .all(|r| r.headers.contains_key("authorization") && r.status != 401),
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
        r.prepare(&topic, &[EngagementEvent::NAME])
            .unwrap_err()
            .to_string()
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
