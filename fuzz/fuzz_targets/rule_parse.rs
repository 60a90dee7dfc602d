//! The rule-file loader: TOML, then each condition through the length/depth limits and the CEL
//! compiler. Any input must give a rule set or an error, never a panic or a stack overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = reflex_router::rules::RuleSet::parse(std::path::Path::new("fuzz.toml"), text);
    // The condition alone, wrapped in a minimal rule file.
    let file = format!(
        "[[rule]]\nname = \"f\"\nwhen = '''{}'''\naction = \"drop\"\n",
        text.replace("'''", "")
    );
    let _ = reflex_router::rules::RuleSet::parse(std::path::Path::new("fuzz.toml"), &file);
});
