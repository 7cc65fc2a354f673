//! The invocation record: the JSON document AWS writes to an on-failure destination for a Kafka batch it
//! gave up on (SPEC section 5), with AWS's field names in AWS's order.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Condition, GivenUp, ResponseContext};
use crate::kafka::{PartitionKey, Record};

/// `2019-11-14T00:38:06.021Z`: RFC 3339, UTC, milliseconds, as AWS writes every time in the record.
const RFC3339_MILLIS: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// One invocation record, as sent to SQS and SNS (metadata) or S3 (metadata plus `payload`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// Which invocation, of which function, and why it was given up.
    #[serde(rename = "requestContext")]
    pub request_context: RequestContext,
    /// The last invocation's response; `null` for `MaximumPayloadSizeExceeded` (never invoked).
    #[serde(rename = "responseContext")]
    pub response_context: Option<ResponseContext>,
    /// Always `"1.0"`.
    pub version: String,
    /// When the record was written (RFC 3339, milliseconds, `Z`).
    pub timestamp: String,
    /// What the batch held.
    #[serde(rename = "KafkaBatchInfo")]
    pub kafka_batch_info: KafkaBatchInfo,
    /// The whole event as a JSON string: S3 destinations only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
}

/// `requestContext`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestContext {
    /// A fresh UUID v4 per record (kept a string: AWS's own examples are not valid UUIDs).
    pub request_id: String,
    /// The target function's ARN.
    pub function_arn: String,
    /// Why the records were given up.
    pub condition: Condition,
    /// How many times the batch was invoked.
    pub approximate_invoke_count: u32,
}

/// `KafkaBatchInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaBatchInfo {
    /// Records in the batch.
    pub batch_size: usize,
    /// The MSK cluster ARN; `null` for a self-managed cluster, which has no ARN. The key is always written,
    /// as on AWS's page for self-managed Kafka destinations, so consumers that parse the record with a fixed
    /// schema find it; `null` rather than a made-up ARN, so a value is always a real cluster.
    #[serde(default)]
    pub event_source_arn: Option<String>,
    /// Comma-separated bootstrap servers.
    pub bootstrap_servers: String,
    /// Size in bytes of the event that was (or would have been) sent to the function.
    pub payload_size: usize,
    /// Per `<topic>-<partition>`, the offsets and timestamps of the first and last record.
    pub records_info: RecordsInfo,
    /// Not an AWS field: present (`true`) only when `recordsInfo` was cut to fit the destination's message
    /// size limit; it then lists the first partitions of the batch, in batch order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_info_truncated: Option<bool>,
    /// Not an AWS field: with `recordsInfoTruncated`, how many partitions the batch really spans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_info_partition_count: Option<usize>,
}

/// The first and last record of one partition of the batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionInfo {
    /// Offset of the first record, as a string (AWS writes offsets as strings).
    pub first_record_offset: String,
    /// Offset of the last record, as a string.
    pub last_record_offset: String,
    /// Timestamp of the first record (RFC 3339, milliseconds).
    pub first_record_timestamp: String,
    /// Timestamp of the last record (RFC 3339, milliseconds).
    pub last_record_timestamp: String,
}

/// `recordsInfo`: a JSON object keyed `<topic>-<partition>` that keeps the batch's partition order (a sorted
/// map would put `t-10` before `t-2`, and truncation keeps a prefix of this order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordsInfo(pub Vec<(String, PartitionInfo)>);

impl Serialize for RecordsInfo {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de> Deserialize<'de> for RecordsInfo {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RecordsInfo;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object keyed <topic>-<partition>")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RecordsInfo, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(RecordsInfo(entries))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// A record serialized within a size limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The JSON document.
    pub json: String,
    /// `recordsInfo` was truncated to fit.
    pub truncated: bool,
}

impl FailureRecord {
    /// The record for `given_up`, written at `now` with `request_id`; `with_payload` adds the event (S3).
    pub fn new(given_up: &GivenUp<'_>, request_id: uuid::Uuid, now: OffsetDateTime, with_payload: bool) -> Self {
        Self {
            request_context: RequestContext {
                request_id: request_id.to_string(),
                function_arn: given_up.function_arn.to_string(),
                condition: given_up.condition,
                approximate_invoke_count: given_up.approximate_invoke_count,
            },
            response_context: if given_up.condition.uninvoked() { None } else { given_up.response.clone() },
            version: "1.0".to_string(),
            timestamp: rfc3339_millis(now),
            kafka_batch_info: KafkaBatchInfo {
                batch_size: given_up.records.len(),
                event_source_arn: given_up.event_source_arn.map(str::to_string),
                bootstrap_servers: given_up.bootstrap_servers.to_string(),
                payload_size: given_up.payload.len(),
                records_info: records_info(given_up.records),
                records_info_truncated: None,
                records_info_partition_count: None,
            },
            // The event is JSON the relay wrote, so always UTF-8; lossy only guards against a caller bug.
            payload: with_payload.then(|| String::from_utf8_lossy(given_up.payload).into_owned()),
        }
    }

    /// Serializes the record in at most `limit` bytes. When the full record is too large (a batch spanning
    /// very many partitions), `recordsInfo` keeps as many leading partitions as fit and the record says so
    /// (`recordsInfoTruncated`, `recordsInfoPartitionCount`): a reduced record is delivered rather than
    /// none, so the partition never waits on a record that can never be sent. `None` only when even an
    /// empty `recordsInfo` does not fit.
    pub fn encode_within(&self, limit: usize) -> Option<Encoded> {
        let full = self.to_json();
        if full.len() <= limit {
            return Some(Encoded { json: full, truncated: false });
        }
        // Binary search for the most partitions that fit: the size grows with every partition kept.
        let total = self.kafka_batch_info.records_info.0.len();
        let (mut fits, mut too_big) = (None, total);
        let mut low = 0;
        while low < too_big {
            let keep = low + (too_big - low) / 2;
            let json = self.truncated(keep, total).to_json();
            if json.len() <= limit {
                fits = Some(json);
                low = keep + 1;
            } else {
                too_big = keep;
            }
        }
        fits.map(|json| Encoded { json, truncated: true })
    }

    fn truncated(&self, keep: usize, total: usize) -> Self {
        let mut record = self.clone();
        record.kafka_batch_info.records_info.0.truncate(keep);
        record.kafka_batch_info.records_info_truncated = Some(true);
        record.kafka_batch_info.records_info_partition_count = Some(total);
        record
    }

    /// Compact JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("the invocation record serializes")
    }
}

/// `recordsInfo` for `records`, partitions in order of first appearance, first/last by offset.
fn records_info(records: &[Record]) -> RecordsInfo {
    let mut order: Vec<(&PartitionKey, &Record, &Record)> = Vec::new();
    let mut index: HashMap<&PartitionKey, usize> = HashMap::new();
    for record in records {
        match index.get(&record.key_partition) {
            Some(&i) => {
                let (_, first, last) = &mut order[i];
                if record.offset < first.offset {
                    *first = record;
                }
                if record.offset > last.offset {
                    *last = record;
                }
            }
            None => {
                index.insert(&record.key_partition, order.len());
                order.push((&record.key_partition, record, record));
            }
        }
    }
    RecordsInfo(
        order
            .into_iter()
            .map(|(key, first, last)| {
                (
                    key.to_string(),
                    PartitionInfo {
                        first_record_offset: first.offset.to_string(),
                        last_record_offset: last.offset.to_string(),
                        first_record_timestamp: millis_rfc3339(first.timestamp_ms),
                        last_record_timestamp: millis_rfc3339(last.timestamp_ms),
                    },
                )
            })
            .collect(),
    )
}

/// `now` as AWS writes times: `2019-11-14T00:38:06.021Z`.
pub fn rfc3339_millis(now: OffsetDateTime) -> String {
    now.to_offset(time::UtcOffset::UTC).format(RFC3339_MILLIS).expect("years 0-9999 format")
}

/// A Kafka timestamp (ms since the epoch) as RFC 3339. Kafka allows any i64, including -1 for "none";
/// values outside years 0-9999 are clamped so a strange producer clock never stops a record being written.
pub(crate) fn millis_rfc3339(ms: i64) -> String {
    let min = time::macros::datetime!(0000-01-01 0:00 UTC);
    let max = time::macros::datetime!(9999-12-31 23:59:59.999 UTC);
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(if ms < 0 { min } else { max })
        .clamp(min, max);
    rfc3339_millis(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::TimestampType;
    use serde_json::Value;

    fn fixture(name: &str) -> Value {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture exists")).expect("fixture parses")
    }

    const FIXTURES: [&str; 3] =
        ["failure-record-sqs-sns.json", "failure-record-s3.json", "failure-record-payload-too-large.json"];

    /// The structure of a JSON value: every key, every value's type, recursively.
    fn shape(value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
            Value::Array(items) => Value::Array(items.iter().map(shape).collect()),
            Value::Null => "null".into(),
            Value::Bool(_) => "bool".into(),
            Value::Number(_) => "number".into(),
            Value::String(_) => "string".into(),
        }
    }

    fn record(topic: &str, partition: i32, offset: i64, timestamp_ms: i64) -> Record {
        Record::new(
            PartitionKey::new(topic, partition),
            offset,
            timestamp_ms,
            TimestampType::CreateTime,
            None,
            Some(b"v".to_vec()),
            vec![],
        )
    }

    /// The fixtures' batch: two partitions, first/last record each.
    fn fixture_records() -> Vec<Record> {
        vec![
            record("Topic", 0, 15, 1573691884835),
            record("Topic", 0, 514, 1573691885580),
            record("Topic", 1, 7, 1573691884835),
            record("Topic", 1, 9, 1573691885580),
        ]
    }

    const MSK_ARN: &str =
        "arn:aws:kafka:us-east-1:123456789012:cluster/vpc-2priv-2pub/751d2973-a626-431c-9d4e-d7975eb44dd7-2";
    const FUNCTION_ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:myfunction";

    fn given_up<'a>(records: &'a [Record], payload: &'a [u8], condition: Condition) -> GivenUp<'a> {
        GivenUp {
            mapping_uuid: "m-1",
            function_arn: FUNCTION_ARN,
            event_source_arn: Some(MSK_ARN),
            bootstrap_servers: "b-1:9092,b-2:9092",
            condition,
            approximate_invoke_count: 1,
            response: Some(ResponseContext {
                status_code: 200,
                executed_version: "$LATEST".into(),
                function_error: Some("Unhandled".into()),
            }),
            records,
            payload,
        }
    }

    fn now() -> OffsetDateTime {
        time::macros::datetime!(2019-11-14 00:38:06.021 UTC)
    }

    /// The record for `given_up`, written at the fixtures' time with a fresh request id.
    fn build(given_up: &GivenUp<'_>, with_payload: bool) -> FailureRecord {
        FailureRecord::new(given_up, uuid::Uuid::new_v4(), now(), with_payload)
    }

    fn assert_generated_formats(ours: &Value) {
        let id = ours["requestContext"]["requestId"].as_str().expect("requestId is a string");
        let uuid = uuid::Uuid::parse_str(id).expect("requestId is a UUID");
        assert_eq!(uuid.get_version(), Some(uuid::Version::Random));
        assert_eq!(id, uuid.hyphenated().to_string(), "lower-case hyphenated");
        let timestamp = ours["timestamp"].as_str().expect("timestamp is a string");
        assert_eq!(timestamp.len(), "2019-11-14T00:38:06.021Z".len());
        let parsed =
            OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339).expect("RFC 3339");
        assert_eq!(rfc3339_millis(parsed), timestamp, "UTC, milliseconds, Z");
    }

    #[test]
    fn retry_record_has_the_fixture_structure_and_values() -> Result<(), Box<dyn std::error::Error>> {
        let records = fixture_records();
        let payload = br#"{"eventSource":"aws:kafka"}"#;
        let ours = serde_json::to_value(build(&given_up(&records, payload, Condition::RetryAttemptsExhausted), false))?;
        let fixture = fixture("failure-record-sqs-sns.json");
        assert_eq!(shape(&ours), shape(&fixture));
        assert_generated_formats(&ours);
        assert_eq!(ours["timestamp"], fixture["timestamp"]);
        assert_eq!(ours["responseContext"], fixture["responseContext"]);
        assert_eq!(ours["requestContext"]["functionArn"], fixture["requestContext"]["functionArn"]);
        assert_eq!(ours["requestContext"]["condition"], "RetryAttemptsExhausted");
        assert_eq!(ours["version"], "1.0");
        let info = &ours["KafkaBatchInfo"];
        assert_eq!(info["batchSize"], 4);
        assert_eq!(info["eventSourceArn"], MSK_ARN);
        assert_eq!(info["payloadSize"], payload.len());
        assert_eq!(info["recordsInfo"]["Topic-0"]["firstRecordOffset"], "15");
        assert_eq!(info["recordsInfo"]["Topic-0"]["lastRecordOffset"], "514");
        assert_eq!(info["recordsInfo"]["Topic-1"]["firstRecordOffset"], "7");
        assert_eq!(
            info["recordsInfo"]["Topic-0"]["firstRecordTimestamp"],
            fixture["KafkaBatchInfo"]["recordsInfo"]["Topic-0"]["firstRecordTimestamp"]
        );
        assert_eq!(
            info["recordsInfo"]["Topic-1"]["lastRecordTimestamp"],
            fixture["KafkaBatchInfo"]["recordsInfo"]["Topic-1"]["lastRecordTimestamp"]
        );
        Ok(())
    }

    #[test]
    fn s3_record_has_the_fixture_structure_and_carries_the_event_verbatim() -> Result<(), Box<dyn std::error::Error>> {
        let records = fixture_records();
        let payload = br#"{"eventSource":"aws:kafka","records":{"Topic-0":[]}}"#;
        let ours = serde_json::to_value(build(&given_up(&records, payload, Condition::RetryAttemptsExhausted), true))?;
        assert_eq!(shape(&ours), shape(&fixture("failure-record-s3.json")));
        assert_eq!(ours["payload"].as_str().map(str::as_bytes), Some(&payload[..]));
        Ok(())
    }

    #[test]
    fn oversized_record_has_the_fixture_structure_and_null_response() -> Result<(), Box<dyn std::error::Error>> {
        let records = fixture_records();
        let ours =
            serde_json::to_value(build(&given_up(&records, b"{}", Condition::MaximumPayloadSizeExceeded), false))?;
        assert_eq!(shape(&ours), shape(&fixture("failure-record-payload-too-large.json")));
        assert_eq!(ours["responseContext"], Value::Null);
        assert_eq!(ours["requestContext"]["condition"], "MaximumPayloadSizeExceeded");
        Ok(())
    }

    /// AWS sends a record its schema registry cannot decode to the destination with the reason code
    /// `SCHEMA_NOT_FOUND` / `DESERIALIZATION_ERROR`; it was never invoked, so there is no response.
    #[test]
    fn undecodable_records_carry_awss_reason_code_and_no_response() -> Result<(), Box<dyn std::error::Error>> {
        let records = fixture_records();
        for (condition, code) in
            [(Condition::SchemaNotFound, "SCHEMA_NOT_FOUND"), (Condition::DeserializationError, "DESERIALIZATION_ERROR")]
        {
            let value = serde_json::to_value(build(&given_up(&records, b"{}", condition), false))?;
            assert_eq!(value["requestContext"]["condition"], code);
            assert_eq!(value["responseContext"], serde_json::Value::Null);
            let parsed: FailureRecord = serde_json::from_value(value)?;
            assert_eq!(parsed.request_context.condition, condition);
        }
        Ok(())
    }

    #[test]
    fn field_order_is_aws_order() -> Result<(), Box<dyn std::error::Error>> {
        let records = fixture_records();
        let json = build(&given_up(&records, b"{}", Condition::RetryAttemptsExhausted), true).to_json();
        let positions: Vec<usize> = [
            "\"requestContext\"",
            "\"responseContext\"",
            "\"version\"",
            "\"timestamp\"",
            "\"KafkaBatchInfo\"",
            "\"payload\"",
        ]
        .iter()
        .map(|k| json.find(k).expect("key present"))
        .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "top-level order: {json}");
        let batch: Vec<usize> =
            ["\"batchSize\"", "\"eventSourceArn\"", "\"bootstrapServers\"", "\"payloadSize\"", "\"recordsInfo\""]
                .iter()
                .map(|k| json.find(k).expect("key present"))
                .collect();
        assert!(batch.windows(2).all(|w| w[0] < w[1]), "KafkaBatchInfo order: {json}");
        Ok(())
    }

    #[test]
    fn every_fixture_round_trips() -> Result<(), Box<dyn std::error::Error>> {
        for name in FIXTURES {
            let value = fixture(name);
            let parsed: FailureRecord = serde_json::from_value(value.clone())?;
            let json = serde_json::to_string(&parsed)?;
            let again: FailureRecord = serde_json::from_str(&json)?;
            assert_eq!(parsed, again, "{name}");
            assert_eq!(serde_json::from_str::<Value>(&json)?, value, "{name} serializes back to itself");
        }
        Ok(())
    }

    #[test]
    fn self_managed_record_writes_event_source_arn_as_null() -> Result<(), Box<dyn std::error::Error>> {
        let records = fixture_records();
        let mut given_up = given_up(&records, b"{}", Condition::RetryAttemptsExhausted);
        given_up.event_source_arn = None;
        let ours = serde_json::to_value(build(&given_up, false))?;
        // The key is present (a fixed-schema consumer finds it) and null (no made-up ARN).
        assert_eq!(ours["KafkaBatchInfo"].get("eventSourceArn"), Some(&Value::Null));
        let keys: Vec<&str> =
            ours["KafkaBatchInfo"].as_object().ok_or("an object")?.keys().map(String::as_str).collect();
        let fixture_keys: Vec<String> = fixture("failure-record-sqs-sns.json")["KafkaBatchInfo"]
            .as_object()
            .ok_or("an object")?
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys, fixture_keys, "the same keys as AWS's record");
        // A record written before this change (no key) still parses.
        let mut old = ours.clone();
        old["KafkaBatchInfo"].as_object_mut().ok_or("an object")?.remove("eventSourceArn");
        assert_eq!(serde_json::from_value::<FailureRecord>(old)?.kafka_batch_info.event_source_arn, None);
        Ok(())
    }

    #[test]
    fn response_without_function_error_omits_the_field() -> Result<(), Box<dyn std::error::Error>> {
        let records = fixture_records();
        let mut given_up = given_up(&records, b"{}", Condition::RetryAttemptsExhausted);
        given_up.response =
            Some(ResponseContext { status_code: 200, executed_version: "7".into(), function_error: None });
        let ours = serde_json::to_value(build(&given_up, false))?;
        assert_eq!(ours["responseContext"], serde_json::json!({"statusCode": 200, "executedVersion": "7"}));
        Ok(())
    }

    #[test]
    fn records_info_keeps_batch_partition_order_and_first_last_by_offset() {
        let records =
            vec![record("t", 10, 5, 1000), record("t", 2, 3, 2000), record("t", 10, 9, 3000), record("t", 2, 1, 500)];
        let info = records_info(&records);
        let keys: Vec<&str> = info.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["t-10", "t-2"]);
        assert_eq!(info.0[0].1.first_record_offset, "5");
        assert_eq!(info.0[0].1.last_record_offset, "9");
        assert_eq!(info.0[0].1.last_record_timestamp, "1970-01-01T00:00:03.000Z");
        assert_eq!(info.0[1].1.first_record_offset, "1");
        assert_eq!(info.0[1].1.first_record_timestamp, "1970-01-01T00:00:00.500Z");
        assert_eq!(info.0[1].1.last_record_offset, "3");
    }

    #[test]
    fn strange_kafka_timestamps_are_clamped_not_fatal() {
        assert_eq!(millis_rfc3339(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(millis_rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(millis_rfc3339(i64::MIN), "0000-01-01T00:00:00.000Z");
        assert_eq!(millis_rfc3339(1573691884835), "2019-11-14T00:38:04.835Z");
    }

    fn many_partitions(count: i32) -> Vec<Record> {
        (0..count).map(|p| record("a-rather-long-topic-name-for-the-destination-test", p, 100, 1573691884835)).collect()
    }

    #[test]
    fn record_that_fits_is_not_reduced() {
        let records = many_partitions(3);
        let record = build(&given_up(&records, b"{}", Condition::RetryAttemptsExhausted), false);
        let encoded = record.encode_within(262_144).expect("fits");
        assert!(!encoded.truncated);
        assert_eq!(encoded.json, record.to_json());
    }

    #[test]
    fn record_over_the_limit_keeps_as_many_leading_partitions_as_fit_and_says_so(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let records = many_partitions(5000);
        let record = build(&given_up(&records, b"{}", Condition::RetryAttemptsExhausted), false);
        let limit = 262_144;
        assert!(record.to_json().len() > limit, "the test needs a record over the limit");
        let encoded = record.encode_within(limit).expect("a reduced record fits");
        assert!(encoded.truncated);
        assert!(encoded.json.len() <= limit, "{} bytes", encoded.json.len());
        let reduced: FailureRecord = serde_json::from_str(&encoded.json)?;
        let info = &reduced.kafka_batch_info;
        assert_eq!(info.records_info_truncated, Some(true));
        assert_eq!(info.records_info_partition_count, Some(5000));
        assert_eq!(info.batch_size, 5000);
        let kept = info.records_info.0.len();
        assert!(kept > 0 && kept < 5000);
        assert_eq!(info.records_info.0[..], record.kafka_batch_info.records_info.0[..kept], "a prefix, unchanged");
        // Tight: one more partition would not have fit.
        assert!(record.truncated(kept + 1, 5000).to_json().len() > limit);
        Ok(())
    }

    #[test]
    fn record_that_cannot_fit_at_all_is_refused() {
        let records = many_partitions(2);
        let record = build(&given_up(&records, b"{}", Condition::RetryAttemptsExhausted), false);
        assert_eq!(record.encode_within(100), None);
    }
}
