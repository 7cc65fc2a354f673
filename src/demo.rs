//! `kafka-lambda-relay demo`: the whole relay on embedded defaults. An in-process Kafka (librdkafka's mock
//! cluster) is seeded with orders; a sample target function is served over the Lambda Invoke API on
//! 127.0.0.1; the relay runs against both through the same code paths as in production (aws-sdk-lambda,
//! rdkafka consumer groups, commits) until every record is delivered, then prints the report.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;

use crate::config::RelayConfig;
use crate::invoke::server::{self, LocalLambda, Reply};
use crate::kafka::mock::MockKafka;
use crate::metrics::RunReport;
use crate::relay::{RunOptions, Services};

/// The demo failed to set up.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The mock cluster could not start or be seeded.
    #[error("in-process kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The local Lambda server could not start.
    #[error("local lambda server: {0}")]
    Lambda(#[from] std::io::Error),
    /// The demo's own configuration is invalid (a bug).
    #[error("demo configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
}

const TOPIC: &str = "orders";
const FUNCTION: &str = "process-orders";

/// The sample target: handles a batch, but reports every 1000th order as failed the first time it sees it
/// (a partial batch response), so the demo shows the relay retrying from that record.
fn sample_target() -> server::Handler {
    let seen_failures: Arc<Mutex<HashSet<(String, i64)>>> = Arc::default();
    server::handler(move |invocation: server::Invocation| {
        let seen_failures = seen_failures.clone();
        async move {
            let Ok(event) = serde_json::from_slice::<aws_lambda_events::event::kafka::KafkaEvent>(&invocation.payload) else {
                return Reply::unhandled("InvalidEvent", "not a Kafka event");
            };
            let mut failures = Vec::new();
            for (partition, records) in &event.records {
                for record in records {
                    let value = record
                        .value
                        .as_deref()
                        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
                        .and_then(|v| serde_json::from_slice::<serde_json::Value>(&v).ok());
                    let order = value.as_ref().and_then(|v| v["orderId"].as_i64()).unwrap_or(0);
                    if order % 1000 == 999 && seen_failures.lock().expect("lock").insert((partition.clone(), record.offset)) {
                        failures.push(serde_json::json!({"itemIdentifier": {"partition": partition, "offset": record.offset}}));
                        break;
                    }
                }
            }
            Reply::json(&serde_json::json!({ "batchItemFailures": failures }))
        }
    })
}

/// Runs the demo and returns the relay's report.
pub async fn run(records: u32, partitions: i32) -> Result<RunReport, DemoError> {
    let partitions = partitions.max(1);
    eprintln!("demo: starting an in-process Kafka cluster (librdkafka mock) and a local Lambda Invoke API");
    let kafka = MockKafka::start(1)?;
    kafka.create_topic(TOPIC, partitions)?;
    for order in 0..records {
        let value = serde_json::json!({"orderId": order, "amount": (order % 97) as f64 + 0.5, "currency": "EUR"}).to_string();
        let key = format!("customer-{}", order % 50);
        kafka.produce(TOPIC, (order % partitions as u32) as i32, Some(key.as_bytes()), Some(value.as_bytes()))?;
    }
    kafka.flush()?;
    eprintln!("demo: produced {records} orders to topic {TOPIC:?} ({partitions} partitions) at {}", kafka.bootstrap_servers());

    let lambda = LocalLambda::start().await?;
    lambda.register(FUNCTION, Duration::from_secs(30), sample_target());
    eprintln!("demo: sample function {FUNCTION:?} is served at {}", lambda.endpoint());

    let config = RelayConfig::parse_valid(
        &serde_json::json!({"Mappings": [{
            "FunctionName": FUNCTION,
            "Topics": [TOPIC],
            "StartingPosition": "TRIM_HORIZON",
            "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [kafka.bootstrap_servers()]}},
            "SelfManagedKafkaEventSourceConfig": {"ConsumerGroupId": "demo-relay"},
            "BatchSize": 100,
            "MaximumBatchingWindowInSeconds": 0,
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "MaximumRetryAttempts": 3
        }]})
        .to_string(),
    )?;
    eprintln!("demo: relaying with BatchSize 100, ReportBatchItemFailures, MaximumRetryAttempts 3 (every 1000th order fails once)");

    let sdk_config = server::local_sdk_config(&lambda.endpoint()).await;
    let services = Services {
        invoker: Arc::new(crate::invoke::lambda::LambdaInvoker::new(&sdk_config)),
        sinks: Arc::new(|arn: &str| Err(crate::destination::DestinationError::InvalidArn { arn: arn.to_string() })),
        secrets: Arc::new(crate::auth::SecretsManagerSource::new(&sdk_config)),
    };
    let total = records as u64;
    let options = RunOptions {
        until_idle: true,
        retry_backoff: (Duration::from_millis(100), Duration::from_secs(1)),
        progress: Some(Arc::new(move |uuid: &str, counts: &crate::metrics::Counts, _lag: Option<i64>| {
            eprintln!(
                "demo: [{uuid}] polled {}/{total}, delivered {}, invocations {} ({} partial/failed)",
                counts.polled, counts.delivered, counts.invocations, counts.failed_invocations
            );
        })),
        ..RunOptions::default()
    };
    let report = crate::app::run_all(&config, &services, &options).await;
    let mapping = &report.mappings[0];
    eprintln!(
        "demo: done: {} of {total} orders delivered in {} invocations ({} partial responses retried), {} committed, lag {}",
        mapping.counts.delivered, mapping.counts.invocations, mapping.counts.failed_invocations, mapping.counts.committed, mapping.offset_lag.sum
    );
    eprintln!("demo: the target received {} invocations; the run report follows on stdout", lambda.invocation_count(FUNCTION));
    drop(kafka);
    Ok(report)
}
