//! The stateful rules' state machine: one group of one rule, pure and deterministic.
//!
//! Events arrive as [`Observation`]s with their event time. A group keeps its *stream time*
//! (the latest event time it has seen); its *watermark* is the stream time minus the rule's
//! allowed lateness. Observations wait in `pending` until the watermark passes them and are
//! then applied strictly in event-time order (ties broken by event id), with the kind's timers
//! (the end of a quiet period, an absence deadline) interleaved at their due times. So an
//! input that arrives out of order within the lateness gives the same firings as in order, and
//! a replay gives the same firings as the first run. An observation older than the watermark
//! when it arrives is *late*: reported, never applied (the router handles it as the rule says).
//!
//! No clock is read here: the caller passes the event times and, for timers of a quiet group,
//! a watermark taken from the wall clock (see the `ticker` module).

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Firing and suppression bounds kept per group, so one hot group cannot grow without bound.
const MAX_FED_IDS: usize = 20;
const MAX_RECENT_FIRINGS: usize = 16;
const MAX_PENDING: usize = 10_000;

/// What a stateful rule does with a group's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Fire on the first event, then suppress the group's events for this long.
    OnceWithin(Duration),
    /// Fire once when the group has been quiet this long after its last event.
    OnceAfter(Duration),
    /// Fire when `events` matching events arrive within `within` of the first.
    Threshold { events: u32, within: Duration },
    /// Fire when each of `conditions` conditions matched within `within` of each other.
    All { conditions: u32, within: Duration },
    /// Fire when the trigger matched and no recovery followed within `within`.
    Absent { within: Duration },
}

impl Kind {
    /// The kind's name in the rule file and in messages.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::OnceWithin(_) => "throttle.once_within",
            Kind::OnceAfter(_) => "throttle.once_after",
            Kind::Threshold { .. } => "threshold",
            Kind::All { .. } => "all",
            Kind::Absent { .. } => "absent",
        }
    }

    /// The longest span of event time the kind looks back over.
    pub fn horizon(&self) -> Duration {
        match *self {
            Kind::OnceWithin(d) | Kind::OnceAfter(d) => d,
            Kind::Threshold { within, .. } | Kind::All { within, .. } | Kind::Absent { within } => {
                within
            }
        }
    }
}

/// Bit of [`Observation::flags`]: the rule's `when` matched (for `absent`: the trigger).
pub const TRIGGER: u32 = 1;
/// Bit of [`Observation::flags`] for `absent`: the recovery condition matched.
pub const RECOVERY: u32 = 2;

/// A record kept in state to be forwarded later (the event a timer fires with).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Stored {
    #[serde(default, with = "opt_b64")]
    pub key: Option<Vec<u8>>,
    #[serde(default, with = "opt_b64")]
    pub payload: Option<Vec<u8>>,
    /// Header names and values, in order.
    #[serde(default)]
    pub headers: Vec<(String, Option<StoredBytes>)>,
}

/// Header bytes as base64 in the stored JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBytes(#[serde(with = "b64")] pub Vec<u8>);

/// One event as a stateful rule sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// Event time, ms since the epoch (`ce_time`).
    pub time: i64,
    /// The event's `ce_id`.
    pub id: String,
    /// Where it was read: how a re-read after a crash or rebalance is recognised.
    pub source: Source,
    /// [`TRIGGER`], [`RECOVERY`] or, for `all`, one bit per condition.
    pub flags: u32,
    /// The record, forwarded if this observation fires.
    pub record: Stored,
}

/// Where an observation was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

/// Offsets of one partition this group has taken: every offset up to `high - span` counts as
/// taken (the loop never has events that far apart in flight, see [`GroupState::observe`]),
/// and the exact offsets above it are listed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    topic: String,
    partition: i32,
    high: i64,
    /// Stored as a bitmap from the lowest listed offset to `high` (at most `span` bits, a few
    /// hundred bytes), not as numbers: the state is read and written for every event.
    #[serde(with = "offset_bits")]
    offsets: Vec<i64>,
}

/// Why an applied observation did not fire (metric label `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// Within a throttle's suppression window.
    Throttled,
    /// Counted towards a window that has not fired yet (threshold, all, once_after, absent).
    Accumulating,
    /// Counted in a window that already fired.
    AfterFiring,
    /// A recovery that cancelled an absence deadline.
    Recovered,
    /// A recovery with no deadline open, or an event no condition of the kind uses.
    Ignored,
    /// Older than the watermark when it arrived: not applied.
    Late,
    /// Already applied (a re-read after a crash or rebalance).
    Duplicate,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Throttled => "throttled",
            Reason::Accumulating => "accumulating",
            Reason::AfterFiring => "after_firing",
            Reason::Recovered => "recovered",
            Reason::Ignored => "ignored",
            Reason::Late => "late",
            Reason::Duplicate => "duplicate",
        }
    }

    pub const ALL: [Reason; 7] = [
        Reason::Throttled,
        Reason::Accumulating,
        Reason::AfterFiring,
        Reason::Recovered,
        Reason::Ignored,
        Reason::Late,
        Reason::Duplicate,
    ];
}

/// One firing: the window, what fed it and the record it forwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firing {
    /// Window bounds, event time in ms: `[start, end)`.
    pub start: i64,
    pub end: i64,
    /// Events the window counted when it fired.
    pub count: u64,
    /// Ids of the events that fed it (the first [`MAX_FED_IDS`]).
    pub fed_by: Vec<String>,
    /// The record forwarded.
    pub record: Stored,
    /// `event` (an observation completed it) or `timer` (a deadline passed).
    pub by_timer: bool,
}

/// What applying observations and timers produced, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Fired(Firing),
    Suppressed(Reason),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Window {
    start: i64,
    end: i64,
    count: u64,
    fed_by: Vec<String>,
    fired: bool,
    /// The latest record (once_after) or the trigger (absent) the window fires with.
    record: Option<Stored>,
    /// Latest event time in the window (once_after's quiet period runs from it).
    last: i64,
}

impl Window {
    fn open(obs: &Observation, end: i64) -> Self {
        Window {
            start: obs.time,
            end,
            count: 1,
            fed_by: vec![obs.id.clone()],
            fired: false,
            record: None,
            last: obs.time,
        }
    }

    fn feed(&mut self, obs: &Observation) {
        self.count += 1;
        self.last = self.last.max(obs.time);
        if self.fed_by.len() < MAX_FED_IDS {
            self.fed_by.push(obs.id.clone());
        }
    }

    fn fire(&mut self, record: Stored, by_timer: bool) -> Firing {
        self.fired = true;
        Firing {
            start: self.start,
            end: self.end,
            count: self.count,
            fed_by: self.fed_by.clone(),
            record,
            by_timer,
        }
    }
}

/// A firing remembered with the observation that caused it, to emit again if that
/// observation is read again (its first output may not have reached Kafka).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recent {
    pub position: String,
    pub firing: Firing,
}

/// The whole state of one (rule, group).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// Optimistic-concurrency version (the store's compare-and-set).
    #[serde(default)]
    pub version: u64,
    /// The group key (for people reading the state).
    #[serde(default)]
    pub group: String,
    /// Latest event time seen.
    #[serde(default)]
    pub stream_time: Option<i64>,
    /// Watermark the group has been advanced to (never goes back).
    #[serde(default)]
    pub watermark: Option<i64>,
    /// Observations not yet applied, sorted by (time, id).
    #[serde(default)]
    pending: Vec<Observation>,
    /// The open window of the kind (none between windows).
    #[serde(default)]
    window: Option<Window>,
    /// `all`: per condition, the latest match (time, id) in the current span.
    #[serde(default)]
    matches: Vec<Option<(i64, String)>>,
    /// Recent firings caused by observations.
    #[serde(default)]
    pub recent: VecDeque<Recent>,
    /// Offsets taken, per partition (re-read detection).
    #[serde(default)]
    seen: Vec<Seen>,
    /// Topic and partition of the latest observation (the ticker asks its lag).
    #[serde(default)]
    pub source: Option<(String, i32)>,
}

impl GroupState {
    /// Applies one observation arriving now. Returns the effects in order: the observation's
    /// own disposition once it is applied (maybe later, when the watermark passes it), and any
    /// firings that became due.
    ///
    /// `span` bounds how far apart (in offsets of one partition) two events the router works on
    /// at once can be: above it offsets are remembered exactly, below it everything counts as
    /// taken. It must exceed the runtime's `max_in_flight`.
    pub fn observe(
        &mut self,
        kind: Kind,
        lateness: Duration,
        span: i64,
        obs: Observation,
    ) -> Vec<Effect> {
        if self.take_offset(&obs.source, span) {
            return vec![Effect::Suppressed(Reason::Duplicate)];
        }
        self.source = Some((obs.source.topic.clone(), obs.source.partition));
        let arriving = obs.source.clone();
        if self.watermark.is_some_and(|w| obs.time < w) {
            return vec![Effect::Suppressed(Reason::Late)];
        }
        self.stream_time = Some(self.stream_time.map_or(obs.time, |t| t.max(obs.time)));
        let at = self
            .pending
            .partition_point(|p| (p.time, &p.id) <= (obs.time, &obs.id));
        self.pending.insert(at, obs);
        let mut effects = Vec::new();
        if self.pending.len() > MAX_PENDING {
            // A flood within the lateness: apply the oldest now rather than grow without bound.
            let forced = self.pending[0].time;
            self.advance_to(kind, forced, &mut effects);
        }
        let wm = self.stream_time.unwrap_or(i64::MIN) - millis(lateness);
        self.advance_to(kind, wm, &mut effects);
        // Whatever fired now goes out as this event's output: if this event is read again, it
        // must go out again.
        for effect in &effects {
            if let Effect::Fired(f) = effect {
                self.recent.push_back(Recent {
                    position: arriving.to_string(),
                    firing: f.clone(),
                });
                while self.recent.len() > MAX_RECENT_FIRINGS {
                    self.recent.pop_front();
                }
            }
        }
        effects
    }

    /// Moves the watermark to `watermark` (if later), applying what it passes: the ticker's
    /// path for a group that gets no events. Observations later than the new watermark still
    /// count as on time.
    pub fn advance(&mut self, kind: Kind, watermark: i64) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.advance_to(kind, watermark, &mut effects);
        effects
    }

    /// The event time at which something is due: the next pending observation's time or the
    /// kind's timer. The group needs a wall-clock tick once the watermark could reach it.
    pub fn next_due(&self, kind: Kind) -> Option<i64> {
        let pending = self.pending.first().map(|p| p.time);
        match (pending, self.timer(kind)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Firings this observation caused, for emitting again after a re-read.
    pub fn firings_of(&self, source: &Source) -> Vec<Firing> {
        let position = source.to_string();
        self.recent
            .iter()
            .filter(|r| r.position == position)
            .map(|r| r.firing.clone())
            .collect()
    }

    /// Records `source` as taken; true when it already was (a re-read).
    fn take_offset(&mut self, source: &Source, span: i64) -> bool {
        let at = match self
            .seen
            .iter()
            .position(|s| s.partition == source.partition && s.topic == source.topic)
        {
            Some(at) => at,
            None => {
                self.seen.push(Seen {
                    topic: source.topic.clone(),
                    partition: source.partition,
                    high: -1,
                    offsets: Vec::new(),
                });
                self.seen.len() - 1
            }
        };
        let seen = &mut self.seen[at];
        let offset = source.offset;
        if seen.high >= 0 && offset <= seen.high - span {
            return true;
        }
        match seen.offsets.binary_search(&offset) {
            Ok(_) => return true,
            Err(i) => seen.offsets.insert(i, offset),
        }
        seen.high = seen.high.max(offset);
        let floor = seen.high - span;
        seen.offsets.retain(|o| *o > floor);
        false
    }

    fn timer(&self, kind: Kind) -> Option<i64> {
        let w = self.window.as_ref().filter(|w| !w.fired)?;
        match kind {
            Kind::OnceAfter(d) => Some(w.last + millis(d)),
            Kind::Absent { .. } => Some(w.end),
            _ => None,
        }
    }

    fn advance_to(&mut self, kind: Kind, watermark: i64, effects: &mut Vec<Effect>) {
        if self.watermark.is_some_and(|w| watermark <= w) {
            return;
        }
        self.watermark = Some(watermark);
        loop {
            let next_obs = self
                .pending
                .first()
                .map(|p| p.time)
                .filter(|t| *t <= watermark);
            let next_timer = self.timer(kind).filter(|t| *t <= watermark);
            match (next_obs, next_timer) {
                // A deadline is exclusive: an event at exactly the deadline comes after it.
                (Some(o), Some(t)) if t <= o => self.fire_timer(kind, effects),
                (None, Some(_)) => self.fire_timer(kind, effects),
                (Some(_), _) => {
                    let obs = self.pending.remove(0);
                    self.apply(kind, obs, effects);
                }
                (None, None) => break,
            }
        }
    }

    fn fire_timer(&mut self, kind: Kind, effects: &mut Vec<Effect>) {
        let Some(w) = self.window.as_mut() else {
            return;
        };
        let record = w.record.take().unwrap_or_default();
        if let Kind::OnceAfter(d) = kind {
            w.end = w.last + millis(d);
        }
        effects.push(Effect::Fired(w.fire(record, true)));
        self.window = None;
    }

    fn apply(&mut self, kind: Kind, obs: Observation, effects: &mut Vec<Effect>) {
        match kind {
            Kind::OnceWithin(d) => match self.window.as_mut() {
                Some(w) if obs.time < w.end => {
                    w.feed(&obs);
                    effects.push(Effect::Suppressed(Reason::Throttled));
                }
                _ => {
                    let mut w = Window::open(&obs, obs.time + millis(d));
                    effects.push(Effect::Fired(w.fire(obs.record.clone(), false)));
                    self.window = Some(w);
                }
            },
            Kind::OnceAfter(d) => {
                match self.window.as_mut() {
                    Some(w) => w.feed(&obs),
                    None => self.window = Some(Window::open(&obs, obs.time + millis(d))),
                }
                if let Some(w) = self.window.as_mut() {
                    w.record = Some(obs.record.clone());
                }
                effects.push(Effect::Suppressed(Reason::Accumulating));
            }
            Kind::Threshold { events, within } => {
                if self.window.as_ref().is_none_or(|w| obs.time >= w.end) {
                    self.window = Some(Window::open(&obs, obs.time + millis(within)));
                } else if let Some(w) = self.window.as_mut() {
                    w.feed(&obs);
                }
                let w = self.window.as_mut().expect("opened above");
                if w.fired {
                    effects.push(Effect::Suppressed(Reason::AfterFiring));
                } else if w.count >= u64::from(events) {
                    effects.push(Effect::Fired(w.fire(obs.record.clone(), false)));
                } else {
                    effects.push(Effect::Suppressed(Reason::Accumulating));
                }
            }
            Kind::All { conditions, within } => {
                let n = conditions as usize;
                self.matches.resize(n, None);
                let horizon = obs.time - millis(within);
                for slot in self.matches.iter_mut() {
                    if slot.as_ref().is_some_and(|(t, _)| *t <= horizon) {
                        *slot = None;
                    }
                }
                for (i, slot) in self.matches.iter_mut().enumerate() {
                    if obs.flags & (1 << i) != 0 {
                        *slot = Some((obs.time, obs.id.clone()));
                    }
                }
                if self.matches.iter().all(Option::is_some) {
                    let start = self
                        .matches
                        .iter()
                        .flatten()
                        .map(|(t, _)| *t)
                        .min()
                        .unwrap_or(obs.time);
                    let mut fed: Vec<(i64, String)> =
                        self.matches.iter_mut().filter_map(Option::take).collect();
                    fed.sort();
                    fed.dedup_by(|a, b| a.1 == b.1);
                    effects.push(Effect::Fired(Firing {
                        start,
                        end: start + millis(within),
                        count: fed.len() as u64,
                        fed_by: fed.into_iter().map(|(_, id)| id).collect(),
                        record: obs.record.clone(),
                        by_timer: false,
                    }));
                } else {
                    effects.push(Effect::Suppressed(Reason::Accumulating));
                }
            }
            Kind::Absent { within } => {
                let recovered = obs.flags & RECOVERY != 0 && self.window.take().is_some();
                if obs.flags & TRIGGER == 0 {
                    let reason = if recovered {
                        Reason::Recovered
                    } else {
                        Reason::Ignored
                    };
                    effects.push(Effect::Suppressed(reason));
                } else {
                    // A trigger that is also a recovery closes the old deadline and opens a new one.
                    match self.window.as_mut() {
                        Some(w) => w.feed(&obs),
                        None => {
                            let mut w = Window::open(&obs, obs.time + millis(within));
                            w.record = Some(obs.record.clone());
                            self.window = Some(w);
                        }
                    }
                    effects.push(Effect::Suppressed(Reason::Accumulating));
                }
            }
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// A sorted list of offsets as `"<first>:<base64 bitmap of first..=last>"`.
mod offset_bits {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(offsets: &[i64], s: S) -> Result<S::Ok, S::Error> {
        let Some(first) = offsets.first() else {
            return s.serialize_str("");
        };
        let span = (offsets[offsets.len() - 1] - first) as usize + 1;
        let mut bits = vec![0u8; span.div_ceil(8)];
        for o in offsets {
            let i = (o - first) as usize;
            bits[i / 8] |= 1 << (i % 8);
        }
        let text = base64::engine::general_purpose::STANDARD_NO_PAD.encode(bits);
        s.serialize_str(&format!("{first}:{text}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let bad = || serde::de::Error::custom("offsets are not `<first>:<base64 bitmap>`");
        let (first, bits) = text.split_once(':').ok_or_else(bad)?;
        let first: i64 = first.parse().map_err(|_| bad())?;
        let bits = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(bits)
            .map_err(|_| bad())?;
        Ok(bits
            .iter()
            .enumerate()
            .flat_map(|(byte, b)| {
                (0..8)
                    .filter(move |bit| b & (1 << bit) != 0)
                    .map(move |bit| first + (byte * 8 + bit) as i64)
            })
            .collect())
    }
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

mod opt_b64 {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::StoredBytes;

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => super::b64::serialize(b, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<StoredBytes>::deserialize(d)?.map(|b| b.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;
    const M: i64 = 60 * S;

    fn obs(offset: i64, time: i64, flags: u32) -> Observation {
        Observation {
            time,
            id: format!("e{offset}"),
            source: Source {
                topic: "t".into(),
                partition: 0,
                offset,
            },
            flags,
            record: Stored::default(),
        }
    }

    /// A firing as (start, end, count, by timer).
    type Fire = (i64, i64, u64, bool);

    /// Feeds `(time, flags)` in the given order (offsets in arrival order), then advances the
    /// watermark to `end`. Returns the firings as (start, end, count, by_timer) and the
    /// suppression reasons, through a JSON round trip of the state after every step (as the
    /// store does), so a restart at any point would see the same state.
    fn run(
        kind: Kind,
        lateness: Duration,
        events: &[(i64, u32)],
        end: i64,
    ) -> (Vec<Fire>, Vec<Reason>) {
        let mut state = GroupState::default();
        let mut effects = Vec::new();
        for (offset, (time, flags)) in events.iter().enumerate() {
            effects.extend(state.observe(kind, lateness, 100, obs(offset as i64, *time, *flags)));
            state = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        }
        effects.extend(state.advance(kind, end));
        let mut fired = Vec::new();
        let mut reasons = Vec::new();
        for e in effects {
            match e {
                Effect::Fired(f) => fired.push((f.start, f.end, f.count, f.by_timer)),
                Effect::Suppressed(r) => reasons.push(r),
            }
        }
        (fired, reasons)
    }

    #[test]
    fn once_within_fires_on_the_first_event_then_suppresses_for_the_window() {
        let events: Vec<(i64, u32)> = (0..45).map(|i| (i * 30 * S, TRIGGER)).collect();
        let (fired, reasons) = run(
            Kind::OnceWithin(Duration::from_secs(600)),
            Duration::ZERO,
            &events,
            0,
        );
        assert_eq!(
            fired,
            vec![
                (0, 10 * M, 1, false),
                (10 * M, 20 * M, 1, false),
                (20 * M, 30 * M, 1, false)
            ]
        );
        assert_eq!(reasons.len(), 42);
        assert!(reasons.iter().all(|r| *r == Reason::Throttled));
    }

    #[test]
    fn once_after_fires_when_the_group_goes_quiet() {
        let events: Vec<(i64, u32)> = (0..11).map(|i| (i * S, TRIGGER)).collect();
        let kind = Kind::OnceAfter(Duration::from_secs(60));
        let (fired, _) = run(kind, Duration::ZERO, &events, 69 * S);
        assert!(fired.is_empty(), "quiet for 59 s only: {fired:?}");
        let (fired, reasons) = run(kind, Duration::ZERO, &events, 70 * S);
        assert_eq!(fired, vec![(0, 70 * S, 11, true)]);
        assert_eq!(reasons, vec![Reason::Accumulating; 11]);
        // An event after the quiet period: the timer fires first (at 70 s), then a new burst.
        let mut more = events.clone();
        more.push((75 * S, TRIGGER));
        let (fired, _) = run(kind, Duration::ZERO, &more, 200 * S);
        assert_eq!(
            fired,
            vec![(0, 70 * S, 11, true), (75 * S, 135 * S, 1, true)]
        );
    }

    #[test]
    fn threshold_fires_at_the_nth_event_of_a_window() {
        let kind = Kind::Threshold {
            events: 3,
            within: Duration::from_secs(60),
        };
        let events = [
            (0, 1),
            (10 * S, 1),
            (20 * S, 1),
            (30 * S, 1),
            (70 * S, 1),
            (80 * S, 1),
        ];
        let (fired, reasons) = run(kind, Duration::ZERO, &events, 0);
        assert_eq!(fired, vec![(0, M, 3, false)]);
        use Reason::*;
        assert_eq!(
            reasons,
            vec![
                Accumulating,
                Accumulating,
                AfterFiring,
                Accumulating,
                Accumulating
            ]
        );
    }

    #[test]
    fn all_fires_when_every_condition_matched_within_the_timeout() {
        let kind = Kind::All {
            conditions: 2,
            within: Duration::from_secs(120),
        };
        // A at 0, B at 30 s: fires. A at 200 s, B at 400 s: A expired, no firing.
        let events = [(0, 0b01), (30 * S, 0b10), (200 * S, 0b01), (400 * S, 0b10)];
        let (fired, reasons) = run(kind, Duration::ZERO, &events, 0);
        assert_eq!(fired, vec![(0, 2 * M, 2, false)]);
        assert_eq!(reasons, vec![Reason::Accumulating; 3]);
    }

    #[test]
    fn absent_fires_when_no_recovery_follows_in_time() {
        let kind = Kind::Absent {
            within: Duration::from_secs(300),
        };
        let events = [
            (0, TRIGGER),
            (60 * S, RECOVERY),
            (100 * S, TRIGGER),
            (110 * S, TRIGGER),
        ];
        let (fired, reasons) = run(kind, Duration::ZERO, &events, 399 * S);
        assert!(fired.is_empty(), "{fired:?}");
        use Reason::*;
        assert_eq!(
            reasons,
            vec![Accumulating, Recovered, Accumulating, Accumulating]
        );
        let (fired, _) = run(kind, Duration::ZERO, &events, 400 * S);
        assert_eq!(fired, vec![(100 * S, 400 * S, 2, true)]);
        // A recovery exactly at the deadline is too late: the deadline fires first.
        let (fired, _) = run(
            kind,
            Duration::ZERO,
            &[(0, TRIGGER), (300 * S, RECOVERY)],
            300 * S,
        );
        assert_eq!(fired, vec![(0, 300 * S, 1, true)]);
    }

    /// A fixed pseudo-random shuffle that moves each event at most `max` ms of event time.
    fn shuffle_within(events: &[(i64, u32)], max: i64, seed: u64) -> Vec<(i64, u32)> {
        let mut x = seed;
        let mut keyed: Vec<(i64, (i64, u32))> = events
            .iter()
            .map(|e| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (e.0 + (x >> 33) as i64 % (max + 1), *e)
            })
            .collect();
        keyed.sort_by_key(|(k, e)| (*k, e.0));
        keyed.into_iter().map(|(_, e)| e).collect()
    }

    #[test]
    fn out_of_order_within_the_lateness_gives_the_in_order_firings() {
        let lateness = Duration::from_secs(5);
        let kinds = [
            Kind::OnceWithin(Duration::from_secs(20)),
            Kind::OnceAfter(Duration::from_secs(7)),
            Kind::Threshold {
                events: 4,
                within: Duration::from_secs(10),
            },
            Kind::All {
                conditions: 2,
                within: Duration::from_secs(6),
            },
            Kind::Absent {
                within: Duration::from_secs(9),
            },
        ];
        // Bursts and gaps, flags cycling through the bits the kinds use.
        let mut events = Vec::new();
        let mut t = 0;
        for i in 0..200i64 {
            t += if i % 17 == 0 {
                23 * S
            } else {
                700 + (i * 37) % 900
            };
            let flags = match i % 5 {
                0 | 3 => 0b01,
                1 => 0b10,
                2 => 0b11,
                _ => 0b01,
            };
            events.push((t, flags));
        }
        let end = t + 60 * S;
        for kind in kinds {
            let straight = run(kind, lateness, &events, end).0;
            assert!(!straight.is_empty(), "{kind:?} fires on this input");
            for seed in 1..6 {
                let shuffled = shuffle_within(&events, 4 * S, seed);
                assert_ne!(shuffled, events);
                assert_eq!(
                    run(kind, lateness, &shuffled, end).0,
                    straight,
                    "{kind:?}, seed {seed}"
                );
            }
        }
    }

    #[test]
    fn taken_offsets_survive_the_stored_form() {
        let seen = Seen {
            topic: "t".into(),
            partition: 2,
            high: 4100,
            offsets: vec![101, 102, 108, 2000, 4099, 4100],
        };
        let json = serde_json::to_string(&seen).unwrap();
        assert!(json.len() < 800, "{} bytes: {json}", json.len());
        assert_eq!(serde_json::from_str::<Seen>(&json).unwrap(), seen);
        let empty = Seen::default();
        let json = serde_json::to_string(&empty).unwrap();
        assert_eq!(serde_json::from_str::<Seen>(&json).unwrap(), empty);
    }

    #[test]
    fn late_events_and_re_reads_are_told_apart() {
        let kind = Kind::OnceWithin(Duration::from_secs(60));
        let lateness = Duration::from_secs(5);
        let mut state = GroupState::default();
        let first = state.observe(kind, lateness, 100, obs(0, 100 * S, TRIGGER));
        assert!(first.is_empty(), "waits for the lateness: {first:?}");
        let fired = state.observe(kind, lateness, 100, obs(1, 106 * S, TRIGGER));
        assert!(
            matches!(fired[0], Effect::Fired(ref f) if f.start == 100 * S),
            "{fired:?}"
        );
        // 4 s behind the stream time: on time (it waits for the watermark); 7 s behind: late.
        assert!(state
            .observe(kind, lateness, 100, obs(2, 102 * S, TRIGGER))
            .is_empty());
        assert_eq!(
            state.observe(kind, lateness, 100, obs(3, 99 * S, TRIGGER)),
            vec![Effect::Suppressed(Reason::Late)]
        );
        // Re-reading offset 1 (a crash before its output was acknowledged) is a duplicate, and
        // the firing it caused is there to emit again; offsets far below are duplicates too.
        assert_eq!(
            state.observe(kind, lateness, 100, obs(1, 106 * S, TRIGGER)),
            vec![Effect::Suppressed(Reason::Duplicate)]
        );
        let source = obs(1, 0, 0).source;
        assert_eq!(state.firings_of(&source).len(), 1);
        assert_eq!(
            state.observe(kind, lateness, 100, obs(500, 107 * S, TRIGGER)),
            vec![Effect::Suppressed(Reason::Throttled)],
            "the watermark (102 s) passes the event at 102 s"
        );
        assert_eq!(
            state.observe(kind, lateness, 100, obs(399, 107 * S, TRIGGER)),
            vec![Effect::Suppressed(Reason::Duplicate)]
        );
        assert!(
            state
                .observe(kind, lateness, 100, obs(401, 107 * S, TRIGGER))
                .is_empty(),
            "not taken yet, within the exact range: waits like any new event"
        );
    }
}
