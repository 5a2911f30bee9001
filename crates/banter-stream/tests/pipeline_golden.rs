//! Golden files of the operators after the windows — CTA funnels, conversations, spike alerts
//! — run through the whole [`Pipeline`]: `tests/golden/pipeline/<case>.jsonl` (input) gives
//! exactly `<case>.expected.json` (every funnel row, conversation row and alert emitted, in
//! order; the window rollups are the window goldens' business). `BANTER_BLESS=1` rewrites the
//! expected files after a deliberate change; review the diff.
//!
//! Input lines (times are offsets from T0 = 2025-11-25T00:00:00Z such as "2m30s", "61m" or
//! "25h"):
//! * `{"id", "k": KIND, "a": ACTION?, "acct", "t", "post"?, "pub"?, "actor"?, "brand"?,
//!   "text"?, "object"?, "parent"?, "thread"?, "campaign"?, "ref"?, "click"?, "value"?,
//!   "currency"?}` is an event;
//! * `{"repeat": {event without id and t}, "from", "to", "per_minute"}` is `per_minute`
//!   events a minute, evenly spaced, from `from` until before `to` (ids and object ids
//!   `<line>-<n>`, actors `u<n>` unless given);
//! * `{"idle_to": "10m"}` moves the watermark as an idle partition would;
//! * `{"cta": {"id", "acct", "keywords", "post"?}}` (before the first event) configures
//!   a campaign, on one post or the whole account;
//! * `{"spike": {…}}` (before the first event) overrides `[spike]` settings;
//! * `{"record": ["alerts"]}` records only these of `funnels`, `conversations`, `alerts`;
//! * `{"note": "…"}` says what the case is about.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod golden_files;

use std::path::Path;

use banter_model::{
    Action, ConversationRollup, EngagementEvent, FunnelRollup, Kind, Platform, SpikeAlert,
};
use banter_stream::cta::{Campaign, Matcher, Scope};
use banter_stream::{Outputs, Pipeline, PipelineConfig, SpikeConfig};
use golden_files::{check_cases, Clock};
use serde_json::{json, Map, Value};

const CLOCK: Clock = Clock(1_764_028_800_000);

fn at(s: &str) -> i64 {
    CLOCK.at(s)
}

fn show(t: i64) -> String {
    CLOCK.show(t)
}

fn text(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned)
}

fn event(v: &Value, id: &str, t: i64) -> EngagementEvent {
    let kind: Kind = v["k"].as_str().unwrap().parse().unwrap();
    let action: Action = v
        .get("a")
        .and_then(Value::as_str)
        .unwrap_or("ADD")
        .parse()
        .unwrap();
    let mut e = EngagementEvent::new(
        id,
        Platform::Instagram,
        kind,
        action,
        v["acct"].as_str().unwrap(),
        t,
    );
    e.content_id = text(v, "post");
    e.content_published_at = v.get("pub").and_then(Value::as_str).map(at);
    e.is_brand_actor = v.get("brand").and_then(Value::as_bool).unwrap_or(false);
    e.actor_id = text(v, "actor");
    e.text = text(v, "text");
    e.object_id = text(v, "object");
    e.parent_id = text(v, "parent");
    e.thread_id = text(v, "thread");
    e.cta_campaign_id = text(v, "campaign");
    e.ref_ = text(v, "ref");
    e.click_id = text(v, "click");
    e.value = v.get("value").and_then(Value::as_f64);
    e.currency = text(v, "currency");
    e
}

/// Keeps the fields that say something: no zeros, no nulls.
fn sparse(pairs: Vec<(&str, Value)>) -> Value {
    let m: Map<String, Value> = pairs
        .into_iter()
        .filter(|(_, v)| !(v.is_null() || *v == json!(0) || *v == json!(0.0)))
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    Value::Object(m)
}

fn span(start: i64, end: i64) -> String {
    format!("{}..{}", show(start), show(end))
}

fn funnel(r: &FunnelRollup) -> Value {
    sparse(vec![
        ("funnel", json!(r.campaign_id)),
        ("window", json!(format!("{:?}", r.window))),
        ("span", json!(span(r.window_start, r.window_end))),
        ("stages", json!(r.stages())),
        ("value", json!(r.conversion_value)),
        ("currency", json!(r.currency)),
        (
            "median_trigger_to_reply_s",
            json!(r.median_trigger_to_reply_s),
        ),
        ("median_reply_to_click_s", json!(r.median_reply_to_click_s)),
        (
            "median_click_to_conversion_s",
            json!(r.median_click_to_conversion_s),
        ),
        ("revision", json!(r.revision)),
        ("emitted_at", json!(show(r.emitted_at))),
    ])
}

fn conversation(r: &ConversationRollup) -> Value {
    let key = match &r.content_id {
        Some(c) => format!("{}/{c}", r.account_id),
        None => r.account_id.clone(),
    };
    sparse(vec![
        ("conversation", json!(key)),
        ("window", json!(format!("{:?}", r.window))),
        ("span", json!(span(r.window_start, r.window_end))),
        ("inbound", json!(r.inbound)),
        ("answered", json!(r.answered)),
        ("inbound_comments", json!(r.inbound_comments)),
        ("answered_comments", json!(r.answered_comments)),
        ("story_replies", json!(r.inbound_story_replies)),
        ("dms", json!(r.inbound_dms)),
        ("response_rate", json!(r.response_rate)),
        ("median_response_s", json!(r.median_response_s)),
        ("p90_response_s", json!(r.p90_response_s)),
        ("median_first_response_s", json!(r.median_first_response_s)),
        ("roots", json!(r.root_comments)),
        ("replies", json!(r.reply_comments)),
        ("revision", json!(r.revision)),
        ("emitted_at", json!(show(r.emitted_at))),
    ])
}

fn alert(a: &SpikeAlert) -> Value {
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    sparse(vec![
        // `<account>/<post or ->/<onset>`, the onset shown like every time here.
        (
            "alert",
            json!(match a.alert_id.rsplit_once('/') {
                Some((key, onset)) => format!(
                    "{key}/{}",
                    onset.parse().map_or_else(|_| onset.to_owned(), show)
                ),
                None => a.alert_id.clone(),
            }),
        ),
        ("state", json!(a.state.as_str())),
        ("minute", json!(span(a.window_start, a.window_end))),
        ("observed", json!(a.observed)),
        ("baseline_mean", json!(round(a.baseline_mean))),
        ("baseline_stddev", json!(round(a.baseline_stddev))),
        ("z", json!(round(a.z_score))),
        ("started_at", json!(show(a.started_at))),
        ("ended_at", json!(a.ended_at.map(show))),
        ("emitted_at", json!(show(a.emitted_at))),
    ])
}

fn run(input: &str) -> Vec<Value> {
    let lines: Vec<Value> = input
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut campaigns = Vec::new();
    let mut cfg = PipelineConfig::default();
    let mut record: Vec<String> = ["funnels", "conversations", "alerts"]
        .map(String::from)
        .to_vec();
    let mut events: Vec<Result<EngagementEvent, i64>> = Vec::new();
    for (n, l) in lines.iter().enumerate() {
        if l.get("note").is_some() {
            continue;
        }
        if let Some(r) = l.get("record").and_then(Value::as_array) {
            record = r
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
            continue;
        }
        if let Some(c) = l.get("cta") {
            campaigns.push(Campaign {
                id: text(c, "id").unwrap(),
                account_id: text(c, "acct").unwrap(),
                keywords: c["keywords"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_str().unwrap().to_owned())
                    .collect(),
                scope: text(c, "post").map_or(Scope::Account, Scope::Post),
                active_from: None,
                active_until: None,
            });
        } else if let Some(s) = l.get("spike") {
            let mut v = serde_json::to_value(cfg.spike).unwrap();
            for (k, x) in s.as_object().unwrap() {
                v[k] = x.clone();
            }
            cfg.spike = serde_json::from_value::<SpikeConfig>(v).unwrap();
        } else if let Some(t) = l.get("idle_to").and_then(Value::as_str) {
            events.push(Err(at(t)));
        } else if let Some(r) = l.get("repeat") {
            let (from, to) = (
                at(l["from"].as_str().unwrap()),
                at(l["to"].as_str().unwrap()),
            );
            let per_minute = l["per_minute"].as_i64().unwrap();
            let step = 60_000 / per_minute;
            for (i, t) in (from..to).step_by(step as usize).enumerate() {
                let mut e = event(r, &format!("{n}-{i}"), t);
                if e.actor_id.is_none() {
                    e.actor_id = Some(format!("u{i}"));
                }
                if e.object_id.is_none() {
                    e.object_id = Some(e.event_id.clone());
                }
                events.push(Ok(e));
            }
        } else {
            events.push(Ok(event(
                l,
                l["id"].as_str().unwrap(),
                at(l["t"].as_str().unwrap()),
            )));
        }
    }
    let mut pipeline = Pipeline::new(&cfg, Matcher::new(&campaigns).unwrap());
    let mut out = Outputs::default();
    let mut rows = Vec::new();
    for (offset, e) in events.iter().enumerate() {
        match e {
            Ok(e) => {
                pipeline.process(e, offset as i64, &mut out);
            }
            Err(wm) => pipeline.idle_advance(*wm, &mut out),
        }
        let keep = |what: &str| record.iter().any(|r| r == what);
        if keep("funnels") {
            rows.extend(out.funnels.iter().map(funnel));
        }
        if keep("conversations") {
            rows.extend(out.conversations.iter().map(conversation));
        }
        if keep("alerts") {
            rows.extend(out.alerts.iter().map(alert));
        }
        out.clear();
    }
    rows
}

#[test]
fn funnels_conversations_and_alerts_match_golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/pipeline");
    check_cases(&dir, 6, run);
}
