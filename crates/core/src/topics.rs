//! Topic declarations: every `*.toml` file under `topics/` holds `[[topic]]` tables.
//! `reflexctl topics apply` creates or updates the broker to match them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// Suffix of the placeholder dead-letter topic for a source topic.
pub const DEAD_LETTER_SUFFIX: &str = ".dlq";
/// Where the reprocessor puts a dead letter after its last redelivery attempt.
pub const EXHAUSTED_SUFFIX: &str = ".exhausted";

#[derive(Debug, Error)]
pub enum TopicsError {
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicFile {
    #[serde(default)]
    topic: Vec<TopicDecl>,
}

/// One declared topic.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TopicDecl {
    /// Topic name.
    pub name: String,
    /// What flows through it, for people reading the declaration.
    #[serde(default)]
    pub description: String,
    /// Partition count; the most replicas that can share the work. Partitions can grow, never shrink.
    pub partitions: i32,
    /// Replication factor (1 for local stacks, 3 in production).
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// `retention.ms`; -1 keeps forever.
    #[serde(default)]
    pub retention_ms: Option<i64>,
    /// `cleanup.policy`: `delete` or `compact`.
    #[serde(default)]
    pub cleanup_policy: Option<String>,
    /// Subject of the key schema, if keys are Avro (keys are usually plain strings).
    #[serde(default)]
    pub key_subject: Option<String>,
    /// Subject of the value schema (TopicNameStrategy: `<topic>-value`).
    #[serde(default)]
    pub value_subject: Option<String>,
    /// Schema file (relative to the repository root) registered under `value_subject`.
    #[serde(default)]
    pub value_schema: Option<String>,
    /// Also declare `<name>.dlq` (dead letters) and `<name>.exhausted` (records the reprocessor
    /// gave up redelivering) with the same partitions and retention.
    #[serde(default)]
    pub dead_letter: bool,
    /// Any other topic configs, passed to the broker as they are.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

fn default_replication() -> i32 {
    1
}

impl TopicDecl {
    /// The broker-side configs this declaration sets.
    pub fn configs(&self) -> BTreeMap<String, String> {
        let mut configs = self.config.clone();
        if let Some(ms) = self.retention_ms {
            configs.insert("retention.ms".into(), ms.to_string());
        }
        if let Some(policy) = &self.cleanup_policy {
            configs.insert("cleanup.policy".into(), policy.clone());
        }
        configs
    }

    fn dead_letter_decl(&self, suffix: &str, what: &str) -> TopicDecl {
        TopicDecl {
            name: format!("{}{suffix}", self.name),
            description: format!("{what} of {}", self.name),
            dead_letter: false,
            value_subject: None,
            value_schema: None,
            key_subject: None,
            ..self.clone()
        }
    }
}

/// Parses one declaration file's text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Vec<TopicDecl>, TopicsError> {
    let file: TopicFile = toml::from_str(text).map_err(|e| TopicsError::Invalid {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    for decl in file.topic {
        if decl.name.is_empty() || decl.partitions < 1 {
            return Err(TopicsError::Invalid {
                path: path.to_path_buf(),
                message: format!(
                    "topic `{}` needs a non-empty name and partitions >= 1",
                    decl.name
                ),
            });
        }
        if decl.dead_letter {
            out.push(decl.dead_letter_decl(DEAD_LETTER_SUFFIX, "dead letters"));
            out.push(
                decl.dead_letter_decl(EXHAUSTED_SUFFIX, "records whose redeliveries are exhausted"),
            );
        }
        out.push(decl);
    }
    Ok(out)
}

/// Loads every `*.toml` under `dir`, sorted by file name; duplicate names are an error.
pub fn load_dir(dir: &Path) -> Result<Vec<TopicDecl>, TopicsError> {
    let io = |error| TopicsError::Io {
        path: dir.to_path_buf(),
        error,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut all: Vec<TopicDecl> = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|error| TopicsError::Io {
            path: path.clone(),
            error,
        })?;
        for decl in parse(&path, &text)? {
            if all.iter().any(|d| d.name == decl.name) {
                return Err(TopicsError::Invalid {
                    path,
                    message: format!("topic `{}` is declared twice", decl.name),
                });
            }
            all.push(decl);
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_expands_dead_letter() {
        let text = r#"
            [[topic]]
            name = "events"
            partitions = 3
            retention_ms = 1000
            dead_letter = true
            [topic.config]
            "min.insync.replicas" = "1"
        "#;
        let decls = parse(Path::new("t.toml"), text).unwrap();
        assert_eq!(decls.len(), 3);
        assert_eq!(decls[0].name, "events.dlq");
        assert_eq!(decls[1].name, "events.exhausted");
        assert_eq!(decls[2].configs()["retention.ms"], "1000");
        assert_eq!(decls[2].configs()["min.insync.replicas"], "1");
    }

    #[test]
    fn unknown_fields_and_bad_partitions_are_rejected_with_the_file() {
        let err = parse(
            Path::new("t.toml"),
            "[[topic]]\nname='x'\npartitions=1\nretention=5\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("t.toml") && err.contains("retention"), "{err}");
        let err = parse(Path::new("t.toml"), "[[topic]]\nname='x'\npartitions=0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("partitions"), "{err}");
    }
}
