//! Reflex contracts shared by every worker and tool.
//!
//! - [`actions`]: the enricher → actor contract (action request/outcome records, idempotency key).
//! - [`approvals`]: pending-approval and decision records (the actor and `reflexctl approvals`).
//!
//! - [`wire`]: the Confluent wire format (magic byte, schema id, Avro datum).
//! - [`headers`]: CloudEvents Kafka-binding header names and Reflex's own headers, in one place.
//! - [`error`]: the error taxonomy every worker uses; the class decides retry vs dead letter.
//! - [`registry`]: a small Schema Registry client with a positive and a negative cache.
//! - [`avro`]: JSON ⇄ Avro helpers for tools and tests (the hot path decodes with
//!   `serde_avro_fast`, see `reflex-router`).
//! - [`topics`]: the `topics/*.toml` declarations.
//! - [`metrics`]: every metric name the fleet emits.
//! - [`template`]: strict Jinja templates for action bindings and calls.
//! - [`signing`]: HMAC-SHA256 event signatures with key ids (rotation), verified by the router.
//! - [`secrets`]: secrets from `env:NAME` / `file:PATH` only, redacted when formatted.
//! - [`limits`]: record size and header limits, rule complexity limits.

pub mod actions;
pub mod approvals;
pub mod avro;
pub mod dead_letter;
pub mod error;
pub mod headers;
pub mod limits;
pub mod metrics;
pub mod redis_conn;
pub mod registry;
pub mod secrets;
pub mod signing;
pub mod template;
pub mod topics;

/// The 1-based line of byte offset `byte` in `text`, for config errors that name a line.
pub fn line_of(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())].matches('\n').count() + 1
}
pub mod wire;

pub use error::ErrorClass;
pub use headers::Headers;
