//! Deterministic sample events for codec tests, benchmarks and cross-language checks.
//!
//! This is not the workload generator (`banter generate` models post intensity, CTA funnels and
//! delivery faults); it produces realistic *records*: the kind mix, field presence and string
//! lengths of real traffic, so encoded sizes and codec costs are representative (~120 bytes).

use banter_model::{
    Action, ContentType, EngagementEvent, EventTimeSource, Kind, Platform, TimestampMillis,
};

/// xorshift64*: small, fast, seeded, and the same on every platform.
#[derive(Debug, Clone)]
pub struct SampleRng(u64);

impl SampleRng {
    /// A generator from a seed (0 is replaced by a fixed odd constant).
    pub fn new(seed: u64) -> Self {
        SampleRng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 >= 1.0 - p
    }
}

const WORDS: &[&str] = &[
    "love", "this", "so", "cute", "where", "can", "i", "buy", "info", "price", "link", "please",
    "wow", "amazing", "need", "it", "🔥", "😍", "when", "restock",
];

/// `n` events from `seed`: ≈60 % reactions, 25 % comments, 8 % story replies, 5 % DMs, 2 %
/// mentions, over `accounts` accounts with a few posts each, event times from `start_ms`.
pub fn sample_events(
    seed: u64,
    n: usize,
    accounts: u64,
    start_ms: TimestampMillis,
) -> Vec<EngagementEvent> {
    let mut rng = SampleRng::new(seed);
    (0..n)
        .map(|i| {
            let account = rng.below(accounts);
            let post = rng.below(4);
            let roll = rng.below(100);
            let (kind, platform) = match roll {
                0..=59 => (Kind::PostReaction, Platform::Facebook),
                60..=84 => (Kind::Comment, Platform::Instagram),
                85..=92 => (Kind::StoryReply, Platform::Instagram),
                93..=97 => (Kind::DmIn, Platform::Messenger),
                _ => (Kind::Mention, Platform::Instagram),
            };
            let action = if rng.chance(0.03) {
                Action::Remove
            } else {
                Action::Add
            };
            let event_time = start_ms + (i as i64) * 7 + rng.below(60_000) as i64;
            let mut e = EngagementEvent::new(
                format!(
                    "{}:{:016x}:{}:{}",
                    platform.as_str(),
                    rng.next_u64(),
                    kind,
                    action
                ),
                platform,
                kind,
                action,
                format!("acct-{account}"),
                event_time,
            );
            e.received_at = event_time + rng.below(2_000) as i64;
            e.actor_id = Some(format!("{:016x}", rng.next_u64()));
            if kind != Kind::DmIn {
                e.content_id = Some(format!("{}_{}", 17_841_400_000_000_000u64 + account, post));
                e.content_type = Some(if kind == Kind::StoryReply {
                    ContentType::Story
                } else {
                    ContentType::Feed
                });
                e.content_published_at = Some(start_ms - 3_600_000);
            }
            match kind {
                Kind::PostReaction => {
                    e.reaction = Some(["LIKE", "LOVE", "WOW"][rng.below(3) as usize].into())
                }
                Kind::Comment | Kind::StoryReply | Kind::DmIn | Kind::Mention => {
                    let words = 1 + rng.below(6);
                    let text: Vec<&str> = (0..words)
                        .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
                        .collect();
                    e.text = Some(text.join(" "));
                    e.object_id = Some(format!("{:x}", rng.next_u64()));
                    e.event_time_source = EventTimeSource::PlatformDelivery;
                }
                _ => {}
            }
            e
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_events() {
        assert_eq!(
            sample_events(7, 50, 10, 1_764_000_000_000),
            sample_events(7, 50, 10, 1_764_000_000_000)
        );
        assert_ne!(
            sample_events(7, 50, 10, 1_764_000_000_000),
            sample_events(8, 50, 10, 1_764_000_000_000)
        );
    }

    #[test]
    fn samples_are_valid() {
        let now = 1_764_000_000_000;
        for e in sample_events(1, 1000, 20, now - 600_000) {
            e.validate(&banter_model::ValidationContext::at(now))
                .unwrap();
        }
    }
}
