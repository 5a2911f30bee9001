//! The normalized engagement event (`EngagementEvent` in `schemas/avro/engagement_event.v1.avsc`)
//! and its enums.
//!
//! Every platform's payload is normalized to this one record before it reaches Kafka. Field
//! names and enum symbols are the Avro ones; the same names are used in the normalized JSON form
//! that first-party systems post.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// Milliseconds since the Unix epoch, UTC (Avro `timestamp-millis`).
pub type TimestampMillis = i64;

/// Declares a field-less enum whose serde names are the Avro symbols, with `FromStr`
/// (precise error naming the field and the accepted symbols), `Display` and `ALL`.
macro_rules! avro_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $field:literal {
            $( $(#[$vmeta:meta])* $variant:ident => $symbol:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $symbol)] $variant ),+
        }

        impl $name {
            /// Every symbol, in schema order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The Avro symbol.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $symbol),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($symbol => Ok($name::$variant),)+
                    _ => Err(ValidationError::UnknownSymbol {
                        field: $field,
                        value: s.to_owned(),
                        expected: &[$($symbol),+],
                    }),
                }
            }
        }
    };
}

avro_enum! {
    /// Where the event came from.
    Platform, "platform" {
        /// Instagram (Graph API webhooks).
        Instagram => "INSTAGRAM",
        /// Facebook Pages (`feed` webhooks).
        Facebook => "FACEBOOK",
        /// Messenger (`messaging` webhooks).
        Messenger => "MESSENGER",
        /// YouTube (polled).
        Youtube => "YOUTUBE",
        /// TikTok (polled).
        Tiktok => "TIKTOK",
        /// LinkedIn (polled).
        Linkedin => "LINKEDIN",
        /// The brand's own systems (poll votes, clicks, conversions).
        FirstParty => "FIRST_PARTY",
    }
}

avro_enum! {
    /// What happened.
    Kind, "kind" {
        /// A comment on a post.
        Comment => "COMMENT",
        /// A comment on a live video.
        LiveComment => "LIVE_COMMENT",
        /// The brand was mentioned.
        Mention => "MENTION",
        /// A reaction (like, love, …) on a post.
        PostReaction => "POST_REACTION",
        /// A share of a post.
        Share => "SHARE",
        /// A reply to a story (arrives as a DM).
        StoryReply => "STORY_REPLY",
        /// The brand was mentioned in a story.
        StoryMention => "STORY_MENTION",
        /// An inbound direct message.
        DmIn => "DM_IN",
        /// A direct message sent by the brand.
        DmOut => "DM_OUT",
        /// A reaction on a direct message.
        DmReaction => "DM_REACTION",
        /// A direct message was read.
        DmRead => "DM_READ",
        /// A button postback or quick reply in a DM.
        DmPostback => "DM_POSTBACK",
        /// The brand replied publicly to a comment.
        BrandReply => "BRAND_REPLY",
        /// The brand answered a comment with a private reply (the CTA DM).
        PrivateReplySent => "PRIVATE_REPLY_SENT",
        /// A vote in a poll (first-party).
        PollVote => "POLL_VOTE",
        /// A comment or DM matched a CTA keyword.
        CtaTrigger => "CTA_TRIGGER",
        /// A tracked link was clicked (first-party).
        LinkClick => "LINK_CLICK",
        /// A conversion (first-party), possibly with a value.
        Conversion => "CONVERSION",
        /// A post was published.
        PostPublished => "POST_PUBLISHED",
    }
}

avro_enum! {
    /// What was done to the object.
    Action, "action" {
        /// Created: counts +1.
        Add => "ADD",
        /// Edited: counts 0.
        Edit => "EDIT",
        /// Removed (unreact, deleted comment): counts −1.
        Remove => "REMOVE",
        /// Hidden by the brand: counts −1.
        Hide => "HIDE",
        /// Unhidden: counts +1.
        Unhide => "UNHIDE",
    }
}

avro_enum! {
    /// The kind of content an event is about.
    ContentType, "content_type" {
        /// A feed post.
        Feed => "FEED",
        /// A reel.
        Reels => "REELS",
        /// A story.
        Story => "STORY",
        /// A live video.
        Live => "LIVE",
        /// An ad.
        Ad => "AD",
        /// A video.
        Video => "VIDEO",
        /// A short.
        Short => "SHORT",
        /// Any other post.
        Post => "POST",
    }
}

avro_enum! {
    /// Where `event_time` comes from.
    EventTimeSource, "event_time_source" {
        /// The platform stamped the event itself.
        PlatformEvent => "PLATFORM_EVENT",
        /// Only the delivery time is known (Instagram comments).
        PlatformDelivery => "PLATFORM_DELIVERY",
        /// The time the poller saw it.
        Polled => "POLLED",
        /// Stamped by the brand's own systems.
        FirstParty => "FIRST_PARTY",
    }
}

impl Action {
    /// The contribution of one event with this action to a count: ADD and UNHIDE +1, REMOVE and
    /// HIDE −1, EDIT 0.
    pub const fn count_delta(self) -> i64 {
        match self {
            Action::Add | Action::Unhide => 1,
            Action::Remove | Action::Hide => -1,
            Action::Edit => 0,
        }
    }
}

impl Kind {
    /// Whether the kind counts towards `interactions` (COMMENT, LIVE_COMMENT, POST_REACTION,
    /// SHARE, STORY_REPLY, DM_IN), provided the actor is not the brand.
    pub const fn is_interaction(self) -> bool {
        matches!(
            self,
            Kind::Comment
                | Kind::LiveComment
                | Kind::PostReaction
                | Kind::Share
                | Kind::StoryReply
                | Kind::DmIn
        )
    }

    /// Whether an event of this kind is about one piece of content and so needs `content_id`.
    pub const fn needs_content(self) -> bool {
        matches!(
            self,
            Kind::Comment
                | Kind::LiveComment
                | Kind::PostReaction
                | Kind::Share
                | Kind::BrandReply
                | Kind::PollVote
                | Kind::PostPublished
        )
    }
}

/// One engagement, normalized. See DESIGN.md, "The event".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngagementEvent {
    /// Stable id for de-duplication (platform + native id + kind + action + event_time).
    pub event_id: String,
    /// Source platform.
    pub platform: Platform,
    /// What happened.
    pub kind: Kind,
    /// What was done: decides the sign of the count.
    pub action: Action,
    /// The brand's account, page or channel; the Kafka key.
    pub account_id: String,
    /// The post, reel, story or video the event is about.
    #[serde(default)]
    pub content_id: Option<String>,
    /// The kind of content.
    #[serde(default)]
    pub content_type: Option<ContentType>,
    /// When the content was published (first-hour metrics need it).
    #[serde(default)]
    pub content_published_at: Option<TimestampMillis>,
    /// Comment id or message id.
    #[serde(default)]
    pub object_id: Option<String>,
    /// The parent comment or message.
    #[serde(default)]
    pub parent_id: Option<String>,
    /// The root of the thread.
    #[serde(default)]
    pub thread_id: Option<String>,
    /// Platform-scoped user id, stored as a keyed hash.
    #[serde(default)]
    pub actor_id: Option<String>,
    /// The brand itself acted (a reply, an echo DM).
    #[serde(default)]
    pub is_brand_actor: bool,
    /// Comment or message text.
    #[serde(default)]
    pub text: Option<String>,
    /// Reaction type or emoji.
    #[serde(default)]
    pub reaction: Option<String>,
    /// The CTA campaign this event belongs to.
    #[serde(default)]
    pub cta_campaign_id: Option<String>,
    /// The CTA keyword that matched.
    #[serde(default)]
    pub cta_keyword: Option<String>,
    /// Referral parameter (`ref`).
    #[serde(default, rename = "ref")]
    pub ref_: Option<String>,
    /// Click id tying a link click to a conversion.
    #[serde(default)]
    pub click_id: Option<String>,
    /// Conversion value.
    #[serde(default)]
    pub value: Option<f64>,
    /// ISO 4217 currency of `value`.
    #[serde(default)]
    pub currency: Option<String>,
    /// Event time: windows use this.
    pub event_time: TimestampMillis,
    /// Where `event_time` comes from.
    pub event_time_source: EventTimeSource,
    /// When banter received the event.
    pub received_at: TimestampMillis,
}

impl EngagementEvent {
    /// An event with empty ids, to decode into with
    /// [`Codec::decode_into`](crate::codec::Codec::decode_into).
    pub fn empty() -> Self {
        Self::new(
            String::new(),
            Platform::ALL[0],
            Kind::ALL[0],
            Action::ALL[0],
            String::new(),
            0,
        )
    }

    /// A minimal event with every optional field empty; handy for tests and builders.
    pub fn new(
        event_id: impl Into<String>,
        platform: Platform,
        kind: Kind,
        action: Action,
        account_id: impl Into<String>,
        event_time: TimestampMillis,
    ) -> Self {
        EngagementEvent {
            event_id: event_id.into(),
            platform,
            kind,
            action,
            account_id: account_id.into(),
            content_id: None,
            content_type: None,
            content_published_at: None,
            object_id: None,
            parent_id: None,
            thread_id: None,
            actor_id: None,
            is_brand_actor: false,
            text: None,
            reaction: None,
            cta_campaign_id: None,
            cta_keyword: None,
            ref_: None,
            click_id: None,
            value: None,
            currency: None,
            event_time,
            event_time_source: EventTimeSource::PlatformEvent,
            received_at: event_time,
        }
    }

    /// The event's contribution to `interactions`: ±1 for an interaction kind from a non-brand
    /// actor (by action), 0 otherwise.
    pub fn interaction_delta(&self) -> i64 {
        if self.kind.is_interaction() && !self.is_brand_actor {
            self.action.count_delta()
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_round_trip_through_from_str() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>().unwrap(), *k);
        }
        for p in Platform::ALL {
            assert_eq!(p.to_string().parse::<Platform>().unwrap(), *p);
        }
    }

    #[test]
    fn unknown_symbol_names_field_and_choices() {
        let err = "COMENT".parse::<Kind>().unwrap_err().to_string();
        assert!(err.contains("kind"), "{err}");
        assert!(err.contains("COMENT"), "{err}");
        assert!(err.contains("LIVE_COMMENT"), "{err}");
    }

    #[test]
    fn interaction_deltas_follow_action_and_actor() {
        let mut e =
            EngagementEvent::new("e", Platform::Instagram, Kind::Comment, Action::Add, "a", 0);
        assert_eq!(e.interaction_delta(), 1);
        e.action = Action::Remove;
        assert_eq!(e.interaction_delta(), -1);
        e.action = Action::Edit;
        assert_eq!(e.interaction_delta(), 0);
        e.action = Action::Add;
        e.is_brand_actor = true;
        assert_eq!(e.interaction_delta(), 0);
        e.is_brand_actor = false;
        e.kind = Kind::DmOut;
        assert_eq!(e.interaction_delta(), 0);
    }

    #[test]
    fn json_uses_avro_names() {
        let mut e = EngagementEvent::new(
            "e1",
            Platform::FirstParty,
            Kind::Conversion,
            Action::Add,
            "acct",
            1,
        );
        e.ref_ = Some("r".into());
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["kind"], "CONVERSION");
        assert_eq!(json["platform"], "FIRST_PARTY");
        assert_eq!(json["ref"], "r");
        let back: EngagementEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }
}
