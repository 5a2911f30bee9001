//! Meta webhooks (Instagram, Facebook Pages, Messenger) to [`EngagementEvent`]s.
//!
//! Envelope: `{"object": "instagram" | "page", "entry": [{"id", "time", "changes": [...],
//! "messaging": [...]}]}`; an entry carries `changes` (comments, mentions, feed) or
//! `messaging` (DMs, echoes, story replies, reactions, reads, postbacks, referrals). Instagram
//! also delivers DMs in the other shape, as `changes` with field `messages` (and
//! `messaging_postbacks`, `message_reactions`, `messaging_seen`, `messaging_referral`) whose
//! value is a messaging item with a timestamp in seconds, often as a string; both are handled.
//! `entry.time` may be in seconds or milliseconds. Messages that arrive while another app holds
//! the conversation come in `entry.standby[]`, read like `messaging[]`.
//!
//! Unknown fields are ignored; an unknown change type or messaging item becomes a dead letter
//! (`unknown_change`), never an error for the whole request. Legitimate deliveries that are not
//! engagement become [`Item::Ignored`] with a reason: delivery receipts, opt-ins, thread
//! handovers, policy notices, Meta's dashboard test payloads (`entry.id` "0"), reactions on
//! comments (DESIGN.md counts reactions on posts), a like of the Page, reads by the brand,
//! changes to the brand's own posts, unpublished posts, video moderation verbs.
//!
//! `event_id` = `<platform>:<native id>:<kind>:<action>[:<event time>]`. The event time is left
//! out where it is only the delivery time (Instagram comments carry no creation time and
//! `entry.time` may differ between redeliveries; a comment id is added once, and removed once).
//! Facebook reactions have no id of their own: `<target>/<actor>/<reaction type>` with the
//! verb and `created_time` (seconds), so add like → remove → add love are distinct; the same
//! person adding, removing and adding the same reaction on the same post within one second
//! cannot be told from a redelivery (the payload has nothing else) and counts once.

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
        let updates = ["changes", "messaging", "standby"]
            .iter()
            .filter_map(|k| entry.get(*k).and_then(Value::as_array))
            .map(Vec::len)
            .sum::<usize>();
        // The App Dashboard's "Test" button sends placeholder payloads for account "0".
        if account == "0" {
            out.extend((0..updates.max(1)).map(|_| Item::Ignored("test_payload")));
            continue;
        }
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
        for m in ["messaging", "standby"]
            .iter()
            .filter_map(|k| entry.get(*k).and_then(Value::as_array))
            .flatten()
        {
            out.push(messaging_item(n, dm_platform, &account, m, now_ms));
        }
        if ["changes", "messaging", "standby"]
            .iter()
            .all(|k| entry.get(*k).is_none())
        {
            out.push(Item::rejected(
                "unknown_change",
                "entry has none of `changes`, `messaging`, `standby`",
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
            | "messaging_referral"
            | "message_edit",
        ) => messaging_item(n, Platform::Instagram, account, value, now_ms),
        (Platform::Instagram, "mentions") => {
            ig_mention(n, account, entry_time, value, change, now_ms)
        }
        (
            Platform::Instagram,
            "story_insights" | "messaging_handover" | "messaging_optins" | "standby",
        )
        | (Platform::Facebook, "ratings" | "messaging_handovers" | "message_deliveries") => {
            Item::Ignored("not_engagement")
        }
        (Platform::Facebook, "feed") => fb_feed(n, account, entry_time, value, change, now_ms),
        (Platform::Facebook, "mention") => {
            fb_mention(n, account, entry_time, value, change, now_ms)
        }
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
        "remove" | "delete" => Action::Remove,
        "hide" => Action::Hide,
        "unhide" => Action::Unhide,
        _ => return None,
    })
}

/// The person behind a feed or mention change: `from.id`, or `sender_id` (Graph API before
/// v2.11, still seen).
fn feed_actor(v: &Value) -> Option<String> {
    id(v, &["from", "id"]).or_else(|| id(v, &["sender_id"]))
}

fn fb_feed(
    n: &Normalizer,
    page: &str,
    entry_time: i64,
    v: &Value,
    raw: &Value,
    now_ms: i64,
) -> Item {
    let item = s(v, &["item"]).unwrap_or("");
    let verb = s(v, &["verb"]).unwrap_or("");
    let Some(action) = fb_action(verb) else {
        return match verb {
            // Copyright moderation of videos, follows, page updates: not engagement.
            "block" | "mute" | "unblock" | "follow" | "update" => Item::Ignored("feed_verb"),
            _ => Item::rejected(
                "malformed",
                format!("feed verb `{verb}` is not add, edited, remove, delete, hide or unhide"),
                raw,
                Some(page),
            ),
        };
    };
    let post = id(v, &["post_id"]);
    let from = feed_actor(v);
    let brand = from.as_deref() == Some(page);
    let actor = from.as_deref().map(|f| n.actor(f));
    // `created_time` is the action's time; some changes (removes, hides) come without it:
    // then only the delivery time is known.
    let created = int(v, "created_time").map(meta_time_ms);
    let time = created.unwrap_or(entry_time);
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
        // Someone liked the Page itself (no post): a follow, not engagement with content.
        "like" if post.is_none() => return Item::Ignored("page_like"),
        // DESIGN.md counts reactions on posts; a reaction on a comment or reply is not one.
        "reaction" | "like" if id(v, &["comment_id"]).is_some() => {
            return Item::Ignored("comment_reaction")
        }
        "reaction" | "like" => {
            let Some(who) = from.as_deref() else {
                // Without the person, every reaction on the post in one second would share an id.
                return Item::rejected(
                    "malformed",
                    "feed reaction without `from.id` or `sender_id`",
                    raw,
                    Some(page),
                );
            };
            let Some(p) = post.as_deref() else {
                return Item::rejected(
                    "malformed",
                    "feed reaction without `post_id`",
                    raw,
                    Some(page),
                );
            };
            let kind_of = s(v, &["reaction_type"]).unwrap_or(item);
            (Kind::PostReaction, format!("{p}/{who}/{kind_of}"))
        }
        // The brand publishing: a status, photo, video, link (`share`) or event post.
        "status" | "post" | "photo" | "video" | "share" | "event" if brand => {
            if action != Action::Add {
                return Item::Ignored("brand_post_change");
            }
            if int(v, "published") == Some(0) {
                return Item::Ignored("unpublished_post");
            }
            let Some(p) = post.clone() else {
                return Item::rejected(
                    "malformed",
                    format!("feed `{item}` by the page without `post_id`"),
                    raw,
                    Some(page),
                );
            };
            (Kind::PostPublished, p)
        }
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
        "album" => return Item::Ignored("album"),
        "status" | "post" | "photo" | "video" | "event" => return Item::Ignored("visitor_post"),
        other => {
            return Item::rejected(
                "unknown_change",
                format!("unsupported feed item `{other}`"),
                raw,
                Some(page),
            )
        }
    };
    // A comment is added once and removed once: without its own time the id needs none (a
    // redelivery has a new `entry.time`). Other changes keep the time they have.
    let id_time = match (created, kind, action) {
        (None, Kind::Comment | Kind::BrandReply, Action::Add | Action::Remove) => None,
        _ => Some(time),
    };
    let mut e = EngagementEvent::new(
        event_id(Platform::Facebook, &native, kind, action, id_time),
        Platform::Facebook,
        kind,
        action,
        page,
        time,
    );
    if created.is_none() {
        e.event_time_source = EventTimeSource::PlatformDelivery;
    }
    e.content_id = post;
    e.content_type = Some(ContentType::Post);
    if kind == Kind::PostPublished {
        e.content_published_at = Some(time);
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

fn fb_mention(
    n: &Normalizer,
    page: &str,
    entry_time: i64,
    v: &Value,
    raw: &Value,
    now_ms: i64,
) -> Item {
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
    let created = int(v, "created_time").map(meta_time_ms);
    let time = created.unwrap_or(entry_time);
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
    if created.is_none() {
        e.event_time_source = EventTimeSource::PlatformDelivery;
    }
    e.actor_id = feed_actor(v).map(|a| n.actor(&a));
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
    // Deliveries about the conversation rather than in it.
    const NOT_ENGAGEMENT: [&str; 10] = [
        "delivery",
        "optin",
        "pass_thread_control",
        "take_thread_control",
        "request_thread_control",
        "app_roles",
        "policy_enforcement",
        "account_linking",
        "game_play",
        "messaging_feedback",
    ];
    if let Some(k) = NOT_ENGAGEMENT.iter().find(|k| m.get(**k).is_some()) {
        return Item::Ignored(match *k {
            "delivery" => "delivery_receipt",
            "optin" => "optin",
            "pass_thread_control"
            | "take_thread_control"
            | "request_thread_control"
            | "app_roles" => "thread_handover",
            _ => "not_engagement",
        });
    }
    // Chat Plugin (website) users have a `user_ref` instead of an id.
    let sender = id(m, &["sender", "id"]).or_else(|| id(m, &["sender", "user_ref"]));
    let (Some(sender), Some(recipient)) = (sender, id(m, &["recipient", "id"])) else {
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
        // An unsend carries only the mid: it is a REMOVE of DM_IN whatever the message was
        // (a story reply or mention unsent is counted off DM_IN; the net stays right).
        let deleted = msg
            .get("is_deleted")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let story_mention = msg
            .get("attachments")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| s(x, &["type"]) == Some("story_mention")));
        let kind = if echo || brand_sent {
            Kind::DmOut
        } else if story_mention {
            Kind::StoryMention
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
    } else if let Some(edit) = m.get("message_edit") {
        let Some(mid) = id(edit, &["mid"]) else {
            return Item::rejected("malformed", "message_edit without `mid`", m, Some(account));
        };
        (
            if brand_sent { Kind::DmOut } else { Kind::DmIn },
            Action::Edit,
            mid,
            s(edit, &["text"]).map(str::to_owned),
            None,
            None,
        )
    } else if let Some(r) = m.get("read") {
        // The brand reading the user's messages is not a funnel step of the user.
        if brand_sent {
            return Item::Ignored("brand_read");
        }
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
            "messaging item has none of message, message_edit, reaction, read, postback, referral",
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
        .or_else(|| id(m, &["postback", "mid"]))
        .or_else(|| id(m, &["message_edit", "mid"]));
    // A reply to one message of the thread names it.
    e.parent_id = id(m, &["message", "reply_to", "mid"]);
    e.text = text;
    e.reaction = reaction;
    e.ref_ = reference;
    e.received_at = now_ms;
    n.finish(e, now_ms, m)
}
