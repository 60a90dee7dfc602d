//! In-memory test doubles of the loop's [`Consumer`] and [`Producer`]: partition logs with
//! offsets, a group assignment, pause/resume/seek, stored and committed offsets with
//! librdkafka's meaning, and acks the test can hold back, release or fail. The real-broker
//! behaviour stays covered by the end-to-end tests in `tests/`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use crate::broker::{
    ConsumeError, Consumer, ConsumerCallError, ProduceError, Producer, TopicPartition,
};
use crate::settle::Membership;
use crate::stage::{Event, Output};

type AckRule = Box<dyn Fn(&Output) -> bool + Send>;

#[derive(Default)]
struct State {
    logs: BTreeMap<TopicPartition, Vec<Event>>,
    assignment: BTreeSet<TopicPartition>,
    /// Next offset to read.
    positions: HashMap<TopicPartition, i64>,
    paused: BTreeSet<TopicPartition>,
    /// Next offset to read after a restart (librdkafka's stored offset, i.e. last done + 1).
    stored: HashMap<TopicPartition, i64>,
    /// Every `store_offset` call, even refused ones: (partition, next offset).
    store_calls: Vec<(TopicPartition, i64)>,
    committed: HashMap<TopicPartition, i64>,
    /// Where reading last stopped, so partitions take turns.
    turn: usize,
    /// Every record sent, acknowledged or not.
    sent: Vec<Output>,
    /// Records whose ack `hold` matched, waiting for the test.
    held: Vec<(Output, oneshot::Sender<Result<(), ProduceError>>)>,
    hold: Option<AckRule>,
}

/// A broker with one consumer group member and its producer.
#[derive(Default)]
pub(crate) struct MemoryBroker {
    state: Mutex<State>,
    /// Something the consumer may be waiting for changed (a record, a resume, an assignment).
    changed: Notify,
}

impl MemoryBroker {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a record (key, payload) to a partition's log; returns its offset.
    pub fn append(&self, topic: &str, partition: i32, key: &str, payload: &str) -> i64 {
        let tp = TopicPartition::new(topic, partition);
        let mut state = self.state();
        let log = state.logs.entry(tp).or_default();
        let offset = log.len() as i64;
        log.push(Event {
            topic: topic.into(),
            partition,
            offset,
            timestamp_ms: Some(1),
            key: Some(key.to_owned().into()),
            payload: Some(payload.to_owned().into()),
            headers: Default::default(),
        });
        drop(state);
        self.changed.notify_one();
        offset
    }

    /// Assigns partitions to the member (it reads from their committed offset), telling
    /// `membership` first, as librdkafka's rebalance callback does.
    pub fn assign(&self, membership: &Membership, partitions: &[TopicPartition]) {
        membership.assigned(partitions.len());
        let mut state = self.state();
        for tp in partitions {
            let start = state.committed.get(tp).copied().unwrap_or(0);
            state.positions.insert(tp.clone(), start);
            state.paused.remove(tp);
            state.assignment.insert(tp.clone());
        }
        drop(state);
        self.changed.notify_one();
    }

    /// Revokes partitions: `membership` hears first; stored offsets are committed (librdkafka
    /// commits on rebalance) and the partitions are no longer the member's.
    pub fn revoke(&self, membership: &Membership, partitions: &[TopicPartition]) {
        membership.revoked(
            partitions
                .iter()
                .map(|tp| (tp.topic.as_str(), tp.partition)),
        );
        let mut state = self.state();
        for tp in partitions {
            if let Some(next) = state.stored.remove(tp) {
                state.committed.insert(tp.clone(), next);
            }
            state.assignment.remove(tp);
            state.positions.remove(tp);
            state.paused.remove(tp);
        }
    }

    /// Another member commits `next` for a partition this one does not own.
    pub fn commit_elsewhere(&self, tp: &TopicPartition, next: i64) {
        self.state().committed.insert(tp.clone(), next);
    }

    /// Holds back the acks of records matching `rule` (and only those) until released.
    pub fn hold_acks(&self, rule: impl Fn(&Output) -> bool + Send + 'static) {
        self.state().hold = Some(Box::new(rule));
    }

    /// Acknowledges every held record and stops holding.
    pub fn release_acks(&self) {
        let mut state = self.state();
        state.hold = None;
        for (_, ack) in state.held.drain(..) {
            let _ = ack.send(Ok(()));
        }
    }

    /// Acknowledges the `n` records held longest; later ones stay held.
    pub fn ack_first_held(&self, n: usize) {
        let mut state = self.state();
        for (_, ack) in state.held.drain(..n) {
            let _ = ack.send(Ok(()));
        }
    }

    /// Fails the held records' deliveries and stops holding.
    pub fn fail_held_acks(&self, message: &str) {
        let mut state = self.state();
        state.hold = None;
        for (output, ack) in state.held.drain(..) {
            let _ = ack.send(Err(ProduceError::Rejected {
                topic: output.topic,
                message: message.into(),
            }));
        }
    }

    pub fn held(&self) -> usize {
        self.state().held.len()
    }

    /// Records sent to `topic`, in order.
    pub fn sent_to(&self, topic: &str) -> Vec<Output> {
        let state = self.state();
        state
            .sent
            .iter()
            .filter(|o| o.topic == topic)
            .cloned()
            .collect()
    }

    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        self.state().positions.get(tp).copied()
    }

    pub fn is_paused(&self, tp: &TopicPartition) -> bool {
        self.state().paused.contains(tp)
    }

    /// The stored next offset of a partition.
    pub fn stored(&self, tp: &TopicPartition) -> Option<i64> {
        self.state().stored.get(tp).copied()
    }

    pub fn store_calls(&self) -> Vec<(TopicPartition, i64)> {
        self.state().store_calls.clone()
    }

    pub fn committed(&self, tp: &TopicPartition) -> Option<i64> {
        self.state().committed.get(tp).copied()
    }

    /// The next readable record of an assigned, unpaused partition, partitions taking turns.
    fn next_record(&self) -> Option<Event> {
        let mut state = self.state();
        let readable: Vec<TopicPartition> = state
            .assignment
            .iter()
            .filter(|tp| !state.paused.contains(*tp))
            .filter(|tp| {
                let position = state.positions.get(*tp).copied().unwrap_or(0);
                state
                    .logs
                    .get(*tp)
                    .is_some_and(|log| (position as usize) < log.len())
            })
            .cloned()
            .collect();
        if readable.is_empty() {
            return None;
        }
        state.turn = state.turn.wrapping_add(1);
        let tp = &readable[state.turn % readable.len()];
        let position = state.positions[tp];
        state.positions.insert(tp.clone(), position + 1);
        Some(state.logs[tp][position as usize].clone())
    }
}

/// The member's consumer.
pub(crate) struct MemoryConsumer(pub Arc<MemoryBroker>);

impl Consumer for MemoryConsumer {
    async fn recv(&self) -> Result<Event, ConsumeError> {
        loop {
            // A fetch takes (virtual) time, as on a real broker: a loop that re-reads one
            // record forever lets the test's clock run, so the test fails instead of hanging.
            // Before taking the record, never after: the loop drops this future when another
            // branch wins, and a dropped `recv` must not lose a record (as rdkafka's).
            tokio::time::sleep(Duration::from_millis(1)).await;
            if let Some(event) = self.0.next_record() {
                return Ok(event);
            }
            // A permit is kept when nothing waits, so a change between the check and here
            // is not missed.
            self.0.changed.notified().await;
        }
    }

    fn try_recv(&self) -> Option<Result<Event, ConsumeError>> {
        // Already fetched: no (virtual) fetch time.
        self.0.next_record().map(Ok)
    }

    fn pause(&self, partitions: &[TopicPartition]) -> Result<(), ConsumerCallError> {
        let mut state = self.0.state();
        for tp in partitions {
            if !state.assignment.contains(tp) {
                return Err(ConsumerCallError(format!("{tp:?} is not assigned")));
            }
            state.paused.insert(tp.clone());
        }
        Ok(())
    }

    fn resume(&self, partitions: &[TopicPartition]) -> Result<(), ConsumerCallError> {
        let mut state = self.0.state();
        for tp in partitions {
            state.paused.remove(tp);
        }
        drop(state);
        self.0.changed.notify_one();
        Ok(())
    }

    fn seek(&self, tp: &TopicPartition, offset: i64) -> Result<(), ConsumerCallError> {
        let mut state = self.0.state();
        if !state.assignment.contains(tp) {
            return Err(ConsumerCallError(format!("{tp:?} is not assigned")));
        }
        state.positions.insert(tp.clone(), offset);
        drop(state);
        self.0.changed.notify_one();
        Ok(())
    }

    fn store_offset(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<(), ConsumerCallError> {
        let tp = TopicPartition::new(topic, partition);
        let mut state = self.0.state();
        state.store_calls.push((tp.clone(), offset + 1));
        if !state.assignment.contains(&tp) {
            // As librdkafka: only assigned partitions have offsets to store.
            return Err(ConsumerCallError(format!("{tp:?} is not assigned")));
        }
        state.stored.insert(tp, offset + 1);
        Ok(())
    }

    fn commit(&self) -> Result<(), ConsumerCallError> {
        let mut state = self.0.state();
        let stored: Vec<(TopicPartition, i64)> = state
            .stored
            .iter()
            .map(|(tp, next)| (tp.clone(), *next))
            .collect();
        state.committed.extend(stored);
        Ok(())
    }

    fn leave(&self) {
        self.0.state().assignment.clear();
    }

    fn assignment(&self) -> Result<Vec<TopicPartition>, ConsumerCallError> {
        Ok(self.0.state().assignment.iter().cloned().collect())
    }
}

/// The member's producer: every record is acknowledged at once unless the test holds it.
pub(crate) struct MemoryProducer(pub Arc<MemoryBroker>);

impl Producer for MemoryProducer {
    type Delivery = MemoryDelivery;

    async fn send(&self, output: &Output) -> Result<MemoryDelivery, ProduceError> {
        let (ack, delivery) = oneshot::channel();
        let mut state = self.0.state();
        state.sent.push(output.clone());
        if state.hold.as_ref().is_some_and(|hold| hold(output)) {
            state.held.push((output.clone(), ack));
        } else {
            let _ = ack.send(Ok(()));
        }
        Ok(MemoryDelivery(delivery))
    }
}

pub(crate) struct MemoryDelivery(oneshot::Receiver<Result<(), ProduceError>>);

impl Future for MemoryDelivery {
    type Output = Result<(), ProduceError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|ack| ack.unwrap_or(Err(ProduceError::Dropped)))
    }
}
