//! The fleet as `reflexctl top` shows it: [`Fleet`], computed from two rounds of readings of
//! the workers' metrics. No I/O here, so the figures are tested from fixed exposition text.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use reflex_core::actions::ActionResult;
use reflex_core::metrics as m;
use reflex_lag::Status;

use crate::prom::Samples;

/// The stages of a Reflex fleet, in pipeline order: their rows come first, and always (an
/// absent stage shows as such rather than vanishing).
pub const STAGES: [&str; 4] = ["router", "enricher", "actor", "reprocessor"];

/// Action outcomes in the order the view lists them (outcomes a newer actor adds follow).
const OUTCOMES: [ActionResult; 6] = [
    ActionResult::Succeeded,
    ActionResult::Failed,
    ActionResult::Rejected,
    ActionResult::Held,
    ActionResult::DryRun,
    ActionResult::DuplicateSuppressed,
];

/// What one worker answered at one scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The worker: its `/metrics` URL, or `job/instance` behind a Prometheus server.
    pub worker: String,
    /// Its samples, or why it could not be read.
    pub result: Result<Samples, String>,
    /// When the values were taken, ms since the epoch: Prometheus' own sample timestamps when
    /// the text carries them (federation), else the time of our request.
    pub at_ms: i64,
}

impl Reading {
    fn samples(&self) -> Option<&Samples> {
        self.result.as_ref().ok()
    }

    /// The stages this worker serves: the `stage` labels of its events-in counter (the runtime
    /// registers it at start-up, before any event).
    fn stages(&self) -> BTreeSet<String> {
        self.samples()
            .map(|s| s.by_label(m::EVENTS_IN, "stage").into_keys().collect())
            .unwrap_or_default()
    }
}

/// Keeps each worker's two latest *distinct* readings, the pair rates come from.
///
/// A reading whose timestamp did not move (Prometheus has not scraped the worker again since
/// our last look) replaces nothing, so polling a Prometheus server faster than it scrapes shows
/// the rate over its last two scrapes instead of zero.
#[derive(Debug, Default)]
pub struct Tracker {
    older: HashMap<String, Reading>,
    latest: BTreeMap<String, Reading>,
    /// Workers seen before: a worker that stops answering keeps its stage.
    stages: HashMap<String, BTreeSet<String>>,
}

impl Tracker {
    /// Takes one round of readings (every source, in order) and returns the fleet as of it.
    pub fn observe(&mut self, round: Vec<Reading>) -> Fleet {
        let mut current = Vec::with_capacity(round.len());
        for reading in round {
            let stages = reading.stages();
            if !stages.is_empty() {
                self.stages.insert(reading.worker.clone(), stages);
            }
            let same = self.latest.get(&reading.worker).is_some_and(|l| {
                l.result.is_ok() && reading.result.is_ok() && l.at_ms == reading.at_ms
            });
            if !same {
                if let Some(previous) = self.latest.insert(reading.worker.clone(), reading.clone())
                {
                    self.older.insert(reading.worker.clone(), previous);
                }
            }
            current.push(reading.worker);
        }
        let readings: Vec<(&Reading, Option<&Reading>)> = current
            .iter()
            .filter_map(|w| Some((self.latest.get(w)?, self.older.get(w))))
            .collect();
        Fleet::compute(&readings, &self.stages)
    }
}

/// One stage's row: its replicas summed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StageRow {
    pub stage: String,
    /// Replicas that answered, and replicas known (answering or not).
    pub up: usize,
    pub workers: usize,
    /// Counter totals since the replicas started.
    pub events_in: f64,
    pub events_out: f64,
    pub dead_letters: f64,
    /// Per second over the last interval; `None` until two readings of a replica exist.
    pub in_rate: Option<f64>,
    pub out_rate: Option<f64>,
    pub dead_rate: Option<f64>,
    pub in_flight: f64,
    pub paused_partitions: f64,
    /// Consumer-group lag, as the replicas measure their own group: offsets summed over the
    /// stage's groups, seconds the oldest; `None` before the first lag sample.
    pub lag: Option<f64>,
    pub lag_seconds: Option<f64>,
    /// The worst Burrow-style status among the stage's groups.
    pub lag_status: Option<Status>,
}

/// Action attempts with one outcome, across actions and actor replicas.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeRow {
    pub result: String,
    pub total: f64,
    pub rate: Option<f64>,
}

/// Circuit breakers across the actor replicas, one per target; a target counts in its worst
/// state on any replica.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Breakers {
    pub closed: usize,
    pub half_open: Vec<String>,
    pub open: Vec<String>,
}

/// A worker the view lists: its stages, and the error when it did not answer.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    pub worker: String,
    pub stages: Vec<String>,
    pub error: Option<String>,
}

/// A running fleet at one instant, as `reflexctl top` shows it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fleet {
    /// The four Reflex stages first (always), then any other stage seen.
    pub stages: Vec<StageRow>,
    /// Known outcomes first (when some actor reports them), then others.
    pub actions: Vec<OutcomeRow>,
    pub breakers: Breakers,
    /// Actor replicas reporting the kill switch, and how many of them have it on.
    pub kill_switch_on: usize,
    pub kill_switch_reporting: usize,
    pub workers: Vec<WorkerRow>,
    /// Seconds between the readings the rates come from (the longest of the workers').
    pub interval_s: Option<f64>,
}

impl Fleet {
    /// The fleet from each worker's latest reading and, when there is one, its previous one.
    /// `known_stages` maps workers to the stages they served when last seen, so a worker that
    /// stops answering is counted against its stage.
    pub fn compute(
        readings: &[(&Reading, Option<&Reading>)],
        known_stages: &HashMap<String, BTreeSet<String>>,
    ) -> Fleet {
        let mut fleet = Fleet::default();
        let mut rows: BTreeMap<String, StageRow> = BTreeMap::new();
        // (stage, group) → (offsets, seconds, status): replicas of a stage each measure their
        // whole group, so a group's figures are taken once (the largest), never summed.
        let mut groups: BTreeMap<(String, String), (f64, f64, Option<Status>)> = BTreeMap::new();
        let mut outcomes: BTreeMap<String, (f64, Option<f64>)> = BTreeMap::new();
        let mut breakers: BTreeMap<String, f64> = BTreeMap::new();

        for (latest, older) in readings {
            let stages: Vec<String> = known_stages
                .get(&latest.worker)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            fleet.workers.push(WorkerRow {
                worker: latest.worker.clone(),
                stages: stages.clone(),
                error: latest.result.as_ref().err().cloned(),
            });
            for stage in &stages {
                rows.entry(stage.clone()).or_default().workers += 1;
            }
            let Some(now) = latest.samples() else {
                continue;
            };
            // Rates only across two answers of the same worker.
            let before = older
                .and_then(|o| Some((o.samples()?, (latest.at_ms - o.at_ms) as f64 / 1000.0)))
                .filter(|(_, secs)| *secs > 0.0);
            if let Some((_, secs)) = before {
                fleet.interval_s = Some(fleet.interval_s.map_or(secs, |i: f64| i.max(secs)));
            }
            let rate = |name: &str, want: &[(&str, &str)]| {
                before.map(|(then, secs)| now.increase_since(then, name, want) / secs)
            };

            for stage in &stages {
                let want = [("stage", stage.as_str())];
                let row = rows.get_mut(stage).expect("counted above");
                row.up += 1;
                row.events_in += now.total(m::EVENTS_IN, &want);
                row.events_out += now.total(m::EVENTS_OUT, &want);
                row.dead_letters += now.total(m::DEAD_LETTERS, &want);
                add(&mut row.in_rate, rate(m::EVENTS_IN, &want));
                add(&mut row.out_rate, rate(m::EVENTS_OUT, &want));
                add(&mut row.dead_rate, rate(m::DEAD_LETTERS, &want));
                row.in_flight += now.total(m::IN_FLIGHT, &want);
                row.paused_partitions += now.total(m::PAUSED_PARTITIONS, &want);

                for (group, offsets) in now.by_label(reflex_lag::GROUP_SUM_LAG, "group") {
                    let g = [("group", group.as_str())];
                    let seconds = now.total(reflex_lag::GROUP_MAX_LAG_SECONDS, &g);
                    let status = Status::ALL.into_iter().find(|s| {
                        now.total(reflex_lag::GROUP_STATUS, &[g[0], ("status", s.as_str())]) >= 1.0
                    });
                    let entry = groups
                        .entry((stage.clone(), group))
                        .or_insert((0.0, 0.0, None));
                    entry.0 = entry.0.max(offsets);
                    entry.1 = entry.1.max(seconds);
                    entry.2 = worst(entry.2, status);
                }
            }

            for (result, total) in now.by_label(m::ACTIONS, "result") {
                let r = rate(m::ACTIONS, &[("result", result.as_str())]);
                let entry = outcomes.entry(result).or_insert((0.0, None));
                entry.0 += total;
                add(&mut entry.1, r);
            }
            for (target, state) in now.by_label(m::BREAKER_STATE, "target") {
                let entry = breakers.entry(target).or_insert(0.0);
                *entry = entry.max(state);
            }
            if now.has(m::KILL_SWITCH, &[]) {
                fleet.kill_switch_reporting += 1;
                if now.total(m::KILL_SWITCH, &[]) >= 1.0 {
                    fleet.kill_switch_on += 1;
                }
            }
        }

        for ((stage, _), (offsets, seconds, status)) in groups {
            let row = rows
                .get_mut(&stage)
                .expect("a group belongs to a counted stage");
            *row.lag.get_or_insert(0.0) += offsets;
            row.lag_seconds = Some(row.lag_seconds.unwrap_or(0.0).max(seconds));
            row.lag_status = worst(row.lag_status, status);
        }
        for stage in STAGES {
            let row = rows.remove(stage).unwrap_or_default();
            fleet.stages.push(StageRow {
                stage: stage.to_string(),
                ..row
            });
        }
        fleet.stages.extend(
            rows.into_iter()
                .map(|(stage, row)| StageRow { stage, ..row }),
        );

        for known in OUTCOMES.map(ActionResult::as_str) {
            if let Some((total, rate)) = outcomes.remove(known) {
                fleet.actions.push(OutcomeRow {
                    result: known.to_string(),
                    total,
                    rate,
                });
            }
        }
        fleet.actions.extend(
            outcomes
                .into_iter()
                .map(|(result, (total, rate))| OutcomeRow {
                    result,
                    total,
                    rate,
                }),
        );

        // 0 closed, 1 half-open, 2 open (see `reflex_core::metrics::BREAKER_STATE`).
        for (target, state) in breakers {
            match state {
                s if s >= 2.0 => fleet.breakers.open.push(target),
                s if s >= 1.0 => fleet.breakers.half_open.push(target),
                _ => fleet.breakers.closed += 1,
            }
        }
        fleet
    }

    /// Workers that answered.
    pub fn workers_up(&self) -> usize {
        self.workers.iter().filter(|w| w.error.is_none()).count()
    }

    /// The row of `stage`, if the fleet has one.
    pub fn stage(&self, stage: &str) -> Option<&StageRow> {
        self.stages.iter().find(|r| r.stage == stage)
    }
}

fn add(sum: &mut Option<f64>, part: Option<f64>) {
    if let Some(p) = part {
        *sum = Some(sum.unwrap_or(0.0) + p);
    }
}

/// The more alarming of two statuses: a rewind (ERR) above a stop, a stall, a warning.
fn worst(a: Option<Status>, b: Option<Status>) -> Option<Status> {
    let rank = |s: &Option<Status>| match s {
        None => 0,
        Some(Status::Ok) => 1,
        Some(Status::Warn) => 2,
        Some(Status::Stall) => 3,
        Some(Status::Stop) => 4,
        Some(Status::Err) => 5,
    };
    if rank(&b) > rank(&a) {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(worker: &str, at_ms: i64, text: &str) -> Reading {
        Reading {
            worker: worker.into(),
            result: Ok(Samples::parse(text)),
            at_ms,
        }
    }

    fn router(events_in: u32, events_out: u32, dead: u32, lag: u32, status: &str) -> String {
        let mut text = format!(
            "{}{{stage=\"router\"}} {events_in}\n{}{{stage=\"router\"}} {events_out}\n\
             {}{{stage=\"router\",class=\"poison\"}} {dead}\n{}{{stage=\"router\",class=\"schema\"}} 0\n\
             {}{{stage=\"router\"}} 2\n",
            m::EVENTS_IN,
            m::EVENTS_OUT,
            m::DEAD_LETTERS,
            m::DEAD_LETTERS,
            m::IN_FLIGHT
        );
        text += &format!(
            "{}{{group=\"reflex-router\"}} {lag}\n{}{{group=\"reflex-router\"}} 1.5\n",
            reflex_lag::GROUP_SUM_LAG,
            reflex_lag::GROUP_MAX_LAG_SECONDS
        );
        for s in Status::ALL {
            let on = u8::from(s.as_str() == status);
            text += &format!(
                "{}{{group=\"reflex-router\",status=\"{}\"}} {on}\n",
                reflex_lag::GROUP_STATUS,
                s.as_str()
            );
        }
        text
    }

    fn actor(succeeded: u32, failed: u32, breakers: &[(&str, u8)], kill: u8) -> String {
        let mut text = format!(
            "{}{{stage=\"actor\"}} {}\n{}{{action=\"restart\",result=\"succeeded\"}} {succeeded}\n\
             {}{{action=\"restart\",result=\"failed\"}} {failed}\n{}{{action=\"page\",result=\"failed\"}} 1\n\
             {} {kill}\n",
            m::EVENTS_IN,
            succeeded + failed + 1,
            m::ACTIONS,
            m::ACTIONS,
            m::ACTIONS,
            m::KILL_SWITCH
        );
        for (target, state) in breakers {
            text += &format!("{}{{target=\"{target}\"}} {state}\n", m::BREAKER_STATE);
        }
        text
    }

    #[test]
    fn rates_come_from_two_readings_and_replicas_add_up() {
        let mut t = Tracker::default();
        let first = t.observe(vec![
            reading("r1", 1_000, &router(100, 200, 1, 0, "OK")),
            reading("r2", 1_000, &router(50, 50, 0, 0, "OK")),
        ]);
        let row = first.stage("router").unwrap();
        assert_eq!((row.up, row.workers), (2, 2));
        assert_eq!(row.events_in, 150.0);
        assert_eq!(row.in_rate, None, "one reading has no rate");
        assert_eq!(first.interval_s, None);

        // Two seconds later: +40 and +20 in, +10 out, +2 dead letters.
        let fleet = t.observe(vec![
            reading("r1", 3_000, &router(140, 210, 3, 7, "WARN")),
            reading("r2", 3_000, &router(70, 50, 0, 5, "OK")),
        ]);
        let row = fleet.stage("router").unwrap();
        assert_eq!(row.in_rate, Some(30.0));
        assert_eq!(row.out_rate, Some(5.0));
        assert_eq!(row.dead_rate, Some(1.0));
        assert_eq!(row.events_in, 210.0);
        assert_eq!(row.in_flight, 4.0);
        assert_eq!(fleet.interval_s, Some(2.0));
        // Both replicas measure the same group: its lag is taken once, the worst status wins.
        assert_eq!(row.lag, Some(7.0));
        assert_eq!(row.lag_seconds, Some(1.5));
        assert_eq!(row.lag_status, Some(Status::Warn));
        // The other stages are listed, empty.
        let names: Vec<&str> = fleet.stages.iter().map(|r| r.stage.as_str()).collect();
        assert_eq!(names, STAGES);
        assert_eq!(fleet.stage("enricher").unwrap().workers, 0);
    }

    #[test]
    fn a_restarted_worker_never_gives_a_negative_rate() {
        let mut t = Tracker::default();
        t.observe(vec![reading("r1", 0, &router(1_000, 1_000, 9, 0, "OK"))]);
        // Restarted: its counters start again from zero and are at 6 now.
        let fleet = t.observe(vec![reading("r1", 1_000, &router(6, 6, 0, 0, "OK"))]);
        let row = fleet.stage("router").unwrap();
        assert_eq!(row.in_rate, Some(6.0));
        assert_eq!(row.out_rate, Some(6.0));
        assert_eq!(row.dead_rate, Some(0.0));
    }

    #[test]
    fn actions_by_outcome_breakers_listing_only_the_open_ones_and_the_kill_switch() {
        let mut closed: Vec<(String, u8)> = (0..48).map(|i| (format!("svc-{i:02}"), 0)).collect();
        closed.push(("pager.example.com".into(), 2));
        closed.push(("k8s-gateway".into(), 1));
        let a1: Vec<(&str, u8)> = closed.iter().map(|(t, s)| (t.as_str(), *s)).collect();
        // The other replica sees svc-00 open: a target counts in its worst state.
        let a2 = [("svc-00", 2), ("k8s-gateway", 0)];
        let mut t = Tracker::default();
        t.observe(vec![
            reading("a1", 0, &actor(10, 1, &a1, 0)),
            reading("a2", 0, &actor(5, 0, &a2, 0)),
        ]);
        let fleet = t.observe(vec![
            reading("a1", 1_000, &actor(14, 2, &a1, 1)),
            reading("a2", 1_000, &actor(5, 0, &a2, 0)),
        ]);
        assert_eq!(
            fleet.actions,
            vec![
                OutcomeRow {
                    result: "succeeded".into(),
                    total: 19.0,
                    rate: Some(4.0)
                },
                OutcomeRow {
                    result: "failed".into(),
                    total: 4.0,
                    rate: Some(1.0)
                },
            ]
        );
        assert_eq!(fleet.breakers.closed, 47);
        assert_eq!(
            fleet.breakers.open,
            vec!["pager.example.com".to_string(), "svc-00".to_string()]
        );
        assert_eq!(fleet.breakers.half_open, vec!["k8s-gateway".to_string()]);
        assert_eq!((fleet.kill_switch_on, fleet.kill_switch_reporting), (1, 2));
    }

    #[test]
    fn a_worker_that_stops_answering_is_shown_down_against_its_stage() {
        let mut t = Tracker::default();
        t.observe(vec![
            reading("a1", 0, &actor(1, 0, &[], 0)),
            reading("a2", 0, &actor(1, 0, &[], 0)),
        ]);
        let fleet = t.observe(vec![
            reading("a1", 1_000, &actor(3, 0, &[], 0)),
            Reading {
                worker: "a2".into(),
                result: Err("connection refused".into()),
                at_ms: 1_000,
            },
        ]);
        let row = fleet.stage("actor").unwrap();
        assert_eq!((row.up, row.workers), (1, 2));
        assert_eq!(row.in_rate, Some(2.0), "only the answering replica's rate");
        assert_eq!(fleet.workers_up(), 1);
        assert_eq!(
            fleet.workers[1].error.as_deref(),
            Some("connection refused")
        );
        assert_eq!(fleet.workers[1].stages, vec!["actor".to_string()]);
    }

    #[test]
    fn an_unchanged_federated_reading_keeps_the_last_rate() {
        let mut t = Tracker::default();
        t.observe(vec![reading("job/r1", 0, &router(0, 0, 0, 0, "OK"))]);
        let fleet = t.observe(vec![reading("job/r1", 15_000, &router(30, 0, 0, 0, "OK"))]);
        assert_eq!(fleet.stage("router").unwrap().in_rate, Some(2.0));
        // Prometheus has not scraped again: same timestamp, same rate (not 0, not undefined).
        let fleet = t.observe(vec![reading("job/r1", 15_000, &router(30, 0, 0, 0, "OK"))]);
        assert_eq!(fleet.stage("router").unwrap().in_rate, Some(2.0));
        assert_eq!(fleet.interval_s, Some(15.0));
    }
}
