use super::*;
use serde_json::json;

#[test]
fn renders_and_reports_variables() {
    let mut t = Templates::default();
    let vars = t
        .add(
            "url",
            "https://api/pods/{{ payload.pod }}?team={{ context.owner | default('none') }}",
        )
        .unwrap();
    assert!(
        vars.contains("payload.pod") && vars.contains("context.owner"),
        "{vars:?}"
    );
    let ctx = json!({"payload": {"pod": "api-1"}, "context": {}});
    assert_eq!(
        t.render("url", &ctx).unwrap(),
        "https://api/pods/api-1?team=none"
    );
}

#[test]
fn missing_variables_syntax_errors_and_runaways_are_errors() {
    let mut t = Templates::default();
    t.add("body", "line one\n{{ payload.nope.deeper }}")
        .unwrap();
    let e = t.render("body", &json!({"payload": {}})).unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    assert!(!e.refused);
    let e = t.add("bad", "{{ payload.pod ").unwrap_err();
    assert!(e.to_string().starts_with("template `bad` line 1"), "{e}");
    let mut t = Templates::new(1000, 100);
    t.add("loop", "{% for i in range(100000) %}x{% endfor %}")
        .unwrap();
    assert!(t.render("loop", &json!({})).is_err());
    t.add("big", "{{ 'x' * 500 }}").unwrap();
    assert!(t
        .render("big", &json!({}))
        .unwrap_err()
        .message
        .contains("limit"));
}

fn one(escape: Escape, source: &str, ctx: serde_json::Value) -> Result<String, TemplateError> {
    let mut t = Templates::default();
    t.add_escaped("t", source, escape).unwrap();
    t.render("t", &ctx)
}

const POD_URL: &str = "http://127.0.0.1:18080/api/v1/namespaces/{{ ns }}/pods/{{ pod }}";

#[test]
fn unescaped_templates_write_values_as_they_are() {
    let out = one(
        Escape::None,
        "{{ a }}/{{ b }} {{ n }} {{ none }} {{ m.k }}",
        json!({"a": "../x?y#z", "b": "\"}\r\n", "n": 4, "none": null, "m": {"k": 1.5}}),
    )
    .unwrap();
    assert_eq!(out, "../x?y#z/\"}\r\n 4 None 1.5");
}

#[test]
fn url_path_values_are_one_segment() {
    let ok = |ns: &str, pod: &str| one(Escape::Url, POD_URL, json!({"ns": ns, "pod": pod}));
    assert_eq!(
        ok("shop", "checkout-7d9f").unwrap(),
        "http://127.0.0.1:18080/api/v1/namespaces/shop/pods/checkout-7d9f"
    );
    // The issue's example: the traversal stays inside the one segment.
    assert_eq!(
        ok("shop", "../../kube-system/pods/coredns").unwrap(),
        "http://127.0.0.1:18080/api/v1/namespaces/shop/pods/..%2F..%2Fkube-system%2Fpods%2Fcoredns"
    );
    assert_eq!(
        ok("shop", "a?x=1#frag b\\c%2F").unwrap(),
        "http://127.0.0.1:18080/api/v1/namespaces/shop/pods/a%3Fx%3D1%23frag%20b%5Cc%252F"
    );
    assert_eq!(
        ok("shop", "Zürich").unwrap(),
        "http://127.0.0.1:18080/api/v1/namespaces/shop/pods/Z%C3%BCrich"
    );
    // A value that is a whole segment may not be `.`, `..` or empty.
    for (ns, pod) in [
        ("..", "x"),
        ("shop", ".."),
        ("shop", "."),
        ("shop", ""),
        ("", "x"),
    ] {
        let e = ok(ns, pod).unwrap_err();
        assert!(e.refused, "{e}");
        assert!(e.message.contains("path traversal"), "{e}");
    }
    // Dots next to literal text in the same segment are ordinary characters.
    let out = one(Escape::Url, "http://h/files/v{{ x }}/x", json!({"x": ".."})).unwrap();
    assert_eq!(out, "http://h/files/v../x");
}

#[test]
fn url_query_and_fragment_values_are_components() {
    let out = one(
        Escape::Url,
        "https://h/search?q={{ q }}&team={{ t }}#{{ f }}",
        json!({"q": "a&admin=true", "t": "x#y z+", "f": "top/../x"}),
    )
    .unwrap();
    assert_eq!(
        out,
        "https://h/search?q=a%26admin%3Dtrue&team=x%23y%20z%2B#top%2F..%2Fx"
    );
}

#[test]
fn url_values_cannot_choose_scheme_host_or_port() {
    for source in [
        "{{ target }}",
        "http://{{ target }}/x",
        "http://h:{{ target }}/x",
        "{{ target }}://h/x",
    ] {
        let e = one(Escape::Url, source, json!({"target": "evil.example"})).unwrap_err();
        assert!(e.refused, "{source}: {e}");
        assert!(e.message.contains("scheme, host or port"), "{e}");
        assert!(e.to_string().contains("| raw"), "{e}");
    }
}

#[test]
fn raw_writes_a_trusted_value_but_keeps_the_literal_prefix() {
    let mut t = Templates::default();
    t.add_escaped("whole", "{{ target | raw }}", Escape::Url)
        .unwrap();
    t.add_escaped("tail", "http://h/api/{{ rest|raw }}", Escape::Url)
        .unwrap();
    t.add_escaped("plain", "http://h/api/{{ rest }}", Escape::Url)
        .unwrap();
    assert!(t.uses_raw("whole") && t.uses_raw("tail") && !t.uses_raw("plain"));
    assert_eq!(
        t.render("whole", &json!({"target": "https://gw/a/b?c=d"}))
            .unwrap(),
        "https://gw/a/b?c=d"
    );
    assert_eq!(
        t.render("tail", &json!({"rest": "a/b?c=d"})).unwrap(),
        "http://h/api/a/b?c=d"
    );
    // Even raw, the path may not leave the template's literal prefix.
    let e = t
        .render("tail", &json!({"rest": "../../admin"}))
        .unwrap_err();
    assert!(e.refused && e.message.contains("literal part"), "{e}");
    // `raw` is a filter name, not any word containing it.
    assert!(!source_uses_raw("{{ payload.raw_value }}") && !source_uses_raw("{{ x | rawish }}"));
}

#[test]
fn urlencode_in_a_url_template_is_refused_at_compile_time() {
    let mut t = Templates::default();
    let e = t
        .add_escaped("u", "http://h/{{ x | urlencode }}", Escape::Url)
        .unwrap_err();
    assert!(e.message.contains("encode them twice"), "{e}");
    assert!(t
        .add_escaped("ok", "http://h/urlencode/{{ x }}", Escape::Url)
        .is_ok());
}

#[test]
fn json_values_are_escaped_inside_strings_and_typed_outside() {
    let body = r#"{"reason": "{{ reason }}", "restart_count": {{ count }}}"#;
    let hostile = "\"}, \"restart_count\": 0, \"x\": {\"a\":\"";
    let out = one(Escape::Json, body, json!({"reason": hostile, "count": 4})).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(parsed, json!({"reason": hostile, "restart_count": 4}));
    // Newlines and control characters are escaped, not broken JSON.
    let out = one(
        Escape::Json,
        body,
        json!({"reason": "line\nbreak\u{1}\\", "count": 4}),
    )
    .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["reason"],
        "line\nbreak\u{1}\\"
    );
    // Outside quotes a value is a JSON value of its own type: a string cannot add fields.
    let out = one(
        Escape::Json,
        body,
        json!({"reason": "r", "count": "0, \"admin\": true"}),
    )
    .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        json!({"reason": "r", "restart_count": "0, \"admin\": true"})
    );
    let out = one(
        Escape::Json,
        r#"{"a": {{ a }}, "b": {{ b }}, "c": {{ c }}, "d": {{ d }}, "e": {{ e }}}"#,
        json!({"a": 0.93, "b": true, "c": null, "d": {"k": ["x"]}, "e": "s"}),
    )
    .unwrap();
    assert_eq!(
        out,
        r#"{"a": 0.93, "b": true, "c": null, "d": {"k":["x"]}, "e": "s"}"#
    );
    // A key is a string too.
    let out = one(
        Escape::Json,
        r#"{"{{ k }}": 1}"#,
        json!({"k": "a\": 2, \"b"}),
    )
    .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        json!({"a\": 2, \"b": 1})
    );
}

#[test]
fn json_that_does_not_parse_is_refused() {
    // The template's own mistake (a missing quote) is caught before anything is sent.
    let e = one(Escape::Json, r#"{"a": "{{ a }}}"#, json!({"a": "x"})).unwrap_err();
    assert!(e.refused && e.message.contains("not valid JSON"), "{e}");
    // A raw value is not escaped, but the body must still parse.
    let e = one(
        Escape::Json,
        r#"{"a": {{ a | raw }}}"#,
        json!({"a": "1, \"b\": "}),
    )
    .unwrap_err();
    assert!(e.refused, "{e}");
    assert_eq!(
        one(
            Escape::Json,
            r#"{"a": {{ a | raw }}}"#,
            json!({"a": "[1, 2]"})
        )
        .unwrap(),
        r#"{"a": [1, 2]}"#
    );
    // A value right after a backslash could end the string.
    let e = one(Escape::Json, r#"{"a": "\{{ a }}"}"#, json!({"a": "\""})).unwrap_err();
    assert!(e.refused && e.message.contains("backslash"), "{e}");
}

#[test]
fn header_values_with_control_characters_are_refused() {
    assert_eq!(
        one(Escape::Header, "team {{ t }}", json!({"t": "pay\tments é"})).unwrap(),
        "team pay\tments é"
    );
    for bad in ["a\r\nX-Admin: 1", "a\nb", "a\rb", "nul\0", "del\u{7f}"] {
        for source in ["{{ t }}", "{{ t | raw }}"] {
            let e = one(Escape::Header, source, json!({ "t": bad })).unwrap_err();
            assert!(e.refused && e.message.contains("control character"), "{e}");
        }
    }
}

#[test]
fn redis_key_values_are_one_segment() {
    let source = "owners:{{ ns }}";
    assert_eq!(
        one(Escape::RedisKey, source, json!({"ns": "shop-1.eu"})).unwrap(),
        "owners:shop-1.eu"
    );
    assert_eq!(
        one(
            Escape::RedisKey,
            source,
            json!({"ns": "x:admin {a}*?[]\\%\n"})
        )
        .unwrap(),
        "owners:x%3Aadmin%20%7Ba%7D%2A%3F%5B%5D%5C%25%0A"
    );
}

#[test]
fn log_values_cannot_forge_lines() {
    assert_eq!(
        one(
            Escape::Log,
            "pod {{ p }} done",
            json!({"p": "a\nlevel=error fake"})
        )
        .unwrap(),
        "pod a\\nlevel=error fake done"
    );
}

#[test]
fn markers_cannot_be_forged() {
    let mut t = Templates::default();
    assert!(t
        .add_escaped("m", "x\u{E000}0\u{E001}", Escape::Url)
        .is_err());
    // Data holding the marker characters is escaped (URL) or refused, never read as a marker.
    let out = one(
        Escape::Url,
        "http://h/{{ a }}/{{ b }}",
        json!({"a": "..", "b": "x"}),
    );
    assert!(out.is_err());
    let e = one(
        Escape::Json,
        r#"{"a": "{{ a }}"}"#,
        json!({"a": "\u{E000}0\u{E001}"}),
    )
    .unwrap_err();
    assert!(e.refused, "{e}");
    // Captured output (a macro) is refused in escaped templates, kept in unescaped ones.
    let source = "{% macro m(v) %}[{{ v }}]{% endmacro %}{{ m(a) }}";
    let e = one(Escape::Json, source, json!({"a": "x"})).unwrap_err();
    assert!(e.refused, "{e}");
    // A filter block that rewrites its output cannot drop a value's escaping either.
    let e = one(
        Escape::Url,
        "http://h/{% filter truncate(12) %}{{ a }}{% endfilter %}",
        json!({"a": "../../../../etc"}),
    );
    assert!(e.is_err(), "{e:?}");
}

#[test]
fn body_escaping_follows_the_content_type() {
    assert_eq!(
        Escape::for_body(Some("application/json; charset=utf-8"), "x"),
        Escape::Json
    );
    assert_eq!(
        Escape::for_body(Some("application/cloudevents+json"), "x"),
        Escape::Json
    );
    assert_eq!(Escape::for_body(Some("text/plain"), "{}"), Escape::None);
    assert_eq!(Escape::for_body(None, "  {\"a\": 1}"), Escape::Json);
    assert_eq!(Escape::for_body(None, "reason={{ r }}"), Escape::None);
    assert_eq!(Escape::for_body(None, "{{ doc }}"), Escape::None);
    assert_eq!(
        Escape::for_body(None, "{% if a %}{}{% endif %}"),
        Escape::None
    );
    assert!(check_json("").is_ok() && check_json("{\"a\": 1}").is_ok());
    assert!(check_json("{\"a\": }").is_err());
}
