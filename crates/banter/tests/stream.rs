//! `banter stream` against the real broker: generated workload in, rollups out equal to the
//! generator's expected aggregates and one spike alert (FIRING, then RESOLVED) per injected
//! spike — also after a kill -9 in the middle, and when a second instance joins and the first
//! one leaves.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeSet;
use std::time::Duration;

use banter_model::{AvroRecord, DeadLetter, EngagementEvent};
use banter_testkit::*;
use rdkafka::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_workload_gives_the_expected_rollups_and_dead_letters() {
    let cfg = fresh_pipeline_config("stream").await;
    let dir = test_dir("banter-stream");
    finish(generate(&cfg, &dir, 0), "banter generate");
    // A record that is not an EngagementEvent among them.
    let garbage = b"not avro at all".to_vec();
    let producer = banter_runtime::kafka::producer(&cfg.kafka, "test").unwrap();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&cfg.kafka.topics.events)
                .key("acct-0")
                .payload(&garbage),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    // Events ingest would have refused, written by another producer: a time at i64's end
    // (its window bounds overflowed) and an id with a control character.
    let forged = |id: &str, account: &str, t: i64| {
        let e = EngagementEvent::new(
            id,
            banter_model::Platform::Facebook,
            banter_model::Kind::PostReaction,
            banter_model::Action::Add,
            account,
            t,
        );
        let mut e = e;
        e.content_id = Some("post-forged".into());
        EngagementEvent::codec().encode(&e).unwrap()
    };
    let invalid = [
        forged("forged-1", "acct-0", i64::MAX - 5),
        forged("forged-2", "acct-0\u{1f}x", 1_764_000_000_000),
    ];
    for bytes in &invalid {
        producer
            .send(
                rdkafka::producer::FutureRecord::to(&cfg.kafka.topics.events)
                    .key("acct-0")
                    .payload(bytes),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let stream = start_stream(&cfg, "a", &dir);
    topics_match(&cfg, &dir, Duration::from_secs(120)).await;

    // Events later than the allowed lateness are dead-lettered as `late`, with the event; the
    // record that is not an event as `undecodable`, with its bytes.
    let x = read_expected(&dir);
    let too_late: BTreeSet<String> = x.expected.too_late.iter().cloned().collect();
    assert!(
        !too_late.is_empty(),
        "the workload should have too-late events"
    );
    let dlq = consume(
        &cfg,
        &cfg.kafka.topics.dlq,
        too_late.len() + 3,
        Duration::from_secs(30),
    )
    .await;
    let mut ids = BTreeSet::new();
    let mut undecodable = 0;
    let mut refused = Vec::new();
    for m in dlq {
        let dl = DeadLetter::codec().decode(m.payload().unwrap()).unwrap();
        if dl.reason == "invalid" {
            assert!(invalid.contains(&dl.payload), "{dl:?}");
            refused.push(dl.detail);
            continue;
        }
        if dl.reason == "undecodable" {
            assert_eq!(dl.payload, garbage);
            assert_eq!(dl.source.as_deref(), Some(cfg.kafka.topics.events.as_str()));
            assert!(dl.source_offset.is_some());
            undecodable += 1;
            continue;
        }
        assert_eq!(dl.reason, "late", "{dl:?}");
        assert!(dl.detail.contains("allowed lateness"), "{}", dl.detail);
        ids.insert(
            EngagementEvent::codec()
                .decode(&dl.payload)
                .unwrap()
                .event_id,
        );
    }
    assert_eq!(ids, too_late);
    assert_eq!(undecodable, 1);
    refused.sort();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused[0].contains("account_id"), "{refused:?}");
    assert!(refused[1].contains("event_time"), "{refused:?}");
    stop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_changes_nothing() {
    let cfg = fresh_pipeline_config("stream-kill").await;
    let dir = test_dir("banter-stream-kill");
    let gen = generate(&cfg, &dir, 2500);
    let mut first = start_stream(&cfg, "a", &dir);
    // Kill it once it has committed some output and before the input is complete.
    let mut rollups = Rollups::new(&cfg);
    wait_for("the first rollups", Duration::from_secs(60), || {
        rollups.poll();
        std::future::ready((rollups.seen > 2500).then_some(()))
    })
    .await;
    first.kill9();
    let log = std::fs::read_to_string(dir.join("a.log")).unwrap();
    std::fs::rename(dir.join("a.log"), dir.join("a-killed.log")).unwrap();
    assert!(log.contains("stream started"), "{log}");
    // The same instance comes back (fencing its previous life) and restores from the
    // checkpoints while input keeps arriving.
    let second = start_stream(&cfg, "a", &dir);
    finish(gen, "banter generate");
    topics_match(&cfg, &dir, Duration::from_secs(120)).await;
    stop(second);
    let log = std::fs::read_to_string(dir.join("a.log")).unwrap();
    assert!(
        log.contains("how=\"replayed\"") || log.contains("how=replayed"),
        "no partition was restored by replay:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_joining_and_the_first_leaving_change_nothing() {
    let cfg = fresh_pipeline_config("stream-join").await;
    let dir = test_dir("banter-stream-join");
    let gen = generate(&cfg, &dir, 2500);
    let a = start_stream(&cfg, "a", &dir);
    let mut rollups = Rollups::new(&cfg);
    wait_for("the first rollups", Duration::from_secs(60), || {
        rollups.poll();
        std::future::ready((rollups.seen > 100).then_some(()))
    })
    .await;
    let b = start_stream(&cfg, "b", &dir);
    // Wait until b owns partitions, then let a leave in the middle of the input.
    wait_for(
        "instance b to be assigned partitions",
        Duration::from_secs(60),
        || {
            let log = std::fs::read_to_string(dir.join("b.log")).unwrap_or_default();
            std::future::ready(log.contains("partition assigned").then_some(()))
        },
    )
    .await;
    stop(a);
    finish(gen, "banter generate");
    topics_match(&cfg, &dir, Duration::from_secs(120)).await;
    stop(b);
}
