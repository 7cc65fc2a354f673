//! [`Invoke`](super::Invoke) on aws-sdk-lambda.
//!
//! Every way an SDK call can fail is first reduced to a [`Failure`] (what was observed on the wire), then
//! [`classify`] decides, in one place, what the relay makes of it (SPEC section 4: throttles, 5xx and
//! network errors are not function failures; a timed-out invoke is).

use std::time::Duration;

use aws_sdk_lambda::config::http::HttpResponse;
use aws_sdk_lambda::config::retry::RetryConfig;
use aws_sdk_lambda::config::timeout::TimeoutConfig;
use aws_sdk_lambda::config::StalledStreamProtectionConfig;
use aws_sdk_lambda::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;

use super::{FunctionInfo, FunctionLookupError, Invoke, InvokeAsync, InvokeResult};

/// Error codes AWS SDKs treat as throttling (aws-runtime's `THROTTLING_ERRORS`) whatever the HTTP status, plus
/// Lambda's own `EC2ThrottledException` (502: EC2 throttled Lambda while it set the function up).
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "EC2ThrottledException",
];

/// Error codes AWS SDKs treat as transient even with a 4xx status (aws-runtime's `TRANSIENT_ERRORS`).
const TRANSIENT_CODES: &[&str] = &["RequestTimeout", "RequestTimeoutException"];

/// The production [`Invoke`]: aws-sdk-lambda's `Invoke` and `GetFunctionConfiguration`.
#[derive(Debug, Clone)]
pub struct LambdaInvoker {
    client: aws_sdk_lambda::Client,
    /// One `Invoke` client per invoke timeout, built once: a per-call config override would merge the
    /// client's whole configuration again on every invocation (measured as a visible share of the CPU).
    invoke_clients: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<Duration, aws_sdk_lambda::Client>>>,
}

impl LambdaInvoker {
    /// A client built from a shared SDK configuration (region, credentials, endpoint).
    pub fn new(sdk_config: &aws_config::SdkConfig) -> Self {
        Self::from_client(aws_sdk_lambda::Client::new(sdk_config))
    }

    /// Wraps an existing client, e.g. one with a custom endpoint or HTTP client.
    pub fn from_client(client: aws_sdk_lambda::Client) -> Self {
        Self { client, invoke_clients: Default::default() }
    }

    /// The client for `Invoke` calls bounded by `timeout`: one attempt, other timeouts as configured.
    fn invoke_client(&self, timeout: Duration) -> aws_sdk_lambda::Client {
        let mut clients = self.invoke_clients.lock().expect("invoke clients lock");
        clients
            .entry(timeout)
            .or_insert_with(|| {
                let mut timeouts = TimeoutConfig::builder().operation_timeout(timeout).build();
                // Setting a TimeoutConfig replaces the client's as a whole; keep its connect/read timeouts.
                if let Some(base) = self.client.config().timeout_config() {
                    timeouts.take_defaults_from(base);
                }
                let config = self
                    .client
                    .config()
                    .to_builder()
                    // The relay counts attempts and backs off itself (SPEC section 4): an SDK retry would be
                    // an uncounted extra invocation of the target.
                    .retry_config(RetryConfig::disabled())
                    .timeout_config(timeouts)
                    // A function may legitimately send nothing for up to its whole timeout (15 minutes),
                    // longer than stall detection's grace period; the operation timeout above is the bound
                    // that matters, and stall detection has cut long Lambda invokes short before
                    // (awslabs/aws-sdk-rust#1166).
                    .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
                    .build();
                aws_sdk_lambda::Client::from_conf(config)
            })
            .clone()
    }
}

#[async_trait::async_trait]
impl Invoke for LambdaInvoker {
    async fn invoke(&self, function_name: &str, payload: Vec<u8>, timeout: Duration) -> InvokeResult {
        let sent = self
            .invoke_client(timeout)
            .invoke()
            .function_name(function_name)
            .invocation_type(InvocationType::RequestResponse)
            .payload(Blob::new(payload))
            .send()
            .await;
        let result = match sent {
            Ok(output) => InvokeResult::Completed {
                status_code: output.status_code(),
                function_error: output.function_error().map(str::to_owned),
                executed_version: output.executed_version().map(str::to_owned),
                payload: output.payload.map(Blob::into_inner).unwrap_or_default(),
            },
            Err(err) => classify(Failure::from_sdk_error(&err)),
        };
        if !matches!(result, InvokeResult::Completed { .. }) {
            tracing::debug!(function = function_name, outcome = ?result, "invoke did not complete");
        }
        result
    }

    async fn function_info(&self, function_name: &str) -> Result<FunctionInfo, FunctionLookupError> {
        let output = self
            .client
            .get_function_configuration()
            .function_name(function_name)
            .send()
            .await
            .map_err(|err| lookup_error(classify(Failure::from_sdk_error(&err))))?;
        let function_arn = output.function_arn().ok_or_else(|| {
            FunctionLookupError::Unavailable(format!("configuration of {function_name:?} has no FunctionArn"))
        })?;
        let seconds = output.timeout().ok_or_else(|| {
            FunctionLookupError::Unavailable(format!("configuration of {function_name:?} has no Timeout"))
        })?;
        let seconds = u64::try_from(seconds).map_err(|_| {
            FunctionLookupError::Unavailable(format!("configuration of {function_name:?} has Timeout {seconds}"))
        })?;
        Ok(FunctionInfo { function_arn: function_arn.to_owned(), timeout: Duration::from_secs(seconds) })
    }
}

/// An `Event` invoke is answered as soon as Lambda queued the event.
const EVENT_INVOKE_TIMEOUT: Duration = Duration::from_secs(10);

#[async_trait::async_trait]
impl InvokeAsync for LambdaInvoker {
    async fn invoke_async(&self, function_name: &str, payload: Vec<u8>) -> InvokeResult {
        let sent = self
            .invoke_client(EVENT_INVOKE_TIMEOUT)
            .invoke()
            .function_name(function_name)
            .invocation_type(InvocationType::Event)
            .payload(Blob::new(payload))
            .send()
            .await;
        match sent {
            Ok(output) => InvokeResult::Completed {
                status_code: output.status_code(),
                function_error: output.function_error().map(str::to_owned),
                executed_version: output.executed_version().map(str::to_owned),
                payload: Vec::new(),
            },
            Err(err) => classify(Failure::from_sdk_error(&err)),
        }
    }
}

/// What a failed SDK call looked like, before it is classified.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// The operation timeout elapsed before a response arrived.
    TimedOut,
    /// The SDK could not build the request (bad input such as an empty function name).
    Construction {
        /// What the SDK said.
        message: String,
    },
    /// No usable response: connection refused or reset, credentials unavailable, unreadable response.
    Transport {
        /// The HTTP status, when a response started to arrive.
        status: Option<u16>,
        /// What the SDK said.
        message: String,
    },
    /// The service answered with an error status.
    Service {
        /// The HTTP status.
        status: u16,
        /// The AWS error code (`x-amzn-ErrorType` or the body's type), if any.
        code: Option<String>,
        /// The service's message, if any.
        message: Option<String>,
    },
}

impl Failure {
    fn from_sdk_error<E: ProvideErrorMetadata + std::error::Error + 'static>(err: &SdkError<E, HttpResponse>) -> Self {
        match err {
            SdkError::TimeoutError(_) => Failure::TimedOut,
            SdkError::ConstructionFailure(_) => Failure::Construction { message: DisplayErrorContext(err).to_string() },
            SdkError::ServiceError(service) => Failure::Service {
                status: service.raw().status().as_u16(),
                code: service.err().code().map(str::to_owned),
                message: service.err().message().map(str::to_owned),
            },
            SdkError::ResponseError(response) => Failure::Transport {
                status: Some(response.raw().status().as_u16()),
                message: DisplayErrorContext(err).to_string(),
            },
            // DispatchFailure and whatever the SDK adds later: nothing usable came back.
            _ => Failure::Transport { status: None, message: DisplayErrorContext(err).to_string() },
        }
    }
}

/// The one place that decides what a failed call means for the relay (SPEC section 4).
fn classify(failure: Failure) -> InvokeResult {
    match failure {
        Failure::TimedOut => InvokeResult::TimedOut,
        Failure::Construction { message } => InvokeResult::Rejected { code: "ConstructionFailure".to_owned(), message },
        Failure::Transport { status, message } => {
            InvokeResult::Unavailable { status_code: status.map(i32::from), message }
        }
        Failure::Service { status, code, message } => {
            let code_is = |codes: &[&str]| code.as_deref().is_some_and(|c| codes.contains(&c));
            if status == 429 || code_is(THROTTLING_CODES) {
                InvokeResult::Throttled { message: message.or(code).unwrap_or_else(|| format!("HTTP {status}")) }
            } else if status >= 500 || code_is(TRANSIENT_CODES) {
                let message = match (code, message) {
                    (Some(code), Some(message)) => format!("{code}: {message}"),
                    (Some(text), None) | (None, Some(text)) => text,
                    (None, None) => format!("HTTP {status}"),
                };
                InvokeResult::Unavailable { status_code: Some(i32::from(status)), message }
            } else {
                InvokeResult::Rejected {
                    code: code.unwrap_or_else(|| format!("HTTP{status}")),
                    message: message.unwrap_or_else(|| format!("HTTP {status} without a message")),
                }
            }
        }
    }
}

/// `GetFunctionConfiguration` failures: only a rejected request says the function itself is not usable.
fn lookup_error(result: InvokeResult) -> FunctionLookupError {
    match result {
        InvokeResult::Rejected { code, message } => FunctionLookupError::NotValid { code, message },
        InvokeResult::Throttled { message } => FunctionLookupError::Unavailable(format!("throttled: {message}")),
        InvokeResult::Unavailable { message, .. } => FunctionLookupError::Unavailable(message),
        InvokeResult::TimedOut => FunctionLookupError::Unavailable("timed out".to_owned()),
        InvokeResult::Completed { status_code, .. } => {
            FunctionLookupError::Unavailable(format!("unexpected completed response with status {status_code}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(status: u16, code: Option<&str>, message: Option<&str>) -> Failure {
        Failure::Service { status, code: code.map(str::to_owned), message: message.map(str::to_owned) }
    }

    fn rejected(code: &str, message: &str) -> InvokeResult {
        InvokeResult::Rejected { code: code.to_owned(), message: message.to_owned() }
    }

    fn unavailable(status: Option<i32>, message: &str) -> InvokeResult {
        InvokeResult::Unavailable { status_code: status, message: message.to_owned() }
    }

    fn throttled(message: &str) -> InvokeResult {
        InvokeResult::Throttled { message: message.to_owned() }
    }

    #[test]
    fn classifies_every_kind_of_failure() {
        let cases = [
            (Failure::TimedOut, InvokeResult::TimedOut),
            (Failure::Construction { message: "empty name".to_owned() }, rejected("ConstructionFailure", "empty name")),
            (
                Failure::Transport { status: None, message: "connection refused".to_owned() },
                unavailable(None, "connection refused"),
            ),
            (
                Failure::Transport { status: Some(200), message: "body cut short".to_owned() },
                unavailable(Some(200), "body cut short"),
            ),
            (service(429, Some("TooManyRequestsException"), Some("Rate Exceeded.")), throttled("Rate Exceeded.")),
            (service(429, None, None), throttled("HTTP 429")),
            (service(400, Some("ThrottlingException"), None), throttled("ThrottlingException")),
            (service(502, Some("EC2ThrottledException"), Some("ec2")), throttled("ec2")),
            (service(500, Some("ServiceException"), Some("boom")), unavailable(Some(500), "ServiceException: boom")),
            (service(503, Some("ServiceException"), None), unavailable(Some(503), "ServiceException")),
            (
                service(502, Some("ENILimitReachedException"), Some("eni")),
                unavailable(Some(502), "ENILimitReachedException: eni"),
            ),
            (
                service(502, Some("ResourceNotReadyException"), Some("x")),
                unavailable(Some(502), "ResourceNotReadyException: x"),
            ),
            (service(504, None, None), unavailable(Some(504), "HTTP 504")),
            (
                service(408, Some("RequestTimeoutException"), Some("slow")),
                unavailable(Some(408), "RequestTimeoutException: slow"),
            ),
            (
                service(404, Some("ResourceNotFoundException"), Some("Function not found")),
                rejected("ResourceNotFoundException", "Function not found"),
            ),
            (service(403, Some("AccessDeniedException"), Some("no")), rejected("AccessDeniedException", "no")),
            (
                service(400, Some("InvalidRequestContentException"), Some("bad json")),
                rejected("InvalidRequestContentException", "bad json"),
            ),
            (service(413, Some("RequestTooLargeException"), Some("big")), rejected("RequestTooLargeException", "big")),
            (
                service(409, Some("ResourceConflictException"), Some("busy")),
                rejected("ResourceConflictException", "busy"),
            ),
            (service(400, None, None), rejected("HTTP400", "HTTP 400 without a message")),
        ];
        for (failure, expected) in cases {
            assert_eq!(classify(failure.clone()), expected, "{failure:?}");
        }
    }

    #[test]
    fn invoke_client_makes_one_attempt_within_the_timeout_and_keeps_the_connect_timeout() {
        let client_config = aws_sdk_lambda::Config::builder()
            .behavior_version(aws_sdk_lambda::config::BehaviorVersion::latest())
            .timeout_config(TimeoutConfig::builder().connect_timeout(Duration::from_secs(3)).build())
            .build();
        let invoker = LambdaInvoker::from_client(aws_sdk_lambda::Client::from_conf(client_config));

        let client = invoker.invoke_client(Duration::from_secs(61));
        let config = client.config();

        let timeouts = config.timeout_config().cloned();
        assert_eq!(timeouts.as_ref().and_then(TimeoutConfig::operation_timeout), Some(Duration::from_secs(61)));
        assert_eq!(timeouts.as_ref().and_then(TimeoutConfig::connect_timeout), Some(Duration::from_secs(3)));
        assert_eq!(config.retry_config().map(RetryConfig::max_attempts), Some(1));
    }

    #[test]
    fn only_rejected_lookups_mean_the_function_is_not_valid() {
        assert_eq!(
            lookup_error(rejected("ResourceNotFoundException", "gone")),
            FunctionLookupError::NotValid { code: "ResourceNotFoundException".to_owned(), message: "gone".to_owned() }
        );
        assert_eq!(
            lookup_error(throttled("slow down")),
            FunctionLookupError::Unavailable("throttled: slow down".to_owned())
        );
        assert_eq!(lookup_error(unavailable(Some(500), "boom")), FunctionLookupError::Unavailable("boom".to_owned()));
        assert_eq!(lookup_error(InvokeResult::TimedOut), FunctionLookupError::Unavailable("timed out".to_owned()));
    }
}
