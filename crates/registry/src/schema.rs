//! Avro schema text: validation, the text the registry keeps, and the identity key.
//!
//! Confluent decides whether two registrations are "the same schema" by comparing Avro's own
//! rendering of the parsed schema (`Schema.toString()` in Java): whitespace, key order and the
//! spelling of names (`"namespace"` + short name vs. full name, `{"type":"int"}` vs. `"int"`)
//! do not matter, but everything else does, including `doc`, `default`, `aliases`,
//! `logicalType` and custom properties. The Avro *Parsing Canonical Form*
//! (`Schema::canonical_form()`) strips `default`, `doc`, `aliases` and `logicalType`, so using
//! it as the identity would give a schema that only adds a field default the id of the schema
//! without it, which Confluent never does. [`identity_key`] therefore normalises exactly the
//! differences Confluent ignores and keeps the rest.
//!
//! The text kept for a new id is the submitted text with the whitespace between JSON tokens
//! removed (Confluent also answers a compact rendering, not the submitted bytes).

use std::panic::{catch_unwind, AssertUnwindSafe};

use apache_avro::Schema;
use serde_json::Value;

use crate::error::RegistryError;

/// A submitted schema that parsed as Avro.
#[derive(Debug, Clone)]
pub struct AvroSchema {
    /// The parsed schema (used by the compatibility checks).
    pub parsed: Schema,
    /// The text to keep if this schema gets a new id: the submitted JSON, compacted.
    pub text: String,
    /// Two schemas with equal keys are the same schema (same id, same version).
    pub key: String,
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// Validates `text` as an Avro schema; an invalid one is a 42201 with the parser's reason.
pub fn parse(text: &str) -> Result<AvroSchema, RegistryError> {
    if text.trim().is_empty() {
        return Err(RegistryError::InvalidSchema("empty schema".to_string()));
    }
    let json: Value = serde_json::from_str(text)
        .map_err(|e| RegistryError::InvalidSchema(format!("the schema is not JSON: {e}")))?;
    // apache-avro panics on some invalid names instead of returning an error.
    check_names(&json).map_err(RegistryError::InvalidSchema)?;
    let parsed = match catch_unwind(AssertUnwindSafe(|| Schema::parse(&json))) {
        Ok(Ok(schema)) => schema,
        Ok(Err(e)) => return Err(RegistryError::InvalidSchema(error_chain(&e))),
        Err(_) => {
            return Err(RegistryError::InvalidSchema(
                "the Avro parser failed on this schema".to_string(),
            ))
        }
    };
    Ok(AvroSchema {
        parsed,
        text: compact(text),
        key: identity_key(&json),
    })
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_full_name(name: &str) -> bool {
    name.split('.').all(is_name)
}

fn illegal(what: &str, name: &str) -> String {
    format!(
        "Illegal {what} \"{name}\": a name starts with a letter or _ and has only letters, digits \
         and _ (dots separate namespace parts)"
    )
}

/// Checks the names of named types, their namespaces and aliases, and type references, in
/// schema positions only (not inside `default` values).
fn check_names(schema: &Value) -> Result<(), String> {
    match schema {
        Value::String(name) if !is_primitive(name) && !is_full_name(name) => {
            Err(illegal("type name", name))
        }
        Value::Array(variants) => variants.iter().try_for_each(check_names),
        Value::Object(map) => match map.get("type") {
            Some(Value::String(kind)) => match kind.as_str() {
                "record" | "error" | "enum" | "fixed" => {
                    if let Some(Value::String(name)) = map.get("name") {
                        if !is_full_name(name) {
                            return Err(illegal("name", name));
                        }
                    }
                    if let Some(Value::String(ns)) = map.get("namespace") {
                        if !ns.is_empty() && !is_full_name(ns) {
                            return Err(illegal("namespace", ns));
                        }
                    }
                    if let Some(Value::Array(aliases)) = map.get("aliases") {
                        for alias in aliases.iter().filter_map(Value::as_str) {
                            if !is_full_name(alias) {
                                return Err(illegal("alias", alias));
                            }
                        }
                    }
                    if let Some(Value::Array(fields)) = map.get("fields") {
                        for field in fields {
                            if let Some(t) = field.get("type") {
                                check_names(t)?;
                            }
                        }
                    }
                    Ok(())
                }
                "array" => map.get("items").map_or(Ok(()), check_names),
                "map" => map.get("values").map_or(Ok(()), check_names),
                other if is_primitive(other) => Ok(()),
                other if is_full_name(other) => Ok(()),
                other => Err(illegal("type name", other)),
            },
            Some(nested) => check_names(nested),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// An error's message followed by its sources' messages.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !message.contains(&next) {
            message.push_str(": ");
            message.push_str(&next);
        }
        source = e.source();
    }
    message
}

/// `text` (valid JSON) without the whitespace between tokens.
pub fn compact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

/// The identity of a schema document (see the module docs): names fully qualified,
/// `"namespace"` dropped, `{"type":"<primitive>"}` reduced to `"<primitive>"`, object keys
/// sorted, no whitespace; every other attribute kept.
pub fn identity_key(json: &Value) -> String {
    let mut out = String::new();
    write_sorted(&normalize(json, None), &mut out);
    out
}

fn is_primitive(name: &str) -> bool {
    PRIMITIVES.contains(&name)
}

fn qualify(name: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if !ns.is_empty() && !name.contains('.') => format!("{ns}.{name}"),
        _ => name.to_string(),
    }
}

fn normalize(value: &Value, namespace: Option<&str>) -> Value {
    match value {
        Value::String(name) if is_primitive(name) => value.clone(),
        Value::String(name) => Value::String(qualify(name, namespace)),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| normalize(v, namespace)).collect())
        }
        Value::Object(map) => {
            let kind = map.get("type").and_then(Value::as_str);
            if map.len() == 1 {
                if let Some(kind) = kind.filter(|k| is_primitive(k)) {
                    return Value::String(kind.to_string());
                }
            }
            let named = matches!(kind, Some("record" | "error" | "enum" | "fixed"));
            match (named, map.get("name").and_then(Value::as_str)) {
                (true, Some(name)) => {
                    let full = if name.contains('.') {
                        name.to_string()
                    } else {
                        match map.get("namespace") {
                            Some(Value::String(ns)) => qualify(name, Some(ns)),
                            Some(Value::Null) => name.to_string(),
                            _ => qualify(name, namespace),
                        }
                    };
                    let inner_ns = full.rsplit_once('.').map(|(ns, _)| ns.to_string());
                    let mut out = serde_json::Map::new();
                    for (k, v) in map {
                        match k.as_str() {
                            "namespace" => {}
                            "name" => {
                                out.insert(k.clone(), Value::String(full.clone()));
                            }
                            "fields" => {
                                out.insert(k.clone(), normalize_fields(v, inner_ns.as_deref()));
                            }
                            _ => {
                                out.insert(k.clone(), v.clone());
                            }
                        }
                    }
                    Value::Object(out)
                }
                _ => {
                    let mut out = serde_json::Map::new();
                    for (k, v) in map {
                        let v = match k.as_str() {
                            "type" | "items" | "values" => normalize(v, namespace),
                            _ => v.clone(),
                        };
                        out.insert(k.clone(), v);
                    }
                    Value::Object(out)
                }
            }
        }
        other => other.clone(),
    }
}

fn normalize_fields(fields: &Value, namespace: Option<&str>) -> Value {
    match fields {
        Value::Array(fields) => Value::Array(
            fields
                .iter()
                .map(|field| match field {
                    Value::Object(map) => Value::Object(
                        map.iter()
                            .map(|(k, v)| {
                                let v = if k == "type" {
                                    normalize(v, namespace)
                                } else {
                                    v.clone()
                                };
                                (k.clone(), v)
                            })
                            .collect(),
                    ),
                    other => other.clone(),
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Compact JSON with object keys sorted (independent of serde_json's `preserve_order`).
fn write_sorted(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_sorted(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> String {
        match parse(text) {
            Ok(s) => s.key,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    #[test]
    fn whitespace_order_and_name_spelling_do_not_matter() {
        let a = r#"{"type":"record","name":"r","namespace":"a.b","fields":[{"name":"x","type":"int"}]}"#;
        let b = r#"{ "fields": [ {"type": {"type": "int"}, "name": "x"} ], "name": "a.b.r", "type": "record" }"#;
        assert_eq!(key(a), key(b));
    }

    #[test]
    fn defaults_docs_and_logical_types_matter() {
        let base = r#"{"type":"record","name":"r","fields":[{"name":"x","type":"long"}]}"#;
        let with_default =
            r#"{"type":"record","name":"r","fields":[{"name":"x","type":"long","default":0}]}"#;
        let with_doc =
            r#"{"type":"record","name":"r","doc":"d","fields":[{"name":"x","type":"long"}]}"#;
        let logical = r#"{"type":"record","name":"r","fields":[{"name":"x","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#;
        assert_ne!(key(base), key(with_default));
        assert_ne!(key(base), key(with_doc));
        assert_ne!(key(base), key(logical));
    }

    #[test]
    fn references_to_named_types_are_qualified() {
        let a = r#"{"type":"record","name":"r","namespace":"n","fields":[{"name":"e","type":{"type":"enum","name":"E","symbols":["A"]}},{"name":"f","type":"E"}]}"#;
        let b = r#"{"type":"record","name":"n.r","fields":[{"name":"e","type":{"type":"enum","name":"n.E","symbols":["A"]}},{"name":"f","type":"n.E"}]}"#;
        assert_eq!(key(a), key(b));
    }

    #[test]
    fn compact_keeps_strings() {
        assert_eq!(
            compact("{ \"doc\" : \"a  b \\\" c\" ,\n \"type\": \"string\" }"),
            "{\"doc\":\"a  b \\\" c\",\"type\":\"string\"}"
        );
    }

    #[test]
    fn invalid_schemas_are_42201() {
        for text in [
            "",
            "{",
            r#"{"type":"record","fields":[]}"#,
            r#"{"type":"nope"}"#,
            "42",
            r#"{"type":"record","name":"my-rec","fields":[]}"#,
            r#"{"type":"record","name":"r","namespace":"a-b","fields":[]}"#,
            r#"{"type":"record","name":"r","aliases":["x y"],"fields":[]}"#,
            r#"{"type":"record","name":"r","fields":[{"name":"f","type":{"type":"my-type"}}]}"#,
            r#"{"type":"record","name":"r","fields":[{"name":"f","type":{"type":{"type":"enum","name":"1e","symbols":[]}}}]}"#,
        ] {
            match parse(text) {
                Err(e) => {
                    assert_eq!(e.error_code(), 42201, "{text}");
                    // A real reason, not the answer to a panic inside apache-avro.
                    assert!(
                        !e.to_string().contains("failed on this schema"),
                        "{text}: {e}"
                    );
                }
                Ok(_) => panic!("{text} parsed"),
            }
        }
    }
}
