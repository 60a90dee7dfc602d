//! A scenario pack (`examples/<pack>`): `pack.toml` (how its events are published),
//! `topics/*.toml`, the worker configs `router.toml`, `enricher.toml`, `actor.toml` and an
//! optional `reprocessor.toml`, and recorded events (`[events] file`).
//!
//! The worker configs are read with the workers' own loaders and types (defaults, the file,
//! `REFLEX_*`), so group ids, input topics and action settings are what the workers will use.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reflex_actor::ActorSettings;
use reflex_core::topics::TopicDecl;
use reflex_enricher::EnricherSettings;
use reflex_reprocessor::ReprocessorSettings;
use reflex_router::RouterSettings;
use reflex_runtime::config::{KafkaSettings, StageSettings, WorkerConfig};
use serde::Deserialize;
use serde_json::Value as Json;

use crate::HarnessError;

/// The pipeline's stages, in the order events flow through them.
pub const STAGES: [&str; 4] = ["router", "enricher", "actor", "reprocessor"];

#[derive(Debug, Deserialize)]
struct PackFile {
    events: PackEvents,
}

#[derive(Debug, Deserialize)]
struct PackEvents {
    topic: String,
    #[serde(rename = "type", default)]
    event_type: String,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    key_field: Option<String>,
    #[serde(default)]
    file: Option<PathBuf>,
}

/// One action of the pack's actor, as far as the checks need it.
#[derive(Debug, Clone)]
pub struct ActionInfo {
    pub name: String,
    pub kind: String,
    /// 0: no cap.
    pub blast_radius_max: u64,
    pub blast_radius_window: Duration,
}

/// One stage's consumer group and inputs; `config` is the pack's file for it, if any.
#[derive(Debug, Clone)]
pub struct StageInfo {
    pub config: Option<PathBuf>,
    pub group: String,
    pub inputs: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Pack {
    pub dir: PathBuf,
    pub name: String,
    pub topic: String,
    pub event_type: String,
    pub source: String,
    pub key_field: Option<String>,
    /// Recorded events, one JSON document each.
    pub events_file: PathBuf,
    pub topics: Vec<TopicDecl>,
    pub value_subject: String,
    pub outcomes_topic: String,
    pub held_topic: String,
    pub actions: Vec<ActionInfo>,
    /// Rules with `throttle.once_within`: each fires at most once per group per window, a
    /// bound the main job checks per target.
    pub throttles: Vec<(String, std::time::Duration)>,
    /// Every stateful rule's name (its firings and suppressions are shown).
    pub windowed_rules: Vec<String>,
    /// Stages in [`STAGES`] order (the reprocessor always: without a file of its own it reads
    /// the pack's dead-letter topics in a group named after the pack).
    pub stages: Vec<(String, StageInfo)>,
}

fn pack_err(path: &Path, message: impl std::fmt::Display) -> HarnessError {
    HarnessError::Pack {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

impl Pack {
    pub fn load(dir: &Path) -> Result<Self, HarnessError> {
        let pack_toml = dir.join("pack.toml");
        let text = std::fs::read_to_string(&pack_toml).map_err(|e| {
            pack_err(
                &pack_toml,
                format!("{e} (--pack must name a scenario pack, see examples/)"),
            )
        })?;
        let file: PackFile = toml::from_str(&text).map_err(|e| pack_err(&pack_toml, e))?;
        let ev = file.events;
        let topics_dir = dir.join("topics");
        let topics =
            reflex_core::topics::load_dir(&topics_dir).map_err(|e| pack_err(&topics_dir, e))?;
        let value_subject = topics
            .iter()
            .find(|t| t.name == ev.topic)
            .and_then(|t| t.value_subject.clone())
            .unwrap_or_else(|| format!("{}-value", ev.topic));

        let config = |name: &str| {
            let p = dir.join(format!("{name}.toml"));
            p.exists().then_some(p)
        };
        // Each stage's file loads as the worker loads it (typed, every field checked), without
        // this process's environment: the pack as written.
        fn load_stage<S: StageSettings>(path: &Path) -> Result<WorkerConfig<S>, HarnessError> {
            WorkerConfig::<S>::load_with(Some(path), std::iter::empty())
                .map_err(|e| pack_err(path, e))
        }
        let required = |name: &str| {
            config(name).ok_or_else(|| pack_err(&dir.join(format!("{name}.toml")), "missing"))
        };
        let stage_info = |path: PathBuf, kafka: &KafkaSettings| StageInfo {
            config: Some(path),
            group: kafka.group_id.clone(),
            inputs: kafka.input_topics.clone(),
        };
        let router_path = required("router")?;
        let router_config = load_stage::<RouterSettings>(&router_path)?;
        let router = stage_info(router_path.clone(), &router_config.kafka);
        let rules_file = &router_config.stage.rules_file;
        let rules =
            reflex_router::rules::RuleSet::load(rules_file).map_err(|e| pack_err(rules_file, e))?;
        let throttles = rules
            .rules
            .iter()
            .filter_map(|r| match r.stateful.as_ref()?.kind {
                reflex_router::rules::Kind::OnceWithin(d) => Some((r.name.clone(), d)),
                _ => None,
            })
            .collect();
        let windowed_rules = rules
            .rules
            .iter()
            .filter(|r| r.stateful.is_some())
            .map(|r| r.name.clone())
            .collect();
        let enricher_path = required("enricher")?;
        let enricher = stage_info(
            enricher_path.clone(),
            &load_stage::<EnricherSettings>(&enricher_path)?.kafka,
        );
        let actor_path = required("actor")?;
        let actor = load_stage::<ActorSettings>(&actor_path)?;
        let dead_letters: Vec<String> = topics
            .iter()
            .filter(|t| t.dead_letter)
            .map(|t| format!("{}.dlq", t.name))
            .collect();
        let reprocessor = match config("reprocessor") {
            Some(path) => {
                let r = load_stage::<ReprocessorSettings>(&path)?;
                StageInfo {
                    config: Some(path),
                    group: r.kafka.group_id,
                    inputs: dead_letters.clone(),
                }
            }
            None => StageInfo {
                config: None,
                // "examples-crash-loop-router" → "examples-crash-loop-reprocessor".
                group: format!(
                    "{}-reprocessor",
                    router
                        .group
                        .rsplit_once('-')
                        .map_or(router.group.as_str(), |(base, _)| base)
                ),
                inputs: dead_letters,
            },
        };
        let actions = actor
            .stage
            .action
            .iter()
            .map(|a| ActionInfo {
                name: a.name.clone(),
                kind: a.kind.clone(),
                blast_radius_max: a.blast_radius_max,
                blast_radius_window: a.blast_radius_window,
            })
            .collect();
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        let events_file = dir.join(ev.file.unwrap_or_else(|| PathBuf::from("events.jsonl")));
        Ok(Self {
            dir: dir.to_path_buf(),
            name,
            topic: ev.topic,
            event_type: ev.event_type,
            source: ev.source.unwrap_or_else(|| "/reflex/main-job".into()),
            key_field: ev.key_field,
            events_file,
            topics,
            value_subject,
            outcomes_topic: actor.stage.outcomes_topic.clone(),
            held_topic: actor.stage.held_topic.clone(),
            actions,
            throttles,
            windowed_rules,
            stages: vec![
                ("router".into(), router),
                ("enricher".into(), enricher),
                (
                    "actor".into(),
                    StageInfo {
                        config: Some(actor_path),
                        group: actor.kafka.group_id.clone(),
                        inputs: actor.kafka.input_topics.clone(),
                    },
                ),
                ("reprocessor".into(), reprocessor),
            ],
        })
    }

    pub fn stage(&self, stage: &str) -> Option<&StageInfo> {
        self.stages.iter().find(|(n, _)| n == stage).map(|(_, s)| s)
    }

    /// `<topic>.dlq` of every declared topic with `dead_letter = true`.
    pub fn dead_letter_topics(&self) -> Vec<String> {
        self.stage("reprocessor")
            .map(|s| s.inputs.clone())
            .unwrap_or_default()
    }

    pub fn action(&self, name: &str) -> Option<&ActionInfo> {
        self.actions.iter().find(|a| a.name == name)
    }

    /// The recorded events, in file order.
    pub fn recorded_events(&self) -> Result<Vec<Json>, HarnessError> {
        let text = std::fs::read_to_string(&self.events_file)
            .map_err(|e| pack_err(&self.events_file, e))?;
        let docs =
            reflexctl::publish::parse_documents(&self.events_file.display().to_string(), &text)
                .map_err(|e| pack_err(&self.events_file, format!("{e:#}")))?;
        Ok(docs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples(pack: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples")
            .join(pack)
    }

    #[test]
    fn reads_the_crash_loop_pack_as_its_workers_do() {
        // The configs name files relative to the repository root, as the workers read them.
        std::env::set_current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")).unwrap();
        let p = Pack::load(&examples("crash-loop")).unwrap();
        assert_eq!(p.topic, "examples.crash-loop.events");
        assert_eq!(p.key_field.as_deref(), Some("pod"));
        assert_eq!(p.outcomes_topic, "examples.crash-loop.outcomes");
        let restart = p.action("restart-pod").unwrap();
        assert_eq!(restart.kind, "http");
        assert_eq!(restart.blast_radius_max, 3);
        assert_eq!(restart.blast_radius_window, Duration::from_secs(600));
        assert_eq!(p.stage("actor").unwrap().group, "examples-crash-loop-actor");
        assert_eq!(
            p.stage("actor").unwrap().inputs,
            ["examples.crash-loop.requests"]
        );
        assert_eq!(
            p.stage("reprocessor").unwrap().group,
            "examples-crash-loop-reprocessor"
        );
        assert!(p
            .dead_letter_topics()
            .contains(&"examples.crash-loop.events.dlq".to_string()));
        assert_eq!(p.recorded_events().unwrap().len(), 10);
        assert_eq!(
            p.throttles,
            vec![
                (
                    "crashloop-restart".to_string(),
                    std::time::Duration::from_secs(600)
                ),
                (
                    "crashloop-escalate".to_string(),
                    std::time::Duration::from_secs(1800)
                ),
            ]
        );
    }
}
