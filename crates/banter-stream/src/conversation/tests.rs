use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::operator::{restore_copy, restore_log};
use crate::time::{HOUR, MINUTE};
use banter_model::Platform;

const T0: i64 = 1_764_028_800_000; // 2025-11-25 00:00 UTC

/// A row's window as the tests name it (the operator keys its windows by `SmolStr`s).
type WindowKey = (String, String, WindowKind, i64);

fn ev(kind: Kind, action: Action, id: &str, t: i64) -> EngagementEvent {
    let mut e = EngagementEvent::new(
        format!("{kind}:{action}:{id}:{t}"),
        Platform::Instagram,
        kind,
        action,
        "acct",
        t,
    );
    e.object_id = Some(id.into());
    e.actor_id = Some("user".into());
    e.content_id = Some("post".into());
    e
}

fn comment(id: &str, parent: Option<&str>, t: i64) -> EngagementEvent {
    let mut e = ev(Kind::Comment, Action::Add, id, t);
    e.parent_id = parent.map(Into::into);
    e.thread_id = Some(parent.unwrap_or(id).into());
    e
}

fn brand_reply(id: &str, parent: &str, t: i64) -> EngagementEvent {
    let mut e = ev(Kind::BrandReply, Action::Add, id, t);
    e.parent_id = Some(parent.into());
    e.thread_id = Some(parent.into());
    e.is_brand_actor = true;
    e
}

fn dm(kind: Kind, user: &str, id: &str, t: i64) -> EngagementEvent {
    let mut e = ev(kind, Action::Add, id, t);
    e.content_id = None;
    e.thread_id = Some(user.into());
    e.is_brand_actor = kind == Kind::DmOut;
    e
}

/// Feeds the events in order with the watermark one minute behind, then closes all; the
/// final row per window.
fn run(events: &[EngagementEvent]) -> BTreeMap<WindowKey, ConversationRollup> {
    let mut c = Conversations::new(ConversationConfig::default());
    let mut out = Vec::new();
    let mut max = i64::MIN;
    for (i, e) in events.iter().enumerate() {
        c.process(e, i as i64);
        max = max.max(e.event_time);
        c.advance(max - 60_000, &mut out);
    }
    c.advance(max + 10 * DAY, &mut out);
    let mut last = BTreeMap::new();
    for r in out {
        let k = (
            r.account_id.clone(),
            r.content_id.clone().unwrap_or_default(),
            r.window,
            r.window_start,
        );
        last.insert(k, r);
    }
    last
}

fn hour(rows: &BTreeMap<WindowKey, ConversationRollup>, h: i64) -> &ConversationRollup {
    &rows[&(
        "acct".to_owned(),
        String::new(),
        WindowKind::Hour,
        T0 + h * HOUR,
    )]
}

#[test]
fn response_times_belong_to_the_item_window_even_when_the_answer_comes_after_it_closed() {
    let events = vec![
        comment("c1", None, T0 + 10 * MINUTE),
        brand_reply("b1", "c1", T0 + 12 * MINUTE), // 120 s, inside the hour
        comment("c2", None, T0 + 50 * MINUTE),
        comment("c3", Some("c2"), T0 + 55 * MINUTE), // a reply: thread depth
        comment("c4", None, T0 + 58 * MINUTE),       // never answered
        // The hour has closed (and was emitted) before this answer to c2: 40 minutes.
        comment("c5", None, T0 + 85 * MINUTE),
        brand_reply("b2", "c2", T0 + 90 * MINUTE),
    ];
    let rows = run(&events);
    let h0 = hour(&rows, 0);
    assert_eq!((h0.inbound, h0.answered), (4, 2));
    assert_eq!(h0.response_rate, Some(0.5));
    let med = h0.median_response_s.unwrap();
    assert!((med - 120.0).abs() <= 1.2, "{med}"); // nearest rank of {120, 2400}
    let p90 = h0.p90_response_s.unwrap();
    assert!((p90 - 2400.0).abs() <= 24.0, "{p90}");
    assert_eq!((h0.root_comments, h0.reply_comments), (3, 1));
    assert!((h0.thread_depth.unwrap() - 1.0 / 3.0).abs() < 1e-9);
    assert!((h0.reply_share.unwrap() - 0.25).abs() < 1e-9);
    // First response in c2's thread: the brand's reply 40 minutes after the root.
    assert!(h0.median_first_response_s.is_some());
    let h1 = hour(&rows, 1);
    assert_eq!((h1.inbound, h1.answered), (1, 0));
    // The post-level row matches, the day holds both hours.
    let day = &rows[&("acct".to_owned(), String::new(), WindowKind::Day, T0)];
    assert_eq!((day.inbound, day.answered), (5, 2));
    let post = &rows[&("acct".to_owned(), "post".to_owned(), WindowKind::Hour, T0)];
    assert_eq!((post.inbound, post.answered), (4, 2));
}

#[test]
fn the_brand_talking_to_itself_and_deleted_comments_do_not_count() {
    let mut own = comment("own", None, T0 + MINUTE);
    own.is_brand_actor = true;
    let events = vec![
        own,
        brand_reply("b0", "own", T0 + 2 * MINUTE),
        comment("c1", None, T0 + 3 * MINUTE),
        brand_reply("b1", "c1", T0 + 4 * MINUTE),
        ev(Kind::Comment, Action::Remove, "c1", T0 + 5 * MINUTE),
        comment("c2", None, T0 + 6 * MINUTE),
        ev(Kind::Comment, Action::Hide, "c2", T0 + 7 * MINUTE),
        ev(Kind::Comment, Action::Unhide, "c2", T0 + 8 * MINUTE),
    ];
    let h0 = run(&events)[&("acct".to_owned(), String::new(), WindowKind::Hour, T0)].clone();
    assert_eq!(
        (h0.inbound, h0.answered, h0.response_rate),
        (1, 0, Some(0.0))
    );
}

#[test]
fn a_dm_opens_a_conversation_after_a_day_of_silence() {
    let events = vec![
        dm(Kind::DmIn, "u1", "m1", T0 + HOUR),
        dm(Kind::DmIn, "u1", "m2", T0 + HOUR + MINUTE), // same conversation
        dm(Kind::DmOut, "u1", "o1", T0 + HOUR + 5 * MINUTE), // answers m1
        dm(Kind::DmIn, "u1", "m3", T0 + 20 * HOUR),     // 19 h later: same conversation
        dm(Kind::DmIn, "u1", "m4", T0 + 45 * HOUR),     // 25 h of silence: a new one
        dm(Kind::StoryReply, "u2", "s1", T0 + 45 * HOUR),
        dm(Kind::DmOut, "u2", "o2", T0 + 45 * HOUR + 30_000),
    ];
    let rows = run(&events);
    let h1 = hour(&rows, 1);
    assert_eq!((h1.inbound_dms, h1.answered), (1, 1));
    assert!((h1.median_response_s.unwrap() - 300.0).abs() <= 3.0);
    let h45 = &rows[&(
        "acct".to_owned(),
        String::new(),
        WindowKind::Hour,
        T0 + 45 * HOUR,
    )];
    assert_eq!(
        (h45.inbound_dms, h45.inbound_story_replies, h45.answered),
        (1, 1, 1)
    );
}

#[test]
fn answers_before_their_items_and_any_order_give_the_same_rows() {
    let events = vec![
        comment("c1", None, T0 + 10 * MINUTE),
        comment("c2", Some("c1"), T0 + 11 * MINUTE),
        brand_reply("b1", "c1", T0 + 12 * MINUTE),
        brand_reply("b2", "c2", T0 + 13 * MINUTE),
        dm(Kind::DmIn, "u1", "m1", T0 + 14 * MINUTE),
        dm(Kind::DmOut, "u1", "o1", T0 + 15 * MINUTE),
    ];
    let ordered = run(&events);
    // Everything at once, answers first.
    let mut c = Conversations::new(ConversationConfig::default());
    let mut out = Vec::new();
    for (i, e) in events.iter().rev().enumerate() {
        c.process(e, i as i64);
    }
    c.advance(T0 + 10 * DAY, &mut out);
    let strip = |r: &ConversationRollup| {
        (
            r.window_start,
            r.content_id.clone(),
            r.inbound,
            r.answered,
            r.median_response_s.map(f64::to_bits),
            r.root_comments,
            r.reply_comments,
        )
    };
    let a: BTreeSet<_> = ordered.values().map(strip).collect();
    let b: BTreeSet<_> = out.iter().map(strip).collect();
    assert_eq!(a, b);
    assert_eq!(hour(&ordered, 0).answered, 3);
}

#[test]
fn restoring_from_the_changelog_at_any_point_continues_identically() {
    let events = [
        comment("c1", None, T0 + 10 * MINUTE),
        brand_reply("b0", "c9", T0 + 10 * MINUTE), // before its item
        comment("c2", Some("c1"), T0 + 11 * MINUTE),
        brand_reply("b1", "c1", T0 + 12 * MINUTE),
        dm(Kind::DmIn, "u1", "m1", T0 + 14 * MINUTE),
        comment("c9", None, T0 + 9 * MINUTE),
        dm(Kind::DmOut, "u1", "o1", T0 + 75 * MINUTE),
        ev(Kind::Comment, Action::Remove, "c2", T0 + 80 * MINUTE),
        ev(Kind::Comment, Action::Hide, "c7", T0 + 82 * MINUTE), // before its comment
        dm(Kind::DmIn, "u2", "m5", T0 + 84 * MINUTE),            // opens, until o4 arrives
        comment("c7", None, T0 + 81 * MINUTE),
        dm(Kind::DmOut, "u2", "o4", T0 + 83 * MINUTE),
    ];
    let feed = |c: &mut Conversations, from: usize, out: &mut Vec<ConversationRollup>| {
        for (i, e) in events.iter().enumerate().skip(from) {
            c.process(e, i as i64);
            let wm = events[..=i].iter().map(|e| e.event_time).max().unwrap_or(0) - 60_000;
            c.advance(wm, out);
        }
    };
    let mut expected = Vec::new();
    let mut a = Conversations::new(ConversationConfig::default());
    feed(&mut a, 0, &mut expected);
    a.advance(T0 + 10 * DAY, &mut expected);
    for cut in 0..events.len() {
        let mut a = Conversations::new(ConversationConfig::default());
        let mut out = Vec::new();
        for (i, e) in events.iter().enumerate().take(cut) {
            a.process(e, i as i64);
            let wm = events[..=i].iter().map(|e| e.event_time).max().unwrap_or(0) - 60_000;
            a.advance(wm, &mut out);
        }
        let mut b = Conversations::new(ConversationConfig::default());
        restore_copy(&mut a, &mut b);
        feed(&mut b, 0, &mut out);
        b.advance(T0 + 10 * DAY, &mut out);
        let key = |r: &ConversationRollup| format!("{r:?}");
        let mut got: Vec<String> = out.iter().map(key).collect();
        let mut want: Vec<String> = expected.iter().map(key).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "restored after {cut} events");
    }
}

/// The rows without what depends on arrival order (revision, emitted_at), and without rows
/// left empty (a window an item counted in until a later-arriving event took it back, as a
/// DM that opened until the brand's earlier DM arrived).
fn settled(rows: &BTreeMap<WindowKey, ConversationRollup>) -> Vec<String> {
    rows.values()
        .filter(|r| r.inbound != 0 || r.root_comments != 0 || r.reply_comments != 0)
        .map(|r| {
            let mut r = r.clone();
            r.revision = 0;
            r.emitted_at = 0;
            format!("{r:?}")
        })
        .collect()
}

/// `events` delivered in many orders within the lateness (each delayed by a seeded random
/// 0–30 minutes, and all of them at once in reverse when they span less than that): each
/// gives the rows of event-time order.
fn same_in_any_order(events: &[EngagementEvent], orders: u64) {
    let mut ordered = events.to_vec();
    ordered.sort_by_key(|e| e.event_time);
    let want = settled(&run(&ordered));
    let span = ordered.last().map_or(0, |e| e.event_time) - ordered[0].event_time;
    if span < 30 * MINUTE {
        let mut reversed = ordered.clone();
        reversed.reverse();
        assert_eq!(settled(&run(&reversed)), want, "reversed");
    }
    for seed in 1..=orders {
        let mut x = seed * 0x9E37_79B9;
        let mut delayed: Vec<(i64, EngagementEvent)> = ordered
            .iter()
            .map(|e| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (e.event_time + (x % (30 * MINUTE as u64)) as i64, e.clone())
            })
            .collect();
        delayed.sort_by_key(|(at, _)| *at);
        let shuffled: Vec<EngagementEvent> = delayed.into_iter().map(|(_, e)| e).collect();
        assert_eq!(settled(&run(&shuffled)), want, "order {seed}");
    }
}

#[test]
fn moderation_follows_event_time_whatever_arrives_first() {
    let hide = |id: &str, t: i64| ev(Kind::Comment, Action::Hide, id, t);
    let unhide = |id: &str, t: i64| ev(Kind::Comment, Action::Unhide, id, t);
    let events = vec![
        comment("c1", None, T0 + 10 * MINUTE),
        hide("c1", T0 + 11 * MINUTE),
        unhide("c1", T0 + 12 * MINUTE), // visible again
        comment("c2", None, T0 + 10 * MINUTE),
        ev(
            Kind::Comment,
            Action::Remove,
            "c2",
            T0 + 10 * MINUTE + 30_000,
        ), // removed
        comment("c3", None, T0 + 13 * MINUTE),
        unhide("c3", T0 + 13 * MINUTE + 10_000),
        hide("c3", T0 + 14 * MINUTE), // the latest is a HIDE: hidden
    ];
    // In event-time order: c1 counts, c2 and c3 do not.
    let mut ordered = events.clone();
    ordered.sort_by_key(|e| e.event_time);
    assert_eq!(hour(&run(&ordered), 0).inbound, 1);
    // The actions first, the UNHIDE of c1 before its HIDE, c3's HIDE before its UNHIDE.
    let mut first = ordered.clone();
    first.reverse();
    assert_eq!(hour(&run(&first), 0).inbound, 1);
    same_in_any_order(&events, 60);
}

#[test]
fn dm_conversations_are_decided_by_event_time() {
    let events = vec![
        dm(Kind::DmIn, "u1", "m1", T0 + HOUR),
        dm(Kind::DmIn, "u1", "m2", T0 + HOUR + 30_000), // the same conversation
        dm(Kind::DmOut, "u1", "o1", T0 + HOUR + 5 * MINUTE),
        dm(Kind::DmIn, "u1", "m3", T0 + 30 * HOUR), // after 29 h of silence: a new one
        dm(Kind::DmOut, "u2", "o2", T0 + 2 * HOUR),
        dm(Kind::DmIn, "u2", "m4", T0 + 2 * HOUR + MINUTE), // 1 minute after the brand: not new
        dm(Kind::StoryReply, "u3", "s1", T0 + 3 * HOUR),
        dm(Kind::DmOut, "u3", "o3", T0 + 3 * HOUR + 20_000),
    ];
    let mut ordered = events.clone();
    ordered.sort_by_key(|e| e.event_time);
    let rows = run(&ordered);
    let day = &rows[&("acct".to_owned(), String::new(), WindowKind::Day, T0)];
    assert_eq!(
        (day.inbound_dms, day.inbound_story_replies, day.answered),
        (1, 1, 2),
        "{day:?}"
    );
    // m2 arriving first would have opened in processing order; by event time m1 does.
    same_in_any_order(&events, 60);
}

#[test]
fn the_first_response_of_a_thread_counts_any_answer_in_it() {
    // A private reply to a reply in c1's thread comes before the brand's reply to c1 itself.
    let mut private = ev(Kind::PrivateReplySent, Action::Add, "p1", T0 + 20 * MINUTE);
    private.parent_id = Some("c2".into());
    private.is_brand_actor = true;
    let events = vec![
        comment("c1", None, T0 + 10 * MINUTE),
        comment("c2", Some("c1"), T0 + 15 * MINUTE),
        private,
        brand_reply("b1", "c1", T0 + 40 * MINUTE),
    ];
    let mut ordered = events.clone();
    ordered.sort_by_key(|e| e.event_time);
    let h0 = hour(&run(&ordered), 0).clone();
    assert_eq!((h0.inbound, h0.answered), (2, 2));
    let first = h0.median_first_response_s.unwrap();
    assert!(
        (first - 600.0).abs() <= 6.0,
        "10 minutes from c1 to p1: {first}"
    );
    same_in_any_order(&events, 30);
}

#[test]
fn an_item_is_written_with_its_times_as_null_or_a_number_and_read_back() {
    let mut it = Item {
        account: "acct".into(),
        content: Some("post".into()),
        kind: ItemKind::Comment,
        time: T0,
        reply: false,
        thread: "c1".into(),
        answered: Some(T0 + 5_000).into(),
        first_response: None.into(),
        removed: false,
    };
    let json = serde_json::to_string(&it).unwrap();
    assert_eq!(
        json,
        format!(
            r#"{{"account":"acct","content":"post","kind":"Comment","time":{T0},"reply":false,"thread":"c1","answered":{},"first_response":null,"removed":false}}"#,
            T0 + 5_000
        )
    );
    assert_eq!(serde_json::from_str::<Item>(&json).unwrap(), it);
    it.answered = None.into();
    it.first_response = Some(T0).into();
    let back: Item = serde_json::from_str(&serde_json::to_string(&it).unwrap()).unwrap();
    assert_eq!(
        (back.answered.get(), back.first_response.get()),
        (None, Some(T0))
    );
    // The times no longer carry an option's tag: the record is 16 bytes smaller.
    assert!(size_of::<Item>() <= 104, "{}", size_of::<Item>());
}

/// A restore gives each key its latest entry (`Operator::restore_entry`'s contract, which the
/// checkpoint reader keeps by collecting entries by key). Given a window's entries more than
/// once, each written while it waited for its emission, the window is still emitted once,
/// with the counts of the last: pending windows are listed, not kept in a set, and the list
/// relies on each window's pending mark.
#[test]
fn a_window_restored_from_several_entries_is_emitted_once() {
    let mut a = Conversations::new(ConversationConfig::default());
    let mut log = Vec::new();
    for (i, e) in [
        comment("c1", None, T0 + 10 * MINUTE),
        comment("c2", None, T0 + 10 * MINUTE + 5_000),
    ]
    .iter()
    .enumerate()
    {
        a.process(e, i as i64);
        // Written after each event, before any emission: both entries are marked pending.
        let mut changes = Changes::new();
        a.write_changes(&mut changes).expect("encodable");
        log.extend(changes.into_iter().map(|(_, c)| (c.key, c.value)));
    }
    let mut b = Conversations::new(ConversationConfig::default());
    restore_log(&mut b, log.iter().map(|(k, v)| (k, v)));
    let (mut want, mut got) = (Vec::new(), Vec::new());
    a.advance(T0 + 11 * MINUTE, &mut want);
    b.advance(T0 + 11 * MINUTE, &mut got);
    let windows = |rows: &[ConversationRollup]| {
        let mut w: Vec<String> = rows
            .iter()
            .map(|r| format!("{:?} {:?} {}", r.content_id, r.window, r.inbound))
            .collect();
        w.sort();
        w
    };
    // Four windows (the account's and the post's, HOUR and DAY), each once, with both comments.
    assert_eq!(
        windows(&got),
        [
            "None Day 2",
            "None Hour 2",
            "Some(\"post\") Day 2",
            "Some(\"post\") Hour 2"
        ]
    );
    assert_eq!(windows(&got), windows(&want));
}
