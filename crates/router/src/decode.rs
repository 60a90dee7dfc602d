//! Decodes an Avro datum straight into CEL values with `serde_avro_fast` (no intermediate JSON):
//! the router's hot path when rules read payload fields.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::Value;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Decodes `datum` with `schema` into a CEL value (records and maps become CEL maps).
pub fn to_cel(datum: &[u8], schema: &serde_avro_fast::Schema) -> Result<Value, String> {
    serde_avro_fast::from_datum_slice::<CelValue>(datum, schema)
        .map(|v| v.0)
        .map_err(|e| e.to_string())
}

/// Checks that `datum` decodes with `schema`, without building anything.
pub fn validate(datum: &[u8], schema: &serde_avro_fast::Schema) -> Result<(), String> {
    serde_avro_fast::from_datum_slice::<IgnoredAny>(datum, schema)
        .map(|_| ())
        .map_err(|e| e.to_string())
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
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(CelValue(v)) = seq.next_element_seed(CelSeed)? {
            items.push(v);
        }
        Ok(CelValue(Value::List(Arc::new(items))))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CelValue, A::Error> {
        let mut out: HashMap<Key, Value> = HashMap::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(key) = map.next_key::<String>()? {
            let CelValue(value) = map.next_value_seed(CelSeed)?;
            out.insert(Key::String(Arc::new(key)), value);
        }
        Ok(CelValue(Value::Map(Map { map: Arc::new(out) })))
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
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let schema: serde_avro_fast::Schema = SCHEMA.parse().unwrap();
        assert!(to_cel(&[0xff, 0xff, 0xff, 0xff, 0xff], &schema).is_err());
        assert!(validate(&[], &schema).is_err());
    }
}
