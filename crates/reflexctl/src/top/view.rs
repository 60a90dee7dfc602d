//! Drawing a [`Fleet`]: one ratatui layout for the live terminal and for plain-text frames
//! (`--once`, tests, the main job), laid out to be read at a glance on 80×24.

use ratatui::backend::TestBackend;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Padding, Paragraph, Row, Table};
use ratatui::{Frame, Terminal};
use reflex_lag::Status;

use super::model::{Fleet, StageRow};

/// Stages table: name, up, in/s, out/s, dlq/s, in flight, paused, lag, lag age, status.
const STAGE_COLUMNS: [(&str, u16); 10] = [
    ("stage", 11),
    ("up", 5),
    ("in/s", 7),
    ("out/s", 7),
    ("dlq/s", 5),
    ("flight", 6),
    ("paused", 6),
    ("lag", 7),
    ("lag age", 7),
    ("status", 6),
];
/// Rows the actions and breakers boxes get: borders, a header, six outcomes.
const MIDDLE_HEIGHT: u16 = 9;
const ACTIONS_WIDTH: u16 = 40;

/// Draws the fleet on the whole frame.
pub fn draw(frame: &mut Frame, fleet: &Fleet) {
    let stages_height = fleet.stages.len() as u16 + 3;
    let [header, stages, middle, safety, workers] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(stages_height),
        Constraint::Length(MIDDLE_HEIGHT),
        Constraint::Length(1),
        Constraint::Min(0),
    ])
    .areas(frame.area());
    frame.render_widget(header_line(fleet), header);
    frame.render_widget(stages_table(fleet), stages);
    let [actions, breakers] =
        Layout::horizontal([Constraint::Length(ACTIONS_WIDTH), Constraint::Min(0)]).areas(middle);
    frame.render_widget(actions_table(fleet), actions);
    frame.render_widget(breakers_box(fleet, breakers), breakers);
    frame.render_widget(safety_line(fleet), safety);
    frame.render_widget(workers_box(fleet, workers), workers);
}

/// The fleet drawn on a `width`×`height` screen, as text: one line per row, trailing spaces
/// removed. The same drawing as the live view, without colours.
pub fn render_text(fleet: &Fleet, width: u16, height: u16) -> String {
    let mut terminal =
        Terminal::new(TestBackend::new(width, height)).expect("a test backend cannot fail");
    terminal
        .draw(|frame| draw(frame, fleet))
        .expect("a test backend cannot fail");
    let buffer = terminal.backend().buffer();
    let mut text = String::new();
    for y in 0..buffer.area.height {
        let mut line = String::new();
        for x in 0..buffer.area.width {
            line.push_str(buffer[(x, y)].symbol());
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

fn header_line(fleet: &Fleet) -> Paragraph<'static> {
    let up = fleet.workers_up();
    let all = fleet.workers.len();
    let workers = Span::styled(
        format!("{up}/{all} workers up"),
        if up < all { alarm() } else { Style::default() },
    );
    let interval = match fleet.interval_s {
        Some(s) => format!("rates over {s:.1}s"),
        None => "rates after the next scrape".to_string(),
    };
    Paragraph::new(Line::from(vec![
        Span::styled("reflex top", Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(" │ "),
        workers,
        Span::raw(format!(" │ {interval} │ q quits")),
    ]))
}

fn stages_table(fleet: &Fleet) -> Table<'static> {
    let header = Row::new(STAGE_COLUMNS.iter().enumerate().map(|(i, (name, _))| {
        let cell = Line::from(*name);
        Cell::from(if i < 2 {
            cell
        } else {
            cell.alignment(Alignment::Right)
        })
    }))
    .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = fleet.stages.iter().map(stage_row);
    Table::new(rows, STAGE_COLUMNS.map(|(_, w)| Constraint::Length(w)))
        .header(header)
        .column_spacing(1)
        .block(boxed(" stages "))
}

fn stage_row(row: &StageRow) -> Row<'static> {
    let right = |s: String| Cell::from(Line::from(s).alignment(Alignment::Right));
    if row.workers == 0 {
        // No worker of this stage is watched: dashes, not zeros, which would claim it is idle.
        let mut cells = vec![Cell::from(row.stage.clone()), Cell::from("-")];
        cells.extend((2..STAGE_COLUMNS.len()).map(|_| right("-".into())));
        return Row::new(cells).style(Style::default().add_modifier(Modifier::DIM));
    }
    let (status, style) = if row.up == 0 {
        ("DOWN", alarm())
    } else {
        match row.lag_status {
            None => ("-", Style::default()),
            Some(Status::Ok) => ("OK", Style::default().fg(Color::Green)),
            Some(Status::Warn) => ("WARN", Style::default().fg(Color::Yellow)),
            Some(s) => (s.as_str(), alarm()),
        }
    };
    let up_style = if row.up < row.workers {
        alarm()
    } else {
        Style::default()
    };
    let dead_style = if row.dead_rate.unwrap_or(0.0) > 0.0 {
        Style::default().fg(Color::Yellow)
    } else {
        Style::default()
    };
    Row::new(vec![
        Cell::from(row.stage.clone()),
        Cell::from(format!("{}/{}", row.up, row.workers)).style(up_style),
        right(rate(row.in_rate)),
        right(rate(row.out_rate)),
        right(rate(row.dead_rate)).style(dead_style),
        right(count(row.in_flight)),
        right(count(row.paused_partitions)),
        right(row.lag.map_or("-".into(), count)),
        right(row.lag_seconds.map_or("-".into(), age)),
        right(status.to_string()).style(style),
    ])
}

fn actions_table(fleet: &Fleet) -> Table<'static> {
    let right = |s: String| Cell::from(Line::from(s).alignment(Alignment::Right));
    let header = Row::new(vec![
        Cell::from("outcome"),
        right("total".into()),
        right("/s".into()),
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let rows: Vec<Row> = if fleet.actions.is_empty() {
        vec![Row::new(vec![Cell::from("no actor watched")])
            .style(Style::default().add_modifier(Modifier::DIM))]
    } else {
        fleet
            .actions
            .iter()
            .map(|a| {
                let style = if a.result == "failed" && a.rate.unwrap_or(0.0) > 0.0 {
                    Style::default().fg(Color::Yellow)
                } else {
                    Style::default()
                };
                Row::new(vec![
                    Cell::from(a.result.clone()),
                    right(count(a.total)),
                    right(rate(a.rate)),
                ])
                .style(style)
            })
            .collect()
    };
    Table::new(
        rows,
        [
            Constraint::Length(20),
            Constraint::Length(8),
            Constraint::Length(6),
        ],
    )
    .header(header)
    .column_spacing(1)
    .block(boxed(" actions "))
}

/// The counts, then only the breakers that are not closed (open first), as many as fit.
fn breakers_box(fleet: &Fleet, area: Rect) -> Paragraph<'static> {
    let b = &fleet.breakers;
    let mut lines = vec![Line::from(vec![
        Span::raw(format!("{} closed · ", b.closed)),
        Span::styled(
            format!("{} open", b.open.len()),
            if b.open.is_empty() {
                Style::default()
            } else {
                alarm()
            },
        ),
        Span::raw(format!(" · {} half-open", b.half_open.len())),
    ])];
    let listed: Vec<(&str, &String, Style)> = b
        .open
        .iter()
        .map(|t| ("OPEN", t, alarm()))
        .chain(
            b.half_open
                .iter()
                .map(|t| ("HALF", t, Style::default().fg(Color::Yellow))),
        )
        .collect();
    let room = (area.height.saturating_sub(3)) as usize;
    let shown = if listed.len() > room {
        room.saturating_sub(1)
    } else {
        listed.len()
    };
    for (state, target, style) in &listed[..shown] {
        lines.push(Line::from(vec![
            Span::styled(format!("{state} "), *style),
            Span::raw((*target).clone()),
        ]));
    }
    if shown < listed.len() {
        lines.push(Line::from(format!("+{} more", listed.len() - shown)));
    }
    Paragraph::new(lines).block(boxed(" breakers "))
}

fn safety_line(fleet: &Fleet) -> Paragraph<'static> {
    let kill = if fleet.kill_switch_reporting == 0 {
        Span::raw("kill switch - (no actor)")
    } else if fleet.kill_switch_on == 0 {
        Span::styled("kill switch OFF", Style::default().fg(Color::Green))
    } else if fleet.kill_switch_on == fleet.kill_switch_reporting {
        Span::styled("kill switch ON", alarm().add_modifier(Modifier::REVERSED))
    } else {
        Span::styled(
            format!(
                "kill switch ON on {}/{} actors",
                fleet.kill_switch_on, fleet.kill_switch_reporting
            ),
            alarm(),
        )
    };
    let dry_run = fleet
        .actions
        .iter()
        .find(|a| a.result == reflex_core::actions::ActionResult::DryRun.as_str());
    let dry_run = match dry_run {
        Some(d) => format!(" │ dry-run {} ({}/s)", count(d.total), rate(d.rate)),
        None => String::new(),
    };
    Paragraph::new(Line::from(vec![Span::raw(" "), kill, Span::raw(dry_run)]))
}

/// Workers that do not answer first, with why, then the others; as many as fit.
fn workers_box(fleet: &Fleet, area: Rect) -> Paragraph<'static> {
    let mut ordered: Vec<_> = fleet.workers.iter().filter(|w| w.error.is_some()).collect();
    ordered.extend(fleet.workers.iter().filter(|w| w.error.is_none()));
    let room = area.height.saturating_sub(2) as usize;
    let shown = if ordered.len() > room {
        room.saturating_sub(1)
    } else {
        ordered.len()
    };
    let mut lines: Vec<Line> = ordered[..shown]
        .iter()
        .map(|w| {
            let stages = if w.stages.is_empty() {
                "?".to_string()
            } else {
                w.stages.join(",")
            };
            match &w.error {
                Some(e) => Line::from(vec![
                    Span::styled("DOWN ", alarm()),
                    Span::raw(format!("{stages} {}: {e}", w.worker)),
                ]),
                None => Line::from(format!("up   {stages} {}", w.worker)),
            }
        })
        .collect();
    if shown < ordered.len() {
        let down = ordered[shown..]
            .iter()
            .filter(|w| w.error.is_some())
            .count();
        lines.push(Line::from(format!(
            "+{} more ({down} down)",
            ordered.len() - shown
        )));
    }
    Paragraph::new(lines).block(boxed(" workers "))
}

/// A titled box with a space inside each side, so figures do not touch the border.
fn boxed(title: &'static str) -> Block<'static> {
    Block::bordered()
        .title(title)
        .padding(Padding::horizontal(1))
}

fn alarm() -> Style {
    Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
}

/// A counter or gauge: exact below a million, then short (`1.25M`).
fn count(v: f64) -> String {
    match v.abs() {
        a if a < 1e6 => format!("{v:.0}"),
        a if a < 1e9 => format!("{:.2}M", v / 1e6),
        _ => format!("{:.2}G", v / 1e9),
    }
}

/// A per-second rate: one decimal while small, `12.3k` when large; `-` before two readings.
fn rate(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v < 1_000.0 => format!("{v:.1}"),
        Some(v) if v < 1e6 => format!("{:.1}k", v / 1e3),
        Some(v) => format!("{:.1}M", v / 1e6),
    }
}

/// Lag in seconds as an age: `4.2s`, `17m`, `3.5h`.
fn age(s: f64) -> String {
    match s {
        s if s < 60.0 => format!("{s:.1}s"),
        s if s < 3_600.0 => format!("{:.0}m", s / 60.0),
        s => format!("{:.1}h", s / 3_600.0),
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::{Breakers, OutcomeRow, WorkerRow, STAGES};
    use super::*;

    /// A busy fleet: every stage, replicas down, 50 breakers with some open, every outcome.
    fn busy() -> Fleet {
        let mut stages: Vec<StageRow> = STAGES
            .iter()
            .map(|s| StageRow {
                stage: s.to_string(),
                up: 3,
                workers: 3,
                in_rate: Some(12_345.6),
                out_rate: Some(987.65),
                dead_rate: Some(0.5),
                in_flight: 120.0,
                paused_partitions: 2.0,
                lag: Some(1_234_567.0),
                lag_seconds: Some(4_000.0),
                lag_status: Some(Status::Stall),
                ..StageRow::default()
            })
            .collect();
        stages[1].up = 0;
        let actions = [
            "succeeded",
            "failed",
            "rejected",
            "held",
            "dry_run",
            "duplicate_suppressed",
        ]
        .iter()
        .enumerate()
        .map(|(i, r)| OutcomeRow {
            result: r.to_string(),
            total: 1000.0 * i as f64 + 7.0,
            rate: Some(i as f64 / 2.0),
        })
        .collect();
        let mut workers: Vec<WorkerRow> = (0..12)
            .map(|i| WorkerRow {
                worker: format!("http://10.0.0.{i}:9100/metrics"),
                stages: vec![STAGES[i % 4].to_string()],
                error: None,
            })
            .collect();
        workers[7].error = Some("connection refused".into());
        Fleet {
            stages,
            actions,
            breakers: Breakers {
                closed: 40,
                open: (0..7).map(|i| format!("api-{i}.example.com:443")).collect(),
                half_open: vec!["k8s-gateway".into(), "pager".into(), "edr".into()],
            },
            kill_switch_on: 1,
            kill_switch_reporting: 2,
            workers,
            interval_s: Some(1.0),
        }
    }

    #[test]
    fn a_busy_fleet_fits_80_by_24_with_nothing_that_matters_cut() {
        let text = render_text(&busy(), 80, 24);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 24, "{text}");
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{text}");
        let line = |start: &str| {
            lines
                .iter()
                .find(|l| l.trim_start_matches('│').trim_start().starts_with(start))
                .unwrap_or_else(|| panic!("no line starting with {start:?}:\n{text}"))
        };
        assert!(lines[0].contains("11/12 workers up"), "{text}");
        for c in STAGE_COLUMNS.map(|(c, _)| c) {
            assert!(line("stage").contains(c), "column {c} missing:\n{text}");
        }
        let router: Vec<&str> = line("router").split_whitespace().collect();
        assert_eq!(
            router,
            [
                "│", "router", "3/3", "12.3k", "987.6", "0.5", "120", "2", "1.23M", "1.1h",
                "STALL", "│"
            ],
            "{text}"
        );
        assert!(line("enricher").contains("DOWN"), "{text}");
        assert!(line("reprocessor").contains("STALL"), "{text}");
        // Every outcome with its total and rate.
        assert!(line("duplicate_suppressed").contains("5007"), "{text}");
        assert!(line("duplicate_suppressed").contains("2.5"), "{text}");
        // Breakers: the counts, then open ones, as many as fit, and how many more.
        assert!(text.contains("40 closed · 7 open · 3 half-open"), "{text}");
        assert!(text.contains("OPEN api-0.example.com:443"), "{text}");
        assert!(text.contains("+5 more"), "{text}");
        assert!(!text.contains("closed\n"), "no line per closed breaker");
        assert!(text.contains("kill switch ON on 1/2 actors"), "{text}");
        assert!(text.contains("dry-run 4007 (2.0/s)"), "{text}");
        // The worker that does not answer is listed first, with why.
        assert!(
            line("DOWN ").contains("http://10.0.0.7:9100/metrics: connection refused"),
            "{text}"
        );
        assert!(text.contains("more (0 down)"), "{text}");
    }

    #[test]
    fn an_empty_fleet_and_a_small_screen_render_without_panicking() {
        let text = render_text(&Fleet::compute(&[], &Default::default()), 80, 24);
        assert!(text.contains("0/0 workers up"), "{text}");
        let actor: Vec<&str> = text
            .lines()
            .find(|l| l.contains("actor"))
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(
            actor,
            ["│", "actor", "-", "-", "-", "-", "-", "-", "-", "-", "-", "│"]
        );
        assert!(text.contains("no actor watched"), "{text}");
        assert!(text.contains("kill switch - (no actor)"), "{text}");
        for (w, h) in [(20, 5), (1, 1), (200, 60)] {
            let text = render_text(&busy(), w, h);
            assert_eq!(text.lines().count(), h as usize);
        }
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(count(999_999.0), "999999");
        assert_eq!(count(1_250_000.0), "1.25M");
        assert_eq!(rate(None), "-");
        assert_eq!(rate(Some(0.04)), "0.0");
        assert_eq!(rate(Some(45_600.0)), "45.6k");
        assert_eq!(age(59.94), "59.9s");
        assert_eq!(age(600.0), "10m");
        assert_eq!(age(7_200.0), "2.0h");
    }
}
