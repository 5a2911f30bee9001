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

/// A partition whose input waits behind another producer's open transaction (a publisher that
/// died mid-transaction, until the broker aborts it) is not idle: what was committed behind that
/// transaction arrives late, and must be counted, not dead-lettered as too late because the
/// watermark moved on in the meantime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_behind_an_open_transaction_is_not_idle() {
    use banter_model::WindowKind;
    use rdkafka::consumer::Consumer;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    let cfg = fresh_pipeline_config("stream-open-tx").await;
    let dir = test_dir("banter-stream-open-tx");
    let topic = cfg.kafka.topics.events.clone();
    let t0: i64 = 1_764_000_000_000; // a minute's start
    let hour = 3_600_000;
    let event =
        |id: &str, account: &str, t: i64| comment(id, account, &format!("post-{account}"), t);
    let plain: BaseProducer = banter_runtime::kafka::producer_config(&cfg.kafka, "test")
        .create()
        .unwrap();
    let send = |p: &BaseProducer, partition: i32, id: &str, account: &str, t: i64| {
        let bytes = event(id, account, t);
        p.send(
            BaseRecord::to(&topic)
                .partition(partition)
                .key(account)
                .payload(&bytes),
        )
        .unwrap();
        p.flush(Duration::from_secs(10)).unwrap();
    };
    // Partition 1 is three hours ahead: an idle partition's watermark would move to it.
    send(&plain, 1, "p1-a", "acct-p1", t0 + 3 * hour);
    send(&plain, 0, "p0-a", "acct-p0", t0);
    // A publisher's transaction stays open on partition 0, and another publisher commits an
    // event behind it: a read_committed consumer sees neither until the transaction ends.
    let open: BaseProducer = banter_runtime::kafka::producer_config(&cfg.kafka, "test")
        .set("transactional.id", unique("open-tx"))
        .set("transaction.timeout.ms", "300000")
        .create()
        .unwrap();
    open.init_transactions(Duration::from_secs(30)).unwrap();
    open.begin_transaction().unwrap();
    send(&open, 0, "p0-b", "acct-p0", t0 + 20_000);
    send(&plain, 0, "p0-c", "acct-p0", t0 + 30_000);
    // Partition 2 shows when the stream has moved idle partitions on, twice.
    send(&plain, 2, "p2-a", "acct-p2", t0 + hour);
    let stream = start_stream(&cfg, "a", &dir);
    let mut rollups = Rollups::new(&cfg);
    let minute = |r: &Rollups, account: &str, start: i64| {
        r.rows()
            .get(&(
                account.to_owned(),
                Some(format!("post-{account}")),
                WindowKind::Minute,
                start,
            ))
            .map(|r| r.interactions)
    };
    wait_for(
        "partition 2's minute closed by its idle watermark",
        Duration::from_secs(60),
        || {
            rollups.poll();
            std::future::ready(minute(&rollups, "acct-p2", t0 + hour).map(|_| ()))
        },
    )
    .await;
    // Ahead of partition 1, at a minute's last second: closed by the wall clock once quiet.
    let later = t0 + 4 * hour;
    send(&plain, 2, "p2-b", "acct-p2", later + 59_000);
    wait_for(
        "partition 2's second minute closed by its idle watermark",
        Duration::from_secs(60),
        || {
            rollups.poll();
            std::future::ready(minute(&rollups, "acct-p2", later).map(|_| ()))
        },
    )
    .await;
    assert_eq!(
        minute(&rollups, "acct-p0", t0),
        None,
        "partition 0's minute closed while input waited behind an open transaction"
    );
    // The open minute is shown as it stands (stream.provisional_interval_ms, 1 s): the one
    // event readable so far, as a provisional row.
    let key = (
        "acct-p0".to_owned(),
        Some("post-acct-p0".to_owned()),
        WindowKind::Minute,
        t0,
    );
    let shown = wait_for(
        "partition 0's open minute shown provisionally",
        Duration::from_secs(30),
        || {
            rollups.poll();
            std::future::ready(
                rollups
                    .provisional
                    .rollups
                    .get(&key)
                    .map(|r| (r.interactions, r.revision)),
            )
        },
    )
    .await;
    assert_eq!(shown.0, 1, "the provisional row counts what was readable");
    assert!(
        shown.1 < 0,
        "a provisional row's revision is negative: {}",
        shown.1
    );
    open.commit_transaction(Duration::from_secs(30)).unwrap();
    let counted = wait_for(
        "partition 0's minute with all three events",
        Duration::from_secs(60),
        || {
            rollups.poll();
            std::future::ready(minute(&rollups, "acct-p0", t0))
        },
    )
    .await;
    assert_eq!(counted, 3, "events behind the open transaction were lost");
    // Nothing dead-lettered: the dead-letter topic read to its end.
    let dlq_topic = &cfg.kafka.topics.dlq;
    let dlq = from_beginning(&cfg, dlq_topic);
    let (_, end) = dlq
        .fetch_watermarks(dlq_topic, 0, Duration::from_secs(10))
        .unwrap();
    wait_for(
        "the dead-letter topic read to its end",
        Duration::from_secs(30),
        || {
            if let Some(m) = dlq.poll(Duration::from_millis(200)) {
                let dl = DeadLetter::codec()
                    .decode(m.unwrap().payload().unwrap())
                    .unwrap();
                panic!("dead-lettered: {dl:?}");
            }
            let at = dlq
                .position()
                .ok()
                .and_then(|t| t.find_partition(dlq_topic, 0)?.offset().to_raw());
            std::future::ready((end == 0 || at.is_some_and(|o| o >= end)).then_some(()))
        },
    )
    .await;
    stop(stream);
}

/// A post spikes in a minute the watermark has not closed: its alert goes out early, from the
/// count so far (FIRING, revision 0), and the closed minute's FIRING (revision 1) with the same
/// id and onset follows it on the alerts topic. Expected values from the rule (README "Early
/// alerts"): 40 minutes around 3 a minute, then 20 in minute 40 and 20 so far in minute 41
/// (z about 9.8 each against mean 3 and scale √3): with both still open, two hits of three
/// fire, onset minute 40.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spike_in_an_open_minute_alerts_before_it_closes_and_the_close_confirms_it() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    let cfg = fresh_pipeline_config("stream-early-alert").await;
    let dir = test_dir("banter-stream-early-alert");
    let topic = cfg.kafka.topics.events.clone();
    let t0: i64 = 1_764_000_000_000; // a minute's start
    let minute = 60_000;
    let producer: BaseProducer = banter_runtime::kafka::producer_config(&cfg.kafka, "test")
        .create()
        .unwrap();
    let mut n = 0;
    let mut send = |t: i64| {
        n += 1;
        let bytes = comment(&format!("e-{n}"), "acct-s", "post-s", t);
        producer
            .send(
                BaseRecord::to(&topic)
                    .partition(0)
                    .key("acct-s")
                    .payload(&bytes),
            )
            .unwrap();
    };
    for m in 0..40 {
        for i in 0..[2, 3, 4, 3, 2, 4][m as usize % 6] {
            send(t0 + m * minute + 1_000 + i * 10_000);
        }
    }
    for i in 0..20 {
        send(t0 + 40 * minute + 20_000 + i * 1_000);
    }
    for i in 0..20 {
        send(t0 + 41 * minute + i * 1_000);
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let id = format!("acct-s/post-s/{}", t0 + 40 * minute);
    let stream = start_stream(&cfg, "a", &dir);
    let mut alerts = Alerts::new(&cfg);
    let early = wait_for(
        "the early alert of the spike in the open minute",
        Duration::from_secs(60),
        || {
            alerts.poll();
            std::future::ready(alerts.records.iter().find(|a| a.alert_id == id).cloned())
        },
    )
    .await;
    assert_eq!(
        (early.state.as_str(), early.revision, early.started_at_ms),
        ("FIRING", 0, t0 + 40 * minute),
        "fired early, onset the spike's minute: {:?}",
        alerts.records
    );
    // Event time moves on: minute 41 closes and its FIRING confirms the early one.
    send(t0 + 43 * minute);
    producer.flush(Duration::from_secs(10)).unwrap();
    wait_for(
        "the closed minute's FIRING",
        Duration::from_secs(60),
        || {
            alerts.poll();
            std::future::ready(
                alerts
                    .records
                    .iter()
                    .any(|a| a.alert_id == id && a.revision == 1)
                    .then_some(()),
            )
        },
    )
    .await;
    let post: Vec<(&str, i64)> = alerts
        .records
        .iter()
        .filter(|a| a.content_id == "post-s")
        .map(|a| (a.state.as_str(), a.revision))
        .collect();
    assert_eq!(
        post,
        [("FIRING", 0), ("FIRING", 1)],
        "the early alert, then its confirmation, nothing withdrawn"
    );
    stop(stream);
}

/// Two instances with one instance id: the newer one fences the older one, whose consumer can
/// no longer be used. The older one exits (for its supervisor to restart it) instead of holding
/// partitions it cannot read, and the results are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_fenced_by_its_namesake_exits_and_nothing_is_lost() {
    let cfg = fresh_pipeline_config("stream-fenced").await;
    let dir = test_dir("banter-stream-fenced");
    let gen = generate(&cfg, &dir, 2500);
    let mut first = start_stream(&cfg, "a", &dir);
    let mut rollups = Rollups::new(&cfg);
    wait_for("the first rollups", Duration::from_secs(60), || {
        rollups.poll();
        std::future::ready((rollups.seen > 1000).then_some(()))
    })
    .await;
    // Its consumer is fenced (or its producer, when it is fenced while starting a new one).
    let second = tokio::task::block_in_place(|| {
        fenced_by_namesake(&mut first, &dir, "a", || start_stream(&cfg, "a", &dir))
    });
    finish(gen, "banter generate");
    topics_match(&cfg, &dir, Duration::from_secs(120)).await;
    stop(second);
}

/// A provisional topic that does not exist (an upgrade without `banter topics`, on a broker
/// that creates no topics on use) would fail every transaction, final rows included: the
/// stream stops at its start instead, naming the topic and the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_provisional_topic_stops_the_stream_at_its_start_naming_the_key() {
    let mut cfg = fresh_pipeline_config("stream-no-provisional").await;
    let missing = unique("test.stream-no-provisional.missing");
    cfg.kafka.topics.provisional = missing.clone();
    let dir = test_dir("banter-stream-no-provisional");
    let mut stream = start_stream(&cfg, "s1", &dir);
    let status = stream
        .exited_within(Duration::from_secs(60))
        .expect("the stream exits within 60 s");
    assert!(!status.success(), "{status:?}");
    let log = std::fs::read_to_string(dir.join("s1.log")).unwrap();
    assert!(
        log.contains(&missing) && log.contains("kafka.topics.provisional"),
        "{log}"
    );
}

/// Provisional rows go out the moment they are shown, outside the batch's transaction, with
/// `stream.provisional_in_transaction = false`: with the stream stalled before its
/// batch commits (the `stream.before_commit` pause point), the batch's events in an open
/// minute are already readable (`read_committed`) as a provisional row, while the stream's
/// committed input offset is still before them; resumed, the minute's final row replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisional_rows_are_readable_before_their_batch_commits() {
    stalled_batch_with_provisional_rows(false).await;
}

/// With `stream.provisional_in_transaction = true` (the default) the same stalled batch shows
/// nothing new until it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisional_rows_in_the_transaction_wait_for_its_commit() {
    stalled_batch_with_provisional_rows(true).await;
}

/// Expected by hand: 3 events in a minute, then 4 more in it while the stream is stalled
/// before its next commit, then one 5 minutes later that closes the minute: provisional rows
/// counting 3, then up to 7 (the 4 may come in more than one batch: the stalled one holds 1
/// to 4 of them), the final row 7.
async fn stalled_batch_with_provisional_rows(in_transaction: bool) {
    use banter_model::WindowKind;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{Offset, TopicPartitionList};

    let mut cfg = fresh_pipeline_config("stream-provisional-stalled").await;
    cfg.stream.provisional_in_transaction = in_transaction;
    let dir = test_dir("banter-stream-provisional-stalled");
    let topic = cfg.kafka.topics.events.clone();
    let t0: i64 = 1_764_000_000_000; // a minute's start
    let producer: BaseProducer = banter_runtime::kafka::producer_config(&cfg.kafka, "test")
        .create()
        .unwrap();
    let send = |ts: &[i64]| {
        for t in ts {
            let bytes = comment(&format!("e-{t}"), "acct-v", "post-v", *t);
            producer
                .send(
                    BaseRecord::to(&topic)
                        .partition(0)
                        .key("acct-v")
                        .payload(&bytes),
                )
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
    };
    let committed = {
        let probe: BaseConsumer =
            banter_runtime::kafka::consumer_config(&cfg.kafka, "test", &cfg.stream.group_id)
                .create()
                .unwrap();
        let topic = topic.clone();
        move || {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, 0);
            let c = probe
                .committed_offsets(tpl, Duration::from_secs(10))
                .unwrap();
            match c.find_partition(&topic, 0).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            }
        }
    };
    send(&[t0 + 1_000, t0 + 2_000, t0 + 3_000]);
    let pause = dir.join("pause");
    let stream = start_role_with(
        &cfg,
        "stream",
        "a",
        &dir,
        &[
            ("BANTER_FAILPOINTS", "stream.before_commit"),
            ("BANTER_PAUSE_FILE", pause.to_str().unwrap()),
            // Every batch shows what changed (batches are 250 ms apart when quiet).
            ("BANTER_STREAM__PROVISIONAL_INTERVAL_MS", "100"),
        ],
    );
    let key = (
        "acct-v".to_owned(),
        Some("post-v".to_owned()),
        WindowKind::Minute,
        t0,
    );
    let mut rollups = Rollups::new(&cfg);
    // The open minute's provisional row once `enough` says so: (count, revision).
    async fn shown(
        rollups: &mut Rollups,
        key: &RollupKey,
        what: &str,
        enough: impl Fn(i64) -> bool,
    ) -> (i64, i64) {
        wait_for(what, Duration::from_secs(60), || {
            rollups.poll();
            let row = rollups.provisional.rollups.get(key);
            std::future::ready(
                row.filter(|r| enough(r.interactions))
                    .map(|r| (r.interactions, r.revision)),
            )
        })
        .await
    }
    let (_, first) = shown(&mut rollups, &key, "the 3 events shown", |n| n == 3).await;
    wait_for(
        "the first 3 events committed",
        Duration::from_secs(60),
        || std::future::ready((committed() == 3).then_some(())),
    )
    .await;
    // The next batch with a transaction stalls before its commit.
    std::fs::write(&pause, b"").unwrap();
    send(&[t0 + 4_000, t0 + 5_000, t0 + 6_000, t0 + 7_000]);
    let log = || std::fs::read_to_string(dir.join("a.log")).unwrap();
    wait_for(
        "the stream stalled before its commit",
        Duration::from_secs(60),
        || {
            std::future::ready(
                log()
                    .contains("pausepoint stream.before_commit: paused")
                    .then_some(()),
            )
        },
    )
    .await;
    if in_transaction {
        // Nothing new is readable while the batch is not committed: a bounded look of 3 s
        // (the stalled batch, 250 ms or more after the last showing, shows the changed key;
        // apart, the other test reads it while stalled).
        let until = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < until {
            rollups.poll();
        }
        let row = &rollups.provisional.rollups[&key];
        assert_eq!(row.interactions, 3, "a row of the stalled batch: {row:?}");
    } else {
        let (count, second) = shown(
            &mut rollups,
            &key,
            "the stalled batch's events shown",
            |n| n > 3,
        )
        .await;
        assert!(count <= 7, "{count} events shown of 7");
        assert!(
            first < second && second < 0,
            "a later provisional row has a higher, still negative revision: {first}, {second}"
        );
    }
    assert!(
        !log().contains("pausepoint stream.before_commit: resumed"),
        "the stream is still stalled"
    );
    assert_eq!(
        committed(),
        3,
        "the stalled batch's input offsets are not committed"
    );
    // Resumed, the batch commits and shows the rest; a later event closes the minute.
    std::fs::remove_file(&pause).unwrap();
    shown(&mut rollups, &key, "the 7 events shown", |n| n == 7).await;
    send(&[t0 + 5 * 60_000]);
    let closed = wait_for("the minute's final row", Duration::from_secs(60), || {
        rollups.poll();
        std::future::ready(rollups.rows().get(&key).map(|r| r.interactions))
    })
    .await;
    assert_eq!(closed, 7, "the final row counts every event");
    assert_eq!(committed(), 8, "every event committed");
    stop(stream);
}

/// An Instagram comment on `post` of `account` at `t`, encoded as on the events topic.
fn comment(id: &str, account: &str, post: &str, t: i64) -> Vec<u8> {
    use banter_model::{Action, Kind, Platform};
    let mut e = EngagementEvent::new(
        id,
        Platform::Instagram,
        Kind::Comment,
        Action::Add,
        account,
        t,
    );
    e.content_id = Some(post.to_owned());
    EngagementEvent::codec().encode(&e).unwrap()
}
