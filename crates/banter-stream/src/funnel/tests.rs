use std::collections::BTreeMap;

use super::*;
use crate::cta::{Campaign, Scope};
use crate::operator::restore_copy;
use banter_model::Platform;

const T0: i64 = 1_764_028_800_000; // 2025-11-25 00:00 UTC

fn matcher() -> Matcher {
    Matcher::new(&[
        Campaign {
            id: "spring".into(),
            account_id: "acct".into(),
            keywords: vec!["info".into()],
            scope: Scope::Account,
            active_from: None,
            active_until: None,
        },
        Campaign {
            id: "summer".into(),
            account_id: "acct".into(),
            keywords: vec!["sun".into()],
            scope: Scope::Post("post-2".into()),
            active_from: None,
            active_until: None,
        },
    ])
    .unwrap()
}

fn ev(kind: Kind, actor: &str, t: i64) -> EngagementEvent {
    let mut e = EngagementEvent::new(
        format!("{kind}:{actor}:{t}"),
        Platform::Instagram,
        kind,
        Action::Add,
        "acct",
        t,
    );
    e.actor_id = Some(actor.into());
    e.is_brand_actor = matches!(kind, Kind::PrivateReplySent);
    e
}

fn comment(actor: &str, text: &str, t: i64) -> EngagementEvent {
    let mut e = ev(Kind::Comment, actor, t);
    e.content_id = Some("post-1".into());
    e.text = Some(text.into());
    e
}

fn stage(kind: Kind, actor: &str, campaign: Option<&str>, t: i64) -> EngagementEvent {
    let mut e = ev(kind, actor, t);
    e.cta_campaign_id = campaign.map(Into::into);
    e
}

/// Runs events (in the given order, offsets in order) then closes everything; returns the
/// final row per (campaign, window, start).
fn run(events: &[EngagementEvent]) -> BTreeMap<(String, WindowKind, i64), FunnelRollup> {
    let mut f = Funnels::new(FunnelConfig::default(), matcher());
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        f.process(e, i as i64);
        let wm = events[..=i].iter().map(|e| e.event_time).max().unwrap() - 60_000;
        f.advance(wm, &mut out);
    }
    f.advance(T0 + 30 * DAY, &mut out);
    let mut last = BTreeMap::new();
    for r in out {
        let k = (r.campaign_id.clone(), r.window, r.window_start);
        if last
            .get(&k)
            .is_none_or(|o: &FunnelRollup| o.revision <= r.revision)
        {
            last.insert(k, r);
        }
    }
    last
}

fn totals(rows: &BTreeMap<(String, WindowKind, i64), FunnelRollup>, campaign: &str) -> [i64; 6] {
    let mut t = [0; 6];
    for r in rows.values() {
        if r.campaign_id == campaign && r.window == WindowKind::Day {
            for (sum, v) in t.iter_mut().zip(r.stages()) {
                *sum += v;
            }
        }
    }
    t
}

fn journey(actor: &str, t: i64) -> Vec<EngagementEvent> {
    let mut click = stage(Kind::LinkClick, actor, Some("spring"), t + 600_000);
    click.click_id = Some(format!("clk-{actor}"));
    // The conversion names only the click.
    let mut conv = stage(
        Kind::Conversion,
        &format!("shop-{actor}"),
        None,
        t + DAY + HOUR,
    );
    conv.click_id = Some(format!("clk-{actor}"));
    conv.value = Some(49.9);
    conv.currency = Some("EUR".into());
    vec![
        comment(actor, "INFO please!! 😍", t),
        stage(Kind::PrivateReplySent, actor, Some("spring"), t + 10_000),
        stage(Kind::DmRead, actor, Some("spring"), t + 70_000),
        stage(Kind::DmPostback, actor, Some("spring"), t + 130_000),
        click,
        conv,
    ]
}

#[test]
fn a_funnel_across_days_counts_each_stage_once_in_its_windows() {
    let mut events = journey("u1", T0 + 22 * HOUR);
    // A second keyword comment of the same actor, and a partial word that must not match.
    events.push(comment("u1", "info again", T0 + 23 * HOUR));
    events.push(comment("u2", "information?", T0 + 23 * HOUR));
    events.sort_by_key(|e| e.event_time);
    let rows = run(&events);
    assert_eq!(totals(&rows, "spring"), [1, 1, 1, 1, 1, 1]);
    // Day 1 holds the trigger to the click, day 2 the conversion with its value.
    let d1 = &rows[&("spring".to_owned(), WindowKind::Day, T0)];
    assert_eq!((d1.triggered, d1.link_clicked, d1.converted), (1, 1, 0));
    let d2 = &rows[&("spring".to_owned(), WindowKind::Day, T0 + DAY)];
    assert_eq!(d2.converted, 1);
    assert!((d2.conversion_value - 49.9).abs() < 1e-9);
    assert_eq!(d2.currency.as_deref(), Some("EUR"));
    let secs = d2.median_click_to_conversion_s.unwrap();
    let want = (DAY + HOUR - 600_000) as f64 / 1000.0;
    assert!((secs - want).abs() <= 0.01 * want, "{secs} vs {want}");
    let h = &rows[&("spring".to_owned(), WindowKind::Hour, T0 + 22 * HOUR)];
    let reply = h.median_trigger_to_reply_s.unwrap();
    assert!((reply - 10.0).abs() <= 0.1, "{reply}");
    assert!((h.median_reply_to_click_s.unwrap() - 590.0).abs() <= 5.9);
}

#[test]
fn out_of_order_and_duplicated_input_gives_the_same_rows() {
    let mut events = journey("u1", T0 + 5 * HOUR);
    events.extend(journey("u2", T0 + 5 * HOUR + 30_000));
    events.sort_by_key(|e| e.event_time);
    let ordered = run(&events);
    // Stages before their trigger (within the lateness), and every event twice.
    let mut shuffled: Vec<EngagementEvent> = events.iter().rev().cloned().collect();
    shuffled.extend(events.iter().cloned());
    let mut f = Funnels::new(FunnelConfig::default(), matcher());
    let mut out = Vec::new();
    for (i, e) in shuffled.iter().enumerate() {
        f.process(e, i as i64);
    }
    f.advance(T0 + 30 * DAY, &mut out);
    let mut last: BTreeMap<_, FunnelRollup> = BTreeMap::new();
    for r in out {
        last.insert((r.campaign_id.clone(), r.window, r.window_start), r);
    }
    let strip = |m: &BTreeMap<_, FunnelRollup>| -> Vec<_> {
        m.values()
            .map(|r| {
                (
                    r.window_start,
                    r.triggered,
                    r.private_reply_sent,
                    r.dm_read,
                    r.engaged,
                    r.link_clicked,
                    r.converted,
                    r.conversion_value.to_bits(),
                    r.median_trigger_to_reply_s.map(f64::to_bits),
                )
            })
            .collect()
    };
    assert_eq!(strip(&last), strip(&ordered));
    assert_eq!(totals(&ordered, "spring"), [2, 2, 2, 2, 2, 2]);
}

#[test]
fn a_conversion_after_seven_days_is_not_attributed() {
    let t = T0 + HOUR;
    let mut late = stage(Kind::Conversion, "u1", Some("spring"), t + 7 * DAY + 1);
    late.value = Some(10.0);
    let mut in_time = stage(Kind::Conversion, "u3", None, t + 7 * DAY - 1);
    in_time.value = Some(5.0);
    let events = vec![
        comment("u1", "info", t),
        comment("u3", "info", t),
        in_time, // by last touch: the actor's only campaign
        late,
        // Not attributable: no trigger by this actor.
        stage(Kind::DmRead, "u9", None, t + 100),
    ];
    let rows = run(&events);
    assert_eq!(totals(&rows, "spring"), [2, 0, 0, 0, 0, 1]);
    let value: f64 = rows
        .values()
        .filter(|r| r.window == WindowKind::Day)
        .map(|r| r.conversion_value)
        .sum();
    assert!((value - 5.0).abs() < 1e-9);
}

#[test]
fn last_touch_picks_the_latest_campaign_and_scope_is_respected() {
    let t = T0 + HOUR;
    let mut sun = comment("u1", "sun!", t + 1000);
    sun.content_id = Some("post-2".into());
    let mut sun_elsewhere = comment("u2", "sun", t + 1000);
    sun_elsewhere.content_id = Some("post-1".into());
    let mut dm = stage(Kind::DmIn, "u1", None, t + 3000);
    dm.ref_ = Some("summer".into());
    let events = vec![
        comment("u1", "info", t),
        sun,
        sun_elsewhere,
        stage(Kind::LinkClick, "u1", None, t + 2000), // last touch: summer
        dm,                                           // engaged via ref
        stage(Kind::DmIn, "u1", None, t + 4000),      // a plain DM: engaged too (last touch)
    ];
    let rows = run(&events);
    assert_eq!(totals(&rows, "spring"), [1, 0, 0, 0, 0, 0]);
    assert_eq!(totals(&rows, "summer"), [1, 0, 0, 1, 1, 0]);
}

#[test]
fn restoring_from_the_changelog_at_any_point_continues_identically() {
    let mut events = journey("u1", T0 + 2 * HOUR);
    events.extend(journey("u2", T0 + 2 * HOUR + 5_000));
    events.push(comment("u3", "info", T0 + 3 * HOUR));
    events.sort_by_key(|e| e.event_time);
    // Stages before their trigger, a reply before its comment, a conversion before its
    // click: state that waits is restored too.
    let mut unnamed = unnamed_journey("u4", T0 + 4 * HOUR);
    unnamed.reverse();
    events.extend(unnamed);
    let feed = |f: &mut Funnels, from: usize, to: usize, out: &mut Vec<FunnelRollup>| {
        for (i, e) in events.iter().enumerate().take(to).skip(from) {
            f.process(e, i as i64);
            let wm = events[..=i].iter().map(|e| e.event_time).max().unwrap() - 60_000;
            f.advance(wm, out);
        }
    };
    let mut expected = Vec::new();
    let mut a = Funnels::new(FunnelConfig::default(), matcher());
    feed(&mut a, 0, events.len(), &mut expected);
    a.advance(T0 + 30 * DAY, &mut expected);
    for cut in 0..events.len() {
        let mut a = Funnels::new(FunnelConfig::default(), matcher());
        let mut out = Vec::new();
        feed(&mut a, 0, cut, &mut out);
        let mut b = Funnels::new(FunnelConfig::default(), matcher());
        restore_copy(&mut a, &mut b);
        // The replay from the start: what was applied is skipped.
        feed(&mut b, 0, events.len(), &mut out);
        b.advance(T0 + 30 * DAY, &mut out);
        // One emission's rows may come in another order after a restore (hash maps).
        let key = |r: &FunnelRollup| format!("{r:?}");
        let mut got: Vec<String> = out.iter().map(key).collect();
        let mut want: Vec<String> = expected.iter().map(key).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "restored after {cut} events");
    }
}

/// A journey as the platforms report it: nothing after the trigger names the campaign but the
/// click; the private reply is the brand's and names the comment it answers; the conversion
/// names only its click; engagement is a plain DM.
fn unnamed_journey(actor: &str, t: i64) -> Vec<EngagementEvent> {
    let mut trigger = comment(actor, "info please", t);
    trigger.object_id = Some(format!("c-{actor}"));
    let mut reply = stage(Kind::PrivateReplySent, "brand", None, t + 8_000);
    reply.parent_id = Some(format!("c-{actor}"));
    let mut click = stage(Kind::LinkClick, actor, Some("spring"), t + 40_000);
    click.click_id = Some(format!("k-{actor}"));
    let mut conv = stage(Kind::Conversion, &format!("shop-{actor}"), None, t + 50_000);
    conv.click_id = Some(format!("k-{actor}"));
    conv.value = Some(20.0);
    vec![
        trigger,
        reply,
        stage(Kind::DmRead, actor, None, t + 15_000),
        stage(Kind::DmIn, actor, None, t + 30_000),
        click,
        conv,
    ]
}

/// The rows without what depends on arrival order (revision, emitted_at).
fn counts(rows: &BTreeMap<(String, WindowKind, i64), FunnelRollup>) -> Vec<String> {
    rows.values()
        .map(|r| {
            format!(
                "{} {:?} {} {:?} {} {:?}",
                r.campaign_id,
                r.window,
                r.window_start,
                r.stages(),
                r.conversion_value,
                r.median_trigger_to_reply_s.map(f64::to_bits)
            )
        })
        .collect()
}

#[test]
fn stages_before_their_trigger_reply_before_its_comment_conversion_before_its_click_count() {
    let mut events = unnamed_journey("u1", T0 + HOUR);
    events.extend(unnamed_journey("u2", T0 + HOUR + 20_000));
    events.sort_by_key(|e| e.event_time);
    let ordered = run(&events);
    assert_eq!(
        totals(&ordered, "spring"),
        [2, 2, 2, 2, 2, 2],
        "{ordered:#?}"
    );
    // Every arrival order within a minute: here, all reversed, and shuffles.
    let mut reversed = events.clone();
    reversed.reverse();
    assert_eq!(counts(&run(&reversed)), counts(&ordered));
    for seed in 1..40u64 {
        let mut shuffled = events.clone();
        let mut x = seed;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        assert_eq!(counts(&run(&shuffled)), counts(&ordered), "seed {seed}");
    }
}

#[test]
fn an_earlier_trigger_of_another_campaign_arriving_last_takes_the_last_touch_back() {
    // u1 asks for spring, then for summer on post-2; a read after both belongs to summer.
    let t = T0 + HOUR;
    let mut sun = comment("u1", "sun", t + 10_000);
    sun.content_id = Some("post-2".into());
    let read = stage(Kind::DmRead, "u1", None, t + 20_000);
    let ordered = run(&[comment("u1", "info", t), sun.clone(), read.clone()]);
    assert_eq!(totals(&ordered, "summer"), [1, 0, 1, 0, 0, 0]);
    assert_eq!(totals(&ordered, "spring"), [1, 0, 0, 0, 0, 0]);
    let late_summer = run(&[comment("u1", "info", t), read, sun]);
    assert_eq!(counts(&late_summer), counts(&ordered));
}

#[test]
fn a_busy_actors_conversion_hours_later_still_counts() {
    // Someone who keeps commenting the keyword and gets a reply, a read and a click each time
    // (one click id, as a shop's tracking gives one per person and campaign): hundreds of
    // stage events over the week, then the conversion. It counts, with its value.
    let mut events = Vec::new();
    for i in 0..120i64 {
        let t = T0 + i * 5 * crate::MINUTE;
        events.push(comment("fan", "info please", t));
        events.push(stage(Kind::PrivateReplySent, "fan", None, t + 10_000));
        events.push(stage(Kind::DmRead, "fan", None, t + 40_000));
        let mut click = stage(Kind::LinkClick, "fan", Some("spring"), t + 90_000);
        click.click_id = Some("clk-fan".into());
        events.push(click);
    }
    let mut conv = stage(Kind::Conversion, "shop", None, T0 + 2 * DAY);
    conv.click_id = Some("clk-fan".into());
    conv.value = Some(49.9);
    conv.currency = Some("EUR".into());
    events.push(conv);
    let rows = run(&events);
    assert_eq!(totals(&rows, "spring"), [1, 1, 1, 0, 1, 1]);
    let value: f64 = rows
        .values()
        .filter(|r| r.window == WindowKind::Day)
        .map(|r| r.conversion_value)
        .sum();
    assert!((value - 49.9).abs() < 1e-9, "{value}");
}
