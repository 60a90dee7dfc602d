//! The fake target API the actor calls in the main job and the fault suite, standing in for
//! Kubernetes, a pager or an EDR.
//!
//! Like a real API honouring the `Idempotency-Key` header, it applies each key's effect once and
//! answers repeats as already applied; a request without a key is applied every time. It keeps
//! every request in memory (what the checks count) and writes each as one JSON line to its log
//! (`effect`: `applied`, `duplicate (already applied)` or `none (failed: 503)`).
//!
//! Failure modes for the fault suite, switched at run time ([`Target::set_mode`], or
//! `POST /control?mode=MODE[&delay_ms=N]`): `ok` (apply, 200), `fail` (503, nothing applied),
//! `timeout` (apply, then answer only after `delay_ms`, so the caller times out without knowing
//! the effect happened, as with a slow real API). `GET /stats` answers the counts as JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::HarnessError;

/// How the target answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Ok,
    Fail,
    Timeout,
}

/// Requests per key and what they did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TargetStats {
    pub requests: u64,
    /// Distinct keys seen (requests without a key count as one key).
    pub keys: u64,
    /// Keys whose effect was applied.
    pub applied_keys: u64,
    /// Requests answered 503 in `fail` mode.
    pub failed: u64,
    /// Keys requested more than once (retries the key absorbed).
    pub repeated_keys: u64,
    /// Effects applied beyond the first per key (only requests without a key can do that).
    pub duplicate_effects: u64,
    #[serde(skip)]
    pub applied: BTreeSet<String>,
}

#[derive(Default)]
struct Book {
    mode: Option<(Mode, u64)>,
    /// key (None: no Idempotency-Key) → (requests, effects applied).
    per_key: BTreeMap<Option<String>, (u64, u64)>,
    requests: u64,
    failed: u64,
    log: Option<std::fs::File>,
}

impl Book {
    fn note(&mut self, line: serde_json::Value) {
        if let Some(f) = &mut self.log {
            let _ = writeln!(f, "{line}");
        }
    }
}

type Shared = Arc<Mutex<Book>>;

/// A running target; stops when dropped.
pub struct Target {
    pub addr: SocketAddr,
    book: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl Target {
    /// Listens on 127.0.0.1:`port` (0: a free port); when `port` is taken, on a free one
    /// (callers read [`Target::addr`]). Requests are logged to `log` when given.
    pub async fn start(port: u16, log: Option<&std::path::Path>) -> Result<Self, HarnessError> {
        let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => l,
            Err(_) if port != 0 => tokio::net::TcpListener::bind(("127.0.0.1", 0))
                .await
                .map_err(|e| HarnessError::io("bind the fake target", e))?,
            Err(e) => return Err(HarnessError::io("bind the fake target", e)),
        };
        let addr = listener
            .local_addr()
            .map_err(|e| HarnessError::io("fake target address", e))?;
        let log = match log {
            Some(p) => Some(
                std::fs::File::create(p)
                    .map_err(|e| HarnessError::io(format!("create {}", p.display()), e))?,
            ),
            None => None,
        };
        let book: Shared = Arc::new(Mutex::new(Book {
            log,
            ..Default::default()
        }));
        let app = Router::new()
            .route("/stats", get(stats))
            .route("/control", post(control))
            .fallback(any(effect))
            .with_state(book.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, book, server })
    }

    pub fn set_mode(&self, mode: Mode, delay: Duration) {
        self.book.lock().unwrap().mode = Some((mode, delay.as_millis() as u64));
    }

    pub fn stats(&self) -> TargetStats {
        stats_of(&self.book.lock().unwrap())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn stats_of(b: &Book) -> TargetStats {
    let mut s = TargetStats {
        requests: b.requests,
        keys: b.per_key.len() as u64,
        failed: b.failed,
        ..Default::default()
    };
    for (key, (requests, effects)) in &b.per_key {
        if *requests > 1 {
            s.repeated_keys += 1;
        }
        if *effects > 0 {
            s.applied_keys += 1;
            s.applied.insert(key.clone().unwrap_or_default());
        }
        s.duplicate_effects += effects.saturating_sub(1);
    }
    s
}

async fn effect(
    State(book): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let key = header("idempotency-key");
    let (mode, delay_ms, applied) = {
        let mut b = book.lock().unwrap();
        let (mode, delay_ms) = b.mode.unwrap_or((Mode::Ok, 10_000));
        b.requests += 1;
        let entry = b.per_key.entry(key.clone()).or_default();
        entry.0 += 1;
        let outcome = if mode == Mode::Fail {
            None
        } else {
            // A key applies once; a request without a key applies every time.
            let first = key.is_none() || entry.1 == 0;
            if first {
                entry.1 += 1;
            }
            Some(first)
        };
        if outcome.is_none() {
            b.failed += 1;
        }
        let effect = match outcome {
            None => "none (failed: 503)",
            Some(true) => "applied",
            Some(false) => "duplicate (already applied)",
        };
        // Logged under the lock, so lines never interleave.
        b.note(serde_json::json!({
            "method": method.as_str(), "path": uri.to_string(), "idempotency_key": key,
            "owner": header("x-reflex-owner"), "body": String::from_utf8_lossy(&body),
            "effect": effect,
        }));
        (mode, delay_ms, outcome)
    };
    match applied {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"error": "injected failure"})),
        ),
        Some(first) => {
            if mode == Mode::Timeout {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            (StatusCode::OK, Json(serde_json::json!({"applied": first})))
        }
    }
}

async fn stats(State(book): State<Shared>) -> Json<TargetStats> {
    Json(stats_of(&book.lock().unwrap()))
}

#[derive(Deserialize)]
struct ControlQuery {
    mode: Option<Mode>,
    delay_ms: Option<u64>,
}

async fn control(
    State(book): State<Shared>,
    Query(q): Query<ControlQuery>,
) -> Json<serde_json::Value> {
    let mut b = book.lock().unwrap();
    let (mut mode, mut delay_ms) = b.mode.unwrap_or((Mode::Ok, 10_000));
    if let Some(m) = q.mode {
        mode = m;
    }
    if let Some(d) = q.delay_ms {
        delay_ms = d;
    }
    b.mode = Some((mode, delay_ms));
    Json(serde_json::json!({"mode": mode, "delay_ms": delay_ms}))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn call(client: &reqwest::Client, t: &Target, key: Option<&str>) -> u16 {
        let mut r = client.delete(format!("http://{}/api/v1/pods/x", t.addr));
        if let Some(k) = key {
            r = r.header("Idempotency-Key", k);
        }
        r.send().await.unwrap().status().as_u16()
    }

    #[tokio::test]
    async fn applies_each_key_once_and_counts_what_repeats() {
        let t = Target::start(0, None).await.unwrap();
        let c = reqwest::Client::new();
        assert_eq!(call(&c, &t, Some("a")).await, 200);
        assert_eq!(call(&c, &t, Some("a")).await, 200);
        assert_eq!(call(&c, &t, Some("b")).await, 200);
        let s = t.stats();
        assert_eq!(
            (
                s.requests,
                s.keys,
                s.applied_keys,
                s.repeated_keys,
                s.duplicate_effects
            ),
            (3, 2, 2, 1, 0)
        );
        // Without a key nothing stops a second effect: that is a duplicate effect.
        call(&c, &t, None).await;
        call(&c, &t, None).await;
        assert_eq!(t.stats().duplicate_effects, 1);

        let mode: serde_json::Value = c
            .post(format!("http://{}/control?mode=fail", t.addr))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(mode["mode"], "fail");
        assert_eq!(call(&c, &t, Some("c")).await, 503);
        let s = t.stats();
        assert_eq!((s.failed, s.applied_keys), (1, 3), "{s:?}");
        assert!(!s.applied.contains("c"));
    }
}
