//! The actor's waits for a turn and for a person, as the main job shows them: requests that
//! found their per-target lock held and how long they waited, and requests held for approval
//! (from the actors' `/metrics`; the pending count is fleet-wide, read from Redis by each actor,
//! so replicas report the same number and the largest is taken).

use reflex_core::metrics as m;
use reflexctl::prom::Samples;
use serde::Serialize;

use super::check::fmt;

/// Lock and approval figures of the actor replicas, at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Guards {
    /// Requests that found their lock held (`reflex_action_lock_waits_total`).
    pub lock_waits: u64,
    /// Locks taken and the seconds spent waiting for them (the wait histogram's count and sum).
    pub locks_taken: u64,
    pub lock_wait_seconds: f64,
    /// Requests held for a decision so far, and still waiting now.
    pub approvals_requested: u64,
    pub approvals_pending: u64,
}

impl Guards {
    /// Sums the actor replicas' samples.
    pub fn of<'a>(actors: impl IntoIterator<Item = &'a Samples>) -> Guards {
        let mut g = Guards::default();
        for s in actors {
            g.lock_waits += s.total(m::LOCK_WAITS, &[]) as u64;
            g.locks_taken += s.total(&format!("{}_count", m::LOCK_WAIT_SECONDS), &[]) as u64;
            g.lock_wait_seconds += s.total(&format!("{}_sum", m::LOCK_WAIT_SECONDS), &[]);
            g.approvals_requested += s.total(m::APPROVALS_REQUESTED, &[]) as u64;
            g.approvals_pending = g
                .approvals_pending
                .max(s.total(m::APPROVALS_PENDING, &[]) as u64);
        }
        g
    }

    /// Mean wait for a lock, over the locks taken.
    pub fn mean_wait_s(&self) -> f64 {
        if self.locks_taken == 0 {
            0.0
        } else {
            self.lock_wait_seconds / self.locks_taken as f64
        }
    }
}

/// The live view's line.
pub fn line(g: &Guards) -> String {
    format!(
        "locks waited {} (mean wait {:.2} s over {} taken) │ approvals pending {} ({} requested)\n",
        fmt(g.lock_waits),
        g.mean_wait_s(),
        fmt(g.locks_taken),
        fmt(g.approvals_pending),
        fmt(g.approvals_requested),
    )
}

/// The summary's line.
pub fn summary_line(g: &Guards) -> String {
    format!(
        "guards      locks waited {} ({} taken, mean wait {:.2} s); approvals requested {}, pending at the end {}",
        fmt(g.lock_waits),
        fmt(g.locks_taken),
        g.mean_wait_s(),
        fmt(g.approvals_requested),
        fmt(g.approvals_pending),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_replicas_and_takes_the_fleet_wide_pending_once() {
        let a = Samples::parse(
            "reflex_action_lock_waits_total{action=\"restart-pod\"} 3\n\
             reflex_action_lock_wait_seconds_count{action=\"restart-pod\"} 10\n\
             reflex_action_lock_wait_seconds_sum{action=\"restart-pod\"} 2.5\n\
             reflex_approvals_requested_total{action=\"quarantine-host\"} 4\n\
             reflex_approvals_pending 2\n",
        );
        let b = Samples::parse(
            "reflex_action_lock_waits_total{action=\"restart-pod\"} 1\n\
             reflex_action_lock_wait_seconds_count{action=\"restart-pod\"} 10\n\
             reflex_action_lock_wait_seconds_sum{action=\"restart-pod\"} 0.5\n\
             reflex_approvals_pending 2\n",
        );
        let g = Guards::of([&a, &b]);
        assert_eq!(g.lock_waits, 4);
        assert_eq!(g.locks_taken, 20);
        assert!((g.mean_wait_s() - 0.15).abs() < 1e-9);
        assert_eq!((g.approvals_requested, g.approvals_pending), (4, 2));
        assert_eq!(
            line(&g),
            "locks waited 4 (mean wait 0.15 s over 20 taken) │ approvals pending 2 (4 requested)\n"
        );
        assert!(summary_line(&Guards::default()).contains("locks waited 0"));
    }
}
