//! The worker's own group lag, sampled in the background for `/metrics`.

use std::time::Duration;

use tracing::debug;

use crate::config::{KafkaSettings, RuntimeSettings};

/// Reads this worker's own group lag: the blocking client runs off the async runtime and is
/// kept between reads. The lag monitor and the router's ticker both read through it.
#[derive(Default)]
pub struct OwnLag(Option<reflex_lag::LagReader>);

impl OwnLag {
    pub async fn read(&mut self, kafka: &KafkaSettings) -> Result<reflex_lag::GroupLag, String> {
        let (k, r) = (kafka.clone(), self.0.take());
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
            Ok(Ok((reader, sample))) => {
                self.0 = Some(reader);
                Ok(sample)
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("lag reader panicked: {e}")),
        }
    }
}

/// Measures this worker's own group lag every `lag_interval_ms` and exports it.
pub(crate) async fn monitor(kafka: KafkaSettings, runtime: RuntimeSettings) {
    let thresholds = reflex_lag::Thresholds {
        window: runtime.lag_window,
        stall_after: runtime.lag_stall_after,
        stop_after: runtime.lag_stop_after,
    };
    let mut evaluator = reflex_lag::Evaluator::new(thresholds);
    let mut own = OwnLag::default();
    loop {
        tokio::time::sleep(runtime.lag_interval).await;
        match own.read(&kafka).await {
            Ok(sample) => {
                let status = evaluator.observe(sample.clone());
                reflex_lag::export(&sample, status);
            }
            Err(e) => debug!(error = %e, "lag sample failed"),
        }
    }
}
