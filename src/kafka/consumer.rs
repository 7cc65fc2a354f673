//! The consumer that joins a mapping's group.
//!
//! Offsets are never auto-committed or auto-stored: the relay commits explicitly what
//! [`crate::commit::OffsetTracker`] allows. `StartingPosition` applies only to partitions without a
//! committed offset: LATEST and TRIM_HORIZON through `auto.offset.reset`, AT_TIMESTAMP by looking the
//! offsets up when the partitions are assigned.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use crate::commit::RetryState;
use crate::config::StartingPosition;
use crate::kafka::PartitionKey;

/// How long broker round trips made inside the rebalance callback may take.
const GROUP_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A partition handed to this consumer, with what the group remembers of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedPartition {
    /// The partition.
    pub key: PartitionKey,
    /// The group's committed offset, if any.
    pub committed: Option<i64>,
    /// Retry state left by an earlier run, if any.
    pub retry: Option<RetryState>,
    /// Where consumption starts when the group has no offset and the start was resolved to a number
    /// (LATEST, AT_TIMESTAMP): committed at the end of the run even if no record arrives, so records
    /// produced before the next run are not skipped by another LATEST start.
    pub start: Option<i64>,
}

/// A change of the group's assignment, seen by the relay loop after a poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    /// These partitions are now ours.
    Assigned(Vec<AssignedPartition>),
    /// These partitions were taken away (their committable offsets were committed first).
    Revoked(Vec<PartitionKey>),
}

/// Callbacks of the mapping's consumer.
pub struct RelayContext {
    starting_position: StartingPosition,
    starting_timestamp_ms: Option<i64>,
    events: Mutex<Vec<GroupEvent>>,
    /// What may be committed now, per partition, with its metadata; kept current by the relay loop so a
    /// revocation commits progress before the partitions move to another consumer.
    committable: Mutex<BTreeMap<PartitionKey, (i64, String)>>,
    /// Logs and client errors go through the diagnosing context, which redacts secrets and recognizes
    /// authentication and authorization failures.
    diagnosing: crate::auth::DiagnosingContext,
}

/// What the group answered to a commit made off the run's loop.
#[derive(Debug)]
pub struct CommitOutcome {
    /// The offsets that were committed (or not).
    pub offsets: BTreeMap<PartitionKey, i64>,
    /// The group's answer.
    pub result: KafkaResult<()>,
}

impl RelayContext {
    /// A context applying `starting_position` to partitions without committed offsets.
    pub fn new(
        starting_position: StartingPosition,
        starting_timestamp_ms: Option<i64>,
        diagnostics: std::sync::Arc<crate::auth::ConnectionDiagnostics>,
    ) -> Self {
        Self {
            starting_position,
            starting_timestamp_ms,
            events: Mutex::new(Vec::new()),
            committable: Mutex::new(BTreeMap::new()),
            diagnosing: crate::auth::DiagnosingContext::new(diagnostics),
        }
    }

    /// What the client's errors and logs said about the connection.
    pub fn diagnostics(&self) -> &std::sync::Arc<crate::auth::ConnectionDiagnostics> {
        self.diagnosing.diagnostics()
    }

    /// Assignment changes since the last call.
    pub fn take_events(&self) -> Vec<GroupEvent> {
        std::mem::take(&mut *self.events.lock().expect("events lock"))
    }

    /// Records what may be committed for `key`.
    pub fn set_committable(&self, key: &PartitionKey, offset: i64, metadata: String) {
        self.committable.lock().expect("committable lock").insert(key.clone(), (offset, metadata));
    }

    /// Forgets a partition (revoked).
    pub fn forget(&self, key: &PartitionKey) {
        self.committable.lock().expect("committable lock").remove(key);
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let committed = consumer.committed_offsets(tpl.clone(), GROUP_CALL_TIMEOUT);
        let mut assigned = Vec::new();
        let mut without_offset = TopicPartitionList::new();
        match &committed {
            Ok(list) => {
                for element in list.elements() {
                    let key = PartitionKey::new(element.topic(), element.partition());
                    let offset = match element.offset() {
                        Offset::Offset(n) if n >= 0 => Some(n),
                        _ => None,
                    };
                    let retry = offset.and(RetryState::decode(element.metadata())).filter(|r| Some(r.offset) == offset);
                    if let Some(n) = offset {
                        // Start exactly where the group left off.
                        let _ = tpl.set_partition_offset(element.topic(), element.partition(), Offset::Offset(n));
                    } else {
                        without_offset
                            .add_partition_offset(element.topic(), element.partition(), Offset::Offset(self.starting_timestamp_ms.unwrap_or(0)))
                            .ok();
                    }
                    assigned.push(AssignedPartition { key, committed: offset, retry, start: None });
                }
            }
            Err(error) => {
                // Without the group's offsets, librdkafka still resumes from them (it fetches committed
                // offsets itself when the assignment has none); only AT_TIMESTAMP needs them here.
                tracing::warn!(error_code = "COMMITTED_OFFSETS_UNAVAILABLE", %error, "cannot read committed offsets");
                for element in tpl.elements() {
                    assigned.push(AssignedPartition {
                        key: PartitionKey::new(element.topic(), element.partition()),
                        committed: None,
                        retry: None,
                        start: None,
                    });
                }
            }
        }
        drop(committed);
        if without_offset.count() > 0 && self.starting_position != StartingPosition::TrimHorizon {
            // One ListOffsets round trip for all partitions: by timestamp, or -1 (the log end) for LATEST.
            if self.starting_position == StartingPosition::Latest {
                let _ = without_offset.set_all_offsets(Offset::End);
            }
            let mut resolved = self.list_offsets(consumer, without_offset);
            let past_end: Vec<(String, i32)> = resolved
                .iter()
                .filter(|(_, offset)| offset.is_none())
                .map(|((topic, partition), _)| (topic.clone(), *partition))
                .collect();
            if !past_end.is_empty() {
                // No record at or after the timestamp: start at the log end.
                let mut ends = TopicPartitionList::new();
                for (topic, partition) in &past_end {
                    let _ = ends.add_partition_offset(topic, *partition, Offset::End);
                }
                resolved.extend(self.list_offsets(consumer, ends));
            }
            for ((topic, partition), offset) in resolved {
                let Some(offset) = offset else { continue };
                let _ = tpl.set_partition_offset(&topic, partition, Offset::Offset(offset));
                if let Some(entry) = assigned.iter_mut().find(|a| *a.key.topic == *topic && a.key.partition == partition) {
                    entry.start = Some(offset);
                }
            }
        }
        if let Err(error) = consumer.assign(tpl) {
            tracing::error!(error_code = "ASSIGN_FAILED", %error, "cannot take the assigned partitions");
        }
        // librdkafka keeps a partition's pause flag across revoke and re-assignment; the run's ledger starts
        // every assigned partition unpaused, so librdkafka must too, or a partition that comes back to this
        // consumer is never fetched again.
        if let Err(error) = consumer.resume(tpl) {
            tracing::warn!(error_code = "RESUME_FAILED", %error, "cannot resume the assigned partitions");
        }
        self.events.lock().expect("events lock").push(GroupEvent::Assigned(assigned));
    }

    /// `ListOffsets` for `query` (offsets are timestamps, or -1 for the log end). Partitions that could not
    /// be resolved are left out: librdkafka then applies `auto.offset.reset`, which for AT_TIMESTAMP is
    /// the oldest record (duplicates, never loss).
    fn list_offsets(&self, consumer: &BaseConsumer<Self>, query: TopicPartitionList) -> Vec<((String, i32), Option<i64>)> {
        match consumer.offsets_for_times(query, GROUP_CALL_TIMEOUT) {
            Ok(found) => found
                .elements()
                .iter()
                .filter(|e| e.error().is_ok())
                .map(|e| {
                    let offset = match e.offset() {
                        Offset::Offset(n) if n >= 0 => Some(n),
                        _ => None,
                    };
                    ((e.topic().to_string(), e.partition()), offset)
                })
                .collect(),
            Err(error) => {
                tracing::warn!(error_code = "LIST_OFFSETS_FAILED", %error, "cannot resolve starting offsets; librdkafka's reset policy applies");
                Vec::new()
            }
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let revoked: Vec<PartitionKey> =
            tpl.elements().iter().map(|e| PartitionKey::new(e.topic(), e.partition())).collect();
        let mut offsets = TopicPartitionList::new();
        {
            let mut committable = self.committable.lock().expect("committable lock");
            for key in &revoked {
                if let Some((offset, metadata)) = committable.remove(key) {
                    let mut element = offsets.add_partition(&key.topic, key.partition);
                    let _ = element.set_offset(Offset::Offset(offset));
                    element.set_metadata(metadata);
                }
            }
        }
        if offsets.count() > 0 {
            if let Err(error) = consumer.commit(&offsets, CommitMode::Sync) {
                // The next owner re-reads from the older committed offset: duplicates, never loss.
                tracing::warn!(error_code = "COMMIT_ON_REVOKE_FAILED", %error, "commit before giving up partitions failed");
            }
        }
        if let Err(error) = consumer.unassign() {
            tracing::warn!(error_code = "UNASSIGN_FAILED", %error, "unassign failed");
        }
        self.events.lock().expect("events lock").push(GroupEvent::Revoked(revoked));
    }
}

impl ClientContext for RelayContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.diagnosing.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(rdkafka::error::RDKafkaErrorCode::PartitionEOF)) {
            // Reaching the end of a partition is how idleness is noticed, not an error.
            return;
        }
        self.diagnosing.error(error, reason);
    }
}

impl ConsumerContext for RelayContext {
    fn rebalance(&self, base_consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(base_consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(base_consumer, tpl),
            other => {
                tracing::error!(error_code = "REBALANCE_FAILED", error = ?other, "rebalance failed");
                let _ = base_consumer.unassign();
            }
        }
    }
}

/// The consumer type the relay uses.
pub type RelayConsumer = StreamConsumer<RelayContext>;

/// The librdkafka settings of a mapping's consumer, before authentication settings are added.
///
/// `session_timeout` bounds how long the next run waits for partitions when this one could not leave the
/// group cleanly (a killed Lambda); heartbeats go every third of it.
pub fn consumer_config(
    bootstrap_servers: &str,
    group_id: &str,
    starting_position: StartingPosition,
    session_timeout: Duration,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("group.id", group_id)
        .set("client.id", "kafka-lambda-relay")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Caught-up detection compares positions with the high watermarks of the last fetch: no EOF events.
        .set("enable.partition.eof", "false")
        .set(
            "auto.offset.reset",
            match starting_position {
                StartingPosition::Latest => "latest",
                // AT_TIMESTAMP partitions get explicit offsets on assignment; if that lookup fails, the
                // oldest record is the safe fallback.
                StartingPosition::TrimHorizon | StartingPosition::AtTimestamp => "earliest",
            },
        )
        // Fetching never waits on the relay: librdkafka's defaults make a paused-then-resumed partition,
        // or a full prefetch queue, wait out `fetch.wait.max.ms` (500 ms) and `fetch.queue.backoff.ms`
        // (1 s), which measured as 60-80 % of a busy run's time. The relay's own flow control (by bytes,
        // per process) decides what is buffered; librdkafka only keeps a small prefetch per consumer.
        .set("fetch.wait.max.ms", "100")
        .set("fetch.queue.backoff.ms", "5")
        .set("queued.max.messages.kbytes", "8192")
        .set("queued.min.messages", "10000")
        // One fetch response is bounded too (the default is 50 MB), so memory follows the budget.
        .set("fetch.max.bytes", "8388608")
        .set("socket.keepalive.enable", "true")
        .set("session.timeout.ms", session_timeout.as_millis().to_string())
        .set("heartbeat.interval.ms", (session_timeout.as_millis() / 3).max(100).to_string());
    config
}

/// Creates the consumer and subscribes to `topics`.
pub fn subscribe(config: &ClientConfig, context: RelayContext, topics: &[String]) -> KafkaResult<RelayConsumer> {
    let consumer: RelayConsumer = config.create_with_context(context)?;
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// Commits `offsets` (partition → (offset, metadata)) on a thread of its own and sends the group's answer
/// to `answers`: the run's loop never waits for the broker, and a broker that is gone holds up only that
/// thread. Nothing to commit is success.
pub fn commit_off_loop(
    consumer: std::sync::Arc<RelayConsumer>,
    offsets: BTreeMap<PartitionKey, (i64, String)>,
    answers: tokio::sync::mpsc::UnboundedSender<CommitOutcome>,
) {
    std::thread::spawn(move || {
        let result = commit(&consumer, &offsets);
        drop(consumer);
        let _ = answers.send(CommitOutcome { offsets: offsets.into_iter().map(|(k, (o, _))| (k, o)).collect(), result });
    });
}

fn offset_list(offsets: &BTreeMap<PartitionKey, (i64, String)>) -> KafkaResult<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for (key, (offset, metadata)) in offsets {
        let mut element = tpl.add_partition(&key.topic, key.partition);
        element.set_offset(Offset::Offset(*offset))?;
        element.set_metadata(metadata.clone());
    }
    Ok(tpl)
}

/// Commits `offsets` (partition → (offset, metadata)) synchronously. Nothing to commit is success.
pub fn commit(consumer: &RelayConsumer, offsets: &BTreeMap<PartitionKey, (i64, String)>) -> KafkaResult<()> {
    if offsets.is_empty() {
        return Ok(());
    }
    match consumer.commit(&offset_list(offsets)?, CommitMode::Sync) {
        Err(KafkaError::ConsumerCommit(rdkafka::error::RDKafkaErrorCode::NoOffset)) => Ok(()),
        other => other,
    }
}

/// The partition's (low, high) watermarks as of the last fetch response (no network round trip), or a
/// broker query of at most `query_timeout` when nothing has been fetched from it yet (zero: no query).
pub fn watermarks(consumer: &RelayConsumer, key: &PartitionKey, query_timeout: Duration) -> Option<(i64, i64)> {
    let topic = std::ffi::CString::new(key.topic.as_bytes()).ok()?;
    let (mut low, mut high) = (0i64, 0i64);
    // SAFETY: the handle is alive for the duration of the call and the out-pointers are valid.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            key.partition,
            &mut low,
            &mut high,
        )
    };
    if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0 && low >= 0 {
        return Some((low, high));
    }
    if query_timeout.is_zero() {
        return None;
    }
    consumer.fetch_watermarks(&key.topic, key.partition, query_timeout).ok()
}
