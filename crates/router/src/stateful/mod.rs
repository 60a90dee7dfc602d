//! Stateful rules: windows per group, on event time, kept where every replica finds them.
//!
//! A rule with `group_by` and one of `throttle`, `threshold`, `all` or `absent` does not
//! forward each matching event: each event is an [`Observation`] of its group's window
//! ([`machine`]), and the rule forwards a *firing* (the event that completed the window, with
//! headers naming the group, the window bounds, how many events fed it and their ids). The
//! others are suppressed, counted per rule and reason.
//!
//! - **State** lives in the store ([`store`]): Redis (`runtime.state_url`) in production, so a
//!   partition's next owner, a second replica, or the same worker after SIGKILL continues the
//!   same windows; in process for one replica and for `reflexctl rules test`.
//! - **Exactly the same firings after a crash.** The state (with the offsets it has taken) is
//!   written before the event's outputs are produced; a re-read event is recognised by its
//!   offset and emits again the firings it caused (their first copy may not have reached
//!   Kafka), with the same `ce_id`, so the actor's idempotency claim makes one effect of them.
//! - **Timers** (a quiet period's end, an absence deadline, events waiting for the lateness)
//!   are also due when no event comes: the ticker ([`ticker`]) of any replica advances such
//!   groups by the wall clock.

pub mod machine;
pub mod store;
pub mod ticker;

use std::time::Duration;

use bytes::Bytes;
use reflex_core::headers::{reflex as rh, Header, HeaderName, Headers};
use reflex_core::ErrorClass;
use reflex_runtime::{Event, Output, StageError};

use crate::rules::StatefulSpec;
pub use machine::{Effect, Firing, GroupState, Observation, Reason, Source, Stored, StoredBytes};
pub use store::{group_hash, StateStore, StoreError};

/// Compare-and-set rounds before an event is handed back to the runtime as a transient
/// failure (only many replicas writing one group at once could use them all up).
pub(crate) const MAX_SAVE_ATTEMPTS: usize = 32;

/// The stateful rules' engine: the store and how far the loop's events can be apart.
pub struct Engine {
    pub store: StateStore,
    /// Offsets of one partition in flight at once are fewer than this (see
    /// [`GroupState::observe`]).
    pub span: i64,
    /// How long after its due time a wall-clock timer fires (producers' clock skew and
    /// records in transit).
    pub timer_delay: Duration,
}

/// What one observation did: its effects, and firings to emit again (a re-read).
#[derive(Debug, Default)]
pub struct Observed {
    pub effects: Vec<Effect>,
    pub again: Vec<Firing>,
}

impl Engine {
    pub fn new(store: StateStore, span: i64, timer_delay: Duration) -> Self {
        Self {
            store,
            span,
            timer_delay,
        }
    }

    pub(crate) fn ttl(&self, spec: &StatefulSpec) -> Duration {
        spec.kind.horizon() + spec.lateness + self.timer_delay + Duration::from_secs(3600)
    }

    pub(crate) fn due_ms(&self, spec: &StatefulSpec, state: &GroupState) -> Option<i64> {
        state.next_due(spec.kind).map(|t| {
            t.saturating_add(millis(spec.lateness))
                .saturating_add(millis(self.timer_delay))
        })
    }

    /// Applies one observation to `group` of rule `rule`.
    pub async fn observe(
        &self,
        rule: &str,
        spec: &StatefulSpec,
        group: &str,
        obs: Observation,
    ) -> Result<Observed, StoreError> {
        let hash = group_hash(group);
        for _ in 0..MAX_SAVE_ATTEMPTS {
            let mut state = self.store.load(rule, &hash).await?;
            if state.group.is_empty() {
                state.group = group.to_string();
            }
            let source = obs.source.clone();
            let effects = state.observe(spec.kind, spec.lateness, self.span, obs.clone());
            if effects == [Effect::Suppressed(Reason::Duplicate)] {
                return Ok(Observed {
                    again: state.firings_of(&source),
                    effects,
                });
            }
            let due = self.due_ms(spec, &state);
            if self
                .store
                .save(rule, &hash, &state, due, self.ttl(spec))
                .await?
            {
                return Ok(Observed {
                    effects,
                    again: Vec::new(),
                });
            }
        }
        Err(contended(rule, group))
    }
}

fn contended(rule: &str, group: &str) -> StoreError {
    StoreError {
        class: ErrorClass::Transient,
        message: format!(
            "rule `{rule}`, group `{group}`: written by others {MAX_SAVE_ATTEMPTS} times in a row while this event was applied"
        ),
    }
}

pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// The event's time for windows: `ce_time`, else the record's timestamp.
pub fn event_time(event: &Event) -> Result<i64, StageError> {
    match event.headers.get_str(reflex_core::headers::ce::TIME) {
        Some(time) => chrono::DateTime::parse_from_rfc3339(time)
            .map(|t| t.timestamp_millis())
            .map_err(|e| {
                StageError::permanent(format!(
                    "`ce_time` = `{time}` is not RFC 3339 ({e}): a rule with a window needs the event time"
                ))
            }),
        None => event.timestamp_ms.ok_or_else(|| {
            StageError::permanent(
                "the event has no `ce_time` header and no record timestamp: a rule with a window needs the event time",
            )
        }),
    }
}

/// The event as stored in a group's state (to be forwarded by a later firing).
pub fn store_event(event: &Event) -> Stored {
    Stored {
        key: event.key.as_ref().map(|k| k.to_vec()),
        payload: event.payload.as_ref().map(|p| p.to_vec()),
        headers: event
            .headers
            .iter()
            .map(|h| {
                (
                    h.key.as_str().to_string(),
                    h.value.as_ref().map(|v| StoredBytes(v.to_vec())),
                )
            })
            .collect(),
    }
}

fn stored_headers(stored: &Stored) -> Headers {
    Headers(
        stored
            .headers
            .iter()
            .map(|(k, v)| Header {
                key: HeaderName::from(k.clone()),
                value: v.as_ref().map(|b| Bytes::from(b.0.clone())),
            })
            .collect(),
    )
}

/// The outputs of one firing of `rule` for `group`: the forwarded record to each topic, with
/// the router's headers and the firing's.
pub fn firing_outputs(rule: &str, topics: &[String], group: &str, firing: &Firing) -> Vec<Output> {
    let source = stored_headers(&firing.record);
    let key = firing.record.key.clone().map(Bytes::from);
    let payload = firing.record.payload.clone().map(Bytes::from);
    let mut extra = Headers::with_capacity(6);
    extra.push(rh::GROUP, group.to_owned());
    extra.push(rh::WINDOW_START, rfc3339(firing.start));
    extra.push(rh::WINDOW_END, rfc3339(firing.end));
    extra.push(rh::WINDOW_EVENTS, firing.count.to_string());
    extra.push(rh::FED_BY, firing.fed_by.join(","));
    extra.push(
        rh::FIRED_BY,
        if firing.by_timer { "timer" } else { "event" },
    );
    topics
        .iter()
        .map(|topic| {
            let mut output = crate::forward(&source, key.clone(), payload.clone(), topic, rule);
            for h in extra.iter() {
                output
                    .headers
                    .set(h.key.clone(), h.value.clone().unwrap_or_default());
            }
            output
        })
        .collect()
}

/// ms since the epoch as RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// `reflex_rule_firings_total` / `reflex_rule_suppressed_total` for one rule's effects.
pub fn count(rule: &str, effects: &[Effect]) {
    for effect in effects {
        match effect {
            Effect::Fired(f) => metrics::counter!(
                reflex_core::metrics::RULE_FIRINGS,
                "rule" => rule.to_string(),
                "by" => if f.by_timer { "timer" } else { "event" }
            )
            .increment(1),
            Effect::Suppressed(reason) => metrics::counter!(
                reflex_core::metrics::RULE_SUPPRESSED,
                "rule" => rule.to_string(),
                "reason" => reason.as_str()
            )
            .increment(1),
        }
    }
}
