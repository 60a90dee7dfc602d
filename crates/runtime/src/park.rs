//! Per-key parking: while an event of key K waits for a non-blocking retry (it went to the
//! dead-letter topic with a retryable class and the reprocessor will deliver it again), later
//! events of K are parked behind it (sent to the dead-letter topic too, in order, marked
//! [`PARKED_BEHIND`](reflex_core::headers::reflex::PARKED_BEHIND)) while other keys keep
//! flowing. When the reprocessor delivers them back, they are processed in their original order.
//!
//! State: per input partition, key → queue of `ce_id`s, head first. Only the replica that owns
//! the partition writes it, so it lives in memory and is written through to Redis (a hash per
//! partition, `runtime.state_url`) and reloaded after every rebalance. Without Redis it is kept
//! in process only: lost on restart, which can reorder a key's parked events once.
//!
//! Decisions for an event with key K and id X (events without a key or `ce_id` are never parked):
//! - a release marker (no value, [`RELEASE`](reflex_core::headers::reflex::RELEASE) = X): X leaves
//!   K's queue (the reprocessor gave up on it); never reaches the stage;
//! - X is the head of K's queue: process it; success or a final failure pops it, a retryable
//!   failure keeps it at the head;
//! - X is elsewhere in K's queue, or K has a queue: park X behind the head (appended if new);
//! - otherwise process; a retryable final failure makes X the head of a new queue.
//!
//! Where at-least-once forces it (a crash after a pop was written but before the event's outputs
//! were acknowledged) a key's order can break once; the actor's idempotency keeps effects single.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use redis::AsyncCommands;
use reflex_core::headers::{ce, reflex as rh};
use reflex_core::metrics as m;
use reflex_core::redis_conn::RedisConn;
use tokio::sync::Mutex;
use tracing::warn;

use crate::stage::Event;

/// A control record from the reprocessor, never given to a stage: no value and a
/// [`RELEASE`](rh::RELEASE) header.
pub fn is_release(event: &Event) -> bool {
    event.payload.is_none() && event.headers.get(rh::RELEASE).is_some()
}

/// What to do with an event before the stage sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not parked: process as usual.
    Process,
    /// The head of its key's queue (a redelivery): process, then [`Parking::settle_head`].
    ProcessHead,
    /// Park behind the event with this `ce_id`, due for redelivery with it at `not_before_ms`.
    Park { behind: String, not_before_ms: i64 },
    /// A release marker, handled here: finish it without processing.
    Control,
}

/// A std map with foldhash: these maps are looked up for every event, and SipHash showed in
/// the router's profile.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Topic → partition → state. Nested so that a lookup by the event's `&str` topic allocates
/// nothing (this runs for every event).
type Partitions = HashMap<String, HashMap<i32, PartitionState>>;

#[derive(Default)]
struct PartitionState {
    generation: u64,
    keys: HashMap<Bytes, Parked>,
}

/// One parked key: the queue of its events' ids, head first, and when the head is due again
/// (parked events are due no earlier, so they never cycle faster than their head).
#[derive(Debug, Clone, Default)]
struct Parked {
    ids: VecDeque<String>,
    not_before_ms: i64,
}

impl Parked {
    /// Redis value: the due time, then one id per line.
    fn encode(&self) -> String {
        let mut out = self.not_before_ms.to_string();
        for id in &self.ids {
            out.push('\n');
            out.push_str(id);
        }
        out
    }

    fn decode(text: &str) -> Parked {
        let mut lines = text.split('\n');
        let not_before_ms = lines.next().and_then(|l| l.parse().ok()).unwrap_or(0);
        Parked {
            ids: lines
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
            not_before_ms,
        }
    }
}

/// Parking state of this replica's partitions.
pub struct Parking {
    redis: Option<RedisConn>,
    prefix: String,
    stage: &'static str,
    partitions: Mutex<Partitions>,
    /// Keys with a queue, over all partitions (the gauge's value). Kept in process only while
    /// it is zero, nothing is parked: events are processed without taking the lock.
    parked_keys: AtomicUsize,
    /// Bumped on every rebalance: partitions loaded under an older generation are reloaded.
    generation: Arc<AtomicU64>,
}

impl Parking {
    /// `prefix` names the consumer group (`reflex:park:<group>`); without `redis` the state is
    /// in process only.
    pub fn new(
        redis: Option<RedisConn>,
        prefix: String,
        stage: &'static str,
        generation: Arc<AtomicU64>,
    ) -> Self {
        metrics::gauge!(m::PARKED_KEYS, "stage" => stage).set(0.0);
        metrics::counter!(m::PARKED_EVENTS, "stage" => stage).increment(0);
        Self {
            redis,
            prefix,
            stage,
            partitions: Mutex::new(HashMap::default()),
            parked_keys: AtomicUsize::new(0),
            generation,
        }
    }

    fn hash_key(&self, topic: &str, partition: i32) -> String {
        format!("{}:{topic}:{partition}", self.prefix)
    }

    /// Decides, and records parking of a new event (`Park` for an id not yet queued).
    pub async fn decide(&self, event: &Event) -> Decision {
        if is_release(event) {
            self.release(event).await;
            return Decision::Control;
        }
        // Without Redis this replica knows every parked key; with it, a partition gained in a
        // rebalance must be loaded before deciding, so the lock is taken.
        if self.redis.is_none() && self.parked_keys.load(Ordering::Acquire) == 0 {
            return Decision::Process;
        }
        let (Some(key), Some(id)) = (&event.key, event.headers.get_str(ce::ID)) else {
            return Decision::Process;
        };
        let mut partitions = self.partitions.lock().await;
        let state = self.load(&mut partitions, event).await;
        let Some(parked) = state.keys.get_mut(key) else {
            return Decision::Process;
        };
        let not_before_ms = parked.not_before_ms;
        match parked.ids.iter().position(|q| q == id) {
            Some(0) => Decision::ProcessHead,
            Some(_) => Decision::Park {
                behind: parked.ids[0].clone(),
                not_before_ms,
            },
            None => {
                let behind = parked.ids[0].clone();
                parked.ids.push_back(id.to_string());
                let snapshot = parked.clone();
                self.persist(event, key, &snapshot).await;
                metrics::counter!(m::PARKED_EVENTS, "stage" => self.stage).increment(1);
                Decision::Park {
                    behind,
                    not_before_ms,
                }
            }
        }
    }

    /// A release marker: its id leaves its key's queue, wherever it is.
    async fn release(&self, event: &Event) {
        let (Some(key), Some(released)) = (&event.key, event.headers.get_str(rh::RELEASE)) else {
            return;
        };
        let mut partitions = self.partitions.lock().await;
        let state = self.load(&mut partitions, event).await;
        let Some(parked) = state.keys.get_mut(key) else {
            return;
        };
        parked.ids.retain(|q| q != released);
        let snapshot = parked.clone();
        if snapshot.ids.is_empty() {
            state.keys.remove(key);
        }
        self.persist(event, key, &snapshot).await;
        self.report(&partitions);
    }

    /// After a retryable final failure: the event heads its key's queue (new or existing) and
    /// is due again at `not_before_ms`.
    pub async fn await_redelivery(&self, event: &Event, not_before_ms: i64) {
        let (Some(key), Some(id)) = (&event.key, event.headers.get_str(ce::ID)) else {
            return;
        };
        let mut partitions = self.partitions.lock().await;
        let state = self.load(&mut partitions, event).await;
        let parked = state.keys.entry(key.clone()).or_default();
        parked.not_before_ms = not_before_ms;
        if parked.ids.front().map(String::as_str) != Some(id) {
            parked.ids.retain(|q| q != id);
            parked.ids.push_front(id.to_string());
        }
        let snapshot = parked.clone();
        self.persist(event, key, &snapshot).await;
        self.report(&partitions);
    }

    /// After the head was processed (success or a final, non-retryable failure): the next event
    /// of the key becomes the head, or the key is free.
    pub async fn settle_head(&self, event: &Event) {
        let (Some(key), Some(id)) = (&event.key, event.headers.get_str(ce::ID)) else {
            return;
        };
        let mut partitions = self.partitions.lock().await;
        let state = self.load(&mut partitions, event).await;
        let Some(parked) = state.keys.get_mut(key) else {
            return;
        };
        if parked.ids.front().map(String::as_str) != Some(id) {
            return;
        }
        parked.ids.pop_front();
        let snapshot = parked.clone();
        if snapshot.ids.is_empty() {
            state.keys.remove(key);
        }
        self.persist(event, key, &snapshot).await;
        self.report(&partitions);
    }

    /// The event's partition state, (re)loaded from Redis when a rebalance happened since.
    async fn load<'a>(
        &self,
        partitions: &'a mut Partitions,
        event: &Event,
    ) -> &'a mut PartitionState {
        let generation = self.generation.load(Ordering::Acquire);
        let stale = partitions
            .get(event.topic.as_str())
            .and_then(|by_partition| by_partition.get(&event.partition))
            .is_none_or(|state| state.generation != generation);
        if stale {
            let mut keys = HashMap::default();
            if let Some(redis) = &self.redis {
                let mut conn = redis.clone();
                let hash = self.hash_key(&event.topic, event.partition);
                match conn.hgetall::<_, Vec<(Vec<u8>, String)>>(&hash).await {
                    Ok(entries) => {
                        for (key, value) in entries {
                            let parked = Parked::decode(&value);
                            if !parked.ids.is_empty() {
                                keys.insert(Bytes::from(key), parked);
                            }
                        }
                    }
                    Err(e) => warn!(
                        error = %e, hash = %hash,
                        "cannot load parked keys from Redis (runtime.state_url): continuing with \
                         what this replica knows; order of parked keys may break"
                    ),
                }
            } else if let Some(old) = partitions
                .get_mut(event.topic.as_str())
                .and_then(|by_partition| by_partition.remove(&event.partition))
            {
                // In process only: the state of a partition we got back is still ours.
                keys = old.keys;
            }
            partitions
                .entry(event.topic.clone())
                .or_default()
                .insert(event.partition, PartitionState { generation, keys });
        }
        partitions
            .get_mut(event.topic.as_str())
            .expect("loaded above")
            .entry(event.partition)
            .or_default()
    }

    async fn persist(&self, event: &Event, key: &Bytes, parked: &Parked) {
        let Some(redis) = &self.redis else {
            return;
        };
        let mut conn = redis.clone();
        let hash = self.hash_key(&event.topic, event.partition);
        let result: redis::RedisResult<()> = if parked.ids.is_empty() {
            conn.hdel(&hash, key.as_ref()).await
        } else {
            conn.hset(&hash, key.as_ref(), parked.encode()).await
        };
        if let Err(e) = result {
            warn!(
                error = %e, hash = %hash,
                "cannot write parked keys to Redis (runtime.state_url): kept in this replica only"
            );
        }
    }

    fn report(&self, partitions: &Partitions) {
        let keys: usize = partitions
            .values()
            .flat_map(HashMap::values)
            .map(|p| p.keys.len())
            .sum();
        self.parked_keys.store(keys, Ordering::Release);
        metrics::gauge!(m::PARKED_KEYS, "stage" => self.stage).set(keys as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::event;
    use super::*;
    use reflex_core::Headers;

    fn release(key: &str, id: &str) -> Event {
        let mut e = event(key, id);
        e.payload = None;
        e.headers = Headers::new();
        e.headers.push(rh::RELEASE, id.to_owned());
        e
    }

    #[tokio::test]
    async fn later_events_of_a_waiting_key_park_in_order_and_follow_the_head() {
        let p = Parking::new(None, "p".into(), "test", Arc::default());
        assert_eq!(p.decide(&event("A", "a1")).await, Decision::Process);
        p.await_redelivery(&event("A", "a1"), 10).await;
        let parked = Decision::Park {
            behind: "a1".into(),
            not_before_ms: 10,
        };
        assert_eq!(p.decide(&event("A", "a2")).await, parked);
        assert_eq!(p.decide(&event("A", "a3")).await, parked);
        assert_eq!(p.decide(&event("B", "b1")).await, Decision::Process);
        // Redelivered in order: a2 before its head succeeded parks again, unchanged.
        assert_eq!(p.decide(&event("A", "a2")).await, parked);
        assert_eq!(p.decide(&event("A", "a1")).await, Decision::ProcessHead);
        p.await_redelivery(&event("A", "a1"), 20).await; // failed again: still the head, due later
        assert_eq!(p.decide(&event("A", "a1")).await, Decision::ProcessHead);
        assert_eq!(
            p.decide(&event("A", "a3")).await,
            Decision::Park {
                behind: "a1".into(),
                not_before_ms: 20
            }
        );
        p.settle_head(&event("A", "a1")).await;
        assert_eq!(p.decide(&event("A", "a2")).await, Decision::ProcessHead);
        p.settle_head(&event("A", "a2")).await;
        // The reprocessor gave up on a3: the release frees the key.
        assert_eq!(p.decide(&release("A", "a3")).await, Decision::Control);
        assert_eq!(p.decide(&event("A", "a4")).await, Decision::Process);
    }
}

#[cfg(test)]
mod redis_tests {
    use super::tests_support::event;
    use super::*;

    /// The state survives a restart or rebalance through Redis (the test stack's, or the
    /// machine's local Redis).
    #[tokio::test]
    async fn parked_keys_are_reloaded_from_redis_by_the_next_owner() {
        let url = std::env::var("REFLEX_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!("reflex:park:test-{}", std::process::id());
        let conn = reflex_core::redis_conn::connect(&url).await.unwrap();
        let first = Parking::new(Some(conn.clone()), prefix.clone(), "test", Arc::default());
        first.await_redelivery(&event("K", "k1"), 42).await;
        assert!(matches!(
            first.decide(&event("K", "k2")).await,
            Decision::Park { .. }
        ));

        let next = Parking::new(Some(conn.clone()), prefix.clone(), "test", Arc::default());
        assert_eq!(
            next.decide(&event("K", "k3")).await,
            Decision::Park {
                behind: "k1".into(),
                not_before_ms: 42
            }
        );
        assert_eq!(next.decide(&event("K", "k1")).await, Decision::ProcessHead);
        next.settle_head(&event("K", "k1")).await;
        next.settle_head(&event("K", "k2")).await;
        next.settle_head(&event("K", "k3")).await;
        let mut conn = conn;
        let left: usize = conn.hlen(format!("{prefix}:t:0")).await.unwrap();
        assert_eq!(left, 0, "a free key leaves nothing behind in Redis");
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use reflex_core::Headers;

    pub fn event(key: &str, id: &str) -> Event {
        let mut headers = Headers::new();
        headers.push(ce::ID, id.to_owned());
        Event {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: Some(Bytes::from(key.to_string())),
            payload: Some(Bytes::from_static(b"v")),
            headers,
        }
    }
}
