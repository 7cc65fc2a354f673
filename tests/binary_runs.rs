//! Issue 13's engine defects as a user met them: the relay binary's `run` against an in-process mock cluster,
//! so these tests run unchanged against any earlier build of the binary (copy it over
//! `target/debug/kafka-lambda-relay` and run this test binary directly).
//!
//! - One mapping over 5,000 topics (20,000 partitions): `run --max-seconds 15` took 125 s. Whatever the size,
//!   a run ends by its deadline and the grace it is given to leave the group ([`CLOSE_GRACE`]). The engine
//!   before the fix overran (23.7 s here): one rebalance callback looked up 20,000 starting offsets in one
//!   request, and the loop read every partition's position and watermarks in one go, seconds at a time.
//!   `tests/scale_topics.rs` measures where the time goes.
//! - A run shorter than the target's timeout started no invocation and reported "No records processed",
//!   state Enabled, exit 0, while records waited.
//! - A LATEST mapping whose starting-offset lookup failed fell back to librdkafka's reset policy, committed no
//!   start and reported success; the next run started from "latest" again, skipping what was produced in
//!   between.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{committed_offsets, committed_offsets_of_topics, unique_name, TestResult};
use kafka_lambda_relay::kafka::mock::MockKafka;
use kafka_lambda_relay::relay::CLOSE_GRACE;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};


/// The mock cluster's partitions for a topic it creates on first use.
const AUTO_PARTITIONS: i32 = 4;

#[test]
fn a_run_over_5000_topics_ends_by_its_deadline_and_loses_no_starting_position() -> TestResult {
    const TOPICS: usize = 5000;
    const RUN_SECONDS: u64 = 15;
    // Starting the process, and a loaded machine's scheduling.
    const SLACK: Duration = Duration::from_millis(1500);
    let kafka = MockKafka::start(1)?;
    let names: Vec<String> = (0..TOPICS).map(|i| format!("deadline-{i:05}")).collect();
    // One record per topic: the producer's metadata requests create the topics (a `create_topic` each would
    // cost the mock about 0.2 s a topic).
    for name in &names {
        kafka.produce(name, 0, None, Some(b"x"))?;
    }
    kafka.flush()?;
    let group = unique_name("deadline");

    let run = run_binary(&mapping(&kafka, &names, &group), &["--max-seconds", &RUN_SECONDS.to_string()])?;

    let bound = Duration::from_secs(RUN_SECONDS) + CLOSE_GRACE + SLACK;
    assert!(run.took <= bound, "`run --max-seconds {RUN_SECONDS}` over {TOPICS} topics took {:?} (bound {bound:?}); stderr:\n{}", run.took, run.stderr_tail());
    // Nothing lost: if the group assigned the partitions within the run (a loaded machine may take longer to
    // join 20,000 partitions, and then nothing was consumed), every LATEST start was committed, so the next
    // run starts there and skips nothing produced in between.
    let report = run.report()?;
    let reported = report["Mappings"][0]["Partitions"].as_array().map_or(0, Vec::len);
    eprintln!("ended after {:?}; {reported} partitions in the report", run.took);
    if reported > 0 {
        assert_eq!(reported, TOPICS * AUTO_PARTITIONS as usize, "{report}");
        let committed = committed_offsets_of_topics(kafka.bootstrap_servers(), &group, &names, AUTO_PARTITIONS)?;
        // Each topic has one record, in partition 0: its log end is 1 there and 0 elsewhere.
        let expected: Vec<Option<i64>> = names.iter().flat_map(|_| (0..AUTO_PARTITIONS).map(|p| Some(i64::from(p == 0)))).collect();
        let missing = committed.iter().zip(&expected).filter(|(c, e)| c != e).count();
        assert_eq!(missing, 0, "{missing} of {} partitions without their LATEST start committed", expected.len());
    }
    Ok(())
}

#[test]
fn a_latest_start_that_cannot_be_looked_up_fails_the_run_instead_of_starting_anywhere() -> TestResult {
    let kafka = MockKafka::start(1)?;
    let topic = unique_name("start");
    kafka.create_topic(&topic, 2)?;
    for partition in 0..2 {
        for _ in 0..3 {
            kafka.produce(&topic, partition, None, Some(b"before the start"))?;
        }
    }
    kafka.flush()?;
    let group = unique_name("start");
    let config = mapping(&kafka, std::slice::from_ref(&topic), &group);

    // Run 1: every ListOffsets fails. Nothing is consumed, the report says why, the exit is non-zero.
    kafka.fail_next_requests(RDKafkaApiKey::ListOffsets, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN; 1000]);
    let run = run_binary(&config, &["--until-idle", "--max-seconds", "30"])?;
    let report = run.report()?;
    assert_eq!(run.code, Some(1), "the run reported success; stderr:\n{}", run.stderr_tail());
    assert_eq!(report["Mappings"][0]["ErrorCode"], "STARTING_POSITION_UNRESOLVED", "{report}");
    kafka.clear_request_errors(RDKafkaApiKey::ListOffsets);
    assert_eq!(committed_offsets(kafka.bootstrap_servers(), &group, &topic, 2)?, vec![None, None]);

    // Run 2: the lookup works; the start (the log end, 3) is committed although nothing arrived, so a record
    // produced before the next run is delivered by it.
    let run = run_binary(&config, &["--until-idle", "--max-seconds", "30"])?;
    assert_eq!(run.code, Some(0), "{}", run.stderr_tail());
    assert_eq!(committed_offsets(kafka.bootstrap_servers(), &group, &topic, 2)?, vec![Some(3), Some(3)]);
    Ok(())
}

#[test]
fn a_run_shorter_than_the_target_timeout_is_a_problem_not_an_idle_success() -> TestResult {
    let kafka = MockKafka::start(1)?;
    let topic = unique_name("short");
    kafka.create_topic(&topic, 1)?;
    let group = unique_name("short");

    let run = run_binary(&mapping(&kafka, std::slice::from_ref(&topic), &group), &["--max-seconds", "5", "--target-timeout", "30"])?;

    // The issue-time binary started no invocation and reported "No records processed", Enabled, exit 0.
    let report = run.report()?;
    assert_eq!(run.code, Some(1), "{report}");
    assert_eq!(report["Mappings"][0]["ErrorCode"], "RUN_SHORTER_THAN_TARGET_TIMEOUT", "{report}");
    let result = report["Mappings"][0]["LastProcessingResult"].as_str().unwrap_or_default();
    assert!(result.starts_with("PROBLEM: the run lasts") && result.contains("timeout is 30 s"), "{result}");
    Ok(())
}

/// A LATEST mapping of `topics` on `kafka`'s cluster.
fn mapping(kafka: &MockKafka, topics: &[String], group: &str) -> serde_json::Value {
    serde_json::json!({"Mappings": [{
        "FunctionName": "target",
        "Topics": topics,
        "StartingPosition": "LATEST",
        "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [kafka.bootstrap_servers()]}},
        "SelfManagedKafkaEventSourceConfig": {"ConsumerGroupId": group},
    }]})
}

/// What a `run` of the binary did.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    fn report(&self) -> TestResult<serde_json::Value> {
        serde_json::from_str(self.stdout.trim()).map_err(|e| format!("no report ({e}); stderr:\n{}", self.stderr_tail()).into())
    }

    fn stderr_tail(&self) -> String {
        let lines: Vec<&str> = self.stderr.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// `run --config <config> <args>` of the binary, with a target timeout of 1 s unless `args` name one. No
/// record reaches a target in these tests, so nothing is invoked, and nothing may reach a real AWS endpoint. `TEST_RELAY_LOG` sets the run's
/// `RUST_LOG` (default `warn`).
fn run_binary(config: &serde_json::Value, args: &[&str]) -> TestResult<Run> {
    let path = std::env::temp_dir().join(format!("{}.json", unique_name("relay-run")));
    std::fs::write(&path, serde_json::to_vec(config)?)?;
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kafka-lambda-relay"))
        .args(["run", "--config", path.to_str().ok_or("path")?])
        .args(if args.contains(&"--target-timeout") { &[][..] } else { &["--target-timeout", "1"][..] })
        .args(args)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("RUST_LOG", std::env::var("TEST_RELAY_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // A report of 20,000 partitions is megabytes: the pipes are read while the run goes on.
    let readers = [child.stdout.take().map(reader), child.stderr.take().map(reader)];
    // A run that overruns is stopped a minute after any bound these tests set, so the test reports it
    // instead of hanging.
    while child.try_wait()?.is_none() && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = started.elapsed();
    let _ = child.kill();
    let status = child.wait()?;
    let _ = std::fs::remove_file(&path);
    let [stdout, stderr] = readers.map(|r| r.map(|h| h.join().ok().and_then(Result::ok).unwrap_or_default()).unwrap_or_default());
    Ok(Run { code: status.code(), stdout, stderr, took })
}

fn reader(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<std::io::Result<String>> {
    std::thread::spawn(move || {
        let mut text = String::new();
        pipe.read_to_string(&mut text).map(|_| text)
    })
}
