//! ClickHouse client set up for the server it talks to.
//!
//! banter runs against the ClickHouse Debian ships (18.16) and current releases (25.x). The
//! server version is detected, not configured: 18.16 rejects LZ4-compressed responses from the
//! `clickhouse` crate and has no `RowBinaryWithNamesAndTypes`, so the client uses no
//! compression and plain `RowBinary` (schema validation off) on servers older than 24, and
//! LZ4 with validation from 24 on.

use std::time::{Duration, Instant};

use clickhouse::Client;
use thiserror::Error;

use crate::config::ClickHouseConfig;

/// The first major version on which the client's `RowBinaryWithNamesAndTypes` validation is
/// used.
pub const VALIDATION_MIN_MAJOR: u32 = 24;

/// A ClickHouse problem.
#[derive(Debug, Error)]
pub enum ClickHouseSetupError {
    /// The server did not answer within the deadline.
    #[error("clickhouse at {url} did not answer within {waited_secs} s: {detail} (is it running? `scripts/stack.sh up clickhouse` starts the local one)")]
    Unreachable {
        /// The URL.
        url: String,
        /// How long we waited.
        waited_secs: u64,
        /// The last error.
        detail: String,
    },
    /// The server answered with an error.
    #[error("clickhouse {what}: {source}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: clickhouse::error::Error,
    },
    /// The server refused this client: wrong user or password, or a certificate the client
    /// does not trust. Waiting does not help.
    #[error("clickhouse at {url} refused the connection: {detail} (check {keys})")]
    Refused {
        /// The URL.
        url: String,
        /// The settings to look at.
        keys: &'static str,
        /// What the server or the TLS library said.
        detail: String,
    },
    /// A setting cannot be used (a CA file that cannot be read).
    #[error(transparent)]
    Config(#[from] banter_runtime::ConfigError),
    /// `version()` returned something unexpected.
    #[error("cannot parse clickhouse version `{0}`")]
    Version(String),
}

/// The server's version and what follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    /// Major version (18, 24, 25, …).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl ServerVersion {
    /// Parses `version()` output such as `18.16.1` or `25.3.2.39`.
    pub fn parse(s: &str) -> Result<Self, ClickHouseSetupError> {
        let mut it = s.trim().split('.');
        let mut num = || it.next().and_then(|p| p.parse::<u32>().ok());
        match (num(), num()) {
            (Some(major), Some(minor)) => Ok(ServerVersion { major, minor }),
            _ => Err(ClickHouseSetupError::Version(s.to_owned())),
        }
    }

    /// Whether the client can validate rows with `RowBinaryWithNamesAndTypes`.
    pub fn supports_validation(self) -> bool {
        self.major >= VALIDATION_MIN_MAJOR
    }

    /// The compression the client uses with this server: LZ4 where the client's LZ4 framing
    /// is known to work (24.x and later, as validation), none on older servers (18.16 rejects
    /// the crate's LZ4-compressed responses).
    pub fn compression(self) -> clickhouse::Compression {
        if self.major >= VALIDATION_MIN_MAJOR {
            clickhouse::Compression::Lz4
        } else {
            clickhouse::Compression::None
        }
    }

    /// Whether `LowCardinality` works without `allow_experimental_low_cardinality_type`
    /// (19.9+).
    pub fn has_low_cardinality(self) -> bool {
        (self.major, self.minor) >= (19, 9)
    }

    /// Whether `DateTime64` exists (20.1+).
    pub fn has_datetime64(self) -> bool {
        self.major >= 20
    }

    /// Whether table and column TTLs can be set without rewriting every part
    /// (`materialize_ttl_after_modify`, 20.5+).
    pub fn has_ttl(self) -> bool {
        (self.major, self.minor) >= (20, 5)
    }
}

/// The HTTP client under the ClickHouse client: HTTP or HTTPS (the system's OpenSSL), trusting
/// `clickhouse.ca_file`'s certificates when set and the system's otherwise.
fn http_client(cfg: &ClickHouseConfig) -> Result<Client, ClickHouseSetupError> {
    use hyper_util::client::legacy::connect::HttpConnector;
    let tls = banter_runtime::tls::connector("clickhouse.ca_file", &cfg.ca_file)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let https = hyper_tls::HttpsConnector::from((http, tls.into()));
    // ClickHouse closes idle connections after 3 s; let the pool drop them first.
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(2))
        .build(https);
    Ok(Client::with_http_client(hyper))
}

/// A client without a database selected (for `CREATE DATABASE`), compression off.
///
/// # Errors
/// `clickhouse.ca_file` cannot be read.
pub fn server_client(cfg: &ClickHouseConfig) -> Result<Client, ClickHouseSetupError> {
    let mut c = http_client(cfg)?
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_compression(clickhouse::Compression::None)
        .with_validation(false);
    if !cfg.password.is_empty() {
        c = c.with_password(cfg.password.expose());
    }
    Ok(c)
}

/// When an error says the server refused this client, the settings to look at.
fn refused_keys(e: &clickhouse::error::Error) -> Option<&'static str> {
    if banter_runtime::tls::is_untrusted_certificate(e) {
        return Some("clickhouse.ca_file (it did not sign the server's certificate)");
    }
    let s = e.to_string();
    // 516 AUTHENTICATION_FAILED (current releases), 192 UNKNOWN_USER, 193 WRONG_PASSWORD,
    // 194 REQUIRED_PASSWORD (18.16).
    let auth = [
        "Code: 516",
        "Code: 192",
        "Code: 193",
        "Code: 194",
        "AUTHENTICATION_FAILED",
    ]
    .iter()
    .any(|c| s.contains(c));
    auth.then_some("clickhouse.user, clickhouse.password")
}

/// A connected ClickHouse: the client for the configured database, and the server version.
#[derive(Clone)]
pub struct ClickHouse {
    /// The client, set up for this server.
    pub client: Client,
    /// The server's version.
    pub version: ServerVersion,
    /// The database the client writes to.
    pub database: String,
    /// `clickhouse.cluster`, when set: the tables are replicated and sharded over it.
    pub cluster: Option<String>,
}

impl std::fmt::Debug for ClickHouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouse")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Asks the server for its version.
///
/// # Errors
/// The server is unreachable or answers with an error.
pub async fn server_version(client: &Client) -> Result<ServerVersion, ClickHouseSetupError> {
    let v: String = client
        .query("SELECT version()")
        .fetch_one()
        .await
        .map_err(|source| ClickHouseSetupError::Query {
            what: "version()",
            source,
        })?;
    ServerVersion::parse(&v)
}

/// Waits until the server answers (polling until `timeout`), detects its version and returns a
/// client for `cfg.database` suited to it. The database itself is not created here.
///
/// # Errors
/// [`ClickHouseSetupError::Unreachable`] when the deadline passes.
pub async fn connect(
    cfg: &ClickHouseConfig,
    timeout: Duration,
) -> Result<ClickHouse, ClickHouseSetupError> {
    let probe = server_client(cfg)?;
    let deadline = Instant::now() + timeout;
    let version = loop {
        match server_version(&probe).await {
            Ok(v) => break v,
            Err(ClickHouseSetupError::Query { source, .. }) if refused_keys(&source).is_some() => {
                return Err(ClickHouseSetupError::Refused {
                    url: cfg.url.clone(),
                    keys: refused_keys(&source).unwrap_or_default(),
                    detail: banter_runtime::tls::error_chain(&source),
                })
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(ClickHouseSetupError::Unreachable {
                    url: cfg.url.clone(),
                    waited_secs: timeout.as_secs(),
                    detail: e.to_string(),
                })
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let mut client = server_client(cfg)?
        .with_database(&cfg.database)
        .with_compression(version.compression())
        .with_validation(version.supports_validation());
    if !cfg.cluster.is_empty() {
        // An insert into a Distributed table returns once the shards have the rows, not when
        // they are queued on this server's disk: the sink commits its offsets after that.
        client = client.with_setting("insert_distributed_sync", "1");
    }
    tracing::debug!(
        major = version.major,
        minor = version.minor,
        "clickhouse version detected"
    );
    Ok(ClickHouse {
        client,
        version,
        database: cfg.database.clone(),
        cluster: (!cfg.cluster.is_empty()).then(|| cfg.cluster.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let old = ServerVersion::parse("18.16.1").unwrap();
        assert!(!old.supports_validation());
        assert!(!old.has_low_cardinality());
        assert!(!old.has_datetime64());
        let new = ServerVersion::parse("25.3.2.39\n").unwrap();
        assert!(new.supports_validation() && new.has_low_cardinality() && new.has_datetime64());
        assert!(matches!(old.compression(), clickhouse::Compression::None));
        assert!(matches!(new.compression(), clickhouse::Compression::Lz4));
        assert!(ServerVersion::parse("head").is_err());
    }
}
