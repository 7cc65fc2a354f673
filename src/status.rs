//! `kafka-lambda-relay status`: where each mapping's consumer group stands, without consuming.
//!
//! Per mapping and partition: the group's committed offset, the log's watermarks, the lag in records and
//! in seconds (the age of the next record the group has not processed), and the retry state an earlier
//! run left in the commit metadata ([`crate::commit::RetryState`]): the offset a partition is stuck on,
//! and why.
//!
//! **Nothing changes in the cluster**: the consumer never subscribes (it does not join the group, so no
//! rebalance moves partitions away from a running relay), `enable.auto.commit` is off and nothing calls
//! commit or stores an offset; the one record read per lagging partition is read through `assign`, which
//! moves no group position.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::auth::{ConnectionDiagnostics, DiagnosingContext, KafkaSecurity, SecretSource};
use crate::commit::RetryState;
use crate::config::{Mapping, RelayConfig};

/// How long reading one mapping's state may take.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(15);

/// How long to wait for the next record of the lagging partitions (for their time lag).
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The state of every mapping of a configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StatusReport {
    /// One entry per configured mapping, in configuration order.
    pub mappings: Vec<MappingStatus>,
}

/// One mapping's consumer group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MappingStatus {
    /// The mapping's UUID.
    #[serde(rename = "UUID")]
    pub uuid: String,
    /// The target.
    pub function_name: String,
    /// The consumer group.
    pub consumer_group_id: String,
    /// `Enabled`, `Disabled` (not read), or `Failed` (the cluster could not be read).
    pub state: String,
    /// AWS's error code when the cluster could not be read for an authentication or configuration reason.
    pub error_code: Option<String>,
    /// Why the cluster could not be read.
    pub problem: Option<String>,
    /// Records between the committed offsets and the log ends, summed over partitions.
    pub sum_offset_lag: i64,
    /// The largest partition time lag, in seconds, when known.
    pub max_time_lag_seconds: Option<f64>,
    /// Per partition, by topic (configuration order) and partition.
    pub partitions: Vec<PartitionStatus>,
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PartitionStatus {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The group's committed offset (the next record it will process), if any.
    pub committed_offset: Option<i64>,
    /// The oldest offset the broker still has.
    pub low_watermark: i64,
    /// The offset the next record written will get.
    pub high_watermark: i64,
    /// Records not yet processed: from the committed offset (or, without one, the oldest record) to the
    /// log end.
    pub lag: i64,
    /// Timestamp (Unix ms) of the next record not yet processed, when there is one.
    pub next_record_timestamp_ms: Option<i64>,
    /// Its age in seconds when the status was read: 0 when caught up.
    pub time_lag_seconds: Option<f64>,
    /// Retry state an earlier run left at the committed offset.
    pub blocked: Option<BlockedStatus>,
}

/// A partition whose next record failed in an earlier run (from the commit metadata).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BlockedStatus {
    /// The record the failing batch starts at (the committed offset).
    pub offset: i64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// What happened, from the last response the relay kept.
    pub reason: String,
}

impl BlockedStatus {
    /// The blocked state `metadata` (committed with offset `committed`) describes, if it is the relay's
    /// retry state for that offset.
    pub fn from_metadata(committed: i64, metadata: &str) -> Option<Self> {
        let state = RetryState::decode(metadata).filter(|s| s.offset == committed && s.attempts > 0)?;
        let last = match &state.response {
            Some(response) => match &response.function_error {
                Some(error) => format!(
                    "; last response: status {}, function error {error}",
                    response.status_code
                ),
                None => format!("; last response: status {}", response.status_code),
            },
            None => String::new(),
        };
        Some(Self {
            offset: state.offset,
            attempts: state.attempts,
            reason: format!(
                "the batch starting at offset {} failed {} attempt(s){last}; the next run continues from there",
                state.offset, state.attempts
            ),
        })
    }
}

/// Reads every mapping's state (mappings one after the other; a failing mapping does not stop the others).
pub async fn status_all(config: &RelayConfig, secrets: &dyn SecretSource) -> StatusReport {
    let mut mappings = Vec::new();
    for mapping in &config.mappings {
        mappings.push(status(mapping, secrets, now_ms()).await);
    }
    StatusReport { mappings }
}

/// Reads one mapping's state; `now_ms` is the time lags are measured at.
pub async fn status(mapping: &Mapping, secrets: &dyn SecretSource, now_ms: i64) -> MappingStatus {
    let mut status = MappingStatus {
        uuid: mapping.uuid(),
        function_name: mapping.function_name.clone(),
        consumer_group_id: mapping.consumer_group_id(),
        state: "Enabled".into(),
        error_code: None,
        problem: None,
        sum_offset_lag: 0,
        max_time_lag_seconds: None,
        partitions: Vec::new(),
    };
    if !mapping.enabled {
        status.state = "Disabled".into();
        return status;
    }
    // Partitions, watermarks and committed offsets, with the diagnosis of connection failures.
    let checked = match crate::auth::check_with_timeout(mapping, secrets, STATUS_TIMEOUT).await {
        Ok(checked) => checked,
        Err(error) => {
            status.state = "Failed".into();
            status.error_code = error.code().map(|c| c.as_str().to_string());
            status.problem = Some(error.to_string());
            return status;
        }
    };
    let security = match crate::auth::resolve(mapping, secrets).await {
        Ok(security) => security,
        Err(error) => {
            status.state = "Failed".into();
            status.error_code = Some(error.code.as_str().to_string());
            status.problem = Some(error.sentence);
            return status;
        }
    };
    for topic in &checked.topics {
        for p in &topic.partitions {
            let next = p.committed_offset.unwrap_or(p.low_watermark).max(p.low_watermark);
            status.partitions.push(PartitionStatus {
                topic: topic.topic.clone(),
                partition: p.partition,
                committed_offset: p.committed_offset,
                low_watermark: p.low_watermark,
                high_watermark: p.high_watermark,
                lag: (p.high_watermark - next).max(0),
                next_record_timestamp_ms: None,
                time_lag_seconds: None,
                blocked: None,
            });
        }
    }
    let mapping_owned = mapping.clone();
    let partitions = std::mem::take(&mut status.partitions);
    // librdkafka's calls block; keep them off the async workers.
    let read = tokio::task::spawn_blocking(move || read_positions(&mapping_owned, &security, partitions)).await;
    match read {
        Ok(Ok(partitions)) => status.partitions = partitions,
        Ok(Err(problem)) => {
            status.state = "Failed".into();
            status.problem = Some(problem);
            return status;
        }
        Err(panic) => std::panic::resume_unwind(panic.into_panic()),
    }
    for p in &mut status.partitions {
        p.time_lag_seconds = crate::metrics::PartitionLag {
            topic: p.topic.clone(),
            partition: p.partition,
            offset_lag: p.lag,
            next_record_timestamp_ms: p.next_record_timestamp_ms,
        }
        .time_lag_seconds(now_ms);
    }
    status.sum_offset_lag = status.partitions.iter().map(|p| p.lag).sum();
    status.max_time_lag_seconds = status
        .partitions
        .iter()
        .filter_map(|p| p.time_lag_seconds)
        .reduce(f64::max);
    status
}

/// Adds the commit metadata (retry state) and the timestamp of each lagging partition's next record.
fn read_positions(
    mapping: &Mapping,
    security: &KafkaSecurity,
    mut partitions: Vec<PartitionStatus>,
) -> Result<Vec<PartitionStatus>, String> {
    let diagnostics = Arc::new(ConnectionDiagnostics::new(security, mapping));
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", mapping.bootstrap_servers().join(","))
        .set("group.id", mapping.consumer_group_id())
        .set("client.id", "kafka-lambda-relay-status")
        // Never move the group: no automatic commit, no stored offsets, and (below) no subscription.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest");
    security.apply(&mut config);
    let consumer: BaseConsumer<DiagnosingContext> = config
        .create_with_context(DiagnosingContext::new(diagnostics.clone()))
        .map_err(|error| diagnostics.creation_error(&error).to_string())?;

    let mut wanted = TopicPartitionList::new();
    for p in &partitions {
        wanted.add_partition(&p.topic, p.partition);
    }
    let committed: Vec<(String, i32, Option<i64>, String)> = consumer
        .committed_offsets(wanted, STATUS_TIMEOUT)
        .map(|list| {
            list.elements()
                .iter()
                .map(|e| {
                    let offset = match e.offset() {
                        Offset::Offset(n) if n >= 0 => Some(n),
                        _ => None,
                    };
                    (e.topic().to_string(), e.partition(), offset, e.metadata().to_string())
                })
                .collect()
        })
        // Dropped here: dropping a consumer while a list from committed_offsets is alive hangs (TESTING.md).
        .map_err(|error| {
            format!(
                "cannot read the committed offsets of group {}: {error}",
                mapping.consumer_group_id()
            )
        })?;
    for (topic, partition, offset, metadata) in committed {
        if let (Some(p), Some(offset)) = (
            partitions
                .iter_mut()
                .find(|p| p.topic == topic && p.partition == partition),
            offset,
        ) {
            p.blocked = BlockedStatus::from_metadata(offset, &metadata);
        }
    }

    // One record per lagging partition, read at the group's next offset through a manual assignment.
    let assignment = crate::kafka::consumer::partition_list(partitions.iter().filter(|p| p.lag > 0).map(|p| {
        let next = p.committed_offset.unwrap_or(p.low_watermark).max(p.low_watermark);
        (p.topic.as_str(), p.partition, Offset::Offset(next))
    }));
    let mut waiting = assignment.count();
    if waiting > 0 {
        consumer
            .assign(&assignment)
            .map_err(|error| format!("cannot read the next records: {error}"))?;
        let deadline = Instant::now() + READ_TIMEOUT;
        while waiting > 0 && Instant::now() < deadline {
            let Some(Ok(message)) = consumer.poll(deadline.saturating_duration_since(Instant::now())) else {
                continue;
            };
            let Some(p) = partitions.iter_mut().find(|p| {
                p.topic == message.topic() && p.partition == message.partition() && p.next_record_timestamp_ms.is_none()
            }) else {
                continue;
            };
            if let Some(ts) = message.timestamp().to_millis() {
                p.next_record_timestamp_ms = Some(ts);
                waiting -= 1;
                // This partition is done: stop fetching it.
                let mut done = TopicPartitionList::new();
                done.add_partition(&p.topic, p.partition);
                let _ = consumer.pause(&done);
            }
        }
        let _ = consumer.unassign();
    }
    drop(assignment);
    drop(consumer);
    Ok(partitions)
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl StatusReport {
    /// A table for a terminal: one line per partition under a line per mapping.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for m in &self.mappings {
            out.push_str(&format!(
                "{}  function {}  group {}  {}",
                m.uuid, m.function_name, m.consumer_group_id, m.state
            ));
            if let Some(code) = &m.error_code {
                out.push_str(&format!("  {code}"));
            }
            out.push('\n');
            if let Some(problem) = &m.problem {
                out.push_str(&format!("  PROBLEM: {problem}\n"));
            }
            if m.partitions.is_empty() {
                continue;
            }
            let rows: Vec<[String; 7]> = m
                .partitions
                .iter()
                .map(|p| {
                    [
                        p.topic.clone(),
                        p.partition.to_string(),
                        p.committed_offset.map_or("-".into(), |o| o.to_string()),
                        p.high_watermark.to_string(),
                        p.lag.to_string(),
                        p.time_lag_seconds.map_or("?".into(), format_seconds),
                        p.blocked
                            .as_ref()
                            .map_or("-".into(), |b| format!("at {}: {}", b.offset, b.reason)),
                    ]
                })
                .collect();
            let header = ["TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "TIME LAG", "BLOCKED"].map(String::from);
            let mut widths = header.clone().map(|h| h.len());
            for row in &rows {
                for (width, cell) in widths.iter_mut().zip(row) {
                    *width = (*width).max(cell.chars().count());
                }
            }
            for row in std::iter::once(&header).chain(&rows) {
                let cells: Vec<String> = row
                    .iter()
                    .zip(widths)
                    .enumerate()
                    .map(|(i, (cell, width))| {
                        if i == 6 {
                            cell.clone()
                        } else {
                            format!("{cell:<width$}")
                        }
                    })
                    .collect();
                out.push_str(&format!("  {}\n", cells.join("  ").trim_end()));
            }
            out.push_str(&format!(
                "  lag {} record(s), oldest unprocessed record {}\n",
                m.sum_offset_lag,
                m.max_time_lag_seconds.map_or("unknown".into(), format_seconds)
            ));
        }
        out
    }
}

/// `0 s`, `42.5 s`, `3 min 20 s`, `2 h 5 min`.
fn format_seconds(seconds: f64) -> String {
    let whole = seconds.round() as i64;
    if whole >= 3600 {
        format!("{} h {} min", whole / 3600, whole % 3600 / 60)
    } else if whole >= 60 {
        format!("{} min {} s", whole / 60, whole % 60)
    } else if seconds.fract() == 0.0 {
        format!("{whole} s")
    } else {
        format!("{seconds:.1} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_state_comes_from_the_relays_metadata_at_the_committed_offset() {
        let state = RetryState::new(7, 3).with_response(Some(crate::destination::ResponseContext {
            status_code: 200,
            executed_version: "$LATEST".into(),
            function_error: Some("Unhandled".into()),
        }));
        let blocked = BlockedStatus::from_metadata(7, &state.encode()).expect("blocked");
        assert_eq!(blocked.offset, 7);
        assert_eq!(blocked.attempts, 3);
        assert_eq!(
            blocked.reason,
            "the batch starting at offset 7 failed 3 attempt(s); last response: status 200, function error Unhandled; the next run continues from there"
        );
        assert_eq!(
            BlockedStatus::from_metadata(8, &state.encode()),
            None,
            "metadata of another offset is stale"
        );
        assert_eq!(BlockedStatus::from_metadata(7, ""), None);
        assert_eq!(BlockedStatus::from_metadata(7, "written by another tool"), None);
    }

    #[test]
    fn table_lists_each_partition_with_lag_time_lag_and_blocked_reason() {
        let report = StatusReport {
            mappings: vec![MappingStatus {
                uuid: "orders-to-billing".into(),
                function_name: "billing".into(),
                consumer_group_id: "billing-group".into(),
                state: "Enabled".into(),
                error_code: None,
                problem: None,
                sum_offset_lag: 30,
                max_time_lag_seconds: Some(200.0),
                partitions: vec![
                    PartitionStatus {
                        topic: "orders".into(),
                        partition: 0,
                        committed_offset: Some(10),
                        low_watermark: 0,
                        high_watermark: 40,
                        lag: 30,
                        next_record_timestamp_ms: Some(1_000),
                        time_lag_seconds: Some(200.0),
                        blocked: Some(BlockedStatus {
                            offset: 10,
                            attempts: 2,
                            reason: "failed".into(),
                        }),
                    },
                    PartitionStatus {
                        topic: "orders".into(),
                        partition: 1,
                        committed_offset: None,
                        low_watermark: 0,
                        high_watermark: 0,
                        lag: 0,
                        next_record_timestamp_ms: None,
                        time_lag_seconds: Some(0.0),
                        blocked: None,
                    },
                ],
            }],
        };
        assert_eq!(
            report.table(),
            "orders-to-billing  function billing  group billing-group  Enabled\n\
             \x20 TOPIC   PARTITION  COMMITTED  END  LAG  TIME LAG    BLOCKED\n\
             \x20 orders  0          10         40   30   3 min 20 s  at 10: failed\n\
             \x20 orders  1          -          0    0    0 s         -\n\
             \x20 lag 30 record(s), oldest unprocessed record 3 min 20 s\n"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["Mappings"][0]["Partitions"][0]["Blocked"]["Offset"], 10);
        assert_eq!(json["Mappings"][0]["Partitions"][0]["TimeLagSeconds"], 200.0);
        assert_eq!(json["Mappings"][0]["UUID"], "orders-to-billing");
    }
}
