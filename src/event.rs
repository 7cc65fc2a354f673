//! The event sent to the target: exactly the shape AWS's Kafka event source mapping sends (SPEC section 3).
//!
//! Records are grouped by `"<topic>-<partition>"`, in offset order within each group. Each record knows the
//! exact length of its JSON from poll time, so [`EventSizer`] can tell, before a record is added, whether the
//! serialized event would pass AWS's 6 MB invocation payload limit; the event itself is written once, by the
//! delivery job, straight into a buffer of its final size.

use crate::kafka::Record;

/// What every event of a mapping shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSource {
    /// `SelfManagedKafka` or `aws:kafka`.
    pub event_source: String,
    /// The MSK cluster ARN (MSK mappings only).
    pub event_source_arn: Option<String>,
    /// Comma-separated bootstrap servers.
    pub bootstrap_servers: String,
}

impl EventSource {
    /// The header shared by every event of `mapping`.
    pub fn for_mapping(mapping: &crate::config::Mapping) -> Self {
        Self {
            event_source: mapping.event_source().to_string(),
            event_source_arn: mapping.is_msk().then(|| mapping.event_source_arn.clone()).flatten(),
            bootstrap_servers: mapping.bootstrap_servers().join(","),
        }
    }

    fn header(&self) -> String {
        let mut out = String::from("{\"eventSource\":");
        out.push_str(&json_string(&self.event_source));
        if let Some(arn) = &self.event_source_arn {
            out.push_str(",\"eventSourceArn\":");
            out.push_str(&json_string(arn));
        }
        out.push_str(",\"bootstrapServers\":");
        out.push_str(&json_string(&self.bootstrap_servers));
        out.push_str(",\"records\":{");
        out
    }

    /// Serializes the event for `records`, which must be grouped by partition and in offset order within
    /// each partition (as batches are). Written once, straight into a buffer of the exact final size.
    pub fn encode(&self, records: &[Record]) -> Vec<u8> {
        let mut sizer = self.sizer();
        for record in records {
            sizer.add(record);
        }
        let mut out = Vec::with_capacity(sizer.bytes());
        out.extend_from_slice(self.header().as_bytes());
        let mut current: Option<&crate::kafka::PartitionKey> = None;
        for record in records {
            if current != Some(&record.key_partition) {
                if current.is_some() {
                    out.extend_from_slice(b"],");
                }
                out.extend_from_slice(json_string(&record.key_partition.to_string()).as_bytes());
                out.extend_from_slice(b":[");
                current = Some(&record.key_partition);
            } else {
                out.push(b',');
            }
            record.write_json(&mut out);
        }
        if current.is_some() {
            out.push(b']');
        }
        out.extend_from_slice(b"}}");
        debug_assert_eq!(out.len(), sizer.bytes(), "the sizer is exact");
        out
    }

    /// A sizer starting from an empty event of this source.
    pub fn sizer(&self) -> EventSizer {
        EventSizer { bytes: self.header().len() + 2, groups: Vec::new() }
    }
}

/// Tracks the exact serialized size of an event as records are added.
#[derive(Debug, Clone)]
pub struct EventSizer {
    bytes: usize,
    groups: Vec<crate::kafka::PartitionKey>,
}

impl EventSizer {
    /// The size of the event with the records added so far.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The size the event would have with `record` added.
    pub fn with(&self, record: &Record) -> usize {
        self.bytes + self.cost(record)
    }

    /// Adds `record`.
    pub fn add(&mut self, record: &Record) {
        self.bytes += self.cost(record);
        if self.groups.last() != Some(&record.key_partition) && !self.groups.contains(&record.key_partition) {
            self.groups.push(record.key_partition.clone());
        }
    }

    fn cost(&self, record: &Record) -> usize {
        // Batches hold each partition's records together: the last group is almost always the one.
        if self.groups.last() == Some(&record.key_partition) || self.groups.contains(&record.key_partition) {
            1 + record.encoded_len()
        } else {
            // `"key":[` + record + `]`, plus a `,` before every group but the first.
            let separator = usize::from(!self.groups.is_empty());
            separator + json_string(&record.key_partition.to_string()).len() + 3 + record.encoded_len()
        }
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::{PartitionKey, TimestampType};

    fn fixture(name: &str) -> serde_json::Value {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect("fixture exists");
        serde_json::from_str(&text).expect("fixture parses")
    }

    /// The documentation's example key has non-zero padding bits; decode it leniently and compare the
    /// fixture with the canonical encoding of the same bytes.
    fn lenient_key() -> Vec<u8> {
        use base64::Engine as _;
        let config = base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true);
        base64::engine::GeneralPurpose::new(&base64::alphabet::STANDARD, config)
            .decode("abcDEFghiJKLmnoPQRstuVWXyz1234==")
            .unwrap()
    }

    fn canonical(mut fixture: serde_json::Value) -> serde_json::Value {
        use base64::Engine as _;
        fixture["records"]["mytopic-0"][0]["key"] = base64::engine::general_purpose::STANDARD.encode(lenient_key()).into();
        fixture
    }

    fn fixture_record() -> Record {
        Record::new(
            PartitionKey::new("mytopic", 0),
            15,
            1545084650987,
            TimestampType::CreateTime,
            Some(lenient_key()),
            Some(b"Hello, this is a test.".to_vec()),
            vec![("headerKey".into(), b"headerValue".to_vec())],
        )
    }

    #[test]
    fn self_managed_event_matches_fixture() {
        let source = EventSource {
            event_source: "SelfManagedKafka".into(),
            event_source_arn: None,
            bootstrap_servers: "b-2.demo-cluster-1.a1bcde.c1.kafka.us-east-1.amazonaws.com:9092,b-1.demo-cluster-1.a1bcde.c1.kafka.us-east-1.amazonaws.com:9092".into(),
        };
        let bytes = source.encode(&[fixture_record()]);
        let ours: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(ours, canonical(fixture("self-managed-kafka-event.json")));
    }

    #[test]
    fn msk_event_matches_fixture() {
        let source = EventSource {
            event_source: "aws:kafka".into(),
            event_source_arn: Some("arn:aws:kafka:us-east-1:123456789012:cluster/vpc-2priv-2pub/751d2973-a626-431c-9d4e-d7975eb44dd7-2".into()),
            bootstrap_servers: "b-2.demo-cluster-1.a1bcde.c1.kafka.us-east-1.amazonaws.com:9092,b-1.demo-cluster-1.a1bcde.c1.kafka.us-east-1.amazonaws.com:9092".into(),
        };
        let bytes = source.encode(&[fixture_record()]);
        let ours: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(ours, canonical(fixture("msk-event.json")));
    }

    #[test]
    fn fixtures_round_trip_through_the_official_event_type() {
        for name in ["self-managed-kafka-event.json", "msk-event.json"] {
            let value = fixture(name);
            let parsed: aws_lambda_events::event::kafka::KafkaEvent = serde_json::from_value(value.clone()).unwrap();
            let again: aws_lambda_events::event::kafka::KafkaEvent =
                serde_json::from_str(&serde_json::to_string(&parsed).unwrap()).unwrap();
            assert_eq!(parsed, again);
        }
    }

    /// A record decoded through a schema registry carries AWS's `keySchemaMetadata` / `valueSchemaMetadata`
    /// (`dataFormat`, `schemaId`) after its headers; key and value stay base64 (of the decoded JSON here).
    #[test]
    fn decoded_record_event_matches_schema_registry_fixture() {
        use crate::kafka::SchemaMetadata;
        let key_metadata = SchemaMetadata { data_format: "JSON".into(), schema_id: "7".into() };
        let value_metadata =
            SchemaMetadata { data_format: "AVRO".into(), schema_id: "0f8e8a3c-3b8e-4a51-9c55-0d5c7a7e1b11".into() };
        let record = Record::with_schema_metadata(
            PartitionKey::new("mytopic", 0),
            15,
            1545084650987,
            TimestampType::CreateTime,
            Some(br#"{"id":42}"#.to_vec()),
            Some(br#"{"id":42,"status":"PAID"}"#.to_vec()),
            vec![("headerKey".into(), b"headerValue".to_vec())],
            Some(key_metadata),
            Some(value_metadata),
        );
        let source = EventSource {
            event_source: "aws:kafka".into(),
            event_source_arn: Some("arn:aws:kafka:us-east-1:123456789012:cluster/vpc-2priv-2pub/751d2973-a626-431c-9d4e-d7975eb44dd7-2".into()),
            bootstrap_servers: "b-2.demo-cluster-1.a1bcde.c1.kafka.us-east-1.amazonaws.com:9092,b-1.demo-cluster-1.a1bcde.c1.kafka.us-east-1.amazonaws.com:9092".into(),
        };
        let bytes = source.encode(std::slice::from_ref(&record));
        let ours: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(ours, fixture("msk-event-schema-registry.json"));
        // The sizer stays exact with the extra fields, and the official event type still reads the event.
        assert_eq!(source.sizer().with(&record), bytes.len());
        let parsed: aws_lambda_events::event::kafka::KafkaEvent = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(parsed.records["mytopic-0"][0].offset, 15);
    }

    #[test]
    fn absent_key_and_value_are_null_and_high_header_bytes_parse_as_signed() {
        let record = Record::new(
            PartitionKey::new("t", 3),
            7,
            1,
            TimestampType::LogAppendTime,
            None,
            None,
            vec![("h".into(), vec![0, 200, 255])],
        );
        let source = EventSource { event_source: "SelfManagedKafka".into(), event_source_arn: None, bootstrap_servers: "x:1".into() };
        let bytes = source.encode(&[record]);
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let r = &value["records"]["t-3"][0];
        assert_eq!(r["key"], serde_json::Value::Null);
        assert_eq!(r["value"], serde_json::Value::Null);
        assert_eq!(r["timestampType"], "LOG_APPEND_TIME");
        assert_eq!(r["headers"][0]["h"], serde_json::json!([0, -56, -1]));
        let parsed: aws_lambda_events::event::kafka::KafkaEvent = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(parsed.records["t-3"][0].offset, 7);
    }

    #[test]
    fn sizer_is_exact_across_partitions() {
        let source = EventSource {
            event_source: "aws:kafka".into(),
            event_source_arn: Some("arn:aws:kafka:us-east-1:1:cluster/c/x".into()),
            bootstrap_servers: "a:1,b:2".into(),
        };
        let mut records = Vec::new();
        for partition in 0..3 {
            for offset in 0..4 {
                records.push(Record::new(
                    PartitionKey::new("topic", partition),
                    offset,
                    1000 + offset,
                    TimestampType::CreateTime,
                    None,
                    Some(vec![b'x'; (offset * 7) as usize]),
                    Vec::new(),
                ));
            }
        }
        let mut sizer = source.sizer();
        assert_eq!(sizer.bytes(), source.encode(&[]).len());
        for (i, record) in records.iter().enumerate() {
            let predicted = sizer.with(record);
            sizer.add(record);
            assert_eq!(predicted, source.encode(&records[..=i]).len());
            assert_eq!(sizer.bytes(), predicted);
        }
    }
}
