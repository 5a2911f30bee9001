//! The generator's truth against what the pipeline wrote: the expected aggregates
//! (`banter generate --expected`, a [`Generated`]) compared with rollups, funnels,
//! conversations and alerts read from Kafka or ClickHouse. Each comparison returns the
//! differences (empty: equal); the `*_match` functions poll until there are none.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use banter::Config;
use banter_model::{FunnelRollup, Rollup, WindowKind};
use banter_sink::ClickHouse;
use banter_workload::{Generated, MINUTE};

use crate::readers::{clickhouse_rollups, AlertSeen, Alerts, RollupKey, Rollups};

/// The expected aggregates written to `dir/expected.json` by the generator.
pub fn read_expected(dir: &Path) -> Generated {
    Generated::read(&dir.join("expected.json")).unwrap_or_else(|e| panic!("{e}"))
}

/// Differences between the rollups and the generator's expected aggregates (empty: equal).
/// Compared: the windows that event time closes (the watermark reaches the last event time
/// minus the out-of-orderness; the last minutes close only when the partitions go idle, which
/// follows the wall clock and is covered by the engine's golden tests): every MINUTE row of
/// accounts and posts (interactions), VELOCITY_5M rows, and the first-hour rows (first 15 /
/// 60 minutes, time-to-N exact to the ms).
pub fn differences(x: &Generated, rows: &BTreeMap<RollupKey, Rollup>) -> Vec<String> {
    let e = &x.expected;
    let Some(last_minute) = e.account_minutes.values().flat_map(|m| m.keys()).max() else {
        return vec!["the workload has no interactions".into()];
    };
    // Windows ending by here are closed by event time alone.
    let end = last_minute - MINUTE;
    let mut diffs = Vec::new();
    let minutes = |m: &BTreeMap<i64, i64>| -> BTreeMap<i64, i64> {
        m.iter()
            .map(|(&m, &n)| (m, n))
            .filter(|(m, n)| *n != 0 && m + MINUTE <= end)
            .collect()
    };
    let mut want: BTreeMap<(String, Option<String>), BTreeMap<i64, i64>> = BTreeMap::new();
    for (a, m) in &e.account_minutes {
        want.insert((a.clone(), None), minutes(m));
    }
    // content_minutes is keyed by post; the rows carry the account too.
    for (c, m) in &e.content_minutes {
        let a = x.account_of(c).unwrap_or_default().to_owned();
        want.insert((a, Some(c.clone())), minutes(m));
    }
    let mut got: BTreeMap<(String, Option<String>), BTreeMap<i64, i64>> = BTreeMap::new();
    for ((a, c, w, s), r) in rows {
        if *w == WindowKind::Minute && r.interactions != 0 && s + MINUTE <= end {
            got.entry((a.clone(), c.clone()))
                .or_default()
                .insert(*s, r.interactions);
        }
    }
    want.retain(|_, m| !m.is_empty());
    for k in want.keys().chain(got.keys()).collect::<BTreeSet<_>>() {
        let (w, g) = (want.get(k), got.get(k));
        if w != g {
            let empty = BTreeMap::new();
            let (w, g) = (w.unwrap_or(&empty), g.unwrap_or(&empty));
            let bad: Vec<_> = w
                .keys()
                .chain(g.keys())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|m| w.get(m) != g.get(m))
                .take(3)
                .map(|m| format!("minute {m}: expected {:?}, got {:?}", w.get(m), g.get(m)))
                .collect();
            diffs.push(format!("MINUTE {k:?}: {bad:?}"));
        }
    }
    // Velocity: the sum of the five minutes, for windows closed by event time.
    for ((a, c, w, s), r) in rows {
        if *w != WindowKind::Velocity5m || r.window_end > end {
            continue;
        }
        let m = want.get(&(a.clone(), c.clone()));
        let sum: i64 = (0..5)
            .map(|i| {
                m.and_then(|m| m.get(&(s + i * MINUTE)))
                    .copied()
                    .unwrap_or(0)
            })
            .sum();
        if sum != r.interactions {
            diffs.push(format!(
                "VELOCITY_5M {a}/{c:?}@{s}: expected {sum}, got {}",
                r.interactions
            ));
        }
    }
    // First hour.
    for (c, fh) in &e.first_hour {
        let a = x.account_of(c).unwrap_or_default();
        let find = |w: WindowKind| {
            rows.iter()
                .find(|((ra, rc, rw, _), _)| ra == a && rc.as_deref() == Some(c) && *rw == w)
                .map(|(_, r)| r)
        };
        let (Some(r15), Some(r60)) = (find(WindowKind::First15m), find(WindowKind::First60m))
        else {
            let published = x
                .posts
                .iter()
                .find(|p| &p.content_id == c)
                .map_or(i64::MAX, |p| p.published_at);
            if published + 60 * MINUTE <= end {
                diffs.push(format!("first-hour rows of {c} missing"));
            }
            continue;
        };
        if r15.interactions != fh.first_15m {
            diffs.push(format!(
                "FIRST_15M {c}: expected {}, got {}",
                fh.first_15m, r15.interactions
            ));
        }
        if r60.interactions != fh.first_60m {
            diffs.push(format!(
                "FIRST_60M {c}: expected {}, got {}",
                fh.first_60m, r60.interactions
            ));
        }
        // Exact to the ms.
        let want_ttn = fh.time_to_n_minutes;
        let close = match (want_ttn, r60.time_to_n_minutes) {
            (Some(w), Some(g)) => (w - g).abs() < 1e-6,
            (None, None) => true,
            _ => false,
        };
        if !close {
            diffs.push(format!(
                "time to N of {c}: expected {want_ttn:?}, got {:?}",
                r60.time_to_n_minutes
            ));
        }
    }
    diffs
}

/// Polls the rollups topic until rollups, funnels and conversations equal the expected
/// aggregates; panics with the differences after `timeout`.
pub async fn rollups_match(cfg: &Config, dir: &Path, timeout: Duration) -> Rollups {
    let x = read_expected(dir);
    let mut rollups = Rollups::new(cfg);
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    loop {
        rollups.poll();
        let mut d = differences(&x, &rollups.rows);
        d.extend(funnel_differences(
            &x,
            rollups
                .funnels
                .values()
                .map(|f| (f.campaign_id.as_str(), f.window, funnel_counts(f))),
        ));
        d.extend(conversation_differences(
            &x,
            rollups
                .conversations
                .values()
                .filter(|r| r.content_id.is_none())
                .map(|r| {
                    (
                        r.account_id.as_str(),
                        r.window,
                        r.inbound_comments,
                        r.answered_comments,
                    )
                }),
        ));
        if d.is_empty() {
            eprintln!(
                "rollups equal the expected aggregates after {:?} ({} rows read)",
                t0.elapsed(),
                rollups.seen
            );
            return rollups;
        }
        if std::env::var_os("BANTER_TEST_TRACE").is_some() {
            eprintln!(
                "{:?}: {} rows, {} differences, e.g. {:?}",
                t0.elapsed(),
                rollups.seen,
                d.len(),
                d.first()
            );
        }
        if Instant::now() > deadline {
            panic!(
                "rollups ({} rows read, {} keys) differ from the expected aggregates after {timeout:?}; logs in {}:\n{}",
                rollups.seen,
                rollups.rows.len(),
                dir.display(),
                d.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Polls ClickHouse until its deduplicated rollups equal the expected aggregates.
pub async fn clickhouse_matches(
    ch: &ClickHouse,
    dir: &Path,
    timeout: Duration,
) -> BTreeMap<RollupKey, Rollup> {
    let x = read_expected(dir);
    let t0 = Instant::now();
    loop {
        let rows = clickhouse_rollups(ch).await;
        let d = differences(&x, &rows);
        if d.is_empty() {
            eprintln!(
                "ClickHouse equals the expected aggregates after {:?} ({} keys)",
                t0.elapsed(),
                rows.len()
            );
            return rows;
        }
        if t0.elapsed() > timeout {
            panic!(
                "ClickHouse rollups ({} keys) differ from the expected aggregates after {timeout:?}; logs in {}:\n{}",
                rows.len(),
                dir.display(),
                d.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Polls `check` until it finds no differences; after `timeout` fails with the last ones.
pub async fn until_no_differences<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let diffs = check().await;
        if diffs.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} after {timeout:?}:\n{diffs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What is wrong with the alerts against the generator's injected spikes (empty: nothing):
/// every spike has exactly one FIRING post alert starting within 2 minutes of its onset, and
/// one RESOLVED of it after the spike; every post alert belongs to a spike; no record is
/// written twice (exactly once across restarts and rebalances).
pub fn alert_differences(x: &Generated, records: &[AlertSeen]) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut seen = BTreeSet::new();
    for a in records {
        if !seen.insert((a.alert_id.as_str(), a.state.as_str())) {
            diffs.push(format!("written twice: {} {}", a.alert_id, a.state));
        }
    }
    let spikes = &x.expected.spikes;
    let belongs = |a: &AlertSeen, s: &banter_workload::Spike| {
        a.content_id == s.content_id
            && a.account_id == s.account_id
            && a.started_at_ms >= s.start_ms - 2 * MINUTE
            && a.started_at_ms < s.end_ms
    };
    for s in spikes {
        let firing: Vec<_> = records
            .iter()
            .filter(|a| a.state == "FIRING" && belongs(a, s))
            .collect();
        if firing.len() != 1 {
            diffs.push(format!("{} FIRING alerts for spike {s:?}", firing.len()));
            continue;
        }
        let resolved = records
            .iter()
            .find(|a| a.state == "RESOLVED" && a.alert_id == firing[0].alert_id);
        match resolved.and_then(|r| r.ended_at_ms) {
            Some(end) if end >= s.end_ms - MINUTE => {}
            other => diffs.push(format!(
                "spike {s:?} not resolved after its end (ended_at {other:?})"
            )),
        }
    }
    for a in records.iter().filter(|a| !a.content_id.is_empty()) {
        if !spikes.iter().any(|s| belongs(a, s)) {
            diffs.push(format!("post alert without an injected spike: {a:?}"));
        }
    }
    diffs
}

/// Waits until the alerts topic holds what the injected spikes call for.
pub async fn alerts_match(cfg: &Config, dir: &Path, timeout: Duration) {
    let x = read_expected(dir);
    assert!(
        !x.expected.spikes.is_empty(),
        "the workload should inject spikes"
    );
    let mut alerts = Alerts::new(cfg);
    until_no_differences("alerts do not match the injected spikes", timeout, || {
        alerts.poll();
        std::future::ready(alert_differences(&x, &alerts.records))
    })
    .await;
    // Anything written twice would follow its first copy closely.
    tokio::time::sleep(Duration::from_secs(1)).await;
    alerts.poll();
    let diffs = alert_differences(&x, &alerts.records);
    assert!(diffs.is_empty(), "{diffs:#?}");
}

/// Waits until ClickHouse's `alerts` table holds one FIRING and one RESOLVED post alert per
/// injected spike, each belonging to its spike.
pub async fn clickhouse_alerts_match(ch: &ClickHouse, dir: &Path, timeout: Duration) {
    let x = &read_expected(dir);
    until_no_differences(
        "alerts in ClickHouse do not match the injected spikes",
        timeout,
        move || async move {
            let rows: Vec<AlertSeen> = ch
                .client
                .query(
                    "SELECT alert_id, state, account_id, content_id, started_at_ms, ended_at_ms \
                     FROM alerts WHERE content_id != ''",
                )
                .fetch_all()
                .await
                .unwrap_or_else(|e| panic!("reading alerts: {e}"));
            alert_differences(x, &rows)
        },
    )
    .await;
}

/// A funnel row's stage counts and conversion value in cents, as the checks compare them.
pub fn funnel_counts(f: &FunnelRollup) -> [i64; 7] {
    let s = f.stages();
    [
        s[0],
        s[1],
        s[2],
        s[3],
        s[4],
        s[5],
        (f.conversion_value * 100.0).round() as i64,
    ]
}

/// Differences between funnel rows — (campaign, window kind, [`funnel_counts`]) — and the
/// generator's expected funnels (empty: equal): per campaign, each stage summed over its DAY
/// windows, and over its HOUR windows, equals the distinct actors the generator sent through
/// that stage; the conversion value too.
pub fn funnel_differences<'a>(
    x: &Generated,
    rows: impl Iterator<Item = (&'a str, WindowKind, [i64; 7])> + Clone,
) -> Vec<String> {
    let mut diffs = Vec::new();
    for kind in [WindowKind::Day, WindowKind::Hour] {
        let mut got: BTreeMap<&str, [i64; 7]> = BTreeMap::new();
        for (campaign, _, counts) in rows.clone().filter(|r| r.1 == kind) {
            let t = got.entry(campaign).or_default();
            for (sum, v) in t.iter_mut().zip(counts) {
                *sum += v;
            }
        }
        for (campaign, e) in &x.expected.funnels {
            let want = [
                e.triggered,
                e.private_reply_sent,
                e.dm_read,
                e.engaged,
                e.link_clicked,
                e.converted,
                e.conversion_value_cents,
            ]
            .map(|v| v as i64);
            let have = got.remove(campaign.as_str()).unwrap_or_default();
            if have != want {
                diffs.push(format!(
                    "funnel {campaign} ({kind:?} windows): {have:?}, expected {want:?}"
                ));
            }
        }
        for (campaign, have) in got {
            diffs.push(format!("funnel {campaign} not generated: {have:?}"));
        }
    }
    diffs
}

fn window_kind(s: &str) -> WindowKind {
    if s == "HOUR" {
        WindowKind::Hour
    } else {
        WindowKind::Day
    }
}

/// Waits until ClickHouse's `funnels_final` holds the generator's expected funnels.
pub async fn clickhouse_funnels_match(ch: &ClickHouse, dir: &Path, timeout: Duration) {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Row {
        campaign_id: String,
        window_kind: String,
        counts: Vec<i64>,
    }
    let x = &read_expected(dir);
    until_no_differences(
        "funnels in ClickHouse differ from the expected ones",
        timeout,
        move || async move {
            let rows: Vec<Row> = ch
                .client
                .query(
                    "SELECT campaign_id, window_kind, [triggered, private_reply_sent, dm_read, \
                     engaged, link_clicked, converted, toInt64(round(conversion_value * 100))] \
                     FROM funnels_final",
                )
                .fetch_all()
                .await
                .unwrap_or_else(|e| panic!("reading funnels: {e}"));
            funnel_differences(
                x,
                rows.iter().map(|r| {
                    let counts: [i64; 7] = r
                        .counts
                        .as_slice()
                        .try_into()
                        .unwrap_or_else(|e| panic!("seven counts: {e}"));
                    (r.campaign_id.as_str(), window_kind(&r.window_kind), counts)
                }),
            )
        },
    )
    .await;
}

/// Differences between account-level conversation rows — (account, window kind, inbound
/// comments, answered comments) — and the generator's (empty: equal): per account, summed over
/// the account's HOUR windows and over its DAY windows.
pub fn conversation_differences<'a>(
    x: &Generated,
    rows: impl Iterator<Item = (&'a str, WindowKind, i64, i64)> + Clone,
) -> Vec<String> {
    let mut diffs = Vec::new();
    let want: BTreeMap<String, (i64, i64)> = x
        .expected
        .comments_answered
        .iter()
        .map(|(a, &(inbound, answered))| (a.clone(), (inbound as i64, answered as i64)))
        .collect();
    for kind in [WindowKind::Hour, WindowKind::Day] {
        let mut got: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for (account, _, inbound, answered) in rows.clone().filter(|r| r.1 == kind) {
            let g = got.entry(account.to_owned()).or_default();
            g.0 += inbound;
            g.1 += answered;
        }
        got.retain(|_, v| v.0 != 0);
        if got != want {
            let wrong: Vec<String> = want
                .iter()
                .filter(|(a, v)| got.get(*a) != Some(v))
                .take(5)
                .map(|(a, v)| format!("{a}: {:?}, expected {v:?}", got.get(a)))
                .collect();
            diffs.push(format!(
                "answered comments ({kind:?} windows) differ: {}",
                wrong.join("; ")
            ));
        }
    }
    diffs
}

/// Waits until ClickHouse's `conversations_final` holds the generator's answered comments.
pub async fn clickhouse_conversations_match(ch: &ClickHouse, dir: &Path, timeout: Duration) {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Row {
        account_id: String,
        window_kind: String,
        inbound_comments: i64,
        answered_comments: i64,
    }
    let x = &read_expected(dir);
    until_no_differences(
        "conversations in ClickHouse differ from the generator's",
        timeout,
        move || async move {
            let rows: Vec<Row> = ch
                .client
                .query(
                    "SELECT account_id, window_kind, inbound_comments, answered_comments \
                     FROM conversations_final WHERE content_id = ''",
                )
                .fetch_all()
                .await
                .unwrap_or_else(|e| panic!("reading conversations: {e}"));
            conversation_differences(
                x,
                rows.iter().map(|r| {
                    (
                        r.account_id.as_str(),
                        window_kind(&r.window_kind),
                        r.inbound_comments,
                        r.answered_comments,
                    )
                }),
            )
        },
    )
    .await;
}
