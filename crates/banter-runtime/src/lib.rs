//! What every banter role shares: configuration loading and the shared sections ([`config`]),
//! secrets ([`secret`]), logs and metrics ([`telemetry`]), the ops HTTP server ([`http`]), and
//! Kafka clients set up the way the pipeline needs them ([`kafka`]). Each stage's own settings
//! live in its crate.

pub mod aws;
pub mod config;
pub mod http;
pub mod kafka;
pub mod registry;
pub mod schemas;
pub mod secret;
pub mod telemetry;
pub mod tls;
pub mod watchdog;

pub use config::{ConfigError, Validate};

/// SHA-256 of `bytes` in lower-case hex (64 digits).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    aws::hex(&sha2::Sha256::digest(bytes))
}
pub use secret::Secret;

/// Wall-clock milliseconds since the Unix epoch (0 before 1970, saturating far ahead).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// This machine's host name (`/etc/hostname`, else `$HOSTNAME`, else `local`): the default
/// instance id of the roles that join consumer groups as static members.
pub fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "local".into())
}

/// The names in `BANTER_FAILPOINTS` (comma-separated), read once.
fn failpoints() -> &'static [String] {
    static POINTS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        std::env::var("BANTER_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    });
    &POINTS
}

/// A place where a crash is worst (between writing and committing): when `name` is listed in
/// `BANTER_FAILPOINTS`, the process aborts here as a `kill -9` would (no destructors, no
/// flushes, no commits). For tests that must crash at that exact point; unset in production,
/// where it costs one lookup in an empty list.
pub fn failpoint(name: &str) {
    if failpoints().iter().any(|p| p == name) {
        eprintln!("failpoint {name}: aborting the process");
        std::process::abort();
    }
}

/// A place where a stall is worst (a transaction open, not committed): when `name` is listed
/// in `BANTER_FAILPOINTS`, the calling thread waits here while the file named by
/// `BANTER_PAUSE_FILE` exists. The process and its Kafka clients' own threads (heartbeats) go
/// on: a processing loop stalled past `max.poll.interval.ms`, for tests. Unset in production.
pub fn pausepoint(name: &str) {
    if !failpoints().iter().any(|p| p == name) {
        return;
    }
    let Some(path) = std::env::var_os("BANTER_PAUSE_FILE").map(std::path::PathBuf::from) else {
        return;
    };
    if path.exists() {
        eprintln!("pausepoint {name}: paused while {} exists", path.display());
        while path.exists() {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("pausepoint {name}: resumed");
    }
}

/// The UTC calendar date and time of `secs` seconds since the epoch: (year, month, day,
/// hour, minute, second), by Howard Hinnant's days-to-civil algorithm.
pub fn civil(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, sod / 3600, sod % 3600 / 60, sod % 60)
}

/// `s` percent-encoded for a URL path segment or query value (RFC 3986 unreserved characters
/// kept, everything else as `%XX` of its UTF-8 bytes).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
