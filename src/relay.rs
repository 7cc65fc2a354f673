//! The per-mapping loop: poll → filter → batch → invoke → decide → hand off → commit.
//!
//! One task per mapping owns the consumer, the per-partition queues and the offset trackers. Each batch is
//! delivered by its own job task, which carries out the decisions of [`crate::outcome`] (retries,
//! bisection, give-ups) and reports back which records are done. Only the loop commits, and only what
//! [`OffsetTracker`] allows: **an offset is committed only after every earlier record of its partition was
//! delivered, filtered out, or handed to the failure destination.**
//!
//! Records of one partition are in at most one job at a time (the partition is `busy` until its job
//! ends), so they are delivered in order; jobs of different partitions run concurrently, bounded by
//! [`RunOptions::max_in_flight`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::batch::{Batcher, Formed, PartitionQueue};
use crate::commit::{OffsetTracker, RetryState};
use crate::config::Mapping;
use crate::destination::{Condition, GivenUp, ResponseContext};
use crate::event::EventSource;
use crate::filter::Filters;
use crate::invoke::{FunctionInfo, FunctionLookupError, Invoke};
use crate::kafka::consumer::{self, GroupEvent, RelayConsumer, RelayContext};
use crate::kafka::{PartitionKey, Record, TimestampType};
use crate::metrics::{Blocked, Counts, MappingReport, OffsetLag, PartitionReport};
use crate::outcome::{self, Attempts, Next, Settings, Verdict};

/// AWS refuses targets whose timeout is above 14 minutes: the relay could never finish their invocation.
pub const MAX_FUNCTION_TIMEOUT: Duration = Duration::from_secs(14 * 60);

/// Where given-up records go.
#[async_trait::async_trait]
pub trait FailureSink: Send + Sync {
    /// Writes the invocation record durably; `Ok` means the records may be committed. Returns where it
    /// went (message id or object key) for the logs.
    async fn send(&self, given_up: &GivenUp<'_>) -> Result<String, SinkError>;
}

/// A failed destination write.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct SinkError {
    /// The AWS error code, e.g. `AccessDenied`.
    pub code: String,
    /// What happened (never record contents).
    pub message: String,
}

#[async_trait::async_trait]
impl FailureSink for crate::destination::OnFailureDestination {
    async fn send(&self, given_up: &GivenUp<'_>) -> Result<String, SinkError> {
        match crate::destination::OnFailureDestination::send(self, given_up).await {
            Ok(sent) => Ok(format!("{:?}", sent.location)),
            Err(error) => Err(SinkError { code: error.error_code().to_string(), message: error.to_string() }),
        }
    }
}

/// Builds the on-failure destination of a mapping from its ARN, or says why it cannot.
pub type SinkFactory = Arc<dyn Fn(&str) -> Result<Arc<dyn FailureSink>, String> + Send + Sync>;

/// The outside services a run uses.
#[derive(Clone)]
pub struct Services {
    /// Lambda.
    pub invoker: Arc<dyn Invoke>,
    /// Builds the on-failure destination of a mapping from its ARN.
    pub sinks: SinkFactory,
    /// Secrets Manager, for `SourceAccessConfigurations`.
    pub secrets: Arc<dyn crate::auth::SecretSource>,
}

/// Progress callback: (mapping UUID, counts so far).
pub type Progress = Arc<dyn Fn(&str, &Counts) + Send + Sync>;

/// How a run behaves (not part of the mapping configuration).
#[derive(Clone)]
pub struct RunOptions {
    /// The run must have committed and left its groups by then (Lambda's deadline, or `--max-seconds`).
    pub deadline: Option<Instant>,
    /// Time kept free before the deadline for the final commit and leaving the group.
    pub margin: Duration,
    /// Stop once every partition is caught up and committed.
    pub until_idle: bool,
    /// With `until_idle`, how long to wait for a partition assignment before giving up.
    pub assignment_wait: Duration,
    /// Use this target timeout instead of `GetFunctionConfiguration` (emulators that lack it).
    pub target_timeout: Option<Duration>,
    /// Concurrent invocations per mapping.
    pub max_in_flight: usize,
    /// First and largest wait between failed attempts.
    pub retry_backoff: (Duration, Duration),
    /// First and largest wait after throttles, 5xx and network errors, and failed destination writes.
    pub transient_backoff: (Duration, Duration),
    /// Stop signal (Ctrl-C, SIGTERM): finish in-flight invocations, commit, leave.
    pub stop: Option<watch::Receiver<bool>>,
    /// Called about twice a second while a mapping runs.
    pub progress: Option<Progress>,
    /// The consumer group session timeout.
    pub session_timeout: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            deadline: None,
            margin: Duration::from_secs(3),
            until_idle: false,
            assignment_wait: Duration::from_secs(30),
            target_timeout: None,
            max_in_flight: 8,
            retry_backoff: (Duration::from_millis(500), Duration::from_secs(30)),
            transient_backoff: (Duration::from_millis(200), Duration::from_secs(10)),
            stop: None,
            progress: None,
            session_timeout: Duration::from_secs(10),
        }
    }
}

/// Per-partition state owned by the loop.
#[derive(Debug, Default)]
struct PartitionState {
    tracker: OffsetTracker,
    retry: Option<RetryState>,
    blocked: Option<Blocked>,
    paused: bool,
    /// The offset this run last committed (or the group's, at assignment).
    committed: Option<i64>,
    polled: u64,
    delivered: u64,
    failed: u64,
    done: u64,
}

/// What a job tells the loop.
#[derive(Debug)]
enum JobEvent {
    /// The target processed these records.
    Delivered(Vec<(PartitionKey, i64)>),
    /// These records were given up: written to the destination, or dropped when there is none.
    GivenUp { records: Vec<(PartitionKey, i64)>, to_destination: bool },
    /// One invocation happened.
    Invoked { failed: bool },
    /// A partition is stuck (infinite retries, no destination) or waiting on a failing destination.
    Blocked { key: PartitionKey, offset: i64, reason: String },
    /// The job stopped before finishing (deadline or stop): attempts to remember per partition.
    Unfinished(Vec<(PartitionKey, i64, u32)>, Option<ResponseContext>),
    /// Retry these records (one partition's) in a job of their own after `delay`: a failed batch is
    /// retried partition by partition, so one failing partition does not hold back the others.
    Continue { records: Vec<Record>, attempts: Attempts, delay: Duration, response: Option<ResponseContext> },
    /// The job is over; these partitions (those not continued elsewhere) are free.
    Finished(Vec<PartitionKey>),
}

/// What every job of a mapping shares.
struct JobContext {
    function_name: String,
    function: FunctionInfo,
    mapping_uuid: String,
    source: EventSource,
    settings: Settings,
    max_age: Option<Duration>,
    sink: Option<Arc<dyn FailureSink>>,
    invoker: Arc<dyn Invoke>,
    /// No invocation may start after this instant (it could not finish before the deadline).
    invoke_cutoff: Option<Instant>,
    retry_backoff: (Duration, Duration),
    transient_backoff: (Duration, Duration),
    stop: watch::Receiver<bool>,
}

/// Runs one mapping until its deadline, stop signal, or (with `until_idle`) until it is caught up.
pub async fn run_mapping(mapping: &Mapping, services: &Services, options: &RunOptions) -> MappingReport {
    if !mapping.enabled {
        return MappingReport::not_run(mapping, "Disabled", None, "No records processed: the mapping is disabled".into());
    }
    let failed = |code: &str, sentence: String| MappingReport::not_run(mapping, "Failed", Some(code), format!("PROBLEM: {sentence}"));

    let function = match options.target_timeout {
        Some(timeout) => FunctionInfo { function_arn: function_arn(&mapping.function_name), timeout },
        None => match services.invoker.function_info(&mapping.function_name).await {
            Ok(info) => info,
            Err(FunctionLookupError::NotValid { code, message }) => {
                return failed(
                    "FUNCTION_CONFIG_NOT_VALID",
                    format!("the target function {:?} cannot be used ({code}: {message}); check FunctionName and the relay's lambda:GetFunctionConfiguration permission", mapping.function_name),
                )
            }
            Err(FunctionLookupError::Unavailable(message)) => {
                return failed("FUNCTION_CONFIG_NOT_VALID", format!("cannot read the target function's configuration now: {message}"))
            }
        },
    };
    if function.timeout > MAX_FUNCTION_TIMEOUT {
        return failed(
            "FUNCTION_CONFIG_NOT_VALID",
            format!(
                "the target function's timeout is {} s; it must be at most 840 s (14 minutes) so an invocation can finish within the relay's run",
                function.timeout.as_secs()
            ),
        );
    }

    let sink = match mapping.destination() {
        Some(arn) => match (services.sinks)(arn) {
            Ok(sink) => Some(sink),
            Err(message) => return failed(crate::config::ESM_CONFIG_NOT_VALID, format!("the on-failure destination {arn:?} cannot be used: {message}")),
        },
        None => None,
    };
    let filters = match Filters::new(mapping.filter_criteria.as_ref()) {
        Ok(filters) => filters,
        Err(error) => return failed(crate::config::ESM_CONFIG_NOT_VALID, format!("FilterCriteria is not valid: {error}")),
    };
    let security = match crate::auth::resolve(mapping, services.secrets.as_ref()).await {
        Ok(security) => security,
        Err(error) => return failed(error.code.as_str(), error.sentence),
    };
    let diagnostics = Arc::new(crate::auth::ConnectionDiagnostics::new(&security, mapping));

    let starting_position = mapping.starting_position.unwrap_or(crate::config::StartingPosition::Latest);
    let mut config = consumer::consumer_config(
        &mapping.bootstrap_servers().join(","),
        &mapping.consumer_group_id(),
        starting_position,
        options.session_timeout,
    );
    security.apply(&mut config);
    let timestamp_ms = mapping.starting_position_timestamp.map(|s| (s * 1000.0) as i64);
    let context = RelayContext::new(starting_position, timestamp_ms, diagnostics.clone());
    let consumer = match consumer::subscribe(&config, context, &mapping.topics) {
        Ok(consumer) => consumer,
        Err(error) => {
            // Never log the error itself: a ClientConfig error quotes the (secret) value.
            let error = diagnostics.creation_error(&error);
            return failed(error.code.as_str(), error.sentence);
        }
    };

    let mut run = MappingRun::new(mapping, services, options, function, sink, filters, consumer);
    run.run().await
}

/// A target given by name gets a placeholder ARN in failure records when its configuration is not read.
fn function_arn(function_name: &str) -> String {
    if function_name.starts_with("arn:") {
        function_name.to_string()
    } else {
        format!("arn:aws:lambda:{}:000000000000:function:{function_name}", std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()))
    }
}

struct MappingRun<'a> {
    mapping: &'a Mapping,
    options: &'a RunOptions,
    consumer: RelayConsumer,
    filters: Filters,
    batcher: Batcher,
    job_context: Arc<JobContext>,
    stop_tx: watch::Sender<bool>,
    queues: BTreeMap<PartitionKey, PartitionQueue>,
    partitions: BTreeMap<PartitionKey, PartitionState>,
    counts: Counts,
    problem: Option<(String, String)>,
    started: Instant,
    /// Retries handed back by jobs, to start as jobs of their own.
    continuations: Vec<(Vec<Record>, Attempts, Duration, Option<ResponseContext>)>,
}

impl<'a> MappingRun<'a> {
    fn new(
        mapping: &'a Mapping,
        services: &'a Services,
        options: &'a RunOptions,
        function: FunctionInfo,
        sink: Option<Arc<dyn FailureSink>>,
        filters: Filters,
        consumer: RelayConsumer,
    ) -> Self {
        let (stop_tx, stop_rx) = watch::channel(false);
        let invoke_cutoff = options.deadline.map(|d| {
            d.checked_sub(function.timeout + options.margin).unwrap_or_else(Instant::now)
        });
        let job_context = Arc::new(JobContext {
            function_name: mapping.function_name.clone(),
            function,
            mapping_uuid: mapping.uuid(),
            source: EventSource::for_mapping(mapping),
            settings: Settings::for_mapping(mapping),
            max_age: mapping.max_record_age(),
            sink,
            invoker: services.invoker.clone(),
            invoke_cutoff,
            retry_backoff: options.retry_backoff,
            transient_backoff: options.transient_backoff,
            stop: stop_rx,
        });
        Self {
            mapping,
            options,
            consumer,
            filters,
            batcher: Batcher::for_mapping(mapping),
            job_context,
            stop_tx,
            queues: BTreeMap::new(),
            partitions: BTreeMap::new(),
            counts: Counts::default(),
            problem: None,
            started: Instant::now(),
            continuations: Vec::new(),
        }
    }

    /// Records one partition may buffer before it is paused.
    fn queue_cap(&self) -> usize {
        (self.batcher.batch_size * 2).max(500)
    }

    async fn run(&mut self) -> MappingReport {
        let (events_tx, mut events_rx) = mpsc::channel::<JobEvent>(1024);
        let mut jobs: JoinSet<()> = JoinSet::new();
        let mut stopping = false;
        let mut last_progress = Instant::now();
        let mut last_commit = Instant::now();
        let mut eof_seen = false;
        let mut last_idle_check = Instant::now() - Duration::from_secs(10);
        let poll_until = self.job_context.invoke_cutoff;
        let mut external_stop = self.options.stop.clone();

        loop {
            self.apply_group_events();

            if !stopping {
                if poll_until.is_some_and(|cutoff| Instant::now() >= cutoff) {
                    tracing::info!(mapping = %self.job_context.mapping_uuid, "run deadline reached: finishing in-flight invocations");
                    stopping = true;
                }
                if external_stop.as_ref().is_some_and(|s| *s.borrow()) {
                    tracing::info!(mapping = %self.job_context.mapping_uuid, "stop requested: finishing in-flight invocations");
                    stopping = true;
                }
                if stopping {
                    let _ = self.stop_tx.send(true);
                }
            }

            for (records, attempts, delay, response) in std::mem::take(&mut self.continuations) {
                // Its partition stays busy: the retry continues the job that failed.
                let context = self.job_context.clone();
                let events = events_tx.clone();
                jobs.spawn(async move {
                    let keys = run_job(records, attempts, response, delay, false, &context, &events).await;
                    let _ = events.send(JobEvent::Finished(keys)).await;
                });
            }
            if !stopping {
                while jobs.len() < self.options.max_in_flight {
                    let Some(formed) = self.batcher.next(&mut self.queues, Instant::now(), false) else { break };
                    self.spawn_job(formed, &mut jobs, &events_tx);
                }
            }

            if stopping && jobs.is_empty() {
                break;
            }
            if !stopping && self.options.until_idle && jobs.is_empty() {
                if self.partitions.is_empty() && self.started.elapsed() > self.options.assignment_wait {
                    self.problem = Some(("".into(), "no partitions were assigned to this consumer; another consumer of the group may hold them".into()));
                    break;
                }
                if eof_seen && last_idle_check.elapsed() > Duration::from_millis(300) && self.is_idle_locally() {
                    last_idle_check = Instant::now();
                    if self.caught_up() {
                        break;
                    }
                }
            }
            if last_commit.elapsed() > Duration::from_secs(2) {
                self.commit();
                last_commit = Instant::now();
            }
            if last_progress.elapsed() > Duration::from_millis(500) {
                if let Some(progress) = &self.options.progress {
                    progress(&self.job_context.mapping_uuid, &self.counts);
                }
                self.diagnose_client_errors().await;
                if self.has_fatal_problem() {
                    break;
                }
                last_progress = Instant::now();
            }

            let window = self.batcher.next_deadline(&self.queues).map(tokio::time::Instant::from_std);
            let cutoff = poll_until.map(tokio::time::Instant::from_std);
            tokio::select! {
                biased;
                Some(event) = events_rx.recv() => self.apply_job_event(event),
                Some(joined) = jobs.join_next(), if !jobs.is_empty() => {
                    if let Err(error) = joined {
                        // A panicking job leaves its records unacknowledged: they are redelivered next run.
                        tracing::error!(error_code = "JOB_PANICKED", %error, "delivery job failed");
                    }
                }
                message = self.consumer.recv(), if !stopping => match message {
                    Ok(message) => {
                        eof_seen = false;
                        let record = to_record(&message);
                        drop(message);
                        self.accept(record);
                        // Take what librdkafka already fetched before forming batches, so a busy topic
                        // fills batches instead of sending one record per invocation.
                        for _ in 0..DRAIN_AT_ONCE {
                            match try_recv(&self.consumer) {
                                Some(Ok(message)) => {
                                    let record = to_record(&message);
                                    drop(message);
                                    self.accept(record);
                                }
                                Some(Err(KafkaError::PartitionEOF(_))) => eof_seen = true,
                                _ => break,
                            }
                        }
                    }
                    Err(KafkaError::PartitionEOF(_)) => eof_seen = true,
                    Err(error) => {
                        tracing::warn!(error_code = "KAFKA_POLL_ERROR", mapping = %self.job_context.mapping_uuid, %error, "poll failed");
                        self.diagnose_client_errors().await;
                        if self.has_fatal_problem() {
                            break;
                        }
                    }
                },
                _ = sleep_until_opt(window), if window.is_some() && !stopping => {}
                _ = sleep_until_opt(cutoff), if cutoff.is_some() && !stopping => {}
                _ = wait_stop(&mut external_stop), if !stopping && external_stop.is_some() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
        let _ = self.stop_tx.send(true);
        while let Some(joined) = jobs.join_next().await {
            if let Err(error) = joined {
                tracing::error!(error_code = "JOB_PANICKED", %error, "delivery job failed");
            }
        }
        drop(events_tx);
        while let Some(event) = events_rx.recv().await {
            self.apply_job_event(event);
        }
        self.diagnose_client_errors().await;
        let committed = self.commit();
        self.report(committed)
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
            tracing::error!(error_code = error.code.as_str(), mapping = %self.job_context.mapping_uuid, sentence = %error.sentence, "cannot use the cluster");
            self.problem = Some((error.code.as_str().to_string(), error.sentence));
        }
    }

    fn has_fatal_problem(&self) -> bool {
        self.problem.as_ref().is_some_and(|(code, _)| !code.is_empty())
    }

    fn apply_group_events(&mut self) {
        for event in self.consumer.context().take_events() {
            match event {
                GroupEvent::Assigned(partitions) => {
                    for assigned in partitions {
                        tracing::debug!(mapping = %self.job_context.mapping_uuid, partition = %assigned.key, committed = ?assigned.committed, "partition assigned");
                        let state = PartitionState {
                            tracker: OffsetTracker::new(assigned.committed.or(assigned.start)),
                            committed: assigned.committed,
                            retry: assigned.retry,
                            ..PartitionState::default()
                        };
                        self.partitions.insert(assigned.key.clone(), state);
                        self.queues.entry(assigned.key).or_default();
                    }
                }
                GroupEvent::Revoked(keys) => {
                    for key in keys {
                        tracing::debug!(mapping = %self.job_context.mapping_uuid, partition = %key, "partition revoked");
                        // Jobs still holding records of this partition finish, but their acknowledgements are
                        // ignored: the new owner redelivers from the committed offset. The queue stays (empty)
                        // so that, if the partition comes back in this run, it stays busy until that job ends
                        // and its records are never in two invocations at once.
                        self.partitions.remove(&key);
                        if let Some(queue) = self.queues.get_mut(&key) {
                            queue.clear();
                        }
                        self.consumer.context().forget(&key);
                    }
                }
            }
        }
    }

    fn accept(&mut self, record: Record) {
        // The poll that returned this record may also have assigned its partition.
        self.apply_group_events();
        let cap = self.queue_cap();
        let key = record.key_partition.clone();
        let Some(state) = self.partitions.get_mut(&key) else { return };
        state.tracker.fetched(record.offset);
        state.polled += 1;
        self.counts.polled += 1;
        if !self.filters.matches(&record) {
            state.tracker.done(record.offset);
            state.done += 1;
            self.counts.filtered_out += 1;
            return;
        }
        let queue = self.queues.entry(key.clone()).or_default();
        queue.push(Instant::now(), record);
        if !state.paused && queue.len() >= cap {
            state.paused = true;
            let _ = self.consumer.pause(&single(&key));
        }
    }

    fn spawn_job(&mut self, formed: Formed, jobs: &mut JoinSet<()>, events: &mpsc::Sender<JobEvent>) {
        let (records, oversized) = match formed {
            Formed::Batch(records) => (records, false),
            Formed::Oversized(record) => (vec![record], true),
        };
        let keys = partitions_of(&records);
        let mut attempts = Attempts::default();
        let mut last_response = None;
        for key in &keys {
            if let Some(queue) = self.queues.get_mut(key) {
                queue.busy = true;
                if queue.len() < self.queue_cap() / 2 {
                    if let Some(state) = self.partitions.get_mut(key).filter(|s| s.paused) {
                        state.paused = false;
                        let _ = self.consumer.resume(&single(key));
                    }
                }
            }
            // Attempts an earlier run made on the batch starting at this record carry over.
            if let Some(state) = self.partitions.get_mut(key) {
                if let Some(retry) = state.retry.take() {
                    if records.iter().any(|r| &r.key_partition == key && r.offset == retry.offset) {
                        attempts.failed = attempts.failed.max(retry.attempts);
                        attempts.invoked = attempts.invoked.max(retry.attempts);
                        last_response = last_response.or(retry.response);
                    }
                }
            }
        }
        let context = self.job_context.clone();
        let events = events.clone();
        jobs.spawn(async move {
            let keys = run_job(records, attempts, last_response, Duration::ZERO, oversized, &context, &events).await;
            let _ = events.send(JobEvent::Finished(keys)).await;
        });
    }

    fn apply_job_event(&mut self, event: JobEvent) {
        match event {
            JobEvent::Delivered(records) => {
                for (key, offset) in records {
                    self.counts.delivered += 1;
                    if let Some(state) = self.partitions.get_mut(&key) {
                        state.tracker.done(offset);
                        state.delivered += 1;
                        state.done += 1;
                        state.blocked = None;
                    }
                }
            }
            JobEvent::GivenUp { records, to_destination } => {
                for (key, offset) in records {
                    if to_destination {
                        self.counts.sent_to_destination += 1;
                    } else {
                        self.counts.dropped += 1;
                    }
                    if let Some(state) = self.partitions.get_mut(&key) {
                        state.tracker.done(offset);
                        state.failed += 1;
                        state.done += 1;
                        state.blocked = None;
                    }
                }
            }
            JobEvent::Invoked { failed } => {
                self.counts.invocations += 1;
                if failed {
                    self.counts.failed_invocations += 1;
                }
            }
            JobEvent::Blocked { key, offset, reason } => {
                if let Some(state) = self.partitions.get_mut(&key) {
                    state.blocked = Some(Blocked { offset, reason });
                }
            }
            JobEvent::Unfinished(entries, response) => {
                for (key, offset, attempts) in entries {
                    if let Some(state) = self.partitions.get_mut(&key) {
                        if attempts > 0 {
                            state.retry = Some(RetryState::new(offset, attempts).with_response(response.clone()));
                        }
                    }
                }
            }
            JobEvent::Continue { records, attempts, delay, response } => {
                self.continuations.push((records, attempts, delay, response));
            }
            JobEvent::Finished(keys) => {
                for key in keys {
                    if let Some(queue) = self.queues.get_mut(&key) {
                        queue.busy = false;
                    }
                }
            }
        }
        self.publish_committable();
    }

    /// Keeps the consumer context's copy current, so a revocation commits progress.
    fn publish_committable(&self) {
        for (key, offset, metadata) in self.committable() {
            self.consumer.context().set_committable(&key, offset, metadata);
        }
    }

    fn committable(&self) -> Vec<(PartitionKey, i64, String)> {
        self.partitions
            .iter()
            .filter_map(|(key, state)| {
                let offset = state.tracker.committable()?;
                let metadata = state
                    .retry
                    .as_ref()
                    .filter(|r| r.offset == offset)
                    .map(|r| r.encode())
                    .unwrap_or_default();
                Some((key.clone(), offset, metadata))
            })
            .collect()
    }

    /// Commits what the trackers allow (a LATEST or AT_TIMESTAMP start counts, so the group remembers where
    /// this run started). Returns the committed offsets.
    fn commit(&mut self) -> BTreeMap<PartitionKey, i64> {
        let offsets: BTreeMap<PartitionKey, (i64, String)> =
            self.committable().into_iter().map(|(k, o, m)| (k, (o, m))).collect();
        match consumer::commit(&self.consumer, &offsets) {
            Ok(()) => {
                for (key, (offset, _)) in &offsets {
                    if let Some(state) = self.partitions.get_mut(key) {
                        state.committed = Some(*offset);
                    }
                }
                offsets.into_iter().map(|(k, (o, _))| (k, o)).collect()
            }
            Err(error) => {
                // Nothing lost: the group keeps its older offsets and the records are delivered again.
                tracing::warn!(error_code = "COMMIT_FAILED", mapping = %self.job_context.mapping_uuid, %error, "commit failed");
                BTreeMap::new()
            }
        }
    }

    fn is_idle_locally(&self) -> bool {
        !self.partitions.is_empty()
            && self.queues.values().all(|q| q.is_empty() && !q.busy)
            && self.partitions.values().all(|s| s.tracker.outstanding() == 0)
    }

    /// Whether every assigned partition's position reached its high watermark.
    fn caught_up(&self) -> bool {
        let Ok(position) = self.consumer.position() else { return false };
        let positions: BTreeMap<PartitionKey, Option<i64>> = position
            .elements()
            .iter()
            .map(|e| (PartitionKey::new(e.topic(), e.partition()), e.offset().to_raw().filter(|o| *o >= 0)))
            .collect();
        drop(position);
        self.partitions.iter().all(|(key, state)| {
            let Some((low, high)) = consumer::watermarks(&self.consumer, key) else { return false };
            let at = positions.get(key).copied().flatten().or(state.tracker.committable());
            // A partition with nothing fetched and nothing committed is caught up only when it is empty.
            at.map_or(low >= high, |at| at >= high)
        })
    }

    fn report(&mut self, committed: BTreeMap<PartitionKey, i64>) -> MappingReport {
        let mut partitions = Vec::new();
        let mut lag = OffsetLag::default();
        let mut blocked_note = None;
        for (key, state) in &self.partitions {
            // What the group holds now: this run's last successful commit, or what it had at assignment.
            let committed_offset = committed.get(key).copied().or(state.committed);
            let high = consumer::watermarks(&self.consumer, key).map(|(_, high)| high);
            let partition_lag = match (high, committed_offset) {
                (Some(high), Some(c)) => Some((high - c).max(0)),
                (Some(high), None) => Some(high),
                _ => None,
            };
            if let Some(l) = partition_lag {
                lag.sum += l;
                lag.max = lag.max.max(l);
            }
            if blocked_note.is_none() {
                if let Some(b) = &state.blocked {
                    blocked_note = Some(format!("partition {key} is blocked at offset {}: {}", b.offset, b.reason));
                }
            }
            partitions.push(PartitionReport {
                topic: key.topic.to_string(),
                partition: key.partition,
                polled: state.polled,
                delivered: state.delivered,
                failed: state.failed,
                committed_offset,
                lag: partition_lag,
                blocked: state.blocked.clone(),
            });
        }
        if !committed.is_empty() {
            self.counts.committed = self
                .partitions
                .iter()
                .filter(|(key, _)| committed.contains_key(*key))
                .map(|(_, s)| s.done - s.tracker.done_pending() as u64)
                .sum();
        }
        let (state, error_code, result) = match &self.problem {
            Some((code, sentence)) if !code.is_empty() => ("Failed", Some(code.clone()), format!("PROBLEM: {sentence}")),
            Some((_, sentence)) => ("Enabled", None, format!("PROBLEM: {sentence}")),
            None => match blocked_note {
                Some(note) => ("Enabled", None, format!("PROBLEM: {note}")),
                None if self.counts.polled == 0 => ("Enabled", None, "No records processed".to_string()),
                None => ("Enabled", None, "OK".to_string()),
            },
        };
        MappingReport {
            uuid: self.job_context.mapping_uuid.clone(),
            function_name: self.mapping.function_name.clone(),
            consumer_group_id: self.mapping.consumer_group_id(),
            state: state.to_string(),
            last_processing_result: result,
            error_code,
            counts: self.counts,
            offset_lag: lag,
            partitions,
        }
    }
}

/// Records taken from librdkafka's queue without waiting, after each one the loop waited for.
const DRAIN_AT_ONCE: usize = 1000;

/// The next message if librdkafka already has one, without waiting.
fn try_recv(consumer: &RelayConsumer) -> Option<rdkafka::error::KafkaResult<rdkafka::message::BorrowedMessage<'_>>> {
    let mut next = std::pin::pin!(consumer.recv());
    match std::future::Future::poll(next.as_mut(), &mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(result) => Some(result),
        std::task::Poll::Pending => None,
    }
}

/// An owned record from a polled message.
fn to_record(message: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    let (timestamp_ms, timestamp_type) = match message.timestamp() {
        rdkafka::Timestamp::CreateTime(t) => (t, TimestampType::CreateTime),
        rdkafka::Timestamp::LogAppendTime(t) => (t, TimestampType::LogAppendTime),
        rdkafka::Timestamp::NotAvailable => (0, TimestampType::CreateTime),
    };
    let headers = message
        .headers()
        .map(|headers| headers.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec).unwrap_or_default())).collect())
        .unwrap_or_default();
    Record::new(
        PartitionKey::new(message.topic(), message.partition()),
        message.offset(),
        timestamp_ms,
        timestamp_type,
        message.key().map(<[u8]>::to_vec),
        message.payload().map(<[u8]>::to_vec),
        headers,
    )
}

fn single(key: &PartitionKey) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&key.topic, key.partition);
    tpl
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
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

/// Sleeps for `duration` unless the run is stopping; returns false when it stopped.
async fn pause(duration: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => true,
        _ = stop.wait_for(|s| *s) => false,
    }
}

/// The partitions of `records`, in order of first appearance.
fn partitions_of(records: &[Record]) -> Vec<PartitionKey> {
    let mut keys: Vec<PartitionKey> = Vec::new();
    for record in records {
        if !keys.contains(&record.key_partition) {
            keys.push(record.key_partition.clone());
        }
    }
    keys
}

/// Splits records into one group per partition, keeping their order.
fn split_by_partition(records: Vec<Record>) -> Vec<Vec<Record>> {
    let mut groups: Vec<Vec<Record>> = Vec::new();
    for record in records {
        match groups.iter_mut().find(|g| g[0].key_partition == record.key_partition) {
            Some(group) => group.push(record),
            None => groups.push(vec![record]),
        }
    }
    groups
}

fn ids(records: &[Record]) -> Vec<(PartitionKey, i64)> {
    records.iter().map(|r| (r.key_partition.clone(), r.offset)).collect()
}

fn pick(records: &[Record], indices: &[usize]) -> Vec<Record> {
    indices.iter().map(|&i| records[i].clone()).collect()
}

/// The first record per partition of what is left, with the attempts it carries.
fn unfinished(stack: &[(Vec<Record>, Attempts)]) -> Vec<(PartitionKey, i64, u32)> {
    let mut first: BTreeMap<PartitionKey, (i64, u32)> = BTreeMap::new();
    for (records, attempts) in stack {
        for r in records {
            let entry = first.entry(r.key_partition.clone()).or_insert((r.offset, attempts.failed));
            if r.offset < entry.0 {
                *entry = (r.offset, attempts.failed);
            }
        }
    }
    first.into_iter().map(|(k, (o, a))| (k, o, a)).collect()
}

/// Delivers one batch: invokes, decides, retries, bisects and gives up until every record is delivered or
/// handed off, or the run stops (then the rest stays unacknowledged for the next run).
///
/// Returns the partitions it held that were not handed to continuation jobs.
async fn run_job(
    records: Vec<Record>,
    attempts: Attempts,
    mut last_response: Option<ResponseContext>,
    delay: Duration,
    oversized: bool,
    context: &JobContext,
    events: &mpsc::Sender<JobEvent>,
) -> Vec<PartitionKey> {
    let mut stop = context.stop.clone();
    let mut held = partitions_of(&records);
    if oversized {
        give_up(&records, Condition::MaximumPayloadSizeExceeded, Attempts::default(), None, context, events, &mut stop).await;
        return held;
    }
    if !delay.is_zero() && !pause(delay, &mut stop).await {
        let _ = events.send(JobEvent::Unfinished(unfinished(&[(records, attempts)]), last_response.clone())).await;
        return held;
    }
    // Sub-batches still to deliver; the last is next. Halves are pushed later-first so order holds.
    let mut stack: Vec<(Vec<Record>, Attempts)> = vec![(records, attempts)];
    let mut transient_failures = 0u32;
    while let Some((records, attempts)) = stack.pop() {
        let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000;
        let expired = outcome::expired(&records, now_ms, context.max_age);
        let records = if expired.is_empty() {
            records
        } else {
            let mut old = Vec::new();
            let mut rest = Vec::new();
            for (i, record) in records.into_iter().enumerate() {
                if expired.contains(&i) {
                    old.push(record);
                } else {
                    rest.push(record);
                }
            }
            if !give_up(&old, Condition::RetryAttemptsExhausted, attempts, last_response.clone(), context, events, &mut stop).await {
                stack.push((old, attempts));
                stack.push((rest, attempts));
                let _ = events.send(JobEvent::Unfinished(unfinished(&stack), last_response.clone())).await;
                return held;
            }
            if rest.is_empty() {
                continue;
            }
            rest
        };

        if outcome::exhausted(attempts, &context.settings) {
            if !give_up(&records, Condition::RetryAttemptsExhausted, attempts, last_response.clone(), context, events, &mut stop).await {
                stack.push((records, attempts));
                let _ = events.send(JobEvent::Unfinished(unfinished(&stack), last_response.clone())).await;
                return held;
            }
            continue;
        }
        if *stop.borrow() || context.invoke_cutoff.is_some_and(|cutoff| Instant::now() >= cutoff) {
            stack.push((records, attempts));
            let _ = events.send(JobEvent::Unfinished(unfinished(&stack), last_response.clone())).await;
            return held;
        }
        let payload = context.source.encode(&records);
        let result = context.invoker.invoke(&context.function_name, payload, context.function.timeout + Duration::from_secs(5)).await;
        let verdict = outcome::classify(&result, &records, &context.settings);
        let decision = outcome::decide(&records, &verdict, attempts, &context.settings);
        match &verdict {
            Verdict::NotAttempted { reason } => {
                tracing::warn!(error_code = "INVOKE_NOT_ATTEMPTED", mapping = %context.mapping_uuid, reason = %reason, "invoke will be retried");
            }
            Verdict::FunctionError { reason, response } => {
                last_response = response.clone();
                let _ = events.send(JobEvent::Invoked { failed: true }).await;
                tracing::warn!(error_code = "FUNCTION_ERROR", mapping = %context.mapping_uuid, reason = %reason, records = records.len(), "invocation failed");
            }
            Verdict::Partial(_) => {
                let _ = events.send(JobEvent::Invoked { failed: true }).await;
            }
            Verdict::Success => {
                let _ = events.send(JobEvent::Invoked { failed: false }).await;
            }
        }
        if !matches!(verdict, Verdict::FunctionError { .. }) {
            if let Some(response) = outcome::response_context(&result) {
                last_response = Some(response);
            }
        }
        if !decision.delivered.is_empty() {
            let delivered = pick(&records, &decision.delivered);
            let _ = events.send(JobEvent::Delivered(ids(&delivered))).await;
        }
        match decision.next {
            Next::Done => transient_failures = 0,
            Next::BackOff => {
                let wait = outcome::backoff(transient_failures, context.transient_backoff.0, context.transient_backoff.1);
                transient_failures = transient_failures.saturating_add(1);
                stack.push((records, attempts));
                if !pause(wait, &mut stop).await {
                    let _ = events.send(JobEvent::Unfinished(unfinished(&stack), last_response.clone())).await;
                    return held;
                }
            }
            Next::Retry { records: retry, attempts } => {
                transient_failures = 0;
                let retry = pick(&records, &retry);
                if context.settings.retry_limit.is_none() && context.sink.is_none() {
                    let first = &retry[0];
                    let _ = events
                        .send(JobEvent::Blocked {
                            key: first.key_partition.clone(),
                            offset: first.offset,
                            reason: format!(
                                "the target keeps failing ({} attempts) and MaximumRetryAttempts is -1 with no on-failure destination: set a retry limit or a destination, or fix the function",
                                attempts.failed
                            ),
                        })
                        .await;
                }
                let wait = outcome::backoff(attempts.failed.saturating_sub(1), context.retry_backoff.0, context.retry_backoff.1);
                let by_partition = split_by_partition(retry);
                let single = by_partition.len() == 1 && stack.is_empty();
                let mut stay = Vec::new();
                for records in by_partition {
                    let keys = partitions_of(&records);
                    let later_records_here = stack.iter().any(|(pending, _)| pending.iter().any(|r| keys.contains(&r.key_partition)));
                    if single || later_records_here {
                        // Retried here, before this partition's later records: order holds.
                        stay.push(records);
                    } else {
                        // Other partitions must not wait for this one's retries: a job of its own.
                        held.retain(|k| !keys.contains(k));
                        let _ = events.send(JobEvent::Continue { records, attempts, delay: wait, response: last_response.clone() }).await;
                    }
                }
                if stay.is_empty() {
                    continue;
                }
                stack.extend(stay.into_iter().rev().map(|records| (records, attempts)));
                if !pause(wait, &mut stop).await {
                    let _ = events.send(JobEvent::Unfinished(unfinished(&stack), last_response.clone())).await;
                    return held;
                }
            }
            Next::Split { first, second, attempts } => {
                transient_failures = 0;
                stack.push((pick(&records, &second), attempts));
                stack.push((pick(&records, &first), attempts));
            }
            Next::GiveUp { records: given, condition, attempts } => {
                transient_failures = 0;
                let given = pick(&records, &given);
                if !give_up(&given, condition, attempts, last_response.clone(), context, events, &mut stop).await {
                    stack.push((given, attempts));
                    let _ = events.send(JobEvent::Unfinished(unfinished(&stack), last_response.clone())).await;
                    return held;
                }
            }
        }
    }
    held
}

/// Hands records to the destination, retrying until it acknowledges; without a destination they are
/// dropped (counted and logged). Returns false if the run stopped first: the records stay unacknowledged.
async fn give_up(
    records: &[Record],
    condition: Condition,
    attempts: Attempts,
    response: Option<ResponseContext>,
    context: &JobContext,
    events: &mpsc::Sender<JobEvent>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let Some(sink) = &context.sink else {
        tracing::warn!(
            error_code = "RECORDS_DROPPED",
            mapping = %context.mapping_uuid,
            condition = condition.as_str(),
            records = records.len(),
            first = %format!("{}@{}", records[0].key_partition, records[0].offset),
            "records given up with no on-failure destination: dropped"
        );
        let _ = events.send(JobEvent::GivenUp { records: ids(records), to_destination: false }).await;
        return true;
    };
    let payload = context.source.encode(records);
    let given_up = GivenUp {
        mapping_uuid: &context.mapping_uuid,
        function_arn: &context.function.function_arn,
        event_source_arn: context.source.event_source_arn.as_deref(),
        bootstrap_servers: &context.source.bootstrap_servers,
        condition,
        approximate_invoke_count: attempts.invoked,
        response: if condition == Condition::MaximumPayloadSizeExceeded { None } else { response },
        records,
        payload: &payload,
    };
    let mut failures = 0u32;
    loop {
        match sink.send(&given_up).await {
            Ok(location) => {
                tracing::info!(mapping = %context.mapping_uuid, condition = condition.as_str(), records = records.len(), location = %location, "records written to the on-failure destination");
                let _ = events.send(JobEvent::GivenUp { records: ids(records), to_destination: true }).await;
                return true;
            }
            Err(error) => {
                tracing::warn!(error_code = "DESTINATION_WRITE_FAILED", mapping = %context.mapping_uuid, aws_error_code = %error.code, %error, "on-failure destination write failed; the partition waits");
                let _ = events
                    .send(JobEvent::Blocked {
                        key: records[0].key_partition.clone(),
                        offset: records[0].offset,
                        reason: format!("the on-failure destination refused the write ({}); nothing is committed until it succeeds", error.code),
                    })
                    .await;
                let wait = outcome::backoff(failures, context.transient_backoff.0, context.transient_backoff.1);
                failures = failures.saturating_add(1);
                if !pause(wait, stop).await {
                    return false;
                }
            }
        }
    }
}
