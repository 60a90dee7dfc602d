//! The main job's live view: `reflexctl top`'s frame of the workers ([`reflexctl::top`]; its
//! drawing is tested there), then the lines only the main job knows ([`job_lines`]).
//!
//! Frames are plain text, each followed by a blank line, so the view reads the same on a
//! terminal and in a log file.

use reflexctl::top::{render_text, Fleet};

use super::check::fmt;

pub const WIDTH: u16 = 80;
/// `reflexctl top`'s frame down to its kill-switch line, without the workers box: the job
/// logs a worker that exits, and its stage row shows it down.
pub const TOP_HEIGHT: u16 = 18;

/// What only the main job knows, at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Seconds publishing so far (it stops growing when publishing ends), and `--duration`.
    pub publishing_s: f64,
    pub duration_s: f64,
    /// Seconds since publishing ended, once the job waits for the pipeline to drain.
    pub draining_s: Option<f64>,
    /// Events published (twice-published ones count twice), acknowledged, failed; `--rate`.
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub rate: f64,
    /// The fake target API's requests, distinct keys, and keys requested more than once.
    pub requests: u64,
    pub keys: u64,
    pub repeated_keys: u64,
    /// Per stateful rule of the pack: firings and suppressed events so far.
    pub windows: std::collections::BTreeMap<String, (u64, u64)>,
    /// Locks waited and approvals pending ([`super::guards`]).
    pub guards: super::guards::Guards,
}

impl Progress {
    /// With the actors' lock and approval figures.
    pub fn with(mut self, guards: super::guards::Guards) -> Self {
        self.guards = guards;
        self
    }
}

/// One frame: the fleet as `reflexctl top` draws it, then [`job_lines`], the locks and
/// approvals line, then a blank line.
pub fn frame(fleet: &Fleet, p: &Progress) -> String {
    let mut out = render_text(fleet, WIDTH, TOP_HEIGHT);
    out.push_str(&job_lines(p));
    out.push_str(&super::guards::line(&p.guards));
    out.extend(super::policy::live_line(fleet));
    out.push('\n');
    out
}

/// Publishing time, what was published and how fast, the target's requests.
pub fn job_lines(p: &Progress) -> String {
    let phase = match p.draining_s {
        None => format!(
            "publishing {:.0}/{:.0} s │ Ctrl-C: stop, drain and check",
            p.publishing_s, p.duration_s
        ),
        Some(d) => format!(
            "published {:.0} s, draining {d:.0} s │ Ctrl-C again: stop waiting",
            p.publishing_s
        ),
    };
    let per_second = if p.publishing_s > 0.0 {
        p.sent as f64 / p.publishing_s
    } else {
        0.0
    };
    let windows: String = p
        .windows
        .iter()
        .map(|(rule, (fired, suppressed))| {
            format!(
                "window {rule} │ fired {} │ suppressed {}\n",
                fmt(*fired),
                fmt(*suppressed)
            )
        })
        .collect();
    format!(
        "main job │ {phase}\n\
         published {} at {per_second:.0}/s (target {:.0}/s) │ acked {} │ publish errors {}\n\
         target API {} requests │ {} keys │ {} repeated\n{windows}",
        fmt(p.sent),
        p.rate,
        fmt(p.acked),
        fmt(p.errors),
        fmt(p.requests),
        fmt(p.keys),
        fmt(p.repeated_keys),
    )
}

#[cfg(test)]
mod tests {
    use reflexctl::prom::Samples;
    use reflexctl::top::{Reading, Tracker};

    use super::*;

    fn progress() -> Progress {
        Progress {
            publishing_s: 12.4,
            duration_s: 15.0,
            draining_s: None,
            sent: 2_480,
            acked: 2_478,
            errors: 2,
            rate: 200.0,
            requests: 1_204,
            keys: 1_201,
            repeated_keys: 3,
            windows: [("crashloop-restart".to_string(), (50, 12_345))].into(),
            guards: Default::default(),
        }
    }

    #[test]
    fn job_lines_show_publishing_the_target_and_the_phase() {
        let text = job_lines(&progress());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "main job │ publishing 12/15 s │ Ctrl-C: stop, drain and check",
                "published 2,480 at 200/s (target 200/s) │ acked 2,478 │ publish errors 2",
                "target API 1,204 requests │ 1,201 keys │ 3 repeated",
                "window crashloop-restart │ fired 50 │ suppressed 12,345",
            ]
        );
        for line in lines {
            assert!(line.chars().count() <= WIDTH as usize, "{line}");
        }
    }

    #[test]
    fn draining_keeps_the_publishing_rate_and_names_the_second_ctrl_c() {
        let p = Progress {
            publishing_s: 15.0,
            sent: 3_000,
            draining_s: Some(7.6),
            ..progress()
        };
        let text = job_lines(&p);
        assert!(
            text.starts_with("main job │ published 15 s, draining 8 s │ Ctrl-C again"),
            "{text}"
        );
        assert!(text.contains("published 3,000 at 200/s"), "{text}");
    }

    #[test]
    fn no_rate_before_publishing_starts() {
        let p = Progress {
            publishing_s: 0.0,
            sent: 0,
            ..progress()
        };
        assert!(job_lines(&p).contains("published 0 at 0/s (target 200/s)"));
    }

    /// The main job's four workers, one reading each.
    fn fleet() -> Fleet {
        let reading = |stage: &str| Reading {
            worker: format!("http://{stage}/metrics"),
            result: Ok(Samples::parse(&format!(
                "{}{{stage=\"{stage}\"}} 10\n",
                reflex_core::metrics::EVENTS_IN
            ))),
            at_ms: 1,
        };
        Tracker::default().observe(reflexctl::top::STAGES.map(reading).to_vec())
    }

    #[test]
    fn a_frame_is_top_down_to_the_kill_switch_then_the_job_lines() {
        let (fleet, p) = (fleet(), progress());
        let text = frame(&fleet, &p);
        let top = render_text(&fleet, WIDTH, TOP_HEIGHT);
        assert_eq!(
            text,
            format!(
                "{top}{}{}\n",
                job_lines(&p),
                crate::mainjob::guards::line(&p.guards)
            )
        );
        let lines: Vec<&str> = top.lines().collect();
        assert!(lines[0].starts_with("reflex top │ 4/4 workers up"), "{top}");
        assert!(lines[6].starts_with("│ reprocessor 1/1"), "{top}");
        assert_eq!(lines.last(), Some(&" kill switch - (no actor)"), "{top}");
        assert!(text.contains("suppressed 12,345\n"), "{text}");
        assert!(text.ends_with("(0 requested)\n\n"), "{text}");
    }
}
