//! Where stateful rules keep their groups: Redis, shared by every replica, or in process (one
//! replica, `reflexctl rules test`).
//!
//! One hash per (rule, group), `<prefix>:state:<rule>:<group hash>` with fields `v` (version)
//! and `s` (the state as JSON); writes are compare-and-set on the version in one Lua script,
//! which also files the group under its wall-clock due time in the sorted set `<prefix>:due`
//! (member `<group hash>:<rule>`) when a timer or a waiting event needs the ticker.

use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use redis::Script;
use reflex_core::redis_conn::RedisConn;
use reflex_core::ErrorClass;
use sha2::{Digest, Sha256};

use super::machine::GroupState;

/// A state-store failure, with the retry decision.
#[derive(Debug, thiserror::Error)]
#[error("rule state store: {message}")]
pub struct StoreError {
    pub class: ErrorClass,
    pub message: String,
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError {
            class: reflex_core::redis_conn::error_class(&e),
            message: format!("Redis (runtime.state_url): {e}"),
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError {
            class: ErrorClass::Permanent,
            message: format!("stored group state does not parse: {e}"),
        }
    }
}

/// The group's name in keys: a fixed-length hash, so event data never shapes a key.
pub fn group_hash(group: &str) -> String {
    let digest = Sha256::digest(group.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

const SAVE: &str = r#"
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'v', v + 1, 's', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if ARGV[5] == '' then
  redis.call('ZREM', KEYS[2], ARGV[4])
else
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
end
return 1
"#;
static SAVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SAVE));

/// The store of every stateful rule of one router deployment.
pub enum StateStore {
    Redis { conn: RedisConn, prefix: String },
    Memory(Mutex<Memory>),
}

#[derive(Default)]
pub struct Memory {
    states: HashMap<String, (u64, String)>,
    due: BTreeMap<String, i64>,
}

impl StateStore {
    pub fn redis(conn: RedisConn, prefix: &str) -> Self {
        StateStore::Redis {
            conn,
            prefix: prefix.to_string(),
        }
    }

    pub fn memory() -> Self {
        StateStore::Memory(Mutex::default())
    }

    fn key(prefix: &str, rule: &str, hash: &str) -> String {
        format!("{prefix}:state:{rule}:{hash}")
    }

    /// The group's state (empty if it has none), with its version.
    pub async fn load(&self, rule: &str, hash: &str) -> Result<GroupState, StoreError> {
        let (version, json): (u64, Option<String>) = match self {
            StateStore::Redis { conn, prefix } => {
                let (v, s): (Option<u64>, Option<String>) = redis::cmd("HMGET")
                    .arg(Self::key(prefix, rule, hash))
                    .arg("v")
                    .arg("s")
                    .query_async(&mut conn.clone())
                    .await?;
                (v.unwrap_or(0), s)
            }
            StateStore::Memory(m) => {
                let m = m.lock().expect("state lock");
                match m.states.get(&Self::key("", rule, hash)) {
                    Some((v, s)) => (*v, Some(s.clone())),
                    None => (0, None),
                }
            }
        };
        let mut state: GroupState = match json {
            Some(json) => serde_json::from_str(&json)?,
            None => GroupState::default(),
        };
        state.version = version;
        Ok(state)
    }

    /// Writes `state` if nobody wrote the group since it was loaded (`state.version`); false
    /// when somebody did (load again and redo). `due_ms` is the wall-clock time the ticker
    /// should look at the group (`None`: nothing waits); `ttl` bounds how long an untouched
    /// group is kept.
    pub async fn save(
        &self,
        rule: &str,
        hash: &str,
        state: &GroupState,
        due_ms: Option<i64>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(state)?;
        let member = format!("{hash}:{rule}");
        match self {
            StateStore::Redis { conn, prefix } => {
                let saved: i64 = SAVE_SCRIPT
                    .key(Self::key(prefix, rule, hash))
                    .key(format!("{prefix}:due"))
                    .arg(state.version)
                    .arg(json)
                    .arg(ttl.as_millis().max(1) as u64)
                    .arg(&member)
                    .arg(due_ms.map(|d| d.to_string()).unwrap_or_default())
                    .invoke_async(&mut conn.clone())
                    .await?;
                Ok(saved == 1)
            }
            StateStore::Memory(m) => {
                let mut m = m.lock().expect("state lock");
                let key = Self::key("", rule, hash);
                let current = m.states.get(&key).map_or(0, |(v, _)| *v);
                if current != state.version {
                    return Ok(false);
                }
                m.states.insert(key, (current + 1, json));
                match due_ms {
                    Some(d) => m.due.insert(member, d),
                    None => m.due.remove(&member),
                };
                Ok(true)
            }
        }
    }

    /// Takes a group off the due list (its rule is gone).
    pub async fn forget_due(&self, rule: &str, hash: &str) -> Result<(), StoreError> {
        let member = format!("{hash}:{rule}");
        match self {
            StateStore::Redis { conn, prefix } => {
                let _: i64 = redis::cmd("ZREM")
                    .arg(format!("{prefix}:due"))
                    .arg(member)
                    .query_async(&mut conn.clone())
                    .await?;
            }
            StateStore::Memory(m) => {
                m.lock().expect("state lock").due.remove(&member);
            }
        }
        Ok(())
    }

    /// Groups due at `now_ms` (wall clock), as (rule, group hash), at most `limit`.
    pub async fn due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let members: Vec<String> = match self {
            StateStore::Redis { conn, prefix } => {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(format!("{prefix}:due"))
                    .arg("-inf")
                    .arg(now_ms)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async(&mut conn.clone())
                    .await?
            }
            StateStore::Memory(m) => {
                let m = m.lock().expect("state lock");
                let mut due: Vec<(&String, &i64)> =
                    m.due.iter().filter(|(_, d)| **d <= now_ms).collect();
                due.sort_by_key(|(member, d)| (**d, (*member).clone()));
                due.into_iter()
                    .take(limit)
                    .map(|(m, _)| m.clone())
                    .collect()
            }
        };
        Ok(members
            .into_iter()
            .filter_map(|m| {
                let (hash, rule) = m.split_once(':')?;
                Some((rule.to_string(), hash.to_string()))
            })
            .collect())
    }
}
