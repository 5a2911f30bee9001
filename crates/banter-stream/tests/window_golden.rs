//! Golden files of the window semantics: `tests/golden/<case>.jsonl` (input) gives exactly
//! `tests/golden/<case>.expected.json` (every row emitted, in order). `BANTER_BLESS=1`
//! rewrites the expected files after a deliberate change; review the diff.
//!
//! Input lines (times are offsets from T0 = 2025-11-24T16:00:00Z such as "2m30s" or "61m"):
//! `{"id", "k": KIND, "a": ACTION?, "acct", "post"?, "t", "pub"?, "brand"?}` is an event;
//! `{"idle_to": "10m"}` advances the watermark as an idle partition would;
//! `{"config": {"time_to_n": 3}}` (first line only) changes the engine's parameters.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod golden_files;

use std::path::Path;

use banter_model::{Action, EngagementEvent, Kind, Platform};
use banter_stream::{Engine, Output, WindowConfig};
use golden_files::{check_cases, Clock};
use serde_json::{json, Value};

const CLOCK: Clock = Clock(1_764_000_000_000);

fn at(s: &str) -> i64 {
    CLOCK.at(s)
}

fn show(t: i64) -> String {
    CLOCK.show(t)
}

fn event(v: &Value) -> EngagementEvent {
    let kind: Kind = v["k"].as_str().unwrap().parse().unwrap();
    let action: Action = v
        .get("a")
        .and_then(Value::as_str)
        .unwrap_or("ADD")
        .parse()
        .unwrap();
    let mut e = EngagementEvent::new(
        v["id"].as_str().unwrap(),
        Platform::Instagram,
        kind,
        action,
        v["acct"].as_str().unwrap(),
        at(v["t"].as_str().unwrap()),
    );
    e.content_id = v.get("post").and_then(Value::as_str).map(str::to_owned);
    e.content_published_at = v.get("pub").and_then(Value::as_str).map(at);
    e.is_brand_actor = v.get("brand").and_then(Value::as_bool).unwrap_or(false);
    e.actor_id = v.get("actor").and_then(Value::as_str).map(str::to_owned);
    e
}

fn render(o: &Output) -> Value {
    match o {
        Output::TooLate { event_id, offset } => json!({"too_late": event_id, "offset": offset}),
        Output::Rollup(r) => {
            let mut v = json!({
                "window": format!("{:?}", r.window),
                "key": format!("{}{}", r.account_id, r.content_id.as_deref().map(|c| format!("/{c}")).unwrap_or_default()),
                "span": format!("{}..{}", show(r.window_start), show(r.window_end)),
                "interactions": r.interactions,
                "revision": r.revision,
                "emitted_at": show(r.emitted_at),
            });
            let m = v.as_object_mut().unwrap();
            for (name, n) in [
                ("comments", r.comments),
                ("live_comments", r.live_comments),
                ("reactions", r.reactions),
                ("shares", r.shares),
                ("story_replies", r.story_replies),
                ("dms_in", r.dms_in),
                ("mentions", r.mentions),
                ("brand_replies", r.brand_replies),
                ("late_events", r.late_events),
            ] {
                if n != 0 {
                    m.insert(name.into(), json!(n));
                }
            }
            if let Some(x) = r.velocity {
                m.insert("velocity".into(), json!(x));
            }
            if let Some(x) = r.unique_engagers.filter(|n| *n > 0) {
                m.insert("engagers".into(), json!(x));
            }
            if let Some(x) = r.early_accel {
                m.insert("early_accel".into(), json!(x));
            }
            if let Some(x) = r.time_to_n_minutes {
                m.insert("time_to_n_minutes".into(), json!(x));
            }
            v
        }
    }
}

fn run(input: &str) -> Vec<Value> {
    let mut cfg = WindowConfig::default();
    let mut lines: Vec<Value> = input
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    if let Some(c) = lines.first().and_then(|l| l.get("config")).cloned() {
        if let Some(n) = c.get("time_to_n").and_then(Value::as_i64) {
            cfg.time_to_n = n;
        }
        lines.remove(0);
    }
    let mut engine = Engine::new(cfg);
    let mut out = Vec::new();
    for (offset, l) in lines.iter().enumerate() {
        if let Some(t) = l.get("idle_to").and_then(Value::as_str) {
            engine.advance_watermark(at(t), &mut out);
        } else {
            engine.process(&event(l), offset as i64, &mut out);
        }
    }
    out.iter().map(render).collect()
}

#[test]
fn window_semantics_match_golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    check_cases(&dir, 8, run);
}
