//! [`Secret`]: a configuration value that never prints.
//!
//! In the TOML file a secret is given by reference, `password = { env = "CH_PASSWORD" }` or
//! `password = { file = "/run/secrets/ch" }`, or (discouraged) inline as a string; the
//! `BANTER_<SECTION>__<KEY>` environment override works too. `Debug`, `Display` and `Serialize`
//! all show `<redacted>` (`Serialize` an empty string when unset).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A string that is never logged or printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; call only where it is used, never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    /// `<redacted>`, or empty when unset: printed back into a file, an unset secret must stay
    /// unset rather than become the string `<redacted>`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SecretSource {
    Inline(String),
    Reference(SecretReference),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretReference {
    env: Option<String>,
    file: Option<String>,
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match SecretSource::deserialize(d).map_err(|_| {
            D::Error::custom("expected a string, { env = \"VAR\" } or { file = \"/path\" }")
        })? {
            SecretSource::Inline(s) => Ok(Secret(s)),
            SecretSource::Reference(SecretReference {
                env: Some(var),
                file: None,
            }) => std::env::var(&var)
                .map(Secret)
                .map_err(|_| D::Error::custom(format!("environment variable {var} is not set"))),
            SecretSource::Reference(SecretReference {
                env: None,
                file: Some(path),
            }) => std::fs::read_to_string(&path)
                .map(|s| Secret(s.trim_end_matches(['\n', '\r']).to_owned()))
                .map_err(|e| D::Error::custom(format!("cannot read secret file {path}: {e}"))),
            SecretSource::Reference(_) => {
                Err(D::Error::custom("give exactly one of `env` or `file`"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    struct Holder {
        s: Secret,
    }

    #[test]
    fn never_prints() {
        let h: Holder = toml::from_str("s = \"hunter2\"").unwrap();
        assert_eq!(h.s.expose(), "hunter2");
        assert!(!format!("{h:?}").contains("hunter2"));
        assert_eq!(h.s.to_string(), "<redacted>");
        assert_eq!(serde_json::to_string(&h.s).unwrap(), "\"<redacted>\"");
    }

    #[test]
    fn from_file_and_missing_env() {
        let dir = std::env::temp_dir().join(format!("banter-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let h: Holder = toml::from_str(&format!("s = {{ file = {:?} }}", path)).unwrap();
        assert_eq!(h.s.expose(), "s3cret");
        let err = toml::from_str::<Holder>("s = { env = \"BANTER_TEST_SURELY_UNSET_VAR\" }")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("BANTER_TEST_SURELY_UNSET_VAR is not set"),
            "{err}"
        );
    }
}
