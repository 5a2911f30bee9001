//! Alert delivery's configuration: the `[alerting]` section.

use banter_runtime::config::{invalid, ConfigError, Validate};
use serde::{Deserialize, Serialize};

/// `banter alert`: pushes spike alerts from `banter.alerts.v1` to Alertmanager.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingConfig {
    /// Alertmanager's base URL; empty: alerts are not pushed (they still reach ClickHouse).
    pub alertmanager_url: String,
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
    fn validate(&self) -> Result<(), ConfigError> {
        let url = self.alertmanager_url.trim();
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(
                "alerting.alertmanager_url",
                "must start with http:// or https:// (or be empty to disable)",
            ));
        }
        if !(1_000..=3_600_000).contains(&self.resend_interval_ms) {
            return Err(invalid(
                "alerting.resend_interval_ms",
                "must be between 1000 and 3600000",
            ));
        }
        if self.max_backoff_ms < 100 {
            return Err(invalid("alerting.max_backoff_ms", "must be at least 100"));
        }
        if self.lookback_ms < 0 {
            return Err(invalid("alerting.lookback_ms", "must not be negative"));
        }
        if !(self.critical_z.is_finite() && self.critical_z > 0.0) {
            return Err(invalid("alerting.critical_z", "must be a positive number"));
        }
        Ok(())
    }
}
