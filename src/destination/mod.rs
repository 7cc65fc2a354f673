//! On-failure destinations: the invocation record AWS writes for a batch it gives up on, and where it goes
//! (SPEC section 5).
//!
//! Offsets of given-up records are committed only after [`Destination::send`] returned `Ok`: the write is
//! the durable hand-off that makes skipping those records safe.

use crate::kafka::Record;

/// Why records are given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Retries or record age exhausted.
    RetryAttemptsExhausted,
    /// A single record whose event alone exceeds 6 MB.
    MaximumPayloadSizeExceeded,
}

impl Condition {
    /// The name AWS writes in `requestContext.condition`.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::RetryAttemptsExhausted => "RetryAttemptsExhausted",
            Condition::MaximumPayloadSizeExceeded => "MaximumPayloadSizeExceeded",
        }
    }
}

/// `responseContext` of the last invocation (absent for `MaximumPayloadSizeExceeded`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseContext {
    /// HTTP status of the last invoke.
    pub status_code: i32,
    /// `X-Amz-Executed-Version`, `$LATEST` when unknown.
    pub executed_version: String,
    /// `X-Amz-Function-Error`, when set.
    pub function_error: Option<String>,
}

/// Everything a destination needs to write the invocation record for one given-up batch.
#[derive(Debug, Clone)]
pub struct GivenUp<'a> {
    /// The mapping's UUID (S3 key prefix).
    pub mapping_uuid: &'a str,
    /// The target function's ARN.
    pub function_arn: &'a str,
    /// The MSK cluster ARN, when the mapping has one.
    pub event_source_arn: Option<&'a str>,
    /// Comma-separated bootstrap servers.
    pub bootstrap_servers: &'a str,
    /// Why.
    pub condition: Condition,
    /// How many times the records were invoked.
    pub approximate_invoke_count: u32,
    /// The last invocation's response, if there was one.
    pub response: Option<ResponseContext>,
    /// The records, grouped by partition, in offset order.
    pub records: &'a [Record],
    /// The whole event as it was (or would have been) sent.
    pub payload: &'a [u8],
}
