//! Meta webhooks (Instagram, Facebook Pages, Messenger) to [`EngagementEvent`]s.
//!
//! Envelope: `{"object": "instagram" | "page", "entry": [{"id", "time", "changes": [...],
//! "messaging": [...]}]}`; an entry carries `changes` (comments, mentions, feed) or
//! `messaging` (DMs, echoes, story replies, reactions, reads, postbacks, referrals). Instagram
//! also delivers DMs in the other shape, as `changes` with field `messages` (and
//! `messaging_postbacks`, `message_reactions`, `messaging_seen`, `messaging_referral`) whose
//! value is a messaging item with a timestamp in seconds, often as a string; both are handled. `entry.time` may be in seconds or milliseconds.
//! Unknown fields are ignored; an unknown change type or messaging item becomes a dead letter
//! (`unknown_change`), never an error for the whole request.
//!
//! `event_id` = `<platform>:<native id>:<kind>:<action>[:<event time>]`. The event time is left
//! out where it is only the delivery time (Instagram comments carry no creation time and
//! `entry.time` may differ between redeliveries; a comment id is added once).

use banter_model::{Action, ContentType, EngagementEvent, EventTimeSource, Kind, Platform};
use serde_json::Value;

use super::{meta_time_ms, Item, Normalizer};

/// Why a body is not a Meta webhook at all (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// No `object` string.
    #[error("not a Meta webhook: missing `object`")]
    MissingObject,
    /// An `object` banter does not subscribe to.
    #[error("unsupported webhook object `{0}` (expected instagram or page)")]
    UnsupportedObject(String),
    /// No `entry` array.
    #[error("not a Meta webhook: missing `entry` array")]
    MissingEntry,
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut v = v;
    for p in path {
        v = v.get(p)?;
    }
    v.as_str().filter(|s| !s.is_empty())
}

/// A string or a number, as a string (Meta sends some ids as either).
fn id(v: &Value, path: &[&str]) -> Option<String> {
    let mut v = v;
    for p in path {
        v = v.get(p)?;
    }
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn int(v: &Value, key: &str) -> Option<i64> {
    match v.get(key)? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn event_id(
    platform: Platform,
    native: &str,
    kind: Kind,
    action: Action,
    time: Option<i64>,
) -> String {
    match time {
        Some(t) => format!("{platform}:{native}:{kind}:{action}:{t}"),
        None => format!("{platform}:{native}:{kind}:{action}"),
    }
}

/// Normalizes one webhook body (already signature-checked and parsed).
///
/// # Errors
/// The body is not a Meta webhook envelope; single bad updates become [`Item::Rejected`].
pub fn normalize(n: &Normalizer, body: &Value, now_ms: i64) -> Result<Vec<Item>, EnvelopeError> {
    let object = body
        .get("object")
        .and_then(Value::as_str)
        .ok_or(EnvelopeError::MissingObject)?;
    let (change_platform, dm_platform) = match object {
        "instagram" => (Platform::Instagram, Platform::Instagram),
        "page" => (Platform::Facebook, Platform::Messenger),
        other => return Err(EnvelopeError::UnsupportedObject(other.to_owned())),
    };
    let entries = body
        .get("entry")
        .and_then(Value::as_array)
        .ok_or(EnvelopeError::MissingEntry)?;
    let mut out = Vec::new();
    for entry in entries {
        let Some(account) = id(entry, &["id"]) else {
            out.push(Item::rejected(
                "malformed",
                "entry without `id`",
                entry,
                None,
            ));
            continue;
        };
        let entry_time = int(entry, "time").map(meta_time_ms).unwrap_or(now_ms);
        for change in entry
            .get("changes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.push(change_item(
                n,
                change_platform,
                &account,
                entry_time,
                change,
                now_ms,
            ));
        }
        for m in entry
            .get("messaging")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.push(messaging_item(n, dm_platform, &account, m, now_ms));
        }
        if entry.get("changes").is_none() && entry.get("messaging").is_none() {
            out.push(Item::rejected(
                "unknown_change",
                "entry has neither `changes` nor `messaging`",
                entry,
                Some(&account),
            ));
        }
    }
    Ok(out)
}

fn content_type(media_product_type: Option<&str>) -> Option<ContentType> {
    Some(match media_product_type? {
        "FEED" => ContentType::Feed,
        "REELS" => ContentType::Reels,
        "STORY" => ContentType::Story,
        "AD" => ContentType::Ad,
        "LIVE" => ContentType::Live,
        _ => return None,
    })
}

fn change_item(
    n: &Normalizer,
    platform: Platform,
    account: &str,
    entry_time: i64,
    change: &Value,
    now_ms: i64,
) -> Item {
    let field = change.get("field").and_then(Value::as_str).unwrap_or("");
    let Some(value) = change.get("value") else {
        return Item::rejected(
            "malformed",
            format!("change `{field}` without `value`"),
            change,
            Some(account),
        );
    };
    match (platform, field) {
        (Platform::Instagram, "comments") => {
            ig_comment(n, account, entry_time, value, change, Kind::Comment, now_ms)
        }
        (Platform::Instagram, "live_comments") => ig_comment(
            n,
            account,
            entry_time,
            value,
            change,
            Kind::LiveComment,
            now_ms,
        ),
        // Instagram API with Instagram Login (and Meta's test tool) delivers DMs as changes
        // whose value has the shape of a `messaging` item.
        (
            Platform::Instagram,
            "messages"
            | "messaging_postbacks"
            | "message_reactions"
            | "messaging_seen"
            | "messaging_referral",
        ) => messaging_item(n, Platform::Instagram, account, value, now_ms),
        (Platform::Instagram, "mentions") => {
            ig_mention(n, account, entry_time, value, change, now_ms)
        }
        (Platform::Facebook, "feed") => fb_feed(n, account, value, change, now_ms),
        (Platform::Facebook, "mention") => fb_mention(n, account, value, change, now_ms),
        _ => Item::rejected(
            "unknown_change",
            format!(
                "unsupported {} change field `{field}`",
                platform.as_str().to_lowercase()
            ),
            change,
            Some(account),
        ),
    }
}

fn ig_comment(
    n: &Normalizer,
    account: &str,
    entry_time: i64,
    v: &Value,
    raw: &Value,
    kind: Kind,
    now_ms: i64,
) -> Item {
    let Some(comment_id) = id(v, &["id"]) else {
        return Item::rejected(
            "malformed",
            "comment without `value.id`",
            raw,
            Some(account),
        );
    };
    let from = id(v, &["from", "id"]);
    let parent = id(v, &["parent_id"]);
    let brand = from.as_deref() == Some(account);
    let kind = if brand && parent.is_some() && kind == Kind::Comment {
        Kind::BrandReply
    } else {
        kind
    };
    let mut e = EngagementEvent::new(
        event_id(Platform::Instagram, &comment_id, kind, Action::Add, None),
        Platform::Instagram,
        kind,
        Action::Add,
        account,
        entry_time,
    );
    e.content_id = id(v, &["media", "id"]);
    e.content_type = if kind == Kind::LiveComment {
        Some(ContentType::Live)
    } else {
        content_type(s(v, &["media", "media_product_type"]))
    };
    e.thread_id = Some(parent.clone().unwrap_or_else(|| comment_id.clone()));
    e.parent_id = parent;
    e.object_id = Some(comment_id);
    e.actor_id = from.map(|f| n.actor(&f));
    e.is_brand_actor = brand;
    e.text = s(v, &["text"]).map(str::to_owned);
    e.event_time_source = EventTimeSource::PlatformDelivery;
    e.received_at = now_ms;
    n.finish(e, now_ms, raw)
}

fn ig_mention(
    n: &Normalizer,
    account: &str,
    entry_time: i64,
    v: &Value,
    raw: &Value,
    now_ms: i64,
) -> Item {
    let media = id(v, &["media_id"]);
    let comment = id(v, &["comment_id"]);
    let Some(native) = comment.clone().or_else(|| media.clone()) else {
        return Item::rejected(
            "malformed",
            "mention without `media_id` or `comment_id`",
            raw,
            Some(account),
        );
    };
    let mut e = EngagementEvent::new(
        event_id(
            Platform::Instagram,
            &native,
            Kind::Mention,
            Action::Add,
            None,
        ),
        Platform::Instagram,
        Kind::Mention,
        Action::Add,
        account,
        entry_time,
    );
    e.content_id = media;
    e.object_id = comment;
    e.event_time_source = EventTimeSource::PlatformDelivery;
    e.received_at = now_ms;
    n.finish(e, now_ms, raw)
}

fn fb_action(verb: &str) -> Option<Action> {
    Some(match verb {
        "add" => Action::Add,
        "edited" | "edit" => Action::Edit,
        "remove" => Action::Remove,
        "hide" => Action::Hide,
        "unhide" => Action::Unhide,
        _ => return None,
    })
}

fn fb_feed(n: &Normalizer, page: &str, v: &Value, raw: &Value, now_ms: i64) -> Item {
    let item = s(v, &["item"]).unwrap_or("");
    let verb = s(v, &["verb"]).unwrap_or("");
    let Some(action) = fb_action(verb) else {
        return Item::rejected(
            "malformed",
            format!("feed verb `{verb}` is not add, edited, remove, hide or unhide"),
            raw,
            Some(page),
        );
    };
    let Some(created) = int(v, "created_time").map(meta_time_ms) else {
        return Item::rejected(
            "malformed",
            "feed change without `created_time`",
            raw,
            Some(page),
        );
    };
    let post = id(v, &["post_id"]);
    let from = id(v, &["from", "id"]);
    let brand = from.as_deref() == Some(page);
    let actor = from.as_deref().map(|f| n.actor(f));
    let (kind, native) = match item {
        "comment" => {
            let Some(c) = id(v, &["comment_id"]) else {
                return Item::rejected(
                    "malformed",
                    "feed comment without `comment_id`",
                    raw,
                    Some(page),
                );
            };
            let is_reply = id(v, &["parent_id"]).is_some_and(|p| Some(&p) != post.as_ref());
            (
                if brand && is_reply {
                    Kind::BrandReply
                } else {
                    Kind::Comment
                },
                c,
            )
        }
        "reaction" | "like" => (
            Kind::PostReaction,
            format!(
                "{}/{}",
                post.as_deref().unwrap_or("-"),
                from.as_deref().unwrap_or("-")
            ),
        ),
        "share" => (
            Kind::Share,
            id(v, &["share_id"]).unwrap_or_else(|| {
                format!(
                    "{}/{}",
                    post.as_deref().unwrap_or("-"),
                    from.as_deref().unwrap_or("-")
                )
            }),
        ),
        "status" | "post" | "photo" | "video" if brand && action == Action::Add => {
            (Kind::PostPublished, post.clone().unwrap_or_default())
        }
        "status" | "post" | "photo" | "video" => {
            return Item::rejected(
                "unknown_change",
                format!("feed `{item}` `{verb}` by a visitor is not tracked"),
                raw,
                Some(page),
            )
        }
        other => {
            return Item::rejected(
                "unknown_change",
                format!("unsupported feed item `{other}`"),
                raw,
                Some(page),
            )
        }
    };
    let mut e = EngagementEvent::new(
        event_id(Platform::Facebook, &native, kind, action, Some(created)),
        Platform::Facebook,
        kind,
        action,
        page,
        created,
    );
    e.content_id = post;
    e.content_type = Some(ContentType::Post);
    if kind == Kind::PostPublished {
        e.content_published_at = Some(created);
    }
    if matches!(kind, Kind::Comment | Kind::BrandReply) {
        let parent = id(v, &["parent_id"]).filter(|p| Some(p) != e.content_id.as_ref());
        e.thread_id = Some(parent.clone().unwrap_or_else(|| native.clone()));
        e.parent_id = parent;
        e.object_id = Some(native);
    }
    e.actor_id = actor;
    e.is_brand_actor = brand;
    e.text = s(v, &["message"]).map(str::to_owned);
    e.reaction = s(v, &["reaction_type"]).map(str::to_owned);
    e.received_at = now_ms;
    n.finish(e, now_ms, raw)
}

fn fb_mention(n: &Normalizer, page: &str, v: &Value, raw: &Value, now_ms: i64) -> Item {
    let post = id(v, &["post_id"]);
    let comment = id(v, &["comment_id"]);
    let verb = s(v, &["verb"]).unwrap_or("add");
    let Some(action) = fb_action(verb) else {
        return Item::rejected(
            "malformed",
            format!("mention verb `{verb}` is not supported"),
            raw,
            Some(page),
        );
    };
    let Some(native) = comment.clone().or_else(|| post.clone()) else {
        return Item::rejected("malformed", "mention without `post_id`", raw, Some(page));
    };
    let time = int(v, "created_time").map(meta_time_ms).unwrap_or(now_ms);
    let mut e = EngagementEvent::new(
        event_id(Platform::Facebook, &native, Kind::Mention, action, None),
        Platform::Facebook,
        Kind::Mention,
        action,
        page,
        time,
    );
    e.content_id = post;
    e.object_id = comment;
    e.actor_id = id(v, &["sender_id"]).map(|a| n.actor(&a));
    e.received_at = now_ms;
    n.finish(e, now_ms, raw)
}

fn messaging_item(
    n: &Normalizer,
    platform: Platform,
    account: &str,
    m: &Value,
    now_ms: i64,
) -> Item {
    let (Some(sender), Some(recipient)) = (id(m, &["sender", "id"]), id(m, &["recipient", "id"]))
    else {
        return Item::rejected(
            "malformed",
            "messaging item without `sender.id` and `recipient.id`",
            m,
            Some(account),
        );
    };
    let Some(ts) = int(m, "timestamp").map(meta_time_ms) else {
        return Item::rejected(
            "malformed",
            "messaging item without `timestamp`",
            m,
            Some(account),
        );
    };
    // The user is whichever side is not the brand's page or account.
    let brand_sent = sender == account;
    let user = if brand_sent { &recipient } else { &sender };
    let user_hash = n.actor(user);

    let (kind, action, native, text, reaction, reference) = if let Some(msg) = m.get("message") {
        let mid = id(msg, &["mid"]).unwrap_or_else(|| format!("{sender}/{ts}"));
        let echo = msg.get("is_echo").and_then(Value::as_bool).unwrap_or(false);
        let deleted = msg
            .get("is_deleted")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let kind = if echo || brand_sent {
            Kind::DmOut
        } else if msg.pointer("/reply_to/story").is_some() {
            Kind::StoryReply
        } else if msg.get("quick_reply").is_some() {
            Kind::DmPostback
        } else {
            Kind::DmIn
        };
        let text = if kind == Kind::DmPostback {
            s(msg, &["quick_reply", "payload"]).or_else(|| s(msg, &["text"]))
        } else {
            s(msg, &["text"])
        };
        let action = if deleted { Action::Remove } else { Action::Add };
        (
            kind,
            action,
            mid,
            text.map(str::to_owned),
            None,
            s(msg, &["referral", "ref"]).map(str::to_owned),
        )
    } else if let Some(r) = m.get("reaction") {
        let mid = id(r, &["mid"]).unwrap_or_else(|| format!("{sender}/{ts}"));
        let action = if s(r, &["action"]) == Some("unreact") {
            Action::Remove
        } else {
            Action::Add
        };
        let reaction = s(r, &["reaction"])
            .or_else(|| s(r, &["emoji"]))
            .map(str::to_owned);
        (
            Kind::DmReaction,
            action,
            format!("{mid}/{sender}"),
            None,
            reaction,
            None,
        )
    } else if let Some(r) = m.get("read") {
        let native = id(r, &["mid"])
            .or_else(|| id(r, &["watermark"]))
            .unwrap_or_else(|| ts.to_string());
        (
            Kind::DmRead,
            Action::Add,
            format!("{native}/{sender}"),
            None,
            None,
            None,
        )
    } else if let Some(p) = m.get("postback") {
        let native = id(p, &["mid"]).unwrap_or_else(|| format!("{sender}/{ts}"));
        let payload = s(p, &["payload"]).map(str::to_owned);
        (
            Kind::DmPostback,
            Action::Add,
            native,
            payload,
            None,
            s(p, &["referral", "ref"]).map(str::to_owned),
        )
    } else if let Some(r) = m.get("referral") {
        (
            Kind::DmPostback,
            Action::Add,
            format!("{sender}/{ts}/referral"),
            None,
            None,
            s(r, &["ref"]).map(str::to_owned),
        )
    } else {
        return Item::rejected(
            "unknown_change",
            "messaging item has none of message, reaction, read, postback, referral",
            m,
            Some(account),
        );
    };

    let mut e = EngagementEvent::new(
        event_id(platform, &native, kind, action, Some(ts)),
        platform,
        kind,
        action,
        account,
        ts,
    );
    e.actor_id = Some(user_hash.clone());
    e.thread_id = Some(user_hash);
    e.is_brand_actor = brand_sent;
    if kind == Kind::StoryReply {
        e.content_id = id(m, &["message", "reply_to", "story", "id"]);
        e.content_type = Some(ContentType::Story);
    }
    // The message the event is about: the one sent, reacted to, read or answered.
    e.object_id = id(m, &["message", "mid"])
        .or_else(|| id(m, &["reaction", "mid"]))
        .or_else(|| id(m, &["read", "mid"]))
        .or_else(|| id(m, &["postback", "mid"]));
    e.text = text;
    e.reaction = reaction;
    e.ref_ = reference;
    e.received_at = now_ms;
    n.finish(e, now_ms, m)
}
