//! On-failure destinations: the invocation record AWS writes for a batch it gives up on, and where it goes
//! (SPEC section 5).
//!
//! Offsets of given-up records are committed only after [`OnFailureDestination::send`] returned `Ok`: the
//! write is the durable hand-off that makes skipping those records safe. `send` makes one attempt (plus the
//! SDK's own short retries) and never loops: on `Err` the caller keeps the partition waiting and calls it
//! again with backoff, so a destination that is down delays records but never loses them.
//!
//! - SQS (`arn:aws:sqs:region:account:queue`): `SendMessage`, body = the record. The queue URL comes from
//!   `GetQueueUrl` (queue name + owner account), asked once and cached.
//! - SNS (`arn:aws:sns:region:account:topic`): `Publish`, message = the record.
//! - S3 (`arn:aws:s3:::bucket`): `PutObject` of the record plus `payload`, the whole event as a JSON string,
//!   under a key from [`object_key`].
//! - Kafka (`kafka://topic`): one message per record on the mapping's own cluster, see [`kafka`].
//!
//! SQS and SNS records must fit in [`MAX_MESSAGE_BYTES`]; a record that does not is sent reduced (see
//! [`FailureRecord::encode_within`]). S3 objects have no practical limit (5 GB per `PutObject`).

mod clients;
mod error;
pub mod kafka;
pub mod offload;
mod record;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use clients::{AwsS3, AwsSns, AwsSqs, S3Put, SnsPublish, SqsSend};
pub use error::{AwsError, AwsErrorKind, DestinationError};
pub use record::{rfc3339_millis, Encoded, FailureRecord, KafkaBatchInfo, PartitionInfo, RecordsInfo, RequestContext};

use crate::config::{destination_kind, DestinationKind};
use crate::kafka::{PartitionKey, Record};

/// Largest SQS message body and SNS message the relay sends: 256 KiB. SNS allows 262,144 bytes; SQS now
/// accepts up to 1 MiB per message, but only on queues whose `MaximumMessageSize` was raised (256 KiB is
/// the long-standing default), so the relay stays within what every queue takes.
pub const MAX_MESSAGE_BYTES: usize = 262_144;

/// Why records are given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// Retries or record age exhausted.
    RetryAttemptsExhausted,
    /// A single record whose event alone exceeds 6 MB.
    MaximumPayloadSizeExceeded,
    /// Schema registry decoding: the registry has no schema with the record's id (never invoked).
    #[serde(rename = "SCHEMA_NOT_FOUND")]
    SchemaNotFound,
    /// Schema registry decoding: the record's bytes do not decode or validate (never invoked).
    #[serde(rename = "DESERIALIZATION_ERROR")]
    DeserializationError,
}

impl Condition {
    /// The name AWS writes in `requestContext.condition`.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::RetryAttemptsExhausted => "RetryAttemptsExhausted",
            Condition::MaximumPayloadSizeExceeded => "MaximumPayloadSizeExceeded",
            Condition::SchemaNotFound => "SCHEMA_NOT_FOUND",
            Condition::DeserializationError => "DESERIALIZATION_ERROR",
        }
    }

    /// Whether records given up this way were never invoked (so there is no response to report).
    pub fn uninvoked(self) -> bool {
        !matches!(self, Condition::RetryAttemptsExhausted)
    }
}

/// `responseContext` of the last invocation (absent for `MaximumPayloadSizeExceeded`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseContext {
    /// HTTP status of the last invoke.
    pub status_code: i32,
    /// `X-Amz-Executed-Version`, `$LATEST` when unknown.
    pub executed_version: String,
    /// `X-Amz-Function-Error`, when set. Omitted otherwise (a batch given up on reported item failures),
    /// as AWS omits it from records of invocations without a function error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

/// Where an invocation record went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRecord {
    /// `requestContext.requestId` of the record written.
    pub request_id: String,
    /// The service's receipt.
    pub location: SentTo,
    /// `recordsInfo` was cut to fit [`MAX_MESSAGE_BYTES`].
    pub records_info_truncated: bool,
}

/// The service's receipt for a written record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SentTo {
    /// An SQS message.
    Sqs {
        /// The queue.
        queue_url: String,
        /// SQS's message id.
        message_id: String,
    },
    /// An SNS message.
    Sns {
        /// The topic.
        topic_arn: String,
        /// SNS's message id.
        message_id: String,
    },
    /// An S3 object.
    S3 {
        /// The bucket.
        bucket: String,
        /// The object key.
        key: String,
    },
}

/// A mapping's `DestinationConfig.OnFailure.Destination`, ready to take invocation records.
pub struct OnFailureDestination {
    arn: String,
    target: Target,
}

enum Target {
    Sqs {
        client: Arc<dyn SqsSend>,
        queue_name: String,
        account: String,
        /// Resolved on first use, then kept: the URL of a queue never changes.
        queue_url: tokio::sync::OnceCell<String>,
    },
    Sns {
        client: Arc<dyn SnsPublish>,
    },
    S3 {
        client: Arc<dyn S3Put>,
        bucket: String,
    },
}

impl std::fmt::Debug for OnFailureDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnFailureDestination").field("arn", &self.arn).finish_non_exhaustive()
    }
}

/// `arn:partition:service:region:account:resource`, split.
struct ArnParts<'a> {
    region: &'a str,
    account: &'a str,
    resource: &'a str,
}

fn arn_parts(arn: &str) -> ArnParts<'_> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    // Only called after `destination_kind` accepted the ARN, which checked there are six parts.
    ArnParts { region: parts[3], account: parts[4], resource: parts[5] }
}

impl OnFailureDestination {
    /// The destination named by `arn`, on AWS SDK clients built from `sdk_config`. SQS and SNS clients use
    /// the ARN's region. Endpoint overrides (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_SQS`, ...) are read by
    /// `aws-config` into `sdk_config` and honoured by each client; S3 switches to path-style addressing
    /// when its endpoint is overridden, since emulators do not serve bucket subdomains.
    pub fn new(arn: &str, sdk_config: &aws_config::SdkConfig) -> Result<Self, DestinationError> {
        match destination_kind(arn) {
            Some(DestinationKind::Sqs) => {
                let region = aws_sdk_sqs::config::Region::new(arn_parts(arn).region.to_string());
                let config = aws_sdk_sqs::config::Builder::from(sdk_config).region(region).build();
                Self::with_sqs(arn, Arc::new(AwsSqs(aws_sdk_sqs::Client::from_conf(config))))
            }
            Some(DestinationKind::Sns) => {
                let region = aws_sdk_sns::config::Region::new(arn_parts(arn).region.to_string());
                let config = aws_sdk_sns::config::Builder::from(sdk_config).region(region).build();
                Self::with_sns(arn, Arc::new(AwsSns(aws_sdk_sns::Client::from_conf(config))))
            }
            Some(DestinationKind::S3) => {
                let config = aws_sdk_s3::config::Builder::from(sdk_config)
                    .force_path_style(s3_endpoint_overridden(sdk_config))
                    .build();
                Self::with_s3(arn, Arc::new(AwsS3(aws_sdk_s3::Client::from_conf(config))))
            }
            // A Kafka destination needs the mapping's cluster: [`kafka::KafkaDestination`] is built with it.
            Some(DestinationKind::Kafka) | None => Err(DestinationError::InvalidArn { arn: arn.to_string() }),
        }
    }

    /// An SQS destination on `client`; `arn` must be an SQS queue ARN.
    pub fn with_sqs(arn: &str, client: Arc<dyn SqsSend>) -> Result<Self, DestinationError> {
        Self::expect_kind(arn, DestinationKind::Sqs)?;
        let parts = arn_parts(arn);
        let target = Target::Sqs {
            client,
            queue_name: parts.resource.to_string(),
            account: parts.account.to_string(),
            queue_url: tokio::sync::OnceCell::new(),
        };
        Ok(Self { arn: arn.to_string(), target })
    }

    /// An SNS destination on `client`; `arn` must be an SNS topic ARN.
    pub fn with_sns(arn: &str, client: Arc<dyn SnsPublish>) -> Result<Self, DestinationError> {
        Self::expect_kind(arn, DestinationKind::Sns)?;
        Ok(Self { arn: arn.to_string(), target: Target::Sns { client } })
    }

    /// An S3 destination on `client`; `arn` must be an S3 bucket ARN (`arn:aws:s3:::bucket`).
    pub fn with_s3(arn: &str, client: Arc<dyn S3Put>) -> Result<Self, DestinationError> {
        Self::expect_kind(arn, DestinationKind::S3)?;
        let bucket = arn_parts(arn).resource.to_string();
        Ok(Self { arn: arn.to_string(), target: Target::S3 { client, bucket } })
    }

    fn expect_kind(arn: &str, kind: DestinationKind) -> Result<(), DestinationError> {
        match destination_kind(arn) {
            Some(found) if found == kind => Ok(()),
            _ => Err(DestinationError::InvalidArn { arn: arn.to_string() }),
        }
    }

    /// The destination's ARN, as configured.
    pub fn arn(&self) -> &str {
        &self.arn
    }

    /// SQS, SNS or S3.
    pub fn kind(&self) -> DestinationKind {
        match self.target {
            Target::Sqs { .. } => DestinationKind::Sqs,
            Target::Sns { .. } => DestinationKind::Sns,
            Target::S3 { .. } => DestinationKind::S3,
        }
    }

    /// Writes the invocation record for `given_up`, once. `Ok` means the service acknowledged the write and
    /// the records' offsets may be committed; on `Err` nothing may be committed, and the caller retries
    /// later (with backoff) whatever [`DestinationError::retryable`] says.
    pub async fn send(&self, given_up: &GivenUp<'_>) -> Result<SentRecord, DestinationError> {
        let result = self.send_at(given_up, uuid::Uuid::new_v4(), OffsetDateTime::now_utc()).await;
        match &result {
            Ok(sent) => tracing::info!(
                destination = %self.arn,
                mapping = given_up.mapping_uuid,
                condition = given_up.condition.as_str(),
                request_id = %sent.request_id,
                batch_size = given_up.records.len(),
                records_info_truncated = sent.records_info_truncated,
                "invocation record written to the on-failure destination"
            ),
            Err(error) => tracing::warn!(
                destination = %self.arn,
                mapping = given_up.mapping_uuid,
                condition = given_up.condition.as_str(),
                error_code = error.error_code(),
                retryable = error.retryable(),
                error = %error,
                "writing the invocation record failed; the records stay uncommitted"
            ),
        }
        result
    }

    async fn send_at(
        &self,
        given_up: &GivenUp<'_>,
        request_id: uuid::Uuid,
        now: OffsetDateTime,
    ) -> Result<SentRecord, DestinationError> {
        let Some(first) = given_up.records.first() else {
            return Err(DestinationError::EmptyBatch);
        };
        let with_payload = matches!(self.target, Target::S3 { .. });
        let record = FailureRecord::new(given_up, request_id, now, with_payload);
        match &self.target {
            Target::Sqs { client, queue_name, account, queue_url } => {
                let encoded = encode_message(&record)?;
                let queue_url = queue_url
                    .get_or_try_init(|| async {
                        client.queue_url(queue_name, account).await.map_err(|source| DestinationError::QueueUrl {
                            queue_name: queue_name.clone(),
                            account: account.clone(),
                            source,
                        })
                    })
                    .await?;
                let message_id = client
                    .send_message(queue_url, encoded.json)
                    .await
                    .map_err(|source| DestinationError::SendMessage { queue_url: queue_url.clone(), source })?;
                Ok(SentRecord {
                    request_id: record.request_context.request_id,
                    location: SentTo::Sqs { queue_url: queue_url.clone(), message_id },
                    records_info_truncated: encoded.truncated,
                })
            }
            Target::Sns { client } => {
                let encoded = encode_message(&record)?;
                let message_id = client
                    .publish(&self.arn, encoded.json)
                    .await
                    .map_err(|source| DestinationError::Publish { topic_arn: self.arn.clone(), source })?;
                Ok(SentRecord {
                    request_id: record.request_context.request_id,
                    location: SentTo::Sns { topic_arn: self.arn.clone(), message_id },
                    records_info_truncated: encoded.truncated,
                })
            }
            Target::S3 { client, bucket } => {
                let first_offset = given_up
                    .records
                    .iter()
                    .filter(|r| r.key_partition == first.key_partition)
                    .map(|r| r.offset)
                    .min()
                    .unwrap_or(first.offset);
                let key = object_key(given_up.mapping_uuid, &first.key_partition, first_offset, now, request_id);
                client.put_object(bucket, &key, record.to_json().into_bytes()).await.map_err(|source| {
                    DestinationError::PutObject { bucket: bucket.clone(), key: key.clone(), source }
                })?;
                Ok(SentRecord {
                    request_id: record.request_context.request_id,
                    location: SentTo::S3 { bucket: bucket.clone(), key },
                    records_info_truncated: false,
                })
            }
        }
    }
}

fn encode_message(record: &FailureRecord) -> Result<Encoded, DestinationError> {
    record.encode_within(MAX_MESSAGE_BYTES).ok_or(DestinationError::RecordTooLarge { limit: MAX_MESSAGE_BYTES })
}

/// An S3 client on `sdk_config`, path-style when the endpoint is overridden (emulators).
pub fn s3_client(sdk_config: &aws_config::SdkConfig) -> AwsS3 {
    let config = aws_sdk_s3::config::Builder::from(sdk_config).force_path_style(s3_endpoint_overridden(sdk_config)).build();
    AwsS3(aws_sdk_s3::Client::from_conf(config))
}

/// Whether S3 requests go to an overridden endpoint: the global `AWS_ENDPOINT_URL` (or one set in code) is
/// in `sdk_config`; the S3-only `AWS_ENDPOINT_URL_S3` is read by the S3 client itself, so it is checked
/// here the same way.
pub(crate) fn s3_endpoint_overridden(sdk_config: &aws_config::SdkConfig) -> bool {
    sdk_config.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some_and(|v| !v.is_empty())
}

/// The S3 key of an invocation record:
/// `kafka-lambda-relay/<mapping UUID>/<topic>-<partition>/YYYY/MM/DD/<YYYYMMDDTHHMMSSmmmZ>-<offset>-<uuid>.json`
/// with the partition and offset of the batch's first record, the offset zero-padded to 20 digits.
/// Within a mapping and partition, keys sort by write time (fixed-width UTC fields), then by first offset;
/// the request id makes them unique even for the same millisecond and offset.
pub fn object_key(
    mapping_uuid: &str,
    partition: &PartitionKey,
    first_offset: i64,
    at: OffsetDateTime,
    request_id: uuid::Uuid,
) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    let day = at.format(time::macros::format_description!("[year]/[month]/[day]")).expect("years 0-9999 format");
    let stamp = at
        .format(time::macros::format_description!("[year][month][day]T[hour][minute][second][subsecond digits:3]Z"))
        .expect("years 0-9999 format");
    format!("kafka-lambda-relay/{mapping_uuid}/{partition}/{day}/{stamp}-{first_offset:020}-{request_id}.json")
}

/// What the destinations' unit tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A batch given up after 11 attempts with a function error, as the destinations' tests write it.
    pub(crate) fn given_up<'a>(records: &'a [Record], payload: &'a [u8]) -> GivenUp<'a> {
        GivenUp {
            mapping_uuid: "6f2c1c8e-1b1e-4f57-9a53-0c3d1b7b3e11",
            function_arn: "arn:aws:lambda:eu-west-1:111122223333:function:target",
            event_source_arn: None,
            bootstrap_servers: "b:9092",
            condition: Condition::RetryAttemptsExhausted,
            approximate_invoke_count: 11,
            response: Some(ResponseContext {
                status_code: 200,
                executed_version: "$LATEST".into(),
                function_error: Some("Unhandled".into()),
            }),
            records,
            payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::TimestampType;
    use std::sync::Mutex;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const SQS_ARN: &str = "arn:aws:sqs:eu-west-1:111122223333:dlq";
    const SNS_ARN: &str = "arn:aws:sns:eu-west-1:111122223333:alerts";
    const S3_ARN: &str = "arn:aws:s3:::failures";

    /// Answers from a script and records every call.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<(String, String, String)>>,
        failures: Mutex<Vec<AwsError>>,
    }

    impl Fake {
        fn failing(errors: Vec<AwsError>) -> Arc<Self> {
            Arc::new(Self { failures: Mutex::new(errors), ..Self::default() })
        }

        fn call(&self, op: &str, target: &str, body: String) -> Result<(), AwsError> {
            self.calls.lock().unwrap().push((op.to_string(), target.to_string(), body));
            let mut failures = self.failures.lock().unwrap();
            if failures.is_empty() {
                Ok(())
            } else {
                Err(failures.remove(0))
            }
        }

        fn calls(&self) -> Vec<(String, String, String)> {
            self.calls.lock().unwrap().clone()
        }
    }

    #[async_trait::async_trait]
    impl SqsSend for Fake {
        async fn queue_url(&self, queue_name: &str, owner_account_id: &str) -> Result<String, AwsError> {
            self.call("GetQueueUrl", &format!("{owner_account_id}/{queue_name}"), String::new())?;
            Ok(format!("https://sqs.example/{owner_account_id}/{queue_name}"))
        }
        async fn send_message(&self, queue_url: &str, body: String) -> Result<String, AwsError> {
            self.call("SendMessage", queue_url, body)?;
            Ok("m-1".into())
        }
    }

    #[async_trait::async_trait]
    impl SnsPublish for Fake {
        async fn publish(&self, topic_arn: &str, message: String) -> Result<String, AwsError> {
            self.call("Publish", topic_arn, message)?;
            Ok("n-1".into())
        }
    }

    #[async_trait::async_trait]
    impl S3Put for Fake {
        async fn put_object(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<(), AwsError> {
            self.call("PutObject", &format!("{bucket}/{key}"), String::from_utf8(body).expect("utf-8"))
        }
    }

    fn records(partitions: i32) -> Vec<Record> {
        let mut out = Vec::new();
        for partition in 0..partitions {
            for offset in [40, 41, 42] {
                out.push(Record::new(
                    PartitionKey::new("orders-with-a-long-topic-name", partition),
                    offset,
                    1_700_000_000_000 + offset,
                    TimestampType::CreateTime,
                    None,
                    Some(b"{\"secret\":\"record contents\"}".to_vec()),
                    vec![],
                ));
            }
        }
        out
    }

    const EVENT: &[u8] = br#"{"eventSource":"SelfManagedKafka","bootstrapServers":"b:9092","records":{}}"#;

    fn given_up(records: &[Record]) -> GivenUp<'_> {
        test_support::given_up(records, EVENT)
    }

    fn at(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).expect("valid time")
    }

    #[tokio::test]
    async fn sqs_resolves_the_queue_url_once_and_sends_the_metadata_record() -> TestResult {
        let fake = Arc::new(Fake::default());
        let destination = OnFailureDestination::with_sqs(SQS_ARN, fake.clone())?;
        let records = records(2);
        let first = destination.send(&given_up(&records)).await?;
        let second = destination.send(&given_up(&records)).await?;
        let calls = fake.calls();
        let ops: Vec<&str> = calls.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(ops, ["GetQueueUrl", "SendMessage", "SendMessage"]);
        assert_eq!(calls[0].1, "111122223333/dlq");
        assert_eq!(calls[1].1, "https://sqs.example/111122223333/dlq");
        assert_eq!(
            first.location,
            SentTo::Sqs { queue_url: "https://sqs.example/111122223333/dlq".into(), message_id: "m-1".into() }
        );
        assert_ne!(first.request_id, second.request_id);
        let body: FailureRecord = serde_json::from_str(&calls[1].2)?;
        assert_eq!(body.request_context.request_id, first.request_id);
        assert_eq!(body.request_context.approximate_invoke_count, 11);
        assert_eq!(body.payload, None, "SQS gets metadata only");
        assert_eq!(body.kafka_batch_info.records_info.0.len(), 2);
        Ok(())
    }

    #[tokio::test]
    async fn a_failed_queue_url_lookup_is_not_cached() -> TestResult {
        let fake = Fake::failing(vec![AwsError::transport(AwsErrorKind::Dispatch, "connection refused")]);
        let destination = OnFailureDestination::with_sqs(SQS_ARN, fake.clone())?;
        let records = records(1);
        let error = destination.send(&given_up(&records)).await.expect_err("lookup fails");
        assert!(matches!(error, DestinationError::QueueUrl { .. }));
        assert_eq!(error.error_code(), "DispatchFailure");
        assert!(error.retryable());
        destination.send(&given_up(&records)).await?;
        let ops: Vec<String> = fake.calls().into_iter().map(|c| c.0).collect();
        assert_eq!(ops, ["GetQueueUrl", "GetQueueUrl", "SendMessage"]);
        Ok(())
    }

    #[tokio::test]
    async fn sns_publishes_to_the_topic_arn() -> TestResult {
        let fake = Arc::new(Fake::default());
        let destination = OnFailureDestination::with_sns(SNS_ARN, fake.clone())?;
        let records = records(1);
        let sent = destination.send(&given_up(&records)).await?;
        assert_eq!(sent.location, SentTo::Sns { topic_arn: SNS_ARN.into(), message_id: "n-1".into() });
        let calls = fake.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!((calls[0].0.as_str(), calls[0].1.as_str()), ("Publish", SNS_ARN));
        let message: FailureRecord = serde_json::from_str(&calls[0].2)?;
        assert_eq!(message.payload, None);
        assert!(!sent.records_info_truncated);
        Ok(())
    }

    #[tokio::test]
    async fn sns_sends_a_reduced_record_when_the_batch_spans_too_many_partitions() -> TestResult {
        let fake = Arc::new(Fake::default());
        let destination = OnFailureDestination::with_sns(SNS_ARN, fake.clone())?;
        let records = records(4000);
        let sent = destination.send(&given_up(&records)).await?;
        assert!(sent.records_info_truncated);
        let message = &fake.calls()[0].2;
        assert!(message.len() <= MAX_MESSAGE_BYTES, "{} bytes", message.len());
        let record: FailureRecord = serde_json::from_str(message)?;
        assert_eq!(record.kafka_batch_info.records_info_truncated, Some(true));
        assert_eq!(record.kafka_batch_info.records_info_partition_count, Some(4000));
        assert_eq!(record.kafka_batch_info.batch_size, 12000);
        assert_eq!(record.kafka_batch_info.records_info.0[0].0, "orders-with-a-long-topic-name-0");
        Ok(())
    }

    #[tokio::test]
    async fn s3_writes_record_and_payload_under_a_time_sortable_key() -> TestResult {
        let fake = Arc::new(Fake::default());
        let destination = OnFailureDestination::with_s3(S3_ARN, fake.clone())?;
        let records = records(4000);
        let id = uuid::Uuid::new_v4();
        let sent = destination.send_at(&given_up(&records), id, at("2024-02-29T23:59:58.007Z")).await?;
        let key = format!(
            "kafka-lambda-relay/6f2c1c8e-1b1e-4f57-9a53-0c3d1b7b3e11/orders-with-a-long-topic-name-0/2024/02/29/20240229T235958007Z-00000000000000000040-{id}.json"
        );
        assert_eq!(sent.location, SentTo::S3 { bucket: "failures".into(), key: key.clone() });
        assert_eq!(sent.request_id, id.to_string());
        let calls = fake.calls();
        assert_eq!(calls[0].1, format!("failures/{key}"));
        let object: FailureRecord = serde_json::from_str(&calls[0].2)?;
        assert_eq!(object.payload.as_deref().map(str::as_bytes), Some(EVENT));
        assert_eq!(object.timestamp, "2024-02-29T23:59:58.007Z");
        assert_eq!(object.kafka_batch_info.records_info.0.len(), 4000, "S3 is never reduced");
        assert_eq!(object.kafka_batch_info.records_info_truncated, None);
        Ok(())
    }

    #[tokio::test]
    async fn errors_carry_the_aws_code_and_never_the_record() -> TestResult {
        let records = records(1);
        let cases: Vec<(OnFailureDestination, &str, bool)> = vec![
            (
                OnFailureDestination::with_sqs(
                    SQS_ARN,
                    Fake::failing(vec![AwsError::service("AWS.SimpleQueueService.NonExistentQueue", 400, "no queue")]),
                )?,
                "AWS.SimpleQueueService.NonExistentQueue",
                false,
            ),
            (
                OnFailureDestination::with_sns(
                    SNS_ARN,
                    Fake::failing(vec![AwsError::service("KMSThrottling", 400, "slow down")]),
                )?,
                "KMSThrottling",
                true,
            ),
            (
                OnFailureDestination::with_s3(
                    S3_ARN,
                    Fake::failing(vec![AwsError::service("AccessDenied", 403, "Access Denied")]),
                )?,
                "AccessDenied",
                false,
            ),
        ];
        for (destination, code, retryable) in cases {
            let error = destination.send(&given_up(&records)).await.expect_err("the fake fails");
            assert_eq!(error.error_code(), code);
            assert_eq!(error.retryable(), retryable, "{code}");
            let shown = format!("{error} {error:?}");
            assert!(shown.contains(code), "{shown}");
            assert!(!shown.contains("record contents"), "{shown}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn nothing_is_sent_for_an_empty_batch() -> TestResult {
        let fake = Arc::new(Fake::default());
        let destination = OnFailureDestination::with_sns(SNS_ARN, fake.clone())?;
        let error = destination.send(&given_up(&[])).await.expect_err("empty");
        assert!(matches!(error, DestinationError::EmptyBatch));
        assert!(fake.calls().is_empty());
        Ok(())
    }

    #[test]
    fn constructors_refuse_arns_of_another_kind() {
        let fake = Arc::new(Fake::default());
        assert!(matches!(
            OnFailureDestination::with_sqs(SNS_ARN, fake.clone()),
            Err(DestinationError::InvalidArn { .. })
        ));
        assert!(matches!(
            OnFailureDestination::with_s3(SQS_ARN, fake.clone()),
            Err(DestinationError::InvalidArn { .. })
        ));
        assert!(matches!(
            OnFailureDestination::with_sns("arn:aws:s3:::b", fake),
            Err(DestinationError::InvalidArn { .. })
        ));
    }

    #[tokio::test]
    async fn new_picks_the_service_from_the_arn() -> TestResult {
        let config = aws_config::SdkConfig::builder().behavior_version(aws_config::BehaviorVersion::latest()).build();
        assert_eq!(OnFailureDestination::new(SQS_ARN, &config)?.kind(), DestinationKind::Sqs);
        assert_eq!(OnFailureDestination::new(SNS_ARN, &config)?.kind(), DestinationKind::Sns);
        assert_eq!(OnFailureDestination::new(S3_ARN, &config)?.kind(), DestinationKind::S3);
        let error =
            OnFailureDestination::new("arn:aws:dynamodb:eu-west-1:1:table/t", &config).expect_err("not a destination");
        assert_eq!(error.to_string(), "on-failure destination \"arn:aws:dynamodb:eu-west-1:1:table/t\" is not an SQS queue, SNS topic or S3 bucket ARN, nor kafka://<topic>");
        let error = OnFailureDestination::new("kafka://orders-failed", &config).expect_err("needs the mapping's cluster");
        assert!(matches!(error, DestinationError::InvalidArn { .. }));
        Ok(())
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_a_retryable_dispatch_failure() -> TestResult {
        // A port that was just free: nothing listens there, so the connection is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(format!("http://127.0.0.1:{port}"))
            .credentials_provider(aws_sdk_sns::config::SharedCredentialsProvider::new(
                aws_sdk_sns::config::Credentials::new("test", "test", None, None, "unit-test"),
            ))
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build();
        let destination = OnFailureDestination::new(SNS_ARN, &config)?;
        let records = records(1);
        let error = destination.send(&given_up(&records)).await.expect_err("nothing listens");
        assert_eq!(error.error_code(), "DispatchFailure");
        assert!(error.retryable());
        assert!(
            error.to_string().starts_with(&format!("sns Publish to \"{SNS_ARN}\" failed: DispatchFailure")),
            "{error}"
        );
        Ok(())
    }

    #[test]
    fn s3_uses_path_style_only_when_the_endpoint_is_overridden() {
        let s3_variable_set = std::env::var_os("AWS_ENDPOINT_URL_S3").is_some_and(|v| !v.is_empty());
        let plain = aws_config::SdkConfig::builder().build();
        let overridden = aws_config::SdkConfig::builder().endpoint_url("http://localhost:4566").build();
        assert_eq!(s3_endpoint_overridden(&plain), s3_variable_set);
        assert!(s3_endpoint_overridden(&overridden));
    }

    fn key_at(time: &str, partition: i32, offset: i64) -> String {
        object_key("m", &PartitionKey::new("t", partition), offset, at(time), uuid::Uuid::new_v4())
    }

    #[test]
    fn object_keys_sort_by_time_across_every_boundary() {
        let times = [
            "2023-12-31T23:59:59.999Z",
            "2024-01-01T00:00:00.000Z",
            "2024-01-01T00:00:00.001Z",
            "2024-01-01T00:00:01.000Z",
            "2024-01-01T00:01:00.000Z",
            "2024-01-01T01:00:00.000Z",
            "2024-01-02T00:00:00.000Z",
            "2024-02-01T00:00:00.000Z",
            "2024-10-01T00:00:00.000Z",
            "2024-10-01T09:30:00+02:00",
        ];
        let keys: Vec<String> = times.iter().map(|t| key_at(t, 3, 7)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
        assert!(keys[9].contains("/2024/10/01/20241001T073000000Z-"), "UTC: {}", keys[9]);
    }

    #[test]
    fn object_keys_at_the_same_instant_sort_by_offset_and_are_unique() {
        let time = "2024-05-05T05:05:05.005Z";
        let offsets = [9, 10, 99, 100, 12345678901234];
        let keys: Vec<String> = offsets.iter().map(|o| key_at(time, 0, *o)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys, "zero-padded offsets sort numerically");
        let same: std::collections::HashSet<String> = (0..1000).map(|_| key_at(time, 0, 1)).collect();
        assert_eq!(same.len(), 1000);
        assert!(keys[0].starts_with("kafka-lambda-relay/m/t-0/2024/05/05/20240505T050505005Z-00000000000000000009-"));
        assert!(keys[0].ends_with(".json"));
    }
}
