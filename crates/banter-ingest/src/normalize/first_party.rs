//! First-party events (`POST /v1/events`, `banter replay`): the normalized JSON form that the
//! brand's own systems post: poll votes, link clicks, conversions, publications, or any other
//! kind.
//!
//! The JSON uses the Avro field names. Defaults: `platform` FIRST_PARTY, `action` ADD,
//! `event_time_source` FIRST_PARTY, `is_brand_actor` false. `actor_id` is the raw
//! platform-scoped id and is hashed like the webhooks' (so a click joins the DM that carried
//! the link). Without `event_id`, one is derived from the event's content, so an identical
//! resubmission de-duplicates. Unknown fields are rejected, naming the field: a typo must not
//! silently drop data.

use banter_model::{
    Action, ContentType, EngagementEvent, EventTimeSource, Kind, Platform, TimestampMillis,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::{Item, Normalizer, Rejection};

/// One first-party event as posted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Incoming {
    event_id: Option<String>,
    platform: Option<Platform>,
    kind: Kind,
    action: Option<Action>,
    account_id: String,
    content_id: Option<String>,
    content_type: Option<ContentType>,
    content_published_at: Option<TimestampMillis>,
    object_id: Option<String>,
    parent_id: Option<String>,
    thread_id: Option<String>,
    actor_id: Option<String>,
    #[serde(default)]
    is_brand_actor: bool,
    text: Option<String>,
    reaction: Option<String>,
    cta_campaign_id: Option<String>,
    cta_keyword: Option<String>,
    #[serde(rename = "ref")]
    ref_: Option<String>,
    click_id: Option<String>,
    value: Option<f64>,
    currency: Option<String>,
    event_time: TimestampMillis,
    event_time_source: Option<EventTimeSource>,
}

fn derived_id(raw: &str) -> String {
    let digest = Sha256::digest(raw.trim().as_bytes());
    let mut out = String::from("fp:");
    for b in &digest[..16] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Normalizes one event given as raw JSON.
pub fn normalize(n: &Normalizer, raw: &RawValue, now_ms: TimestampMillis) -> Item {
    let text = raw.get();
    let incoming: Incoming = match serde_json::from_str(text) {
        Ok(i) => i,
        Err(e) => {
            let account = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| {
                    v.get("account_id")
                        .and_then(|a| a.as_str())
                        .map(str::to_owned)
                });
            let msg = e.to_string();
            let reason = if msg.starts_with("unknown field") {
                "unknown_field"
            } else {
                "invalid"
            };
            // serde_json appends " at line L column C", meaningless inside one event.
            let detail = match msg.rfind(" at line ") {
                Some(i) => msg[..i].to_owned(),
                None => msg,
            };
            return Item::Rejected(Rejection {
                reason,
                detail,
                payload: text.as_bytes().to_vec(),
                account_id: account,
            });
        }
    };
    let platform = incoming.platform.unwrap_or(Platform::FirstParty);
    let action = incoming.action.unwrap_or(Action::Add);
    let mut e = EngagementEvent::new(
        incoming.event_id.unwrap_or_else(|| derived_id(text)),
        platform,
        incoming.kind,
        action,
        incoming.account_id,
        incoming.event_time,
    );
    e.content_id = incoming.content_id;
    e.content_type = incoming.content_type;
    e.content_published_at = incoming.content_published_at;
    if e.kind == Kind::PostPublished && e.content_published_at.is_none() {
        e.content_published_at = Some(e.event_time);
    }
    e.object_id = incoming.object_id;
    e.parent_id = incoming.parent_id;
    e.thread_id = incoming.thread_id;
    e.actor_id = incoming.actor_id.map(|a| n.actor(&a));
    e.is_brand_actor = incoming.is_brand_actor;
    e.text = incoming.text;
    e.reaction = incoming.reaction;
    e.cta_campaign_id = incoming.cta_campaign_id;
    e.cta_keyword = incoming.cta_keyword;
    e.ref_ = incoming.ref_;
    e.click_id = incoming.click_id;
    e.value = incoming.value;
    e.currency = incoming.currency;
    e.event_time_source = incoming
        .event_time_source
        .unwrap_or(EventTimeSource::FirstParty);
    e.received_at = now_ms;
    match e.validate(&banter_model::ValidationContext {
        now_ms,
        max_future_skew_ms: n.max_future_skew_ms,
    }) {
        Ok(()) => Item::Event(e),
        Err(err) => Item::Rejected(Rejection {
            reason: "invalid",
            detail: err.to_string(),
            payload: text.as_bytes().to_vec(),
            account_id: (!e.account_id.is_empty()).then(|| e.account_id.clone()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_000_000_000;

    fn n() -> Normalizer {
        Normalizer::new(b"test-salt-0123456789", 300_000)
    }

    fn one(json: &str) -> Item {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        normalize(&n(), &raw, NOW)
    }

    #[test]
    fn conversion_with_defaults() {
        let Item::Event(e) = one(
            r#"{"kind":"CONVERSION","account_id":"acct","actor_id":"u1","click_id":"c1","value":12.5,"currency":"EUR","event_time":1763999990000}"#,
        ) else {
            panic!("rejected")
        };
        assert_eq!(e.platform, Platform::FirstParty);
        assert_eq!(e.action, Action::Add);
        assert_eq!(e.event_time_source, EventTimeSource::FirstParty);
        assert_eq!(e.actor_id.as_deref(), Some(n().actor("u1").as_str()));
        assert_eq!(e.received_at, NOW);
        assert!(e.event_id.starts_with("fp:"));
        // The same content gives the same id.
        let Item::Event(again) = one(
            r#"{"kind":"CONVERSION","account_id":"acct","actor_id":"u1","click_id":"c1","value":12.5,"currency":"EUR","event_time":1763999990000}"#,
        ) else {
            panic!("rejected")
        };
        assert_eq!(again.event_id, e.event_id);
    }

    #[test]
    fn rejections_name_the_problem() {
        let cases = [
            (
                r#"{"kind":"COMENT","account_id":"a","event_time":1763999990000}"#,
                "invalid",
                "unknown variant `COMENT`",
            ),
            (
                r#"{"kind":"POLL_VOTE","acount_id":"a","event_time":1763999990000}"#,
                "unknown_field",
                "unknown field `acount_id`",
            ),
            (
                r#"{"kind":"POLL_VOTE","account_id":"","content_id":"p","event_time":1763999990000}"#,
                "invalid",
                "missing account_id",
            ),
            (
                r#"{"kind":"CONVERSION","account_id":"a","value":-1,"currency":"EUR","event_time":1763999990000}"#,
                "invalid",
                "value -1 is negative",
            ),
            (
                r#"{"kind":"LINK_CLICK","account_id":"a","event_time":1763999990}"#,
                "invalid",
                "before 2000-01-01",
            ),
            (
                r#"{"kind":"POLL_VOTE","account_id":"a","event_time":1763999990000}"#,
                "invalid",
                "POLL_VOTE needs content_id",
            ),
        ];
        for (json, reason, detail) in cases {
            match one(json) {
                Item::Rejected(r) => {
                    assert_eq!(r.reason, reason, "{json}");
                    assert!(r.detail.contains(detail), "{json}: {}", r.detail);
                    assert_eq!(r.payload, json.as_bytes());
                }
                other => panic!("{json} not rejected: {other:?}"),
            }
        }
    }

    #[test]
    fn post_published_defaults_publish_time() {
        let Item::Event(e) = one(
            r#"{"kind":"POST_PUBLISHED","account_id":"a","content_id":"p1","event_time":1763999990000}"#,
        ) else {
            panic!("rejected")
        };
        assert_eq!(e.content_published_at, Some(1_763_999_990_000));
    }
}
