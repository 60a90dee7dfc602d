//! Prometheus text exposition, read: the one parser every Reflex tool uses to look at running
//! workers (`reflexctl top`, the main job's checks, the fault suite, the tests).
//!
//! It reads what the workers' `/metrics` (and Prometheus' own federation output) print:
//! `name{label="value",...} number [timestamp]` lines; comments and unparsable lines are
//! skipped, label values are unescaped (`\"`, `\\`, `\n`).

use std::collections::BTreeMap;
use std::time::Duration;

/// One sample: a series and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
    /// The sample's own timestamp (ms since the epoch) when the text carries one, as
    /// Prometheus' `/federate` output does: the time it scraped the worker, not when we read it.
    pub timestamp_ms: Option<i64>,
}

impl Sample {
    /// The value of `label`, if the series has it.
    pub fn label(&self, label: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == label)
            .map(|(_, v)| v.as_str())
    }

    /// The labels sorted: the series' identity whatever order a writer printed them in.
    fn label_set(&self) -> Vec<(&str, &str)> {
        let mut set: Vec<(&str, &str)> = self
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        set.sort_unstable();
        set
    }

    fn matches(&self, name: &str, want: &[(&str, &str)]) -> bool {
        self.name == name && want.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// Every sample of a scrape, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// Parses exposition text; lines that are not samples are skipped.
    pub fn parse(text: &str) -> Self {
        Self(text.lines().filter_map(parse_line).collect())
    }

    /// Adds another scrape's samples (e.g. of another replica).
    pub fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    /// Sum of the series named `name` whose labels include every `want` pair.
    pub fn total(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|s| s.matches(name, want))
            .map(|s| s.value)
            .sum()
    }

    /// The series named `name` whose labels include every `want` pair.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        want: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| s.matches(name, want))
    }

    /// How much the counters named `name` (with the `want` labels) grew since `earlier`, an
    /// earlier scrape of the same process, summed over series. A series that went down was
    /// reset (its process restarted) and counts from zero, as Prometheus' `increase()` does, so
    /// a restart never yields a negative rate; a series absent from `earlier` counts from zero.
    pub fn increase_since(&self, earlier: &Samples, name: &str, want: &[(&str, &str)]) -> f64 {
        let before: BTreeMap<Vec<(&str, &str)>, f64> = earlier
            .matching(name, want)
            .map(|s| (s.label_set(), s.value))
            .collect();
        self.matching(name, want)
            .map(|s| {
                let was = before.get(&s.label_set()).copied().unwrap_or(0.0);
                if s.value >= was {
                    s.value - was
                } else {
                    s.value
                }
            })
            .sum()
    }

    /// Whether any series named `name` with the `want` labels exists.
    pub fn has(&self, name: &str, want: &[(&str, &str)]) -> bool {
        self.0.iter().any(|s| s.matches(name, want))
    }

    /// Sums of the series named `name`, by the value of `label` (series without it are left
    /// out).
    pub fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.0.iter().filter(|s| s.name == name) {
            if let Some(v) = s.label(label) {
                *out.entry(v.to_string()).or_insert(0.0) += s.value;
            }
        }
        out
    }
}

/// Fetches and parses `url` (a worker's `http://host:port/metrics`).
pub async fn scrape(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<Samples, String> {
    let response = client
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("{url}: {}", cause(&e)))?;
    if !response.status().is_success() {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    let text = response
        .text()
        .await
        .map_err(|e| format!("{url}: {}", cause(&e)))?;
    Ok(Samples::parse(&text))
}

/// What went wrong, in the words an operator acts on: reqwest's own message only says that
/// sending failed, the innermost cause says why ("Connection refused", a DNS failure).
fn cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_string();
    }
    let mut innermost: &dyn std::error::Error = e;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    innermost.to_string()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, remainder) = parse_labels(after)?;
        labels = parsed;
        rest = remainder;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next()?;
    let timestamp_ms = fields.next().and_then(|t| t.parse().ok());
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
        timestamp_ms,
    })
}

/// `a="x",b="y"}` → the pairs and what follows the closing brace.
fn parse_labels(mut text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches([' ', ',']);
        if let Some(rest) = text.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (key, after) = text.split_once('=')?;
        let quoted = after.trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut escaped = false;
        let mut end = None;
        for (i, c) in quoted.char_indices() {
            match (escaped, c) {
                (true, 'n') => value.push('\n'),
                (true, c) => value.push(c),
                (false, '\\') => {}
                (false, '"') => {
                    end = Some(i + 1);
                    break;
                }
                (false, c) => value.push(c),
            }
            escaped = !escaped && c == '\\';
        }
        labels.push((key.trim().to_string(), value));
        text = &quoted[end?..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP reflex_events_in_total Events read.
# TYPE reflex_events_in_total counter
reflex_events_in_total{stage="router"} 120
reflex_events_in_total{stage="actor"} 7
reflex_actions_total{stage="actor",action="restart",outcome="success"} 5
reflex_actions_total{stage="actor",action="page",outcome="success"} 2
reflex_actions_total{stage="actor",action="page",outcome="failed"} 1
weird{msg="a \"quoted\", braces } and \\ here",other="x"} 3.5 1700000000000
reflex_processing_seconds_bucket{stage="router",le="+Inf"} 9
up 1
not a sample line
"#;

    #[test]
    fn reads_names_labels_values_and_skips_the_rest() {
        let s = Samples::parse(TEXT);
        assert_eq!(s.0.len(), 8, "{s:?}");
        assert_eq!(s.total("reflex_events_in_total", &[]), 127.0);
        assert_eq!(
            s.total("reflex_events_in_total", &[("stage", "actor")]),
            7.0
        );
        assert_eq!(s.total("up", &[]), 1.0);
        let weird = s.0.iter().find(|x| x.name == "weird").unwrap();
        assert_eq!(
            weird.label("msg"),
            Some("a \"quoted\", braces } and \\ here")
        );
        assert_eq!(weird.label("other"), Some("x"));
        assert_eq!(weird.value, 3.5);
        assert_eq!(weird.timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(s.0[0].timestamp_ms, None);
        assert!(s.has("reflex_processing_seconds_bucket", &[("le", "+Inf")]));
        assert!(!s.has("reflex_events_in_total", &[("stage", "enricher")]));
    }

    #[test]
    fn increase_counts_resets_and_new_series_from_zero() {
        let earlier = Samples::parse(
            "c{stage=\"router\",k=\"a\"} 10\nc{stage=\"router\",k=\"b\"} 50\nc{stage=\"actor\"} 3\n",
        );
        // `a` grew by 5 (labels printed in another order), `b` restarted and is at 4, `c` is new.
        let later = Samples::parse(
            "c{k=\"a\",stage=\"router\"} 15\nc{stage=\"router\",k=\"b\"} 4\nc{stage=\"router\",k=\"c\"} 2\nc{stage=\"actor\"} 3\n",
        );
        assert_eq!(
            later.increase_since(&earlier, "c", &[("stage", "router")]),
            11.0
        );
        assert_eq!(later.increase_since(&earlier, "c", &[]), 11.0);
        assert_eq!(
            later.increase_since(&earlier, "c", &[("stage", "actor")]),
            0.0
        );
        assert_eq!(later.matching("c", &[("k", "a")]).count(), 1);
    }

    #[test]
    fn groups_by_a_label() {
        let s = Samples::parse(TEXT);
        let by_outcome = s.by_label("reflex_actions_total", "outcome");
        assert_eq!(by_outcome.get("success"), Some(&7.0));
        assert_eq!(by_outcome.get("failed"), Some(&1.0));
        let pages = s.total("reflex_actions_total", &[("action", "page")]);
        assert_eq!(pages, 3.0);
    }
}
