//! Compatibility levels and checks, on top of `apache_avro::schema_compatibility`.

use std::collections::HashMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use apache_avro::error::CompatibilityError;
use apache_avro::schema::{Name, UnionSchema};
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use serde::{Deserialize, Serialize};

/// A Confluent compatibility level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Compatibility {
    None,
    #[default]
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Compatibility {
    pub const ALL: [Compatibility; 7] = [
        Compatibility::None,
        Compatibility::Backward,
        Compatibility::BackwardTransitive,
        Compatibility::Forward,
        Compatibility::ForwardTransitive,
        Compatibility::Full,
        Compatibility::FullTransitive,
    ];

    /// Parses a level name, ignoring case (`"full_transitive"`, `"BACKWARD"`).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(name.trim()))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Compatibility::None => "NONE",
            Compatibility::Backward => "BACKWARD",
            Compatibility::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Compatibility::Forward => "FORWARD",
            Compatibility::ForwardTransitive => "FORWARD_TRANSITIVE",
            Compatibility::Full => "FULL",
            Compatibility::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Checked against every earlier version, not only the latest.
    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            Compatibility::BackwardTransitive
                | Compatibility::ForwardTransitive
                | Compatibility::FullTransitive
        )
    }

    /// The new schema must read data written with the old one.
    fn backward(self) -> bool {
        matches!(
            self,
            Compatibility::Backward
                | Compatibility::BackwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        )
    }

    /// The old schema must read data written with the new one.
    fn forward(self) -> bool {
        matches!(
            self,
            Compatibility::Forward
                | Compatibility::ForwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        )
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An earlier version to check a new schema against.
pub struct Previous<'a> {
    pub version: i32,
    pub schema: &'a Schema,
    pub text: &'a str,
}

/// Checks `new` against `previous` (oldest first) under `level`, as Confluent does: newest
/// first, stopping at the first incompatible version. Non-transitive levels look only at the
/// last entry of `previous`. Returns Confluent-style messages; empty means compatible.
pub fn check(level: Compatibility, new: &Schema, previous: &[Previous<'_>]) -> Vec<String> {
    if level == Compatibility::None || previous.is_empty() {
        return Vec::new();
    }
    let against: &[Previous<'_>] = if level.is_transitive() {
        previous
    } else {
        &previous[previous.len() - 1..]
    };
    let new = expand_refs(new);
    for old in against.iter().rev() {
        let old_schema = expand_refs(old.schema);
        let mut messages = Vec::new();
        if level.backward() {
            if let Err(reason) = can_read(&old_schema, &new) {
                messages.push(describe(
                    &reason,
                    &format!(
                        "the new schema (reader) cannot read data written with version {} (writer)",
                        old.version
                    ),
                ));
            }
        }
        if level.forward() {
            if let Err(reason) = can_read(&new, &old_schema) {
                messages.push(describe(
                    &reason,
                    &format!(
                        "version {} (reader) cannot read data written with the new schema (writer)",
                        old.version
                    ),
                ));
            }
        }
        if !messages.is_empty() {
            messages.push(format!("{{oldSchemaVersion: {}}}", old.version));
            messages.push(format!("{{oldSchema: '{}'}}", old.text));
            messages.push(format!("{{compatibility: '{level}'}}"));
            return messages;
        }
    }
    Vec::new()
}

enum Failure {
    Incompatible(CompatibilityError),
    Panicked,
}

fn can_read(writer: &Schema, reader: &Schema) -> Result<(), Failure> {
    match catch_unwind(AssertUnwindSafe(|| {
        SchemaCompatibility::can_read(writer, reader)
    })) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::Incompatible(e)),
        Err(_) => Err(Failure::Panicked),
    }
}

/// One Confluent-style message: `{errorType:'…', description:'…'}`.
fn describe(failure: &Failure, direction: &str) -> String {
    let (error_type, detail) = match failure {
        Failure::Panicked => (
            "TYPE_MISMATCH",
            "the Avro compatibility checker failed on these schemas".to_string(),
        ),
        Failure::Incompatible(e) => (error_type(e), one_line(&crate::schema::error_chain(e))),
    };
    format!("{{errorType:'{error_type}', description:'{direction}: {detail}'}}")
}

fn error_type(error: &CompatibilityError) -> &'static str {
    match error {
        CompatibilityError::FieldTypeMismatch(_, inner) => error_type(inner),
        CompatibilityError::MissingDefaultValue(_) => "READER_FIELD_MISSING_DEFAULT_VALUE",
        CompatibilityError::MissingSymbols => "MISSING_ENUM_SYMBOLS",
        CompatibilityError::MissingUnionElements => "MISSING_UNION_BRANCH",
        CompatibilityError::FixedMismatch => "FIXED_SIZE_MISMATCH",
        CompatibilityError::NameMismatch { .. } => "NAME_MISMATCH",
        CompatibilityError::WrongType { .. }
        | CompatibilityError::TypeExpected { .. }
        | CompatibilityError::Inconclusive(_) => "TYPE_MISMATCH",
    }
}

/// Some apache-avro messages embed pretty-printed schemas: fold them onto one bounded line.
fn one_line(message: &str) -> String {
    const MAX: usize = 600;
    let folded = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if folded.chars().count() <= MAX {
        folded
    } else {
        let mut cut: String = folded.chars().take(MAX).collect();
        cut.push_str(" …");
        cut
    }
}

/// Replaces references to named types (`Schema::Ref`) by their definitions, except where a
/// type refers to itself (recursion). apache-avro's checker compares a reference only with
/// another reference of the same name, so without this, moving the inline definition of a
/// named type to another field (a compatible change) would look like a type change.
fn expand_refs(schema: &Schema) -> Schema {
    let mut definitions = HashMap::new();
    collect_definitions(schema, &mut definitions);
    if definitions.is_empty() {
        return schema.clone();
    }
    let mut budget = 100_000usize;
    let mut stack = Vec::new();
    expand(schema, &definitions, &mut stack, &mut budget).unwrap_or_else(|| schema.clone())
}

fn collect_definitions(schema: &Schema, out: &mut HashMap<Name, Schema>) {
    match schema {
        Schema::Record(record) => {
            out.entry(record.name.clone())
                .or_insert_with(|| schema.clone());
            for field in &record.fields {
                collect_definitions(&field.schema, out);
            }
        }
        Schema::Enum(e) => {
            out.entry(e.name.clone()).or_insert_with(|| schema.clone());
        }
        Schema::Fixed(f) => {
            out.entry(f.name.clone()).or_insert_with(|| schema.clone());
        }
        Schema::Decimal(d) => collect_definitions(&d.inner, out),
        Schema::Array(a) => collect_definitions(&a.items, out),
        Schema::Map(m) => collect_definitions(&m.types, out),
        Schema::Union(u) => {
            for variant in u.variants() {
                collect_definitions(variant, out);
            }
        }
        _ => {}
    }
}

/// `None` when the expansion grows past the budget (the caller then keeps the references).
fn expand(
    schema: &Schema,
    definitions: &HashMap<Name, Schema>,
    stack: &mut Vec<Name>,
    budget: &mut usize,
) -> Option<Schema> {
    *budget = budget.checked_sub(1)?;
    Some(match schema {
        Schema::Ref { name } => match definitions.get(name) {
            Some(definition) if !stack.contains(name) => {
                expand(definition, definitions, stack, budget)?
            }
            _ => schema.clone(),
        },
        Schema::Record(record) => {
            stack.push(record.name.clone());
            let mut fields = Vec::with_capacity(record.fields.len());
            for field in &record.fields {
                let mut field = field.clone();
                field.schema = expand(&field.schema, definitions, stack, budget)?;
                fields.push(field);
            }
            stack.pop();
            let mut record = record.clone();
            record.fields = fields;
            Schema::Record(record)
        }
        Schema::Array(array) => {
            let mut array = array.clone();
            array.items = Box::new(expand(&array.items, definitions, stack, budget)?);
            Schema::Array(array)
        }
        Schema::Map(map) => {
            let mut map = map.clone();
            map.types = Box::new(expand(&map.types, definitions, stack, budget)?);
            Schema::Map(map)
        }
        Schema::Union(union) => {
            let mut variants = Vec::with_capacity(union.variants().len());
            for variant in union.variants() {
                variants.push(expand(variant, definitions, stack, budget)?);
            }
            match UnionSchema::new(variants) {
                Ok(u) => Schema::Union(u),
                Err(_) => schema.clone(),
            }
        }
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(text: &str) -> Schema {
        match Schema::parse_str(text) {
            Ok(s) => s,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    fn prev<'a>(version: i32, schema: &'a Schema, text: &'a str) -> Previous<'a> {
        Previous {
            version,
            schema,
            text,
        }
    }

    const V1: &str = r#"{"type":"record","name":"r","fields":[{"name":"a","type":"int"}]}"#;
    const ADD_NO_DEFAULT: &str = r#"{"type":"record","name":"r","fields":[{"name":"a","type":"int"},{"name":"b","type":"string"}]}"#;
    const ADD_DEFAULT: &str = r#"{"type":"record","name":"r","fields":[{"name":"a","type":"int"},{"name":"b","type":"string","default":""}]}"#;

    #[test]
    fn levels_parse_in_any_case() {
        assert_eq!(
            Compatibility::parse("full_transitive"),
            Some(Compatibility::FullTransitive)
        );
        assert_eq!(Compatibility::parse("NONE"), Some(Compatibility::None));
        assert_eq!(Compatibility::parse("sideways"), None);
    }

    #[test]
    fn directions() {
        let v1 = schema(V1);
        let no_default = schema(ADD_NO_DEFAULT);
        let with_default = schema(ADD_DEFAULT);
        let p = [prev(1, &v1, V1)];
        assert!(!check(Compatibility::Backward, &no_default, &p).is_empty());
        assert!(check(Compatibility::Forward, &no_default, &p).is_empty());
        assert!(!check(Compatibility::Full, &no_default, &p).is_empty());
        assert!(check(Compatibility::Full, &with_default, &p).is_empty());
        assert!(check(Compatibility::None, &no_default, &p).is_empty());
        let messages = check(Compatibility::Backward, &no_default, &p);
        assert!(messages[0].contains("READER_FIELD_MISSING_DEFAULT_VALUE"));
        assert!(messages.iter().any(|m| m == "{oldSchemaVersion: 1}"));
    }

    #[test]
    fn moving_a_named_type_definition_is_compatible() {
        let old = r#"{"type":"record","name":"r","fields":[
            {"name":"a","type":{"type":"enum","name":"E","symbols":["X","Y"]}},
            {"name":"b","type":"E"}]}"#;
        let new = r#"{"type":"record","name":"r","fields":[
            {"name":"b","type":{"type":"enum","name":"E","symbols":["X","Y"]}},
            {"name":"a","type":"E"}]}"#;
        let (o, n) = (schema(old), schema(new));
        assert!(check(Compatibility::FullTransitive, &n, &[prev(1, &o, old)]).is_empty());
    }

    #[test]
    fn recursive_types_are_checked() {
        let old = r#"{"type":"record","name":"Node","fields":[
            {"name":"v","type":"int"},{"name":"next","type":["null","Node"],"default":null}]}"#;
        let new = r#"{"type":"record","name":"Node","fields":[
            {"name":"v","type":"long"},{"name":"next","type":["null","Node"],"default":null}]}"#;
        let (o, n) = (schema(old), schema(new));
        assert!(check(Compatibility::Backward, &n, &[prev(1, &o, old)]).is_empty());
        assert!(!check(Compatibility::Forward, &n, &[prev(1, &o, old)]).is_empty());
    }
}
