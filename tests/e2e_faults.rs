#![cfg(feature = "e2e")]
//! Faults of the real `run` process: SIGKILL at random points of a backlog, and a broker that goes away
//! during a run. Nothing may be lost, nothing committed early, and redeliveries stay bounded by what was
//! in flight.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kafka_lambda_relay::invoke::server::{handler, LocalLambda, Reply};
use serde_json::json;

/// Every record below a partition's committed offset was received: nothing is committed past a record
/// that was not delivered.
fn assert_committed_only_delivered(committed: &[Option<i64>], produced: &[Produced], received: &BTreeSet<(i32, i64)>) {
    for (partition, offset) in committed.iter().enumerate() {
        let Some(offset) = offset else { continue };
        for p in produced.iter().filter(|p| p.partition == partition as i32 && p.offset < *offset) {
            assert!(received.contains(&(p.partition, p.offset)), "partition {partition} committed {offset} but record {} was never delivered", p.offset);
        }
    }
}

#[test]
fn sigkill_at_random_points_loses_nothing_and_redelivers_at_most_the_batches_in_flight() -> TestResult {
    const PARTITIONS: i32 = 4;
    const BATCH_SIZE: usize = 20;
    const KILLS: usize = 3;
    let topic = unique_name("kill");
    let group = unique_name("group");
    create_topic(&tansu(), &topic, PARTITIONS)?;
    let produced = populate_topic(&tansu(), &topic, PARTITIONS, 20_000, |i| format!("r{i}"))?;
    // An in-process target taking 20 ms per batch: a batch outlasts a commit's round trip, so what a kill
    // redelivers is what was in flight, not how fast the target is.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let lambda = runtime.block_on(LocalLambda::start())?;
    lambda.register("target", Duration::from_secs(3), handler(|_| async { Reply::success("{}").after(Duration::from_millis(20)) }));
    let received = || -> Vec<(i32, i64)> { lambda.invocations("target").iter().flat_map(|i| event_offsets(&i.payload)).collect() };
    let mapping = json!({
        "UUID": uuid::Uuid::new_v4().to_string(), "FunctionName": "target", "Topics": [topic], "StartingPosition": "TRIM_HORIZON",
        "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [tansu()]}},
        "SelfManagedKafkaEventSourceConfig": {"ConsumerGroupId": group}, "BatchSize": BATCH_SIZE
    });
    let config = json!({"Mappings": [mapping]});
    let dir = TempDir::new("kill-config")?;
    let file = dir.path().join("config.json");
    std::fs::write(&file, serde_json::to_vec(&config)?)?;
    let relay = |log: &std::path::Path| -> TestResult<std::process::Child> {
        Ok(Command::new(relay_bin())
            .args(["run", "--until-idle", "--target-timeout", "3", "--max-seconds", "120", "--config"])
            .arg(&file)
            .env("AWS_ENDPOINT_URL_LAMBDA", lambda.endpoint())
            .envs([("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1"), ("RUST_LOG", "info")])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()?)
    };

    let mut kills = 0;
    for round in 0..KILLS {
        let log = dir.path().join(format!("run-{round}.log"));
        let mut child = relay(&log)?;
        // A random point while this run delivers: after its group join (a member killed while it joins can
        // hold the group's next rebalance up), once more records arrive.
        let joined_by = Instant::now() + Duration::from_secs(90);
        while !std::fs::read_to_string(&log)?.contains("partitions assigned") && Instant::now() < joined_by && child.try_wait()?.is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let before = received().len();
        let flowing_by = Instant::now() + Duration::from_secs(30);
        while received().len() == before && Instant::now() < flowing_by && child.try_wait()?.is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(rand::random_range(50..1500)));
        if child.try_wait()?.is_none() {
            child.kill()?; // SIGKILL: no commit, no leaving the group.
            kills += 1;
        }
        child.wait()?;
        let seen: BTreeSet<(i32, i64)> = received().into_iter().collect();
        let committed = committed_offsets(&tansu(), &group, &topic, PARTITIONS)?;
        assert_committed_only_delivered(&committed, &produced, &seen);
    }
    assert!(kills >= 1, "at least one run was killed mid-way");

    let log = dir.path().join("final.log");
    let finished = relay(&log)?.wait_with_output()?;
    let report: serde_json::Value = serde_json::from_slice(&finished.stdout)?;
    assert_eq!(report["Mappings"][0]["LastProcessingResult"], "OK", "{report}\n{}", std::fs::read_to_string(&log)?);
    let all = received();
    let unique: BTreeSet<(i32, i64)> = all.iter().copied().collect();
    let expected: BTreeSet<(i32, i64)> = produced.iter().map(|p| (p.partition, p.offset)).collect();
    assert_eq!(unique, expected, "every record delivered");
    assert_eq!(committed_offsets(&tansu(), &group, &topic, PARTITIONS)?, next_offsets(&produced, PARTITIONS));
    // A kill redelivers what was in flight (one batch per partition) and what was acknowledged while the
    // last commit was on its way (commits follow acknowledgements within 20 ms: a batch or two).
    let redelivered = all.len() - unique.len();
    let bound = kills * PARTITIONS as usize * BATCH_SIZE * 3;
    assert!(redelivered <= bound, "{redelivered} redeliveries after {kills} kills; at most {bound} were in flight");
    // Per partition, in order: the first time each record was seen follows offset order.
    let mut first_seen: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (partition, offset) in all {
        if seen.insert((partition, offset)) {
            first_seen.entry(partition).or_default().push(offset);
        }
    }
    for (partition, offsets) in first_seen {
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "partition {partition}: first deliveries in offset order");
    }
    drop(runtime);
    Ok(())
}

/// (partition, offset) of every record of an event.
fn event_offsets(payload: &[u8]) -> Vec<(i32, i64)> {
    let event: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
    event["records"]
        .as_object()
        .into_iter()
        .flat_map(|groups| groups.values())
        .flat_map(|records| records.as_array().cloned().unwrap_or_default())
        .map(|r| (r["partition"].as_i64().unwrap_or(-1) as i32, r["offset"].as_i64().unwrap_or(-1)))
        .collect()
}

/// A tansu broker of the test's own, on a port and SQLite file that survive a restart.
struct OwnBroker {
    port: u16,
    dir: TempDir,
    process: Option<ChildGuard>,
}

impl OwnBroker {
    fn start() -> TestResult<OwnBroker> {
        let mut broker = OwnBroker { port: free_port()?, dir: TempDir::new("tansu")?, process: None };
        broker.restart()?;
        Ok(broker)
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) -> TestResult {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new("tansu")
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start tansu (is it on PATH? scripts/setup.sh installs it): {e}"))?;
        self.process = Some(ChildGuard::new("tansu", child));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return Err("tansu does not listen after 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn kill(&mut self) -> TestResult {
        if let Some(mut guard) = self.process.take() {
            guard.child().kill()?;
            guard.child().wait()?;
        }
        Ok(())
    }
}

#[test]
fn a_broker_that_goes_away_ends_the_run_by_its_deadline_with_commit_failed_and_the_next_run_delivers_the_rest() -> TestResult {
    const MAX_SECONDS: u64 = 10;
    let mut broker = OwnBroker::start()?;
    let topic = unique_name("gone");
    let group = unique_name("group");
    create_topic(&broker.bootstrap(), &topic, 2)?;
    let produced = populate_topic(&broker.bootstrap(), &topic, 2, 2_000, |i| format!("r{i}"))?;

    // A slow in-process target (20 ms per invocation), so the broker goes away mid-run.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let lambda = runtime.block_on(LocalLambda::start())?;
    lambda.register("slow", Duration::from_secs(3), handler(|_| async { Reply::success("{}").after(Duration::from_millis(20)) }));
    let mapping = json!({
        "UUID": uuid::Uuid::new_v4().to_string(), "FunctionName": "slow", "Topics": [topic], "StartingPosition": "TRIM_HORIZON",
        "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [broker.bootstrap()]}},
        "SelfManagedKafkaEventSourceConfig": {"ConsumerGroupId": group}, "BatchSize": 10
    });
    let dir = TempDir::new("gone-config")?;
    let file = dir.path().join("config.json");
    std::fs::write(&file, serde_json::to_vec(&json!({"Mappings": [mapping]}))?)?;
    let run = |extra: &[&str]| {
        let mut command = Command::new(relay_bin());
        command
            .args(["run", "--target-timeout", "3", "--config"])
            .arg(&file)
            .args(extra)
            .env("AWS_ENDPOINT_URL_LAMBDA", lambda.endpoint())
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1");
        command
    };

    let started = Instant::now();
    let killer = {
        let lambda_count = || lambda.invocation_count("slow");
        let deadline = Instant::now() + Duration::from_secs(20);
        let first = run(&["--until-idle", "--max-seconds", &MAX_SECONDS.to_string()]);
        // Stop the broker once invocations flow.
        let handle = std::thread::scope(|scope| -> TestResult<Finished> {
            let relay = scope.spawn(|| run_captured("relay run", first, PROCESS_TIMEOUT));
            while lambda_count() < 5 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            broker.kill()?;
            relay.join().map_err(|_| "relay thread panicked")?
        })?;
        handle
    };
    let elapsed = started.elapsed();
    assert!(
        elapsed <= Duration::from_secs(MAX_SECONDS + 3),
        "the run ends by its deadline plus the stated margin (1 s to leave the group, 2 s to start and print): {elapsed:?}"
    );
    assert_eq!(killer.code(), Some(1), "a final commit the group did not take is an error:\n{}", killer.stderr_tail());
    let report = killer.json()?;
    let entry = &report["Mappings"][0];
    assert_eq!(entry["ErrorCode"], "COMMIT_FAILED", "{report}");
    assert!(entry["LastProcessingResult"].as_str().unwrap_or_default().contains("final commit failed"), "{report}");

    broker.restart()?;
    let next = run_captured("relay run", run(&["--until-idle", "--max-seconds", "60"]), PROCESS_TIMEOUT)?;
    assert_eq!(next.code(), Some(0), "{}", next.stderr_tail());
    let received: BTreeSet<(i32, i64)> = lambda.invocations("slow").iter().flat_map(|i| event_offsets(&i.payload)).collect();
    let expected: BTreeSet<(i32, i64)> = produced.iter().map(|p| (p.partition, p.offset)).collect();
    assert_eq!(received, expected, "every record delivered across the two runs");
    assert_eq!(committed_offsets(&broker.bootstrap(), &group, &topic, 2)?, next_offsets(&produced, 2));
    drop(runtime);
    Ok(())
}
