//! Meta webhook shapes beyond the basic ones, each with what it must become: an Instagram
//! story mention is a STORY_MENTION (not a DM that waits for an answer), a Facebook comment
//! removed without `created_time` is still a removal (and its redelivery the same event),
//! reactions on comments are not post reactions, reaction changes by one person within a second
//! stay distinct, standby messages count, the brand's link posts publish, and the deliveries
//! that are not engagement are ignored rather than dead-lettered.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use banter_ingest::normalize::{meta, Item, Normalizer};
use banter_model::{Action, EngagementEvent, EventTimeSource, Kind};
use serde_json::{json, Value};

const NOW: i64 = 1_764_000_000_000;
const PAGE: &str = "104000000000001";
const IG: &str = "17841400000000001";

fn items(body: Value) -> Vec<Item> {
    let n = Normalizer::new(b"shapes-salt-0123456789", 300_000);
    meta::normalize(&n, &body, NOW).unwrap()
}

fn events(body: Value) -> Vec<EngagementEvent> {
    items(body)
        .into_iter()
        .map(|i| match i {
            Item::Event(e) => e,
            other => panic!("expected an event, got {other:?}"),
        })
        .collect()
}

fn feed(entry_time: i64, values: &[Value]) -> Value {
    let changes: Vec<Value> = values
        .iter()
        .map(|v| json!({"field": "feed", "value": v}))
        .collect();
    json!({"object": "page", "entry": [{"id": PAGE, "time": entry_time, "changes": changes}]})
}

#[test]
fn an_instagram_story_mention_is_a_story_mention_not_a_dm() {
    let e = events(
        json!({"object": "instagram", "entry": [{"id": IG, "time": NOW, "messaging": [{
            "sender": {"id": "1122334455"}, "recipient": {"id": IG}, "timestamp": NOW - 1000,
            "message": {"mid": "mid-story", "attachments": [{"type": "story_mention", "payload": {"url": "https://x.invalid"}}]}
        }]}]}),
    );
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].kind, Kind::StoryMention);
    assert_eq!(e[0].action, Action::Add);
    assert_eq!(e[0].object_id.as_deref(), Some("mid-story"));
    assert!(!e[0].is_brand_actor);
}

#[test]
fn a_facebook_comment_removed_without_created_time_is_removed_once() {
    let remove = json!({"item": "comment", "verb": "remove", "comment_id": "950_2001",
        "post_id": "104000000000001_950", "parent_id": "104000000000001_950",
        "from": {"id": "5100000000000001"}});
    // Delivered, then redelivered an hour later with a new entry.time.
    let first = events(feed(1_763_996_390, std::slice::from_ref(&remove)));
    let again = events(feed(1_763_999_990, &[remove]));
    assert_eq!(first[0].kind, Kind::Comment);
    assert_eq!(first[0].action, Action::Remove);
    assert_eq!(first[0].event_time, 1_763_996_390_000, "the delivery time");
    assert_eq!(
        first[0].event_time_source,
        EventTimeSource::PlatformDelivery
    );
    assert_eq!(
        first[0].event_id, again[0].event_id,
        "a redelivery is the same event"
    );
}

#[test]
fn reactions_on_comments_are_not_post_reactions() {
    let got = items(feed(
        1_763_999_990,
        &[
            json!({"item": "reaction", "verb": "add", "reaction_type": "like", "created_time": 1_763_999_500,
            "post_id": "104000000000001_950", "comment_id": "950_2002", "parent_id": "104000000000001_950",
            "from": {"id": "5100000000000003"}}),
        ],
    ));
    assert_eq!(got, vec![Item::Ignored("comment_reaction")]);
}

#[test]
fn one_persons_reaction_changes_within_a_second_stay_distinct() {
    let r = |verb: &str, kind: &str| {
        json!({"item": "reaction", "verb": verb, "reaction_type": kind, "created_time": 1_763_999_510,
            "post_id": "104000000000001_950", "from": {"id": "5100000000000003"}})
    };
    let e = events(feed(
        1_763_999_990,
        &[r("add", "like"), r("remove", "like"), r("add", "love")],
    ));
    let ids: std::collections::BTreeSet<&str> = e.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    let net: i32 = e
        .iter()
        .map(|e| if e.action == Action::Remove { -1 } else { 1 })
        .sum();
    assert_eq!(net, 1);
    // The older shape names the person in `sender_id`: still one id per person.
    let old = events(feed(
        1_763_999_990,
        &[
            json!({"item": "reaction", "verb": "add", "reaction_type": "like", "created_time": 1_763_999_510, "post_id": "104000000000001_950", "sender_id": 51}),
            json!({"item": "reaction", "verb": "add", "reaction_type": "like", "created_time": 1_763_999_510, "post_id": "104000000000001_950", "sender_id": 52}),
        ],
    ));
    assert_ne!(old[0].event_id, old[1].event_id);
    assert!(old[0].actor_id.is_some());
}

#[test]
fn standby_messages_count_like_messaging() {
    let e = events(
        json!({"object": "instagram", "entry": [{"id": IG, "time": NOW, "standby": [{
            "sender": {"id": "2233445566"}, "recipient": {"id": IG}, "timestamp": NOW - 5000,
            "message": {"mid": "mid-standby", "text": "INFO"}
        }]}]}),
    );
    assert_eq!(e[0].kind, Kind::DmIn);
    assert_eq!(e[0].text.as_deref(), Some("INFO"));
}

#[test]
fn the_brands_link_and_photo_posts_publish() {
    let e = events(feed(
        1_763_999_990,
        &[
            json!({"item": "share", "verb": "add", "share_id": 1, "post_id": "104000000000001_950",
                "from": {"id": PAGE}, "created_time": 1_763_999_100, "published": 1, "link": "https://x.invalid"}),
            json!({"item": "photo", "verb": "add", "post_id": "104000000000001_951", "sender_id": PAGE,
                "created_time": 1_763_999_200}),
        ],
    ));
    for (e, t) in e.iter().zip([1_763_999_100_000, 1_763_999_200_000]) {
        assert_eq!(e.kind, Kind::PostPublished);
        assert_eq!(e.content_published_at, Some(t));
    }
}

#[test]
fn a_dm_edit_is_an_edit_and_a_reply_names_its_message() {
    let e = events(
        json!({"object": "page", "entry": [{"id": PAGE, "time": NOW, "messaging": [
            {"sender": {"id": "6000000000000001"}, "recipient": {"id": PAGE}, "timestamp": NOW - 3000,
             "message": {"mid": "m_2", "text": "this?", "reply_to": {"mid": "m_1"}}},
            {"sender": {"id": "6000000000000001"}, "recipient": {"id": PAGE}, "timestamp": NOW - 2000,
             "message_edit": {"mid": "m_2", "text": "this one?", "num_edit": 1}}
        ]}]}),
    );
    assert_eq!(
        (e[0].kind, e[0].action, e[0].parent_id.as_deref()),
        (Kind::DmIn, Action::Add, Some("m_1"))
    );
    assert_eq!((e[1].kind, e[1].action), (Kind::DmIn, Action::Edit));
    assert_eq!(e[1].object_id.as_deref(), Some("m_2"));
}

#[test]
fn deliveries_that_are_not_engagement_are_ignored_not_dead_lettered() {
    let m = |k: &str, v: Value| {
        let mut item = json!({"sender": {"id": "6000000000000001"}, "recipient": {"id": PAGE}, "timestamp": NOW - 1000});
        item[k] = v;
        item
    };
    let got = items(json!({"object": "page", "entry": [
        {"id": PAGE, "time": NOW, "messaging": [
            // Delivery receipts come without a timestamp.
            {"sender": {"id": "6000000000000001"}, "recipient": {"id": PAGE}, "delivery": {"mids": ["m_1"], "watermark": NOW}},
            m("optin", json!({"ref": "x"})),
            m("take_thread_control", json!({"previous_owner_app_id": "1"})),
            {"sender": {"id": PAGE}, "recipient": {"id": "6000000000000001"}, "timestamp": NOW - 1000, "read": {"watermark": NOW - 2000}},
        ]},
        {"id": "0", "time": NOW, "changes": [{"field": "feed", "value": {"item": "status", "verb": "add", "post_id": "0_1", "created_time": 1}}]},
        {"id": PAGE, "time": NOW, "changes": [
            {"field": "feed", "value": {"item": "like", "verb": "add", "user_id": 9}},
            {"field": "feed", "value": {"item": "video", "verb": "mute", "post_id": "1_2"}},
            {"field": "feed", "value": {"item": "status", "verb": "add", "post_id": "1_3", "from": {"id": PAGE}, "created_time": 1_763_999_000, "published": 0}},
        ]},
    ]}));
    let reasons: Vec<&str> = got
        .iter()
        .map(|i| match i {
            Item::Ignored(r) => *r,
            other => panic!("expected ignored, got {other:?}"),
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "delivery_receipt",
            "optin",
            "thread_handover",
            "brand_read",
            "test_payload",
            "page_like",
            "feed_verb",
            "unpublished_post"
        ]
    );
}
