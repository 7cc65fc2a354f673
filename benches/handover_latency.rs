//! Produce-to-invoke latency across a hand-over (issue 10): a steady 2,000 records/s over 8 partitions
//! with `MaximumBatchingWindowInSeconds: 0`, consumed by a run whose successor joins the group before the
//! run leaves (continuous mode's hand-over), on the in-process Kafka and Lambda.
//!
//! Prints one JSON line: `{"p50_ms", "p99_ms", "max_ms", "handover_gap_ms"}`: latency percentiles of records
//! invoked outside the hand-over (more than 2 s from the predecessor leaving), the largest latency overall,
//! and the longest time a partition went without an invocation around the hand-over.
//!
//! `cargo bench --bench handover_latency`

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kafka_lambda_relay::app::run_all;
use kafka_lambda_relay::auth::{SecretError, SecretSource};
use kafka_lambda_relay::config::RelayConfig;
use kafka_lambda_relay::destination::DestinationError;
use kafka_lambda_relay::invoke::lambda::LambdaInvoker;
use kafka_lambda_relay::invoke::server::{handler, local_sdk_config, LocalLambda, Reply};
use kafka_lambda_relay::kafka::mock::MockKafka;
use kafka_lambda_relay::relay::{RunOptions, Services};
use serde_json::{json, Value};

const PARTITIONS: i32 = 8;
const RECORDS_PER_SECOND: u64 = 2_000;

struct NoSecrets;

#[async_trait::async_trait]
impl SecretSource for NoSecrets {
    async fn secret_string(&self, arn: &str) -> Result<String, SecretError> {
        Err(SecretError::NotFound { arn: arn.to_string(), code: "ResourceNotFoundException".into() })
    }
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as i64
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(bench());
}

async fn bench() {
    let kafka = Arc::new(MockKafka::start(1).expect("mock cluster"));
    let topic = format!("latency-{}", uuid::Uuid::new_v4().simple());
    kafka.create_topic(&topic, PARTITIONS).expect("topic");
    let lambda = LocalLambda::start().await.expect("local lambda");
    // (arrival unix ms, partition, record create time unix ms), per record invoked.
    let seen: Arc<Mutex<Vec<(i64, i32, i64)>>> = Arc::default();
    let record = seen.clone();
    lambda.register(
        "target",
        Duration::from_secs(1),
        handler(move |invocation| {
            let now = unix_ms();
            let event: Value = serde_json::from_slice(&invocation.payload).unwrap_or_default();
            let mut seen = record.lock().expect("lock");
            for records in event["records"].as_object().into_iter().flat_map(|m| m.values()) {
                for r in records.as_array().into_iter().flatten() {
                    seen.push((now, r["partition"].as_i64().unwrap_or(-1) as i32, r["timestamp"].as_i64().unwrap_or(now)));
                }
            }
            async { Reply::success("{}") }
        }),
    );
    let sdk = local_sdk_config(&lambda.endpoint()).await;
    let services = Services {
        invoker: Arc::new(LambdaInvoker::new(&sdk)),
        sinks: Arc::new(|arn: &str| Err(DestinationError::InvalidArn { arn: arn.to_string() })),
        secrets: Arc::new(NoSecrets),
    };
    let config = RelayConfig::parse_valid(
        &json!({"Mappings": [{
            "FunctionName": "target", "Topics": [topic], "StartingPosition": "LATEST",
            "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [kafka.bootstrap_servers()]}},
            "SelfManagedKafkaEventSourceConfig": {"ConsumerGroupId": format!("group-{topic}")},
            "BatchSize": 100, "MaximumBatchingWindowInSeconds": 0
        }]})
        .to_string(),
    )
    .expect("config");

    // The steady producer: every 10 ms, RECORDS_PER_SECOND / 100 records spread over the partitions.
    let producing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let producer = {
        let (kafka, topic, producing) = (kafka.clone(), topic.clone(), producing.clone());
        std::thread::spawn(move || {
            let per_tick = RECORDS_PER_SECOND / 100;
            let started = Instant::now();
            let mut tick = 0u64;
            let mut produced = 0u64;
            while producing.load(std::sync::atomic::Ordering::SeqCst) {
                for i in 0..per_tick {
                    let partition = ((tick * per_tick + i) % PARTITIONS as u64) as i32;
                    kafka.produce_at(&topic, partition, None, Some(b"x"), Some(unix_ms())).expect("produce");
                    produced += 1;
                }
                tick += 1;
                let next = started + Duration::from_millis(10 * tick);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            kafka.flush().expect("flush");
            produced as f64 / started.elapsed().as_secs_f64()
        })
    };

    let options = |seconds: u64| RunOptions {
        deadline: Some(Instant::now() + Duration::from_secs(seconds)),
        until_idle: false,
        target_timeout: Some(Duration::from_secs(1)),
        margin: Duration::from_millis(200),
        session_timeout: Duration::from_millis(1500),
        ..RunOptions::default()
    };
    let (first, second) = (options(10), options(18));
    let predecessor = async {
        run_all(&config, &services, &first).await;
        unix_ms()
    };
    let successor = async {
        // Joins 4 s before the predecessor stops invoking, as a continuous run's successor does.
        tokio::time::sleep(Duration::from_secs(5)).await;
        run_all(&config, &services, &second).await;
    };
    let (left_at, ()) = tokio::join!(predecessor, successor);
    producing.store(false, std::sync::atomic::Ordering::SeqCst);
    let produced_per_second = producer.join().expect("producer");

    let seen = seen.lock().expect("lock");
    // Records produced after the first assignment settled (the run started at LATEST).
    let warm = seen.iter().map(|(_, _, created)| *created).min().unwrap_or(0) + 2_000;
    let mut outside: Vec<i64> = seen
        .iter()
        .filter(|(at, _, created)| *created >= warm && (*at - left_at).abs() > 2_000)
        .map(|(at, _, created)| at - created)
        .collect();
    outside.sort_unstable();
    let max_ms = seen.iter().filter(|(_, _, created)| *created >= warm).map(|(at, _, created)| at - created).max().unwrap_or(0);
    let mut handover_gap_ms = 0;
    for partition in 0..PARTITIONS {
        let mut arrivals: Vec<i64> = seen.iter().filter(|(_, p, _)| *p == partition).map(|(at, _, _)| *at).collect();
        arrivals.sort_unstable();
        arrivals.dedup();
        for pair in arrivals.windows(2) {
            if pair[0] <= left_at + 2_000 && pair[1] >= left_at - 2_000 {
                handover_gap_ms = handover_gap_ms.max(pair[1] - pair[0]);
            }
        }
    }
    println!(
        "{}",
        json!({
            "p50_ms": percentile(&outside, 0.50),
            "p99_ms": percentile(&outside, 0.99),
            "max_ms": max_ms,
            "handover_gap_ms": handover_gap_ms,
            "records_invoked": seen.len(),
            "produced_per_second": produced_per_second.round(),
        })
    );
}
