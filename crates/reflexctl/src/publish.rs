//! `reflexctl publish`: JSON documents in, Avro CloudEvents out.
//!
//! Each document is checked against the schema (mismatches name the field), encoded with
//! `apache-avro`, framed in the Confluent wire format and produced with CloudEvents binary-mode
//! headers. Every document is encoded before the first is produced, so bad input sends nothing.

use std::collections::HashMap;
use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _};
use apache_avro::schema::{Name, ResolvedSchema};
use apache_avro::Schema;
use clap::Args;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use reflex_core::avro::{json_to_datum, parse_schema};
use reflex_core::headers::{ce, trace, Headers};
use reflex_core::signing::SigningKey;
use reflex_core::wire::encode_frame;
use serde_json::Value as Json;

use crate::{Global, METADATA_TIMEOUT};

pub const LONG_ABOUT: &str = "Read JSON (one document, or several one after another, e.g. one \
per line: each is one event) from --file or stdin, encode each with the topic's Avro schema \
(default: the latest version of subject <topic>-value), frame it in the Confluent wire format \
and produce it with CloudEvents binary-mode headers: ce_specversion=1.0, ce_id (--id or a fresh \
UUID; with several events each gets the suffix -1, -2, ...), ce_source (default reflexctl), \
ce_type, ce_time (now, RFC 3339 UTC), content-type=application/avro and ce_correlationid \
(= ce_id). --header k=v adds a header or replaces a computed one (e.g. ce_correlationid, \
ce_subject, traceparent). Every document is checked before anything is sent: a mismatch names \
the event and the field, and nothing is produced.\n\n\
The producer is idempotent and uses the Java-compatible murmur2 partitioner, so keys land on \
the same partitions as from Java clients. Prints `topic/partition@offset ce_id` per event once \
the broker acknowledged it.\n\n\
Examples:\n  \
echo '{\"cluster\":\"prod\",\"namespace\":\"shop\",\"pod\":\"api-7\",\"reason\":\"CrashLoopBackOff\",\"restart_count\":5}' \\\n    \
| reflexctl publish --topic reflex.events.k8s --type io.k8s.pod.crashloop --key-field pod\n  \
reflexctl publish --topic reflex.events.k8s --type io.k8s.pod.crashloop --file events.jsonl \\\n    \
--header traceparent=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Topic to produce to.
    #[arg(long)]
    pub topic: String,
    /// Record key for every event.
    #[arg(long, conflicts_with = "key_field")]
    pub key: Option<String>,
    /// Take each event's key from this JSON field (dotted path for nested fields).
    #[arg(long)]
    pub key_field: Option<String>,
    /// CloudEvents type (ce_type), e.g. io.k8s.pod.crashloop.
    #[arg(long = "type")]
    pub event_type: String,
    /// CloudEvents source (ce_source).
    #[arg(long, default_value = "reflexctl")]
    pub source: String,
    /// CloudEvents id (ce_id); default a fresh UUID. Several events get -1, -2, ... appended.
    #[arg(long)]
    pub id: Option<String>,
    /// Schema Registry subject whose latest version encodes the value (default <topic>-value).
    #[arg(long, conflicts_with = "schema_id")]
    pub subject: Option<String>,
    /// Registry schema id that encodes the value.
    #[arg(long)]
    pub schema_id: Option<u32>,
    /// Extra header `name=value` (repeatable); replaces a computed header of the same name.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// Read JSON from this file instead of stdin.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Sign each event (`reflex-signature` header) with the key in this file (raw bytes, or
    /// `base64:<...>`; at least 16 bytes), for routers with `router.signing_keys` set.
    #[arg(long, requires = "sign_key_id", value_name = "PATH")]
    pub sign_key_file: Option<PathBuf>,
    /// Key id written into the signature; the router looks the key up by it.
    #[arg(long, requires = "sign_key_file", value_name = "ID")]
    pub sign_key_id: Option<String>,
}

/// One event ready to produce.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: Headers,
}

pub async fn run(global: &Global, args: PublishArgs) -> anyhow::Result<ExitCode> {
    let extra = parse_header_args(&args.headers)?;
    let signer = match (&args.sign_key_file, &args.sign_key_id) {
        (Some(path), Some(id)) => Some(
            SigningKey::from_spec(&format!("{id}=file:{}", path.display()))
                .context("--sign-key-file / --sign-key-id")?,
        ),
        _ => None,
    };
    let (input_name, text) = read_input(args.file.as_deref())?;
    let documents = parse_documents(&input_name, &text)?;

    let producer: FutureProducer = global
        .kafka_config()
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .context("cannot create the Kafka producer")?;
    ensure_topic(&producer, &args.topic, &global.bootstrap)?;

    let registry = global.registry();
    let subject = args
        .subject
        .clone()
        .unwrap_or_else(|| format!("{}-value", args.topic));
    let (schema_id, schema_text, schema_origin) = match args.schema_id {
        Some(id) => {
            let found = registry
                .schema_by_id(id)
                .await
                .with_context(|| format!("cannot fetch schema id {id}"))?;
            (id, found.text.clone(), format!("schema id {id}"))
        }
        None => {
            let latest = registry.latest(&subject).await.with_context(|| {
                format!(
                    "cannot find the value schema of topic {} (pass --subject or --schema-id if \
                     it is registered under another name)",
                    args.topic
                )
            })?;
            (
                latest.id,
                latest.schema,
                format!(
                    "subject {subject} version {} (id {})",
                    latest.version, latest.id
                ),
            )
        }
    };
    let schema = parse_schema(&schema_text)
        .with_context(|| format!("{schema_origin} is not a usable Avro schema"))?;

    let base_id = args
        .id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let many = documents.len() > 1;
    let mut prepared = Vec::with_capacity(documents.len());
    for (index, doc) in documents.iter().enumerate() {
        let n = index + 1;
        let what = if many {
            format!("event {n} of {input_name}")
        } else {
            format!("the event in {input_name}")
        };
        let datum = encode(&schema, doc)
            .map_err(|e| anyhow!("{what} does not match {schema_origin}: {e}"))?;
        let key = match (&args.key, &args.key_field) {
            (Some(key), _) => Some(key.clone()),
            (None, Some(field)) => {
                Some(key_from_field(doc, field).map_err(|e| anyhow!("{what}: {e}"))?)
            }
            (None, None) => None,
        };
        let id = if many {
            format!("{base_id}-{n}")
        } else {
            base_id.clone()
        };
        let value = encode_frame(schema_id, &datum);
        let mut headers = event_headers(&id, &args.source, &args.event_type, &extra);
        if let Some(signer) = &signer {
            signer.sign(&mut headers, Some(&value));
        }
        prepared.push(Prepared {
            key,
            value,
            headers,
        });
    }

    let mut pending = Vec::with_capacity(prepared.len());
    for event in &prepared {
        let mut record = FutureRecord::to(&args.topic)
            .payload(&event.value)
            .headers(to_owned_headers(&event.headers));
        if let Some(key) = &event.key {
            record = record.key(key);
        }
        let delivery = producer
            .send_result(record)
            .map_err(|(e, _)| anyhow!("cannot queue an event for {}: {e}", args.topic))?;
        pending.push(delivery);
    }
    let mut failed = 0;
    for (event, delivery) in prepared.iter().zip(pending) {
        let id = event.headers.get_str(ce::ID).unwrap_or_default();
        match delivery.await {
            Ok(Ok(d)) => println!("{}/{}@{} {id}", args.topic, d.partition, d.offset),
            Ok(Err((e, _))) => {
                failed += 1;
                eprintln!("error: event {id} was not delivered to {}: {e}", args.topic);
            }
            Err(_) => {
                failed += 1;
                eprintln!("error: event {id}: the producer stopped before the broker answered");
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} event(s) not delivered to {} at {}",
            prepared.len(),
            args.topic,
            global.bootstrap
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses `--header name=value` arguments.
pub fn parse_header_args(args: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for arg in args {
        let (name, value) = arg.split_once('=').ok_or_else(|| {
            anyhow!("--header `{arg}` has no `=`: write it as --header name=value")
        })?;
        let name = name.trim();
        if name.is_empty() {
            bail!("--header `{arg}` has an empty name: write it as --header name=value");
        }
        if name == trace::TRACEPARENT {
            check_traceparent(value)?;
        }
        out.push((name.to_string(), value.to_string()));
    }
    Ok(out)
}

/// A W3C trace context `traceparent`: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
pub fn check_traceparent(value: &str) -> anyhow::Result<()> {
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let parts: Vec<&str> = value.split('-').collect();
    let ok = parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2);
    if !ok {
        bail!(
            "--header traceparent=`{value}` is not a W3C traceparent: expected \
             00-<32 lower-case hex trace id>-<16 hex parent id>-<2 hex flags>, e.g. \
             00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }
    Ok(())
}

fn read_input(file: Option<&std::path::Path>) -> anyhow::Result<(String, String)> {
    match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --file {}", path.display()))?;
            Ok((path.display().to_string(), text))
        }
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("reading JSON from stdin (end with Ctrl-D; or pass --file)");
            }
            let mut text = String::new();
            stdin
                .lock()
                .read_to_string(&mut text)
                .context("cannot read JSON from stdin (is it UTF-8?)")?;
            Ok(("stdin".to_string(), text))
        }
    }
}

/// One JSON document, or several one after another (JSON lines): each is one event.
pub fn parse_documents(input_name: &str, text: &str) -> anyhow::Result<Vec<Json>> {
    let mut out = Vec::new();
    for (index, doc) in serde_json::Deserializer::from_str(text)
        .into_iter::<Json>()
        .enumerate()
    {
        let doc = doc.map_err(|e| {
            anyhow!(
                "{input_name}: document {} is not valid JSON: {e} (give one JSON document, or \
                 one per line)",
                index + 1
            )
        })?;
        out.push(doc);
    }
    if out.is_empty() {
        bail!("{input_name} holds no JSON document: pipe one (or one per line) or pass --file");
    }
    Ok(out)
}

/// The key from a (dotted) field of the document: strings as they are, numbers and booleans
/// as their JSON text.
pub fn key_from_field(doc: &Json, field: &str) -> anyhow::Result<String> {
    let mut node = doc;
    for part in field.split('.') {
        node = node
            .get(part)
            .ok_or_else(|| anyhow!("--key-field `{field}`: the document has no field `{part}`"))?;
    }
    match node {
        Json::String(s) => Ok(s.clone()),
        Json::Number(_) | Json::Bool(_) => Ok(node.to_string()),
        other => bail!(
            "--key-field `{field}` is {}, not a string, number or boolean",
            describe_json(other)
        ),
    }
}

/// The CloudEvents headers of one event, then the `--header` values (which replace).
pub fn event_headers(
    id: &str,
    source: &str,
    event_type: &str,
    extra: &[(String, String)],
) -> Headers {
    let mut headers = Headers::new();
    headers.push(ce::SPECVERSION, ce::SPEC_VERSION_1_0);
    headers.push(ce::ID, id.to_owned());
    headers.push(ce::SOURCE, source.to_owned());
    headers.push(ce::TYPE, event_type.to_owned());
    headers.push(
        ce::TIME,
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    );
    headers.push(ce::CONTENT_TYPE, ce::AVRO_CONTENT_TYPE);
    headers.push(ce::CORRELATION_ID, id.to_owned());
    for (name, value) in extra {
        headers.set(name, value.clone());
    }
    headers
}

/// Headers as rdkafka takes them.
pub fn to_owned_headers(headers: &Headers) -> OwnedHeaders {
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |h, header| {
            h.insert(Header {
                key: &header.key,
                value: header.value.as_deref(),
            })
        },
    )
}

/// Fails with the fix when the topic does not exist (instead of waiting out the delivery
/// timeout). Lists all topics, so it never triggers auto-creation.
fn ensure_topic(producer: &FutureProducer, topic: &str, bootstrap: &str) -> anyhow::Result<()> {
    use rdkafka::producer::Producer as _;
    let metadata = producer
        .client()
        .fetch_metadata(None, METADATA_TIMEOUT)
        .with_context(|| {
            format!(
                "cannot read metadata from Kafka at {bootstrap} (check --bootstrap / \
                 REFLEX_KAFKA__BOOTSTRAP_SERVERS and that the broker runs)"
            )
        })?;
    if !metadata.topics().iter().any(|t| t.name() == topic) {
        bail!(
            "topic {topic} does not exist on {bootstrap}: declare it in topics/*.toml and run \
             `reflexctl topics apply`"
        );
    }
    Ok(())
}

/// Checks `doc` against `schema` (naming the first offending field), then encodes it.
pub fn encode(schema: &Schema, doc: &Json) -> Result<Vec<u8>, String> {
    let resolved = ResolvedSchema::try_from(schema).map_err(|e| e.to_string())?;
    if let Some(problem) = explain(schema, resolved.get_names(), doc, "", 0) {
        return Err(problem);
    }
    json_to_datum(schema, doc).map_err(|e| e.to_string())
}

/// The first place where `json` does not fit `schema`, as a sentence naming the field; None
/// when it fits (or when this check does not know the type, and `apache-avro` judges).
fn explain(
    schema: &Schema,
    names: &HashMap<Name, &Schema>,
    json: &Json,
    path: &str,
    depth: usize,
) -> Option<String> {
    if depth > 64 {
        return None;
    }
    let at = || {
        if path.is_empty() {
            "the document".to_string()
        } else {
            format!("field `{path}`")
        }
    };
    let expected = |what: &str| {
        Some(format!(
            "{}: expected {what}, got {}",
            at(),
            describe_json(json)
        ))
    };
    match schema {
        Schema::Null => (!json.is_null()).then(|| expected("null")).flatten(),
        Schema::Boolean => (!json.is_boolean())
            .then(|| expected("a boolean"))
            .flatten(),
        Schema::Int | Schema::Date | Schema::TimeMillis => match json.as_i64() {
            Some(n) if i32::try_from(n).is_ok() => None,
            Some(n) => Some(format!("{}: {n} does not fit in an int (32 bits)", at())),
            None => expected(&format!("an integer ({})", type_name(schema))),
        },
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => (json.as_i64().is_none())
            .then(|| expected(&format!("an integer ({})", type_name(schema))))
            .flatten(),
        Schema::Float | Schema::Double => (!json.is_number())
            .then(|| expected(&format!("a number ({})", type_name(schema))))
            .flatten(),
        Schema::String | Schema::Uuid | Schema::Bytes | Schema::Fixed(_) => (!json.is_string())
            .then(|| expected(&format!("a string ({})", type_name(schema))))
            .flatten(),
        Schema::Enum(e) => match json.as_str() {
            Some(s) if e.symbols.iter().any(|sym| sym == s) => None,
            Some(s) => Some(format!(
                "{}: `{s}` is not a symbol of enum {} (symbols: {})",
                at(),
                e.name.fullname(None),
                e.symbols.join(", ")
            )),
            None => expected(&format!("a string, one of {}", e.symbols.join(", "))),
        },
        Schema::Array(a) => match json.as_array() {
            Some(items) => items.iter().enumerate().find_map(|(i, item)| {
                explain(&a.items, names, item, &format!("{path}[{i}]"), depth + 1)
            }),
            None => expected(&type_name(schema)),
        },
        Schema::Map(m) => match json.as_object() {
            Some(entries) => entries.iter().find_map(|(k, v)| {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                explain(&m.types, names, v, &p, depth + 1)
            }),
            None => expected(&type_name(schema)),
        },
        Schema::Record(r) => {
            let Some(object) = json.as_object() else {
                return expected(&format!("an object (record {})", r.name.fullname(None)));
            };
            let join = |name: &str| {
                if path.is_empty() {
                    name.to_string()
                } else {
                    format!("{path}.{name}")
                }
            };
            for key in object.keys() {
                if !r.fields.iter().any(|f| &f.name == key) {
                    let fields: Vec<&str> = r.fields.iter().map(|f| f.name.as_str()).collect();
                    return Some(format!(
                        "field `{}` is not in record {} (its fields: {})",
                        join(key),
                        r.name.fullname(None),
                        fields.join(", ")
                    ));
                }
            }
            for field in &r.fields {
                match object.get(&field.name) {
                    Some(value) => {
                        if let Some(problem) =
                            explain(&field.schema, names, value, &join(&field.name), depth + 1)
                        {
                            return Some(problem);
                        }
                    }
                    None if field.default.is_none() => {
                        return Some(format!(
                            "field `{}` is missing and has no default (type {})",
                            join(&field.name),
                            type_name(&field.schema)
                        ));
                    }
                    None => {}
                }
            }
            None
        }
        Schema::Union(u) => {
            let variants = u.variants();
            if variants
                .iter()
                .any(|v| explain(v, names, json, path, depth + 1).is_none())
            {
                return None;
            }
            let non_null: Vec<&Schema> = variants.iter().filter(|v| **v != Schema::Null).collect();
            if let [only] = non_null.as_slice() {
                if !json.is_null() {
                    return explain(only, names, json, path, depth + 1);
                }
            }
            let types: Vec<String> = variants.iter().map(type_name).collect();
            expected(&format!("one of [{}]", types.join(", ")))
        }
        Schema::Ref { name } => names
            .get(name)
            .and_then(|s| explain(s, names, json, path, depth + 1)),
        // Decimal, BigDecimal, Duration: left to apache-avro.
        _ => None,
    }
}

fn type_name(schema: &Schema) -> String {
    match schema {
        Schema::Null => "null".into(),
        Schema::Boolean => "boolean".into(),
        Schema::Int => "int".into(),
        Schema::Long => "long".into(),
        Schema::Float => "float".into(),
        Schema::Double => "double".into(),
        Schema::Bytes => "bytes".into(),
        Schema::String => "string".into(),
        Schema::Uuid => "uuid".into(),
        Schema::Date => "date".into(),
        Schema::TimeMillis => "time-millis".into(),
        Schema::TimeMicros => "time-micros".into(),
        Schema::TimestampMillis => "timestamp-millis".into(),
        Schema::TimestampMicros => "timestamp-micros".into(),
        Schema::TimestampNanos => "timestamp-nanos".into(),
        Schema::Array(a) => format!("an array of {}", type_name(&a.items)),
        Schema::Map(m) => format!("an object (map of {})", type_name(&m.types)),
        Schema::Record(r) => format!("record {}", r.name.fullname(None)),
        Schema::Enum(e) => format!("enum {}", e.name.fullname(None)),
        Schema::Fixed(f) => format!("fixed {}", f.name.fullname(None)),
        Schema::Union(u) => {
            let types: Vec<String> = u.variants().iter().map(type_name).collect();
            format!("[{}]", types.join(", "))
        }
        Schema::Ref { name } => name.fullname(None),
        other => format!("{other:?}"),
    }
}

/// A short description of a JSON value for messages.
pub fn describe_json(json: &Json) -> String {
    match json {
        Json::Null => "null".into(),
        Json::Bool(b) => format!("boolean {b}"),
        Json::Number(n) => format!("number {n}"),
        Json::String(s) if s.chars().count() > 40 => {
            format!("string \"{}...\"", s.chars().take(40).collect::<String>())
        }
        Json::String(s) => format!("string \"{s}\""),
        Json::Array(_) => "an array".into(),
        Json::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod_schema() -> Schema {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../avro/k8s_pod_event.avsc"
        ))
        .unwrap();
        parse_schema(&text).unwrap()
    }

    fn pod() -> Json {
        json!({"cluster": "prod", "namespace": "shop", "pod": "api-7",
               "reason": "CrashLoopBackOff", "restart_count": 5})
    }

    #[test]
    fn valid_event_encodes_and_defaults_fill_in() {
        let datum = encode(&pod_schema(), &pod()).unwrap();
        let back = reflex_core::avro::datum_to_json(&pod_schema(), &datum).unwrap();
        assert_eq!(back["restart_count"], 5);
        assert_eq!(back["seq"], 0);
    }

    #[test]
    fn mismatches_name_the_field() {
        let schema = pod_schema();
        let mut doc = pod();
        doc["restart_count"] = json!("five");
        let err = encode(&schema, &doc).unwrap_err();
        assert!(
            err.contains("`restart_count`") && err.contains("int"),
            "{err}"
        );

        let mut doc = pod();
        doc.as_object_mut().unwrap().remove("pod");
        let err = encode(&schema, &doc).unwrap_err();
        assert!(err.contains("`pod` is missing"), "{err}");

        let mut doc = pod();
        doc["restarts"] = json!(1);
        let err = encode(&schema, &doc).unwrap_err();
        assert!(err.contains("`restarts` is not in record"), "{err}");

        let mut doc = pod();
        doc["labels"] = json!({"app": 1});
        let err = encode(&schema, &doc).unwrap_err();
        assert!(err.contains("`labels.app`"), "{err}");

        let mut doc = pod();
        doc["restart_count"] = json!(5_000_000_000_i64);
        assert!(encode(&schema, &doc).unwrap_err().contains("does not fit"));
    }

    #[test]
    fn unions_and_enums_are_explained() {
        let schema = parse_schema(
            r#"{"type":"record","name":"R","fields":[
                {"name":"owner","type":["null",{"type":"record","name":"Owner","fields":[{"name":"team","type":"string"}]}],"default":null},
                {"name":"phase","type":{"type":"enum","name":"Phase","symbols":["A","B"]}}]}"#,
        )
        .unwrap();
        assert!(encode(&schema, &json!({"owner": {"team": "x"}, "phase": "A"})).is_ok());
        assert!(encode(&schema, &json!({"owner": null, "phase": "B"})).is_ok());
        let err = encode(&schema, &json!({"owner": {"team": 1}, "phase": "A"})).unwrap_err();
        assert!(err.contains("`owner.team`"), "{err}");
        let err = encode(&schema, &json!({"phase": "C"})).unwrap_err();
        assert!(err.contains("`phase`") && err.contains("A, B"), "{err}");
    }

    #[test]
    fn documents_one_or_many() {
        assert_eq!(parse_documents("x", "{\n \"a\": 1\n}\n").unwrap().len(), 1);
        assert_eq!(
            parse_documents("x", "{\"a\":1}\n{\"a\":2}\n{\"a\":3}")
                .unwrap()
                .len(),
            3
        );
        let err = parse_documents("x", "{\"a\":1}\n{\"a\":")
            .unwrap_err()
            .to_string();
        assert!(err.contains("document 2"), "{err}");
        assert!(parse_documents("x", "  \n").is_err());
    }

    #[test]
    fn headers_keys_and_traceparent() {
        let extra = parse_header_args(&["ce_correlationid=chain-1".into()]).unwrap();
        let h = event_headers("id-1", "src", "t", &extra);
        assert_eq!(h.get_str(ce::ID), Some("id-1"));
        assert_eq!(h.get_str(ce::CORRELATION_ID), Some("chain-1"));
        assert!(h.missing_required_ce().is_empty());
        let time = h.get_str(ce::TIME).unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok() && time.ends_with('Z'));
        assert!(parse_header_args(&["novalue".into()]).is_err());
        assert!(parse_header_args(&[
            "traceparent=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()
        ])
        .is_ok());
        assert!(parse_header_args(&["traceparent=xyz".into()]).is_err());
        assert_eq!(key_from_field(&pod(), "pod").unwrap(), "api-7");
        assert_eq!(key_from_field(&pod(), "restart_count").unwrap(), "5");
        assert!(key_from_field(&pod(), "nope")
            .unwrap_err()
            .to_string()
            .contains("nope"));
    }
}
