//! The outcome of a failed operation as the CSI caller sees it: a gRPC status code and a
//! message that says what went wrong and where.
//!
//! Everything below the gRPC layer (engine, Kubernetes client, etcd health) returns
//! [`Status`], so the code that decides *which* code applies sits next to the failure,
//! and `grpc.rs` only translates it for grpcio. Messages never contain secrets.

use std::fmt;

/// The gRPC status codes etcdsnap returns (canonical numbering in [`Code::number`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    Internal,
    Unavailable,
    Unauthenticated,
}

impl Code {
    /// The canonical gRPC code number.
    pub fn number(self) -> i32 {
        match self {
            Code::InvalidArgument => 3,
            Code::DeadlineExceeded => 4,
            Code::NotFound => 5,
            Code::AlreadyExists => 6,
            Code::PermissionDenied => 7,
            Code::ResourceExhausted => 8,
            Code::FailedPrecondition => 9,
            Code::Aborted => 10,
            Code::Internal => 13,
            Code::Unavailable => 14,
            Code::Unauthenticated => 16,
        }
    }

    /// The canonical upper-case name (`INVALID_ARGUMENT`), used in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

/// A failed operation: the gRPC code and a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub message: String,
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Status {
        Status::new(Code::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Status {
        Status::new(Code::NotFound, message)
    }

    pub fn precondition(message: impl Into<String>) -> Status {
        Status::new(Code::FailedPrecondition, message)
    }

    pub fn internal(message: impl Into<String>) -> Status {
        Status::new(Code::Internal, message)
    }

    /// The same status with `context: ` put in front of the message.
    pub fn context(self, context: impl fmt::Display) -> Status {
        Status {
            code: self.code,
            message: format!("{context}: {}", self.message),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.name(), self.message)
    }
}

impl std::error::Error for Status {}

/// Shortens `text` to at most `max` bytes on a character boundary, marking the cut.
/// Keeps what we store (ConfigMaps) and return (gRPC messages) bounded in size.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_canonical_numbers_and_names() {
        assert_eq!(Code::FailedPrecondition.number(), 9);
        assert_eq!(Code::AlreadyExists.name(), "ALREADY_EXISTS");
        let s = Status::not_found("group g-1").context("GetVolumeGroupSnapshot");
        assert_eq!(s.to_string(), "NOT_FOUND: GetVolumeGroupSnapshot: group g-1");
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("short", 10), "short");
        let cut = truncate("ééééé", 6);
        assert!(cut.len() <= 6 && cut.ends_with("..."), "{cut}");
    }
}
