//! Where the actor keeps its shared state: Redis ([`Store`], the fleet-wide default) or an
//! in-process table ([`MemoryStore`]) for a single replica with no Redis, e.g. the main job
//! on a fresh machine.
//!
//! [`StateBackend`] has the operations of [`Store`] and dispatches to one of the two, so the
//! stage does not care which one it has. `actor.state_backend` chooses:
//! - `redis` (default): connect to `actor.redis_url` or fail start-up;
//! - `memory`: in-process, never shared, lost on exit;
//! - `auto`: Redis when `actor.redis_url` is set and answers at start, else in-process.
//!
//! The in-process table gives one replica the same semantics as the Redis scripts (claims with
//! leases, done records with a TTL, GCRA rate, blast-radius windows), but nothing is shared:
//! a second replica would execute the same keys again and have its own rate and cap, and a
//! restart forgets every done record. Start-up says so in a warn line. The kill switch can
//! only be turned on from config (`actor.kill_switch`); there are no keys to set at run time.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::RedisError;
use tracing::{info, warn};

use crate::store::{now_ms, Claim, Store};

/// `actor.state_backend` values.
pub const BACKENDS: [&str; 3] = ["redis", "memory", "auto"];

/// The actor's state: Redis, or in-process for one replica. Cheap to clone.
#[derive(Clone)]
pub enum StateBackend {
    Redis(Store),
    Memory(MemoryStore),
}

/// Why the state backend cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("actor.state_backend = {0:?}: expected one of redis, memory, auto")]
    UnknownBackend(String),
    #[error("actor.state_backend = \"redis\" needs actor.redis_url (or set state_backend = \"auto\" or \"memory\" for one replica without Redis)")]
    NoUrl,
    #[error("cannot connect to Redis at {url}: {error}{hint} (set actor.state_backend = \"auto\" to fall back to in-process state for one replica)")]
    Redis {
        url: String,
        error: RedisError,
        /// What to do about it, from [`reflex_core::redis_conn::connect_hint`].
        hint: &'static str,
    },
}

const NOT_SHARED: &str = "actor state is IN-PROCESS, not Redis: idempotency claims, done records, rate limits and blast-radius counts are NOT shared with other replicas and NOT durable (lost on exit). Run exactly ONE actor replica; set actor.redis_url (state_backend = \"redis\") for a fleet. The kill switch works from config only.";

impl StateBackend {
    /// Chooses and opens the backend `backend` names (see the module docs).
    pub async fn open(
        backend: &str,
        url: &str,
        prefix: &str,
        auth: reflex_core::redis_conn::Auth,
    ) -> Result<Self, StateError> {
        let url = url.trim();
        match backend {
            "memory" => {
                warn!(state_backend = "memory", "{NOT_SHARED}");
                Ok(Self::Memory(MemoryStore::default()))
            }
            "redis" if url.is_empty() => Err(StateError::NoUrl),
            "redis" => Store::connect(url, prefix, auth)
                .await
                .map(Self::Redis)
                .map_err(|error| StateError::Redis {
                    url: reflex_core::redis_conn::redact_url(url),
                    hint: reflex_core::redis_conn::connect_hint(url, &error),
                    error,
                }),
            "auto" if url.is_empty() => {
                warn!(
                    state_backend = "memory",
                    reason = "actor.redis_url is empty",
                    "{NOT_SHARED}"
                );
                Ok(Self::Memory(MemoryStore::default()))
            }
            "auto" => match Store::connect(url, prefix, auth).await {
                Ok(store) => {
                    let url = reflex_core::redis_conn::redact_url(url);
                    info!(state_backend = "redis", redis_url = %url, "actor state in Redis");
                    Ok(Self::Redis(store))
                }
                Err(error) => {
                    let url = reflex_core::redis_conn::redact_url(url);
                    let hint = reflex_core::redis_conn::connect_hint(&url, &error);
                    warn!(state_backend = "memory", reason = %format!("Redis at {url} is not reachable: {error}{hint}"), "{NOT_SHARED}");
                    Ok(Self::Memory(MemoryStore::default()))
                }
            },
            other => Err(StateError::UnknownBackend(other.to_string())),
        }
    }

    /// `redis` or `memory`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Redis(_) => "redis",
            Self::Memory(_) => "memory",
        }
    }

    pub async fn claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, RedisError> {
        match self {
            Self::Redis(s) => s.claim(key, owner, lease).await,
            Self::Memory(m) => Ok(m.claim(key, owner, lease)),
        }
    }

    /// [`Store::claim_batch`]: many claims in one round trip, one answer per claim.
    pub async fn claim_batch(
        &self,
        claims: &[(&str, &str)],
        lease: Duration,
    ) -> Result<Vec<Claim>, RedisError> {
        match self {
            Self::Redis(s) => s.claim_batch(claims, lease).await,
            Self::Memory(m) => Ok(claims
                .iter()
                .map(|(key, owner)| m.claim(key, owner, lease))
                .collect()),
        }
    }

    /// [`Store::done_batch`]: many outcomes recorded in one round trip.
    pub async fn done_batch(
        &self,
        records: &[(&str, &str, &str)],
        ttl: Duration,
    ) -> Result<(), RedisError> {
        match self {
            Self::Redis(s) => s.done_batch(records, ttl).await,
            Self::Memory(m) => {
                for (key, owner, outcome_json) in records {
                    m.done(key, owner, outcome_json, ttl);
                }
                Ok(())
            }
        }
    }

    pub async fn done(
        &self,
        key: &str,
        owner: &str,
        outcome_json: &str,
        ttl: Duration,
    ) -> Result<(), RedisError> {
        match self {
            Self::Redis(s) => s.done(key, owner, outcome_json, ttl).await,
            Self::Memory(m) => {
                m.done(key, owner, outcome_json, ttl);
                Ok(())
            }
        }
    }

    pub async fn release(&self, key: &str, owner: &str) -> Result<bool, RedisError> {
        match self {
            Self::Redis(s) => s.release(key, owner).await,
            Self::Memory(m) => Ok(m.release(key, owner)),
        }
    }

    pub async fn renew(&self, key: &str, owner: &str, lease: Duration) -> Result<bool, RedisError> {
        match self {
            Self::Redis(s) => s.renew(key, owner, lease).await,
            Self::Memory(m) => Ok(m.renew(key, owner, lease)),
        }
    }

    pub async fn rate_slot(
        &self,
        action: &str,
        per_sec: f64,
        burst: u32,
    ) -> Result<Option<Duration>, RedisError> {
        match self {
            Self::Redis(s) => s.rate_slot(action, per_sec, burst).await,
            Self::Memory(m) => Ok(m.rate_slot(action, per_sec, burst)),
        }
    }

    pub async fn blast_count(
        &self,
        action: &str,
        request: &str,
        cap: u64,
        window: Duration,
    ) -> Result<u64, RedisError> {
        match self {
            Self::Redis(s) => s.blast_count(action, request, cap, window).await,
            Self::Memory(m) => Ok(m.blast_count(action, request, cap, window)),
        }
    }

    pub async fn kill_switches(
        &self,
        actions: &[String],
    ) -> Result<Vec<Option<String>>, RedisError> {
        match self {
            Self::Redis(s) => s.kill_switches(actions).await,
            // No run-time switch keys in process: all off (the config switch still applies).
            Self::Memory(_) => Ok(vec![None; actions.len() + 1]),
        }
    }
}

/// In-process state for one replica: the same operations and semantics as the Redis scripts
/// in [`crate::store`], under one mutex (each operation is a few map lookups).
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Tables>>,
}

#[derive(Default)]
struct Tables {
    /// Idempotency key → (owner, lease end).
    claims: HashMap<String, (String, Instant)>,
    /// Idempotency key → (outcome JSON, expiry).
    done: HashMap<String, (String, Instant)>,
    /// Action → GCRA theoretical arrival time.
    rate: HashMap<String, Instant>,
    /// Action → admitted executions (ms, request) over the blast-radius window, oldest first.
    blast: HashMap<String, VecDeque<(i64, String)>>,
    /// Operations since the last sweep of expired entries.
    since_sweep: usize,
}

/// Expired claims and done records are dropped every this many operations, so memory is
/// bounded by what is live (done records live `done_ttl`).
const SWEEP_EVERY: usize = 10_000;

impl Tables {
    fn tick(&mut self, now: Instant) {
        self.since_sweep += 1;
        if self.since_sweep >= SWEEP_EVERY {
            self.since_sweep = 0;
            self.claims.retain(|_, (_, until)| *until > now);
            self.done.retain(|_, (_, until)| *until > now);
        }
    }

    fn live_claim(&mut self, key: &str, now: Instant) -> Option<&String> {
        if self.claims.get(key).is_some_and(|(_, until)| *until <= now) {
            self.claims.remove(key);
        }
        self.claims.get(key).map(|(owner, _)| owner)
    }
}

impl MemoryStore {
    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A panic while holding the lock cannot leave the maps half-updated (each operation
        // is one insert or remove), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn claim(&self, key: &str, owner: &str, lease: Duration) -> Claim {
        let now = Instant::now();
        let mut t = self.tables();
        t.tick(now);
        match t.done.get(key) {
            Some((outcome, until)) if *until > now => return Claim::Done(outcome.clone()),
            Some(_) => {
                t.done.remove(key);
            }
            None => {}
        }
        if let Some(holder) = t.live_claim(key, now) {
            return Claim::Busy(holder.clone());
        }
        t.claims
            .insert(key.to_string(), (owner.to_string(), now + lease));
        Claim::Claimed
    }

    pub fn done(&self, key: &str, owner: &str, outcome_json: &str, ttl: Duration) {
        let now = Instant::now();
        let mut t = self.tables();
        t.done
            .insert(key.to_string(), (outcome_json.to_string(), now + ttl));
        if t.live_claim(key, now).is_some_and(|o| o == owner) {
            t.claims.remove(key);
        }
    }

    pub fn release(&self, key: &str, owner: &str) -> bool {
        let mut t = self.tables();
        let ours = t
            .live_claim(key, Instant::now())
            .is_some_and(|o| o == owner);
        if ours {
            t.claims.remove(key);
        }
        ours
    }

    pub fn renew(&self, key: &str, owner: &str, lease: Duration) -> bool {
        let now = Instant::now();
        let mut t = self.tables();
        match t.claims.get_mut(key) {
            Some((o, until)) if o == owner && *until > now => {
                *until = now + lease;
                true
            }
            _ => false,
        }
    }

    /// GCRA, as the Redis script: reserve the next slot, return the wait for it.
    pub fn rate_slot(&self, action: &str, per_sec: f64, burst: u32) -> Option<Duration> {
        let now = Instant::now();
        let interval = Duration::from_secs_f64(1.0 / per_sec);
        let tolerance = interval * burst.saturating_sub(1);
        let mut t = self.tables();
        let tat = t.rate.get(action).copied().unwrap_or(now).max(now);
        t.rate.insert(action.to_string(), tat + interval);
        let wait = tat.saturating_duration_since(now + tolerance);
        (!wait.is_zero()).then_some(wait)
    }

    /// The blast-radius cap over a sliding window, as in Redis: the count this attempt makes
    /// (above `cap`: held, not added); a request already admitted counts once.
    pub fn blast_count(&self, action: &str, request: &str, cap: u64, window: Duration) -> u64 {
        let now = now_ms();
        let since = now - window.as_millis().max(1) as i64;
        let mut t = self.tables();
        let admitted = t.blast.entry(action.to_string()).or_default();
        while admitted.front().is_some_and(|(at, _)| *at <= since) {
            admitted.pop_front();
        }
        if admitted.iter().any(|(_, r)| r == request) {
            return admitted.len() as u64;
        }
        let n = admitted.len() as u64;
        if n < cap {
            admitted.push_back((now, request.to_string()));
        }
        n + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_done_records_release_and_lease_expiry() {
        let m = MemoryStore::default();
        let lease = Duration::from_millis(100);
        assert_eq!(m.claim("k", "a", lease), Claim::Claimed);
        assert_eq!(m.claim("k", "b", lease), Claim::Busy("a".into()));
        assert!(m.renew("k", "a", lease));
        assert!(!m.renew("k", "b", lease));
        m.done("k", "a", "{\"r\":1}", Duration::from_secs(60));
        assert_eq!(m.claim("k", "b", lease), Claim::Done("{\"r\":1}".into()));
        // The done record replaced the claim: nothing left to renew or release.
        assert!(!m.renew("k", "a", lease));
        assert!(!m.release("k", "a"));

        // Released: someone else may claim. A dead owner's claim expires with its lease.
        assert_eq!(m.claim("k2", "a", lease), Claim::Claimed);
        assert!(!m.release("k2", "b"));
        assert!(m.release("k2", "a"));
        assert_eq!(m.claim("k2", "b", lease), Claim::Claimed);
        std::thread::sleep(Duration::from_millis(150));
        assert!(
            !m.renew("k2", "b", lease),
            "an expired lease cannot be renewed"
        );
        assert_eq!(m.claim("k2", "c", lease), Claim::Claimed);

        // Done records expire with their TTL; then the key may be claimed again.
        m.done("k3", "x", "{}", Duration::from_millis(50));
        assert_eq!(m.claim("k3", "y", lease), Claim::Done("{}".into()));
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(m.claim("k3", "y", lease), Claim::Claimed);
    }

    #[test]
    fn gcra_paces_and_blast_counts_per_action() {
        let m = MemoryStore::default();
        // 20/s, burst 2: two at once, then one every 50 ms.
        assert_eq!(m.rate_slot("a", 20.0, 2), None);
        assert_eq!(m.rate_slot("a", 20.0, 2), None);
        let wait = m.rate_slot("a", 20.0, 2).expect("must wait");
        assert!(wait <= Duration::from_millis(50), "{wait:?}");
        let later = m.rate_slot("a", 20.0, 2).expect("must wait longer");
        assert!(later > wait, "{later:?} after {wait:?}");
        assert_eq!(m.rate_slot("b", 20.0, 1), None, "actions are paced apart");

        let window = Duration::from_millis(300);
        assert_eq!(m.blast_count("a", "r1", 2, window), 1);
        assert_eq!(m.blast_count("a", "r2", 2, window), 2);
        assert_eq!(m.blast_count("a", "r3", 2, window), 3, "held, not counted");
        assert_eq!(
            m.blast_count("a", "r1", 2, window),
            2,
            "a retry counts once"
        );
        assert_eq!(m.blast_count("b", "r3", 2, window), 1);
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(m.blast_count("a", "r3", 2, window), 1, "the window slid");
    }

    #[test]
    fn sweep_drops_expired_entries_only() {
        let m = MemoryStore::default();
        m.done("old", "a", "{}", Duration::from_millis(1));
        m.done("live", "a", "{}", Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(5));
        for i in 0..SWEEP_EVERY {
            let key = format!("k{i}");
            assert_eq!(m.claim(&key, "a", Duration::from_secs(60)), Claim::Claimed);
        }
        let t = m.tables();
        assert!(!t.done.contains_key("old"));
        assert!(t.done.contains_key("live"));
    }

    #[tokio::test]
    async fn open_chooses_the_backend() {
        let mem = StateBackend::open("memory", "redis://127.0.0.1:6379", "p", None)
            .await
            .unwrap();
        assert_eq!(mem.kind(), "memory");
        let auto = StateBackend::open("auto", "", "p", None).await.unwrap();
        assert_eq!(auto.kind(), "memory");
        // Nothing listens on port 1: auto falls back, redis refuses to start.
        let auto = StateBackend::open("auto", "redis://127.0.0.1:1", "p", None)
            .await
            .unwrap();
        assert_eq!(auto.kind(), "memory");
        assert!(matches!(
            StateBackend::open("redis", "redis://127.0.0.1:1", "p", None).await,
            Err(StateError::Redis { .. })
        ));
        assert!(matches!(
            StateBackend::open("redis", " ", "p", None).await,
            Err(StateError::NoUrl)
        ));
        assert!(matches!(
            StateBackend::open("etcd", "", "p", None).await,
            Err(StateError::UnknownBackend(_))
        ));
        assert_eq!(
            auto.kill_switches(&["a".into()]).await.unwrap(),
            vec![None, None]
        );
        if let Ok(url) = std::env::var("REFLEX_TEST_REDIS_URL") {
            let redis = StateBackend::open("auto", &url, "p", None).await.unwrap();
            assert_eq!(redis.kind(), "redis");
        }
    }
}
