//! Why a destination write failed, with the AWS error code, and whether trying again may help.

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use rdkafka::error::RDKafkaErrorCode;

/// How an AWS call failed before or after reaching the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsErrorKind {
    /// The service answered with an error (it has a code and an HTTP status).
    Service,
    /// The request never got an answer: DNS, connect, TLS, connection reset.
    Dispatch,
    /// The request or the response timed out.
    Timeout,
    /// An answer came back that could not be read.
    Response,
    /// The request could not be built (a bug or bad input on our side).
    Construction,
}

/// A failed AWS call, reduced to what classification and logs need. Built from the SDK's error so the
/// original stays available as the source; messages never include what was being sent.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct AwsError {
    kind: AwsErrorKind,
    // Boxed strings keep every `DestinationError` variant small (clippy's `result_large_err`).
    code: Option<Box<str>>,
    message: Option<Box<str>>,
    status: Option<u16>,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl AwsError {
    /// An error answered by the service, e.g. `("AccessDenied", 403)`: for fakes and tests.
    pub fn service(code: &str, status: u16, message: &str) -> Self {
        Self {
            kind: AwsErrorKind::Service,
            code: Some(code.into()),
            message: Some(message.into()),
            status: Some(status),
            source: None,
        }
    }

    /// An error without a service answer (`Dispatch`, `Timeout`, ...): for fakes and tests.
    pub fn transport(kind: AwsErrorKind, message: &str) -> Self {
        Self { kind, code: None, message: Some(message.into()), status: None, source: None }
    }

    /// Keeps the code, status and message of an SDK error of any of the three services.
    pub(crate) fn from_sdk<E>(err: SdkError<E>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (kind, code, message, status) = match &err {
            SdkError::ServiceError(ctx) => (
                AwsErrorKind::Service,
                ctx.err().code().map(str::to_string),
                ctx.err().message().map(str::to_string),
                Some(ctx.raw().status().as_u16()),
            ),
            SdkError::ResponseError(ctx) => (
                AwsErrorKind::Response,
                None,
                Some(DisplayErrorContext(&err).to_string()),
                Some(ctx.raw().status().as_u16()),
            ),
            SdkError::DispatchFailure(_) => {
                (AwsErrorKind::Dispatch, None, Some(DisplayErrorContext(&err).to_string()), None)
            }
            SdkError::TimeoutError(_) => {
                (AwsErrorKind::Timeout, None, Some(DisplayErrorContext(&err).to_string()), None)
            }
            _ => (AwsErrorKind::Construction, None, Some(DisplayErrorContext(&err).to_string()), None),
        };
        Self { kind, code: code.map(Into::into), message: message.map(Into::into), status, source: Some(Box::new(err)) }
    }

    /// How the call failed.
    pub fn kind(&self) -> AwsErrorKind {
        self.kind
    }

    /// HTTP status of the service's answer, when there was one.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The AWS error code (`AccessDenied`, `KMS.DisabledException`, `NoSuchBucket`, ...), or for calls the
    /// service never answered: `DispatchFailure`, `TimeoutError`, `ResponseError`, `ConstructionFailure`.
    pub fn code(&self) -> &str {
        match (&self.code, self.kind) {
            (Some(code), _) => code,
            (None, AwsErrorKind::Service) => "UnknownServiceError",
            (None, AwsErrorKind::Dispatch) => "DispatchFailure",
            (None, AwsErrorKind::Timeout) => "TimeoutError",
            (None, AwsErrorKind::Response) => "ResponseError",
            (None, AwsErrorKind::Construction) => "ConstructionFailure",
        }
    }

    /// True when the same call may succeed later without anyone changing anything: the network, timeouts,
    /// throttling (KMS's included), 5xx, expired temporary credentials. False when it needs a fix: access
    /// denied, a missing queue, topic, bucket or KMS key, a disabled key, an invalid request.
    pub fn retryable(&self) -> bool {
        match self.kind {
            AwsErrorKind::Dispatch | AwsErrorKind::Timeout | AwsErrorKind::Response => true,
            AwsErrorKind::Construction => false,
            AwsErrorKind::Service => {
                let code = self.code();
                code.to_ascii_lowercase().contains("throttl")
                    || TRANSIENT_CODES.contains(&code)
                    || matches!(self.status, Some(429) | Some(500..=599))
            }
        }
    }

    fn describe(&self) -> String {
        let mut out = self.code().to_string();
        if let Some(status) = self.status {
            out.push_str(&format!(" (HTTP {status})"));
        }
        if let Some(message) = &self.message {
            out.push_str(": ");
            out.push_str(message);
        }
        out
    }
}

/// Service error codes that clear up by themselves. Throttling codes (`Throttling`,
/// `KMS.ThrottlingException`, `KmsThrottled`, `KMSThrottlingException`, ...) are matched by name instead.
const TRANSIENT_CODES: &[&str] = &[
    "SlowDown",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "InternalErrorException",
    "RequestTimeout",
    "RequestTimeoutException",
    // Temporary credentials that ran out between refreshes: the next call signs with new ones.
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
    "RequestTimeTooSkewed",
];

/// Writing an invocation record failed. The message names the operation and the destination, never the
/// record.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// The ARN is not an SQS queue, SNS topic or S3 bucket ARN (or, for [`super::kafka`], not `kafka://<topic>`).
    #[error("on-failure destination {arn:?} is not an SQS queue, SNS topic or S3 bucket ARN, nor kafka://<topic>")]
    InvalidArn {
        /// The ARN as configured.
        arn: String,
    },
    /// `GetQueueUrl` failed.
    #[error("sqs GetQueueUrl for queue {queue_name:?} of account {account:?} failed: {source}")]
    QueueUrl {
        /// The queue's name.
        queue_name: String,
        /// The queue owner's account id.
        account: String,
        /// What AWS said.
        #[source]
        source: AwsError,
    },
    /// `SendMessage` failed.
    #[error("sqs SendMessage to {queue_url:?} failed: {source}")]
    SendMessage {
        /// The queue.
        queue_url: String,
        /// What AWS said.
        #[source]
        source: AwsError,
    },
    /// `Publish` failed.
    #[error("sns Publish to {topic_arn:?} failed: {source}")]
    Publish {
        /// The topic.
        topic_arn: String,
        /// What AWS said.
        #[source]
        source: AwsError,
    },
    /// `PutObject` failed.
    #[error("s3 PutObject to bucket {bucket:?} key {key:?} failed: {source}")]
    PutObject {
        /// The bucket.
        bucket: String,
        /// The object key.
        key: String,
        /// What AWS said.
        #[source]
        source: AwsError,
    },
    /// Even with an empty `recordsInfo` the record exceeds the service's message size limit (only possible
    /// with an enormous `bootstrapServers` or function ARN).
    #[error("the invocation record does not fit in {limit} bytes even with an empty recordsInfo")]
    RecordTooLarge {
        /// The service's limit in bytes.
        limit: usize,
    },
    /// [`GivenUp`](super::GivenUp) held no records: there is nothing to report and nothing to commit.
    #[error("no records given up: nothing to write")]
    EmptyBatch,
    /// The producer of a `kafka://` destination could not be created (librdkafka refused its settings).
    #[error("kafka producer for failure topic {topic:?} cannot be created: {reason}")]
    KafkaProducer {
        /// The failure topic.
        topic: String,
        /// librdkafka's reason, naming the setting but never its value.
        reason: String,
    },
    /// Producing one record's message to the failure topic failed, or the broker did not acknowledge it.
    #[error("kafka produce of record {record} to failure topic {topic:?} failed: {reason}")]
    KafkaProduce {
        /// The failure topic.
        topic: String,
        /// The source record, `<topic>-<partition>@<offset>`.
        record: String,
        /// librdkafka's or the broker's error code, when there is one.
        code: Option<RDKafkaErrorCode>,
        /// The code's name (`MessageTimedOut`, `TopicAuthorizationFailed`), `KafkaProduceFailed` without one.
        code_name: String,
        /// librdkafka's message.
        reason: String,
    },
}

/// Kafka error codes that need someone to change the cluster (the failure topic, its ACLs or its
/// `max.message.bytes`) before the same produce can succeed. Everything else (timeouts, leader changes,
/// brokers down, throttling) clears up by itself.
const KAFKA_PERMANENT: &[RDKafkaErrorCode] = &[
    RDKafkaErrorCode::TopicAuthorizationFailed,
    RDKafkaErrorCode::ClusterAuthorizationFailed,
    RDKafkaErrorCode::UnknownTopicOrPartition,
    RDKafkaErrorCode::UnknownTopic,
    RDKafkaErrorCode::InvalidTopic,
    RDKafkaErrorCode::MessageSizeTooLarge,
    RDKafkaErrorCode::MessageBatchTooLarge,
    RDKafkaErrorCode::InvalidRecord,
    RDKafkaErrorCode::SaslAuthenticationFailed,
    RDKafkaErrorCode::Authentication,
];

impl DestinationError {
    /// The AWS error code, or for failures of our own a stable code of the same style
    /// (`InvalidDestinationArn`, `RecordTooLarge`, `EmptyBatch`). Meant for the `error_code` log field.
    pub fn error_code(&self) -> &str {
        match self {
            DestinationError::InvalidArn { .. } => "InvalidDestinationArn",
            DestinationError::RecordTooLarge { .. } => "RecordTooLarge",
            DestinationError::EmptyBatch => "EmptyBatch",
            DestinationError::KafkaProducer { .. } => "KafkaProducerConfig",
            DestinationError::KafkaProduce { code_name, .. } => code_name,
            DestinationError::QueueUrl { source, .. }
            | DestinationError::SendMessage { source, .. }
            | DestinationError::Publish { source, .. }
            | DestinationError::PutObject { source, .. } => source.code(),
        }
    }

    /// The AWS failure behind this error, if it was one.
    pub fn aws(&self) -> Option<&AwsError> {
        match self {
            DestinationError::QueueUrl { source, .. }
            | DestinationError::SendMessage { source, .. }
            | DestinationError::Publish { source, .. }
            | DestinationError::PutObject { source, .. } => Some(source),
            _ => None,
        }
    }

    /// True when trying again unchanged may succeed (see [`AwsError::retryable`]). The relay retries
    /// every failure anyway, since it may not commit past records the destination has not taken; a
    /// non-retryable error means a person has to fix the destination, its permissions or its KMS key.
    pub fn retryable(&self) -> bool {
        match self {
            DestinationError::KafkaProduce { code, .. } => !code.is_some_and(|c| KAFKA_PERMANENT.contains(&c)),
            _ => self.aws().is_some_and(AwsError::retryable),
        }
    }
}

impl DestinationError {
    /// A failed produce of `record` to `topic`, keeping the error's code and name.
    pub fn kafka_produce(topic: &str, record: String, error: &rdkafka::error::KafkaError) -> Self {
        let code = error.rdkafka_error_code();
        DestinationError::KafkaProduce {
            topic: topic.to_string(),
            record,
            code,
            code_name: code.map_or_else(|| "KafkaProduceFailed".to_string(), |c| format!("{c:?}")),
            reason: error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_of_service_codes() {
        let table = [
            ("AccessDenied", 403, false),
            ("AccessDeniedException", 400, false),
            ("AuthorizationError", 403, false),
            ("AWS.SimpleQueueService.NonExistentQueue", 400, false),
            ("QueueDoesNotExist", 400, false),
            ("NotFound", 404, false),
            ("NoSuchBucket", 404, false),
            ("KMS.DisabledException", 400, false),
            ("KmsDisabled", 400, false),
            ("KMSNotFound", 400, false),
            ("KMSAccessDenied", 400, false),
            ("InvalidParameterValue", 400, false),
            ("KMS.ThrottlingException", 400, true),
            ("KmsThrottled", 400, true),
            ("KMSThrottling", 400, true),
            ("Throttling", 400, true),
            ("ThrottlingException", 400, true),
            ("SlowDown", 503, true),
            ("ServiceUnavailable", 503, true),
            ("InternalError", 500, true),
            ("SomethingNew", 502, true),
            ("SomethingNew", 429, true),
            ("ExpiredToken", 400, true),
        ];
        for (code, status, retryable) in table {
            let error = AwsError::service(code, status, "m");
            assert_eq!(error.retryable(), retryable, "{code} {status}");
            assert_eq!(error.code(), code);
        }
    }

    #[test]
    fn calls_never_answered_are_retryable_and_named() {
        for (kind, code, retryable) in [
            (AwsErrorKind::Dispatch, "DispatchFailure", true),
            (AwsErrorKind::Timeout, "TimeoutError", true),
            (AwsErrorKind::Response, "ResponseError", true),
            (AwsErrorKind::Construction, "ConstructionFailure", false),
        ] {
            let error = AwsError::transport(kind, "m");
            assert_eq!(error.code(), code);
            assert_eq!(error.retryable(), retryable, "{code}");
        }
    }

    #[test]
    fn destination_error_carries_the_aws_code_and_names_the_destination() {
        let error = DestinationError::Publish {
            topic_arn: "arn:aws:sns:us-east-1:1:t".into(),
            source: AwsError::service("AuthorizationError", 403, "not allowed"),
        };
        assert_eq!(error.error_code(), "AuthorizationError");
        assert!(!error.retryable());
        assert_eq!(
            error.to_string(),
            "sns Publish to \"arn:aws:sns:us-east-1:1:t\" failed: AuthorizationError (HTTP 403): not allowed"
        );
        assert_eq!(DestinationError::EmptyBatch.error_code(), "EmptyBatch");
        use rdkafka::error::KafkaError;
        for (error, name, retryable) in [
            (KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed), "TopicAuthorizationFailed", false),
            (KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition), "UnknownTopicOrPartition", false),
            (KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), "MessageSizeTooLarge", false),
            (KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut), "MessageTimedOut", true),
            (KafkaError::MessageProduction(RDKafkaErrorCode::NotLeaderForPartition), "NotLeaderForPartition", true),
            (KafkaError::Canceled, "KafkaProduceFailed", true),
        ] {
            let error = DestinationError::kafka_produce("failed", "t-0@1".into(), &error);
            assert_eq!((error.error_code(), error.retryable()), (name, retryable), "{error}");
        }
        assert!(!DestinationError::RecordTooLarge { limit: 1 }.retryable());
    }
}
