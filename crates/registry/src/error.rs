//! Errors, with the Confluent error codes and messages they map to.

use std::path::PathBuf;

use thiserror::Error;

/// An error answered to a client. Every variant has a Confluent `error_code`; the HTTP status is
/// the code's first three digits (see [`RegistryError::error_code`] and
/// [`RegistryError::http_status`]).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RegistryError {
    /// 40401
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// 40402
    #[error("Version {0} not found.")]
    VersionNotFound(String),
    /// 40403, for `GET /schemas/ids/{id}` and friends.
    #[error("Schema {0} not found")]
    SchemaIdNotFound(String),
    /// 40403, for a lookup (`POST /subjects/{subject}`) that matches no version.
    #[error("Schema not found")]
    SchemaNotFound,
    /// 40404
    #[error("Subject '{0}' was soft deleted.Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    /// 40405
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    /// 40406
    #[error("Subject '{subject}' Version {version} was soft deleted.Set permanent=true to delete permanently")]
    VersionSoftDeleted { subject: String, version: i32 },
    /// 40407
    #[error("Subject '{subject}' Version {version} was not deleted first before being permanently deleted")]
    VersionNotSoftDeleted { subject: String, version: i32 },
    /// 40408
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectConfigNotFound(String),
    /// 409: the schema breaks the subject's compatibility level.
    #[error("Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]", .details.join(", "))]
    Incompatible {
        subject: String,
        details: Vec<String>,
    },
    /// 42201
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    /// 42202
    #[error("The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\"")]
    InvalidVersion(String),
    /// 42203
    #[error("Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive")]
    InvalidCompatibilityLevel,
    /// 42205
    #[error("{0}")]
    OperationNotPermitted(String),
    /// 400: the body is not JSON.
    #[error("{0}")]
    BadRequest(String),
    /// 422: the body is JSON of the wrong shape.
    #[error("{0}")]
    Unprocessable(String),
    /// 404: no such endpoint.
    #[error("HTTP 404 Not Found")]
    NoSuchEndpoint,
    /// 405
    #[error("HTTP 405 Method Not Allowed")]
    MethodNotAllowed,
    /// 50001: the data file could not be written.
    #[error("Error in the backend data store: {0}")]
    Storage(String),
}

impl RegistryError {
    /// The Confluent `error_code`.
    pub fn error_code(&self) -> u32 {
        match self {
            RegistryError::SubjectNotFound(_) => 40401,
            RegistryError::VersionNotFound(_) => 40402,
            RegistryError::SchemaIdNotFound(_) | RegistryError::SchemaNotFound => 40403,
            RegistryError::SubjectSoftDeleted(_) => 40404,
            RegistryError::SubjectNotSoftDeleted(_) => 40405,
            RegistryError::VersionSoftDeleted { .. } => 40406,
            RegistryError::VersionNotSoftDeleted { .. } => 40407,
            RegistryError::SubjectConfigNotFound(_) => 40408,
            RegistryError::Incompatible { .. } => 409,
            RegistryError::InvalidSchema(_) => 42201,
            RegistryError::InvalidVersion(_) => 42202,
            RegistryError::InvalidCompatibilityLevel => 42203,
            RegistryError::OperationNotPermitted(_) => 42205,
            RegistryError::BadRequest(_) => 400,
            RegistryError::Unprocessable(_) => 422,
            RegistryError::NoSuchEndpoint => 404,
            RegistryError::MethodNotAllowed => 405,
            RegistryError::Storage(_) => 50001,
        }
    }

    /// The HTTP status: the error code's first three digits.
    pub fn http_status(&self) -> u16 {
        let mut code = self.error_code();
        while code >= 1000 {
            code /= 10;
        }
        // Every code above starts with a valid HTTP status; 500 is the safe fallback.
        u16::try_from(code).unwrap_or(500)
    }
}

/// Errors opening or writing the data file.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot read the registry data file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the registry data file {path} is not valid registry state (fix or move it away): {source}"
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the registry data file {path} is inconsistent (fix or move it away): {message}")]
    Inconsistent { path: PathBuf, message: String },
    #[error("cannot write the registry data file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
