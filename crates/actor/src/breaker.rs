//! A circuit breaker per target: `failures` consecutive transient failures open it for
//! `cooldown`; then one probe goes through (half-open); its success closes the breaker, its
//! failure opens it again. The state machine takes the time as an argument so it is tested
//! without sleeping; [`Breakers`] is the shared, locked map the stage uses.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reflex_core::metrics as m;
use tracing::{info, warn};

/// State of one target's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_started: Instant },
}

impl State {
    /// 0 closed, 1 half-open, 2 open (the `reflex_breaker_state` gauge).
    pub fn gauge(self) -> f64 {
        match self {
            State::Closed { .. } => 0.0,
            State::HalfOpen { .. } => 1.0,
            State::Open { .. } => 2.0,
        }
    }
}

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead (closed).
    Pass,
    /// Go ahead as the single half-open probe.
    Probe,
    /// Wait this long and ask again.
    Wait(Duration),
}

#[derive(Debug, Clone, Copy)]
pub struct Breaker {
    pub state: State,
    pub failures: u32,
    pub cooldown: Duration,
}

impl Breaker {
    pub fn new(failures: u32, cooldown: Duration) -> Self {
        Self {
            state: State::Closed { failures: 0 },
            failures,
            cooldown,
        }
    }

    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            State::Closed { .. } => Admission::Pass,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen { probe_started: now };
                Admission::Probe
            }
            State::Open { until } => Admission::Wait(until - now),
            // A probe that never reported (its task was dropped) is replaced after a cool-down.
            State::HalfOpen { probe_started } if now >= probe_started + self.cooldown * 2 => {
                self.state = State::HalfOpen { probe_started: now };
                Admission::Probe
            }
            State::HalfOpen { .. } => Admission::Wait(Duration::from_millis(50)),
        }
    }

    /// Records the end of an attempt; `true` when this call opened the breaker.
    pub fn record(&mut self, success: bool, now: Instant) -> bool {
        if self.failures == 0 {
            return false;
        }
        match (self.state, success) {
            (_, true) => {
                self.state = State::Closed { failures: 0 };
                false
            }
            (State::Closed { failures }, false) if failures + 1 < self.failures => {
                self.state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            (State::Open { .. }, false) => false,
            (_, false) => {
                self.state = State::Open {
                    until: now + self.cooldown,
                };
                true
            }
        }
    }
}

/// The breakers of every target, shared by the stage's lanes.
#[derive(Default)]
pub struct Breakers {
    map: Mutex<HashMap<String, Breaker>>,
}

impl Breakers {
    fn with<R>(
        &self,
        target: &str,
        make: impl FnOnce() -> Breaker,
        f: impl FnOnce(&mut Breaker) -> R,
    ) -> R {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let breaker = map.entry(target.to_string()).or_insert_with(|| {
            // Publish the state of a target from its first use, so dashboards see it closed.
            let breaker = make();
            metrics::gauge!(m::BREAKER_STATE, "target" => target.to_string())
                .set(breaker.state.gauge());
            breaker
        });
        let before = breaker.state.gauge();
        let r = f(breaker);
        let after = breaker.state.gauge();
        if before != after {
            metrics::gauge!(m::BREAKER_STATE, "target" => target.to_string()).set(after);
            if after == 0.0 {
                info!(target = %target, "circuit breaker closed: the probe succeeded");
            }
        }
        r
    }

    /// Waits until the breaker of `target` lets an attempt through. While it is open the caller
    /// (and so its event) waits: the runtime's backpressure then pauses the partitions.
    pub async fn acquire(&self, target: &str, failures: u32, cooldown: Duration) {
        if failures == 0 {
            return;
        }
        loop {
            let admission = self.with(
                target,
                || Breaker::new(failures, cooldown),
                |b| b.admit(Instant::now()),
            );
            match admission {
                Admission::Pass | Admission::Probe => return,
                Admission::Wait(d) => tokio::time::sleep(d.min(Duration::from_millis(500))).await,
            }
        }
    }

    /// Records an attempt's result for `target`.
    pub fn record(&self, target: &str, failures: u32, cooldown: Duration, success: bool) {
        if failures == 0 {
            return;
        }
        let opened = self.with(
            target,
            || Breaker::new(failures, cooldown),
            |b| b.record(success, Instant::now()),
        );
        if opened {
            warn!(
                target = %target, cooldown_ms = cooldown.as_millis() as u64,
                "circuit breaker open: actions for this target wait (their events stay in flight, so the runtime pauses the partitions at max_in_flight)"
            );
        }
    }

    pub fn state(&self, target: &str) -> Option<State> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(target).map(|b| b.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_then_probes_half_open() {
        let t0 = Instant::now();
        let cool = Duration::from_secs(10);
        let mut b = Breaker::new(3, cool);
        assert_eq!(b.admit(t0), Admission::Pass);
        assert!(!b.record(false, t0));
        assert!(!b.record(true, t0), "a success resets the count");
        assert!(!b.record(false, t0));
        assert!(!b.record(false, t0));
        assert!(b.record(false, t0), "third consecutive failure opens");
        assert_eq!(b.state.gauge(), 2.0);
        assert_eq!(
            b.admit(t0 + Duration::from_secs(4)),
            Admission::Wait(Duration::from_secs(6))
        );
        // After the cool-down exactly one probe goes through.
        assert_eq!(b.admit(t0 + cool), Admission::Probe);
        assert_eq!(b.state.gauge(), 1.0);
        assert!(matches!(b.admit(t0 + cool), Admission::Wait(_)));
        // The probe fails: open again for a full cool-down.
        assert!(b.record(false, t0 + cool));
        assert!(matches!(
            b.admit(t0 + cool + Duration::from_secs(1)),
            Admission::Wait(_)
        ));
        assert_eq!(b.admit(t0 + cool * 2), Admission::Probe);
        // The probe succeeds: closed.
        assert!(!b.record(true, t0 + cool * 2));
        assert_eq!(b.state, State::Closed { failures: 0 });
        assert_eq!(b.admit(t0 + cool * 2), Admission::Pass);
    }

    #[test]
    fn a_lost_probe_is_replaced_and_zero_disables() {
        let t0 = Instant::now();
        let cool = Duration::from_secs(1);
        let mut b = Breaker::new(1, cool);
        assert!(b.record(false, t0));
        assert_eq!(b.admit(t0 + cool), Admission::Probe);
        assert!(matches!(b.admit(t0 + cool * 2), Admission::Wait(_)));
        assert_eq!(b.admit(t0 + cool * 3), Admission::Probe);
        let mut off = Breaker::new(0, cool);
        for _ in 0..10 {
            assert!(!off.record(false, t0));
        }
        assert_eq!(off.admit(t0), Admission::Pass);
    }
}
