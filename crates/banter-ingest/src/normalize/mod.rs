//! Normalization: whatever arrives (Meta webhooks, first-party JSON) becomes
//! [`EngagementEvent`]s or dead letters with a reason. Pure functions, no I/O.
//!
//! * Actor ids are replaced by a keyed hash ([`Normalizer::actor`]); usernames and names are
//!   never kept.
//! * `event_id` is stable across redeliveries of the same update, so the stream processor can
//!   drop duplicates.
//! * Every event is validated ([`EngagementEvent::validate`]) before it is accepted.

pub mod first_party;
pub mod meta;

use banter_model::{EngagementEvent, TimestampMillis, ValidationContext};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// One normalized item: an event to publish, or a dead letter.
// Most items are events and live briefly in a Vec; boxing would cost an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A valid event.
    Event(EngagementEvent),
    /// Input that cannot become an event.
    Rejected(Rejection),
    /// A legitimate delivery that is not engagement (a delivery receipt, a thread handover,
    /// Meta's dashboard test payload, a reaction on a comment…): nothing is published, the
    /// reason is counted (`banter_ingest_updates_ignored_total`).
    Ignored(&'static str),
}

/// Why an item was rejected, with its original bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// Machine-readable cause: `invalid`, `malformed`, `unknown_change`, `unknown_field`.
    pub reason: &'static str,
    /// Human-readable detail naming the field.
    pub detail: String,
    /// The item as received (a webhook change, a first-party event).
    pub payload: Vec<u8>,
    /// The account, when it is known.
    pub account_id: Option<String>,
}

impl Item {
    fn rejected(
        reason: &'static str,
        detail: impl Into<String>,
        payload: &serde_json::Value,
        account_id: Option<&str>,
    ) -> Item {
        Item::Rejected(Rejection {
            reason,
            detail: detail.into(),
            payload: serde_json::to_vec(payload).unwrap_or_default(),
            account_id: account_id.map(str::to_owned),
        })
    }
}

/// Shared normalization settings: the actor-hash key and the validation bounds.
#[derive(Clone)]
pub struct Normalizer {
    actor_key: Hmac<Sha256>,
    max_future_skew_ms: i64,
}

impl std::fmt::Debug for Normalizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Normalizer")
            .field("max_future_skew_ms", &self.max_future_skew_ms)
            .finish()
    }
}

impl Normalizer {
    /// A normalizer hashing actor ids with `salt`.
    pub fn new(salt: &[u8], max_future_skew_ms: i64) -> Self {
        // HMAC accepts keys of any length.
        #[allow(clippy::expect_used)]
        let actor_key = Hmac::<Sha256>::new_from_slice(salt).expect("hmac takes any key length");
        Normalizer {
            actor_key,
            max_future_skew_ms,
        }
    }

    /// The stored form of a platform-scoped user id: the first 16 bytes of
    /// HMAC-SHA256(salt, id), hex. The same id always hashes the same, whichever route it came
    /// by (an Instagram comment, the DM that answered it, the brand's click tracking), so
    /// distinct counts and funnels join; the raw id cannot be recovered without the salt.
    /// Platform ids are already scoped (an Instagram id is not a Messenger id), so the platform
    /// is not part of the hash.
    pub fn actor(&self, raw_id: &str) -> String {
        let mut mac = self.actor_key.clone();
        mac.update(raw_id.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(32);
        for b in &digest[..16] {
            out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        out
    }

    /// Validates `event` at `now_ms`: an accepted event, or a rejection with `payload`.
    pub fn finish(
        &self,
        event: EngagementEvent,
        now_ms: TimestampMillis,
        payload: &serde_json::Value,
    ) -> Item {
        let ctx = ValidationContext {
            now_ms,
            max_future_skew_ms: self.max_future_skew_ms,
        };
        match event.validate(&ctx) {
            Ok(()) => Item::Event(event),
            Err(e) => {
                let account = (!event.account_id.is_empty()).then_some(event.account_id.as_str());
                Item::rejected("invalid", e.to_string(), payload, account)
            }
        }
    }
}

/// Milliseconds from a Meta timestamp that may be in seconds or milliseconds.
pub fn meta_time_ms(t: i64) -> i64 {
    // 10^11 seconds is the year 5138; 10^11 ms is 1973: anything below is seconds.
    if t.abs() < 100_000_000_000 {
        t.saturating_mul(1000)
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_hash_is_keyed_and_stable() {
        let a = Normalizer::new(b"salt-one-0123456789", 300_000);
        let b = Normalizer::new(b"salt-two-0123456789", 300_000);
        let h = a.actor("17841400000000001");
        assert_eq!(h.len(), 32);
        assert_eq!(h, a.actor("17841400000000001"));
        assert_ne!(h, b.actor("17841400000000001"));
        assert_ne!(h, a.actor("17841400000000002"));
        assert!(!h.contains("1784140"));
    }

    #[test]
    fn seconds_or_millis() {
        assert_eq!(meta_time_ms(1_764_000_000), 1_764_000_000_000);
        assert_eq!(meta_time_ms(1_764_000_000_123), 1_764_000_000_123);
    }
}
