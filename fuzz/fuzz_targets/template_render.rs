//! Action templates: compile arbitrary template text and render it with fuel and an output
//! limit. Any input must render or fail with an error, never panic or run away.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut templates = reflex_core::template::Templates::new(10_000, 64 << 10);
    if templates.add("t", text).is_ok() {
        let ctx = serde_json::json!({
            "params": {"pod": "p1", "n": 3},
            "target": "http://gw/x",
            "context": {"owner": "team", "list": [1, 2, 3]},
        });
        let _ = templates.render("t", &ctx);
    }
});
