//! A record as polled from Kafka, owned, with its event JSON encoded once at poll time so batch sizes are
//! exact and building an event is concatenation.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use serde::Serialize;

/// A topic partition; displays as AWS's record-group key `<topic>-<partition>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionKey {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition number.
    pub partition: i32,
}

impl PartitionKey {
    /// A key for `topic`/`partition`.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Self { topic: topic.into(), partition }
    }
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// How the broker set a record's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TimestampType {
    /// Set by the producer.
    CreateTime,
    /// Set by the broker on append.
    LogAppendTime,
}

/// One Kafka record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Where it came from.
    pub key_partition: PartitionKey,
    /// Its offset.
    pub offset: i64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Producer or broker time.
    pub timestamp_type: TimestampType,
    /// The record key, if any.
    pub key: Option<Vec<u8>>,
    /// The record value, if any.
    pub value: Option<Vec<u8>>,
    /// Headers in order; a header without a value has an empty one.
    pub headers: Vec<(String, Vec<u8>)>,
    /// This record as it appears in the event's `records` array (compact JSON).
    pub encoded: Arc<str>,
}

/// The JSON of one record in AWS's event.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventRecord<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    timestamp: i64,
    timestamp_type: TimestampType,
    key: Option<String>,
    value: Option<String>,
    /// AWS (a Java service) writes header bytes as signed values, and the Rust and Go event libraries read
    /// them as `i8`; unsigned values above 127 would break those targets.
    headers: Vec<std::collections::BTreeMap<&'a str, Vec<i8>>>,
    /// Only for records decoded through a schema registry: the key's format and schema id.
    #[serde(skip_serializing_if = "Option::is_none")]
    key_schema_metadata: Option<&'a SchemaMetadata>,
    /// Only for records decoded through a schema registry: the value's format and schema id.
    #[serde(skip_serializing_if = "Option::is_none")]
    value_schema_metadata: Option<&'a SchemaMetadata>,
}

/// `keySchemaMetadata` / `valueSchemaMetadata`: what AWS adds to a record's event JSON for a key or value
/// decoded through a schema registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaMetadata {
    /// `AVRO`, `PROTOBUF` or `JSON`.
    pub data_format: String,
    /// The registry's id: a Confluent schema id (`"123"`) or a Glue schema version UUID.
    pub schema_id: String,
}

impl Record {
    /// Builds a record and encodes its event JSON.
    pub fn new(
        key_partition: PartitionKey,
        offset: i64,
        timestamp_ms: i64,
        timestamp_type: TimestampType,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        headers: Vec<(String, Vec<u8>)>,
    ) -> Self {
        Self::with_schema_metadata(key_partition, offset, timestamp_ms, timestamp_type, key, value, headers, None, None)
    }

    /// Builds a record whose key and/or value were decoded through a schema registry: its event JSON also
    /// carries `keySchemaMetadata` / `valueSchemaMetadata` for the parts that were decoded.
    #[allow(clippy::too_many_arguments)]
    pub fn with_schema_metadata(
        key_partition: PartitionKey,
        offset: i64,
        timestamp_ms: i64,
        timestamp_type: TimestampType,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        headers: Vec<(String, Vec<u8>)>,
        key_schema_metadata: Option<&SchemaMetadata>,
        value_schema_metadata: Option<&SchemaMetadata>,
    ) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        let event_record = EventRecord {
            topic: &key_partition.topic,
            partition: key_partition.partition,
            offset,
            timestamp: timestamp_ms,
            timestamp_type,
            key: key.as_ref().map(|k| b64.encode(k)),
            value: value.as_ref().map(|v| b64.encode(v)),
            headers: headers
                .iter()
                .map(|(name, bytes)| {
                    std::iter::once((name.as_str(), bytes.iter().map(|b| *b as i8).collect())).collect()
                })
                .collect(),
            key_schema_metadata,
            value_schema_metadata,
        };
        let encoded: Arc<str> = serde_json::to_string(&event_record).expect("record serializes").into();
        Self { key_partition, offset, timestamp_ms, timestamp_type, key, value, headers, encoded }
    }

    /// Size of this record inside an event, in bytes.
    pub fn encoded_len(&self) -> usize {
        self.encoded.len()
    }
}
