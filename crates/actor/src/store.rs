//! Everything the fleet shares through Redis: idempotency claims and done records, the
//! fleet-wide rate limit (GCRA), blast-radius counters and the kill switch.
//!
//! One multiplexed [`RedisConn`] (the fleet's one Redis connection; it comes back by itself
//! after a Redis restart) serves the whole worker. It is cloned into every key lane, and
//! commands from concurrent lanes are written to the one connection without waiting for each
//! other's replies: this is how Redis calls are pipelined across in-flight requests (a lane
//! awaits only its own reply). Each multi-step operation is one Lua script, so it is atomic and
//! costs one round trip.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::{RedisError, Script};
use reflex_core::redis_conn::{self, RedisConn};

/// Done? return it. Else try to claim (SET NX PX). Else report who holds the claim.
const CLAIM: &str = r"
local done = redis.call('GET', KEYS[2])
if done then return {1, done} end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0, ''} end
local owner = redis.call('GET', KEYS[1])
return {2, owner or ''}
";

/// [`CLAIM`] for every key of a batch in one script call: KEYS are (claim, done) pairs, ARGV[1]
/// the lease and ARGV[1 + n] the owner of pair n. One `{code, value}` per pair, in order.
const CLAIM_MANY: &str = r"
local out = {}
for n = 1, #KEYS / 2 do
  local claim, done, owner = KEYS[2 * n - 1], KEYS[2 * n], ARGV[n + 1]
  local recorded = redis.call('GET', done)
  if recorded then
    out[n] = {1, recorded}
  elseif redis.call('SET', claim, owner, 'NX', 'PX', ARGV[1]) then
    out[n] = {0, ''}
  else
    out[n] = {2, redis.call('GET', claim) or ''}
  end
end
return out
";

/// [`DONE`] for every record of a batch in one script call: KEYS are (claim, done) pairs,
/// ARGV[1] the TTL, ARGV[2n] the outcome and ARGV[2n + 1] the owner of pair n.
const DONE_MANY: &str = r"
for n = 1, #KEYS / 2 do
  redis.call('SET', KEYS[2 * n], ARGV[2 * n], 'PX', ARGV[1])
  if redis.call('GET', KEYS[2 * n - 1]) == ARGV[2 * n + 1] then redis.call('DEL', KEYS[2 * n - 1]) end
end
return 1
";

/// Records the outcome and drops our claim, atomically.
const DONE: &str = r"
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
";

/// Drops our claim (after a failure: a later replay may try again).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Extends our claim's lease; 0 when it is no longer ours.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

/// GCRA (virtual scheduling) on Redis time: reserves the caller's slot in the fleet-wide
/// schedule and returns how many milliseconds to wait for it (0 = go now). One call per action,
/// no polling: waiters do not compete again when they wake, so the rate holds under jitter.
const RATE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
local wait = tat - tolerance - now
if wait > 0 then return math.ceil(wait) end
return 0
";

/// Counts one execution in the current window; returns the count.
/// The blast-radius cap over a sliding window: KEYS[1] a sorted set of admitted executions
/// (member: the request's idempotency key, score: Redis's clock in ms), ARGV the window (ms),
/// the cap and the member. Returns the count this attempt makes: above the cap it is held and
/// not added. A request already admitted within the window (a retry) counts once.
const BLAST: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then return redis.call('ZCARD', KEYS[1]) end
local n = redis.call('ZCARD', KEYS[1])
if n < cap then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
end
return n + 1
";

// Each script hashed once: `Script::new` computes the SHA1 that `EVALSHA` sends, and per call
// it showed in the actor's profile.
static CLAIM_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM));
static DONE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(DONE));
static CLAIM_MANY_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM_MANY));
static DONE_MANY_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(DONE_MANY));
pub(crate) static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE));
pub(crate) static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW));
static RATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RATE));
static BLAST_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(BLAST));

/// Result of trying to claim an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// We own the key until the lease expires (or we renew it).
    Claimed,
    /// Already done; the recorded outcome (JSON).
    Done(String),
    /// Another owner holds it.
    Busy(String),
}

/// Redis access for the actor; cheap to clone (one shared multiplexed connection).
#[derive(Clone)]
pub struct Store {
    conn: RedisConn,
    prefix: String,
}

impl Store {
    /// `auth` (username, password) overrides credentials in the URL (Redis AUTH / ACL users);
    /// it comes from a secret reference, so the URL in the config file holds none.
    pub async fn connect(
        url: &str,
        prefix: &str,
        auth: reflex_core::redis_conn::Auth,
    ) -> Result<Self, RedisError> {
        // A command waits at most 5 s, then the event fails as transient (see redis_conn).
        let conn = redis_conn::connect_with(url, auth, redis_conn::DEFAULT_TIMEOUT).await?;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
        })
    }

    /// The shared connection (for the lock and approval scripts in their own modules).
    pub(crate) fn conn(&self) -> RedisConn {
        self.conn.clone()
    }

    pub fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.prefix)
    }

    pub async fn claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, RedisError> {
        let (code, value): (i64, String) = CLAIM_SCRIPT
            .key(self.key("claim", key))
            .key(self.key("done", key))
            .arg(owner)
            .arg(lease.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(claim_of(code, value))
    }

    /// Claims many keys in **one round trip and one script call**: what [`Store::claim`] does,
    /// for every `(key, owner)` in order, inside one Lua call (so each result means exactly
    /// what `claim` returns for that key, and the batch is atomic as a whole). One script call
    /// per batch rather than per key: Redis's per-call cost of `EVALSHA` was most of its CPU
    /// per event in the chain's benchmark. Keep batches to about a thousand claims.
    pub async fn claim_batch(
        &self,
        claims: &[(&str, &str)],
        lease: Duration,
    ) -> Result<Vec<Claim>, RedisError> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = CLAIM_MANY_SCRIPT.prepare_invoke();
        invocation.arg(lease.as_millis() as u64);
        for (key, owner) in claims {
            invocation
                .key(self.key("claim", key))
                .key(self.key("done", key))
                .arg(*owner);
        }
        // `invoke_async` loads the script when Redis's cache lacks it (restart, flush) and
        // sends it again; the first attempt ran nothing, so the answers are this call's.
        let replies: Vec<(i64, String)> = invocation.invoke_async(&mut self.conn.clone()).await?;
        Ok(replies
            .into_iter()
            .map(|(code, value)| claim_of(code, value))
            .collect())
    }

    pub async fn done(
        &self,
        key: &str,
        owner: &str,
        outcome_json: &str,
        ttl: Duration,
    ) -> Result<(), RedisError> {
        let _: i64 = DONE_SCRIPT
            .key(self.key("claim", key))
            .key(self.key("done", key))
            .arg(owner)
            .arg(outcome_json)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Records many outcomes in **one round trip and one script call**: [`Store::done`] for
    /// every `(key, owner, outcome)` inside one Lua call (sending it again is harmless).
    pub async fn done_batch(
        &self,
        records: &[(&str, &str, &str)],
        ttl: Duration,
    ) -> Result<(), RedisError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut invocation = DONE_MANY_SCRIPT.prepare_invoke();
        invocation.arg(ttl.as_millis() as u64);
        for (key, owner, outcome_json) in records {
            invocation
                .key(self.key("claim", key))
                .key(self.key("done", key))
                .arg(*outcome_json)
                .arg(*owner);
        }
        let _: i64 = invocation.invoke_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    pub async fn release(&self, key: &str, owner: &str) -> Result<bool, RedisError> {
        let n: i64 = RELEASE_SCRIPT
            .key(self.key("claim", key))
            .arg(owner)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
    }

    pub async fn renew(&self, key: &str, owner: &str, lease: Duration) -> Result<bool, RedisError> {
        let n: i64 = RENEW_SCRIPT
            .key(self.key("claim", key))
            .arg(owner)
            .arg(lease.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
    }

    /// Reserves the next slot of `action`'s fleet-wide rate; returns how long to wait for it
    /// (`None`: now). The slot is ours: after the wait, go without asking again.
    pub async fn rate_slot(
        &self,
        action: &str,
        per_sec: f64,
        burst: u32,
    ) -> Result<Option<Duration>, RedisError> {
        let interval = 1000.0 / per_sec;
        let tolerance = interval * f64::from(burst.saturating_sub(1));
        let wait: i64 = RATE_SCRIPT
            .key(self.key("rate", action))
            .arg(format!("{interval:.3}"))
            .arg(format!("{tolerance:.3}"))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok((wait > 0).then(|| Duration::from_millis(wait as u64)))
    }

    /// Counts request `request` as an execution of `action` over the last `window`, unless
    /// `cap` executions are already there; returns the count this attempt makes (above `cap`:
    /// hold it). The window slides: at most `cap` in any `window`, wherever it starts.
    pub async fn blast_count(
        &self,
        action: &str,
        request: &str,
        cap: u64,
        window: Duration,
    ) -> Result<u64, RedisError> {
        let n: u64 = BLAST_SCRIPT
            .key(self.key("blast", action))
            .arg(window.as_millis().max(1) as u64)
            .arg(cap)
            .arg(request)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n)
    }

    /// Values of the global and per-action kill-switch keys (`None` when absent).
    pub async fn kill_switches(
        &self,
        actions: &[String],
    ) -> Result<Vec<Option<String>>, RedisError> {
        let mut keys = vec![format!("{}:killswitch", self.prefix)];
        keys.extend(actions.iter().map(|a| self.key("killswitch", a)));
        let mut cmd = redis::cmd("MGET");
        for k in &keys {
            cmd.arg(k);
        }
        cmd.query_async(&mut self.conn.clone()).await
    }
}

fn claim_of(code: i64, value: String) -> Claim {
    match code {
        0 => Claim::Claimed,
        1 => Claim::Done(value),
        _ => Claim::Busy(value),
    }
}

/// Whether a kill-switch key's value means "on" (present and not `0`, `off`, `false` or empty).
pub fn switch_on(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "off" | "false"
        )
    })
}

/// A claim owner token unique to this process and call.
pub fn owner_token(worker: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    // The pid once: `getpid` is a system call, and tokens are made per request.
    static PID: LazyLock<u32> = LazyLock::new(std::process::id);
    format!(
        "{worker}/{}/{}/{}",
        *PID,
        now_ms(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stack's Redis (`REFLEX_TEST_REDIS_URL`); these tests skip without it.
    async fn store() -> Option<Store> {
        let url = std::env::var("REFLEX_TEST_REDIS_URL").ok()?;
        let prefix = format!("test-{}-{}", std::process::id(), now_ms());
        Some(Store::connect(&url, &prefix, None).await.expect("redis"))
    }

    #[tokio::test]
    async fn claim_done_release_and_lease_expiry() {
        let Some(s) = store().await else {
            eprintln!("REFLEX_TEST_REDIS_URL not set: skipped (scripts/test sets it)");
            return;
        };
        let lease = Duration::from_millis(300);
        assert_eq!(s.claim("k", "a", lease).await.unwrap(), Claim::Claimed);
        assert_eq!(
            s.claim("k", "b", lease).await.unwrap(),
            Claim::Busy("a".into())
        );
        assert!(s.renew("k", "a", lease).await.unwrap());
        assert!(!s.renew("k", "b", lease).await.unwrap());
        s.done("k", "a", "{\"r\":1}", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            s.claim("k", "b", lease).await.unwrap(),
            Claim::Done("{\"r\":1}".into())
        );

        // Released: someone else may claim. A dead owner's claim expires with its lease.
        assert_eq!(s.claim("k2", "a", lease).await.unwrap(), Claim::Claimed);
        assert!(!s.release("k2", "b").await.unwrap());
        assert!(s.release("k2", "a").await.unwrap());
        assert_eq!(s.claim("k2", "b", lease).await.unwrap(), Claim::Claimed);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(s.claim("k2", "c", lease).await.unwrap(), Claim::Claimed);
    }

    #[tokio::test]
    async fn claim_batch_answers_like_claim_per_key() {
        let Some(s) = store().await else {
            eprintln!("REFLEX_TEST_REDIS_URL not set: skipped (scripts/test sets it)");
            return;
        };
        let lease = Duration::from_secs(30);
        // `held` claimed by someone else, `done` finished, `free` untouched.
        assert_eq!(s.claim("held", "x", lease).await.unwrap(), Claim::Claimed);
        assert_eq!(s.claim("done", "x", lease).await.unwrap(), Claim::Claimed);
        s.done("done", "x", "{}", lease).await.unwrap();
        // The script cache may be empty: claim_batch must load it itself.
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut s.conn.clone())
            .await
            .unwrap();
        let got = s
            .claim_batch(
                &[("free", "a"), ("held", "a"), ("done", "a"), ("free", "b")],
                lease,
            )
            .await
            .unwrap();
        assert_eq!(
            got,
            vec![
                Claim::Claimed,
                Claim::Busy("x".into()),
                Claim::Done("{}".into()),
                Claim::Busy("a".into()),
            ]
        );
        assert_eq!(
            s.claim("free", "c", lease).await.unwrap(),
            Claim::Busy("a".into()),
            "a batch claim holds like a single one"
        );
        assert!(s.claim_batch(&[], lease).await.unwrap().is_empty());

        // done_batch records each outcome and drops each claim, like done per key, also after
        // the script cache was flushed.
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut s.conn.clone())
            .await
            .unwrap();
        assert_eq!(s.claim("d1", "a", lease).await.unwrap(), Claim::Claimed);
        assert_eq!(s.claim("d2", "a", lease).await.unwrap(), Claim::Claimed);
        s.done_batch(&[("d1", "a", "{\"n\":1}"), ("d2", "a", "{\"n\":2}")], lease)
            .await
            .unwrap();
        assert_eq!(
            s.claim_batch(&[("d1", "b"), ("d2", "b")], lease)
                .await
                .unwrap(),
            vec![
                Claim::Done("{\"n\":1}".into()),
                Claim::Done("{\"n\":2}".into())
            ]
        );
        s.done_batch(&[], lease).await.unwrap();
    }

    #[tokio::test]
    async fn gcra_paces_and_blast_counts() {
        let Some(s) = store().await else {
            return;
        };
        // 20/s, burst 2: two at once, then one every 50 ms.
        assert_eq!(s.rate_slot("a", 20.0, 2).await.unwrap(), None);
        assert_eq!(s.rate_slot("a", 20.0, 2).await.unwrap(), None);
        let wait = s.rate_slot("a", 20.0, 2).await.unwrap().expect("must wait");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        // Cap 2 over a sliding 400 ms: the third request is held and not counted, a retry of
        // an admitted one counts once, and a slot frees when its execution leaves the window.
        let window = Duration::from_millis(400);
        assert_eq!(s.blast_count("a", "r1", 2, window).await.unwrap(), 1);
        assert_eq!(s.blast_count("a", "r2", 2, window).await.unwrap(), 2);
        assert_eq!(s.blast_count("a", "r3", 2, window).await.unwrap(), 3);
        assert_eq!(s.blast_count("a", "r1", 2, window).await.unwrap(), 2);
        assert_eq!(s.blast_count("b", "r3", 2, window).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(s.blast_count("a", "r3", 2, window).await.unwrap(), 1);
        assert_eq!(
            s.kill_switches(&["a".into()]).await.unwrap(),
            vec![None, None]
        );
        assert!(switch_on(Some("1")) && switch_on(Some("on")));
        assert!(!switch_on(Some("off")) && !switch_on(None) && !switch_on(Some("0")));
    }
}
