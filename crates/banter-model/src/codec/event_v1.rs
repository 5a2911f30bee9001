//! Hand-written Avro body codec of `EngagementEvent` for `engagement_event.v1.avsc`: the hot
//! record of the pipeline (every event is encoded once by ingest and decoded by the stream
//! processor). It writes and reads fields in schema order with no intermediate value and no
//! per-field name matching.
//!
//! It is bound to the v1 fingerprint: if the schema file changes, [`Codec`](super::Codec) stops
//! using it (falling back to `serde_avro_fast`, which is correct but slower) and the test
//! `specialized_codec_matches_the_schema` fails until this file is updated. The property tests
//! check it byte for byte against the two library paths.

use super::binary::{
    write_long, write_opt_double, write_opt_long, write_opt_str, write_str, ReadError, Reader,
};
use super::Specialized;
use crate::event::{Action, ContentType, EngagementEvent, EventTimeSource, Kind, Platform};

/// Fingerprint of the schema this codec implements (`engagement_event.v1.avsc`).
pub const FINGERPRINT: [u8; 8] = [0x51, 0x7c, 0xc2, 0x46, 0xcf, 0x4c, 0x25, 0xdf];

/// The specialization, for [`AvroRecord::specialized`](super::AvroRecord::specialized).
pub static SPECIALIZED: Specialized<EngagementEvent> = Specialized {
    fingerprint: FINGERPRINT,
    encode,
    decode: Some(decode),
    decode_into: Some(decode_into),
};

fn index_of<T: PartialEq>(all: &[T], v: &T) -> i64 {
    all.iter().position(|x| x == v).unwrap_or(0) as i64
}

fn encode(e: &EngagementEvent, out: &mut Vec<u8>) {
    out.reserve(
        64 + e.event_id.len() + e.account_id.len() + e.text.as_ref().map_or(0, String::len),
    );
    write_str(out, &e.event_id);
    write_long(out, index_of(Platform::ALL, &e.platform));
    write_long(out, index_of(Kind::ALL, &e.kind));
    write_long(out, index_of(Action::ALL, &e.action));
    write_str(out, &e.account_id);
    write_opt_str(out, e.content_id.as_deref());
    match e.content_type {
        None => out.push(0),
        Some(c) => {
            out.push(2);
            write_long(out, index_of(ContentType::ALL, &c));
        }
    }
    write_opt_long(out, e.content_published_at);
    write_opt_str(out, e.object_id.as_deref());
    write_opt_str(out, e.parent_id.as_deref());
    write_opt_str(out, e.thread_id.as_deref());
    write_opt_str(out, e.actor_id.as_deref());
    out.push(u8::from(e.is_brand_actor));
    write_opt_str(out, e.text.as_deref());
    write_opt_str(out, e.reaction.as_deref());
    write_opt_str(out, e.cta_campaign_id.as_deref());
    write_opt_str(out, e.cta_keyword.as_deref());
    write_opt_str(out, e.ref_.as_deref());
    write_opt_str(out, e.click_id.as_deref());
    write_opt_double(out, e.value);
    write_opt_str(out, e.currency.as_deref());
    write_long(out, e.event_time);
    write_long(out, index_of(EventTimeSource::ALL, &e.event_time_source));
    write_long(out, e.received_at);
}

/// Overwrites a string, keeping its buffer.
fn set(dst: &mut String, s: &str) {
    dst.clear();
    dst.push_str(s);
}

/// Most buffers [`SPARE`] keeps.
const MAX_SPARE: usize = 32;
/// The largest buffer [`SPARE`] keeps, in bytes (a long text's is let go).
const MAX_SPARE_CAPACITY: usize = 1024;

thread_local! {
    /// Empty buffers of optional strings an event did not have: events of mixed kinds have
    /// different fields, so decoding one into the buffers of the last would otherwise free
    /// the buffers of the fields it lacks and allocate for those it has (about three of each
    /// per event in a realistic mix).
    static SPARE: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Overwrites an optional string, keeping the buffer when both are present, taking a spare
/// one when only `s` is, and keeping `dst`'s as a spare when only `dst` is.
fn set_opt(dst: &mut Option<String>, s: Option<&str>) {
    match (dst.as_mut(), s) {
        (Some(d), Some(s)) => set(d, s),
        (None, Some(s)) => {
            let mut b = SPARE
                .with_borrow_mut(Vec::pop)
                .unwrap_or_else(|| String::with_capacity(s.len()));
            b.push_str(s);
            *dst = Some(b);
        }
        (Some(_), None) => {
            if let Some(mut b) = dst.take().filter(|b| b.capacity() <= MAX_SPARE_CAPACITY) {
                b.clear();
                SPARE.with_borrow_mut(|spare| {
                    if spare.len() < MAX_SPARE {
                        spare.push(b);
                    }
                });
            }
        }
        (None, None) => {}
    }
}

fn decode(body: &[u8]) -> Result<(EngagementEvent, usize), ReadError> {
    let mut e = EngagementEvent::empty();
    let rest = decode_into(body, &mut e)?;
    Ok((e, rest))
}

/// Reads a body into `e`, reusing its strings' buffers: after the first few events a stream of
/// them decodes without allocating. On error `e` is partly overwritten.
fn decode_into(body: &[u8], e: &mut EngagementEvent) -> Result<usize, ReadError> {
    let mut r = Reader::new(body);
    set(&mut e.event_id, r.str()?);
    e.platform = r.enumeration("platform", Platform::ALL)?;
    e.kind = r.enumeration("kind", Kind::ALL)?;
    e.action = r.enumeration("action", Action::ALL)?;
    set(&mut e.account_id, r.str()?);
    set_opt(&mut e.content_id, r.opt_str()?);
    e.content_type = if r.nullable()? {
        Some(r.enumeration("content_type", ContentType::ALL)?)
    } else {
        None
    };
    e.content_published_at = r.opt_long()?;
    set_opt(&mut e.object_id, r.opt_str()?);
    set_opt(&mut e.parent_id, r.opt_str()?);
    set_opt(&mut e.thread_id, r.opt_str()?);
    set_opt(&mut e.actor_id, r.opt_str()?);
    e.is_brand_actor = r.boolean()?;
    set_opt(&mut e.text, r.opt_str()?);
    set_opt(&mut e.reaction, r.opt_str()?);
    set_opt(&mut e.cta_campaign_id, r.opt_str()?);
    set_opt(&mut e.cta_keyword, r.opt_str()?);
    set_opt(&mut e.ref_, r.opt_str()?);
    set_opt(&mut e.click_id, r.opt_str()?);
    e.value = r.opt_double()?;
    set_opt(&mut e.currency, r.opt_str()?);
    e.event_time = r.long()?;
    e.event_time_source = r.enumeration("event_time_source", EventTimeSource::ALL)?;
    e.received_at = r.long()?;
    Ok(r.remaining())
}
