//! The operators of one input partition composed, pure (no Kafka, no clock): events go to the
//! window engine; the MINUTE counts it emits go to the spike detector; the events it counted
//! (not duplicates, not too late) go to the funnels and the conversations; every move of the
//! engine's event time reaches the other three. `banter stream` runs one [`Pipeline`] per
//! assigned partition; the tests and the benchmark run the same one.
//!
//! **Restore.** [`Pipeline::restore`] rebuilds a partition from what its changelog topic holds
//! ([`Saved`]): each operator's store, and the engine's [`Checkpoint`], after which the input
//! from [`Engine::replay_from`] is replayed into the engine alone (its outputs were emitted
//! before) until the checkpoint's offset; from there the pipeline emits exactly what the one
//! that wrote the checkpoint would have.

use std::collections::BTreeMap;

use banter_model::{ConversationRollup, EngagementEvent, FunnelRollup, Rollup, SpikeAlert};

use crate::changelog::{Changes, Entry, StateError, Store};
use crate::config::StreamSettings;
use crate::conversation::{ConversationConfig, Conversations};
use crate::cta::Matcher;
use crate::funnel::{FunnelConfig, Funnels};
use crate::operator::Operator;
use crate::spike::{Detector, EarlyStats, MinuteCount, SpikeConfig};
use crate::time::DAY;
use crate::window::{Checkpoint, Engine, Output, WindowConfig};

/// The parameters of every operator.
#[derive(Debug, Clone, Copy, Default)]
pub struct PipelineConfig {
    /// The window engine's.
    pub window: WindowConfig,
    /// The spike detector's.
    pub spike: SpikeConfig,
    /// The funnels'.
    pub funnel: FunnelConfig,
    /// The conversations'.
    pub conversation: ConversationConfig,
}

impl PipelineConfig {
    /// The parameters `banter stream`'s configuration gives.
    pub fn from_settings(s: &StreamSettings) -> Self {
        PipelineConfig {
            window: WindowConfig {
                out_of_orderness_ms: s.stream.out_of_orderness_ms,
                allowed_lateness_ms: s.stream.allowed_lateness_ms,
                time_to_n: s.stream.time_to_n,
                redelivery_horizon_ms: s.stream.redelivery_horizon_ms,
            },
            spike: s.spike,
            funnel: FunnelConfig {
                attribution_ms: s.cta.attribution_days * DAY,
                allowed_lateness_ms: s.stream.allowed_lateness_ms,
            },
            conversation: s.conversation,
        }
    }
}

/// An event later than the allowed lateness, for the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLate {
    /// The event's id.
    pub event_id: String,
    /// Its input offset.
    pub offset: i64,
}

/// What the operators emitted, by kind, in the order they emitted it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outputs {
    /// Window rollups (MINUTE, VELOCITY_5M, FIRST_15M, FIRST_60M; corrections included).
    pub rollups: Vec<Rollup>,
    /// Events too late to count.
    pub too_late: Vec<TooLate>,
    /// Spike alerts.
    pub alerts: Vec<SpikeAlert>,
    /// Funnel rows.
    pub funnels: Vec<FunnelRollup>,
    /// Conversation rows.
    pub conversations: Vec<ConversationRollup>,
}

impl Outputs {
    /// Empties every list (keeping their memory).
    pub fn clear(&mut self) {
        self.rollups.clear();
        self.too_late.clear();
        self.alerts.clear();
        self.funnels.clear();
        self.conversations.clear();
    }

    /// Nothing was emitted.
    pub fn is_empty(&self) -> bool {
        self.rollups.is_empty()
            && self.too_late.is_empty()
            && self.alerts.is_empty()
            && self.funnels.is_empty()
            && self.conversations.is_empty()
    }
}

/// What became of an input record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    /// Processed before (a redelivery after a seek): skipped.
    Skipped,
    /// Replayed into the engine after a restore; its outputs were emitted before.
    Replayed,
    /// Processed.
    Processed,
}

/// What the pipeline saw since it was made (replayed input counts only as replayed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// Input events processed, replay excluded.
    pub events: u64,
    /// Input events replayed into the engine after a restore.
    pub replayed: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Late events that corrected an emitted window.
    pub late: u64,
    /// Events later than the allowed lateness.
    pub too_late: u64,
    /// Keyword matches that triggered a funnel.
    pub triggers: u64,
    /// Funnel stage events without a campaign to attribute them to.
    pub unattributed: u64,
    /// Funnel stage events dropped at an actor's limit.
    pub capped: u64,
}

/// How big the state is, for metrics (walks it: not per event).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateSizes {
    /// Window panes, dedup ids and posts.
    pub window_entries: usize,
    /// Estimated bytes of window state.
    pub window_bytes: usize,
    /// Posts with first-hour state.
    pub posts: usize,
    /// Accounts and posts with a spike baseline.
    pub spike_keys: usize,
    /// Spike alerts firing.
    pub alerts_firing: usize,
    /// Funnel and conversation entries.
    pub funnel_entries: usize,
}

impl std::ops::AddAssign<&StateSizes> for StateSizes {
    fn add_assign(&mut self, o: &StateSizes) {
        self.window_entries += o.window_entries;
        self.window_bytes += o.window_bytes;
        self.posts += o.posts;
        self.spike_keys += o.spike_keys;
        self.alerts_firing += o.alerts_firing;
        self.funnel_entries += o.funnel_entries;
    }
}

/// What a partition's changelog topic holds: the engine's latest checkpoint and the latest
/// entry of every key of every store.
#[derive(Debug, Clone, Default)]
pub struct Saved {
    /// The latest checkpoint; None for a partition never committed.
    pub checkpoint: Option<Checkpoint>,
    /// (store, key) → value.
    pub entries: BTreeMap<(Store, Vec<u8>), Vec<u8>>,
}

/// The operators of one input partition.
#[derive(Debug, Clone)]
pub struct Pipeline {
    windows: Engine,
    spikes: Detector,
    funnels: Funnels,
    conversations: Conversations,
    /// After a restore: input before this offset was applied before; it is replayed into the
    /// engine alone.
    replay_until: Option<i64>,
    /// The engine's outputs of the event at hand.
    scratch: Vec<Output>,
    events: u64,
    replayed: u64,
    duplicates: u64,
    late: u64,
    too_late: u64,
}

impl Pipeline {
    /// A pipeline without history, for the campaigns of `matcher`.
    pub fn new(cfg: &PipelineConfig, matcher: Matcher) -> Self {
        Pipeline {
            windows: Engine::new(cfg.window),
            spikes: Detector::new(cfg.spike),
            funnels: Funnels::new(cfg.funnel, matcher),
            conversations: Conversations::new(cfg.conversation),
            replay_until: None,
            scratch: Vec::new(),
            events: 0,
            replayed: 0,
            duplicates: 0,
            late: 0,
            too_late: 0,
        }
    }

    /// The pipeline `saved` describes, and the input offset to read from (None: no checkpoint,
    /// a fresh pipeline; read from the committed offset).
    ///
    /// # Errors
    /// A checkpoint with times or offsets out of range ([`Checkpoint::check`]), or a changelog
    /// entry that cannot be read back or holds a time or offset no operator writes.
    pub fn restore(
        cfg: &PipelineConfig,
        matcher: Matcher,
        saved: &Saved,
    ) -> Result<(Self, Option<i64>), StateError> {
        let mut p = Pipeline::new(cfg, matcher);
        let Some(cp) = &saved.checkpoint else {
            return Ok((p, None));
        };
        cp.check().map_err(StateError::Checkpoint)?;
        p.windows = Engine::restored(cfg.window, cp);
        for ((store, key), value) in &saved.entries {
            let entry = Entry {
                store: *store,
                key,
                value,
            };
            match store {
                Store::Windows => p.windows.restore_entry(&entry)?,
                Store::Spikes => p.spikes.restore_entry(&entry)?,
                Store::Funnels => p.funnels.restore_entry(&entry)?,
                Store::Conversations => p.conversations.restore_entry(&entry)?,
            }
        }
        p.windows.restored();
        p.spikes.restored();
        p.funnels.restored();
        p.conversations.restored();
        let from = Engine::replay_from(cp);
        if from < cp.next_offset {
            p.replay_until = Some(cp.next_offset);
        } else {
            p.windows.finish_replay(&mut p.scratch);
            p.scratch.clear();
        }
        Ok((p, Some(from)))
    }

    /// Replaces the campaigns (a reload); state stays.
    pub fn set_matcher(&mut self, matcher: Matcher) {
        self.funnels.set_matcher(matcher);
    }

    /// The next input offset it expects; input before it was processed (a redelivery after a
    /// seek is skipped).
    pub fn next_offset(&self) -> i64 {
        self.windows.next_offset()
    }

    /// Still replaying input applied before a restore.
    pub fn replaying(&self) -> bool {
        self.replay_until.is_some()
    }

    /// Every minute before this one is closed (None before the first watermark).
    pub fn closed_below(&self) -> Option<i64> {
        self.windows.closed_below()
    }

    /// The engine's watermark (None before the first event).
    pub fn watermark(&self) -> Option<i64> {
        self.windows.watermark()
    }

    /// The highest event time seen (None before the first event).
    pub fn max_event_time(&self) -> Option<i64> {
        self.windows.max_event_time()
    }

    /// The publication time of a post with first-hour state.
    pub fn published_at(&self, content: &str) -> Option<i64> {
        self.windows.published_at(content)
    }

    /// Starts fetching the window and conversation state `events` will touch (see
    /// [`Engine::prefetch`], [`Conversations::prefetch`]); changes nothing.
    pub fn prefetch(&self, events: &[EngagementEvent]) {
        self.windows.prefetch(events);
        self.conversations.prefetch(events);
    }

    /// Processes one event read at `offset`; appends what it causes to `out` (nothing while
    /// replaying).
    pub fn process(&mut self, e: &EngagementEvent, offset: i64, out: &mut Outputs) -> Fed {
        if offset < self.windows.next_offset() {
            return Fed::Skipped;
        }
        if let Some(until) = self.replay_until {
            if offset < until {
                self.windows.process(e, offset, &mut self.scratch);
                self.scratch.clear();
                self.replayed += 1;
                return Fed::Replayed;
            }
            self.finish_replay();
        }
        self.events += 1;
        let before = self.windows.stats().clone();
        let counted = self.windows.process(e, offset, &mut self.scratch);
        let after = self.windows.stats();
        self.duplicates += after.duplicates - before.duplicates;
        self.late += after.late - before.late;
        self.too_late += after.too_late - before.too_late;
        // The funnels and conversations see what the windows counted: no duplicates, nothing
        // too late.
        if counted {
            self.funnels.process(e, offset);
            self.conversations.process(e, offset);
        }
        self.route(out);
        Fed::Processed
    }

    /// The consumer's position is `position` (all input before it was fed): a replay that
    /// reached its end without input past it ends.
    pub fn end_replay_at(&mut self, position: i64) {
        if self.replay_until.is_some_and(|until| position >= until) {
            self.finish_replay();
        }
    }

    fn finish_replay(&mut self) {
        self.windows.finish_replay(&mut self.scratch);
        self.scratch.clear();
        self.replay_until = None;
    }

    /// Moves the watermark of an idle partition to `wm` (recorded, so a replay after a restore
    /// repeats it); appends what that closes and updates to `out`.
    pub fn idle_advance(&mut self, wm: i64, out: &mut Outputs) {
        let mut scratch = std::mem::take(&mut self.scratch);
        self.windows.idle_advance(wm, &mut scratch);
        self.scratch = scratch;
        self.route(out);
    }

    /// The provisional rows of the windows still open whose counts changed since the last
    /// call ([`Engine::provisional`]), stamped `now` (ms), into `out.rollups`, and the spike
    /// alerts their posts' MINUTE counts so far already make certain
    /// ([`Detector::fire_early`], revision 0), into `out.alerts`: those change the detector's
    /// state (write it in the same transaction). The detector still judges final minutes only.
    /// Nothing while replaying (the rows of the replayed input were emitted before). Returns
    /// how many rows.
    pub fn provisional(&mut self, now: i64, out: &mut Outputs) -> usize {
        if self.replay_until.is_some() {
            return 0;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let n = self.windows.provisional(now, &mut scratch);
        for o in scratch.drain(..) {
            if let Output::Rollup(r) = o {
                if let (Some(c), Some(mut count)) =
                    (r.content_id.as_deref(), MinuteCount::of(&r, None))
                {
                    count.published_at = self.windows.published_at(c);
                    self.spikes.observe_open(&count);
                }
                out.rollups.push(r);
            }
        }
        self.scratch = scratch;
        self.spikes.fire_early(now, &mut out.alerts);
        n
    }

    /// Spike alerts fired early and withdrawn since the pipeline was made.
    pub fn early_alerts(&self) -> EarlyStats {
        self.spikes.early_stats()
    }

    /// Hands the engine's outputs on: rollups out (MINUTE counts to the detector too), too-late
    /// events out; then the other operators follow the engine's time.
    fn route(&mut self, out: &mut Outputs) {
        for o in self.scratch.drain(..) {
            match o {
                Output::Rollup(r) => {
                    if let Some(count) = MinuteCount::of(&r, None) {
                        // The detector asks for a post's publication time (a name lookup) when
                        // it judges a post whose time it does not know yet, below.
                        self.spikes.observe(&count);
                    }
                    out.rollups.push(r);
                }
                Output::TooLate { event_id, offset } => {
                    out.too_late.push(TooLate { event_id, offset });
                }
            }
        }
        if let Some(closed_below) = self.windows.closed_below() {
            // The engine's state of this step, the one the rows were emitted in.
            let windows = &self.windows;
            let published_at = |c: &str| windows.published_at(c);
            self.spikes
                .close_with(closed_below, &published_at, &mut out.alerts);
        }
        if let Some(wm) = self.windows.watermark() {
            self.funnels.advance(wm, &mut out.funnels);
            self.conversations.advance(wm, &mut out.conversations);
        }
    }

    /// The engine's checkpoint of the current state. Not while [`Pipeline::replaying`]: the
    /// state is then partly rebuilt, and the checkpoint restored from is still the one to keep
    /// (a batch that only replayed commits nothing).
    pub fn checkpoint(&self) -> Checkpoint {
        self.windows.checkpoint()
    }

    /// Every operator's changelog entries of what changed since the last call.
    ///
    /// # Errors
    /// A value that cannot be encoded: the batch must fail rather than write less.
    pub fn write_changes(&mut self, out: &mut Changes) -> Result<(), StateError> {
        out.begin(Store::Windows);
        self.windows.write_changes(out)?;
        out.begin(Store::Spikes);
        self.spikes.write_changes(out)?;
        out.begin(Store::Funnels);
        self.funnels.write_changes(out)?;
        out.begin(Store::Conversations);
        self.conversations.write_changes(out)
    }

    /// What it saw.
    pub fn stats(&self) -> PipelineStats {
        let f = self.funnels.stats();
        PipelineStats {
            events: self.events,
            replayed: self.replayed,
            duplicates: self.duplicates,
            late: self.late,
            too_late: self.too_late,
            triggers: f.triggers,
            unattributed: f.unattributed,
            capped: f.capped,
        }
    }

    /// How big its state is (walks it).
    pub fn state_sizes(&self) -> StateSizes {
        StateSizes {
            window_entries: self.windows.state_entries(),
            window_bytes: self.windows.state_bytes(),
            posts: self.windows.posts(),
            spike_keys: self.spikes.keys(),
            alerts_firing: self.spikes.firing(),
            funnel_entries: self.funnels.state_entries() + self.conversations.state_entries(),
        }
    }
}
