//! Invocation records → failed batches, and AWS events → records. Pure: no I/O.
//!
//! Three shapes are read, each as AWS writes it (and the relay after it):
//! - SQS and SNS (`aws sqs receive-message`): the record's metadata only; `KafkaBatchInfo.recordsInfo`
//!   names the first and last offset per `<topic>-<partition>`, the records themselves stay in Kafka. An
//!   SNS message delivered to SQS without raw message delivery arrives wrapped in SNS's envelope
//!   (`{"Type":"Notification","Message":"<record>"}`), which is unwrapped.
//! - S3: the same metadata plus `payload`, the whole event as a JSON string.
//! - A Kafka failure topic: one message per failed record, `KafkaBatchInfo.recordInfo` (offset and
//!   timestamp of that record) and `payload`, the event holding that one record, as a JSON object (AWS's
//!   "Record format for a Kafka destination"). A string `payload` is accepted too.

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::event::EventSource;
use crate::kafka::{PartitionKey, Record, SchemaMetadata, TimestampType};

/// One batch given up, as its invocation record describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedBatch {
    /// `requestContext.functionArn`: the function that failed.
    pub function_arn: String,
    /// `requestContext.condition`, as written (`RetryAttemptsExhausted`, AWS's Kafka-topic example's
    /// `RetriesExhausted`, `MaximumPayloadSizeExceeded`, ...).
    pub condition: String,
    /// `timestamp`: when the record was written.
    pub written_at: String,
    /// What the record holds of the batch.
    pub content: Content,
}

/// The records of a failed batch, or where to find them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// The records themselves (S3 `payload`, Kafka failure topic).
    Records {
        /// The event's header.
        source: EventSource,
        /// The records, grouped by partition, in event order.
        records: Vec<Record>,
    },
    /// Offsets to read back from Kafka (SQS, SNS).
    Offsets {
        /// The event's header (from `eventSourceArn` and `bootstrapServers`).
        source: EventSource,
        /// First and last offset per partition.
        ranges: Vec<OffsetRange>,
        /// `recordsInfoPartitionCount` when `recordsInfo` was cut to fit the message: the batch spans
        /// partitions the record does not name.
        truncated_partition_count: Option<usize>,
    },
}

/// The offsets `first..=last` of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetRange {
    /// The partition.
    pub key: PartitionKey,
    /// The batch's first offset in it.
    pub first: i64,
    /// The batch's last offset in it.
    pub last: i64,
}

impl FailedBatch {
    /// How many records the record holds or names (ranges count every offset).
    pub fn record_count(&self) -> usize {
        match &self.content {
            Content::Records { records, .. } => records.len(),
            Content::Offsets { ranges, .. } => {
                ranges.iter().map(|r| usize::try_from(r.last - r.first + 1).unwrap_or(0)).sum()
            }
        }
    }
}

/// Reads one invocation record (any of the three shapes, or SNS's envelope around one).
pub fn failed_batch(json: &[u8]) -> Result<FailedBatch, String> {
    let mut value: Value = serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
    if value.get("Type").and_then(Value::as_str) == Some("Notification") {
        let message = value.get("Message").and_then(Value::as_str).ok_or("an SNS envelope without Message")?;
        value = serde_json::from_str(message).map_err(|e| format!("the SNS Message is not JSON: {e}"))?;
    }
    let context = value.get("requestContext").ok_or("no requestContext")?;
    let text = |v: &Value, field: &str| v.get(field).and_then(Value::as_str).unwrap_or_default().to_string();
    let info = value.get("KafkaBatchInfo").ok_or("no KafkaBatchInfo")?;
    let content = match value.get("payload") {
        Some(Value::String(payload)) => {
            let event: Value = serde_json::from_str(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
            records_content(&event)?
        }
        Some(event @ Value::Object(_)) => records_content(event)?,
        Some(Value::Null) | None => offsets_content(info)?,
        Some(_) => return Err("payload is neither an event object nor a JSON string".into()),
    };
    Ok(FailedBatch {
        function_arn: text(context, "functionArn"),
        condition: text(context, "condition"),
        written_at: text(&value, "timestamp"),
        content,
    })
}

fn records_content(event: &Value) -> Result<Content, String> {
    let (source, records) = records_from_event(event)?;
    Ok(Content::Records { source, records })
}

fn offsets_content(info: &Value) -> Result<Content, String> {
    let source = EventSource {
        event_source: if info.get("eventSourceArn").and_then(Value::as_str).is_some() {
            "aws:kafka".into()
        } else {
            "SelfManagedKafka".into()
        },
        event_source_arn: info.get("eventSourceArn").and_then(Value::as_str).map(str::to_string),
        bootstrap_servers: info.get("bootstrapServers").and_then(Value::as_str).unwrap_or_default().to_string(),
    };
    let records_info = info.get("recordsInfo").and_then(Value::as_object).ok_or("KafkaBatchInfo has no recordsInfo")?;
    let mut ranges = Vec::new();
    for (group, partition) in records_info {
        let key = partition_key(group)?;
        let offset = |field: &str| -> Result<i64, String> {
            let value = partition.get(field).ok_or_else(|| format!("recordsInfo {group:?} has no {field}"))?;
            match value {
                Value::String(s) => {
                    s.parse().map_err(|_| format!("recordsInfo {group:?} {field} {s:?} is not an offset"))
                }
                Value::Number(n) => {
                    n.as_i64().ok_or_else(|| format!("recordsInfo {group:?} {field} {n} is not an offset"))
                }
                _ => Err(format!("recordsInfo {group:?} {field} is not an offset")),
            }
        };
        let (first, last) = (offset("firstRecordOffset")?, offset("lastRecordOffset")?);
        if first > last || first < 0 {
            return Err(format!("recordsInfo {group:?} names offsets {first}..{last}"));
        }
        ranges.push(OffsetRange { key, first, last });
    }
    let truncated = info.get("recordsInfoTruncated").and_then(Value::as_bool) == Some(true);
    let truncated_partition_count = truncated
        .then(|| info.get("recordsInfoPartitionCount").and_then(Value::as_u64).map_or(usize::MAX, |n| n as usize));
    Ok(Content::Offsets { source, ranges, truncated_partition_count })
}

/// `<topic>-<partition>` split at its last `-` (topic names may contain `-`).
fn partition_key(group: &str) -> Result<PartitionKey, String> {
    let (topic, partition) = group.rsplit_once('-').ok_or_else(|| format!("{group:?} is not <topic>-<partition>"))?;
    let partition = partition.parse::<i32>().map_err(|_| format!("{group:?} is not <topic>-<partition>"))?;
    Ok(PartitionKey::new(topic, partition))
}

/// The header and records of an event in AWS's shape (what the relay sends, what S3 records hold).
/// Records are returned grouped by partition in the event's group order, each group in array order.
pub fn records_from_event(event: &Value) -> Result<(EventSource, Vec<Record>), String> {
    let field = |name: &str| event.get(name).and_then(Value::as_str).map(str::to_string);
    let source = EventSource {
        event_source: field("eventSource").ok_or("the event has no eventSource")?,
        event_source_arn: field("eventSourceArn"),
        bootstrap_servers: field("bootstrapServers").unwrap_or_default(),
    };
    let groups = event.get("records").and_then(Value::as_object).ok_or("the event has no records object")?;
    let mut records = Vec::new();
    for (group, items) in groups {
        let items = items.as_array().ok_or_else(|| format!("records {group:?} is not an array"))?;
        for item in items {
            let item = item.as_object().ok_or_else(|| format!("a record of {group:?} is not an object"))?;
            records.push(record(item).map_err(|e| format!("a record of {group:?}: {e}"))?);
        }
    }
    Ok((source, records))
}

fn record(item: &Map<String, Value>) -> Result<Record, String> {
    let number = |name: &str| item.get(name).and_then(Value::as_i64).ok_or_else(|| format!("no integer {name}"));
    let topic = item.get("topic").and_then(Value::as_str).ok_or("no topic")?;
    let partition = i32::try_from(number("partition")?).map_err(|_| "partition out of range".to_string())?;
    let timestamp_type = match item.get("timestampType").and_then(Value::as_str) {
        Some("LOG_APPEND_TIME") => TimestampType::LogAppendTime,
        Some("CREATE_TIME") | None => TimestampType::CreateTime,
        Some(other) => return Err(format!("timestampType {other:?}")),
    };
    let headers = match item.get("headers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(headers)) => {
            headers.iter().map(header).collect::<Result<Vec<_>, _>>()?.into_iter().flatten().collect()
        }
        Some(_) => return Err("headers is not an array".into()),
    };
    Ok(Record::with_schema_metadata(
        PartitionKey::new(topic, partition),
        number("offset")?,
        number("timestamp")?,
        timestamp_type,
        base64_field(item, "key")?,
        base64_field(item, "value")?,
        headers,
        schema_metadata(item, "keySchemaMetadata"),
        schema_metadata(item, "valueSchemaMetadata"),
    ))
}

fn base64_field(item: &Map<String, Value>, name: &str) -> Result<Option<Vec<u8>>, String> {
    match item.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Some)
            .map_err(|e| format!("{name} is not base64: {e}")),
        Some(_) => Err(format!("{name} is not a base64 string")),
    }
}

/// `{"name": [bytes as signed numbers]}` → (name, bytes); AWS writes bytes signed, 0-255 is read too.
fn header(value: &Value) -> Result<Vec<(String, Vec<u8>)>, String> {
    let object = value.as_object().ok_or("a header is not an object")?;
    object
        .iter()
        .map(|(name, bytes)| {
            let bytes = bytes.as_array().ok_or_else(|| format!("header {name:?} is not an array"))?;
            let bytes = bytes
                .iter()
                .map(|b| match b.as_i64() {
                    Some(n @ -128..=255) => Ok(n as u8),
                    _ => Err(format!("header {name:?} holds {b}, not a byte")),
                })
                .collect::<Result<Vec<u8>, String>>()?;
            Ok((name.clone(), bytes))
        })
        .collect()
}

fn schema_metadata(item: &Map<String, Value>, name: &str) -> Option<SchemaMetadata> {
    let metadata = item.get(name)?;
    Some(SchemaMetadata {
        data_format: metadata.get("dataFormat")?.as_str()?.to_string(),
        schema_id: metadata.get("schemaId")?.as_str()?.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture exists")
    }

    /// AWS's SQS/SNS example record with Kafka offsets: its own example carries Kinesis sequence numbers
    /// (too large for a Kafka offset, which the parser refuses).
    fn sqs_record() -> Vec<u8> {
        let mut record: Value = serde_json::from_slice(&fixture("failure-record-sqs-sns.json")).unwrap();
        let info = &mut record["KafkaBatchInfo"]["recordsInfo"];
        for (group, first, last) in [("Topic-0", "15", "514"), ("Topic-1", "7", "9")] {
            info[group]["firstRecordOffset"] = first.into();
            info[group]["lastRecordOffset"] = last.into();
        }
        record.to_string().into_bytes()
    }

    fn sample_records() -> Vec<Record> {
        vec![
            Record::new(
                PartitionKey::new("or-ders", 0),
                41,
                1_700_000_000_123,
                TimestampType::CreateTime,
                Some(b"k1".to_vec()),
                Some(vec![0, 1, 200, 255]),
                vec![("h".into(), vec![0, 127, 128, 255]), ("empty".into(), vec![])],
            ),
            Record::new(
                PartitionKey::new("or-ders", 0),
                42,
                1_700_000_000_456,
                TimestampType::LogAppendTime,
                None,
                None,
                vec![],
            ),
            Record::new(
                PartitionKey::new("or-ders", 10),
                7,
                5,
                TimestampType::CreateTime,
                Some(vec![]),
                Some(b"v".to_vec()),
                vec![],
            ),
        ]
    }

    fn sample_source() -> EventSource {
        EventSource {
            event_source: "SelfManagedKafka".into(),
            event_source_arn: None,
            bootstrap_servers: "a:1,b:2".into(),
        }
    }

    #[test]
    fn an_event_the_relay_wrote_reads_back_to_the_same_records_and_bytes() {
        let (source, records) = (sample_source(), sample_records());
        let event = source.encode(&records);
        let (read_source, read) = records_from_event(&serde_json::from_slice(&event).unwrap()).unwrap();
        assert_eq!(read_source, source);
        let mut sorted = records.clone();
        sorted.sort_by_key(|r| (r.key_partition.to_string(), r.offset));
        assert_eq!(read, sorted);
        assert_eq!(read_source.encode(&read).len(), event.len());
    }

    #[test]
    fn sqs_fixture_names_offset_ranges_per_partition() {
        let batch = failed_batch(&sqs_record()).unwrap();
        assert_eq!(batch.condition, "RetryAttemptsExhausted");
        assert_eq!(batch.function_arn, "arn:aws:lambda:us-east-1:123456789012:function:myfunction");
        let Content::Offsets { source, ranges, truncated_partition_count } = &batch.content else {
            panic!("offsets expected: {batch:?}")
        };
        assert_eq!(source.event_source, "aws:kafka");
        assert_eq!(*truncated_partition_count, None);
        assert_eq!(ranges[0], OffsetRange { key: PartitionKey::new("Topic", 0), first: 15, last: 514 });
        assert_eq!(ranges[1], OffsetRange { key: PartitionKey::new("Topic", 1), first: 7, last: 9 });
        assert_eq!(batch.record_count(), 500 + 3);
    }

    #[test]
    fn sns_envelope_is_unwrapped() {
        let inner = String::from_utf8(sqs_record()).unwrap();
        let envelope = serde_json::json!({"Type": "Notification", "MessageId": "x", "Message": inner});
        let batch = failed_batch(envelope.to_string().as_bytes()).unwrap();
        assert_eq!(batch, failed_batch(inner.as_bytes()).unwrap());
    }

    #[test]
    fn s3_record_carries_its_records() {
        let event = String::from_utf8(sample_source().encode(&sample_records())).unwrap();
        let mut record: Value = serde_json::from_slice(&fixture("failure-record-s3.json")).unwrap();
        record["payload"] = Value::String(event);
        let batch = failed_batch(record.to_string().as_bytes()).unwrap();
        let Content::Records { records, .. } = batch.content else { panic!("records expected") };
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].headers, vec![("h".to_string(), vec![0, 127, 128, 255]), ("empty".to_string(), vec![])]);
    }

    /// AWS's documented example of a message on a Kafka failure topic ("Record format for a Kafka
    /// destination"): `recordInfo` for the one record, `payload` an event object.
    #[test]
    fn kafka_topic_record_in_awss_documented_format() {
        let message = serde_json::json!({
            "requestContext": {"requestId": "e4b46cbf-b738-xmpl-8880-a18cdf61200e",
                "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:my-function:$LATEST",
                "condition": "RetriesExhausted", "approximateInvokeCount": 3},
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "version": "1.0", "timestamp": "2019-11-14T18:16:05.568Z",
            "KafkaBatchInfo": {"batchSize": 1, "eventSourceArn": "arn:aws:kafka:us-east-1:123456789012:cluster/my-cluster/abc123",
                "bootstrapServers": "b-1.mycluster.abc123.kafka.us-east-1.amazonaws.com:9098", "payloadSize": 1162,
                "recordInfo": {"offset": "100", "timestamp": "2019-11-14T18:16:04.835Z"}},
            "payload": {"bootstrapServers": "b-1.mycluster.abc123.kafka.us-east-1.amazonaws.com:9098",
                "eventSource": "aws:kafka", "eventSourceArn": "arn:aws:kafka:us-east-1:123456789012:cluster/my-cluster/abc123",
                "records": {"my-topic-0": [{"headers": [], "key": "dGVzdC1rZXk=", "offset": 100, "partition": 0,
                    "timestamp": 1749116692330_i64, "timestampType": "CREATE_TIME", "topic": "my-topic", "value": "dGVzdC12YWx1ZQ=="}]}}
        });
        let batch = failed_batch(message.to_string().as_bytes()).unwrap();
        assert_eq!(batch.condition, "RetriesExhausted");
        let Content::Records { source, records } = batch.content else { panic!("records expected") };
        assert_eq!(source.event_source, "aws:kafka");
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!(
            (r.key_partition.to_string(), r.offset, r.timestamp_ms),
            ("my-topic-0".to_string(), 100, 1749116692330)
        );
        assert_eq!((r.key.as_deref(), r.value.as_deref()), (Some(&b"test-key"[..]), Some(&b"test-value"[..])));
    }

    #[test]
    fn truncated_records_info_is_reported() {
        let mut record: Value = serde_json::from_slice(&sqs_record()).unwrap();
        record["KafkaBatchInfo"]["recordsInfoTruncated"] = true.into();
        record["KafkaBatchInfo"]["recordsInfoPartitionCount"] = 9.into();
        let batch = failed_batch(record.to_string().as_bytes()).unwrap();
        assert!(matches!(batch.content, Content::Offsets { truncated_partition_count: Some(9), .. }));
    }

    #[test]
    fn broken_records_are_refused_with_a_reason() {
        assert!(failed_batch(b"nope").unwrap_err().contains("not JSON"));
        assert!(failed_batch(b"{}").unwrap_err().contains("requestContext"));
        let mut record: Value = serde_json::from_slice(&fixture("failure-record-sqs-sns.json")).unwrap();
        assert!(
            failed_batch(record.to_string().as_bytes()).unwrap_err().contains("is not an offset"),
            "a Kinesis number"
        );
        record["KafkaBatchInfo"]["recordsInfo"]["Topic-0"]["firstRecordOffset"] = "x".into();
        assert!(failed_batch(record.to_string().as_bytes()).unwrap_err().contains("is not an offset"));
        record["KafkaBatchInfo"]["recordsInfo"] = serde_json::json!({"nodash": {}});
        assert!(failed_batch(record.to_string().as_bytes()).unwrap_err().contains("<topic>-<partition>"));
    }
}
