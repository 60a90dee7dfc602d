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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use reflex_core::actions::{idempotency_key, ActionRequest, AvroCodec, ACTION_REQUEST_SCHEMA};
use reflex_core::headers::{ce, reflex as rh};
use reflex_core::registry::{RegistryClient, RegistryError};
use reflex_core::wire::decode_frame;
use reflex_core::ErrorClass;
use reflex_runtime::{
    Event, KafkaSettings, Output, RegistrySettings, RuntimeSettings, Stage, StageError,
    TelemetrySettings,
};
use serde::Deserialize;
use serde_json::{Map, Value as Json};
use tracing::{info, warn};

use crate::lookup::Source;
use crate::spec::{OnMissing, Spec, SpecError};

/// Embedded enricher defaults, layered over the runtime's.
pub const ENRICHER_DEFAULTS: &str = include_str!("defaults.toml");

/// The enricher's whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnricherConfig {
    /// Kafka connection, group and input topics (the router's output topics).
    pub kafka: KafkaSettings,
    /// The shared loop's settings.
    pub runtime: RuntimeSettings,
    /// Schema Registry used to decode payloads, validate templates and register the output schema.
    pub registry: RegistrySettings,
    /// Logging.
    pub telemetry: TelemetrySettings,
    /// Enricher-specific settings.
    pub enricher: EnricherSettings,
}

/// Enricher-specific settings.
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
    pub redis_timeout_ms: u64,
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
            let timeout = Duration::from_millis(settings.redis_timeout_ms);
            Some(
                lookup::RedisConn::connect(&settings.redis_url, timeout)
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

    /// Runs every lookup concurrently; returns the `context` map and its flattened form
    /// (`<lookup>.<field>`) for the action request.
    async fn lookups(
        &self,
        root: &Json,
    ) -> Result<(Map<String, Json>, BTreeMap<String, String>), StageError> {
        let templates = &self.spec.templates;
        let results = futures::future::join_all(self.spec.lookups.iter().zip(&self.sources).map(
            |(l, source)| async move {
                let key = templates
                    .render(&l.key_template, root)
                    .map_err(|e| StageError::permanent(format!("lookup `{}`: {e}", l.name)))?;
                let row = source.fetch(&l.name, &key).await?;
                Ok::<_, StageError>((key, row))
            },
        ))
        .await;
        let mut context = Map::new();
        let mut flat = BTreeMap::new();
        for (l, result) in self.spec.lookups.iter().zip(results) {
            let (key, row) = result?;
            let row = match (row, &l.on_missing) {
                (Some(row), _) => row,
                (None, OnMissing::Default(default)) => default.clone(),
                (None, OnMissing::Skip) => continue,
                (None, OnMissing::Fail) => {
                    return Err(StageError::permanent(format!(
                        "lookup `{}` ({}) found nothing for `{key}` and says on_missing = \"fail\"",
                        l.name,
                        l.source.kind()
                    )))
                }
            };
            for (field, value) in &row {
                flat.insert(format!("{}.{field}", l.name), value.clone());
            }
            context.insert(
                l.name.clone(),
                Json::Object(row.into_iter().map(|(k, v)| (k, Json::String(v))).collect()),
            );
        }
        Ok((context, flat))
    }
}

impl reflex_runtime::worker::WorkerConfig for EnricherConfig {
    fn telemetry(&self) -> &TelemetrySettings {
        &self.telemetry
    }
}

impl Stage for Enricher {
    fn name(&self) -> &'static str {
        "enricher"
    }

    async fn process(&self, event: &Event) -> Result<Vec<Output>, StageError> {
        event.require_cloudevent()?;
        let value = event.payload.as_deref().ok_or_else(|| {
            StageError::poison(
                "record has no value (tombstone): expected an Avro event in Confluent wire format",
            )
        })?;
        let framed = decode_frame(value).map_err(|e| StageError::poison(e.to_string()))?;
        let schema = self
            .registry
            .schema_by_id(framed.schema_id)
            .await
            .map_err(|e| StageError::new(e.class(), e.to_string()))?;
        let payload = decode_payload(framed.datum, &schema.fast).map_err(|e| {
            StageError::new(
                ErrorClass::Poison,
                format!("value does not decode with its schema id {}: {e} (corrupt bytes, or written with another schema)", framed.schema_id),
            )
        })?;

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
        let selected: Vec<_> = self
            .spec
            .bindings
            .iter()
            .filter(|b| b.selects(&ce_type, rule.as_deref()))
            .collect();
        if selected.is_empty() {
            return Ok(Vec::new());
        }

        let mut root = base_context(event, payload);
        let (context, flat) = self.lookups(&root).await?;
        if let Json::Object(map) = &mut root {
            map.insert("context".into(), Json::Object(context));
        }
        // Converted once; every template of every binding renders from it.
        let root = minijinja::Value::from(minijinja::value::Serde(&root));

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
                    StageError::permanent(format!(
                        "binding `{}` ({}:{}): {e}",
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
            let mut headers = event.headers.clone();
            headers.set(ce::ID, key);
            headers.set(ce::TYPE, self.output.event_type.clone());
            headers.set(ce::SOURCE, self.output.source.clone());
            headers.set(ce::CAUSATION_ID, ce_id.clone());
            headers.set(ce::CORRELATION_ID, correlation_id.clone());
            headers.set(ce::CONTENT_TYPE, ce::AVRO_CONTENT_TYPE);
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

/// `{ce, payload, key, topic, headers}` of an event.
fn base_context(event: &Event, payload: Json) -> Json {
    let ce: Map<String, Json> = event
        .headers
        .ce_attributes()
        .map(|(k, v)| (k.to_string(), Json::String(v.to_string())))
        .collect();
    let headers: Map<String, Json> = event
        .headers
        .iter()
        .filter_map(|h| {
            let v = std::str::from_utf8(h.value.as_deref()?).ok()?;
            Some((h.key.to_string(), Json::String(v.to_string())))
        })
        .collect();
    let key = event
        .key
        .as_ref()
        .map(|k| Json::String(String::from_utf8_lossy(k).into_owned()))
        .unwrap_or(Json::Null);
    serde_json::json!({
        "ce": ce,
        "payload": payload,
        "key": key,
        "topic": event.topic,
        "headers": headers,
    })
}

/// Shared pieces for a `main`: the enricher's config, started and run until `shutdown`.
pub async fn run(
    config: EnricherConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let registry = config.registry.client();
    let enricher = Enricher::start(&config.enricher, registry, &config.kafka.input_topics).await?;
    reflex_runtime::run(enricher, &config.kafka, &config.runtime, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests;
