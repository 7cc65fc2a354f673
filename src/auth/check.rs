//! `run --check`: connect with the mapping's security, list each topic's partitions, watermarks and the
//! group's committed offsets, without joining the group or consuming.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;

use super::{resolve, AuthError, ConnectionDiagnostics, DiagnosingContext, ErrorCode, KafkaSecurity, SecretSource};
use crate::config::Mapping;

/// How long [`check`] waits for the cluster before giving up.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// librdkafka requests are retried in slices this long, so a diagnosed failure ends the wait early.
const ATTEMPT: Duration = Duration::from_millis(500);

/// What [`check`] found for one mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// The mapping's UUID.
    pub mapping: String,
    /// Comma-separated bootstrap servers.
    pub bootstrap_servers: String,
    /// `plaintext`, `ssl` or `sasl_ssl`.
    pub security_protocol: String,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` when SASL is used.
    pub sasl_mechanism: Option<String>,
    /// The consumer group whose offsets are reported.
    pub consumer_group: String,
    /// One entry per configured topic, in configuration order.
    pub topics: Vec<TopicReport>,
}

/// One topic's partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicReport {
    /// The topic.
    pub topic: String,
    /// Its partitions, by id.
    pub partitions: Vec<PartitionReport>,
}

/// One partition's log bounds and the group's position in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionReport {
    /// Partition id.
    pub partition: i32,
    /// Offset of the oldest record the broker still has.
    pub low_watermark: i64,
    /// Offset the next record will get (log end).
    pub high_watermark: i64,
    /// The group's committed offset (the next record it will read), if it has one.
    pub committed_offset: Option<i64>,
    /// Records between the committed offset and the log end, when there is a committed offset.
    pub lag: Option<i64>,
}

/// [`check`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Configuration, secrets, authentication or authorization, with AWS's code.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// No broker answered in time and no authentication failure was seen.
    #[error("cannot reach the Kafka cluster at {bootstrap_servers} within {timeout:?}: {problem}")]
    Unreachable {
        /// The bootstrap servers tried.
        bootstrap_servers: String,
        /// How long the check waited.
        timeout: Duration,
        /// librdkafka's last error, redacted.
        problem: String,
    },
    /// A configured topic does not exist.
    #[error("topic {topic:?} does not exist on the cluster at {bootstrap_servers}")]
    TopicNotFound {
        /// The topic.
        topic: String,
        /// The bootstrap servers.
        bootstrap_servers: String,
    },
    /// A request failed for another reason.
    #[error("{operation} failed: {source}")]
    Kafka {
        /// What was asked (e.g. `fetching watermarks of orders-0`).
        operation: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
}

impl CheckError {
    /// AWS's code, for the errors that have one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            CheckError::Auth(error) => Some(error.code),
            _ => None,
        }
    }
}

/// Connects with the mapping's security (fetching its secrets), and reports every topic's partitions,
/// watermarks and the group's committed offsets, without consuming. Waits at most [`CHECK_TIMEOUT`].
pub async fn check(mapping: &Mapping, secrets: &dyn SecretSource) -> Result<CheckReport, CheckError> {
    check_with_timeout(mapping, secrets, CHECK_TIMEOUT).await
}

/// [`check`] with a chosen timeout.
pub async fn check_with_timeout(
    mapping: &Mapping,
    secrets: &dyn SecretSource,
    timeout: Duration,
) -> Result<CheckReport, CheckError> {
    let security = resolve(mapping, secrets).await?;
    check_resolved(mapping, security, timeout).await
}

/// [`check_with_timeout`] with security settings already resolved (e.g. by
/// [`super::resolve_with_msk`] with an explicit MSK environment).
pub async fn check_resolved(
    mapping: &Mapping,
    security: KafkaSecurity,
    timeout: Duration,
) -> Result<CheckReport, CheckError> {
    let mapping = mapping.clone();
    // librdkafka's calls block; keep them off the async workers.
    tokio::task::spawn_blocking(move || check_blocking(&mapping, &security, timeout))
        .await
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))
}

fn check_blocking(mapping: &Mapping, security: &KafkaSecurity, timeout: Duration) -> Result<CheckReport, CheckError> {
    let bootstrap_servers = security.bootstrap_servers_for(mapping);
    let group = mapping.consumer_group_id();
    let diagnostics = Arc::new(ConnectionDiagnostics::new(security, mapping));
    let timeout_ms = timeout.as_millis().max(1000).to_string();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &bootstrap_servers)
        .set("group.id", &group)
        .set("client.id", "kafka-lambda-relay-check")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("socket.connection.setup.timeout.ms", &timeout_ms);
    security.apply(&mut config);
    let consumer: BaseConsumer<DiagnosingContext> = config
        .create_with_context(DiagnosingContext::new(diagnostics.clone()))
        .map_err(|error| diagnostics.creation_error(&error))?;
    // Before the first metadata request: nothing polls this consumer until then.
    super::msk::set_initial_token(consumer.client(), diagnostics.msk_iam())?;

    let deadline = Instant::now() + timeout;
    let waiter = Waiter {
        consumer: &consumer,
        diagnostics: &diagnostics,
        deadline,
        bootstrap_servers: &bootstrap_servers,
        timeout,
    };
    let mut topics = Vec::new();
    for topic in &mapping.topics {
        let metadata = waiter.retry(&format!("reading metadata of topic {topic}"), |slice| {
            consumer.fetch_metadata(Some(topic), slice)
        })?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Err(CheckError::TopicNotFound {
                topic: topic.clone(),
                bootstrap_servers: bootstrap_servers.clone(),
            });
        };
        match found.error().map(RDKafkaErrorCode::from) {
            None => {}
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) => {
                return Err(CheckError::TopicNotFound {
                    topic: topic.clone(),
                    bootstrap_servers: bootstrap_servers.clone(),
                })
            }
            Some(code) => {
                return Err(
                    waiter.failure(KafkaError::MetadataFetch(code), format!("reading metadata of topic {topic}"))
                )
            }
        }
        let mut ids: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
        ids.sort_unstable();

        let mut partitions = Vec::new();
        for &partition in &ids {
            let (low, high) = waiter.retry(&format!("reading watermarks of {topic}-{partition}"), |slice| {
                consumer.fetch_watermarks(topic, partition, slice)
            })?;
            partitions.push(PartitionReport {
                partition,
                low_watermark: low,
                high_watermark: high,
                committed_offset: None,
                lag: None,
            });
        }
        let committed =
            waiter.retry(&format!("reading committed offsets of group {group} for topic {topic}"), |slice| {
                let mut wanted = TopicPartitionList::new();
                for &partition in &ids {
                    wanted.add_partition(topic, partition);
                }
                // Copy out and drop the returned list here: dropping a consumer while a list returned by
                // committed_offsets is alive hangs in rd_kafka_destroy (TESTING.md).
                consumer
                    .committed_offsets(wanted, slice)
                    .map(|list| list.elements().iter().map(|e| (e.partition(), e.offset())).collect::<Vec<_>>())
            })?;
        for (partition, offset) in committed {
            if let (Some(report), Offset::Offset(offset)) =
                (partitions.iter_mut().find(|p| p.partition == partition), offset)
            {
                report.committed_offset = Some(offset);
                report.lag = Some((report.high_watermark - offset).max(0));
            }
        }
        topics.push(TopicReport { topic: topic.clone(), partitions });
    }
    Ok(CheckReport {
        mapping: mapping.uuid(),
        bootstrap_servers,
        security_protocol: security.security_protocol().to_string(),
        sasl_mechanism: security.sasl_mechanism().map(String::from),
        consumer_group: group,
        topics,
    })
}

/// Retries a blocking librdkafka request in short slices until it succeeds, the diagnostics name an
/// authentication or authorization failure, or the deadline passes.
struct Waiter<'a> {
    consumer: &'a BaseConsumer<DiagnosingContext>,
    diagnostics: &'a ConnectionDiagnostics,
    deadline: Instant,
    bootstrap_servers: &'a str,
    timeout: Duration,
}

impl Waiter<'_> {
    fn retry<T>(&self, operation: &str, mut request: impl FnMut(Duration) -> KafkaResult<T>) -> Result<T, CheckError> {
        loop {
            let started = Instant::now();
            let slice = self.deadline.saturating_duration_since(started).min(ATTEMPT).max(Duration::from_millis(1));
            let error = match request(slice) {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            // Errors and logs reach the context only while the consumer is polled; polling also waits out
            // the rest of the slice when the request failed at once.
            let mut wait = slice.saturating_sub(started.elapsed());
            while let Some(event) = self.consumer.poll(wait) {
                if let Err(polled) = event {
                    self.diagnostics.record(&polled, "");
                }
                wait = Duration::ZERO;
            }
            self.diagnostics.record(&error, "");
            if let Some(auth) = self.diagnostics.diagnose_with_probe() {
                return Err(auth.into());
            }
            if is_final(&error) {
                return Err(CheckError::Kafka { operation: operation.to_string(), source: error });
            }
            if Instant::now() >= self.deadline {
                return Err(CheckError::Unreachable {
                    bootstrap_servers: self.bootstrap_servers.to_string(),
                    timeout: self.timeout,
                    problem: self.diagnostics.connection_problem().unwrap_or_else(|| error.to_string()),
                });
            }
        }
    }

    fn failure(&self, error: KafkaError, operation: String) -> CheckError {
        self.diagnostics.record(&error, "");
        match self.diagnostics.diagnose() {
            Some(auth) => auth.into(),
            None => CheckError::Kafka { operation, source: error },
        }
    }
}

/// A broker's answer that retrying will not change (librdkafka's local errors, such as timeouts and
/// transport failures, are negative codes and are retried until the deadline).
fn is_final(error: &KafkaError) -> bool {
    let Some(code) = error.rdkafka_error_code() else { return false };
    let retriable = matches!(
        code,
        RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::NotCoordinator
            | RDKafkaErrorCode::CoordinatorLoadInProgress
            | RDKafkaErrorCode::CoordinatorNotAvailable
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NotLeaderForPartition
            | RDKafkaErrorCode::UnknownTopicOrPartition
    );
    (code as i32) > 0 && !retriable
}
