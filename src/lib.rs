//! Reflex: an event-driven automation fleet on Kafka.
//!
//! This root package only hosts the end-to-end tests (`tests/`) and benchmarks (`benches/`).
//! The code lives in `crates/`: `reflex-core` (contracts), `reflex-runtime` (the shared loop),
//! `reflex-router`, `reflex-registry` (local Schema Registry), `reflexctl` (CLI) and
//! `reflex-testkit`. See ARCHITECTURE.md.
