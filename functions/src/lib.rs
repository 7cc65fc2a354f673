//! Target functions for the relay's end-to-end tests, served by `cargo lambda watch`.
//!
//! # Layout
//!
//! - [`decode`]: the Kafka event (`KafkaEvent`) → records with their values decoded, in the order sent.
//! - [`first_unseen_failures`]: which records `partial-target` reports as failed (pure, unit-tested).
//! - [`append_lines`]: one JSON line per record received, appended to `$RELAY_TEST_OUT/<function>.jsonl`.
//! - `src/bin/`: the functions themselves, `recording-target` and `partial-target`.
//!
//! A test reads the `.jsonl` file back and filters by its own (random) topic, so one `cargo lambda watch`
//! serves every test at once.

use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lambda_events::event::kafka::KafkaEvent;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// The environment variable naming the directory the functions write into.
pub const OUT_DIR_VAR: &str = "RELAY_TEST_OUT";

/// The prefix of a value that `partial-target` reports as failed, once per record.
pub const FAIL_PREFIX: &str = "fail";

/// Something a target function could not do.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// `RELAY_TEST_OUT` is not set, so there is nowhere to record.
    #[error("environment variable {0} is not set")]
    MissingEnv(&'static str),
    /// A record's value is not valid base64, so the event is not what the relay should send.
    #[error("record {partition_key}@{offset}: value is not base64: {source}")]
    Base64 {
        /// `<topic>-<partition>`.
        partition_key: String,
        /// The record's offset.
        offset: i64,
        /// The decoder's complaint.
        #[source]
        source: base64::DecodeError,
    },
    /// A record's value decodes to bytes that are not UTF-8; the tests only produce UTF-8.
    #[error("record {partition_key}@{offset}: value is not utf-8: {source}")]
    Utf8 {
        /// `<topic>-<partition>`.
        partition_key: String,
        /// The record's offset.
        offset: i64,
        /// The decoder's complaint.
        #[source]
        source: std::string::FromUtf8Error,
    },
    /// A record arrived without its topic.
    #[error("record {partition_key}@{offset} has no topic")]
    MissingTopic {
        /// `<topic>-<partition>`.
        partition_key: String,
        /// The record's offset.
        offset: i64,
    },
    /// Reading or writing a file under `RELAY_TEST_OUT` failed.
    #[error("cannot write {path:?}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// One record as the function received it, value decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The event's key for the record's partition, `<topic>-<partition>`.
    pub partition_key: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i64,
    /// Offset.
    pub offset: i64,
    /// The value, base64-decoded; `None` for a null value.
    pub value: Option<String>,
}

impl Received {
    /// `<topic>-<partition>@<offset>`, how the seen-failures file names a record.
    pub fn id(&self) -> String {
        format!("{}@{}", self.partition_key, self.offset)
    }
}

/// One line of `<function>.jsonl`: a record received by one invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// The function that received it (`AWS_LAMBDA_FUNCTION_NAME`).
    pub function: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i64,
    /// Offset.
    pub offset: i64,
    /// The decoded value.
    pub value: Option<String>,
    /// A fresh id per invocation, so a test can count invocations and see which records shared one.
    pub invocation: String,
    /// False when the function reported this record, or an earlier one of its partition, as failed: the
    /// relay must send it again. Every record should end up accepted exactly once.
    pub accepted: bool,
}

/// `{"batchItemFailures": [...]}`, the partial batch response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchResponse {
    /// Records to retry, at most one per partition here.
    pub batch_item_failures: Vec<BatchItemFailure>,
}

/// One entry of `batchItemFailures`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchItemFailure {
    /// Which record.
    pub item_identifier: ItemIdentifier,
}

/// A Kafka record's identity in a partial batch response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemIdentifier {
    /// `<topic>-<partition>`.
    pub partition: String,
    /// The record's offset.
    pub offset: i64,
}

/// The directory named by `RELAY_TEST_OUT`.
pub fn out_dir() -> Result<PathBuf, TargetError> {
    std::env::var_os(OUT_DIR_VAR).map(PathBuf::from).ok_or(TargetError::MissingEnv(OUT_DIR_VAR))
}

/// The event's records with decoded values, partitions in key order, records in the order they were sent
/// (not re-sorted: the tests check the order the relay delivered).
pub fn decode(event: &KafkaEvent) -> Result<Vec<Received>, TargetError> {
    let by_key: BTreeMap<&String, _> = event.records.iter().collect();
    let mut received = Vec::new();
    for (key, records) in by_key {
        for record in records {
            let topic = record
                .topic
                .clone()
                .ok_or_else(|| TargetError::MissingTopic { partition_key: key.clone(), offset: record.offset })?;
            let value = match &record.value {
                None => None,
                Some(encoded) => {
                    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|source| {
                        TargetError::Base64 { partition_key: key.clone(), offset: record.offset, source }
                    })?;
                    Some(String::from_utf8(bytes).map_err(|source| TargetError::Utf8 {
                        partition_key: key.clone(),
                        offset: record.offset,
                        source,
                    })?)
                }
            };
            received.push(Received {
                partition_key: key.clone(),
                topic,
                partition: record.partition,
                offset: record.offset,
                value,
            });
        }
    }
    Ok(received)
}

/// Per partition, the first record (in the order sent) whose value starts with [`FAIL_PREFIX`] and that
/// was not reported before: each such record fails exactly once, so the relay's retry succeeds.
pub fn first_unseen_failures(received: &[Received], seen: &HashSet<String>) -> Vec<ItemIdentifier> {
    let mut failures: Vec<ItemIdentifier> = Vec::new();
    for record in received {
        let partition_done = failures.iter().any(|f| f.partition == record.partition_key);
        let fails = record.value.as_deref().is_some_and(|v| v.starts_with(FAIL_PREFIX));
        if !partition_done && fails && !seen.contains(&record.id()) {
            failures.push(ItemIdentifier { partition: record.partition_key.clone(), offset: record.offset });
        }
    }
    failures
}

/// The lines to record for one invocation: a record is not accepted when the function reported it, or
/// an earlier record of its partition, as failed.
pub fn lines(function: &str, invocation: &str, received: &[Received], failures: &[ItemIdentifier]) -> Vec<Line> {
    received
        .iter()
        .map(|r| {
            let rejected = failures.iter().any(|f| f.partition == r.partition_key && r.offset >= f.offset);
            Line {
                function: function.to_owned(),
                topic: r.topic.clone(),
                partition: r.partition,
                offset: r.offset,
                value: r.value.clone(),
                invocation: invocation.to_owned(),
                accepted: !rejected,
            }
        })
        .collect()
}

/// Appends the lines to `path` in a single `write` on a file opened for appending, so concurrent
/// instances of a function (`cargo lambda watch --concurrency N`) never interleave inside a line.
pub fn append_lines<T: Serialize>(path: &Path, lines: &[T]) -> Result<(), TargetError> {
    let mut buffer = Vec::new();
    for line in lines {
        serde_json::to_writer(&mut buffer, line).expect("a line always serializes");
        buffer.push(b'\n');
    }
    if buffer.is_empty() {
        return Ok(());
    }
    let io = |source| TargetError::Io { path: path.to_owned(), source };
    let mut file = OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
    file.write_all(&buffer).map_err(io)
}

/// The ids in the seen-failures file, empty when it does not exist yet.
pub fn read_seen(path: &Path) -> Result<HashSet<String>, TargetError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().map(str::to_owned).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashSet::new()),
        Err(source) => Err(TargetError::Io { path: path.to_owned(), source }),
    }
}

/// Runs one recording function: decode, decide failures (with the seen-failures file when `partial`),
/// record every record received, and answer with the partial batch response.
pub fn handle(function: &str, event: &KafkaEvent, partial: bool) -> Result<BatchResponse, TargetError> {
    let dir = out_dir()?;
    let received = decode(event)?;
    let failures = if partial {
        let seen_path = dir.join(format!("{function}.seen"));
        let failures = first_unseen_failures(&received, &read_seen(&seen_path)?);
        let ids: Vec<String> = failures.iter().map(|f| format!("{}@{}", f.partition, f.offset)).collect();
        append_raw_lines(&seen_path, &ids)?;
        failures
    } else {
        Vec::new()
    };
    let invocation = uuid::Uuid::new_v4().to_string();
    append_lines(&dir.join(format!("{function}.jsonl")), &lines(function, &invocation, &received, &failures))?;
    Ok(BatchResponse {
        batch_item_failures: failures.into_iter().map(|item_identifier| BatchItemFailure { item_identifier }).collect(),
    })
}

/// Appends plain text lines (the seen-failures file holds bare ids, not JSON).
fn append_raw_lines(path: &Path, lines: &[String]) -> Result<(), TargetError> {
    if lines.is_empty() {
        return Ok(());
    }
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let io = |source| TargetError::Io { path: path.to_owned(), source };
    let mut file = OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: serde_json::Value) -> KafkaEvent {
        serde_json::from_value(json).expect("test event parses")
    }

    fn record(topic: &str, partition: i64, offset: i64, value: &str) -> serde_json::Value {
        serde_json::json!({
            "topic": topic, "partition": partition, "offset": offset, "timestamp": 1_700_000_000_000i64,
            "timestampType": "CREATE_TIME", "key": null,
            "value": base64::engine::general_purpose::STANDARD.encode(value), "headers": []
        })
    }

    fn received(key: &str, offset: i64, value: &str) -> Received {
        let (topic, partition) = key.rsplit_once('-').expect("key has a dash");
        Received {
            partition_key: key.to_owned(),
            topic: topic.to_owned(),
            partition: partition.parse().expect("numeric partition"),
            offset,
            value: Some(value.to_owned()),
        }
    }

    #[test]
    fn decodes_values_keeping_the_order_sent() -> Result<(), TargetError> {
        let e = event(serde_json::json!({
            "eventSource": "SelfManagedKafka",
            "records": {
                "t-1": [record("t", 1, 7, "b"), record("t", 1, 5, "a")],
                "t-0": [record("t", 0, 3, "x")]
            }
        }));
        let got = decode(&e)?;
        assert_eq!(got, vec![received("t-0", 3, "x"), received("t-1", 7, "b"), received("t-1", 5, "a")]);
        Ok(())
    }

    #[test]
    fn rejects_a_value_that_is_not_base64() {
        let mut bad = record("t", 0, 3, "x");
        bad["value"] = serde_json::json!("***");
        let e = event(serde_json::json!({"records": {"t-0": [bad]}}));
        assert!(matches!(decode(&e), Err(TargetError::Base64 { offset: 3, .. })));
    }

    #[test]
    fn reports_the_first_unseen_failing_record_of_each_partition() {
        let batch = vec![
            received("t-0", 10, "ok"),
            received("t-0", 11, "fail-a"),
            received("t-0", 12, "fail-b"),
            received("t-1", 4, "fail-c"),
        ];
        let none_seen = HashSet::new();
        assert_eq!(
            first_unseen_failures(&batch, &none_seen),
            vec![
                ItemIdentifier { partition: "t-0".into(), offset: 11 },
                ItemIdentifier { partition: "t-1".into(), offset: 4 },
            ]
        );
        let seen: HashSet<String> = ["t-0@11".to_owned(), "t-1@4".to_owned()].into();
        assert_eq!(first_unseen_failures(&batch, &seen), vec![ItemIdentifier { partition: "t-0".into(), offset: 12 }]);
    }

    #[test]
    fn records_after_a_reported_failure_are_not_accepted() {
        let batch = vec![
            received("t-0", 10, "ok"),
            received("t-0", 11, "fail"),
            received("t-0", 12, "ok"),
            received("t-1", 1, "ok"),
        ];
        let failures = vec![ItemIdentifier { partition: "t-0".into(), offset: 11 }];
        let accepted: Vec<(i64, bool)> =
            lines("f", "i", &batch, &failures).iter().map(|l| (l.offset, l.accepted)).collect();
        assert_eq!(accepted, vec![(10, true), (11, false), (12, false), (1, true)]);
    }

    #[test]
    fn the_response_has_the_partial_batch_shape() -> Result<(), serde_json::Error> {
        let response = BatchResponse {
            batch_item_failures: vec![BatchItemFailure {
                item_identifier: ItemIdentifier { partition: "mytopic-0".into(), offset: 15 },
            }],
        };
        assert_eq!(
            serde_json::to_value(&response)?,
            serde_json::json!({"batchItemFailures": [{"itemIdentifier": {"partition": "mytopic-0", "offset": 15}}]})
        );
        assert_eq!(serde_json::to_value(BatchResponse::default())?, serde_json::json!({"batchItemFailures": []}));
        Ok(())
    }
}
