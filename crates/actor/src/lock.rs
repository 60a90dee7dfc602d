//! Per-target locks: an action with `lock = "{{ target }}"` (any template over the request)
//! never runs while another action holds the same rendered lock, in any replica.
//!
//! A lock is a Redis lease, `SET <prefix>:lock:<name> <owner> NX PX <actor.lock_lease>`, taken
//! after the idempotency claim (so duplicates never wait for it) and before the blast-radius
//! count and the attempts. The holder renews it every third of the lease while the action runs
//! (retries and backoff included) and drops it when done with a compare-and-delete script, so
//! it never deletes a lock that expired and went to someone else. A holder that dies stops
//! renewing and the lock expires after one lease.
//!
//! **A request that finds its lock held does not wait in its lane.** It polls for at most
//! `actor.lock_wait` (default 0), then releases its claim and fails as `transient`: the runtime
//! dead-letters it with a not-before time and the reprocessor delivers it again (with the same
//! idempotency key), while later requests with its Kafka key park behind it. This is the
//! runtime's existing retry-later path, so its lane and partition keep going. Each redelivery
//! counts toward the reprocessor's `max_redeliveries` (5 by default, about half a minute of
//! backoff): a lock held longer than that sends the request to `<topic>.exhausted` for a human.
//!
//! Measured: `reflex_action_lock_waits_total{action}` counts requests that found their lock
//! held; `reflex_action_lock_wait_seconds{action}` is the time from the first try to getting
//! the lock (for a redelivered request, from its first failure).

use std::future::Future;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use redis::{RedisError, Script};
use reflex_core::headers::reflex as rh;
use reflex_core::metrics as m;
use reflex_runtime::{Event, StageError};
use tracing::{debug, warn};

use crate::state::StateBackend;
use crate::store::{self, RELEASE_SCRIPT, RENEW_SCRIPT};
use crate::{Actor, Claimable};

/// Take the lock, or say who holds it.
const TRY: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0, ''} end
return {1, redis.call('GET', KEYS[1]) or ''}
";
static TRY_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(TRY));

/// In the in-process backend a lock shares the claims table under this prefix (a lock name
/// never has a done record, so a claim there behaves as `SET NX PX`).
const MEMORY_PREFIX: &str = "\u{0}lock:";

/// The answer to trying a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockTry {
    Acquired,
    /// Held by this owner.
    Busy(String),
}

impl StateBackend {
    pub async fn lock_try(
        &self,
        name: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<LockTry, RedisError> {
        match self {
            Self::Redis(s) => {
                let (code, holder): (i64, String) = TRY_SCRIPT
                    .key(s.key("lock", name))
                    .arg(owner)
                    .arg(lease.as_millis() as u64)
                    .invoke_async(&mut s.conn())
                    .await?;
                Ok(if code == 0 {
                    LockTry::Acquired
                } else {
                    LockTry::Busy(holder)
                })
            }
            Self::Memory(mem) => Ok(
                match mem.claim(&format!("{MEMORY_PREFIX}{name}"), owner, lease) {
                    store::Claim::Claimed => LockTry::Acquired,
                    store::Claim::Busy(holder) | store::Claim::Done(holder) => {
                        LockTry::Busy(holder)
                    }
                },
            ),
        }
    }

    pub async fn lock_renew(
        &self,
        name: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, RedisError> {
        match self {
            Self::Redis(s) => {
                let n: i64 = RENEW_SCRIPT
                    .key(s.key("lock", name))
                    .arg(owner)
                    .arg(lease.as_millis() as u64)
                    .invoke_async(&mut s.conn())
                    .await?;
                Ok(n == 1)
            }
            Self::Memory(mem) => Ok(mem.renew(&format!("{MEMORY_PREFIX}{name}"), owner, lease)),
        }
    }

    /// Compare-and-delete: drops the lock only while it is still ours.
    pub async fn lock_release(&self, name: &str, owner: &str) -> Result<bool, RedisError> {
        match self {
            Self::Redis(s) => {
                let n: i64 = RELEASE_SCRIPT
                    .key(s.key("lock", name))
                    .arg(owner)
                    .invoke_async(&mut s.conn())
                    .await?;
                Ok(n == 1)
            }
            Self::Memory(mem) => Ok(mem.release(&format!("{MEMORY_PREFIX}{name}"), owner)),
        }
    }
}

impl Actor {
    fn lock_lease(&self) -> Duration {
        self.settings.lock_lease.max(Duration::from_millis(100))
    }

    /// Runs `work` holding the request's lock, when its action has one (see the module docs);
    /// a lock held by another action fails the request as transient (deferred).
    pub(crate) async fn with_lock<T>(
        &self,
        c: &Claimable,
        event: &Event,
        work: impl Future<Output = Result<T, StageError>>,
    ) -> Result<T, StageError> {
        let action = &c.action;
        if action.settings.lock.is_none() {
            return work.await;
        }
        let name = &action.settings.name;
        let lock = self
            .templates
            .render(&action.template_name("lock"), &c.req)
            .map_err(|e| {
                StageError::permanent(format!(
                    "action `{name}` field `lock` cannot be rendered for this request: {e}"
                ))
            })?;
        let owner = store::owner_token(&self.worker);
        let lease = self.lock_lease();
        let started = Instant::now();
        let mut waited = false;
        loop {
            let holder = match self.store.lock_try(&lock, &owner, lease).await {
                Ok(LockTry::Acquired) => break,
                Ok(LockTry::Busy(holder)) => holder,
                Err(e) => return Err(crate::redis_failed("lock", &e)),
            };
            if !waited {
                waited = true;
                metrics::counter!(m::LOCK_WAITS, "action" => name.clone()).increment(1);
            }
            if started.elapsed() >= self.settings.lock_wait {
                debug!(action = %name, lock = %lock, holder = %holder, idempotency_key = %c.req.idempotency_key, "lock held: deferred");
                return Err(StageError::transient(format!(
                    "action `{name}`: lock `{lock}` is held by {holder}: deferred (the request is \
                     delivered again later; actor.lock_wait = {})",
                    reflex_runtime::duration::format(self.settings.lock_wait)
                )));
            }
            tokio::time::sleep(self.settings.claim_poll.max(Duration::from_millis(10))).await;
        }
        metrics::histogram!(m::LOCK_WAIT_SECONDS, "action" => name.clone())
            .record(wait_seconds(event, started, waited));
        let renew = async {
            loop {
                tokio::time::sleep(lease / 3).await;
                match self.store.lock_renew(&lock, &owner, lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        warn!(action = %name, lock = %lock, "lock lost while the action ran (lease expired): another action may start on this target");
                        return;
                    }
                    Err(e) => {
                        warn!(action = %name, lock = %lock, error = %e, "lock renewal failed")
                    }
                }
            }
        };
        let result = {
            tokio::pin!(work, renew);
            tokio::select! {
                biased;
                out = &mut work => out,
                () = &mut renew => work.await,
            }
        };
        if let Err(e) = self.store.lock_release(&lock, &owner).await {
            // It expires after one lease.
            warn!(action = %name, lock = %lock, error = %e, "lock release failed");
        }
        result
    }
}

/// Seconds from the first try to now: from the request's first failure when it is a
/// redelivery (it was deferred before), else from `started` if it `waited` here, else 0 (the
/// lock was free: the round trip is not a wait).
fn wait_seconds(event: &Event, started: Instant, waited: bool) -> f64 {
    let first_failure = event
        .headers
        .get(rh::REDELIVERY_ATTEMPT)
        .and(event.headers.get_str(rh::ERROR_FIRST_FAILURE_MS))
        .and_then(|v| v.parse::<i64>().ok());
    match first_failure {
        Some(ms) => ((store::now_ms() - ms).max(0) as f64) / 1000.0,
        None if waited => started.elapsed().as_secs_f64(),
        None => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStore;

    async fn backends() -> Vec<StateBackend> {
        let mut out = vec![StateBackend::Memory(MemoryStore::default())];
        if let Ok(url) = std::env::var("REFLEX_TEST_REDIS_URL") {
            let prefix = format!("test-lock-{}-{}", std::process::id(), store::now_ms());
            out.push(
                StateBackend::open("redis", &url, &prefix, None)
                    .await
                    .unwrap(),
            );
        }
        out
    }

    #[tokio::test]
    async fn one_holder_at_a_time_released_by_its_owner_only_and_expiring() {
        for b in backends().await {
            // Long enough not to lapse between steps on a loaded machine; the expiry below
            // uses a short one.
            let lease = Duration::from_secs(5);
            assert_eq!(
                b.lock_try("pod-1", "a", lease).await.unwrap(),
                LockTry::Acquired
            );
            assert_eq!(
                b.lock_try("pod-1", "b", lease).await.unwrap(),
                LockTry::Busy("a".into()),
                "{}",
                b.kind()
            );
            assert_eq!(
                b.lock_try("pod-2", "b", lease).await.unwrap(),
                LockTry::Acquired
            );
            assert!(b.lock_renew("pod-1", "a", lease).await.unwrap());
            assert!(!b.lock_renew("pod-1", "b", lease).await.unwrap());
            assert!(
                !b.lock_release("pod-1", "b").await.unwrap(),
                "not b's to drop"
            );
            assert!(b.lock_release("pod-1", "a").await.unwrap());
            assert_eq!(
                b.lock_try("pod-1", "b", Duration::from_millis(200))
                    .await
                    .unwrap(),
                LockTry::Acquired
            );
            // b dies holding it: the lease runs out and c gets it.
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(
                b.lock_try("pod-1", "c", lease).await.unwrap(),
                LockTry::Acquired
            );
            assert!(
                !b.lock_release("pod-1", "b").await.unwrap(),
                "expired: not b's"
            );
            assert_eq!(
                b.lock_try("pod-1", "d", lease).await.unwrap(),
                LockTry::Busy("c".into())
            );
        }
    }
}
