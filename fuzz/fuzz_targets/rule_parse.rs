//! The router's rule-file loader: TOML, the length and nesting limits, the CEL compiler and
//! the payload-field check against the input schema; then the compiled rules evaluated on a
//! real event by `Router::verdict`. Any input must give a rule set (and a verdict) or an
//! error, never a panic or a stack overflow.
//!
//! Input: a rule file; it is also tried as a lone condition in a minimal rule file, so the
//! fuzzer reaches CEL without first finding valid TOML.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use reflex_fuzz::{event, registry, runtime, SCHEMAS};
use reflex_router::rules::RuleSet;
use reflex_router::Router;

/// A valid crash-loop event (`examples/crash-loop/events.jsonl`, first line), framed with
/// schema id 4 (`examples/crash-loop/avro/pod_event.avsc`).
const EVENT: &[u8] = include_bytes!("../../tests/corpus/wire_decode/crash_loop_event.bin");

struct Fixtures {
    registry: reflex_core::registry::RegistryClient,
    rt: tokio::runtime::Runtime,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| Fixtures {
        registry: registry(),
        rt: runtime(),
    })
}

fn check(text: &str) {
    let f = fixtures();
    let Ok(rules) = RuleSet::parse(Path::new("fuzz.toml"), text) else {
        return;
    };
    // Start-up's check that payload fields exist in the input topic's schema.
    let _ = rules.check_schema("in", "in-value", SCHEMAS[3]);
    let router = Router::new(rules, f.registry.clone(), 3);
    let _ =
        f.rt.block_on(router.verdict(&event("io.k8s.pod.crashloop", EVENT)));
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(text);
    // The condition alone, wrapped in a minimal rule file.
    check(&format!(
        "[[rule]]\nname = \"f\"\nwhen = '''{}'''\nto = [\"out\"]\n",
        text.replace("'''", "")
    ));
});
