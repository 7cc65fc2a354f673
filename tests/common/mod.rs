//! The one test-support module (`mod common;` from a `tests/*.rs` file): helpers for the end-to-end tests
//! and, in `in_process`, for the fast tier.
//!
//! The processes these tests talk to are started by `scripts/test.sh`, which passes where they are in
//! environment variables; each accessor panics naming its variable when it is missing, so running an e2e
//! test by hand without the script says what to do.
//!
//! - where things are: [`tansu`], [`moto`], [`lambda`], [`out_dir`]
//! - Kafka: [`unique_name`], [`create_topic`], [`populate_topic`], [`committed_offsets`], [`commit_offsets`]
//! - what the target functions received: [`delivered`] (reads `$RELAY_TEST_OUT/<function>.jsonl`)
//! - the relay: [`relay_bin`], [`tansu_mapping`], [`run_relay`], and [`RelayWatch`] for the relay served by
//!   `cargo lambda watch`
//! - the fast tier (no processes): [`Harness`] (an in-process Kafka and Lambda Invoke API, the relay's
//!   clients pointed at them), [`config`], [`until_idle`], [`bounded`], in `in_process`
#![allow(dead_code)] // each test file uses a different subset

mod in_process;
#[allow(unused_imports)] // the e2e tests use none of it
pub use in_process::*;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use serde::Deserialize;
use serde_json::{json, Value};

/// What the helpers return on failure.
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How long a relay run, a `cargo lambda invoke` or a Kafka operation may take before the test gives up.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(300);
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

fn required_env(name: &str, what: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: it names {what}; run the e2e tier through scripts/test.sh, which starts it")
    })
}

/// `RELAY_TEST_TANSU`: `127.0.0.1:PORT` of a plain tansu broker on SQLite storage.
pub fn tansu() -> String {
    required_env("RELAY_TEST_TANSU", "the tansu broker (127.0.0.1:PORT)")
}

/// `RELAY_TEST_MOTO`: `http://127.0.0.1:PORT` of moto_server.
pub fn moto() -> String {
    required_env("RELAY_TEST_MOTO", "moto_server (http://127.0.0.1:PORT)")
}

/// `RELAY_TEST_LAMBDA`: `http://127.0.0.1:PORT` of `cargo lambda watch` serving `functions/`.
pub fn lambda() -> String {
    required_env("RELAY_TEST_LAMBDA", "cargo lambda watch serving the target functions (http://127.0.0.1:PORT)")
}

/// `RELAY_TEST_OUT`: the directory the target functions append `<function>.jsonl` to.
pub fn out_dir() -> PathBuf {
    PathBuf::from(required_env("RELAY_TEST_OUT", "the directory the target functions write to"))
}

/// `PREFIX-<12 random hex digits>`: topics, groups and mapping UUIDs no other test (or earlier run) uses.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Seconds since the Unix epoch, as `StartingPositionTimestamp` wants them.
pub fn unix_seconds_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_secs() as i64
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory under the system's temporary directory.
    pub fn new(prefix: &str) -> TestResult<TempDir> {
        let path = std::env::temp_dir().join(unique_name(prefix));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// --- Kafka -----------------------------------------------------------------------------------------------

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime").block_on(future)
}

/// Creates `name` with `partitions` partitions through the admin client.
pub fn create_topic(bootstrap: &str, name: &str, partitions: i32) -> TestResult {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT)).request_timeout(Some(KAFKA_TIMEOUT));
    for result in block_on(admin.create_topics([&topic], &options))? {
        result.map_err(|(topic, code)| format!("cannot create topic {topic:?}: {code}"))?;
    }
    Ok(())
}

/// One record `populate_topic` wrote, as the broker acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Produced {
    /// Partition.
    pub partition: i32,
    /// Offset the broker assigned.
    pub offset: i64,
    /// The value written.
    pub value: String,
}

/// One delivery report: the record's index, and its partition and offset or the error.
type DeliveryReport = (usize, Result<(i32, i64), String>);

/// Collects delivery reports.
struct DeliveryLog(Mutex<Vec<DeliveryReport>>);

impl ClientContext for DeliveryLog {}

impl ProducerContext for DeliveryLog {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        let entry = match result {
            Ok(message) => Ok((message.partition(), message.offset())),
            Err((error, _)) => Err(error.to_string()),
        };
        self.0.lock().expect("delivery log lock").push((index, entry));
    }
}

/// Writes `count` records, record `i` with value `value(i)` to partition `i % partitions`, and returns
/// what the broker acknowledged, sorted by partition and offset.
pub fn populate_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    count: usize,
    value: impl Fn(usize) -> String,
) -> TestResult<Vec<Produced>> {
    populate_topic_at(bootstrap, topic, partitions, count, None, value)
}

/// [`populate_topic`] with every record's timestamp set to `timestamp_ms` (CreateTime) when given.
pub fn populate_topic_at(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    count: usize,
    timestamp_ms: Option<i64>,
    value: impl Fn(usize) -> String,
) -> TestResult<Vec<Produced>> {
    let producer: BaseProducer<DeliveryLog> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .set("message.timeout.ms", "60000")
        .create_with_context(DeliveryLog(Mutex::new(Vec::with_capacity(count))))?;
    let values: Vec<String> = (0..count).map(&value).collect();
    for (index, value) in values.iter().enumerate() {
        let mut record = BaseRecord::<(), String, usize>::with_opaque_to(topic, index)
            .partition(index as i32 % partitions)
            .payload(value);
        if let Some(ts) = timestamp_ms {
            record = record.timestamp(ts);
        }
        // A full local queue only means "wait for deliveries": serve them and try the same record again.
        while let Err((error, returned)) = producer.send(record) {
            if !matches!(error.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::QueueFull)) {
                return Err(format!("cannot produce to {topic}: {error}").into());
            }
            producer.poll(Duration::from_millis(10));
            record = returned;
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120))?;
    let reports = std::mem::take(&mut *producer.context().0.lock().expect("delivery log lock"));
    if reports.len() != count {
        return Err(format!("{} of {count} records to {topic} acknowledged", reports.len()).into());
    }
    let mut produced = Vec::with_capacity(count);
    for (index, report) in reports {
        let (partition, offset) = report.map_err(|e| format!("record {index} to {topic} failed: {e}"))?;
        produced.push(Produced { partition, offset, value: values[index].clone() });
    }
    produced.sort();
    Ok(produced)
}

fn group_consumer(bootstrap: &str, group: &str) -> TestResult<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?)
}

/// The group's committed offset per partition `0..partitions` (`None` where it has none).
pub fn committed_offsets(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> TestResult<Vec<Option<i64>>> {
    committed_offsets_of_topics(bootstrap, group, std::slice::from_ref(&topic.to_string()), partitions)
}

/// [`committed_offsets`] of every topic of `topics` in turn, asked in requests of at most 500 partitions
/// (thousands of topics in one request take librdkafka seconds).
pub fn committed_offsets_of_topics(bootstrap: &str, group: &str, topics: &[String], partitions: i32) -> TestResult<Vec<Option<i64>>> {
    let consumer = group_consumer(bootstrap, group)?;
    let mut offsets = Vec::new();
    for chunk in topics.chunks((500 / partitions.max(1) as usize).max(1)) {
        let mut wanted = TopicPartitionList::new();
        for topic in chunk {
            wanted.add_partition_range(topic, 0, partitions - 1);
        }
        let committed = consumer.committed_offsets(wanted, KAFKA_TIMEOUT)?;
        // The answer lists the partitions in the order asked.
        offsets.extend(committed.elements().iter().map(|e| match e.offset() {
            Offset::Offset(n) => Some(n),
            _ => None,
        }));
        // librdkafka hangs in rd_kafka_destroy when a consumer is dropped while a list it returned is alive.
        drop(committed);
    }
    drop(consumer);
    Ok(offsets)
}

/// Commits `offsets[p]` as the group's next offset for partition `p`, as another consumer of the group
/// would have.
pub fn commit_offsets(bootstrap: &str, group: &str, topic: &str, offsets: &[i64]) -> TestResult {
    let consumer = group_consumer(bootstrap, group)?;
    let mut list = TopicPartitionList::new();
    for (p, offset) in offsets.iter().enumerate() {
        list.add_partition_offset(topic, p as i32, Offset::Offset(*offset))?;
    }
    consumer.commit(&list, CommitMode::Sync)?;
    drop(list);
    drop(consumer);
    Ok(())
}

// --- what the target functions received ------------------------------------------------------------------

/// One line the target functions write per record received (see `functions/src/lib.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Delivered {
    /// The function that received it.
    pub function: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Decoded value.
    pub value: Option<String>,
    /// One id per invocation.
    pub invocation: String,
    /// False when the function asked for it to be sent again (partial batch response).
    pub accepted: bool,
}

/// Every JSON line of `path`, in file order. A last line without its newline is another invocation still
/// writing, so it is left out.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> TestResult<Vec<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {path:?}: {e}").into()),
    };
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .map(|line| serde_json::from_str(line).map_err(|e| format!("bad line in {path:?}: {e}: {line}").into()))
        .collect()
}

/// What `function` received from `topic`, in the order received.
pub fn delivered(function: &str, topic: &str) -> TestResult<Vec<Delivered>> {
    let all: Vec<Delivered> = read_jsonl(&out_dir().join(format!("{function}.jsonl")))?;
    Ok(all.into_iter().filter(|d| d.topic == topic).collect())
}

/// Per partition, the (offset, value) pairs received, in the order received.
pub fn by_partition(delivered: &[Delivered]) -> BTreeMap<i32, Vec<(i64, String)>> {
    let mut map: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for d in delivered {
        map.entry(d.partition).or_default().push((d.offset, d.value.clone().unwrap_or_default()));
    }
    map
}

/// Per partition, the (offset, value) pairs produced, in offset order.
pub fn produced_by_partition(produced: &[Produced]) -> BTreeMap<i32, Vec<(i64, String)>> {
    let mut map: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for p in produced {
        map.entry(p.partition).or_default().push((p.offset, p.value.clone()));
    }
    map
}

/// Per partition `0..partitions`, the offset after the last record produced (what a group that consumed
/// everything has committed).
pub fn next_offsets(produced: &[Produced], partitions: i32) -> Vec<Option<i64>> {
    (0..partitions).map(|p| produced.iter().filter(|r| r.partition == p).map(|r| r.offset + 1).max()).collect()
}

/// Checks that the records `function` accepted from `topic` are exactly `produced`: each once, in offset
/// order per partition. The error names the first partition and position that differ.
pub fn assert_delivered_exactly_once(function: &str, topic: &str, produced: &[Produced]) -> TestResult {
    let accepted: Vec<Delivered> = delivered(function, topic)?.into_iter().filter(|d| d.accepted).collect();
    let got = by_partition(&accepted);
    let want = produced_by_partition(produced);
    let partitions: std::collections::BTreeSet<i32> = got.keys().chain(want.keys()).copied().collect();
    for p in partitions {
        let (got, want) = (got.get(&p).cloned().unwrap_or_default(), want.get(&p).cloned().unwrap_or_default());
        if let Some(i) = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i)) {
            return Err(format!(
                "{topic}-{p}: {} records received, {} produced; first difference at position {i}: received {:?}, produced {:?}",
                got.len(),
                want.len(),
                got.get(i),
                want.get(i)
            )
            .into());
        }
    }
    Ok(())
}

// --- the relay -------------------------------------------------------------------------------------------

/// The relay binary cargo built for these tests.
pub fn relay_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kafka-lambda-relay"))
}

/// A mapping from `topic` on tansu to `function`, consumer group `group`, TRIM_HORIZON.
pub fn tansu_mapping(function: &str, topic: &str, group: &str) -> Value {
    json!({
        "UUID": uuid::Uuid::new_v4().to_string(),
        "FunctionName": function,
        "Topics": [topic],
        "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [tansu()]}},
        "SelfManagedKafkaEventSourceConfig": {"ConsumerGroupId": group},
        "StartingPosition": "TRIM_HORIZON",
        "BatchSize": 1000
    })
}

/// A child process stopped on drop: TERM, a grace period, then KILL (`cargo lambda watch` stops its
/// function instances on TERM only).
pub struct ChildGuard {
    child: Child,
    name: String,
}

impl ChildGuard {
    /// Takes ownership of `child`.
    pub fn new(name: &str, child: Child) -> ChildGuard {
        ChildGuard { child, name: name.to_owned() }
    }

    /// The process, e.g. to wait for it.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits until it exits, or `timeout` passes or `abort` gives a reason (then it is killed and this is
    /// an error).
    pub fn wait_timeout(&mut self, timeout: Duration, abort: &dyn Fn() -> Option<String>) -> TestResult<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(format!("{} did not finish within {timeout:?}; killed", self.name).into());
            }
            if let Some(reason) = abort() {
                self.stop();
                return Err(format!("{} stopped: {reason}", self.name).into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a finished process printed.
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

impl Finished {
    /// The exit code (`None` when a signal ended it).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Stdout parsed as JSON (the relay's report), with stderr's tail in the error for context.
    pub fn json(&self) -> TestResult<Value> {
        serde_json::from_str(self.stdout.trim()).map_err(|e| {
            format!("stdout is not JSON ({e}): {}\n--- stderr tail ---\n{}", self.stdout, self.stderr_tail()).into()
        })
    }

    /// The last 40 lines of stderr, for assertion messages.
    pub fn stderr_tail(&self) -> String {
        let lines: Vec<&str> = self.stderr.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// Runs `command` to completion with a timeout, capturing stdout and stderr.
pub fn run_captured(name: &str, command: Command, timeout: Duration) -> TestResult<Finished> {
    run_captured_unless(name, command, timeout, &|| None)
}

/// [`run_captured`], giving up early when `abort` returns a reason.
pub fn run_captured_unless(
    name: &str,
    mut command: Command,
    timeout: Duration,
    abort: &dyn Fn() -> Option<String>,
) -> TestResult<Finished> {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut guard = ChildGuard::new(name, command.spawn().map_err(|e| format!("cannot start {name}: {e}"))?);
    let mut stdout_pipe = guard.child().stdout.take().expect("piped stdout");
    let mut stderr_pipe = guard.child().stderr.take().expect("piped stderr");
    // Both pipes are drained while the process runs, so a chatty stderr cannot block it.
    let stdout_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout_pipe.read_to_string(&mut s);
        s
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });
    let status = guard.wait_timeout(timeout, abort)?;
    let stdout = stdout_reader.join().expect("stdout reader");
    let stderr = stderr_reader.join().expect("stderr reader");
    Ok(Finished { status, stdout, stderr })
}

/// The environment the relay gets in every test: the target functions' `cargo lambda watch` as the Lambda
/// endpoint, and its timeout assumed (watch does not serve `GetFunctionConfiguration`).
pub fn relay_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL_LAMBDA", lambda()),
        ("RELAY_TARGET_TIMEOUT_SECONDS", "30".to_owned()),
        ("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned())),
    ]
}

/// `kafka-lambda-relay run --config FILE --until-idle --target-timeout 30 [extra]` with `config`.
pub fn run_relay(config: &Value, extra: &[&str]) -> TestResult<Finished> {
    let dir = TempDir::new("relay-config")?;
    let file = dir.path().join("config.json");
    std::fs::write(&file, serde_json::to_vec_pretty(config)?)?;
    let mut command = Command::new(relay_bin());
    command
        .arg("run")
        .arg("--config")
        .arg(&file)
        .args(["--until-idle", "--target-timeout", "30", "--max-seconds", "120"])
        .args(extra)
        .envs(relay_env());
    let started = Instant::now();
    let finished = run_captured("kafka-lambda-relay run", command, PROCESS_TIMEOUT)?;
    // Shown by the test harness only when the test fails.
    eprintln!(
        "relay run exited with {} after {:?}; stderr tail:\n{}",
        finished.status,
        started.elapsed(),
        finished.stderr_tail()
    );
    Ok(finished)
}

/// [`run_relay`], requiring exit code 0 and returning the report.
pub fn run_relay_ok(config: &Value) -> TestResult<Value> {
    let finished = run_relay(config, &[])?;
    if finished.code() != Some(0) {
        return Err(format!(
            "relay exited with {:?}\n--- stdout ---\n{}\n--- stderr tail ---\n{}",
            finished.status,
            finished.stdout,
            finished.stderr_tail()
        )
        .into());
    }
    finished.json()
}

/// The report's entry for the mapping with `uuid`.
pub fn mapping_report<'a>(report: &'a Value, uuid: &str) -> TestResult<&'a Value> {
    report["Mappings"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["UUID"] == uuid))
        .ok_or_else(|| format!("no mapping {uuid} in report {report}").into())
}

/// The port of a free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> TestResult<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A `cargo` command without the variables `cargo test` sets for the test process (`CARGO_PKG_*`,
/// `CARGO_MANIFEST_DIR`, ...): build scripts such as ring's rerun when they change, so inheriting them would
/// rebuild the AWS SDK under the test, and again in the next plain `cargo build`.
pub fn nested_cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_by_cargo_test = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_", "CARGO_BIN_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "CARGO_RUSTC_CURRENT_DIR", "OUT_DIR"]
                .contains(&name.as_ref());
        if set_by_cargo_test {
            command.env_remove(name.as_ref());
        }
    }
    command
}

/// The relay itself served by `cargo lambda watch` on 127.0.0.1, as Lambda would run it; stopped on drop.
pub struct RelayWatch {
    /// The port watch listens on.
    pub port: u16,
    guard: ChildGuard,
    log: PathBuf,
    _dir: TempDir,
}

impl RelayWatch {
    /// Starts `cargo lambda watch` at the repository root (where the relay is the default package) with
    /// the relay's environment plus `env`, and waits until it listens.
    pub fn start(env: &[(&str, String)]) -> TestResult<RelayWatch> {
        let dir = TempDir::new("relay-watch")?;
        let log = dir.path().join("watch.log");
        let log_file = std::fs::File::create(&log)?;
        let port = free_port()?;
        let mut command = nested_cargo();
        command
            .args(["lambda", "watch", "-A", "127.0.0.1", "-P", &port.to_string(), "--ignore-changes"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .envs(relay_env())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let guard = ChildGuard::new("cargo lambda watch (relay)", command.spawn()?);
        let watch = RelayWatch { port, guard, log, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() >= deadline {
                return Err(format!("cargo lambda watch not listening after 60 s:\n{}", watch.log_text()).into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(watch)
    }

    /// `cargo lambda invoke -A 127.0.0.1 -P PORT --data-file FILE kafka-lambda-relay -o json` with
    /// `payload` in FILE.
    pub fn invoke(&mut self, payload: &Value) -> TestResult<Finished> {
        if let Ok(Some(status)) = self.guard.child().try_wait() {
            return Err(format!("cargo lambda watch exited with {status}:\n{}", self.log_text()).into());
        }
        let dir = TempDir::new("relay-payload")?;
        let file = dir.path().join("payload.json");
        std::fs::write(&file, serde_json::to_vec_pretty(payload)?)?;
        let mut command = nested_cargo();
        command
            .args(["lambda", "invoke", "-A", "127.0.0.1", "-P", &self.port.to_string(), "--data-file"])
            .arg(&file)
            .args(["--output-format", "json", "kafka-lambda-relay"]);
        // When the relay process exits instead of serving the invocation, watch logs it and leaves the invoke
        // hanging: give up then, with the log, instead of waiting for the timeout.
        let log_before = self.log_text().len();
        let abort = || {
            let log = self.log_text();
            let new = log.get(log_before..).unwrap_or("");
            new.contains("command exited").then(|| format!("the relay exited under cargo lambda watch:\n{log}"))
        };
        run_captured_unless("cargo lambda invoke", command, PROCESS_TIMEOUT, &abort)
    }

    /// [`RelayWatch::invoke`], requiring success and returning the report the relay answered with.
    pub fn invoke_report(&mut self, payload: &Value) -> TestResult<Value> {
        let started = Instant::now();
        let finished = self.invoke(payload)?;
        let log = self.log_text();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        // Shown by the test harness only when the test fails.
        eprintln!(
            "cargo lambda invoke exited with {} after {:?}; stdout:\n{}\nwatch log tail:\n{}",
            finished.status,
            started.elapsed(),
            finished.stdout,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        if finished.code() != Some(0) {
            return Err(format!("cargo lambda invoke failed: {}", finished.stderr_tail()).into());
        }
        finished.json()
    }

    /// What watch and the relay under it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A Secrets Manager client on moto_server (`RELAY_TEST_MOTO`), with dummy credentials.
pub async fn moto_secrets_manager() -> aws_sdk_secretsmanager::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(moto())
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new("test", "test", None, None, "test"))
        .load()
        .await;
    aws_sdk_secretsmanager::Client::new(&config)
}
