//! Issue 13's defect, as a user met it: one mapping over 5,000 topics (20,000 partitions), and
//! `run --max-seconds 15` took 125 s. Whatever the size, a run ends by its deadline and the grace it is given
//! to leave the group ([`CLOSE_GRACE`]).
//!
//! The relay binary runs against an in-process mock cluster, so this test runs unchanged against any earlier
//! build of the binary (the engine before the fix overran by minutes: one rebalance callback looked up
//! 20,000 starting offsets in one request, and the loop read every partition's position and watermarks in
//! one go, seconds at a time). `tests/scale_topics.rs` measures where the time goes.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kafka_lambda_relay::kafka::mock::MockKafka;
use kafka_lambda_relay::relay::CLOSE_GRACE;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const TOPICS: usize = 5000;
/// The mock cluster's partitions for a topic it creates on first use.
const PARTITIONS: i32 = 4;
const RUN_SECONDS: u64 = 15;
/// Starting the process, and a loaded machine's scheduling.
const SLACK: Duration = Duration::from_millis(1500);

#[test]
fn a_run_over_5000_topics_ends_by_its_deadline_and_loses_no_starting_position() -> TestResult {
    let kafka = MockKafka::start(1)?;
    let names: Vec<String> = (0..TOPICS).map(|i| format!("deadline-{i:05}")).collect();
    // One record per topic: the producer's metadata requests create the topics (a `create_topic` each would
    // cost the mock about 0.2 s a topic).
    for name in &names {
        kafka.produce(name, 0, None, Some(b"x"))?;
    }
    kafka.flush()?;
    let group = format!("deadline-{}", uuid::Uuid::new_v4().simple());
    let config = serde_json::json!({"Mappings": [{
        "FunctionName": "target",
        "Topics": names,
        "StartingPosition": "LATEST",
        "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [kafka.bootstrap_servers()]}},
        "SelfManagedKafkaEventSourceConfig": {"ConsumerGroupId": group},
    }]});
    let path = std::env::temp_dir().join(format!("{group}.json"));
    std::fs::write(&path, serde_json::to_vec(&config)?)?;

    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kafka-lambda-relay"))
        .args(["run", "--config", path.to_str().ok_or("path")?, "--max-seconds", &RUN_SECONDS.to_string(), "--target-timeout", "1"])
        // No record is produced during the run, so nothing is invoked; nothing may reach a real AWS endpoint.
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("RUST_LOG", std::env::var("TEST_RELAY_LOG").unwrap_or("warn".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // The report (20,000 partitions) is megabytes: read the pipes while the run goes on.
    let (mut out, mut err) = (child.stdout.take().ok_or("stdout")?, child.stderr.take().ok_or("stderr")?);
    let stdout = std::thread::spawn(move || {
        let mut text = String::new();
        out.read_to_string(&mut text).map(|_| text)
    });
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        err.read_to_string(&mut text).map(|_| text)
    });
    // A run that overruns is stopped well after the bound, so the test reports it instead of hanging.
    let limit = Duration::from_secs(RUN_SECONDS) + CLOSE_GRACE + Duration::from_secs(60);
    while child.try_wait()?.is_none() && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(50));
    }
    let ended = started.elapsed();
    let _ = child.kill();
    child.wait()?;
    let _ = std::fs::remove_file(&path);
    let stdout = stdout.join().map_err(|_| "stdout reader")??;
    let stderr = stderr.join().map_err(|_| "stderr reader")??;
    let tail: String = stderr.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");

    let bound = Duration::from_secs(RUN_SECONDS) + CLOSE_GRACE + SLACK;
    assert!(ended <= bound, "`run --max-seconds {RUN_SECONDS}` over {TOPICS} topics took {ended:?} (bound {bound:?}); stderr:\n{tail}");

    // Nothing lost: if the group assigned the partitions within the run (a loaded machine may take longer to
    // join 20,000 partitions, and then nothing was consumed), every LATEST start was committed, so the next
    // run starts there and skips nothing produced in between.
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).map_err(|e| format!("no report ({e}); stderr:\n{tail}"))?;
    let reported = report["Mappings"][0]["Partitions"].as_array().map_or(0, Vec::len);
    eprintln!("ended after {ended:?}; {reported} partitions in the report");
    if reported > 0 {
        assert_eq!(reported, TOPICS * PARTITIONS as usize, "{report}");
        let committed = committed_offsets(kafka.bootstrap_servers(), &group, &names)?;
        // Each topic has one record, in partition 0: its log end is 1 there and 0 elsewhere.
        let expected: Vec<Option<i64>> = names.iter().flat_map(|_| (0..PARTITIONS).map(|p| Some(i64::from(p == 0)))).collect();
        let missing = committed.iter().zip(&expected).filter(|(c, e)| c != e).count();
        assert_eq!(missing, 0, "{missing} of {} partitions without their LATEST start committed", expected.len());
    }
    Ok(())
}

/// The group's committed offsets of every partition of `topics`, in requests of 500 partitions.
fn committed_offsets(bootstrap: &str, group: &str, topics: &[String]) -> TestResult<Vec<Option<i64>>> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create()?;
    let mut out = Vec::new();
    for chunk in topics.chunks(125) {
        let mut wanted = TopicPartitionList::new();
        for topic in chunk {
            wanted.add_partition_range(topic, 0, PARTITIONS - 1);
        }
        let committed = consumer.committed_offsets(wanted, Duration::from_secs(30))?;
        out.extend(committed.elements().iter().map(|e| match e.offset() {
            Offset::Offset(n) => Some(n),
            _ => None,
        }));
        // librdkafka hangs destroying a consumer while a list it returned is alive.
        drop(committed);
    }
    drop(consumer);
    Ok(out)
}
