//! A record as polled from Kafka, owned, with the exact length of its JSON in the event computed at poll
//! time (arithmetic, no encoding), so batch sizes are exact while the encoding itself happens once, in the
//! delivery job that sends the batch, off the polling loop.

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

impl TimestampType {
    fn as_str(self) -> &'static str {
        match self {
            TimestampType::CreateTime => "CREATE_TIME",
            TimestampType::LogAppendTime => "LOG_APPEND_TIME",
        }
    }
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
    /// Bytes of this record's JSON in the event's `records` array (what [`Record::write_json`] writes).
    encoded_len: usize,
    /// For a record decoded through a schema registry: the key's and value's schema metadata.
    schema_metadata: Option<Box<DecodedParts>>,
    /// Set when the record cannot be decoded through the mapping's schema registry: it is given up with
    /// this condition, never invoked.
    undecodable: Option<crate::destination::Condition>,
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

/// Which parts of a record were decoded, and with which schema.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DecodedParts {
    key: Option<SchemaMetadata>,
    value: Option<SchemaMetadata>,
}

impl Record {
    /// An owned record from a polled message; `key` is the partition's key (shared, not allocated per
    /// record). A message without a timestamp gets 0, as `CreateTime`.
    pub fn from_message(message: &impl rdkafka::message::Message, key: PartitionKey) -> Self {
        use rdkafka::message::Headers as _;
        let (timestamp_ms, timestamp_type) = match message.timestamp() {
            rdkafka::Timestamp::CreateTime(t) => (t, TimestampType::CreateTime),
            rdkafka::Timestamp::LogAppendTime(t) => (t, TimestampType::LogAppendTime),
            rdkafka::Timestamp::NotAvailable => (0, TimestampType::CreateTime),
        };
        let headers = message
            .headers()
            .map(|headers| {
                headers.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec).unwrap_or_default())).collect()
            })
            .unwrap_or_default();
        Self::new(
            key,
            message.offset(),
            timestamp_ms,
            timestamp_type,
            message.key().map(<[u8]>::to_vec),
            message.payload().map(<[u8]>::to_vec),
            headers,
        )
    }

    /// Builds a record and measures its event JSON.
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
    /// carries `keySchemaMetadata` / `valueSchemaMetadata` (after `headers`) for the parts that were decoded.
    #[allow(clippy::too_many_arguments)]
    pub fn with_schema_metadata(
        key_partition: PartitionKey,
        offset: i64,
        timestamp_ms: i64,
        timestamp_type: TimestampType,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        headers: Vec<(String, Vec<u8>)>,
        key_schema_metadata: Option<SchemaMetadata>,
        value_schema_metadata: Option<SchemaMetadata>,
    ) -> Self {
        let schema_metadata = (key_schema_metadata.is_some() || value_schema_metadata.is_some())
            .then(|| Box::new(DecodedParts { key: key_schema_metadata, value: value_schema_metadata }));
        let mut record =
            Self { key_partition, offset, timestamp_ms, timestamp_type, key, value, headers, encoded_len: 0, schema_metadata, undecodable: None };
        record.encoded_len = record.measure();
        record
    }

    /// Marks the record undecodable: the batcher sets it apart and it is given up with `condition`
    /// (`SCHEMA_NOT_FOUND`, `DESERIALIZATION_ERROR`) without an invocation.
    pub fn into_undecodable(mut self, condition: crate::destination::Condition) -> Self {
        self.undecodable = Some(condition);
        self
    }

    /// The condition an undecodable record is given up with; `None` for a record to deliver.
    pub fn undecodable(&self) -> Option<crate::destination::Condition> {
        self.undecodable
    }

    /// The key's schema metadata, when the key was decoded through a schema registry.
    pub fn key_schema_metadata(&self) -> Option<&SchemaMetadata> {
        self.schema_metadata.as_ref().and_then(|m| m.key.as_ref())
    }

    /// The value's schema metadata, when the value was decoded through a schema registry.
    pub fn value_schema_metadata(&self) -> Option<&SchemaMetadata> {
        self.schema_metadata.as_ref().and_then(|m| m.value.as_ref())
    }

    /// Size of this record inside an event, in bytes.
    pub fn encoded_len(&self) -> usize {
        self.encoded_len
    }

    /// Bytes of key, value and headers: what the record costs in memory while it waits for a batch.
    pub fn memory_len(&self) -> usize {
        const OVERHEAD: usize = std::mem::size_of::<Record>();
        OVERHEAD
            + self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self.headers.iter().map(|(k, v)| k.len() + v.len() + 48).sum::<usize>()
    }

    /// Appends this record as it appears in AWS's event:
    /// `{"topic":..,"partition":..,"offset":..,"timestamp":..,"timestampType":..,"key":..,"value":..,"headers":[..]}`.
    /// `key`/`value` are base64 or `null`; header values are signed bytes, as AWS (a Java service) writes
    /// them and the Rust and Go event libraries read them as `i8` (unsigned values above 127 would break
    /// those targets).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"topic\":");
        write_json_string(out, &self.key_partition.topic);
        write_field_number(out, b",\"partition\":", i64::from(self.key_partition.partition));
        write_field_number(out, b",\"offset\":", self.offset);
        write_field_number(out, b",\"timestamp\":", self.timestamp_ms);
        out.extend_from_slice(b",\"timestampType\":\"");
        out.extend_from_slice(self.timestamp_type.as_str().as_bytes());
        out.extend_from_slice(b"\",\"key\":");
        write_base64_or_null(out, self.key.as_deref());
        out.extend_from_slice(b",\"value\":");
        write_base64_or_null(out, self.value.as_deref());
        out.extend_from_slice(b",\"headers\":[");
        for (i, (name, bytes)) in self.headers.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'{');
            write_json_string(out, name);
            out.extend_from_slice(b":[");
            for (j, byte) in bytes.iter().enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                write_number(out, i64::from(*byte as i8));
            }
            out.extend_from_slice(b"]}");
        }
        out.push(b']');
        for (field, metadata) in [
            (&b",\"keySchemaMetadata\":"[..], self.key_schema_metadata()),
            (&b",\"valueSchemaMetadata\":"[..], self.value_schema_metadata()),
        ] {
            if let Some(metadata) = metadata {
                out.extend_from_slice(field);
                out.extend_from_slice(b"{\"dataFormat\":");
                write_json_string(out, &metadata.data_format);
                out.extend_from_slice(b",\"schemaId\":");
                write_json_string(out, &metadata.schema_id);
                out.push(b'}');
            }
        }
        out.push(b'}');
    }

    /// The length [`Record::write_json`] writes, computed without writing.
    fn measure(&self) -> usize {
        const FIXED: usize = r#"{"topic":,"partition":,"offset":,"timestamp":,"timestampType":"","key":,"value":,"headers":[]}"#.len();
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, bytes)| {
                // `{"name":[1,-2]}`
                let numbers: usize = bytes.iter().map(|b| number_len(i64::from(*b as i8))).sum();
                json_string_len(name) + 5 + numbers + bytes.len().saturating_sub(1)
            })
            .sum::<usize>()
            + self.headers.len().saturating_sub(1);
        // `,"keySchemaMetadata":{"dataFormat":..,"schemaId":..}` and the same for the value.
        let schema_metadata: usize = [
            (r#","keySchemaMetadata":"#.len(), self.key_schema_metadata()),
            (r#","valueSchemaMetadata":"#.len(), self.value_schema_metadata()),
        ]
        .into_iter()
        .filter_map(|(field, m)| {
            m.map(|m| {
                field + r#"{"dataFormat":,"schemaId":}"#.len() + json_string_len(&m.data_format) + json_string_len(&m.schema_id)
            })
        })
        .sum();
        FIXED
            + schema_metadata
            + json_string_len(&self.key_partition.topic)
            + number_len(i64::from(self.key_partition.partition))
            + number_len(self.offset)
            + number_len(self.timestamp_ms)
            + self.timestamp_type.as_str().len()
            + base64_or_null_len(self.key.as_deref())
            + base64_or_null_len(self.value.as_deref())
            + headers
    }
}

fn write_field_number(out: &mut Vec<u8>, field: &[u8], n: i64) {
    out.extend_from_slice(field);
    write_number(out, n);
}

fn write_number(out: &mut Vec<u8>, n: i64) {
    let mut buffer = itoa_buffer();
    out.extend_from_slice(format_i64(&mut buffer, n));
}

fn write_base64_or_null(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => out.extend_from_slice(b"null"),
        Some(bytes) => {
            out.push(b'"');
            let start = out.len();
            out.resize(start + base64_len(bytes.len()), 0);
            let written = base64::engine::general_purpose::STANDARD
                .encode_slice(bytes, &mut out[start..])
                .expect("the buffer is sized for the encoding");
            debug_assert_eq!(written, base64_len(bytes.len()));
            out.push(b'"');
        }
    }
}

/// Writes `s` as a JSON string. Kafka topic names (`[a-zA-Z0-9._-]`) and most header names need no
/// escaping: they are copied; anything else goes through serde_json.
fn write_json_string(out: &mut Vec<u8>, s: &str) {
    if needs_no_escaping(s) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("strings serialize");
    }
}

fn json_string_len(s: &str) -> usize {
    if needs_no_escaping(s) {
        s.len() + 2
    } else {
        serde_json::to_string(s).expect("strings serialize").len()
    }
}

fn needs_no_escaping(s: &str) -> bool {
    s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
}

fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

fn base64_or_null_len(bytes: Option<&[u8]>) -> usize {
    bytes.map_or(4, |b| base64_len(b.len()) + 2)
}

fn number_len(n: i64) -> usize {
    let mut buffer = itoa_buffer();
    format_i64(&mut buffer, n).len()
}

fn itoa_buffer() -> [u8; 20] {
    [0; 20]
}

/// Formats `n` into `buffer` (20 bytes hold any i64 with its sign) without allocating.
fn format_i64(buffer: &mut [u8; 20], n: i64) -> &[u8] {
    let mut i = buffer.len();
    let negative = n < 0;
    let mut value = n.unsigned_abs();
    loop {
        i -= 1;
        buffer[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    if negative {
        i -= 1;
        buffer[i] = b'-';
    }
    &buffer[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The event JSON of a record, as serde would write it: the reference the hand-written encoder must match.
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Reference<'a> {
        topic: &'a str,
        partition: i32,
        offset: i64,
        timestamp: i64,
        timestamp_type: TimestampType,
        key: Option<String>,
        value: Option<String>,
        headers: Vec<std::collections::BTreeMap<&'a str, Vec<i8>>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        key_schema_metadata: Option<&'a SchemaMetadata>,
        #[serde(skip_serializing_if = "Option::is_none")]
        value_schema_metadata: Option<&'a SchemaMetadata>,
    }

    fn reference(record: &Record) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        serde_json::to_string(&Reference {
            topic: &record.key_partition.topic,
            partition: record.key_partition.partition,
            offset: record.offset,
            timestamp: record.timestamp_ms,
            timestamp_type: record.timestamp_type,
            key: record.key.as_ref().map(|k| b64.encode(k)),
            value: record.value.as_ref().map(|v| b64.encode(v)),
            headers: record
                .headers
                .iter()
                .map(|(n, b)| std::iter::once((n.as_str(), b.iter().map(|x| *x as i8).collect())).collect())
                .collect(),
            key_schema_metadata: record.key_schema_metadata(),
            value_schema_metadata: record.value_schema_metadata(),
        })
        .unwrap()
    }

    #[test]
    fn schema_metadata_is_written_after_headers_and_measured_exactly() {
        let metadata = |format: &str, id: &str| SchemaMetadata { data_format: format.into(), schema_id: id.into() };
        for (key, value) in [
            (Some(metadata("AVRO", "1")), None),
            (None, Some(metadata("PROTOBUF", "0f8e8a3c-3b8e-4a51-9c55-0d5c7a7e1b11"))),
            (Some(metadata("JSON", "12345")), Some(metadata("AVRO", "7"))),
        ] {
            let record = Record::with_schema_metadata(
                PartitionKey::new("orders", 2),
                41,
                1_545_084_650_987,
                TimestampType::CreateTime,
                Some(b"{\"id\":1}".to_vec()),
                Some(b"{}".to_vec()),
                vec![("h".to_string(), vec![1, 200])],
                key.clone(),
                value.clone(),
            );
            let mut out = Vec::new();
            record.write_json(&mut out);
            assert_eq!(String::from_utf8(out.clone()).unwrap(), reference(&record));
            assert_eq!(record.encoded_len(), out.len());
            let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(json.get("keySchemaMetadata").is_some(), key.is_some());
            assert_eq!(json.get("valueSchemaMetadata").is_some(), value.is_some());
        }
    }

    #[test]
    fn hand_written_json_is_byte_for_byte_serdes_and_its_length_is_exact() {
        let topics = ["t", "orders.v1_x-y", "we\"ird\\topic", "tab\there", "ünïcode"];
        let numbers = [0i64, 1, -1, 9, 10, 99, 100, 1_545_084_650_987, i64::MAX, i64::MIN];
        let payloads: [Option<Vec<u8>>; 5] = [None, Some(vec![]), Some(vec![1]), Some(vec![1, 2]), Some((0..=255).collect())];
        let headers = [
            vec![],
            vec![("h".to_string(), vec![])],
            vec![("headerKey".to_string(), b"headerValue".to_vec()), ("n\"q".to_string(), vec![0, 127, 128, 200, 255])],
        ];
        for (i, topic) in topics.iter().enumerate() {
            for (j, number) in numbers.iter().enumerate() {
                let record = Record::new(
                    PartitionKey::new(*topic, (j as i32) * 7 - 3),
                    *number,
                    numbers[(i + j) % numbers.len()],
                    if j % 2 == 0 { TimestampType::CreateTime } else { TimestampType::LogAppendTime },
                    payloads[j % payloads.len()].clone(),
                    payloads[(i + j) % payloads.len()].clone(),
                    headers[(i + j) % headers.len()].clone(),
                );
                let mut out = Vec::new();
                record.write_json(&mut out);
                assert_eq!(String::from_utf8(out.clone()).unwrap(), reference(&record));
                assert_eq!(record.encoded_len(), out.len(), "measured length of {record:?}");
            }
        }
    }
}
