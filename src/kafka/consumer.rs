//! The consumer that joins a mapping's group.
//!
//! Offsets are never auto-committed or auto-stored: the relay commits explicitly what
//! [`crate::commit::OffsetTracker`] allows. `StartingPosition` applies only to partitions without a
//! committed offset: LATEST and TRIM_HORIZON through `auto.offset.reset`, AT_TIMESTAMP by looking the
//! offsets up when the partitions are assigned.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer};
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

/// The partitions held by delivery jobs right now, shared by the jobs and the rebalance callback.
///
/// **A partition is never in two invocations at once, across members of the group**: when the group takes
/// a partition away, the revoke callback marks it leaving (its jobs invoke no more and cut their waits
/// short) and does not give it up until the job holding it ended, so its next owner never invokes it while
/// this member still does. Jobs register here themselves (their task's guard), because the driver that
/// would otherwise learn of their end is the one waiting in the callback.
#[derive(Default)]
pub struct InFlight {
    held: Mutex<BTreeMap<PartitionKey, usize>>,
    released: Condvar,
    leaving: Mutex<BTreeSet<PartitionKey>>,
    /// Wakes jobs waiting out a backoff when partitions start leaving.
    pub leaving_now: tokio::sync::Notify,
}

/// Holds partitions for one job until dropped.
pub struct Hold {
    in_flight: Arc<InFlight>,
    keys: Vec<PartitionKey>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut held = self.in_flight.held.lock().expect("held lock");
        for key in &self.keys {
            if let Some(n) = held.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    held.remove(key);
                }
            }
        }
        self.in_flight.released.notify_all();
    }
}

impl InFlight {
    /// Marks `keys` held until the returned guard is dropped (when the job's task ends or is aborted).
    pub fn hold(self: &Arc<Self>, keys: Vec<PartitionKey>) -> Hold {
        let mut held = self.held.lock().expect("held lock");
        for key in &keys {
            *held.entry(key.clone()).or_default() += 1;
        }
        Hold {
            in_flight: self.clone(),
            keys,
        }
    }

    /// Whether any of `keys` is being given up: a job holding it must not invoke again.
    pub fn any_leaving(&self, keys: &[PartitionKey]) -> bool {
        let leaving = self.leaving.lock().expect("leaving lock");
        !leaving.is_empty() && keys.iter().any(|k| leaving.contains(k))
    }

    fn start_leaving(&self, keys: &[PartitionKey]) {
        self.leaving
            .lock()
            .expect("leaving lock")
            .extend(keys.iter().cloned());
        self.leaving_now.notify_waiters();
    }

    fn stay(&self, keys: impl Iterator<Item = PartitionKey>) {
        let mut leaving = self.leaving.lock().expect("leaving lock");
        for key in keys {
            leaving.remove(&key);
        }
    }

    /// Waits until no job holds any of `keys`, at most `wait`; false if one still does.
    fn wait_released(&self, keys: &[PartitionKey], wait: Duration) -> bool {
        let until = Instant::now() + wait;
        let mut held = self.held.lock().expect("held lock");
        loop {
            if !keys.iter().any(|k| held.contains_key(k)) {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            held = self.released.wait_timeout(held, left).expect("held lock").0;
        }
    }
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
    /// Partitions in delivery jobs; a revocation waits for them.
    in_flight: Arc<InFlight>,
    /// How long a revocation waits for the job holding a partition (the target's timeout and a margin).
    revoke_wait: Mutex<Duration>,
    /// When the group last changed this consumer's assignment (or the consumer was created).
    last_change: Mutex<Instant>,
    /// Whether the group is rebalancing (from librdkafka's statistics: the join state is not steady).
    rebalancing: AtomicBool,
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
            in_flight: Arc::default(),
            revoke_wait: Mutex::new(Duration::from_secs(30)),
            last_change: Mutex::new(Instant::now()),
            rebalancing: AtomicBool::new(false),
        }
    }

    /// Partitions held by delivery jobs (jobs register there; revocations wait on it).
    pub fn in_flight(&self) -> &Arc<InFlight> {
        &self.in_flight
    }

    /// Sets how long a revocation waits for the job holding a partition to end.
    pub fn set_revoke_wait(&self, wait: Duration) {
        *self.revoke_wait.lock().expect("revoke wait lock") = wait;
    }

    /// When the group last assigned or revoked partitions of this consumer (its creation before that).
    pub fn last_change(&self) -> Instant {
        *self.last_change.lock().expect("last change lock")
    }

    /// Whether the group is rebalancing now, as of librdkafka's last statistics.
    pub fn rebalancing(&self) -> bool {
        self.rebalancing.load(Ordering::Relaxed)
    }

    fn changed(&self) {
        *self.last_change.lock().expect("last change lock") = Instant::now();
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
        self.in_flight.stay(assigned.iter().map(|a| a.key.clone()));
        // With the cooperative protocol the list holds only the partitions added to the assignment.
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        };
        if let Err(error) = result {
            tracing::error!(error_code = "ASSIGN_FAILED", %error, "cannot take the assigned partitions");
        }
        // librdkafka keeps a partition's pause flag across revoke and re-assignment; the run's ledger starts
        // every assigned partition unpaused, so librdkafka must too, or a partition that comes back to this
        // consumer is never fetched again.
        if let Err(error) = consumer.resume(tpl) {
            tracing::warn!(error_code = "RESUME_FAILED", %error, "cannot resume the assigned partitions");
        }
        self.changed();
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
        // The partitions' jobs stop invoking; the next owner gets them only once their invocations ended.
        self.in_flight.start_leaving(&revoked);
        let wait = *self.revoke_wait.lock().expect("revoke wait lock");
        // A lost assignment (this member was dropped from the group) is already elsewhere: nothing to wait for.
        if consumer.assignment_lost() {
            tracing::warn!(error_code = "ASSIGNMENT_LOST", partitions = revoked.len(), "the group dropped this member; its partitions moved without waiting for their invocations");
        } else if !block_unless_single_threaded(|| self.in_flight.wait_released(&revoked, wait)) {
            tracing::warn!(error_code = "REVOKE_WAIT_EXCEEDED", wait_s = wait.as_secs(), "a revoked partition's invocation is still running; giving it up anyway");
        }
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
        // With the cooperative protocol only the revoked partitions go; the others keep being consumed.
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
            _ => consumer.unassign(),
        };
        if let Err(error) = result {
            tracing::warn!(error_code = "UNASSIGN_FAILED", %error, "unassign failed");
        }
        self.changed();
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

    fn stats_raw(&self, statistics: &[u8]) {
        if let Some((state, join_state)) = group_state(statistics) {
            self.rebalancing.store(rebalancing(state, join_state), Ordering::Relaxed);
        }
    }
}

/// The consumer group's `state` and `join_state` in librdkafka's statistics JSON (without parsing the whole
/// document, which lists every partition).
fn group_state(statistics: &[u8]) -> Option<(&[u8], &[u8])> {
    const GROUP: &[u8] = b"\"cgrp\"";
    let at = statistics.windows(GROUP.len()).position(|w| w == GROUP)?;
    let group = &statistics[at..];
    Some((
        string_field(group, b"\"state\"")?,
        string_field(group, b"\"join_state\"")?,
    ))
}

/// The string value of the first `field` (a quoted name) in `json`: `"field": "value"`, spaces or not.
fn string_field<'a>(json: &'a [u8], field: &[u8]) -> Option<&'a [u8]> {
    let mut at = json.windows(field.len()).position(|w| w == field)? + field.len();
    while json
        .get(at)
        .is_some_and(|b| b.is_ascii_whitespace() || *b == b':')
    {
        at += 1;
    }
    if json.get(at) != Some(&b'"') {
        return None;
    }
    let len = json[at + 1..].iter().position(|b| *b == b'"')?;
    Some(&json[at + 1..at + 1 + len])
}

/// Whether the group is rebalancing for this member: it is joining (the coordinator is known and the
/// member waits for its first assignment) or a rebalance is under way (any join state but steady).
fn rebalancing(state: &[u8], join_state: &[u8]) -> bool {
    match join_state {
        b"steady" => false,
        b"init" => state == b"up",
        _ => true,
    }
}
/// Runs `wait` (a blocking wait) so the runtime's other tasks go on meanwhile: the delivery jobs being
/// waited for run on the same runtime. On a single-threaded runtime nothing could run, so it does not wait.
fn block_unless_single_threaded(wait: impl FnOnce() -> bool) -> bool {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::CurrentThread) => false,
        Ok(_) => tokio::task::block_in_place(wait),
        Err(_) => wait(),
    }
}

impl ConsumerContext for RelayContext {
    fn rebalance(&self, base_consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(base_consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(base_consumer, tpl),
            other => {
                tracing::error!(error_code = "REBALANCE_FAILED", error = ?other, "rebalance failed");
                let _ = match base_consumer.rebalance_protocol() {
                    RebalanceProtocol::Cooperative => base_consumer.incremental_unassign(tpl),
                    _ => base_consumer.unassign(),
                };
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
        // Several relays (workers) may share the group: a member joining or leaving moves only the
        // partitions that change hands, and the others keep consuming meanwhile.
        .set("partition.assignment.strategy", "cooperative-sticky")
        // The group's join state (is a rebalance under way?) comes with the statistics.
        .set("statistics.interval.ms", "1000")
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

/// Whether the group refused a commit only because it is rebalancing (members joining or leaving): the
/// offsets are offered again once it settled, so this is not a failure to report.
pub fn refused_for_rebalance(error: &KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode as Code;
    matches!(
        error,
        KafkaError::ConsumerCommit(
            Code::RebalanceInProgress | Code::IllegalGeneration | Code::UnknownMemberId
        )
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::RDKafkaErrorCode as Code;

    #[test]
    fn a_commit_refused_during_a_rebalance_is_deferred_not_failed() {
        assert!(refused_for_rebalance(&KafkaError::ConsumerCommit(
            Code::RebalanceInProgress
        )));
        assert!(refused_for_rebalance(&KafkaError::ConsumerCommit(
            Code::IllegalGeneration
        )));
        assert!(!refused_for_rebalance(&KafkaError::ConsumerCommit(
            Code::GroupAuthorizationFailed
        )));
        assert!(!refused_for_rebalance(&KafkaError::ConsumerCommit(
            Code::RequestTimedOut
        )));
    }

    #[test]
    fn the_group_state_is_read_from_the_statistics() {
        let stats = br#"{"name":"c","brokers":{"b":{"state":"UP"}},"cgrp":{"state":"up","stateage":10,"join_state":"wait-sync"}}"#;
        assert_eq!(group_state(stats), Some((&b"up"[..], &b"wait-sync"[..])));
        // librdkafka writes it with spaces.
        let stats = br#"{ "cgrp": { "state": "up", "join_state": "wait-unassign-call", "rebalance_age": 446 } }"#;
        assert_eq!(
            group_state(stats),
            Some((&b"up"[..], &b"wait-unassign-call"[..]))
        );
        assert_eq!(group_state(br#"{"name":"c"}"#), None);
    }

    #[test]
    fn joining_and_every_join_state_but_steady_is_a_rebalance() {
        assert!(!rebalancing(b"up", b"steady"));
        assert!(
            rebalancing(b"up", b"init"),
            "joining: the first assignment is on its way"
        );
        assert!(
            !rebalancing(b"wait-coord", b"init"),
            "no coordinator: nothing is on its way"
        );
        assert!(rebalancing(b"up", b"wait-join"));
        assert!(rebalancing(b"up", b"wait-unassign-call"));
    }

    #[test]
    fn a_revocation_waits_until_no_job_holds_the_partition() {
        let in_flight = Arc::new(InFlight::default());
        let key = PartitionKey::new("t", 1);
        let hold = in_flight.hold(vec![key.clone()]);
        in_flight.start_leaving(std::slice::from_ref(&key));
        assert!(
            in_flight.any_leaving(std::slice::from_ref(&key)),
            "a job holding it invokes no more"
        );
        assert!(
            !in_flight.wait_released(std::slice::from_ref(&key), Duration::from_millis(20)),
            "still held"
        );
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(hold);
        });
        assert!(in_flight.wait_released(std::slice::from_ref(&key), Duration::from_secs(5)));
        releaser.join().unwrap();
        in_flight.stay(std::iter::once(key.clone()));
        assert!(
            !in_flight.any_leaving(&[key]),
            "assigned again: invoked again"
        );
    }
}
