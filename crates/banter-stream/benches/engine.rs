//! The stream hot path in one process: decode the Avro events, update their windows, emit what
//! closes, for 100,000 active posts, in prefetched batches as `banter stream` runs it (and one
//! event at a time, to show what the prefetch gains); and the same with the processors that
//! follow the windows (spike detection, CTA funnels with a campaign per account, conversation
//! metrics), as `banter stream` runs them. Run with `cargo bench -p banter-stream --bench engine`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use banter_model::{AvroRecord, EngagementEvent};
use banter_stream::cta::Matcher;
use banter_stream::{Engine, Outputs, Pipeline, PipelineConfig, WindowConfig};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

mod mix;

/// As in the `banter` binary: large blocks on transparent huge pages.
#[global_allocator]
static ALLOC: banter_alloc::HugePages = banter_alloc::HugePages;

/// Events decoded, prefetched and processed together (as `banter stream` does).
const BATCH: usize = 64;
const T0: i64 = 1_764_000_000_000;
const POSTS: u64 = 100_000;
const ACCOUNTS: u64 = 1_000;
/// 200,000 events per minute of event time: every post gets two a minute.
const EVENTS_PER_MINUTE: u64 = 200_000;

fn stream(n: u64) -> Vec<Vec<u8>> {
    let codec = EngagementEvent::codec();
    (0..n)
        .map(|i| {
            let post = (i * 7_919) % POSTS;
            let t = T0 + (i * 60_000 / EVENTS_PER_MINUTE) as i64 + (i % 37) as i64 * 1000;
            let published = T0 - 30 * 60_000 + (post % 3_600) as i64 * 1000;
            let e = mix::event(i, mix::kind(i), post % ACCOUNTS, post, t, published, 100);
            codec.encode(&e).unwrap()
        })
        .collect()
}

/// Decodes `encoded` into reused buffers, `size` events at a time, and hands each chunk with
/// the offset of its first event to `f`.
fn each_chunk(encoded: &[Vec<u8>], size: usize, mut f: impl FnMut(&[EngagementEvent], i64)) {
    let codec = EngagementEvent::codec();
    let mut batch: Vec<EngagementEvent> = (0..size).map(|_| EngagementEvent::empty()).collect();
    for (i, chunk) in encoded.chunks(size).enumerate() {
        for (bytes, e) in chunk.iter().zip(batch.iter_mut()) {
            codec.decode_into(bytes, e).unwrap();
        }
        f(&batch[..chunk.len()], (i * size) as i64);
    }
}

/// Decodes and processes `encoded` on a fresh engine: BATCH events at a time, prefetched first
/// (as `banter stream` does), or one at a time without. The rows emitted and the state entries
/// at the end.
fn windows(encoded: &[Vec<u8>], prefetch: bool) -> (usize, usize) {
    let mut engine = Engine::new(WindowConfig::default());
    let mut out = Vec::with_capacity(1 << 16);
    let mut rows = 0usize;
    let size = if prefetch { BATCH } else { 1 };
    each_chunk(encoded, size, |events, first| {
        if prefetch {
            engine.prefetch(events);
        }
        for (j, e) in events.iter().enumerate() {
            engine.process(e, first + j as i64, &mut out);
            rows += out.len();
            out.clear();
        }
    });
    (rows, engine.state_entries())
}

/// Decodes and processes `encoded` through every operator (windows, spikes, funnels,
/// conversations) as `banter stream` runs them: the [`Pipeline`], prefetched batches. The rows
/// and alerts emitted.
fn pipeline(encoded: &[Vec<u8>], matcher: &Matcher) -> usize {
    let mut pipeline = Pipeline::new(&PipelineConfig::default(), matcher.clone());
    let mut out = Outputs::default();
    let mut rows = 0usize;
    each_chunk(encoded, BATCH, |events, first| {
        pipeline.prefetch(events);
        for (j, e) in events.iter().enumerate() {
            pipeline.process(e, first + j as i64, &mut out);
            rows +=
                out.rollups.len() + out.alerts.len() + out.funnels.len() + out.conversations.len();
            out.clear();
        }
    });
    rows
}

fn engine(c: &mut Criterion) {
    // Ten minutes of event time: 2,000,000 events over 100,000 posts.
    let n = 10 * EVENTS_PER_MINUTE;
    let encoded = stream(n);
    let codec = EngagementEvent::codec();
    let mut g = c.benchmark_group("stream");
    g.throughput(Throughput::Elements(n));
    g.sample_size(10);
    // As `banter stream` runs it: BATCH events decoded, prefetched, processed.
    g.bench_function("decode+window+emit/100k-posts", |b| {
        b.iter(|| black_box(windows(&encoded, true)))
    });
    // The same, one event at a time with no prefetch (what the prefetch gains).
    g.bench_function("decode+window+emit-one-at-a-time/100k-posts", |b| {
        b.iter(|| black_box(windows(&encoded, false)))
    });
    let matcher = mix::matcher(ACCOUNTS);
    g.bench_function(
        "decode+window+emit+spikes+funnels+conversations/100k-posts",
        |b| b.iter(|| black_box(pipeline(&encoded, &matcher))),
    );
    g.finish();

    // State per post after the run.
    let mut engine = Engine::new(WindowConfig::default());
    let mut out = Vec::new();
    for (offset, bytes) in encoded.iter().enumerate() {
        engine.process(&codec.decode(bytes).unwrap(), offset as i64, &mut out);
        out.clear();
    }
    eprintln!(
        "after {n} events: {} state entries for {POSTS} posts ({:.1} per post), ~{} bytes of state per post, {} rows emitted",
        engine.state_entries(),
        engine.state_entries() as f64 / POSTS as f64,
        engine.state_bytes() / POSTS as usize,
        engine.stats().rows
    );
}

criterion_group!(benches, engine);
criterion_main!(benches);
