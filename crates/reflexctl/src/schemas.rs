//! `reflexctl schemas register|check`: the declared Avro schemas against the Schema Registry.
//!
//! Every declaration with both `value_subject` and `value_schema` names a schema file (relative
//! to `--root`) and the subject it belongs to. `--subject S --file F` handles one schema instead.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use reflex_core::avro::parse_schema;
use reflex_core::registry::RegistryClient;
use reflex_core::topics::load_dir;
use serde::Deserialize;

use crate::{check_failed, Global};

const REGISTER_ABOUT: &str = "Register the Avro schema of every declaration that has both \
`value_schema` and `value_subject` (paths relative to --root), printing subject, id and \
version. Registering a schema the subject already has is a no-op that prints the existing id \
and version.\n\n\
Examples:\n  \
reflexctl schemas register\n  \
reflexctl schemas register --subject reflex.events.k8s-value --file avro/k8s_pod_event.avsc";

const CHECK_ABOUT: &str = "Check each declared schema file for compatibility with the latest \
version of its subject, under the subject's compatibility level. Prints the registry's reasons \
for each incompatible schema and exits 1 if any is incompatible. A subject with no versions yet \
is compatible.\n\n\
Examples:\n  \
reflexctl schemas check\n  \
reflexctl schemas check --subject reflex.events.k8s-value --file avro/k8s_pod_event.avsc";

#[derive(Debug, Subcommand)]
pub enum SchemasCommand {
    /// Register the declared schemas (or one schema) under their subjects.
    #[command(long_about = REGISTER_ABOUT)]
    Register(SchemaArgs),
    /// Check the declared schemas (or one schema) against their subjects' latest versions.
    #[command(long_about = CHECK_ABOUT)]
    Check(SchemaArgs),
}

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Directory of `*.toml` topic declarations.
    #[arg(long, default_value = "topics")]
    pub dir: PathBuf,
    /// Root the declarations' `value_schema` paths are relative to.
    #[arg(long, default_value = ".")]
    pub root: PathBuf,
    /// One subject to handle instead of the declarations (needs --file).
    #[arg(long, requires = "file")]
    pub subject: Option<String>,
    /// The schema file for --subject.
    #[arg(long, requires = "subject")]
    pub file: Option<PathBuf>,
}

/// One schema file and the subject it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub subject: String,
    pub file: PathBuf,
    /// Where it was declared, for messages.
    pub origin: String,
}

/// The schemas to handle: the single `--subject/--file` pair, or every declaration's.
pub fn targets(args: &SchemaArgs) -> anyhow::Result<Vec<Target>> {
    if let (Some(subject), Some(file)) = (&args.subject, &args.file) {
        return Ok(vec![Target {
            subject: subject.clone(),
            file: file.clone(),
            origin: "--file".into(),
        }]);
    }
    let decls = load_dir(&args.dir)
        // TopicsError's message already holds its cause; keep it once.
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| {
            format!(
                "cannot load topic declarations from {} (pass --dir, or --subject and --file)",
                args.dir.display()
            )
        })?;
    let mut out = Vec::new();
    for decl in decls {
        match (decl.value_subject, decl.value_schema) {
            (Some(subject), Some(schema)) => out.push(Target {
                subject,
                file: if args.root == Path::new(".") {
                    PathBuf::from(&schema)
                } else {
                    args.root.join(&schema)
                },
                origin: format!("topic `{}` in {}", decl.name, args.dir.display()),
            }),
            (Some(subject), None) => bail!(
                "topic `{}` in {} sets value_subject = \"{subject}\" but no value_schema: add the \
                 schema file's path (relative to --root)",
                decl.name,
                args.dir.display()
            ),
            (None, Some(schema)) => bail!(
                "topic `{}` in {} sets value_schema = \"{schema}\" but no value_subject: add \
                 value_subject = \"{}-value\"",
                decl.name,
                args.dir.display(),
                decl.name
            ),
            (None, None) => {}
        }
    }
    if out.is_empty() {
        bail!(
            "no declaration in {}/*.toml sets value_subject and value_schema: nothing to do \
             (or pass --subject and --file)",
            args.dir.display()
        );
    }
    Ok(out)
}

/// Reads a schema file and checks it parses as Avro, naming the file on failure.
pub fn read_schema(target: &Target) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(&target.file).with_context(|| {
        format!(
            "cannot read schema file {} (from {}; paths are relative to --root)",
            target.file.display(),
            target.origin
        )
    })?;
    parse_schema(&text).with_context(|| {
        format!(
            "{} (subject {}) is not a valid Avro schema",
            target.file.display(),
            target.subject
        )
    })?;
    Ok(text)
}

pub async fn run(global: &Global, cmd: SchemasCommand) -> anyhow::Result<ExitCode> {
    let registry = global.registry();
    match cmd {
        SchemasCommand::Register(args) => register(&registry, &args).await,
        SchemasCommand::Check(args) => check(&registry, &args).await,
    }
}

async fn register(registry: &RegistryClient, args: &SchemaArgs) -> anyhow::Result<ExitCode> {
    let targets = targets(args)?;
    // Read and parse every file before registering any, so a typo registers nothing.
    let texts = targets
        .iter()
        .map(read_schema)
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (target, text) in targets.iter().zip(&texts) {
        let id = registry
            .register(&target.subject, text)
            .await
            .with_context(|| {
                format!(
                    "cannot register {} under subject {} (run `reflexctl schemas check` to see \
                 whether it is compatible)",
                    target.file.display(),
                    target.subject
                )
            })?;
        let version = version_of(registry, &target.subject, id, text).await;
        println!(
            "{} id={id} version={} {}",
            target.subject,
            version.map_or_else(|| "?".to_string(), |v| v.to_string()),
            target.file.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The subject version holding schema `id`: the latest if it matches, else a lookup.
async fn version_of(registry: &RegistryClient, subject: &str, id: u32, text: &str) -> Option<i32> {
    if let Ok(latest) = registry.latest(subject).await {
        if latest.id == id {
            return Some(latest.version);
        }
    }
    lookup_version(registry.url(), subject, text).await
}

/// `POST /subjects/{subject}`: the version under which the subject holds `schema`.
/// (`RegistryClient` has no lookup call yet.)
async fn lookup_version(base: &str, subject: &str, schema: &str) -> Option<i32> {
    #[derive(Deserialize)]
    struct Found {
        version: i32,
    }
    let body = serde_json::json!({ "schema": schema, "schemaType": "AVRO" }).to_string();
    let response = reqwest::Client::new()
        .post(format!("{base}/subjects/{subject}"))
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/vnd.schemaregistry.v1+json",
        )
        .body(body)
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json::<Found>().await.ok().map(|f| f.version)
}

async fn check(registry: &RegistryClient, args: &SchemaArgs) -> anyhow::Result<ExitCode> {
    let targets = targets(args)?;
    let texts = targets
        .iter()
        .map(read_schema)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut incompatible = 0;
    for (target, text) in targets.iter().zip(&texts) {
        let (ok, messages) = registry
            .check_compatibility(&target.subject, text)
            .await
            .with_context(|| {
                format!(
                    "cannot check {} against subject {}",
                    target.file.display(),
                    target.subject
                )
            })?;
        if ok {
            println!("{} compatible {}", target.subject, target.file.display());
        } else {
            incompatible += 1;
            println!("{} INCOMPATIBLE {}", target.subject, target.file.display());
            if messages.is_empty() {
                println!("  (the registry gave no reason)");
            }
            for message in messages {
                println!("  {message}");
            }
        }
    }
    if incompatible > 0 {
        eprintln!(
            "error: {incompatible} schema(s) incompatible with their subject's latest version: \
             make the change compatible (e.g. give new fields a default) or use a new subject"
        );
        return Ok(check_failed());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_declarations_name_existing_schema_files() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let args = SchemaArgs {
            dir: root.join("topics"),
            root: root.clone(),
            subject: None,
            file: None,
        };
        let targets = targets(&args).unwrap();
        assert!(targets
            .iter()
            .any(|t| t.subject == "reflex.events.k8s-value"));
        for target in &targets {
            read_schema(target).unwrap();
        }
    }

    #[test]
    fn missing_schema_file_is_named() {
        let target = Target {
            subject: "s-value".into(),
            file: PathBuf::from("/nonexistent/x.avsc"),
            origin: "--file".into(),
        };
        let err = format!("{:#}", read_schema(&target).unwrap_err());
        assert!(err.contains("/nonexistent/x.avsc"), "{err}");
    }
}
