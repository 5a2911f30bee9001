//! What a minute's close costs in one partition with many sparse keys: the live benchmark's
//! traffic (`benches/sink/run.sh` with 400,000 accounts, about 6,000 events/s) has each minute's
//! close emit hundreds of thousands of final rows in one batch, and the rows that wait behind it
//! are what misses the provisional rows' 5 s.
//!
//! 360,000 events a minute of event time (up to 30 s out of order) over `BANTER_CLOSE_ACCOUNTS`
//! accounts (400,000) with three posts each, through the [`Pipeline`] as `banter stream` runs
//! it (windows, spike judging, funnels, conversations), its changelog written after every close
//! and every 3,000 events as a batch's commit writes it; or, with `BANTER_CLOSE_ENGINE=1`, the
//! window engine alone. For each close: its rows, the time of the event that closed it with
//! the changelog write, the rows' Avro encoding and the provisional showing after it (the
//! pipeline shows its open windows every second of event time, as `banter stream` does each
//! second), then the median time per row over the closes after the first five minutes (the
//! keys of a velocity window are all there by then) and the time of the other showings.
//!
//! `cargo bench -p banter-stream --bench close` (`BANTER_CLOSE_MINUTES`, 15 by default).

#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use banter_model::{AvroRecord, Rollup};
use banter_stream::changelog::Changes;
use banter_stream::{Engine, Output, Outputs, Pipeline, PipelineConfig, WindowConfig};

mod mix;

/// As in the `banter` binary.
#[global_allocator]
static ALLOC: banter_alloc::HugePages = banter_alloc::HugePages;

const T0: i64 = 1_764_000_000_000;
const PER_MINUTE: u64 = 360_000;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One close: its rows, the time of the event that closed it (with the changelog write after
/// it), the changelog entries written, the encoding time.
struct Close {
    rows: usize,
    took: Duration,
    /// Of `took`, the changelog write.
    write: Duration,
    entries: usize,
    /// The entries' keys and values.
    bytes: usize,
    encode: Duration,
    /// The first provisional showing after it: its time and rows.
    show: Option<(Duration, usize)>,
}

fn main() {
    let accounts = env("BANTER_CLOSE_ACCOUNTS", 400_000);
    let minutes = env("BANTER_CLOSE_MINUTES", 15);
    let engine_only = std::env::var("BANTER_CLOSE_ENGINE").is_ok_and(|v| v == "1");
    let mut pipeline = Pipeline::new(&PipelineConfig::default(), mix::matcher(1_000));
    let mut engine = Engine::new(WindowConfig::default());
    let mut scratch = Vec::new();
    let mut out = Outputs::default();
    let mut changes = Changes::new();
    let mut encoder = Rollup::codec().encoder();
    let mut buf = Vec::new();
    let mut closes: Vec<Close> = Vec::new();
    let mut rest = Duration::ZERO;
    // The changelog writes between closes (every 3,000 events): time, entries, bytes.
    let mut writes = (Duration::ZERO, 0usize, 0usize);
    // Provisional showings, as `banter stream` makes them each second (of event time here):
    // the time of each one not right after a close.
    let mut shows: Vec<Duration> = Vec::new();
    let mut just_closed = false;
    let n = minutes * PER_MINUTE;
    for i in 0..n {
        let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20;
        let account = h % accounts;
        let received = T0 + (i * 60_000 / PER_MINUTE) as i64;
        let t = received - (h % 30_000) as i64;
        let mut e = mix::event(
            i,
            mix::kind(i),
            account,
            account * 3 + i % 3,
            t,
            T0 - 3_600_000,
            100,
        );
        e.received_at = received;
        let offset = i as i64;
        let started = Instant::now();
        if engine_only {
            engine.process(&e, offset, &mut scratch);
            out.rollups
                .extend(scratch.drain(..).filter_map(|o| match o {
                    Output::Rollup(r) => Some(r),
                    Output::TooLate { .. } => None,
                }));
        } else {
            pipeline.process(&e, offset, &mut out);
        }
        let rows = out.rollups.len();
        let closed = rows > 1_000;
        let processed = started.elapsed();
        let wrote = !engine_only && (closed || i % 3_000 == 0);
        if wrote {
            changes.clear();
            pipeline.write_changes(&mut changes).unwrap();
        }
        let took = started.elapsed();
        let bytes: usize = if wrote {
            changes
                .iter()
                .map(|(_, c)| c.key.len() + c.value.map_or(0, <[u8]>::len))
                .sum()
        } else {
            0
        };
        if wrote && !closed {
            writes.0 += took - processed;
            writes.1 += changes.len();
            writes.2 += bytes;
        }
        let encoding = Instant::now();
        for r in &out.rollups {
            buf.clear();
            encoder.encode_into(r, &mut buf).unwrap();
        }
        let encode = encoding.elapsed();
        out.clear();
        if !engine_only && (i + 1) % (PER_MINUTE / 60) == 0 {
            let showing = Instant::now();
            let n = pipeline.provisional(received, &mut out);
            let took = showing.elapsed();
            out.clear();
            match closes.last_mut() {
                Some(c) if just_closed => c.show = Some((took, n)),
                _ => shows.push(took),
            }
            just_closed = false;
        }
        if closed {
            just_closed = true;
            closes.push(Close {
                rows,
                took,
                write: took - processed,
                entries: if engine_only { 0 } else { changes.len() },
                bytes,
                encode,
                show: None,
            });
        } else {
            rest += took + encode;
        }
    }
    let what = if engine_only {
        "window engine"
    } else {
        "pipeline + changelog"
    };
    for c in &closes {
        eprintln!(
            "close: {} rows, {what} {:.3} s (the changelog write {:.3} s, {} entries, {:.1} MB), encoding {:.3} s",
            c.rows,
            c.took.as_secs_f64(),
            c.write.as_secs_f64(),
            c.entries,
            c.bytes as f64 / 1e6,
            c.encode.as_secs_f64()
        );
        if let Some((took, n)) = c.show {
            eprintln!(
                "  the next provisional showing: {n} rows, {:.3} s",
                took.as_secs_f64()
            );
        }
    }
    shows.sort();
    if let Some(m) = shows.get(shows.len() / 2) {
        eprintln!(
            "provisional showings not right after a close: {}, median {:.1} ms, max {:.1} ms",
            shows.len(),
            m.as_secs_f64() * 1e3,
            shows.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
        );
    }
    eprintln!(
        "the other {} events: {:.1} s, of which changelog writes {:.2} s ({} entries, {:.1} MB)",
        n - closes.len() as u64,
        rest.as_secs_f64(),
        writes.0.as_secs_f64(),
        writes.1,
        writes.2 as f64 / 1e6
    );
    let mut close_writes: Vec<f64> = closes
        .iter()
        .skip(5)
        .map(|c| c.write.as_secs_f64() * 1e3)
        .collect();
    close_writes.sort_by(f64::total_cmp);
    if let Some(m) = close_writes.get(close_writes.len() / 2) {
        eprintln!("the changelog write of a close: median {m:.0} ms");
    }
    let mut per_row: Vec<f64> = closes
        .iter()
        .skip(5)
        .map(|c| c.took.as_secs_f64() * 1e9 / c.rows as f64)
        .collect();
    per_row.sort_by(f64::total_cmp);
    match per_row.get(per_row.len() / 2) {
        Some(m) => eprintln!(
            "{what}: median {m:.0} ns per row over {} closes",
            per_row.len()
        ),
        None => eprintln!("fewer than six closes: give BANTER_CLOSE_MINUTES more minutes"),
    }
}
