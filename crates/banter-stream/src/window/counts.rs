//! One key's counts in a pane, and the MINUTE and VELOCITY_5M rows made of them.

use banter_model::{EngagementEvent, Kind, Rollup, SmolStr, WindowKind};

use super::names::{Key, Names};
use crate::sketch::{actor_hash, Sketch};
use crate::time::MINUTE;

/// One key's counts in one pane (or a sum of five). Counters are 32-bit (a key would need two
/// billion events in a minute to overflow): smaller entries, less memory to move per event.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Counts {
    interactions: i32,
    comments: i32,
    live_comments: i32,
    reactions: i32,
    shares: i32,
    story_replies: i32,
    dms_in: i32,
    mentions: i32,
    brand_replies: i32,
    /// Events that arrived late, by how many minutes' windows had closed past theirs then:
    /// `late[j - 1]` arrived when the window ending j minutes after their minute's start was
    /// out already (the last: 5 or more). Late for the MINUTE row: all of them; for the
    /// VELOCITY_5M row ending j minutes after this pane's start: those of `late[j - 1..]`.
    late: [i32; 5],
    pub(super) revision: i64,
    /// Distinct non-brand actors with an interaction that adds.
    pub(super) engagers: Sketch,
}

/// The publication time an event gives its post: `content_published_at`, or for a
/// POST_PUBLISHED event without one its own time.
pub(super) fn publication(e: &EngagementEvent) -> Option<i64> {
    if e.kind == Kind::PostPublished {
        e.content_published_at.or(Some(e.event_time))
    } else {
        e.content_published_at
    }
}

/// The actor of an event that counts as an engager: a non-brand actor whose interaction adds.
pub(super) fn engager(e: &EngagementEvent) -> Option<u64> {
    if e.interaction_delta() > 0 {
        e.actor_id.as_deref().map(actor_hash)
    } else {
        None
    }
}

impl Counts {
    /// Counts `e` (read at `offset`), late by `late` minutes' windows (0: on time; see
    /// [`Counts::late`]).
    pub(super) fn add(&mut self, e: &EngagementEvent, actor: Option<u64>, offset: i64, late: u8) {
        let d = e.action.count_delta() as i32;
        self.interactions += e.interaction_delta() as i32;
        if let Some(a) = actor {
            self.engagers.insert(a);
        }
        match e.kind {
            Kind::Comment => self.comments += d,
            Kind::LiveComment => self.live_comments += d,
            Kind::PostReaction => self.reactions += d,
            Kind::Share => self.shares += d,
            Kind::StoryReply => self.story_replies += d,
            Kind::DmIn => self.dms_in += d,
            Kind::Mention | Kind::StoryMention => self.mentions += d,
            Kind::BrandReply => self.brand_replies += d,
            _ => {}
        }
        if late > 0 {
            self.late[usize::from(late.min(5)) - 1] += 1;
        }
        self.revision = self.revision.max(offset);
    }

    /// Adds `o`'s counts, the pane of the minute starting `j` minutes (1..=5) before the end
    /// of the velocity window this sums (not its engagers: velocity windows, the only sums,
    /// carry none). Its late events are those that came after that window was first out.
    pub(super) fn add_counts(&mut self, o: &Counts, j: i64) {
        self.interactions += o.interactions;
        self.comments += o.comments;
        self.live_comments += o.live_comments;
        self.reactions += o.reactions;
        self.shares += o.shares;
        self.story_replies += o.story_replies;
        self.dms_in += o.dms_in;
        self.mentions += o.mentions;
        self.brand_replies += o.brand_replies;
        let j = j.clamp(1, 5) as usize;
        self.late[0] += o.late[j - 1..].iter().sum::<i32>();
        self.revision = self.revision.max(o.revision);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn rollup(
        &self,
        names: &Names,
        key: Key,
        window: WindowKind,
        start: i64,
        end: i64,
        emitted_at: i64,
    ) -> Rollup {
        self.row(
            names.account(key),
            names.content(key),
            window,
            start,
            end,
            emitted_at,
        )
    }

    pub(super) fn row(
        &self,
        account_id: SmolStr,
        content_id: Option<SmolStr>,
        window: WindowKind,
        start: i64,
        end: i64,
        emitted_at: i64,
    ) -> Rollup {
        Rollup {
            account_id,
            content_id,
            window,
            window_start: start,
            window_end: end,
            revision: self.revision,
            interactions: i64::from(self.interactions),
            comments: i64::from(self.comments),
            live_comments: i64::from(self.live_comments),
            reactions: i64::from(self.reactions),
            shares: i64::from(self.shares),
            story_replies: i64::from(self.story_replies),
            dms_in: i64::from(self.dms_in),
            mentions: i64::from(self.mentions),
            brand_replies: i64::from(self.brand_replies),
            velocity: None,
            early_accel: None,
            time_to_n_minutes: None,
            unique_engagers: Some(self.engagers.estimate()),
            late_events: self.late.iter().map(|&n| i64::from(n)).sum(),
            emitted_at,
        }
    }
}

/// The VELOCITY_5M row of `k` ending at `end` from the sum of its five panes. Distinct engagers
/// are counted per minute and per first hour, not per velocity window (DESIGN.md), so the row has
/// none: summing panes needs no sketch unions.
pub(super) fn velocity(names: &Names, k: Key, sum: &Counts, end: i64, emitted_at: i64) -> Rollup {
    let mut r = sum.rollup(
        names,
        k,
        WindowKind::Velocity5m,
        end - 5 * MINUTE,
        end,
        emitted_at,
    );
    r.velocity = Some(f64::from(sum.interactions) / 5.0);
    r.unique_engagers = None;
    r
}
