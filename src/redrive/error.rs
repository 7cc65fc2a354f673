//! What can stop a redrive: one variant per failing call, naming what it was called on (values quoted),
//! never a record's content. [`RedriveError::retryable`] is decided here and only here.

use rdkafka::error::KafkaError;

use crate::auth::AuthError;
use crate::destination::AwsError;
use crate::invoke::FunctionLookupError;

/// A redrive could not go on (or, for [`RedriveError::InvalidRecord`], one item could not be read).
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// The source argument is none of the three forms.
    #[error(
        "redrive source {value:?} is not an SQS queue URL (https://...), an S3 prefix (s3://bucket/prefix) or a Kafka \
         failure topic (kafka://topic)"
    )]
    InvalidSource {
        /// The argument as given.
        value: String,
    },
    /// The configuration has no mapping.
    #[error("the configuration has no mappings")]
    NoMappings,
    /// The configuration has several mappings and `--mapping` named none.
    #[error("the configuration has {count} mappings; choose one with --mapping (one of {uuids})")]
    MappingNotChosen {
        /// How many mappings.
        count: usize,
        /// Their UUIDs, quoted, comma-separated.
        uuids: String,
    },
    /// `--mapping` names no mapping of the configuration.
    #[error("the configuration has no mapping with UUID {uuid:?}")]
    UnknownMapping {
        /// The UUID asked for.
        uuid: String,
    },
    /// `--since` / `--until` is not a time.
    #[error("{option} {value:?} is neither an RFC 3339 time (2026-11-30T12:00:00Z) nor Unix milliseconds")]
    InvalidTime {
        /// `--since` or `--until`.
        option: &'static str,
        /// The value given.
        value: String,
    },
    /// `GetFunctionConfiguration` of the target failed (for its timeout).
    #[error("lambda GetFunctionConfiguration of {function:?} failed: {source}")]
    FunctionLookup {
        /// The target.
        function: String,
        /// What Lambda said.
        #[source]
        source: FunctionLookupError,
    },
    /// The mapping's Kafka authentication could not be resolved.
    #[error("the Kafka settings of mapping {uuid:?} cannot be used: {source}")]
    KafkaSecurity {
        /// The mapping.
        uuid: String,
        /// Why.
        #[source]
        source: AuthError,
    },
    /// librdkafka refused the consumer configuration.
    #[error("cannot create the Kafka consumer that {purpose}: {source}")]
    CreateConsumer {
        /// What the consumer is for.
        purpose: &'static str,
        /// librdkafka's error.
        #[source]
        source: Box<KafkaError>,
    },
    /// Metadata of a topic could not be read (or it has no partitions).
    #[error("kafka Metadata of topic {topic:?} failed: {source}")]
    Metadata {
        /// The topic.
        topic: String,
        /// librdkafka's error.
        #[source]
        source: Box<KafkaError>,
    },
    /// `ListOffsets` (watermarks) of a partition failed.
    #[error("kafka ListOffsets of {topic:?} partition {partition} failed: {source}")]
    Watermarks {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// librdkafka's error.
        #[source]
        source: Box<KafkaError>,
    },
    /// Assigning partitions to the reading consumer failed.
    #[error("kafka assign of {topic:?} failed: {source}")]
    Assign {
        /// The topic (the first, when several).
        topic: String,
        /// librdkafka's error.
        #[source]
        source: Box<KafkaError>,
    },
    /// A fetch returned an error.
    #[error("kafka Fetch from {topic:?} failed: {source}")]
    Fetch {
        /// The topic.
        topic: String,
        /// librdkafka's error.
        #[source]
        source: Box<KafkaError>,
    },
    /// The reading consumer did not reach the end of what it had to read in time.
    #[error("kafka Fetch from {topic:?} partition {partition} stopped at offset {position} before {end}")]
    FetchIncomplete {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Where it stood.
        position: i64,
        /// Where it had to get to (exclusive).
        end: i64,
    },
    /// `OffsetFetch` of the redrive group failed.
    #[error("kafka OffsetFetch of group {group:?} on topic {topic:?} failed: {source}")]
    Committed {
        /// The redrive consumer group.
        group: String,
        /// The failure topic.
        topic: String,
        /// librdkafka's error.
        #[source]
        source: Box<KafkaError>,
    },
    /// `OffsetCommit` of the redrive group failed.
    #[error("kafka OffsetCommit of group {group:?} on topic {topic:?} failed: {source}")]
    Commit {
        /// The redrive consumer group.
        group: String,
        /// The failure topic.
        topic: String,
        /// librdkafka's error.
        #[source]
        source: Box<KafkaError>,
    },
    /// `ReceiveMessage` failed.
    #[error("sqs ReceiveMessage from {queue_url:?} failed: {source}")]
    ReceiveMessage {
        /// The queue.
        queue_url: String,
        /// What AWS said.
        #[source]
        source: Box<AwsError>,
    },
    /// `DeleteMessage` failed.
    #[error("sqs DeleteMessage of message {message_id:?} from {queue_url:?} failed: {source}")]
    DeleteMessage {
        /// The queue.
        queue_url: String,
        /// The message.
        message_id: String,
        /// What AWS said.
        #[source]
        source: Box<AwsError>,
    },
    /// `ChangeMessageVisibility` (making a kept message visible again) failed.
    #[error("sqs ChangeMessageVisibility of message {message_id:?} in {queue_url:?} failed: {source}")]
    ChangeMessageVisibility {
        /// The queue.
        queue_url: String,
        /// The message.
        message_id: String,
        /// What AWS said.
        #[source]
        source: Box<AwsError>,
    },
    /// `ListObjectsV2` failed.
    #[error("s3 ListObjectsV2 of bucket {bucket:?} prefix {prefix:?} failed: {source}")]
    ListObjects {
        /// The bucket.
        bucket: String,
        /// The prefix.
        prefix: String,
        /// What AWS said.
        #[source]
        source: Box<AwsError>,
    },
    /// `GetObject` (or reading its body) failed.
    #[error("s3 GetObject of bucket {bucket:?} key {key:?} failed: {source}")]
    GetObject {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// What AWS said.
        #[source]
        source: Box<AwsError>,
    },
    /// `HeadObject` of a checkpoint marker failed (other than "not found").
    #[error("s3 HeadObject of checkpoint {key:?} in bucket {bucket:?} failed: {source}")]
    HeadCheckpoint {
        /// The bucket.
        bucket: String,
        /// The marker's key.
        key: String,
        /// What AWS said.
        #[source]
        source: Box<AwsError>,
    },
    /// `PutObject` of a checkpoint marker failed.
    #[error("s3 PutObject of checkpoint {key:?} in bucket {bucket:?} failed: {source}")]
    PutCheckpoint {
        /// The bucket.
        bucket: String,
        /// The marker's key.
        key: String,
        /// What AWS said.
        #[source]
        source: Box<AwsError>,
    },
    /// One item of the source is not an invocation record the redrive understands: it is left in place.
    #[error("invocation record {item:?} cannot be read: {reason}")]
    InvalidRecord {
        /// The message id, object key or `topic-partition@offset`.
        item: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl RedriveError {
    /// The AWS failure behind this error, if it was one.
    pub fn aws(&self) -> Option<&AwsError> {
        match self {
            RedriveError::ReceiveMessage { source, .. }
            | RedriveError::DeleteMessage { source, .. }
            | RedriveError::ChangeMessageVisibility { source, .. }
            | RedriveError::ListObjects { source, .. }
            | RedriveError::GetObject { source, .. }
            | RedriveError::HeadCheckpoint { source, .. }
            | RedriveError::PutCheckpoint { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }

    /// True when running the same redrive again unchanged may succeed: AWS failures that clear up by
    /// themselves ([`AwsError::retryable`]) and Kafka calls (a broker that was away). Bad arguments, bad
    /// configuration and unreadable records need a person.
    pub fn retryable(&self) -> bool {
        match self {
            RedriveError::Metadata { .. }
            | RedriveError::Watermarks { .. }
            | RedriveError::Assign { .. }
            | RedriveError::Fetch { .. }
            | RedriveError::FetchIncomplete { .. }
            | RedriveError::Committed { .. }
            | RedriveError::Commit { .. } => true,
            RedriveError::FunctionLookup { source, .. } => matches!(source, FunctionLookupError::Unavailable(_)),
            other => other.aws().is_some_and(AwsError::retryable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_call_and_quote_values() {
        let error = RedriveError::DeleteMessage {
            queue_url: "http://q/1/dlq".into(),
            message_id: "m-1".into(),
            source: Box::new(AwsError::service("AccessDenied", 403, "no")),
        };
        assert_eq!(
            error.to_string(),
            "sqs DeleteMessage of message \"m-1\" from \"http://q/1/dlq\" failed: AccessDenied (HTTP 403): no"
        );
        assert!(!error.retryable());
        let throttled = RedriveError::ReceiveMessage {
            queue_url: "q".into(),
            source: Box::new(AwsError::service("ThrottlingException", 400, "slow down")),
        };
        assert!(throttled.retryable());
        assert!(!RedriveError::InvalidSource { value: "ftp://x".into() }.retryable());
    }
}
