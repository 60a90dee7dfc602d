//! Policy denials in the main job (a pack with `actor.policy_file`, e.g. idle-suspend): a line
//! in the live view, a line in the summary and a check that no denied request reached the
//! target. Nothing shows for a pack without policies.

use std::collections::{BTreeMap, BTreeSet};

use reflex_bench::target::TargetStats;
use reflexctl::top::Fleet;

use super::check::{fmt, Check, Seen};

/// The Avro symbol of a denial.
pub const DENIED: &str = "DENIED_BY_POLICY";

/// `policy denials N (x/s)`, once an actor reports the outcome (it does when it loaded a
/// policy file).
pub fn live_line(fleet: &Fleet) -> Option<String> {
    let row = fleet
        .actions
        .iter()
        .find(|r| r.result == reflex_core::actions::ActionResult::DeniedByPolicy.as_str())?;
    let rate = row
        .rate
        .map(|r| format!("{r:.1}/s"))
        .unwrap_or_else(|| "-/s".into());
    Some(format!(
        "policy denials {} ({rate}), never executed\n",
        fmt(row.total as u64)
    ))
}

/// `policy      suspend-environment denied 12, ...` from the final outcomes per
/// `action/RESULT`; `None` when nothing was denied.
pub fn summary_line(outcomes: &BTreeMap<String, u64>) -> Option<String> {
    let denied: Vec<String> = outcomes
        .iter()
        .filter_map(|(k, n)| {
            let action = k.strip_suffix(&format!("/{DENIED}"))?;
            Some(format!("{action} denied {}", fmt(*n)))
        })
        .collect();
    (!denied.is_empty()).then(|| {
        format!(
            "policy      {} (DENIED_BY_POLICY outcomes, naming the policy)",
            denied.join(", ")
        )
    })
}

/// No request a policy denied reached the target: its idempotency key was never applied.
/// `None` when nothing was denied.
pub fn check(records: &[Seen], target: &TargetStats) -> Option<Check> {
    let denied: BTreeSet<&str> = records
        .iter()
        .filter_map(|r| match r {
            Seen::Outcome {
                result,
                idempotency_key,
                last: true,
                ..
            } if result == DENIED => Some(idempotency_key.as_str()),
            _ => None,
        })
        .collect();
    if denied.is_empty() {
        return None;
    }
    let reached: Vec<&str> = denied
        .iter()
        .filter(|k| target.applied.contains(**k))
        .copied()
        .collect();
    Some(Check {
        ok: reached.is_empty(),
        check: format!(
            "policy denials never executed: {} denied keys, {} of them applied at the target{}",
            fmt(denied.len() as u64),
            reached.len(),
            if reached.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    reached
                        .iter()
                        .take(5)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ),
    })
}

#[cfg(test)]
mod tests {
    use reflexctl::prom::Samples;
    use reflexctl::top::{Reading, Tracker};

    use super::*;

    fn outcome(key: &str, result: &str) -> Seen {
        Seen::Outcome {
            event_id: format!("e-{key}"),
            action: "suspend-environment".into(),
            result: result.into(),
            idempotency_key: key.into(),
            last: true,
            rule: Some("suspend-nonprod".into()),
            target: "preview-1".into(),
        }
    }

    #[test]
    fn the_check_fails_when_a_denied_key_was_applied() {
        let mut target = TargetStats::default();
        target.applied.insert("k1".into());
        assert!(check(&[outcome("k1", "SUCCEEDED")], &target).is_none());
        let c = check(
            &[outcome("k1", "SUCCEEDED"), outcome("k2", DENIED)],
            &target,
        )
        .unwrap();
        assert!(c.ok, "{}", c.check);
        assert_eq!(
            c.check,
            "policy denials never executed: 1 denied keys, 0 of them applied at the target"
        );
        target.applied.insert("k2".into());
        let c = check(&[outcome("k2", DENIED)], &target).unwrap();
        assert!(!c.ok);
        assert!(c.check.ends_with("1 of them applied at the target (k2)"));
    }

    #[test]
    fn summary_and_live_lines_show_only_with_denials() {
        let mut outcomes = BTreeMap::from([("restart-pod/SUCCEEDED".to_string(), 3)]);
        assert_eq!(summary_line(&outcomes), None);
        outcomes.insert(format!("suspend-environment/{DENIED}"), 1_204);
        assert_eq!(
            summary_line(&outcomes).unwrap(),
            "policy      suspend-environment denied 1,204 (DENIED_BY_POLICY outcomes, naming the policy)"
        );

        let reading = |text: &str, at_ms| Reading {
            worker: "http://actor/metrics".into(),
            result: Ok(Samples::parse(text)),
            at_ms,
        };
        let series = |n: u32| {
            format!(
                "reflex_events_in_total{{stage=\"actor\"}} 1\nreflex_actions_total{{action=\"a\",result=\"denied_by_policy\"}} {n}\n"
            )
        };
        let mut tracker = Tracker::default();
        tracker.observe(vec![reading(&series(10), 1_000)]);
        let fleet = tracker.observe(vec![reading(&series(30), 3_000)]);
        assert_eq!(
            live_line(&fleet).unwrap(),
            "policy denials 30 (10.0/s), never executed\n"
        );
        let none = Tracker::default().observe(vec![reading(
            "reflex_events_in_total{stage=\"actor\"} 1\n",
            1_000,
        )]);
        assert_eq!(live_line(&none), None);
    }
}
