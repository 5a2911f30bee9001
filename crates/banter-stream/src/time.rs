//! Event time as the operators share it: minute, hour and day lengths, HOUR / DAY window
//! bounds, and an operator's [`Progress`] through its partition's input.

use banter_model::WindowKind;
use serde::{Deserialize, Serialize};

/// One minute, in ms.
pub const MINUTE: i64 = 60_000;
/// One hour, in ms.
pub const HOUR: i64 = 60 * MINUTE;
/// One day, in ms.
pub const DAY: i64 = 24 * HOUR;

/// Farthest a stored time may be from 1970 (about 285,000 years): far beyond any event time
/// ([`banter_model::validate::MAX_EVENT_TIME_MS`]) and far enough from `i64`'s limits that
/// window bounds and horizons computed from it cannot overflow.
const MAX_ABS_TIME: i64 = 1 << 53;

/// Whether `n` is farther from 0 than [`MAX_ABS_TIME`].
fn out_of_range(n: i64) -> bool {
    n.unsigned_abs() > MAX_ABS_TIME as u64
}

/// Refuses a restored time no engine writes (a damaged or forged checkpoint or changelog),
/// naming `field`, rather than let it drive the arithmetic past `i64`'s range.
pub(crate) fn check_time(field: &str, t: Option<i64>) -> Result<(), String> {
    match t {
        Some(t) if out_of_range(t) => Err(format!("{field} {t} is not a time an engine writes")),
        _ => Ok(()),
    }
}

/// Refuses a restored count (or sum) no operator reaches, naming `field`: within ±2^53, sums
/// and increments of a few of them cannot overflow.
pub(crate) fn check_count(field: &str, n: i64) -> Result<(), String> {
    if out_of_range(n) {
        Err(format!("{field} {n} is not a count an operator reaches"))
    } else {
        Ok(())
    }
}

/// Refuses a restored input offset that is not a Kafka offset, naming `field`.
pub(crate) fn check_offset(field: &str, o: i64) -> Result<(), String> {
    if (0..=i64::MAX / 2).contains(&o) {
        Ok(())
    } else {
        Err(format!("{field} {o} is not a Kafka offset"))
    }
}

/// Start of the minute holding `t`.
pub(crate) fn minute_of(t: i64) -> i64 {
    t - t.rem_euclid(MINUTE)
}

/// Length of an HOUR or DAY window.
pub(crate) fn window_len(kind: WindowKind) -> i64 {
    debug_assert!(matches!(kind, WindowKind::Hour | WindowKind::Day));
    if kind == WindowKind::Hour {
        HOUR
    } else {
        DAY
    }
}

/// Start of the HOUR or DAY window holding `t` (UTC).
pub(crate) fn window_start(kind: WindowKind, t: i64) -> i64 {
    t - t.rem_euclid(window_len(kind))
}

/// How far an operator got: the next input offset it has not applied and its watermark.
/// Stored in its changelog, so that after a restore the replayed input before `next_offset`
/// is skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Progress {
    /// The next input offset to apply (Kafka offsets start at 0).
    pub next_offset: i64,
    /// None before the first watermark.
    pub watermark: Option<i64>,
}

/// What a watermark move means for an operator.
pub(crate) struct Moved {
    /// Entered a new minute: emit what changed.
    pub minute: bool,
    /// Entered a new hour: forget what can no longer change.
    pub hour: bool,
}

impl Progress {
    /// Refuses a restored progress no operator writes.
    pub fn check(&self) -> Result<(), String> {
        check_offset("next_offset", self.next_offset)?;
        check_time("watermark", self.watermark)
    }

    /// Whether input at `offset` is new (not applied before a restore); records it if so.
    pub fn accept(&mut self, offset: i64) -> bool {
        if offset < self.next_offset {
            return false;
        }
        self.next_offset = offset + 1;
        true
    }

    /// Moves the watermark to `wm`; None when it does not move.
    pub fn advance(&mut self, wm: i64) -> Option<Moved> {
        if self.watermark.is_some_and(|old| wm <= old) {
            return None;
        }
        let old = self.watermark.replace(wm);
        let crossed = |len: i64| old.is_none_or(|old| wm.div_euclid(len) > old.div_euclid(len));
        Some(Moved {
            minute: crossed(MINUTE),
            hour: crossed(HOUR),
        })
    }

    /// Whether a window ending at `end` is final: the watermark is `keep` past it.
    pub fn is_final(&self, end: i64, keep: i64) -> bool {
        self.watermark
            .is_some_and(|wm| end.saturating_add(keep) < wm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_skips_applied_offsets_and_reports_minutes_and_hours_entered() {
        let mut p = Progress::default();
        assert!(p.accept(0) && p.accept(5) && !p.accept(3) && p.accept(6));
        assert!(!p.is_final(0, 0), "no watermark: nothing is final");
        let m = p.advance(HOUR - 1).unwrap();
        assert!(m.minute && m.hour, "the first watermark enters both");
        assert!(p.advance(HOUR - 2).is_none() && p.advance(HOUR - 1).is_none());
        let m = p.advance(HOUR).unwrap();
        assert!(m.minute && m.hour);
        let m = p.advance(HOUR + 1).unwrap();
        assert!(!m.minute && !m.hour);
        assert!(p.is_final(HOUR - 10, 10) && !p.is_final(HOUR - 10, 11));
        assert_eq!(window_start(WindowKind::Day, DAY + 5), DAY);
        assert_eq!(minute_of(-1), -MINUTE);
    }
}
