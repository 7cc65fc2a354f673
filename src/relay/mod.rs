//! The engine: one mapping's run, from the group's records to committed offsets.
//!
//! # Layout
//!
//! - [`run_mapping`] (here): checks what a run needs before joining the group (the target's timeout, the
//!   destination, filters, credentials) and builds the consumer; a mapping that cannot run is reported
//!   with AWS's error code and never polls.
//! - [`driver`]: the thin loop. One `select!` over consumer messages, job events, commit results, the
//!   batching window, the deadline and the stop signal; each arm hands its input to the ledger and carries
//!   out the ledger's effects. Polled records are decoded through the mapping's schema registry
//!   ([`crate::schema`]) and then filtered as they are accepted; undecodable ones are set apart and given
//!   up uninvoked, and a registry outage holds the partition for the rest of the run.
//! - [`ledger`]: per partition, everything the run knows (queue, offset tracker, retry state, pause state,
//!   the job holding it); synchronous, no I/O. **Which offset may be committed** and **when a partition
//!   is paused** are decided here.
//! - [`delivery`]: one batch's way through invocations, bisection, retries, give-ups and destination
//!   writes, as a pure state machine. **Where retries happen**: [`delivery`] applies the rules of
//!   [`crate::outcome`] step by step.
//! - [`job`]: the async interpreter of one delivery: invokes, writes, waits, reports.
//! - [`idle`]: whether the run has caught up, checked a slice of partitions per tick, so a check over tens
//!   of thousands of partitions never holds the loop past its deadline.
//!
//! Records of one partition are in at most one job at a time, so they are delivered in order; jobs of
//! different partitions run concurrently, bounded by a process-wide number of invocations in flight and
//! a process-wide budget of buffered bytes ([`RunOptions::max_in_flight`], [`RunOptions::buffer_bytes`]).

pub mod delivery;
mod driver;
mod idle;
mod job;
pub mod ledger;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};

use crate::config::Mapping;
use crate::destination::{DestinationError, GivenUp};
use crate::error::ErrorCode;
use crate::filter::Filters;
use crate::invoke::{FunctionInfo, FunctionLookupError, Invoke};
use crate::kafka::consumer::{self, RelayContext};
use crate::metrics::{Counts, MappingReport};

pub use driver::CLOSE_GRACE;
pub use ledger::MemoryBudget;

/// AWS refuses targets whose timeout is above 14 minutes: the relay could never finish their invocation.
pub const MAX_FUNCTION_TIMEOUT: Duration = Duration::from_secs(14 * 60);

/// Time beyond the target's timeout a revocation waits for an invocation in flight to come back.
pub(crate) const REVOKE_MARGIN: Duration = Duration::from_secs(10);

/// Default bound on invocations in flight in one process (`--max-in-flight`, `RELAY_MAX_IN_FLIGHT`).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// Default budget of record bytes held in memory by one process (`--buffer-mib`, `RELAY_BUFFER_MIB`).
pub const DEFAULT_BUFFER_BYTES: usize = 64 << 20;

/// Where given-up records go.
#[async_trait::async_trait]
pub trait FailureSink: Send + Sync {
    /// Writes the invocation record durably; `Ok` means the records may be committed. Returns where it
    /// went (message id or object key) for the logs.
    async fn send(&self, given_up: &GivenUp<'_>) -> Result<String, DestinationError>;
}

#[async_trait::async_trait]
impl FailureSink for crate::destination::OnFailureDestination {
    async fn send(&self, given_up: &GivenUp<'_>) -> Result<String, DestinationError> {
        crate::destination::OnFailureDestination::send(self, given_up).await.map(|sent| format!("{:?}", sent.location))
    }
}

/// Builds the on-failure destination of a mapping from its ARN, or says why it cannot.
pub type SinkFactory = Arc<dyn Fn(&str) -> Result<Arc<dyn FailureSink>, DestinationError> + Send + Sync>;

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

/// Progress callback: (mapping UUID, counts so far, lag remaining: records between each assigned partition's
/// position and its high watermark as of the last fetch, summed; `None` before any watermark is known).
pub type Progress = Arc<dyn Fn(&str, &Counts, Option<i64>) + Send + Sync>;

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
    /// Concurrent invocations in the whole process (every mapping of a run shares them).
    pub max_in_flight: usize,
    /// Bytes of records the whole process may hold (queued or being delivered) before it pauses fetching.
    pub buffer_bytes: usize,
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
    /// Where the run writes its EMF metric lines (each mapping's, every `metrics_interval` and at its end).
    pub metrics: crate::metrics::EmfSink,
    /// How often a mapping writes its metrics during a run ([`crate::metrics::EMIT_INTERVAL`]).
    pub metrics_interval: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            deadline: None,
            margin: Duration::from_secs(3),
            until_idle: false,
            assignment_wait: Duration::from_secs(30),
            target_timeout: None,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            retry_backoff: (Duration::from_millis(500), Duration::from_secs(30)),
            transient_backoff: (Duration::from_millis(200), Duration::from_secs(10)),
            stop: None,
            progress: None,
            session_timeout: Duration::from_secs(10),
            metrics: crate::metrics::EmfSink::Off,
            metrics_interval: crate::metrics::EMIT_INTERVAL,
        }
    }
}

/// What every mapping of one process shares: the invocation slots and the buffer budget.
#[derive(Clone)]
pub struct Shared {
    /// Invocations in flight.
    pub permits: Arc<Semaphore>,
    /// Bytes of records held.
    pub budget: Arc<MemoryBudget>,
}

impl Shared {
    /// Limits as `options` set them.
    pub fn new(options: &RunOptions) -> Self {
        Self { permits: Arc::new(Semaphore::new(options.max_in_flight.max(1))), budget: MemoryBudget::new(options.buffer_bytes) }
    }
}

/// Why a mapping's run ended without doing all it should, as the report states it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The mapping cannot run (authentication, configuration, target): AWS's code and what to fix.
    #[error("{sentence}")]
    Cannot {
        /// AWS's error code.
        code: ErrorCode,
        /// What went wrong and what to fix.
        sentence: String,
    },
    /// The group assigned this consumer nothing while the run waited.
    #[error("no partitions were assigned to this consumer; another consumer of the group may hold them")]
    NoPartitions,
    /// Assigned partitions whose starting position could not be resolved were not consumed (the sentence of
    /// [`consumer::unresolved_start_problem`]).
    #[error("{0}")]
    StartingPosition(String),
    /// The group did not take the final commit before the deadline.
    #[error("the final commit failed ({reason}); the group keeps its older offsets and the next run delivers those records again")]
    FinalCommit {
        /// What the group or librdkafka said.
        reason: String,
    },
}

impl Problem {
    /// The report's `State`, `ErrorCode` and `LastProcessingResult` for this problem.
    pub fn report_fields(&self) -> (&'static str, Option<ErrorCode>, String) {
        match self {
            Problem::Cannot { code, .. } => ("Failed", Some(*code), format!("PROBLEM: {self}")),
            Problem::NoPartitions => ("Enabled", None, format!("PROBLEM: {self}")),
            Problem::StartingPosition(_) => {
                ("Enabled", Some(ErrorCode::StartingPositionUnresolved), format!("PROBLEM: {self}"))
            }
            Problem::FinalCommit { .. } => ("Enabled", Some(ErrorCode::CommitFailed), format!("PROBLEM: {self}")),
        }
    }

    fn cannot(code: ErrorCode, sentence: impl Into<String>) -> Self {
        Problem::Cannot { code, sentence: sentence.into() }
    }
}

/// Runs one mapping until its deadline, stop signal, or (with `until_idle`) until it is caught up.
pub async fn run_mapping(mapping: &Mapping, services: &Services, options: &RunOptions, shared: &Shared) -> MappingReport {
    if !mapping.enabled {
        return MappingReport::not_run(mapping, "Disabled", None, "No records processed: the mapping is disabled".into());
    }
    match prepare(mapping, services, options).await {
        Ok(prepared) => driver::run(mapping, services, options, shared, prepared).await,
        Err(problem) => {
            let (state, code, result) = problem.report_fields();
            MappingReport::not_run(mapping, state, code.map(ErrorCode::as_str), result)
        }
    }
}

/// What [`prepare`] found: everything a run needs before it joins the group.
struct Prepared {
    function: FunctionInfo,
    sink: Option<Arc<dyn FailureSink>>,
    filters: Filters,
    consumer: consumer::RelayConsumer,
    /// The events' header; its `bootstrapServers` are the brokers the consumer uses (looked up for an MSK
    /// cluster ARN without endpoints).
    source: crate::event::EventSource,
    /// The mapping's schema registry decoding stage (`SchemaRegistryConfig`), run before filtering.
    decoder: Option<crate::schema::Decoder>,
    /// `RelayExtensions.LargeRecordOffload`: oversized records go through S3 instead of being given up.
    offload: Option<Arc<crate::destination::offload::LargeRecordOffload>>,
}

/// The target function (its ARN and timeout), checked against the run's length.
async fn target_function(mapping: &Mapping, services: &Services, options: &RunOptions) -> Result<FunctionInfo, Problem> {
    let function = match options.target_timeout {
        Some(timeout) => FunctionInfo { function_arn: function_arn(&mapping.function_name), timeout },
        None => services.invoker.function_info(&mapping.function_name).await.map_err(|error| match error {
            FunctionLookupError::NotValid { code, message } => Problem::cannot(
                ErrorCode::FunctionConfigNotValid,
                format!("the target function {:?} cannot be used ({code}: {message}); check FunctionName and the relay's lambda:GetFunctionConfiguration permission", mapping.function_name),
            ),
            FunctionLookupError::Unavailable(message) => {
                Problem::cannot(ErrorCode::FunctionConfigNotValid, format!("cannot read the target function's configuration now: {message}"))
            }
        })?,
    };
    if function.timeout > MAX_FUNCTION_TIMEOUT {
        return Err(Problem::cannot(
            ErrorCode::FunctionConfigNotValid,
            format!(
                "the target function's timeout is {} s; it must be at most 840 s (14 minutes) so an invocation can finish within the relay's run",
                function.timeout.as_secs()
            ),
        ));
    }
    if let Some(deadline) = options.deadline {
        // A run that cannot fit one invocation would start none and report nothing to do while records wait.
        let run_length = deadline.saturating_duration_since(Instant::now());
        if let Some(sentence) = crate::config::run_length_problem(run_length, function.timeout, options.margin) {
            return Err(Problem::cannot(ErrorCode::RunShorterThanTargetTimeout, sentence));
        }
    }
    Ok(function)
}

/// The mapping's consumer, subscribed to its topics with its security settings.
fn subscribe(
    mapping: &Mapping,
    options: &RunOptions,
    function: &FunctionInfo,
    security: &crate::auth::KafkaSecurity,
    diagnostics: &Arc<crate::auth::ConnectionDiagnostics>,
) -> Result<consumer::RelayConsumer, Problem> {
    let starting_position = mapping.starting_position.unwrap_or(crate::config::StartingPosition::Latest);
    let mut config = consumer::consumer_config(
        &mapping.bootstrap_servers().join(","),
        &mapping.consumer_group_id(),
        starting_position,
        options.session_timeout,
    );
    // A revocation waits for the revoked partitions' invocation in flight (see `consumer::InFlight`);
    // the group must not count that wait as a stuck member.
    let revoke_wait = function.timeout + REVOKE_MARGIN;
    config.set("max.poll.interval.ms", (revoke_wait + REVOKE_MARGIN).max(Duration::from_secs(300)).as_millis().to_string());
    security.apply(&mut config);
    let timestamp_ms = mapping.starting_position_timestamp.map(|s| (s * 1000.0) as i64);
    let context = RelayContext::new(starting_position, timestamp_ms, diagnostics.clone()).with_run_deadline(options.deadline);
    context.set_revoke_wait(revoke_wait);
    consumer::subscribe(&config, context, &mapping.topics).map_err(|error| {
        // Never log the error itself: a ClientConfig error quotes the (secret) value.
        let error = diagnostics.creation_error(&error);
        Problem::Cannot { code: error.code, sentence: error.sentence }
    })
}

/// Everything a mapping's run needs before its first poll: the target, the destination, filters, decoding, the
/// subscribed consumer and the events' header; a `Problem` names what makes the mapping unusable.
async fn prepare(mapping: &Mapping, services: &Services, options: &RunOptions) -> Result<Prepared, Problem> {
    let function = target_function(mapping, services, options).await?;
    let sink = match mapping.destination() {
        // Built below, on the mapping's cluster and credentials.
        Some(arn) if crate::config::kafka_destination_topic(arn).is_some() => None,
        Some(arn) => Some((services.sinks)(arn).map_err(|error| {
            Problem::cannot(ErrorCode::EsmConfigNotValid, format!("the on-failure destination {arn:?} cannot be used: {error}"))
        })?),
        None => None,
    };
    let filters = Filters::new(mapping.filter_criteria.as_ref())
        .map_err(|error| Problem::cannot(ErrorCode::EsmConfigNotValid, format!("FilterCriteria is not valid: {error}")))?;
    let decoder = schema_decoder(mapping, services).await?;
    let security = crate::auth::resolve(mapping, services.secrets.as_ref())
        .await
        .map_err(|error| Problem::Cannot { code: error.code, sentence: error.sentence })?;
    let diagnostics = Arc::new(crate::auth::ConnectionDiagnostics::new(&security, mapping));
    let consumer = subscribe(mapping, options, &function, &security, &diagnostics)?;
    let source = crate::event::EventSource {
        bootstrap_servers: security.bootstrap_servers_for(mapping),
        ..crate::event::EventSource::for_mapping(mapping)
    };
    let sink = match (sink, mapping.destination()) {
        (None, Some(destination)) => kafka_sink(mapping, destination, &security, &diagnostics, &source)?,
        (sink, _) => sink,
    };
    let offload = large_record_offload(mapping).await;
    Ok(Prepared { function, sink, filters, consumer, source, decoder, offload })
}

/// The mapping's large-record offload, on an S3 client with the relay's AWS configuration.
async fn large_record_offload(mapping: &Mapping) -> Option<Arc<crate::destination::offload::LargeRecordOffload>> {
    let settings = mapping.large_record_offload()?;
    let sdk_config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let client = Arc::new(crate::destination::s3_client(&sdk_config));
    Some(Arc::new(crate::destination::offload::LargeRecordOffload::new(settings, client)))
}

/// A `kafka://<topic>` on-failure destination: a producer with the consumer's connection and security
/// settings (same cluster, same credentials, MSK IAM tokens through the same diagnostics).
fn kafka_sink(
    mapping: &Mapping,
    destination: &str,
    security: &crate::auth::KafkaSecurity,
    diagnostics: &Arc<crate::auth::ConnectionDiagnostics>,
    source: &crate::event::EventSource,
) -> Result<Option<Arc<dyn FailureSink>>, Problem> {
    use crate::destination::kafka::{KafkaDestination, DEFAULT_DELIVERY_TIMEOUT};
    let mut connection = rdkafka::ClientConfig::new();
    connection.set("bootstrap.servers", mapping.bootstrap_servers().join(","));
    security.apply(&mut connection);
    let timeout = crate::app::env_seconds("RELAY_KAFKA_DESTINATION_TIMEOUT").filter(|t| !t.is_zero()).unwrap_or(DEFAULT_DELIVERY_TIMEOUT);
    let context = crate::auth::DiagnosingContext::new(diagnostics.clone());
    let sink = KafkaDestination::new(destination, &connection, context, source.clone(), timeout).map_err(|error| {
        Problem::cannot(ErrorCode::EsmConfigNotValid, format!("the on-failure destination {destination:?} cannot be used: {error}"))
    })?;
    Ok(Some(Arc::new(sink)))
}

/// The decoding stage of a mapping with a `SchemaRegistryConfig`: a Glue client (the relay's AWS
/// configuration, in the registry's region) or a Confluent client with its `AccessConfigs` secrets.
async fn schema_decoder(mapping: &Mapping, services: &Services) -> Result<Option<crate::schema::Decoder>, Problem> {
    let Some(registry) = mapping.schema_registry_config() else { return Ok(None) };
    let sdk_config = if registry.is_glue() {
        aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
    } else {
        aws_config::SdkConfig::builder().build()
    };
    crate::schema::Decoder::for_mapping(mapping, &sdk_config, services.secrets.as_ref())
        .await
        .map_err(|error| Problem::cannot(ErrorCode::EsmConfigNotValid, format!("SchemaRegistryConfig cannot be used: {error}")))
}

/// A target given by name gets a placeholder ARN in failure records when its configuration is not read.
fn function_arn(function_name: &str) -> String {
    if function_name.starts_with("arn:") {
        function_name.to_string()
    } else {
        format!("arn:aws:lambda:{}:000000000000:function:{function_name}", std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()))
    }
}
