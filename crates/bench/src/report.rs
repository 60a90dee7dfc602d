//! The report: figures per scenario, ratios to the baseline, a text table and JSON.

use serde::Serialize;

/// One worker's share of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerFigures {
    pub name: String,
    pub pid: u32,
    /// CPU seconds (utime + stime) spent in the measured window.
    pub cpu_s: f64,
    /// Peak resident set (`VmHWM`), MiB.
    pub peak_rss_mb: f64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The figures of one scenario (baseline or a pipeline).
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: String,
    /// Events produced in the measured window.
    pub events: u64,
    /// Produce calls whose delivery failed.
    pub produce_failures: u64,
    /// Distinct events that came out of the last topic.
    pub received: u64,
    /// Outputs seen more than once (at-least-once redelivery).
    pub duplicates: u64,
    /// `events - received`.
    pub missing: u64,
    /// First event sent → last output received, seconds.
    pub elapsed_s: f64,
    /// Time the bench took to hand all events to librdkafka, seconds.
    pub produce_s: f64,
    /// `received / elapsed_s`.
    pub throughput_eps: f64,
    pub latency: Latency,
    /// CPU seconds of all worker processes in the measured window.
    pub cpu_s: f64,
    /// `cpu_s / received`, microseconds.
    pub cpu_us_per_event: f64,
    /// Sum of the workers' peak RSS (`VmHWM`), MiB.
    pub peak_rss_mb: f64,
    /// Summed `VmRSS` at the start of the measured window (after warm-up), MiB.
    pub rss_start_mb: f64,
    /// Highest summed `VmRSS` sampled (every 250 ms) in the window, MiB.
    pub rss_max_mb: f64,
    /// Summed `VmRSS` at the end, MiB.
    pub rss_end_mb: f64,
    pub workers: Vec<WorkerFigures>,
}

impl Scenario {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        events: u64,
        produce_failures: u64,
        latencies_us: &mut [u64],
        received: u64,
        duplicates: u64,
        elapsed_us: u64,
        produce_s: f64,
        workers: Vec<WorkerFigures>,
        rss_kb: &[u64],
    ) -> Self {
        latencies_us.sort_unstable();
        let pct = |p: f64| -> f64 {
            if latencies_us.is_empty() {
                return 0.0;
            }
            let i = ((p * latencies_us.len() as f64).ceil() as usize).clamp(1, latencies_us.len());
            latencies_us[i - 1] as f64 / 1000.0
        };
        let elapsed_s = elapsed_us as f64 / 1e6;
        let cpu_s: f64 = workers.iter().map(|w| w.cpu_s).sum();
        let mb = |kb: u64| kb as f64 / 1024.0;
        Scenario {
            name: name.to_string(),
            events,
            produce_failures,
            received,
            duplicates,
            missing: events.saturating_sub(received),
            elapsed_s,
            produce_s,
            throughput_eps: if elapsed_s > 0.0 {
                received as f64 / elapsed_s
            } else {
                0.0
            },
            latency: Latency {
                p50_ms: pct(0.50),
                p95_ms: pct(0.95),
                p99_ms: pct(0.99),
                max_ms: pct(1.0),
            },
            cpu_s,
            cpu_us_per_event: if received > 0 {
                cpu_s * 1e6 / received as f64
            } else {
                0.0
            },
            peak_rss_mb: workers.iter().map(|w| w.peak_rss_mb).sum(),
            rss_start_mb: rss_kb.first().copied().map(mb).unwrap_or(0.0),
            rss_max_mb: rss_kb.iter().copied().max().map(mb).unwrap_or(0.0),
            rss_end_mb: rss_kb.last().copied().map(mb).unwrap_or(0.0),
            workers,
        }
    }
}

/// A table row: label, the figure of a scenario, its format.
type Row = (&'static str, fn(&Scenario) -> f64, &'static str);

/// Pipeline figure / baseline figure.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    pub throughput: f64,
    pub p50: f64,
    pub p99: f64,
    pub cpu_per_event: f64,
    pub peak_rss: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub events: u64,
    pub rate: String,
    pub partitions: i32,
    pub baseline: Option<Scenario>,
    pub pipeline: Option<Scenario>,
    pub ratios: Option<Ratios>,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

impl Report {
    pub fn new(
        events: u64,
        rate: String,
        partitions: i32,
        baseline: Option<Scenario>,
        pipeline: Option<Scenario>,
    ) -> Self {
        let ratios = match (&baseline, &pipeline) {
            (Some(b), Some(p)) => Some(Ratios {
                throughput: ratio(p.throughput_eps, b.throughput_eps),
                p50: ratio(p.latency.p50_ms, b.latency.p50_ms),
                p99: ratio(p.latency.p99_ms, b.latency.p99_ms),
                cpu_per_event: ratio(p.cpu_us_per_event, b.cpu_us_per_event),
                peak_rss: ratio(p.peak_rss_mb, b.peak_rss_mb),
            }),
            _ => None,
        };
        Report {
            events,
            rate,
            partitions,
            baseline,
            pipeline,
            ratios,
        }
    }

    /// The table: one row per figure, a column per scenario and the ratio.
    pub fn table(&self) -> String {
        let scenarios: Vec<&Scenario> = self.baseline.iter().chain(&self.pipeline).collect();
        let rows: [Row; 14] = [
            ("events received", |s| s.received as f64, "{:.0}"),
            ("missing", |s| s.missing as f64, "{:.0}"),
            ("duplicates", |s| s.duplicates as f64, "{:.0}"),
            ("elapsed s", |s| s.elapsed_s, "{:.2}"),
            ("throughput events/s", |s| s.throughput_eps, "{:.0}"),
            ("latency p50 ms", |s| s.latency.p50_ms, "{:.1}"),
            ("latency p95 ms", |s| s.latency.p95_ms, "{:.1}"),
            ("latency p99 ms", |s| s.latency.p99_ms, "{:.1}"),
            ("latency max ms", |s| s.latency.max_ms, "{:.1}"),
            ("worker CPU s", |s| s.cpu_s, "{:.2}"),
            ("CPU µs/event", |s| s.cpu_us_per_event, "{:.2}"),
            ("peak RSS MiB (VmHWM)", |s| s.peak_rss_mb, "{:.1}"),
            ("RSS start MiB", |s| s.rss_start_mb, "{:.1}"),
            ("RSS max MiB", |s| s.rss_max_mb, "{:.1}"),
        ];
        let fmt = |v: f64, f: &str| match f {
            "{:.0}" => format!("{v:.0}"),
            "{:.1}" => format!("{v:.1}"),
            _ => format!("{v:.2}"),
        };
        let mut out = format!(
            "\nreflex-bench: {} events, rate {}, {} partitions\n\n",
            self.events, self.rate, self.partitions
        );
        let mut header = format!("| {:<22} |", "figure");
        for s in &scenarios {
            header.push_str(&format!(" {:>22} |", s.name));
        }
        let with_ratio = scenarios.len() == 2;
        if with_ratio {
            header.push_str(&format!(" {:>8} |", "ratio"));
        }
        out.push_str(&header);
        out.push('\n');
        out.push_str(&format!(
            "|{}|{}{}\n",
            "-".repeat(24),
            format!("{}|", "-".repeat(24)).repeat(scenarios.len()),
            if with_ratio { "----------|" } else { "" }
        ));
        for (label, get, f) in rows {
            let mut line = format!("| {label:<22} |");
            for s in &scenarios {
                line.push_str(&format!(" {:>22} |", fmt(get(s), f)));
            }
            if with_ratio {
                line.push_str(&format!(
                    " {:>8} |",
                    format!("{:.2}", ratio(get(scenarios[1]), get(scenarios[0])))
                ));
            }
            out.push_str(&line);
            out.push('\n');
        }
        for s in &scenarios {
            for w in &s.workers {
                out.push_str(&format!(
                    "  {}: {} (pid {}) CPU {:.2} s = {:.2} µs/event, peak RSS {:.1} MiB\n",
                    s.name,
                    w.name,
                    w.pid,
                    w.cpu_s,
                    if s.received > 0 {
                        w.cpu_s * 1e6 / s.received as f64
                    } else {
                        0.0
                    },
                    w.peak_rss_mb
                ));
            }
        }
        out
    }
}
