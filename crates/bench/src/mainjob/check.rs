//! The main job's accounting: from what was published, what the pipeline wrote (outcomes, dead
//! letters, held records), what the target saw and how the workers ended, the checks and the
//! summary. Pure: [`check`] reads only its [`Evidence`], so the checks are tested without a
//! broker.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use reflex_bench::pack::ActionInfo;
use reflex_bench::target::TargetStats;
use serde::Serialize;
use serde_json::{json, Value as Json};

/// One record of the run read back from the output topics (only records of this run: their
/// event id has the run's prefix).
#[derive(Debug, Clone)]
pub enum Seen {
    /// An `ActionOutcome` (`result` as the Avro enum symbol, e.g. `SUCCEEDED`); `last` is the
    /// `reflex-final` header: only final outcomes end an event.
    Outcome {
        event_id: String,
        action: String,
        result: String,
        idempotency_key: String,
        last: bool,
        /// The router rule that fired it and the action's target (the throttle bound is per
        /// rule and target).
        rule: Option<String>,
        target: String,
    },
    DeadLetter {
        event_id: String,
        class: String,
    },
    /// A record of this run's event on the actor's held topic or a reprocessor's exhausted
    /// topic.
    Held {
        topic: String,
    },
}

/// How a worker process ended; `must_drain`: it had to exit 0 (it was not killed on purpose).
#[derive(Debug, Clone)]
pub struct Exit {
    pub name: String,
    pub code: String,
    pub must_drain: bool,
}

/// Everything the checks look at.
#[derive(Debug, Default)]
pub struct Evidence {
    /// ce_id → records the broker acknowledged.
    pub published: BTreeMap<String, u32>,
    pub publish_errors: u64,
    pub first_error: Option<String>,
    pub poison: BTreeSet<String>,
    pub duplicated: usize,
    pub injected: BTreeMap<String, String>,
    pub records: Vec<Seen>,
    /// The workers' own `reflex_events_dropped_total` (router + enricher).
    pub dropped_by_workers: u64,
    /// Events the rules drop (from the rules themselves), when replicas were killed and the
    /// workers' counters cannot be trusted.
    pub drop_oracle: Option<HashSet<String>>,
    /// Uncommitted records per stage after the drain.
    pub lags: BTreeMap<String, i64>,
    pub target: TargetStats,
    /// Under faults a request may be retried with its key: the target absorbs it.
    pub repeats_allowed: bool,
    pub actions: Vec<ActionInfo>,
    /// Blast-radius windows touched: wall-clock span of the run, ms since the epoch.
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub exits: Vec<Exit>,
    /// Rules throttled `once_within` a window: at most one firing per group per window.
    pub throttles: Vec<(String, std::time::Duration)>,
    /// Per stateful rule: firings and suppressed events, from the routers' metrics.
    pub windows: BTreeMap<String, (u64, u64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub ok: bool,
    pub check: String,
}

/// The verdict and the figures `summary.json` and the fault suite read.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub published: u64,
    pub passed: bool,
    pub checks: Vec<Check>,
    pub ended: BTreeMap<&'static str, u64>,
    /// Published records with no terminal record (dropped by a rule, or lost).
    pub dropped: u64,
    pub pending: i64,
    /// `action/RESULT` → final outcomes.
    pub outcomes: BTreeMap<String, u64>,
    pub target: TargetStats,
    pub poison: usize,
    pub duplicated: usize,
    pub lost: u64,
    pub lost_ids: Vec<String>,
    pub duplicate_effects: u64,
    pub held: u64,
    pub dead_letters: u64,
    pub dead_classes: BTreeMap<String, u64>,
    pub held_records: BTreeMap<String, u64>,
    pub suppressed: u64,
    /// Per stateful rule: firings and suppressed events.
    pub windows: BTreeMap<String, (u64, u64)>,
    /// Per throttled rule: the most effects one target got, over how many targets.
    pub per_target: BTreeMap<String, (u64, usize)>,
    /// Terminal records beyond one per published record (fan-out to several actions, replays).
    pub extra: u64,
    pub injected: BTreeMap<String, Json>,
}

pub fn fmt(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn check(e: &Evidence) -> Verdict {
    // event id → result → final outcomes.
    let mut finals: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    let mut dead: BTreeMap<&str, u64> = BTreeMap::new();
    let mut dead_classes: BTreeMap<String, u64> = BTreeMap::new();
    let mut held_records: BTreeMap<String, u64> = BTreeMap::new();
    let mut effects_by_action: BTreeMap<&str, u64> = BTreeMap::new();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut succeeded_keys: BTreeMap<&str, u64> = BTreeMap::new();
    let mut http_succeeded: BTreeSet<&str> = BTreeSet::new();
    // (rule, target) → effects (final SUCCEEDED outcomes).
    let mut effects_by_target: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let kind = |action: &str| {
        e.actions
            .iter()
            .find(|a| a.name == action)
            .map(|a| a.kind.as_str())
    };
    for r in &e.records {
        match r {
            Seen::Outcome {
                event_id,
                action,
                result,
                idempotency_key,
                last,
                rule,
                target,
            } => {
                if !last {
                    continue;
                }
                if result == "SUCCEEDED" {
                    if let Some(rule) = rule {
                        *effects_by_target.entry((rule, target)).or_default() += 1;
                    }
                }
                *finals
                    .entry(event_id)
                    .or_default()
                    .entry(result)
                    .or_default() += 1;
                *outcomes.entry(format!("{action}/{result}")).or_default() += 1;
                if result == "SUCCEEDED" {
                    *effects_by_action.entry(action).or_default() += 1;
                    *succeeded_keys.entry(idempotency_key).or_default() += 1;
                    if kind(action) == Some("http") {
                        http_succeeded.insert(idempotency_key);
                    }
                }
            }
            Seen::DeadLetter { event_id, class } => {
                *dead.entry(event_id).or_default() += 1;
                *dead_classes.entry(class.clone()).or_default() += 1;
            }
            Seen::Held { topic, .. } => *held_records.entry(topic.clone()).or_default() += 1,
        }
    }

    // Each published record's end: a final outcome (HELD ones are the requests held for review), a
    // dead letter, or nothing because a rule dropped it.
    let (mut to_outcomes, mut to_held, mut to_dead) = (0u64, 0u64, 0u64);
    let mut unended = 0u64;
    let mut extra = 0u64;
    let mut lost_ids = Vec::new();
    let n_in: u64 = e.published.values().map(|v| *v as u64).sum();
    for (eid, k) in &e.published {
        let k = *k as u64;
        let empty = BTreeMap::new();
        let r = finals.get(eid.as_str()).unwrap_or(&empty);
        let n_held = r.get("HELD").copied().unwrap_or(0);
        let n_out = r.values().sum::<u64>() - n_held;
        let n_dead = dead.get(eid.as_str()).copied().unwrap_or(0);
        let got = n_out + n_held + n_dead;
        if got == 0 {
            unended += k;
            if let Some(oracle) = &e.drop_oracle {
                if !oracle.contains(eid) || e.poison.contains(eid) {
                    lost_ids.push(eid.clone());
                }
            }
            continue;
        }
        let mut take = k.min(got);
        extra += got - take;
        // A copy with no record of its own (the second copy of an event published twice,
        // taken by a stateful rule's window after the first fired) ended like a drop.
        unended += k - take;
        for (slot, v) in [
            (&mut to_outcomes, n_out),
            (&mut to_held, n_held),
            (&mut to_dead, n_dead),
        ] {
            let used = v.min(take);
            *slot += used;
            take -= used;
        }
    }
    let dropped = match &e.drop_oracle {
        // Replicas were killed and restarted: their drop counters are lost or counted twice.
        // The rules' own verdict per event says which may end unrecorded.
        Some(_) => {
            unended
                - lost_ids
                    .iter()
                    .map(|id| e.published.get(id).copied().unwrap_or(0) as u64)
                    .sum::<u64>()
        }
        None => e.dropped_by_workers,
    };
    let lost = unended.saturating_sub(dropped);
    let pending: i64 = e.lags.values().sum();

    let mut checks = Vec::new();
    let mut add = |ok: bool, text: String| checks.push(Check { ok, check: text });
    let accounted = to_outcomes + to_held + to_dead;
    add(n_in > 0, format!("events were published ({})", fmt(n_in)));
    add(
        e.publish_errors == 0,
        format!(
            "every publish was acknowledged ({} errors{})",
            e.publish_errors,
            e.first_error
                .as_ref()
                .map(|x| format!(": {x}"))
                .unwrap_or_default()
        ),
    );
    let by_stage: Vec<String> = e
        .lags
        .iter()
        .filter(|(_, v)| **v != 0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    add(
        accounted + unended == n_in && unended == dropped && pending == 0,
        format!(
            "nothing lost: events in {} = outcomes {} + held {} + dead letters {} + dropped by rules {} \
             (workers counted {} dropped; uncommitted {}{})",
            fmt(n_in),
            fmt(to_outcomes),
            fmt(to_held),
            fmt(to_dead),
            fmt(unended),
            fmt(dropped),
            pending,
            if by_stage.is_empty() {
                String::new()
            } else {
                format!(" by stage: {}", by_stage.join(", "))
            }
        ),
    );
    let poison_dead = e
        .poison
        .iter()
        .filter(|id| dead.contains_key(id.as_str()))
        .count();
    add(
        poison_dead == e.poison.len(),
        format!(
            "every poison record dead-lettered ({poison_dead}/{})",
            e.poison.len()
        ),
    );
    let dup_outcomes: u64 = succeeded_keys.values().map(|v| v.saturating_sub(1)).sum();
    let t = &e.target;
    let duplicate_effects = t.duplicate_effects + dup_outcomes;
    if e.repeats_allowed {
        // A duplicate EFFECT is a key applied twice, or two SUCCEEDED outcomes for one key; a
        // request retried with its key (a timeout, a replica killed mid-call) is absorbed.
        add(
            duplicate_effects == 0,
            format!(
                "zero duplicate effects: {} keys applied twice at the target, {dup_outcomes} keys with \
                 two SUCCEEDED outcomes ({} keys retried, absorbed by Idempotency-Key)",
                t.duplicate_effects, t.repeated_keys
            ),
        );
    } else {
        add(
            t.repeated_keys == 0 && duplicate_effects == 0,
            format!(
                "zero duplicate effects: the target saw {} Idempotency-Keys in {} requests, {} of \
                 them more than once, {} applied twice ({dup_outcomes} keys with two SUCCEEDED \
                 outcomes)",
                fmt(t.keys),
                fmt(t.requests),
                t.repeated_keys,
                t.duplicate_effects
            ),
        );
    }
    let succeeded_http: u64 = effects_by_action
        .iter()
        .filter(|(a, _)| kind(a) == Some("http"))
        .map(|(_, v)| *v)
        .sum();
    if e.repeats_allowed {
        // A timed-out call may have applied its effect while its outcome says FAILED: shown,
        // not a failure.
        let missing: Vec<&str> = http_succeeded
            .iter()
            .filter(|k| !t.applied.contains(**k))
            .copied()
            .collect();
        add(
            succeeded_http <= t.applied_keys && missing.is_empty(),
            format!(
                "every succeeded HTTP outcome has its effect at the target ({} outcomes, {} keys applied{})",
                fmt(succeeded_http),
                fmt(t.applied_keys),
                if missing.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; never applied: {}",
                        missing.iter().take(5).copied().collect::<Vec<_>>().join(", ")
                    )
                }
            ),
        );
    } else {
        add(
            succeeded_http == t.keys,
            format!(
                "one effect per succeeded HTTP outcome ({} outcomes, {} keys at the target)",
                fmt(succeeded_http),
                fmt(t.keys)
            ),
        );
    }
    for a in &e.actions {
        if a.blast_radius_max == 0 {
            continue;
        }
        let window = a.blast_radius_window.as_millis().max(1) as i64;
        let windows = (e.window_end_ms / window - e.window_start_ms / window + 1) as u64;
        let done = effects_by_action.get(a.name.as_str()).copied().unwrap_or(0);
        let held = outcomes
            .get(&format!("{}/HELD", a.name))
            .copied()
            .unwrap_or(0);
        add(
            done <= a.blast_radius_max * windows,
            format!(
                "remediations capped: {} executed {done} times, cap {} per {} s window ({windows} \
                 window{} touched); {} held for a human",
                a.name,
                a.blast_radius_max,
                window / 1000,
                if windows > 1 { "s" } else { "" },
                fmt(held)
            ),
        );
    }
    if let Some(c) = super::policy::check(&e.records, &e.target) {
        add(c.ok, c.check);
    }
    let mut per_target = BTreeMap::new();
    for (rule, window) in &e.throttles {
        // A throttle fires at most once per window per group; a run of span T touches at most
        // T / window + 1 windows of one group.
        let span = (e.window_end_ms - e.window_start_ms).max(0) as u128;
        let bound = (span / window.as_millis().max(1)) as u64 + 1;
        let counts: Vec<u64> = effects_by_target
            .iter()
            .filter(|((r, _), _)| r == rule)
            .map(|(_, n)| *n)
            .collect();
        let most = counts.iter().copied().max().unwrap_or(0);
        per_target.insert(rule.clone(), (most, counts.len()));
        let (fired, suppressed) = e.windows.get(rule).copied().unwrap_or_default();
        add(
            most <= bound,
            format!(
                "per-target bound: rule {rule} took effect at most {most} time{} per target over {} target{} (throttle once per {}, bound {bound} in this run); router fired {} and suppressed {}",
                if most == 1 { "" } else { "s" },
                counts.len(),
                if counts.len() == 1 { "" } else { "s" },
                reflex_runtime::duration::format(*window),
                fmt(fired),
                fmt(suppressed)
            ),
        );
    }
    for x in &e.exits {
        if x.must_drain {
            add(
                x.code == "0",
                format!("{} drained and exited {}", x.name, x.code),
            );
        }
    }
    let passed = checks.iter().all(|c| c.ok);
    let suppressed = outcomes
        .iter()
        .filter(|(k, _)| k.ends_with("/DUPLICATE_SUPPRESSED"))
        .map(|(_, v)| *v)
        .sum();
    let injected = e
        .injected
        .iter()
        .map(|(eid, tag)| {
            (
                eid.clone(),
                json!({
                    "tag": tag,
                    "dead": dead.get(eid.as_str()).copied().unwrap_or(0),
                    "outcomes": finals.get(eid.as_str()).cloned().unwrap_or_default(),
                }),
            )
        })
        .collect();
    lost_ids.truncate(20);
    Verdict {
        published: n_in,
        passed,
        checks,
        ended: BTreeMap::from([
            ("outcomes", to_outcomes),
            ("held", to_held),
            ("dead letters", to_dead),
        ]),
        dropped: unended,
        pending,
        outcomes,
        target: t.clone(),
        poison: e.poison.len(),
        duplicated: e.duplicated,
        lost,
        lost_ids,
        duplicate_effects,
        held: to_held,
        dead_letters: to_dead,
        dead_classes,
        held_records,
        suppressed,
        windows: e.windows.clone(),
        per_target,
        extra,
        injected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn outcome(eid: &str, action: &str, result: &str) -> Seen {
        Seen::Outcome {
            event_id: eid.into(),
            action: action.into(),
            result: result.into(),
            idempotency_key: format!("{action}:{eid}"),
            last: true,
            rule: Some(format!("{action}-rule")),
            target: format!("pod-of-{eid}"),
        }
    }

    /// Three events (one published twice), one dropped by a rule, one poison, a capped action.
    fn clean() -> Evidence {
        let mut target = TargetStats {
            requests: 2,
            keys: 2,
            applied_keys: 2,
            ..Default::default()
        };
        target.applied.insert("restart:e1".into());
        target.applied.insert("page:e2".into());
        Evidence {
            published: BTreeMap::from([
                ("e1".into(), 2),
                ("e2".into(), 1),
                ("e3".into(), 1),
                ("e4".into(), 1),
            ]),
            poison: BTreeSet::from(["e4".into()]),
            duplicated: 1,
            records: vec![
                outcome("e1", "restart", "SUCCEEDED"),
                outcome("e1", "restart", "DUPLICATE_SUPPRESSED"),
                outcome("e2", "page", "SUCCEEDED"),
                Seen::DeadLetter {
                    event_id: "e4".into(),
                    class: "deserialization".into(),
                },
            ],
            dropped_by_workers: 1,
            lags: BTreeMap::from([("router".into(), 0), ("actor".into(), 0)]),
            target,
            actions: vec![
                ActionInfo {
                    name: "restart".into(),
                    kind: "http".into(),
                    blast_radius_max: 3,
                    blast_radius_window: Duration::from_secs(600),
                },
                ActionInfo {
                    name: "page".into(),
                    kind: "http".into(),
                    blast_radius_max: 0,
                    blast_radius_window: Duration::from_secs(600),
                },
            ],
            window_start_ms: 1_000,
            window_end_ms: 61_000,
            exits: vec![Exit {
                name: "router".into(),
                code: "0".into(),
                must_drain: true,
            }],
            ..Default::default()
        }
    }

    fn failed(v: &Verdict) -> Vec<&str> {
        v.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.check.as_str())
            .collect()
    }

    #[test]
    fn a_clean_run_passes_and_adds_up() {
        let v = check(&clean());
        assert!(v.passed, "{:?}", failed(&v));
        assert_eq!(v.published, 5);
        assert_eq!(v.ended["outcomes"], 3);
        assert_eq!(v.ended["dead letters"], 1);
        assert_eq!(v.dropped, 1);
        assert_eq!(v.lost, 0);
        assert_eq!(v.suppressed, 1);
        assert_eq!(v.outcomes["restart/SUCCEEDED"], 1);
    }

    #[test]
    fn a_lost_event_fails() {
        let mut e = clean();
        e.dropped_by_workers = 0;
        let v = check(&e);
        assert!(!v.passed);
        assert_eq!(v.lost, 1);
        assert!(
            failed(&v)[0].starts_with("nothing lost"),
            "{:?}",
            failed(&v)
        );
    }

    #[test]
    fn a_key_seen_twice_by_the_target_fails_unless_retries_are_allowed() {
        let mut e = clean();
        e.target.requests = 3;
        e.target.repeated_keys = 1;
        let v = check(&e);
        assert_eq!(failed(&v).len(), 1);
        assert!(failed(&v)[0].starts_with("zero duplicate effects"));
        e.repeats_allowed = true;
        assert!(check(&e).passed);
        // Two SUCCEEDED outcomes for one key are a duplicate effect either way.
        e.records.push(outcome("e1", "restart", "SUCCEEDED"));
        let v = check(&e);
        assert_eq!(v.duplicate_effects, 1);
        assert!(!v.passed);
    }

    #[test]
    fn a_breached_cap_an_undrained_worker_and_a_live_poison_fail() {
        let mut e = clean();
        e.actions[0].blast_radius_max = 0;
        e.actions[1].blast_radius_max = 0;
        assert!(check(&e).passed);
        e.actions[1].blast_radius_max = 0;
        e.actions[0].blast_radius_max = 1;
        e.records.push(outcome("e3", "restart", "SUCCEEDED"));
        e.target.keys = 3;
        e.target.requests = 3;
        e.target.applied_keys = 3;
        e.dropped_by_workers = 0;
        let v = check(&e);
        assert_eq!(failed(&v).len(), 1, "{:?}", failed(&v));
        assert!(failed(&v)[0].starts_with("remediations capped: restart executed 2 times"));

        let mut e = clean();
        e.exits[0].code = "signal 9".into();
        e.records.retain(|r| !matches!(r, Seen::DeadLetter { .. }));
        let v = check(&e);
        let f = failed(&v);
        assert!(f
            .iter()
            .any(|c| c.starts_with("every poison record dead-lettered (0/1)")));
        assert!(f
            .iter()
            .any(|c| c.starts_with("router drained and exited signal 9")));
    }

    #[test]
    fn under_faults_the_rules_say_what_may_end_unrecorded() {
        let mut e = clean();
        e.dropped_by_workers = 99; // counters of killed replicas are not used
        e.drop_oracle = Some(HashSet::from(["e3".to_string()]));
        let v = check(&e);
        assert!(v.passed, "{:?}", failed(&v));
        e.drop_oracle = Some(HashSet::new());
        let v = check(&e);
        assert_eq!(v.lost, 1);
        assert_eq!(v.lost_ids, ["e3"]);
        assert!(!v.passed);
    }

    #[test]
    fn a_throttled_rule_taking_effect_twice_on_one_target_in_its_window_fails() {
        let mut e = clean();
        e.window_start_ms = 0;
        e.window_end_ms = 60_000;
        e.throttles = vec![("restart-rule".into(), Duration::from_secs(600))];
        e.windows = BTreeMap::from([("restart-rule".into(), (1, 40))]);
        // An event published twice whose second copy the throttle took: one outcome, one drop.
        e.published.insert("e6".into(), 2);
        e.records.push(outcome("e6", "page", "SUCCEEDED"));
        e.target.requests += 1;
        e.target.keys += 1;
        e.target.applied_keys += 1;
        e.target.applied.insert("page:e6".into());
        e.dropped_by_workers += 1;
        let v = check(&e);
        assert!(v.passed, "{:?}", failed(&v));
        assert_eq!(v.per_target["restart-rule"], (1, 1));
        let bound = v
            .checks
            .iter()
            .find(|c| c.check.starts_with("per-target bound"))
            .unwrap();
        assert!(
            bound.check.contains("fired 1 and suppressed 40"),
            "{}",
            bound.check
        );
        // A second effect on the same pod within the 10 minutes breaks the bound.
        e.published.insert("e5".into(), 1);
        e.records.push(Seen::Outcome {
            event_id: "e5".into(),
            action: "restart".into(),
            result: "SUCCEEDED".into(),
            idempotency_key: "restart:e5".into(),
            last: true,
            rule: Some("restart-rule".into()),
            target: "pod-of-e1".into(),
        });
        let v = check(&e);
        assert!(
            failed(&v).iter().any(|c| c.starts_with("per-target bound")),
            "{:?}",
            failed(&v)
        );
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(fmt(0), "0");
        assert_eq!(fmt(999), "999");
        assert_eq!(fmt(1000), "1,000");
        assert_eq!(fmt(1234567), "1,234,567");
    }
}
