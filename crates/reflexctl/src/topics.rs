//! `reflexctl topics apply`: make the broker match the `topics/*.toml` declarations.
//!
//! The plan compares each declared topic with the broker: missing topics are created, partition
//! counts grow (never shrink), and the configs the declaration sets (`retention_ms`,
//! `cleanup_policy`, `[topic.config]`) are altered when they differ. Configs the declaration does
//! not set are neither compared nor touched. The diff is printed one line per change:
//!
//! ```text
//! + create reflex.events.k8s (partitions=6, retention.ms=604800000)
//! ~ reflex.x partitions 3 -> 6
//! ~ reflex.x retention.ms 1000 -> 2000
//! = reflex.y unchanged
//! ! reflex.z partitions 6 -> 3 refused: partitions can never shrink (...)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Subcommand};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::metadata::Metadata;
use reflex_core::topics::{load_dir, TopicDecl};

use crate::{check_failed, Global, METADATA_TIMEOUT};

const APPLY_ABOUT: &str = "Create missing topics, grow partition counts and alter the configs \
the declarations set, printing a diff:\n\n  \
+ create reflex.events.k8s (partitions=6, retention.ms=604800000)\n  \
~ reflex.x partitions 3 -> 6\n  \
~ reflex.x retention.ms 1000 -> 2000\n  \
= reflex.y unchanged\n\n\
Partitions never shrink: a declared count below the broker's is printed as a `!` line, the \
rest is still applied and the exit code is 1. Configs the declaration does not set are not \
compared or touched. Running it twice changes nothing the second time (only `=` lines).\n\n\
Examples:\n  \
reflexctl topics apply --dry-run\n  \
reflexctl --bootstrap kafka:9092 topics apply --dir topics";

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Make the broker match the declarations (create, grow partitions, alter configs).
    #[command(long_about = APPLY_ABOUT)]
    Apply(ApplyArgs),
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Directory of `*.toml` topic declarations.
    #[arg(long, default_value = "topics")]
    pub dir: PathBuf,
    /// Print the diff only; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What the broker has for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actual {
    pub partitions: i32,
    pub replication_factor: i32,
    /// The values of the configs the declaration sets (None: the broker did not report it).
    pub configs: BTreeMap<String, Option<String>>,
}

/// One line of the diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create {
        name: String,
        partitions: i32,
        replication_factor: i32,
        configs: BTreeMap<String, String>,
    },
    Grow {
        name: String,
        from: i32,
        to: i32,
    },
    Config {
        name: String,
        key: String,
        from: Option<String>,
        to: String,
    },
    Unchanged {
        name: String,
    },
    /// A change this tool will not make; printed with `!`, exit code 1.
    Refused {
        name: String,
        message: String,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Create {
                name,
                partitions,
                replication_factor,
                configs,
            } => {
                write!(f, "+ create {name} (partitions={partitions}")?;
                if *replication_factor != 1 {
                    write!(f, ", replication_factor={replication_factor}")?;
                }
                for (k, v) in configs {
                    write!(f, ", {k}={v}")?;
                }
                write!(f, ")")
            }
            Change::Grow { name, from, to } => write!(f, "~ {name} partitions {from} -> {to}"),
            Change::Config {
                name,
                key,
                from,
                to,
            } => write!(
                f,
                "~ {name} {key} {} -> {to}",
                from.as_deref().unwrap_or("(unset)")
            ),
            Change::Unchanged { name } => write!(f, "= {name} unchanged"),
            Change::Refused { name, message } => write!(f, "! {name} {message}"),
        }
    }
}

/// Compares one declaration with what the broker has (None: the topic does not exist).
pub fn plan_topic(decl: &TopicDecl, actual: Option<&Actual>) -> Vec<Change> {
    let name = decl.name.clone();
    let Some(actual) = actual else {
        return vec![Change::Create {
            name,
            partitions: decl.partitions,
            replication_factor: decl.replication_factor,
            configs: decl.configs(),
        }];
    };
    let mut changes = Vec::new();
    if decl.partitions > actual.partitions {
        changes.push(Change::Grow {
            name: name.clone(),
            from: actual.partitions,
            to: decl.partitions,
        });
    } else if decl.partitions < actual.partitions {
        changes.push(Change::Refused {
            name: name.clone(),
            message: format!(
                "partitions {} -> {} refused: partitions can never shrink (keys would move to \
                 other partitions); declare partitions = {} or recreate the topic by hand",
                actual.partitions, decl.partitions, actual.partitions
            ),
        });
    }
    if decl.replication_factor != actual.replication_factor {
        changes.push(Change::Refused {
            name: name.clone(),
            message: format!(
                "replication_factor {} -> {} not changed: reassigning replicas is an operator \
                 task (kafka-reassign-partitions); or declare replication_factor = {}",
                actual.replication_factor, decl.replication_factor, actual.replication_factor
            ),
        });
    }
    for (key, want) in decl.configs() {
        let have = actual.configs.get(&key).cloned().flatten();
        if have.as_deref() != Some(want.as_str()) {
            changes.push(Change::Config {
                name: name.clone(),
                key,
                from: have,
                to: want,
            });
        }
    }
    if changes.is_empty() {
        changes.push(Change::Unchanged { name });
    }
    changes
}

/// Kafka's rule for topic names.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 || name == "." || name == ".." {
        return Err(format!(
            "topic name `{name}` must be 1 to 249 characters and not `.` or `..`"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name `{name}` has `{c}`: Kafka allows only letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

pub async fn run(global: &Global, cmd: TopicsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TopicsCommand::Apply(args) => apply(global, args).await,
    }
}

async fn apply(global: &Global, args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let decls = load_dir(&args.dir)
        // TopicsError's message already holds its cause; keep it once.
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| {
            format!(
            "cannot load topic declarations from {} (pass --dir with the folder of *.toml files)",
            args.dir.display()
        )
        })?;
    if decls.is_empty() {
        bail!(
            "no [[topic]] declarations in {}/*.toml: nothing to apply (pass --dir with the folder of declarations)",
            args.dir.display()
        );
    }
    for decl in &decls {
        check_name(&decl.name).map_err(|e| anyhow!("{}: {e}", args.dir.display()))?;
    }

    let admin: AdminClient<DefaultClientContext> = global
        .kafka_config()
        .create()
        .context("cannot create the Kafka admin client")?;
    let metadata = fetch_metadata(&admin, &global.bootstrap)?;
    let existing: HashMap<String, (i32, i32)> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| {
            let rf = t
                .partitions()
                .iter()
                .map(|p| p.replicas().len() as i32)
                .max()
                .unwrap_or(0);
            (t.name().to_string(), (t.partitions().len() as i32, rf))
        })
        .collect();

    // Current configs of the declared topics that exist.
    let present: Vec<&TopicDecl> = decls
        .iter()
        .filter(|d| existing.contains_key(&d.name))
        .collect();
    let described = describe(&admin, &present).await?;

    let mut actual: HashMap<&str, Actual> = HashMap::new();
    for decl in &present {
        let (partitions, replication_factor) = existing[&decl.name];
        let entries = described.get(&decl.name);
        let configs = decl
            .configs()
            .into_keys()
            .map(|key| {
                let value = entries.and_then(|e| e.all.get(&key).cloned().flatten());
                (key, value)
            })
            .collect();
        actual.insert(
            &decl.name,
            Actual {
                partitions,
                replication_factor,
                configs,
            },
        );
    }

    let mut changes = Vec::new();
    for decl in &decls {
        changes.extend(plan_topic(decl, actual.get(decl.name.as_str())));
    }
    for change in &changes {
        println!("{change}");
    }
    let refused = changes
        .iter()
        .filter(|c| matches!(c, Change::Refused { .. }))
        .count();
    let pending = changes
        .iter()
        .filter(|c| !matches!(c, Change::Unchanged { .. } | Change::Refused { .. }))
        .count();

    if args.dry_run {
        eprintln!("dry run: {pending} change(s) not applied");
    } else if pending > 0 {
        execute(&admin, &decls, &changes, &described).await?;
        eprintln!("applied {pending} change(s)");
    }
    if refused > 0 {
        eprintln!("error: {refused} declared change(s) refused (see the `!` lines)");
        return Ok(check_failed());
    }
    Ok(ExitCode::SUCCESS)
}

fn fetch_metadata(
    admin: &AdminClient<DefaultClientContext>,
    bootstrap: &str,
) -> anyhow::Result<Metadata> {
    admin
        .inner()
        .fetch_metadata(None, METADATA_TIMEOUT)
        .with_context(|| {
            format!(
                "cannot read topic metadata from Kafka at {bootstrap} (check --bootstrap / \
                 REFLEX_KAFKA__BOOTSTRAP_SERVERS and that the broker runs)"
            )
        })
}

/// A topic's current configs.
struct Described {
    /// Every reported config.
    all: HashMap<String, Option<String>>,
    /// Configs set on the topic itself (kept when altering, as AlterConfigs resets the others).
    dynamic: Vec<(String, String)>,
}

async fn describe(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[&TopicDecl],
) -> anyhow::Result<HashMap<String, Described>> {
    let mut out = HashMap::new();
    if topics.is_empty() {
        return Ok(out);
    }
    let specifiers: Vec<ResourceSpecifier> = topics
        .iter()
        .map(|d| ResourceSpecifier::Topic(&d.name))
        .collect();
    let results = admin
        .describe_configs(&specifiers, &admin_options())
        .await
        .context("DescribeConfigs failed: cannot compare topic configs with the broker")?;
    for (decl, result) in topics.iter().zip(results) {
        let resource = result
            .map_err(|code| anyhow!("DescribeConfigs for topic `{}` failed: {code}", decl.name))?;
        let all = resource
            .entries
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect();
        let dynamic = resource
            .entries
            .iter()
            .filter(|e| e.source == ConfigSource::DynamicTopic && !e.is_read_only)
            .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
            .collect();
        out.insert(decl.name.clone(), Described { all, dynamic });
    }
    Ok(out)
}

fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(30)))
        .operation_timeout(Some(Duration::from_secs(30)))
}

async fn execute(
    admin: &AdminClient<DefaultClientContext>,
    decls: &[TopicDecl],
    changes: &[Change],
    described: &HashMap<String, Described>,
) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    let mut wait_for: Vec<(String, i32)> = Vec::new();

    // 1. Create missing topics.
    let creates: Vec<&TopicDecl> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Create { name, .. } => decls.iter().find(|d| &d.name == name),
            _ => None,
        })
        .collect();
    if !creates.is_empty() {
        let configs: Vec<BTreeMap<String, String>> = creates.iter().map(|d| d.configs()).collect();
        let new_topics: Vec<NewTopic> = creates
            .iter()
            .zip(&configs)
            .map(|(d, configs)| {
                configs.iter().fold(
                    NewTopic::new(
                        &d.name,
                        d.partitions,
                        TopicReplication::Fixed(d.replication_factor),
                    ),
                    |t, (k, v)| t.set(k, v),
                )
            })
            .collect();
        let results = admin
            .create_topics(&new_topics, &admin_options())
            .await
            .context("CreateTopics request failed")?;
        for (decl, result) in creates.iter().zip(results) {
            match result {
                Ok(_) => wait_for.push((decl.name.clone(), decl.partitions)),
                Err((topic, code)) => failures.push(format!("create {topic}: {code}")),
            }
        }
    }

    // 2. Grow partition counts.
    let grows: Vec<NewPartitions> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Grow { name, to, .. } => Some(NewPartitions::new(name, *to as usize)),
            _ => None,
        })
        .collect();
    if !grows.is_empty() {
        let results = admin
            .create_partitions(&grows, &admin_options())
            .await
            .context("CreatePartitions request failed")?;
        for (grow, result) in grows.iter().zip(results) {
            match result {
                Ok(_) => {
                    wait_for.push((grow.topic_name.to_string(), grow.new_partition_count as i32))
                }
                Err((topic, code)) => failures.push(format!("grow partitions of {topic}: {code}")),
            }
        }
    }

    // 3. Alter configs. AlterConfigs replaces the topic's whole dynamic config, so the configs
    //    already set on the topic are sent along with the changed ones.
    let mut alters: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
    for change in changes {
        if let Change::Config { name, key, to, .. } = change {
            let entry = alters.entry(name.as_str()).or_insert_with(|| {
                described
                    .get(name)
                    .map(|d| d.dynamic.iter().cloned().collect())
                    .unwrap_or_default()
            });
            entry.insert(key.clone(), to.clone());
        }
    }
    if !alters.is_empty() {
        let requests: Vec<AlterConfig> = alters
            .iter()
            .map(|(name, entries)| {
                entries.iter().fold(
                    AlterConfig::new(ResourceSpecifier::Topic(name)),
                    |a, (k, v)| a.set(k, v),
                )
            })
            .collect();
        let results = admin
            .alter_configs(&requests, &admin_options())
            .await
            .context("AlterConfigs request failed")?;
        for (name, result) in alters.keys().zip(results) {
            if let Err((_, code)) = result {
                failures.push(format!("alter configs of {name}: {code}"));
            }
        }
    }

    // Wait until the metadata shows the new topics and partitions, so the next command (or a
    // second `apply`) sees them.
    if !wait_for.is_empty() {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let metadata = admin.inner().fetch_metadata(None, METADATA_TIMEOUT)?;
            let lagging: Vec<&str> = wait_for
                .iter()
                .filter(|(name, partitions)| {
                    !metadata
                        .topics()
                        .iter()
                        .any(|t| t.name() == name && t.partitions().len() as i32 >= *partitions)
                })
                .map(|(name, _)| name.as_str())
                .collect();
            if lagging.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                failures.push(format!(
                    "the broker accepted the change but its metadata does not show it after 15 s: {}",
                    lagging.join(", ")
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    if failures.is_empty() {
        Ok(())
    } else {
        bail!(
            "the broker refused some changes:\n  {}",
            failures.join("\n  ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn decl(text: &str) -> TopicDecl {
        reflex_core::topics::parse(Path::new("t.toml"), text)
            .unwrap()
            .pop()
            .unwrap()
    }

    fn actual(partitions: i32, retention: Option<&str>) -> Actual {
        Actual {
            partitions,
            replication_factor: 1,
            configs: [("retention.ms".to_string(), retention.map(str::to_string))]
                .into_iter()
                .collect(),
        }
    }

    const DECL: &str = "[[topic]]\nname='reflex.x'\npartitions=6\nretention_ms=2000\n";

    #[test]
    fn missing_topic_is_created_with_its_configs() {
        let changes = plan_topic(&decl(DECL), None);
        assert_eq!(changes.len(), 1);
        assert_eq!(
            changes[0].to_string(),
            "+ create reflex.x (partitions=6, retention.ms=2000)"
        );
    }

    #[test]
    fn growth_and_config_changes_are_planned() {
        let changes = plan_topic(&decl(DECL), Some(&actual(3, Some("1000"))));
        let lines: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![
                "~ reflex.x partitions 3 -> 6",
                "~ reflex.x retention.ms 1000 -> 2000"
            ]
        );
    }

    #[test]
    fn matching_topic_is_unchanged_and_shrink_is_refused() {
        let changes = plan_topic(&decl(DECL), Some(&actual(6, Some("2000"))));
        assert_eq!(
            changes,
            vec![Change::Unchanged {
                name: "reflex.x".into()
            }]
        );
        let changes = plan_topic(&decl(DECL), Some(&actual(8, Some("2000"))));
        assert!(
            matches!(&changes[0], Change::Refused { message, .. } if message.contains("never shrink"))
        );
        assert!(changes[0]
            .to_string()
            .starts_with("! reflex.x partitions 8 -> 6 refused"));
    }

    #[test]
    fn topic_names_are_checked() {
        assert!(check_name("reflex.events.k8s").is_ok());
        assert!(check_name("bad name").unwrap_err().contains("` `"));
        assert!(check_name("..").is_err());
    }
}
