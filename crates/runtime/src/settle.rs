//! Acks → offsets. When every record of an event is acknowledged, the event is finished in the
//! [`OffsetTracker`] and the end of the partition's contiguous finished prefix is stored on the
//! consumer (the client commits stored offsets). [`Membership`] keeps the tracker in step with
//! the group: revoked partitions are forgotten, so a late ack never stores an offset for them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use futures::stream::{FuturesUnordered, StreamExt};
use reflex_core::metrics as m;
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::broker::{Consumer, ProduceError, Producer};
use crate::http::Health;
use crate::offsets::OffsetTracker;
use crate::run::{RuntimeError, Shared};
use crate::stage::{Event, Stage};

/// The group membership as the loop sees it; the consumer reports every assignment change
/// here, synchronously, before it takes effect.
pub struct Membership {
    tracker: Mutex<OffsetTracker>,
    health: Arc<Health>,
    /// Counts rebalances, so parking state is reloaded for partitions we (re)gained.
    rebalances: Arc<AtomicU64>,
    assigned_partitions: metrics::Gauge,
}

impl Membership {
    pub fn new(stage: &'static str, health: Arc<Health>) -> Self {
        Self {
            tracker: Mutex::new(OffsetTracker::default()),
            health,
            rebalances: Arc::new(AtomicU64::new(0)),
            assigned_partitions: metrics::gauge!(m::ASSIGNED_PARTITIONS, "stage" => stage),
        }
    }

    /// Partitions were assigned (cooperative: only the new ones).
    pub fn assigned(&self, count: usize) {
        self.rebalances.fetch_add(1, Ordering::AcqRel);
        self.health.set_assigned();
        self.assigned_partitions.increment(count as f64);
        info!(partitions = count, "partitions assigned");
    }

    /// Partitions were revoked: their in-flight events are forgotten, so their late acks store
    /// nothing, and a partition assigned again starts from what was committed.
    pub fn revoked<'a>(&self, partitions: impl ExactSizeIterator<Item = (&'a str, i32)>) {
        self.rebalances.fetch_add(1, Ordering::AcqRel);
        let count = partitions.len();
        let mut tracker = self.tracker();
        for (topic, partition) in partitions {
            tracker.forget(topic, partition);
        }
        drop(tracker);
        self.assigned_partitions.decrement(count as f64);
        info!(partitions = count, "partitions revoked");
    }

    /// The rebalance count parking state compares its partitions' generation with.
    pub fn rebalances(&self) -> Arc<AtomicU64> {
        self.rebalances.clone()
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    pub(crate) fn tracker(&self) -> MutexGuard<'_, OffsetTracker> {
        // A poisoned lock only means another thread panicked mid-update of plain data.
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An event whose records are enqueued: the event, their deliveries, and whether it was
/// dead-lettered (not counted as output).
pub(crate) type Enqueued<D> = (Event, Vec<D>, bool);

impl<S: Stage, C: Consumer, P: Producer> Shared<S, C, P> {
    /// Awaits the acks of one lane batch's records in enqueue order and finishes each event
    /// whose records are all acknowledged: before waiting on a record that is not acknowledged
    /// yet, everything acknowledged so far is finished and its offsets stored, under one lock
    /// and in one call. A failed delivery stops the worker, and its event stays unfinished.
    ///
    /// One future per batch instead of per event (measured as part of the per-event overhead);
    /// the price is that an event is finished only after the earlier events of its batch,
    /// which were enqueued just before it.
    async fn settle(&self, batch: Vec<Enqueued<P::Delivery>>) {
        let mut finished: Vec<Event> = Vec::with_capacity(batch.len());
        let mut produced = 0;
        for (event, deliveries, dead_lettered) in batch {
            let count = deliveries.len();
            for delivery in deliveries {
                let mut delivery = std::pin::pin!(delivery);
                let result = match futures::poll!(delivery.as_mut()) {
                    Poll::Ready(result) => result,
                    Poll::Pending => {
                        self.finish(&mut finished, &mut produced);
                        delivery.await
                    }
                };
                let Err(error) = result else {
                    continue;
                };
                let (topic, message) = match error {
                    ProduceError::Rejected { topic, message } => (topic, message),
                    ProduceError::Dropped => {
                        (format!("an output of {}", event.topic), error.to_string())
                    }
                };
                self.finish(&mut finished, &mut produced);
                self.fail(RuntimeError::DeliveryFailed { topic, message });
                return;
            }
            if !dead_lettered {
                produced += count;
            }
            finished.push(event);
        }
        self.finish(&mut finished, &mut produced);
    }

    /// Marks `finished` events finished and stores the partitions' new safe offsets.
    fn finish(&self, finished: &mut Vec<Event>, produced: &mut usize) {
        if finished.is_empty() {
            return;
        }
        self.metrics
            .events_out
            .increment(std::mem::take(produced) as u64);
        // (topic, partition, highest safe offset) per partition that advanced.
        let mut stores: Vec<(&str, i32, i64)> = Vec::new();
        // Stored while the tracker is locked: settles of one partition run concurrently, and a
        // store done after the lock was released could land after a later, higher one and move
        // the committed offset back (seen: 4 records left uncommitted at the end of a stream).
        let mut tracker = self.membership.tracker();
        for event in finished.iter() {
            let Some(offset) = tracker.finish(&event.topic, event.partition, event.offset) else {
                continue;
            };
            match stores
                .iter_mut()
                .find(|(t, p, _)| *p == event.partition && *t == event.topic)
            {
                // Safe offsets only grow under the lock: the later one is the higher.
                Some(store) => store.2 = offset,
                None => stores.push((&event.topic, event.partition, offset)),
            }
        }
        if !stores.is_empty() {
            if let Err(e) = self.consumer.store_offsets(&stores) {
                debug!(offsets = ?stores, error = %e, "offsets not stored (partition revoked?)");
            }
        }
        drop(tracker);
        let count = finished.len();
        finished.clear();
        self.done(count);
    }
}

/// Awaits the acks of one lane's enqueued batches concurrently (in whatever order they come)
/// and settles them; replaces a task spawn per event (measured as part of the per-event
/// overhead). Ends once the lane is gone and every event it handed over is settled.
pub(crate) async fn settler<S: Stage, C: Consumer, P: Producer>(
    shared: Arc<Shared<S, C, P>>,
    mut enqueued: mpsc::UnboundedReceiver<Vec<Enqueued<P::Delivery>>>,
) {
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            received = enqueued.recv(), if open => match received {
                Some(batch) => {
                    let shared = &shared;
                    pending.push(async move { shared.settle(batch).await });
                }
                None => open = false,
            },
            Some(()) = pending.next(), if !pending.is_empty() => {}
            else => break,
        }
    }
}
