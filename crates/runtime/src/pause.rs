//! The loop's two reasons to stop reading, as small state: [`Backpressure`] (too much in
//! flight for too long) and [`DelayedPartitions`] (a record not due yet,
//! [`Stage::not_before_ms`](crate::Stage::not_before_ms)). The loop asks them what to do and
//! does it on the consumer.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::broker::TopicPartition;

/// How long the loop may stop taking records at `max_in_flight` before it pauses partitions
/// (well below `max.poll.interval.ms`).
pub(crate) const BACKPRESSURE_PAUSE_AFTER: Duration = Duration::from_secs(5);

/// At `max_in_flight` the loop first just stops taking records (librdkafka keeps what it
/// fetched); only if that lasts `pause_after` does it pause the partitions, which keeps the
/// group session and poll interval alive but drops and refetches what was prefetched
/// (measured: pausing at every saturation cost the router 3.9x throughput). Paused partitions
/// resume at half the limit.
#[derive(Debug)]
pub(crate) struct Backpressure {
    max_in_flight: usize,
    pause_after: Duration,
    saturated_since: Option<Instant>,
    paused: bool,
}

impl Backpressure {
    pub fn new(max_in_flight: usize, pause_after: Duration) -> Self {
        Self {
            max_in_flight: max_in_flight.max(1),
            pause_after,
            saturated_since: None,
            paused: false,
        }
    }

    /// Ends a saturation once an event finished below the limit.
    pub fn observe(&mut self, in_flight: usize) {
        if in_flight < self.max_in_flight {
            self.saturated_since = None;
        }
    }

    /// Whether the loop reads now: not while saturated, but always while paused (polling keeps
    /// the member in its group).
    pub fn reading(&self) -> bool {
        self.saturated_since.is_none() || self.paused
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    /// When the partitions are to be paused: the saturation has lasted `pause_after`.
    pub fn pause_at(&self) -> Option<Instant> {
        match self.saturated_since {
            Some(since) if !self.paused => Some(since + self.pause_after),
            _ => None,
        }
    }

    /// A record was taken and `in_flight` are now in flight.
    pub fn took(&mut self, in_flight: usize) {
        if !self.paused && in_flight >= self.max_in_flight {
            self.saturated_since = Some(Instant::now());
        }
    }

    /// The pause deadline passed; `paused` says whether pausing the partitions worked.
    pub fn pause_done(&mut self, paused: bool) {
        self.saturated_since = None;
        self.paused = paused;
    }

    /// Whether paused partitions should resume now: at most half the limit is in flight.
    pub fn should_resume(&self, in_flight: usize) -> bool {
        self.paused && in_flight <= self.max_in_flight / 2
    }

    pub fn resumed(&mut self) {
        self.paused = false;
    }
}

/// Partitions paused until a record is due: the offset to read again and when.
#[derive(Debug, Default)]
pub(crate) struct DelayedPartitions {
    partitions: HashMap<TopicPartition, (i64, Instant)>,
}

/// What to do with a record read from a partition.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read {
    /// Fetched past a delayed record before the pause took effect: it is read again later.
    Discard,
    /// Take it (and decide afresh whether it is due).
    Take,
}

impl DelayedPartitions {
    pub fn len(&self) -> usize {
        self.partitions.len()
    }

    pub fn contains(&self, partition: &TopicPartition) -> bool {
        self.partitions.contains_key(partition)
    }

    /// The earliest due time.
    pub fn next_due(&self) -> Option<Instant> {
        self.partitions.values().map(|(_, due)| *due).min()
    }

    /// Reads `offset` of `partition` again at `due`.
    pub fn delay(&mut self, partition: TopicPartition, offset: i64, due: Instant) {
        self.partitions.insert(partition, (offset, due));
    }

    /// Removes and returns the partitions due by `now`.
    pub fn take_due(&mut self, now: Instant) -> Vec<TopicPartition> {
        let due: Vec<TopicPartition> = self
            .partitions
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in &due {
            self.partitions.remove(tp);
        }
        due
    }

    /// A record at `offset` was read from `partition`.
    pub fn read(&mut self, topic: &str, partition: i32, offset: i64) -> Read {
        if self.partitions.is_empty() {
            return Read::Take;
        }
        let tp = TopicPartition::new(topic, partition);
        match self.partitions.get(&tp) {
            Some(&(delayed, _)) if offset > delayed => Read::Discard,
            Some(_) => {
                // Read again (resumed, or re-assigned).
                self.partitions.remove(&tp);
                Read::Take
            }
            None => Read::Take,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn saturation_stops_reading_then_pauses_after_the_threshold_and_resumes_at_half() {
        let mut bp = Backpressure::new(4, 5 * SECOND);
        bp.took(3);
        assert!(bp.reading() && bp.pause_at().is_none(), "below the limit");
        bp.took(4);
        assert!(!bp.reading(), "at the limit: stop taking records");
        assert_eq!(bp.pause_at(), Some(Instant::now() + 5 * SECOND));
        bp.observe(3);
        assert!(bp.reading(), "one finished: read again, no pause");
        bp.took(4);
        bp.pause_done(true);
        assert!(
            bp.paused() && bp.reading(),
            "paused partitions keep polling"
        );
        assert_eq!(bp.pause_at(), None);
        assert!(!bp.should_resume(3));
        assert!(bp.should_resume(2));
        bp.resumed();
        assert!(!bp.paused());
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_partition_discards_later_records_until_its_record_is_read_again() {
        let mut delayed = DelayedPartitions::default();
        let due = Instant::now() + SECOND;
        delayed.delay(TopicPartition::new("t", 0), 5, due);
        assert_eq!(delayed.read("t", 0, 6), Read::Discard, "prefetched past it");
        assert_eq!(delayed.read("t", 1, 9), Read::Take, "other partitions flow");
        assert_eq!(delayed.next_due(), Some(due));
        assert!(delayed.take_due(Instant::now()).is_empty());
        assert_eq!(delayed.take_due(due), [TopicPartition::new("t", 0)]);
        delayed.delay(TopicPartition::new("t", 0), 5, due);
        assert_eq!(
            delayed.read("t", 0, 5),
            Read::Take,
            "the record itself again"
        );
        assert_eq!(delayed.len(), 0);
    }
}
