//! ARM error bodies: `{"error":{"code":"…","message":"…"}}` with the HTTP status ARM uses.

use serde_json::{Value, json};

/// An error as Azure Resource Manager reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ArmError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ArmError {
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    pub fn bad_request(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    pub fn not_found(id: &str) -> Self {
        Self::new(
            404,
            "ResourceNotFound",
            format!("The Resource '{id}' was not found."),
        )
    }

    pub fn invalid_reference(field: &str, reference: &str) -> Self {
        Self::bad_request(
            "InvalidResourceReference",
            format!("Resource {reference} referenced by {field} was not found."),
        )
    }

    pub fn body(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}
