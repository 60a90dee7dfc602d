//! JSON ⇄ Avro helpers for tools and tests (`reflexctl publish` / `tail`, test producers), and
//! schema introspection for start-up validation of rules and templates.
//!
//! These use `apache-avro`, whose JSON resolution handles unions, enums and defaults the way
//! people expect when typing JSON by hand. The workers' hot path decodes with `serde_avro_fast`
//! instead (measured faster: ARCHITECTURE.md, "Decisions").

use std::collections::HashMap;

use apache_avro::types::Value as AvroValue;
use apache_avro::Schema;
use serde_json::Value as Json;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum AvroError {
    #[error("invalid Avro schema: {0}")]
    InvalidSchema(String),
    #[error("JSON does not match the schema: {0}")]
    Mismatch(String),
    #[error("Avro datum does not decode with the schema: {0}")]
    Undecodable(String),
}

/// Parses an Avro schema (JSON text).
pub fn parse_schema(text: &str) -> Result<Schema, AvroError> {
    Schema::parse_str(text).map_err(|e| AvroError::InvalidSchema(e.to_string()))
}

/// Encodes a JSON document as an Avro datum (no framing).
pub fn json_to_datum(schema: &Schema, json: &Json) -> Result<Vec<u8>, AvroError> {
    let value = AvroValue::from(json.clone())
        .resolve(schema)
        .map_err(|e| AvroError::Mismatch(e.to_string()))?;
    apache_avro::to_avro_datum(schema, value).map_err(|e| AvroError::Mismatch(e.to_string()))
}

/// Decodes an Avro datum (no framing) to JSON.
pub fn datum_to_json(schema: &Schema, mut datum: &[u8]) -> Result<Json, AvroError> {
    let value = apache_avro::from_avro_datum(schema, &mut datum, None)
        .map_err(|e| AvroError::Undecodable(e.to_string()))?;
    if !datum.is_empty() {
        return Err(AvroError::Undecodable(format!(
            "{} bytes left over after the datum",
            datum.len()
        )));
    }
    avro_to_json(value)
}

fn avro_to_json(value: AvroValue) -> Result<Json, AvroError> {
    // Unions are unwrapped to their value, as people write them in JSON.
    Ok(match value {
        AvroValue::Union(_, inner) => avro_to_json(*inner)?,
        AvroValue::Record(fields) => Json::Object(
            fields
                .into_iter()
                .map(|(k, v)| Ok((k, avro_to_json(v)?)))
                .collect::<Result<_, AvroError>>()?,
        ),
        AvroValue::Map(map) => Json::Object(
            map.into_iter()
                .map(|(k, v)| Ok((k, avro_to_json(v)?)))
                .collect::<Result<_, AvroError>>()?,
        ),
        AvroValue::Array(items) => Json::Array(
            items
                .into_iter()
                .map(avro_to_json)
                .collect::<Result<_, _>>()?,
        ),
        AvroValue::Enum(_, symbol) => Json::String(symbol),
        other => Json::try_from(other).map_err(|e| AvroError::Undecodable(e.to_string()))?,
    })
}

/// Checks that a dotted field path (`a.b.c`) exists in a record schema given as JSON text.
///
/// Walks records and unions (a path exists if any branch has it) and stops at maps and arrays,
/// whose keys and indices are only known at run time. Named types referenced by name resolve.
pub fn check_field_path(schema_text: &str, path: &[&str]) -> Result<(), String> {
    let schema: Json =
        serde_json::from_str(schema_text).map_err(|e| format!("schema is not JSON: {e}"))?;
    let mut named = HashMap::new();
    collect_named(&schema, None, &mut named);
    if walk(&schema, path, &named, 0) {
        Ok(())
    } else {
        let mut fields = Vec::new();
        top_level_fields(&schema, &named, &mut fields);
        Err(format!(
            "field `{}` is not in the schema (top-level fields: {})",
            path.join("."),
            fields.join(", ")
        ))
    }
}

fn full_name(node: &serde_json::Map<String, Json>, enclosing_ns: Option<&str>) -> Option<String> {
    let name = node.get("name")?.as_str()?;
    if name.contains('.') {
        return Some(name.to_string());
    }
    match node
        .get("namespace")
        .and_then(Json::as_str)
        .or(enclosing_ns)
    {
        Some(ns) if !ns.is_empty() => Some(format!("{ns}.{name}")),
        _ => Some(name.to_string()),
    }
}

fn collect_named<'a>(node: &'a Json, ns: Option<&str>, out: &mut HashMap<String, &'a Json>) {
    match node {
        Json::Array(branches) => branches.iter().for_each(|b| collect_named(b, ns, out)),
        Json::Object(obj) => {
            let mut inner_ns = ns.map(str::to_string);
            if let Some(full) = full_name(obj, ns) {
                if matches!(
                    obj.get("type").and_then(Json::as_str),
                    Some("record" | "enum" | "fixed" | "error")
                ) {
                    inner_ns = full.rsplit_once('.').map(|(n, _)| n.to_string());
                    out.insert(full.clone(), node);
                    if let Some((_, short)) = full.rsplit_once('.') {
                        out.entry(short.to_string()).or_insert(node);
                    }
                }
            }
            if let Some(fields) = obj.get("fields").and_then(Json::as_array) {
                for f in fields {
                    if let Some(t) = f.get("type") {
                        collect_named(t, inner_ns.as_deref(), out);
                    }
                }
            }
            for key in ["items", "values"] {
                if let Some(t) = obj.get(key) {
                    collect_named(t, inner_ns.as_deref(), out);
                }
            }
            if let Some(t @ (Json::Object(_) | Json::Array(_))) = obj.get("type") {
                collect_named(t, inner_ns.as_deref(), out);
            }
        }
        _ => {}
    }
}

fn walk(node: &Json, path: &[&str], named: &HashMap<String, &Json>, depth: usize) -> bool {
    if path.is_empty() {
        return true;
    }
    if depth > 64 {
        return false;
    }
    match node {
        Json::String(name) => named
            .get(name.as_str())
            .is_some_and(|n| walk(n, path, named, depth + 1)),
        Json::Array(branches) => branches.iter().any(|b| walk(b, path, named, depth + 1)),
        Json::Object(obj) => match obj.get("type") {
            Some(Json::String(t)) if t == "record" || t == "error" => obj
                .get("fields")
                .and_then(Json::as_array)
                .and_then(|fields| {
                    fields
                        .iter()
                        .find(|f| f.get("name").and_then(Json::as_str) == Some(path[0]))
                })
                .and_then(|f| f.get("type"))
                .is_some_and(|t| walk(t, &path[1..], named, depth + 1)),
            Some(Json::String(t)) if t == "map" || t == "array" => true,
            Some(inner @ (Json::Object(_) | Json::Array(_))) => walk(inner, path, named, depth + 1),
            Some(Json::String(t)) => named
                .get(t.as_str())
                .is_some_and(|n| walk(n, path, named, depth + 1)),
            _ => false,
        },
        _ => false,
    }
}

fn top_level_fields(node: &Json, named: &HashMap<String, &Json>, out: &mut Vec<String>) {
    if let Some(fields) = node.get("fields").and_then(Json::as_array) {
        out.extend(
            fields
                .iter()
                .filter_map(|f| f.get("name").and_then(Json::as_str))
                .map(str::to_string),
        );
    } else if let Some(Json::String(name)) = node.get("type") {
        if let Some(n) = named.get(name.as_str()) {
            top_level_fields(n, named, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SCHEMA: &str = r#"{
      "type": "record", "name": "PodEvent", "namespace": "io.k8s",
      "fields": [
        {"name": "pod", "type": "string"},
        {"name": "restart_count", "type": "int"},
        {"name": "owner", "type": ["null", {"type": "record", "name": "Owner",
            "fields": [{"name": "team", "type": "string"}]}], "default": null},
        {"name": "previous_owner", "type": ["null", "Owner"], "default": null},
        {"name": "labels", "type": {"type": "map", "values": "string"}},
        {"name": "phase", "type": {"type": "enum", "name": "Phase", "symbols": ["RUNNING", "CRASHLOOP"]}}
      ]}"#;

    #[test]
    fn json_round_trips_through_avro() {
        let schema = parse_schema(SCHEMA).unwrap();
        let doc = json!({"pod": "api-1", "restart_count": 4, "owner": {"team": "core"},
            "previous_owner": null, "labels": {"app": "api"}, "phase": "CRASHLOOP"});
        let datum = json_to_datum(&schema, &doc).unwrap();
        assert_eq!(datum_to_json(&schema, &datum).unwrap(), doc);
    }

    #[test]
    fn json_mismatch_and_garbage_are_errors() {
        let schema = parse_schema(SCHEMA).unwrap();
        assert!(matches!(
            json_to_datum(&schema, &json!({"pod": 1})),
            Err(AvroError::Mismatch(_))
        ));
        assert!(matches!(
            datum_to_json(&schema, &[0xff, 0xff, 0xff]),
            Err(AvroError::Undecodable(_))
        ));
    }

    #[test]
    fn field_paths_resolve_through_unions_and_named_refs() {
        assert!(check_field_path(SCHEMA, &["restart_count"]).is_ok());
        assert!(check_field_path(SCHEMA, &["owner", "team"]).is_ok());
        assert!(check_field_path(SCHEMA, &["previous_owner", "team"]).is_ok());
        assert!(check_field_path(SCHEMA, &["labels", "anything"]).is_ok());
        let err = check_field_path(SCHEMA, &["restarts"]).unwrap_err();
        assert!(
            err.contains("restarts") && err.contains("restart_count"),
            "{err}"
        );
        assert!(check_field_path(SCHEMA, &["owner", "name"]).is_err());
    }
}
