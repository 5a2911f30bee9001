//! Logs (`tracing`, human or JSON) and the Prometheus registry every role registers into.
//!
//! Metric names start with `banter_`, use base units, counters end in `_total` (added by the
//! encoder), and labels never carry unbounded values such as account or post ids.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global `tracing` subscriber. Safe to call more than once (later calls keep the
/// first subscriber), so tests and `banter run` can share it.
pub fn init_logging(cfg: &TelemetryConfig) {
    // validate() has checked the filter; fall back to info rather than fail twice.
    let filter = EnvFilter::try_new(&cfg.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match cfg.log_format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The metrics of one process: a registry under the `banter` prefix, built at start-up, then
/// shared read-only with the ops server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// A registry with `banter_build_info{version,role}` and `banter_up`.
    pub fn new(role: &str) -> Self {
        let mut registry = Registry::with_prefix("banter");
        registry.register(
            "build",
            "Build information of this banter process",
            Info::new(vec![
                ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
                ("role".to_owned(), role.to_owned()),
            ]),
        );
        let up = Gauge::<i64>::default();
        up.set(1);
        registry.register("up", "1 while the process runs", up);
        Metrics { registry }
    }

    /// The registry, for roles to register their metrics at start-up.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Freezes the registry for sharing with the ops server.
    pub fn into_shared(self) -> Arc<Metrics> {
        Arc::new(self)
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn names_are_prefixed_and_counters_end_in_total() {
        let mut m = Metrics::new("test");
        let c = Counter::<u64>::default();
        m.registry_mut()
            .register("events_accepted", "Events accepted", c.clone());
        c.inc_by(3);
        let text = m.render();
        assert!(text.contains("banter_events_accepted_total 3"), "{text}");
        assert!(text.contains("banter_up 1"), "{text}");
        assert!(text.contains("banter_build_info{version=\""), "{text}");
    }
}
