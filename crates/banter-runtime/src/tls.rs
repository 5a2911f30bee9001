//! TLS for banter's HTTP clients (ClickHouse, Alertmanager): the system's OpenSSL, the system's
//! CA certificates or the ones a setting names. Kafka's TLS is librdkafka's own (see
//! [`crate::kafka`]); it reads the same PEM files.

use crate::config::{invalid, ConfigError};

/// A TLS connector that trusts the CA certificates in the PEM file `ca_file` (every
/// certificate in it) instead of the system's, or the system's when `ca_file` is empty.
/// TLS 1.2 at least.
///
/// # Errors
/// The file cannot be read or holds no certificate; the error names `key`.
pub fn connector(key: &str, ca_file: &str) -> Result<native_tls::TlsConnector, ConfigError> {
    let mut b = native_tls::TlsConnector::builder();
    b.min_protocol_version(Some(native_tls::Protocol::Tlsv12));
    if !ca_file.is_empty() {
        let pem = std::fs::read(ca_file)
            .map_err(|e| invalid(key, format!("cannot read `{ca_file}`: {e}")))?;
        let certs = native_tls::Certificate::stack_from_pem(&pem)
            .map_err(|e| invalid(key, format!("`{ca_file}` is not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(invalid(key, format!("`{ca_file}` holds no certificate")));
        }
        b.disable_built_in_roots(true);
        for c in certs {
            b.add_root_certificate(c);
        }
    }
    b.build()
        .map_err(|e| invalid(key, format!("cannot set up TLS: {e}")))
}

/// An HTTP client (10 s per request) trusting `ca_file`'s certificates (see [`connector`]).
///
/// # Errors
/// As [`connector`]; the error names `key`.
pub fn http_client(key: &str, ca_file: &str) -> Result<reqwest::Client, ConfigError> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .use_preconfigured_tls(connector(key, ca_file)?)
        .build()
        .map_err(|e| invalid(key, format!("cannot set up the HTTP client: {e}")))
}

/// An error and its causes on one line, each cause once (a TLS failure is several levels
/// down in hyper's errors).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// A request that got no answer, on one line; an untrusted certificate names `ca_key`.
pub fn send_error(e: &(dyn std::error::Error + 'static), ca_key: &str) -> String {
    if is_untrusted_certificate(e) {
        format!(
            "{}: the server's certificate is not trusted (check {ca_key})",
            error_chain(e)
        )
    } else {
        error_chain(e)
    }
}

/// Whether an HTTP client error was a TLS certificate the client did not trust, going by the
/// error's chain of causes.
pub fn is_untrusted_certificate(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        let s = err.to_string().to_ascii_lowercase();
        if s.contains("certificate verify failed")
            || s.contains("self-signed certificate")
            || s.contains("unable to get local issuer")
        {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_names_the_key() {
        let e = connector("clickhouse.ca_file", "/nonexistent/ca.pem").unwrap_err();
        assert!(e.to_string().contains("clickhouse.ca_file"), "{e}");
        let p = std::env::temp_dir().join(format!("banter-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&p, "not a certificate\n").unwrap();
        let e = connector("alerting.ca_file", p.to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("alerting.ca_file"), "{e}");
        std::fs::remove_file(&p).ok();
        connector("clickhouse.ca_file", "").unwrap();
    }
}
