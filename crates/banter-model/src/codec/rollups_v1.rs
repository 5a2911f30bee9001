//! Hand-written Avro body encoders of the stream processor's output rows, `Rollup`
//! (`rollup.v1.avsc`) and `ConversationRollup` (`conversation_rollup.v1.avsc`): together they
//! are most of what the stream writes (more than one row per input event), and
//! `serde_avro_fast` looks every field up by name as it writes it (about a tenth of the stream
//! process's time in a profile, see `docs/benchmarks.md`). Fields are written in schema order
//! with no per-field lookup.
//!
//! Only encoding is specialized: reading these rows (the sink) keeps the serde path, which
//! also resolves other writer versions. Like `event_v1`, each is bound to its schema's
//! fingerprint (a changed schema falls back to `serde_avro_fast`, and the test
//! `specialized_rollup_encoders_match_the_schemas` fails until this file is updated); the
//! property tests check them byte for byte against the two library paths.

use super::binary::{write_long, write_opt_double, write_opt_long, write_opt_str, write_str};
use super::Specialized;
use crate::records::{ConversationRollup, Rollup, SketchBucket, WindowKind};

/// Fingerprint of `rollup.v1.avsc`.
pub const ROLLUP_FINGERPRINT: [u8; 8] = [0xae, 0xfb, 0x17, 0xa1, 0xce, 0x69, 0xf0, 0xa0];
/// Fingerprint of `conversation_rollup.v1.avsc`.
pub const CONVERSATION_FINGERPRINT: [u8; 8] = [0xa7, 0x26, 0x13, 0x58, 0xd6, 0x38, 0x4d, 0x3f];

/// The `Rollup` specialization.
pub static ROLLUP: Specialized<Rollup> = Specialized {
    fingerprint: ROLLUP_FINGERPRINT,
    encode: encode_rollup,
    decode: None,
    decode_into: None,
};

/// The `ConversationRollup` specialization.
pub static CONVERSATION: Specialized<ConversationRollup> = Specialized {
    fingerprint: CONVERSATION_FINGERPRINT,
    encode: encode_conversation,
    decode: None,
    decode_into: None,
};

/// The symbol's index in the schema's `WindowKind` (the order of [`WindowKind::ALL`], which
/// the test checks against the schema).
fn window(w: WindowKind) -> i64 {
    WindowKind::ALL.iter().position(|k| *k == w).unwrap_or(0) as i64
}

fn encode_rollup(r: &Rollup, out: &mut Vec<u8>) {
    out.reserve(96 + r.account_id.len() + r.content_id.as_ref().map_or(0, smol_str::SmolStr::len));
    write_str(out, &r.account_id);
    write_opt_str(out, r.content_id.as_deref());
    write_long(out, window(r.window));
    write_long(out, r.window_start);
    write_long(out, r.window_end);
    write_long(out, r.revision);
    write_long(out, r.interactions);
    write_long(out, r.comments);
    write_long(out, r.live_comments);
    write_long(out, r.reactions);
    write_long(out, r.shares);
    write_long(out, r.story_replies);
    write_long(out, r.dms_in);
    write_long(out, r.mentions);
    write_long(out, r.brand_replies);
    write_opt_double(out, r.velocity);
    write_opt_double(out, r.early_accel);
    write_opt_double(out, r.time_to_n_minutes);
    write_opt_long(out, r.unique_engagers);
    write_long(out, r.late_events);
    write_long(out, r.emitted_at);
}

/// An `array` of `SketchBucket` records: one block with its count, then the end marker (an
/// empty array is the end marker alone), as `serde_avro_fast` and `apache-avro` write it.
fn write_sketch(out: &mut Vec<u8>, buckets: &[SketchBucket]) {
    if !buckets.is_empty() {
        write_long(out, buckets.len() as i64);
        for b in buckets {
            write_long(out, i64::from(b.bucket));
            write_long(out, b.count);
        }
    }
    out.push(0);
}

fn encode_conversation(c: &ConversationRollup, out: &mut Vec<u8>) {
    out.reserve(
        160 + c.account_id.len()
            + c.content_id.as_ref().map_or(0, String::len)
            + 12 * (c.response_sketch.len() + c.first_response_sketch.len()),
    );
    write_str(out, &c.account_id);
    write_opt_str(out, c.content_id.as_deref());
    write_long(out, window(c.window));
    write_long(out, c.window_start);
    write_long(out, c.window_end);
    write_long(out, c.revision);
    write_long(out, c.inbound);
    write_long(out, c.answered);
    write_long(out, c.inbound_comments);
    write_long(out, c.answered_comments);
    write_long(out, c.inbound_story_replies);
    write_long(out, c.inbound_dms);
    write_opt_double(out, c.response_rate);
    write_opt_double(out, c.median_response_s);
    write_opt_double(out, c.p90_response_s);
    write_opt_double(out, c.median_first_response_s);
    write_long(out, c.root_comments);
    write_long(out, c.reply_comments);
    write_opt_double(out, c.thread_depth);
    write_opt_double(out, c.reply_share);
    write_long(out, c.emitted_at);
    write_sketch(out, &c.response_sketch);
    write_sketch(out, &c.first_response_sketch);
}
