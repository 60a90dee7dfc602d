//! The main job's load: the pack's recorded events (`[events] file`), drawn at random with a
//! seed, each published with its own `ce_id` (`mj-<run>-<n>`), about `--dup-ratio` of them
//! published twice (same `ce_id`: the actor must suppress the second) and `--poison-ratio`
//! replaced by a value that is not Avro (the router must dead-letter it).
//!
//! Drawing from the recorded events keeps the generator pack-agnostic: what a pack exercises
//! is what its author recorded (the packs' generate.py stay for publishing larger sets by hand).
//! The draw is a pure function of the seed ([`plan`]), so the fault suite knows beforehand which
//! events the rules drop.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use rand::{Rng as _, SeedableRng as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use reflex_bench::pack::Pack;
use reflex_bench::publish::{Pacer, Tracker};
use reflex_core::registry::RegistryClient;
use reflex_core::wire::encode_frame;
use reflexctl::publish::{encode, event_headers, key_from_field, to_owned_headers};

/// A value the router cannot decode: a producer bug it must dead-letter.
pub const POISON: &[u8] = b"not avro: a producer bug the router must dead-letter";

/// What event `n` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    /// Index into the recorded events.
    pub recorded: usize,
    pub poison: bool,
    /// Published twice with the same `ce_id`.
    pub twice: bool,
}

/// The events of a run: `count` draws from `recorded` events.
pub fn plan(seed: u64, count: u64, recorded: usize, poison: f64, dup: f64) -> Vec<Planned> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let recorded = rng.random_range(0..recorded.max(1));
            let roll: f64 = rng.random();
            Planned {
                recorded,
                poison: roll < poison,
                twice: roll > 1.0 - dup,
            }
        })
        .collect()
}

/// What the generator did, shared with the live view, the fault injectors and the check.
#[derive(Default)]
pub struct Published {
    pub sent: AtomicU64,
    pub errors: AtomicU64,
    pub first_error: Mutex<Option<String>>,
    /// ce_id → records the broker acknowledged.
    pub acked: Mutex<HashMap<String, u32>>,
    pub poison: Mutex<BTreeSet<String>>,
    pub duplicated: Mutex<BTreeSet<String>>,
    /// ce_id → tag of records a fault scenario published besides the load.
    pub injected: Mutex<BTreeMap<String, String>>,
    pub started: OnceLock<Instant>,
    pub ended: OnceLock<Instant>,
    /// Set to stop publishing early (Ctrl-C).
    pub stop: AtomicBool,
}

impl Published {
    pub fn acked_total(&self) -> u64 {
        self.acked.lock().unwrap().values().map(|v| *v as u64).sum()
    }
}

/// Publishes the run's events; [`Generator::inject`] publishes extra records meanwhile.
pub struct Generator {
    producer: FutureProducer,
    tracker: Tracker<String>,
    topic: String,
    source: String,
    event_type: String,
    /// (key, Confluent-framed value) of each recorded event.
    encoded: Vec<(Option<String>, Vec<u8>)>,
    run_id: String,
    pub published: Arc<Published>,
}

impl Generator {
    pub async fn new(
        pack: &Pack,
        bootstrap: &str,
        registry: &RegistryClient,
        run_id: &str,
    ) -> anyhow::Result<Self> {
        let latest = registry
            .latest(&pack.value_subject)
            .await
            .with_context(|| {
                format!(
                    "the value schema of {} (subject {})",
                    pack.topic, pack.value_subject
                )
            })?;
        let schema = reflex_core::avro::parse_schema(&latest.schema)
            .with_context(|| format!("subject {}", pack.value_subject))?;
        let mut encoded = Vec::new();
        for (i, doc) in pack.recorded_events()?.iter().enumerate() {
            let what = format!("recorded event {} of {}", i + 1, pack.events_file.display());
            let datum = encode(&schema, doc).map_err(|e| anyhow!("{what}: {e}"))?;
            let key = match &pack.key_field {
                Some(f) => Some(key_from_field(doc, f).with_context(|| what.clone())?),
                None => None,
            };
            encoded.push((key, encode_frame(latest.id, &datum)));
        }
        if encoded.is_empty() {
            anyhow::bail!("{} holds no events", pack.events_file.display());
        }
        let published = Arc::new(Published::default());
        let tracker = {
            let p = published.clone();
            Tracker::new(move |ce_id: String, delivery| match delivery {
                Ok(_) => *p.acked.lock().unwrap().entry(ce_id).or_default() += 1,
                Err(e) => {
                    p.errors.fetch_add(1, Ordering::Relaxed);
                    p.first_error.lock().unwrap().get_or_insert(e);
                }
            })
        };
        Ok(Self {
            producer: reflex_bench::publish::producer(bootstrap)?,
            tracker,
            topic: pack.topic.clone(),
            source: pack.source.clone(),
            event_type: pack.event_type.clone(),
            encoded,
            run_id: run_id.to_string(),
            published,
        })
    }

    pub fn recorded(&self) -> usize {
        self.encoded.len()
    }

    async fn produce(&self, ce_id: &str, key: Option<&str>, value: &[u8]) {
        let headers = to_owned_headers(&event_headers(ce_id, &self.source, &self.event_type, &[]));
        let mut record = FutureRecord::<str, [u8]>::to(&self.topic)
            .payload(value)
            .headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        let p = &self.published;
        p.sent.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self
            .tracker
            .send(&self.producer, record, ce_id.to_string())
            .await
        {
            p.errors.fetch_add(1, Ordering::Relaxed);
            p.first_error.lock().unwrap().get_or_insert(e.to_string());
        }
    }

    /// Publishes `plan` at `rate` events/s, then waits for every acknowledgement.
    pub async fn run(&self, plan: &[Planned], rate: f64) {
        let p = &self.published;
        let pacer = Pacer::new(Some(rate));
        let _ = p.started.set(pacer.started());
        let total = plan.len() as u64;
        let mut n = 0u64;
        'publish: while n < total {
            let due = pacer.due(total);
            while n < due {
                if p.stop.load(Ordering::Relaxed) {
                    break 'publish;
                }
                let planned = plan[n as usize];
                let ce_id = format!("mj-{}-{n}", self.run_id);
                let (key, value) = &self.encoded[planned.recorded];
                let value: &[u8] = if planned.poison {
                    p.poison.lock().unwrap().insert(ce_id.clone());
                    POISON
                } else {
                    value
                };
                self.produce(&ce_id, key.as_deref(), value).await;
                if planned.twice {
                    // A redelivery: same ce_id, same record.
                    p.duplicated.lock().unwrap().insert(ce_id.clone());
                    self.produce(&ce_id, key.as_deref(), value).await;
                }
                n += 1;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.settle().await;
        let _ = p.ended.set(Instant::now());
    }

    /// Publishes one extra record with its own ce_id; the check accounts for it like any
    /// other (it must end somewhere).
    pub async fn inject(&self, value: &[u8], tag: &str) -> String {
        let ce_id = {
            let mut injected = self.published.injected.lock().unwrap();
            let id = format!("mj-{}-x{}", self.run_id, injected.len());
            injected.insert(id.clone(), tag.to_string());
            id
        };
        self.produce(&ce_id, Some("injected"), value).await;
        ce_id
    }

    /// Waits (up to a minute) for the acknowledgements of everything sent so far.
    pub async fn settle(&self) {
        if !self.tracker.settle(Duration::from_secs(60)).await {
            eprintln!("[main-job] some publishes were not acknowledged within 60 s");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_a_function_of_the_seed_with_the_asked_ratios() {
        let a = plan(7, 20_000, 7, 0.01, 0.02);
        assert_eq!(a, plan(7, 20_000, 7, 0.01, 0.02));
        assert_ne!(a, plan(8, 20_000, 7, 0.01, 0.02));
        let poison = a.iter().filter(|p| p.poison).count();
        let twice = a.iter().filter(|p| p.twice).count();
        assert!((150..250).contains(&poison), "{poison}");
        assert!((320..480).contains(&twice), "{twice}");
        // Every recorded event is drawn.
        let drawn: BTreeSet<usize> = a.iter().map(|p| p.recorded).collect();
        assert_eq!(drawn.len(), 7);
    }
}
