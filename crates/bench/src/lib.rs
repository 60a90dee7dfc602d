//! The harness that `reflex-bench`'s commands share: the load benchmark (`reflex-bench`), the
//! main job (`reflex-bench main-job`) and the fault suite (`reflex-bench faults`) all start the
//! workers as processes, publish events, read topics back and look at the workers while they
//! run. One implementation of each of those lives here:
//!
//! - [`proc`]: a worker process in its own process group, its log captured to a file, its
//!   `/metrics` address read from that log, signals and bounded waits;
//! - [`worker_config`]: the one place that turns harness settings into the workers' `REFLEX_*`
//!   configuration overrides;
//! - [`sample`]: CPU seconds and RSS of processes and process groups, from `/proc`;
//! - [`publish`]: the producer, a rate pacer and delivery tracking;
//! - [`kafka`]: high watermarks, reading offset ranges back, group lag (via `reflex-lag`);
//! - [`pack`]: a scenario pack (`examples/<pack>`) read with the workers' own config types;
//! - [`target`]: the fake target API the actor calls, which records each `Idempotency-Key`.
//!
//! Metrics are parsed with `reflexctl::prom`, the one Prometheus parser of the project.

pub mod kafka;
pub mod pack;
pub mod proc;
pub mod publish;
pub mod sample;
pub mod target;
pub mod worker_config;

use std::path::PathBuf;

/// What a harness operation could not do.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Kafka {
        what: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("{path}: {message}")]
    Pack { path: PathBuf, message: String },
    #[error("{0}")]
    Other(String),
}

impl HarnessError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn kafka(what: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        Self::Kafka {
            what: what.into(),
            source,
        }
    }
}
