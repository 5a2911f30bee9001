//! The event mix the stream benches feed (`engine.rs`, `memory.rs`): 60 % reactions, 25 %
//! comments (one in five a reply, one in ten asking for the CTA keyword), story replies, DMs
//! without a post, mentions; and a CTA campaign per account.

use banter_model::{Action, ContentType, EngagementEvent, Kind, Platform};
use banter_stream::cta::{Campaign, Matcher, Scope};

/// The kind of the `n`-th event of the mix.
pub fn kind(n: u64) -> Kind {
    match n % 20 {
        0..=11 => Kind::PostReaction,
        12..=16 => Kind::Comment,
        17 => Kind::StoryReply,
        18 => Kind::DmIn,
        _ => Kind::Mention,
    }
}

/// Event `i`: `kind` by actor `i` on `post` of `account` at `t` (a DM has no post); a comment
/// with `i` a multiple of 5 replies to comment `i - reply_back`.
pub fn event(
    i: u64,
    kind: Kind,
    account: u64,
    post: u64,
    t: i64,
    published_at: i64,
    reply_back: u64,
) -> EngagementEvent {
    let mut e = EngagementEvent::new(
        format!("ev-{i}"),
        Platform::Instagram,
        kind,
        Action::Add,
        format!("acct-{account}"),
        t,
    );
    if kind != Kind::DmIn {
        e.content_id = Some(format!("post-{post}"));
        e.content_type = Some(ContentType::Reels);
        e.content_published_at = Some(published_at);
    }
    e.actor_id = Some(format!("{:032x}", i * 2_654_435_761 % 1_000_003));
    match kind {
        Kind::Comment => {
            e.object_id = Some(format!("c{i}"));
            let root = if i.is_multiple_of(5) {
                i.saturating_sub(reply_back)
            } else {
                i
            };
            e.parent_id = (root != i).then(|| format!("c{root}"));
            e.thread_id = Some(format!("c{root}"));
            e.text = Some(
                if i % 10 == 2 {
                    "INFO please!"
                } else {
                    "love this 😍"
                }
                .into(),
            );
        }
        Kind::StoryReply | Kind::DmIn => {
            e.object_id = Some(format!("m{i}"));
            e.text = Some("where can I buy it?".into());
        }
        _ => {}
    }
    e
}

/// A campaign per account, keyword "info", on all its posts.
pub fn matcher(accounts: u64) -> Matcher {
    let campaigns: Vec<Campaign> = (0..accounts)
        .map(|a| Campaign {
            id: format!("camp-{a}"),
            account_id: format!("acct-{a}"),
            keywords: vec!["info".into()],
            scope: Scope::Account,
            active_from: None,
            active_until: None,
        })
        .collect();
    Matcher::new(&campaigns).expect("campaigns")
}
