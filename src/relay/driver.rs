//! The thin driver of one mapping's run: a `select!` over what can happen (a job reports, the group
//! answers a commit, a record arrives, a batching window closes, the run's time is up, a stop is asked,
//! a tick), each handed to the [`Ledger`], whose effects are carried out on the consumer.
//!
//! Commits are off the loop (on a thread of their own, see [`consumer::commit_off_loop`]): at most one in flight, sent as soon as acknowledgements moved
//! a partition's committable offset (at most every [`COMMIT_INTERVAL`]), so a crash redelivers little more
//! than what was in flight. The final commit waits for the group's answer until the deadline; a run ends
//! at most [`CLOSE_GRACE`] after its deadline (leaving the group is given that long), and a final commit
//! the group did not take is reported (`COMMIT_FAILED`), never hidden.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::config::Mapping;
use crate::filter::Filters;
use crate::kafka::consumer::{self, CommitOutcome, GroupEvent, RelayConsumer};
use crate::kafka::{PartitionKey, Record};
use crate::metrics::{MappingReport, MinuteMetrics, OffsetLag, PartitionLag, TimeLagTracker};

use super::delivery::{Delivery, Notice, Policy};
use super::idle::{Epoch, IdleCheck, Seen, Verdict};
use super::job::{self, JobContext, JobEvent};
use super::ledger::{Effect, JobId, Ledger, Start};
use super::{Prepared, Problem, RunOptions, Services, Shared};

/// Least time between two commits of a run (and at most one is in flight): commits follow acknowledged
/// batches closely, so a crash redelivers little more than the batches in flight, at most 50 commits a
/// second per mapping.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(20);

/// How long after its deadline a run may take to leave the group.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Records taken from librdkafka's queue without waiting, after each one the loop waited for.
const DRAIN_AT_ONCE: usize = 2000;

/// How long one lookup of the log bounds of partitions not fetched yet may take (chunked `ListOffsets`
/// requests, see [`consumer::log_bounds`]); never past the run's deadline.
const BOUNDS_LOOKUP: Duration = Duration::from_secs(10);

/// Above this many assigned partitions the progress line leaves out the lag (reading every partition's
/// watermarks twice a second would take a good part of the loop's time).
const PROGRESS_LAG_PARTITIONS: usize = 2000;

/// The loop's time one step of the caught-up check may take (a step per 100 ms tick).
const IDLE_CHECK_STEP: Duration = Duration::from_millis(25);

/// How long looked-up log bounds stand in for a partition's fetch watermarks.
const BOUNDS_FRESH: Duration = Duration::from_secs(5);

/// How long the report may spend reading watermarks and looking up those of partitions never fetched.
const REPORT_QUERIES: Duration = Duration::from_secs(2);

/// The time the report may spend reading watermarks even when the deadline has passed.
const REPORT_MIN_SCAN: Duration = Duration::from_millis(200);

/// A final commit without a deadline waits at most this long for the group's answer.
const FINAL_COMMIT_WAIT: Duration = Duration::from_secs(10);

/// Runs the prepared mapping and reports.
pub(super) async fn run(mapping: &Mapping, services: &Services, options: &RunOptions, shared: &Shared, prepared: Prepared) -> MappingReport {
    let mut driver = Driver::new(mapping, services, options, shared, prepared);
    driver.drive().await;
    driver.finish().await
}

/// What a job sends the driver: which job, and what happened.
type JobMessage = (JobId, JobEvent);

struct Driver<'a> {
    mapping: &'a Mapping,
    options: &'a RunOptions,
    shared: Shared,
    consumer: Arc<RelayConsumer>,
    filters: Filters,
    ledger: Ledger,
    context: Arc<JobContext>,
    policy: Policy,
    jobs: JoinSet<()>,
    events: (mpsc::UnboundedSender<JobMessage>, mpsc::UnboundedReceiver<JobMessage>),
    commits: mpsc::UnboundedReceiver<CommitOutcome>,
    commit_tx: mpsc::UnboundedSender<CommitOutcome>,
    /// The offsets of the commit the group has not answered yet.
    commit_in_flight: Option<BTreeMap<PartitionKey, i64>>,
    last_commit: Instant,
    last_commit_error: Option<String>,
    stop_tx: watch::Sender<bool>,
    stopping: bool,
    problem: Option<Problem>,
    started: Instant,
    last_progress: Instant,
    /// The key of the last record polled: consecutive records mostly share it.
    last_key: Option<PartitionKey>,
    /// The start of the run, or the last assignment or revocation.
    last_group_change: Instant,
    /// Times this consumer joined the group anew since it last held partitions ([`crate::scale::rejoin_wait`]).
    rejoins: u32,
    /// This interval's metrics, written every `options.metrics_interval` and at the end.
    metrics: MinuteMetrics,
    /// Sampled record timestamps, for the time lag.
    time_lags: TimeLagTracker,
    /// The invoke call each job made last, until the machine says how it went.
    invocations: std::collections::HashMap<JobId, (Duration, usize, usize)>,
    /// The schema registry decoding stage, when the mapping has a `SchemaRegistryConfig`.
    decoder: Option<crate::schema::Decoder>,
    /// Partitions whose record at this offset waits for an unavailable schema registry: nothing at or after
    /// it is taken this run, so nothing past it is committed; the next run decodes it again.
    held: BTreeMap<PartitionKey, i64>,
    /// Log bounds of partitions without fetch watermarks, from the last chunked lookup, and when it ended.
    bounds: (BTreeMap<PartitionKey, consumer::LogBounds>, Instant),
    /// The chunked lookup under way (on a thread of its own: the loop never waits for the broker).
    bounds_lookup: Option<std::thread::JoinHandle<BTreeMap<PartitionKey, consumer::LogBounds>>>,
    /// The caught-up check, a slice of partitions per tick (see [`super::idle`]).
    idle: IdleCheck,
}

impl<'a> Driver<'a> {
    fn new(mapping: &'a Mapping, services: &Services, options: &'a RunOptions, shared: &Shared, prepared: Prepared) -> Self {
        let Prepared { function, sink, filters, consumer, source, decoder, offload } = prepared;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (commit_tx, commits) = mpsc::unbounded_channel();
        let invoke_cutoff = options.deadline.map(|d| d.checked_sub(function.timeout + options.margin).unwrap_or_else(Instant::now));
        let policy = Policy {
            settings: crate::outcome::Settings::for_mapping(mapping),
            max_age: mapping.max_record_age(),
            has_destination: sink.is_some(),
            retry_backoff: options.retry_backoff,
            transient_backoff: options.transient_backoff,
        };
        let context = Arc::new(JobContext {
            mapping_uuid: mapping.uuid(),
            function_name: mapping.function_name.clone(),
            function,
            source: source.clone(),
            sink,
            invoker: services.invoker.clone(),
            invoke_cutoff,
            stop: stop_rx,
            permits: shared.permits.clone(),
            in_flight: consumer.context().in_flight().clone(),
            offload,
        });
        Self {
            mapping,
            options,
            shared: shared.clone(),
            consumer: Arc::new(consumer),
            filters,
            ledger: Ledger::new(crate::batch::Batcher { source, ..crate::batch::Batcher::for_mapping(mapping) }, shared.budget.clone()),
            context,
            policy,
            jobs: JoinSet::new(),
            events: mpsc::unbounded_channel(),
            commits,
            commit_tx,
            commit_in_flight: None,
            last_commit: Instant::now(),
            last_commit_error: None,
            stop_tx,
            stopping: false,
            problem: None,
            started: Instant::now(),
            last_progress: Instant::now(),
            last_key: None,
            last_group_change: Instant::now(),
            rejoins: 0,
            metrics: MinuteMetrics::for_mapping(mapping, unix_ms()).with_interval(options.metrics_interval),
            time_lags: TimeLagTracker::default(),
            invocations: std::collections::HashMap::new(),
            decoder,
            held: BTreeMap::new(),
            bounds: (BTreeMap::new(), Instant::now()),
            bounds_lookup: None,
            idle: IdleCheck::default(),
        }
    }

    /// The loop: until the run stops and its jobs ended, or it is caught up.
    async fn drive(&mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut external_stop = self.options.stop.clone();
        let consumer = self.consumer.clone();
        let cutoff = self.context.invoke_cutoff.map(tokio::time::Instant::from_std);
        let deadline = self.options.deadline.map(tokio::time::Instant::from_std);
        loop {
            self.step();
            if self.stopping && self.jobs.is_empty() {
                return;
            }
            let window = self.ledger.next_window().map(tokio::time::Instant::from_std).filter(|_| !self.stopping);
            tokio::select! {
                biased;
                Some((job, event)) = self.events.1.recv() => self.on_job_event(job, event),
                Some(joined) = self.jobs.join_next(), if !self.jobs.is_empty() => self.on_job_end(joined),
                Some(outcome) = self.commits.recv() => self.on_commit(outcome),
                message = consumer.recv(), if self.stopping || !self.shared.budget.spent() => self.on_message(message).await,
                _ = sleep_until(window), if window.is_some() => {}
                _ = sleep_until(cutoff), if !self.stopping && cutoff.is_some() => self.begin_stop("run deadline reached: finishing in-flight invocations"),
                _ = wait_stop(&mut external_stop), if !self.stopping && external_stop.is_some() => self.begin_stop("stop requested: finishing in-flight invocations"),
                _ = sleep_until(deadline), if self.stopping && deadline.is_some() => self.abandon_jobs(),
                _ = tick.tick() => if self.on_tick().await { return },
            }
        }
    }

    /// What follows any input: assignment changes, new jobs, a commit if one is due, consumer effects.
    fn step(&mut self) {
        self.apply_group_events();
        if !self.stopping {
            self.start_jobs();
        }
        if self.commit_in_flight.is_none() && self.last_commit.elapsed() >= COMMIT_INTERVAL {
            self.send_commit();
        }
        self.apply_effects();
    }

    /// Starts a job for every due batch while an invocation slot is free.
    fn start_jobs(&mut self) {
        loop {
            let Ok(permit) = self.shared.permits.clone().try_acquire_owned() else { return };
            let Some(Start { job, formed, attempts, response, charge }) = self.ledger.next_batch(Instant::now(), false) else { return };
            let delivery = match formed {
                crate::batch::Formed::Batch(records) => Delivery::new(records, attempts, response, self.policy),
                // With `RelayExtensions.LargeRecordOffload` the record is delivered as a pointer (see
                // `job::event_for`), under the usual retry rules; without it AWS gives it up uninvoked.
                crate::batch::Formed::Oversized(record) if self.context.offloads(&record) => {
                    Delivery::new(vec![record], attempts, response, self.policy)
                }
                crate::batch::Formed::Oversized(record) => Delivery::oversized(record, self.policy),
                crate::batch::Formed::Undecodable(record) => {
                    let condition = record.undecodable().expect("set apart because it is undecodable");
                    Delivery::uninvoked(record, condition, self.policy)
                }
            };
            let task = job::run(job, delivery, self.context.clone(), self.events.0.clone(), Some(permit), charge);
            // Jobs log inside the mapping's span too.
            self.jobs.spawn(tracing::Instrument::in_current_span(task));
        }
    }

    fn on_job_event(&mut self, job: JobId, event: JobEvent) {
        match event {
            JobEvent::Notice(Notice::Continue { records, attempts, delay, response }) => {
                let key = records[0].key_partition.clone();
                let Some(next) = self.ledger.continued(job, &key) else { return };
                let charge = self.shared.budget.charge(records.iter().map(|r| r.memory_len() + r.encoded_len()).sum());
                let delivery = Delivery::continuation(records, attempts, response, delay, self.policy);
                let task = job::run(next, delivery, self.context.clone(), self.events.0.clone(), None, charge);
                self.jobs.spawn(tracing::Instrument::in_current_span(task));
            }
            JobEvent::Notice(notice) => {
                self.count_invocation(job, &notice);
                self.ledger.apply(job, &notice);
                // Keep the consumer's copy current, so a revocation commits this progress.
                let moved: Vec<&PartitionKey> = match &notice {
                    Notice::Delivered(records) | Notice::GivenUp { records, .. } => records.iter().map(|(k, _)| k).collect(),
                    Notice::Unfinished { first, .. } => first.iter().map(|(k, _, _)| k).collect(),
                    _ => Vec::new(),
                };
                let mut last = None;
                for key in moved {
                    if last != Some(key) {
                        last = Some(key);
                        if let Some((offset, metadata)) = self.ledger.committable_of(key) {
                            self.consumer.context().set_committable(key, offset, metadata);
                        }
                    }
                }
            }
            JobEvent::Finished(held) => {
                self.invocations.remove(&job);
                self.ledger.finished(job, &held)
            }
            JobEvent::Invocation { duration, records, bytes } => {
                self.invocations.insert(job, (duration, records, bytes));
            }
            JobEvent::DestinationFailed => self.ledger.counts.on_failure_destination_delivery_errors += 1,
        }
    }

    /// The metrics of the invoke call `job` made, now that the machine says how it went: records invoked
    /// (`InvokedEventCount`), failed (`FailedInvokeEventCount`), calls that never reached the function
    /// (`InvokeErrorCount`), and the call's duration and batch fill.
    fn count_invocation(&mut self, job: JobId, notice: &Notice) {
        let counts = &mut self.ledger.counts;
        match notice {
            Notice::Invoked { failed, .. } => {
                let Some((duration, records, bytes)) = self.invocations.remove(&job) else { return };
                self.metrics.observe_invocation(duration, records, bytes);
                counts.invoked_events += records as u64;
                if *failed {
                    counts.failed_invoke_events += records as u64;
                }
            }
            Notice::NotAttempted { .. } => {
                counts.invoke_errors += 1;
                if let Some((_, records, _)) = self.invocations.remove(&job) {
                    counts.failed_invoke_events += records as u64;
                }
            }
            _ => {}
        }
    }

    /// Writes this interval's metrics when it is over; at the end of the run (`report`), always, with the
    /// report's counts and lags.
    fn emit_metrics(&mut self, report: Option<&MappingReport>) {
        if !self.options.metrics.is_on() {
            return;
        }
        let now = unix_ms();
        let (counts, partitions) = match report {
            Some(report) => (report.counts, report.partitions.clone()),
            None if !self.metrics.due(now) => return,
            None => {
                let mut counts = self.ledger.counts;
                counts.committed = self.ledger.committed_records();
                // Watermarks of the last fetch only: no broker round trip inside the loop.
                let partitions = self
                    .ledger
                    .partition_reports(|key| consumer::watermarks(&self.consumer, key, Duration::ZERO).map(|(_, high)| high));
                (counts, partitions)
            }
        };
        let lags: Vec<PartitionLag> = partitions
            .into_iter()
            .filter_map(|p| {
                let key = PartitionKey::new(p.topic.as_str(), p.partition);
                let next = p.committed_offset.and_then(|c| self.time_lags.next_record_timestamp(&key, c));
                p.lag.map(|offset_lag| PartitionLag { topic: p.topic, partition: p.partition, offset_lag, next_record_timestamp_ms: next })
            })
            .collect();
        self.options.metrics.write(&self.metrics.flush(now, &counts, &lags));
    }

    fn on_job_end(&mut self, joined: Result<(), tokio::task::JoinError>) {
        if let Err(error) = joined.map_err(|e| (!e.is_cancelled()).then_some(e)) {
            let Some(error) = error else { return };
            // Its records stay unacknowledged and are delivered again; its partitions stay busy, so stop.
            tracing::error!(error_code = "JOB_PANICKED", mapping = %self.context.mapping_uuid, %error, "delivery job failed");
            self.begin_stop("a delivery job failed: stopping the run");
        }
    }

    async fn on_message(&mut self, message: Result<rdkafka::message::BorrowedMessage<'_>, KafkaError>) {
        // The poll that returned this record may also have assigned its partition.
        self.apply_group_events();
        match message {
            Ok(message) => {
                let record = self.record_of(&message);
                drop(message);
                self.accept(record).await;
                // Take what librdkafka already fetched before forming batches, so a busy topic fills
                // batches instead of sending one record per invocation.
                let consumer = self.consumer.clone();
                for _ in 0..DRAIN_AT_ONCE {
                    if self.shared.budget.spent() {
                        break;
                    }
                    match try_recv(&consumer) {
                        Some(Ok(message)) => {
                            let record = self.record_of(&message);
                            drop(message);
                            self.accept(record).await;
                        }
                        Some(Err(error)) => return self.poll_error(error),
                        None => break,
                    }
                }
            }
            Err(error) => self.poll_error(error),
        }
    }

    /// The message as a record, its partition key shared with the previous record's when it is the same.
    fn record_of(&mut self, message: &rdkafka::message::BorrowedMessage<'_>) -> Record {
        let key = match &self.last_key {
            Some(key) if key.partition == message.partition() && *key.topic == *message.topic() => key.clone(),
            _ => {
                let key = PartitionKey::new(message.topic(), message.partition());
                self.last_key = Some(key.clone());
                key
            }
        };
        Record::from_message(message, key)
    }

    async fn accept(&mut self, record: Record) {
        if self.stopping || self.held.contains_key(&record.key_partition) {
            // Not registered: the next run fetches it again from the committed offset.
            return;
        }
        // Decoding comes before filtering, so filters match decoded fields (also with `SOURCE`, through the
        // decoded view).
        let Some((record, view)) = self.decode(record).await else { return };
        let keep = record.undecodable().is_some() || self.filters.matches(view.as_ref().unwrap_or(&record));
        if self.options.metrics.is_on() {
            self.time_lags.fetched(&record.key_partition, record.offset, record.timestamp_ms);
        }
        self.ledger.accept(record, keep, Instant::now());
    }

    /// The record decoded through the mapping's schema registry (and, with `SOURCE`, its decoded view for
    /// filtering); an undecodable one marked for its give-up;
    /// `None` when the registry is unavailable and the record (with its partition) is held for the next run.
    async fn decode(&mut self, record: Record) -> Option<(Record, Option<Record>)> {
        let Some(decoder) = &self.decoder else { return Some((record, None)) };
        let failure = match decoder.decode_with_filter_view(record).await {
            Ok(decoded) => return Some(decoded),
            Err(failure) => failure,
        };
        // AWS's SchemaRegistryErrorCount: "failed to fetch the schema or deserialize with the schema".
        self.ledger.counts.schema_registry_errors += 1;
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let (key, offset) = (failure.record.key_partition.clone(), failure.record.offset);
        match crate::schema::disposition(&failure, now_ms, self.mapping.max_record_age()) {
            crate::schema::Disposition::GiveUp(condition) => {
                tracing::warn!(error_code = condition.as_str(), mapping = %self.context.mapping_uuid, partition = %key, offset, error = %failure.error, "record cannot be decoded: giving it up");
                Some((failure.record.into_undecodable(condition), None))
            }
            crate::schema::Disposition::Hold => {
                tracing::warn!(error_code = "SCHEMA_REGISTRY_UNAVAILABLE", mapping = %self.context.mapping_uuid, partition = %key, offset, error = %failure.error, "schema registry unavailable: holding the partition until the next run");
                // The partition keeps being fetched (and its records dropped): pausing it would keep a run
                // that stops when caught up from ever catching up.
                self.held.insert(key, offset);
                None
            }
        }
    }

    /// Assignments and revocations the last poll brought.
    fn apply_group_events(&mut self) {
        for event in self.consumer.context().take_events() {
            self.last_group_change = Instant::now();
            match event {
                GroupEvent::Assigned(partitions) => {
                    tracing::info!(mapping = %self.context.mapping_uuid, partitions = partitions.len(), "partitions assigned");
                    // Partitions whose start is unknown are not in the consumer's assignment: reported, not
                    // waited for.
                    if let Some(sentence) = consumer::unresolved_start_problem(&partitions) {
                        tracing::error!(error_code = "STARTING_POSITION_UNRESOLVED", mapping = %self.context.mapping_uuid, %sentence, "partitions not consumed");
                        self.problem.get_or_insert(Problem::StartingPosition(sentence));
                    }
                    partitions.into_iter().filter(|p| p.unresolved_start.is_none()).for_each(|p| self.ledger.assigned(p));
                }
                GroupEvent::Revoked(keys) => {
                    tracing::info!(mapping = %self.context.mapping_uuid, partitions = keys.len(), "partitions revoked");
                    keys.iter().for_each(|k| {
                        self.held.remove(k);
                        self.ledger.revoked(k);
                        self.time_lags.forget(k);
                        self.consumer.context().forget(k);
                    });
                }
            }
        }
    }

    fn poll_error(&mut self, error: KafkaError) {
        self.ledger.counts.polling_errors += 1;
        tracing::warn!(error_code = "KAFKA_POLL_ERROR", mapping = %self.context.mapping_uuid, %error, "poll failed");
    }

    fn on_commit(&mut self, outcome: CommitOutcome) {
        self.commit_in_flight = None;
        match outcome.result {
            Ok(()) => {
                self.ledger.committed(&outcome.offsets);
                self.last_commit_error = None;
            }
            Err(error) => {
                self.ledger.counts.commit_errors += 1;
                // Nothing lost: the group keeps its older offsets; the next commit offers them again.
                if consumer::refused_for_rebalance(&error) {
                    // Expected while members join or leave: offered again once the group settled.
                    tracing::info!(mapping = %self.context.mapping_uuid, %error, "commit deferred: the group is rebalancing");
                } else {
                    tracing::warn!(error_code = "COMMIT_FAILED", mapping = %self.context.mapping_uuid, %error, "commit failed");
                }
                self.ledger.commit_failed(outcome.offsets.into_keys());
                self.last_commit_error = Some(error.to_string());
            }
        }
    }

    /// Sends what changed since the last commit, without waiting for the group's answer.
    fn send_commit(&mut self) {
        let due = self.ledger.commit_due();
        if due.is_empty() {
            return;
        }
        self.last_commit = Instant::now();
        self.commit_in_flight = Some(due.iter().map(|(k, (o, _))| (k.clone(), *o)).collect());
        consumer::commit_off_loop(self.consumer.clone(), due, self.commit_tx.clone());
    }

    /// Pauses and resumes what the ledger decided: one call each, for the partitions whose state changed.
    fn apply_effects(&mut self) {
        let (mut pause, mut resume) = (Vec::new(), Vec::new());
        for effect in self.ledger.take_effects() {
            match effect {
                Effect::Pause(key) => pause.push(key),
                Effect::Resume(key) => resume.push(key),
            };
        }
        for (keys, paused) in [(pause, true), (resume, false)] {
            if let Err(error) = consumer::pause_resume(&self.consumer, &keys, paused) {
                tracing::warn!(mapping = %self.context.mapping_uuid, %error, paused, partitions = keys.len(), "pause or resume failed");
            }
        }
    }

    /// Periodic work: resuming paused partitions, progress, connection diagnosis, the end of an idle run.
    /// Returns true when the run is over (caught up).
    async fn on_tick(&mut self) -> bool {
        self.ledger.resume_where_room();
        self.ledger.counts.polling_errors += self.consumer.context().take_client_errors();
        self.emit_metrics(None);
        if self.last_progress.elapsed() >= Duration::from_millis(500) {
            self.last_progress = Instant::now();
            if let Some(progress) = &self.options.progress {
                // Watermarks of the last fetch only (cached by librdkafka): no broker round trip. Each costs
                // librdkafka a search of its topics, so over many partitions the line leaves the lag out
                // rather than hold the loop (issue 13).
                let left = if self.ledger.assigned_count() > PROGRESS_LAG_PARTITIONS {
                    None
                } else {
                    crate::metrics::lag_remaining(self.ledger.positions_after(None).map(|(key, position)| {
                        (position, consumer::watermarks(&self.consumer, key, Duration::ZERO).map(|(_, high)| high))
                    }))
                };
                progress(&self.context.mapping_uuid, &self.ledger.counts, left);
            }
            self.diagnose_client_errors().await;
        }
        if !self.stopping && !self.ledger.has_partitions() {
            self.rejoin_if_left_out();
        } else {
            self.rejoins = 0;
        }
        if self.stopping || !self.options.until_idle || !self.jobs.is_empty() {
            return false;
        }
        // With several members on the group, partitions come and go: the wait for an assignment counts from
        // the group's last change of this consumer's assignment, and nothing is idle while the group is
        // rebalancing (partitions of a member that left may be on their way here).
        let context = self.consumer.context();
        if !self.ledger.has_partitions() {
            // During and after a rebalance, a partition another member gives up arrives once that member's
            // invocation of it came back (its revocation waits for it): up to the target's timeout later.
            let changed = context.last_change();
            let wait = if changed > self.started || context.rebalancing() {
                self.options.assignment_wait.max(self.context.function.timeout + super::REVOKE_MARGIN)
            } else {
                self.options.assignment_wait
            };
            // Partitions assigned but not consumable (their start is unknown) leave nothing to wait for.
            if matches!(self.problem, Some(Problem::StartingPosition(_))) || changed.max(self.started).elapsed() > wait {
                self.problem.get_or_insert(Problem::NoPartitions);
                return true;
            }
            return false;
        }
        if context.rebalancing() || !self.ledger.is_idle() {
            self.idle.restart();
            return false;
        }
        self.caught_up()
    }

    /// Joins the group anew when this consumer has held nothing for longer than a session: a member that
    /// died mid-rebalance can leave a coordinator (tansu, seen here) with an assignment that gives this
    /// consumer nothing and no later rebalance; a fresh join starts one. Backs off while that brings nothing
    /// ([`crate::scale::rejoin_wait`]).
    fn rejoin_if_left_out(&mut self) {
        if self.last_group_change.elapsed() < crate::scale::rejoin_wait(self.options.session_timeout, self.rejoins) {
            return;
        }
        tracing::info!(mapping = %self.context.mapping_uuid, rejoins = self.rejoins, "no partitions for longer than a session: joining the group again");
        self.rejoins += 1;
        self.last_group_change = Instant::now();
        let topics: Vec<&str> = self.mapping.topics.iter().map(String::as_str).collect();
        self.consumer.unsubscribe();
        if let Err(error) = self.consumer.subscribe(&topics) {
            tracing::warn!(error_code = "SUBSCRIBE_FAILED", mapping = %self.context.mapping_uuid, %error, "joining the group again failed");
        }
    }

    /// One step of the caught-up check (at most [`IDLE_CHECK_STEP`] of the loop's time): true once a whole
    /// pass found every assigned partition at its log end (see [`super::idle`]). Log ends come from the last
    /// fetch or, for partitions not fetched yet, from a chunked lookup made off the loop (never one round
    /// trip per partition: over 20,000 partitions those took minutes, issue 13).
    fn caught_up(&mut self) -> bool {
        self.take_bounds();
        let epoch = Epoch { polled: self.ledger.counts.polled, group_change: self.consumer.context().last_change() };
        let (consumer, bounds, ledger) = (&self.consumer, &self.bounds.0, &self.ledger);
        let read = |slice: &[(&PartitionKey, Option<i64>)]| -> Vec<Seen> {
            let positions = consumer::positions(consumer, slice.iter().map(|(key, _)| *key));
            slice
                .iter()
                .zip(positions)
                .map(|((key, _), position)| {
                    let (low, high) = match consumer::watermarks(consumer, key, Duration::ZERO) {
                        Some((low, high)) => (Some(low), Some(high)),
                        None => bounds.get(*key).map_or((None, None), |b| (b.low, b.high)),
                    };
                    Seen { position, low, high }
                })
                .collect()
        };
        match self.idle.step(|after| ledger.positions_after(after), epoch, IDLE_CHECK_STEP, read) {
            Verdict::CaughtUp => true,
            Verdict::LookUp(unknown) => {
                self.look_up_bounds(unknown);
                false
            }
            Verdict::Behind | Verdict::Checking => false,
        }
    }

    /// Starts a chunked lookup of `keys`' log bounds off the loop, unless one is under way.
    fn look_up_bounds(&mut self, keys: Vec<(PartitionKey, bool)>) {
        if self.bounds_lookup.is_some() {
            return;
        }
        let by = Instant::now() + BOUNDS_LOOKUP;
        let by = self.options.deadline.map_or(by, |deadline| by.min(deadline));
        let consumer = self.consumer.clone();
        tracing::debug!(mapping = %self.context.mapping_uuid, partitions = keys.len(), "looking up the log bounds of partitions not fetched yet");
        self.bounds_lookup = Some(std::thread::spawn(move || consumer::log_bounds(&consumer, &keys, by)));
    }

    /// The finished lookup's bounds replace older ones; bounds older than [`BOUNDS_FRESH`] are dropped.
    fn take_bounds(&mut self) {
        if self.bounds.1.elapsed() > BOUNDS_FRESH {
            self.bounds.0.clear();
        }
        if !self.bounds_lookup.as_ref().is_some_and(std::thread::JoinHandle::is_finished) {
            return;
        }
        if let Some(Ok(found)) = self.bounds_lookup.take().map(std::thread::JoinHandle::join) {
            self.bounds = (found, Instant::now());
        }
    }

    /// Authentication and authorization failures end the mapping's run with AWS's error code; other
    /// mappings keep running.
    async fn diagnose_client_errors(&mut self) {
        if self.problem.is_some() {
            return;
        }
        let diagnostics = self.consumer.context().diagnostics().clone();
        if diagnostics.diagnose().is_none() {
            return;
        }
        // Telling an untrusted certificate from a hostname mismatch takes a short blocking handshake.
        let refined = tokio::task::spawn_blocking(move || diagnostics.diagnose_with_probe()).await.ok().flatten();
        if let Some(error) = refined {
            tracing::error!(error_code = error.code.as_str(), mapping = %self.context.mapping_uuid, sentence = %error.sentence, "cannot use the cluster");
            self.problem = Some(Problem::Cannot { code: error.code, sentence: error.sentence });
            self.begin_stop("the cluster cannot be used: stopping the mapping");
        }
    }

    fn begin_stop(&mut self, why: &str) {
        if !self.stopping {
            tracing::info!(mapping = %self.context.mapping_uuid, "{why}");
            self.stopping = true;
            let _ = self.stop_tx.send(true);
        }
    }

    /// The deadline passed with jobs still running: they are ended; their records stay unacknowledged.
    fn abandon_jobs(&mut self) {
        tracing::warn!(mapping = %self.context.mapping_uuid, jobs = self.jobs.len(), "deadline reached with invocations in flight: their records are delivered again by the next run");
        self.jobs.abort_all();
    }

    /// The final commit (bounded by the deadline), leaving the group, and the report.
    async fn finish(mut self) -> MappingReport {
        tracing::debug!(mapping = %self.context.mapping_uuid, "loop over");
        self.begin_stop("run over: committing");
        self.jobs.abort_all();
        while let Ok((job, event)) = self.events.1.try_recv() {
            self.on_job_event(job, event);
        }
        let commit_by = self.options.deadline.map_or(Instant::now() + FINAL_COMMIT_WAIT, |d| d.max(Instant::now()));
        match self.final_commit(commit_by).await {
            // The group holds every offset and its metadata: leaving the group need not commit them again
            // (over 20,000 partitions that took the revocation seconds, past the grace).
            Ok(()) => self.consumer.context().forget_all(),
            Err(problem) => {
                tracing::error!(error_code = "COMMIT_FAILED", mapping = %self.context.mapping_uuid, %problem, "final commit failed");
                self.problem.get_or_insert(problem);
            }
        }
        tracing::debug!(mapping = %self.context.mapping_uuid, "final commit over");
        self.ledger.counts.polling_errors += self.consumer.context().take_client_errors();
        let highs = self.report_highs().await;
        let report = self.report(&highs);
        tracing::debug!(mapping = %self.context.mapping_uuid, "report written");
        // The run's last metrics: what happened since the last interval, and the lags now.
        self.emit_metrics(Some(&report));
        // The grace counts from the deadline, not from now: a run that reaches its end late still ends on time.
        let close_by = self.options.deadline.unwrap_or_else(|| Instant::now() + FINAL_COMMIT_WAIT) + CLOSE_GRACE;
        // A lookup under way holds the consumer: it ends by the deadline, and the group is left after it.
        if let Some(lookup) = self.bounds_lookup.take() {
            let wait = close_by.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(wait, tokio::task::spawn_blocking(move || lookup.join())).await;
        }
        close(self.consumer, close_by).await;
        report
    }

    /// Waits for the commit in flight, then commits what is left, retrying a refused commit until `by`;
    /// Err says why the group has not got it.
    async fn final_commit(&mut self, by: Instant) -> Result<(), Problem> {
        let by = tokio::time::Instant::from_std(by);
        let consumer = self.consumer.clone();
        self.last_commit_error = None;
        loop {
            if self.commit_in_flight.is_none() {
                self.send_commit();
                if self.commit_in_flight.is_none() {
                    // Nothing is due: the group has everything.
                    return Ok(());
                }
            }
            tokio::select! {
                Some(outcome) = self.commits.recv() => self.on_commit(outcome),
                // Polling serves a rebalance meanwhile; records are not taken any more, and partitions taken
                // away are not committed by this member any more.
                _ = consumer.recv() => self.apply_group_events(),
                _ = tokio::time::sleep_until(by) => {
                    let reason = self.last_commit_error.take().unwrap_or_else(|| "the group did not answer before the run's deadline".into());
                    return Err(Problem::FinalCommit { reason });
                }
            }
            if self.last_commit_error.is_some() {
                // Refused (a rebalance, a coordinator moving): offered again after a short pause.
                tokio::time::sleep(COMMIT_INTERVAL.min(by.saturating_duration_since(tokio::time::Instant::now()))).await;
            }
        }
    }

    /// Per partition, its high watermark for the report's lag: as of the last fetch, or looked up in one
    /// chunked lookup for partitions never fetched. Reading librdkafka's watermarks costs a lookup per partition
    /// (seconds over tens of thousands), so all of it stops at the deadline (or after [`REPORT_QUERIES`], and is
    /// given at least [`REPORT_MIN_SCAN`]); a partition not reached has no lag in the report.
    async fn report_highs(&mut self) -> BTreeMap<PartitionKey, i64> {
        self.take_bounds();
        let now = Instant::now();
        let by = self.options.deadline.map_or(now + REPORT_QUERIES, |d| d.min(now + REPORT_QUERIES)).max(now + REPORT_MIN_SCAN);
        let (mut highs, mut unknown) = (BTreeMap::new(), Vec::new());
        for (i, key) in self.ledger.positions().into_keys().enumerate() {
            if i % 256 == 255 && Instant::now() >= by {
                break;
            }
            let high = consumer::watermarks(&self.consumer, &key, Duration::ZERO)
                .map(|(_, high)| high)
                .or_else(|| self.bounds.0.get(&key).and_then(|b| b.high));
            match high {
                Some(high) => {
                    highs.insert(key, high);
                }
                None => unknown.push((key, false)),
            }
        }
        if unknown.is_empty() || Instant::now() >= by {
            return highs;
        }
        let consumer = self.consumer.clone();
        let lookup = tokio::task::spawn_blocking(move || consumer::log_bounds(&consumer, &unknown, by));
        if let Ok(Ok(found)) = tokio::time::timeout(by.saturating_duration_since(Instant::now()), lookup).await {
            highs.extend(found.into_iter().filter_map(|(key, bounds)| Some((key, bounds.high?))));
        }
        highs
    }

    fn report(&self, highs: &BTreeMap<PartitionKey, i64>) -> MappingReport {
        let partitions = self.ledger.partition_reports(|key| highs.get(key).copied());
        let mut lag = OffsetLag::default();
        for l in partitions.iter().filter_map(|p| p.lag) {
            lag.sum += l;
            lag.max = lag.max.max(l);
        }
        let mut counts = self.ledger.counts;
        counts.committed = self.ledger.committed_records();
        let held = self.held.iter().next();
        let (state, error_code, result) = match (&self.problem, self.ledger.first_blocked(), held) {
            (Some(problem), _, _) => problem.report_fields(),
            (None, Some((key, b)), _) => ("Enabled", None, format!("PROBLEM: partition {key} is blocked at offset {}: {}", b.offset, b.reason)),
            (None, None, Some((key, offset))) => (
                "Enabled",
                None,
                format!("PROBLEM: partition {key} is held at offset {offset}: the schema registry is unavailable; the next run decodes it again"),
            ),
            (None, None, None) if counts.polled == 0 => ("Enabled", None, "No records processed".to_string()),
            (None, None, None) => ("Enabled", None, "OK".to_string()),
        };
        MappingReport {
            uuid: self.context.mapping_uuid.clone(),
            function_name: self.mapping.function_name.clone(),
            consumer_group_id: self.mapping.consumer_group_id(),
            state: state.to_string(),
            last_processing_result: result,
            error_code: error_code.map(|c| c.as_str().to_string()),
            counts,
            offset_lag: lag,
            partitions,
        }
    }
}

/// Leaves the group and frees the consumer on a thread of its own: with the cluster gone, librdkafka's
/// close can block far past the deadline, and the run must not.
async fn close(consumer: Arc<RelayConsumer>, by: Instant) {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        drop(consumer);
        let _ = done_tx.send(());
    });
    let wait = by.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
    if tokio::time::timeout(wait, done_rx).await.is_err() {
        tracing::warn!(error_code = "CLOSE_TIMED_OUT", "leaving the consumer group did not finish in time; the group notices after its session timeout");
    }
}

/// The next message if librdkafka already has one, without waiting.
fn try_recv(consumer: &RelayConsumer) -> Option<rdkafka::error::KafkaResult<rdkafka::message::BorrowedMessage<'_>>> {
    let mut next = std::pin::pin!(consumer.recv());
    match std::future::Future::poll(next.as_mut(), &mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(result) => Some(result),
        std::task::Poll::Pending => None,
    }
}


async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn wait_stop(stop: &mut Option<watch::Receiver<bool>>) {
    match stop {
        Some(rx) => {
            let _ = rx.wait_for(|s| *s).await;
        }
        None => std::future::pending().await,
    }
}

fn unix_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
