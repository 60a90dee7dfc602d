//! Size limits on what a worker accepts from a topic, checked before any decoding so a hostile
//! record costs little. Over a limit the event is dead-lettered (permanent) with a message that
//! names the limit and the setting that raises it.

use crate::Headers;

/// Largest record value accepted by default (1 MiB, Kafka's default `max.message.bytes`).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;
/// Most headers on one record by default.
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// Largest total of header names and values by default.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 << 10;
/// Longest rule condition (CEL source), in bytes, accepted at load time.
pub const MAX_RULE_EXPRESSION_BYTES: usize = 4096;
/// Deepest bracket nesting (`(`, `[`, `{`) of a rule condition accepted at load time: the CEL
/// parser and evaluator recurse per level, so a deep expression could exhaust the stack.
pub const MAX_RULE_NESTING: usize = 32;

/// Per-record limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLimits {
    pub max_value_bytes: usize,
    pub max_headers: usize,
    pub max_header_bytes: usize,
}

impl Default for RecordLimits {
    fn default() -> Self {
        Self {
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

impl RecordLimits {
    /// Checks a record; the error names the limit and `section` (e.g. `router`) setting to raise.
    /// A limit of 0 is off.
    pub fn check(
        &self,
        section: &str,
        headers: &Headers,
        value: Option<&[u8]>,
    ) -> Result<(), String> {
        let len = value.map_or(0, <[u8]>::len);
        if self.max_value_bytes > 0 && len > self.max_value_bytes {
            return Err(format!(
                "value is {len} bytes, over the limit of {} ({section}.max_value_bytes)",
                self.max_value_bytes
            ));
        }
        if self.max_headers > 0 && headers.len() > self.max_headers {
            return Err(format!(
                "record has {} headers, over the limit of {} ({section}.max_headers)",
                headers.len(),
                self.max_headers
            ));
        }
        let header_bytes: usize = headers
            .iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, |v| v.len()))
            .sum();
        if self.max_header_bytes > 0 && header_bytes > self.max_header_bytes {
            return Err(format!(
                "headers total {header_bytes} bytes, over the limit of {} ({section}.max_header_bytes)",
                self.max_header_bytes
            ));
        }
        Ok(())
    }
}

/// The deepest nesting of `(`, `[` and `{` in `source`, outside string literals.
pub fn bracket_depth(source: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in source.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '(' | '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_the_setting() {
        let l = RecordLimits {
            max_value_bytes: 4,
            max_headers: 1,
            max_header_bytes: 10,
        };
        let mut h = Headers::new();
        assert!(l.check("router", &h, Some(b"1234")).is_ok());
        let e = l.check("router", &h, Some(b"12345")).unwrap_err();
        assert!(e.contains("router.max_value_bytes"), "{e}");
        h.push("a", "1");
        h.push("b", "2");
        assert!(l
            .check("router", &h, None)
            .unwrap_err()
            .contains("router.max_headers"));
        let mut h = Headers::new();
        h.push("a", "0123456789");
        assert!(l
            .check("router", &h, None)
            .unwrap_err()
            .contains("router.max_header_bytes"));
        let off = RecordLimits {
            max_value_bytes: 0,
            max_headers: 0,
            max_header_bytes: 0,
        };
        assert!(off.check("router", &h, Some(&[0; 100])).is_ok());
    }

    #[test]
    fn depth_ignores_strings() {
        assert_eq!(bracket_depth("a && (b || [c][0])"), 2);
        assert_eq!(bracket_depth("x == '((((' && y == \"[[\\\"[\""), 0);
        assert_eq!(bracket_depth(&"(".repeat(100)), 100);
    }
}
