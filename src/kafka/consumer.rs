//! The consumer that joins a mapping's group.
//!
//! Offsets are never auto-committed or auto-stored: the relay commits explicitly what
//! [`crate::commit::OffsetTracker`] allows. `StartingPosition` applies only to partitions without a
//! committed offset: TRIM_HORIZON through `auto.offset.reset`, LATEST and AT_TIMESTAMP by looking the
//! offsets up (`ListOffsets`) when the partitions are assigned.
//!
//! Rule enforced in [`RelayContext`]'s assignment: **a LATEST or AT_TIMESTAMP partition is consumed only from
//! a starting offset the relay resolved itself** (and the run commits that offset, so the next run starts
//! there). The lookup is retried with backoff; a partition whose start is still unknown is left out of the
//! consumer's assignment, so librdkafka never fetches it (its reset policy would silently start at the log
//! end, and records produced between two runs would be skipped), and is reported through
//! [`AssignedPartition::unresolved_start`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// Partitions per OffsetFetch or ListOffsets request made in the rebalance callback. librdkafka matches a
/// response's partitions against its request list one by one, so one request's cost grows with the square
/// of its size: measured on the mock cluster, ListOffsets for 10,000 partitions in one request took 6.8 s and
/// for 20,000 about 25 s, longer than the session timeout (the member was evicted and the group rebalanced
/// again, issue 13). In requests of this size the whole lookup stays linear.
const LOOKUP_CHUNK: usize = 500;

/// One partition's committed offset and metadata, as the group answered.
struct Committed {
    topic: String,
    partition: i32,
    offset: Offset,
    metadata: String,
}

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
    /// Why the starting offset of this LATEST or AT_TIMESTAMP partition without a committed offset could not
    /// be resolved (after retries). Such a partition is not in the consumer's assignment: nothing of it is
    /// fetched, delivered or committed in this run, and the mapping must report it as failing.
    pub unresolved_start: Option<String>,
}

/// How the starting offsets of partitions without a committed offset are looked up when partitions are
/// assigned: `attempts` tries of the group's committed offsets and of `ListOffsets`, waiting
/// `initial_backoff`, doubled after each failure, all within `budget` (the lookup runs inside the rebalance
/// callback, where it holds up polling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartLookup {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// The wait after the first failure; doubled after each later one.
    pub initial_backoff: Duration,
    /// Upper bound on one assignment's lookups, waits included.
    pub budget: Duration,
}

impl Default for StartLookup {
    /// Five tries with about 3 s of waits in all, within the 10 s one broker round trip may take.
    fn default() -> Self {
        Self { attempts: 5, initial_backoff: Duration::from_millis(200), budget: GROUP_CALL_TIMEOUT }
    }
}

impl StartLookup {
    /// The wait before try number `attempt` (0-based); `None` when no try is left or the wait would end
    /// past `deadline`.
    fn wait_before(&self, attempt: u32, deadline: Instant) -> Option<Duration> {
        if attempt >= self.attempts {
            return None;
        }
        let wait =
            if attempt == 0 { Duration::ZERO } else { self.initial_backoff.saturating_mul(1 << (attempt - 1).min(16)) };
        (Instant::now() + wait < deadline).then_some(wait)
    }

    /// The timeout of one broker round trip starting now.
    fn call_timeout(deadline: Instant) -> Duration {
        deadline.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(100), GROUP_CALL_TIMEOUT)
    }
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
    start_lookup: StartLookup,
    /// The run's deadline: the rebalance callback holds up the run's loop, so its lookups end by then.
    run_deadline: Option<Instant>,
    events: Mutex<Vec<GroupEvent>>,
    /// What may be committed now, per partition, with its metadata; kept current by the relay loop so a
    /// revocation commits progress before the partitions move to another consumer.
    committable: Mutex<BTreeMap<PartitionKey, (i64, String)>>,
    /// Partitions the relay paused in librdkafka (through [`pause`]): librdkafka keeps a pause across a
    /// revocation, so an assignment resumes these, and only these.
    paused: Mutex<BTreeSet<PartitionKey>>,
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
    /// Client errors reported by librdkafka's error callback (a broker gone, a transport failure) since
    /// the driver last took them: they count as `PollingErrorCount`.
    client_errors: std::sync::atomic::AtomicU64,
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
            start_lookup: StartLookup::default(),
            run_deadline: None,
            events: Mutex::new(Vec::new()),
            committable: Mutex::new(BTreeMap::new()),
            paused: Mutex::new(BTreeSet::new()),
            diagnosing: crate::auth::DiagnosingContext::new(diagnostics),
            in_flight: Arc::default(),
            revoke_wait: Mutex::new(Duration::from_secs(30)),
            last_change: Mutex::new(Instant::now()),
            rebalancing: AtomicBool::new(false),
            client_errors: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The same context with `lookup` as its starting-offset lookup policy.
    pub fn with_start_lookup(mut self, lookup: StartLookup) -> Self {
        self.start_lookup = lookup;
        self
    }

    /// The same context for a run that ends at `deadline`: an assignment's starting-offset lookups end by
    /// then too (a partition not looked up in time is not consumed, and the next run looks it up).
    pub fn with_run_deadline(mut self, deadline: Option<Instant>) -> Self {
        self.run_deadline = deadline;
        self
    }

    /// When this assignment's lookups must end: after the lookup budget, and never after the run's deadline.
    fn start_lookup_deadline(&self) -> Instant {
        let budget = Instant::now() + self.start_lookup.budget;
        self.run_deadline.map_or(budget, |deadline| budget.min(deadline))
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

    /// Client errors since the last call (`PollingErrorCount`).
    pub fn take_client_errors(&self) -> u64 {
        self.client_errors.swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    /// Assignment changes since the last call.
    pub fn take_events(&self) -> Vec<GroupEvent> {
        std::mem::take(&mut *self.events.lock().expect("events lock"))
    }

    /// Records what may be committed for `key`.
    pub fn set_committable(&self, key: &PartitionKey, offset: i64, metadata: String) {
        self.committable.lock().expect("committable lock").insert(key.clone(), (offset, metadata));
    }

    /// Forgets every partition's committable offset: the group has them all (the run's final commit).
    pub fn forget_all(&self) {
        self.committable.lock().expect("committable lock").clear();
    }

    /// Forgets a partition (revoked).
    pub fn forget(&self, key: &PartitionKey) {
        self.committable.lock().expect("committable lock").remove(key);
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let deadline = self.start_lookup_deadline();
        let resolves_starts = self.starting_position != StartingPosition::TrimHorizon;
        let mut assigned = Vec::new();
        // Partition → where it starts (its committed offset or its resolved start), set on `tpl` in one pass.
        let mut starts: HashMap<(String, i32), Offset> = HashMap::new();
        let mut without_offset: Vec<(String, i32)> = Vec::new();
        // Partition → why its start is unknown.
        let mut unresolved: BTreeMap<(String, i32), String> = BTreeMap::new();
        match self.committed_offsets(consumer, tpl, deadline) {
            Ok(list) => {
                for element in list {
                    let key = PartitionKey::new(element.topic.as_str(), element.partition);
                    let offset = match element.offset {
                        Offset::Offset(n) if n >= 0 => Some(n),
                        _ => None,
                    };
                    let retry = offset.and(RetryState::decode(&element.metadata)).filter(|r| Some(r.offset) == offset);
                    match offset {
                        // Start exactly where the group left off.
                        Some(n) => {
                            starts.insert((element.topic, element.partition), Offset::Offset(n));
                        }
                        None => without_offset.push((element.topic, element.partition)),
                    }
                    assigned.push(AssignedPartition {
                        key,
                        committed: offset,
                        retry,
                        start: None,
                        unresolved_start: None,
                    });
                }
            }
            Err(error) => {
                // librdkafka still resumes partitions that have a committed offset (it reads them itself when
                // the assignment has none), and TRIM_HORIZON's reset policy (the oldest record) loses nothing.
                // LATEST and AT_TIMESTAMP cannot tell which partitions need a start: none is consumed.
                tracing::warn!(error_code = "COMMITTED_OFFSETS_UNAVAILABLE", %error, "cannot read committed offsets");
                for element in tpl.elements() {
                    let key = PartitionKey::new(element.topic(), element.partition());
                    if resolves_starts {
                        unresolved.insert(
                            (key.topic.to_string(), key.partition),
                            format!("cannot read the group's committed offsets to choose a starting position: {error}"),
                        );
                    }
                    assigned.push(AssignedPartition {
                        key,
                        committed: None,
                        retry: None,
                        start: None,
                        unresolved_start: None,
                    });
                }
            }
        }
        if !without_offset.is_empty() && resolves_starts {
            // ListOffsets in chunked requests: by timestamp, or -1 (the log end) for LATEST.
            let query = match self.starting_position {
                StartingPosition::Latest => Offset::End,
                _ => Offset::Offset(self.starting_timestamp_ms.unwrap_or(0)),
            };
            let (mut resolved, failed) =
                self.list_offsets(consumer, &partition_list(without_offset.iter().map(|(t, p)| (t.as_str(), *p, query))), deadline);
            unresolved.extend(failed);
            let past_end: Vec<(String, i32)> = resolved
                .iter()
                .filter(|(_, offset)| offset.is_none())
                .map(|((topic, partition), _)| (topic.clone(), *partition))
                .collect();
            if !past_end.is_empty() {
                // No record at or after the timestamp: start at the log end.
                let ends = partition_list(past_end.iter().map(|(topic, partition)| (topic.as_str(), *partition, Offset::End)));
                resolved.retain(|(_, offset)| offset.is_some());
                let (at_end, failed) = self.list_offsets(consumer, &ends, deadline);
                resolved.extend(at_end);
                unresolved.extend(failed);
            }
            let index: HashMap<(String, i32), usize> = assigned
                .iter()
                .enumerate()
                .map(|(i, a)| ((a.key.topic.to_string(), a.key.partition), i))
                .collect();
            for ((topic, partition), offset) in resolved {
                let Some(offset) = offset else {
                    unresolved
                        .insert((topic, partition), "LIST_OFFSETS_FAILED: the log end offset was not returned".into());
                    continue;
                };
                if let Some(&i) = index.get(&(topic.clone(), partition)) {
                    assigned[i].start = Some(offset);
                }
                starts.insert((topic, partition), Offset::Offset(offset));
            }
        }
        set_offsets(tpl, &starts);
        self.in_flight.stay(assigned.iter().map(|a| a.key.clone()));
        let consumable = if unresolved.is_empty() {
            tpl.clone()
        } else {
            // Leave unresolved partitions out of the assignment rather than pausing them: a paused partition
            // is resumed by flow control and would then start wherever librdkafka's reset policy puts it.
            tracing::error!(
                error_code = "STARTING_POSITION_UNRESOLVED",
                partitions = unresolved.len(),
                reason = %unresolved.values().next().map(String::as_str).unwrap_or_default(),
                "not consuming partitions whose starting position could not be resolved"
            );
            for entry in &mut assigned {
                entry.unresolved_start = unresolved.get(&(entry.key.topic.to_string(), entry.key.partition)).cloned();
            }
            let elements = tpl.elements();
            partition_list(
                elements
                    .iter()
                    .filter(|e| !unresolved.contains_key(&(e.topic().to_string(), e.partition())))
                    .map(|e| (e.topic(), e.partition(), e.offset())),
            )
        };
        // With the cooperative protocol the list holds only the partitions added to the assignment.
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(&consumable),
            _ => consumer.assign(&consumable),
        };
        if let Err(error) = result {
            tracing::error!(error_code = "ASSIGN_FAILED", %error, "cannot take the assigned partitions");
        }
        // librdkafka keeps a partition's pause flag across revoke and re-assignment; the run's ledger starts
        // every assigned partition unpaused, so librdkafka must too, or a partition that comes back to this
        // consumer is never fetched again. Only partitions the relay paused are resumed: one resume call
        // over 20,000 partitions takes seconds (issue 13), and the callback holds up the whole consumer.
        self.resume_paused(consumer, tpl);
        self.changed();
        self.events.lock().expect("events lock").push(GroupEvent::Assigned(assigned));
    }

    /// Resumes the partitions of `tpl` that the relay had paused (one call for all of them).
    fn resume_paused(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let mut resume = TopicPartitionList::new();
        {
            let mut paused = self.paused.lock().expect("paused lock");
            if paused.is_empty() {
                return;
            }
            for e in tpl.elements() {
                if paused.remove(&PartitionKey::new(e.topic(), e.partition())) {
                    resume.add_partition(e.topic(), e.partition());
                }
            }
        }
        if resume.count() > 0 {
            if let Err(error) = consumer.resume(&resume) {
                tracing::warn!(error_code = "RESUME_FAILED", %error, "cannot resume the assigned partitions");
            }
        }
    }

    /// The group's committed offsets for `tpl`, in requests of [`LOOKUP_CHUNK`] partitions, each retried as
    /// [`StartLookup`] says.
    fn committed_offsets(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
        deadline: Instant,
    ) -> KafkaResult<Vec<Committed>> {
        let elements = tpl.elements();
        let mut out = Vec::with_capacity(elements.len());
        for chunk in elements.chunks(LOOKUP_CHUNK) {
            let mut request = TopicPartitionList::with_capacity(chunk.len());
            for e in chunk {
                request.add_partition(e.topic(), e.partition());
            }
            let mut attempt = 0;
            let list = loop {
                let result = consumer.committed_offsets(request.clone(), StartLookup::call_timeout(deadline));
                attempt += 1;
                match (result, self.start_lookup.wait_before(attempt, deadline)) {
                    (Err(error), Some(wait)) => {
                        tracing::warn!(error_code = "COMMITTED_OFFSETS_RETRY", %error, attempt, "reading committed offsets failed; retrying");
                        std::thread::sleep(wait);
                    }
                    (result, _) => break result?,
                }
            };
            out.extend(list.elements().iter().map(|e| Committed {
                topic: e.topic().to_string(),
                partition: e.partition(),
                offset: e.offset(),
                metadata: e.metadata().to_string(),
            }));
            // librdkafka hangs destroying a consumer while a list it returned is alive.
            drop(list);
        }
        Ok(out)
    }

    /// `ListOffsets` for `query` (offsets are timestamps, or -1 for the log end), retried with backoff for
    /// the partitions that failed. Returns the partitions resolved (`None`: no record at or after the
    /// timestamp) and those still failing, each with a sentence naming the last error.
    #[allow(clippy::type_complexity)]
    fn list_offsets(
        &self,
        consumer: &BaseConsumer<Self>,
        query: &TopicPartitionList,
        deadline: Instant,
    ) -> (Vec<((String, i32), Option<i64>)>, BTreeMap<(String, i32), String>) {
        let mut pending: BTreeMap<(String, i32), Offset> =
            query.elements().iter().map(|e| ((e.topic().to_string(), e.partition()), e.offset())).collect();
        let mut resolved = Vec::new();
        let mut errors: BTreeMap<(String, i32), String> = BTreeMap::new();
        let mut attempt = 0;
        while !pending.is_empty() {
            let Some(wait) = self.start_lookup.wait_before(attempt, deadline) else {
                break;
            };
            if attempt > 0 {
                tracing::warn!(
                    error_code = "LIST_OFFSETS_RETRY",
                    partitions = pending.len(),
                    attempt,
                    "retrying the starting-offset lookup"
                );
                std::thread::sleep(wait);
            }
            attempt += 1;
            let keys: Vec<((String, i32), Offset)> = pending.iter().map(|(k, o)| (k.clone(), *o)).collect();
            for chunk in keys.chunks(LOOKUP_CHUNK) {
                if Instant::now() >= deadline {
                    for (key, _) in chunk {
                        errors.entry(key.clone()).or_insert_with(|| "the lookup ran out of time (the run's deadline or the lookup's budget came first)".into());
                    }
                    continue;
                }
                let request = partition_list(chunk.iter().map(|((topic, partition), offset)| (topic.as_str(), *partition, *offset)));
                match consumer.offsets_for_times(request, StartLookup::call_timeout(deadline)) {
                    Ok(found) => {
                        for e in found.elements() {
                            let key = (e.topic().to_string(), e.partition());
                            match e.error() {
                                Ok(()) if pending.remove(&key).is_some() => {
                                    let offset = match e.offset() {
                                        Offset::Offset(n) if n >= 0 => Some(n),
                                        _ => None,
                                    };
                                    resolved.push((key, offset));
                                }
                                Ok(()) => {}
                                Err(error) => {
                                    errors.insert(key, error.to_string());
                                }
                            }
                        }
                    }
                    Err(error) => {
                        for (key, _) in chunk {
                            errors.insert(key.clone(), error.to_string());
                        }
                    }
                }
            }
        }
        let failed = pending
            .into_keys()
            .map(|key| {
                let error = errors.remove(&key).unwrap_or_else(|| "no answer for the partition".into());
                (key, format!("LIST_OFFSETS_FAILED: the starting offset lookup failed {attempt} time(s): {error}"))
            })
            .collect();
        (resolved, failed)
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
        let offsets: BTreeMap<PartitionKey, (i64, String)> = {
            let mut committable = self.committable.lock().expect("committable lock");
            revoked.iter().filter_map(|key| Some((key.clone(), committable.remove(key)?))).collect()
        };
        if !offsets.is_empty() {
            if let Err(error) = commit(consumer, &offsets) {
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
    /// MSK IAM mappings authenticate with SASL/OAUTHBEARER (tokens from [`crate::auth::msk`]).
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        oauthbearer_config: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        self.diagnosing.generate_oauth_token(oauthbearer_config)
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.diagnosing.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(rdkafka::error::RDKafkaErrorCode::PartitionEOF)) {
            // Reaching the end of a partition is how idleness is noticed, not an error.
            return;
        }
        self.client_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.diagnosing.error(error, reason);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        if let Some((state, join_state)) = group_state(statistics) {
            self.rebalancing.store(rebalancing(state, join_state), Ordering::Relaxed);
        }
    }
}

/// The consumer group's `state` and `join_state` in librdkafka's statistics JSON (without parsing the whole
/// document, which lists every partition). librdkafka writes the `cgrp` object after `topics`, so it is
/// searched from the end: a search from the start read megabytes every second over 20,000 partitions (issue
/// 13), and could stop at a topic named `cgrp`.
fn group_state(statistics: &[u8]) -> Option<(&[u8], &[u8])> {
    const GROUP: &[u8] = b"\"cgrp\"";
    let at = statistics.windows(GROUP.len()).rposition(|w| w == GROUP)?;
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

/// The longest time between a member's heartbeats. A member learns that its group is rebalancing only from
/// a heartbeat's answer: with heartbeats every third of the default 10 s session, a continuous run's
/// successor (or a new worker) would learn of its predecessor's LeaveGroup up to 3.3 s late, and the
/// cooperative-sticky protocol needs two rounds when partitions move between live members. One heartbeat a
/// second per member is a negligible load on the group coordinator.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// The librdkafka settings of a mapping's consumer, before authentication settings are added.
///
/// `session_timeout` bounds how long the next run waits for partitions when this one could not leave the
/// group cleanly (a killed Lambda); heartbeats go every third of it, at most [`HEARTBEAT_INTERVAL`] apart.
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
        // per process) decides what is buffered; librdkafka keeps a bounded prefetch per consumer.
        .set("fetch.wait.max.ms", "100")
        .set("fetch.queue.backoff.ms", "5")
        .set("queued.max.messages.kbytes", "16384")
        .set("queued.min.messages", "10000")
        // One fetch response is bounded too (the default is 50 MB), so memory follows the budget. Not
        // lower: with 8 MB, tansu 0.6.0 stopped answering fetches once the prefetch queue had filled.
        .set("fetch.max.bytes", "16777216")
        .set("socket.keepalive.enable", "true")
        // Several relays (workers) may share the group: a member joining or leaving moves only the
        // partitions that change hands, and the others keep consuming meanwhile.
        .set("partition.assignment.strategy", "cooperative-sticky")
        // The group's join state (is a rebalance under way?) comes with the statistics.
        .set("statistics.interval.ms", "1000")
        .set("session.timeout.ms", session_timeout.as_millis().to_string())
        .set("heartbeat.interval.ms", (session_timeout / 3).min(HEARTBEAT_INTERVAL).as_millis().max(100).to_string());
    // For measurements: librdkafka settings to try instead (comma-separated key=value).
    if let Ok(overrides) = std::env::var("RELAY_LIBRDKAFKA_OVERRIDES") {
        for (key, value) in overrides.split(',').filter_map(|pair| pair.split_once('=')) {
            config.set(key.trim(), value.trim());
        }
    }
    config
}

/// Creates the consumer and subscribes to `topics`.
///
/// An MSK IAM mapping's first OAUTHBEARER token is set before subscribing, so the first connection can
/// authenticate before anything polls the consumer.
pub fn subscribe(config: &ClientConfig, context: RelayContext, topics: &[String]) -> KafkaResult<RelayConsumer> {
    let consumer: RelayConsumer = config.create_with_context(context)?;
    if let Err(error) = crate::auth::msk::set_initial_token(consumer.client(), consumer.context().diagnostics().msk_iam()) {
        // librdkafka asks again through generate_oauth_token; the diagnostics name a lasting failure.
        tracing::warn!(error_code = error.code.as_str(), sentence = %error.sentence, "first MSK IAM token not set");
    }
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
        let result = commit(&*consumer, &offsets);
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

/// A partition list of `(topic, partition, offset)`, built in one pass. rdkafka's `add_partition_offset`
/// searches the list for the partition it has just added, so a list of n partitions built that way costs
/// n² comparisons: seconds at 20,000 partitions, inside the rebalance callback (issue 13).
pub fn partition_list<'a>(partitions: impl IntoIterator<Item = (&'a str, i32, Offset)>) -> TopicPartitionList {
    let partitions = partitions.into_iter();
    let mut list = TopicPartitionList::with_capacity(partitions.size_hint().0.max(1));
    for (topic, partition, offset) in partitions {
        // Only `Offset::OffsetTail` has no raw form; no caller passes one.
        let _ = list.add_partition(topic, partition).set_offset(offset);
    }
    list
}

/// Sets the offsets of `tpl`'s partitions found in `offsets`, in one pass over the list (setting them one by
/// one with `set_partition_offset` searches the list each time: n² comparisons, see [`partition_list`]).
fn set_offsets(tpl: &TopicPartitionList, offsets: &HashMap<(String, i32), Offset>) {
    if offsets.is_empty() {
        return;
    }
    for mut element in tpl.elements() {
        if let Some(offset) = offsets.get(&(element.topic().to_string(), element.partition())) {
            let _ = element.set_offset(*offset);
        }
    }
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

/// Partitions per `OffsetCommit` request: librdkafka matches a commit's answer against its request one
/// partition at a time too (see [`LOOKUP_CHUNK`]); 20,000 offsets in one request took 1.4 s on the mock.
pub const COMMIT_CHUNK: usize = 2000;

/// Commits `offsets` (partition → (offset, metadata)) synchronously, in requests of [`COMMIT_CHUNK`]
/// partitions. Nothing to commit is success; the first error is returned, and the caller offers all of
/// `offsets` again (committing an offset the group already holds changes nothing).
pub fn commit<C: Consumer<RelayContext>>(consumer: &C, offsets: &BTreeMap<PartitionKey, (i64, String)>) -> KafkaResult<()> {
    let mut result = Ok(());
    let entries: Vec<(&PartitionKey, &(i64, String))> = offsets.iter().collect();
    for chunk in entries.chunks(COMMIT_CHUNK) {
        let chunk: BTreeMap<PartitionKey, (i64, String)> = chunk.iter().map(|(k, v)| ((*k).clone(), (*v).clone())).collect();
        match consumer.commit(&offset_list(&chunk)?, CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(rdkafka::error::RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => result = result.and(Err(error)),
        }
    }
    result
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

/// librdkafka's position of each of `keys` (the next offset it hands out), in order; `None` where it has
/// none yet. One call for all of them, unlike `Consumer::position`, which copies the whole assignment.
pub fn positions<'a>(consumer: &RelayConsumer, keys: impl IntoIterator<Item = &'a PartitionKey>) -> Vec<Option<i64>> {
    let list = partition_list(keys.into_iter().map(|key| (&*key.topic, key.partition, Offset::Invalid)));
    // SAFETY: the handle and the list are alive for the duration of the call, which only writes the list's
    // offsets and errors.
    let err = unsafe { rdkafka::bindings::rd_kafka_position(consumer.client().native_ptr(), list.ptr()) };
    if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        return vec![None; list.count()];
    }
    list.elements().iter().map(|e| e.error().ok().and(e.offset().to_raw()).filter(|o| *o >= 0)).collect()
}

/// Pauses (`pause` true) or resumes `keys` in one librdkafka call, remembering which are paused so an
/// assignment resumes them (see [`RelayContext`]). librdkafka serves a pause or resume one partition at a
/// time on its threads and the call waits for all of them, so callers pass only partitions whose state
/// changes.
pub fn pause_resume(consumer: &RelayConsumer, keys: &[PartitionKey], pause: bool) -> KafkaResult<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::with_capacity(keys.len());
    for key in keys {
        tpl.add_partition(&key.topic, key.partition);
    }
    {
        let mut paused = consumer.context().paused.lock().expect("paused lock");
        for key in keys {
            if pause {
                paused.insert(key.clone());
            } else {
                paused.remove(key);
            }
        }
    }
    if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    }
}

/// Partitions per `ListOffsets` request of [`log_bounds`] (see [`LOOKUP_CHUNK`]).
pub const LOG_BOUNDS_CHUNK: usize = LOOKUP_CHUNK;

/// The log bounds of partitions nothing was fetched from yet, looked up in `ListOffsets` requests of
/// [`LOG_BOUNDS_CHUNK`] partitions (never one round trip per partition): per partition its high watermark
/// (the log end) and, for those in `keys` with `true`, its low watermark (the log start) too. Lookups stop at
/// `by`; partitions not answered by then are left out.
pub fn log_bounds(consumer: &RelayConsumer, keys: &[(PartitionKey, bool)], by: Instant) -> BTreeMap<PartitionKey, LogBounds> {
    let mut bounds: BTreeMap<PartitionKey, LogBounds> = BTreeMap::new();
    let ends: Vec<&PartitionKey> = keys.iter().map(|(key, _)| key).collect();
    let starts: Vec<&PartitionKey> = keys.iter().filter(|(_, low)| *low).map(|(key, _)| key).collect();
    // One end per request, so no request names a partition twice.
    let requests = ends.chunks(LOG_BOUNDS_CHUNK).map(|c| (c, Offset::End)).chain(starts.chunks(LOG_BOUNDS_CHUNK).map(|c| (c, Offset::Beginning)));
    for (chunk, end) in requests {
        let left = by.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let request = partition_list(chunk.iter().map(|key| (&*key.topic, key.partition, end)));
        let Ok(found) = consumer.offsets_for_times(request, left) else { continue };
        for e in found.elements() {
            let (Ok(()), Offset::Offset(n)) = (e.error(), e.offset()) else { continue };
            let entry = bounds.entry(PartitionKey::new(e.topic(), e.partition())).or_default();
            match end {
                Offset::End => entry.high = Some(n),
                _ => entry.low = Some(n),
            }
        }
        // librdkafka hangs destroying a consumer while a list it returned is alive.
        drop(found);
    }
    bounds
}

/// What [`log_bounds`] found for one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogBounds {
    /// The log start offset (asked only for partitions without any offset to compare with).
    pub low: Option<i64>,
    /// The log end offset (the high watermark).
    pub high: Option<i64>,
}

/// The `PROBLEM` sentence for assigned partitions whose starting position could not be resolved, or `None`
/// when every start is known. Those partitions were not consumed: nothing of them was skipped, and the next
/// run (or a rebalance) tries again.
pub fn unresolved_start_problem(assigned: &[AssignedPartition]) -> Option<String> {
    let unresolved: Vec<&AssignedPartition> = assigned.iter().filter(|a| a.unresolved_start.is_some()).collect();
    let first = unresolved.first()?;
    let mut names: Vec<String> = unresolved.iter().take(5).map(|a| a.key.to_string()).collect();
    if unresolved.len() > names.len() {
        names.push(format!("and {} more", unresolved.len() - names.len()));
    }
    Some(format!(
        "the starting position of {} partition(s) ({}) could not be resolved ({}); they were not consumed, so nothing was skipped, and the next run tries again",
        unresolved.len(),
        names.join(", "),
        first.unresolved_start.as_deref().unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::RDKafkaErrorCode as Code;

    /// A member hears of a rebalance (a successor joining, a predecessor leaving) within a second, whatever
    /// the session; short sessions keep their third.
    #[test]
    fn heartbeats_go_every_third_of_the_session_and_at_least_every_second() {
        let heartbeat = |session: Duration| {
            let config = consumer_config("b:9092", "g", StartingPosition::Latest, session);
            config.get("heartbeat.interval.ms").map(str::to_owned)
        };
        assert_eq!(heartbeat(Duration::from_secs(10)).as_deref(), Some("1000"));
        assert_eq!(heartbeat(Duration::from_secs(45)).as_deref(), Some("1000"));
        assert_eq!(heartbeat(Duration::from_millis(1500)).as_deref(), Some("500"));
        assert_eq!(heartbeat(Duration::from_millis(150)).as_deref(), Some("100"));
    }

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
        // The group's object comes after `topics`, where a topic may be named "cgrp" too.
        let stats = br#"{"topics":{"cgrp":{"topic":"cgrp","state":"x","join_state":"y"}}, "cgrp": {"state":"up","join_state":"steady"}}"#;
        assert_eq!(group_state(stats), Some((&b"up"[..], &b"steady"[..])));
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

    fn partition(p: i32, unresolved: Option<&str>) -> AssignedPartition {
        AssignedPartition {
            key: PartitionKey::new("orders", p),
            committed: None,
            retry: None,
            start: unresolved.is_none().then_some(10),
            unresolved_start: unresolved.map(str::to_string),
        }
    }

    #[test]
    fn unresolved_starts_make_one_problem_sentence_naming_the_partitions() {
        assert_eq!(unresolved_start_problem(&[partition(0, None)]), None);
        let reason = "LIST_OFFSETS_FAILED: the starting offset lookup failed 5 time(s): Broker: Unknown topic or partition";
        let assigned: Vec<AssignedPartition> =
            (0..8).map(|p| partition(p, (p != 1).then_some(reason))).collect();
        assert_eq!(
            unresolved_start_problem(&assigned).as_deref(),
            Some(
                "the starting position of 7 partition(s) (orders-0, orders-2, orders-3, orders-4, orders-5, and 2 more) could not be resolved (LIST_OFFSETS_FAILED: the starting offset lookup failed 5 time(s): Broker: Unknown topic or partition); they were not consumed, so nothing was skipped, and the next run tries again"
            )
        );
    }

    #[test]
    fn start_lookup_backs_off_doubling_within_its_budget() {
        let lookup = StartLookup { attempts: 4, initial_backoff: Duration::from_millis(100), budget: Duration::from_secs(60) };
        let deadline = Instant::now() + lookup.budget;
        let waits: Vec<Option<Duration>> = (0..5).map(|a| lookup.wait_before(a, deadline)).collect();
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(waits, vec![ms(0), ms(100), ms(200), ms(400), None]);
        // A wait that would end past the deadline is not taken.
        assert_eq!(lookup.wait_before(3, Instant::now() + Duration::from_millis(300)), None);
    }
}
