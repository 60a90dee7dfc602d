//! Reflex contracts shared by every worker and tool.
//!
//! - [`wire`]: the Confluent wire format (magic byte, schema id, Avro datum).
//! - [`headers`]: CloudEvents Kafka-binding header names and Reflex's own headers, in one place.
//! - [`error`]: the error taxonomy every worker uses; the class decides retry vs dead letter.
//! - [`registry`]: a small Schema Registry client with a positive and a negative cache.
//! - [`avro`]: JSON ⇄ Avro helpers for tools and tests (the hot path decodes with
//!   `serde_avro_fast`, see `reflex-router`).
//! - [`topics`]: the `topics/*.toml` declarations.
//! - [`metrics`]: every metric name the fleet emits.

pub mod avro;
pub mod error;
pub mod headers;
pub mod metrics;
pub mod registry;
pub mod topics;
pub mod wire;

pub use error::ErrorClass;
pub use headers::Headers;
