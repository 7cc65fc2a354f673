//! Invoking the target function and classifying what came back (SPEC section 4).
//!
//! [`Invoke`] is the narrow seam between the delivery logic and Lambda: one production implementation on
//! aws-sdk-lambda ([`lambda::LambdaInvoker`]), and an in-process server speaking the Lambda Invoke API
//! ([`server`]) for tests and the demo, so the production client is exercised over real HTTP.

pub mod lambda;
pub mod server;

use std::time::Duration;

/// What one `Invoke` call (`RequestResponse`) came back with, before the mapping's rules interpret it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvokeResult {
    /// The function ran: HTTP 200 (or another 2xx), possibly with `X-Amz-Function-Error`.
    Completed {
        /// HTTP status.
        status_code: i32,
        /// `X-Amz-Function-Error` (`Handled` / `Unhandled`), if set.
        function_error: Option<String>,
        /// `X-Amz-Executed-Version`, if returned.
        executed_version: Option<String>,
        /// The function's response body.
        payload: Vec<u8>,
    },
    /// The invoke did not return before the function's timeout: counts as a function error.
    TimedOut,
    /// 429 TooManyRequests / throttling: retried with backoff, not an attempt.
    Throttled {
        /// The service's message.
        message: String,
    },
    /// 5xx or a network error before the function ran: retried with backoff, not an attempt.
    Unavailable {
        /// HTTP status when there was one.
        status_code: Option<i32>,
        /// The service's error code or the transport error.
        message: String,
    },
    /// The request itself is wrong (function missing, access denied, payload rejected): retried with
    /// backoff, not an attempt, and reported so the user can fix it.
    Rejected {
        /// AWS error code, e.g. `ResourceNotFoundException`, `AccessDeniedException`.
        code: String,
        /// The service's message.
        message: String,
    },
}

/// What the relay needs to know about the target before invoking it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionInfo {
    /// The function's ARN.
    pub function_arn: String,
    /// The function's configured timeout.
    pub timeout: Duration,
}

/// Looking up the target failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FunctionLookupError {
    /// The function does not exist or the relay may not read it.
    #[error("FUNCTION_CONFIG_NOT_VALID: {code}: {message}")]
    NotValid {
        /// AWS error code.
        code: String,
        /// Message.
        message: String,
    },
    /// The lookup could not be made now (network, 5xx, throttling).
    #[error("cannot read the function configuration now: {0}")]
    Unavailable(String),
}

/// The Lambda operations the relay uses.
#[async_trait::async_trait]
pub trait Invoke: Send + Sync {
    /// `Invoke` with `InvocationType=RequestResponse`, giving up after `timeout`.
    async fn invoke(&self, function_name: &str, payload: Vec<u8>, timeout: Duration) -> InvokeResult;

    /// `GetFunctionConfiguration`: the function's ARN and timeout.
    async fn function_info(&self, function_name: &str) -> Result<FunctionInfo, FunctionLookupError>;
}

/// Starting a function without waiting for it: how the scheduled run (the coordinator) starts workers.
#[async_trait::async_trait]
pub trait InvokeAsync: Send + Sync {
    /// `Invoke` with `InvocationType=Event`: Lambda queues the event and answers 202 at once
    /// ([`InvokeResult::Completed`] with `status_code` 202); anything else means the function was not started.
    async fn invoke_async(&self, function_name: &str, payload: Vec<u8>) -> InvokeResult;
}
