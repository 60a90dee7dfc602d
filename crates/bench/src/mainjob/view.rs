//! The main job's live view, drawn once a second from each worker's `/metrics`.
//!
//! [`render`] is the only function that draws it: when `reflexctl top` (its `Fleet` and
//! `render_text`) lands, this is the one place to switch to its renderer.

use std::fmt::Write as _;
use std::time::Duration;

use reflexctl::prom::Samples;

use super::check::fmt;

/// One worker process as the view shows it.
pub struct Row<'a> {
    pub name: &'a str,
    pub now: &'a Samples,
    /// The scrape before, and the time between the two (for per-second rates).
    pub before: Option<(&'a Samples, Duration)>,
    /// `up`, or how it exited.
    pub state: String,
}

/// What the view shows.
pub struct View<'a> {
    pub title: String,
    /// Publishing and the hint line (Ctrl-C, draining).
    pub status: String,
    pub rows: Vec<Row<'a>>,
}

pub fn render(v: &View) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", v.title);
    let _ = writeln!(out, "{}", v.status);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<14}{:>8}{:>8}{:>10}{:>10}{:>9}{:>7}{:>8}{:>10}  status",
        "stage", "in/s", "out/s", "in", "out", "dropped", "dead", "lag", "in-flight"
    );
    let total = |s: &Samples, name: &str| s.total(name, &[]).max(0.0) as u64;
    for r in &v.rows {
        let rate = |name: &str| match r.before {
            Some((b, dt)) if dt.as_secs_f64() > 0.0 => {
                ((r.now.total(name, &[]) - b.total(name, &[])) / dt.as_secs_f64()).max(0.0)
            }
            _ => 0.0,
        };
        let status: Vec<String> = r
            .now
            .by_label("reflex_consumergroup_status", "status")
            .into_iter()
            .filter(|(_, v)| *v > 0.0)
            .map(|(s, _)| s)
            .collect();
        let _ = writeln!(
            out,
            "{:<14}{:>8.0}{:>8.0}{:>10}{:>10}{:>9}{:>7}{:>8}{:>10}  {} ({})",
            r.name,
            rate("reflex_events_in_total"),
            rate("reflex_events_out_total"),
            fmt(total(r.now, "reflex_events_in_total")),
            fmt(total(r.now, "reflex_events_out_total")),
            fmt(total(r.now, "reflex_events_dropped_total")),
            fmt(total(r.now, "reflex_dead_letters_total")),
            fmt(total(r.now, reflex_lag::GROUP_SUM_LAG)),
            fmt(total(r.now, "reflex_in_flight_events")),
            if status.is_empty() {
                "-".to_string()
            } else {
                status.join(",")
            },
            r.state
        );
    }
    // Actions, summed over the actor replicas.
    let mut actor = Samples::default();
    for r in v.rows.iter().filter(|r| r.name.starts_with("actor")) {
        actor.extend(r.now.clone());
    }
    let _ = writeln!(out);
    let mut by_action: std::collections::BTreeMap<String, Vec<(String, f64)>> = Default::default();
    for s in actor.0.iter().filter(|s| s.name == "reflex_actions_total") {
        by_action
            .entry(s.label("action").unwrap_or("?").to_string())
            .or_default()
            .push((s.label("result").unwrap_or("?").to_string(), s.value));
    }
    for (action, results) in &by_action {
        let n = |what: &str| {
            results
                .iter()
                .filter(|(r, _)| r == what)
                .map(|(_, v)| *v)
                .sum::<f64>() as u64
        };
        let _ = writeln!(
            out,
            "action {action:<14} done {:>7}  suppressed (dedup) {:>5}  failed {:>5}  held {:>7}  rate-limited {:>6}",
            fmt(n("succeeded")),
            fmt(n("duplicate_suppressed")),
            fmt(n("failed")),
            fmt(n("held")),
            fmt(actor.total("reflex_rate_limited_total", &[("action", action)]) as u64),
        );
    }
    let breakers: Vec<String> = actor
        .by_label("reflex_breaker_state", "target")
        .into_iter()
        .map(|(t, v)| {
            let state = match v as i64 {
                0 => "closed",
                1 => "half-open",
                _ => "OPEN",
            };
            format!("{t}: {state}")
        })
        .collect();
    let _ = writeln!(
        out,
        "breakers {}  ·  kill switch {}",
        if breakers.is_empty() {
            "all closed (no target failed yet)".to_string()
        } else {
            breakers.join(", ")
        },
        if actor.total("reflex_kill_switch_on", &[]) > 0.0 {
            "ON"
        } else {
            "off"
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_rates_totals_actions_and_breakers() {
        let before = Samples::parse("reflex_events_in_total{stage=\"actor\"} 100\n");
        let now = Samples::parse(
            "reflex_events_in_total{stage=\"actor\"} 300\n\
             reflex_actions_total{action=\"restart-pod\",result=\"succeeded\"} 3\n\
             reflex_actions_total{action=\"restart-pod\",result=\"held\"} 1200\n\
             reflex_breaker_state{target=\"127.0.0.1:18080\"} 2\n",
        );
        let text = render(&View {
            title: "t".into(),
            status: "s".into(),
            rows: vec![Row {
                name: "actor",
                now: &now,
                before: Some((&before, Duration::from_secs(2))),
                state: "up".into(),
            }],
        });
        let actor_line = text.lines().find(|l| l.starts_with("actor ")).unwrap();
        assert!(actor_line.contains(" 100 "), "{text}");
        assert!(actor_line.contains("300"), "{text}");
        assert!(text.contains("done       3"), "{text}");
        assert!(text.contains("held   1,200"), "{text}");
        assert!(text.contains("127.0.0.1:18080: OPEN"), "{text}");
    }
}
