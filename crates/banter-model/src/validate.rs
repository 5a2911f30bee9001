//! Validation of normalized events: what ingest checks before anything reaches Kafka.
//!
//! Every rule gives its own [`ValidationError`] naming the field, so a rejected event's
//! dead-letter record and HTTP response say exactly what was wrong.

use thiserror::Error;

use crate::event::{EngagementEvent, Kind, TimestampMillis};

/// 2000-01-01T00:00:00Z: no engagement event is older than that.
pub const MIN_EVENT_TIME_MS: TimestampMillis = 946_684_800_000;

/// 9999-12-31T23:59:59.999Z: the latest time any event may carry, whatever the clock says. Keeps
/// every window bound and watermark computed from an event far from `i64`'s limits.
pub const MAX_EVENT_TIME_MS: TimestampMillis = 253_402_300_799_999;

/// Longest id accepted (event, account, content, object, actor, campaign, click ids).
pub const MAX_ID_BYTES: usize = 512;

/// Largest conversion value accepted (a trillion in the currency's unit): a window's sum of
/// a million such values in cents still fits an i64.
pub const MAX_VALUE: f64 = 1e12;

/// Longest text accepted, in bytes.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// Why an event is not acceptable. Messages are lowercase, name the field and the value.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ValidationError {
    /// A required field is missing or empty.
    #[error("missing {field}")]
    Missing {
        /// The field's name.
        field: &'static str,
    },
    /// A string that is not one of an enum's symbols.
    #[error("unknown {field} symbol `{value}`, expected one of {}", expected.join(", "))]
    UnknownSymbol {
        /// The field's name.
        field: &'static str,
        /// What was given.
        value: String,
        /// The accepted symbols.
        expected: &'static [&'static str],
    },
    /// A timestamp before 2000-01-01.
    #[error("{field} {value} ms is before 2000-01-01 (is it in seconds?)")]
    TooOld {
        /// The field's name.
        field: &'static str,
        /// The timestamp given.
        value: TimestampMillis,
    },
    /// A timestamp further in the future than the allowed clock skew.
    #[error(
        "{field} {value} ms is {ahead_ms} ms in the future, more than the allowed {max_skew_ms} ms"
    )]
    InFuture {
        /// The field's name.
        field: &'static str,
        /// The timestamp given.
        value: TimestampMillis,
        /// How far ahead of now it is.
        ahead_ms: i64,
        /// The allowed skew.
        max_skew_ms: i64,
    },
    /// A conversion value below zero.
    #[error("value {value} is negative")]
    NegativeValue {
        /// The value given.
        value: f64,
    },
    /// A conversion value beyond [`MAX_VALUE`]: no order is worth that much, and sums of
    /// such values in cents would overflow.
    #[error("value {value} is larger than the allowed {max}")]
    ValueTooLarge {
        /// The value given.
        value: f64,
        /// The limit.
        max: f64,
    },
    /// A value that is NaN or infinite.
    #[error("value is not a finite number")]
    NonFiniteValue,
    /// A currency that is not three uppercase ASCII letters.
    #[error("currency `{value}` is not an ISO 4217 code (three uppercase letters)")]
    BadCurrency {
        /// The currency given.
        value: String,
    },
    /// A currency without a value, or a value without a currency.
    #[error("value and currency must be given together")]
    ValueWithoutCurrency,
    /// A field longer than allowed.
    #[error("{field} is {len} bytes, longer than the allowed {max}")]
    TooLong {
        /// The field's name.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An id with a control character (platforms send none; a separator such as U+001F in an
    /// id is what a key built by joining ids would split at).
    #[error("{field} contains the control character U+{code:04X} at byte {at}")]
    ControlCharacter {
        /// The field's name.
        field: &'static str,
        /// The character's code point.
        code: u32,
        /// Its byte offset.
        at: usize,
    },
    /// A field that needs another one, e.g. POST_PUBLISHED needs content_published_at.
    #[error("{kind} needs {field}")]
    NeedsField {
        /// The event kind.
        kind: Kind,
        /// The missing field.
        field: &'static str,
    },
}

/// Bounds that depend on the moment of validation.
#[derive(Debug, Clone, Copy)]
pub struct ValidationContext {
    /// Wall-clock now, in ms.
    pub now_ms: TimestampMillis,
    /// How far in the future an event time may be (clock skew between systems).
    pub max_future_skew_ms: i64,
}

impl ValidationContext {
    /// A context at `now_ms` with the default skew of five minutes.
    pub fn at(now_ms: TimestampMillis) -> Self {
        ValidationContext {
            now_ms,
            max_future_skew_ms: 5 * 60 * 1000,
        }
    }

    /// A context without a clock: times only between 2000-01-01 and [`MAX_EVENT_TIME_MS`].
    /// What the stream checks again on the events it reads (a producer other than ingest may
    /// have written them, and replayed history is legitimately old or, to this clock, early).
    pub fn unclocked() -> Self {
        ValidationContext {
            now_ms: MAX_EVENT_TIME_MS,
            max_future_skew_ms: 0,
        }
    }
}

fn required<'a>(field: &'static str, v: &'a str) -> Result<&'a str, ValidationError> {
    if v.trim().is_empty() {
        return Err(ValidationError::Missing { field });
    }
    id(field, v)?;
    Ok(v)
}

/// An id: at most [`MAX_ID_BYTES`], no control characters.
fn id(field: &'static str, v: &str) -> Result<(), ValidationError> {
    max_len(field, v, MAX_ID_BYTES)?;
    match v.char_indices().find(|(_, c)| c.is_control()) {
        Some((at, c)) => Err(ValidationError::ControlCharacter {
            field,
            code: u32::from(c),
            at,
        }),
        None => Ok(()),
    }
}

fn max_len(field: &'static str, v: &str, max: usize) -> Result<(), ValidationError> {
    if v.len() > max {
        return Err(ValidationError::TooLong {
            field,
            len: v.len(),
            max,
        });
    }
    Ok(())
}

fn optional_id(field: &'static str, v: &Option<String>) -> Result<(), ValidationError> {
    match v {
        Some(s) => id(field, s),
        None => Ok(()),
    }
}

fn timestamp(
    field: &'static str,
    value: TimestampMillis,
    ctx: &ValidationContext,
) -> Result<(), ValidationError> {
    if value < MIN_EVENT_TIME_MS {
        return Err(ValidationError::TooOld { field, value });
    }
    let ahead_ms = value.saturating_sub(ctx.now_ms);
    if ahead_ms > ctx.max_future_skew_ms {
        return Err(ValidationError::InFuture {
            field,
            value,
            ahead_ms,
            max_skew_ms: ctx.max_future_skew_ms,
        });
    }
    Ok(())
}

impl EngagementEvent {
    /// Checks the event against the rules of DESIGN.md; returns the first problem found.
    ///
    /// ```
    /// use banter_model::{Action, EngagementEvent, Kind, Platform, ValidationContext};
    /// let now = 1_760_000_000_000;
    /// let mut e = EngagementEvent::new("ev-1", Platform::Instagram, Kind::DmIn, Action::Add, "acct", now);
    /// assert!(e.validate(&ValidationContext::at(now)).is_ok());
    /// e.account_id.clear();
    /// assert_eq!(e.validate(&ValidationContext::at(now)).unwrap_err().to_string(), "missing account_id");
    /// ```
    pub fn validate(&self, ctx: &ValidationContext) -> Result<(), ValidationError> {
        required("event_id", &self.event_id)?;
        required("account_id", &self.account_id)?;
        timestamp("event_time", self.event_time, ctx)?;
        timestamp("received_at", self.received_at, ctx)?;
        if let Some(p) = self.content_published_at {
            timestamp("content_published_at", p, ctx)?;
        }
        optional_id("content_id", &self.content_id)?;
        optional_id("object_id", &self.object_id)?;
        optional_id("parent_id", &self.parent_id)?;
        optional_id("thread_id", &self.thread_id)?;
        optional_id("actor_id", &self.actor_id)?;
        optional_id("cta_campaign_id", &self.cta_campaign_id)?;
        optional_id("cta_keyword", &self.cta_keyword)?;
        optional_id("ref", &self.ref_)?;
        optional_id("click_id", &self.click_id)?;
        optional_id("reaction", &self.reaction)?;
        if let Some(t) = &self.text {
            max_len("text", t, MAX_TEXT_BYTES)?;
        }
        if self.kind.needs_content()
            && self
                .content_id
                .as_deref()
                .is_none_or(|c| c.trim().is_empty())
        {
            return Err(ValidationError::NeedsField {
                kind: self.kind,
                field: "content_id",
            });
        }
        if self.kind == Kind::PostPublished && self.content_published_at.is_none() {
            return Err(ValidationError::NeedsField {
                kind: self.kind,
                field: "content_published_at",
            });
        }
        if self.kind == Kind::CtaTrigger && self.cta_campaign_id.is_none() {
            return Err(ValidationError::NeedsField {
                kind: self.kind,
                field: "cta_campaign_id",
            });
        }
        match (self.value, &self.currency) {
            (Some(v), _) if !v.is_finite() => return Err(ValidationError::NonFiniteValue),
            (Some(v), _) if v < 0.0 => return Err(ValidationError::NegativeValue { value: v }),
            (Some(v), _) if v > MAX_VALUE => {
                return Err(ValidationError::ValueTooLarge {
                    value: v,
                    max: MAX_VALUE,
                })
            }
            (Some(_), None) | (None, Some(_)) => return Err(ValidationError::ValueWithoutCurrency),
            (Some(_), Some(c)) => {
                if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(ValidationError::BadCurrency { value: c.clone() });
                }
            }
            (None, None) => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Action, Platform};

    const NOW: i64 = 1_764_000_000_000;

    fn ok_event() -> EngagementEvent {
        let mut e = EngagementEvent::new(
            "ev",
            Platform::Instagram,
            Kind::Comment,
            Action::Add,
            "acct",
            NOW,
        );
        e.content_id = Some("post".into());
        e
    }

    fn err(e: &EngagementEvent) -> String {
        e.validate(&ValidationContext::at(NOW))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn accepts_a_plain_comment() {
        ok_event().validate(&ValidationContext::at(NOW)).unwrap();
    }

    #[test]
    fn precise_messages() {
        let mut e = ok_event();
        e.account_id = "  ".into();
        assert_eq!(err(&e), "missing account_id");

        let mut e = ok_event();
        e.event_id.clear();
        assert_eq!(err(&e), "missing event_id");

        let mut e = ok_event();
        e.event_time = 1_764_000_000; // seconds, not ms
        assert_eq!(
            err(&e),
            "event_time 1764000000 ms is before 2000-01-01 (is it in seconds?)"
        );

        let mut e = ok_event();
        e.event_time = NOW + 3_600_000;
        assert_eq!(
            err(&e),
            "event_time 1764003600000 ms is 3600000 ms in the future, more than the allowed 300000 ms"
        );

        let mut e = ok_event();
        e.kind = Kind::Conversion;
        e.value = Some(-3.5);
        e.currency = Some("EUR".into());
        assert_eq!(err(&e), "value -3.5 is negative");

        e.value = Some(3.5);
        e.currency = Some("eur".into());
        assert_eq!(
            err(&e),
            "currency `eur` is not an ISO 4217 code (three uppercase letters)"
        );

        e.currency = None;
        assert_eq!(err(&e), "value and currency must be given together");

        e.value = Some(f64::NAN);
        assert_eq!(err(&e), "value is not a finite number");

        // Values whose sums in cents overflowed into negative totals.
        e.value = Some(1e17);
        e.currency = Some("EUR".into());
        assert_eq!(
            err(&e),
            "value 100000000000000000 is larger than the allowed 1000000000000"
        );

        let mut e = ok_event();
        e.content_id = None;
        assert_eq!(err(&e), "COMMENT needs content_id");

        let mut e = ok_event();
        e.kind = Kind::PostPublished;
        assert_eq!(err(&e), "POST_PUBLISHED needs content_published_at");

        let mut e = ok_event();
        e.text = Some("x".repeat(MAX_TEXT_BYTES + 1));
        assert_eq!(
            err(&e),
            format!(
                "text is {} bytes, longer than the allowed 65536",
                MAX_TEXT_BYTES + 1
            )
        );
    }

    #[test]
    fn ids_with_control_characters_are_refused() {
        // U+001F was accepted, and keys joined with it could not be read back.
        let mut e = ok_event();
        e.object_id = Some("c1\u{1f}x".into());
        assert_eq!(
            err(&e),
            "object_id contains the control character U+001F at byte 2"
        );
        let mut e = ok_event();
        e.account_id = "acct\n".into();
        assert_eq!(
            err(&e),
            "account_id contains the control character U+000A at byte 4"
        );
        // Text may hold line breaks; ids of every script are fine.
        let mut e = ok_event();
        e.text = Some("line one\nline two".into());
        e.actor_id = Some("ユーザー-ö".into());
        e.validate(&ValidationContext::at(NOW)).unwrap();
    }

    #[test]
    fn small_future_skew_is_fine() {
        let mut e = ok_event();
        e.event_time = NOW + 60_000;
        e.validate(&ValidationContext::at(NOW)).unwrap();
    }
}
