//! The HTTP API: Confluent's routes, bodies, status codes and error bodies.

use std::collections::HashMap;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::compat::Compatibility;
use crate::error::RegistryError;
use crate::schema::{self, AvroSchema};
use crate::store::{Listing, Store, SubjectVersion, VersionSpec};

/// The content type of every answer.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Request bodies up to this size are read (schemas are small; Confluent's limit is similar).
const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// The registry's routes over `store`.
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/versions", get(versions_of_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_of_id))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compatibility_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatibility_version),
        )
        .route(
            "/config",
            get(get_global_config)
                .put(put_global_config)
                .delete(delete_global_config),
        )
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route("/mode", get(mode))
        .route("/mode/{subject}", get(mode))
        .route("/contexts", get(contexts))
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(log_request))
        .with_state(store)
}

type Reply = Result<Response, RegistryError>;

fn reply(value: impl serde::Serialize) -> Response {
    let body = serde_json::to_string(&value).unwrap_or_else(|_| "{}".to_string());
    raw(body)
}

/// `body` is already JSON (a stored schema text).
fn raw(body: String) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({ "error_code": self.error_code(), "message": self.to_string() });
        let mut response = reply(body);
        *response.status_mut() = status;
        response
    }
}

async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::warn!(%method, %uri, status, elapsed_ms, "request failed");
    } else {
        tracing::debug!(%method, %uri, status, elapsed_ms, "request");
    }
    response
}

// ---- extractors that answer Confluent-style errors instead of axum's plain-text rejections ----

/// Path parameters.
struct Params<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Params<T> {
    type Rejection = RegistryError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Params(value)),
            Err(e) => Err(RegistryError::BadRequest(e.body_text())),
        }
    }
}

/// Query parameters; unknown ones are ignored and a malformed query counts as empty.
struct Flags(HashMap<String, String>);

impl Flags {
    /// `true`/`True`/`TRUE` are true; anything else (or absent) is false.
    fn flag(&self, name: &str) -> bool {
        self.0
            .get(name)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// `?deleted=true` / `?deletedOnly=true` (Python clients spell it `deleted_only`).
    fn listing(&self) -> Listing {
        if self.flag("deletedOnly") || self.flag("deleted_only") {
            Listing::DeletedOnly
        } else if self.flag("deleted") {
            Listing::WithDeleted
        } else {
            Listing::Live
        }
    }

    /// `?offset=N&limit=M` (a negative or absent limit means all).
    fn page<T>(&self, items: Vec<T>) -> Vec<T> {
        let offset = self
            .get("offset")
            .and_then(|o| o.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let limit = self
            .get("limit")
            .and_then(|l| l.trim().parse::<i64>().ok())
            .and_then(|l| usize::try_from(l).ok())
            .unwrap_or(usize::MAX);
        items.into_iter().skip(offset).take(limit).collect()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Flags {
    type Rejection = RegistryError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Flags(
            Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
                .map(|Query(q)| q)
                .unwrap_or_default(),
        ))
    }
}

/// A JSON body, whatever the request's content type says (Confluent clients send
/// `application/vnd.schemaregistry.v1+json`, `application/json` or
/// `application/octet-stream`).
struct Body<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = RegistryError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|e| RegistryError::BadRequest(e.body_text()))?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| RegistryError::BadRequest(format!("Unrecognized request body: {e}")))?;
        serde_json::from_value(value)
            .map(Body)
            .map_err(|e| RegistryError::Unprocessable(format!("Unrecognized request body: {e}")))
    }
}

/// The body of a registration, lookup or compatibility check.
#[derive(Debug, Deserialize)]
struct SchemaRequest {
    #[serde(default)]
    schema: Option<String>,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<Value>>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default, rename = "ruleSet")]
    rule_set: Option<Value>,
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    version: Option<i64>,
}

/// Null, `{}`, `[]`, or an object of only such values.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.values().all(is_empty),
        _ => false,
    }
}

impl SchemaRequest {
    /// Checks what this registry supports, then parses the schema.
    fn into_avro(self) -> Result<AvroSchema, RegistryError> {
        if let Some(kind) = self.schema_type.as_deref() {
            if !kind.eq_ignore_ascii_case("AVRO") {
                return Err(RegistryError::InvalidSchema(format!(
                    "schemaType {kind} is not supported: only AVRO schemas are supported by this \
                     local registry (use Confluent, Karapace, Apicurio or Redpanda for {kind})"
                )));
            }
        }
        if self.references.as_ref().is_some_and(|r| !r.is_empty()) {
            return Err(RegistryError::InvalidSchema(
                "references are not supported by the local registry".to_string(),
            ));
        }
        if self.metadata.as_ref().is_some_and(|m| !is_empty(m)) {
            return Err(RegistryError::InvalidSchema(
                "metadata is not supported by the local registry".to_string(),
            ));
        }
        if self.rule_set.as_ref().is_some_and(|r| !is_empty(r)) {
            return Err(RegistryError::InvalidSchema(
                "rule sets are not supported by the local registry".to_string(),
            ));
        }
        if self.id.is_some_and(|id| id >= 0) || self.version.is_some_and(|v| v >= 1) {
            return Err(RegistryError::OperationNotPermitted(
                "registering with an explicit id or version (IMPORT mode) is not supported by \
                 the local registry"
                    .to_string(),
            ));
        }
        schema::parse(self.schema.as_deref().unwrap_or_default())
    }
}

#[derive(Debug, Deserialize)]
struct ConfigRequest {
    #[serde(default)]
    compatibility: Option<String>,
    #[serde(default, rename = "compatibilityLevel")]
    compatibility_level: Option<String>,
}

impl ConfigRequest {
    fn level(&self) -> Result<Compatibility, RegistryError> {
        self.compatibility
            .as_deref()
            .or(self.compatibility_level.as_deref())
            .and_then(Compatibility::parse)
            .ok_or(RegistryError::InvalidCompatibilityLevel)
    }
}

fn parse_id(raw: &str) -> Result<u32, RegistryError> {
    raw.trim()
        .parse::<u32>()
        .map_err(|_| RegistryError::SchemaIdNotFound(raw.to_string()))
}

fn version_body(v: SubjectVersion) -> Response {
    reply(json!({
        "subject": v.subject,
        "version": v.version,
        "id": v.id,
        "schema": v.schema,
    }))
}

// ---- handlers ----

async fn root() -> Response {
    reply(json!({}))
}

async fn schema_types() -> Response {
    reply(json!(["AVRO"]))
}

async fn no_such_endpoint() -> RegistryError {
    RegistryError::NoSuchEndpoint
}

async fn method_not_allowed() -> RegistryError {
    RegistryError::MethodNotAllowed
}

async fn schema_by_id(
    State(store): State<Store>,
    Params(id): Params<String>,
    flags: Flags,
) -> Reply {
    let id = parse_id(&id)?;
    let schema = store.schema_by_id(id).await?;
    let mut body = json!({ "schema": schema });
    if flags.flag("fetchMaxId") {
        body["maxId"] = json!(store.max_id().await);
    }
    Ok(reply(body))
}

async fn raw_schema_by_id(State(store): State<Store>, Params(id): Params<String>) -> Reply {
    Ok(raw(store.schema_by_id(parse_id(&id)?).await?))
}

async fn versions_of_id(
    State(store): State<Store>,
    Params(id): Params<String>,
    flags: Flags,
) -> Reply {
    let pairs = store
        .versions_of_id(parse_id(&id)?, flags.flag("deleted"))
        .await?;
    let body: Vec<Value> = pairs
        .into_iter()
        .filter(|(subject, _)| flags.get("subject").is_none_or(|s| s == subject))
        .map(|(subject, version)| json!({ "subject": subject, "version": version }))
        .collect();
    Ok(reply(flags.page(body)))
}

async fn subjects_of_id(
    State(store): State<Store>,
    Params(id): Params<String>,
    flags: Flags,
) -> Reply {
    let pairs = store
        .versions_of_id(parse_id(&id)?, flags.flag("deleted"))
        .await?;
    let mut subjects: Vec<String> = pairs
        .into_iter()
        .map(|(subject, _)| subject)
        .filter(|subject| flags.get("subject").is_none_or(|s| s == subject))
        .collect();
    subjects.dedup();
    Ok(reply(flags.page(subjects)))
}

async fn list_subjects(State(store): State<Store>, flags: Flags) -> Response {
    let subjects = store
        .subjects(flags.listing(), flags.get("subjectPrefix"))
        .await;
    reply(flags.page(subjects))
}

async fn list_versions(
    State(store): State<Store>,
    Params(subject): Params<String>,
    flags: Flags,
) -> Reply {
    let versions = store.versions(&subject, flags.listing()).await?;
    Ok(reply(flags.page(versions)))
}

async fn register(
    State(store): State<Store>,
    Params(subject): Params<String>,
    Body(request): Body<SchemaRequest>,
) -> Reply {
    let schema = request.into_avro()?;
    let id = store.register(&subject, &schema).await?;
    Ok(reply(json!({ "id": id })))
}

async fn lookup(
    State(store): State<Store>,
    Params(subject): Params<String>,
    flags: Flags,
    Body(request): Body<SchemaRequest>,
) -> Reply {
    let deleted = flags.flag("deleted");
    store.require_subject(&subject, deleted).await?;
    let schema = request.into_avro()?;
    Ok(version_body(
        store.lookup(&subject, &schema, deleted).await?,
    ))
}

async fn get_version(
    State(store): State<Store>,
    Params((subject, version)): Params<(String, String)>,
    flags: Flags,
) -> Reply {
    let spec = VersionSpec::parse(&version)?;
    Ok(version_body(
        store.version(&subject, spec, flags.flag("deleted")).await?,
    ))
}

async fn get_version_schema(
    State(store): State<Store>,
    Params((subject, version)): Params<(String, String)>,
    flags: Flags,
) -> Reply {
    let spec = VersionSpec::parse(&version)?;
    Ok(raw(store
        .version(&subject, spec, flags.flag("deleted"))
        .await?
        .schema))
}

async fn referenced_by(
    State(store): State<Store>,
    Params((subject, version)): Params<(String, String)>,
) -> Reply {
    let spec = VersionSpec::parse(&version)?;
    store.version(&subject, spec, false).await?;
    // Schema references are not supported, so nothing refers to anything.
    Ok(reply(Vec::<u32>::new()))
}

async fn delete_subject(
    State(store): State<Store>,
    Params(subject): Params<String>,
    flags: Flags,
) -> Reply {
    Ok(reply(
        store
            .delete_subject(&subject, flags.flag("permanent"))
            .await?,
    ))
}

async fn delete_version(
    State(store): State<Store>,
    Params((subject, version)): Params<(String, String)>,
    flags: Flags,
) -> Reply {
    let spec = VersionSpec::parse(&version)?;
    Ok(reply(
        store
            .delete_version(&subject, spec, flags.flag("permanent"))
            .await?,
    ))
}

fn compatibility_body(messages: Vec<String>, verbose: bool) -> Response {
    if verbose {
        reply(json!({ "is_compatible": messages.is_empty(), "messages": messages }))
    } else {
        reply(json!({ "is_compatible": messages.is_empty() }))
    }
}

async fn compatibility_version(
    State(store): State<Store>,
    Params((subject, version)): Params<(String, String)>,
    flags: Flags,
    Body(request): Body<SchemaRequest>,
) -> Reply {
    let spec = VersionSpec::parse(&version)?;
    let schema = request.into_avro()?;
    let messages = store
        .test_compatibility(&subject, &schema, Some(spec))
        .await?;
    Ok(compatibility_body(messages, flags.flag("verbose")))
}

async fn compatibility_all(
    State(store): State<Store>,
    Params(subject): Params<String>,
    flags: Flags,
    Body(request): Body<SchemaRequest>,
) -> Reply {
    let schema = request.into_avro()?;
    let messages = store.test_compatibility(&subject, &schema, None).await?;
    Ok(compatibility_body(messages, flags.flag("verbose")))
}

async fn get_global_config(State(store): State<Store>) -> Response {
    reply(json!({ "compatibilityLevel": store.global_compatibility().await }))
}

async fn put_global_config(
    State(store): State<Store>,
    Body(request): Body<ConfigRequest>,
) -> Reply {
    let level = request.level()?;
    store.set_global_compatibility(level).await?;
    Ok(reply(json!({ "compatibility": level })))
}

async fn delete_global_config(State(store): State<Store>) -> Reply {
    let old = store.reset_global_compatibility().await?;
    Ok(reply(json!({ "compatibilityLevel": old })))
}

async fn get_subject_config(
    State(store): State<Store>,
    Params(subject): Params<String>,
    flags: Flags,
) -> Reply {
    let level = match store.subject_compatibility(&subject).await {
        Some(level) => level,
        None if flags.flag("defaultToGlobal") => store.global_compatibility().await,
        None => return Err(RegistryError::SubjectConfigNotFound(subject)),
    };
    Ok(reply(json!({ "compatibilityLevel": level })))
}

async fn put_subject_config(
    State(store): State<Store>,
    Params(subject): Params<String>,
    Body(request): Body<ConfigRequest>,
) -> Reply {
    let level = request.level()?;
    store.set_subject_compatibility(&subject, level).await?;
    Ok(reply(json!({ "compatibility": level })))
}

async fn delete_subject_config(
    State(store): State<Store>,
    Params(subject): Params<String>,
) -> Reply {
    let old = store.delete_subject_compatibility(&subject).await?;
    Ok(reply(json!({ "compatibilityLevel": old })))
}

async fn mode() -> Response {
    reply(json!({ "mode": "READWRITE" }))
}

async fn contexts() -> Response {
    reply(json!(["."]))
}
