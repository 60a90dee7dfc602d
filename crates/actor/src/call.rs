//! What an action does for one request, rendered and checked before anything is claimed or
//! sent: the actor executes it, `reflexctl rules test` prints it (one code path, so the shadow
//! run shows exactly the escaped request the actor would send).
//!
//! Every template escapes its values for where they land ([`reflex_core::template`]): the URL
//! path and query, header values (control characters refused), JSON bodies (escaped, then
//! parsed). A body sent as the request carries it (no `body` template) must parse as JSON when
//! the action declares a JSON content type. A refusal is an error naming the action, the field
//! and the reason; the actor dead-letters the request as permanent and calls nothing.

use reflex_core::actions::ActionRequest;
use reflex_core::template::{check_json, Templates};

use crate::config::{parse_method, Action, Kind};

/// A rendered, checked action call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Http {
        method: reqwest::Method,
        url: String,
        /// In configuration order; `Idempotency-Key` and signing headers are added when sent.
        headers: Vec<(String, String)>,
        body: String,
    },
    Emit {
        topic: String,
        body: String,
    },
    Log {
        message: String,
    },
}

/// Renders `action` for `req`. The error names the action and the field.
pub fn render(action: &Action, templates: &Templates, req: &ActionRequest) -> Result<Call, String> {
    let name = &action.settings.name;
    let field = |field: &str| {
        templates
            .render(&action.template_name(field), req)
            .map_err(|e| {
                format!("action `{name}` field `{field}` cannot be rendered for this request: {e}")
            })
    };
    let body = |json: bool| -> Result<String, String> {
        match action.settings.body {
            Some(_) => field("body"),
            None => {
                let body = req.body.clone().unwrap_or_default();
                if json {
                    // Rendered by the enricher (escaped there) or written by whoever published
                    // the request: checked here, before it is sent, either way.
                    check_json(&body).map_err(|e| {
                        format!("action `{name}`: the request's body is sent as it is and the action declares a JSON content type, but {e}: refused")
                    })?;
                }
                Ok(body)
            }
        }
    };
    Ok(match &action.kind {
        Kind::Http {
            method,
            headers,
            json_body,
            ..
        } => {
            let method = match method {
                Some(m) => m.clone(),
                None => parse_method(&field("method")?)
                    .map_err(|e| format!("action `{name}` field `method`: {e}"))?,
            };
            let url = field("url")?;
            let mut rendered = Vec::with_capacity(headers.len());
            for header in headers {
                rendered.push((header.clone(), field(&format!("header.{header}"))?));
            }
            Call::Http {
                method,
                url,
                headers: rendered,
                body: body(*json_body)?,
            }
        }
        Kind::Emit { topic, json_body } => Call::Emit {
            topic: topic.clone(),
            body: body(*json_body)?,
        },
        Kind::Log => Call::Log {
            message: match action.settings.message {
                Some(_) => field("message")?,
                None => format!("action {name} on {} for event {}", req.target, req.event_id),
            },
        },
    })
}

/// The fields of `action` whose templates use `raw` (values written unescaped), e.g.
/// `["url"]`: the actor warns about them at start-up, `reflexctl rules test` marks them.
pub fn raw_fields(action: &Action, templates: &Templates) -> Vec<String> {
    let mut fields = vec![
        "method".to_string(),
        "url".into(),
        "body".into(),
        "message".into(),
    ];
    if let Kind::Http { headers, .. } = &action.kind {
        fields.extend(headers.iter().map(|h| format!("header.{h}")));
    }
    fields.retain(|f| templates.uses_raw(&action.template_name(f)));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{compile, ActionSettings};
    use std::collections::BTreeMap;

    fn actions(text: &str) -> (Vec<Action>, Templates) {
        #[derive(serde::Deserialize)]
        struct F {
            actor: A,
        }
        #[derive(serde::Deserialize)]
        struct A {
            action: Vec<ActionSettings>,
        }
        let parsed = toml::from_str::<F>(text).unwrap().actor.action;
        compile(&parsed, None, &|_| None).unwrap()
    }

    fn request(params: &[(&str, &str)], body: Option<&str>) -> ActionRequest {
        ActionRequest {
            idempotency_key: "a:e1".into(),
            action: "a".into(),
            kind: reflex_core::actions::ActionKind::Http,
            target: "t".into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            body: body.map(str::to_string),
            event_id: "e1".into(),
            event_type: "x".into(),
            rule: None,
            correlation_id: "e1".into(),
            context: BTreeMap::new(),
            dry_run: false,
            requested_at: 0,
        }
    }

    const HTTP: &str = r#"
[[actor.action]]
name = "a"
kind = "http"
method = "DELETE"
url = "http://gw/api/v1/namespaces/{{ params.ns }}/pods/{{ params.pod }}?reason={{ params.why }}"
headers = { content-type = "application/json", x-owner = "{{ params.team }}" }
body = '{"reason": "{{ params.why }}"}'
"#;

    fn http(params: &[(&str, &str)]) -> Result<Call, String> {
        let (actions, templates) = actions(HTTP);
        render(&actions[0], &templates, &request(params, None))
    }

    #[test]
    fn http_calls_escape_every_value_for_its_place() {
        let hostile = "\"}, \"restart_count\": 0, \"x\": {\"a\":\"";
        let Call::Http {
            method,
            url,
            headers,
            body,
        } = http(&[
            ("ns", "shop"),
            ("pod", "../../kube-system/pods/coredns"),
            ("why", hostile),
            ("team", "payments"),
        ])
        .unwrap()
        else {
            panic!("an http call")
        };
        assert_eq!(method, reqwest::Method::DELETE);
        assert_eq!(
            url,
            "http://gw/api/v1/namespaces/shop/pods/..%2F..%2Fkube-system%2Fpods%2Fcoredns?reason=%22%7D%2C%20%22restart_count%22%3A%200%2C%20%22x%22%3A%20%7B%22a%22%3A%22"
        );
        assert_eq!(
            headers,
            vec![
                ("content-type".to_string(), "application/json".to_string()),
                ("x-owner".to_string(), "payments".to_string())
            ]
        );
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed, serde_json::json!({ "reason": hostile }));
    }

    #[test]
    fn refusals_name_the_action_field_and_reason() {
        let e = http(&[("ns", ".."), ("pod", "p"), ("why", "w"), ("team", "t")]).unwrap_err();
        assert!(
            e.starts_with("action `a` field `url` cannot be rendered") && e.contains("refused"),
            "{e}"
        );
        let e = http(&[
            ("ns", "n"),
            ("pod", "p"),
            ("why", "w"),
            ("team", "t\r\nX-Admin: yes"),
        ])
        .unwrap_err();
        assert!(
            e.starts_with("action `a` field `header.x-owner`") && e.contains("control character"),
            "{e}"
        );
    }

    #[test]
    fn a_body_sent_as_it_is_must_parse_when_json_is_declared() {
        let text = r#"
[[actor.action]]
name = "a"
kind = "http"
url = "http://gw/x"
headers = { content-type = "application/json" }

[[actor.action]]
name = "b"
kind = "emit"
topic = "reflex.events.b"
"#;
        let (actions, templates) = actions(text);
        for action in &actions {
            assert!(render(action, &templates, &request(&[], Some("{\"a\": 1}"))).is_ok());
            assert!(render(action, &templates, &request(&[], None)).is_ok());
            let e =
                render(action, &templates, &request(&[], Some("{\"a\": 1}, \"b\""))).unwrap_err();
            assert!(e.contains("not valid JSON") && e.contains("refused"), "{e}");
        }
    }

    #[test]
    fn raw_fields_are_listed() {
        let text = r#"
[[actor.action]]
name = "a"
kind = "http"
url = "{{ target | raw }}"
headers = { x-a = "{{ params.a }}", x-b = "{{ params.b|raw }}" }
"#;
        let (actions, templates) = actions(text);
        assert_eq!(raw_fields(&actions[0], &templates), ["url", "header.x-b"]);
        let (actions, templates) = super::tests::actions(HTTP);
        assert!(raw_fields(&actions[0], &templates).is_empty());
    }
}
