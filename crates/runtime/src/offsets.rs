//! Which offset is safe to commit: the end of the contiguous prefix of finished events.

use std::collections::BTreeSet;

/// foldhash rather than SipHash: looked up twice per event (begin, finish).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Tracks in-flight offsets per partition. An offset is safe once it and every earlier offset
/// taken from the partition are finished, so a commit never passes an unfinished event even
/// when lanes finish out of order.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    /// topic → partition → state; keyed by topic first so lookups borrow the `&str` (no
    /// allocation per event).
    partitions: HashMap<String, HashMap<i32, PartitionState>>,
}

#[derive(Debug, Default)]
struct PartitionState {
    in_flight: BTreeSet<i64>,
    highest_taken: i64,
    last_safe: Option<i64>,
}

impl OffsetTracker {
    /// Records that `offset` was taken from the partition and is now in flight.
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) {
        if !self.partitions.contains_key(topic) {
            self.partitions
                .insert(topic.to_string(), HashMap::default());
        }
        let Some(topic_state) = self.partitions.get_mut(topic) else {
            return;
        };
        let state = topic_state
            .entry(partition)
            .or_insert_with(|| PartitionState {
                // Nothing before the first taken offset is ours to store.
                last_safe: Some(offset - 1),
                ..PartitionState::default()
            });
        state.in_flight.insert(offset);
        state.highest_taken = state.highest_taken.max(offset);
    }

    /// Marks `offset` finished. Returns the new highest safe offset (the last finished offset of
    /// the contiguous prefix) when it advanced, i.e. when something new may be stored.
    pub fn finish(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let state = self.partitions.get_mut(topic)?.get_mut(&partition)?;
        if !state.in_flight.remove(&offset) {
            return None; // revoked meanwhile, or already finished
        }
        let safe = match state.in_flight.first() {
            Some(&lowest) => lowest - 1,
            None => state.highest_taken,
        };
        if state.last_safe.is_none_or(|last| safe > last) {
            state.last_safe = Some(safe);
            Some(safe)
        } else {
            None
        }
    }

    /// Forgets a partition (revoked in a rebalance): late completions for it are ignored.
    pub fn forget(&mut self, topic: &str, partition: i32) {
        if let Some(topic_state) = self.partitions.get_mut(topic) {
            topic_state.remove(&partition);
        }
    }

    /// Events in flight across all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions
            .values()
            .flat_map(HashMap::values)
            .map(|s| s.in_flight.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_finishes_only_advance_the_contiguous_prefix() {
        let mut t = OffsetTracker::default();
        for o in 10..15 {
            t.begin("a", 0, o);
        }
        assert_eq!(t.finish("a", 0, 12), None, "10 and 11 are still in flight");
        assert_eq!(t.finish("a", 0, 11), None);
        assert_eq!(t.finish("a", 0, 10), Some(12), "10..=12 are finished");
        assert_eq!(t.finish("a", 0, 14), None, "13 still in flight");
        assert_eq!(t.finish("a", 0, 13), Some(14));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent_and_forget_ignores_late_finishes() {
        let mut t = OffsetTracker::default();
        t.begin("a", 0, 5);
        t.begin("a", 1, 7);
        assert_eq!(t.finish("a", 1, 7), Some(7));
        t.forget("a", 0);
        assert_eq!(t.finish("a", 0, 5), None);
        assert_eq!(t.finish("a", 1, 7), None, "double finish is ignored");
    }

    #[test]
    fn reassigned_partition_starts_fresh() {
        let mut t = OffsetTracker::default();
        t.begin("a", 0, 100);
        t.forget("a", 0);
        t.begin("a", 0, 90);
        assert_eq!(t.finish("a", 0, 90), Some(90));
    }
}
