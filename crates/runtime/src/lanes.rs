//! Key lanes and batches: events of one key are processed, and their outputs enqueued, one
//! after another in offset order; different keys and lanes run concurrently.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::{debug, Instrument};

use crate::broker::{Consumer, Producer};
use crate::park::{is_release, Decision};
use crate::run::{RuntimeError, Shared};
use crate::settle::Enqueued;
use crate::stage::{Event, Output, Stage, StageError};
use crate::trace;

/// Most events a lane holds back while it builds batches (it stops taking from its queue
/// beyond this; they wait in the channel instead).
const LANE_LOOKAHEAD: usize = 1024;

/// How far into a lane's queue [`next_batch`] looks for events of keys not yet in the batch.
const BATCH_SCAN: usize = 256;

/// An event with its [`order_hash`], computed once by the loop (it picks the lane) and used
/// again to build batches.
pub(crate) type Hashed = (u64, Event);

/// The lane of an event with `hash` among `lanes`: the same key (or, without one, the same
/// partition) always takes the same lane.
pub(crate) fn lane_of(hash: u64, lanes: usize) -> usize {
    (hash % lanes as u64) as usize
}

/// One key lane: per-key sequential processing and enqueueing; its settler awaits the acks.
///
/// Each round takes what is already queued (never waiting for more) and processes a batch of
/// at most `batch_max` events with distinct keys ([`next_batch`]) together, so the stage can
/// share round trips. An event whose key is already in the batch waits for the next round:
/// events of one key are still processed, and their outputs enqueued, one after another.
pub(crate) async fn lane<S: Stage, C: Consumer, P: Producer>(
    shared: Arc<Shared<S, C, P>>,
    mut events: mpsc::UnboundedReceiver<Vec<Hashed>>,
    settle_tx: mpsc::UnboundedSender<Vec<Enqueued<P::Delivery>>>,
) {
    let batch_max = shared.batch_max.max(1);
    let mut queued: VecDeque<Hashed> = VecDeque::new();
    loop {
        if queued.is_empty() {
            match events.recv().await {
                Some(events) => queued.extend(events),
                None => return,
            }
        }
        while queued.len() < LANE_LOOKAHEAD {
            match events.try_recv() {
                Ok(events) => queued.extend(events),
                Err(_) => break,
            }
        }
        let batch = next_batch(&mut queued, batch_max);
        if !process_batch(&shared, batch, &settle_tx).await {
            return;
        }
    }
}

/// Takes the first event of each key from the front of `queued` (up to `max`, looking at most
/// [`BATCH_SCAN`] deep), in queue order; a later event of a key already met stays queued, in
/// order. Keyless events are ordered by their partition instead.
fn next_batch(queued: &mut VecDeque<Hashed>, max: usize) -> Vec<Event> {
    if max <= 1 || queued.len() == 1 {
        return queued
            .pop_front()
            .map(|(_, event)| event)
            .into_iter()
            .collect();
    }
    let mut batch = Vec::new();
    // Hashes of the keys met (a collision only keeps an event for the next round); a short
    // list, scanned.
    let mut keys_met: Vec<u64> = Vec::new();
    let mut skipped = Vec::new();
    for _ in 0..queued.len().min(BATCH_SCAN) {
        if batch.len() >= max {
            break;
        }
        let Some((hash, event)) = queued.pop_front() else {
            break;
        };
        if !keys_met.contains(&hash) {
            keys_met.push(hash);
            batch.push(event);
        } else {
            skipped.push((hash, event));
        }
    }
    for event in skipped.into_iter().rev() {
        queued.push_front(event);
    }
    batch
}

/// What orders events: their key, or their partition when they have none.
pub(crate) fn order_hash(event: &Event) -> u64 {
    // A fixed seed: lanes only need to be stable within the process.
    let state = foldhash::fast::FixedState::with_seed(0);
    match &event.key {
        Some(key) => state.hash_one(key),
        None => state.hash_one((&event.topic, event.partition)),
    }
}

/// Processes one batch (distinct keys): parking decisions, the stage's first attempt for all
/// of them at once, then per event in order retries, parking updates and enqueueing. Returns
/// false when the lane must stop.
async fn process_batch<S: Stage, C: Consumer, P: Producer>(
    shared: &Arc<Shared<S, C, P>>,
    batch: Vec<Event>,
    settle_tx: &mpsc::UnboundedSender<Vec<Enqueued<P::Delivery>>>,
) -> bool {
    // Handed to the settler together, once all are enqueued: one channel send and one settle
    // future per batch.
    let mut enqueued = Vec::with_capacity(batch.len());
    let mut decisions = Vec::with_capacity(batch.len());
    for event in &batch {
        decisions.push(match &shared.parking {
            Some(parking) => parking.decide(event).await,
            None if is_release(event) => Decision::Control,
            None => Decision::Process,
        });
    }
    let spans: Vec<tracing::Span> = batch
        .iter()
        .map(|event| trace::process_span(event, &shared.dead_letters.group))
        .collect();
    let to_process: Vec<usize> = (0..batch.len())
        .filter(|&i| matches!(decisions[i], Decision::Process | Decision::ProcessHead))
        .collect();
    // First attempts of a batch of more than one go through `process_batch`; a lone event
    // (and every retry) goes through `process` inside its own span.
    let mut first: Vec<Option<Result<Vec<Output>, StageError>>> =
        (0..batch.len()).map(|_| None).collect();
    if to_process.len() > 1 {
        let events: Vec<&Event> = to_process.iter().map(|&i| &batch[i]).collect();
        let started = Instant::now();
        let results = shared.stage.process_batch(&events).await;
        // Each event's share of the batch's time.
        let share = started.elapsed().as_secs_f64() / events.len() as f64;
        for (&i, result) in to_process.iter().zip(results) {
            shared.metrics.processing.record(share);
            first[i] = Some(result);
        }
    }
    for (((event, decision), span), first) in batch.into_iter().zip(decisions).zip(spans).zip(first)
    {
        let (mut outputs, failure) = match &decision {
            Decision::Control => (Vec::new(), None),
            Decision::Park {
                behind,
                not_before_ms,
            } => {
                debug!(parent: &span, behind = %behind, "event parked behind an earlier event of its key");
                let record = shared.dead_letters.park_record(
                    shared.stage.name(),
                    &event,
                    behind,
                    *not_before_ms,
                );
                (vec![record], None)
            }
            Decision::Process | Decision::ProcessHead => {
                shared
                    .dead_letters
                    .process(&shared.stage, &shared.retry, &shared.metrics, &event, first)
                    .instrument(span.clone())
                    .await
            }
        };
        if let Some(parking) = &shared.parking {
            match (&decision, failure) {
                (Decision::Process | Decision::ProcessHead, Some((class, not_before_ms)))
                    if class.is_retryable() =>
                {
                    parking.await_redelivery(&event, not_before_ms).await
                }
                (Decision::ProcessHead, _) => parking.settle_head(&event).await,
                _ => {}
            }
        }
        let dead_lettered = failure.is_some() || matches!(decision, Decision::Park { .. });
        trace::inject(&span, &mut outputs);
        drop(span);
        if outputs.is_empty() && decision != Decision::Control {
            shared.metrics.events_dropped.increment(1);
        }
        let mut deliveries = Vec::with_capacity(outputs.len());
        // Enqueued in order; the producer keeps per-partition order from here on.
        for output in &outputs {
            match shared.producer.send(output).await {
                Ok(delivery) => deliveries.push(delivery),
                Err(error) => {
                    shared.fail(RuntimeError::DeliveryFailed {
                        topic: event.topic.clone(),
                        message: error.to_string(),
                    });
                    // What was enqueued before still settles; this event stays unfinished.
                    let _ = settle_tx.send(enqueued);
                    return false;
                }
            }
        }
        enqueued.push((event, deliveries, dead_lettered));
    }
    // Only a panicking settler drops its receiver; the loop reports that panic.
    settle_tx.send(enqueued).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use reflex_core::Headers;

    fn event(key: Option<&'static str>, partition: i32, offset: i64) -> Event {
        Event {
            topic: "t".into(),
            partition,
            offset,
            timestamp_ms: None,
            key: key.map(|k| Bytes::from_static(k.as_bytes())),
            payload: None,
            headers: Headers::default(),
        }
    }

    fn offsets(events: &[Event]) -> Vec<i64> {
        events.iter().map(|e| e.offset).collect()
    }

    fn hashed<const N: usize>(events: [Event; N]) -> VecDeque<Hashed> {
        events.into_iter().map(|e| (order_hash(&e), e)).collect()
    }

    #[test]
    fn a_batch_takes_the_first_event_of_each_key_and_keeps_the_rest_in_order() {
        let mut queued = hashed([
            event(Some("a"), 0, 1),
            event(Some("b"), 0, 2),
            event(Some("a"), 0, 3),
            event(Some("c"), 0, 4),
            event(Some("b"), 0, 5),
            event(Some("a"), 0, 6),
        ]);
        assert_eq!(offsets(&next_batch(&mut queued, 64)), [1, 2, 4]);
        assert_eq!(
            offsets(&queued.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>()),
            [3, 5, 6]
        );
        assert_eq!(offsets(&next_batch(&mut queued, 64)), [3, 5]);
        assert_eq!(offsets(&next_batch(&mut queued, 64)), [6]);
        assert!(queued.is_empty());
    }

    #[test]
    fn a_batch_respects_its_limit_and_keyless_events_keep_partition_order() {
        let mut queued = hashed([
            event(None, 0, 1),
            event(None, 1, 2),
            event(None, 0, 3),
            event(Some("a"), 0, 4),
        ]);
        assert_eq!(offsets(&next_batch(&mut queued, 2)), [1, 2]);
        assert_eq!(offsets(&next_batch(&mut queued, 2)), [3, 4]);
        let mut queued = hashed([event(Some("a"), 0, 1), event(Some("b"), 0, 2)]);
        assert_eq!(
            offsets(&next_batch(&mut queued, 1)),
            [1],
            "batch_max = 1 is one at a time"
        );
    }
}
