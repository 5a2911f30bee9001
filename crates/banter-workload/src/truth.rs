//! The ground truth of a workload, from the drafts it generated and DESIGN.md's definitions
//! (written from the text, not from the stream processor's code): interactions per minute,
//! the first hour, engagers, CTA funnels, conversations.

use std::collections::{BTreeMap, BTreeSet};

use banter_model::{Action, Kind};

use crate::{
    ConversationHour, Draft, Expected, FirstHour, Funnel, ResponsePercentiles, Spike, Workload,
    MINUTE,
};

impl Workload {
    /// The CTA funnels of the generated events, by DESIGN.md's definitions: per campaign, the
    /// distinct actors reaching each stage. A trigger is an actor's earliest keyword comment
    /// on the campaign's post; a stage counts for the campaign it names (a private reply names
    /// the campaign of the comment it answers, a conversion that of its click), else for the
    /// actor's last touch (the campaign it most recently triggered at or before the event),
    /// between the trigger and 7 days after it (an engaging DM strictly after it). Engaged: a
    /// postback, or any DM from the actor. The value: each converted actor's conversion.
    fn expected_funnels(&self, too_late: &BTreeSet<&String>) -> BTreeMap<String, Funnel> {
        const ATTRIBUTION_MS: i64 = 7 * 24 * 60 * MINUTE;
        struct Ev {
            stage: usize,
            time: i64,
            campaign: Option<String>,
            click: Option<String>,
            cents: u64,
            strict: bool,
        }
        let counted = || {
            self.drafts
                .iter()
                .filter(|d| !d.duplicate && d.action == Action::Add)
                .filter(|d| !too_late.contains(&self.event_id(d)))
        };
        // Triggers: (account, actor) -> campaign -> earliest time; comment serial -> campaign.
        let mut triggers: BTreeMap<(u32, u32), BTreeMap<String, i64>> = BTreeMap::new();
        let mut trigger_comments: BTreeMap<u64, String> = BTreeMap::new();
        for d in counted().filter(|d| d.kind == Kind::Comment && d.keyword) {
            let Some((campaign, _)) = &self.posts[d.post as usize].cta else {
                continue;
            };
            let t = triggers
                .entry((d.account, d.actor))
                .or_default()
                .entry(campaign.clone())
                .or_insert(d.event_time);
            *t = (*t).min(d.event_time);
            trigger_comments.insert(d.serial, campaign.clone());
        }
        let mut events: BTreeMap<(u32, u32), Vec<Ev>> = BTreeMap::new();
        for d in counted() {
            let cta = self.posts[d.post as usize]
                .cta
                .as_ref()
                .map(|c| c.0.clone());
            let click = || {
                cta.as_ref()
                    .map(|c| format!("clk-{}-{}-{c}", d.account, d.actor))
            };
            let ev = match d.kind {
                Kind::PrivateReplySent => Ev {
                    stage: 1,
                    time: d.event_time,
                    campaign: trigger_comments.get(&d.parent).cloned(),
                    click: None,
                    cents: 0,
                    strict: false,
                },
                Kind::DmRead | Kind::DmPostback => Ev {
                    stage: if d.kind == Kind::DmRead { 2 } else { 3 },
                    time: d.event_time,
                    campaign: None,
                    click: None,
                    cents: 0,
                    strict: false,
                },
                Kind::DmIn if d.actor != u32::MAX => Ev {
                    stage: 3,
                    time: d.event_time,
                    campaign: None,
                    click: None,
                    cents: 0,
                    strict: true,
                },
                Kind::LinkClick => Ev {
                    stage: 4,
                    time: d.event_time,
                    campaign: cta.clone(),
                    click: click(),
                    cents: 0,
                    strict: false,
                },
                Kind::Conversion => Ev {
                    stage: 5,
                    time: d.event_time,
                    campaign: None,
                    click: click(),
                    cents: u64::from(d.value_cents),
                    strict: false,
                },
                _ => continue,
            };
            events.entry((d.account, d.actor)).or_default().push(ev);
        }
        let mut funnels: BTreeMap<String, Funnel> = BTreeMap::new();
        let mut reached: BTreeMap<String, [BTreeSet<(u32, u32)>; 6]> = BTreeMap::new();
        for (who, tr) in &triggers {
            for campaign in tr.keys() {
                reached.entry(campaign.clone()).or_default()[0].insert(*who);
            }
            let evs = events.get(who).map(Vec::as_slice).unwrap_or_default();
            let last_touch = |time: i64| {
                tr.iter()
                    .filter(|(_, &t)| t <= time)
                    .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
                    .map(|(c, _)| c.clone())
            };
            let attributed = |ev: &Ev| -> Option<String> {
                if let Some(c) = &ev.campaign {
                    return tr.contains_key(c).then(|| c.clone());
                }
                if ev.stage == 5 {
                    if let Some(c) = evs
                        .iter()
                        .find(|k| k.stage == 4 && k.click.is_some() && k.click == ev.click)
                    {
                        return c
                            .campaign
                            .clone()
                            .filter(|c| tr.contains_key(c))
                            .or_else(|| last_touch(c.time));
                    }
                }
                last_touch(ev.time)
            };
            let mut converted: BTreeMap<String, (i64, u64)> = BTreeMap::new();
            for ev in evs {
                let Some(campaign) = attributed(ev) else {
                    continue;
                };
                let t0 = tr[&campaign];
                let after = if ev.strict {
                    ev.time > t0
                } else {
                    ev.time >= t0
                };
                if !after || ev.time > t0 + ATTRIBUTION_MS {
                    continue;
                }
                reached.entry(campaign.clone()).or_default()[ev.stage].insert(*who);
                if ev.stage == 5 {
                    let c = converted.entry(campaign).or_insert((ev.time, ev.cents));
                    if ev.time < c.0 {
                        *c = (ev.time, ev.cents);
                    }
                }
            }
            for (campaign, (_, cents)) in converted {
                funnels.entry(campaign).or_default().conversion_value_cents += cents;
            }
        }
        for (campaign, stages) in reached {
            let f = funnels.entry(campaign.clone()).or_default();
            f.account_id = self
                .posts
                .iter()
                .find(|p| p.cta.as_ref().is_some_and(|(c, _)| *c == campaign))
                .map(|p| p.account_id.clone())
                .unwrap_or_default();
            f.triggered = stages[0].len() as u64;
            f.private_reply_sent = stages[1].len() as u64;
            f.dm_read = stages[2].len() as u64;
            f.engaged = stages[3].len() as u64;
            f.link_clicked = stages[4].len() as u64;
            f.converted = stages[5].len() as u64;
        }
        funnels
    }

    pub(crate) fn compute_expected(
        &self,
        unique: u64,
        late_within: u64,
        too_late: Vec<String>,
        spikes: Vec<Spike>,
    ) -> Expected {
        let too_late_set: BTreeSet<&String> = too_late.iter().collect();
        let mut x = Expected {
            unique_events: unique,
            deliveries: self.drafts.len() as u64,
            duplicates: self.drafts.iter().filter(|d| d.duplicate).count() as u64,
            late_within_lateness: late_within,
            spikes,
            ..Default::default()
        };
        // Per post: its interactions (time, ±1, engager).
        let mut post_times: BTreeMap<u32, Vec<(i64, i64, Option<u32>)>> = BTreeMap::new();
        let mut account_engagers: BTreeMap<(&str, i64), BTreeSet<u32>> = BTreeMap::new();
        let mut post_engagers: BTreeMap<(&str, i64), BTreeSet<u32>> = BTreeMap::new();
        for d in self.counted(&too_late_set) {
            let post = &self.posts[d.post as usize];
            let sign = d.action.count_delta();
            *x.kinds.entry(d.kind.to_string()).or_default() += sign;
            let minute = d.event_time - d.event_time.rem_euclid(MINUTE);
            let brand = d.actor == u32::MAX
                || matches!(
                    d.kind,
                    Kind::DmOut | Kind::PrivateReplySent | Kind::BrandReply
                );
            let interaction = d.kind.is_interaction() && !brand;
            // An engager: the actor of an interaction that adds (a removal takes nobody away).
            let engager = (interaction && sign > 0).then_some(d.actor);
            if interaction {
                *x.account_minutes
                    .entry(post.account_id.clone())
                    .or_default()
                    .entry(minute)
                    .or_default() += sign;
                if let Some(a) = engager {
                    account_engagers
                        .entry((&post.account_id, minute))
                        .or_default()
                        .insert(a);
                }
                if d.kind != Kind::DmIn {
                    *x.content_minutes
                        .entry(post.content_id.clone())
                        .or_default()
                        .entry(minute)
                        .or_default() += sign;
                    if let Some(a) = engager {
                        post_engagers
                            .entry((&post.content_id, minute))
                            .or_default()
                            .insert(a);
                    }
                    post_times
                        .entry(d.post)
                        .or_default()
                        .push((d.event_time, sign, engager));
                }
            }
            if d.kind != Kind::DmIn
                && !matches!(
                    d.kind,
                    Kind::DmOut
                        | Kind::DmRead
                        | Kind::DmPostback
                        | Kind::LinkClick
                        | Kind::Conversion
                        | Kind::PrivateReplySent
                )
            {
                *x.content_kind_minutes
                    .entry(post.content_id.clone())
                    .or_default()
                    .entry(minute)
                    .or_default()
                    .entry(d.kind.to_string())
                    .or_default() += sign;
            }
        }
        for ((account, minute), set) in account_engagers {
            x.account_minute_engagers
                .entry(account.to_owned())
                .or_default()
                .insert(minute, set.len() as u64);
        }
        for ((content, minute), set) in post_engagers {
            x.content_minute_engagers
                .entry(content.to_owned())
                .or_default()
                .insert(minute, set.len() as u64);
        }
        (x.conversations, x.conversation_totals) = self.expected_conversations(&too_late_set);
        for (account, hours) in &x.conversations {
            let e = x.comments_answered.entry(account.clone()).or_default();
            for h in hours.values() {
                e.0 += h.inbound_comments as u64;
                e.1 += h.answered_comments as u64;
            }
        }
        x.comments_answered.retain(|_, v| v.0 > 0);
        x.funnels = self.expected_funnels(&too_late_set);
        // Only POST_PUBLISHED carries the publication time: a post whose publication was
        // delivered too late (dead-lettered) has no first-hour rows.
        let published: BTreeSet<u32> = self
            .counted(&too_late_set)
            .filter(|d| d.kind == Kind::PostPublished)
            .map(|d| d.post)
            .collect();
        for (pi, mut times) in post_times {
            if !published.contains(&pi) {
                continue;
            }
            let post = &self.posts[pi as usize];
            // Only posts whose first hour lies inside the span have complete first-hour counts.
            if post.published_at < self.config.start_ms
                || post.published_at + 60 * MINUTE > self.config.start_ms + self.config.duration_ms
            {
                continue;
            }
            times.sort_unstable();
            let p = post.published_at;
            let mut fh = FirstHour::default();
            // time_to_n: the event time of the N-th net interaction of the first hour, exact to
            // the ms (interactions of one ms taken together).
            let mut running = 0i64;
            let first_hour: Vec<(i64, i64, Option<u32>)> = times
                .into_iter()
                .filter(|(t, _, _)| (p..p + 60 * MINUTE).contains(t))
                .collect();
            let (mut engagers_15, mut engagers_60) = (BTreeSet::new(), BTreeSet::new());
            for (i, &(t, sign, engager)) in first_hour.iter().enumerate() {
                if t < p + 15 * MINUTE {
                    fh.first_15m += sign;
                    engagers_15.extend(engager);
                }
                fh.first_60m += sign;
                engagers_60.extend(engager);
                running += sign;
                let last_of_its_ms = first_hour.get(i + 1).is_none_or(|n| n.0 != t);
                if fh.time_to_n_minutes.is_none()
                    && last_of_its_ms
                    && running >= self.config.time_to_n as i64
                {
                    fh.time_to_n_minutes = Some((t - p) as f64 / MINUTE as f64);
                }
            }
            fh.engagers_15m = engagers_15.len() as u64;
            fh.engagers_60m = engagers_60.len() as u64;
            x.first_hour.insert(post.content_id.clone(), fh);
        }
        x.too_late = too_late;
        x
    }

    /// The deliveries the stream counts: one per event (no duplicates), none too late.
    fn counted<'a>(
        &'a self,
        too_late: &'a BTreeSet<&String>,
    ) -> impl Iterator<Item = &'a Draft> + 'a {
        self.drafts
            .iter()
            .filter(move |d| !d.duplicate && !too_late.contains(&self.event_id(d)))
    }

    /// The account-level conversation rows per hour, by the definitions in the README
    /// ("Definitions"), from DESIGN.md:
    ///
    /// * Inbound items: a comment (not the brand's) whose state is visible; a story reply; a
    ///   DM that opens a conversation — no DM either way (DM_IN, DM_OUT, STORY_REPLY) in its
    ///   thread in the 24 hours before it. An item belongs to the hour of its event time.
    /// * A comment's state follows its actions by event time: removed by any REMOVE, else
    ///   hidden when its latest HIDE / UNHIDE is a HIDE.
    /// * Its answer: the earliest BRAND_REPLY or PRIVATE_REPLY_SENT naming the comment as
    ///   parent; a story reply's or DM's: the brand's earliest DM_OUT in the thread at or after
    ///   it. Response time = answer − item, in seconds.
    /// * First response of a thread root (a top-level comment, a story reply, an opening DM):
    ///   the earliest BRAND_REPLY or PRIVATE_REPLY_SENT on any comment of the thread (the
    ///   root and the replies to it); the answer for DM threads.
    /// * Median and p90: the ⌈q·n⌉-th smallest value (nearest rank).
    ///
    /// With them, per account, the percentiles over all its hours from the raw values.
    #[allow(clippy::type_complexity)]
    fn expected_conversations(
        &self,
        too_late: &BTreeSet<&String>,
    ) -> (
        BTreeMap<String, BTreeMap<i64, ConversationHour>>,
        BTreeMap<String, ResponsePercentiles>,
    ) {
        const HOUR: i64 = 60 * MINUTE;
        const SILENCE: i64 = 24 * HOUR;
        struct Comment<'a> {
            account: &'a str,
            time: i64,
            reply: bool,
            thread: u64,
        }
        let mut comments: BTreeMap<u64, Comment> = BTreeMap::new();
        let mut actions: BTreeMap<u64, Vec<(i64, Action)>> = BTreeMap::new();
        // Comment serial -> its earliest answer; (account, thread root) -> the earliest answer
        // in the thread.
        let mut answers: BTreeMap<u64, i64> = BTreeMap::new();
        let mut thread_first: BTreeMap<(&str, u64), i64> = BTreeMap::new();
        let mut private_replies: Vec<(u64, i64)> = Vec::new();
        // DM threads: (account, actor) -> (time, object id, kind).
        type DmItem = (i64, String, Kind);
        let mut dms: BTreeMap<(&str, u32), Vec<DmItem>> = BTreeMap::new();
        let min_into = |m: &mut i64, t: i64| *m = (*m).min(t);
        for d in self.counted(too_late) {
            let account = self.posts[d.post as usize].account_id.as_str();
            match (d.kind, d.action) {
                (Kind::Comment, Action::Add) if d.actor != u32::MAX => {
                    comments.insert(
                        d.serial,
                        Comment {
                            account,
                            time: d.event_time,
                            reply: d.parent != 0,
                            thread: d.thread,
                        },
                    );
                }
                (Kind::Comment, Action::Remove | Action::Hide | Action::Unhide) => {
                    actions
                        .entry(d.serial)
                        .or_default()
                        .push((d.event_time, d.action));
                }
                (Kind::BrandReply, Action::Add) => {
                    min_into(answers.entry(d.parent).or_insert(i64::MAX), d.event_time);
                    // A public reply names its thread.
                    min_into(
                        thread_first.entry((account, d.thread)).or_insert(i64::MAX),
                        d.event_time,
                    );
                }
                (Kind::PrivateReplySent, Action::Add) => {
                    min_into(answers.entry(d.parent).or_insert(i64::MAX), d.event_time);
                    private_replies.push((d.parent, d.event_time));
                }
                (Kind::StoryReply | Kind::DmIn | Kind::DmOut, Action::Add) => {
                    dms.entry((account, d.actor)).or_default().push((
                        d.event_time,
                        format!("m{}", d.serial),
                        d.kind,
                    ));
                }
                _ => {}
            }
        }
        // A private reply names only its comment: its thread is the comment's.
        for (parent, t) in private_replies {
            if let Some(c) = comments.get(&parent) {
                min_into(
                    thread_first
                        .entry((c.account, c.thread))
                        .or_insert(i64::MAX),
                    t,
                );
            }
        }
        #[derive(Default)]
        struct Hour {
            row: ConversationHour,
            response: Vec<f64>,
            first_response: Vec<f64>,
        }
        let mut hours: BTreeMap<(&str, i64), Hour> = BTreeMap::new();
        let secs = |from: i64, to: i64| (to - from) as f64 / 1000.0;
        for (serial, c) in &comments {
            let mut acts = actions.get(serial).cloned().unwrap_or_default();
            acts.sort();
            let removed = acts.iter().any(|a| a.1 == Action::Remove);
            let hidden = acts
                .iter()
                .rfind(|a| matches!(a.1, Action::Hide | Action::Unhide))
                .is_some_and(|a| a.1 == Action::Hide);
            if removed || hidden {
                continue;
            }
            let h = hours
                .entry((c.account, c.time - c.time.rem_euclid(HOUR)))
                .or_default();
            h.row.inbound += 1;
            h.row.inbound_comments += 1;
            if c.reply {
                h.row.reply_comments += 1;
            } else {
                h.row.root_comments += 1;
                if let Some(&first) = thread_first.get(&(c.account, *serial)) {
                    h.first_response.push(secs(c.time, first));
                }
            }
            if let Some(&a) = answers.get(serial) {
                h.row.answered += 1;
                h.row.answered_comments += 1;
                h.response.push(secs(c.time, a));
            }
        }
        for ((account, _), mut thread) in dms {
            thread.sort();
            for (i, (t, _, kind)) in thread.iter().enumerate() {
                let opens = match kind {
                    Kind::StoryReply => true,
                    Kind::DmIn => thread[..i].iter().all(|d| d.0 < t - SILENCE),
                    _ => false,
                };
                if !opens {
                    continue;
                }
                let h = hours.entry((account, t - t.rem_euclid(HOUR))).or_default();
                h.row.inbound += 1;
                if *kind == Kind::StoryReply {
                    h.row.inbound_story_replies += 1;
                } else {
                    h.row.inbound_dms += 1;
                }
                let answer = thread
                    .iter()
                    .find(|d| d.2 == Kind::DmOut && d.0 >= *t)
                    .map(|d| d.0);
                if let Some(a) = answer {
                    h.row.answered += 1;
                    h.response.push(secs(*t, a));
                    h.first_response.push(secs(*t, a));
                }
            }
        }
        let mut out: BTreeMap<String, BTreeMap<i64, ConversationHour>> = BTreeMap::new();
        let mut all: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        for ((account, _), h) in &hours {
            let a = all.entry(account).or_default();
            a.0.extend(&h.response);
            a.1.extend(&h.first_response);
        }
        let totals = all
            .into_iter()
            .map(|(account, (mut response, mut first))| {
                (
                    account.to_owned(),
                    ResponsePercentiles {
                        median_response_s: nearest_rank(&mut response, 0.5),
                        p90_response_s: nearest_rank(&mut response, 0.9),
                        median_first_response_s: nearest_rank(&mut first, 0.5),
                    },
                )
            })
            .collect();
        for ((account, hour), mut h) in hours {
            h.row.median_response_s = nearest_rank(&mut h.response, 0.5);
            h.row.p90_response_s = nearest_rank(&mut h.response, 0.9);
            h.row.median_first_response_s = nearest_rank(&mut h.first_response, 0.5);
            out.entry(account.to_owned())
                .or_default()
                .insert(hour, h.row);
        }
        (out, totals)
    }
}

/// The ⌈q·n⌉-th smallest of `v` (None when empty).
fn nearest_rank(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).max(1);
    Some(v[rank - 1])
}
