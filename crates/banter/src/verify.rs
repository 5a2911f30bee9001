//! `banter verify`: what ClickHouse holds after a run of the generated workload, against the
//! generator's truth (`banter generate --expected`), every metric cell by cell
//! ([`banter_workload::check`]). `scripts/run.sh` ends with it; tests use [`read_observed`].

use std::time::{Duration, Instant};

use banter_model::{ConversationRollup, FunnelRollup, Rollup, WindowKind};
use banter_sink::ClickHouse;
use banter_workload::check::{compare, AlertSeen, Observed, Report};
use banter_workload::Generated;
use serde::Deserialize;

fn window_kind(s: &str) -> Option<WindowKind> {
    Some(match s {
        "MINUTE" => WindowKind::Minute,
        "VELOCITY_5M" => WindowKind::Velocity5m,
        "FIRST_15M" => WindowKind::First15m,
        "FIRST_60M" => WindowKind::First60m,
        "HOUR" => WindowKind::Hour,
        "DAY" => WindowKind::Day,
        _ => return None,
    })
}

fn content(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[derive(clickhouse::Row, Deserialize)]
struct RollupRow {
    account_id: String,
    content_id: String,
    window_kind: String,
    window_start_ms: i64,
    window_end_ms: i64,
    revision: i64,
    interactions: i64,
    comments: i64,
    live_comments: i64,
    reactions: i64,
    shares: i64,
    story_replies: i64,
    dms_in: i64,
    mentions: i64,
    brand_replies: i64,
    velocity: Option<f64>,
    early_accel: Option<f64>,
    time_to_n_minutes: Option<f64>,
    unique_engagers: Option<i64>,
    late_events: i64,
    emitted_at_ms: i64,
}

#[derive(clickhouse::Row, Deserialize)]
struct FunnelRow {
    account_id: String,
    campaign_id: String,
    window_kind: String,
    window_start_ms: i64,
    window_end_ms: i64,
    revision: i64,
    triggered: i64,
    private_reply_sent: i64,
    dm_read: i64,
    engaged: i64,
    link_clicked: i64,
    converted: i64,
    conversion_value: f64,
    currency: Option<String>,
    median_trigger_to_reply_s: Option<f64>,
    median_reply_to_click_s: Option<f64>,
    median_click_to_conversion_s: Option<f64>,
    emitted_at_ms: i64,
}

#[derive(clickhouse::Row, Deserialize)]
struct ConversationRow {
    account_id: String,
    content_id: String,
    window_kind: String,
    window_start_ms: i64,
    window_end_ms: i64,
    revision: i64,
    inbound: i64,
    answered: i64,
    inbound_comments: i64,
    answered_comments: i64,
    inbound_story_replies: i64,
    inbound_dms: i64,
    response_rate: Option<f64>,
    median_response_s: Option<f64>,
    p90_response_s: Option<f64>,
    median_first_response_s: Option<f64>,
    root_comments: i64,
    reply_comments: i64,
    thread_depth: Option<f64>,
    reply_share: Option<f64>,
    emitted_at_ms: i64,
}

#[derive(clickhouse::Row, Deserialize)]
struct AlertRow {
    alert_id: String,
    state: String,
    account_id: String,
    content_id: String,
    started_at_ms: i64,
    ended_at_ms: Option<i64>,
}

/// Everything the run wrote to ClickHouse's database `ch.database`: the deduplicated
/// rollups, funnels and conversations (the `*_final` views), every alert record, and the
/// count of events the stream dead-lettered as too late.
///
/// # Errors
/// A query fails.
pub async fn read_observed(ch: &ClickHouse) -> Result<Observed, clickhouse::error::Error> {
    let mut o = Observed::default();
    let rows: Vec<RollupRow> = ch
        .client
        .query(
            "SELECT account_id, content_id, window_kind, window_start_ms, window_end_ms, \
             revision, interactions, comments, live_comments, reactions, shares, story_replies, \
             dms_in, mentions, brand_replies, velocity, early_accel, time_to_n_minutes, \
             unique_engagers, late_events, emitted_at_ms FROM rollups_final",
        )
        .fetch_all()
        .await?;
    for r in rows {
        let Some(window) = window_kind(&r.window_kind) else {
            continue;
        };
        o.add_rollup(Rollup {
            account_id: r.account_id.into(),
            content_id: content(r.content_id).map(Into::into),
            window,
            window_start: r.window_start_ms,
            window_end: r.window_end_ms,
            revision: r.revision,
            interactions: r.interactions,
            comments: r.comments,
            live_comments: r.live_comments,
            reactions: r.reactions,
            shares: r.shares,
            story_replies: r.story_replies,
            dms_in: r.dms_in,
            mentions: r.mentions,
            brand_replies: r.brand_replies,
            velocity: r.velocity,
            early_accel: r.early_accel,
            time_to_n_minutes: r.time_to_n_minutes,
            unique_engagers: r.unique_engagers,
            late_events: r.late_events,
            emitted_at: r.emitted_at_ms,
        });
    }
    let rows: Vec<FunnelRow> = ch
        .client
        .query(
            "SELECT account_id, campaign_id, window_kind, window_start_ms, window_end_ms, \
             revision, triggered, private_reply_sent, dm_read, engaged, link_clicked, converted, \
             conversion_value, currency, median_trigger_to_reply_s, median_reply_to_click_s, \
             median_click_to_conversion_s, emitted_at_ms FROM funnels_final",
        )
        .fetch_all()
        .await?;
    for r in rows {
        let Some(window) = window_kind(&r.window_kind) else {
            continue;
        };
        o.add_funnel(FunnelRollup {
            account_id: r.account_id,
            campaign_id: r.campaign_id,
            window,
            window_start: r.window_start_ms,
            window_end: r.window_end_ms,
            revision: r.revision,
            triggered: r.triggered,
            private_reply_sent: r.private_reply_sent,
            dm_read: r.dm_read,
            engaged: r.engaged,
            link_clicked: r.link_clicked,
            converted: r.converted,
            conversion_value: r.conversion_value,
            currency: r.currency,
            median_trigger_to_reply_s: r.median_trigger_to_reply_s,
            median_reply_to_click_s: r.median_reply_to_click_s,
            median_click_to_conversion_s: r.median_click_to_conversion_s,
            emitted_at: r.emitted_at_ms,
        });
    }
    let rows: Vec<ConversationRow> = ch
        .client
        .query(
            "SELECT account_id, content_id, window_kind, window_start_ms, window_end_ms, \
             revision, inbound, answered, inbound_comments, answered_comments, \
             inbound_story_replies, inbound_dms, response_rate, median_response_s, \
             p90_response_s, median_first_response_s, root_comments, reply_comments, \
             thread_depth, reply_share, emitted_at_ms FROM conversations_final",
        )
        .fetch_all()
        .await?;
    for r in rows {
        let Some(window) = window_kind(&r.window_kind) else {
            continue;
        };
        o.add_conversation(ConversationRollup {
            account_id: r.account_id,
            content_id: content(r.content_id),
            window,
            window_start: r.window_start_ms,
            window_end: r.window_end_ms,
            revision: r.revision,
            inbound: r.inbound,
            answered: r.answered,
            inbound_comments: r.inbound_comments,
            answered_comments: r.answered_comments,
            inbound_story_replies: r.inbound_story_replies,
            inbound_dms: r.inbound_dms,
            response_rate: r.response_rate,
            median_response_s: r.median_response_s,
            p90_response_s: r.p90_response_s,
            median_first_response_s: r.median_first_response_s,
            root_comments: r.root_comments,
            reply_comments: r.reply_comments,
            thread_depth: r.thread_depth,
            reply_share: r.reply_share,
            emitted_at: r.emitted_at_ms,
        });
    }
    let rows: Vec<AlertRow> = ch
        .client
        .query(
            "SELECT alert_id, state, account_id, content_id, started_at_ms, ended_at_ms \
             FROM alerts",
        )
        .fetch_all()
        .await?;
    o.alerts = rows
        .into_iter()
        .map(|r| AlertSeen {
            alert_id: r.alert_id,
            state: r.state,
            account_id: r.account_id,
            content_id: r.content_id,
            started_at_ms: r.started_at_ms,
            ended_at_ms: r.ended_at_ms,
        })
        .collect();
    let late: u64 = ch
        .client
        .query("SELECT count() FROM dead_letters WHERE stage = 'STREAM' AND reason = 'late'")
        .fetch_one()
        .await?;
    o.too_late = Some(late);
    Ok(o)
}

/// Compares ClickHouse with `x` until every metric is equal or `wait` has passed (the last
/// corrections may still be on their way): the last comparison.
///
/// # Errors
/// A query fails.
pub async fn verify(
    ch: &ClickHouse,
    x: &Generated,
    wait: Duration,
) -> Result<Report, clickhouse::error::Error> {
    let deadline = Instant::now() + wait;
    loop {
        let report = compare(x, &read_observed(ch).await?);
        if report.ok() || Instant::now() >= deadline {
            return Ok(report);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
