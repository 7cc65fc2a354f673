//! Fast-tier helpers: an in-process Kafka (librdkafka mock cluster) and an in-process Lambda Invoke API,
//! with the relay's production clients pointed at them. Re-exported by `common`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_lambda_relay::auth::{SecretError, SecretSource};
use kafka_lambda_relay::config::RelayConfig;
use kafka_lambda_relay::destination::GivenUp;
use kafka_lambda_relay::invoke::lambda::LambdaInvoker;
use kafka_lambda_relay::invoke::server::{local_sdk_config, Handler, LocalLambda};
use kafka_lambda_relay::kafka::mock::MockKafka;
use kafka_lambda_relay::destination::{AwsError, DestinationError};
use kafka_lambda_relay::relay::{FailureSink, RunOptions, Services};

use super::{committed_offsets, TestResult};

/// No secrets: the fast tier uses plaintext clusters.
pub struct NoSecrets;

#[async_trait::async_trait]
impl SecretSource for NoSecrets {
    async fn secret_string(&self, arn: &str) -> Result<String, SecretError> {
        Err(SecretError::NotFound { arn: arn.to_string(), code: "ResourceNotFoundException".into() })
    }
}

/// What a fake destination received, one entry per given-up batch.
#[derive(Debug, Clone)]
pub struct Written {
    pub condition: &'static str,
    pub records: Vec<(i32, i64)>,
    pub approximate_invoke_count: u32,
    pub payload_len: usize,
}

/// An on-failure destination that records what it receives and can be made to fail.
#[derive(Default)]
pub struct FakeDestination {
    pub written: Mutex<Vec<Written>>,
    pub failing: std::sync::atomic::AtomicBool,
    pub refused: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl FailureSink for FakeDestination {
    async fn send(&self, given_up: &GivenUp<'_>) -> Result<String, DestinationError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            self.refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Err(DestinationError::SendMessage {
                queue_url: "fake".into(),
                source: AwsError::service("AccessDenied", 403, "test destination is down"),
            });
        }
        self.written.lock().unwrap().push(Written {
            condition: given_up.condition.as_str(),
            records: given_up.records.iter().map(|r| (r.key_partition.partition, r.offset)).collect(),
            approximate_invoke_count: given_up.approximate_invoke_count,
            payload_len: given_up.payload.len(),
        });
        Ok("fake".into())
    }
}

/// One in-process Kafka, one in-process Lambda, and services pointing at them.
pub struct Harness {
    pub kafka: MockKafka,
    pub lambda: LocalLambda,
    pub services: Services,
    pub destination: Arc<FakeDestination>,
}

impl Harness {
    pub async fn start() -> TestResult<Self> {
        let kafka = MockKafka::start(1)?;
        let lambda = LocalLambda::start().await?;
        let sdk = local_sdk_config(&lambda.endpoint()).await;
        let destination = Arc::new(FakeDestination::default());
        let sink = destination.clone();
        let services = Services {
            invoker: Arc::new(LambdaInvoker::new(&sdk)),
            sinks: Arc::new(move |_arn: &str| Ok(sink.clone() as Arc<dyn FailureSink>)),
            secrets: Arc::new(NoSecrets),
        };
        Ok(Self { kafka, lambda, services, destination })
    }

    /// A topic with `partitions` partitions and `per_partition` records in each; values are
    /// `"<partition>:<offset>"`.
    pub fn seed(&self, topic: &str, partitions: i32, per_partition: i64) -> TestResult {
        self.kafka.create_topic(topic, partitions)?;
        self.produce(topic, partitions, 0, per_partition)
    }

    /// Produces records `from..to` (by per-partition index) to every partition.
    pub fn produce(&self, topic: &str, partitions: i32, from: i64, to: i64) -> TestResult {
        for i in from..to {
            for p in 0..partitions {
                self.kafka.produce(topic, p, Some(format!("k{i}").as_bytes()), Some(format!("{p}:{i}").as_bytes()))?;
            }
        }
        self.kafka.flush()?;
        Ok(())
    }

    pub fn register(&self, function: &str, handler: Handler) {
        self.lambda.register(function, Duration::from_secs(5), handler);
    }

    /// Every (partition, offset) the function received, in the order the server received the invocations.
    pub fn delivered(&self, function: &str) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for invocation in self.lambda.invocations(function) {
            out.extend(event_records(&invocation.payload));
        }
        out
    }

    /// Group's committed offsets for partitions 0..partitions (None when nothing is committed).
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
        committed_offsets(self.kafka.bootstrap_servers(), group, topic, partitions).expect("committed offsets")
    }
}

/// (partition, offset) of every record of an event, in event order.
pub fn event_records(payload: &[u8]) -> Vec<(i32, i64)> {
    let event: aws_lambda_events::event::kafka::KafkaEvent = serde_json::from_slice(payload).expect("a Kafka event");
    let mut keys: Vec<&String> = event.records.keys().collect();
    keys.sort();
    let mut out = Vec::new();
    for key in keys {
        for record in &event.records[key] {
            out.push((record.partition as i32, record.offset));
        }
    }
    out
}

/// A one-mapping configuration; `extra` fields are merged into the mapping.
pub fn config(bootstrap: &str, topic: &str, function: &str, group: &str, extra: serde_json::Value) -> RelayConfig {
    let mut mapping = serde_json::json!({
        "FunctionName": function,
        "Topics": [topic],
        "StartingPosition": "TRIM_HORIZON",
        "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [bootstrap]}},
        "SelfManagedKafkaEventSourceConfig": {"ConsumerGroupId": group},
        "MaximumBatchingWindowInSeconds": 0
    });
    for (key, value) in extra.as_object().expect("extra is an object") {
        mapping[key] = value.clone();
    }
    RelayConfig::parse_valid(&serde_json::json!({ "Mappings": [mapping] }).to_string()).expect("valid test config")
}

/// Options for tests: stop when caught up, short backoffs.
pub fn until_idle() -> RunOptions {
    RunOptions {
        until_idle: true,
        assignment_wait: Duration::from_secs(20),
        retry_backoff: (Duration::from_millis(20), Duration::from_millis(100)),
        transient_backoff: (Duration::from_millis(20), Duration::from_millis(100)),
        // The mock cluster waits a session timeout before re-forming a group its last member left.
        session_timeout: Duration::from_millis(1500),
        ..RunOptions::default()
    }
}

/// Per partition, the offsets in the order they were delivered.
pub fn offsets_by_partition(delivered: &[(i32, i64)]) -> BTreeMap<i32, Vec<i64>> {
    let mut map: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for &(p, o) in delivered {
        map.entry(p).or_default().push(o);
    }
    map
}

/// Options for a run that ends after `seconds` (a scheduled run's deadline), with a 1 s target timeout.
pub fn bounded(seconds: u64) -> RunOptions {
    RunOptions {
        deadline: Some(std::time::Instant::now() + Duration::from_secs(seconds)),
        target_timeout: Some(Duration::from_secs(1)),
        margin: Duration::from_millis(200),
        ..until_idle()
    }
}
