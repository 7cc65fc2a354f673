//! Relay throughput against its reference: a raw rdkafka consumer reading the same topic on the same
//! in-process Kafka (librdkafka's mock cluster). The relay's figure includes batching, building the exact
//! event, invoking an in-process Lambda Invoke API over HTTP (aws-sdk-lambda) and committing.
//!
//! `cargo bench --bench relay_throughput` prints medians over several rounds, and the ratio.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_lambda_relay::app::run_all;
use kafka_lambda_relay::auth::{SecretError, SecretSource};
use kafka_lambda_relay::config::RelayConfig;
use kafka_lambda_relay::invoke::lambda::LambdaInvoker;
use kafka_lambda_relay::invoke::server::{echo_success, local_sdk_config, LocalLambda};
use kafka_lambda_relay::kafka::mock::MockKafka;
use kafka_lambda_relay::relay::{RunOptions, Services};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::ClientConfig;

const RECORDS: u64 = 100_000;
const PARTITIONS: i32 = 16;
const VALUE_BYTES: usize = 200;
const ROUNDS: usize = 5;

struct NoSecrets;

#[async_trait::async_trait]
impl SecretSource for NoSecrets {
    async fn secret_string(&self, arn: &str) -> Result<String, SecretError> {
        Err(SecretError::NotFound { arn: arn.into(), code: "none".into() })
    }
}

fn seed(kafka: &MockKafka, topic: &str) {
    kafka.create_topic(topic, PARTITIONS).expect("topic");
    let value = vec![b'v'; VALUE_BYTES];
    for i in 0..RECORDS {
        kafka.produce(topic, (i % PARTITIONS as u64) as i32, None, Some(&value)).expect("produce");
    }
    kafka.flush().expect("flush");
}

async fn raw_consumer(bootstrap: &str, topic: &str) -> Duration {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("raw-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let start = Instant::now();
    let mut seen = 0;
    while seen < RECORDS {
        consumer.recv().await.expect("message");
        seen += 1;
    }
    start.elapsed()
}

async fn relay(kafka: &MockKafka, topic: &str, batch_size: u32) -> Duration {
    let lambda = LocalLambda::start().await.expect("lambda");
    lambda.register("bench", Duration::from_secs(30), echo_success());
    let sdk = local_sdk_config(&lambda.endpoint()).await;
    let services = Services {
        invoker: Arc::new(LambdaInvoker::new(&sdk)),
        sinks: Arc::new(|arn: &str| Err(kafka_lambda_relay::destination::DestinationError::InvalidArn { arn: arn.to_string() })),
        secrets: Arc::new(NoSecrets),
    };
    let config = RelayConfig::parse_valid(
        &serde_json::json!({"Mappings": [{
            "FunctionName": "bench", "Topics": [topic], "StartingPosition": "TRIM_HORIZON",
            "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [kafka.bootstrap_servers()]}},
            "SelfManagedKafkaEventSourceConfig": {"ConsumerGroupId": format!("relay-{}", uuid::Uuid::new_v4())},
            "BatchSize": batch_size, "MaximumBatchingWindowInSeconds": 0
        }]})
        .to_string(),
    )
    .expect("config");
    let options = RunOptions { until_idle: true, session_timeout: Duration::from_millis(1500), ..RunOptions::default() };
    let start = Instant::now();
    let report = run_all(&config, &services, &options).await;
    let elapsed = start.elapsed();
    assert_eq!(report.mappings[0].counts.delivered, RECORDS, "every record delivered");
    elapsed
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let kafka = MockKafka::start(1).expect("mock cluster");
    let topic = "bench";
    seed(&kafka, topic);
    println!("{RECORDS} records of {VALUE_BYTES} B over {PARTITIONS} partitions, in-process mock cluster, {ROUNDS} rounds");
    let mut raw = Vec::new();
    let mut relayed_100 = Vec::new();
    let mut relayed_1000 = Vec::new();
    for _ in 0..ROUNDS {
        raw.push(RECORDS as f64 / raw_consumer(kafka.bootstrap_servers(), topic).await.as_secs_f64());
        relayed_100.push(RECORDS as f64 / relay(&kafka, topic, 100).await.as_secs_f64());
        relayed_1000.push(RECORDS as f64 / relay(&kafka, topic, 1000).await.as_secs_f64());
    }
    let (raw, r100, r1000) = (median(raw), median(relayed_100), median(relayed_1000));
    println!("reference: raw StreamConsumer          median {raw:>10.0} records/s");
    println!("relay, BatchSize 100  (poll→invoke→commit) median {r100:>10.0} records/s  ({:.2} of reference)", r100 / raw);
    println!("relay, BatchSize 1000 (poll→invoke→commit) median {r1000:>10.0} records/s  ({:.2} of reference)", r1000 / raw);
}
