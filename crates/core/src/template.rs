//! Templates for action bindings and action calls (URLs, headers, bodies), in Jinja syntax via
//! `minijinja`: `"{{ payload.pod }}"`, `"{{ context.owner | default('unknown') }}"`.
//!
//! Strict by design: a variable that does not exist is a render error, never an empty string,
//! and [`Templates::add`] reports the variables a template reads so configuration can be checked
//! against schemas at start-up. Rendering is bounded by fuel (work) and output size.

use std::collections::BTreeSet;

use minijinja::{Environment, UndefinedBehavior, Value};
use serde::Serialize;
use thiserror::Error;

/// Work one render may do (minijinja fuel units); a runaway loop fails instead of hanging.
pub const DEFAULT_FUEL: u64 = 50_000;
/// Largest rendered output, in bytes.
pub const DEFAULT_MAX_OUTPUT: usize = 1 << 20;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("template `{name}`{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
pub struct TemplateError {
    pub name: String,
    pub line: Option<usize>,
    pub message: String,
}

impl TemplateError {
    fn from_minijinja(name: &str, e: &minijinja::Error) -> Self {
        let mut message = e.kind().to_string();
        if let Some(detail) = e.detail() {
            message = format!("{message}: {detail}");
        }
        Self {
            name: name.to_string(),
            line: e.line(),
            message,
        }
    }
}

/// A set of named, compiled templates.
pub struct Templates {
    env: Environment<'static>,
    max_output: usize,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new(DEFAULT_FUEL, DEFAULT_MAX_OUTPUT)
    }
}

impl Templates {
    pub fn new(fuel: u64, max_output: usize) -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(fuel));
        Self { env, max_output }
    }

    /// Compiles `source` under `name`; returns the dotted variable paths it reads
    /// (`payload.restart_count`, `context.owner`).
    pub fn add(&mut self, name: &str, source: &str) -> Result<BTreeSet<String>, TemplateError> {
        self.env
            .add_template_owned(name.to_string(), source.to_string())
            .map_err(|e| TemplateError::from_minijinja(name, &e))?;
        let template = self
            .env
            .get_template(name)
            .map_err(|e| TemplateError::from_minijinja(name, &e))?;
        Ok(template.undeclared_variables(true).into_iter().collect())
    }

    /// Renders template `name` with `context` (any serde-serializable value, usually a map).
    pub fn render(&self, name: &str, context: &impl Serialize) -> Result<String, TemplateError> {
        let template = self
            .env
            .get_template(name)
            .map_err(|e| TemplateError::from_minijinja(name, &e))?;
        let out = template
            .render(Value::from(minijinja::value::Serde(context)))
            .map_err(|e| TemplateError::from_minijinja(name, &e))?;
        if out.len() > self.max_output {
            return Err(TemplateError {
                name: name.to_string(),
                line: None,
                message: format!(
                    "output is {} bytes, over the {} byte limit",
                    out.len(),
                    self.max_output
                ),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
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
}
