//! Relay throughput against its reference, a raw rdkafka consumer reading the same topic of the same
//! Kafka (librdkafka's mock cluster, hosted by this process) in the same run.
//!
//! Each measured consumer runs in a process of its own (this binary, started again with a role), so peak
//! RSS is the relay's alone; the target is a no-op Lambda Invoke API in a third process (it reads the body
//! and answers `null`: no JSON validation, nothing stored). Per configuration it prints one JSON line:
//!
//! `{"batch_size", "records", "raw_rps", "relay_rps", "ratio", "steady_ratio", "fixed_ms", "peak_rss_mb"}`
//!
//! - `raw_rps`, `relay_rps`: records / whole run (join, consume, commit, leave), medians over the rounds;
//! - `ratio`: relay_rps / raw_rps;
//! - `steady_ratio`: steady-state rates (raw: first to last record; relay: first invocation sent to last
//!   answered) relay / raw;
//! - `fixed_ms`: the relay's run time outside its steady state (group join, caught-up check, final
//!   commit, leaving the group);
//! - `peak_rss_mb`: the relay process's peak resident memory.
//!
//! `cargo bench --bench relay_throughput` runs 1,000,000 records of 200 B over 16 partitions, 5 rounds;
//! `-- --quick` runs 200,000 records, 3 rounds. A last configuration (16 MiB of 1 KiB records, BatchSize
//! 10000) is about memory. Records are produced with lz4 compression: the mock cluster keeps at most 5 MiB
//! per partition, and compressed batches let 1,000,000 records fit in 16 partitions. `BENCH_DEBUG=1` also
//! prints each relay run's invocation count, mean invoke latency and mean invocations in flight.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_lambda_relay::app::run_all;
use kafka_lambda_relay::auth::{SecretError, SecretSource};
use kafka_lambda_relay::config::RelayConfig;
use kafka_lambda_relay::destination::DestinationError;
use kafka_lambda_relay::invoke::lambda::LambdaInvoker;
use kafka_lambda_relay::invoke::server::local_sdk_config;
use kafka_lambda_relay::invoke::{FunctionInfo, FunctionLookupError, Invoke, InvokeResult};
use kafka_lambda_relay::kafka::mock::MockKafka;
use kafka_lambda_relay::relay::{RunOptions, Services};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

const PARTITIONS: i32 = 16;

/// A measured configuration.
struct Case {
    batch_size: u32,
    records: u64,
    value_bytes: usize,
    topic: String,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--noop-lambda") => noop_lambda(),
        Some("--raw") => child_raw(&args[2], &args[3], args[4].parse().expect("records")),
        Some("--relay") => child_relay(&args[2], &args[3], args[4].parse().expect("records"), args[5].parse().expect("batch size"), &args[6]),
        _ => parent(args.iter().any(|a| a == "--quick")),
    }
}

fn parent(quick: bool) {
    let (records, rounds) = if quick { (200_000, 3) } else { (1_000_000, 5) };
    let kafka = MockKafka::start(1).expect("mock cluster");
    let mut lambda = spawn_role(&["--noop-lambda"]);
    let endpoint = first_line(&mut lambda);
    let throughput = Case { batch_size: 0, records, value_bytes: 200, topic: "bench-200b".into() };
    let memory = Case { batch_size: 10_000, records: 16_384, value_bytes: 1024, topic: "bench-1k".into() };
    for case in [&throughput, &memory] {
        seed(&kafka, &case.topic, case.records, case.value_bytes);
    }
    eprintln!("{records} records of 200 B over {PARTITIONS} partitions (mock cluster, lz4), {rounds} rounds; target {endpoint}");
    // `BENCH_CASES=100,1000` measures only those batch sizes (10000 is the memory case).
    let wanted: Option<Vec<u32>> = std::env::var("BENCH_CASES").ok().map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect());
    let wanted = |batch_size: u32| wanted.as_ref().is_none_or(|w| w.contains(&batch_size));
    for batch_size in [100, 1000].into_iter().filter(|&b| wanted(b)) {
        let case = Case { batch_size, topic: throughput.topic.clone(), ..throughput };
        println!("{}", measure(kafka.bootstrap_servers(), &endpoint, &case, rounds));
    }
    if wanted(memory.batch_size) {
        println!("{}", measure(kafka.bootstrap_servers(), &endpoint, &memory, rounds.min(3)));
    }
    let _ = lambda.kill();
    let _ = lambda.wait();
}

/// Runs the raw consumer and the relay `rounds` times each, alternating, and summarizes the medians.
fn measure(bootstrap: &str, endpoint: &str, case: &Case, rounds: usize) -> Value {
    let mut raw = Vec::new();
    let mut relay = Vec::new();
    for _ in 0..rounds {
        raw.push(run_child(&["--raw", bootstrap, &case.topic, &case.records.to_string()]));
        relay.push(run_child(&["--relay", bootstrap, &case.topic, &case.records.to_string(), &case.batch_size.to_string(), endpoint]));
    }
    let records = case.records as f64;
    let rate = |runs: &[Value], key: &str| median(runs.iter().map(|r| records / (r[key].as_f64().expect("ms") / 1000.0)).collect());
    let (raw_rps, relay_rps) = (rate(&raw, "total_ms"), rate(&relay, "total_ms"));
    let (raw_steady, relay_steady) = (rate(&raw, "steady_ms"), rate(&relay, "steady_ms"));
    let fixed_ms = median(relay.iter().map(|r| r["total_ms"].as_f64().unwrap() - r["steady_ms"].as_f64().unwrap()).collect());
    let peak_rss_mb = relay.iter().map(|r| r["peak_rss_mb"].as_f64().unwrap()).fold(0.0, f64::max);
    json!({
        "batch_size": case.batch_size,
        "records": case.records,
        "raw_rps": raw_rps.round(),
        "relay_rps": relay_rps.round(),
        "ratio": round2(relay_rps / raw_rps),
        "steady_ratio": round2(relay_steady / raw_steady),
        "fixed_ms": fixed_ms.round(),
        "peak_rss_mb": round2(peak_rss_mb),
    })
}

fn seed(kafka: &MockKafka, topic: &str, records: u64, value_bytes: usize) {
    kafka.create_topic(topic, PARTITIONS).expect("topic");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let filler = vec![b'v'; value_bytes - 10];
    for i in 0..records {
        let mut value = format!("{i:010}").into_bytes();
        value.extend_from_slice(&filler);
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).partition((i % PARTITIONS as u64) as i32).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
}

// --- the measured processes ------------------------------------------------------------------------------

/// Reads `records` records with a plain StreamConsumer and prints its timings.
fn child_raw(bootstrap: &str, topic: &str, records: u64) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let start = Instant::now();
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("raw-{}", uuid::Uuid::new_v4()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            // The relay's fetch settings: with librdkafka's defaults a full prefetch queue waits out a 1 s
            // backoff, which would make the reference slow, not the relay fast.
            .set("fetch.wait.max.ms", "100")
            .set("fetch.queue.backoff.ms", "5")
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let mut first = None;
        for _ in 0..records {
            consumer.recv().await.expect("message");
            first.get_or_insert_with(Instant::now);
        }
        let steady = first.expect("records").elapsed();
        drop(consumer);
        print_timings(start.elapsed(), steady);
    });
}

/// Runs the relay on one mapping until it is caught up and prints its timings.
fn child_relay(bootstrap: &str, topic: &str, records: u64, batch_size: u32, endpoint: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let start = Instant::now();
        let sdk = local_sdk_config(endpoint).await;
        let timing = Arc::new(Timing::new(Arc::new(LambdaInvoker::new(&sdk))));
        let services = Services {
            invoker: timing.clone(),
            sinks: Arc::new(|arn: &str| Err(DestinationError::InvalidArn { arn: arn.to_string() })),
            secrets: Arc::new(NoSecrets),
        };
        let config = RelayConfig::parse_valid(
            &json!({"Mappings": [{
                "FunctionName": "bench", "Topics": [topic], "StartingPosition": "TRIM_HORIZON",
                "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [bootstrap]}},
                "SelfManagedKafkaEventSourceConfig": {"ConsumerGroupId": format!("relay-{}", uuid::Uuid::new_v4())},
                "BatchSize": batch_size
            }]})
            .to_string(),
        )
        .expect("config");
        let options = RunOptions {
            until_idle: true,
            target_timeout: Some(Duration::from_secs(30)),
            session_timeout: Duration::from_millis(1500),
            ..RunOptions::default()
        };
        let report = run_all(&config, &services, &options).await;
        let total = start.elapsed();
        let counts = report.mappings[0].counts;
        assert_eq!((counts.delivered, counts.committed), (records, records), "every record delivered and committed: {report:?}");
        if std::env::var_os("BENCH_DEBUG").is_some() {
            let calls = timing.calls.load(Ordering::SeqCst).max(1);
            eprintln!(
                "relay: {calls} invocations, mean latency {} us, mean in flight {:.1}, cpu {} ms in {} ms",
                timing.busy_us.load(Ordering::SeqCst) / calls,
                timing.busy_us.load(Ordering::SeqCst) as f64 / timing.steady().as_micros().max(1) as f64,
                cpu_ms(),
                total.as_millis()
            );
        }
        print_timings(total, timing.steady());
    });
}

fn print_timings(total: Duration, steady: Duration) {
    println!("{}", json!({"total_ms": total.as_secs_f64() * 1000.0, "steady_ms": steady.as_secs_f64() * 1000.0, "peak_rss_mb": peak_rss_mb()}));
}

/// CPU time (user + system) this process used so far, in milliseconds.
fn cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0) + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    ticks * 10 // USER_HZ is 100 on Linux
}

/// The process's peak resident set size (VmHWM), in MiB.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kib.unwrap_or(0.0) / 1024.0
}

/// The invoker, remembering when the first invocation was sent and the last one answered.
struct Timing {
    inner: Arc<dyn Invoke>,
    origin: Instant,
    first_sent_us: AtomicI64,
    last_done_us: AtomicI64,
    busy_us: AtomicI64,
    calls: AtomicI64,
}

impl Timing {
    fn new(inner: Arc<dyn Invoke>) -> Self {
        Self { inner, origin: Instant::now(), first_sent_us: AtomicI64::new(i64::MAX), last_done_us: AtomicI64::new(0), busy_us: AtomicI64::new(0), calls: AtomicI64::new(0) }
    }

    fn steady(&self) -> Duration {
        let (first, last) = (self.first_sent_us.load(Ordering::SeqCst), self.last_done_us.load(Ordering::SeqCst));
        Duration::from_micros((last - first).max(0) as u64)
    }
}

#[async_trait::async_trait]
impl Invoke for Timing {
    async fn invoke(&self, function_name: &str, payload: Vec<u8>, timeout: Duration) -> InvokeResult {
        self.first_sent_us.fetch_min(self.origin.elapsed().as_micros() as i64, Ordering::SeqCst);
        let sent = Instant::now();
        let result = self.inner.invoke(function_name, payload, timeout).await;
        self.busy_us.fetch_add(sent.elapsed().as_micros() as i64, Ordering::SeqCst);
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.last_done_us.fetch_max(self.origin.elapsed().as_micros() as i64, Ordering::SeqCst);
        result
    }

    async fn function_info(&self, function_name: &str) -> Result<FunctionInfo, FunctionLookupError> {
        self.inner.function_info(function_name).await
    }
}

struct NoSecrets;

#[async_trait::async_trait]
impl SecretSource for NoSecrets {
    async fn secret_string(&self, arn: &str) -> Result<String, SecretError> {
        Err(SecretError::NotFound { arn: arn.into(), code: "none".into() })
    }
}

/// A Lambda Invoke API that does nothing: reads the request, answers `null` (HTTP 200). Prints its
/// endpoint on stdout, then serves until killed.
fn noop_lambda() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let app = axum::Router::new().route(
            "/2015-03-31/functions/{name}/invocations",
            axum::routing::post(|_body: axum::body::Bytes| async { ([("X-Amz-Executed-Version", "$LATEST")], "null") }),
        )
        // Events up to Lambda's 6 MB (axum refuses bodies over 2 MB by default).
        .layer(axum::extract::DefaultBodyLimit::max(8 << 20));
        use axum::serve::ListenerExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!("http://{}", listener.local_addr().expect("address"));
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app.into_make_service()).await.expect("serve");
    });
}

// --- plumbing --------------------------------------------------------------------------------------------

fn spawn_role(args: &[&str]) -> Child {
    Command::new(std::env::current_exe().expect("own path"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a measured process")
}

fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("piped")).read_line(&mut line).expect("read");
    line.trim().to_string()
}

fn run_child(args: &[&str]) -> Value {
    let mut child = spawn_role(args);
    let line = first_line(&mut child);
    let status = child.wait().expect("wait");
    assert!(status.success(), "{args:?} failed: {status}");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{args:?} printed {line:?}: {e}"))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    values[values.len() / 2]
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
