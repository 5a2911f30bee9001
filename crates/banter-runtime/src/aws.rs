//! Amazon MSK's IAM authentication over SASL/OAUTHBEARER: the token is a SigV4-presigned
//! `GET https://kafka.<region>.amazonaws.com/?Action=kafka-cluster%3AConnect` (service
//! `kafka-cluster`, 900 s, `host` the only signed header, the empty body's hash), with an
//! unsigned `User-Agent` parameter, base64url without padding — what AWS's signer libraries
//! (`aws-msk-iam-sasl-signer-*`) make. The broker recomputes the signature from the URL.
//!
//! Credentials are read each time a token is made (librdkafka asks again at 80 % of its
//! lifetime), so rotated credentials are picked up: the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), else the shared credentials file
//! (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`, profile `AWS_PROFILE` or
//! `default`).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// How long a token is valid, seconds (what AWS's signers use).
pub const TOKEN_SECONDS: i64 = 900;

/// The service name MSK's IAM authentication signs for.
const SERVICE: &str = "kafka-cluster";

/// SHA-256 of the empty body.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The unsigned `User-Agent` parameter.
const USER_AGENT: &str = concat!("banter/", env!("CARGO_PKG_VERSION"));

/// AWS credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The access key id (`AKIA…`, `ASIA…`).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token of temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Where the credentials were looked for, for error messages.
const WHERE: &str = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) in the environment, or a profile in the shared credentials file (AWS_SHARED_CREDENTIALS_FILE, ~/.aws/credentials; AWS_PROFILE)";

impl Credentials {
    /// The credentials from `env` (a variable lookup), else from the shared credentials file.
    ///
    /// # Errors
    /// None found, or the profile lacks a key; the message says where they were looked for.
    pub fn find(env: impl Fn(&str) -> Option<String>) -> Result<Credentials, String> {
        let set = |k: &str| env(k).filter(|v| !v.is_empty());
        if let (Some(id), Some(secret)) = (set("AWS_ACCESS_KEY_ID"), set("AWS_SECRET_ACCESS_KEY")) {
            return Ok(Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: set("AWS_SESSION_TOKEN"),
            });
        }
        let file = set("AWS_SHARED_CREDENTIALS_FILE")
            .or_else(|| set("HOME").map(|h| format!("{h}/.aws/credentials")))
            .ok_or_else(|| format!("no AWS credentials: looked for {WHERE}"))?;
        let profile = set("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("no AWS credentials ({file}: {e}): looked for {WHERE}"))?;
        Credentials::from_profile(&text, &profile)
            .map_err(|e| format!("{file}, profile `{profile}`: {e}"))
    }

    /// The credentials of `profile` in the text of a shared credentials file (INI).
    ///
    /// # Errors
    /// The profile or one of its keys is missing.
    pub fn from_profile(text: &str, profile: &str) -> Result<Credentials, String> {
        let mut section = None::<String>;
        let (mut id, mut secret, mut token) = (None, None, None);
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = Some(name.trim().to_owned());
                continue;
            }
            if section.as_deref() != Some(profile) {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                let v = Some(v.trim().to_owned()).filter(|v| !v.is_empty());
                match k.trim() {
                    "aws_access_key_id" => id = v,
                    "aws_secret_access_key" => secret = v,
                    "aws_session_token" => token = v,
                    _ => {}
                }
            }
        }
        match (id, secret) {
            (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials {
                access_key_id,
                secret_access_key,
                session_token: token,
            }),
            _ => Err("no aws_access_key_id and aws_secret_access_key there".into()),
        }
    }
}

/// An MSK IAM token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MskToken {
    /// base64url (no padding) of the presigned URL.
    pub token: String,
    /// When it expires, ms since the epoch.
    pub expires_ms: i64,
}

fn hmac(key: &[u8], msg: &str) -> [u8; 32] {
    // HMAC takes a key of any length.
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(key) else {
        return [0; 32];
    };
    m.update(msg.as_bytes());
    m.finalize().into_bytes().into()
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `YYYYMMDDTHHMMSSZ` of a time in seconds since the epoch (UTC).
fn amz_date(secs: i64) -> String {
    let (y, m, d, hh, mm, ss) = crate::civil(secs);
    format!("{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}Z")
}

/// The pieces of a presigned URL, exposed for tests against AWS's signers.
#[derive(Debug, Clone)]
pub struct Presigned {
    /// The canonical request that was signed.
    pub canonical_request: String,
    /// The signature (64 hex digits).
    pub signature: String,
    /// The URL, with the unsigned `User-Agent` parameter.
    pub url: String,
}

/// Presigns MSK's connect action for `region` at `now_secs` (seconds since the epoch).
pub fn presign(creds: &Credentials, region: &str, now_secs: i64) -> Presigned {
    let pct = crate::percent_encode;
    let date_time = amz_date(now_secs);
    let date = &date_time[..8];
    let host = format!("kafka.{region}.amazonaws.com");
    let scope = format!("{date}/{region}/{SERVICE}/aws4_request");
    let mut params = vec![
        ("Action", "kafka-cluster:Connect".to_owned()),
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256".to_owned()),
        (
            "X-Amz-Credential",
            format!("{}/{scope}", creds.access_key_id),
        ),
        ("X-Amz-Date", date_time.clone()),
        ("X-Amz-Expires", TOKEN_SECONDS.to_string()),
        ("X-Amz-SignedHeaders", "host".to_owned()),
    ];
    if let Some(t) = &creds.session_token {
        params.push(("X-Amz-Security-Token", t.clone()));
    }
    let mut encoded: Vec<(String, String)> = params.iter().map(|(k, v)| (pct(k), pct(v))).collect();
    encoded.sort();
    let query = encoded
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let canonical_request = format!("GET\n/\n{query}\nhost:{host}\n\nhost\n{EMPTY_SHA256}");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{date_time}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let k_date = hmac(format!("AWS4{}", creds.secret_access_key).as_bytes(), date);
    let k_region = hmac(&k_date, region);
    let k_service = hmac(&k_region, SERVICE);
    let k_signing = hmac(&k_service, "aws4_request");
    let signature = hex(&hmac(&k_signing, &string_to_sign));
    let url = format!(
        "https://{host}/?{query}&X-Amz-Signature={signature}&User-Agent={}",
        pct(USER_AGENT)
    );
    Presigned {
        canonical_request,
        signature,
        url,
    }
}

/// An MSK IAM token for `region` made at `now_secs`.
pub fn msk_token(creds: &Credentials, region: &str, now_secs: i64) -> MskToken {
    let p = presign(creds, region, now_secs);
    MskToken {
        token: base64url(p.url.as_bytes()),
        expires_ms: (now_secs + TOKEN_SECONDS) * 1000,
    }
}

/// base64url without padding (RFC 4648 §5).
pub fn base64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(A[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known answers made by AWS's own Python signer (aws-msk-iam-sasl-signer-python 1.0.2,
    // MSKAuthTokenProvider.py unchanged, botocore 1.43.11, clock frozen); A and B are also the
    // golden signatures of Vector's MSK IAM signer. Only the User-Agent differs from ours, and
    // it is not signed.
    fn example(token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: token.map(str::to_owned),
        }
    }

    #[test]
    fn signatures_equal_aws_signers() {
        let a = presign(&example(Some("IQoJb3Jp")), "ap-southeast-1", 1_700_000_000);
        assert_eq!(
            a.canonical_request,
            "GET\n/\nAction=kafka-cluster%3AConnect&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20231114%2Fap-southeast-1%2Fkafka-cluster%2Faws4_request&X-Amz-Date=20231114T221320Z&X-Amz-Expires=900&X-Amz-Security-Token=IQoJb3Jp&X-Amz-SignedHeaders=host\nhost:kafka.ap-southeast-1.amazonaws.com\n\nhost\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            a.signature,
            "4c02acd7700d674cecd2b27f6a906be056df725db5c7571700fd54a354a31904"
        );
        let b = presign(&example(None), "ap-southeast-1", 1_700_000_000);
        assert_eq!(
            b.signature,
            "12f697bba1fe524b7e9f370e2c56075ea612d9d4d2c7f16c402ffc72520fce5e"
        );
        assert!(!b.url.contains("X-Amz-Security-Token"));
        let c = presign(
            &Credentials {
                access_key_id: "MOCK_AWS_ACCESS_KEY".into(),
                secret_access_key: "MOCK_AWS_SECRET_KEY".into(),
                session_token: Some("MOCK_AWS_TOKEN".into()),
            },
            "us-west-2",
            1_704_067_200,
        );
        assert_eq!(
            c.signature,
            "88e49839d1bc012f78d10ccd2033fa1f730f235c355cf0187d7fd0e74f6f9b90"
        );
        // A session token with `/`, `+` and `=`: encoded once, in the signature and the URL.
        let d = presign(
            &example(Some("FwoGZXIvYXdzEJr//////////wEaDH+ab/cd==")),
            "us-east-1",
            1_440_938_160,
        );
        assert_eq!(
            d.signature,
            "cbba563ffa8e430540df4ae74f464a2c10a6e484f06921e6b32b9eb392a1c64c"
        );
        assert!(d.url.contains(
            "X-Amz-Security-Token=FwoGZXIvYXdzEJr%2F%2F%2F%2F%2F%2F%2F%2F%2F%2FwEaDH%2Bab%2Fcd%3D%3D&"
        ));
    }

    #[test]
    fn the_token_is_the_url_in_base64url_and_lives_900_s() {
        let t = msk_token(&example(Some("IQoJb3Jp")), "ap-southeast-1", 1_700_000_000);
        assert_eq!(t.expires_ms, 1_700_000_900_000);
        assert!(!t.token.contains(['=', '+', '/']), "{}", t.token);
        let url = presign(&example(Some("IQoJb3Jp")), "ap-southeast-1", 1_700_000_000).url;
        assert_eq!(t.token, base64url(url.as_bytes()));
        assert!(url.starts_with(
            "https://kafka.ap-southeast-1.amazonaws.com/?Action=kafka-cluster%3AConnect&X-Amz-Algorithm=AWS4-HMAC-SHA256&"
        ));
        assert!(url.contains(
            "&X-Amz-Signature=4c02acd7700d674cecd2b27f6a906be056df725db5c7571700fd54a354a31904&User-Agent=banter%2F"
        ));
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn dates() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(951_868_799), "20000229T235959Z");
        assert_eq!(amz_date(1_704_067_200), "20240101T000000Z");
    }

    #[test]
    fn credentials_from_the_environment_then_the_profile() {
        fn env(vars: &[(&'static str, &str)]) -> impl Fn(&str) -> Option<String> {
            let vars: Vec<(&'static str, String)> =
                vars.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        }
        let c = Credentials::find(env(&[
            ("AWS_ACCESS_KEY_ID", "AKIA1"),
            ("AWS_SECRET_ACCESS_KEY", "s1"),
        ]))
        .unwrap();
        assert_eq!((c.access_key_id.as_str(), c.session_token), ("AKIA1", None));
        let dir = std::env::temp_dir().join(format!("banter-aws-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("credentials");
        std::fs::write(
            &file,
            "[default]\naws_access_key_id = AKIAD\naws_secret_access_key = sd\n\n[ci]\n# temporary\naws_access_key_id=ASIAC\naws_secret_access_key=sc\naws_session_token=tc\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let c = Credentials::find(env(&[("AWS_SHARED_CREDENTIALS_FILE", path)])).unwrap();
        assert_eq!(c.access_key_id, "AKIAD");
        let c = Credentials::find(env(&[
            ("AWS_SHARED_CREDENTIALS_FILE", path),
            ("AWS_PROFILE", "ci"),
        ]))
        .unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.session_token.as_deref()),
            ("ASIAC", Some("tc"))
        );
        let e = Credentials::find(env(&[
            ("AWS_SHARED_CREDENTIALS_FILE", path),
            ("AWS_PROFILE", "nope"),
        ]))
        .unwrap_err();
        assert!(e.contains("profile `nope`"), "{e}");
        let e = Credentials::find(env(&[("HOME", "/nonexistent")])).unwrap_err();
        assert!(e.contains("AWS_ACCESS_KEY_ID"), "{e}");
        assert!(!format!("{c:?}").contains("sc"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
