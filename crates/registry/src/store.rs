//! The registry's state, its rules (ids, versions, compatibility, deletes) and its data file.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::compat::{self, Compatibility, Previous};
use crate::error::{RegistryError, StoreError};
use crate::schema::{self, AvroSchema};

/// The data file's format version.
const FORMAT: u32 = 1;

/// A version argument: a number in `1..=2^31-1`, or `latest` (also spelled `-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    Latest,
    Number(i32),
}

impl VersionSpec {
    /// Parses a version path segment; anything else is a 42202.
    pub fn parse(raw: &str) -> Result<Self, RegistryError> {
        if raw.eq_ignore_ascii_case("latest") || raw == "-1" {
            return Ok(VersionSpec::Latest);
        }
        match raw.parse::<i32>() {
            Ok(n) if n >= 1 => Ok(VersionSpec::Number(n)),
            _ => Err(RegistryError::InvalidVersion(raw.to_string())),
        }
    }
}

/// Which subjects or versions a listing shows (`?deleted=true`, `?deletedOnly=true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Live,
    WithDeleted,
    DeletedOnly,
}

/// One version of a subject, as the API answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: i32,
    pub id: u32,
    pub schema: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSchema {
    schema: String,
    #[serde(skip)]
    key: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct VersionEntry {
    version: i32,
    id: u32,
    #[serde(default)]
    deleted: bool,
}

fn first_id() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    format: u32,
    #[serde(default = "first_id")]
    next_id: u32,
    #[serde(default)]
    compatibility: Compatibility,
    #[serde(default)]
    subject_compatibility: BTreeMap<String, Compatibility>,
    #[serde(default)]
    schemas: BTreeMap<u32, StoredSchema>,
    /// Versions of each subject, ascending; soft-deleted ones stay (flagged) until a permanent
    /// delete.
    #[serde(default)]
    subjects: BTreeMap<String, Vec<VersionEntry>>,
    #[serde(skip)]
    by_key: HashMap<String, u32>,
}

impl State {
    fn new() -> Self {
        State {
            format: FORMAT,
            next_id: first_id(),
            compatibility: Compatibility::default(),
            subject_compatibility: BTreeMap::new(),
            schemas: BTreeMap::new(),
            subjects: BTreeMap::new(),
            by_key: HashMap::new(),
        }
    }

    /// After loading: recompute the identity keys and check that the file hangs together.
    fn rebuild(&mut self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "format {} is not the supported format {FORMAT}",
                self.format
            ));
        }
        self.by_key.clear();
        for (id, stored) in self.schemas.iter_mut() {
            let parsed = schema::parse(&stored.schema)
                .map_err(|e| format!("schema id {id} does not parse: {e}"))?;
            stored.key = parsed.key;
            self.by_key.entry(stored.key.clone()).or_insert(*id);
        }
        for (subject, versions) in self.subjects.iter_mut() {
            versions.sort_by_key(|v| v.version);
            for entry in versions.iter() {
                if !self.schemas.contains_key(&entry.id) {
                    return Err(format!(
                        "subject '{subject}' version {} uses schema id {}, which is not in the file",
                        entry.version, entry.id
                    ));
                }
            }
            if versions.windows(2).any(|w| w[0].version == w[1].version) {
                return Err(format!("subject '{subject}' has a version twice"));
            }
        }
        self.subjects.retain(|_, versions| !versions.is_empty());
        let max_id = self.schemas.keys().next_back().copied().unwrap_or(0);
        self.next_id = self.next_id.max(max_id.saturating_add(1)).max(1);
        Ok(())
    }

    fn level(&self, subject: &str) -> Compatibility {
        self.subject_compatibility
            .get(subject)
            .copied()
            .unwrap_or(self.compatibility)
    }

    /// The versions of `subject` a request sees.
    fn visible(&self, subject: &str, include_deleted: bool) -> Vec<VersionEntry> {
        self.subjects
            .get(subject)
            .map(|versions| {
                versions
                    .iter()
                    .filter(|v| include_deleted || !v.deleted)
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The visible versions of `subject`, or 40401 when there are none.
    fn require_subject(
        &self,
        subject: &str,
        include_deleted: bool,
    ) -> Result<Vec<VersionEntry>, RegistryError> {
        let versions = self.visible(subject, include_deleted);
        if versions.is_empty() {
            Err(RegistryError::SubjectNotFound(subject.to_string()))
        } else {
            Ok(versions)
        }
    }

    fn find(
        &self,
        subject: &str,
        spec: VersionSpec,
        include_deleted: bool,
    ) -> Result<VersionEntry, RegistryError> {
        let versions = self.require_subject(subject, include_deleted)?;
        let found = match spec {
            VersionSpec::Latest => versions.last().copied(),
            VersionSpec::Number(n) => versions.iter().find(|v| v.version == n).copied(),
        };
        found.ok_or_else(|| RegistryError::VersionNotFound(spec_text(spec)))
    }

    fn text(&self, id: u32) -> Result<&str, RegistryError> {
        self.schemas
            .get(&id)
            .map(|s| s.schema.as_str())
            .ok_or_else(|| RegistryError::Storage(format!("schema id {id} is missing")))
    }

    fn subject_version(
        &self,
        subject: &str,
        entry: VersionEntry,
    ) -> Result<SubjectVersion, RegistryError> {
        Ok(SubjectVersion {
            subject: subject.to_string(),
            version: entry.version,
            id: entry.id,
            schema: self.text(entry.id)?.to_string(),
        })
    }

    /// Parsed non-deleted versions of `subject`, oldest first, for compatibility checks.
    fn parsed_versions(
        &self,
        entries: &[VersionEntry],
    ) -> Result<Vec<(i32, AvroSchema)>, RegistryError> {
        entries
            .iter()
            .map(|entry| {
                let text = self.text(entry.id)?;
                let parsed = schema::parse(text).map_err(|e| {
                    RegistryError::Storage(format!("stored schema id {} is invalid: {e}", entry.id))
                })?;
                Ok((entry.version, parsed))
            })
            .collect()
    }

    fn check(
        &self,
        level: Compatibility,
        new: &AvroSchema,
        against: &[VersionEntry],
    ) -> Result<Vec<String>, RegistryError> {
        if level == Compatibility::None || against.is_empty() {
            return Ok(Vec::new());
        }
        let parsed = self.parsed_versions(against)?;
        let previous: Vec<Previous<'_>> = parsed
            .iter()
            .map(|(version, s)| Previous {
                version: *version,
                schema: &s.parsed,
                text: &s.text,
            })
            .collect();
        Ok(compat::check(level, &new.parsed, &previous))
    }

    /// Removes schemas that no version (deleted or not) refers to any more.
    fn collect_garbage(&mut self) {
        let used: std::collections::HashSet<u32> = self
            .subjects
            .values()
            .flat_map(|versions| versions.iter().map(|v| v.id))
            .collect();
        self.schemas.retain(|id, _| used.contains(id));
        self.by_key.retain(|_, id| used.contains(id));
    }
}

fn spec_text(spec: VersionSpec) -> String {
    match spec {
        VersionSpec::Latest => "latest".to_string(),
        VersionSpec::Number(n) => n.to_string(),
    }
}

/// The registry's state behind one lock, optionally persisted to a JSON data file that is
/// rewritten atomically (temporary file in the same directory, then rename) on every change.
/// Cheap to clone (shared).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    path: Option<PathBuf>,
}

impl Store {
    /// A registry kept in memory only.
    pub fn in_memory() -> Self {
        Self::with(State::new(), None)
    }

    /// A registry persisted to `path`: loaded from it when it exists (an empty file counts as
    /// a new registry), created on the first change otherwise.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        let state = match std::fs::read(&path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => State::new(),
            Ok(bytes) => {
                let mut state: State =
                    serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                        path: path.clone(),
                        source,
                    })?;
                state
                    .rebuild()
                    .map_err(|message| StoreError::Inconsistent {
                        path: path.clone(),
                        message,
                    })?;
                state
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::new(),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        Ok(Self::with(state, Some(path)))
    }

    fn with(state: State, path: Option<PathBuf>) -> Self {
        Store {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                path,
            }),
        }
    }

    /// The data file, if any.
    pub fn data_file(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// Counts for a start-up log line: (schemas, subjects).
    pub async fn size(&self) -> (usize, usize) {
        let state = self.inner.state.lock().await;
        (state.schemas.len(), state.subjects.len())
    }

    /// Runs `change` on a copy of the state; when it reports a change, persists the copy and
    /// only then makes it the state, so a failed write leaves the registry as it was.
    async fn mutate<T>(
        &self,
        change: impl FnOnce(&mut State) -> Result<(T, bool), RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut state = self.inner.state.lock().await;
        let mut next = state.clone();
        let (value, changed) = change(&mut next)?;
        if changed {
            if let Some(path) = &self.inner.path {
                let bytes = serde_json::to_vec_pretty(&next)
                    .map_err(|e| RegistryError::Storage(e.to_string()))?;
                let path = path.clone();
                tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
                    .await
                    .map_err(|e| RegistryError::Storage(e.to_string()))?
                    .map_err(|e| RegistryError::Storage(e.to_string()))?;
            }
            *state = next;
        }
        Ok(value)
    }

    /// The schema text for a global id.
    pub async fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        let state = self.inner.state.lock().await;
        state
            .schemas
            .get(&id)
            .map(|s| s.schema.clone())
            .ok_or_else(|| RegistryError::SchemaIdNotFound(id.to_string()))
    }

    /// The highest id handed out so far (0 when none).
    pub async fn max_id(&self) -> u32 {
        self.inner.state.lock().await.next_id.saturating_sub(1)
    }

    /// The (subject, version) pairs that use schema `id`.
    pub async fn versions_of_id(
        &self,
        id: u32,
        include_deleted: bool,
    ) -> Result<Vec<(String, i32)>, RegistryError> {
        let state = self.inner.state.lock().await;
        if !state.schemas.contains_key(&id) {
            return Err(RegistryError::SchemaIdNotFound(id.to_string()));
        }
        Ok(state
            .subjects
            .iter()
            .flat_map(|(subject, versions)| {
                versions
                    .iter()
                    .filter(move |v| v.id == id && (include_deleted || !v.deleted))
                    .map(move |v| (subject.clone(), v.version))
            })
            .collect())
    }

    /// Subject names, sorted: those with a live version, or also soft-deleted ones, or only
    /// soft-deleted ones (no live version left).
    pub async fn subjects(&self, listing: Listing, prefix: Option<&str>) -> Vec<String> {
        let state = self.inner.state.lock().await;
        state
            .subjects
            .iter()
            .filter(|(name, versions)| {
                let live = versions.iter().any(|v| !v.deleted);
                prefix.is_none_or(|p| name.starts_with(p))
                    && match listing {
                        Listing::Live => live,
                        Listing::WithDeleted => true,
                        Listing::DeletedOnly => !live,
                    }
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Version numbers of `subject`, ascending; 40401 when it has none to show.
    pub async fn versions(
        &self,
        subject: &str,
        listing: Listing,
    ) -> Result<Vec<i32>, RegistryError> {
        let state = self.inner.state.lock().await;
        let versions = state.require_subject(subject, listing != Listing::Live)?;
        Ok(versions
            .iter()
            .filter(|v| listing != Listing::DeletedOnly || v.deleted)
            .map(|v| v.version)
            .collect())
    }

    /// One version of `subject`.
    pub async fn version(
        &self,
        subject: &str,
        spec: VersionSpec,
        include_deleted: bool,
    ) -> Result<SubjectVersion, RegistryError> {
        let state = self.inner.state.lock().await;
        let entry = state.find(subject, spec, include_deleted)?;
        state.subject_version(subject, entry)
    }

    /// Fails with 40401 unless `subject` has a visible version.
    pub async fn require_subject(
        &self,
        subject: &str,
        include_deleted: bool,
    ) -> Result<(), RegistryError> {
        let state = self.inner.state.lock().await;
        state.require_subject(subject, include_deleted).map(|_| ())
    }

    /// Registers `schema` under `subject` and returns its global id, as Confluent does: a
    /// schema already registered under the subject returns its id without a new version (and
    /// without a compatibility check); otherwise the schema must be compatible with the
    /// subject's versions under the subject's level; it reuses the id of an identical schema
    /// registered under any subject, or takes the next id.
    pub async fn register(&self, subject: &str, schema: &AvroSchema) -> Result<u32, RegistryError> {
        let (id, version, created) = self
            .mutate(|state| {
                let live = state.visible(subject, false);
                if let Some(entry) = live.iter().find(|v| {
                    state
                        .schemas
                        .get(&v.id)
                        .is_some_and(|s| s.key == schema.key)
                }) {
                    return Ok(((entry.id, entry.version, false), false));
                }
                let level = state.level(subject);
                let messages = state.check(level, schema, &live)?;
                if !messages.is_empty() {
                    return Err(RegistryError::Incompatible {
                        subject: subject.to_string(),
                        details: messages,
                    });
                }
                let id = match state.by_key.get(&schema.key) {
                    Some(id) => *id,
                    None => {
                        let id = state.next_id;
                        state.next_id = id.checked_add(1).ok_or_else(|| {
                            RegistryError::Storage("schema ids are exhausted".to_string())
                        })?;
                        state.schemas.insert(
                            id,
                            StoredSchema {
                                schema: schema.text.clone(),
                                key: schema.key.clone(),
                            },
                        );
                        state.by_key.insert(schema.key.clone(), id);
                        id
                    }
                };
                let versions = state.subjects.entry(subject.to_string()).or_default();
                let version = versions
                    .last()
                    .map(|v| v.version.saturating_add(1))
                    .unwrap_or(1);
                versions.push(VersionEntry {
                    version,
                    id,
                    deleted: false,
                });
                Ok(((id, version, true), true))
            })
            .await?;
        if created {
            tracing::info!(subject, version, id, "registered a schema version");
        }
        Ok(id)
    }

    /// The version of `subject` whose schema is `schema` (40401 / 40403 otherwise).
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &AvroSchema,
        include_deleted: bool,
    ) -> Result<SubjectVersion, RegistryError> {
        let state = self.inner.state.lock().await;
        let versions = state.require_subject(subject, include_deleted)?;
        let entry = versions
            .iter()
            .rev()
            .find(|v| {
                state
                    .schemas
                    .get(&v.id)
                    .is_some_and(|s| s.key == schema.key)
            })
            .copied()
            .ok_or(RegistryError::SchemaNotFound)?;
        state.subject_version(subject, entry)
    }

    /// Compatibility messages for `schema` against `subject` (empty means compatible): against
    /// one version (`Some`), or against what a registration would check (`None`). A subject
    /// without versions accepts anything when asked about `latest` or all versions.
    pub async fn test_compatibility(
        &self,
        subject: &str,
        schema: &AvroSchema,
        against: Option<VersionSpec>,
    ) -> Result<Vec<String>, RegistryError> {
        let state = self.inner.state.lock().await;
        let level = state.level(subject);
        let live = state.visible(subject, false);
        let previous = match against {
            None => live,
            Some(VersionSpec::Latest) => live.last().copied().into_iter().collect(),
            Some(spec) => vec![state.find(subject, spec, false)?],
        };
        state.check(level, schema, &previous)
    }

    /// The global compatibility level.
    pub async fn global_compatibility(&self) -> Compatibility {
        self.inner.state.lock().await.compatibility
    }

    pub async fn set_global_compatibility(
        &self,
        level: Compatibility,
    ) -> Result<(), RegistryError> {
        self.mutate(|state| {
            let changed = state.compatibility != level;
            state.compatibility = level;
            Ok(((), changed))
        })
        .await?;
        tracing::info!(%level, "global compatibility set");
        Ok(())
    }

    /// Back to the default (BACKWARD); returns the level it had.
    pub async fn reset_global_compatibility(&self) -> Result<Compatibility, RegistryError> {
        self.mutate(|state| {
            let old = state.compatibility;
            state.compatibility = Compatibility::default();
            Ok((old, old != state.compatibility))
        })
        .await
    }

    /// The subject-level compatibility, if one is set.
    pub async fn subject_compatibility(&self, subject: &str) -> Option<Compatibility> {
        self.inner
            .state
            .lock()
            .await
            .subject_compatibility
            .get(subject)
            .copied()
    }

    pub async fn set_subject_compatibility(
        &self,
        subject: &str,
        level: Compatibility,
    ) -> Result<(), RegistryError> {
        self.mutate(|state| {
            let old = state
                .subject_compatibility
                .insert(subject.to_string(), level);
            Ok(((), old != Some(level)))
        })
        .await?;
        tracing::info!(subject, %level, "subject compatibility set");
        Ok(())
    }

    /// Removes the subject-level compatibility; returns it (40408 when there was none).
    pub async fn delete_subject_compatibility(
        &self,
        subject: &str,
    ) -> Result<Compatibility, RegistryError> {
        self.mutate(|state| match state.subject_compatibility.remove(subject) {
            Some(old) => Ok((old, true)),
            None => Err(RegistryError::SubjectConfigNotFound(subject.to_string())),
        })
        .await
    }

    /// Deletes a subject: soft (its versions are hidden, their numbers are not reused) or,
    /// once soft-deleted, permanent (with its subject-level config). Returns the versions.
    pub async fn delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<Vec<i32>, RegistryError> {
        let deleted = self
            .mutate(|state| {
                let Some(versions) = state.subjects.get_mut(subject) else {
                    return Err(RegistryError::SubjectNotFound(subject.to_string()));
                };
                let live: Vec<i32> = versions
                    .iter()
                    .filter(|v| !v.deleted)
                    .map(|v| v.version)
                    .collect();
                if permanent {
                    if !live.is_empty() {
                        return Err(RegistryError::SubjectNotSoftDeleted(subject.to_string()));
                    }
                    let all = versions.iter().map(|v| v.version).collect();
                    state.subjects.remove(subject);
                    state.subject_compatibility.remove(subject);
                    state.collect_garbage();
                    Ok((all, true))
                } else {
                    if live.is_empty() {
                        return Err(RegistryError::SubjectSoftDeleted(subject.to_string()));
                    }
                    for v in versions.iter_mut() {
                        v.deleted = true;
                    }
                    Ok((live, true))
                }
            })
            .await?;
        tracing::info!(subject, permanent, versions = ?deleted, "deleted a subject");
        Ok(deleted)
    }

    /// Deletes one version: soft, or (once soft-deleted) permanent. Returns its number.
    pub async fn delete_version(
        &self,
        subject: &str,
        spec: VersionSpec,
        permanent: bool,
    ) -> Result<i32, RegistryError> {
        let version = self
            .mutate(|state| {
                // `latest` means the latest live version for a soft delete.
                let entry = state.find(subject, spec, permanent || spec != VersionSpec::Latest)?;
                if !permanent && entry.deleted {
                    return Err(RegistryError::VersionSoftDeleted {
                        subject: subject.to_string(),
                        version: entry.version,
                    });
                }
                let Some(versions) = state.subjects.get_mut(subject) else {
                    return Err(RegistryError::SubjectNotFound(subject.to_string()));
                };
                if permanent {
                    if !entry.deleted {
                        return Err(RegistryError::VersionNotSoftDeleted {
                            subject: subject.to_string(),
                            version: entry.version,
                        });
                    }
                    versions.retain(|v| v.version != entry.version);
                    if versions.is_empty() {
                        state.subjects.remove(subject);
                    }
                    state.collect_garbage();
                } else {
                    for v in versions.iter_mut().filter(|v| v.version == entry.version) {
                        v.deleted = true;
                    }
                }
                Ok((entry.version, true))
            })
            .await?;
        tracing::info!(subject, version, permanent, "deleted a subject version");
        Ok(version)
    }
}

/// Writes `bytes` to a temporary file next to `path`, syncs it and renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let fail = |source| StoreError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(fail)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "registry.json".to_string());
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(source));
    }
    // Make the rename itself durable; not every platform lets a directory be synced.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
