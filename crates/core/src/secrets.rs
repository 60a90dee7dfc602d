//! Secrets come from the environment or from files, never inline in a config file.
//!
//! A *secret reference* is `env:NAME` (the variable's value) or `file:PATH` (the file's content,
//! trailing newline trimmed, as Kubernetes mounts secrets). The value is held in a [`Secret`],
//! whose `Debug` and `Display` print `<redacted>` so a secret cannot reach a log by accident.

use std::fmt;

use thiserror::Error;

/// A secret value. Formatting never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }
    /// The secret bytes: hand them to the library that needs them, never to a formatter.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    /// The secret as UTF-8 text (passwords), if it is.
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
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

/// Why a secret reference cannot be resolved. Messages name the reference, never the value.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("secret reference `{0}` must be `env:NAME` or `file:PATH` (secrets are never written inline in a config file)")]
    Syntax(String),
    #[error("environment variable `{0}` (secret) is not set or empty")]
    MissingEnv(String),
    #[error("cannot read secret file `{path}`: {error}")]
    File { path: String, error: String },
    #[error("secret file `{0}` is empty")]
    EmptyFile(String),
}

/// Resolves `env:NAME` or `file:PATH` with the process environment.
pub fn resolve(reference: &str) -> Result<Secret, SecretError> {
    resolve_with(reference, &|name| std::env::var(name).ok())
}

/// Resolves `env:NAME` or `file:PATH`, looking variables up with `env` (tests pass their own).
pub fn resolve_with(
    reference: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, SecretError> {
    let reference = reference.trim();
    if let Some(name) = reference.strip_prefix("env:") {
        return env(name)
            .filter(|v| !v.is_empty())
            .map(Secret::new)
            .ok_or_else(|| SecretError::MissingEnv(name.to_string()));
    }
    if let Some(path) = reference.strip_prefix("file:") {
        let mut bytes = std::fs::read(path).map_err(|e| SecretError::File {
            path: path.to_string(),
            error: e.to_string(),
        })?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        if bytes.is_empty() {
            return Err(SecretError::EmptyFile(path.to_string()));
        }
        return Ok(Secret::new(bytes));
    }
    Err(SecretError::Syntax(reference.to_string()))
}

/// Prefix of environment variables that carry secret librdkafka properties: a variable
/// `REFLEX_KAFKA_SECRET_SASL_PASSWORD` sets `sasl.password` (name lower-cased, `_` → `.`).
/// `..._FILE` variables name a file holding the value instead (`REFLEX_KAFKA_SECRET_SASL_PASSWORD_FILE`).
/// Non-secret settings (`security.protocol`, `sasl.mechanism`, `ssl.ca.location`) stay in
/// `kafka.properties`. Workers and `reflexctl` resolve them in one place,
/// `reflex_runtime::config::KafkaProperties::resolve_secrets`.
pub const KAFKA_SECRET_ENV_PREFIX: &str = "REFLEX_KAFKA_SECRET_";

/// librdkafka properties that hold secrets; a config file must not set them inline.
pub const KAFKA_SECRET_PROPERTIES: [&str; 5] = [
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "ssl.key.pem",
    "sasl.oauthbearer.client.secret",
];

/// The secret librdkafka properties given by `REFLEX_KAFKA_SECRET_*` variables in `vars`
/// (pass `std::env::vars()`). Only names in [`KAFKA_SECRET_PROPERTIES`] are accepted, so a
/// typo fails instead of being ignored.
pub fn kafka_secret_properties(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(String, Secret)>, SecretError> {
    let mut out = Vec::new();
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix(KAFKA_SECRET_ENV_PREFIX) else {
            continue;
        };
        let (rest, from_file) = match rest.strip_suffix("_FILE") {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let property = rest.to_ascii_lowercase().replace('_', ".");
        if !KAFKA_SECRET_PROPERTIES.contains(&property.as_str()) {
            return Err(SecretError::Syntax(format!(
                "{name}: `{property}` is not a secret librdkafka property ({})",
                KAFKA_SECRET_PROPERTIES.join(", ")
            )));
        }
        let secret = if from_file {
            resolve_with(&format!("file:{value}"), &|_| None)?
        } else if value.is_empty() {
            return Err(SecretError::MissingEnv(name));
        } else {
            Secret::new(value)
        };
        out.push((property, secret));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_and_file_references_resolve_and_never_print() {
        let env = |n: &str| (n == "K").then(|| "hunter2".to_string());
        let s = resolve_with("env:K", &env).unwrap();
        assert_eq!(s.expose(), b"hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
        assert_eq!(
            resolve_with("env:NOPE", &env),
            Err(SecretError::MissingEnv("NOPE".into()))
        );
        assert!(matches!(
            resolve_with("hunter2", &env),
            Err(SecretError::Syntax(_))
        ));
        let dir = std::env::temp_dir().join(format!("reflex-secret-{}", std::process::id()));
        std::fs::write(&dir, "from-file\n").unwrap();
        let s = resolve_with(&format!("file:{}", dir.display()), &env).unwrap();
        assert_eq!(s.expose_str(), Some("from-file"));
        std::fs::write(&dir, "\n").unwrap();
        assert!(matches!(
            resolve_with(&format!("file:{}", dir.display()), &env),
            Err(SecretError::EmptyFile(_))
        ));
        std::fs::remove_file(&dir).unwrap();
        let e = resolve_with("file:/nonexistent/x", &env).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x"), "{e}");
    }

    #[test]
    fn kafka_secret_variables_map_to_properties() {
        let vars = vec![
            ("PATH".to_string(), "/bin".to_string()),
            (
                "REFLEX_KAFKA_SECRET_SASL_PASSWORD".to_string(),
                "pw".to_string(),
            ),
        ];
        let props = kafka_secret_properties(vars).unwrap();
        assert_eq!(props.len(), 1);
        assert_eq!(props[0].0, "sasl.password");
        assert_eq!(props[0].1.expose(), b"pw");
        let err = kafka_secret_properties(vec![(
            "REFLEX_KAFKA_SECRET_SASL_PASSWROD".to_string(),
            "pw".to_string(),
        )])
        .unwrap_err();
        assert!(err.to_string().contains("sasl.passwrod"), "{err}");
    }
}
