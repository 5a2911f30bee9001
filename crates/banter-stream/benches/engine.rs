//! The stream hot path in one process: decode the Avro events, update their windows, emit what
//! closes, for 100,000 active posts, in prefetched batches as `banter stream` runs it (and one
//! event at a time, to show what the prefetch gains); and the same with the processors that
//! follow the windows (spike detection, CTA funnels with a campaign per account, conversation
//! metrics), as `banter stream` runs them. Run with `cargo bench -p banter-stream --bench engine`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use banter_model::{Action, AvroRecord, ContentType, EngagementEvent, Kind, Platform};
use banter_stream::cta::{Campaign, Matcher, Scope};
use banter_stream::{Engine, Outputs, Pipeline, PipelineConfig, WindowConfig};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

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
            let account = post % ACCOUNTS;
            let kind = match i % 20 {
                0..=11 => Kind::PostReaction,
                12..=16 => Kind::Comment,
                17 => Kind::StoryReply,
                18 => Kind::DmIn,
                _ => Kind::Mention,
            };
            let t = T0 + (i * 60_000 / EVENTS_PER_MINUTE) as i64 + (i % 37) as i64 * 1000;
            let mut e = EngagementEvent::new(
                format!("ev-{i}"),
                Platform::Instagram,
                kind,
                Action::Add,
                format!("acct-{account}"),
                t,
            );
            if kind != Kind::DmIn {
                e.content_id = Some(format!("post-{post}"));
                e.content_type = Some(ContentType::Reels);
                e.content_published_at = Some(T0 - 30 * 60_000 + (post % 3_600) as i64 * 1000);
            }
            e.actor_id = Some(format!("{:032x}", i * 2_654_435_761 % 1_000_003));
            match kind {
                Kind::Comment => {
                    // One comment in five replies to an earlier one; one in ten asks for the
                    // CTA link.
                    e.object_id = Some(format!("c{i}"));
                    let root = if i % 5 == 0 { i.saturating_sub(100) } else { i };
                    e.parent_id = (root != i).then(|| format!("c{root}"));
                    e.thread_id = Some(format!("c{root}"));
                    e.text = Some(
                        if i % 10 == 2 {
                            "INFO please!"
                        } else {
                            "love this 😍"
                        }
                        .into(),
                    );
                }
                Kind::StoryReply | Kind::DmIn => {
                    e.object_id = Some(format!("m{i}"));
                    e.text = Some("where can I buy it?".into());
                }
                _ => {}
            }
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
    let campaigns: Vec<Campaign> = (0..ACCOUNTS)
        .map(|a| Campaign {
            id: format!("camp-{a}"),
            account_id: format!("acct-{a}"),
            keywords: vec!["info".into()],
            scope: Scope::Account,
            active_from: None,
            active_until: None,
        })
        .collect();
    let matcher = Matcher::new(&campaigns).unwrap();
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
