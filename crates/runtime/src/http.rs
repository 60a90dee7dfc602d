//! The HTTP endpoint every worker serves on `runtime.http_listen`: `/metrics` (Prometheus text
//! format, names from `reflex_core::metrics`), `/healthz` (the process is alive) and `/readyz`
//! (subscribed, had its first group assignment, and not draining).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets (seconds) for processing-time histograms: 50 µs to 10 s.
const SECONDS_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// Readiness as the loop sees it.
#[derive(Debug, Default)]
pub struct Health {
    assigned: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    pub fn set_assigned(&self) {
        self.assigned.store(true, Ordering::Release);
    }
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
    pub fn is_ready(&self) -> bool {
        self.assigned.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }
}

/// How often the recorder's upkeep drains histogram samples into their buckets.
const METRICS_UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The process-wide Prometheus recorder (installed once; later calls reuse it).
///
/// A thread runs the recorder's upkeep every 5 s (`METRICS_UPKEEP_EVERY`): `install_recorder`
/// leaves that to the caller, and without it every histogram sample (one per event) was kept
/// until the next scrape, so a worker nobody scraped grew without bound (measured: +97 MiB
/// over a 5M-event drain).
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), &SECONDS_BUCKETS)
                .ok()?
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()?;
            let upkeep = handle.clone();
            let started = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(METRICS_UPKEEP_EVERY);
                    upkeep.run_upkeep();
                });
            if let Err(e) = started {
                tracing::warn!(error = %e, "metrics upkeep thread not started: histograms grow until scraped");
            }
            Some(handle)
        })
        .as_ref()
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
}

/// Binds `listen` and serves until the process exits; returns the bound address.
pub async fn serve(listen: &str, health: Arc<Health>) -> std::io::Result<SocketAddr> {
    // Registers the recorder before any metric is touched, so nothing is missed.
    let _ = prometheus();
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { health });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(addr)
}

async fn metrics() -> (StatusCode, String) {
    match prometheus() {
        Some(handle) => (StatusCode::OK, handle.render()),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable (another recorder was installed first)\n".into(),
        ),
    }
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for a group assignment, or draining",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflex_core::metrics as m;

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let health = Arc::new(Health::default());
        let addr = serve("127.0.0.1:0", health.clone()).await.unwrap();
        metrics::counter!(m::EVENTS_IN, "stage" => "test").increment(3);
        let get = |path: &'static str| async move {
            let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        };
        assert_eq!(get("/healthz").await.0, 200);
        assert_eq!(get("/readyz").await.0, 503);
        health.set_assigned();
        assert_eq!(get("/readyz").await.0, 200);
        health.set_draining();
        assert_eq!(get("/readyz").await.0, 503);
        let (status, body) = get("/metrics").await;
        assert_eq!(status, 200);
        assert!(
            body.contains("reflex_events_in_total{stage=\"test\"} 3"),
            "{body}"
        );
    }
}
