//! Alert delivery's configuration: the `[alerting]` section.

use banter_runtime::config::{invalid, Problems, Validate};
use banter_runtime::Secret;
use serde::{Deserialize, Serialize};

/// `banter alert`: pushes spike alerts from `banter.alerts.v1` to Alertmanager.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingConfig {
    /// Alertmanager's base URL; empty: alerts are not pushed (they still reach ClickHouse).
    pub alertmanager_url: String,
    /// More Alertmanagers (an HA cluster): each gets every alert, as Prometheus sends them, and
    /// one that is down is retried on its own.
    pub alertmanager_urls: Vec<String>,
    /// Basic-auth user name for Alertmanager (with `password`).
    pub username: String,
    /// Basic-auth password: `{ env = "VAR" }` or `{ file = "/path" }`.
    pub password: Secret,
    /// A bearer token sent instead of basic auth (an authenticating proxy in front).
    pub bearer_token: Secret,
    /// For https:// URLs: the PEM file of the CA certificates that signed Alertmanager's
    /// certificate; empty: the system's.
    pub ca_file: String,
    /// How often a firing alert is sent again, in ms (Alertmanager forgets alerts that are not
    /// re-sent before their `endsAt`).
    pub resend_interval_ms: u64,
    /// Longest wait between retries while Alertmanager does not answer, in ms.
    pub max_backoff_ms: u64,
    /// On start, alerts of this much of the topic's recent past are read back, in ms: firing
    /// ones are sent again, resolved ones once more.
    pub lookback_ms: i64,
    /// Grafana link put into the alerts' `dashboard` annotation; `{account}` and `{content}`
    /// are replaced.
    pub dashboard_url: String,
    /// `severity` label: `critical` from this z-score up, `warning` below.
    pub critical_z: f64,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        AlertingConfig {
            alertmanager_url: String::new(),
            alertmanager_urls: Vec::new(),
            username: String::new(),
            password: Secret::default(),
            bearer_token: Secret::default(),
            ca_file: String::new(),
            resend_interval_ms: 60_000,
            max_backoff_ms: 30_000,
            lookback_ms: 24 * 3_600_000,
            dashboard_url:
                "http://localhost:3000/d/banter-alerts/alerts?var-account={account}&var-content={content}"
                    .into(),
            critical_z: 10.0,
        }
    }
}

impl Validate for AlertingConfig {
    fn check(&self, p: &mut Problems) {
        let url = self.alertmanager_url.trim();
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            p.push(invalid(
                "alerting.alertmanager_url",
                "must start with http:// or https:// (or be empty to disable)",
            ));
        }
        for (i, u) in self.alertmanager_urls.iter().enumerate() {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                p.push(invalid(
                    "alerting.alertmanager_urls",
                    format!("entry {i} `{u}` must start with http:// or https://"),
                ));
            }
        }
        if self.username.is_empty() != self.password.is_empty() {
            let key = if self.username.is_empty() {
                "alerting.username"
            } else {
                "alerting.password"
            };
            p.push(invalid(
                key,
                "alerting.username and alerting.password go together",
            ));
        }
        if !self.bearer_token.is_empty() && !self.username.is_empty() {
            p.push(invalid(
                "alerting.bearer_token",
                "is set together with alerting.username: use one way of authenticating",
            ));
        }
        if !self.ca_file.is_empty() {
            p.take(banter_runtime::tls::connector("alerting.ca_file", &self.ca_file).map(drop));
        }
        if !(1_000..=3_600_000).contains(&self.resend_interval_ms) {
            p.push(invalid(
                "alerting.resend_interval_ms",
                "must be between 1000 and 3600000",
            ));
        }
        if self.max_backoff_ms < 100 {
            p.push(invalid("alerting.max_backoff_ms", "must be at least 100"));
        }
        if self.lookback_ms < 0 {
            p.push(invalid("alerting.lookback_ms", "must not be negative"));
        }
        if !(self.critical_z.is_finite() && self.critical_z > 0.0) {
            p.push(invalid("alerting.critical_z", "must be a positive number"));
        }
    }
}

impl AlertingConfig {
    /// Every Alertmanager base URL (`alertmanager_url` and `alertmanager_urls`), without a
    /// trailing slash, each once.
    pub fn urls(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for u in std::iter::once(&self.alertmanager_url).chain(&self.alertmanager_urls) {
            let u = u.trim().trim_end_matches('/');
            if !u.is_empty() && !out.iter().any(|o| o == u) {
                out.push(u.to_owned());
            }
        }
        out
    }
}
