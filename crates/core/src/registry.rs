//! A Schema Registry client speaking the Confluent REST API (Confluent, Karapace, Apicurio's
//! ccompat API, Redpanda, or Reflex's local `reflex-registry`).
//!
//! Written here rather than taken from `schema_registry_converter` because the workers decode
//! with `serde_avro_fast` (that crate decodes with `apache-avro`, several times slower here) and
//! need a negative cache so a flood of events with an unknown schema id does not become a flood
//! of registry calls. Schema references are not resolved yet.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use thiserror::Error;

use crate::secrets::Secret;
use crate::ErrorClass;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// An error and its causes, `a: b: c` (reqwest's top-level message hides "connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("schema id {id} is not in the registry at {url}: the producer used another registry, or the schema was deleted")]
    UnknownId { id: u32, url: String },
    #[error("subject `{subject}` is not in the registry at {url}: register it first (`reflexctl schemas register`)")]
    UnknownSubject { subject: String, url: String },
    #[error("schema id {id} is not a usable Avro schema: {message}")]
    Unusable { id: u32, message: String },
    #[error("schema registry at {url} is unreachable: {message} (check `registry.url` and that the registry runs)")]
    Unavailable { url: String, message: String },
    #[error("schema registry at {url} answered {status}: {body}")]
    Rejected {
        url: String,
        status: u16,
        body: String,
    },
}

impl RegistryError {
    /// The taxonomy class: an unreachable registry is transient, a missing schema is a schema error.
    pub fn class(&self) -> ErrorClass {
        match self {
            RegistryError::Unavailable { .. } => ErrorClass::Transient,
            RegistryError::Rejected { status, .. } if *status >= 500 => ErrorClass::Transient,
            // Our credentials are wrong or missing: a setup problem, not the event's fault.
            RegistryError::Rejected {
                status: 401 | 403, ..
            } => ErrorClass::Transient,
            _ => ErrorClass::Schema,
        }
    }
}

/// A schema fetched by id, parsed once for the fast decoder.
pub struct RegisteredSchema {
    pub id: u32,
    /// The schema's JSON text as the registry returned it.
    pub text: String,
    /// Parsed for `serde_avro_fast` (the hot-path decoder).
    pub fast: serde_avro_fast::Schema,
}

impl std::fmt::Debug for RegisteredSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredSchema")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// One version of a subject.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: i32,
    pub id: u32,
    pub schema: String,
}

#[derive(Deserialize)]
struct SchemaById {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
struct Registered {
    id: u32,
}

#[derive(Deserialize)]
struct Compatibility {
    is_compatible: bool,
    #[serde(default)]
    messages: Vec<String>,
}

/// Caching registry client; cheap to clone (shared caches).
#[derive(Clone)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
    by_id: Arc<RwLock<HashMap<u32, Arc<RegisteredSchema>>>>,
    unknown: Arc<RwLock<HashMap<u32, Instant>>>,
    negative_ttl: Duration,
    /// HTTP basic auth (`user`, password), sent on every request.
    auth: Option<(String, Secret)>,
}

/// Environment variable with registry basic-auth credentials `user:password` (the form of
/// Confluent clients' `basic.auth.user.info`).
pub const BASIC_AUTH_ENV: &str = "REFLEX_REGISTRY_BASIC_AUTH";
/// Environment variable naming a file that holds `user:password`.
pub const BASIC_AUTH_FILE_ENV: &str = "REFLEX_REGISTRY_BASIC_AUTH_FILE";

/// Basic-auth credentials from [`BASIC_AUTH_ENV`] or [`BASIC_AUTH_FILE_ENV`] (looked up with
/// `env`), if either is set. The error names the variable, never the value.
pub fn basic_auth_from_env(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(String, Secret)>, String> {
    let (source, secret) = if let Some(path) = env(BASIC_AUTH_FILE_ENV).filter(|v| !v.is_empty()) {
        let secret = crate::secrets::resolve_with(&format!("file:{path}"), env)
            .map_err(|e| format!("{BASIC_AUTH_FILE_ENV}: {e}"))?;
        (BASIC_AUTH_FILE_ENV, secret)
    } else if let Some(v) = env(BASIC_AUTH_ENV).filter(|v| !v.is_empty()) {
        (BASIC_AUTH_ENV, Secret::new(v))
    } else {
        return Ok(None);
    };
    let text = secret
        .expose_str()
        .ok_or_else(|| format!("{source}: not UTF-8"))?;
    let (user, password) = text
        .split_once(':')
        .ok_or_else(|| format!("{source}: expected `user:password`"))?;
    Ok(Some((user.to_string(), Secret::new(password))))
}

impl RegistryClient {
    /// `url` is the registry's base URL, e.g. `http://127.0.0.1:8081`. Basic-auth credentials
    /// come from [`BASIC_AUTH_ENV`] / [`BASIC_AUTH_FILE_ENV`] when set (an unreadable one is
    /// logged by name and ignored, and the registry's 401 then says what is wrong). Credentials
    /// written into the URL (`http://user:pass@host`) are moved out of it, so they never appear
    /// in error messages; prefer the environment.
    pub fn new(url: &str, timeout: Duration, negative_ttl: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        let mut base = url.trim_end_matches('/').to_string();
        let mut auth = None;
        if let Ok(mut parsed) = reqwest::Url::parse(&base) {
            if !parsed.username().is_empty() {
                auth = Some((
                    parsed.username().to_string(),
                    Secret::new(parsed.password().unwrap_or_default()),
                ));
                let _ = parsed.set_username("");
                let _ = parsed.set_password(None);
                base = parsed.as_str().trim_end_matches('/').to_string();
            }
        }
        match basic_auth_from_env(&|n| std::env::var(n).ok()) {
            Ok(Some(a)) => auth = Some(a),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "registry basic auth not used"),
        }
        Self {
            base,
            http,
            by_id: Arc::default(),
            unknown: Arc::default(),
            negative_ttl,
            auth,
        }
    }

    /// Uses HTTP basic auth on every request.
    pub fn with_basic_auth(mut self, user: &str, password: Secret) -> Self {
        self.auth = Some((user.to_string(), password));
        self
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// The schema for `id`, from cache or the registry. Unknown ids are remembered for the
    /// negative-cache TTL.
    pub async fn schema_by_id(&self, id: u32) -> Result<Arc<RegisteredSchema>, RegistryError> {
        if let Some(hit) = self.cached(id) {
            return Ok(hit);
        }
        if let Some(since) = self.unknown.read().ok().and_then(|m| m.get(&id).copied()) {
            if since.elapsed() < self.negative_ttl {
                return Err(self.unknown_id(id));
            }
        }
        let response = self
            .send(self.http.get(format!("{}/schemas/ids/{id}", self.base)))
            .await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            if let Ok(mut m) = self.unknown.write() {
                m.insert(id, Instant::now());
            }
            return Err(self.unknown_id(id));
        }
        let body: SchemaById = self.json(response).await?;
        if let Some(kind) = body.schema_type.filter(|k| k != "AVRO") {
            return Err(RegistryError::Unusable {
                id,
                message: format!("it is a {kind} schema; Reflex workers read Avro"),
            });
        }
        let fast = body
            .schema
            .parse::<serde_avro_fast::Schema>()
            .map_err(|e| RegistryError::Unusable {
                id,
                message: e.to_string(),
            })?;
        let schema = Arc::new(RegisteredSchema {
            id,
            text: body.schema,
            fast,
        });
        if let Ok(mut m) = self.by_id.write() {
            m.insert(id, schema.clone());
        }
        Ok(schema)
    }

    /// Puts a schema in the cache as if fetched (offline use, benchmarks, tests).
    pub fn preload(&self, id: u32, text: &str) -> Result<(), RegistryError> {
        let fast =
            text.parse::<serde_avro_fast::Schema>()
                .map_err(|e| RegistryError::Unusable {
                    id,
                    message: e.to_string(),
                })?;
        if let Ok(mut m) = self.by_id.write() {
            m.insert(
                id,
                Arc::new(RegisteredSchema {
                    id,
                    text: text.to_string(),
                    fast,
                }),
            );
        }
        Ok(())
    }

    fn cached(&self, id: u32) -> Option<Arc<RegisteredSchema>> {
        self.by_id.read().ok()?.get(&id).cloned()
    }

    fn unknown_id(&self, id: u32) -> RegistryError {
        RegistryError::UnknownId {
            id,
            url: self.base.clone(),
        }
    }

    /// The latest version of `subject`.
    pub async fn latest(&self, subject: &str) -> Result<SubjectVersion, RegistryError> {
        let response = self
            .send(
                self.http
                    .get(format!("{}/subjects/{subject}/versions/latest", self.base)),
            )
            .await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(RegistryError::UnknownSubject {
                subject: subject.to_string(),
                url: self.base.clone(),
            });
        }
        self.json(response).await
    }

    /// Registers `schema` under `subject`; returns its global id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let response = self
            .send(
                self.http
                    .post(format!("{}/subjects/{subject}/versions", self.base))
                    .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                    .body(json!({ "schema": schema, "schemaType": "AVRO" }).to_string()),
            )
            .await?;
        let registered: Registered = self.json(response).await?;
        Ok(registered.id)
    }

    /// Whether `schema` is compatible with the latest version of `subject` under the subject's
    /// compatibility level; with the registry's reasons when it is not.
    pub async fn check_compatibility(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<(bool, Vec<String>), RegistryError> {
        let response = self
            .send(
                self.http
                    .post(format!(
                        "{}/compatibility/subjects/{subject}/versions/latest?verbose=true",
                        self.base
                    ))
                    .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                    .body(json!({ "schema": schema, "schemaType": "AVRO" }).to_string()),
            )
            .await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            // No versions yet: anything is compatible, as Confluent answers.
            return Ok((true, Vec::new()));
        }
        let c: Compatibility = self.json(response).await?;
        Ok((c.is_compatible, c.messages))
    }

    /// All subjects.
    pub async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        let response = self
            .send(self.http.get(format!("{}/subjects", self.base)))
            .await?;
        self.json(response).await
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let request = match &self.auth {
            // reqwest marks the Authorization header sensitive (hidden from its Debug output).
            Some((user, password)) => {
                request.basic_auth(user, Some(String::from_utf8_lossy(password.expose())))
            }
            None => request,
        };
        request
            .header(reqwest::header::ACCEPT, CONTENT_TYPE)
            .send()
            .await
            .map_err(|e| RegistryError::Unavailable {
                url: self.base.clone(),
                message: error_chain(&e),
            })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        response: reqwest::Response,
    ) -> Result<T, RegistryError> {
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| RegistryError::Unavailable {
                url: self.base.clone(),
                message: e.to_string(),
            })?;
        if !status.is_success() {
            return Err(RegistryError::Rejected {
                url: self.base.clone(),
                status: status.as_u16(),
                body,
            });
        }
        serde_json::from_str(&body).map_err(|e| RegistryError::Rejected {
            url: self.base.clone(),
            status: status.as_u16(),
            body: format!("unexpected response ({e}): {body}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server (real socket) that records the request head and answers 404.
    async fn capture_one() -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = sock.read(&mut buf).await.unwrap();
            let body = r#"{"error_code":40403,"message":"not found"}"#;
            let reply = format!(
                "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (format!("http://{addr}"), task)
    }

    #[tokio::test]
    async fn basic_auth_is_sent_and_never_in_messages() {
        let (url, task) = capture_one().await;
        let with_creds = url.replace("http://", "http://svc:s3cr3t-pw@");
        let client = RegistryClient::new(&with_creds, Duration::from_secs(2), Duration::ZERO);
        assert_eq!(client.url(), url, "credentials are moved out of the URL");
        let err = client.schema_by_id(9).await.unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        let head = task.await.unwrap().to_ascii_lowercase();
        // base64("svc:s3cr3t-pw")
        assert!(
            head.contains("authorization: basic c3zjonmzy3izdc1wdw=="),
            "{head}"
        );
    }

    #[test]
    fn basic_auth_from_env_or_file() {
        let env = |n: &str| (n == BASIC_AUTH_ENV).then(|| "u:p:w".to_string());
        let (user, pw) = basic_auth_from_env(&env).unwrap().unwrap();
        assert_eq!((user.as_str(), pw.expose()), ("u", &b"p:w"[..]));
        assert!(basic_auth_from_env(&|_| None).unwrap().is_none());
        let bad = |n: &str| (n == BASIC_AUTH_ENV).then(|| "nocolon".to_string());
        let e = basic_auth_from_env(&bad).unwrap_err();
        assert!(e.contains(BASIC_AUTH_ENV) && !e.contains("nocolon"), "{e}");
    }
}
