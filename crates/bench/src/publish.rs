//! Publishing load: the producer the harnesses use, a pacer for a target rate, and delivery
//! tracking that never makes the sender wait for acknowledgements.
//!
//! The records themselves are built with `reflexctl::publish` (the CloudEvents headers and the
//! Avro encoding `reflexctl publish` uses), so the load looks like what an operator publishes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::HarnessError;

/// An idempotent producer with the Java-compatible partitioner the workers use, and a queue
/// large enough for a burst of load.
pub fn producer(bootstrap: &str) -> Result<FutureProducer, HarnessError> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "reflex-bench")
        .set("log_level", "3")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "60000")
        .create()
        .map_err(|e| HarnessError::kafka(format!("producer for {bootstrap}"), e))
}

/// How many events are due at a steady rate: event `n` (0-based) is due at `start + n / rate`.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    start: Instant,
    /// Events per second; `None`: as fast as possible.
    rate: Option<f64>,
}

impl Pacer {
    pub fn new(rate: Option<f64>) -> Self {
        Self {
            start: Instant::now(),
            rate,
        }
    }

    /// Events due by now, at most `total`.
    pub fn due(&self, total: u64) -> u64 {
        match self.rate {
            None => total,
            Some(r) => ((self.start.elapsed().as_secs_f64() * r) as u64 + 1).min(total),
        }
    }

    pub fn started(&self) -> Instant {
        self.start
    }
}

/// Where a record ended: its (partition, offset), or why it was not delivered.
pub type Delivery = Result<(i32, i64), String>;

/// Queues records and hands each one's delivery report, with its tag, to a callback run by a
/// task of its own; [`Tracker::finish`] waits for every report.
pub struct Tracker<T> {
    tx: mpsc::Sender<(T, DeliveryFuture)>,
    task: JoinHandle<()>,
    /// Records queued whose report has not been handled yet.
    pending: Arc<AtomicU64>,
}

impl<T: Send + 'static> Tracker<T> {
    pub fn new(mut on_delivery: impl FnMut(T, Delivery) + Send + 'static) -> Self {
        let (tx, mut rx) = mpsc::channel::<(T, DeliveryFuture)>(100_000);
        let pending = Arc::new(AtomicU64::new(0));
        let left = pending.clone();
        let task = tokio::spawn(async move {
            while let Some((tag, future)) = rx.recv().await {
                let result = match future.await {
                    Ok(Ok(d)) => Ok((d.partition, d.offset)),
                    Ok(Err((e, _))) => Err(e.to_string()),
                    Err(_) => Err("the producer stopped before the broker answered".into()),
                };
                on_delivery(tag, result);
                left.fetch_sub(1, Ordering::SeqCst);
            }
        });
        Self { tx, task, pending }
    }

    /// Queues `record`, waiting while the producer's queue is full. An error here means the
    /// record was not queued (its callback is not called).
    pub async fn send<K: ToBytes + ?Sized, P: ToBytes + ?Sized>(
        &self,
        producer: &FutureProducer,
        mut record: FutureRecord<'_, K, P>,
        tag: T,
    ) -> Result<(), KafkaError> {
        loop {
            match producer.send_result(record) {
                Ok(future) => {
                    self.pending.fetch_add(1, Ordering::SeqCst);
                    let _ = self.tx.send((tag, future)).await;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Waits up to `timeout` until every record queued so far has its delivery report handled;
    /// false when some are still pending.
    pub async fn settle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.pending.load(Ordering::SeqCst) > 0 {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Waits until every queued record has its delivery report.
    pub async fn finish(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_spreads_events_over_time() {
        let p = Pacer::new(Some(100.0));
        assert_eq!(p.due(1000), 1, "the first event is due at once");
        std::thread::sleep(Duration::from_millis(110));
        let due = p.due(1000);
        assert!((11..=30).contains(&due), "{due}");
        assert_eq!(p.due(5), 5);
        assert_eq!(Pacer::new(None).due(7), 7);
    }
}
