//! Untrusted record values through the router: Confluent framing, then the Avro datum decoded
//! with every real schema (`avro/`, the example packs, a recursive one) by the three decoders
//! the router uses, then the whole `Router::verdict` path (limits, envelope, framing, schema
//! lookup, decode, the example pack's rules evaluated). Any input must give a value or an
//! error, never a panic, a stack overflow or a runaway allocation.
//!
//! Input: a Confluent frame. Its schema id picks the schema (id `i + 1` is `SCHEMAS[i]`, other
//! ids wrap around) and is rewritten to that preloaded id, so nothing ever reaches for a
//! registry. The router gets the rules of the example pack that consumes that schema (for
//! the other schemas, one of the packs: an event of the wrong schema for its rules).
#![no_main]

use std::collections::HashSet;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use reflex_fuzz::{event, registry, router, runtime, RULE_FILES, SCHEMAS};
use reflex_router::{decode, Router};

struct Fixtures {
    schemas: Vec<serde_avro_fast::Schema>,
    /// Top-level fields for `to_cel_fields` (the router's path when rules read a few fields):
    /// some the example rules read, and the recursive schema's.
    fields: HashSet<String>,
    routers: Vec<Router>,
    rt: tokio::runtime::Runtime,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        // Parsed the way the registry client parses them.
        let _ = registry();
        Fixtures {
            schemas: SCHEMAS.iter().map(|s| s.parse().unwrap()).collect(),
            fields: [
                "restart_count",
                "rollout_in_progress",
                "confidence",
                "asset_class",
                "tier",
                "idle_minutes",
                "active_jobs",
                "status",
                "next",
                "tags",
            ]
            .map(String::from)
            .into(),
            routers: RULE_FILES
                .iter()
                .map(|(rules, ..)| router(rules).unwrap())
                .collect(),
            rt: runtime(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixtures();
    let Ok(framed) = reflex_core::wire::decode_frame(data) else {
        return;
    };
    let index = framed.schema_id.wrapping_sub(1) as usize % f.schemas.len();
    let schema = &f.schemas[index];
    let _ = decode::to_cel(framed.datum, schema);
    let _ = decode::to_cel_fields(framed.datum, schema, &f.fields);
    let _ = decode::validate(framed.datum, schema);

    let pack = RULE_FILES
        .iter()
        .position(|(_, s, _)| *s == index)
        .unwrap_or(index % RULE_FILES.len());
    let mut value = data.to_vec();
    value[1..5].copy_from_slice(&(index as u32 + 1).to_be_bytes());
    let ce_type = RULE_FILES[pack].2;
    let _ =
        f.rt.block_on(f.routers[pack].verdict(&event(ce_type, &value)));
});
