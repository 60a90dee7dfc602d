//! The worker's own group lag, sampled in the background for `/metrics`.

use std::time::Duration;

use tracing::debug;

use crate::config::{KafkaSettings, RuntimeSettings};

/// Measures this worker's own group lag every `lag_interval_ms` and exports it.
pub(crate) async fn monitor(kafka: KafkaSettings, runtime: RuntimeSettings) {
    let thresholds = reflex_lag::Thresholds {
        window: runtime.lag_window,
        stall_after: runtime.lag_stall_after,
        stop_after: runtime.lag_stop_after,
    };
    let mut evaluator = reflex_lag::Evaluator::new(thresholds);
    let mut reader = None;
    loop {
        tokio::time::sleep(runtime.lag_interval).await;
        let (k, r) = (kafka.clone(), reader.take());
        let result = tokio::task::spawn_blocking(move || {
            let mut reader = match r {
                Some(r) => r,
                None => reflex_lag::LagReader::new(
                    &k.bootstrap_servers,
                    &k.properties,
                    Duration::from_secs(10),
                )?,
            };
            let sample = reader.read(&k.group_id, &k.input_topics, &k.properties);
            sample.map(|s| (reader, s))
        })
        .await;
        match result {
            Ok(Ok((r, sample))) => {
                let status = evaluator.observe(sample.clone());
                reflex_lag::export(&sample, status);
                reader = Some(r);
            }
            Ok(Err(e)) => debug!(error = %e, "lag sample failed"),
            Err(e) => debug!(error = %e, "lag sampler panicked"),
        }
    }
}
