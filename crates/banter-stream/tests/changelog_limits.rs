//! The largest value each operator writes to its changelog stays under Kafka's default record
//! limit (1 MB, `max.message.bytes`), however the input piles up on one key: a record over it
//! fails the batch's transaction, which is retried and fails again forever. The input is the
//! worst validation lets through: every id at its longest (512 bytes), thousands of events on
//! one DM thread, one actor's funnel and one post's first hour.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use banter_model::validate::MAX_ID_BYTES;
use banter_model::{Action, EngagementEvent, Kind, Platform, ValidationContext};
use banter_stream::changelog::Store;
use banter_stream::cta::{Campaign, Matcher, Scope};
use banter_stream::{Outputs, Pipeline, PipelineConfig, StreamSettings};

/// Kafka's default largest record, less room for the key and the record's framing.
const LIMIT: usize = 1_000_000 - 4 * 1024;

const T0: i64 = 1_795_000_000_000;

/// An id of the longest length validation accepts, unique by `i`.
fn long(prefix: &str, i: usize) -> String {
    let head = format!("{prefix}-{i}-");
    format!("{head}{}", "x".repeat(MAX_ID_BYTES - head.len()))
}

fn event(i: usize, kind: Kind, t: i64) -> EngagementEvent {
    let mut e = EngagementEvent::new(
        long("event", i),
        Platform::Instagram,
        kind,
        Action::Add,
        long("account", 0),
        t,
    );
    e.received_at = t;
    e
}

/// Feeds `events`, returning the largest changelog value written per store.
fn largest(campaigns: &[Campaign], events: &[EngagementEvent]) -> Vec<(Store, usize)> {
    let cfg = PipelineConfig::from_settings(&StreamSettings::default());
    let mut p = Pipeline::new(&cfg, Matcher::new(campaigns).unwrap());
    let mut out = Outputs::default();
    let mut max = std::collections::BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        e.validate(&ValidationContext::at(T0 + 3 * 86_400_000))
            .unwrap_or_else(|err| panic!("the input must be valid: {err}"));
        p.process(e, i as i64, &mut out);
        out.clear();
        if i % 500 == 499 || i + 1 == events.len() {
            let mut changes = banter_stream::changelog::Changes::new();
            p.write_changes(&mut changes).unwrap();
            for (store, c) in changes {
                let n = c.value.map_or(0, |v| v.len()) + c.key.len();
                let m = max.entry(store).or_insert(0);
                *m = (*m).max(n);
            }
        }
    }
    max.into_iter().collect()
}

fn assert_under(what: &str, sizes: &[(Store, usize)], store: Store, at_least: usize) {
    let size = sizes
        .iter()
        .find(|(s, _)| *s == store)
        .map_or(0, |(_, n)| *n);
    eprintln!("{what}: largest {store} changelog record {size} bytes");
    assert!(
        size >= at_least,
        "{what}: the state did not pile up ({size} bytes)"
    );
    assert!(
        size < LIMIT,
        "{what}: a {store} changelog record of {size} bytes, over Kafka's 1 MB limit"
    );
}

#[test]
fn a_dm_thread_of_thousands_of_story_replies_with_the_longest_ids() {
    // Story replies carry their story's id besides their own: the most bytes per DM.
    let events: Vec<EngagementEvent> = (0..3000)
        .map(|i| {
            let mut e = event(i, Kind::StoryReply, T0 + i as i64 * 1000);
            e.object_id = Some(long("dm", i));
            e.content_id = Some(long("story", i));
            e.thread_id = Some(long("thread", 0));
            e.actor_id = Some(long("actor", 0));
            e
        })
        .collect();
    let sizes = largest(&[], &events);
    assert_under("one DM thread", &sizes, Store::Conversations, 200_000);
}

#[test]
fn one_actors_funnel_of_thousands_of_clicks_and_conversions_with_the_longest_ids() {
    let campaign = long("campaign", 0);
    let c = Campaign {
        id: campaign.clone(),
        account_id: long("account", 0),
        keywords: vec!["LINK".into()],
        scope: Scope::Account,
        active_from: None,
        active_until: None,
    };
    let mut events = Vec::new();
    for i in 0..16 {
        let mut e = event(i, Kind::Comment, T0 + i as i64);
        e.text = Some("LINK please".into());
        e.object_id = Some(long("comment", i));
        e.content_id = Some(long("post", i));
        e.actor_id = Some(long("actor", 0));
        events.push(e);
    }
    for i in 0..3000 {
        let kind = if i % 2 == 0 {
            Kind::LinkClick
        } else {
            Kind::Conversion
        };
        let mut e = event(100 + i, kind, T0 + 60_000 + i as i64 * 1000);
        e.platform = Platform::FirstParty;
        e.actor_id = Some(long("actor", 0));
        e.cta_campaign_id = Some(campaign.clone());
        e.click_id = Some(long("click", i / 2));
        e.ref_ = Some(long("ref", i));
        if kind == Kind::Conversion {
            e.value = Some(99.5);
            e.currency = Some("EUR".into());
        }
        events.push(e);
    }
    let sizes = largest(&[c], &events);
    assert_under("one actor's funnel", &sizes, Store::Funnels, 100_000);
}

#[test]
fn one_posts_first_hour_of_twenty_five_thousand_interactions() {
    let mut events = Vec::new();
    let mut published = event(0, Kind::PostPublished, T0);
    published.platform = Platform::FirstParty;
    published.content_id = Some(long("post", 0));
    published.content_published_at = Some(T0);
    events.push(published);
    for i in 1..25_000 {
        let mut e = event(i, Kind::Comment, T0 + i as i64 * 140);
        e.content_id = Some(long("post", 0));
        e.object_id = Some(long("comment", i));
        e.actor_id = Some(long("actor", i));
        events.push(e);
    }
    let sizes = largest(&[], &events);
    assert_under("one post's first hour", &sizes, Store::Windows, 50_000);
}
