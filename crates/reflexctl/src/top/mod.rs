//! `reflexctl top`: a live terminal view of any running fleet, from its workers' `/metrics` or
//! a Prometheus server.
//!
//! Three layers, each usable alone (the main job's live view uses all three):
//!
//! - reading: a [`Source`] (a worker's `/metrics`, or a Prometheus server through
//!   `/federate`) gives one [`Reading`] per worker, parsed with [`crate::prom`];
//! - the model: a [`Tracker`] keeps each worker's two latest readings and computes a
//!   [`Fleet`] (per stage rates in/out/dead letters, in flight, paused partitions, lag in
//!   offsets and seconds with its status; actions by outcome; breakers not closed; the kill
//!   switch; workers that do not answer) — [`Fleet::compute`] is the pure function under it;
//! - the view: [`draw`] puts a `Fleet` on a ratatui frame; [`render_text`] draws it on a
//!   `width`×`height` text screen, the same drawing (used by `--once` and the tests).
//!
//! ```no_run
//! # async fn demo() {
//! use reflexctl::top::{read_all, render_text, Source, Tracker};
//! let sources = [Source::metrics("127.0.0.1:9101"), Source::metrics("127.0.0.1:9104")];
//! let client = reqwest::Client::new();
//! let timeout = std::time::Duration::from_secs(2);
//! let mut tracker = Tracker::default();
//! tracker.observe(read_all(&client, &sources, timeout).await);
//! tokio::time::sleep(std::time::Duration::from_secs(1)).await;
//! let fleet = tracker.observe(read_all(&client, &sources, timeout).await);
//! print!("{}", render_text(&fleet, 80, 24));
//! # }
//! ```

mod model;
mod view;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{ArgGroup, Args};
use crossterm::event::{Event, EventStream, KeyCode, KeyEventKind, KeyModifiers};
use futures::StreamExt;

pub use model::{Breakers, Fleet, OutcomeRow, Reading, StageRow, Tracker, WorkerRow, STAGES};
pub use view::{draw, render_text};

use crate::prom::{self, Samples};

pub const LONG_ABOUT: &str = "A live view of a running fleet from its workers' /metrics (or a \
Prometheus server): per stage the rates in, out and to dead letters, events in flight, paused \
partitions, consumer lag in offsets and seconds with its status; actions by outcome; the circuit \
breakers that are not closed and how many are; the kill switch; workers that do not answer. \
Replicas of a stage are summed. Fits an 80x24 terminal; q, Esc or Ctrl-C quits.\n\n\
--once prints one plain-text frame after two scrapes and exits (0 when every worker answered, \
1 when some did not), for scripts and tests.\n\n\
Examples:\n  \
reflexctl top --metrics 127.0.0.1:9101 --metrics 127.0.0.1:9102 --metrics 127.0.0.1:9103 --metrics 127.0.0.1:9104\n  \
reflexctl top --metrics-file workers.txt --interval 2s\n  \
reflexctl top --prometheus http://prometheus:9090 --interval 15s\n  \
reflexctl top --metrics 127.0.0.1:9101 --once";

#[derive(Debug, Clone, Args)]
#[command(group(
    ArgGroup::new("sources")
        .required(true)
        .multiple(true)
        .args(["metrics", "metrics_file", "prometheus"])
))]
pub struct TopArgs {
    /// A worker's metrics endpoint: `http://host:port/metrics`, or just `host:port`. Repeat it
    /// for every worker; replicas of a stage are summed.
    #[arg(long, value_name = "URL")]
    pub metrics: Vec<String>,
    /// A file of metrics endpoints, one per line (`#` starts a comment), read again at every
    /// scrape so a fleet that scales is followed.
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    /// A Prometheus server's base URL: every worker it scrapes, read through its `/federate`
    /// endpoint. Rates are over its own scrapes, so an interval below its scrape interval
    /// shows the same figures again.
    #[arg(long, value_name = "URL")]
    pub prometheus: Vec<String>,
    /// Time between scrapes (`1s`, `500ms`, `1m`); rates are per second over it.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// How long one endpoint may take to answer before it counts as down.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print one plain-text frame after two scrapes and exit.
    #[arg(long)]
    pub once: bool,
    /// Width of the `--once` frame.
    #[arg(long, default_value_t = 80)]
    pub width: u16,
    /// Height of the `--once` frame.
    #[arg(long, default_value_t = 24)]
    pub height: u16,
}

/// Where readings come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// One worker's exposition endpoint, `http://host:port/metrics`.
    Metrics(String),
    /// A Prometheus server's base URL. Read through `/federate`, which answers in exposition
    /// text (one request, the same parser, each sample with the time Prometheus took it), rather
    /// than the query API (JSON, one PromQL query per figure, and rates over Prometheus' own
    /// windows that would not match the `--metrics` view).
    Prometheus(String),
}

impl Source {
    /// A worker's endpoint; `host:port` means `http://host:port/metrics`.
    pub fn metrics(address: &str) -> Source {
        let address = address.trim();
        let url = if address.contains("://") {
            address.to_string()
        } else {
            format!("http://{address}")
        };
        let has_path = url
            .split_once("://")
            .is_some_and(|(_, rest)| rest.contains('/'));
        Source::Metrics(if has_path {
            url
        } else {
            format!("{url}/metrics")
        })
    }

    /// Reads the source: one reading per worker (a Prometheus server gives one per scraped
    /// instance, or a single failed reading when it does not answer).
    pub async fn read(&self, client: &reqwest::Client, timeout: Duration) -> Vec<Reading> {
        match self {
            Source::Metrics(url) => {
                // The view prints the worker next to its error: the URL once is enough.
                let result = prom::scrape(client, url, timeout).await.map_err(|e| {
                    e.strip_prefix(&format!("{url}: "))
                        .map_or(e.clone(), str::to_string)
                });
                vec![Reading {
                    worker: url.clone(),
                    result,
                    at_ms: now_ms(),
                }]
            }
            Source::Prometheus(base) => {
                let url = federate_url(base);
                match prom::scrape(client, &url, timeout).await {
                    Ok(samples) => split_federated(samples),
                    Err(e) => vec![Reading {
                        worker: base.clone(),
                        result: Err(e),
                        at_ms: now_ms(),
                    }],
                }
            }
        }
    }
}

/// Reads every source at once; readings in the sources' order.
pub async fn read_all(
    client: &reqwest::Client,
    sources: &[Source],
    timeout: Duration,
) -> Vec<Reading> {
    futures::future::join_all(sources.iter().map(|s| s.read(client, timeout)))
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// `/federate` asking for the Reflex series, the lag series workers export (named like
/// kafka-lag-exporter's) and `up`, so an instance Prometheus cannot scrape shows as down.
fn federate_url(base: &str) -> String {
    let selectors = [r#"{__name__=~"reflex_.+|kafka_consumergroup_.+"}"#, "up"];
    let query: Vec<String> = selectors
        .iter()
        .map(|s| format!("match[]={}", percent_encode(s)))
        .collect();
    format!(
        "{}/federate?{}",
        base.trim_end_matches('/'),
        query.join("&")
    )
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Federation output, one reading per `job/instance`. Only the `up` series of jobs with
/// Reflex series count: the same Prometheus scrapes unrelated targets too.
fn split_federated(samples: Samples) -> Vec<Reading> {
    let mut by_instance: BTreeMap<String, (Samples, Option<f64>)> = BTreeMap::new();
    let mut reflex_jobs = std::collections::BTreeSet::new();
    for sample in samples.0 {
        let job = sample.label("job").unwrap_or("").to_string();
        let worker = format!("{job}/{}", sample.label("instance").unwrap_or(""));
        let entry = by_instance.entry(worker).or_default();
        if sample.name == "up" {
            entry.1 = Some(sample.value);
        } else {
            reflex_jobs.insert(job);
            entry.0 .0.push(sample);
        }
    }
    by_instance
        .into_iter()
        .filter(|(worker, _)| {
            let job = worker.rsplit_once('/').map_or("", |(job, _)| job);
            reflex_jobs.contains(job)
        })
        .map(|(worker, (samples, up))| {
            let at_ms = samples
                .0
                .iter()
                .filter_map(|s| s.timestamp_ms)
                .max()
                .unwrap_or_else(now_ms);
            let result = if up == Some(0.0) {
                Err("Prometheus cannot scrape it (up = 0)".to_string())
            } else {
                Ok(samples)
            };
            Reading {
                worker,
                result,
                at_ms,
            }
        })
        .collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `250ms`, `1s`, `1.5s`, `2m`; a bare number is seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. 500ms, 1s, 2m)"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (ms, s or m)")),
    };
    if seconds <= 0.0 {
        return Err(format!("`{text}`: must be more than zero"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

impl TopArgs {
    /// The sources for this round: `--metrics`, `--prometheus`, and the file's lines (read now,
    /// so edits to it are followed).
    fn sources(&self) -> anyhow::Result<Vec<Source>> {
        let mut sources: Vec<Source> = self.metrics.iter().map(|m| Source::metrics(m)).collect();
        if let Some(path) = &self.metrics_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            sources.extend(
                text.lines()
                    .map(|l| l.split('#').next().unwrap_or("").trim())
                    .filter(|l| !l.is_empty())
                    .map(Source::metrics),
            );
        }
        sources.extend(
            self.prometheus
                .iter()
                .map(|p| Source::Prometheus(p.trim_end_matches('/').to_string())),
        );
        if sources.is_empty() {
            bail!("no worker to watch: the metrics file lists none");
        }
        Ok(sources)
    }
}

pub async fn run(args: TopArgs) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::new();
    if args.once {
        let mut tracker = Tracker::default();
        tracker.observe(read_all(&client, &args.sources()?, args.timeout).await);
        tokio::time::sleep(args.interval).await;
        let fleet = tracker.observe(read_all(&client, &args.sources()?, args.timeout).await);
        print!("{}", render_text(&fleet, args.width, args.height));
        return Ok(if fleet.workers_up() == fleet.workers.len() {
            ExitCode::SUCCESS
        } else {
            crate::check_failed()
        });
    }
    if !std::io::stdout().is_terminal() {
        bail!("stdout is not a terminal: use --once for a plain-text frame");
    }
    // Fail on a bad metrics file before taking over the screen.
    args.sources()?;
    // `init` also installs a panic hook that restores the terminal before the message prints.
    let mut terminal = ratatui::init();
    let result = live(&mut terminal, &args, client).await;
    ratatui::restore();
    result.map(|()| ExitCode::SUCCESS)
}

/// Scrapes in a task of its own, so a slow worker never delays a key press; redraws on every
/// round and every terminal event (a resize).
async fn live(
    terminal: &mut ratatui::DefaultTerminal,
    args: &TopArgs,
    client: reqwest::Client,
) -> anyhow::Result<()> {
    let (tx, mut rounds) = tokio::sync::mpsc::channel::<anyhow::Result<Vec<Reading>>>(1);
    let scraper = {
        let (interval, timeout) = (args.interval, args.timeout);
        let sources_args = args.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let round = match sources_args.sources() {
                    Ok(sources) => Ok(read_all(&client, &sources, timeout).await),
                    Err(e) => Err(e),
                };
                if tx.send(round).await.is_err() {
                    return;
                }
            }
        })
    };
    let result = async {
        let mut tracker = Tracker::default();
        let mut fleet = Fleet::default();
        let mut events = EventStream::new();
        loop {
            terminal.draw(|frame| draw(frame, &fleet))?;
            tokio::select! {
                round = rounds.recv() => match round {
                    Some(round) => fleet = tracker.observe(round?),
                    None => return Ok(()),
                },
                event = events.next() => match event {
                    Some(Ok(Event::Key(key))) if key.kind == KeyEventKind::Press => {
                        let ctrl_c = key.modifiers.contains(KeyModifiers::CONTROL)
                            && key.code == KeyCode::Char('c');
                        if ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
                            return Ok(());
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(anyhow::Error::from(e).context("terminal input")),
                    None => return Ok(()),
                },
            }
        }
    }
    .await;
    scraper.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_metrics_urls() {
        let url = |a: &str| Source::metrics(a);
        assert_eq!(
            url("127.0.0.1:9101"),
            Source::Metrics("http://127.0.0.1:9101/metrics".into())
        );
        assert_eq!(
            url("http://w:9/metrics"),
            Source::Metrics("http://w:9/metrics".into())
        );
        assert_eq!(
            url("https://w:9/custom"),
            Source::Metrics("https://w:9/custom".into())
        );
        assert_eq!(
            url("http://w:9"),
            Source::Metrics("http://w:9/metrics".into())
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn federation_is_split_per_instance_and_up_zero_is_down() {
        assert_eq!(
            federate_url("http://prom:9090/"),
            "http://prom:9090/federate?match[]=%7B__name__%3D~%22reflex_.%2B%7Ckafka_consumergroup_.%2B%22%7D&match[]=up"
        );
        let text = format!(
            "{in}{{stage=\"router\",instance=\"r1:9100\",job=\"reflex\"}} 10 1700000001000\n\
             {in}{{stage=\"router\",instance=\"r2:9100\",job=\"reflex\"}} 5 1700000002000\n\
             up{{instance=\"r1:9100\",job=\"reflex\"}} 1 1700000001000\n\
             up{{instance=\"r2:9100\",job=\"reflex\"}} 1 1700000002000\n\
             up{{instance=\"r3:9100\",job=\"reflex\"}} 0 1700000002000\n\
             up{{instance=\"node:9100\",job=\"node\"}} 1 1700000002000\n",
            in = reflex_core::metrics::EVENTS_IN
        );
        let readings = split_federated(Samples::parse(&text));
        let workers: Vec<&str> = readings.iter().map(|r| r.worker.as_str()).collect();
        assert_eq!(
            workers,
            ["reflex/r1:9100", "reflex/r2:9100", "reflex/r3:9100"]
        );
        assert_eq!(readings[0].at_ms, 1_700_000_001_000);
        assert_eq!(
            readings[1]
                .result
                .as_ref()
                .unwrap()
                .total(reflex_core::metrics::EVENTS_IN, &[]),
            5.0
        );
        assert!(readings[2].result.is_err());
    }
}
