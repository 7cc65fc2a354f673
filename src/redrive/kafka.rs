//! Kafka reads of a redrive, blocking (call them from `spawn_blocking`): the offsets an SQS/SNS record names,
//! read back through an assigned consumer that never joins or commits a group; and a failure topic read
//! from the redrive group's committed offsets to the log end, then committed for what was redriven.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::error::RedriveError;
use super::parse::OffsetRange;
use super::select::{gaps, readable, Missing};
use crate::auth::{ConnectionDiagnostics, DiagnosingContext, KafkaSecurity};
use crate::config::Mapping;
use crate::kafka::consumer::partition_list;
use crate::kafka::{PartitionKey, Record};

/// How long one broker round trip may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long reading what was asked for may take.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

type ReadConsumer = BaseConsumer<DiagnosingContext>;

/// A consumer for `mapping`'s cluster with its authentication; `group` only for committing.
fn consumer(
    mapping: &Mapping,
    security: &KafkaSecurity,
    group: &str,
    purpose: &'static str,
) -> Result<ReadConsumer, RedriveError> {
    let diagnostics = Arc::new(ConnectionDiagnostics::new(security, mapping));
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", mapping.bootstrap_servers().join(","))
        .set("group.id", group)
        .set("client.id", "kafka-lambda-relay-redrive")
        // Nothing moves unless the redrive commits it explicitly, after success.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "16777216");
    security.apply(&mut config);
    config
        .create_with_context(DiagnosingContext::new(diagnostics))
        .map_err(|source| RedriveError::CreateConsumer { purpose, source: Box::new(source) })
}

/// The records read back, and the offsets that could not be.
#[derive(Debug, Default)]
pub struct ReadBack {
    /// Records of the ranges, grouped by range, in offset order.
    pub records: Vec<Record>,
    /// Offsets Kafka no longer (or never) had.
    pub missing: Vec<Missing>,
}

/// Reads `ranges` back from the mapping's cluster: watermarks first (what retention deleted, what lies past
/// the log end), then the rest through an assignment. Joins no group, commits nothing.
pub fn read_ranges(
    mapping: &Mapping,
    security: &KafkaSecurity,
    ranges: &[OffsetRange],
) -> Result<ReadBack, RedriveError> {
    let consumer =
        consumer(mapping, security, "kafka-lambda-relay-redrive-reader", "reads the offsets of SQS/SNS records back")?;
    let mut out = ReadBack::default();
    let mut wanted: Vec<(PartitionKey, i64, i64)> = Vec::new();
    for range in ranges {
        let (low, high) =
            consumer.fetch_watermarks(&range.key.topic, range.key.partition, CALL_TIMEOUT).map_err(|source| {
                RedriveError::Watermarks {
                    topic: range.key.topic.to_string(),
                    partition: range.key.partition,
                    source: Box::new(source),
                }
            })?;
        let (missing, rest) = readable(&range.key, range.first, range.last, low, high);
        out.missing.extend(missing);
        if let Some((from, to)) = rest {
            wanted.push((range.key.clone(), from, to));
        }
    }
    let read = read_assigned(&consumer, &wanted)?;
    for (key, from, to) in &wanted {
        let mut records: Vec<Record> = read.get(key).cloned().unwrap_or_default();
        records.retain(|r| (*from..=*to).contains(&r.offset));
        let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
        out.missing.extend(gaps(key, *from, *to, &offsets));
        out.records.extend(records);
    }
    drop(consumer);
    Ok(out)
}

/// Reads `from..=to` of each partition through one assignment; per partition in offset order.
fn read_assigned(
    consumer: &ReadConsumer,
    wanted: &[(PartitionKey, i64, i64)],
) -> Result<BTreeMap<PartitionKey, Vec<Record>>, RedriveError> {
    let mut out: BTreeMap<PartitionKey, Vec<Record>> = BTreeMap::new();
    // Several ranges of one partition: read from the lowest to the highest.
    let mut spans: BTreeMap<PartitionKey, (i64, i64)> = BTreeMap::new();
    for (key, from, to) in wanted {
        let span = spans.entry(key.clone()).or_insert((*from, *to));
        *span = (span.0.min(*from), span.1.max(*to));
    }
    let Some((first_key, _)) = spans.iter().next() else { return Ok(out) };
    let first_topic = first_key.topic.to_string();
    let assignment = partition_list(spans.iter().map(|(key, (from, _))| (&*key.topic, key.partition, Offset::Offset(*from))));
    consumer
        .assign(&assignment)
        .map_err(|source| RedriveError::Assign { topic: first_topic.clone(), source: Box::new(source) })?;
    drop(assignment);
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut open: BTreeMap<PartitionKey, i64> = spans.iter().map(|(k, (_, to))| (k.clone(), *to + 1)).collect();
    while !open.is_empty() {
        if Instant::now() >= deadline {
            let (key, end) = open.iter().next().expect("open is not empty");
            let position = out.get(key).and_then(|r| r.last()).map_or(-1, |r| r.offset + 1);
            return Err(RedriveError::FetchIncomplete {
                topic: key.topic.to_string(),
                partition: key.partition,
                position,
                end: *end,
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let key = PartitionKey::new(message.topic(), message.partition());
                if let Some(&end) = open.get(&key) {
                    if message.offset() < end {
                        out.entry(key.clone()).or_default().push(Record::from_message(&message, key.clone()));
                    }
                    if message.offset() + 1 >= end {
                        open.remove(&key);
                    }
                }
            }
            Some(Err(source)) => return Err(RedriveError::Fetch { topic: first_topic, source: Box::new(source) }),
            None => close_finished(consumer, &mut open),
        }
    }
    let _ = consumer.unassign();
    Ok(out)
}

/// Partitions whose position already passed their end (the last offsets were markers, not records).
fn close_finished(consumer: &ReadConsumer, open: &mut BTreeMap<PartitionKey, i64>) {
    let Ok(positions) = consumer.position() else { return };
    for element in positions.elements() {
        if let Offset::Offset(position) = element.offset() {
            let key = PartitionKey::new(element.topic(), element.partition());
            if open.get(&key).is_some_and(|end| position >= *end) {
                open.remove(&key);
            }
        }
    }
}


/// One message of a failure topic.
#[derive(Debug, Clone)]
pub struct FailureMessage {
    /// Its partition of the failure topic.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its value: the invocation record.
    pub value: Vec<u8>,
}

/// Every message of `topic` from `group`'s committed offsets (the log start where it has none) to the log
/// end as it was when the read began.
pub fn read_failure_topic(
    mapping: &Mapping,
    security: &KafkaSecurity,
    topic: &str,
    group: &str,
) -> Result<Vec<FailureMessage>, RedriveError> {
    let consumer = consumer(mapping, security, group, "reads the failure topic")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), CALL_TIMEOUT)
        .map_err(|source| RedriveError::Metadata { topic: topic.to_string(), source: Box::new(source) })?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    drop(metadata);
    let mut wanted = TopicPartitionList::new();
    for p in &partitions {
        wanted.add_partition(topic, *p);
    }
    let committed: BTreeMap<i32, i64> = consumer
        .committed_offsets(wanted, CALL_TIMEOUT)
        .map(|list| {
            list.elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(n) if n >= 0 => Some((e.partition(), n)),
                    _ => None,
                })
                .collect()
        })
        .map_err(|source| RedriveError::Committed {
            group: group.to_string(),
            topic: topic.to_string(),
            source: Box::new(source),
        })?;
    let mut spans = Vec::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, CALL_TIMEOUT).map_err(|source| {
            RedriveError::Watermarks { topic: topic.to_string(), partition: p, source: Box::new(source) }
        })?;
        let from = committed.get(&p).copied().unwrap_or(low).max(low);
        if from < high {
            spans.push((PartitionKey::new(topic, p), from, high - 1));
        }
    }
    let read = read_assigned(&consumer, &spans)?;
    drop(consumer);
    Ok(read
        .into_values()
        .flatten()
        .map(|r| FailureMessage {
            partition: r.key_partition.partition,
            offset: r.offset,
            value: r.value.unwrap_or_default(),
        })
        .collect())
}

/// Commits `positions` (partition → next offset) for `group` on `topic`, without joining the group.
pub fn commit_failure_topic(
    mapping: &Mapping,
    security: &KafkaSecurity,
    topic: &str,
    group: &str,
    positions: &BTreeMap<i32, i64>,
) -> Result<(), RedriveError> {
    if positions.is_empty() {
        return Ok(());
    }
    let consumer = consumer(mapping, security, group, "commits the redrive group")?;
    let error =
        |source| RedriveError::Commit { group: group.to_string(), topic: topic.to_string(), source: Box::new(source) };
    let list = partition_list(positions.iter().map(|(partition, offset)| (topic, *partition, Offset::Offset(*offset))));
    let result = consumer.commit(&list, CommitMode::Sync).map_err(error);
    drop(list);
    drop(consumer);
    result
}
