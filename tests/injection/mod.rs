//! Shared by the injection tests (`tests/injection_e2e.rs`, the injection family of
//! `tests/hostile_corpus.rs`): an HTTP server recording what arrived, pod events with hostile
//! fields, Redis rows to look up.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, Method, Uri};
use reflex_testkit::Stack;

use crate::common::POD_SCHEMA;

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Arrived {
    pub method: String,
    /// The request target as sent: raw path and query, nothing decoded or normalised.
    pub target: String,
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// An HTTP server that records every request and answers 200 with a JSON object (what an
/// http lookup reads).
#[derive(Default)]
pub struct Recorder {
    seen: Mutex<Vec<Arrived>>,
}

impl Recorder {
    pub async fn start() -> (Arc<Recorder>, SocketAddr) {
        let recorder = Arc::new(Recorder::default());
        let state = recorder.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: String| {
                let state = state.clone();
                async move {
                    state.seen.lock().unwrap().push(Arrived {
                        method: method.to_string(),
                        target: uri
                            .path_and_query()
                            .map(|p| p.as_str().to_string())
                            .unwrap_or_default(),
                        headers: headers
                            .iter()
                            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.into())))
                            .collect(),
                        body,
                    });
                    axum::Json(serde_json::json!({"service": "svc-from-http"}))
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (recorder, addr)
    }

    pub fn seen(&self) -> Vec<Arrived> {
        self.seen.lock().unwrap().clone()
    }

    pub fn with_key(&self, key: &str) -> Vec<Arrived> {
        self.seen()
            .into_iter()
            .filter(|a| a.headers.get("idempotency-key").map(String::as_str) == Some(key))
            .collect()
    }
}

/// A pod event with the given (hostile) fields, in Confluent wire format.
pub fn pod_event_with(
    schema_id: u32,
    cluster: &str,
    namespace: &str,
    pod: &str,
    reason: &str,
) -> Vec<u8> {
    let schema = reflex_core::avro::parse_schema(POD_SCHEMA).unwrap();
    let event = serde_json::json!({
        "cluster": cluster, "namespace": namespace, "pod": pod, "reason": reason,
        "restart_count": 6, "seq": 1, "rollout_in_progress": false, "labels": {}
    });
    reflex_core::wire::encode_frame(
        schema_id,
        &reflex_core::avro::json_to_datum(&schema, &event).unwrap(),
    )
}

/// Writes `team` into each Redis hash `key` (an owner lookup's rows).
pub async fn set_teams(stack: &Stack, rows: &[(String, &str)]) {
    let redis = redis::Client::open(stack.redis_url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    for (key, team) in rows {
        let _: () = redis::cmd("HSET")
            .arg(key)
            .arg("team")
            .arg(*team)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}
