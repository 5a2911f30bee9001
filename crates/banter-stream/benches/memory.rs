//! Memory per active post: the resident memory of one partition's [`Pipeline`] (windows,
//! first-hour metrics, spike baselines, CTA funnels, conversations) holding N active posts
//! after 70 minutes of event time (the windows' state at its full size; conversations, funnels
//! and redelivery ids, kept for a day and more, still growing), and the changelog it would
//! write for them.
//!
//! `cargo bench -p banter-stream --bench memory` runs itself twice, in fresh processes (so that
//! resident memory is this size's own): 100,000 and 1,000,000 active posts, 1,000 accounts,
//! every post getting an event every 5 minutes of event time for 70 minutes (the 1 h allowed
//! lateness plus 10: every window the engine must keep is held), the same event mix as
//! `benches/mix` shared with `benches/engine.rs` (reactions, comments with replies and CTA keywords, story replies, DMs,
//! mentions). It prints, per size, RSS before and after (the allocator `banter stream` uses,
//! transparent huge pages included), the changelog bytes, and the growth per post between the
//! two sizes. `BANTER_MEMORY_POSTS=N` runs one size only; `BANTER_MEMORY_MINUTES=M` feeds M
//! minutes of event time instead of 70 (1440: posts active for a day; conversations keep an
//! item until its UTC day's window is final, the day plus the 24 h answer horizon, so over a
//! day nothing is forgotten yet and a day is a lower bound of a steady state of several).
//! Set it together with `BANTER_MEMORY_POSTS`: without it the 1,000,000-post size runs too,
//! which for a day is 288 M events and about 70 GB.

#![allow(missing_docs, clippy::unwrap_used, clippy::print_stderr)]

use std::time::Instant;

use banter_model::EngagementEvent;
use banter_stream::{Outputs, Pipeline, PipelineConfig};

mod mix;

/// As in the `banter` binary: large blocks on transparent huge pages.
#[global_allocator]
static ALLOC: banter_alloc::HugePages = banter_alloc::HugePages;

const T0: i64 = 1_764_000_000_000;
const ACCOUNTS: u64 = 1_000;
/// Minutes of event time fed: `BANTER_MEMORY_MINUTES`, 70 unless set.
fn minutes() -> u64 {
    std::env::var("BANTER_MEMORY_MINUTES").map_or(70, |m| {
        m.parse()
            .expect("BANTER_MEMORY_MINUTES: a number of minutes")
    })
}
/// Each post gets one event every this many minutes.
const EVERY_MINUTES: u64 = 5;

/// `VmRSS` and `VmHWM` of this process, in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The `i`-th event: post `i % posts`, at the time of its round.
fn event(i: u64, posts: u64) -> EngagementEvent {
    let post = i % posts;
    let round = i / posts;
    // Spread over the round's minutes, up to 37 s out of order.
    let round_ms = (EVERY_MINUTES * 60_000) as i64;
    let t = T0
        + round as i64 * round_ms
        + ((post * round_ms as u64) / posts) as i64
        + (i % 37) as i64 * 1000;
    let mut e = mix::event(
        i,
        mix::kind(i / 7),
        post % ACCOUNTS,
        post,
        t,
        T0 - 30 * 60_000,
        posts,
    );
    e.received_at = t + 2_000;
    e
}

/// Feeds `posts` active posts for [`minutes`] of event time; prints one `result` line.
fn measure(posts: u64) {
    let matcher = mix::matcher(ACCOUNTS);
    let (before, _) = rss();
    let mut pipeline = Pipeline::new(&PipelineConfig::default(), matcher);
    let mut out = Outputs::default();
    let n = posts * minutes() / EVERY_MINUTES;
    let t0 = Instant::now();
    for i in 0..n {
        pipeline.process(&event(i, posts), i as i64, &mut out);
        out.clear();
    }
    let took = t0.elapsed();
    let (after, peak) = rss();
    let mut changes = banter_stream::changelog::Changes::new();
    pipeline.write_changes(&mut changes).unwrap();
    let sizes = pipeline.state_sizes();
    let mut by_store = std::collections::BTreeMap::new();
    for (store, c) in changes.iter() {
        *by_store.entry(format!("{store:?}")).or_insert(0usize) +=
            c.key.len() + c.value.map_or(0, <[u8]>::len);
    }
    let changelog: usize = by_store.values().sum();
    println!(
        "result posts={posts} events={n} rss_before={before} rss_after={after} peak={peak} \
         changelog_bytes={changelog} changelog_entries={} seconds={:.1}",
        changes.len(),
        took.as_secs_f64()
    );
    println!(
        "detail posts={posts}: window engine ~{} B estimated ({} entries: panes, dedup ids, \
         posts, timers), {} posts with first-hour state, {} spike baselines, {} funnel and \
         conversation entries; changelog bytes by store {by_store:?}",
        sizes.window_bytes,
        sizes.window_entries,
        sizes.posts,
        sizes.spike_keys,
        sizes.funnel_entries,
    );
}

fn field(line: &str, name: &str) -> f64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn main() {
    if let Ok(posts) = std::env::var("BANTER_MEMORY_POSTS") {
        measure(posts.parse().unwrap());
        return;
    }
    let me = std::env::current_exe().unwrap();
    let mut lines = Vec::new();
    let mut details = Vec::new();
    for posts in [100_000u64, 1_000_000] {
        let out = std::process::Command::new(&me)
            .env("BANTER_MEMORY_POSTS", posts.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{posts} posts: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("result "))
            .unwrap()
            .to_owned();
        lines.push(line);
        details.extend(
            text.lines()
                .filter(|l| l.starts_with("detail "))
                .map(str::to_owned),
        );
    }
    let mb = |b: f64| b / 1e6;
    println!(
        "memory of one partition's pipeline: active posts for {} min of event time, an event per post every {EVERY_MINUTES} min, {ACCOUNTS} accounts",
        minutes()
    );
    println!(
        "{:>10} {:>11} {:>9} {:>9} {:>10} {:>12} {:>14} {:>8}",
        "posts", "events", "RSS MB", "peak MB", "state MB", "B/post RSS", "changelog MB", "seconds"
    );
    for l in &lines {
        let posts = field(l, "posts");
        let state = field(l, "rss_after") - field(l, "rss_before");
        println!(
            "{:>10} {:>11} {:>9.0} {:>9.0} {:>10.0} {:>12.0} {:>14.0} {:>8.1}",
            posts,
            field(l, "events"),
            mb(field(l, "rss_after")),
            mb(field(l, "peak")),
            mb(state),
            state / posts,
            mb(field(l, "changelog_bytes")),
            field(l, "seconds"),
        );
    }
    let (small, large) = (&lines[0], &lines[1]);
    let grow = (field(large, "rss_after") - field(small, "rss_after"))
        / (field(large, "posts") - field(small, "posts"));
    let log_grow = (field(large, "changelog_bytes") - field(small, "changelog_bytes"))
        / (field(large, "posts") - field(small, "posts"));
    println!(
        "per additional active post: {grow:.0} bytes resident, {log_grow:.0} bytes of changelog"
    );
    for d in &details {
        println!("{d}");
    }
}
