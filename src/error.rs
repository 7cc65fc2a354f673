//! The error codes a mapping's run reports, in one place.
//!
//! AWS's codes for an event source mapping (`LastProcessingResult` / `StateTransitionReason`) where AWS has
//! one; the relay's own, in the same style, for what AWS's managed pollers never show a user (a commit the
//! group refused). Every code a report or a log's `error_code` field carries for a mapping comes from here.

use std::fmt;

use serde::Serialize;

/// A mapping's error code, as it appears in the run report's `ErrorCode` and in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The relay could not authenticate to the cluster, or the cluster's certificate could not be verified.
    EventSourceAuthnError,
    /// The cluster refused an operation: topic, group or cluster ACLs.
    EventSourceAuthzError,
    /// The mapping's configuration (including its secrets) is not valid.
    EsmConfigNotValid,
    /// The target function is missing or its configuration is not valid.
    FunctionConfigNotValid,
    /// The relay's own: the group did not take the run's final commit (broker down, group rebalancing).
    /// Nothing is lost: the records after the group's older offset are delivered again by the next run.
    CommitFailed,
    /// The relay's own: the run is shorter than the target's timeout plus the final-commit margin, so no
    /// invocation could finish within it and none was started.
    RunShorterThanTargetTimeout,
    /// The relay's own: the starting position (LATEST, AT_TIMESTAMP) of partitions without a committed
    /// offset could not be looked up; those partitions were not consumed, so nothing was skipped.
    StartingPositionUnresolved,
}

impl ErrorCode {
    /// The code as AWS spells it, e.g. `EVENT_SOURCE_AUTHN_ERROR`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::EventSourceAuthnError => "EVENT_SOURCE_AUTHN_ERROR",
            ErrorCode::EventSourceAuthzError => "EVENT_SOURCE_AUTHZ_ERROR",
            ErrorCode::EsmConfigNotValid => "ESM_CONFIG_NOT_VALID",
            ErrorCode::FunctionConfigNotValid => "FUNCTION_CONFIG_NOT_VALID",
            ErrorCode::CommitFailed => "COMMIT_FAILED",
            ErrorCode::RunShorterThanTargetTimeout => "RUN_SHORTER_THAN_TARGET_TIMEOUT",
            ErrorCode::StartingPositionUnresolved => "STARTING_POSITION_UNRESOLVED",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with its causes, outermost first, joined by `": "`: the causes name the failing step (connect,
/// TLS, timeout) that the outer message leaves out.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_they_display() {
        for code in [
            ErrorCode::EventSourceAuthnError,
            ErrorCode::EventSourceAuthzError,
            ErrorCode::EsmConfigNotValid,
            ErrorCode::FunctionConfigNotValid,
            ErrorCode::CommitFailed,
            ErrorCode::RunShorterThanTargetTimeout,
            ErrorCode::StartingPositionUnresolved,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::Value::String(code.as_str().into()));
        }
    }
}

