//! Lookup sources at run time: Redis, a static file table, HTTP with a TTL cache.
//!
//! None of them costs one awaited round trip per event on the hot path:
//!
//! - **Redis**: every lane shares one multiplexed connection
//!   ([`RedisConn`](reflex_core::redis_conn::RedisConn), the fleet's one Redis connection). A
//!   batch of events from one lane sends the distinct keys of a lookup as one pipeline of
//!   `HGETALL`s ([`Source::fetch_many`]); lanes run concurrently (`runtime.key_lanes`) and their
//!   pipelines go down the one connection without waiting for each other's replies. The lookups
//!   of one batch also run concurrently. A key whose answer is an error (e.g. `WRONGTYPE`) is
//!   asked again alone, so only its events fail. Each lookup is bounded by
//!   `enricher.redis_timeout`; a failed or timed-out command is a transient error (the
//!   runtime retries it with backoff) and the next lookup reconnects.
//! - **File**: an in-memory table loaded at start-up.
//! - **HTTP**: a TTL cache (including "not found" answers) in front of `GET`; only a cache miss
//!   goes to the server.
//!
//! Metric [`reflex_core::metrics::LOOKUPS`] (`lookup`, `result`): for http lookups `hit` and
//! `miss` are cache hits and misses (a miss fetched from the server); for redis and file lookups
//! `hit` means a row was found and `miss` that none was; `error` is a failed lookup. Counted
//! per key fetched: events of one batch that share a key share its fetch.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reflex_core::metrics as m;
use reflex_core::redis_conn::{self, RedisConn};
use reflex_runtime::StageError;

use crate::spec::SourceSpec;

/// Connects the lookups' Redis (start-up fails when it cannot be reached). `timeout` bounds each
/// pipeline of lookups, connecting included.
pub async fn connect_redis(url: &str, timeout: Duration) -> Result<RedisConn, String> {
    redis_conn::connect_with(url, None, timeout)
        .await
        .map_err(|e| {
            let shown = redis_conn::redact_url(url);
            if e.kind() == redis::ErrorKind::InvalidClientConfig {
                format!("invalid URL `{shown}`: {e}")
            } else {
                format!(
                    "cannot connect to {shown}: {e}{}",
                    redis_conn::connect_hint(url, &e)
                )
            }
        })
}

/// `HGETALL` of every key in one pipeline (one round trip); the rows come back in the order of
/// `keys`.
async fn hgetall_many(
    redis: &RedisConn,
    keys: &[&str],
) -> redis::RedisResult<Vec<BTreeMap<String, String>>> {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("HGETALL").arg(*key);
    }
    pipe.query_async(&mut redis.clone()).await
}

/// A lookup answer: a row of strings, or nothing.
pub type Row = Option<BTreeMap<String, String>>;

/// A lookup source, ready to answer.
pub enum Source {
    Redis(RedisConn),
    File(Arc<HashMap<String, BTreeMap<String, String>>>),
    Http(HttpSource),
}

impl Source {
    /// Builds the source for `spec`; `redis` must be given when it is a redis lookup.
    pub fn new(spec: &SourceSpec, redis: Option<&RedisConn>) -> Result<Source, String> {
        Ok(match spec {
            SourceSpec::Redis => Source::Redis(
                redis
                    .cloned()
                    .ok_or("a redis lookup needs a Redis connection")?,
            ),
            SourceSpec::File { table, .. } => Source::File(Arc::new(table.clone())),
            SourceSpec::Http {
                ttl,
                max_entries,
                timeout,
            } => Source::Http(HttpSource::new(*ttl, *max_entries, *timeout)),
        })
    }

    /// Looks `key` (a Redis key, a row key or a URL) up for lookup `name`.
    pub async fn fetch(&self, name: &str, key: &str) -> Result<Row, StageError> {
        self.fetch_many(name, &[key])
            .await
            .pop()
            .unwrap_or_else(|| Err(StageError::transient(format!("lookup `{name}`: no answer"))))
    }

    /// Looks every key up for lookup `name`; one answer per key, in order. Redis keys go in one
    /// pipeline (one round trip for a whole batch of events), file rows are read in memory and
    /// URLs go through the cache one by one.
    pub async fn fetch_many(&self, name: &str, keys: &[&str]) -> Vec<Result<Row, StageError>> {
        let results = match self {
            Source::Redis(conn) => redis_hgetall(conn, name, keys).await,
            Source::File(table) => keys.iter().map(|k| Ok(table.get(*k).cloned())).collect(),
            Source::Http(http) => {
                let mut results = Vec::with_capacity(keys.len());
                for key in keys {
                    results.push(http.fetch(name, key).await);
                }
                return results;
            }
        };
        // Counted per batch, not per key: a registry lookup (and a label copy) per key showed
        // in the enricher's profile.
        let mut counts = [0u64; 3];
        for result in &results {
            counts[match result {
                Ok(Some(_)) => 0,
                Ok(None) => 1,
                Err(_) => 2,
            }] += 1;
        }
        for (label, n) in ["hit", "miss", "error"].into_iter().zip(counts) {
            if n > 0 {
                metrics::counter!(m::LOOKUPS, "lookup" => name.to_string(), "result" => label)
                    .increment(n);
            }
        }
        results
    }
}

async fn redis_hgetall(
    redis: &RedisConn,
    name: &str,
    keys: &[&str],
) -> Vec<Result<Row, StageError>> {
    // Redis down or slow is transient (the runtime retries); WRONGTYPE is permanent.
    let error = |key: &str, e: &redis::RedisError| {
        StageError::new(
            redis_conn::error_class(e),
            format!("lookup `{name}`: Redis HGETALL {key}: {e}"),
        )
    };
    let row = |row: BTreeMap<String, String>| (!row.is_empty()).then_some(row);
    // Every lane shares the one multiplexed connection (see the module docs).
    match hgetall_many(redis, keys).await {
        Ok(rows) => rows.into_iter().map(|r| Ok(row(r))).collect(),
        // One key's error answer (e.g. WRONGTYPE) fails the whole pipeline: ask key by key, so
        // only that key's events fail.
        Err(e) if keys.len() > 1 && e.code().is_some() => {
            let mut results = Vec::with_capacity(keys.len());
            for key in keys {
                results.push(match hgetall_many(redis, &[key]).await {
                    Ok(mut rows) => Ok(rows.pop().and_then(row)),
                    Err(e) => Err(error(key, &e)),
                });
            }
            results
        }
        // The same failure (timeout, connection) for every key.
        Err(failure) => keys.iter().map(|key| Err(error(key, &failure))).collect(),
    }
}

/// `GET` with an in-memory TTL cache of at most `max_entries` URLs.
pub struct HttpSource {
    client: reqwest::Client,
    ttl: Duration,
    max_entries: usize,
    cache: Mutex<HashMap<String, (Instant, Row)>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl HttpSource {
    pub fn new(ttl: Duration, max_entries: usize, timeout: Duration) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .unwrap_or_default(),
            ttl,
            max_entries: max_entries.max(1),
            cache: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Cache hits and misses so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    fn count(&self, name: &str, result: &'static str) {
        match result {
            "hit" => self.hits.fetch_add(1, Ordering::Relaxed),
            "miss" => self.misses.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        metrics::counter!(m::LOOKUPS, "lookup" => name.to_string(), "result" => result)
            .increment(1);
    }

    pub async fn fetch(&self, name: &str, url: &str) -> Result<Row, StageError> {
        let now = Instant::now();
        if let Some((expires, row)) = self.cache.lock().ok().and_then(|c| c.get(url).cloned()) {
            if expires > now {
                self.count(name, "hit");
                return Ok(row);
            }
        }
        let row = match self.get(name, url).await {
            Ok(row) => row,
            Err(e) => {
                self.count(name, "error");
                return Err(e);
            }
        };
        self.count(name, "miss");
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= self.max_entries && !cache.contains_key(url) {
                let now = Instant::now();
                cache.retain(|_, (expires, _)| *expires > now);
                if cache.len() >= self.max_entries {
                    // Still full of live entries: drop the one closest to expiry.
                    if let Some(oldest) = cache
                        .iter()
                        .min_by_key(|(_, (expires, _))| *expires)
                        .map(|(k, _)| k.clone())
                    {
                        cache.remove(&oldest);
                    }
                }
            }
            cache.insert(url.to_string(), (Instant::now() + self.ttl, row.clone()));
        }
        Ok(row)
    }

    async fn get(&self, name: &str, url: &str) -> Result<Row, StageError> {
        let response = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| {
                let message = format!("lookup `{name}`: GET {url}: {}", error_chain(&e));
                if e.is_builder() {
                    StageError::permanent(message)
                } else {
                    StageError::transient(message)
                }
            })?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status.is_server_error()
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
        {
            return Err(StageError::transient(format!(
                "lookup `{name}`: GET {url}: HTTP {status}"
            )));
        }
        if !status.is_success() {
            return Err(StageError::permanent(format!(
                "lookup `{name}`: GET {url}: HTTP {status}"
            )));
        }
        let body: serde_json::Value = response.json().await.map_err(|e| {
            StageError::permanent(format!(
                "lookup `{name}`: GET {url}: the response is not JSON: {}",
                error_chain(&e)
            ))
        })?;
        match body {
            serde_json::Value::Object(map) => {
                let mut row = BTreeMap::new();
                flatten("", &serde_json::Value::Object(map), &mut row);
                Ok(Some(row))
            }
            other => Err(StageError::permanent(format!(
                "lookup `{name}`: GET {url}: expected a JSON object, got `{other}`"
            ))),
        }
    }
}

/// Flattens a JSON object into strings: nested objects become dotted keys, strings stay as
/// they are, other scalars and arrays become their JSON text, nulls are left out.
pub fn flatten(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        serde_json::Value::Null => {}
        serde_json::Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        message.push_str(": ");
        message.push_str(&e.to_string());
        source = e.source();
    }
    message
}
