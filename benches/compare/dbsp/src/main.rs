//! The side-by-side comparison's fourth engine: Feldera's `dbsp` computing what `banter stream`
//! computes for MINUTE and VELOCITY_5M rows, with DESIGN.md's semantics ("Time, lateness and
//! exactly-once"), driven from the events topic through rdkafka.
//!
//! What goes where:
//!
//! * **The driver** (this loop) does what depends on arrival order, which a relational circuit
//!   cannot express: per-partition watermarks (highest event time seen, counted only up to the
//!   event's `received_at`, minus 60 s), dropping events more than the allowed lateness (1 h)
//!   behind their partition's watermark, and remembering PLATFORM_DELIVERY ids for 36 h
//!   whatever minute they fall in (a redelivery is a duplicate). Once the input is read to its
//!   end, a partition quiet for the idle timeout moves its watermark on with the wall clock, as
//!   in banter and the Kafka Streams application.
//! * **The circuit** (one dbsp worker) does the rest incrementally: `distinct` over
//!   the admitted events (minute, event id, account, post, delta: a duplicate delivery is the
//!   same tuple) counts each once per minute; `aggregate_linear` sums the interaction deltas
//!   and the events (a window with events but no net interactions is still a window, as in
//!   the other engines) per
//!   (minute, account) and (minute, post); the 5-minute velocity is a linear aggregate of the
//!   minutes, each counted in the five windows containing it; two `window` operators release a
//!   window once the watermark has passed its end, and again whenever a late event changes it
//!   while it can still change. The `distinct`'s events below the lateness horizon are given
//!   back (`accumulate_integrate_trace_retain_keys`), and so are the windows' own traces. The
//!   aggregates are not: dbsp 0.349's `aggregate_linear_retain_keys` bounds a trace its
//!   aggregate does not read (the aggregate reads an accumulate trace of an internal stream),
//!   so they keep every minute of a run and its memory grows with the input's span.
//! * **Output**: every released window is written as a rollup record (the same Avro as banter's)
//!   keyed by account; the records and the input offsets are committed in one Kafka
//!   transaction per step (at most every 250 ms, banter's `stream.max_batch_ms`).
//!
//! A window is released once every partition's watermark has passed it (the lowest, as in
//! Flink); events are admitted by their own partition's watermark (as in banter and the Kafka
//! Streams application), so the counts equal theirs. The circuit's state is in memory only: the
//! output is exactly-once for a run, but a restarted process would start from the committed
//! offsets with empty state (dbsp's checkpoints are not used here), unlike the other engines.
//!
//! Usage: banter-compare-dbsp BOOTSTRAP INPUT OUTPUT GROUP_ID [IDLE_MS]
//! Prints `caught-up` once its committed offsets reach the input's end, with the time from
//! start to its first record (joining the consumer group, starting the producer's
//! transactions): the wall time the backlog runs count, not the engine's work.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use banter_model::{Codec, EngagementEvent, EventTimeSource, Rollup, SmolStr, WindowKind};
use dbsp::dynamic::{DowncastTrait, DynData};
use dbsp::operator::dynamic::distinct::DistinctFactories;
use dbsp::typed_batch::{IndexedZSetReader, SpineSnapshot, TypedBox};
use dbsp::utils::{Tup2, Tup3, Tup5};
use dbsp::Runtime;
use dbsp::{OrdIndexedZSet, OrdZSet, OutputHandle, RootCircuit, ZSetHandle, ZWeight};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const MINUTE: i64 = 60_000;
const OUT_OF_ORDERNESS: i64 = 60_000;
const LATENESS: i64 = 3_600_000;
const REDELIVERY: i64 = 36 * 3_600_000;
/// banter's `stream.max_batch_ms`: one transaction per 250 ms at most.
const BATCH: Duration = Duration::from_millis(250);

/// An admitted event: minute, event id, account, post ("" for none), interaction delta.
type Event = Tup5<i64, String, String, String, i64>;
/// A window's count: keyed by its start, the account, the post and the count.
type Windows = OrdIndexedZSet<i64, Tup3<String, String, Count>>;
/// A window's interactions (the sum of the deltas) and its events.
type Count = Tup2<i64, i64>;

struct Circuit {
    events: ZSetHandle<Event>,
    /// The minute below which windows are closed (every partition's watermark has passed
    /// them). A Z-set whose waterline the circuit keeps: a transaction may take several steps,
    /// and a plain input stream holds its value for the first only.
    closed: ZSetHandle<i64>,
    /// The lowest window start still released: the horizon of the previous step's `closed`
    /// (below it nothing can change any more; a backlog's watermark may jump hours in one
    /// step, and the windows it passes are released all the same). A waterline too.
    low: ZSetHandle<i64>,
    minutes: OutputHandle<SpineSnapshot<Windows>>,
    velocity: OutputHandle<SpineSnapshot<Windows>>,
}

fn build(circuit: &mut RootCircuit) -> Result<Circuit> {
    let (events, events_h) = circuit.add_input_zset::<Event>();
    let (closed, closed_h) = circuit.add_input_zset::<i64>();
    let (low, low_h) = circuit.add_input_zset::<i64>();
    let closed = closed.waterline_monotonic(|| NEVER, |t: &i64| *t);
    let horizon = low.waterline_monotonic(|| NEVER, |t: &i64| *t);
    // The released MINUTE windows: starts in [low, closed); VELOCITY_5M windows: starts in
    // [low - 4 min, closed - 4 min).
    let minute_bounds = horizon.apply2(&closed, |l, c| {
        (TypedBox::new(value(l)), TypedBox::new(value(c)))
    });
    let velocity_bounds = horizon.apply2(&closed, |l, c| {
        (
            TypedBox::new(value(l) - 4 * MINUTE),
            TypedBox::new(value(c) - 4 * MINUTE),
        )
    });

    // Duplicates: one (minute, id) counts once; ids below the horizon are forgotten (the
    // accumulate trace is the one `distinct` reads at the top level).
    events.accumulate_integrate_trace_retain_keys(&horizon, |e: &Event, h: &i64| e.0 >= *h);
    // (`distinct` is typed only without dbsp's backend-mode, which does not build: its
    // dynamic form, as Feldera's SQL compiler emits it.)
    let unique = events
        .inner()
        .dyn_distinct(&DistinctFactories::new::<Event, ()>())
        .typed::<OrdZSet<Event>>();
    // Per (minute, account) and (minute, post): the sum of the deltas, and of the events.
    let deltas = unique.flat_map_index(|Tup5(minute, _, account, post, delta)| {
        let mut keys = vec![(Tup3(*minute, account.clone(), String::new()), *delta)];
        if !post.is_empty() {
            keys.push((Tup3(*minute, account.clone(), post.clone()), *delta));
        }
        keys
    });
    let counts = deltas.aggregate_linear_retain_keys(
        &horizon,
        |k: &Tup3<i64, String, String>, h: &i64| k.0 >= *h - 5 * MINUTE,
        |d: &i64| Tup2(*d, 1),
    );
    // A minute's count in each of the five hopping windows containing it (keyed by start).
    let velocity = counts
        .flat_map_index(|(Tup3(minute, account, post), n)| {
            (0..5)
                .map(|i| (Tup3(minute - i * MINUTE, account.clone(), post.clone()), *n))
                .collect::<Vec<_>>()
        })
        .aggregate_linear_retain_keys(
            &horizon,
            |k: &Tup3<i64, String, String>, h: &i64| k.0 >= *h - 10 * MINUTE,
            |n: &Count| *n,
        );
    let by_start = |(Tup3(start, account, post), n): (&Tup3<i64, String, String>, &Count)| {
        (*start, Tup3(account.clone(), post.clone(), *n))
    };
    // (A transaction may take several steps: its outputs are accumulated over them.)
    let minutes = counts
        .map_index(by_start)
        .window((true, false), &minute_bounds);
    let velocity = velocity
        .map_index(by_start)
        .window((true, false), &velocity_bounds);
    let (minutes, velocity) = (minutes.accumulate_output(), velocity.accumulate_output());
    Ok(Circuit {
        events: events_h,
        closed: closed_h,
        low: low_h,
        minutes,
        velocity,
    })
}

/// DESIGN.md's interactions, by banter-model's definitions of the kinds that count and the
/// actions' signs: none from the brand's own actors.
fn delta(e: &EngagementEvent) -> i64 {
    if e.is_brand_actor || !e.kind.is_interaction() {
        return 0;
    }
    e.action.count_delta()
}

/// One input partition's clock.
#[derive(Default)]
struct Clock {
    /// The highest event time seen, counted only up to the event's `received_at`.
    met: Option<i64>,
    watermark: Option<i64>,
}

/// The scalar a waterline carries.
fn value(b: &TypedBox<i64, DynData>) -> i64 {
    *b.inner().downcast_checked::<i64>()
}

/// Before any watermark: below every event time, far from i64's limits.
const NEVER: i64 = i64::MIN / 2;

/// The lowest minute that can still change once windows below `closed` are closed: a
/// partition admits minutes within the lateness of its own watermark, never below the lowest
/// one's (`closed` is that watermark's minute).
fn horizon_of(closed: i64) -> i64 {
    closed - LATENESS - 2 * MINUTE
}

fn floor_minute(t: i64) -> i64 {
    t.div_euclid(MINUTE) * MINUTE
}

fn main() -> Result<()> {
    let process_start = Instant::now();
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 || args.len() > 6 {
        bail!("usage: banter-compare-dbsp BOOTSTRAP INPUT OUTPUT GROUP_ID [IDLE_MS]");
    }
    let (bootstrap, input, output, group) = (&args[1], &args[2], &args[3], &args[4]);
    let idle_ms: i64 = match args.get(5) {
        Some(s) => s.parse().context("IDLE_MS")?,
        None => 1_000,
    };

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("consumer")?;
    consumer.subscribe(&[input]).context("subscribe")?;
    let ends: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("consumer")?;
    // banter's producer settings (linger 10 ms, lz4), transactional.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", format!("{group}-tx"))
        .set("linger.ms", "10")
        .set("compression.type", "lz4")
        .create()
        .context("producer")?;
    producer
        .init_transactions(Duration::from_secs(30))
        .context("init_transactions")?;

    let (mut circuit, c) = Runtime::init_circuit(1, build).context("circuit")?;
    let codec = Codec::<EngagementEvent>::new().context("event codec")?;
    let rollups = Codec::<Rollup>::new().context("rollup codec")?;
    let mut encoder = rollups.encoder();

    let mut event = EngagementEvent::empty();
    let mut clocks: HashMap<i32, Clock> = HashMap::new();
    let mut delivered: HashMap<String, i64> = HashMap::new();
    let mut delivered_pruned = i64::MIN;
    let mut batch: Vec<Tup2<Event, ZWeight>> = Vec::new();
    let mut closed = NEVER;
    let mut low = NEVER;
    let mut last_arrival = Instant::now();
    let mut caught_up = false;
    let mut said = false;
    let mut last_lag_check = Instant::now() - Duration::from_secs(1);
    let mut revision: i64 = 0;
    let mut buf = Vec::new();
    let (mut undecodable, mut too_late) = (0u64, 0u64);
    let mut first_record: Option<Duration> = None;
    // BANTER_DBSP_TRACE=1: one line per step on stderr (where the wall time goes).
    let trace = std::env::var_os("BANTER_DBSP_TRACE").is_some();

    loop {
        let started = Instant::now();
        let mut read = 0usize;
        while started.elapsed() < BATCH {
            let Some(m) = consumer.poll(BATCH.saturating_sub(started.elapsed())) else {
                break;
            };
            let m = m.context("consume")?;
            first_record.get_or_insert_with(|| process_start.elapsed());
            read += 1;
            let Some(payload) = m.payload() else { continue };
            if codec.decode_into(payload, &mut event).is_err() {
                undecodable += 1; // banter dead-letters it; the workload has none
                continue;
            }
            let clock = clocks.entry(m.partition()).or_default();
            let minute = floor_minute(event.event_time);
            let redelivery_timed = event.event_time_source == EventTimeSource::PlatformDelivery;
            if clock
                .watermark
                .is_some_and(|wm| minute + MINUTE + LATENESS <= wm)
            {
                // Too late. A delivery-timed one is remembered, so that its redelivery is
                // known as a duplicate.
                too_late += 1;
                if redelivery_timed {
                    delivered.entry(event.event_id.clone()).or_insert(minute);
                }
                continue;
            }
            if redelivery_timed {
                if delivered.contains_key(&event.event_id) {
                    continue;
                }
                delivered.insert(event.event_id.clone(), minute);
            }
            let post = event.content_id.clone().unwrap_or_default();
            batch.push(Tup2(
                Tup5(
                    minute,
                    event.event_id.clone(),
                    event.account_id.clone(),
                    post,
                    delta(&event),
                ),
                1,
            ));
            let supported = event.event_time.min(event.received_at);
            if clock.met.is_none_or(|met| supported > met) {
                clock.met = Some(supported);
                let wm = supported - OUT_OF_ORDERNESS;
                if clock.watermark.is_none_or(|old| wm > old) {
                    clock.watermark = Some(wm);
                }
            }
        }
        if read > 0 {
            last_arrival = Instant::now();
        }

        // Has the input been read to its end (as far as a read_committed consumer sees it)?
        if last_lag_check.elapsed() >= Duration::from_millis(200) {
            last_lag_check = Instant::now();
            caught_up = read_to_end(&consumer, &ends)?;
        }
        // A quiet partition moves on with the wall clock, or to the busiest one's watermark.
        let quiet = last_arrival.elapsed().as_millis() as i64;
        if caught_up && read == 0 && quiet >= idle_ms {
            let busiest = clocks.values().filter_map(|c| c.watermark).max();
            for clock in clocks.values_mut() {
                if let Some(met) = clock.met {
                    let wm = (met + quiet).max(busiest.unwrap_or(i64::MIN));
                    clock.watermark = Some(clock.watermark.map_or(wm, |old| old.max(wm)));
                }
            }
        }

        // Windows are released once every partition's watermark has passed them.
        // A partition not read yet holds every window back (librdkafka may hand out one
        // partition's backlog before the next one's; in a live run a partition's first event
        // may come after others'), until the input has been read to its end and been quiet
        // for the idle timeout (an empty partition). A partition first read after that admits
        // its events without a watermark, as in the Kafka Streams application, but a
        // correction below `low` is then not written.
        let unseen = consumer
            .assignment()
            .context("assignment")?
            .elements()
            .iter()
            .any(|e| {
                clocks
                    .get(&e.partition())
                    .is_none_or(|c| c.watermark.is_none())
            });
        let lowest = if unseen && !(caught_up && quiet >= idle_ms) {
            None
        } else {
            clocks.values().filter_map(|c| c.watermark).min()
        };
        if let Some(wm) = lowest {
            if floor_minute(wm) > closed {
                // This step's events were admitted against watermarks no lower than the
                // previous step's lowest, so none is below the horizon of the previous `closed`.
                low = low.max(horizon_of(closed));
                closed = floor_minute(wm);
                c.closed.push(closed, 1);
                c.low.push(low, 1);
            }
        }
        let fed = !batch.is_empty();
        c.events.append(&mut batch);
        let step_started = Instant::now();
        circuit.transaction().context("step")?;
        let step_ms = step_started.elapsed().as_millis();

        // The released windows, new or changed: the insertions. (A window's events never go
        // back to zero, so a changed window is a retraction and an insertion; a retraction
        // alone is a window leaving the bounds below the horizon.)
        revision += 1;
        let mut rows = Vec::new();
        for (kind, output) in [
            (WindowKind::Minute, &c.minutes),
            (WindowKind::Velocity5m, &c.velocity),
        ] {
            let delta = output.concat().consolidate();
            for (start, Tup3(account, post, Tup2(n, _)), w) in delta.iter() {
                if w > 0 {
                    let wm = lowest.unwrap_or(0);
                    rows.push(rollup(kind, start, account, post, n, revision, wm));
                }
            }
        }

        // A step whose records were all dropped still commits their offsets.
        if read > 0 || !rows.is_empty() {
            producer.begin_transaction().context("begin")?;
            for r in &rows {
                buf.clear();
                encoder.encode_into(r, &mut buf).context("encode")?;
                let mut record = BaseRecord::to(output)
                    .key(r.account_id.as_str())
                    .payload(&buf);
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((e, back)) if is_queue_full(&e) => {
                            record = back;
                            producer.poll(Duration::from_millis(10));
                        }
                        Err((e, _)) => bail!("produce: {e}"),
                    }
                }
                producer.poll(Duration::ZERO);
            }
            let offsets = positions(&consumer)?;
            if offsets.count() > 0 {
                let meta = consumer.group_metadata().context("group metadata")?;
                producer
                    .send_offsets_to_transaction(&offsets, &meta, Duration::from_secs(30))
                    .context("send offsets")?;
            }
            producer
                .commit_transaction(Duration::from_secs(30))
                .context("commit")?;
        }
        if trace {
            eprintln!(
                "t={}ms read={read} step={step_ms}ms rows={} written={}ms",
                process_start.elapsed().as_millis(),
                rows.len(),
                step_started.elapsed().as_millis() - step_ms,
            );
        }

        // Forget delivery ids older than the redelivery horizon, once an hour of event time.
        if let Some(wm) = lowest {
            if wm.div_euclid(3_600_000) > delivered_pruned {
                delivered_pruned = wm.div_euclid(3_600_000);
                delivered.retain(|_, minute| *minute >= wm - REDELIVERY);
            }
        }
        if caught_up && !said && !fed {
            let first = first_record.map_or(0, |d| d.as_millis());
            println!(
                "caught-up undecodable={undecodable} too_late={too_late} first_record_ms={first}"
            );
            said = true;
        }
    }
}

fn rollup(
    window: WindowKind,
    start: i64,
    account: String,
    post: String,
    n: i64,
    revision: i64,
    watermark: i64,
) -> Rollup {
    let span = if window == WindowKind::Minute {
        MINUTE
    } else {
        5 * MINUTE
    };
    Rollup {
        account_id: SmolStr::from(account),
        content_id: (!post.is_empty()).then(|| SmolStr::from(post)),
        window,
        window_start: start,
        window_end: start + span,
        revision,
        interactions: n,
        comments: 0,
        live_comments: 0,
        reactions: 0,
        shares: 0,
        story_replies: 0,
        dms_in: 0,
        mentions: 0,
        brand_replies: 0,
        velocity: (window == WindowKind::Velocity5m).then(|| n as f64 / 5.0),
        early_accel: None,
        time_to_n_minutes: None,
        unique_engagers: None,
        late_events: 0,
        emitted_at: watermark,
    }
}

fn is_queue_full(e: &rdkafka::error::KafkaError) -> bool {
    matches!(
        e,
        rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull)
    )
}

/// The next offset to read of every assigned partition that has a position.
fn positions(consumer: &BaseConsumer) -> Result<TopicPartitionList> {
    let all = consumer.position().context("position")?;
    let mut out = TopicPartitionList::new();
    for e in all.elements() {
        if let Offset::Offset(o) = e.offset() {
            out.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o))?;
        }
    }
    Ok(out)
}

/// Whether every partition of the input has been read to its end: the consumer's position
/// has reached the partition's high watermark. `ends` is a client of its own, as in banter:
/// asking through the consumer waits behind its long-polling fetches (seconds per check). The
/// topic is written completely before the backlog runs; in the live runs this only gates the
/// idle rule.
fn read_to_end(consumer: &BaseConsumer, ends: &BaseConsumer) -> Result<bool> {
    let assigned = consumer.position().context("position")?;
    if assigned.count() == 0 {
        return Ok(false);
    }
    for e in assigned.elements() {
        let (_, high) = ends
            .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(5))
            .context("watermarks")?;
        let at = match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        };
        if at < high {
            return Ok(false);
        }
    }
    Ok(true)
}
