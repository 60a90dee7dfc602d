//! The enricher: adds context to routed events and binds them to action requests.
//!
//! For every event it checks the CloudEvents envelope (`ce_specversion`, `ce_id`, `ce_source`,
//! `ce_type`), the Confluent framing and the schema id, decodes the Avro payload, runs the
//! configured [`lookup`]s concurrently (Redis `HGETALL`, a static file table, HTTP `GET` with a
//! TTL cache) and then, for each [`spec::Binding`] that selects the event (by `ce_type` and/or
//! the router's `reflex-rule` header), renders its templates into one
//! [`ActionRequest`](reflex_core::actions::ActionRequest). Requests go to `enricher.output_topic`
//! as Avro in Confluent wire format (schema `avro/action_request.avsc`, registered under
//! `<output topic>-value` at start-up) with the input key, so per-key order holds downstream.
//!
//! Events the runtime hands over as a batch ([`reflex_runtime::Stage::process_batch`]) share
//! their lookups: each distinct key is fetched once, and a Redis lookup's keys go in one
//! pipeline. Templates render from context values built once per event (no `serde_json` copy
//! per render).
//!
//! - The idempotency key is `<action>:<ce_id>`: the same for every retry, dead letter and replay
//!   of the event. It is also the output's `ce_id`.
//! - Headers are carried (`ce_*`, `traceparent`, `tracestate`, `reflex-hops`, ...);
//!   `ce_causationid` is the input's `ce_id`, `ce_correlationid` is kept (or set to the input's
//!   `ce_id`), `ce_type`/`ce_source` become `enricher.output_event_type`/`output_source`.
//! - A lookup that finds nothing does what its `on_missing` says: `fail` dead-letters the event
//!   (permanent, naming lookup and key), `default` uses the configured map, `skip` leaves the
//!   context out. An unreachable Redis or HTTP source (5xx, 429, timeout) is transient: retried
//!   with backoff, then dead-lettered.
//!
//! Start-up fails, naming file, line and field, when the bindings file ([`spec`]) is broken: a
//! template that does not compile, an unknown variable or lookup, a `payload.*` field missing
//! from an input topic's registered `<topic>-value` schema, an unknown kind, an invalid URL.

pub mod lookup;
pub mod spec;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use minijinja::Value;
use reflex_core::actions::{idempotency_key, ActionRequest, AvroCodec, ACTION_REQUEST_SCHEMA};
use reflex_core::headers::{ce, reflex as rh};
use reflex_core::registry::{RegistryClient, RegistryError};
use reflex_core::{ErrorClass, Headers};
use reflex_runtime::{Event, Output, RegistrySettings, Stage, StageError, StageSettings};
use serde::Deserialize;
use serde_json::{Map, Value as Json};
use tracing::{info, warn};

use crate::lookup::{Row, Source};
use crate::spec::{Binding, OnMissing, Spec, SpecError};

/// Embedded enricher defaults, layered over the runtime's.
pub const ENRICHER_DEFAULTS: &str = include_str!("defaults.toml");

/// The enricher's whole configuration: the shared sections (its input topics are the router's
/// output topics; the registry decodes payloads, validates templates and registers the output
/// schema) and `[enricher]`.
pub type EnricherConfig = reflex_runtime::WorkerConfig<EnricherSettings>;

impl StageSettings for EnricherSettings {
    const SECTION: &'static str = "enricher";
    const DEFAULTS: &'static str = ENRICHER_DEFAULTS;
    type Registry = RegistrySettings;
}

/// Enricher-specific settings (`[enricher]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnricherSettings {
    /// Path of the bindings file with the `[[lookup]]` and `[[binding]]` tables (format in the
    /// [`spec`] module docs). Relative `path`s of file lookups are relative to this file.
    pub bindings_file: PathBuf,
    /// Topic the action requests go to; their schema is registered under `<topic>-value`.
    pub output_topic: String,
    /// `ce_type` of the action request records.
    pub output_event_type: String,
    /// `ce_source` of the action request records.
    pub output_source: String,
    /// Redis for `kind = "redis"` lookups (`redis://[user:password@]host:port[/db]`, or
    /// `rediss://` for TLS). Only connected when a redis lookup is configured.
    pub redis_url: String,
    /// Longest one Redis lookup may take, connecting included; then it is a transient error.
    #[serde(deserialize_with = "reflex_runtime::duration::deserialize")]
    pub redis_timeout: Duration,
    /// Validate template `payload.*` fields against each input topic's registered
    /// `<topic>-value` schema at start-up. A topic with no registered subject is skipped with a
    /// warning.
    pub validate_against_registry: bool,
    /// Subject to validate against for an input topic whose schema is not registered under
    /// `<topic>-value`. Routed topics carry the producers' records unchanged, so their schema
    /// lives under the original topic's subject: `"reflex.routed.remediation" =
    /// "reflex.events.k8s-value"`.
    pub schema_subjects: BTreeMap<String, String>,
}

/// Why the enricher cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("cannot validate the bindings against the registry: {0}")]
    Registry(RegistryError),
    #[error("cannot register the action request schema under `{subject}`: {error}")]
    OutputSchema {
        subject: String,
        error: RegistryError,
    },
    #[error("enricher.redis_url: {0}")]
    Redis(String),
}

/// Where outputs go and how they are labelled.
#[derive(Debug, Clone)]
pub struct OutputSettings {
    pub topic: String,
    pub event_type: String,
    pub source: String,
}

/// The enricher stage.
pub struct Enricher {
    spec: Spec,
    sources: Vec<Source>,
    registry: RegistryClient,
    codec: AvroCodec<ActionRequest>,
    output: OutputSettings,
    /// `output.event_type` and `output.source` as header values (cloned per output without
    /// copying).
    output_type: Bytes,
    output_source: Bytes,
}

impl Enricher {
    /// Builds an enricher from a compiled spec and its sources (parallel to `spec.lookups`).
    pub fn new(
        spec: Spec,
        sources: Vec<Source>,
        registry: RegistryClient,
        codec: AvroCodec<ActionRequest>,
        output: OutputSettings,
    ) -> Self {
        assert_eq!(spec.lookups.len(), sources.len(), "one source per lookup");
        Self {
            spec,
            sources,
            registry,
            codec,
            output_type: Bytes::from(output.event_type.clone()),
            output_source: Bytes::from(output.source.clone()),
            output,
        }
    }

    /// Loads and validates the bindings file, connects Redis when needed and registers the
    /// output schema.
    pub async fn start(
        settings: &EnricherSettings,
        registry: RegistryClient,
        input_topics: &[String],
    ) -> Result<Self, StartError> {
        let spec = Spec::load(&settings.bindings_file)?;
        if settings.validate_against_registry {
            for topic in input_topics {
                let subject = settings
                    .schema_subjects
                    .get(topic)
                    .cloned()
                    .unwrap_or_else(|| format!("{topic}-value"));
                match registry.latest(&subject).await {
                    Ok(latest) => spec.check_schema(topic, &subject, &latest.schema)?,
                    Err(RegistryError::UnknownSubject { .. }) => warn!(
                        topic = %topic, subject = %subject,
                        "no schema registered for the input topic: template payload fields are not validated for it"
                    ),
                    Err(e) => return Err(StartError::Registry(e)),
                }
            }
        }
        let redis = if spec.uses_redis() {
            let timeout = settings.redis_timeout;
            Some(
                lookup::connect_redis(&settings.redis_url, timeout)
                    .await
                    .map_err(StartError::Redis)?,
            )
        } else {
            None
        };
        let sources = spec
            .lookups
            .iter()
            .map(|l| Source::new(&l.source, redis.as_ref()).map_err(StartError::Redis))
            .collect::<Result<Vec<_>, _>>()?;
        let subject = format!("{}-value", settings.output_topic);
        let schema_id = registry
            .register(&subject, ACTION_REQUEST_SCHEMA)
            .await
            .map_err(|error| StartError::OutputSchema {
                subject: subject.clone(),
                error,
            })?;
        let codec = AvroCodec::new(schema_id, ACTION_REQUEST_SCHEMA).map_err(|e| {
            StartError::OutputSchema {
                subject: subject.clone(),
                error: RegistryError::Unusable {
                    id: schema_id,
                    message: e.to_string(),
                },
            }
        })?;
        info!(
            file = %settings.bindings_file.display(),
            lookups = spec.lookups.len(),
            bindings = spec.bindings.len(),
            output = %settings.output_topic,
            schema_id,
            "bindings loaded"
        );
        for field in spec.raw_fields() {
            warn!(file = %settings.bindings_file.display(), template = %field, "template uses `raw`: its value is written unescaped, so whoever can publish the events behind it chooses that part of the request; keep it to trusted values (SECURITY.md, \"Escaping\")");
        }
        Ok(Self::new(
            spec,
            sources,
            registry,
            codec,
            OutputSettings {
                topic: settings.output_topic.clone(),
                event_type: settings.output_event_type.clone(),
                source: settings.output_source.clone(),
            },
        ))
    }

    /// The lookups' sources, in configuration order (e.g. for cache statistics).
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// Decodes and matches an event and renders its lookup keys; `None` when no binding
    /// selects it.
    async fn prepare<'e>(&self, event: &'e Event) -> Result<Option<Prepared<'e, '_>>, StageError> {
        event.require_cloudevent()?;
        let (framed, schema) = event.framed_value(&self.registry).await?;
        let payload = decode_payload_value(framed.datum, &schema.fast).map_err(|e| {
            StageError::new(
                ErrorClass::Poison,
                format!("value does not decode with its schema id {}: {e} (corrupt bytes, or written with another schema)", framed.schema_id),
            )
        })?;
        let ce_type = event.headers.get_str(ce::TYPE).unwrap_or_default();
        let rule = event.headers.get_str(rh::RULE);
        let selected: Vec<&Binding> = self
            .spec
            .bindings
            .iter()
            .filter(|b| b.selects(ce_type, rule))
            .collect();
        if selected.is_empty() {
            return Ok(None);
        }
        let root = EventContext::of(event, payload);
        let root_value = Value::from_object(root.clone());
        let templates = &self.spec.templates;
        let keys = self
            .spec
            .lookups
            .iter()
            .map(|l| {
                templates
                    .render(&l.key_template, &root_value)
                    .map_err(|e| StageError::permanent(format!("lookup `{}`: {e}", l.name)))
            })
            .collect();
        Ok(Some(Prepared {
            event,
            root,
            selected,
            keys,
        }))
    }

    /// Runs the lookups of many prepared events: per lookup, each distinct key once (a Redis
    /// lookup's keys in one pipeline), the lookups concurrently. Answers are per lookup, by key.
    async fn fetch(&self, prepared: &[&Prepared<'_, '_>]) -> Vec<Answers> {
        futures::future::join_all(self.spec.lookups.iter().zip(&self.sources).enumerate().map(
            |(index, (l, source))| async move {
                let mut keys: Vec<&str> = prepared
                    .iter()
                    .filter_map(|p| p.keys[index].as_deref().ok())
                    .collect();
                keys.sort_unstable();
                keys.dedup();
                let rows = source.fetch_many(&l.name, &keys).await;
                keys.into_iter().map(str::to_string).zip(rows).collect()
            },
        ))
        .await
    }

    /// The `context` map of one event and its flattened form (`<lookup>.<field>`) for the
    /// action request, from the fetched answers; the first failed lookup (in configuration
    /// order) fails the event.
    fn context(
        &self,
        prepared: &Prepared<'_, '_>,
        answers: &[Answers],
    ) -> Result<LookupContext, StageError> {
        let mut context = Vec::with_capacity(self.spec.lookups.len());
        let mut flat = BTreeMap::new();
        for ((l, key), answers) in self.spec.lookups.iter().zip(&prepared.keys).zip(answers) {
            let key = key.as_ref().map_err(Clone::clone)?;
            let row = match answers.get(key) {
                Some(Ok(row)) => row,
                Some(Err(e)) => return Err(e.clone()),
                None => {
                    return Err(StageError::transient(format!(
                        "lookup `{}`: no answer for `{key}`",
                        l.name
                    )))
                }
            };
            let row = match (row, &l.on_missing) {
                (Some(row), _) => row,
                (None, OnMissing::Default(default)) => default,
                (None, OnMissing::Skip) => continue,
                (None, OnMissing::Fail) => {
                    return Err(StageError::permanent(format!(
                        "lookup `{}` ({}) found nothing for `{key}` and says on_missing = \"fail\"",
                        l.name,
                        l.source.kind()
                    )))
                }
            };
            for (field, value) in row {
                flat.insert(format!("{}.{field}", l.name), value.clone());
            }
            // Template values straight from the row (no `serde_json` tree to convert again).
            context.push((
                l.name.as_str(),
                Value::from_pairs(row.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            ));
        }
        Ok((Value::from_pairs(context), flat))
    }
}

/// One event's lookup results: the `context` template map and its flattened form.
type LookupContext = (Value, BTreeMap<String, String>);

/// The answers of one lookup for a batch, by key.
type Answers = HashMap<String, Result<Row, StageError>>;

/// An event decoded and matched by bindings, waiting for its lookups' answers.
struct Prepared<'e, 's> {
    event: &'e Event,
    /// The template context so far (`ce`, `payload`, `key`, `topic`, `headers`).
    root: EventContext,
    selected: Vec<&'s Binding>,
    /// Per lookup (configuration order), its rendered key.
    keys: Vec<Result<String, StageError>>,
}

impl Stage for Enricher {
    fn name(&self) -> &'static str {
        "enricher"
    }

    async fn process(&self, event: &Event) -> Result<Vec<Output>, StageError> {
        let Some(prepared) = self.prepare(event).await? else {
            return Ok(Vec::new());
        };
        let answers = self.fetch(&[&prepared]).await;
        self.assemble(prepared, &answers)
    }

    /// One batch's lookups share their round trips: each distinct key is fetched once, and a
    /// Redis lookup's keys go in one pipeline.
    async fn process_batch(&self, events: &[&Event]) -> Vec<Result<Vec<Output>, StageError>> {
        let mut prepared = Vec::with_capacity(events.len());
        for event in events {
            prepared.push(self.prepare(event).await);
        }
        let ready: Vec<&Prepared<'_, '_>> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok().and_then(Option::as_ref))
            .collect();
        let answers = self.fetch(&ready).await;
        prepared
            .into_iter()
            .map(|p| match p {
                Ok(Some(p)) => self.assemble(p, &answers),
                Ok(None) => Ok(Vec::new()),
                Err(e) => Err(e),
            })
            .collect()
    }
}

impl Enricher {
    /// Renders the selected bindings of a prepared event into action requests.
    fn assemble(
        &self,
        prepared: Prepared<'_, '_>,
        answers: &[Answers],
    ) -> Result<Vec<Output>, StageError> {
        let (context, flat) = self.context(&prepared, answers)?;
        let Prepared {
            event,
            root,
            selected,
            ..
        } = prepared;
        let ce_id = event
            .headers
            .get_str(ce::ID)
            .unwrap_or_default()
            .to_string();
        let ce_type = event
            .headers
            .get_str(ce::TYPE)
            .unwrap_or_default()
            .to_string();
        let rule = event.headers.get_str(rh::RULE).map(str::to_string);
        // The base context with `context` added: its values are shared, not copied.
        let root = Value::from_object(root.with_context(context));

        let correlation_id = event
            .headers
            .get_str(ce::CORRELATION_ID)
            .filter(|c| !c.is_empty())
            .unwrap_or(&ce_id)
            .to_string();
        let requested_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        let templates = &self.spec.templates;
        let mut outputs = Vec::with_capacity(selected.len());
        for binding in selected {
            let render = |name: &str| {
                templates.render(name, &root).map_err(|e| {
                    // Template names are `binding:<action>:<field>`.
                    let field = name.rsplit(':').next().unwrap_or(name);
                    StageError::permanent(format!(
                        "binding `{}` field `{field}` ({}:{}): {e}",
                        binding.action,
                        self.spec.file.display(),
                        binding.line
                    ))
                })
            };
            let mut params = BTreeMap::new();
            for (param, template) in &binding.params {
                params.insert(param.clone(), render(template)?);
            }
            let key = idempotency_key(&ce_id, &binding.action);
            let request = ActionRequest {
                idempotency_key: key.clone(),
                action: binding.action.clone(),
                kind: binding.kind,
                target: render(&binding.target)?,
                params,
                body: binding.body.as_deref().map(render).transpose()?,
                event_id: ce_id.clone(),
                event_type: ce_type.clone(),
                rule: rule.clone(),
                correlation_id: correlation_id.clone(),
                context: flat.clone(),
                dry_run: binding.dry_run,
                requested_at,
            };
            let bytes = self
                .codec
                .encode(&request)
                .map_err(|e| StageError::permanent(format!("binding `{}`: {e}", binding.action)))?;
            // The input's headers minus the ones replaced, then those (as `set` for each would
            // do, in one pass).
            const REPLACED: [&str; 6] = [
                ce::ID,
                ce::TYPE,
                ce::SOURCE,
                ce::CAUSATION_ID,
                ce::CORRELATION_ID,
                ce::CONTENT_TYPE,
            ];
            let mut headers = Headers::with_capacity(event.headers.len() + REPLACED.len());
            headers.0.extend(
                event
                    .headers
                    .iter()
                    .filter(|h| !REPLACED.contains(&h.key.as_str()))
                    .cloned(),
            );
            headers.push(ce::ID, key);
            headers.push(ce::TYPE, self.output_type.clone());
            headers.push(ce::SOURCE, self.output_source.clone());
            headers.push(ce::CAUSATION_ID, ce_id.clone());
            headers.push(ce::CORRELATION_ID, correlation_id.clone());
            headers.push(ce::CONTENT_TYPE, ce::AVRO_CONTENT_TYPE);
            outputs.push(Output {
                topic: self.output.topic.clone(),
                partition: None,
                key: event.key.clone(),
                payload: Some(Bytes::from(bytes)),
                headers,
            });
        }
        Ok(outputs)
    }
}

/// Decodes an Avro datum straight into a template value, shaped as [`decode_payload`]'s JSON
/// (records and maps become maps, unions their branch's value or none, enums their symbol, bytes
/// and fixed lists of numbers): one conversion per event instead of a JSON tree converted again.
pub fn decode_payload_value(
    datum: &[u8],
    schema: &serde_avro_fast::Schema,
) -> Result<Value, String> {
    serde_avro_fast::from_datum_slice::<TemplateValue>(datum, schema)
        .map(|v| v.0)
        .map_err(|e| e.to_string())
}

/// A template value deserialized from Avro (see [`decode_payload_value`]).
struct TemplateValue(Value);

impl<'de> serde::Deserialize<'de> for TemplateValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TemplateVisitor)
    }
}

struct TemplateVisitor;

impl<'de> serde::de::Visitor<'de> for TemplateVisitor {
    type Value = TemplateValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an Avro value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<TemplateValue, E> {
        Ok(TemplateValue(Value::from(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<TemplateValue, E> {
        Ok(TemplateValue(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<TemplateValue, E> {
        Ok(TemplateValue(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<TemplateValue, E> {
        Ok(TemplateValue(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<TemplateValue, E> {
        Ok(TemplateValue(Value::from(v)))
    }
    fn visit_string<E>(self, v: String) -> Result<TemplateValue, E> {
        Ok(TemplateValue(Value::from(v)))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<TemplateValue, E> {
        Ok(TemplateValue(v.iter().map(|b| Value::from(*b)).collect()))
    }
    fn visit_unit<E>(self) -> Result<TemplateValue, E> {
        Ok(TemplateValue(Value::from(())))
    }
    fn visit_none<E>(self) -> Result<TemplateValue, E> {
        Ok(TemplateValue(Value::from(())))
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<TemplateValue, D::Error> {
        d.deserialize_any(TemplateVisitor)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> Result<TemplateValue, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(TemplateValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(TemplateValue(Value::from(items)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> Result<TemplateValue, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some((k, TemplateValue(v))) = map.next_entry::<String, TemplateValue>()? {
            entries.push((Value::from(k), v));
        }
        Ok(TemplateValue(Value::from_pairs(entries)))
    }
}

/// Decodes an Avro datum into a JSON-like value: records and maps become objects, unions their
/// branch's value (or null), enums their symbol, bytes and fixed arrays of numbers (0-255).
pub fn decode_payload(datum: &[u8], schema: &serde_avro_fast::Schema) -> Result<Json, String> {
    serde_avro_fast::from_datum_slice::<JsonValue>(datum, schema)
        .map(|v| v.0)
        .map_err(|e| e.to_string())
}

/// `serde_json::Value` that also accepts bytes (which `serde_json` itself rejects).
struct JsonValue(Json);

impl<'de> serde::Deserialize<'de> for JsonValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> serde::de::Visitor<'de> for JsonVisitor {
    type Value = JsonValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an Avro value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<JsonValue, E> {
        Ok(JsonValue(Json::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<JsonValue, E> {
        Ok(JsonValue(Json::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<JsonValue, E> {
        Ok(JsonValue(Json::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<JsonValue, E> {
        Ok(JsonValue(Json::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<JsonValue, E> {
        Ok(JsonValue(Json::String(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<JsonValue, E> {
        Ok(JsonValue(Json::String(v)))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<JsonValue, E> {
        Ok(JsonValue(Json::Array(
            v.iter().map(|b| Json::from(*b)).collect(),
        )))
    }
    fn visit_unit<E>(self) -> Result<JsonValue, E> {
        Ok(JsonValue(Json::Null))
    }
    fn visit_none<E>(self) -> Result<JsonValue, E> {
        Ok(JsonValue(Json::Null))
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<JsonValue, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<JsonValue, A::Error> {
        let mut items = Vec::new();
        while let Some(JsonValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(JsonValue(Json::Array(items)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<JsonValue, A::Error> {
        let mut out = Map::new();
        while let Some((k, JsonValue(v))) = map.next_entry::<String, JsonValue>()? {
            out.insert(k, v);
        }
        Ok(JsonValue(Json::Object(out)))
    }
}

/// `{ce, payload, key, topic, headers}` of an event, and `context` once the lookups answered:
/// the templates' root. `ce` and `headers` are views over the event's headers, so a value is
/// converted only when a template reads it (building maps of every header per event showed in
/// the enricher's profile).
#[derive(Debug, Clone)]
struct EventContext {
    headers: Arc<Headers>,
    payload: Value,
    key: Value,
    topic: Value,
    context: Option<Value>,
}

impl EventContext {
    fn of(event: &Event, payload: Value) -> Self {
        Self {
            headers: Arc::new(event.headers.clone()),
            payload,
            key: event
                .key
                .as_ref()
                .map(|k| Value::from(String::from_utf8_lossy(k).into_owned()))
                .unwrap_or(Value::from(())),
            topic: Value::from(event.topic.as_str()),
            context: None,
        }
    }

    fn with_context(mut self, context: Value) -> Self {
        self.context = Some(context);
        self
    }
}

impl minijinja::value::Object for EventContext {
    fn repr(self: &Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        Some(match key.as_str()? {
            "ce" => Value::from_object(HeaderView {
                headers: self.headers.clone(),
                prefix: "ce_",
            }),
            "payload" => self.payload.clone(),
            "key" => self.key.clone(),
            "topic" => self.topic.clone(),
            "headers" => Value::from_object(HeaderView {
                headers: self.headers.clone(),
                prefix: "",
            }),
            "context" => self.context.clone()?,
            _ => return None,
        })
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        let mut keys = vec!["ce", "payload", "key", "topic", "headers"];
        if self.context.is_some() {
            keys.push("context");
        }
        keys.sort_unstable();
        minijinja::value::Enumerator::Values(keys.into_iter().map(Value::from).collect())
    }
}

/// The headers whose names start with `prefix`, by name without it, as a template map: the last
/// UTF-8 value of a name wins, headers with a null or non-UTF-8 value are left out (what a map
/// built from every header held before).
#[derive(Debug)]
struct HeaderView {
    headers: Arc<Headers>,
    prefix: &'static str,
}

impl HeaderView {
    fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().filter_map(|h| {
            let name = h.key.strip_prefix(self.prefix)?;
            let value = std::str::from_utf8(h.value.as_deref()?).ok()?;
            Some((name, value))
        })
    }
}

impl minijinja::value::Object for HeaderView {
    fn repr(self: &Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let key = key.as_str()?;
        let mut found = None;
        for (name, value) in self.entries() {
            if name == key {
                found = Some(value);
            }
        }
        found.map(Value::from)
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        let names: std::collections::BTreeSet<&str> =
            self.entries().map(|(name, _)| name).collect();
        minijinja::value::Enumerator::Values(names.into_iter().map(Value::from).collect())
    }
}

/// The enricher's part of the shared `main`: its config (loaded, checked, Kafka secrets
/// resolved by [`EnricherConfig::load`]), started and run until `shutdown`.
pub async fn run(
    config: EnricherConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let registry = config.registry.client();
    let enricher = Enricher::start(&config.stage, registry, &config.kafka.input_topics).await?;
    reflex_runtime::run(enricher, &config.kafka, &config.runtime, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests;
