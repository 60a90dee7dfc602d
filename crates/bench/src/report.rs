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

/// One point of the RSS time series: summed `VmRSS` of the workers.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct RssSample {
    /// Seconds since the start of the measured window.
    pub t_s: f64,
    pub mb: f64,
}

/// The RSS time series reduced to the figures of the "flat while draining" target.
///
/// The first 10% of the window is left out of min/max: that is the ramp-up, while librdkafka's
/// prefetch queue, the in-flight window and the producer buffers fill from their post-warm-up
/// size. Growth after that is what the target is about (a leak or an unbounded queue).
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct RssSummary {
    /// Summed `VmRSS` at 10%, 50% and 90% of the window (the first sample at or after), MiB.
    pub at_10pct_mb: f64,
    pub at_50pct_mb: f64,
    pub at_90pct_mb: f64,
    /// Lowest and highest sample from 10% of the window on, MiB.
    pub min_after_rampup_mb: f64,
    pub max_after_rampup_mb: f64,
    /// `(max - min) / min` after the ramp-up, percent: sample against sample, so it includes
    /// the sawtooth of librdkafka's prefetch queue filling and emptying.
    pub spread_after_rampup_pct: f64,
    /// Highest sample in each tenth of the window, MiB (0 for a tenth without a sample).
    pub tenth_peaks_mb: [f64; 10],
    /// Lowest and highest of the peaks of tenths 2 to 9, MiB.
    pub steady_peak_min_mb: f64,
    pub steady_peak_max_mb: f64,
    /// `(max - min) / min` of those peaks, percent: whether the memory bound moves as the
    /// drain goes on (a leak or an unbounded queue raises later peaks). The first tenth is the
    /// ramp-up; in the last one partitions run dry one by one and the prefetch queue empties.
    pub steady_peak_drift_pct: f64,
}

/// Share of the window treated as ramp-up.
const RAMP_UP: f64 = 0.10;

impl RssSummary {
    /// `series` in time order; `window_s` is the window's length (the last sample's time when it
    /// is not positive). All zero for an empty series.
    pub fn from_series(series: &[RssSample], window_s: f64) -> Self {
        let Some(last) = series.last() else {
            return RssSummary::default();
        };
        let window_s = if window_s > 0.0 { window_s } else { last.t_s };
        // The first sample at or after the point (the last one when the window outlasted the
        // sampler), so the 10/50/90% values are among the samples min and max are taken from.
        let at = |fraction: f64| {
            let t = fraction * window_s;
            series.iter().find(|s| s.t_s >= t).unwrap_or(last).mb
        };
        let after: Vec<f64> = series
            .iter()
            .filter(|s| s.t_s >= RAMP_UP * window_s)
            .map(|s| s.mb)
            .collect();
        // A window shorter than one sampling period: the last sample is all there is.
        let after = if after.is_empty() {
            vec![last.mb]
        } else {
            after
        };
        let min = after.iter().copied().fold(f64::INFINITY, f64::min);
        let max = after.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut tenth_peaks_mb = [0.0; 10];
        for sample in series {
            let tenth = ((sample.t_s / window_s * 10.0).max(0.0) as usize).min(9);
            tenth_peaks_mb[tenth] = f64::max(tenth_peaks_mb[tenth], sample.mb);
        }
        let steady: Vec<f64> = tenth_peaks_mb[1..9]
            .iter()
            .copied()
            .filter(|&mb| mb > 0.0)
            .collect();
        let steady_peak_min_mb = steady.iter().copied().fold(f64::INFINITY, f64::min);
        let steady_peak_max_mb = steady.iter().copied().fold(0.0, f64::max);
        let (steady_peak_min_mb, steady_peak_drift_pct) = if steady.is_empty() {
            (0.0, 0.0)
        } else {
            (
                steady_peak_min_mb,
                (steady_peak_max_mb - steady_peak_min_mb) / steady_peak_min_mb * 100.0,
            )
        };
        RssSummary {
            at_10pct_mb: at(0.10),
            at_50pct_mb: at(0.50),
            at_90pct_mb: at(0.90),
            min_after_rampup_mb: min,
            max_after_rampup_mb: max,
            spread_after_rampup_pct: if min > 0.0 {
                (max - min) / min * 100.0
            } else {
                0.0
            },
            tenth_peaks_mb,
            steady_peak_min_mb,
            steady_peak_max_mb,
            steady_peak_drift_pct,
        }
    }
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
    /// Length of the window the RSS series covers, seconds (normal mode: first event produced →
    /// end of the wait for outputs; backlog mode: resume → end of the drain).
    pub rss_window_s: f64,
    /// RSS at 10/50/90% of the window and its spread after the ramp-up.
    pub rss: RssSummary,
    /// Every sample of the window (every 250 ms).
    pub rss_series: Vec<RssSample>,
    pub workers: Vec<WorkerFigures>,
    /// The stack's services on the same machine (broker, Redis; from `scripts/stack.sh`), CPU
    /// in the same window: where the rest of the two cores go.
    pub services: Vec<ServiceFigures>,
    /// CPU seconds of the services in the window.
    pub services_cpu_s: f64,
    /// `services_cpu_s / received`, microseconds.
    pub services_cpu_us_per_event: f64,
}

/// A service's share of a scenario (every process of its process group).
#[derive(Debug, Clone, Serialize)]
pub struct ServiceFigures {
    pub name: String,
    /// Its process group (the leader `scripts/stack.sh` started).
    pub pgid: u32,
    pub cpu_s: f64,
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
        rss_series: Vec<RssSample>,
        rss_window_s: f64,
        services: Vec<ServiceFigures>,
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
        let services_cpu_s: f64 = services.iter().map(|s| s.cpu_s).sum();
        let per_event = |cpu_s: f64| {
            if received > 0 {
                cpu_s * 1e6 / received as f64
            } else {
                0.0
            }
        };
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
            cpu_us_per_event: per_event(cpu_s),
            peak_rss_mb: workers.iter().map(|w| w.peak_rss_mb).sum(),
            rss_start_mb: rss_series.first().map(|s| s.mb).unwrap_or(0.0),
            rss_max_mb: rss_series.iter().map(|s| s.mb).fold(0.0, f64::max),
            rss_end_mb: rss_series.last().map(|s| s.mb).unwrap_or(0.0),
            rss_window_s,
            rss: RssSummary::from_series(&rss_series, rss_window_s),
            rss_series,
            workers,
            services_cpu_us_per_event: per_event(services_cpu_s),
            services_cpu_s,
            services,
        }
    }
}

/// Width of the table's label column.
const LABEL: usize = 26;

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
    /// Backlog mode: the events were produced while the workers were stopped, then drained.
    pub backlog: bool,
    pub baseline: Option<Scenario>,
    pub pipeline: Option<Scenario>,
    /// Pipeline / baseline.
    pub ratios: Option<Ratios>,
    /// A peer on the pipeline's job (`--peer`), e.g. Kafka Streams.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<Scenario>,
    /// Peer / baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_ratios: Option<Ratios>,
    /// Pipeline / peer (the "≥ 1.5× Kafka Streams" figure is its `throughput`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline_vs_peer: Option<Ratios>,
}

impl Ratios {
    /// `a` / `b`, figure by figure.
    pub fn of(a: &Scenario, b: &Scenario) -> Self {
        Ratios {
            throughput: ratio(a.throughput_eps, b.throughput_eps),
            p50: ratio(a.latency.p50_ms, b.latency.p50_ms),
            p99: ratio(a.latency.p99_ms, b.latency.p99_ms),
            cpu_per_event: ratio(a.cpu_us_per_event, b.cpu_us_per_event),
            peak_rss: ratio(a.peak_rss_mb, b.peak_rss_mb),
        }
    }
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
        backlog: bool,
        baseline: Option<Scenario>,
        pipeline: Option<Scenario>,
    ) -> Self {
        let ratios = match (&baseline, &pipeline) {
            (Some(b), Some(p)) => Some(Ratios::of(p, b)),
            _ => None,
        };
        Report {
            events,
            rate,
            partitions,
            backlog,
            baseline,
            pipeline,
            ratios,
            peer: None,
            peer_ratios: None,
            pipeline_vs_peer: None,
        }
    }

    /// Adds the peer's scenario and its ratios (peer / baseline, pipeline / peer).
    pub fn with_peer(mut self, peer: Option<Scenario>) -> Self {
        if let Some(peer) = &peer {
            self.peer_ratios = self.baseline.as_ref().map(|b| Ratios::of(peer, b));
            self.pipeline_vs_peer = self.pipeline.as_ref().map(|p| Ratios::of(p, peer));
        }
        self.peer = peer;
        self
    }

    /// The table: one row per figure, a column per scenario and the ratio.
    pub fn table(&self) -> String {
        let scenarios: Vec<&Scenario> = self
            .baseline
            .iter()
            .chain(&self.pipeline)
            .chain(&self.peer)
            .collect();
        // Ratio columns: (title, numerator, denominator).
        let mut ratio_columns: Vec<(String, &Scenario, &Scenario)> = Vec::new();
        if let (Some(b), Some(p)) = (&self.baseline, &self.pipeline) {
            ratio_columns.push(("ratio".into(), p, b));
        }
        if let Some(peer) = &self.peer {
            if let Some(b) = &self.baseline {
                ratio_columns.push(("peer/base".into(), peer, b));
            }
            if let Some(p) = &self.pipeline {
                ratio_columns.push((format!("{}/peer", short(&p.name)), p, peer));
            }
        }
        let rows: [Row; 24] = [
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
            (
                "broker+Redis CPU µs/event",
                |s| s.services_cpu_us_per_event,
                "{:.2}",
            ),
            ("peak RSS MiB (VmHWM)", |s| s.peak_rss_mb, "{:.1}"),
            ("RSS start MiB", |s| s.rss_start_mb, "{:.1}"),
            ("RSS max MiB", |s| s.rss_max_mb, "{:.1}"),
            ("RSS at 10% MiB", |s| s.rss.at_10pct_mb, "{:.1}"),
            ("RSS at 50% MiB", |s| s.rss.at_50pct_mb, "{:.1}"),
            ("RSS at 90% MiB", |s| s.rss.at_90pct_mb, "{:.1}"),
            (
                "RSS min after 10% MiB",
                |s| s.rss.min_after_rampup_mb,
                "{:.1}",
            ),
            (
                "RSS max after 10% MiB",
                |s| s.rss.max_after_rampup_mb,
                "{:.1}",
            ),
            (
                "RSS spread after ramp-up %",
                |s| s.rss.spread_after_rampup_pct,
                "{:.1}",
            ),
            (
                "RSS lowest tenth peak MiB",
                |s| s.rss.steady_peak_min_mb,
                "{:.1}",
            ),
            (
                "RSS highest tenth peak MiB",
                |s| s.rss.steady_peak_max_mb,
                "{:.1}",
            ),
            (
                "RSS tenth-peak drift %",
                |s| s.rss.steady_peak_drift_pct,
                "{:.1}",
            ),
        ];
        let fmt = |v: f64, f: &str| match f {
            "{:.0}" => format!("{v:.0}"),
            "{:.1}" => format!("{v:.1}"),
            _ => format!("{v:.2}"),
        };
        let mut out = format!(
            "\nreflex-bench: {} events, rate {}, {} partitions{}\n\n",
            self.events,
            self.rate,
            self.partitions,
            if self.backlog {
                ", backlog drain (throughput = events / (resume → last output), \
                 latency from the resume)"
            } else {
                ""
            }
        );
        let mut header = format!("| {:<LABEL$} |", "figure");
        for s in &scenarios {
            header.push_str(&format!(" {:>22} |", s.name));
        }
        for (title, _, _) in &ratio_columns {
            header.push_str(&format!(" {title:>11} |"));
        }
        out.push_str(&header);
        out.push('\n');
        out.push_str(&format!(
            "|{}|{}{}\n",
            "-".repeat(LABEL + 2),
            format!("{}|", "-".repeat(24)).repeat(scenarios.len()),
            "-------------|".repeat(ratio_columns.len())
        ));
        for (label, get, f) in rows {
            let mut line = format!("| {label:<LABEL$} |");
            for s in &scenarios {
                line.push_str(&format!(" {:>22} |", fmt(get(s), f)));
            }
            for (_, num, den) in &ratio_columns {
                line.push_str(&format!(
                    " {:>11} |",
                    format!("{:.2}", ratio(get(num), get(den)))
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
            for v in &s.services {
                out.push_str(&format!(
                    "  {}: {} (process group {}) CPU {:.2} s = {:.2} µs/event\n",
                    s.name,
                    v.name,
                    v.pgid,
                    v.cpu_s,
                    if s.received > 0 {
                        v.cpu_s * 1e6 / s.received as f64
                    } else {
                        0.0
                    }
                ));
            }
        }
        out
    }
}

/// A scenario's name for a column title (`router`, `kafka-streams`).
fn short(name: &str) -> &str {
    name.split(['+', ' ']).next().unwrap_or(name)
}

/// One line per round of the figures the targets compare, then their range: throughput
/// ratios, CPU per event and the pipeline's CPU over the baseline's.
pub fn rounds_summary(reports: &[Report]) -> String {
    let mut out = String::from(
        "\nrounds: throughput events/s (baseline / pipeline / peer), ratios, CPU µs/event\n\n\
         | round | baseline ev/s | pipeline ev/s | peer ev/s | pipeline/base | peer/base | \
         pipeline/peer | CPU µs/ev base / pipeline / peer | pipeline − base µs |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    let f = |s: Option<&Scenario>, get: fn(&Scenario) -> f64, prec: usize| {
        s.map(|s| format!("{:.*}", prec, get(s)))
            .unwrap_or_else(|| "-".into())
    };
    let r = |x: Option<&Ratios>| {
        x.map(|x| format!("{:.2}", x.throughput))
            .unwrap_or_else(|| "-".into())
    };
    for (i, rep) in reports.iter().enumerate() {
        let (b, p, q) = (
            rep.baseline.as_ref(),
            rep.pipeline.as_ref(),
            rep.peer.as_ref(),
        );
        let over = match (b, p) {
            (Some(b), Some(p)) => format!("{:.2}", p.cpu_us_per_event - b.cpu_us_per_event),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} |\n",
            i + 1,
            f(b, |s| s.throughput_eps, 0),
            f(p, |s| s.throughput_eps, 0),
            f(q, |s| s.throughput_eps, 0),
            r(rep.ratios.as_ref()),
            r(rep.peer_ratios.as_ref()),
            r(rep.pipeline_vs_peer.as_ref()),
            f(b, |s| s.cpu_us_per_event, 2),
            f(p, |s| s.cpu_us_per_event, 2),
            f(q, |s| s.cpu_us_per_event, 2),
            over,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(points: &[(f64, f64)]) -> Vec<RssSample> {
        points
            .iter()
            .map(|&(t_s, mb)| RssSample { t_s, mb })
            .collect()
    }

    #[test]
    fn empty_series_is_all_zero() {
        assert_eq!(RssSummary::from_series(&[], 10.0), RssSummary::default());
    }

    #[test]
    fn ramp_up_is_left_out_of_min_max_and_spread() {
        // 10 s window, a sample per second: 20 → 100 MiB in the first second, then 100..=110.
        let s = series(&[
            (0.0, 20.0),
            (0.5, 60.0),
            (1.0, 100.0),
            (2.0, 104.0),
            (3.0, 102.0),
            (4.0, 110.0),
            (5.0, 105.0),
            (6.0, 101.0),
            (7.0, 100.0),
            (8.0, 103.0),
            (9.0, 106.0),
            (10.0, 107.0),
        ]);
        let r = RssSummary::from_series(&s, 10.0);
        assert_eq!(r.at_10pct_mb, 100.0);
        assert_eq!(r.at_50pct_mb, 105.0);
        assert_eq!(r.at_90pct_mb, 106.0);
        assert_eq!(r.min_after_rampup_mb, 100.0);
        assert_eq!(r.max_after_rampup_mb, 110.0);
        assert!((r.spread_after_rampup_pct - 10.0).abs() < 1e-9);
    }

    #[test]
    fn percentile_points_take_the_first_sample_at_or_after() {
        // Irregular samples (a busy machine delays ticks): at 10% of 4 s (0.4 s) the value is
        // the 0.6 s one, which is also the ramp-up's end for min and max.
        let s = series(&[(0.1, 1.0), (0.35, 2.0), (0.6, 3.0), (1.85, 4.0), (3.6, 5.0)]);
        let r = RssSummary::from_series(&s, 4.0);
        assert_eq!(r.at_10pct_mb, 3.0);
        assert_eq!(r.at_50pct_mb, 5.0);
        assert_eq!(r.at_90pct_mb, 5.0);
        assert_eq!(r.min_after_rampup_mb, 3.0);
        // A point after the last sample takes the last sample.
        let r = RssSummary::from_series(&series(&[(0.0, 7.0), (1.0, 9.0)]), 5.0);
        assert_eq!(r.at_50pct_mb, 9.0);
        assert_eq!(r.at_90pct_mb, 9.0);
    }

    #[test]
    fn growth_after_ramp_up_shows_in_the_spread() {
        let s = series(&[(0.0, 50.0), (1.0, 100.0), (2.0, 150.0), (3.0, 200.0)]);
        let r = RssSummary::from_series(&s, 3.0);
        assert_eq!(r.min_after_rampup_mb, 100.0);
        assert_eq!(r.max_after_rampup_mb, 200.0);
        assert!((r.spread_after_rampup_pct - 100.0).abs() < 1e-9);
    }

    #[test]
    fn tenth_peaks_ignore_a_sawtooth_but_show_growth() {
        // A sawtooth between 50 and 100 MiB, period 2 s, over a 20 s window: every tenth
        // peaks at 100, so the drift is 0 while the sample spread is 100%.
        let saw: Vec<(f64, f64)> = (0..=40)
            .map(|i| (i as f64 * 0.5, if i % 4 == 1 { 100.0 } else { 50.0 }))
            .collect();
        let r = RssSummary::from_series(&series(&saw), 20.0);
        assert!((r.spread_after_rampup_pct - 100.0).abs() < 1e-9);
        assert_eq!(r.steady_peak_min_mb, 100.0);
        assert_eq!(r.steady_peak_max_mb, 100.0);
        assert_eq!(r.steady_peak_drift_pct, 0.0);
        // The same sawtooth on a rising floor: later tenths peak higher.
        let leak: Vec<(f64, f64)> = saw.iter().map(|&(t, mb)| (t, mb + 5.0 * t)).collect();
        let r = RssSummary::from_series(&series(&leak), 20.0);
        assert!(r.tenth_peaks_mb[8] > r.tenth_peaks_mb[1]);
        assert!(r.steady_peak_drift_pct > 50.0, "{r:?}");
        // The first and last tenths are left out of the drift.
        let mut ends = saw.clone();
        ends[0].1 = 10.0;
        ends[40].1 = 400.0;
        let r = RssSummary::from_series(&series(&ends), 20.0);
        assert_eq!(r.tenth_peaks_mb[9], 400.0);
        assert_eq!(r.steady_peak_drift_pct, 0.0);
    }

    #[test]
    fn window_defaults_to_the_last_sample_and_short_windows_use_the_last_sample() {
        let s = series(&[(0.0, 10.0), (2.0, 30.0)]);
        assert_eq!(
            RssSummary::from_series(&s, 0.0),
            RssSummary::from_series(&s, 2.0)
        );
        // No sample from 10% of the window on (the window ended before the sampler caught
        // up): the last sample stands for the whole window, spread 0.
        let r = RssSummary::from_series(&series(&[(0.0, 40.0), (0.25, 42.0)]), 10.0);
        assert_eq!(r.min_after_rampup_mb, 42.0);
        assert_eq!(r.max_after_rampup_mb, 42.0);
        assert_eq!(r.spread_after_rampup_pct, 0.0);
    }

    fn scenario(name: &str, received: u64, elapsed_us: u64, cpu_s: f64) -> Scenario {
        Scenario::new(
            name,
            received,
            0,
            &mut [1000, 2000],
            received,
            0,
            elapsed_us,
            1.0,
            vec![WorkerFigures {
                name: name.into(),
                pid: 1,
                cpu_s,
                peak_rss_mb: 10.0,
            }],
            vec![],
            1.0,
            vec![],
        )
    }

    #[test]
    fn a_peer_gets_its_column_and_ratios_to_the_baseline_and_from_the_pipeline() {
        // 1000 events: baseline in 1 s, router in 1.25 s, peer in 2.5 s.
        let report = Report::new(
            1000,
            "max".into(),
            6,
            false,
            Some(scenario("baseline (1 hop)", 1000, 1_000_000, 0.010)),
            Some(scenario("router", 1000, 1_250_000, 0.012)),
        )
        .with_peer(Some(scenario("kafka-streams", 1000, 2_500_000, 0.030)));
        let vs_peer = report.pipeline_vs_peer.as_ref().unwrap();
        assert!((vs_peer.throughput - 2.0).abs() < 1e-9);
        assert!((vs_peer.cpu_per_event - 0.4).abs() < 1e-9);
        let peer = report.peer_ratios.as_ref().unwrap();
        assert!((peer.throughput - 0.4).abs() < 1e-9);
        assert!((report.ratios.as_ref().unwrap().throughput - 0.8).abs() < 1e-9);
        let table = report.table();
        let header = table.lines().find(|l| l.starts_with("| figure")).unwrap();
        for column in ["kafka-streams", "ratio", "peer/base", "router/peer"] {
            assert!(header.contains(column), "{header}");
        }
        let row = table
            .lines()
            .find(|l| l.starts_with("| throughput events/s"))
            .unwrap();
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(&cells[2..8], ["1000", "800", "400", "0.80", "0.40", "2.00"]);
        let summary = rounds_summary(&[report.clone(), report]);
        assert_eq!(
            summary.lines().filter(|l| l.starts_with("| 2 |")).count(),
            1
        );
        assert!(summary.contains("| 1 | 1000 | 800 | 400 | 0.80 | 0.40 | 2.00 |"));
        // Without a peer the JSON keeps its old shape.
        let plain = Report::new(1, "max".into(), 1, false, None, None);
        let json = serde_json::to_value(&plain).unwrap();
        assert!(json.get("peer").is_none() && json.get("pipeline_vs_peer").is_none());
    }

    #[test]
    fn scenario_keeps_the_series_and_its_summary() {
        let s = series(&[(0.0, 10.0), (1.0, 20.0), (2.0, 22.0)]);
        let mut lat = vec![3000, 1000, 2000];
        let sc = Scenario::new(
            "x",
            3,
            0,
            &mut lat,
            3,
            0,
            2_000_000,
            1.0,
            vec![],
            s.clone(),
            2.0,
            vec![
                ServiceFigures {
                    name: "broker".into(),
                    pgid: 7,
                    cpu_s: 0.25,
                },
                ServiceFigures {
                    name: "redis".into(),
                    pgid: 8,
                    cpu_s: 0.05,
                },
            ],
        );
        assert!((sc.services_cpu_us_per_event - 0.30e6 / 3.0).abs() < 1e-6);
        assert_eq!(sc.rss_start_mb, 10.0);
        assert_eq!(sc.rss_max_mb, 22.0);
        assert_eq!(sc.rss_end_mb, 22.0);
        assert_eq!(sc.rss_series, s);
        assert_eq!(sc.rss, RssSummary::from_series(&s, 2.0));
        let json = serde_json::to_value(&sc).unwrap();
        assert_eq!(json["rss_series"][1]["t_s"], 1.0);
        assert_eq!(json["rss_series"][1]["mb"], 20.0);
        assert!(json["rss"]["spread_after_rampup_pct"].is_number());
        let report = Report::new(3, "max".into(), 6, false, None, Some(sc));
        let table = report.table();
        assert!(table.contains("RSS spread after ramp-up %"));
        assert!(
            table.contains("broker+Redis CPU µs/event")
                && table.contains("broker (process group 7)")
        );
    }
}
