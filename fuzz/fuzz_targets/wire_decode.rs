//! The router's decode path for untrusted record values: Confluent framing, then the Avro
//! datum decoded into CEL values with the pod-event schema and with a recursive schema.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const POD: &str = include_str!("../../avro/k8s_pod_event.avsc");
const NESTED: &str =
    r#"{"type":"record","name":"N","fields":[{"name":"next","type":["null","N"]},{"name":"tags","type":{"type":"array","items":"string"}},{"name":"m","type":{"type":"map","values":"null"}}]}"#;

fn schemas() -> &'static [serde_avro_fast::Schema; 2] {
    static S: OnceLock<[serde_avro_fast::Schema; 2]> = OnceLock::new();
    S.get_or_init(|| [POD.parse().unwrap(), NESTED.parse().unwrap()])
}

fuzz_target!(|data: &[u8]| {
    if let Ok(framed) = reflex_core::wire::decode_frame(data) {
        let schema = &schemas()[(framed.schema_id & 1) as usize];
        let _ = reflex_router::decode::to_cel(framed.datum, schema);
        let _ = reflex_router::decode::validate(framed.datum, schema);
    }
});
