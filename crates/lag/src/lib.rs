//! Consumer lag for any consumer group, in offsets **and seconds**, with a Burrow-style status.
//!
//! - **Offsets**: per partition, `high watermark - committed offset` (a partition without a
//!   commit counts from the low watermark, as a new consumer with `earliest` would).
//! - **Seconds**: the age of the oldest unconsumed record, `now - timestamp(record at the
//!   committed offset)`; 0 when the partition is caught up. Record timestamps are read once per
//!   (partition, offset) and cached, so a stuck group costs no repeated reads.
//! - **Status** over a sliding window of samples (see [`Evaluator`]), with Burrow's names: `OK`,
//!   `WARN` (lag grew across the whole window while commits moved), `STALL` (lag > 0 and no
//!   partition's commit moved for `stall_after`), `STOP` (the same for `stop_after`, longer),
//!   `ERR` (a committed offset went backwards: a rewind or reset). Burrow tells STOP from STALL
//!   by commit timestamps, which the Kafka protocol does not expose to clients; here STOP is a
//!   longer STALL.
//!
//! Metric names follow kafka-lag-exporter, so existing dashboards work ([`export`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;
use thiserror::Error;

/// `kafka_consumergroup_group_lag{group,topic,partition}` (offsets).
pub const GROUP_LAG: &str = "kafka_consumergroup_group_lag";
/// `kafka_consumergroup_group_lag_seconds{group,topic,partition}`.
pub const GROUP_LAG_SECONDS: &str = "kafka_consumergroup_group_lag_seconds";
/// `kafka_consumergroup_group_max_lag{group}` (offsets).
pub const GROUP_MAX_LAG: &str = "kafka_consumergroup_group_max_lag";
/// `kafka_consumergroup_group_max_lag_seconds{group}`.
pub const GROUP_MAX_LAG_SECONDS: &str = "kafka_consumergroup_group_max_lag_seconds";
/// `kafka_consumergroup_group_sum_lag{group}`: total lag, what KEDA compares to `lagThreshold`.
pub const GROUP_SUM_LAG: &str = "kafka_consumergroup_group_sum_lag";
/// `kafka_consumergroup_group_offset{group,topic,partition}`: the committed offset.
pub const GROUP_OFFSET: &str = "kafka_consumergroup_group_offset";
/// `kafka_partition_latest_offset{topic,partition}`: the high watermark.
pub const PARTITION_LATEST_OFFSET: &str = "kafka_partition_latest_offset";
/// `reflex_consumergroup_status{group,status}`: 1 for the current Burrow-style status, else 0.
pub const GROUP_STATUS: &str = "reflex_consumergroup_status";

#[derive(Debug, Error)]
pub enum LagError {
    #[error("cannot create a Kafka client for {bootstrap}: {source}")]
    Client {
        bootstrap: String,
        source: KafkaError,
    },
    #[error("cannot read metadata for {what}: {source} (is the broker reachable?)")]
    Metadata { what: String, source: KafkaError },
    #[error("cannot read committed offsets of group `{group}`: {source}")]
    Committed { group: String, source: KafkaError },
}

/// Burrow's status names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Ok,
    Warn,
    Stall,
    Stop,
    Err,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Ok,
        Status::Warn,
        Status::Stall,
        Status::Stop,
        Status::Err,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Stall => "STALL",
            Status::Stop => "STOP",
            Status::Err => "ERR",
        }
    }
}

/// Lag of one partition at one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// Committed offset (the next record the group will read); `None` without a commit.
    pub committed: Option<i64>,
    pub low_watermark: i64,
    pub high_watermark: i64,
    /// Records not yet consumed.
    pub lag: i64,
    /// Age of the oldest unconsumed record, in seconds (0 when caught up).
    pub lag_seconds: f64,
}

/// Lag of a group at one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupLag {
    pub group: String,
    pub partitions: Vec<PartitionLag>,
    pub total_lag: i64,
    pub max_lag_seconds: f64,
    /// Sample time, ms since the epoch.
    pub at_ms: i64,
}

/// Reads lag for a group from the cluster.
pub struct LagReader {
    bootstrap: String,
    admin: BaseConsumer,
    timeout: Duration,
    /// (topic, partition, offset) → record timestamp (ms).
    timestamps: HashMap<(String, i32, i64), i64>,
}

impl LagReader {
    /// `properties` are extra librdkafka settings (security) applied to the reading clients.
    pub fn new(
        bootstrap: &str,
        properties: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<Self, LagError> {
        let admin = base_config(bootstrap, properties)
            .set("group.id", "reflex-lag-reader")
            .create()
            .map_err(|source| LagError::Client {
                bootstrap: bootstrap.to_string(),
                source,
            })?;
        Ok(Self {
            bootstrap: bootstrap.to_string(),
            admin,
            timeout,
            timestamps: HashMap::new(),
        })
    }

    /// Lag of `group` on `topics`; with no topics, on every topic the group has a commit for.
    /// Blocking (librdkafka calls): run it off the async runtime.
    pub fn read(
        &mut self,
        group: &str,
        topics: &[String],
        properties: &BTreeMap<String, String>,
    ) -> Result<GroupLag, LagError> {
        let metadata = self
            .admin
            .fetch_metadata(None, self.timeout)
            .map_err(|source| LagError::Metadata {
                what: "the cluster".into(),
                source,
            })?;
        let mut tpl = TopicPartitionList::new();
        for topic in metadata.topics() {
            let wanted = if topics.is_empty() {
                !topic.name().starts_with("__")
            } else {
                topics.iter().any(|t| t == topic.name())
            };
            if wanted {
                for p in topic.partitions() {
                    tpl.add_partition(topic.name(), p.id());
                }
            }
        }
        let group_client: BaseConsumer = base_config(&self.bootstrap, properties)
            .set("group.id", group)
            .create()
            .map_err(|source| LagError::Client {
                bootstrap: self.bootstrap.clone(),
                source,
            })?;
        let committed = group_client
            .committed_offsets(tpl, self.timeout)
            .map_err(|source| LagError::Committed {
                group: group.to_string(),
                source,
            })?;
        let committed_by_topic: BTreeMap<(String, i32), Option<i64>> = committed
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                ((e.topic().to_string(), e.partition()), offset)
            })
            .collect();
        // Without named topics, keep only topics the group has committed on.
        let keep: Vec<String> = if topics.is_empty() {
            let mut t: Vec<String> = committed_by_topic
                .iter()
                .filter(|(_, o)| o.is_some())
                .map(|((t, _), _)| t.clone())
                .collect();
            t.dedup();
            t
        } else {
            topics.to_vec()
        };
        let now_ms = now_ms();
        let mut partitions = Vec::new();
        let mut to_stamp = Vec::new();
        for ((topic, partition), committed) in &committed_by_topic {
            if !keep.contains(topic) {
                continue;
            }
            let (low, high) = self
                .admin
                .fetch_watermarks(topic, *partition, self.timeout)
                .map_err(|source| LagError::Metadata {
                    what: format!("{topic}/{partition} watermarks"),
                    source,
                })?;
            let from = committed.unwrap_or(low).max(low);
            let lag = (high - from).max(0);
            if lag > 0 {
                to_stamp.push((topic.clone(), *partition, from));
            }
            partitions.push(PartitionLag {
                topic: topic.clone(),
                partition: *partition,
                committed: *committed,
                low_watermark: low,
                high_watermark: high,
                lag,
                lag_seconds: 0.0,
            });
        }
        self.stamp(&to_stamp, properties);
        for p in &mut partitions {
            if p.lag > 0 {
                let from = p.committed.unwrap_or(p.low_watermark).max(p.low_watermark);
                if let Some(ts) = self.timestamps.get(&(p.topic.clone(), p.partition, from)) {
                    p.lag_seconds = ((now_ms - ts).max(0)) as f64 / 1000.0;
                }
            }
        }
        // Forget timestamps of offsets no partition waits on any more.
        let waiting: Vec<(String, i32, i64)> = to_stamp;
        self.timestamps.retain(|k, _| waiting.contains(k));
        Ok(GroupLag {
            group: group.to_string(),
            total_lag: partitions.iter().map(|p| p.lag).sum(),
            max_lag_seconds: partitions.iter().map(|p| p.lag_seconds).fold(0.0, f64::max),
            partitions,
            at_ms: now_ms,
        })
    }

    /// Reads the timestamp of each (topic, partition, offset) not cached yet.
    fn stamp(&mut self, wanted: &[(String, i32, i64)], properties: &BTreeMap<String, String>) {
        let missing: Vec<&(String, i32, i64)> = wanted
            .iter()
            .filter(|k| !self.timestamps.contains_key(*k))
            .collect();
        if missing.is_empty() {
            return;
        }
        let Ok(reader) = base_config(&self.bootstrap, properties)
            .set("group.id", "reflex-lag-reader")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.max.bytes", "1048576")
            .create::<BaseConsumer>()
        else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, offset) in &missing {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
        }
        if reader.assign(&tpl).is_err() {
            return;
        }
        let deadline = Instant::now() + self.timeout;
        let mut found = 0;
        while found < missing.len() && Instant::now() < deadline {
            let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) else {
                continue;
            };
            let key = (m.topic().to_string(), m.partition(), m.offset());
            if missing.contains(&&key) {
                if let Some(ts) = m.timestamp().to_millis() {
                    self.timestamps.insert(key.clone(), ts);
                }
                found += 1;
                // One record per partition is all we need.
                let mut stop = TopicPartitionList::new();
                stop.add_partition(m.topic(), m.partition());
                let _ = reader.pause(&stop);
            }
        }
    }
}

fn base_config(bootstrap: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "3");
    for (k, v) in properties {
        config.set(k, v);
    }
    config
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Thresholds of the status evaluation.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Samples kept; WARN needs lag growing across all of them.
    pub window: usize,
    /// Lag > 0 and no commit moved this long: STALL.
    pub stall_after: Duration,
    /// Lag > 0 and no commit moved this long: STOP.
    pub stop_after: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            window: 10,
            stall_after: Duration::from_secs(60),
            stop_after: Duration::from_secs(300),
        }
    }
}

/// Burrow-style status over a sliding window of samples of one group.
#[derive(Debug)]
pub struct Evaluator {
    thresholds: Thresholds,
    samples: VecDeque<GroupLag>,
    /// When each partition's committed offset last changed (ms).
    last_move_ms: HashMap<(String, i32), (Option<i64>, i64)>,
    rewound: bool,
}

impl Evaluator {
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            samples: VecDeque::new(),
            last_move_ms: HashMap::new(),
            rewound: false,
        }
    }

    /// Adds a sample and returns the group's status.
    pub fn observe(&mut self, sample: GroupLag) -> Status {
        self.rewound = false;
        for p in &sample.partitions {
            let key = (p.topic.clone(), p.partition);
            match self.last_move_ms.get(&key) {
                Some((prev, _)) if *prev == p.committed => {}
                Some((Some(prev), _)) if p.committed.is_some_and(|c| c < *prev) => {
                    self.rewound = true;
                    self.last_move_ms.insert(key, (p.committed, sample.at_ms));
                }
                _ => {
                    self.last_move_ms.insert(key, (p.committed, sample.at_ms));
                }
            }
        }
        self.samples.push_back(sample);
        while self.samples.len() > self.thresholds.window.max(2) {
            self.samples.pop_front();
        }
        self.status()
    }

    fn status(&self) -> Status {
        let Some(latest) = self.samples.back() else {
            return Status::Ok;
        };
        if self.rewound {
            return Status::Err;
        }
        if latest.total_lag == 0 {
            return Status::Ok;
        }
        let lagging: Vec<&PartitionLag> = latest.partitions.iter().filter(|p| p.lag > 0).collect();
        let last_move = lagging
            .iter()
            .filter_map(|p| {
                self.last_move_ms
                    .get(&(p.topic.clone(), p.partition))
                    .map(|(_, at)| *at)
            })
            .max()
            .unwrap_or(latest.at_ms);
        let still_for = Duration::from_millis((latest.at_ms - last_move).max(0) as u64);
        if still_for >= self.thresholds.stop_after {
            return Status::Stop;
        }
        if still_for >= self.thresholds.stall_after {
            return Status::Stall;
        }
        let full = self.samples.len() >= self.thresholds.window.max(2);
        let growing = self
            .samples
            .iter()
            .zip(self.samples.iter().skip(1))
            .all(|(a, b)| b.total_lag >= a.total_lag);
        let first = self.samples.front().map(|s| s.total_lag).unwrap_or(0);
        if full && growing && latest.total_lag > first {
            return Status::Warn;
        }
        Status::Ok
    }
}

/// Sets the kafka-lag-exporter gauges (and the status gauge) for one sample.
pub fn export(sample: &GroupLag, status: Status) {
    let group = sample.group.clone();
    for p in &sample.partitions {
        let labels = [
            ("group", group.clone()),
            ("topic", p.topic.clone()),
            ("partition", p.partition.to_string()),
        ];
        metrics::gauge!(GROUP_LAG, &labels).set(p.lag as f64);
        metrics::gauge!(GROUP_LAG_SECONDS, &labels).set(p.lag_seconds);
        if let Some(c) = p.committed {
            metrics::gauge!(GROUP_OFFSET, &labels).set(c as f64);
        }
        metrics::gauge!(PARTITION_LATEST_OFFSET, "topic" => p.topic.clone(), "partition" => p.partition.to_string())
            .set(p.high_watermark as f64);
    }
    let max_lag = sample.partitions.iter().map(|p| p.lag).max().unwrap_or(0);
    metrics::gauge!(GROUP_MAX_LAG, "group" => group.clone()).set(max_lag as f64);
    metrics::gauge!(GROUP_SUM_LAG, "group" => group.clone()).set(sample.total_lag as f64);
    metrics::gauge!(GROUP_MAX_LAG_SECONDS, "group" => group.clone()).set(sample.max_lag_seconds);
    for s in Status::ALL {
        metrics::gauge!(GROUP_STATUS, "group" => group.clone(), "status" => s.as_str())
            .set(if s == status { 1.0 } else { 0.0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_s: i64, parts: &[(Option<i64>, i64)]) -> GroupLag {
        let partitions: Vec<PartitionLag> = parts
            .iter()
            .enumerate()
            .map(|(i, (committed, high))| PartitionLag {
                topic: "t".into(),
                partition: i as i32,
                committed: *committed,
                low_watermark: 0,
                high_watermark: *high,
                lag: high - committed.unwrap_or(0),
                lag_seconds: 0.0,
            })
            .collect();
        GroupLag {
            group: "g".into(),
            total_lag: partitions.iter().map(|p| p.lag).sum(),
            max_lag_seconds: 0.0,
            partitions,
            at_ms: at_s * 1000,
        }
    }

    fn eval() -> Evaluator {
        Evaluator::new(Thresholds {
            window: 3,
            stall_after: Duration::from_secs(10),
            stop_after: Duration::from_secs(30),
        })
    }

    #[test]
    fn caught_up_is_ok_and_moving_commits_with_lag_are_ok() {
        let mut e = eval();
        assert_eq!(e.observe(sample(0, &[(Some(10), 10)])), Status::Ok);
        assert_eq!(e.observe(sample(5, &[(Some(12), 20)])), Status::Ok);
        assert_eq!(e.observe(sample(10, &[(Some(18), 20)])), Status::Ok);
    }

    #[test]
    fn commits_that_stop_moving_stall_then_stop_and_recover() {
        let mut e = eval();
        e.observe(sample(0, &[(Some(5), 20)]));
        assert_eq!(e.observe(sample(5, &[(Some(5), 20)])), Status::Ok);
        assert_eq!(e.observe(sample(10, &[(Some(5), 20)])), Status::Stall);
        assert_eq!(e.observe(sample(31, &[(Some(5), 20)])), Status::Stop);
        assert_eq!(e.observe(sample(32, &[(Some(15), 20)])), Status::Ok);
    }

    #[test]
    fn growing_lag_across_the_window_warns_and_rewinds_are_errors() {
        let mut e = eval();
        e.observe(sample(0, &[(Some(1), 10)]));
        e.observe(sample(1, &[(Some(2), 20)]));
        assert_eq!(e.observe(sample(2, &[(Some(3), 30)])), Status::Warn);
        assert_eq!(e.observe(sample(3, &[(Some(1), 30)])), Status::Err);
    }
}
