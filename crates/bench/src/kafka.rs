//! Reading the broker back: topic names, high watermarks, every record between two sets of
//! offsets, and a group's uncommitted records (via `reflex-lag`). All blocking (librdkafka
//! calls): async callers run them with `spawn_blocking`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use reflex_lag::LagReader;

use crate::HarnessError;

const TIMEOUT: Duration = Duration::from_secs(10);

/// (topic, partition) → offset.
pub type Offsets = BTreeMap<(String, i32), i64>;

fn reader(bootstrap: &str) -> Result<BaseConsumer, HarnessError> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "reflex-bench-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("log_level", "3")
        .create()
        .map_err(|e| HarnessError::kafka(format!("reader for {bootstrap}"), e))
}

/// Every topic on the cluster.
pub fn topic_names(bootstrap: &str) -> Result<BTreeSet<String>, HarnessError> {
    let c = reader(bootstrap)?;
    let md = c
        .fetch_metadata(None, TIMEOUT)
        .map_err(|e| HarnessError::kafka(format!("metadata from {bootstrap}"), e))?;
    Ok(md.topics().iter().map(|t| t.name().to_string()).collect())
}

/// The high watermark of every partition of `topics` (missing topics are left out).
pub fn high_watermarks(bootstrap: &str, topics: &[String]) -> Result<Offsets, HarnessError> {
    let c = reader(bootstrap)?;
    let md = c
        .fetch_metadata(None, TIMEOUT)
        .map_err(|e| HarnessError::kafka(format!("metadata from {bootstrap}"), e))?;
    let mut out = Offsets::new();
    for t in md
        .topics()
        .iter()
        .filter(|t| topics.iter().any(|n| n == t.name()))
    {
        for p in t.partitions() {
            // A topic created a moment ago may have no leader yet (or a restarted broker may
            // still be electing): retry for a while.
            let deadline = Instant::now() + TIMEOUT;
            let high = loop {
                match c.fetch_watermarks(t.name(), p.id(), TIMEOUT) {
                    Ok((_, high)) => break high,
                    Err(e) if Instant::now() > deadline => {
                        return Err(HarnessError::kafka(
                            format!("watermarks of {}/{}", t.name(), p.id()),
                            e,
                        ))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            };
            out.insert((t.name().to_string(), p.id()), high);
        }
    }
    Ok(out)
}

/// Every record from `start` (0 where absent) up to `end`, per partition; fails when a
/// partition cannot be read to its end with no progress for `idle`.
pub fn read_range(
    bootstrap: &str,
    start: &Offsets,
    end: &Offsets,
    idle: Duration,
) -> Result<Vec<OwnedMessage>, HarnessError> {
    let todo: BTreeMap<(String, i32), (i64, i64)> = end
        .iter()
        .map(|(tp, e)| (tp.clone(), (start.get(tp).copied().unwrap_or(0), *e)))
        .filter(|(_, (s, e))| e > s)
        .collect();
    let mut out = Vec::new();
    if todo.is_empty() {
        return Ok(out);
    }
    let c = reader(bootstrap)?;
    let mut tpl = TopicPartitionList::new();
    for ((t, p), (s, _)) in &todo {
        tpl.add_partition_offset(t, *p, Offset::Offset(*s))
            .map_err(|e| HarnessError::kafka(format!("assign {t}/{p}"), e))?;
    }
    c.assign(&tpl)
        .map_err(|e| HarnessError::kafka("assign the partitions to read", e))?;
    let mut remaining: BTreeSet<(String, i32)> = todo.keys().cloned().collect();
    let mut last = Instant::now();
    while !remaining.is_empty() && last.elapsed() < idle {
        let Some(Ok(m)) = c.poll(Duration::from_millis(500)) else {
            continue;
        };
        last = Instant::now();
        let tp = (m.topic().to_string(), m.partition());
        let Some((_, end)) = todo.get(&tp) else {
            continue;
        };
        if m.offset() >= end - 1 {
            remaining.remove(&tp);
        }
        if m.offset() < *end {
            out.push(m.detach());
        }
    }
    if !remaining.is_empty() {
        return Err(HarnessError::Other(format!(
            "could not read {remaining:?} to their end (no record for {} s)",
            idle.as_secs()
        )));
    }
    Ok(out)
}

/// Records `group` has not committed yet on `topics`.
pub fn uncommitted(
    lag: &mut LagReader,
    group: &str,
    topics: &[String],
) -> Result<i64, HarnessError> {
    if topics.is_empty() {
        return Ok(0);
    }
    lag.read(group, topics, &BTreeMap::new())
        .map(|l| l.total_lag)
        .map_err(|e| HarnessError::Other(format!("lag of group {group}: {e}")))
}

/// A lag reader for `bootstrap`.
pub fn lag_reader(bootstrap: &str) -> Result<LagReader, HarnessError> {
    LagReader::new(bootstrap, &BTreeMap::new(), TIMEOUT)
        .map_err(|e| HarnessError::Other(format!("lag reader for {bootstrap}: {e}")))
}
