//! `reflex-registry`: a Confluent-compatible Schema Registry for **local development and tests
//! only**.
//!
//! Reflex's tests and developers need a schema registry, and no real one can run on their
//! machines (no JVM, no containers). This crate is a small stand-in that speaks the subset of
//! Confluent's REST API that Reflex, `confluent-kafka`'s Python client and its Avro serde use,
//! with Confluent's status codes, error codes and semantics, so that code tested against it
//! works unchanged against Confluent, Karapace, Apicurio (ccompat) or Redpanda in production.
//! It is not a production registry: one process, one lock, a JSON data file, no auth, no
//! clustering.
//!
//! # What it implements
//!
//! Only **Avro** schemas, without schema references (`schemaType` PROTOBUF/JSON and non-empty
//! `references`, `metadata` or `ruleSet` are refused with 42201).
//!
//! | Endpoint | Notes |
//! | --- | --- |
//! | `GET /` | `{}` |
//! | `GET /schemas/types` | `["AVRO"]` |
//! | `GET /schemas/ids/{id}` | `{"schema": …}`; `?fetchMaxId=true` adds `maxId`; other query parameters (`subject`, `format`) are ignored |
//! | `GET /schemas/ids/{id}/schema` | the schema itself |
//! | `GET /schemas/ids/{id}/versions`, `…/subjects` | where the id is used (`?deleted=true`) |
//! | `GET /subjects` | `?deleted=true`, `?deletedOnly=true`, `?subjectPrefix=`, `?offset=&limit=` |
//! | `GET /subjects/{s}/versions` | version numbers (same filters) |
//! | `POST /subjects/{s}/versions` | register → `{"id": N}` (compatibility-checked; `?normalize` ignored) |
//! | `GET /subjects/{s}/versions/{v\|latest\|-1}` | `{"subject","version","id","schema"}` |
//! | `GET /subjects/{s}/versions/{v}/schema`, `…/referencedby` | the schema; `[]` |
//! | `DELETE /subjects/{s}/versions/{v}` | soft, or `?permanent=true` after a soft delete |
//! | `POST /subjects/{s}` | look a schema up in a subject |
//! | `DELETE /subjects/{s}` | soft, or `?permanent=true` after a soft delete |
//! | `POST /compatibility/subjects/{s}/versions[/{v}]` | `{"is_compatible"}`, `?verbose=true` adds `messages` |
//! | `GET/PUT/DELETE /config`, `GET/PUT/DELETE /config/{s}` | compatibility levels (`?defaultToGlobal=true`) |
//! | `GET /mode`, `GET /mode/{s}` | always `READWRITE` |
//! | `GET /contexts` | `["."]` |
//!
//! Errors are `{"error_code": N, "message": …}` with the HTTP status given by the code's first
//! three digits (40401 subject not found, 40402 version not found, 40403 schema not found, 409
//! incompatible, 42201 invalid schema, 42202 invalid version, 42203 invalid compatibility level,
//! 50001 storage error, …), see [`RegistryError`].
//!
//! # Semantics
//!
//! - Ids are global and start at 1; the same schema gets the same id under every subject.
//!   "Same schema" follows Confluent: whitespace, key order and the spelling of names do not
//!   matter, `doc`, `default`, `logicalType`, aliases and custom properties do (see
//!   [`schema`]).
//! - Registering a schema the subject already has returns its id without a new version.
//! - Otherwise the schema is checked with `apache_avro`'s schema resolution rules against the
//!   subject's level (subject-level config, else the global one, BACKWARD by default): BACKWARD
//!   = the new schema reads the previous one's data, FORWARD = the previous one reads the new
//!   one's, FULL = both; the `_TRANSITIVE` levels check every live version, the others only
//!   the latest.
//! - State survives restarts when a data file is given ([`Store::open`]).
//!
//! # Use
//!
//! `reflex-registry --listen 127.0.0.1:8081 --data-file ./registry.json`; or in-process with
//! [`serve`] (see `tests/api.rs`).

pub mod api;
pub mod compat;
pub mod error;
pub mod schema;
pub mod store;

use std::future::Future;

pub use api::router;
pub use compat::Compatibility;
pub use error::{RegistryError, StoreError};
pub use store::{Listing, Store, SubjectVersion, VersionSpec};

/// Serves the registry on `listener` until `shutdown` completes, then finishes the requests in
/// flight and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Store,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(store))
        .with_graceful_shutdown(shutdown)
        .await
}
