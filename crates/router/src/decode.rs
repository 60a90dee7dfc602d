//! Decodes an Avro datum straight into CEL values with `serde_avro_fast` (no intermediate JSON):
//! the router's hot path when rules read payload fields.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::Value;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Decodes `datum` with `schema` into a CEL value (records and maps become CEL maps).
pub fn to_cel(datum: &[u8], schema: &serde_avro_fast::Schema) -> Result<Value, String> {
    decode::<CelValue>(datum, schema).map(|v| v.0)
}

/// Like [`to_cel`], but builds only the top-level record fields in `fields` (the others are
/// still read, to validate the datum, but not turned into values): the rules' payload reads.
pub fn to_cel_fields(
    datum: &[u8],
    schema: &serde_avro_fast::Schema,
    fields: &HashSet<String>,
) -> Result<Value, String> {
    let mut de = serde_avro_fast::de::DeserializerState::from_slice(datum, schema);
    TopSeed { fields }
        .deserialize(de.deserializer())
        .map(|v| v.0)
        .map_err(|e| e.to_string())
}

/// Checks that `datum` decodes with `schema`, without building anything.
pub fn validate(datum: &[u8], schema: &serde_avro_fast::Schema) -> Result<(), String> {
    decode::<IgnoredAny>(datum, schema).map(|_| ())
}

/// Deepest nesting of a decoded value (the decoder recurses per level).
pub const MAX_DEPTH: usize = 64;

/// Decodes with bounds a hostile datum cannot exceed: nesting depth [`MAX_DEPTH`], and array or
/// map lengths at most the datum's size plus 1024. Zero-byte items (`null`, empty records) would
/// otherwise let a 10-byte datum claim a billion elements and spin the CPU.
fn decode<'a, T: serde::Deserialize<'a>>(
    datum: &'a [u8],
    schema: &serde_avro_fast::Schema,
) -> Result<T, String> {
    let mut config = serde_avro_fast::de::DeserializerConfig::new(schema);
    config.allowed_depth = MAX_DEPTH;
    config.max_seq_size = datum.len() + 1024;
    let mut state = serde_avro_fast::de::DeserializerState::with_config(
        serde_avro_fast::de::read::SliceRead::new(datum),
        config,
    );
    T::deserialize(state.deserializer()).map_err(|e| e.to_string())
}

struct CelValue(Value);

impl<'de> serde::Deserialize<'de> for CelValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        CelSeed.deserialize(deserializer)
    }
}

struct CelSeed;

impl<'de> DeserializeSeed<'de> for CelSeed {
    type Value = CelValue;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<CelValue, D::Error> {
        deserializer.deserialize_any(CelVisitor)
    }
}

struct CelVisitor;

impl<'de> Visitor<'de> for CelVisitor {
    type Value = CelValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an Avro value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<CelValue, E> {
        Ok(CelValue(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<CelValue, E> {
        Ok(CelValue(Value::Int(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<CelValue, E> {
        Ok(CelValue(match i64::try_from(v) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::UInt(v),
        }))
    }
    fn visit_f64<E>(self, v: f64) -> Result<CelValue, E> {
        Ok(CelValue(Value::Float(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<CelValue, E> {
        Ok(CelValue(Value::String(Arc::new(v.to_string()))))
    }
    fn visit_string<E>(self, v: String) -> Result<CelValue, E> {
        Ok(CelValue(Value::String(Arc::new(v))))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<CelValue, E> {
        Ok(CelValue(Value::Bytes(Arc::new(v.to_vec()))))
    }
    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<CelValue, E> {
        Ok(CelValue(Value::Bytes(Arc::new(v))))
    }
    fn visit_unit<E>(self) -> Result<CelValue, E> {
        Ok(CelValue(Value::Null))
    }
    fn visit_none<E>(self) -> Result<CelValue, E> {
        Ok(CelValue(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<CelValue, D::Error> {
        CelSeed.deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CelValue, A::Error> {
        // Capacity hints are capped: they come from the (untrusted) datum.
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(CelValue(v)) = seq.next_element_seed(CelSeed)? {
            items.push(v);
        }
        Ok(CelValue(Value::List(Arc::new(items))))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CelValue, A::Error> {
        let mut out: HashMap<Key, Value> =
            HashMap::with_capacity(map.size_hint().unwrap_or(8).min(1024));
        while let Some(key) = map.next_key::<String>()? {
            let CelValue(value) = map.next_value_seed(CelSeed)?;
            out.insert(Key::String(Arc::new(key)), value);
        }
        Ok(CelValue(Value::Map(Map { map: Arc::new(out) })))
    }
}

/// The top-level record, keeping only `fields`.
struct TopSeed<'a> {
    fields: &'a HashSet<String>,
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_> {
    type Value = CelValue;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<CelValue, D::Error> {
        deserializer.deserialize_any(TopVisitor(self.fields))
    }
}

struct TopVisitor<'a>(&'a HashSet<String>);

impl<'de> Visitor<'de> for TopVisitor<'_> {
    type Value = CelValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an Avro record")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CelValue, A::Error> {
        let mut out: HashMap<Key, Value> = HashMap::with_capacity(self.0.len());
        while let Some(key) = map.next_key_seed(KeySeed(self.0))? {
            match key {
                Some(key) => {
                    let CelValue(value) = map.next_value_seed(CelSeed)?;
                    out.insert(Key::String(Arc::new(key)), value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(CelValue(Value::Map(Map { map: Arc::new(out) })))
    }
    // Not a record (a schema whose top level is a union, array, ...): build it all.
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<CelValue, E> {
        CelVisitor.visit_bool(v)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<CelValue, E> {
        CelVisitor.visit_i64(v)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<CelValue, E> {
        CelVisitor.visit_u64(v)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<CelValue, E> {
        CelVisitor.visit_f64(v)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<CelValue, E> {
        CelVisitor.visit_str(v)
    }
    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<CelValue, E> {
        CelVisitor.visit_bytes(v)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<CelValue, E> {
        CelVisitor.visit_unit()
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<CelValue, E> {
        CelVisitor.visit_none()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<CelValue, D::Error> {
        TopSeed { fields: self.0 }.deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<CelValue, A::Error> {
        CelVisitor.visit_seq(seq)
    }
}

/// A record field name: `Some(name)` when it is wanted, `None` to skip its value.
struct KeySeed<'a>(&'a HashSet<String>);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E>(self, v: &str) -> Result<Option<String>, E> {
        // Rules read a handful of fields: comparing beats SipHashing every field name of
        // every record.
        let wanted = if self.0.len() <= 8 {
            self.0.iter().any(|f| f == v)
        } else {
            self.0.contains(v)
        };
        Ok(wanted.then(|| v.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{"type":"record","name":"E","fields":[
        {"name":"pod","type":"string"},
        {"name":"restart_count","type":"int"},
        {"name":"owner","type":["null",{"type":"record","name":"O","fields":[{"name":"team","type":"string"}]}]},
        {"name":"tags","type":{"type":"array","items":"string"}},
        {"name":"phase","type":{"type":"enum","name":"P","symbols":["UP","DOWN"]}}]}"#;

    fn datum() -> Vec<u8> {
        let schema = apache_avro::Schema::parse_str(SCHEMA).unwrap();
        let json = serde_json::json!({"pod":"api-1","restart_count":5,"owner":{"team":"core"},"tags":["a"],"phase":"DOWN"});
        reflex_core::avro::json_to_datum(&schema, &json).unwrap()
    }

    #[test]
    fn decodes_records_unions_arrays_and_enums() {
        let schema: serde_avro_fast::Schema = SCHEMA.parse().unwrap();
        let Value::Map(map) = to_cel(&datum(), &schema).unwrap() else {
            panic!("record should decode to a map")
        };
        let get = |k: &str| map.map.get(&Key::String(Arc::new(k.into()))).cloned();
        assert_eq!(get("restart_count"), Some(Value::Int(5)));
        assert_eq!(get("phase"), Some(Value::String(Arc::new("DOWN".into()))));
        let Some(Value::Map(owner)) = get("owner") else {
            panic!("union branch should be a map")
        };
        assert_eq!(
            owner.map.get(&Key::String(Arc::new("team".into()))),
            Some(&Value::String(Arc::new("core".into())))
        );
        assert!(validate(&datum(), &schema).is_ok());

        let wanted: HashSet<String> = ["restart_count".to_string()].into();
        let Value::Map(only) = to_cel_fields(&datum(), &schema, &wanted).unwrap() else {
            panic!("record should decode to a map")
        };
        assert_eq!(only.map.len(), 1);
        assert_eq!(
            only.map.get(&Key::String(Arc::new("restart_count".into()))),
            Some(&Value::Int(5))
        );
        assert!(to_cel_fields(&[0xff, 0xff, 0xff], &schema, &wanted).is_err());
    }

    #[test]
    fn deep_nesting_and_huge_counts_are_errors_not_crashes() {
        // A recursive schema: each level costs 1 byte (the union branch), so 100 kB nests 100k deep.
        let schema: serde_avro_fast::Schema =
            r#"{"type":"record","name":"N","fields":[{"name":"next","type":["null","N"]}]}"#
                .parse()
                .unwrap();
        let mut deep = vec![2u8; 100_000];
        deep.push(0);
        let e = to_cel(&deep, &schema).unwrap_err();
        assert!(e.contains("recursivity limit"), "{e}");
        assert!(validate(&deep, &schema).is_err());
        // An array of nulls claiming 2^62 items in a few bytes.
        let nulls: serde_avro_fast::Schema = r#"{"type":"array","items":"null"}"#.parse().unwrap();
        let huge = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x00];
        assert!(to_cel(&huge, &nulls).is_err());
        assert!(validate(&huge, &nulls).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let schema: serde_avro_fast::Schema = SCHEMA.parse().unwrap();
        assert!(to_cel(&[0xff, 0xff, 0xff, 0xff, 0xff], &schema).is_err());
        assert!(validate(&[], &schema).is_err());
    }
}
