//! The per-partition ledger of one mapping's run: one map from partition to everything the run knows about
//! it (queue, offset tracker, retry state, pause state, the job holding it, counters).
//!
//! Its methods are synchronous and do no I/O: what must happen on the consumer (pause, resume) is queued
//! as [`Effect`]s for the driver, and commits are offered as data ([`Ledger::commit_due`]). The rules it
//! enforces:
//! - **an offset is committed only after every earlier record of its partition was delivered, filtered
//!   out, or handed to the failure destination** (through [`OffsetTracker`]), and never for a partition
//!   this consumer no longer owns;
//! - a partition is in at most one job at a time, also across a revoke and a re-assignment in the same run
//!   (it stays busy until the job that held it ends), so its records are never in two invocations at once
//!   and are delivered in order;
//! - flow control is by bytes: the process's buffer budget counts queued records and batches being
//!   delivered (with their encoded event); when it is spent the driver stops taking records from librdkafka
//!   (whose own prefetch limit then stops fetching); a single partition is paused only when its queue holds
//!   a quarter of the budget (at least two full events' worth, see `partition_cap`), and resumed under half.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::batch::{Batcher, Formed, PartitionQueue};
use crate::commit::{OffsetTracker, RetryState};
use crate::destination::ResponseContext;
use crate::kafka::consumer::AssignedPartition;
use crate::kafka::{PartitionKey, Record};
use crate::metrics::{Blocked, Counts, PartitionReport};
use crate::outcome::Attempts;

use super::delivery::Notice;

/// Identifies a delivery job within a run.
pub type JobId = u64;

/// Something the driver must do on the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Stop fetching this partition.
    Pause(PartitionKey),
    /// Fetch this partition again.
    Resume(PartitionKey),
}

/// Bytes of records held in memory by every mapping of the process (queued or in a job), against a limit.
#[derive(Debug)]
pub struct MemoryBudget {
    used: AtomicUsize,
    limit: usize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { used: AtomicUsize::new(0), limit })
    }

    /// Bytes in use.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// The limit is reached: the driver stops taking records from librdkafka (whose own prefetch limit then
    /// stops its fetching), rather than pausing partitions, which would drop what librdkafka prefetched.
    pub fn spent(&self) -> bool {
        self.used() >= self.limit
    }

    fn comfortable(&self) -> bool {
        self.used() < self.limit / 4 * 3
    }

    /// Charges `bytes` until the returned guard is dropped.
    pub fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        self.take(bytes);
        Charge { budget: self.clone(), bytes }
    }
}

/// Memory a job holds; given back when the job ends.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// A batch the driver should start as a job.
#[derive(Debug)]
pub struct Start {
    /// The job's id: its notices name it.
    pub job: JobId,
    /// The records (or an oversized one).
    pub formed: Formed,
    /// Attempts an earlier run made on the batch starting at one of its records.
    pub attempts: Attempts,
    /// The last response an earlier run saw, for the failure record.
    pub response: Option<ResponseContext>,
    /// The memory the records hold, until the job ends.
    pub charge: Charge,
}

#[derive(Debug, Default)]
struct Partition {
    queue: PartitionQueue,
    /// Memory of the queued records (charged to the budget).
    queued_memory: usize,
    tracker: OffsetTracker,
    retry: Option<RetryState>,
    blocked: Option<Blocked>,
    /// What the driver last asked librdkafka for.
    paused: bool,
    /// False once revoked; the entry stays while a job still holds the partition.
    assigned: bool,
    /// Incremented by each assignment: notices of a job that started under an earlier one are ignored.
    generation: u64,
    /// The job holding the partition, and the generation it started under.
    job: Option<(JobId, u64)>,
    /// The offset the group holds (its own at assignment, then this run's successful commits).
    committed: Option<i64>,
    /// The commit sent and not yet answered, or the last one answered: (offset, metadata).
    commit_sent: Option<(i64, String)>,
    /// Records done and contiguous when that commit was sent.
    records_at_sent: u64,
    /// Records done and contiguous when the last successful commit was sent.
    committed_records: u64,
    polled: u64,
    delivered: u64,
    failed: u64,
    done: u64,
}

impl Partition {
    fn owns(&self, job: JobId) -> bool {
        self.assigned && self.job == Some((job, self.generation))
    }

    fn committable(&self) -> Option<(i64, String)> {
        let offset = self.tracker.committable()?;
        let metadata = self.retry.as_ref().filter(|r| r.offset == offset).map(RetryState::encode).unwrap_or_default();
        Some((offset, metadata))
    }
}

/// The ledger of one mapping's run.
pub struct Ledger {
    partitions: BTreeMap<PartitionKey, Partition>,
    batcher: Batcher,
    budget: Arc<MemoryBudget>,
    effects: Vec<Effect>,
    /// Partitions paused by flow control.
    paused: usize,
    next_job: JobId,
    /// Event counts of the run.
    pub counts: Counts,
}

impl Ledger {
    /// An empty ledger batching by `batcher`'s rules, buffering within `budget`.
    pub fn new(batcher: Batcher, budget: Arc<MemoryBudget>) -> Self {
        Self { partitions: BTreeMap::new(), batcher, budget, effects: Vec::new(), paused: 0, next_job: 0, counts: Counts::default() }
    }

    /// Effects queued since the last call, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// The partition was assigned to this consumer (again, maybe). The driver resumes it in librdkafka
    /// on assignment, so it starts unpaused here too.
    pub fn assigned(&mut self, assigned: AssignedPartition) {
        let entry = self.partitions.entry(assigned.key.clone()).or_default();
        entry.queue.clear();
        self.budget.give_back(entry.queued_memory);
        if entry.paused {
            self.paused -= 1;
        }
        let generation = entry.generation + 1;
        let busy = entry.job.is_some();
        *entry = Partition {
            tracker: OffsetTracker::new(assigned.committed.or(assigned.start)),
            committed: assigned.committed,
            retry: assigned.retry,
            assigned: true,
            generation,
            // A job of an earlier assignment keeps the partition busy until it ends.
            job: entry.job,
            ..Partition::default()
        };
        entry.queue.busy = busy;
    }

    /// The partition was taken away (its committable offset was committed by the consumer first). Its
    /// queue is dropped; a job still holding it finishes, but its acknowledgements no longer count.
    pub fn revoked(&mut self, key: &PartitionKey) {
        let Some(partition) = self.partitions.get_mut(key) else { return };
        partition.queue.clear();
        self.budget.give_back(partition.queued_memory);
        partition.queued_memory = 0;
        partition.assigned = false;
        if partition.paused {
            partition.paused = false;
            self.paused -= 1;
        }
        if partition.job.is_none() {
            self.partitions.remove(key);
        }
    }

    /// How many partitions are assigned.
    pub fn assigned_count(&self) -> usize {
        self.partitions.values().filter(|p| p.assigned).count()
    }

    /// Whether any partition is assigned.
    pub fn has_partitions(&self) -> bool {
        self.partitions.values().any(|p| p.assigned)
    }

    /// A polled record: filtered out (`keep` false: done at once) or queued. Records of partitions this
    /// consumer does not own are ignored (a poll can return them right after a revoke).
    pub fn accept(&mut self, record: Record, keep: bool, now: Instant) {
        let Some(partition) = self.partitions.get_mut(&record.key_partition).filter(|p| p.assigned) else { return };
        partition.tracker.fetched(record.offset);
        partition.polled += 1;
        self.counts.polled += 1;
        if !keep {
            partition.tracker.done(record.offset);
            partition.done += 1;
            self.counts.filtered_out += 1;
            return;
        }
        // Queued records hold their bytes only; the event encoding exists once a batch is being delivered.
        let memory = record.memory_len();
        partition.queued_memory += memory;
        self.budget.take(memory);
        let key = record.key_partition.clone();
        partition.queue.push(now, record);
        if !partition.paused && full(partition.queued_memory, &partition.queue, &self.batcher, &self.budget) {
            partition.paused = true;
            self.paused += 1;
            self.effects.push(Effect::Pause(key));
        }
    }

    /// Resumes paused partitions that have room again (their queue under half of full, and the budget
    /// under three quarters).
    pub fn resume_where_room(&mut self) {
        if self.paused == 0 || !self.budget.comfortable() {
            return;
        }
        for (key, partition) in &mut self.partitions {
            if partition.paused && half_empty(partition.queued_memory, &partition.queue, &self.batcher, &self.budget) {
                partition.paused = false;
                self.paused -= 1;
                self.effects.push(Effect::Resume(key.clone()));
            }
        }
    }

    /// When the next batching window closes, if a record waits for one.
    pub fn next_window(&self) -> Option<Instant> {
        self.batcher.next_deadline(self.partitions.values().map(|p| &p.queue))
    }

    /// The next batch due at `now` (or whatever is buffered with `flush`), marking its partitions busy
    /// and carrying over attempts an earlier run recorded for its first records.
    pub fn next_batch(&mut self, now: Instant, flush: bool) -> Option<Start> {
        let formed = self.batcher.next(self.partitions.values_mut().map(|p| &mut p.queue), now, flush)?;
        let job = self.next_job;
        self.next_job += 1;
        let mut attempts = Attempts::default();
        let mut response = None;
        let queued: usize = formed.records().iter().map(Record::memory_len).sum();
        // In delivery a batch also holds its encoded event.
        let memory = queued + formed.records().iter().map(Record::encoded_len).sum::<usize>();
        for key in super::delivery::partitions_of(formed.records()) {
            let partition = self.partitions.get_mut(&key).expect("batched records come from known partitions");
            partition.queue.busy = true;
            partition.job = Some((job, partition.generation));
            let first = formed.records().iter().find(|r| r.key_partition == key).map(|r| r.offset);
            if let Some(retry) = partition.retry.take() {
                if first == Some(retry.offset) {
                    attempts.failed = attempts.failed.max(retry.attempts);
                    attempts.invoked = attempts.invoked.max(retry.attempts);
                    response = response.or(retry.response);
                } else {
                    partition.retry = Some(retry);
                }
            }
            let in_batch: usize = formed.records().iter().filter(|r| r.key_partition == key).map(Record::memory_len).sum();
            partition.queued_memory = partition.queued_memory.saturating_sub(in_batch);
        }
        // The memory moves from the queues to the job (given back when the job ends).
        self.budget.give_back(queued);
        let charge = self.budget.charge(memory);
        self.resume_where_room();
        Some(Start { job, formed, attempts, response, charge })
    }

    /// A job continues a retry of `key` in a new job: the partition moves to it.
    pub fn continued(&mut self, from: JobId, key: &PartitionKey) -> Option<JobId> {
        let partition = self.partitions.get_mut(key)?;
        if partition.job.map(|(job, _)| job) != Some(from) {
            return None;
        }
        let job = self.next_job;
        self.next_job += 1;
        partition.job = Some((job, partition.job.expect("checked").1));
        Some(job)
    }

    /// Applies what job `job` reports.
    pub fn apply(&mut self, job: JobId, notice: &Notice) {
        match notice {
            Notice::Delivered(records) => {
                self.counts.delivered += records.len() as u64;
                for (key, offset) in records {
                    if let Some(p) = self.partitions.get_mut(key).filter(|p| p.owns(job)) {
                        p.tracker.done(*offset);
                        p.delivered += 1;
                        p.done += 1;
                        p.blocked = None;
                    }
                }
            }
            Notice::GivenUp { records, to_destination } => {
                if *to_destination {
                    self.counts.sent_to_destination += records.len() as u64;
                } else {
                    self.counts.dropped += records.len() as u64;
                }
                for (key, offset) in records {
                    if let Some(p) = self.partitions.get_mut(key).filter(|p| p.owns(job)) {
                        p.tracker.done(*offset);
                        p.failed += 1;
                        p.done += 1;
                        p.blocked = None;
                    }
                }
            }
            Notice::Invoked { failed, .. } => {
                self.counts.invocations += 1;
                self.counts.failed_invocations += u64::from(*failed);
            }
            Notice::NotAttempted { .. } | Notice::Continue { .. } => {}
            Notice::Blocked { key, offset, reason } => {
                if let Some(p) = self.partitions.get_mut(key).filter(|p| p.owns(job)) {
                    p.blocked = Some(Blocked { offset: *offset, reason: reason.clone() });
                }
            }
            Notice::Unfinished { first, response } => {
                for (key, offset, attempts) in first {
                    if let Some(p) = self.partitions.get_mut(key).filter(|p| p.owns(job)) {
                        if *attempts > 0 {
                            p.retry = Some(RetryState::new(*offset, *attempts).with_response(response.clone()));
                        }
                    }
                }
            }
        }
    }

    /// Job `job` ended: the partitions it still held are free (revoked ones are forgotten now).
    pub fn finished(&mut self, job: JobId, held: &[PartitionKey]) {
        for key in held {
            let Some(partition) = self.partitions.get_mut(key) else { continue };
            if partition.job.map(|(j, _)| j) != Some(job) {
                continue;
            }
            partition.job = None;
            partition.queue.busy = false;
            if !partition.assigned {
                self.partitions.remove(key);
            }
        }
    }

    /// Per assigned partition, the offset and metadata a commit would write now: every record before the
    /// offset is done; the metadata carries retry state for the record at the offset.
    pub fn committable(&self) -> BTreeMap<PartitionKey, (i64, String)> {
        self.partitions
            .iter()
            .filter(|(_, p)| p.assigned)
            .filter_map(|(key, p)| Some((key.clone(), p.committable()?)))
            .collect()
    }

    /// [`Ledger::committable`] of one partition.
    pub fn committable_of(&self, key: &PartitionKey) -> Option<(i64, String)> {
        self.partitions.get(key).filter(|p| p.assigned)?.committable()
    }

    /// What changed since the last commit sent (none when nothing did), marked as sent.
    pub fn commit_due(&mut self) -> BTreeMap<PartitionKey, (i64, String)> {
        let due: BTreeMap<_, _> = self
            .committable()
            .into_iter()
            .filter(|(key, value)| {
                let p = &self.partitions[key];
                p.commit_sent.as_ref() != Some(value) && (p.committed != Some(value.0) || !value.1.is_empty())
            })
            .collect();
        for (key, value) in &due {
            let p = self.partitions.get_mut(key).expect("due partitions exist");
            p.commit_sent = Some(value.clone());
            p.records_at_sent = p.done - p.tracker.done_pending() as u64;
        }
        due
    }

    /// The group took these offsets.
    pub fn committed(&mut self, offsets: &BTreeMap<PartitionKey, i64>) {
        for (key, offset) in offsets {
            if let Some(p) = self.partitions.get_mut(key).filter(|p| p.assigned) {
                p.committed = Some(*offset);
                p.committed_records = p.records_at_sent;
            }
        }
    }

    /// The group refused these offsets: they are offered again by the next [`Ledger::commit_due`].
    pub fn commit_failed(&mut self, keys: impl IntoIterator<Item = PartitionKey>) {
        for key in keys {
            if let Some(p) = self.partitions.get_mut(&key) {
                p.commit_sent = None;
            }
        }
    }

    /// Nothing queued, in a job, or fetched and not done: the run can end without losing its place.
    pub fn is_idle(&self) -> bool {
        self.partitions.values().all(|p| p.queue.is_empty() && p.job.is_none() && p.tracker.outstanding() == 0)
    }

    /// The local position of each assigned partition: the committable offset (the next record to deliver).
    pub fn positions(&self) -> BTreeMap<PartitionKey, Option<i64>> {
        self.positions_after(None).map(|(k, position)| (k.clone(), position)).collect()
    }

    /// [`Ledger::positions`] of the assigned partitions after `after` (all of them for `None`), in order, without
    /// copying the whole map (the idle check reads them a slice at a time).
    pub fn positions_after(&self, after: Option<PartitionKey>) -> impl Iterator<Item = (&PartitionKey, Option<i64>)> {
        let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        self.partitions
            .range((from, std::ops::Bound::Unbounded))
            .filter(|(_, p)| p.assigned)
            .map(|(k, p)| (k, p.tracker.committable()))
    }

    /// Per assigned partition, the report entry, given each partition's high watermark.
    pub fn partition_reports(&self, high: impl Fn(&PartitionKey) -> Option<i64>) -> Vec<PartitionReport> {
        self.partitions
            .iter()
            .filter(|(_, p)| p.assigned)
            .map(|(key, p)| {
                let lag = match (high(key), p.committed) {
                    (Some(high), Some(c)) => Some((high - c).max(0)),
                    (Some(high), None) => Some(high),
                    _ => None,
                };
                PartitionReport {
                    topic: key.topic.to_string(),
                    partition: key.partition,
                    polled: p.polled,
                    delivered: p.delivered,
                    failed: p.failed,
                    committed_offset: p.committed,
                    lag,
                    blocked: p.blocked.clone(),
                }
            })
            .collect()
    }

    /// Records whose offsets the group holds as committed by this run.
    pub fn committed_records(&self) -> u64 {
        self.partitions.values().filter(|p| p.assigned).map(|p| p.committed_records).sum()
    }

    /// The first blocked partition, for the report's sentence.
    pub fn first_blocked(&self) -> Option<(PartitionKey, Blocked)> {
        self.partitions.iter().find_map(|(k, p)| p.blocked.clone().filter(|_| p.assigned).map(|b| (k.clone(), b)))
    }
}

/// The share of the process's buffer budget one partition may fill before it is paused.
const PARTITION_SHARE_OF_BUDGET: usize = 4;

/// What a partition may buffer before it is paused: a quarter of the process's budget, and never less than
/// two full events' worth.
///
/// Why a share of the budget and not a number of records: pausing makes librdkafka drop everything it
/// prefetched for the partition and fetch it again on resume (a round trip, and records re-read), and
/// librdkafka hands a busy topic over in large per-partition chunks. A small per-partition cap (it was
/// 10,000 records) paused and purged partitions dozens of times a run, so only the few partitions whose
/// chunk had arrived could be invoked (measured: 3-4 of 16 in flight at BatchSize 100). The process-wide
/// budget is the brake (a spent budget stops intake without dropping anything); this cap only keeps one
/// partition from taking all of it.
fn partition_cap(batcher: &Batcher, budget: &MemoryBudget) -> usize {
    (budget.limit / PARTITION_SHARE_OF_BUDGET).max(2 * batcher.max_payload)
}

/// A partition's queue holds its share of the budget (memory, or encoded bytes for very large events).
fn full(queued_memory: usize, queue: &PartitionQueue, batcher: &Batcher, budget: &MemoryBudget) -> bool {
    let cap = partition_cap(batcher, budget);
    queued_memory >= cap || queue.bytes() >= cap
}

/// Under half of [`full`] on both counts.
fn half_empty(queued_memory: usize, queue: &PartitionQueue, batcher: &Batcher, budget: &MemoryBudget) -> bool {
    let cap = partition_cap(batcher, budget);
    queued_memory < cap / 2 && queue.bytes() < cap / 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventSource;
    use crate::kafka::TimestampType;
    use std::time::Duration;

    fn key(p: i32) -> PartitionKey {
        PartitionKey::new("t", p)
    }

    fn ledger(batch_size: usize) -> Ledger {
        let batcher = Batcher {
            batch_size,
            window: Duration::ZERO,
            source: EventSource { event_source: "SelfManagedKafka".into(), event_source_arn: None, bootstrap_servers: "b:1".into() },
            max_payload: crate::config::MAX_PAYLOAD_BYTES,
        };
        Ledger::new(batcher, MemoryBudget::new(64 << 20))
    }

    fn assign(l: &mut Ledger, p: i32, committed: Option<i64>) {
        l.assigned(AssignedPartition { key: key(p), committed, retry: None, start: None, unresolved_start: None });
    }

    fn record(p: i32, offset: i64) -> Record {
        Record::new(key(p), offset, 0, TimestampType::CreateTime, None, Some(vec![1; 10]), Vec::new())
    }

    fn poll(l: &mut Ledger, p: i32, offsets: std::ops::Range<i64>) {
        for o in offsets {
            l.accept(record(p, o), true, Instant::now());
        }
    }

    fn committable(l: &Ledger, p: i32) -> Option<i64> {
        l.committable().get(&key(p)).map(|(o, _)| *o)
    }

    #[test]
    fn an_offset_is_committable_only_once_every_earlier_record_is_done() {
        // (acknowledged by the job, committable offset afterwards)
        let table: [(Notice, Option<i64>); 4] = [
            (Notice::Delivered(vec![(key(0), 12)]), Some(10)),
            (Notice::GivenUp { records: vec![(key(0), 10)], to_destination: true }, Some(11)),
            (Notice::Invoked { failed: true, reason: None }, Some(11)),
            (Notice::GivenUp { records: vec![(key(0), 11)], to_destination: false }, Some(13)),
        ];
        let mut l = ledger(10);
        assign(&mut l, 0, Some(10));
        poll(&mut l, 0, 10..13);
        let start = l.next_batch(Instant::now(), false).expect("a batch");
        assert_eq!(committable(&l, 0), Some(10), "nothing done yet: the group's offset");
        for (notice, expected) in table {
            l.apply(start.job, &notice);
            assert_eq!(committable(&l, 0), expected, "after {notice:?}");
        }
    }

    #[test]
    fn acknowledgements_of_a_job_from_before_a_revocation_do_not_count() {
        let mut l = ledger(10);
        assign(&mut l, 0, Some(0));
        poll(&mut l, 0, 0..3);
        let old = l.next_batch(Instant::now(), false).expect("a batch");
        l.revoked(&key(0));
        assert!(l.committable().is_empty(), "nothing is committed for a partition this consumer gave up");
        // Assigned back while the old job still runs: the group says 0 (the revoke committed nothing done).
        assign(&mut l, 0, Some(0));
        poll(&mut l, 0, 0..3);
        assert!(l.next_batch(Instant::now(), false).is_none(), "the partition stays busy until the old job ends");
        l.apply(old.job, &Notice::Delivered(vec![(key(0), 0), (key(0), 1), (key(0), 2)]));
        assert_eq!(committable(&l, 0), Some(0), "the old job's acknowledgements are ignored");
        l.finished(old.job, &[key(0)]);
        let new = l.next_batch(Instant::now(), false).expect("the re-fetched records are batched once the old job ended");
        assert_eq!(new.formed.records().iter().map(|r| r.offset).collect::<Vec<_>>(), vec![0, 1, 2]);
        l.apply(new.job, &Notice::Delivered(vec![(key(0), 0), (key(0), 1), (key(0), 2)]));
        assert_eq!(committable(&l, 0), Some(3));
    }

    #[test]
    fn a_partition_is_in_one_job_at_a_time_and_continuations_inherit_it() {
        let mut l = ledger(2);
        assign(&mut l, 0, Some(0));
        poll(&mut l, 0, 0..4);
        let first = l.next_batch(Instant::now(), false).expect("a batch");
        assert!(l.next_batch(Instant::now(), false).is_none(), "records 2-3 wait for the job holding partition 0");
        let next = l.continued(first.job, &key(0)).expect("the partition moves to the continuation");
        assert_eq!(l.continued(first.job, &key(0)), None, "only the holder can hand it on");
        l.finished(first.job, &[key(0)]);
        assert!(l.next_batch(Instant::now(), false).is_none(), "the continuation holds it now");
        l.apply(next, &Notice::Delivered(vec![(key(0), 0), (key(0), 1)]));
        l.finished(next, &[key(0)]);
        assert_eq!(committable(&l, 0), Some(2));
        assert!(l.next_batch(Instant::now(), false).is_some());
    }

    #[test]
    fn commits_are_offered_once_per_change_and_again_after_a_failure() {
        let mut l = ledger(10);
        assign(&mut l, 0, Some(5));
        assert!(l.commit_due().is_empty(), "the group already has 5");
        poll(&mut l, 0, 5..7);
        let start = l.next_batch(Instant::now(), false).expect("a batch");
        l.apply(start.job, &Notice::Delivered(vec![(key(0), 5), (key(0), 6)]));
        let due = l.commit_due();
        assert_eq!(due.get(&key(0)).map(|(o, _)| *o), Some(7));
        assert!(l.commit_due().is_empty(), "sent, not answered: not offered twice");
        l.commit_failed([key(0)]);
        assert_eq!(l.commit_due().get(&key(0)).map(|(o, _)| *o), Some(7), "offered again after a failure");
        l.committed(&BTreeMap::from([(key(0), 7)]));
        assert_eq!(l.committed_records(), 2);
    }

    #[test]
    fn retry_state_of_an_unfinished_batch_is_committed_with_its_offset() {
        let mut l = ledger(10);
        assign(&mut l, 0, Some(3));
        poll(&mut l, 0, 3..5);
        let start = l.next_batch(Instant::now(), false).expect("a batch");
        l.apply(start.job, &Notice::Unfinished { first: vec![(key(0), 3, 2)], response: None });
        let (offset, metadata) = l.committable()[&key(0)].clone();
        assert_eq!((offset, RetryState::decode(&metadata)), (3, Some(RetryState::new(3, 2))));
    }

    #[test]
    fn flow_control_pauses_a_partition_holding_its_share_of_the_budget_and_resumes_it_under_half() {
        let per_record = record(0, 0).memory_len();
        let mut batcher = ledger(2).batcher;
        batcher.max_payload = 3 * per_record; // a batch of two fits; two events' worth is far under the share
        let mut l = Ledger::new(batcher, MemoryBudget::new(per_record * 100 * PARTITION_SHARE_OF_BUDGET));
        assign(&mut l, 0, Some(0));
        poll(&mut l, 0, 0..99);
        assert!(l.take_effects().is_empty(), "99 records are under the partition's share of 100");
        poll(&mut l, 0, 99..100);
        assert_eq!(l.take_effects(), vec![Effect::Pause(key(0))]);
        let mut offset = 0;
        let mut resumed = false;
        while !resumed {
            let start = l.next_batch(Instant::now(), false).expect("a batch");
            offset += start.formed.records().len() as i64;
            l.finished(start.job, &[key(0)]);
            resumed = l.take_effects() == vec![Effect::Resume(key(0))];
        }
        assert_eq!(offset, 52, "resumed once under half its share (48 of 100 records left)");
    }

    /// The measured stall this rule removed: with 16 partitions and BatchSize 100, a cap of 10,000 records
    /// paused (and made librdkafka purge) partitions 48 times a run.
    #[test]
    fn with_the_default_budget_a_partition_buffers_far_more_than_ten_thousand_small_records() {
        let mut l = ledger(100);
        assign(&mut l, 0, Some(0));
        poll(&mut l, 0, 0..40_000);
        assert!(l.take_effects().is_empty(), "40,000 small records are under a quarter of 64 MiB: no pause");
    }

    #[test]
    fn a_spent_budget_stops_intake_without_pausing_until_jobs_give_memory_back() {
        let batcher = ledger(1000).batcher;
        let budget = MemoryBudget::new(record(0, 0).memory_len() * 2);
        let mut l = Ledger::new(batcher, budget.clone());
        assign(&mut l, 0, Some(0));
        poll(&mut l, 0, 0..2);
        assert!(budget.spent(), "two queued records spend the budget: the driver stops taking records");
        assert!(l.take_effects().is_empty(), "no pause: librdkafka would drop what it prefetched");
        let start = l.next_batch(Instant::now(), true).expect("a batch");
        assert!(budget.used() > record(0, 0).memory_len() * 2, "in delivery a batch also holds its encoded event");
        drop(start);
        assert_eq!(budget.used(), 0);
        assert!(!budget.spent());
    }

}
