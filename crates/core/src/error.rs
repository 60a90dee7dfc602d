//! The error taxonomy shared by every worker. The class travels in the `reflex-error-class`
//! header of a dead letter and decides what the runtime does with a failed event.

use std::fmt;

/// What kind of failure happened, and therefore what to do with the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// A dependency failed for now (timeout, 5xx, connection refused): retry with backoff.
    Transient,
    /// The event can never succeed as it is (invalid envelope, rule says dead-letter, 4xx): dead-letter.
    Permanent,
    /// The value cannot even be decoded (wrong framing, corrupt Avro datum): dead-letter.
    Poison,
    /// The schema is unknown or incompatible (unknown schema id, missing field): dead-letter.
    Schema,
    /// A rate limit refused the work: retry later.
    RateLimited,
    /// A circuit breaker is open for the target: retry later.
    CircuitOpen,
    /// The event failed authentication (unsigned, bad signature, unknown key id): dead-letter.
    Unauthorized,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 7] = [
        ErrorClass::Transient,
        ErrorClass::Permanent,
        ErrorClass::Poison,
        ErrorClass::Schema,
        ErrorClass::RateLimited,
        ErrorClass::CircuitOpen,
        ErrorClass::Unauthorized,
    ];

    /// The stable name written to headers and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Poison => "poison",
            ErrorClass::Schema => "schema",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::CircuitOpen => "circuit_open",
            ErrorClass::Unauthorized => "unauthorized",
        }
    }

    pub fn parse(name: &str) -> Option<ErrorClass> {
        ErrorClass::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// Whether retrying the same event later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::Transient | ErrorClass::RateLimited | ErrorClass::CircuitOpen
        )
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_retry_decision() {
        for class in ErrorClass::ALL {
            assert_eq!(ErrorClass::parse(class.as_str()), Some(class));
        }
        assert!(ErrorClass::Transient.is_retryable());
        assert!(!ErrorClass::Poison.is_retryable());
        assert!(!ErrorClass::Schema.is_retryable());
        assert_eq!(ErrorClass::parse("nope"), None);
    }
}
