//! CTA keyword triggers: which inbound comments, story replies and DMs ask for a campaign's
//! link ("comment GUIDE and we'll DM it to you").
//!
//! * Text is normalized: lower-cased (Unicode), split into words at anything that is not a
//!   letter or a digit, so punctuation, emoji and symbols separate words and never match.
//! * A keyword (one word or a phrase) matches whole words only: `guide` matches "Guide!!" and
//!   "the guide please 🙏" but not "guided" or "guidebook"; the phrase `free guide` matches
//!   "FREE-guide" and "free, guide" but not "free the guide".
//! * A campaign applies to one post or to every post of its account, within its active period.
//!
//! The funnel that follows a trigger (private reply, read, engaged, click, conversion) is in
//! [`crate::funnel`]; campaigns come from a TOML file ([`load_campaigns`]).

use std::borrow::Cow;

use banter_model::{EngagementEvent, Kind};
use serde::{Deserialize, Serialize};

/// Where a campaign listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One post.
    Post(String),
    /// Every post (and DM) of the account.
    Account,
}

/// A CTA campaign as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Campaign {
    /// Campaign id.
    pub id: String,
    /// The brand's account.
    pub account_id: String,
    /// Keywords or phrases; any of them triggers.
    pub keywords: Vec<String>,
    /// One post or the whole account.
    pub scope: Scope,
    /// Active from (event time, ms, inclusive); open when absent.
    #[serde(default)]
    pub active_from: Option<i64>,
    /// Active until (event time, ms, exclusive); open when absent.
    #[serde(default)]
    pub active_until: Option<i64>,
}

impl Campaign {
    /// A campaign on one post, triggered by one keyword, always active (how the generated
    /// workload's CTA posts run).
    pub fn on_post(id: &str, account_id: &str, content_id: &str, keyword: &str) -> Campaign {
        Campaign {
            id: id.to_owned(),
            account_id: account_id.to_owned(),
            keywords: vec![keyword.to_owned()],
            scope: Scope::Post(content_id.to_owned()),
            active_from: None,
            active_until: None,
        }
    }
}

/// A campaigns file: `[[campaign]]` tables.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CampaignsFile {
    #[serde(default)]
    campaign: Vec<Campaign>,
}

/// `campaigns` as a campaigns file (`[[campaign]]` tables) that [`load_campaigns`] reads.
///
/// # Errors
/// A campaign TOML cannot represent (none of today's fields).
pub fn campaigns_toml(campaigns: &[Campaign]) -> Result<String, toml::ser::Error> {
    toml::to_string(&CampaignsFile {
        campaign: campaigns.to_vec(),
    })
}

/// Reads and checks a campaigns file (TOML, `[[campaign]]` tables); the error names the file,
/// and the campaign or the TOML problem.
///
/// # Errors
/// The file cannot be read or parsed, or a campaign is invalid (see [`Matcher::new`]).
pub fn load_campaigns(path: &std::path::Path) -> Result<(Vec<Campaign>, Matcher), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("campaigns file {}: {e}", path.display()))?;
    let file: CampaignsFile =
        toml::from_str(&text).map_err(|e| format!("campaigns file {}: {e}", path.display()))?;
    let matcher = Matcher::new(&file.campaign)
        .map_err(|e| format!("campaigns file {}: {e}", path.display()))?;
    Ok((file.campaign, matcher))
}

/// The words of `text`: lower-cased, split at every character that is not alphanumeric.
pub fn words(text: &str) -> Vec<String> {
    text_words(text).into_iter().map(Cow::into_owned).collect()
}

/// The words of `text` as [`words`] gives them, borrowed where lower-casing changes nothing (a
/// word of ASCII lower-case letters and digits, most of them), so matching an event's text
/// allocates one list rather than a string per word.
fn text_words(text: &str) -> Vec<Cow<'_, str>> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            if !w.is_ascii() {
                Cow::Owned(w.to_lowercase())
            } else if w.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(w.to_ascii_lowercase())
            } else {
                Cow::Borrowed(w)
            }
        })
        .collect()
}

/// Whether `phrase` (already split into words) occurs in `text` as whole consecutive words.
fn contains_phrase(text: &[Cow<'_, str>], phrase: &[String]) -> bool {
    !phrase.is_empty()
        && text
            .windows(phrase.len())
            .any(|w| w.iter().zip(phrase).all(|(a, b)| **a == **b))
}

/// Matches events against the configured campaigns.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    /// (campaign, its keywords as words), by account.
    campaigns: std::collections::HashMap<String, Vec<(Campaign, Keywords)>>,
}

/// A campaign's keywords, each split into words.
type Keywords = Vec<Vec<String>>;

/// A configuration problem of a campaign, naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("campaign `{campaign}`: {message}")]
pub struct CampaignError {
    /// The campaign id.
    pub campaign: String,
    /// What is wrong.
    pub message: String,
}

impl Matcher {
    /// A matcher for `campaigns`.
    ///
    /// # Errors
    /// A campaign without an id or account, without keywords, with a keyword that has no
    /// letters or digits, or with an empty active period.
    pub fn new(campaigns: &[Campaign]) -> Result<Self, CampaignError> {
        let mut m = Matcher::default();
        for c in campaigns {
            let err = |message: String| CampaignError {
                campaign: c.id.clone(),
                message,
            };
            if c.id.is_empty() || c.account_id.is_empty() {
                return Err(err("needs an id and an account_id".into()));
            }
            if c.keywords.is_empty() {
                return Err(err("has no keywords".into()));
            }
            let mut kws = Vec::new();
            for k in &c.keywords {
                let w = words(k);
                if w.is_empty() {
                    return Err(err(format!(
                        "keyword `{k}` has no letters or digits, so it can never match"
                    )));
                }
                kws.push(w);
            }
            if let (Some(a), Some(b)) = (c.active_from, c.active_until) {
                if b <= a {
                    return Err(err("active_until is not after active_from".into()));
                }
            }
            m.campaigns
                .entry(c.account_id.clone())
                .or_default()
                .push((c.clone(), kws));
        }
        Ok(m)
    }

    /// The campaign `e` triggers, if any: an inbound COMMENT, STORY_REPLY or DM_IN (not by the
    /// brand) whose text contains a keyword of a campaign of its account, in scope and active
    /// at the event's time. When several match, the first configured wins.
    pub fn trigger(&self, e: &EngagementEvent) -> Option<&Campaign> {
        if !matches!(e.kind, Kind::Comment | Kind::StoryReply | Kind::DmIn) || e.is_brand_actor {
            return None;
        }
        let text = e.text.as_deref()?;
        let list = self.campaigns.get(&e.account_id)?;
        let w = text_words(text);
        list.iter()
            .find(|(c, kws)| {
                let in_scope = match &c.scope {
                    Scope::Account => true,
                    Scope::Post(p) => e.content_id.as_deref() == Some(p.as_str()),
                };
                let active = c.active_from.is_none_or(|a| e.event_time >= a)
                    && c.active_until.is_none_or(|u| e.event_time < u);
                in_scope && active && kws.iter().any(|k| contains_phrase(&w, k))
            })
            .map(|(c, _)| c)
    }
}

/// The campaigns file of `cta.campaigns_file` and what was loaded from it; reloaded when it
/// changes.
#[derive(Debug)]
pub struct CampaignSource {
    path: String,
    modified: Option<std::time::SystemTime>,
    matcher: Matcher,
    count: usize,
}

impl CampaignSource {
    /// Loads `path` (empty: no campaigns).
    ///
    /// # Errors
    /// The file cannot be read, or is not a valid campaigns file.
    pub fn open(path: &str) -> Result<Self, String> {
        let mut f = CampaignSource {
            path: path.to_owned(),
            modified: None,
            matcher: Matcher::default(),
            count: 0,
        };
        if !path.is_empty() {
            f.reload()?;
            tracing::info!(campaigns = f.count, file = %path, "campaigns loaded");
        }
        Ok(f)
    }

    /// The campaigns loaded.
    pub fn matcher(&self) -> &Matcher {
        &self.matcher
    }

    /// How many campaigns were loaded.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Loads the file again when it changed; true when it did.
    ///
    /// # Errors
    /// The file cannot be read or is refused (the previous campaigns stay).
    pub fn reload(&mut self) -> Result<bool, String> {
        if self.path.is_empty() {
            return Ok(false);
        }
        let path = std::path::Path::new(&self.path);
        let modified = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(|e| format!("campaigns file {}: {e}", self.path))?;
        if self.modified == Some(modified) {
            return Ok(false);
        }
        // Marked as seen even when refused: the same broken file is reported once.
        self.modified = Some(modified);
        let (campaigns, matcher) = load_campaigns(path)?;
        self.count = campaigns.len();
        self.matcher = matcher;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banter_model::{Action, Platform};

    const T: i64 = 1_795_000_000_000;

    fn campaign(id: &str, keywords: &[&str], scope: Scope) -> Campaign {
        Campaign {
            id: id.into(),
            account_id: "acct".into(),
            keywords: keywords.iter().map(|k| (*k).to_owned()).collect(),
            scope,
            active_from: Some(T),
            active_until: Some(T + 3_600_000),
        }
    }

    fn event(kind: Kind, post: Option<&str>, text: &str, t: i64) -> EngagementEvent {
        let mut e = EngagementEvent::new("e", Platform::Instagram, kind, Action::Add, "acct", t);
        e.content_id = post.map(str::to_owned);
        e.text = Some(text.into());
        e
    }

    #[test]
    fn an_events_words_are_the_keywords_words() {
        // The words matched against (borrowed where lower-casing changes nothing), and the
        // keywords' words built from them, are each alphanumeric run lower-cased as a whole
        // string is (`str::to_lowercase`), for ASCII, mixed case and scripts whose lower case
        // depends on the word (Greek final sigma) or takes more characters (dotted I).
        let lowered = |text: &str| -> Vec<String> {
            text.split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(str::to_lowercase)
                .collect()
        };
        assert_eq!(words("ΟΔΟΣ Σοφία"), ["οδος", "σοφία"]);
        for text in [
            "",
            "free guide",
            "Free GUIDE, please!",
            "abc123 DEF456 g7",
            "ΟΔΟΣ οδός Σοφία",
            "İstanbul KİTAP",
            "straße STRASSE",
            "🔥guide🔥 ÉCOLE école",
            "a_b-c.d/e",
        ] {
            let got: Vec<String> = text_words(text).into_iter().map(Cow::into_owned).collect();
            assert_eq!(got, lowered(text), "{text:?}");
            assert_eq!(words(text), lowered(text), "{text:?}");
        }
        let borrowed = text_words("free Guide");
        assert!(matches!(borrowed[0], Cow::Borrowed("free")));
        assert!(matches!(borrowed[1], Cow::Owned(_)));
    }

    #[test]
    fn keywords_match_whole_words_whatever_the_case_punctuation_and_emoji() {
        let m = Matcher::new(&[
            campaign("guide", &["GUIDE"], Scope::Post("p1".into())),
            campaign("free", &["free guide", "Info"], Scope::Account),
        ])
        .unwrap();
        let hit = |text: &str, post: Option<&str>| {
            m.trigger(&event(Kind::Comment, post, text, T + 1))
                .map(|c| c.id.as_str())
        };
        // Case, punctuation, emoji, surrounding space.
        for text in [
            "guide",
            "  Guide!!  ",
            "the GUIDE please 🙏",
            "🔥guide🔥",
            "guide,please",
            "(guide)",
            "GUIDE\u{1F449}\u{1F3FD}", // emoji with a skin-tone modifier
        ] {
            assert_eq!(hit(text, Some("p1")), Some("guide"), "{text:?}");
        }
        // Partial words never match.
        for text in ["guided", "guidebook", "misguide", "g u i d e", "gui de", ""] {
            assert_eq!(hit(text, Some("p1")), None, "{text:?}");
        }
        // Scope: the post campaign only on its post; the account one everywhere.
        assert_eq!(hit("guide", Some("p2")), None);
        assert_eq!(hit("FREE-guide 😍", Some("p2")), Some("free"));
        assert_eq!(hit("free, guide!", None), Some("free"));
        assert_eq!(hit("free the guide", Some("p2")), None);
        assert_eq!(hit("more info?", Some("p7")), Some("free"));
        assert_eq!(hit("information", Some("p7")), None);
    }

    #[test]
    fn only_inbound_kinds_in_the_active_period_trigger() {
        let m = Matcher::new(&[campaign("c", &["link"], Scope::Account)]).unwrap();
        assert!(m
            .trigger(&event(Kind::StoryReply, Some("s"), "link", T))
            .is_some());
        assert!(m
            .trigger(&event(Kind::DmIn, None, "Link?", T + 5))
            .is_some());
        assert!(m
            .trigger(&event(Kind::Mention, Some("p"), "link", T))
            .is_none());
        assert!(m
            .trigger(&event(Kind::BrandReply, Some("p"), "link", T))
            .is_none());
        let mut brand = event(Kind::Comment, Some("p"), "link", T);
        brand.is_brand_actor = true;
        assert!(m.trigger(&brand).is_none());
        // Active period: from inclusive, until exclusive.
        assert!(m
            .trigger(&event(Kind::Comment, Some("p"), "link", T - 1))
            .is_none());
        assert!(m
            .trigger(&event(Kind::Comment, Some("p"), "link", T + 3_600_000))
            .is_none());
        let mut other = event(Kind::Comment, Some("p"), "link", T);
        other.account_id = "someone-else".into();
        assert!(m.trigger(&other).is_none());
    }

    /// The generator's CTA posts: every keyword comment triggers its post's campaign, no other
    /// comment does, and distinct (actor, campaign) triggers equal the expected funnel tops.
    #[test]
    fn the_generated_keyword_comments_trigger_exactly() {
        use std::collections::{BTreeMap, BTreeSet};
        let w = banter_workload::Workload::generate(banter_workload::WorkloadConfig {
            accounts: 30,
            ..Default::default()
        });
        let campaigns: Vec<Campaign> = w
            .posts
            .iter()
            .filter_map(|p| {
                p.cta
                    .as_ref()
                    .map(|(id, kw)| Campaign::on_post(id, &p.account_id, &p.content_id, kw))
            })
            .collect();
        assert!(!campaigns.is_empty());
        let m = Matcher::new(&campaigns).unwrap();
        let mut triggered: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let too_late: BTreeSet<&String> = w.expected.too_late.iter().collect();
        for i in 0..w.len() {
            let e = w.event(i);
            // The generator writes keyword comments as "<keyword> please!".
            let keyword = e
                .content_id
                .as_ref()
                .and_then(|c| w.posts.iter().find(|p| &p.content_id == c))
                .and_then(|p| p.cta.as_ref())
                .map(|(_, kw)| format!("{} please!", kw.to_lowercase()));
            let tagged = e.kind == Kind::Comment && keyword.is_some() && e.text == keyword;
            let hit = m.trigger(&e);
            if e.kind == Kind::Comment {
                assert_eq!(
                    hit.is_some(),
                    tagged,
                    "{:?} on a post with {keyword:?}",
                    e.text
                );
            }
            if let Some(c) = hit {
                if !too_late.contains(&e.event_id) {
                    triggered
                        .entry(c.id.clone())
                        .or_default()
                        .insert(e.actor_id.clone().unwrap_or_default());
                }
            }
        }
        for (id, f) in &w.expected.funnels {
            let got = triggered.get(id).map_or(0, BTreeSet::len) as u64;
            assert_eq!(got, f.triggered, "campaign {id}");
        }
    }

    #[test]
    fn bad_campaigns_are_refused_with_their_id() {
        let e = Matcher::new(&[campaign("c1", &["🙏!!"], Scope::Account)]).unwrap_err();
        assert_eq!(e.campaign, "c1");
        assert!(e.to_string().contains("can never match"), "{e}");
        assert!(Matcher::new(&[campaign("c2", &[], Scope::Account)]).is_err());
        let mut c = campaign("c3", &["x"], Scope::Account);
        c.active_until = c.active_from;
        assert!(Matcher::new(&[c])
            .unwrap_err()
            .to_string()
            .contains("active_until"));
    }

    const ONE: &str = r#"
[[campaign]]
id = "spring"
account_id = "acct"
keywords = ["info"]
scope = "account"
"#;

    #[test]
    fn a_changed_campaigns_file_is_reloaded_and_a_broken_one_refused() {
        let dir = std::env::temp_dir().join(format!("banter-campaigns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("campaigns.toml");
        std::fs::write(&path, ONE).unwrap();
        let mut f = CampaignSource::open(path.to_str().unwrap()).unwrap();
        assert_eq!(f.count(), 1);
        assert!(!f.reload().unwrap(), "unchanged");
        // A second campaign, scoped to one post (mtime must move on coarse file systems).
        std::thread::sleep(std::time::Duration::from_millis(20));
        let two = format!(
            "{ONE}\n[[campaign]]\nid = \"summer\"\naccount_id = \"acct\"\nkeywords = [\"sun hat\"]\nscope = {{ post = \"p1\" }}\n"
        );
        std::fs::write(&path, two).unwrap();
        filetime_bump(&path);
        assert!(f.reload().unwrap());
        assert_eq!(f.count(), 2);
        // Broken: refused with the file and campaign named; the previous campaigns stay.
        std::fs::write(&path, format!("{ONE}\n[[campaign]]\nid = \"x\"\naccount_id = \"acct\"\nkeywords = [\"!!\"]\nscope = \"account\"\n")).unwrap();
        filetime_bump(&path);
        let err = f.reload().unwrap_err();
        assert!(
            err.contains("campaigns.toml") && err.contains("campaign `x`"),
            "{err}"
        );
        assert_eq!(f.count(), 2);
        // Unknown keys are errors too.
        std::fs::write(&path, "[[campaign]]\nid = \"y\"\nacount_id = \"acct\"\n").unwrap();
        filetime_bump(&path);
        assert!(f.reload().unwrap_err().contains("acount_id"));
        assert!(CampaignSource::open(dir.join("missing.toml").to_str().unwrap()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Moves the file's modification time forward by a second.
    fn filetime_bump(path: &std::path::Path) {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        let m = std::fs::metadata(path).unwrap().modified().unwrap();
        f.set_modified(m + std::time::Duration::from_secs(1))
            .unwrap();
    }
}
