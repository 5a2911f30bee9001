//! Hand-written Avro body encoders of the stream processor's output rows, `Rollup`
//! (`rollup.v1.avsc`) and `ConversationRollup` (`conversation_rollup.v1.avsc`): together they
//! are most of what the stream writes (more than one row per input event), and
//! `serde_avro_fast` looks every field up by name as it writes it (about a tenth of the stream
//! process's time in a profile, see `docs/benchmarks.md`). Fields are written in schema order
//! with no per-field lookup.
//!
//! The sink reads them back with the hand-written decoders here when the writer's schema is
//! this version (other registered versions take the serde path, which resolves them). Like
//! `event_v1`, each is bound to its schema's fingerprint (a changed schema falls back to
//! `serde_avro_fast`, and the test `specialized_rollup_encoders_match_the_schemas` fails until
//! this file is updated); the property tests check the encoders byte for byte against the two
//! library paths, and that the decoders accept exactly the bodies `serde_avro_fast` accepts.

use super::binary::{
    write_long, write_opt_double, write_opt_long, write_opt_str, write_str, ReadError, Reader,
};
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
    decode: Some(decode_rollup),
    decode_into: None,
};

/// The `ConversationRollup` specialization.
pub static CONVERSATION: Specialized<ConversationRollup> = Specialized {
    fingerprint: CONVERSATION_FINGERPRINT,
    encode: encode_conversation,
    decode: Some(decode_conversation),
    decode_into: None,
};

/// The symbol's index in the schema's `WindowKind` (the order of [`WindowKind::ALL`], which
/// the test checks against the schema). Exhaustive: a new kind cannot be written as another.
fn window(w: WindowKind) -> i64 {
    match w {
        WindowKind::Minute => 0,
        WindowKind::Velocity5m => 1,
        WindowKind::First15m => 2,
        WindowKind::First60m => 3,
        WindowKind::Hour => 4,
        WindowKind::Day => 5,
    }
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

fn decode_rollup(body: &[u8]) -> Result<(Rollup, usize), ReadError> {
    let mut r = Reader::new(body);
    let v = Rollup {
        account_id: r.str()?.into(),
        content_id: r.opt_str()?.map(Into::into),
        window: r.enumeration("window", &WindowKind::ALL)?,
        window_start: r.long()?,
        window_end: r.long()?,
        revision: r.long()?,
        interactions: r.long()?,
        comments: r.long()?,
        live_comments: r.long()?,
        reactions: r.long()?,
        shares: r.long()?,
        story_replies: r.long()?,
        dms_in: r.long()?,
        mentions: r.long()?,
        brand_replies: r.long()?,
        velocity: r.opt_double()?,
        early_accel: r.opt_double()?,
        time_to_n_minutes: r.opt_double()?,
        unique_engagers: r.opt_long()?,
        late_events: r.long()?,
        emitted_at: r.long()?,
    };
    Ok((v, r.remaining()))
}

/// An `array` of `SketchBucket`s in any blocking: blocks of `count` items (a negative count
/// is followed by the block's size in bytes), ended by a zero count. A count larger than the
/// bytes left could hold (every item takes at least two) is an error before anything is
/// allocated.
fn read_sketch(r: &mut Reader<'_>) -> Result<Vec<SketchBucket>, ReadError> {
    let mut out = Vec::new();
    loop {
        let at = r.position();
        let mut n = r.long()?;
        if n == 0 {
            return Ok(out);
        }
        if n < 0 {
            n = n.checked_neg().ok_or_else(|| ReadError {
                at,
                what: "array block count overflows".into(),
            })?;
            r.long()?; // the block's size in bytes
        }
        if n as u64 > r.remaining() as u64 / 2 {
            return Err(ReadError {
                at,
                what: format!(
                    "array block of {n} items exceeds the {} bytes left",
                    r.remaining()
                ),
            });
        }
        out.reserve(n as usize);
        for _ in 0..n {
            let bucket = r.long()?;
            let bucket = i32::try_from(bucket).map_err(|_| ReadError {
                at: r.position(),
                what: format!("int {bucket} out of range"),
            })?;
            out.push(SketchBucket {
                bucket,
                count: r.long()?,
            });
        }
    }
}

fn decode_conversation(body: &[u8]) -> Result<(ConversationRollup, usize), ReadError> {
    let mut r = Reader::new(body);
    let v = ConversationRollup {
        account_id: r.str()?.to_owned(),
        content_id: r.opt_str()?.map(str::to_owned),
        window: r.enumeration("window", &WindowKind::ALL)?,
        window_start: r.long()?,
        window_end: r.long()?,
        revision: r.long()?,
        inbound: r.long()?,
        answered: r.long()?,
        inbound_comments: r.long()?,
        answered_comments: r.long()?,
        inbound_story_replies: r.long()?,
        inbound_dms: r.long()?,
        response_rate: r.opt_double()?,
        median_response_s: r.opt_double()?,
        p90_response_s: r.opt_double()?,
        median_first_response_s: r.opt_double()?,
        root_comments: r.long()?,
        reply_comments: r.long()?,
        thread_depth: r.opt_double()?,
        reply_share: r.opt_double()?,
        emitted_at: r.long()?,
        response_sketch: read_sketch(&mut r)?,
        first_response_sketch: read_sketch(&mut r)?,
    };
    Ok((v, r.remaining()))
}
